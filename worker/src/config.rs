//! Worker configuration, in layers: the commented defaults compiled in (`config.default.toml`),
//! then the user's TOML file, then `FRAISEQL_OBSERVERS_*` environment variables, then flags.
//! [`Config::validate`] names the bad field and the fix.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fraiseql_observers_core::net;

use crate::signing::SigningKey;

use serde::Deserialize;

/// The defaults, with a comment on every key.
pub const DEFAULTS: &str = include_str!("../config.default.toml");

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "FRAISEQL_OBSERVERS_";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: {0}")]
    Shape(String),
    #[error("invalid value for `{field}`: {problem}; {fix}")]
    Invalid {
        field: &'static str,
        problem: String,
        fix: &'static str,
    },
}

/// The validated configuration. Field meanings, units and defaults are documented in
/// `config.default.toml`, which is the single source of the defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Connection string of the database with the extension.
    pub database_url: String,
    /// Name recorded on claimed jobs; empty means `<hostname>-<pid>`.
    pub worker_id: String,
    /// Most jobs claimed in one call.
    pub batch_size: u32,
    /// Most actions in flight at once.
    pub concurrency: u32,
    /// Database sessions that claim jobs.
    pub claim_sessions: u32,
    /// Lease of a claimed job, seconds.
    pub lease_seconds: u32,
    /// Poll interval without wake-ups, milliseconds.
    pub poll_interval_ms: u64,
    /// Run dispatch rounds from this worker too.
    pub dispatch: bool,
    /// Most events per dispatch round.
    pub dispatch_batch: u32,
    /// Grace period for in-flight actions at shutdown, milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Outbound HTTP settings.
    pub http: HttpConfig,
    /// Logging settings.
    pub log: LogConfig,
    /// Circuit breaker settings.
    pub breaker: BreakerConfig,
    /// Prometheus metrics settings.
    pub metrics: MetricsConfig,
    /// SMTP server of the `email` action.
    pub smtp: SmtpConfig,
    /// Redis for state shared by replicas (off when `url` is empty).
    pub redis: RedisConfig,
    /// Export of the audit trail (off when `url` is empty).
    pub elasticsearch: ElasticsearchConfig,
    /// Requests per second allowed per endpoint (`scheme://host:port`), across all replicas
    /// when Redis is configured. Keys are normalised at load (`https://a.b` → `https://a.b:443`).
    #[serde(default)]
    pub rate_limits: BTreeMap<String, f64>,
    /// Signing secrets by name (lowercase), newest first: `whsec_<base64>` each. Actions name
    /// them (`"secret": "orders"`); the database never holds a secret.
    #[serde(default)]
    pub secrets: BTreeMap<String, Vec<String>>,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// User-Agent of outbound requests.
    pub user_agent: String,
    /// Bytes of a failed response's body kept as the error text.
    pub error_body_bytes: usize,
    /// Address blocks (CIDR) deliveries may reach although the network policy refuses them.
    pub allow_networks: Vec<String>,
    /// Most deliveries in flight to one endpoint (scheme://host:port) from this worker.
    pub max_in_flight_per_endpoint: u32,
    /// Delay before a job refused by that limit is due again, milliseconds.
    pub endpoint_retry_ms: u64,
}

impl HttpConfig {
    /// [`HttpConfig::endpoint_retry_ms`] as a duration.
    pub fn endpoint_retry(&self) -> Duration {
        Duration::from_millis(self.endpoint_retry_ms)
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `address:port` to serve `/metrics` on; empty = off.
    pub listen: String,
}

/// `[smtp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// `smtp://[user:password@]host[:port][?tls=required]` or `smtps://...`; empty = e-mail off.
    pub url: String,
    /// Sender of e-mails whose action names none.
    pub from: String,
    /// Timeout of one SMTP exchange, milliseconds.
    pub timeout_ms: u64,
}

/// `[redis]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]` or `rediss://...`; empty = off.
    pub url: String,
    /// Prefix of every key this worker writes.
    pub key_prefix: String,
    /// Timeout of one Redis call, milliseconds; slower counts as unavailable.
    pub timeout_ms: u64,
    /// How long a delivered job stays in the ledger, seconds.
    pub ledger_ttl_seconds: u64,
}

/// `[elasticsearch]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchConfig {
    /// Base URL, e.g. `https://es.internal:9200`; empty = no export.
    pub url: String,
    /// `Authorization: ApiKey <api_key>` when set.
    pub api_key: String,
    /// Indices are `<index_prefix>-YYYY.MM.DD`; the index template has this name.
    pub index_prefix: String,
    /// Most documents per `_bulk` request.
    pub batch_size: u32,
    /// Pause between rounds when nothing is waiting, milliseconds.
    pub flush_ms: u64,
    /// Timeout of one request, milliseconds.
    pub timeout_ms: u64,
    /// Longest pause between retries while Elasticsearch fails, milliseconds.
    pub max_backoff_ms: u64,
}

/// `[breaker]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive endpoint faults that open an endpoint's circuit.
    pub failure_threshold: u32,
    /// How long a circuit stays open before one probe is sent, milliseconds.
    pub open_ms: u64,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// tracing-subscriber filter directive.
    pub filter: String,
}

impl Config {
    /// Build the configuration from all layers: defaults, `file` (if any), the environment
    /// (`env` as name/value pairs, normally `std::env::vars()`), then `overrides` (flags, as
    /// `key = value` TOML pairs with dotted keys).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, toml::Value)],
    ) -> Result<Self, ConfigError> {
        let mut merged = parse_toml(DEFAULTS, "<defaults>")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            merge(&mut merged, parse_toml(&text, &path.display().to_string())?);
        }
        for (var, value) in env {
            let Some(key) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // The config file's path (--config), not a setting.
            if key == "CONFIG" {
                continue;
            }
            // FRAISEQL_OBSERVERS_RATE_LIMITS="https://api.example.com=50 http://10.0.0.5:8080=5".
            if key == "RATE_LIMITS" {
                let mut table = toml::map::Map::new();
                for pair in value.split([',', ' ']).filter(|p| !p.is_empty()) {
                    let parsed = pair
                        .rsplit_once('=')
                        .and_then(|(e, r)| Some((e, r.trim().parse::<f64>().ok()?)));
                    let Some((endpoint, rate)) = parsed else {
                        return Err(ConfigError::Env {
                            var: var.clone(),
                            message: format!("{pair:?} is not endpoint=requests_per_second"),
                        });
                    };
                    table.insert(endpoint.to_string(), toml::Value::Float(rate));
                }
                set(
                    &mut merged,
                    &["rate_limits".to_string()],
                    toml::Value::Table(table),
                );
                continue;
            }
            let path: Vec<String> = key
                .to_ascii_lowercase()
                .split("__")
                .map(str::to_string)
                .collect();
            // FRAISEQL_OBSERVERS_SECRETS__<NAME>="whsec_new whsec_old": names are free-form.
            if let [table, _name] = path.as_slice() {
                if table == "secrets" {
                    let values: Vec<toml::Value> = value
                        .split([' ', ','])
                        .filter(|v| !v.is_empty())
                        .map(|v| toml::Value::String(v.to_string()))
                        .collect();
                    set(&mut merged, &path, toml::Value::Array(values));
                    continue;
                }
            }
            let existing = lookup(&merged, &path).ok_or_else(|| ConfigError::Env {
                var: var.clone(),
                message: "no such setting (see config.default.toml for the keys)".to_string(),
            })?;
            let typed = coerce(existing, &value).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
            set(&mut merged, &path, typed);
        }
        for (key, value) in overrides {
            let path: Vec<String> = key.split('.').map(str::to_string).collect();
            set(&mut merged, &path, value.clone());
        }
        let mut config: Config = merged
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Shape(e.message().to_string()))?;
        config.rate_limits = std::mem::take(&mut config.rate_limits)
            .into_iter()
            .map(|(k, v)| (crate::webhook::endpoint(&k), v))
            .collect();
        // Secret names are case-insensitive (environment variables are upper case).
        config.secrets = std::mem::take(&mut config.secrets)
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        config.validate()?;
        Ok(config)
    }

    /// Check what types cannot: ranges and relations between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.database_url.trim().is_empty() {
            return Err(invalid(
                "database_url",
                "it is empty",
                "set it to a postgres:// URL or a libpq connection string",
            ));
        }
        if self.database_url.parse::<tokio_postgres::Config>().is_err() {
            return Err(invalid(
                "database_url",
                format!("{:?} is not a connection string", self.database_url),
                "use postgres://user@host:port/dbname or \"host=... dbname=...\"",
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(invalid("batch_size", self.batch_size, "use 1 to 10000"));
        }
        if !(1..=100_000).contains(&self.concurrency) {
            return Err(invalid("concurrency", self.concurrency, "use 1 to 100000"));
        }
        if !(1..=16).contains(&self.claim_sessions) {
            return Err(invalid(
                "claim_sessions",
                self.claim_sessions,
                "use 1 to 16",
            ));
        }
        if !(1..=86_400).contains(&self.lease_seconds) {
            return Err(invalid(
                "lease_seconds",
                self.lease_seconds,
                "use 1 to 86400",
            ));
        }
        if !(10..=3_600_000).contains(&self.poll_interval_ms) {
            return Err(invalid(
                "poll_interval_ms",
                self.poll_interval_ms,
                "use 10 to 3600000",
            ));
        }
        if !(1..=1_000_000).contains(&self.dispatch_batch) {
            return Err(invalid(
                "dispatch_batch",
                self.dispatch_batch,
                "use 1 to 1000000",
            ));
        }
        if !(1..=100_000).contains(&self.http.max_in_flight_per_endpoint) {
            return Err(invalid(
                "http.max_in_flight_per_endpoint",
                self.http.max_in_flight_per_endpoint,
                "use 1 to 100000",
            ));
        }
        if !(10..=3_600_000).contains(&self.http.endpoint_retry_ms) {
            return Err(invalid(
                "http.endpoint_retry_ms",
                self.http.endpoint_retry_ms,
                "use 10 to 3600000",
            ));
        }
        if !(1..=10_000).contains(&self.breaker.failure_threshold) {
            return Err(invalid(
                "breaker.failure_threshold",
                self.breaker.failure_threshold,
                "use 1 to 10000",
            ));
        }
        if !(100..=86_400_000).contains(&self.breaker.open_ms) {
            return Err(invalid(
                "breaker.open_ms",
                self.breaker.open_ms,
                "use 100 to 86400000",
            ));
        }
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::Invalid {
                field: "metrics.listen",
                problem: format!("{:?} is not an address:port", self.metrics.listen),
                fix: "use e.g. \"127.0.0.1:9187\", or \"\" to turn metrics off",
            });
        }
        for block in &self.http.allow_networks {
            if let Err(e) = block.parse::<net::Cidr>() {
                return Err(ConfigError::Invalid {
                    field: "http.allow_networks",
                    problem: e.to_string(),
                    fix: "list address blocks such as \"127.0.0.0/8\" or \"::1/128\"",
                });
            }
        }
        for (name, values) in &self.secrets {
            if !fraiseql_observers_core::action::is_secret_name(name) {
                return Err(ConfigError::Invalid {
                    field: "secrets",
                    problem: format!("the name {name:?} is not allowed"),
                    fix: "name secrets with 1 to 64 letters, digits, _ or -",
                });
            }
            if values.is_empty() {
                return Err(ConfigError::Invalid {
                    field: "secrets",
                    problem: format!("secret {name:?} has no value"),
                    fix: "give at least one whsec_<base64> value (the newest first while rotating)",
                });
            }
            for v in values {
                SigningKey::parse(v).map_err(|e| ConfigError::Invalid {
                    field: "secrets",
                    problem: format!("a value of secret {name:?} is not usable: {e}"),
                    fix: "use whsec_ followed by the base64 of 24 to 64 random bytes",
                })?;
            }
        }
        if !self.smtp.url.is_empty() {
            let ok = url::Url::parse(&self.smtp.url)
                .map(|u| matches!(u.scheme(), "smtp" | "smtps") && u.host().is_some())
                .unwrap_or(false);
            if !ok {
                return Err(ConfigError::Invalid {
                    field: "smtp.url",
                    problem: format!("{:?} is not an smtp:// or smtps:// URL", redact(&self.smtp.url)),
                    fix: "use e.g. \"smtp://mail.internal:25\", \"smtp://user:pass@host:587?tls=required\" or \"smtps://host:465\"",
                });
            }
        }
        if !fraiseql_observers_core::action::looks_like_mailbox(&self.smtp.from) {
            return Err(ConfigError::Invalid {
                field: "smtp.from",
                problem: format!("{:?} is not an e-mail address", self.smtp.from),
                fix: "use e.g. \"observers@example.com\" or \"Observers <observers@example.com>\"",
            });
        }
        if !(100..=600_000).contains(&self.smtp.timeout_ms) {
            return Err(invalid(
                "smtp.timeout_ms",
                self.smtp.timeout_ms,
                "use 100 to 600000",
            ));
        }
        if !self.redis.url.is_empty() {
            let ok = url::Url::parse(&self.redis.url)
                .map(|u| matches!(u.scheme(), "redis" | "redis+unix" | "unix"))
                .unwrap_or(false);
            if !ok {
                return Err(ConfigError::Invalid {
                    field: "redis.url",
                    problem: format!("{:?} is not a redis:// or unix:// URL", redact(&self.redis.url)),
                    fix: "use e.g. \"redis://127.0.0.1:6379/0\" (TLS to Redis, rediss://, is not built in: use a TLS proxy such as stunnel), or \"\" to run without Redis",
                });
            }
        }
        if !(10..=60_000).contains(&self.redis.timeout_ms) {
            return Err(invalid(
                "redis.timeout_ms",
                self.redis.timeout_ms,
                "use 10 to 60000",
            ));
        }
        if !(1..=31_536_000).contains(&self.redis.ledger_ttl_seconds) {
            return Err(invalid(
                "redis.ledger_ttl_seconds",
                self.redis.ledger_ttl_seconds,
                "use 1 to 31536000 (keep it above the longest time a job can stay leased)",
            ));
        }
        for (endpoint, rate) in &self.rate_limits {
            let is_endpoint = url::Url::parse(endpoint)
                .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .unwrap_or(false);
            if !(is_endpoint && rate.is_finite() && *rate > 0.0 && *rate <= 1_000_000.0) {
                return Err(ConfigError::Invalid {
                    field: "rate_limits",
                    problem: format!("{endpoint:?} = {rate}"),
                    fix: "map an endpoint (scheme://host[:port]) to requests per second, above 0 and at most 1000000",
                });
            }
        }
        if !self.elasticsearch.url.is_empty() {
            let ok = url::Url::parse(&self.elasticsearch.url)
                .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .unwrap_or(false);
            if !ok {
                return Err(ConfigError::Invalid {
                    field: "elasticsearch.url",
                    problem: format!("{:?} is not an http(s) URL", redact(&self.elasticsearch.url)),
                    fix: "use e.g. \"https://es.internal:9200\", or \"\" to keep the audit trail in Postgres only",
                });
            }
        }
        let prefix = &self.elasticsearch.index_prefix;
        if prefix.is_empty()
            || prefix.starts_with(['-', '_', '+'])
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::Invalid {
                field: "elasticsearch.index_prefix",
                problem: format!("{prefix:?} is not a valid index name"),
                fix: "use lowercase letters, digits, - and _, not starting with -, _ or +",
            });
        }
        if !(1..=10_000).contains(&self.elasticsearch.batch_size) {
            return Err(invalid(
                "elasticsearch.batch_size",
                self.elasticsearch.batch_size,
                "use 1 to 10000",
            ));
        }
        if !(10..=3_600_000).contains(&self.elasticsearch.flush_ms) {
            return Err(invalid(
                "elasticsearch.flush_ms",
                self.elasticsearch.flush_ms,
                "use 10 to 3600000",
            ));
        }
        if !(100..=600_000).contains(&self.elasticsearch.timeout_ms) {
            return Err(invalid(
                "elasticsearch.timeout_ms",
                self.elasticsearch.timeout_ms,
                "use 100 to 600000",
            ));
        }
        if self.elasticsearch.max_backoff_ms < self.elasticsearch.flush_ms {
            return Err(invalid(
                "elasticsearch.max_backoff_ms",
                self.elasticsearch.max_backoff_ms,
                "use at least elasticsearch.flush_ms",
            ));
        }
        if self.log.format != "text" && self.log.format != "json" {
            return Err(invalid(
                "log.format",
                &self.log.format,
                "use \"text\" or \"json\"",
            ));
        }
        Ok(())
    }

    /// The worker name to record on jobs.
    pub fn worker_name(&self) -> String {
        if self.worker_id.is_empty() {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "worker".to_string());
            format!("{host}-{}", std::process::id())
        } else {
            self.worker_id.clone()
        }
    }

    /// The signing keys of the secret `name` (case-insensitive), or None if it is not configured.
    pub fn signing_keys(&self, name: &str) -> Option<Vec<SigningKey>> {
        let values = self.secrets.get(&name.to_ascii_lowercase())?;
        values.iter().map(|v| SigningKey::parse(v).ok()).collect()
    }

    /// The parsed [`HttpConfig::allow_networks`] (validated by [`Config::validate`]).
    pub fn allow_networks(&self) -> Vec<net::Cidr> {
        self.http
            .allow_networks
            .iter()
            .filter_map(|b| b.parse().ok())
            .collect()
    }

    /// [`Config::lease_seconds`] as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(u64::from(self.lease_seconds))
    }

    /// [`Config::poll_interval_ms`] as a duration.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// [`Config::shutdown_timeout_ms`] as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

fn invalid(field: &'static str, problem: impl std::fmt::Display, fix: &'static str) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: format!("{problem} is not allowed"),
        fix,
    }
}

fn parse_toml(text: &str, origin: &str) -> Result<toml::Value, ConfigError> {
    text.parse::<toml::Table>()
        .map(toml::Value::Table)
        .map_err(|e| ConfigError::Syntax {
            path: origin.to_string(),
            message: e.message().to_string(),
        })
}

/// Merge `top` into `base`, tables recursively, other values replaced.
fn merge(base: &mut toml::Value, top: toml::Value) {
    match (base, top) {
        (toml::Value::Table(b), toml::Value::Table(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, t) => *b = t,
    }
}

fn lookup<'a>(v: &'a toml::Value, path: &[String]) -> Option<&'a toml::Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

fn set(v: &mut toml::Value, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        let toml::Value::Table(t) = cur else { return };
        cur = t
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    if let toml::Value::Table(t) = cur {
        t.insert(last.clone(), value);
    }
}

/// An environment string, typed like the default it replaces.
fn coerce(like: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    match like {
        toml::Value::String(_) => Ok(toml::Value::String(raw.to_string())),
        toml::Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("{raw:?} is not an integer")),
        toml::Value::Boolean(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(toml::Value::Boolean(false)),
            _ => Err(format!("{raw:?} is not a boolean (true/false)")),
        },
        toml::Value::Float(_) => raw
            .trim()
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| format!("{raw:?} is not a number")),
        // Lists of strings: comma- or space-separated.
        toml::Value::Array(_) => Ok(toml::Value::Array(
            raw.split([',', ' '])
                .filter(|v| !v.is_empty())
                .map(|v| toml::Value::String(v.to_string()))
                .collect(),
        )),
        _ => Err("this setting cannot be set from the environment".to_string()),
    }
}

/// A URL (or libpq `key=value` string) with its password replaced by `***`, for messages.
pub fn redact(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => raw.to_string(),
        Err(_) => raw
            .split(' ')
            .map(|part| {
                if part.starts_with("password=") {
                    "password=***"
                } else {
                    part
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

impl Config {
    /// This configuration with every credential masked (`validate-config` prints it): passwords
    /// in connection URLs and the signing secrets' values.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.database_url = redact(&c.database_url);
        c.smtp.url = redact(&c.smtp.url);
        c.redis.url = redact(&c.redis.url);
        c.elasticsearch.url = redact(&c.elasticsearch.url);
        if !c.elasticsearch.api_key.is_empty() {
            c.elasticsearch.api_key = "***".to_string();
        }
        for values in c.secrets.values_mut() {
            for v in values.iter_mut() {
                *v = "whsec_***".to_string();
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load(None, env(&[]), &[]).expect("defaults are valid");
        assert_eq!(c.batch_size, 100);
        assert!(c.dispatch);
        assert_eq!(c.http.user_agent, "fraiseql-observers");
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let dir = tempdir();
        let file = dir.join("w.toml");
        std::fs::write(
            &file,
            "batch_size = 7\nconcurrency = 9\n[http]\nuser_agent = \"file\"\n",
        )
        .expect("write");
        let c = Config::load(
            Some(&file),
            env(&[
                ("FRAISEQL_OBSERVERS_CONCURRENCY", "11"),
                ("FRAISEQL_OBSERVERS_HTTP__USER_AGENT", "env"),
                ("UNRELATED", "x"),
            ]),
            &[("concurrency".to_string(), toml::Value::Integer(13))],
        )
        .expect("valid");
        assert_eq!(c.batch_size, 7, "file beats defaults");
        assert_eq!(c.http.user_agent, "env", "env beats file");
        assert_eq!(c.concurrency, 13, "flags beat env");
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::load(None, env(&[("FRAISEQL_OBSERVERS_BATCH_SIZE", "0")]), &[])
            .expect_err("0 is out of range");
        assert!(e.to_string().contains("`batch_size`"), "{e}");
        let e = Config::load(None, env(&[("FRAISEQL_OBSERVERS_BATCH_SIZE", "many")]), &[])
            .expect_err("not a number");
        assert!(
            e.to_string().contains("FRAISEQL_OBSERVERS_BATCH_SIZE"),
            "{e}"
        );
        let e = Config::load(None, env(&[("FRAISEQL_OBSERVERS_NOPE", "1")]), &[])
            .expect_err("unknown key");
        assert!(e.to_string().contains("no such setting"), "{e}");
        let e = Config::load(None, env(&[("FRAISEQL_OBSERVERS_LOG__FORMAT", "xml")]), &[])
            .expect_err("bad enum");
        assert!(e.to_string().contains("`log.format`"), "{e}");
    }

    #[test]
    fn unknown_keys_in_a_file_are_refused() {
        let dir = tempdir();
        let file = dir.join("w.toml");
        std::fs::write(&file, "bach_size = 7\n").expect("write");
        let e = Config::load(Some(&file), env(&[]), &[]).expect_err("typo");
        assert!(e.to_string().contains("bach_size"), "{e}");
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "fo-config-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }
}
