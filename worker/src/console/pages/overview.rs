//! `/`: the overview. Queue depth by state, delivered and failed attempts and the
//! capture-to-delivery lag per minute over the last hour (charts), the dispatcher's health, the
//! live workers, open circuits, quarantined events and the latest operator actions; the page
//! reloads itself every [`REFRESH_SECONDS`] (`assets/console.js`).

use std::fmt::Write as _;

use serde_json::Value;

use super::super::auth::Viewer;
use super::super::chart::{self, Point};
use super::super::html::{esc, time, val};
use super::super::http::Resp;
use super::super::{Console, PageResult};
use super::log;

/// Seconds between reloads of the overview.
pub const REFRESH_SECONDS: u32 = 10;

/// `GET /`
pub async fn page(console: &Console, viewer: &Viewer) -> PageResult {
    let o = console
        .json("SELECT @extschema@.observer_console_overview()::text", &[])
        .await?;
    let series = console
        .json(
            "SELECT coalesce(jsonb_agg(jsonb_build_object(
                 'label', to_char(s.minute, 'HH24:MI'), 'delivered', s.delivered, 'failed', s.failed,
                 'lag_avg_ms', s.lag_avg_ms, 'lag_max_ms', s.lag_max_ms) ORDER BY s.minute), '[]')::text
             FROM @extschema@.observer_console_series(60) s",
            &[],
        )
        .await?;
    let actions = log::recent(console, 10).await?;
    let mut body = cards(&o);
    body.push_str(&charts(&series));
    body.push_str(&health(&o));
    body.push_str("<section><h2>Recent operator actions</h2>");
    body.push_str(&log::table(&actions));
    body.push_str("<p><a href=\"/actions\">The whole log</a></p></section>");
    Ok(Resp::html(
        200,
        console
            .layout(viewer)
            .page("Overview", "/", Some(REFRESH_SECONDS), &body),
    ))
}

/// The queue's jobs by state, each figure in an element of its own (`data-testid`).
fn cards(o: &Value) -> String {
    let jobs = &o["jobs"];
    let estimated = jobs["completed_estimated"].as_bool().unwrap_or(false);
    let mut out = String::from("<section class=\"cards\">");
    for (state, label, link) in [
        ("pending", "Waiting", ""),
        ("running", "Running", ""),
        ("completed", "Completed", ""),
        ("dead", "Dead letters", "/dlq"),
    ] {
        let approx = if state == "completed" && estimated {
            "<span class=\"approx\" title=\"estimated from the table's size\">≈</span>"
        } else {
            ""
        };
        let figure = format!(
            "{approx}<span class=\"figure\" data-testid=\"queue-{state}\">{}</span>",
            val(&jobs[state])
        );
        let figure = if link.is_empty() {
            figure
        } else {
            format!("<a href=\"{link}\">{figure}</a>")
        };
        let _ = write!(
            out,
            "<div class=\"card {state}\"><span class=\"label\">{label}</span>{figure}</div>"
        );
    }
    out.push_str("</section>");
    out
}

/// The two charts of the last hour.
fn charts(series: &Value) -> String {
    let rows = series.as_array().cloned().unwrap_or_default();
    let counts: Vec<Point> = rows
        .iter()
        .map(|r| Point {
            label: r["label"].as_str().unwrap_or_default().to_string(),
            a: r["delivered"].as_f64().unwrap_or(0.0),
            b: r["failed"].as_f64(),
        })
        .collect();
    let lags: Vec<Point> = rows
        .iter()
        .map(|r| Point {
            label: r["label"].as_str().unwrap_or_default().to_string(),
            a: r["lag_max_ms"].as_f64().unwrap_or(0.0),
            b: r["lag_avg_ms"].as_f64(),
        })
        .collect();
    let delivered: f64 = counts.iter().map(|p| p.a).sum();
    let failed: f64 = counts.iter().map(|p| p.b.unwrap_or(0.0)).sum();
    format!(
        "<section class=\"charts\"><figure><figcaption>Attempts per minute, last hour: \
         <span class=\"key a\">delivered</span> {} · <span class=\"key b\">failed</span> {}</figcaption>{}</figure>\
         <figure><figcaption>Capture-to-delivery lag per minute: <span class=\"key b\">average</span> \
         · <span class=\"key a\">largest</span></figcaption>{}</figure></section>",
        chart::number(delivered),
        chart::number(failed),
        chart::stacked(&counts, ("delivered", "failed"), "chart-delivered"),
        chart::lag(&lags, "chart-lag")
    )
}

/// Dispatcher, workers, open circuits and quarantined events.
fn health(o: &Value) -> String {
    let d = &o["dispatch"];
    let healthy = d["healthy"].as_bool().unwrap_or(false);
    let mut out = format!(
        "<section class=\"health\"><div class=\"panel\" data-testid=\"dispatcher\"><h2>Dispatcher</h2>\
         <p class=\"state {}\">{}</p><dl><dt>Undispatched events</dt><dd>{}</dd>\
         <dt>Lag</dt><dd>{} s</dd><dt>Last round</dt><dd>{}</dd>\
         <dt>Background dispatcher</dt><dd>{}</dd></dl></div>",
        if healthy { "ok" } else { "bad" },
        if healthy { "healthy" } else { "behind or stopped" },
        val(&d["undispatched_events"]),
        val(&d["lag_seconds"]),
        time(&d["last_round_at"]),
        if d["background_worker"].as_bool().unwrap_or(false) { "running" } else { "not running" },
    );
    let workers = o["workers"].as_array().cloned().unwrap_or_default();
    let _ = write!(
        out,
        "<div class=\"panel\" data-testid=\"workers\"><h2>Workers <span class=\"count\">{}</span></h2><ul>",
        workers.len()
    );
    for w in &workers {
        let _ = write!(
            out,
            "<li>{} <span class=\"muted\">{} session(s) since {}</span></li>",
            val(&w["worker"]),
            val(&w["sessions"]),
            time(&w["connected_since"])
        );
    }
    if workers.is_empty() {
        out.push_str("<li class=\"muted\">no worker is connected</li>");
    }
    out.push_str("</ul></div>");
    let circuits = o["open_circuits"].as_array().cloned().unwrap_or_default();
    let _ = write!(
        out,
        "<div class=\"panel\" data-testid=\"open-circuits\"><h2>Open circuits <span class=\"count\">{}</span></h2><ul>",
        circuits.len()
    );
    for c in &circuits {
        let _ = write!(
            out,
            "<li>{} <span class=\"muted\">{} on {} until {}</span></li>",
            val(&c["endpoint"]),
            val(&c["state"]),
            val(&c["worker"]),
            time(&c["open_until"])
        );
    }
    if circuits.is_empty() {
        out.push_str("<li class=\"muted\">every circuit is closed</li>");
    }
    let _ = write!(
        out,
        "</ul></div><div class=\"panel\"><h2>Quarantined events</h2>\
         <p class=\"figure\" data-testid=\"quarantined\">{}</p>\
         <p class=\"muted\">{}</p></div></section>",
        val(&o["quarantined_events"]),
        esc("events dispatch could not read, kept with their reason (observer_debug_event)")
    );
    out
}
