//! Batches of the webhook observers that ask for them (`"batch"` in the action): the claim loop
//! hands each of their claimed jobs to its loop's [`Collector`], which keeps one open batch per
//! observer and sends it as one request ([`crate::actions::batch`]) when it holds `max_events`
//! jobs or `max_bytes` of documents, when `max_wait_ms` has passed since its first job, when the
//! worker has no free slot left (waiting could bring no more jobs), or when the session winds
//! down. Each job keeps its slot (permit) and its lease, renewed by the heartbeat
//! ([`super::lease`]), from its claim until its outcome is reported.
//!
//! The batch passes its endpoint's gates once (one request: one slot of the in-flight limit, one
//! rate-limit slot, one verdict for the breaker) and its one outcome is reported for every job
//! (2xx: all complete; a retryable failure: all retried), each job's attempt in the audit trail
//! as usual. A batch whose content the receiver refuses (400, 409, 413, 422) is split in halves
//! until the refused jobs are alone, so only they are retried and dead-lettered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fraiseql_observers_core::action::BatchPolicy;
use fraiseql_observers_core::Action;
use tokio::sync::OwnedSemaphorePermit;

use crate::actions::batch::{element_len, request};
use crate::job::{Attempted, Audit, ClaimedJob, Outcome};

use super::perform::perform;
use super::report::Report;
use super::{Context, Session};

/// A claimed job with the worker slot it holds until its outcome is reported.
pub(super) struct Held {
    pub job: ClaimedJob,
    pub permit: OwnedSemaphorePermit,
}

/// Jobs of one observer, to go as one request.
pub(super) struct Ready {
    action: Action,
    jobs: Vec<Held>,
}

/// The batch an observer is filling.
struct Open {
    /// Tells this batch from a later one of the same observer (its timer sends only its own).
    generation: u64,
    /// The action its jobs were claimed with (an observer altered meanwhile starts a new batch).
    action_text: String,
    action: Action,
    policy: BatchPolicy,
    jobs: Vec<Held>,
    bytes: u64,
}

impl Open {
    fn full(&self) -> bool {
        self.jobs.len() >= self.policy.max_events as usize || self.bytes >= self.policy.max_bytes
    }

    fn ready(self) -> Ready {
        Ready {
            action: self.action,
            jobs: self.jobs,
        }
    }
}

/// The open batches of one claim loop, by observer.
#[derive(Default)]
pub(super) struct Collector {
    open: Mutex<HashMap<String, Open>>,
    generations: AtomicU64,
}

/// What adding a job did: batches now ready to send, and the batch it opened (its generation and
/// wait), whose timer the caller starts.
#[derive(Default)]
pub(super) struct Added {
    pub ready: Vec<Ready>,
    pub opened: Option<(u64, Duration)>,
}

impl Collector {
    /// Add `held`, a job of a webhook with `policy`, to its observer's open batch. The open batch
    /// is ready first if the job cannot join it (another action, or over `max_bytes` with it),
    /// and ready after if the job filled it; a job alone over `max_bytes` goes alone.
    pub(super) fn add(&self, held: Held, action: &Action, policy: BatchPolicy) -> Added {
        let mut added = Added::default();
        let len = element_len(&held.job);
        let observer = held.job.observer.clone();
        let mut open = self.lock();
        if let Some(o) = open.get(&observer) {
            if o.action_text != held.job.action || o.bytes + len > o.policy.max_bytes {
                added.ready.extend(open.remove(&observer).map(Open::ready));
            }
        }
        let batch = open.entry(observer.clone()).or_insert_with(|| {
            let generation = self.generations.fetch_add(1, Ordering::Relaxed);
            added.opened = Some((generation, policy.max_wait()));
            Open {
                generation,
                action_text: held.job.action.clone(),
                action: action.clone(),
                policy,
                jobs: Vec::new(),
                bytes: 0,
            }
        });
        batch.bytes += len;
        batch.jobs.push(held);
        if batch.full() {
            added.ready.extend(open.remove(&observer).map(Open::ready));
            added.opened = None;
        }
        added
    }

    /// The open batch of `observer` if it is still the one of `generation` (its timer ran out).
    fn take(&self, observer: &str, generation: u64) -> Option<Ready> {
        let mut open = self.lock();
        match open.get(observer) {
            Some(o) if o.generation == generation => open.remove(observer).map(Open::ready),
            _ => None,
        }
    }

    /// Every open batch: the worker has no free slot, so no more jobs can join them.
    pub(super) fn take_all(&self) -> Vec<Ready> {
        self.lock().drain().map(|(_, o)| o.ready()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Open>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Send `ready` in a task of the session.
pub(super) fn spawn(session: &Session, ready: Ready) {
    let (ctx, tx) = (session.ctx.clone(), session.tx.clone());
    session.tasks.spawn(async move {
        for report in send(&ctx, ready).await {
            let _ = tx.send(report);
        }
    });
}

/// Send the open batch of `observer` (of `generation`) after `wait`, or at once when the
/// session winds down, unless it was sent meanwhile.
pub(super) fn start_timer(
    session: &Session,
    collector: &Arc<Collector>,
    observer: String,
    (generation, wait): (u64, Duration),
) {
    let (ctx, tx) = (session.ctx.clone(), session.tx.clone());
    let (collector, lost) = (collector.clone(), session.leases_lost.clone());
    session.tasks.spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = lost.cancelled() => {}
        }
        if let Some(ready) = collector.take(&observer, generation) {
            for report in send(&ctx, ready).await {
                let _ = tx.send(report);
            }
        }
    });
}

/// One request for the whole batch, through the endpoint's gates and the webhook action; its
/// outcome becomes every job's report. A batch of several jobs whose request the receiver refuses
/// for its content ([`refuses_content`]: 400, 409, 413, 422) is split in halves, each sent as a
/// batch of its own, down to the jobs refused alone: one event the receiver rejects never takes
/// the others of its batch with it (any other failure retries the whole batch). The jobs' leases stop being renewed and their slots are freed as the reports are
/// handed over.
async fn send(ctx: &Arc<Context>, Ready { action, mut jobs }: Ready) -> Vec<Report> {
    jobs.sort_by_key(|h| h.job.job_id);
    for h in &jobs {
        ctx.metrics.job(&h.job.observer, "webhook", "claimed");
    }
    // Ranges of `jobs` still to send, the first in commit order on top: ranges settle in job
    // order, each extending `settled` by its jobs' outcome.
    let mut settled: Vec<(Outcome, Audit, Instant)> = Vec::with_capacity(jobs.len());
    let mut to_send = vec![(0, jobs.len())];
    while let Some((lo, hi)) = to_send.pop() {
        let part: Vec<&ClaimedJob> = jobs[lo..hi].iter().map(|h| &h.job).collect();
        let (attempted, audit, started) = attempt(ctx, &action, &part).await;
        if hi - lo > 1 && refuses_content(&attempted) {
            let mid = lo + (hi - lo) / 2;
            to_send.push((mid, hi));
            to_send.push((lo, mid));
            continue;
        }
        debug_assert_eq!(settled.len(), lo, "ranges settle in job order");
        settled.extend(std::iter::repeat_n(
            (attempted.outcome, audit, started),
            hi - lo,
        ));
    }
    let mut reports = Vec::with_capacity(jobs.len());
    for (Held { job, permit }, (outcome, audit, started)) in jobs.into_iter().zip(settled) {
        record(ctx, &job, "webhook", &outcome, started);
        ctx.in_flight.release(&job);
        drop(permit);
        reports.push(Report {
            job,
            outcome,
            audit,
        });
    }
    reports
}

/// Whether the receiver answered that it refuses what the request carries (400 Bad Request, 409
/// Conflict, 413 Content Too Large, 422 Unprocessable Content), or the worker refused it before
/// sending: splitting the batch finds the events at fault. Answers about the endpoint itself
/// (401, 403, 404, 410, 429, 5xx, timeouts) would be the same for every half, and are not split.
fn refuses_content(attempted: &Attempted) -> bool {
    matches!(attempted.status, Some(400 | 409 | 413 | 422))
        || matches!(attempted.outcome, Outcome::Discard { pause: false, .. })
}

/// One request for `jobs` (in commit order) as a batch: what came of it, its audit fields and
/// when it started.
async fn attempt(
    ctx: &Arc<Context>,
    action: &Action,
    jobs: &[&ClaimedJob],
) -> (Attempted, Audit, Instant) {
    let batch = request(jobs);
    tracing::debug!(jobs = jobs.len(), observer = %batch.observer, webhook_id = %batch.idempotency_key, "sending a batch");
    ctx.metrics.in_flight.inc();
    let started = Instant::now();
    let (attempted, endpoint) = perform(ctx, &batch, Ok(action.clone())).await;
    ctx.metrics.in_flight.dec();
    let audit = Audit {
        endpoint,
        status: attempted.status.map(i32::from),
        duration_ms: i32::try_from(started.elapsed().as_millis()).ok(),
    };
    (attempted, audit, started)
}

/// The metrics of one job's attempt: its outcome, how long it took (unless it was held back)
/// and, when delivered, its event-to-delivery lag.
pub(super) fn record(
    ctx: &Context,
    job: &ClaimedJob,
    kind: &str,
    outcome: &Outcome,
    started: Instant,
) {
    let label = match outcome {
        Outcome::Delivered => "delivered",
        Outcome::Retry { .. } => "retried",
        Outcome::Discard { .. } => "discarded",
        Outcome::Snooze { .. } => "snoozed",
    };
    ctx.metrics.job(&job.observer, kind, label);
    if !matches!(outcome, Outcome::Snooze { .. }) {
        ctx.metrics.delivery(&job.observer, kind, started.elapsed());
    }
    if *outcome == Outcome::Delivered {
        ctx.metrics.event_lag(&job.observer, kind, job.event_at);
    }
}
