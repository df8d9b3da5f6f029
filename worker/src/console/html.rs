//! HTML of the console's pages, written by hand: [`esc`] escapes every value that comes from the
//! database or the request (an endpoint's error text, a row's data, a search query), and
//! [`Layout`] wraps a page's body in the frame every page shares (navigation, operator, the
//! stylesheet and script from `/assets`). No inline script or style: the Content-Security-Policy
//! forbids both.

use std::fmt::Write as _;

use serde_json::Value;

/// `text` escaped for an HTML text node or a double-quoted attribute value.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters of an endpoint's answer: shown, not interpreted.
            c if c.is_control() && c != '\n' && c != '\t' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as page text, escaped: strings as they are, NULL as `-`, others as JSON.
pub fn val(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    }
}

/// A timestamp as the database wrote it in JSON (`2026-12-03T20:01:02.123456+00:00`), shortened
/// to the second (`2026-12-03 20:01:02+00:00`); `-` for NULL.
pub fn time(v: &Value) -> String {
    let Some(s) = v.as_str() else {
        return "-".to_string();
    };
    let (date_time, zone) = match s.rfind(['+', '-']) {
        Some(i) if i > 10 => s.split_at(i),
        _ => (s, ""),
    };
    let short = date_time.split('.').next().unwrap_or(date_time);
    esc(&format!("{}{zone}", short.replacen('T', " ", 1)))
}

/// `text` cut to `max` characters, with `…` when cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// A JSON document, pretty-printed and escaped, for a `<pre>`.
pub fn json_block(v: &Value) -> String {
    esc(&serde_json::to_string_pretty(v).unwrap_or_default())
}

/// `name=value` pairs as a query string (`?a=1&b=2`), the empty ones left out; "" when none.
pub fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        ser.append_pair(k, v);
        any = true;
    }
    if any {
        format!("?{}", ser.finish())
    } else {
        String::new()
    }
}

/// What the frame of a page shows about the viewer.
pub struct Layout<'a> {
    /// The signed-in operator (None on the login page).
    pub operator: Option<&'a str>,
    /// The CSRF token of the session, for the sign-out form.
    pub csrf: &'a str,
    /// The console refuses changes.
    pub read_only: bool,
}

/// The navigation entries: path and label.
const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/observers", "Observers"),
    ("/events", "Events"),
    ("/dlq", "Dead letters"),
    ("/actions", "Operator log"),
];

impl Layout<'_> {
    /// A whole page: the frame around `body`; `active` is the navigation entry to mark,
    /// `refresh` asks the script to reload the page every so many seconds.
    pub fn page(&self, title: &str, active: &str, refresh: Option<u32>, body: &str) -> String {
        let mut nav = String::new();
        if self.operator.is_some() {
            for (path, label) in NAV {
                let class = if *path == active {
                    " class=\"active\""
                } else {
                    ""
                };
                let _ = write!(nav, "<a href=\"{path}\"{class}>{label}</a>");
            }
        }
        let who = match self.operator {
            Some(op) => format!(
                "<span class=\"who\">{}{}</span><form method=\"post\" action=\"/logout\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\" class=\"link\">Sign out</button></form>",
                esc(op),
                if self.read_only { " <span class=\"badge\">read-only</span>" } else { "" },
                esc(self.csrf)
            ),
            None => String::new(),
        };
        let refresh = refresh
            .map(|s| format!(" data-refresh=\"{s}\""))
            .unwrap_or_default();
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{} · fraiseql-observers</title>\
             <link rel=\"stylesheet\" href=\"/assets/console.css\">\
             <script src=\"/assets/console.js\" defer></script></head>\
             <body{refresh}><header><span class=\"brand\">fraiseql-observers</span><nav>{nav}</nav>\
             <div class=\"session\">{who}</div></header><main><h1>{}</h1>{body}</main></body></html>\n",
            esc(title),
            esc(title)
        )
    }
}

/// A table: header cells and rows of already-escaped cells; `empty` when there are no rows.
/// `row_attrs` gives each row's attributes (e.g. a `data-testid`).
pub fn table(headers: &[&str], rows: &[(String, Vec<String>)], empty: &str) -> String {
    if rows.is_empty() {
        return format!("<p class=\"empty\">{}</p>", esc(empty));
    }
    let mut out = String::from("<table><thead><tr>");
    for h in headers {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for (attrs, cells) in rows {
        let _ = write!(out, "<tr{attrs}>");
        for c in cells {
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A hidden form field.
pub fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        esc(name),
        esc(value)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_quotes_and_control_characters() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(esc("a\u{1b}[31m"), "a\\u{1b}[31m");
        assert_eq!(val(&Value::Null), "-");
        assert_eq!(val(&serde_json::json!("<b>")), "&lt;b&gt;");
    }

    #[test]
    fn times_are_shortened_to_the_second_with_their_zone() {
        assert_eq!(
            time(&serde_json::json!("2026-12-03T20:01:02.123456+00:00")),
            "2026-12-03 20:01:02+00:00"
        );
        assert_eq!(
            time(&serde_json::json!("2026-12-03T20:01:02-05:00")),
            "2026-12-03 20:01:02-05:00"
        );
        assert_eq!(time(&Value::Null), "-");
    }

    #[test]
    fn query_strings_leave_out_empty_values_and_encode_the_rest() {
        assert_eq!(query_string(&[("q", ""), ("observer", "")]), "");
        assert_eq!(
            query_string(&[("q", "a b&c"), ("outcome", "dead"), ("x", "")]),
            "?q=a+b%26c&outcome=dead"
        );
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abc", 4), "abc");
    }

    #[test]
    fn the_frame_escapes_the_title_and_marks_read_only() {
        let l = Layout {
            operator: Some("alice"),
            csrf: "t0k",
            read_only: true,
        };
        let page = l.page("<x>", "/", Some(10), "<p>body</p>");
        assert!(page.contains("<title>&lt;x&gt; · fraiseql-observers</title>"));
        assert!(page.contains("data-refresh=\"10\""));
        assert!(page.contains("read-only"));
        assert!(page.contains("name=\"csrf\" value=\"t0k\""));
        assert!(!page.contains("style="), "no inline style: {page}");
    }
}
