//! `/events`: the audit trail's search (`observer_search`: words of delivered documents and of
//! errors, with observer, outcome and time filters), each row linking to its event; and
//! `/events/<id>`: an event's whole story as a timeline (`observer_debug_event`): its capture,
//! each observer's decision and why, and every attempt with its status, duration, endpoint and
//! error excerpt; an event delivered in a batch job shows that job and its attempts. An empty
//! search looks at the last [`DEFAULT_WINDOW`] only, so that it never sorts the whole history.

use std::fmt::Write as _;

use serde_json::Value;

use super::super::auth::Viewer;
use super::super::html::{self, cut, esc, json_block, time, val};
use super::super::http::{Req, Resp};
use super::super::{Console, PageError, PageResult};
use super::opt;

/// The time window of a search without words or `since`.
pub const DEFAULT_WINDOW: &str = "24 hours";
/// Most results shown.
const MAX_RESULTS: i32 = 100;
/// Characters of an error shown in a list.
const EXCERPT: usize = 160;

/// `GET /events?q=&observer=&outcome=&since=&until=`
pub async fn search(console: &Console, req: &Req, viewer: &Viewer) -> PageResult {
    let (q, observer, outcome) = (req.param("q"), req.param("observer"), req.param("outcome"));
    let (since, until) = (req.param("since"), req.param("until"));
    let rows = console
        .json(
            &format!(
                "SELECT coalesce(jsonb_agg(to_jsonb(s) - 'document'), '[]')::text
                 FROM @extschema@.observer_search($1::text, observer => $2, outcome => $3,
                     since => coalesce($4::text::timestamptz,
                                       CASE WHEN $1::text IS NULL THEN now() - interval '{DEFAULT_WINDOW}' END),
                     until => $5::text::timestamptz, max_results => $6) s"
            ),
            &[&opt(q), &opt(observer), &opt(outcome), &opt(since), &opt(until), &MAX_RESULTS],
        )
        .await?;
    let mut body = search_form(req);
    let list: Vec<(String, Vec<String>)> = rows
        .as_array()
        .into_iter()
        .flatten()
        .map(result_row)
        .collect();
    let _ = write!(
        body,
        "<p class=\"muted\">{} attempt(s){}, newest first.</p>",
        list.len(),
        if q.is_empty() && since.is_empty() {
            format!(" of the last {DEFAULT_WINDOW}")
        } else {
            String::new()
        }
    );
    body.push_str(&html::table(
        &[
            "Finished", "Event", "Observer", "Outcome", "Status", "Duration", "Endpoint", "Error",
        ],
        &list,
        "Nothing matches.",
    ));
    Ok(Resp::html(
        200,
        console
            .layout(viewer)
            .page("Events", "/events", None, &body),
    ))
}

fn search_form(req: &Req) -> String {
    let input = |name: &str, label: &str, placeholder: &str| {
        format!(
            "<label>{label} <input type=\"text\" name=\"{name}\" value=\"{}\" placeholder=\"{placeholder}\"></label>",
            esc(req.param(name))
        )
    };
    let mut outcomes = String::from("<option value=\"\">any</option>");
    for o in ["completed", "retry", "dead", "expired", "discarded"] {
        let selected = if req.param("outcome") == o {
            " selected"
        } else {
            ""
        };
        let _ = write!(outcomes, "<option{selected}>{o}</option>");
    }
    format!(
        "<form method=\"get\" action=\"/events\" class=\"filters\" data-testid=\"event-search\">{}{}\
         <label>Outcome <select name=\"outcome\">{outcomes}</select></label>{}{}\
         <button type=\"submit\">Search</button></form>\
         <form method=\"get\" action=\"/events\" class=\"filters\"><label>Event id \
         <input type=\"text\" name=\"id\" inputmode=\"numeric\"></label><button type=\"submit\" formaction=\"/events/go\">Open</button></form>",
        input("q", "Words", "timeout \"order 42\" -test"),
        input("observer", "Observer", "any"),
        input("since", "Since", "2026-12-03 10:00+00"),
        input("until", "Until", "now"),
    )
}

fn result_row(r: &Value) -> (String, Vec<String>) {
    let event = match r["event_id"].as_i64() {
        Some(id) => format!("<a href=\"/events/{id}\">{id}</a>"),
        None => format!(
            "<span class=\"muted\">enqueued job {}</span>",
            val(&r["job_id"])
        ),
    };
    (
        " data-testid=\"search-row\"".to_string(),
        vec![
            time(&r["finished_at"]),
            event,
            val(&r["observer"]),
            outcome(&r["outcome"]),
            val(&r["status"]),
            duration(&r["duration_ms"]),
            val(&r["endpoint"]),
            esc(&cut(r["error"].as_str().unwrap_or(""), EXCERPT)),
        ],
    )
}

/// An outcome as a coloured badge.
pub fn outcome(v: &Value) -> String {
    let o = v.as_str().unwrap_or("-");
    let class = match o {
        "completed" => "ok",
        "retry" | "expired" => "warn",
        _ => "bad",
    };
    format!("<span class=\"badge {class}\">{}</span>", esc(o))
}

/// Milliseconds as `12 ms`, `-` for none.
pub fn duration(v: &Value) -> String {
    match v.as_i64() {
        Some(ms) => format!("{ms} ms"),
        None => "-".to_string(),
    }
}

/// `GET /events/<id>`; `/events/go?id=` (the id form) redirects there.
pub async fn show(console: &Console, req: &Req, viewer: &Viewer, segment: &str) -> PageResult {
    let raw = if segment == "go" {
        req.param("id")
    } else {
        segment
    };
    let id: i64 = raw.parse().map_err(|_| {
        PageError::BadInput(format!("{:?} is not an event id (a number)", cut(raw, 40)))
    })?;
    if segment == "go" {
        return Ok(Resp::redirect(&format!("/events/{id}")));
    }
    let story = console
        .json("SELECT @extschema@.observer_debug_event($1)::text", &[&id])
        .await?;
    let e = &story["event"];
    let mut body = format!(
        "<section class=\"panel\" data-testid=\"event\"><dl class=\"inline\">\
         <dt>Table</dt><dd>{}</dd><dt>Operation</dt><dd>{}</dd><dt>Captured</dt><dd>{}</dd>\
         <dt>Transaction</dt><dd>{} ({})</dd><dt>Dispatched</dt><dd>{}</dd></dl>",
        val(&e["table"]),
        val(&e["op"]),
        time(&e["captured_at"]),
        val(&e["transaction"]["xid"]),
        val(&e["transaction"]["status"]),
        if e["dispatched"].as_bool().unwrap_or(false) {
            "yes"
        } else {
            "not yet"
        },
    );
    if let Some(err) = e["error"].as_str() {
        let _ = write!(body, "<p class=\"error\">quarantined: {}</p>", esc(err));
    }
    let _ = write!(
        body,
        "<details><summary>Row data</summary><pre class=\"json\">{}</pre></details></section>",
        json_block(&serde_json::json!({"old": e["old"], "new": e["new"], "changed": e["changed"]}))
    );
    body.push_str(&timeline(&story));
    Ok(Resp::html(
        200,
        console
            .layout(viewer)
            .page(&format!("Event {id}"), "/events", None, &body),
    ))
}

/// The story as a timeline: the capture, then each observer's decision with its attempts.
fn timeline(story: &Value) -> String {
    let e = &story["event"];
    let mut out = format!(
        "<h2>Timeline</h2><ol class=\"timeline\" data-testid=\"timeline\">\
         <li class=\"step capture\"><span class=\"when\">{}</span> captured: {} on {}</li>",
        time(&e["captured_at"]),
        val(&e["op"]),
        val(&e["table"])
    );
    let observers = story["observers"].as_array().cloned().unwrap_or_default();
    if observers.is_empty() {
        out.push_str("<li class=\"step muted\">no observer watches this table</li>");
    }
    for o in &observers {
        out.push_str(&decision(o));
    }
    out.push_str("</ol>");
    out
}

/// One observer's decision about the event, and the attempts of its job.
fn decision(o: &Value) -> String {
    let name = o["observer"].as_str().unwrap_or_default();
    let job = &o["job"];
    // "job": the job says it; any other decision is why there is none.
    let mut why = match o["decision"].as_str() {
        Some("job") => String::new(),
        _ => format!(": {}", val(&o["decision"])),
    };
    if let Some(reason) = o["reason"].as_str() {
        let _ = write!(why, ": {}", esc(reason));
    }
    if let Some(into) = o["deduplicated_into_job"].as_i64() {
        let _ = write!(why, " (into job {into})");
    }
    let mut out = format!(
        "<li class=\"step decision\" data-testid=\"decision\"><a href=\"/observers/{}\">{}</a>{why}",
        esc(&super::observers::url_segment(name)),
        esc(name)
    );
    if !job.is_null() {
        let dead = job["state"].as_str() == Some("dead");
        let _ = write!(
            out,
            ": job {} <span class=\"badge\">{}</span> webhook-id <code>{}</code>{}{}",
            val(&job["id"]),
            val(&job["state"]),
            val(&job["webhook_id"]),
            batch(&job["batch"]),
            if dead {
                format!(
                    " · <a href=\"/dlq/{}\">in the dead-letter queue</a>",
                    val(&job["id"])
                )
            } else {
                String::new()
            }
        );
    }
    out.push_str("<ol class=\"attempts\">");
    for a in o["attempts"].as_array().into_iter().flatten() {
        // An event replayed out of a batch has the batch job's attempts too: each says whose.
        let whose = if a["job_id"] == job["id"] {
            String::new()
        } else {
            format!(" of job {}", val(&a["job_id"]))
        };
        let _ = write!(
            out,
            "<li class=\"attempt\" data-testid=\"attempt\"><span class=\"when\">{}</span> \
             attempt {}{whose} {} <span class=\"status\">{}</span> in <span class=\"duration\">{}</span> \
             to <span class=\"endpoint\">{}</span> <span class=\"muted\">by {}</span>\
             <div class=\"excerpt\">{}</div></li>",
            time(&a["finished_at"]),
            val(&a["attempt"]),
            outcome(&a["outcome"]),
            val(&a["status"]),
            duration(&a["duration_ms"]),
            val(&a["endpoint"]),
            val(&a["worker"]),
            esc(&cut(a["error"].as_str().unwrap_or(""), 400))
        );
    }
    out.push_str("</ol></li>");
    out
}

/// A batch job's events (`job.batch` of `observer_debug_event`), linking to its first event;
/// empty for a job of one event.
fn batch(b: &Value) -> String {
    match (b["events"].as_i64(), b["first_event_id"].as_i64()) {
        (Some(n), Some(first)) => format!(
            " · <span data-testid=\"batch\">batch of {n} events from event <a href=\"/events/{first}\">{first}</a></span>"
        ),
        _ => String::new(),
    }
}
