//! Prometheus metrics of the worker, served at `/metrics` on `metrics.listen` (off when empty),
//! with the health endpoints beside them: `/healthz` (the process serves: always 200) and
//! `/readyz` (200 while the database answers and its extension is of a version this worker
//! supports; 503 with the reason otherwise).
//! Labels are bounded: the observer name, the action type, the job state, Redis operations and
//! the two versions of `build_info`, never URLs or endpoints. The dispatcher's health (lag,
//! undispatched events, time since the last round, blocked) is read from `observer_status()`
//! every 5 s by the runner, so that an alert can fire when capture stops being dispatched.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::db::Health;

/// Buckets of `delivery_seconds`.
const DELIVERY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets of `event_to_delivery_seconds`: up to an hour (a backlog, an endpoint down).
const LAG_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Why `/readyz` answers 503 before the first connection.
const NOT_CONNECTED_YET: &str = "not connected to the database yet";

/// Every metric of the worker.
pub struct Metrics {
    registry: Registry,
    /// Jobs by outcome: claimed, delivered, retried, discarded, snoozed, split (a batch job
    /// given back as its events' jobs).
    pub jobs: IntCounterVec,
    /// Delivery time of attempted jobs, seconds.
    pub delivery_seconds: HistogramVec,
    /// From an event's capture (or a job's enqueueing) to its successful delivery, seconds.
    pub event_lag_seconds: HistogramVec,
    /// Deliveries in flight now.
    pub in_flight: IntGauge,
    /// Endpoints whose circuit is open or half-open.
    pub open_circuits: IntGauge,
    /// 1 while the worker runs.
    pub up: IntGauge,
    /// 1 while Redis (when configured) answers.
    pub redis_up: IntGauge,
    /// Audit documents Elasticsearch stored.
    pub audit_exported: IntCounter,
    /// Failed audit export rounds (Elasticsearch unavailable, refusing, or partial).
    pub audit_export_failures: IntCounter,
    /// Redis calls that failed or timed out, by operation.
    pub redis_errors: IntCounterVec,
    /// Unix time of the worker's last successful contact with the database.
    pub last_heartbeat: Gauge,
    /// What `observer_status()` said last.
    status: StatusGauges,
    /// 1, labelled with the worker's and the extension's versions.
    pub build_info: IntGaugeVec,
    /// 1 while `/readyz` answers 200.
    pub ready: IntGauge,
    /// Why the worker is not ready (None: ready), for `/readyz`.
    not_ready: Mutex<Option<String>>,
    /// `process_*` metrics of this process, unprefixed as every exporter names them.
    process: Registry,
}

/// The queue and the dispatcher as `observer_status()` describes them, read every 5 s.
struct StatusGauges {
    /// Jobs in the extension's queue by state.
    queue_jobs: GaugeVec,
    /// Events dispatch set aside because they could not be read.
    quarantined_events: IntGauge,
    /// Age of the oldest committed event no dispatch round has read, seconds.
    dispatch_lag: Gauge,
    /// Committed events no dispatch round has read yet.
    undispatched_events: IntGauge,
    /// Seconds since the last dispatch round (database clock); NaN before the first round.
    since_last_round: Gauge,
    /// Sessions holding the dispatch round's lock for over 5 s (0: not blocked).
    dispatch_blocked: IntGauge,
    /// 1 while observer_status() calls dispatch healthy.
    dispatch_healthy: IntGauge,
    /// 1 while the extension's background dispatcher process runs.
    background_dispatcher: IntGauge,
}

/// `metric`, registered in `registry`.
fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> Result<M, prometheus::Error> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl StatusGauges {
    fn new(r: &Registry) -> Result<Self, prometheus::Error> {
        let since_last_round = register(r, Gauge::new(
            "dispatch_seconds_since_last_round",
            "Seconds since the last dispatch round ended, by the database clock (NaN before the first round), from observer_status().",
        )?)?;
        since_last_round.set(f64::NAN);
        Ok(StatusGauges {
            queue_jobs: register(r, GaugeVec::new(
                Opts::new("queue_jobs", "Jobs in the queue by state, from observer_status()."),
                &["state"],
            )?)?,
            quarantined_events: register(r, IntGauge::new(
                "quarantined_events",
                "Events set aside by dispatch because they could not be read, from observer_status().",
            )?)?,
            dispatch_lag: register(r, Gauge::new(
                "dispatch_lag_seconds",
                "Age of the oldest committed event no dispatch round has read (0 when none waits), from observer_status().",
            )?)?,
            undispatched_events: register(r, IntGauge::new(
                "dispatch_undispatched_events",
                "Committed events no dispatch round has read yet (capped at 1000000), from observer_status().",
            )?)?,
            since_last_round,
            dispatch_blocked: register(r, IntGauge::new(
                "dispatch_blocked_sessions",
                "Sessions that have held the dispatch round's lock for over 5 s (observer_status() dispatch.blocked_by lists them); 0 when dispatch is not blocked.",
            )?)?,
            dispatch_healthy: register(r, IntGauge::new(
                "dispatch_healthy",
                "1 while observer_status() calls dispatch healthy: no event waits, or a round ended within max(5 s, 3 x dispatch_interval).",
            )?)?,
            background_dispatcher: register(r, IntGauge::new(
                "dispatch_background_running",
                "1 while the extension's background dispatcher process runs (observer_status() dispatch.background_worker).",
            )?)?,
        })
    }

    fn record(&self, health: &Health) {
        for (state, n) in &health.jobs {
            self.queue_jobs
                .with_label_values(&[state.as_str()])
                .set(*n as f64);
        }
        self.quarantined_events.set(health.quarantined_events);
        self.undispatched_events.set(health.undispatched_events);
        self.dispatch_lag.set(health.lag_seconds);
        self.since_last_round
            .set(health.since_last_round.unwrap_or(f64::NAN));
        self.dispatch_blocked.set(health.blocked_sessions);
        self.dispatch_healthy.set(i64::from(health.healthy));
        self.background_dispatcher
            .set(i64::from(health.background_worker));
    }
}

/// Why the metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metric registration failed: {0}")]
    Register(#[from] prometheus::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

impl Metrics {
    pub fn new() -> Result<Arc<Self>, MetricsError> {
        let registry = Registry::new_custom(Some("fraiseql_observers".into()), None)?;
        let r = &registry;
        let seconds = |name: &str, help: &str, buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            register(r, HistogramVec::new(opts, &["observer", "action"])?)
        };
        let build_info = register(r, IntGaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1: the worker's version and the installed extension's (empty until the first connection).",
            ),
            &["version", "extension_version"],
        )?)?;
        build_info
            .with_label_values(&[crate::version::WORKER, ""])
            .set(1);
        // Outside the prefixed registry: process_cpu_seconds_total and the rest keep the names
        // every dashboard and alert for process health expects.
        let process = Registry::new();
        process.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let metrics = Metrics {
            jobs: register(r, IntCounterVec::new(
                Opts::new(
                    "jobs_total",
                    "Jobs by outcome (claimed, delivered, retried, discarded, snoozed, split: a batch job given back as its events' jobs); action \"ledger\" counts jobs completed from the delivered-ledger without a second delivery.",
                ),
                &["observer", "action", "outcome"],
            )?)?,
            delivery_seconds: seconds("delivery_seconds", "Time to perform an attempted delivery.", DELIVERY_BUCKETS)?,
            event_lag_seconds: seconds(
                "event_to_delivery_seconds",
                "From the capture of an event (its transaction's start; for enqueued jobs the enqueueing) to its successful delivery: the commit-to-delivery lag plus the writing transaction's own duration.",
                LAG_BUCKETS,
            )?,
            in_flight: register(r, IntGauge::new("in_flight", "Deliveries in flight.")?)?,
            open_circuits: register(r, IntGauge::new(
                "open_circuits",
                "Endpoints whose circuit is open or half-open.",
            )?)?,
            up: register(r, IntGauge::new("worker_up", "1 while the worker runs.")?)?,
            redis_up: register(r, IntGauge::new(
                "redis_up",
                "1 while the configured Redis answers; 0 when it is down or not configured (local state in use).",
            )?)?,
            audit_exported: register(r, IntCounter::new(
                "audit_exported_total",
                "Audit documents Elasticsearch stored.",
            )?)?,
            audit_export_failures: register(r, IntCounter::new(
                "audit_export_failures_total",
                "Audit export rounds that failed (Elasticsearch unavailable, or some documents not taken); documents wait in Postgres.",
            )?)?,
            redis_errors: register(r, IntCounterVec::new(
                Opts::new("redis_errors_total", "Redis calls that failed or timed out, by operation."),
                &["op"],
            )?)?,
            last_heartbeat: register(r, Gauge::new(
                "worker_last_contact_seconds",
                "Unix time of the last successful contact with the database.",
            )?)?,
            status: StatusGauges::new(r)?,
            build_info,
            ready: register(r, IntGauge::new(
                "ready",
                "1 while /readyz answers 200: the database answers and its extension's version is supported.",
            )?)?,
            not_ready: Mutex::new(Some(NOT_CONNECTED_YET.to_string())),
            process,
            registry,
        };
        metrics.up.set(1);
        Ok(Arc::new(metrics))
    }

    /// Export what one `observer_status()` says: queue depth by state, quarantined events and
    /// the dispatcher's health.
    pub fn record_health(&self, health: &Health) {
        self.status.record(health);
        self.set_extension_version(&health.extension_version);
    }

    /// Label `build_info` with the extension's version `version` (one series: the previous
    /// version's is removed).
    pub fn set_extension_version(&self, version: &str) {
        let current = self
            .build_info
            .get_metric_with_label_values(&[crate::version::WORKER, version])
            .map(|g| g.get() == 1)
            .unwrap_or(false);
        if !current {
            self.build_info.reset();
            self.build_info
                .with_label_values(&[crate::version::WORKER, version])
                .set(1);
        }
    }

    /// The worker can work: `/readyz` answers 200.
    pub fn set_ready(&self) {
        self.set_readiness(None);
    }

    /// The worker cannot work, for `reason` (one line, shown by `/readyz`).
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.set_readiness(Some(reason.into()));
    }

    fn set_readiness(&self, reason: Option<String>) {
        self.ready.set(i64::from(reason.is_none()));
        *self.not_ready.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    /// Ok while ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        match &*self.not_ready.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }

    /// Count one job outcome.
    pub fn job(&self, observer: &str, action: &str, outcome: &str) {
        self.jobs
            .with_label_values(&[observer, action, outcome])
            .inc();
    }

    /// Record a delivery's duration.
    pub fn delivery(&self, observer: &str, action: &str, took: Duration) {
        self.delivery_seconds
            .with_label_values(&[observer, action])
            .observe(took.as_secs_f64());
    }

    /// Record the lag of a delivered event captured at `event_at` (Unix seconds, database clock).
    pub fn event_lag(&self, observer: &str, action: &str, event_at: f64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        // Clocks of the worker and the database may differ slightly: never negative.
        self.event_lag_seconds
            .with_label_values(&[observer, action])
            .observe((now - event_at).max(0.0));
    }

    /// Note a successful contact with the database now.
    pub fn contact(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_heartbeat.set(now);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Bind `addr` for [`Metrics::serve`] (at start-up, so a taken port is a clear error).
    pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, MetricsError> {
        let listen: SocketAddr = addr.parse().map_err(|_| MetricsError::Listen {
            addr: addr.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an address:port"),
        })?;
        tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| MetricsError::Listen {
                addr: addr.to_string(),
                source,
            })
    }

    /// The answer to a request for `path`: status, content type, body.
    fn respond(&self, path: &str) -> (u16, &'static str, Bytes) {
        const TEXT: &str = "text/plain; charset=utf-8";
        match path {
            "/metrics" => (200, "text/plain; version=0.0.4", Bytes::from(self.render())),
            // The process serves: a liveness probe restarts the worker only when it does not.
            "/healthz" => (200, TEXT, Bytes::from_static(b"ok\n")),
            "/readyz" => match self.readiness() {
                Ok(()) => (200, TEXT, Bytes::from_static(b"ready\n")),
                Err(reason) => (503, TEXT, Bytes::from(format!("not ready: {reason}\n"))),
            },
            _ => (
                404,
                TEXT,
                Bytes::from_static(b"see /metrics, /healthz, /readyz\n"),
            ),
        }
    }

    /// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        let connections = crate::serve::Connections::default();
        loop {
            let (stream, permit) = connections.accept(&listener, "metrics").await;
            let metrics = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (status, content_type, body) = metrics.respond(req.uri().path());
                    async move {
                        let response = Response::builder()
                            .status(status)
                            .header("content-type", content_type)
                            .body(Full::new(body));
                        Ok::<_, Infallible>(
                            response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
                        )
                    }
                });
                let _ = crate::serve::http1()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_bounded_labels() {
        let m = Metrics::new().expect("metrics");
        m.job("orders", "webhook", "delivered");
        m.job("orders", "webhook", "delivered");
        m.delivery("orders", "webhook", Duration::from_millis(20));
        let text = m.render();
        assert!(text.contains(r#"fraiseql_observers_jobs_total{action="webhook",observer="orders",outcome="delivered"} 2"#), "{text}");
        assert!(text.contains("fraiseql_observers_worker_up 1"), "{text}");
        assert!(
            text.contains("fraiseql_observers_delivery_seconds_count"),
            "{text}"
        );
    }

    #[test]
    fn dispatcher_health_and_build_info_follow_observer_status() {
        let m = Metrics::new().expect("metrics");
        let status = serde_json::json!({
            "jobs": {"pending": 3, "running": 1, "completed": 10, "dead": 2},
            "dispatch": {"undispatched_events": 7, "lag_seconds": 12.5, "quarantined_events": 1,
                         "healthy": false, "background_worker": true,
                         "blocked_by": [{"pid": 1}, {"pid": 2}]}
        });
        m.record_health(&Health::from_status(&status, Some(42.0), "0.2.0".into()));
        let text = m.render();
        for line in [
            r#"fraiseql_observers_queue_jobs{state="dead"} 2"#,
            "fraiseql_observers_dispatch_undispatched_events 7",
            "fraiseql_observers_dispatch_lag_seconds 12.5",
            "fraiseql_observers_dispatch_seconds_since_last_round 42",
            "fraiseql_observers_dispatch_blocked_sessions 2",
            "fraiseql_observers_dispatch_healthy 0",
            "fraiseql_observers_dispatch_background_running 1",
            "fraiseql_observers_quarantined_events 1",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        let info = |ext: &str| {
            format!(
                r#"fraiseql_observers_build_info{{extension_version="{ext}",version="{}"}} 1"#,
                crate::version::WORKER
            )
        };
        assert!(text.contains(&info("0.2.0")), "{text}");
        // One series: a new extension version replaces the old one.
        m.set_extension_version("0.3.0");
        let text = m.render();
        assert!(text.contains(&info("0.3.0")), "{text}");
        assert!(!text.contains(&info("0.2.0")), "{text}");
        // Before any round the age is unknown, not 0 (which would read "just now").
        m.record_health(&Health::from_status(&status, None, "0.2.0".into()));
        assert!(
            m.render()
                .contains("fraiseql_observers_dispatch_seconds_since_last_round NaN"),
            "{}",
            m.render()
        );
    }

    #[test]
    fn process_metrics_are_exported_unprefixed() {
        let text = Metrics::new().expect("metrics").render();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "missing {name}\n{text}"
            );
        }
        assert!(!text.contains("fraiseql_observers_process_"), "{text}");
    }

    #[test]
    fn healthz_always_answers_and_readyz_names_the_reason() {
        let m = Metrics::new().expect("metrics");
        assert_eq!(m.respond("/healthz").0, 200);
        let (status, _, body) = m.respond("/readyz");
        assert_eq!(status, 503);
        assert_eq!(&body[..], b"not ready: not connected to the database yet\n");
        assert!(m.render().contains("fraiseql_observers_ready 0"));
        m.set_ready();
        assert_eq!(m.respond("/readyz").0, 200);
        assert!(m.render().contains("fraiseql_observers_ready 1"));
        m.set_not_ready("the database does not answer");
        let (status, _, body) = m.respond("/readyz");
        assert_eq!(status, 503);
        assert!(String::from_utf8_lossy(&body).contains("the database does not answer"));
        assert_eq!(m.respond("/healthz").0, 200);
        assert_eq!(m.respond("/nope").0, 404);
    }
}
