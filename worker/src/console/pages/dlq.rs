//! `/dlq`: the dead-letter queue. The list (`observer_dlq_list`, filtered by observer, error
//! text and time) with a checkbox per job; `/dlq/<job>`: its payload and attempts
//! (`observer_dlq_show`); `POST /dlq/retry` and `POST /dlq/purge` on the selected jobs or on
//! every job the filter matches (`observer_dlq_match`). A purge first answers a confirmation that
//! says how many jobs it would delete; only a second post carrying that count
//! (`confirm=<count>`) deletes them, and only while the filter still matches that many.
//!
//! Jobs are changed in chunks of [`CHUNK`], each chunk one transaction through
//! `observer_dlq_retry` / `observer_dlq_purge` with its job ids and its entry in the operator
//! action log. More than one chunk runs in the background: the answer is a page at
//! `/dlq/operations/<id>` that shows done/total and reloads itself until the work is done.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::super::auth::{random_hex, Viewer};
use super::super::html::{self, cut, esc, hidden, json_block, time, val};
use super::super::http::{Req, Resp};
use super::super::{Console, PageError, PageResult};
use super::events::{duration, outcome};
use super::{opt, Record};

/// Jobs per transaction of a retry or purge.
pub const CHUNK: usize = 500;
/// Most dead jobs a list shows.
const PAGE: i32 = 100;
/// Background operations remembered for their progress pages.
const KEPT_OPERATIONS: usize = 100;

/// The dead jobs a form is about: the filter's fields, and the ids ticked.
struct Selection<'a> {
    observer: Option<&'a str>,
    error: Option<&'a str>,
    since: Option<&'a str>,
    until: Option<&'a str>,
    /// `selected` (the ticked `job` ids) or `filter` (every job the filter matches).
    by_filter: bool,
    jobs: Vec<i64>,
}

impl<'a> Selection<'a> {
    fn of(req: &'a Req) -> Result<Selection<'a>, PageError> {
        let jobs = req
            .fields("job")
            .map(|j| {
                j.parse::<i64>()
                    .map_err(|_| PageError::BadInput(format!("{:?} is not a job id", cut(j, 40))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Selection {
            observer: opt(req.field("observer")),
            error: opt(req.field("error")),
            since: opt(req.field("since")),
            until: opt(req.field("until")),
            by_filter: req.field("scope") == "filter",
            jobs,
        })
    }

    /// The `error` text as the LIKE pattern of `observer_dlq_*(error_like => ...)`: anywhere
    /// in the last error, its own `%`, `_` and `\` taken literally.
    fn error_like(&self) -> Option<String> {
        self.error.map(like_pattern)
    }

    /// The hidden fields that carry this selection to the next form.
    fn hidden_fields(&self) -> String {
        let mut out = String::new();
        for (name, v) in [
            ("observer", self.observer),
            ("error", self.error),
            ("since", self.since),
            ("until", self.until),
        ] {
            if let Some(v) = v {
                out.push_str(&hidden(name, v));
            }
        }
        out.push_str(&hidden(
            "scope",
            if self.by_filter { "filter" } else { "selected" },
        ));
        if !self.by_filter {
            for j in &self.jobs {
                out.push_str(&hidden("job", &j.to_string()));
            }
        }
        out
    }

    /// In words, for the log and the pages.
    fn describe(&self) -> String {
        if !self.by_filter {
            return format!("{} selected dead job(s)", self.jobs.len());
        }
        let mut parts = Vec::new();
        for (name, v) in [
            ("observer", self.observer),
            ("error", self.error),
            ("since", self.since),
            ("until", self.until),
        ] {
            if let Some(v) = v {
                parts.push(format!("{name} {v:?}"));
            }
        }
        if parts.is_empty() {
            "every dead job".to_string()
        } else {
            format!("the dead jobs with {}", parts.join(", "))
        }
    }
}

/// `text` as a LIKE pattern that matches it anywhere, its wildcards escaped.
pub fn like_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// `GET /dlq?observer=&error=&since=&until=`
pub async fn list(console: &Console, req: &Req, viewer: &Viewer) -> PageResult {
    let (observer, error) = (opt(req.param("observer")), opt(req.param("error")));
    let (since, until) = (opt(req.param("since")), opt(req.param("until")));
    let rows = console
        .json(
            "SELECT coalesce(jsonb_agg(to_jsonb(d) - 'payload'), '[]')::text
             FROM @extschema@.observer_dlq_list(observer => $1, since => $2::text::timestamptz,
                 until => $3::text::timestamptz, error_like => $4, max_rows => $5) d",
            &[&observer, &since, &until, &error.map(like_pattern), &PAGE],
        )
        .await?;
    let list = rows.as_array().cloned().unwrap_or_default();
    let can_change = console.can_change(viewer);
    let mut body = filter_form(req);
    let table_rows: Vec<(String, Vec<String>)> =
        list.iter().map(|r| dead_row(r, can_change)).collect();
    let mut headers = vec![
        "Job",
        "Observer",
        "Event",
        "Attempts",
        "Failed",
        "Last error",
    ];
    if can_change {
        headers.insert(0, "");
    }
    let table = html::table(
        &headers,
        &table_rows,
        "The dead-letter queue is empty for this filter.",
    );
    let _ = write!(
        body,
        "<p class=\"muted\">{} dead job(s) shown (newest first, at most {PAGE}).</p>",
        list.len()
    );
    if can_change {
        body.push_str(&action_form(req, viewer, &table));
    } else {
        body.push_str(&table);
    }
    Ok(Resp::html(
        200,
        console
            .layout(viewer)
            .page("Dead letters", "/dlq", None, &body),
    ))
}

fn filter_form(req: &Req) -> String {
    let input = |name: &str, label: &str, placeholder: &str| {
        format!(
            "<label>{label} <input type=\"text\" name=\"{name}\" value=\"{}\" placeholder=\"{placeholder}\"></label>",
            esc(req.param(name))
        )
    };
    format!(
        "<form method=\"get\" action=\"/dlq\" class=\"filters\" data-testid=\"dlq-filter\">{}{}{}{}<button type=\"submit\">Filter</button></form>",
        input("observer", "Observer", "any"),
        input("error", "Error contains", "timeout"),
        input("since", "Failed since", "2026-12-03 10:00+00"),
        input("until", "Until", "now"),
    )
}

fn dead_row(r: &Value, checkbox: bool) -> (String, Vec<String>) {
    let id = r["job_id"].as_i64().unwrap_or_default();
    let mut cells = vec![
        format!("<a href=\"/dlq/{id}\">{id}</a>"),
        val(&r["observer"]),
        match r["event_id"].as_i64() {
            Some(e) => format!("<a href=\"/events/{e}\">{e}</a>"),
            None => "<span class=\"muted\">enqueued</span>".to_string(),
        },
        val(&r["attempts"]),
        time(&r["failed_at"]),
        esc(&cut(r["last_error"].as_str().unwrap_or(""), 160)),
    ];
    if checkbox {
        cells.insert(
            0,
            format!(
                "<input type=\"checkbox\" name=\"job\" value=\"{id}\" aria-label=\"job {id}\">"
            ),
        );
    }
    (" data-testid=\"dlq-row\"".to_string(), cells)
}

/// The form around the list: retry or purge the ticked jobs, or every job of the filter.
fn action_form(req: &Req, viewer: &Viewer, table: &str) -> String {
    let mut filter = String::new();
    for name in ["observer", "error", "since", "until"] {
        if !req.param(name).is_empty() {
            filter.push_str(&hidden(name, req.param(name)));
        }
    }
    format!(
        "<form method=\"post\" action=\"/dlq/retry\" data-testid=\"dlq-form\">{}{filter}\
         <div class=\"actions\"><label class=\"inline\"><input type=\"checkbox\" data-select-all=\"job\"> all shown</label>\
         <button type=\"submit\" name=\"scope\" value=\"selected\" data-testid=\"retry-selected\">Retry selected</button>\
         <button type=\"submit\" name=\"scope\" value=\"filter\" data-testid=\"retry-filter\">Retry all matching the filter</button>\
         <button type=\"submit\" name=\"scope\" value=\"selected\" formaction=\"/dlq/purge\" class=\"danger\" data-testid=\"purge-selected\">Purge selected…</button>\
         <button type=\"submit\" name=\"scope\" value=\"filter\" formaction=\"/dlq/purge\" class=\"danger\" data-testid=\"purge-filter\">Purge all matching…</button></div>\
         {table}</form>",
        hidden("csrf", viewer.csrf.as_deref().unwrap_or(""))
    )
}

/// `GET /dlq/<job>`
pub async fn show(console: &Console, viewer: &Viewer, segment: &str) -> PageResult {
    let id: i64 = segment
        .parse()
        .map_err(|_| PageError::BadInput(format!("{:?} is not a job id", cut(segment, 40))))?;
    let job = console
        .json("SELECT @extschema@.observer_dlq_show($1)::text", &[&id])
        .await?;
    let mut body = format!(
        "<section class=\"panel\" data-testid=\"dlq-job\"><dl class=\"inline\">\
         <dt>Observer</dt><dd><a href=\"/observers/{}\">{}</a></dd><dt>Event</dt><dd>{}</dd>\
         <dt>webhook-id</dt><dd><code>{}</code></dd><dt>Attempts</dt><dd>{}</dd><dt>Dead since</dt><dd>{}</dd></dl>\
         <p class=\"error\">{}</p>",
        esc(&super::observers::url_segment(job["observer"].as_str().unwrap_or_default())),
        val(&job["observer"]),
        match job["event_id"].as_i64() {
            Some(e) => format!("<a href=\"/events/{e}\">{e}</a>"),
            None => "enqueued".to_string(),
        },
        val(&job["idempotency_key"]),
        val(&job["attempts"]),
        time(&job["failed_at"]),
        val(&job["last_error"]),
    );
    if console.can_change(viewer) {
        let sel = Selection {
            observer: None,
            error: None,
            since: None,
            until: None,
            by_filter: false,
            jobs: vec![id],
        };
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/dlq/retry\" class=\"actions\">{}{}\
             <button type=\"submit\" data-testid=\"retry-job\">Retry</button>\
             <button type=\"submit\" formaction=\"/dlq/purge\" class=\"danger\" data-testid=\"purge-job\">Purge…</button></form>",
            hidden("csrf", viewer.csrf.as_deref().unwrap_or("")),
            sel.hidden_fields()
        );
    }
    body.push_str("</section><h2>Attempts</h2><ol class=\"attempts\">");
    for a in job["attempt_log"].as_array().into_iter().flatten() {
        let _ = write!(
            body,
            "<li class=\"attempt\" data-testid=\"attempt\"><span class=\"when\">{}</span> attempt {} {} \
             <span class=\"status\">{}</span> in {} to <span class=\"endpoint\">{}</span>\
             <div class=\"excerpt\">{}</div></li>",
            time(&a["finished_at"]),
            val(&a["attempt"]),
            outcome(&a["outcome"]),
            val(&a["status"]),
            duration(&a["duration_ms"]),
            val(&a["endpoint"]),
            esc(&cut(a["error"].as_str().unwrap_or(""), 400))
        );
    }
    let _ = write!(
        body,
        "</ol><h2>Payload</h2><pre class=\"json\" data-testid=\"payload\">{}</pre>",
        json_block(&job["payload"])
    );
    Ok(Resp::html(
        200,
        console
            .layout(viewer)
            .page(&format!("Dead job {id}"), "/dlq", None, &body),
    ))
}

/// The ids of the dead jobs `sel` is about, in id order (`observer_dlq_match`).
async fn matching(console: &Console, sel: &Selection<'_>) -> Result<Vec<i64>, PageError> {
    if !sel.by_filter && sel.jobs.is_empty() {
        return Err(PageError::BadInput(
            "no job is selected: tick the jobs first, or use the buttons for the whole filter"
                .to_string(),
        ));
    }
    let ids = if sel.by_filter {
        None
    } else {
        Some(sel.jobs.as_slice())
    };
    let all = sel.by_filter
        && sel.observer.is_none()
        && sel.error.is_none()
        && sel.since.is_none()
        && sel.until.is_none();
    let found = console
        .json(
            "SELECT coalesce(jsonb_agg(m.job_id ORDER BY m.job_id), '[]')::text
             FROM @extschema@.observer_dlq_match(job_ids => $1, observer => $2,
                 since => $3::text::timestamptz, until => $4::text::timestamptz,
                 error_like => $5, all_jobs => $6) m",
            &[
                &ids,
                &sel.observer,
                &sel.since,
                &sel.until,
                &sel.error_like(),
                &all,
            ],
        )
        .await?;
    Ok(found
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64)
        .collect())
}

/// `POST /dlq/retry`
pub async fn retry(console: &Arc<Console>, req: &Req, viewer: &Viewer) -> PageResult {
    let sel = Selection::of(req)?;
    let ids = matching(console, &sel).await?;
    run(console, viewer, Kind::Retry, ids, sel.describe()).await
}

/// `POST /dlq/purge`: the confirmation first, then (with `confirm=<count>`) the purge.
pub async fn purge(console: &Arc<Console>, req: &Req, viewer: &Viewer) -> PageResult {
    let sel = Selection::of(req)?;
    let ids = matching(console, &sel).await?;
    let confirmed = req.field("confirm");
    if confirmed == ids.len().to_string() && !ids.is_empty() {
        return run(console, viewer, Kind::Purge, ids, sel.describe()).await;
    }
    let note = if confirmed.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"error\">The selection changed since you confirmed {}: it is now {} job(s). Confirm again.</p>",
            esc(&cut(confirmed, 20)),
            ids.len()
        )
    };
    let body = format!(
        "{note}<section class=\"panel confirm\"><p>Purging deletes <strong data-testid=\"purge-count\">{}</strong> \
         dead job(s) ({}) and their attempt history for good.</p>\
         <form method=\"post\" action=\"/dlq/purge\">{}{}{}\
         <button type=\"submit\" class=\"danger\" data-testid=\"purge-confirm\">Purge {} job(s)</button> \
         <a href=\"/dlq\">Cancel</a></form></section>",
        ids.len(),
        esc(&sel.describe()),
        hidden("csrf", viewer.csrf.as_deref().unwrap_or("")),
        sel.hidden_fields(),
        hidden("confirm", &ids.len().to_string()),
        ids.len()
    );
    Ok(Resp::html(
        200,
        console
            .layout(viewer)
            .page("Confirm the purge", "/dlq", None, &body),
    ))
}

/// What a DLQ operation does to its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Retry,
    Purge,
}

impl Kind {
    fn call(self) -> &'static str {
        match self {
            Kind::Retry => "SELECT pg_catalog.to_jsonb(@extschema@.observer_dlq_retry(job_ids => $1::bigint[])) AS result",
            Kind::Purge => "SELECT pg_catalog.to_jsonb(@extschema@.observer_dlq_purge(job_ids => $1::bigint[])) AS result",
        }
    }
    fn action(self) -> &'static str {
        match self {
            Kind::Retry => "dlq_retry",
            Kind::Purge => "dlq_purge",
        }
    }
    fn done(self) -> &'static str {
        match self {
            Kind::Retry => "requeued",
            Kind::Purge => "purged",
        }
    }
}

/// A retry or purge in progress (or done): its figures for the progress page.
pub struct Operation {
    kind: Kind,
    what: String,
    total: u64,
    /// Jobs handled so far (chunks committed).
    done: AtomicU64,
    /// Jobs the functions changed (a job another operator changed meanwhile is not counted).
    changed: AtomicU64,
    finished: AtomicBool,
    error: Mutex<Option<String>>,
}

/// The operations of this console, by id.
#[derive(Default)]
pub struct Operations {
    by_id: Mutex<HashMap<String, Arc<Operation>>>,
    order: Mutex<Vec<String>>,
}

impl Operations {
    fn add(&self, op: Arc<Operation>) -> String {
        let id = random_hex(8);
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        while order.len() >= KEPT_OPERATIONS {
            let old = order.remove(0);
            map.remove(&old);
        }
        order.push(id.clone());
        map.insert(id.clone(), op);
        id
    }

    fn get(&self, id: &str) -> Option<Arc<Operation>> {
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }
}

/// One chunk: its jobs changed and the change recorded, in one transaction.
async fn chunk(
    console: &Console,
    viewer: &Viewer,
    kind: Kind,
    ids: &[i64],
) -> Result<u64, PageError> {
    let record = Record {
        action: kind.action(),
        target: format!("{} dead job(s)", ids.len()),
    };
    let ids_vec = ids.to_vec();
    let result = console
        .act(
            viewer,
            record,
            kind.call(),
            &[&ids_vec],
            json!({"job_ids": ids}),
        )
        .await?;
    Ok(result.as_u64().unwrap_or(0))
}

/// Do `kind` to `ids`: at once when they fit in one chunk (the answer says how many), else in
/// the background (the answer is the progress page).
async fn run(
    console: &Arc<Console>,
    viewer: &Viewer,
    kind: Kind,
    ids: Vec<i64>,
    what: String,
) -> PageResult {
    if ids.len() <= CHUNK {
        let changed = if ids.is_empty() {
            0
        } else {
            chunk(console, viewer, kind, &ids).await?
        };
        let body = format!(
            "<p class=\"done\" data-testid=\"operation-result\">{} <span data-testid=\"operation-changed\">{changed}</span> of {} dead job(s) ({}).</p><p><a href=\"/dlq\">Back to the dead letters</a></p>",
            capitalised(kind.done()),
            ids.len(),
            esc(&what)
        );
        return Ok(Resp::html(
            200,
            console.layout(viewer).page("Done", "/dlq", None, &body),
        ));
    }
    let op = Arc::new(Operation {
        kind,
        what,
        total: ids.len() as u64,
        done: AtomicU64::new(0),
        changed: AtomicU64::new(0),
        finished: AtomicBool::new(false),
        error: Mutex::new(None),
    });
    let id = console.ops.add(op.clone());
    let (console, viewer) = (console.clone(), viewer.clone());
    tokio::spawn(async move {
        for part in ids.chunks(CHUNK) {
            match chunk(&console, &viewer, kind, part).await {
                Ok(n) => {
                    op.changed.fetch_add(n, Ordering::Relaxed);
                    op.done.fetch_add(part.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    *op.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    break;
                }
            }
        }
        op.finished.store(true, Ordering::Release);
    });
    Ok(Resp::redirect(&format!("/dlq/operations/{id}")))
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// `GET /dlq/operations/<id>`: done/total of a background operation, reloading until finished.
pub fn progress(console: &Console, viewer: &Viewer, id: &str) -> PageResult {
    let op = console.ops.get(id).ok_or_else(|| {
        PageError::NotFound(
            "no such operation (the console keeps the last 100 while it runs)".to_string(),
        )
    })?;
    let finished = op.finished.load(Ordering::Acquire);
    let done = op.done.load(Ordering::Relaxed);
    let error = op.error.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut body = format!(
        "<section class=\"panel\" data-testid=\"operation-progress\"><p>{} {}: \
         <strong data-testid=\"operation-done\">{done}</strong> of <strong data-testid=\"operation-total\">{}</strong> \
         job(s) handled, {} {}.</p><progress max=\"{}\" value=\"{done}\"></progress>",
        capitalised(match op.kind { Kind::Retry => "requeueing", Kind::Purge => "purging" }),
        esc(&op.what),
        op.total,
        op.changed.load(Ordering::Relaxed),
        op.kind.done(),
        op.total,
    );
    if let Some(e) = error {
        let _ = write!(body, "<p class=\"error\">Stopped: {}</p>", esc(&e));
    } else if finished {
        body.push_str("<p class=\"done\" data-testid=\"operation-finished\">Finished.</p>");
    }
    body.push_str("<p><a href=\"/dlq\">Back to the dead letters</a></p></section>");
    let refresh = (!finished).then_some(1);
    Ok(Resp::html(
        200,
        console
            .layout(viewer)
            .page("Dead letters: progress", "/dlq", refresh, &body),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_matched_anywhere_and_literally() {
        assert_eq!(like_pattern("time out"), "%time out%");
        assert_eq!(like_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }

    #[test]
    fn a_selection_carries_itself_to_the_confirmation() {
        let req = Req {
            method: "POST".into(),
            form: vec![
                ("job".into(), "7".into()),
                ("job".into(), "9".into()),
                ("observer".into(), "crm".into()),
                ("scope".into(), "selected".into()),
            ],
            ..Req::default()
        };
        let sel = Selection::of(&req).expect("selection");
        assert_eq!(sel.jobs, vec![7, 9]);
        assert_eq!(sel.describe(), "2 selected dead job(s)");
        let fields = sel.hidden_fields();
        assert!(fields.contains("name=\"job\" value=\"7\"") && fields.contains("value=\"9\""));
        assert!(fields.contains("name=\"observer\" value=\"crm\""));
        let bad = Req {
            form: vec![("job".into(), "7; drop".into())],
            ..Req::default()
        };
        assert!(Selection::of(&bad).is_err());
    }
}
