//! Reporting: every finished attempt goes through a channel to one reporter task per session,
//! which sorts a batch by outcome and makes one call per kind (`observer_complete`,
//! `observer_snooze`, `observer_discard`, `observer_fail`, and `observer_split` for batch jobs
//! given back as their events' jobs), so completions cost one statement per batch, not per
//! job. Deliveries are written to the delivered-ledger (Redis, when configured) before their
//! completion is reported.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::db::{Db, DbError};
use crate::job::{Audit, ClaimedJob, Completion, Discard, Failure, Lease, Outcome, Snooze};

use super::Context;

/// Most outcomes reported in one call.
const REPORT_BATCH: usize = 1000;

/// A finished attempt on its way to the database, with what the audit trail records of it.
pub(super) struct Report {
    pub job: ClaimedJob,
    pub outcome: Outcome,
    pub audit: Audit,
}

/// One batch of reports, sorted by the call that reports them.
#[derive(Default)]
struct Batch {
    done: Vec<Completion>,
    failed: Vec<Failure>,
    snoozed: Vec<Snooze>,
    discarded: Vec<Discard>,
    /// Batch jobs to be replaced by their events' jobs.
    split: Vec<Lease>,
}

impl Batch {
    fn add(
        &mut self,
        Report {
            job,
            outcome,
            audit,
        }: Report,
    ) {
        let lease = job.lease();
        match outcome {
            Outcome::Delivered => self.done.push(Completion { lease, audit }),
            Outcome::Retry {
                error, not_before, ..
            } => {
                // Errors can quote an endpoint's text: escaped before logs and last_error.
                let error = fraiseql_observers_core::text::printable(&error);
                tracing::info!(job = job.job_id, observer = %job.observer, attempt = job.attempt, %error, "delivery failed");
                self.failed.push(Failure {
                    lease,
                    error,
                    not_before,
                    audit,
                });
            }
            Outcome::Snooze { until, reason } => {
                tracing::debug!(job = job.job_id, %reason, "job snoozed");
                self.snoozed.push(Snooze {
                    lease,
                    until,
                    reason,
                });
            }
            Outcome::Discard { error, pause } => {
                let error = fraiseql_observers_core::text::printable(&error);
                if pause {
                    tracing::warn!(job = job.job_id, observer = %job.observer, %error, "endpoint gone: job dead-lettered and the observer paused (observer_resume() to deliver again)");
                } else {
                    tracing::warn!(job = job.job_id, observer = %job.observer, %error, "job refused for good: dead-lettered");
                }
                self.discarded.push(Discard {
                    lease,
                    error,
                    pause,
                    audit,
                });
            }
            Outcome::Split { reason } => {
                // A reason can quote why a request was refused before sending: escaped like errors.
                let reason = fraiseql_observers_core::text::printable(&reason);
                tracing::info!(job = job.job_id, observer = %job.observer, %reason, "batch job split: its events go as jobs of their own");
                self.split.push(lease);
            }
        }
    }

    /// One call per kind present.
    async fn send(&self, db: &Db) {
        if !self.done.is_empty() {
            log_report(
                "completions",
                self.done.len(),
                db.complete(&self.done).await,
            );
        }
        if !self.snoozed.is_empty() {
            log_report(
                "snoozes",
                self.snoozed.len(),
                db.snooze(&self.snoozed).await,
            );
        }
        if !self.discarded.is_empty() {
            let stale = db.discard(&self.discarded).await;
            log_report("discards", self.discarded.len(), stale);
        }
        if !self.split.is_empty() {
            log_report("splits", self.split.len(), db.split(&self.split).await);
        }
        if !self.failed.is_empty() {
            log_report("failures", self.failed.len(), db.fail(&self.failed).await);
        }
    }
}

/// Report outcomes in batches until the channel closes.
pub(super) async fn report(
    ctx: Arc<Context>,
    db: Arc<Db>,
    mut rx: mpsc::UnboundedReceiver<Report>,
) {
    while let Some(first) = rx.recv().await {
        let mut reports = vec![first];
        while reports.len() < REPORT_BATCH {
            match rx.try_recv() {
                Ok(item) => reports.push(item),
                Err(_) => break,
            }
        }
        let ledger: Vec<(i64, &str)> = reports
            .iter()
            .filter(|r| r.outcome == Outcome::Delivered)
            .map(|r| (r.job.job_id, r.job.idempotency_key.as_str()))
            .collect();
        ctx.shared.record_delivered(&ledger).await;
        drop(ledger);
        let mut batch = Batch::default();
        for r in reports {
            batch.add(r);
        }
        batch.send(&db).await;
    }
}

/// Log what became of one batch of outcome reports (`what`: "completions", "failures", ...):
/// the stale ones were refused because another worker holds the job now; a failed call leaves
/// the jobs to be redelivered after their lease.
fn log_report(what: &str, jobs: usize, result: Result<Vec<i64>, DbError>) {
    match result {
        Ok(stale) if !stale.is_empty() => {
            tracing::warn!(?stale, "{what} rejected: lease lost to another worker")
        }
        Ok(_) => tracing::debug!(jobs, "reported {what}"),
        Err(e) => tracing::error!(
            error = %e,
            jobs,
            "cannot report {what}; they will be redelivered after their lease"
        ),
    }
}
