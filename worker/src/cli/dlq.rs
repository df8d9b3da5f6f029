//! `dlq list/show/retry/purge`: the dead-letter queue, through `observer_dlq_list`,
//! `observer_dlq_show`, `observer_dlq_match` (which dead jobs a filter takes) and
//! `observer_dlq_retry` / `observer_dlq_purge`. The filters are applied by the extension, once,
//! exactly as the SQL API applies them.

use std::fmt::Write as _;

use fraiseql_observers::config::Config;
use fraiseql_observers::db::Db;
use serde_json::Value;

use super::{connect, limit_arg, print_json, progress, table, text, Failure, Result};

/// Jobs handled per statement by `dlq retry` / `dlq purge`, so a progress bar can advance and no
/// single statement holds thousands of row locks.
const DLQ_CHUNK: usize = 500;

/// Filters shared by the dead-letter commands.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DlqArgs {
    /// A dead job's id (repeatable).
    #[arg(long = "job")]
    pub jobs: Vec<i64>,
    #[arg(long)]
    pub observer: Option<String>,
    /// Failed at or after this time (e.g. "2026-11-22 10:00+00").
    #[arg(long)]
    pub since: Option<String>,
    /// Failed before this time.
    #[arg(long)]
    pub until: Option<String>,
    /// SQL LIKE pattern on the last error, e.g. "%timeout%".
    #[arg(long)]
    pub error_like: Option<String>,
}

/// `dlq <command>`
#[derive(clap::Subcommand)]
pub enum DlqCommand {
    /// Dead jobs, newest first.
    List {
        #[command(flatten)]
        filter: DlqArgs,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// One dead job: every attempt and the payload.
    Show {
        job: i64,
        #[arg(long)]
        json: bool,
    },
    /// Requeue dead jobs (same webhook-id, a fresh attempt budget).
    Retry {
        #[command(flatten)]
        filter: DlqArgs,
        /// Every dead job.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead jobs and their history (asks for --yes).
    Purge {
        #[command(flatten)]
        filter: DlqArgs,
        #[arg(long)]
        all: bool,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

impl DlqCommand {
    pub async fn run(self, config: &Config) -> Result<()> {
        match self {
            DlqCommand::List {
                filter,
                limit,
                json,
            } => list(config, &filter, limit, json).await,
            DlqCommand::Show { job, json } => show(config, job, json).await,
            DlqCommand::Retry { filter, all } => {
                change_dead_jobs(config, &filter, all, Change::Retry).await
            }
            DlqCommand::Purge { filter, all, yes } => {
                let change = if yes {
                    Change::Purge
                } else {
                    Change::UnconfirmedPurge
                };
                change_dead_jobs(config, &filter, all, change).await
            }
        }
    }
}

impl DlqArgs {
    fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.observer.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.error_like.is_none()
    }

    /// `job_ids`: NULL when no `--job` was given (no filter on ids).
    fn job_ids(&self) -> Option<&[i64]> {
        (!self.jobs.is_empty()).then_some(self.jobs.as_slice())
    }
}

/// `dlq list`
async fn list(config: &Config, f: &DlqArgs, limit: u32, json: bool) -> Result<()> {
    if !f.jobs.is_empty() {
        return Err(Failure::Usage(
            "dlq list filters by observer, time and error; for one job use `dlq show <job>`"
                .to_string(),
        ));
    }
    let limit = limit_arg(limit)?;
    let db = connect(config).await?;
    // Times go as text for the server to read (`$n::text::timestamptz`): any timestamptz input
    // ("yesterday", no offset = the server's TimeZone), a bad one refused as 22007.
    let rows = db
        .query_json(
            "SELECT coalesce(jsonb_agg(to_jsonb(d)), '[]')::text FROM @extschema@.observer_dlq_list(
                 observer => $1, since => $2::text::timestamptz, until => $3::text::timestamptz,
                 error_like => $4, max_rows => $5) d",
            &[&f.observer, &f.since, &f.until, &f.error_like, &limit],
        )
        .await?;
    if json {
        print_json(&rows);
        return Ok(());
    }
    let list = rows.as_array().cloned().unwrap_or_default();
    let cells: Vec<Vec<String>> = list.iter().map(list_row).collect();
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

/// A dead job's row in `dlq list`; the last error cut to 60 characters.
fn list_row(r: &Value) -> Vec<String> {
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
}

/// `dlq show <job>`
async fn show(config: &Config, job: i64, json: bool) -> Result<()> {
    let db = connect(config).await?;
    let v = db
        .query_json("SELECT @extschema@.observer_dlq_show($1)::text", &[&job])
        .await
        .map_err(|e| match Failure::from(e) {
            // The CLI's own words: its command for the list, not the SQL function's.
            Failure::NotFound(_) => Failure::NotFound(format!(
                "job {job} is not in the dead-letter queue; `dlq list` shows the jobs that are"
            )),
            other => other,
        })?;
    if json {
        print_json(&v);
    } else {
        out!("{}", render_dead_job(&v));
    }
    Ok(())
}

/// `dlq show`'s rendering: the job, its last error, its attempts, the payload.
fn render_dead_job(v: &Value) -> String {
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
    out
}

/// What `dlq retry` / `dlq purge` do with the matching dead jobs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Change {
    Retry,
    Purge,
    /// `purge` without `--yes`: the matching jobs are counted, nothing is changed.
    UnconfirmedPurge,
}

/// `dlq retry` / `dlq purge` (purge only with `--yes`): the matching dead jobs are found first
/// (`observer_dlq_match`), then handled in chunks of [`DLQ_CHUNK`] with a progress bar. A missing
/// filter is refused before any connection; `purge` without `--yes` says how many jobs it would
/// delete and deletes none.
async fn change_dead_jobs(config: &Config, f: &DlqArgs, all: bool, change: Change) -> Result<()> {
    if f.is_empty() && !all {
        return Err(Failure::Usage(
            "say which dead jobs: --job ID (repeatable), --observer, --since, --until, --error-like, or --all"
                .to_string(),
        ));
    }
    let db = connect(config).await?;
    let ids = matching(&db, f, all).await?;
    if change == Change::UnconfirmedPurge {
        return Err(Failure::Usage(unconfirmed_purge(ids.len())));
    }
    let purge = change == Change::Purge;
    let (function, doing, done) = if purge {
        ("observer_dlq_purge", "purging", "purged")
    } else {
        ("observer_dlq_retry", "requeueing", "requeued")
    };
    let bar = progress(ids.len() as u64, doing);
    let mut n = 0;
    for chunk in ids.chunks(DLQ_CHUNK) {
        let changed = db
            .query_json(
                &format!("SELECT to_jsonb(@extschema@.{function}(job_ids => $1))::text"),
                &[&chunk],
            )
            .await?;
        n += changed.as_i64().unwrap_or(0);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    outln!("{done} {n} dead job(s)");
    Ok(())
}

/// The refusal of `purge` without `--yes`, with the number of jobs it would have deleted.
fn unconfirmed_purge(matching: usize) -> String {
    format!(
        "purge would delete {matching} dead job(s) and their history for good: add --yes to confirm (`dlq list` with the same filters shows them)"
    )
}

/// The ids of the dead jobs the filters take (`observer_dlq_match`), in id order.
async fn matching(db: &Db, f: &DlqArgs, all: bool) -> Result<Vec<i64>> {
    let ids = db
        .query_json(
            "SELECT coalesce(jsonb_agg(m.job_id ORDER BY m.job_id), '[]')::text
             FROM @extschema@.observer_dlq_match(
                 job_ids => $1, observer => $2, since => $3::text::timestamptz,
                 until => $4::text::timestamptz, error_like => $5, all_jobs => $6) m",
            &[
                &f.job_ids(),
                &f.observer,
                &f.since,
                &f.until,
                &f.error_like,
                &all,
            ],
        )
        .await?;
    Ok(ids
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_last_error_is_cut_to_sixty_characters_in_the_list() {
        let row = serde_json::json!({"job_id": 7, "observer": "crm", "attempts": 3,
            "failed_at": "2026-11-22T10:00:00+00:00", "last_error": "x".repeat(100)});
        let cells = list_row(&row);
        assert_eq!(cells[0], "7");
        assert_eq!(cells[4].chars().count(), 60);
        assert!(cells[4].ends_with("..."));
    }

    #[test]
    fn a_dead_job_renders_its_attempts_and_payload() {
        let job = serde_json::json!({"job_id": 1, "observer": "crm", "idempotency_key": "evt_1_1",
            "failed_at": "<ts>", "attempts": 1, "last_error": "discarded: HTTP 410",
            "attempt_log": [{"attempt": 1, "outcome": "discarded", "status": 410,
                             "endpoint": "https://x:443", "duration_ms": 12, "error": "HTTP 410"}],
            "payload": {"type": "crm"}});
        assert_eq!(
            render_dead_job(&job),
            "job 1 of crm (webhook-id evt_1_1), dead since <ts> after 1 attempt(s)\n\
             last error: discarded: HTTP 410\n  \
             attempt 1 discarded 410 https://x:443 12 ms: HTTP 410\n\
             payload:\n{\n  \"type\": \"crm\"\n}\n"
        );
    }
}
