//! The claim loop of one database session, in named steps: a dispatch round where this loop
//! has the duty ([`DispatchDuty`]), permits for what can start at once, the claim, a task per
//! claimed job (or, for webhooks with a `batch` policy, the loop's batch collector:
//! [`super::batch`]; a batch job made by the dispatcher goes as a request of its own, or is
//! given back as its events' jobs), and a sleep when the queue is drained. Outcomes go to the
//! reporter ([`super::report`]).

use std::collections::HashMap;
use std::sync::Arc;

use fraiseql_observers_core::action::BatchPolicy;
use fraiseql_observers_core::{Action, ActionError};
use tokio::sync::OwnedSemaphorePermit;

use crate::db::{Db, DbError};
use crate::job::{Audit, ClaimedJob, Outcome};

use super::batch::{self, Collector, Held, Ready};
use super::dispatch::DispatchDuty;
use super::perform::perform;
use super::report::Report;
use super::{Context, Session};

/// One claim loop: a claiming connection of a session.
pub(super) struct ClaimLoop<'a> {
    session: &'a Session,
    db: &'a Db,
    /// Some on the session's first loop when the worker runs dispatch rounds (`dispatch`).
    dispatch: Option<DispatchDuty>,
    /// The open batches of the jobs this loop claimed.
    batches: Arc<Collector>,
}

impl<'a> ClaimLoop<'a> {
    pub(super) fn new(session: &'a Session, db: &'a Db, first: bool) -> Self {
        let dispatch = (first && session.ctx.config.dispatch).then(DispatchDuty::new);
        ClaimLoop {
            session,
            db,
            dispatch,
            batches: Arc::default(),
        }
    }

    /// Claim and perform until the session ends (leases lost, shutdown: Ok) or the connection
    /// is lost (Err).
    pub(super) async fn run(mut self) -> Result<(), DbError> {
        let ctx = &self.session.ctx;
        while !self.session.leases_lost.is_cancelled() {
            if self.db.is_closed() || self.session.reports.is_closed() {
                return Ok(());
            }
            if let Some(duty) = &mut self.dispatch {
                duty.round(ctx, self.db).await?;
            }
            let Some(permits) = self.take_permits().await else {
                return Ok(());
            };
            let free = permits.len();
            let claimed = self.claim(permits).await?;
            if claimed > 0 {
                tracing::debug!(claimed, "claimed jobs");
            }
            if claimed < free && !self.idle().await {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Permits for what can start at once (at least one, waited for; at most `batch_size`), so
    /// no claimed job waits for a permit while its lease runs: taken before the claim (another
    /// claim loop may be taking some too), one per job. None when the session ends meanwhile.
    async fn take_permits(&self) -> Option<Vec<OwnedSemaphorePermit>> {
        let ctx = &self.session.ctx;
        let first = tokio::select! {
            _ = self.session.leases_lost.cancelled() => return None,
            p = ctx.permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let mut permits = vec![first];
        while permits.len() < ctx.config.batch_size as usize {
            match ctx.permits.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        Some(permits)
    }

    /// Claim up to one job per permit and start each; returns how many were claimed. Permits
    /// taken for jobs the claim did not return go back at once (another claim loop may need
    /// them). Jobs the delivered-ledger knows (a crash came between their 2xx and completion)
    /// are completed without a second delivery.
    async fn claim(&self, mut permits: Vec<OwnedSemaphorePermit>) -> Result<usize, DbError> {
        let ctx = &self.session.ctx;
        let jobs = self
            .db
            .claim(&ctx.worker, permits.len() as u32, ctx.config.lease())
            .await?;
        ctx.metrics.contact();
        let claimed = jobs.len();
        let known: Vec<(i64, &str)> = jobs
            .iter()
            .map(|j| (j.job_id, j.idempotency_key.as_str()))
            .collect();
        let delivered = ctx.shared.delivered(&known).await;
        // Jobs of one observer share its action: parsed once per claim.
        let mut actions: HashMap<String, Result<Action, ActionError>> = HashMap::new();
        for (job, already) in jobs.into_iter().zip(delivered) {
            if already {
                tracing::info!(job = job.job_id, observer = %job.observer, "already delivered (delivered-ledger): completing without a second delivery");
                ctx.metrics.job(&job.observer, "ledger", "delivered");
                self.session.report(Report {
                    job,
                    outcome: Outcome::Delivered,
                    audit: Audit::default(),
                });
                continue;
            }
            let permit = permits
                .pop()
                .expect("claims never exceed the permits taken");
            let action = actions
                .entry(job.action.clone())
                .or_insert_with(|| Action::parse(&job.action))
                .clone();
            if job.is_batch() {
                self.batch_job(job, action, permit);
                continue;
            }
            match (batch::policy(&action), action) {
                (Some(policy), Ok(action)) => self.collect(job, permit, &action, policy),
                (_, action) => self.spawn(job, action, permit),
            }
        }
        // No free slot left: no more jobs can join the open batches before they are sent.
        if ctx.permits.available_permits() == 0 {
            for ready in self.batches.take_all() {
                batch::spawn(self.session, ready);
            }
        }
        Ok(claimed)
    }

    /// Add `job` of a webhook `action` with a batch `policy` to its observer's open batch; send
    /// the batches that are ready, and start the timer of one it opened.
    fn collect(
        &self,
        job: ClaimedJob,
        permit: OwnedSemaphorePermit,
        action: &Action,
        policy: BatchPolicy,
    ) {
        self.session.ctx.in_flight.hold(&job);
        let observer = job.observer.clone();
        let added = self.batches.add(Held { job, permit }, action, policy);
        for ready in added.ready {
            batch::spawn(self.session, ready);
        }
        if let Some(opened) = added.opened {
            batch::start_timer(self.session, &self.batches, observer, opened);
        }
    }

    /// Send a batch job at once as a request of its own (never merged with other jobs: its
    /// array and `webhook-id` are the extension's), or give it back as its events' jobs without
    /// sending when its observer's action no longer lets it go whole ([`batch::whole`]).
    fn batch_job(
        &self,
        job: ClaimedJob,
        action: Result<Action, ActionError>,
        permit: OwnedSemaphorePermit,
    ) {
        let ctx = &self.session.ctx;
        let kind = action.as_ref().map(Action::kind).unwrap_or("invalid");
        match batch::whole(&job, action) {
            Ok(action) => {
                ctx.in_flight.hold(&job);
                batch::spawn(self.session, Ready::batch_job(Held { job, permit }, action));
            }
            Err(split) => {
                // Nothing to send: the slot goes back at once.
                drop(permit);
                ctx.metrics.job(&job.observer, kind, "claimed");
                batch::record(ctx, &job, kind, &split, std::time::Instant::now());
                self.session.report(Report {
                    job,
                    outcome: split,
                    audit: Audit::default(),
                });
            }
        }
    }

    /// Perform `job` in a task of its own, holding `permit` until its outcome is reported.
    fn spawn(
        &self,
        job: ClaimedJob,
        action: Result<Action, ActionError>,
        permit: OwnedSemaphorePermit,
    ) {
        let ctx = self.session.ctx.clone();
        let tx = self.session.tx.clone();
        ctx.in_flight.hold(&job);
        self.session.tasks.spawn(async move {
            let report = attempt(&ctx, job, action).await;
            ctx.in_flight.release(&report.job);
            drop(permit);
            let _ = tx.send(report);
        });
    }

    /// The queue is drained: sleep until a wake-up, the poll interval, or the end of the
    /// session (false).
    async fn idle(&self) -> bool {
        let ctx = &self.session.ctx;
        tokio::select! {
            _ = self.session.leases_lost.cancelled() => false,
            _ = ctx.wake.notified() => true,
            _ = tokio::time::sleep(ctx.config.poll_interval()) => true,
        }
    }
}

/// One attempt of `job`, with its metrics: what the reporter gets.
async fn attempt(
    ctx: &Arc<Context>,
    job: ClaimedJob,
    action: Result<Action, ActionError>,
) -> Report {
    let kind = action.as_ref().map(Action::kind).unwrap_or("invalid");
    ctx.metrics.job(&job.observer, kind, "claimed");
    ctx.metrics.in_flight.inc();
    let started = std::time::Instant::now();
    let (attempted, endpoint) = perform(ctx, &job, action).await;
    let outcome = attempted.outcome;
    ctx.metrics.in_flight.dec();
    batch::record(ctx, &job, kind, &outcome, started);
    let audit = Audit {
        endpoint,
        status: attempted.status.map(i32::from),
        duration_ms: i32::try_from(started.elapsed().as_millis()).ok(),
    };
    Report {
        job,
        outcome,
        audit,
    }
}
