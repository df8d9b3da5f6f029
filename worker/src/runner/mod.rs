//! The run loop (`fraiseql-observers run`): claim jobs, perform them concurrently, report the
//! outcomes in batches, and run dispatch rounds where configured.
//!
//! Shape: `supervise` connects and reconnects with backoff; each connection set is a
//! `Session`: one `claim::ClaimLoop` per claiming connection (the first may also run
//! dispatch rounds and retention, `dispatch`), each claimed job in its own task under a global
//! `Semaphore` (claims never exceed free permits, so nothing claimed waits on a permit while
//! its lease runs) performing it (`perform`), outcomes through a channel to a reporter task
//! (`report`) that calls `observer_complete` / `observer_fail` for whole batches, and beside
//! them the heartbeat of the leases (`lease`), the breakers' report ([`crate::breaker::sync`])
//! and the health watch (`health`). On shutdown the loops stop claiming, in-flight tasks get
//! `shutdown_timeout` to finish, and the reporter flushes. A job still running after that keeps
//! its lease and is redelivered once the lease runs out: never lost.

mod batch;
mod claim;
mod dispatch;
mod health;
mod lease;
mod perform;
mod report;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_core::backoff::Backoff;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actions::email::{Mailer, MailerError};
use crate::actions::http;
use crate::breaker;
use crate::config::Config;
use crate::db::{Db, DbError};
use crate::metrics::{self, Metrics};
use crate::ratelimit;
use crate::redis::{Shared, SharedError};

use claim::ClaimLoop;
use lease::InFlight;
use perform::EndpointSlots;
use report::Report;

/// First pause before reconnecting to the database (doubling up to [`MAX_RECONNECT_DELAY`]).
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Longest pause between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(10);
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
    /// `streams.ca_file` could not be read (it was checked at start: it changed since).
    #[error("invalid TLS setting for `streams.ca_file`: {0}")]
    StreamTls(crate::tls::TlsError),
    /// The database's extension is of a version this worker does not support: it stops rather
    /// than call an API it does not know.
    #[error(transparent)]
    Incompatible(#[from] crate::version::Mismatch),
}

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
    /// NATS clients of the `nats` action, one per server URL.
    nats: crate::actions::nats::Pool,
    /// Redis connections of the `redis_stream` action, one per server URL.
    redis_streams: crate::actions::redis_stream::Pool,
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
    /// Jobs being performed now, for heartbeats.
    in_flight: InFlight,
    /// Why the worker stopped by itself (an extension of an unsupported version), for `run`.
    fatal: std::sync::Mutex<Option<crate::version::Mismatch>>,
}

/// Run the worker until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let metrics = Metrics::new()?;
    let streams =
        crate::tls::StreamTls::new(&config.streams.ca_file).map_err(RunError::StreamTls)?;
    let ctx = Arc::new(Context {
        shared: Shared::new(&config.redis, metrics.clone())?,
        local_limits: ratelimit::Local::default(),
        worker: config.worker_name(),
        http: http::client(&config.http.user_agent, config.allow_networks())?,
        mailer: Mailer::new(&config.smtp)?,
        allow: config.allow_networks(),
        nats: crate::actions::nats::Pool::new(&streams),
        redis_streams: crate::actions::redis_stream::Pool::new(&streams),
        endpoints: EndpointSlots::new(config.http.max_in_flight_per_endpoint),
        breakers: breaker::Breakers::new(
            config.breaker.failure_threshold,
            Duration::from_millis(config.breaker.open_ms),
        ),
        permits: Arc::new(Semaphore::new(config.concurrency as usize)),
        wake: Arc::new(Notify::new()),
        cancel: CancellationToken::new(),
        in_flight: InFlight::default(),
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
    let breaker_sync = ctx.shared.enabled().then(|| {
        let ctx = ctx.clone();
        tokio::spawn(
            async move { breaker::sync::follow_replicas(&ctx.breakers, &ctx.shared).await },
        )
    });
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
    let mut backoff = Backoff::new(FIRST_RECONNECT_DELAY, MAX_RECONNECT_DELAY);
    while !ctx.cancel.is_cancelled() {
        let delay = match connect_all(&ctx).await {
            Ok((claims, reports)) => {
                backoff.reset();
                ctx.metrics
                    .set_extension_version(reports.extension_version());
                ctx.metrics.set_ready();
                Session::start(&ctx, &claims, reports)
                    .await
                    .run(claims)
                    .await;
                backoff.next_wait()
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
                let delay = backoff.next_wait();
                ctx.metrics.set_not_ready(format!("{e}"));
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database unavailable");
                delay
            }
        };
        if ctx.cancel.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
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

/// One database session: the claim loops' shared parts, and the tasks beside them on the
/// reporting connection (the reporter, heartbeats, the breakers' report, the health watch).
struct Session {
    ctx: Arc<Context>,
    /// The connection that reports outcomes and renews leases.
    reports: Arc<Db>,
    /// Tasks performing claimed jobs.
    tasks: TaskTracker,
    /// To the reporter.
    tx: mpsc::UnboundedSender<Report>,
    /// Cancelled when leases can no longer be renewed, or the first claim loop ends: the
    /// session then stops claiming at once (it could not keep what it claims) and the worker
    /// reconnects.
    leases_lost: CancellationToken,
    /// Heartbeats and the breakers' report, stopped once the jobs in flight are done.
    beside: Vec<tokio::task::JoinHandle<()>>,
    /// The health watch, stopped as soon as the claim loops end (it must not say "ready" while
    /// the session winds down).
    health: Option<tokio::task::JoinHandle<()>>,
    reporter: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Prepare the connections, then start the reporter, heartbeats, breaker reports and (with
    /// metrics) the health watch on `reports`.
    async fn start(ctx: &Arc<Context>, claims: &[Arc<Db>], reports: Arc<Db>) -> Session {
        prepare(ctx, claims, &reports).await;
        let (tx, rx) = mpsc::unbounded_channel();
        let reporter = tokio::spawn(report::report(ctx.clone(), reports.clone(), rx));
        let leases_lost = ctx.cancel.child_token();
        let beside = vec![
            tokio::spawn(lease::heartbeat(
                ctx.clone(),
                reports.clone(),
                leases_lost.clone(),
            )),
            tokio::spawn({
                let (ctx, db) = (ctx.clone(), reports.clone());
                async move {
                    breaker::sync::report_to_database(&ctx.breakers, &db, &ctx.worker, &ctx.metrics)
                        .await
                }
            }),
        ];
        // Queue depth and dispatcher health for the metrics, and readiness (only served with
        // them).
        let health = (!ctx.config.metrics.listen.is_empty())
            .then(|| tokio::spawn(health::watch(ctx.clone(), reports.clone())));
        Session {
            ctx: ctx.clone(),
            reports,
            tasks: TaskTracker::new(),
            tx,
            leases_lost,
            beside,
            health,
            reporter,
        }
    }

    /// Hand a finished attempt to the reporter.
    fn report(&self, report: Report) {
        let _ = self.tx.send(report);
    }

    /// Run the claim loops on `claims` until the first ends (connection lost, shutdown), then
    /// wind down: in-flight jobs get `shutdown_timeout`, the reporter flushes.
    async fn run(self, claims: Vec<Arc<Db>>) {
        let session = &self;
        let loops = claims.iter().enumerate().map(|(i, db)| async move {
            let ended = ClaimLoop::new(session, db, i == 0).run().await;
            session.leases_lost.cancel();
            if let Err(e) = ended {
                tracing::warn!(error = %e, "database session ended");
            }
        });
        futures_util::future::join_all(loops).await;
        if let Some(health) = &self.health {
            health.abort();
        }
        if !self.ctx.cancel.is_cancelled() {
            self.ctx
                .metrics
                .set_not_ready("the database connection was lost; reconnecting");
        }
        self.finish().await;
    }

    /// In-flight jobs get `shutdown_timeout` to finish; then the tasks beside stop and the
    /// reporter flushes what it was sent.
    async fn finish(self) {
        self.tasks.close();
        if tokio::time::timeout(self.ctx.config.shutdown_timeout(), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = self.tasks.len(),
                "actions still running after the shutdown timeout; their jobs will be redelivered after the lease"
            );
        }
        for task in &self.beside {
            task.abort();
        }
        drop(self.tx);
        let _ = self.reporter.await;
    }
}

/// Name the connections, make the claiming ones commit without waiting for the WAL flush,
/// and LISTEN for wake-ups on the first.
async fn prepare(ctx: &Context, claims: &[Arc<Db>], reports: &Arc<Db>) {
    for conn in claims.iter().chain([reports]) {
        if let Err(e) = conn.identify(&ctx.worker).await {
            tracing::warn!(error = %e, "cannot set application_name");
        }
    }
    for conn in claims {
        if let Err(e) = conn.commit_without_flush().await {
            tracing::warn!(error = %e, "cannot set synchronous_commit on a claiming session");
        }
    }
    if let Err(e) = claims[0].listen().await {
        tracing::warn!(error = %e, "LISTEN failed; relying on polling");
    }
    tracing::info!("connected to the database");
}
