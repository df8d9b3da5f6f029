//! The operator commands of `fraiseql-observers` (everything but `run`): each reads or changes
//! the extension through its SQL functions and prints a terminal rendering or, with `--json`, the
//! JSON the function returned. Errors carry the exit code documented in `docs/cli.md`.

use std::fmt::Write as _;
use std::sync::Arc;

use fraiseql_observers::config::Config;
use fraiseql_observers::db::{Db, DbError};
use serde_json::Value;

/// A failed command and its exit code.
#[derive(Debug)]
pub enum Failure {
    /// 1: the database or the metrics endpoint could not be reached, or a call failed.
    Runtime(String),
    /// 2: bad usage, configuration or argument (the message says which and the fix).
    Usage(String),
    /// 3: the thing asked about does not exist (event, job, observer).
    NotFound(String),
}

impl Failure {
    pub fn code(&self) -> u8 {
        match self {
            Failure::Runtime(_) => 1,
            Failure::Usage(_) => 2,
            Failure::NotFound(_) => 3,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Runtime(m) | Failure::Usage(m) | Failure::NotFound(m) => m,
        }
    }
}

impl From<DbError> for Failure {
    /// SQLSTATEs: 42704 (undefined object) is "not found"; bad input is a usage error: class
    /// 22 (bad data or parameter), 42601 (syntax error, e.g. a condition), 42710 (duplicate
    /// object), 42809 (wrong object type), 54000 (a condition too long), 55006 (object in use);
    /// anything else is a runtime failure.
    fn from(e: DbError) -> Self {
        let message = e.server_message();
        match e.sqlstate() {
            Some("42704") => Failure::NotFound(message),
            Some(s)
                if s.starts_with("22")
                    || matches!(s, "42601" | "42710" | "42809" | "54000" | "55006") =>
            {
                Failure::Usage(message)
            }
            _ => Failure::Runtime(message),
        }
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

/// Connect for one command. An extension of a version this CLI does not support is refused
/// before any call, with the worker's message (both versions and the fix).
pub async fn connect(config: &Config) -> Result<Db> {
    Db::connect(&config.database_url, Arc::new(tokio::sync::Notify::new()))
        .await
        .map_err(|e| match e {
            DbError::Incompatible(mismatch) => Failure::Runtime(mismatch.to_string()),
            e => {
                // DbError's own text starts with what this line says first.
                let text = e.to_string();
                let why = text
                    .strip_prefix("cannot connect to the database: ")
                    .unwrap_or(&text);
                Failure::Runtime(format!(
                    "cannot connect to the database ({}): {why}; check database_url / --database-url",
                    fraiseql_observers::config::redact(&config.database_url)
                ))
            }
        })
}

fn print_json(v: &Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// A cell of a table, with control characters escaped: errors and reasons stored in the
/// database can hold an endpoint's text, which must not drive the terminal.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => fraiseql_observers_core::text::printable(s),
        other => other.to_string(),
    }
}

/// Columns aligned to their widest cell.
/// The rows of a JSON array of objects: for each object, the text of `fields` in order.
fn field_rows(list: &Value, fields: &[&str]) -> Vec<Vec<String>> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|o| fields.iter().map(|f| text(&o[*f])).collect())
        .collect()
}

/// Append a section to a report: a blank line, `title:`, then the table of `rows`, or `empty`
/// when there are none.
fn push_section(
    out: &mut String,
    title: &str,
    empty: &str,
    headers: &[&str],
    rows: &[Vec<String>],
) {
    out.push_str(&format!("\n{title}:\n"));
    if rows.is_empty() {
        out.push_str(empty);
        out.push('\n');
    } else {
        out.push_str(&table(headers, rows));
    }
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths[i];
            let _ = write!(l, "{c:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(
        &headers.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>(),
        &mut out,
    );
    for row in rows {
        line(row, &mut out);
    }
    out
}

/// `status`
pub async fn status(config: &Config, json: bool) -> Result<()> {
    let db = connect(config).await?;
    let s = db
        .json("SELECT @extschema@.observer_status()::text", &[])
        .await?;
    if json {
        print_json(&s);
        return Ok(());
    }
    let mut out = String::new();
    let jobs = &s["jobs"];
    let _ = writeln!(
        out,
        "jobs: {} pending, {} running, {} completed, {} dead",
        jobs["pending"], jobs["running"], jobs["completed"], jobs["dead"]
    );
    let d = &s["dispatch"];
    let _ = writeln!(
        out,
        "dispatch: {}, lag {} s, {} undispatched event(s), background worker {}, last round {} by {}",
        if d["healthy"] == Value::Bool(true) { "healthy" } else { "UNHEALTHY" },
        d["lag_seconds"],
        d["undispatched_events"],
        if d["background_worker"] == Value::Bool(true) { "running" } else { "not running" },
        text(&d["last_round_at"]),
        text(&d["last_dispatcher"]),
    );
    let e = &s["events"];
    let _ = writeln!(
        out,
        "events: {} kept, oldest {}",
        e["kept"],
        text(&e["oldest_at"])
    );
    let a = &s["audit"];
    let _ = writeln!(
        out,
        "audit: search {}, export {} ({} waiting, {} refused)",
        if a["search_on"] == Value::Bool(true) {
            "on"
        } else {
            "off"
        },
        if a["export_on"] == Value::Bool(true) {
            "on"
        } else {
            "off"
        },
        a["export_pending"],
        a["export_refused"]
    );
    let observers: Vec<Vec<String>> = s["observers"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|o| {
                    let state = if o["paused_reason"].is_string() {
                        format!("paused: {}", text(&o["paused_reason"]))
                    } else if o["enabled"] == Value::Bool(true) {
                        "enabled".to_string()
                    } else {
                        "disabled".to_string()
                    };
                    vec![
                        text(&o["name"]),
                        if o["table"].is_null() {
                            "(queue)".to_string()
                        } else {
                            text(&o["table"])
                        },
                        state,
                        text(&o["pending"]),
                        text(&o["running"]),
                        text(&o["completed"]),
                        text(&o["dead"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    out.push_str("\nobservers:\n");
    out.push_str(&table(
        &[
            "name",
            "table",
            "state",
            "pending",
            "running",
            "completed",
            "dead",
        ],
        &observers,
    ));
    push_section(
        &mut out,
        "workers connected now",
        "(none)",
        &[
            "worker",
            "client",
            "connected since",
            "sessions",
            "running jobs",
        ],
        &field_rows(
            &s["workers"],
            &[
                "worker",
                "client",
                "connected_since",
                "sessions",
                "running_jobs",
            ],
        ),
    );
    push_section(
        &mut out,
        "circuit breakers (as each worker last reported them)",
        "(none reported)",
        &["worker", "endpoint", "state", "failures", "open until"],
        &field_rows(
            &s["breakers"],
            &["worker", "endpoint", "state", "failures", "open_until"],
        ),
    );
    out!("{out}");
    Ok(())
}

/// `debug-event <id>`
pub async fn debug_event(config: &Config, id: i64, json: bool) -> Result<()> {
    let db = connect(config).await?;
    let story = db
        .json(
            "SELECT @extschema@.observer_debug_event($1::text::bigint)::text",
            &[Some(id.to_string())],
        )
        .await?;
    if json {
        print_json(&story);
        return Ok(());
    }
    let e = &story["event"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "event {}: {} on {}, captured {}, transaction {} {}, {}",
        e["id"],
        text(&e["op"]),
        text(&e["table"]),
        text(&e["captured_at"]),
        text(&e["transaction"]["xid"]),
        text(&e["transaction"]["status"]),
        if e["dispatched"] == Value::Bool(true) {
            "dispatched"
        } else {
            "not dispatched yet"
        }
    );
    if let Some(changed) = e["changed"].as_array() {
        let names: Vec<String> = changed.iter().map(text).collect();
        let _ = writeln!(out, "  changed columns: {}", names.join(", "));
    }
    let observers = story["observers"].as_array().cloned().unwrap_or_default();
    if observers.is_empty() {
        out.push_str("  no observer watches this table now\n");
    }
    for o in observers {
        let name = text(&o["observer"]);
        let decision = text(&o["decision"]);
        let why = match decision.as_str() {
            "job" => {
                let j = &o["job"];
                format!(
                    "job {} {} after {} attempt(s), webhook-id {}",
                    j["id"],
                    text(&j["state"]),
                    j["attempt"],
                    text(&j["webhook_id"])
                )
            }
            "condition_false" => format!("no job: condition false ({})", text(&o["condition"])),
            "condition_unknown" => format!(
                "no job: the condition could not be evaluated on this row ({})",
                text(&o["condition"])
            ),
            "deduplicated" | "coalesced" => format!(
                "no job: {decision} into job {}",
                text(&o["deduplicated_into_job"])
            ),
            "no_job" => {
                "matched, but no job exists (purged, or dropped with its observer)".to_string()
            }
            other => format!("no job: {}", other.replace('_', " ")),
        };
        let _ = writeln!(out, "  {name}: {why}");
        if let Some(reason) = o["paused_reason"].as_str() {
            let _ = writeln!(out, "    observer paused: {reason}");
        }
        for a in o["attempts"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    attempt {} {} {} {} {} ms{}",
                a["attempt"],
                text(&a["outcome"]),
                text(&a["status"]),
                text(&a["endpoint"]),
                text(&a["duration_ms"]),
                a["error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
        for b in o["breakers"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    circuit {} at worker {}: {}",
                text(&b["endpoint"]),
                text(&b["worker"]),
                text(&b["state"])
            );
        }
    }
    out!("{out}");
    Ok(())
}

/// Filters of the dead-letter commands.
#[derive(Debug, Default, Clone)]
pub struct DlqFilter {
    pub jobs: Vec<i64>,
    pub observer: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub error_like: Option<String>,
    pub all: bool,
}

impl DlqFilter {
    fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.observer.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.error_like.is_none()
            && !self.all
    }

    fn params(&self) -> Vec<Option<String>> {
        let jobs = (!self.jobs.is_empty()).then(|| {
            format!(
                "{{{}}}",
                self.jobs
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        });
        vec![
            jobs,
            self.observer.clone(),
            self.since.clone(),
            self.until.clone(),
            self.error_like.clone(),
            Some(self.all.to_string()),
        ]
    }
}

/// `dlq list`
pub async fn dlq_list(config: &Config, f: &DlqFilter, limit: u32, json: bool) -> Result<()> {
    if !f.jobs.is_empty() {
        return Err(Failure::Usage(
            "dlq list filters by observer, time and error; for one job use `dlq show <job>`"
                .to_string(),
        ));
    }
    let db = connect(config).await?;
    let rows = db
        .json(
            "SELECT coalesce(jsonb_agg(to_jsonb(d)), '[]')::text FROM @extschema@.observer_dlq_list(
                 observer => $1, since => $2::text::timestamptz, until => $3::text::timestamptz,
                 error_like => $4, max_rows => $5::text::int) d",
            &[
                f.observer.clone(),
                f.since.clone(),
                f.until.clone(),
                f.error_like.clone(),
                Some(limit.to_string()),
            ],
        )
        .await?;
    if json {
        print_json(&rows);
        return Ok(());
    }
    let list = rows.as_array().cloned().unwrap_or_default();
    let cells: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let mut error = text(&r["last_error"]);
            if error.chars().count() > 60 {
                error = error.chars().take(57).collect::<String>() + "...";
            }
            vec![
                text(&r["job_id"]),
                text(&r["observer"]),
                text(&r["attempts"]),
                text(&r["failed_at"]),
                error,
            ]
        })
        .collect();
    out!(
        "{}",
        table(
            &["job", "observer", "attempts", "failed at", "last error"],
            &cells
        )
    );
    outln!("{} dead job(s) shown", list.len());
    Ok(())
}

/// `dlq show <job>`
pub async fn dlq_show(config: &Config, job: i64, json: bool) -> Result<()> {
    let db = connect(config).await?;
    let v = db
        .json(
            "SELECT (SELECT jsonb_build_object(
                        'job_id', j.id, 'observer', o.name, 'event_id', j.event_id, 'attempts', j.attempt,
                        'last_error', j.last_error, 'failed_at', j.finished_at, 'idempotency_key', j.idempotency_key,
                        'payload', observer.job_payload(o.name, o.columns, o.key_columns, j.event_id, j.payload,
                                                        j.created_at, e.id, e.created_at, e.table_name, e.op,
                                                        e.old, e.new, e.oversize),
                        'attempt_log', (SELECT coalesce(jsonb_agg(jsonb_build_object('attempt', a.attempt,
                                 'outcome', a.outcome, 'status', a.status, 'endpoint', a.endpoint,
                                 'duration_ms', a.duration_ms, 'error', a.error, 'worker', a.worker,
                                 'finished_at', a.finished_at) ORDER BY a.attempt), '[]')
                                 FROM observer.attempts a WHERE a.job_id = j.id))
                     FROM observer.jobs j
                     JOIN observer.observers o ON o.id = j.observer_id
                     LEFT JOIN LATERAL observer.event(j.event_id) e ON true
                     WHERE j.id = $1::text::bigint AND j.state = 'dead')::text",
            &[Some(job.to_string())],
        )
        .await?;
    if v.is_null() {
        return Err(Failure::NotFound(format!(
            "job {job} is not in the dead-letter queue; `dlq list` shows the jobs that are"
        )));
    }
    if json {
        print_json(&v);
        return Ok(());
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "job {} of {} (webhook-id {}), dead since {} after {} attempt(s)",
        v["job_id"],
        text(&v["observer"]),
        text(&v["idempotency_key"]),
        text(&v["failed_at"]),
        v["attempts"]
    );
    let _ = writeln!(out, "last error: {}", text(&v["last_error"]));
    for a in v["attempt_log"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  attempt {} {} {} {} {} ms: {}",
            a["attempt"],
            text(&a["outcome"]),
            text(&a["status"]),
            text(&a["endpoint"]),
            text(&a["duration_ms"]),
            text(&a["error"])
        );
    }
    let _ = writeln!(
        out,
        "payload:\n{}",
        serde_json::to_string_pretty(&v["payload"]).unwrap_or_default()
    );
    out!("{out}");
    Ok(())
}

/// Jobs handled per statement by `dlq retry` / `dlq purge`, so a progress bar can advance and no
/// single statement holds thousands of row locks.
const DLQ_CHUNK: usize = 500;

/// A progress bar on stderr for `total` steps (drawn only on a terminal).
pub fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta} left)")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// `dlq retry` / `dlq purge` (purge only with `yes`): the matching dead jobs are listed first,
/// then handled in chunks of [`DLQ_CHUNK`] with a progress bar.
pub async fn dlq_change(config: &Config, f: &DlqFilter, purge: bool, yes: bool) -> Result<()> {
    if f.is_empty() {
        return Err(Failure::Usage(
            "say which dead jobs: --job ID (repeatable), --observer, --since, --until, --error-like, or --all"
                .to_string(),
        ));
    }
    if purge && !yes {
        return Err(Failure::Usage(
            "purge deletes dead jobs and their history for good: add --yes to confirm (`dlq list` with the same filters shows them)"
                .to_string(),
        ));
    }
    let db = connect(config).await?;
    let function = if purge {
        "observer_dlq_purge"
    } else {
        "observer_dlq_retry"
    };
    // The filters are applied once, by the same function the SQL API uses.
    let ids = db
        .json(
            "SELECT coalesce(jsonb_agg(m ORDER BY m), '[]')::text FROM observer.dlq_match(
                 $1::text::bigint[], $2, $3::text::timestamptz, $4::text::timestamptz, $5, $6::text::bool) m",
            &f.params(),
        )
        .await?;
    let ids: Vec<i64> = ids
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_i64())
        .collect();
    let bar = progress(
        ids.len() as u64,
        if purge { "purging" } else { "requeueing" },
    );
    let mut n = 0;
    for chunk in ids.chunks(DLQ_CHUNK) {
        let list = format!(
            "{{{}}}",
            chunk
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let done = db
            .json(
                &format!(
                    "SELECT to_jsonb(@extschema@.{function}(job_ids => $1::text::bigint[]))::text"
                ),
                &[Some(list)],
            )
            .await?;
        n += done.as_i64().unwrap_or(0);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    outln!(
        "{} {n} dead job(s)",
        if purge { "purged" } else { "requeued" }
    );
    Ok(())
}

/// `search <query>`
pub async fn search(
    config: &Config,
    query: Option<String>,
    observer: Option<String>,
    outcome: Option<String>,
    limit: u32,
    json: bool,
) -> Result<()> {
    let db = connect(config).await?;
    let rows = db
        .json(
            "SELECT coalesce(jsonb_agg(to_jsonb(s) - 'document'), '[]')::text
             FROM @extschema@.observer_search($1, observer => $2, outcome => $3, max_results => $4::text::int) s",
            &[query, observer, outcome, Some(limit.to_string())],
        )
        .await?;
    if json {
        print_json(&rows);
        return Ok(());
    }
    let cells: Vec<Vec<String>> = rows
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                text(&r["finished_at"]),
                text(&r["observer"]),
                format!("{}/{}", r["job_id"], r["attempt"]),
                text(&r["outcome"]),
                text(&r["status"]),
                text(&r["error"]),
            ]
        })
        .collect();
    out!(
        "{}",
        table(
            &[
                "time",
                "observer",
                "job/attempt",
                "outcome",
                "status",
                "error"
            ],
            &cells
        )
    );
    Ok(())
}

/// `pause <observer>` / `resume <observer>`
pub async fn pause(
    config: &Config,
    observer: &str,
    reason: Option<String>,
    resume: bool,
) -> Result<()> {
    let db = connect(config).await?;
    let n = if resume {
        db.json(
            "SELECT to_jsonb(@extschema@.observer_resume($1))::text",
            &[Some(observer.to_string())],
        )
        .await?
    } else {
        db.json(
            "SELECT to_jsonb(@extschema@.observer_pause($1, coalesce($2, 'paused by an operator')))::text",
            &[Some(observer.to_string()), reason],
        )
        .await?
    };
    if resume {
        outln!("{observer} resumed: {} held job(s) due now", text(&n));
    } else {
        outln!(
            "{observer} paused: {} pending job(s) held; new jobs are kept until `resume`",
            text(&n)
        );
    }
    Ok(())
}

/// `metrics`: scrape a worker's /metrics and summarise it.
pub async fn metrics(url: &str, json: bool) -> Result<()> {
    let body = reqwest::get(url)
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| {
            Failure::Runtime(format!(
                "cannot scrape {url}: {e}; is metrics.listen set on the worker?"
            ))
        })?
        .text()
        .await
        .map_err(|e| Failure::Runtime(format!("cannot read {url}: {e}")))?;
    let summary = summarise_metrics(&body);
    if json {
        print_json(&summary);
        return Ok(());
    }
    let mut rows = Vec::new();
    if let Some(map) = summary.as_object() {
        for (k, v) in map {
            rows.push(vec![k.clone(), text(v)]);
        }
    }
    out!("{}", table(&["metric", "value"], &rows));
    Ok(())
}

/// Sums of each metric over its labels (histograms: `_count` and `_sum`), by name without the
/// `fraiseql_observers_` prefix; jobs also by outcome.
pub fn summarise_metrics(text: &str) -> Value {
    let mut out = serde_json::Map::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if name.ends_with("_bucket") {
            continue;
        }
        let name = name.trim_start_matches("fraiseql_observers_");
        let key = if name == "jobs_total" {
            let outcome = labels
                .split(',')
                .find_map(|l| l.strip_prefix("outcome="))
                .unwrap_or("\"?\"")
                .trim_matches('"');
            format!("jobs_{outcome}")
        } else if name == "queue_jobs" {
            let state = labels
                .split(',')
                .find_map(|l| l.strip_prefix("state="))
                .unwrap_or("\"?\"")
                .trim_matches('"');
            format!("queue_{state}")
        } else {
            name.to_string()
        };
        let entry = out.entry(key).or_insert(Value::from(0.0));
        let sum = entry.as_f64().unwrap_or(0.0) + value;
        *entry = Value::from(sum);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_their_labels() {
        let text = "# HELP x\n\
            fraiseql_observers_jobs_total{action=\"webhook\",observer=\"a\",outcome=\"delivered\"} 3\n\
            fraiseql_observers_jobs_total{action=\"webhook\",observer=\"b\",outcome=\"delivered\"} 2\n\
            fraiseql_observers_delivery_seconds_bucket{le=\"0.1\"} 5\n\
            fraiseql_observers_delivery_seconds_count{observer=\"a\"} 5\n\
            fraiseql_observers_queue_jobs{state=\"dead\"} 1\n\
            fraiseql_observers_in_flight 0\n";
        let s = summarise_metrics(text);
        assert_eq!(s["jobs_delivered"], 5.0);
        assert_eq!(s["delivery_seconds_count"], 5.0);
        assert_eq!(s["queue_dead"], 1.0);
        assert_eq!(s["in_flight"], 0.0);
        assert!(s.get("delivery_seconds_bucket").is_none());
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["a", "bb"],
            &[
                vec!["xxx".into(), "y".into()],
                vec!["z".into(), "wwww".into()],
            ],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz    wwww\n");
    }
}
