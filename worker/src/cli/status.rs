//! `status`: what `observer_status()` knows (jobs by state, the dispatcher, events kept, the
//! audit export, each observer, the workers connected and the circuit breakers they last
//! reported), read into the structs below and rendered from them; `--json` prints the function's
//! whole document as it came. Fields the rendering does not show are not read; a field missing
//! from the document (an older extension) reads as its default.

use std::fmt::Write as _;

use fraiseql_observers::config::Config;
use serde::Deserialize;
use serde_json::Number;

use super::{cell, connect, print_json, push_section, table, Failure, Result};

/// The parts of `observer_status()` that `status` prints.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    pub jobs: Jobs,
    /// The completed counts (all observers' and each one's) are estimates: `observer.jobs` is
    /// too large to count on every call.
    pub completed_estimated: bool,
    pub dispatch: Dispatch,
    pub events: Events,
    pub audit: Audit,
    pub observers: Vec<ObserverStatus>,
    pub workers: Vec<WorkerStatus>,
    pub breakers: Vec<BreakerStatus>,
}

/// `jobs`: jobs by state, all observers together.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Jobs {
    pub pending: i64,
    pub running: i64,
    pub completed: i64,
    pub dead: i64,
}

/// `dispatch`: the dispatcher's health.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Dispatch {
    /// Nothing waits, or a round ran recently.
    pub healthy: bool,
    /// Age of the oldest undispatched event, seconds, as the database rounded it (printed as
    /// sent: `0`, `1.25`).
    pub lag_seconds: Option<Number>,
    pub undispatched_events: i64,
    /// A background dispatcher process runs on the server.
    pub background_worker: bool,
    pub last_round_at: Option<String>,
    pub last_dispatcher: Option<String>,
}

/// `events`: the captured events kept.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Events {
    pub kept: i64,
    pub oldest_at: Option<String>,
    /// `kept` and `oldest_at` are estimates (a large event log).
    pub estimated: bool,
}

/// `audit`: search and export of the audit trail.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Audit {
    pub search_on: bool,
    pub export_on: bool,
    /// Documents waiting for Elasticsearch.
    pub export_pending: i64,
    /// Documents Elasticsearch refused for good.
    pub export_refused: i64,
}

/// One element of `observers`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ObserverStatus {
    pub name: String,
    /// None for a job queue.
    pub table: Option<String>,
    pub enabled: bool,
    /// Set while the observer is paused.
    pub paused_reason: Option<String>,
    pub pending: i64,
    pub running: i64,
    pub completed: i64,
    pub dead: i64,
}

/// One element of `workers`: a worker connected now (its sessions' `application_name`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WorkerStatus {
    pub worker: String,
    /// The client address; None over a Unix socket.
    pub client: Option<String>,
    pub connected_since: Option<String>,
    pub sessions: i64,
    pub running_jobs: i64,
}

/// One element of `breakers`: a circuit breaker as a worker last reported it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct BreakerStatus {
    pub worker: String,
    pub endpoint: String,
    /// `closed`, `open` or `half_open`.
    pub state: String,
    pub failures: i64,
    pub open_until: Option<String>,
}

/// `status [--json]`
pub async fn status(config: &Config, json: bool) -> Result<()> {
    let db = connect(config).await?;
    let document = db
        .query_json("SELECT @extschema@.observer_status()::text", &[])
        .await?;
    if json {
        print_json(&document);
        return Ok(());
    }
    let status: Status = serde_json::from_value(document).map_err(|e| {
        Failure::Runtime(format!(
            "unexpected answer from observer_status(): {e}; is the extension of this CLI's version?"
        ))
    })?;
    out!("{}", render(&status));
    Ok(())
}

/// The terminal rendering: four summary lines, then the observers, the workers and the
/// circuit breakers as tables.
pub fn render(s: &Status) -> String {
    let mut out = summary(s);
    let observers: Vec<Vec<String>> = s.observers.iter().map(observer_row).collect();
    out.push_str("\nobservers:\n");
    out.push_str(&table(
        &[
            "name",
            "table",
            "state",
            "pending",
            "running",
            if s.completed_estimated {
                "completed (est.)"
            } else {
                "completed"
            },
            "dead",
        ],
        &observers,
    ));
    let workers: Vec<Vec<String>> = s
        .workers
        .iter()
        .map(|w| {
            vec![
                cell(Some(&w.worker)),
                cell(w.client.as_deref()),
                cell(w.connected_since.as_deref()),
                w.sessions.to_string(),
                w.running_jobs.to_string(),
            ]
        })
        .collect();
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
        &workers,
    );
    let breakers: Vec<Vec<String>> = s
        .breakers
        .iter()
        .map(|b| {
            vec![
                cell(Some(&b.worker)),
                cell(Some(&b.endpoint)),
                cell(Some(&b.state)),
                b.failures.to_string(),
                cell(b.open_until.as_deref()),
            ]
        })
        .collect();
    push_section(
        &mut out,
        "circuit breakers (as each worker last reported them)",
        "(none reported)",
        &["worker", "endpoint", "state", "failures", "open until"],
        &breakers,
    );
    out
}

/// What follows a count that is an estimate.
fn estimate(estimated: bool) -> &'static str {
    if estimated {
        " (estimated)"
    } else {
        ""
    }
}

/// The lines `jobs:`, `dispatch:`, `events:` and `audit:`.
fn summary(s: &Status) -> String {
    let mut out = String::new();
    let j = &s.jobs;
    let _ = writeln!(
        out,
        "jobs: {} pending, {} running, {} completed{}, {} dead",
        j.pending,
        j.running,
        j.completed,
        estimate(s.completed_estimated),
        j.dead
    );
    let d = &s.dispatch;
    let _ = writeln!(
        out,
        "dispatch: {}, lag {} s, {} undispatched event(s), background worker {}, last round {} by {}",
        if d.healthy { "healthy" } else { "UNHEALTHY" },
        d.lag_seconds.as_ref().map_or_else(|| "0".to_string(), Number::to_string),
        d.undispatched_events,
        if d.background_worker { "running" } else { "not running" },
        cell(d.last_round_at.as_deref()),
        cell(d.last_dispatcher.as_deref()),
    );
    let _ = writeln!(
        out,
        "events: {} kept{}, oldest {}",
        s.events.kept,
        estimate(s.events.estimated),
        cell(s.events.oldest_at.as_deref())
    );
    let a = &s.audit;
    let on = |b: bool| if b { "on" } else { "off" };
    let _ = writeln!(
        out,
        "audit: search {}, export {} ({} waiting, {} refused)",
        on(a.search_on),
        on(a.export_on),
        a.export_pending,
        a.export_refused
    );
    out
}

/// An observer's row: name, table (`(queue)` for a job queue), state, jobs by state.
fn observer_row(o: &ObserverStatus) -> Vec<String> {
    let state = match &o.paused_reason {
        Some(reason) => format!("paused: {}", cell(Some(reason))),
        None if o.enabled => "enabled".to_string(),
        None => "disabled".to_string(),
    };
    vec![
        cell(Some(&o.name)),
        o.table
            .as_deref()
            .map_or_else(|| "(queue)".to_string(), |t| cell(Some(t))),
        state,
        o.pending.to_string(),
        o.running.to_string(),
        o.completed.to_string(),
        o.dead.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The document of a fresh database with one paused observer and one job queue, as
    /// observer_status() returns it (fields `status` does not print included).
    fn document() -> Value {
        serde_json::json!({
            "jobs": {"pending": 1, "running": 0, "completed": 2, "dead": 1},
            "dispatch": {"healthy": true, "lag_seconds": 0, "undispatched_events": 0,
                         "background_worker": true, "last_round_at": "2026-11-22T10:00:00+00:00",
                         "last_dispatcher": "bgworker", "rounds": 7, "blocked_by": []},
            "events": {"kept": 3, "oldest_at": null, "undispatched": 0},
            "audit": {"search_on": true, "export_on": false, "export_pending": 0, "export_refused": 0},
            "observers": [
                {"name": "crm", "table": "public.orders", "enabled": true,
                 "paused_reason": "endpoint gone: HTTP 410", "pending": 0, "running": 0,
                 "completed": 0, "dead": 1, "quarantined": 0},
                {"name": "mail", "table": null, "enabled": false, "paused_reason": null,
                 "pending": 1, "running": 0, "completed": 2, "dead": 0}
            ],
            "workers": [],
            "breakers": [{"worker": "w1", "endpoint": "https://x:443", "state": "open",
                          "failures": 0, "open_until": "2026-11-22T10:01:00+00:00",
                          "reported_at": "2026-11-22T10:00:00+00:00"}],
            "schema_writable_by": []
        })
    }

    #[test]
    fn status_renders_from_the_document() {
        let status: Status = serde_json::from_value(document()).expect("status");
        let out = render(&status);
        assert!(out.starts_with(
            "jobs: 1 pending, 0 running, 2 completed, 1 dead\n\
             dispatch: healthy, lag 0 s, 0 undispatched event(s), background worker running, \
             last round 2026-11-22T10:00:00+00:00 by bgworker\n\
             events: 3 kept, oldest -\n\
             audit: search on, export off (0 waiting, 0 refused)\n"
        ));
        assert!(out.contains("crm   public.orders  paused: endpoint gone: HTTP 410"));
        assert!(out.contains("mail  (queue)        disabled"));
        assert!(out.contains("workers connected now:\n(none)\n"));
        assert!(out.contains("w1      https://x:443  open   0         2026-11-22T10:01:00+00:00"));
    }

    /// A large history: the completed jobs and the events kept are estimates, and say so.
    #[test]
    fn estimated_counts_are_marked() {
        let mut doc = document();
        doc["completed_estimated"] = Value::Bool(true);
        doc["events"]["estimated"] = Value::Bool(true);
        let out = render(&serde_json::from_value(doc).expect("status"));
        assert!(
            out.starts_with("jobs: 1 pending, 0 running, 2 completed (estimated), 1 dead\n"),
            "{out}"
        );
        assert!(
            out.contains("events: 3 kept (estimated), oldest -\n"),
            "{out}"
        );
        assert!(out.contains("COMPLETED (EST.)"), "{out}");
        let exact = render(&serde_json::from_value(document()).expect("status"));
        assert!(!exact.contains("(est"), "{exact}");
    }

    #[test]
    fn a_fractional_lag_prints_as_the_database_sent_it() {
        let mut doc = document();
        doc["dispatch"]["lag_seconds"] = serde_json::from_str("1.25").expect("number");
        let status: Status = serde_json::from_value(doc).expect("status");
        assert!(summary(&status).contains("lag 1.25 s"));
    }

    #[test]
    fn missing_fields_read_as_defaults() {
        let status: Status = serde_json::from_value(serde_json::json!({})).expect("status");
        assert!(render(&status).starts_with("jobs: 0 pending"));
    }
}
