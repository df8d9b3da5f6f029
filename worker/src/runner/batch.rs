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
//!
//! A batch job (one job the dispatcher made for a full batch of one statement's events,
//! [`ClaimedJob::is_batch`]) never joins an open batch: when its observer's action still batches
//! and it fits in `max_bytes` ([`whole`]), it goes at once as a request of its own, as claimed.
//! Otherwise, and when the receiver refuses its content, it is given back as its events' jobs
//! ([`Outcome::Split`]), which come back in later claims and are collected and bisected as
//! above. Its other outcomes are reported as any job's (the extension splits it itself to retry
//! or dead-letter its events).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fraiseql_observers_core::action::BatchPolicy;
use fraiseql_observers_core::{Action, ActionError};
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

impl Ready {
    /// A batch job with its observer's webhook action (checked by [`whole`]): a request alone.
    pub(super) fn batch_job(held: Held, action: Action) -> Ready {
        Ready {
            action,
            jobs: vec![held],
        }
    }
}

/// The batch policy of a webhook action that has one.
pub(super) fn policy(action: &Result<Action, ActionError>) -> Option<BatchPolicy> {
    match action {
        Ok(Action::Webhook(w)) => w.batch,
        _ => None,
    }
}

/// How a claimed batch job goes: Ok with its observer's action (the one the claim returned) when
/// that is a webhook that still batches and the job's array fits in its `max_bytes`, to be sent
/// as one request; otherwise the [`Outcome::Split`] that gives its events back as jobs of their
/// own, which the ordinary paths deliver (one at a time, or collected in smaller batches).
pub(super) fn whole(
    job: &ClaimedJob,
    action: Result<Action, ActionError>,
) -> Result<Action, Outcome> {
    let policy = policy(&action);
    let split = |reason: String| Outcome::Split { reason };
    match (action, policy) {
        (Ok(action), Some(p)) if job.payload.len() as u64 <= p.max_bytes => Ok(action),
        (_, Some(p)) => Err(split(format!(
            "over max_bytes: {} bytes of documents, the action's max_bytes is {}",
            job.payload.len(),
            p.max_bytes
        ))),
        (_, None) => Err(split(
            "no batch policy: the observer's action no longer batches its events".to_string(),
        )),
    }
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
/// outcome becomes every job's report ([`settle`] splits a batch whose content is refused). The
/// jobs' leases stop being renewed and their slots are freed as the reports are handed over.
async fn send(ctx: &Arc<Context>, Ready { action, mut jobs }: Ready) -> Vec<Report> {
    jobs.sort_by_key(|h| h.job.job_id);
    for h in &jobs {
        ctx.metrics.job(&h.job.observer, "webhook", "claimed");
    }
    let parts: Vec<&ClaimedJob> = jobs.iter().map(|h| &h.job).collect();
    let settled = settle(&parts, |part| attempt(ctx, &action, part)).await;
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

/// The outcome of each of `jobs` (in commit order), by `attempt`ing requests of them. A batch of
/// several jobs whose request the receiver refuses for its content ([`refuses_content`]) is split
/// in halves, each sent as a batch of its own, down to the jobs refused alone: one event the
/// receiver rejects never takes the others of its batch with it (any other failure retries the
/// whole batch). A batch job refused so is given back as its events' jobs instead
/// ([`Outcome::Split`]): they come back as jobs of their own, and are bisected then.
async fn settle<'a, F, Fut>(
    jobs: &'a [&'a ClaimedJob],
    mut attempt: F,
) -> Vec<(Outcome, Audit, Instant)>
where
    F: FnMut(&'a [&'a ClaimedJob]) -> Fut,
    Fut: std::future::Future<Output = (Attempted, Audit, Instant)>,
{
    // Ranges of `jobs` still to send, the first in commit order on top: ranges settle in job
    // order, each extending `settled` by its jobs' outcome.
    let mut settled: Vec<(Outcome, Audit, Instant)> = Vec::with_capacity(jobs.len());
    let mut to_send = vec![(0, jobs.len())];
    while let Some((lo, hi)) = to_send.pop() {
        let (attempted, audit, started) = attempt(&jobs[lo..hi]).await;
        let refused = refuses_content(&attempted);
        if refused && hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            to_send.push((mid, hi));
            to_send.push((lo, mid));
            continue;
        }
        // A batch job is always alone in its request.
        let outcome = if refused && jobs[lo].is_batch() {
            Outcome::Split {
                reason: refusal(&attempted),
            }
        } else {
            attempted.outcome
        };
        debug_assert_eq!(settled.len(), lo, "ranges settle in job order");
        settled.extend(std::iter::repeat_n((outcome, audit, started), hi - lo));
    }
    settled
}

/// Why a request's content was refused, for the log of a split.
fn refusal(attempted: &Attempted) -> String {
    match (&attempted.outcome, attempted.status) {
        (_, Some(status)) => format!("refused with status {status}"),
        (Outcome::Discard { error, .. }, None) => format!("refused before sending: {error}"),
        _ => "refused".to_string(),
    }
}

/// Whether the receiver answered that it refuses what the request carries (400 Bad Request, 409
/// Conflict, 413 Content Too Large, 422 Unprocessable Content), or the worker refused it before
/// sending: splitting the batch finds the events at fault. Answers about the endpoint itself
/// (401, 403, 404, 410, 429, 5xx, timeouts) would be the same for every half, and are not split.
fn refuses_content(attempted: &Attempted) -> bool {
    matches!(attempted.status, Some(400 | 409 | 413 | 422))
        || matches!(attempted.outcome, Outcome::Discard { pause: false, .. })
}

/// One request for `jobs` (in commit order) as a batch, or for a batch job alone as claimed
/// ([`request`]): what came of it, its audit fields and when it started.
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

/// The metrics of one job's attempt: its outcome, how long it took (unless it was held back or
/// split) and, when delivered, its event-to-delivery lag.
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
        Outcome::Split { .. } => "split",
    };
    ctx.metrics.job(&job.observer, kind, label);
    // Held back or given back as its events' jobs: no delivery to time.
    if !matches!(outcome, Outcome::Snooze { .. } | Outcome::Split { .. }) {
        ctx.metrics.delivery(&job.observer, kind, started.elapsed());
    }
    if *outcome == Outcome::Delivered {
        ctx.metrics.event_lag(&job.observer, kind, job.event_at);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    use crate::job::test_job as job;

    /// A batch job of `n` events of observer 1, each element `filler` bytes long or so.
    fn batch_job(n: i64, filler: usize) -> ClaimedJob {
        let elements: Vec<String> = (1..=n)
            .map(|e| {
                format!(
                    r#"{{"pad":"{}","webhook_id":"evt_{e}_1"}}"#,
                    "x".repeat(filler)
                )
            })
            .collect();
        let keys: Vec<String> = (1..=n).map(|e| format!("evt_{e}_1")).collect();
        let key = crate::actions::batch::batch_id(keys.iter().map(String::as_str));
        job(1, &key, &format!("[{}]", elements.join(",")))
    }

    fn webhook(batch: &str) -> Result<Action, ActionError> {
        Action::parse(&format!(
            r#"{{"type":"webhook","url":"https://hooks.example.com/in"{batch}}}"#
        ))
    }

    fn reason(outcome: Result<Action, Outcome>) -> String {
        match outcome {
            Err(Outcome::Split { reason }) => reason,
            other => panic!("expected a split, got {other:?}"),
        }
    }

    #[test]
    fn a_batch_job_goes_whole_only_with_a_batch_policy_it_fits() {
        let small = batch_job(3, 10);
        let policy = r#","batch":{"max_events":3,"max_bytes":1024}"#;
        assert!(matches!(
            whole(&small, webhook(policy)),
            Ok(Action::Webhook(_))
        ));

        // Over max_bytes (the observer was altered since the dispatcher made it).
        let large = batch_job(3, 400);
        assert!(large.payload.len() > 1024);
        assert!(reason(whole(&large, webhook(policy))).starts_with("over max_bytes"));

        // No batch policy any more, no webhook any more, or an action that does not parse.
        assert!(reason(whole(&small, webhook(""))).starts_with("no batch policy"));
        let slack = Action::parse(
            r#"{"type":"slack","url":"https://hooks.slack.com/services/x","text":"new order"}"#,
        );
        assert!(slack.is_ok(), "{slack:?}");
        assert!(reason(whole(&small, slack)).starts_with("no batch policy"));
        let invalid = webhook(r#","batch":"often""#);
        assert!(invalid.is_err());
        assert!(reason(whole(&small, invalid)).starts_with("no batch policy"));
    }

    /// What an endpoint answers to a request of `part`: 400 when it holds a job with a key in
    /// `refused`, 2xx otherwise. Each request is logged as the ids it carried.
    fn answer(part: &[&ClaimedJob], refused: &[&str]) -> Attempted {
        if part
            .iter()
            .any(|j| refused.contains(&j.idempotency_key.as_str()))
        {
            Attempted {
                outcome: Outcome::Retry {
                    error: "HTTP 400".into(),
                    not_before: None,
                    endpoint_fault: false,
                },
                status: Some(400),
            }
        } else {
            Attempted {
                outcome: Outcome::Delivered,
                status: Some(200),
            }
        }
    }

    async fn settle_against(
        jobs: &[&ClaimedJob],
        refused: &[&str],
    ) -> (Vec<Outcome>, Vec<Vec<i64>>) {
        let sent = RefCell::new(Vec::new());
        let outcomes = settle(jobs, |part| {
            sent.borrow_mut()
                .push(part.iter().map(|j| j.job_id).collect());
            let attempted = answer(part, refused);
            async move { (attempted, Audit::default(), Instant::now()) }
        })
        .await;
        (
            outcomes.into_iter().map(|(o, _, _)| o).collect(),
            sent.into_inner(),
        )
    }

    #[tokio::test]
    async fn refused_content_splits_a_batch_job_and_bisects_jobs_of_their_own() {
        // A batch job refused: given back as its events' jobs, not bisected (it is one job).
        let b = batch_job(4, 1);
        let (outcomes, sent) = settle_against(&[&b], &[b.idempotency_key.as_str()]).await;
        assert_eq!(sent, vec![vec![1]], "one request");
        assert_eq!(
            outcomes,
            vec![Outcome::Split {
                reason: "refused with status 400".into()
            }]
        );

        // The same events as jobs of their own: bisected down to the refused one.
        let jobs: Vec<ClaimedJob> = (1..=4)
            .map(|e| job(e, &format!("evt_{e}_1"), r#"{"type":"orders"}"#))
            .collect();
        let refs: Vec<&ClaimedJob> = jobs.iter().collect();
        let (outcomes, sent) = settle_against(&refs, &["evt_3_1"]).await;
        assert_eq!(
            sent,
            vec![vec![1, 2, 3, 4], vec![1, 2], vec![3, 4], vec![3], vec![4]]
        );
        assert_eq!(outcomes[0], Outcome::Delivered);
        assert_eq!(outcomes[1], Outcome::Delivered);
        assert!(
            matches!(outcomes[2], Outcome::Retry { .. }),
            "{:?}",
            outcomes[2]
        );
        assert_eq!(outcomes[3], Outcome::Delivered);

        // A batch job delivered, or failing otherwise, is reported as it is.
        let (outcomes, _) = settle_against(&[&b], &[]).await;
        assert_eq!(outcomes, vec![Outcome::Delivered]);
    }

    #[tokio::test]
    async fn a_batch_job_refused_before_sending_is_split_with_the_reason() {
        let b = batch_job(2, 1);
        let refused = Attempted::from(Outcome::Discard {
            error: "signing secret \"s\" is not bound to https://hooks.example.com:443".into(),
            pause: false,
        });
        let outcomes = settle(&[&b], |_| {
            let refused = refused.clone();
            async move { (refused, Audit::default(), Instant::now()) }
        })
        .await;
        assert_eq!(
            outcomes[0].0,
            Outcome::Split {
                reason: "refused before sending: signing secret \"s\" is not bound to https://hooks.example.com:443".into()
            }
        );
    }
}
