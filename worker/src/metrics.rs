//! Prometheus metrics of the worker, served at `/metrics` on `metrics.listen` (off when empty).
//! Labels are bounded: the observer name and the action type, never URLs or endpoints.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric of the worker.
pub struct Metrics {
    registry: Registry,
    /// Jobs by outcome: claimed, delivered, retried, discarded, snoozed.
    pub jobs: IntCounterVec,
    /// Delivery time of attempted jobs, seconds.
    pub delivery_seconds: HistogramVec,
    /// From an event's capture (or a job's enqueueing) to its successful delivery, seconds.
    pub event_lag_seconds: HistogramVec,
    /// Deliveries in flight now.
    pub in_flight: IntGauge,
    /// Endpoints whose circuit is open or half-open.
    pub open_circuits: IntGauge,
    /// Jobs in the extension's queue by state (from observer_status()).
    pub queue_jobs: GaugeVec,
    /// Events dispatch set aside because they could not be read (from observer_status()).
    pub quarantined_events: IntGauge,
    /// 1 while the worker runs.
    pub up: IntGauge,
    /// 1 while Redis (when configured) answers.
    pub redis_up: IntGauge,
    /// Audit documents Elasticsearch stored.
    pub audit_exported: prometheus::IntCounter,
    /// Failed audit export rounds (Elasticsearch unavailable, refusing, or partial).
    pub audit_export_failures: prometheus::IntCounter,
    /// Redis calls that failed or timed out, by operation.
    pub redis_errors: IntCounterVec,
    /// Unix time of the worker's last successful contact with the database.
    pub last_heartbeat: Gauge,
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
        let jobs = IntCounterVec::new(
            Opts::new(
                "jobs_total",
                "Jobs by outcome (claimed, delivered, retried, discarded, snoozed); action \"ledger\" counts jobs completed from the delivered-ledger without a second delivery.",
            ),
            &["observer", "action", "outcome"],
        )?;
        let buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let delivery_seconds = HistogramVec::new(
            HistogramOpts::new("delivery_seconds", "Time to perform an attempted delivery.")
                .buckets(buckets),
            &["observer", "action"],
        )?;
        let event_lag_seconds = HistogramVec::new(
            HistogramOpts::new(
                "event_to_delivery_seconds",
                "From the capture of an event (its transaction's start; for enqueued jobs the enqueueing) to its successful delivery: the commit-to-delivery lag plus the writing transaction's own duration.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                900.0, 3600.0,
            ]),
            &["observer", "action"],
        )?;
        let in_flight = IntGauge::new("in_flight", "Deliveries in flight.")?;
        let open_circuits = IntGauge::new(
            "open_circuits",
            "Endpoints whose circuit is open or half-open.",
        )?;
        let queue_jobs = GaugeVec::new(
            Opts::new(
                "queue_jobs",
                "Jobs in the queue by state, from observer_status().",
            ),
            &["state"],
        )?;
        let quarantined_events = IntGauge::new(
            "quarantined_events",
            "Events set aside by dispatch because they could not be read, from observer_status().",
        )?;
        let up = IntGauge::new("worker_up", "1 while the worker runs.")?;
        let redis_up = IntGauge::new(
            "redis_up",
            "1 while the configured Redis answers; 0 when it is down or not configured (local state in use).",
        )?;
        let audit_exported = prometheus::IntCounter::new(
            "audit_exported_total",
            "Audit documents Elasticsearch stored.",
        )?;
        let audit_export_failures = prometheus::IntCounter::new(
            "audit_export_failures_total",
            "Audit export rounds that failed (Elasticsearch unavailable, or some documents not taken); documents wait in Postgres.",
        )?;
        let redis_errors = IntCounterVec::new(
            Opts::new(
                "redis_errors_total",
                "Redis calls that failed or timed out, by operation.",
            ),
            &["op"],
        )?;
        let last_heartbeat = Gauge::new(
            "worker_last_contact_seconds",
            "Unix time of the last successful contact with the database.",
        )?;
        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(delivery_seconds.clone()))?;
        registry.register(Box::new(event_lag_seconds.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(open_circuits.clone()))?;
        registry.register(Box::new(queue_jobs.clone()))?;
        registry.register(Box::new(quarantined_events.clone()))?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(redis_up.clone()))?;
        registry.register(Box::new(audit_exported.clone()))?;
        registry.register(Box::new(audit_export_failures.clone()))?;
        registry.register(Box::new(redis_errors.clone()))?;
        registry.register(Box::new(last_heartbeat.clone()))?;
        up.set(1);
        Ok(Arc::new(Metrics {
            registry,
            jobs,
            delivery_seconds,
            event_lag_seconds,
            in_flight,
            open_circuits,
            queue_jobs,
            quarantined_events,
            up,
            redis_up,
            audit_exported,
            audit_export_failures,
            redis_errors,
            last_heartbeat,
        }))
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
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
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

    /// Serve `/metrics` on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let response = if req.uri().path() == "/metrics" {
                            Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(metrics.render())))
                        } else {
                            Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::from_static(b"see /metrics\n")))
                        };
                        Ok::<_, Infallible>(
                            response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
                        )
                    }
                });
                let _ = http1::Builder::new()
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
}
