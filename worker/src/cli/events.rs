//! `debug-event` (`observer_debug_event`: the whole story of one event) and `search`
//! (`observer_search`: the audit trail by words of delivered rows or of errors).

use std::fmt::Write as _;

use fraiseql_observers::config::Config;
use serde_json::Value;

use super::{connect, limit_arg, print_json, table, text, Result};

/// `debug-event <id> [--json]`
pub async fn debug_event(config: &Config, id: i64, json: bool) -> Result<()> {
    let db = connect(config).await?;
    let story = db
        .query_json("SELECT @extschema@.observer_debug_event($1)::text", &[&id])
        .await?;
    if json {
        print_json(&story);
    } else {
        out!("{}", render_story(&story));
    }
    Ok(())
}

/// The event's line, then for each observer its decision, its attempts and its circuits.
fn render_story(story: &Value) -> String {
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
    for o in &observers {
        render_observer(&mut out, o);
    }
    out
}

/// One observer's part of the story: `  name: decision`, then indented details.
fn render_observer(out: &mut String, o: &Value) {
    let _ = writeln!(out, "  {}: {}", text(&o["observer"]), decision(o));
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

/// An observer's decision about the event, in words (docs/cli.md lists them).
fn decision(o: &Value) -> String {
    let decision = text(&o["decision"]);
    match decision.as_str() {
        "job" => {
            let j = &o["job"];
            // A batch job (one job for a statement's batch of events) says so.
            let batch = match &j["batch"] {
                Value::Null => String::new(),
                b => format!(
                    " (a batch of {} events from event {})",
                    b["events"], b["first_event_id"]
                ),
            };
            format!(
                "job {}{batch} {} after {} attempt(s), webhook-id {}",
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
        "no_job" => "matched, but no job exists (purged, or dropped with its observer)".to_string(),
        other => format!("no job: {}", other.replace('_', " ")),
    }
}

/// `search [QUERY] [--observer NAME] [--outcome OUTCOME] [--limit N] [--json]`
pub async fn search(
    config: &Config,
    query: Option<&str>,
    observer: Option<&str>,
    outcome: Option<&str>,
    limit: u32,
    json: bool,
) -> Result<()> {
    let limit = limit_arg(limit)?;
    let db = connect(config).await?;
    let rows = db
        .query_json(
            "SELECT coalesce(jsonb_agg(to_jsonb(s) - 'document'), '[]')::text
             FROM @extschema@.observer_search($1, observer => $2, outcome => $3, max_results => $4) s",
            &[&query, &observer, &outcome, &limit],
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_read_as_words() {
        let job = serde_json::json!({"decision": "job",
            "job": {"id": 2, "state": "completed", "attempt": 1, "webhook_id": "evt_1_2"}});
        assert_eq!(
            decision(&job),
            "job 2 completed after 1 attempt(s), webhook-id evt_1_2"
        );
        let batch = serde_json::json!({"decision": "job",
            "job": {"id": 5, "state": "completed", "attempt": 1, "webhook_id": "batch_ab",
                    "batch": {"events": 100, "first_event_id": 1024}}});
        assert_eq!(
            decision(&batch),
            "job 5 (a batch of 100 events from event 1024) completed after 1 attempt(s), webhook-id batch_ab"
        );
        let later = serde_json::json!({"decision": "observer_created_later"});
        assert_eq!(decision(&later), "no job: observer created later");
    }
}
