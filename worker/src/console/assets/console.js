// fraiseql-observers console: the little the pages need a script for. A page whose <body> has
// data-refresh="N" reloads itself every N seconds (the overview, a running DLQ operation); a
// checkbox with data-select-all="NAME" ticks or unticks every checkbox named NAME (the DLQ list).
// Served from /assets under script-src 'self': no inline script anywhere.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var refresh = parseInt(document.body.getAttribute("data-refresh") || "", 10);
  if (refresh > 0) {
    window.setTimeout(function () { window.location.reload(); }, refresh * 1000);
  }
  document.querySelectorAll("input[data-select-all]").forEach(function (all) {
    all.addEventListener("change", function () {
      var name = all.getAttribute("data-select-all");
      document.querySelectorAll("input[type=checkbox][name='" + name + "']").forEach(function (box) {
        box.checked = all.checked;
      });
    });
  });
});
