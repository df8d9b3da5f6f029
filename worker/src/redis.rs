//! State shared by every worker replica through Redis (`[redis] url`; off when empty):
//!
//! - **circuit breakers**: a replica whose breaker opens for an endpoint writes
//!   `<prefix>breaker:<endpoint>` = the open-until time (Unix ms, expiring with it); every replica
//!   reads the keys of its endpoints four times a second and opens its own breaker to match, so
//!   the others stop within a second. A probe that succeeds deletes the key.
//! - **rate limits**: the GCRA slot of each rate-limited endpoint is `<prefix>rate:<endpoint>`,
//!   reserved atomically by a Lua script using the Redis server's clock, so N requests per second
//!   hold across all replicas together.
//! - **the delivered-ledger**: after a 2xx, the worker sets `<prefix>delivered:<job id>:<webhook-id>`
//!   (with a TTL) before it reports the completion to Postgres; a job redelivered after a crash
//!   in between is found there and completed without a second request.
//!
//! `rediss://` connects with TLS and verifies the server's certificate against `redis.ca_file`
//! (or the public CAs), with a client certificate when `redis.cert_file` is set
//! ([`crate::tls::redis_certificates`]).
//!
//! Every call has a short timeout. When Redis is down or slow, delivery goes on with this
//! process's own state (breakers and rate limits per replica, no ledger): the
//! `redis_up` gauge drops to 0, `redis_errors_total` counts the failures, and one log line marks
//! each change between available and unavailable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{redact, RedisConfig};
use crate::metrics::Metrics;
use crate::ratelimit::Slot;

/// GCRA reservation (see [`crate::ratelimit::step`]), atomically in Redis with its clock.
/// KEYS[1] the endpoint's key; ARGV: interval µs, max wait µs. Returns the wait in µs if a slot
/// was reserved, or -(retry after µs) - 1 if not.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local interval = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local slot = math.max(tat, now)
local wait = slot - now
if wait > max_wait then
  return -(wait - max_wait) - 1
end
redis.call('SET', KEYS[1], string.format('%.0f', slot + interval), 'PX', math.ceil((slot + interval - now) / 1000) + 1000)
return wait
";

/// Why Redis could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("redis.url {url}: {source}")]
    Redis {
        url: String,
        source: redis::RedisError,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// The Redis connection (or none), with its settings.
pub struct Shared {
    conn: Option<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    ledger_ttl_secs: u64,
    up: AtomicBool,
    metrics: Arc<Metrics>,
    gcra: redis::Script,
}

impl Shared {
    /// Connect lazily (a Redis that is down at start-up is only a degradation).
    pub fn new(config: &RedisConfig, metrics: Arc<Metrics>) -> Result<Self, SharedError> {
        let conn = if config.url.is_empty() {
            None
        } else {
            let error = |source| SharedError::Redis {
                url: redact(&config.url),
                source,
            };
            let certificates = if config.url.starts_with("rediss://") {
                // The redis crate builds its rustls configuration with the process default.
                crate::tls::install_default_provider();
                crate::tls::redis_certificates(
                    &config.ca_file,
                    &config.cert_file,
                    &config.key_file,
                )?
            } else {
                None
            };
            let client = match certificates {
                Some(certificates) => {
                    redis::Client::build_with_tls(config.url.as_str(), certificates)
                }
                None => redis::Client::open(config.url.as_str()),
            }
            .map_err(error)?;
            let timeout = Duration::from_millis(config.timeout_ms);
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            Some(ConnectionManager::new_lazy_with_config(client, manager_config).map_err(error)?)
        };
        metrics.redis_up.set(i64::from(conn.is_some()));
        Ok(Shared {
            up: AtomicBool::new(conn.is_some()),
            conn,
            prefix: config.key_prefix.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            ledger_ttl_secs: config.ledger_ttl_seconds,
            metrics,
            gcra: redis::Script::new(GCRA),
        })
    }

    /// Whether Redis is configured.
    pub fn enabled(&self) -> bool {
        self.conn.is_some()
    }

    /// Run one Redis call with the timeout; `None` when Redis is off, down or slow (counted,
    /// logged once per change of availability).
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn.clone()?;
        let result = match tokio::time::timeout(self.timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            // A certificate problem gets its fix: the crate reports rustls' error as text.
            Ok(Err(e)) => Err(match crate::tls::redis_hint(&e.to_string()) {
                Some(hint) => format!("{e}; {hint}"),
                None => e.to_string(),
            }),
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        match result {
            Ok(v) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "redis available again: shared breakers, rate limits and ledger in use"
                    );
                    self.metrics.redis_up.set(1);
                }
                Some(v)
            }
            Err(error) => {
                self.metrics.redis_errors.with_label_values(&[op]).inc();
                if self.up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%error, op, "redis unavailable: using this worker's own breakers and rate limits, no delivered-ledger, until it is back");
                    self.metrics.redis_up.set(0);
                }
                None
            }
        }
    }

    fn key(&self, kind: &str, rest: &str) -> String {
        format!("{}{kind}:{rest}", self.prefix)
    }

    /// Tell the other replicas that `endpoint`'s circuit is open until `until`.
    pub async fn publish_open(&self, endpoint: &str, until: SystemTime) {
        let Ok(left) = until.duration_since(SystemTime::now()) else {
            return;
        };
        let key = self.key("breaker", endpoint);
        let value = unix_ms(until);
        let px = left.as_millis().max(1) as u64;
        self.call("breaker_open", |mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(value)
                .arg("PX")
                .arg(px)
                .query_async::<()>(&mut c)
                .await
        })
        .await;
    }

    /// Tell the other replicas that `endpoint`'s circuit closed.
    pub async fn publish_closed(&self, endpoint: &str) {
        let key = self.key("breaker", endpoint);
        self.call("breaker_close", |mut c| async move {
            redis::cmd("DEL").arg(&key).query_async::<()>(&mut c).await
        })
        .await;
    }

    /// The circuits other replicas opened, among `endpoints`: (endpoint, open until).
    pub async fn open_circuits(&self, endpoints: &[String]) -> Vec<(String, SystemTime)> {
        if endpoints.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = endpoints.iter().map(|e| self.key("breaker", e)).collect();
        let values: Option<Vec<Option<u64>>> = self
            .call("breaker_read", |mut c| async move {
                redis::cmd("MGET").arg(&keys).query_async(&mut c).await
            })
            .await;
        values
            .unwrap_or_default()
            .into_iter()
            .zip(endpoints)
            .filter_map(|(v, e)| Some((e.clone(), UNIX_EPOCH + Duration::from_millis(v?))))
            .collect()
    }

    /// Reserve a rate-limit slot for `endpoint` across all replicas; `None` if Redis is off or
    /// unavailable (the caller then uses its local limiter).
    pub async fn take_slot(&self, endpoint: &str, rate: f64, max_wait: Duration) -> Option<Slot> {
        let key = self.key("rate", endpoint);
        let interval = crate::ratelimit::interval_us(rate);
        let max_wait_us = max_wait.as_micros() as u64;
        let script = &self.gcra;
        let answer: i64 = self
            .call("rate_limit", |mut c| async move {
                script
                    .key(&key)
                    .arg(interval)
                    .arg(max_wait_us)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Some(if answer >= 0 {
            Slot::Wait(Duration::from_micros(answer as u64))
        } else {
            Slot::Busy(Duration::from_micros((-answer - 1) as u64))
        })
    }

    fn ledger_key(&self, job_id: i64, idempotency_key: &str) -> String {
        self.key("delivered", &format!("{job_id}:{idempotency_key}"))
    }

    /// Which of these jobs (id, webhook-id) the ledger says were delivered; all false when
    /// Redis is off or unavailable.
    pub async fn delivered(&self, jobs: &[(i64, &str)]) -> Vec<bool> {
        if jobs.is_empty() || !self.enabled() {
            return vec![false; jobs.len()];
        }
        let keys: Vec<String> = jobs.iter().map(|(id, k)| self.ledger_key(*id, k)).collect();
        let found: Option<Vec<Option<String>>> = self
            .call("ledger_read", |mut c| async move {
                redis::cmd("MGET").arg(&keys).query_async(&mut c).await
            })
            .await;
        match found {
            Some(v) if v.len() == jobs.len() => v.into_iter().map(|x| x.is_some()).collect(),
            _ => vec![false; jobs.len()],
        }
    }

    /// Record these jobs (id, webhook-id) as delivered, before their completion is reported.
    pub async fn record_delivered(&self, jobs: &[(i64, &str)]) {
        if jobs.is_empty() || !self.enabled() {
            return;
        }
        let mut pipe = redis::pipe();
        for (id, k) in jobs {
            pipe.cmd("SET")
                .arg(self.ledger_key(*id, k))
                .arg(1)
                .arg("EX")
                .arg(self.ledger_ttl_secs)
                .ignore();
        }
        self.call("ledger_write", |mut c| async move {
            pipe.query_async::<()>(&mut c).await
        })
        .await;
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
