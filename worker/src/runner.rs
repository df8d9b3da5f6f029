//! The run loop (`fraiseql-observers run`): claim jobs, perform them concurrently, report the
//! outcomes in batches, and run dispatch rounds where configured.
//!
//! Shape: one claim loop per database session; each claimed job runs in its own task under a
//! global [`Semaphore`] (claims never exceed free permits, so nothing claimed waits on a permit
//! while its lease runs); outcomes go through a channel to a reporter task that calls
//! `observer_complete` / `observer_fail` for whole batches. On shutdown the loop stops claiming,
//! in-flight tasks get `shutdown_timeout` to finish, and the reporter flushes. A job still
//! running after that keeps its lease and is redelivered once the lease runs out: never lost.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_core::{prune, Action, ActionError};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actions::email::{Mailer, MailerError};
use crate::actions::{http, slack, webhook};
use crate::breaker;
use crate::config::Config;
use crate::db::{Db, DbError};
use crate::job::{self, Attempted, Audit, ClaimedJob, Failure, Outcome};
use crate::metrics::{self, Metrics};
use crate::ratelimit::{self, Slot};
use crate::redis::{Shared, SharedError};
use crate::secrets::{self, Wire};

/// Most outcomes reported in one call.
const REPORT_BATCH: usize = 1000;
/// Longest pause between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(10);
/// A worker runs dispatch rounds only when no other dispatcher finished one within this (the
/// background dispatcher runs one at least every `dispatch_interval`, 1 s by default; the
/// database stretches the window to three of those if longer): it takes over this long after
/// the background dispatcher stopped.
const DISPATCH_STANDBY: Duration = Duration::from_secs(5);
/// How often a standing-by worker asks again.
const STANDBY_RECHECK: Duration = Duration::from_secs(1);
/// Longest a delivery waits for a free slot of its endpoint (`http.max_in_flight_per_endpoint`)
/// before its job goes back to the queue: long enough for a fast endpoint's slot to free, short
/// enough that jobs for a slow endpoint do not hold the worker's slots.
const ENDPOINT_WAIT: Duration = Duration::from_millis(250);
/// How often the worker reads `observer_status()` for its metrics and readiness (the status
/// counts the jobs table: not on every claim).
const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// Longest `observer_status()` may take before `/readyz` says the database does not answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error(transparent)]
    Mailer(#[from] MailerError),
    #[error(transparent)]
    Redis(#[from] SharedError),
    /// The database's extension is of a version this worker does not support: it stops rather
    /// than call an API it does not know.
    #[error(transparent)]
    Incompatible(#[from] crate::version::Mismatch),
}

/// Longest a delivery waits in its slot for a rate-limited endpoint; a later slot sends the job
/// back to the queue (no attempt used) instead.
const MAX_RATE_WAIT: Duration = Duration::from_secs(1);

/// Shared dependencies of every task (svix's `WorkerContext`): no globals.
struct Context {
    config: Config,
    worker: String,
    http: reqwest::Client,
    /// SMTP transport of the `email` action.
    mailer: Mailer,
    /// Address blocks allowed despite the network policy (literal-address URLs are checked with
    /// it; the client's resolver checks host names).
    allow: Vec<fraiseql_observers_core::net::Cidr>,
    /// In-flight deliveries per endpoint (scheme://host:port).
    endpoints: EndpointSlots,
    /// Circuit breakers per endpoint.
    breakers: breaker::Breakers,
    /// Redis-held state shared with the other replicas (breakers, rate limits, ledger).
    shared: Shared,
    /// Rate limits kept in this process (no Redis, or Redis unavailable).
    local_limits: ratelimit::Local,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
    /// Jobs being performed now (job id → fencing token), for heartbeats.
    in_flight: std::sync::Mutex<std::collections::HashMap<i64, i64>>,
    /// Why the worker stopped by itself (an extension of an unsupported version), for `run`.
    fatal: std::sync::Mutex<Option<crate::version::Mismatch>>,
}

/// Run the worker until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let metrics = Metrics::new()?;
    let ctx = Arc::new(Context {
        shared: Shared::new(&config.redis, metrics.clone())?,
        local_limits: ratelimit::Local::default(),
        worker: config.worker_name(),
        http: http::client(&config.http.user_agent, config.allow_networks())?,
        mailer: Mailer::new(&config.smtp)?,
        allow: config.allow_networks(),
        endpoints: EndpointSlots::new(config.http.max_in_flight_per_endpoint),
        breakers: breaker::Breakers::new(
            config.breaker.failure_threshold,
            Duration::from_millis(config.breaker.open_ms),
        ),
        permits: Arc::new(Semaphore::new(config.concurrency as usize)),
        wake: Arc::new(Notify::new()),
        cancel: CancellationToken::new(),
        in_flight: std::sync::Mutex::default(),
        fatal: std::sync::Mutex::default(),
        metrics,
        config,
    });
    tracing::info!(worker = %ctx.worker, concurrency = ctx.config.concurrency, "worker starting");
    let metrics_server = if ctx.config.metrics.listen.is_empty() {
        None
    } else {
        let listener = Metrics::bind(&ctx.config.metrics.listen).await?;
        tracing::info!(listen = %ctx.config.metrics.listen, "serving Prometheus metrics at /metrics, health at /healthz and /readyz");
        Some(tokio::spawn(ctx.metrics.clone().serve(listener)))
    };

    let cancel = ctx.cancel.clone();
    let main = tokio::spawn(supervise(ctx.clone()));
    let breaker_sync = ctx
        .shared
        .enabled()
        .then(|| tokio::spawn(sync_breakers(ctx.clone())));
    let exporter = if ctx.config.elasticsearch.url.is_empty() {
        None
    } else {
        let exporter = crate::audit_export::Exporter::new(
            ctx.config.elasticsearch.clone(),
            ctx.config.database_url.clone(),
            &ctx.config.http.user_agent,
            ctx.metrics.clone(),
        )?;
        Some(tokio::spawn(exporter.run(ctx.cancel.clone())))
    };
    // The supervisor cancels by itself when the extension's version is not supported.
    tokio::select! {
        _ = shutdown => {
            tracing::info!("shutdown requested: no new claims; waiting for in-flight actions");
        }
        _ = cancel.cancelled() => {}
    }
    ctx.metrics.set_not_ready("shutting down");
    cancel.cancel();
    if let Err(e) = main.await {
        tracing::error!(error = %e, "worker task failed");
    }
    if let Some(server) = metrics_server {
        server.abort();
    }
    if let Some(sync) = breaker_sync {
        sync.abort();
    }
    if let Some(exporter) = exporter {
        let _ = exporter.await;
    }
    let fatal = ctx.fatal.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(mismatch) = fatal {
        return Err(mismatch.into());
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Connect, run a session until the connection is lost, reconnect with backoff; until cancelled.
async fn supervise(ctx: Arc<Context>) {
    let mut delay = Duration::from_millis(100);
    while !ctx.cancel.is_cancelled() {
        match connect_all(&ctx).await {
            Ok((claims, reports)) => {
                delay = Duration::from_millis(100);
                ctx.metrics
                    .set_extension_version(reports.extension_version());
                ctx.metrics.set_ready();
                session(&ctx, claims, reports).await;
            }
            // The handshake failed: no retry can fix it, the operator must update the extension
            // or run another worker (the message says which).
            Err(DbError::Incompatible(mismatch)) => {
                tracing::error!(error = %mismatch, "the worker stops");
                ctx.metrics.set_extension_version(&mismatch.extension);
                ctx.metrics.set_not_ready(mismatch.to_string());
                *ctx.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(mismatch);
                ctx.cancel.cancel();
                break;
            }
            Err(e) => {
                ctx.metrics.set_not_ready(format!("{e}"));
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database unavailable");
            }
        }
        if ctx.cancel.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
    }
}

/// The connections of a session: `claim_sessions` that claim (the first also runs dispatch
/// rounds), and one that reports outcomes and renews leases, so that completions never queue
/// behind a claim, a claim runs while the previous one commits, and the database works on them
/// at once.
async fn connect_all(ctx: &Context) -> Result<(Vec<Arc<Db>>, Arc<Db>), DbError> {
    let mut claims = Vec::new();
    for _ in 0..ctx.config.claim_sessions.max(1) {
        claims.push(Arc::new(
            Db::connect(&ctx.config.database_url, ctx.wake.clone()).await?,
        ));
    }
    let reports = Db::connect(&ctx.config.database_url, ctx.wake.clone()).await?;
    Ok((claims, Arc::new(reports)))
}

/// Open here the circuits other replicas opened (read from Redis four times a second).
async fn sync_breakers(ctx: Arc<Context>) {
    let mut every = tokio::time::interval(Duration::from_millis(250));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        adopt_remote_circuits(&ctx, &ctx.breakers.endpoints()).await;
    }
}

/// Open here the circuits of `endpoints` that another replica opened (none without Redis).
async fn adopt_remote_circuits(ctx: &Context, endpoints: &[String]) {
    for (endpoint, until) in ctx.shared.open_circuits(endpoints).await {
        ctx.breakers.open_remote(&endpoint, until);
    }
}

/// One database session: claim loops on `claims`, the reporter and heartbeats on `reports`.
async fn session(ctx: &Arc<Context>, claims: Vec<Arc<Db>>, reports: Arc<Db>) {
    for conn in claims.iter().chain([&reports]) {
        if let Err(e) = conn.identify(&ctx.worker).await {
            tracing::warn!(error = %e, "cannot set application_name");
        }
    }
    for conn in &claims {
        if let Err(e) = conn.commit_without_flush().await {
            tracing::warn!(error = %e, "cannot set synchronous_commit on a claiming session");
        }
    }
    if let Err(e) = claims[0].listen().await {
        tracing::warn!(error = %e, "LISTEN failed; relying on polling");
    }
    tracing::info!("connected to the database");
    let (tx, rx) = mpsc::unbounded_channel();
    let reporter = tokio::spawn(report(ctx.clone(), reports.clone(), rx));
    // Cancelled when leases can no longer be renewed: the session then stops claiming at once
    // (it could not keep what it claims) and the worker reconnects.
    let leases_lost = ctx.cancel.child_token();
    let heartbeats = tokio::spawn(heartbeat(ctx.clone(), reports.clone(), leases_lost.clone()));
    let breaker_reports = tokio::spawn(report_breakers(ctx.clone(), reports.clone()));
    // Queue depth and dispatcher health for the metrics, and readiness (only served with them).
    let health = (!ctx.config.metrics.listen.is_empty())
        .then(|| tokio::spawn(watch_health(ctx.clone(), reports.clone())));
    let tasks = TaskTracker::new();

    // The first claim loop to end (connection lost, shutdown) ends the others.
    let loops = claims.iter().enumerate().map(|(i, db)| {
        let (tasks, tx, leases_lost, reports) = (&tasks, &tx, &leases_lost, &reports);
        async move {
            let ended = claim_loop(ctx, db, reports, i == 0, tasks, tx, leases_lost).await;
            leases_lost.cancel();
            if let Err(e) = ended {
                tracing::warn!(error = %e, "database session ended");
            }
        }
    });
    futures_util::future::join_all(loops).await;
    if let Some(health) = health {
        health.abort();
    }
    if !ctx.cancel.is_cancelled() {
        ctx.metrics
            .set_not_ready("the database connection was lost; reconnecting");
    }

    tasks.close();
    if tokio::time::timeout(ctx.config.shutdown_timeout(), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = tasks.len(),
            "actions still running after the shutdown timeout; their jobs will be redelivered after the lease"
        );
    }
    heartbeats.abort();
    breaker_reports.abort();
    drop(tx);
    let _ = reporter.await;
}

/// Report this worker's circuit breakers to the database when they change (checked four times a
/// second; a report is one statement, sent only on change), for `observer_status()`.
async fn report_breakers(ctx: Arc<Context>, db: Arc<Db>) {
    let mut every = tokio::time::interval(Duration::from_millis(250));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Vec<(String, &'static str, i32)>> = None;
    loop {
        every.tick().await;
        let report = ctx.breakers.report();
        ctx.metrics.open_circuits.set(
            i64::try_from(report.iter().filter(|b| b.1 != "closed").count()).unwrap_or(i64::MAX),
        );
        let shape: Vec<(String, &'static str, i32)> =
            report.iter().map(|b| (b.0.clone(), b.1, b.2)).collect();
        if last.as_ref() == Some(&shape) {
            continue;
        }
        match db.report_breakers(&ctx.worker, &report).await {
            Ok(()) => last = Some(shape),
            Err(e) => tracing::warn!(error = %e, "cannot report circuit breakers"),
        }
    }
}

/// Every [`HEALTH_EVERY`]: `observer_status()` into the metrics (queue depth by state,
/// quarantined events, the dispatcher's lag, backlog, time since its last round, blocked), and
/// readiness: ready while the status answers within [`HEALTH_TIMEOUT`] and the extension is of a
/// supported version. An extension updated under a running worker to another series makes it
/// not ready (and says so once in the log) but does not stop it: the update keeps the previous
/// series' calls working until the workers are rolled (extension first, then workers); a
/// reconnect refuses it.
async fn watch_health(ctx: Arc<Context>, db: Arc<Db>) {
    let mut every = tokio::time::interval(HEALTH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned: Option<String> = None;
    loop {
        every.tick().await;
        match tokio::time::timeout(HEALTH_TIMEOUT, db.health()).await {
            Ok(Ok(health)) => {
                ctx.metrics.record_health(&health);
                match crate::version::check(&health.extension_version) {
                    Ok(()) => ctx.metrics.set_ready(),
                    Err(mismatch) => {
                        if warned.as_deref() != Some(mismatch.extension.as_str()) {
                            tracing::warn!(error = %mismatch, "the extension was changed under this worker: it keeps its session, but will not reconnect");
                            warned = Some(mismatch.extension.clone());
                        }
                        ctx.metrics.set_not_ready(mismatch.to_string());
                    }
                }
            }
            Ok(Err(e)) => ctx.metrics.set_not_ready(format!("{e}")),
            Err(_) => ctx.metrics.set_not_ready(format!(
                "the database did not answer observer_status() within {} s",
                HEALTH_TIMEOUT.as_secs()
            )),
        }
    }
}

/// Extend the leases of in-flight jobs every third of the lease, so that an action slower than
/// the lease (webhook timeouts go up to 5 minutes) is not redelivered while it runs. When a
/// heartbeat fails (the connection is lost or the database does not answer), `leases_lost` is
/// cancelled: the session stops claiming, since it could not hold new leases either.
async fn heartbeat(ctx: Arc<Context>, db: Arc<Db>, leases_lost: CancellationToken) {
    let lease = ctx.config.lease();
    let mut every = tokio::time::interval((lease / 3).max(Duration::from_millis(500)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let jobs: Vec<(i64, i64)> = match ctx.in_flight.lock() {
            Ok(map) => map.iter().map(|(id, token)| (*id, *token)).collect(),
            Err(_) => return,
        };
        if jobs.is_empty() {
            continue;
        }
        match db.heartbeat(&jobs, lease).await {
            Ok(lost) if !lost.is_empty() => {
                tracing::warn!(
                    ?lost,
                    "leases lost: these jobs may be redelivered by another worker"
                )
            }
            Ok(_) => tracing::debug!(jobs = jobs.len(), "leases extended"),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    in_flight = jobs.len(),
                    "cannot renew leases: no more claims on this connection; reconnecting (jobs whose lease runs out are redelivered)"
                );
                leases_lost.cancel();
                return;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn claim_loop(
    ctx: &Arc<Context>,
    db: &Arc<Db>,
    reports: &Db,
    dispatcher: bool,
    tasks: &TaskTracker,
    tx: &mpsc::UnboundedSender<Report>,
    leases_lost: &CancellationToken,
) -> Result<(), DbError> {
    let config = &ctx.config;
    let mut last_prune = tokio::time::Instant::now();
    let mut prune_backlog = false;
    // While another dispatcher (the background one) runs rounds, this worker stands by and asks
    // again only after STANDBY_RECHECK.
    let mut standby_until: Option<tokio::time::Instant> = None;
    while !leases_lost.is_cancelled() {
        if db.is_closed() || reports.is_closed() {
            return Ok(());
        }
        if dispatcher
            && config.dispatch
            && standby_until.is_none_or(|t| t <= tokio::time::Instant::now())
        {
            let mut dispatched = false;
            match db
                .dispatch(config.dispatch_batch, &ctx.worker, DISPATCH_STANDBY)
                .await
            {
                Ok(None) => {
                    if standby_until.is_none() {
                        tracing::info!("another dispatcher runs rounds: this worker stands by");
                    }
                    standby_until = Some(tokio::time::Instant::now() + STANDBY_RECHECK);
                }
                Ok(Some(_)) => {
                    if standby_until.take().is_some() {
                        tracing::info!(
                            "no other dispatcher ran a round lately: this worker dispatches"
                        );
                    }
                    dispatched = true;
                }
                Err(e) if e.is_connection_lost() => return Err(e),
                Err(e) => tracing::warn!(error = %e, "dispatch round failed"),
            }
            // Where no background dispatcher runs, retention is this worker's job too.
            // Retention as the background dispatcher runs it (fraiseql_observers_core::prune).
            if dispatched && (last_prune.elapsed() >= prune::EVERY || prune_backlog) {
                last_prune = tokio::time::Instant::now();
                prune_backlog = false;
                match db.prune(prune::BATCH).await {
                    Ok((events, jobs)) => {
                        if events > 0 || jobs > 0 {
                            tracing::info!(events, jobs, "pruned old events and completed jobs");
                        }
                        prune_backlog = prune::more_due(events, jobs);
                    }
                    Err(e) if e.is_connection_lost() => return Err(e),
                    Err(e) => tracing::warn!(error = %e, "pruning failed"),
                }
            }
        }

        // Claim only what can start at once, so no claimed job waits for a permit: the permits
        // are taken before the claim (another claim loop may be taking some too), one per job.
        let first = tokio::select! {
            _ = leases_lost.cancelled() => return Ok(()),
            p = ctx.permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let mut permits = vec![first];
        while permits.len() < config.batch_size as usize {
            match ctx.permits.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let free = permits.len();
        let jobs = db.claim(&ctx.worker, free as u32, config.lease()).await?;
        ctx.metrics.contact();
        let claimed = jobs.len();
        // Jobs the delivered-ledger knows (a crash came between their 2xx and completion):
        // completed without a second delivery.
        let known: Vec<(i64, &str)> = jobs
            .iter()
            .map(|j| (j.job_id, j.idempotency_key.as_str()))
            .collect();
        let delivered = ctx.shared.delivered(&known).await;
        for (job, already) in jobs.into_iter().zip(delivered) {
            if already {
                tracing::info!(job = job.job_id, observer = %job.observer, "already delivered (delivered-ledger): completing without a second delivery");
                ctx.metrics.job(&job.observer, "ledger", "delivered");
                let _ = tx.send(Report {
                    job,
                    outcome: Outcome::Delivered,
                    endpoint: None,
                    status: None,
                    ms: None,
                });
                continue;
            }
            let action = Action::parse(&job.action);
            let kind = action.as_ref().map(Action::kind).unwrap_or("invalid");
            ctx.metrics.job(&job.observer, kind, "claimed");
            let permit = permits
                .pop()
                .expect("claims never exceed the permits taken");
            let ctx = ctx.clone();
            let tx = tx.clone();
            if let Ok(mut map) = ctx.in_flight.lock() {
                map.insert(job.job_id, job.token);
            }
            tasks.spawn(async move {
                ctx.metrics.in_flight.inc();
                let started = std::time::Instant::now();
                let (attempted, endpoint) = perform(&ctx, &job, action).await;
                let outcome = attempted.outcome;
                ctx.metrics.in_flight.dec();
                let label = match &outcome {
                    Outcome::Delivered => "delivered",
                    Outcome::Retry { .. } => "retried",
                    Outcome::Discard { .. } => "discarded",
                    Outcome::Snooze { .. } => "snoozed",
                };
                ctx.metrics.job(&job.observer, kind, label);
                if !matches!(outcome, Outcome::Snooze { .. }) {
                    ctx.metrics.delivery(&job.observer, kind, started.elapsed());
                }
                if outcome == Outcome::Delivered {
                    ctx.metrics.event_lag(&job.observer, kind, job.event_at);
                }
                if let Ok(mut map) = ctx.in_flight.lock() {
                    map.remove(&job.job_id);
                }
                drop(permit);
                let _ = tx.send(Report {
                    job,
                    outcome,
                    endpoint,
                    status: attempted.status,
                    ms: i32::try_from(started.elapsed().as_millis()).ok(),
                });
            });
        }
        // Permits taken for jobs the claim did not return go back now, not after the sleep below:
        // another claim loop may need them.
        drop(permits);
        if claimed > 0 {
            tracing::debug!(claimed, "claimed jobs");
        }
        if claimed < free {
            // The queue is drained: sleep until a wake-up, the poll interval, or shutdown.
            tokio::select! {
                _ = leases_lost.cancelled() => return Ok(()),
                _ = ctx.wake.notified() => {}
                _ = tokio::time::sleep(config.poll_interval()) => {}
            }
        }
    }
    Ok(())
}

/// Perform one job's action, under its endpoint's circuit breaker and in-flight limit.
/// Returns the attempt and the endpoint it was for (when the action is valid).
async fn perform(
    ctx: &Context,
    job: &ClaimedJob,
    action: Result<Action, ActionError>,
) -> (Attempted, Option<String>) {
    let action = match action {
        Ok(a) => a,
        Err(e) => {
            let invalid = Outcome::Retry {
                error: format!("the observer's action is invalid: {e}"),
                not_before: None,
                endpoint_fault: false,
            };
            return (invalid.into(), None);
        }
    };
    // References to secrets are resolved here, right before the request, and nowhere else; one
    // that cannot be never counts against the endpoint (nothing was sent).
    let wire = match secrets::resolve(&ctx.config, &action) {
        Ok(wire) => wire,
        Err(unresolved) => return (unresolved.outcome().into(), unresolved.endpoint()),
    };
    let endpoint = match &action {
        Action::Email(_) => ctx.mailer.endpoint().to_string(),
        _ => job::endpoint(&wire.url),
    };
    // A job that can never be sent as it is goes to the dead-letter queue before anything
    // touches its endpoint: the job's fault never counts against the endpoint's breaker.
    if let Err(error) = refuse_job(ctx, job, &action, &wire.url) {
        let refused = Outcome::Discard {
            error,
            pause: false,
        };
        return (refused.into(), Some(endpoint));
    }
    let attempted = perform_at(ctx, job, &action, &wire, &endpoint).await;
    (attempted, Some(endpoint))
}

/// Why this job must not be sent at all, or Ok: its idempotency key cannot be a header value
/// (chosen by whoever enqueued it), its signing secret is not bound to its URL, or its e-mail
/// sender is not one the worker's configuration allows. A secret that is not configured at all
/// is left to [`perform_at`], which retries (the operator may be adding it).
fn refuse_job(ctx: &Context, job: &ClaimedJob, action: &Action, url: &str) -> Result<(), String> {
    http::check_key(&job.idempotency_key)?;
    match action {
        Action::Webhook(w) => {
            let Some(name) = &w.secret else { return Ok(()) };
            match ctx.config.secret(name) {
                // A credential named here is not a signing secret: reported at delivery.
                Some(secret) if !secret.keys.is_empty() && !secret.may_sign_for(url) => Err(format!(
                    "signing secret {name:?} is not bound to {}: its destinations (secrets.{}.destinations) do not cover this URL; the request is neither signed nor sent",
                    job::endpoint(url),
                    name.to_ascii_lowercase()
                )),
                _ => Ok(()),
            }
        }
        Action::Email(e) => match &e.from {
            Some(from) => ctx.mailer.check_sender(from),
            None => Ok(()),
        },
        Action::Slack(_) => Ok(()),
    }
}

async fn perform_at(
    ctx: &Context,
    job: &ClaimedJob,
    action: &Action,
    wire: &Wire,
    endpoint: &str,
) -> Attempted {
    // An open circuit sends the job back at once, without waiting for a slot of the endpoint (a
    // hanging endpoint's slots stay taken until its requests time out).
    let circuit_open = |until| -> Attempted {
        Outcome::Snooze {
            until,
            reason: format!("circuit open for {endpoint}"),
        }
        .into()
    };
    // The first delivery to an endpoint in this process asks the other replicas first (Redis,
    // when configured): the periodic sync only follows endpoints this worker already knows.
    // Tracked after one read whatever the answer, so the endpoint is read once, not per job.
    if !ctx.breakers.knows(endpoint) {
        adopt_remote_circuits(ctx, &[endpoint.to_string()]).await;
        ctx.breakers.track(endpoint);
    }
    if let Some(until) = ctx.breakers.open_until(endpoint) {
        return circuit_open(until);
    }
    // Per-endpoint limit: a job whose endpoint stays saturated goes back to the queue (no attempt
    // used) after a short wait instead of holding one of the global slots, so a slow endpoint
    // cannot starve the others. Taken before the breaker decides, so that a job that waited for
    // its slot sees the circuit as it is when it would be sent.
    let Some(_slot) = ctx.endpoints.enter(endpoint, ENDPOINT_WAIT).await else {
        return Outcome::Snooze {
            until: std::time::SystemTime::now() + ctx.config.http.endpoint_retry(),
            reason: format!(
                "{endpoint} has {} deliveries in flight (http.max_in_flight_per_endpoint)",
                ctx.config.http.max_in_flight_per_endpoint
            ),
        }
        .into();
    };
    if let breaker::Decision::Reject(until) = ctx.breakers.before(endpoint) {
        return circuit_open(until);
    }
    if let Some(&rate) = ctx.config.rate_limits.get(endpoint) {
        let slot = match ctx.shared.take_slot(endpoint, rate, MAX_RATE_WAIT).await {
            Some(slot) => slot,
            None => ctx.local_limits.take(endpoint, rate, MAX_RATE_WAIT),
        };
        match slot {
            Slot::Wait(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
            Slot::Wait(_) => {}
            Slot::Busy(after) => {
                ctx.breakers.after(endpoint, None);
                return Outcome::Snooze {
                    until: std::time::SystemTime::now() + after,
                    reason: format!("{endpoint} is at its rate limit ({rate}/s)"),
                }
                .into();
            }
        }
    }
    let cap = ctx.config.http.error_body_bytes;
    let attempted = match action {
        Action::Webhook(w) => {
            let keys = match &w.secret {
                None => None,
                Some(name) => match ctx.config.signing_keys(name) {
                    Some(keys) => Some(keys),
                    // Not sent unsigned: retried (then dead-lettered, replayable) until the
                    // operator configures the secret.
                    None => {
                        ctx.breakers.after(endpoint, None);
                        let error = if ctx.config.secret(name).is_some() {
                            format!("signing secret {name:?} is a credential (value) in this worker, not a signing secret: give the signing key its own [secrets.<name>] with keys = [\"whsec_...\"] and name that in action.secret")
                        } else {
                            format!(
                                "signing secret {name:?} is not configured in this worker ([secrets] or FRAISEQL_OBSERVERS_SECRETS__{})",
                                name.to_ascii_uppercase()
                            )
                        };
                        return Outcome::Retry {
                            error,
                            not_before: None,
                            endpoint_fault: false,
                        }
                        .into();
                    }
                },
            };
            webhook::deliver(&ctx.http, w, wire, job, keys.as_deref(), &ctx.allow, cap).await
        }
        Action::Slack(s) => slack::deliver(&ctx.http, s, wire, job, &ctx.allow, cap).await,
        Action::Email(e) => ctx.mailer.deliver(e, job).await,
    };
    let verdict = match &attempted.outcome {
        Outcome::Delivered => Some(true),
        Outcome::Retry { endpoint_fault, .. } => (*endpoint_fault).then_some(false),
        Outcome::Discard { .. } | Outcome::Snooze { .. } => None,
    };
    match ctx.breakers.after(endpoint, verdict) {
        Some(breaker::Change::Opened(until)) => ctx.shared.publish_open(endpoint, until).await,
        Some(breaker::Change::Closed) => ctx.shared.publish_closed(endpoint).await,
        None => {}
    }
    attempted
}

/// Log what became of one batch of outcome reports (`what`: "completions", "failures", ...):
/// the stale ones were refused because another worker holds the job now; a failed call leaves
/// the jobs to be redelivered after their lease.
fn log_report(what: &str, jobs: usize, result: Result<Vec<i64>, crate::db::DbError>) {
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

/// Report outcomes in batches until the channel closes. Deliveries are written to the
/// delivered-ledger (Redis, when configured) before their completion is reported.
async fn report(ctx: Arc<Context>, db: Arc<Db>, mut rx: mpsc::UnboundedReceiver<Report>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < REPORT_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let ledger: Vec<(i64, &str)> = batch
            .iter()
            .filter(|r| r.outcome == Outcome::Delivered)
            .map(|r| (r.job.job_id, r.job.idempotency_key.as_str()))
            .collect();
        ctx.shared.record_delivered(&ledger).await;
        drop(ledger);
        let mut done = Vec::new();
        let mut failed = Vec::new();
        let mut discarded = Vec::new();
        let mut snoozed = Vec::new();
        for Report {
            job,
            outcome,
            endpoint,
            status,
            ms,
        } in batch
        {
            let audit = Audit {
                endpoint,
                status: status.map(i32::from),
                duration_ms: ms,
            };
            match outcome {
                Outcome::Delivered => done.push((job.job_id, job.token, audit)),
                Outcome::Retry {
                    error, not_before, ..
                } => {
                    // Errors can quote an endpoint's text: escaped before logs and last_error.
                    let error = fraiseql_observers_core::text::printable(&error);
                    tracing::info!(job = job.job_id, observer = %job.observer, attempt = job.attempt, %error, "delivery failed");
                    failed.push(Failure {
                        job_id: job.job_id,
                        token: job.token,
                        error,
                        not_before,
                        audit,
                    });
                }
                Outcome::Snooze { until, reason } => {
                    tracing::debug!(job = job.job_id, %reason, "job snoozed");
                    snoozed.push((job.job_id, job.token, until, reason));
                }
                Outcome::Discard { error, pause } => {
                    let error = fraiseql_observers_core::text::printable(&error);
                    if pause {
                        tracing::warn!(job = job.job_id, observer = %job.observer, %error, "endpoint gone: job dead-lettered and the observer paused (observer_resume() to deliver again)");
                    } else {
                        tracing::warn!(job = job.job_id, observer = %job.observer, %error, "job refused for good: dead-lettered");
                    }
                    discarded.push((job.job_id, job.token, error, pause, audit));
                }
            }
        }
        if !done.is_empty() {
            log_report("completions", done.len(), db.complete(&done).await);
        }
        if !snoozed.is_empty() {
            log_report("snoozes", snoozed.len(), db.snooze(&snoozed).await);
        }
        if !discarded.is_empty() {
            log_report("discards", discarded.len(), db.discard(&discarded).await);
        }
        if !failed.is_empty() {
            log_report("failures", failed.len(), db.fail(&failed).await);
        }
    }
}

/// A finished attempt on its way to the database, with what the audit trail records of it.
struct Report {
    job: ClaimedJob,
    outcome: Outcome,
    endpoint: Option<String>,
    status: Option<u16>,
    ms: Option<i32>,
}

/// In-flight deliveries per endpoint, with a limit: one semaphore per endpoint (endpoints come
/// from observer definitions, so the map stays small).
struct EndpointSlots {
    limit: u32,
    slots: std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
}

impl EndpointSlots {
    fn new(limit: u32) -> Self {
        EndpointSlots {
            limit,
            slots: std::sync::Mutex::default(),
        }
    }

    /// A slot for `endpoint`, waiting up to `wait` for one; None when it stays at the limit.
    /// Released on drop.
    async fn enter(&self, endpoint: &str, wait: Duration) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .entry(endpoint.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.limit as usize)))
                .clone()
        };
        // A free slot is taken at once: the timeout polls the acquisition before its timer.
        tokio::time::timeout(wait, semaphore.acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::EndpointSlots;
    use std::time::Duration;

    #[tokio::test]
    async fn slots_are_limited_per_endpoint_waited_for_and_released_on_drop() {
        let slots = EndpointSlots::new(2);
        let short = Duration::from_millis(20);
        let a1 = slots.enter("http://a:80", short).await.expect("first");
        let _a2 = slots.enter("http://a:80", short).await.expect("second");
        assert!(
            slots.enter("http://a:80", short).await.is_none(),
            "a is full"
        );
        assert!(
            slots.enter("http://b:80", short).await.is_some(),
            "b is not"
        );
        // A slot freed while a delivery waits goes to it.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(a1);
        });
        assert!(
            slots
                .enter("http://a:80", Duration::from_secs(5))
                .await
                .is_some(),
            "a slot freed during the wait is taken"
        );
        release.await.expect("release");
    }
}
