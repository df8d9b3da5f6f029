//! Worker configuration, in layers: the commented defaults compiled in (`config.default.toml`),
//! then the user's TOML file, then `FRAISEQL_OBSERVERS_*` environment variables, then flags.
//! [`Config::validate`] names the bad field and the fix; [`Config::render`] prints the effective
//! configuration with every credential masked (`validate-config`).
//!
//! The rooms: this file holds the types (a struct per `[table]`, enums for closed sets) and
//! [`Config::load`]; `load` merges the layers (environment names, `_FILE` variables, typing of
//! environment strings); `secret` reads and checks `[secrets.<name>]` by hand, never quoting a
//! value; `rules` holds one small helper per kind of check (range, duration, URL scheme, ...)
//! and `validate` lists the checks with them; `redact` masks passwords for messages and output;
//! `render` prints the configuration as TOML or JSON; `console` holds the `[console]` section and
//! resolves its operators' token references.

mod console;
mod load;
mod redact;
mod render;
mod rules;
mod secret;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fraiseql_observers_core::net;
use serde::{Deserialize, Serialize};

use crate::signing::SigningKey;

pub use console::{constant_time_eq, ConsoleConfig, Tokens};
pub use load::read_secret_file;
pub use redact::redact;
pub use render::Format;
pub use secret::Secret;

/// The defaults, with a comment on every key.
pub const DEFAULTS: &str = include_str!("../../config.default.toml");

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "FRAISEQL_OBSERVERS_";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file given by `--config` (or to `validate-config`) cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file (or the compiled-in defaults) is not TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    /// A `FRAISEQL_OBSERVERS_*` variable names no setting, or its value has the wrong form.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// serde's refusal of the merged tree: an unknown key, or a value of the wrong type; `key`
    /// is where (`http.timeout_ms`), and the problem never quotes a value.
    #[error("invalid configuration: `{key}`: {problem}")]
    Shape { key: String, problem: String },
    /// TLS settings (`sslmode` and the files of `database_url`, `redis.ca_file`, ...); the
    /// message names the parameter and the fix.
    #[error("invalid TLS setting for `{field}`: {source}")]
    Tls {
        field: &'static str,
        source: crate::tls::TlsError,
    },
    /// A rule of `validate` (or a closed set) failed: the field, what is wrong, the fix.
    #[error("invalid value for `{field}`: {problem}; {fix}")]
    Invalid {
        field: &'static str,
        problem: String,
        fix: String,
    },
    /// A `[secrets.<name>]` entry; the message never holds a secret's value.
    #[error("invalid value for `secrets.{name}`: {problem}; {fix}")]
    Secret {
        name: String,
        problem: String,
        fix: String,
    },
    /// The configuration could not be printed (`validate-config`); not expected to happen.
    #[error("cannot print the configuration as {format}: {message}")]
    Render {
        format: &'static str,
        message: String,
    },
}

/// The validated configuration. Field meanings, units and defaults are documented in
/// `config.default.toml`, which is the single source of the defaults.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    /// Circuit breaker settings.
    pub breaker: BreakerConfig,
    /// Prometheus metrics settings.
    pub metrics: MetricsConfig,
    /// SMTP server of the `email` action.
    pub smtp: SmtpConfig,
    /// Redis for state shared by replicas (off when `url` is empty).
    pub redis: RedisConfig,
    /// TLS to the servers of the stream actions (`nats`, `redis_stream`).
    pub streams: StreamsConfig,
    /// Requests per second allowed per endpoint (`scheme://host:port`), across all replicas
    /// when Redis is configured. Keys are normalised at load (`https://a.b` → `https://a.b:443`).
    #[serde(default)]
    pub rate_limits: BTreeMap<String, f64>,
    /// Export of the audit trail (off when `url` is empty).
    pub elasticsearch: ElasticsearchConfig,
    /// Logging settings.
    pub log: LogConfig,
    /// Secrets by name (lowercase): signing secrets (`keys`), each bound to the destinations
    /// it may sign for, and credentials (`value`) that actions reference as a URL or header
    /// value (`{"secret": "stripe_token"}`); the database never holds a secret. Read by hand
    /// from the merged TOML (not by serde) so that no error quotes a value.
    #[serde(skip_deserializing)]
    pub secrets: BTreeMap<String, Secret>,
    /// The operator console (`fraiseql-observers console`; `run` serves it too when the section
    /// is present). None: no `[console]` section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleConfig>,
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `address:port` to serve `/metrics` on; empty = off.
    pub listen: String,
}

/// `[smtp]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// `smtp://[user:password@]host[:port][?tls=required]` or `smtps://...`; empty = e-mail off.
    pub url: String,
    /// Sender of e-mails whose action names none.
    pub from: String,
    /// Senders an action's `from` may name besides [`SmtpConfig::from`]: addresses
    /// (`shop@example.com`) or whole domains (`@example.com`). Default: none.
    pub allowed_from: Vec<String>,
    /// Timeout of one SMTP exchange, milliseconds.
    pub timeout_ms: u64,
}

/// `[streams]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StreamsConfig {
    /// CA certificate file (PEM) that verifies `tls://` NATS and `rediss://` Redis servers of the
    /// stream actions; empty = the public CAs (Mozilla's list, compiled in).
    pub ca_file: String,
}

/// `[redis]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]` or `rediss://...` (TLS, the server's
    /// certificate verified); empty = off.
    pub url: String,
    /// CA certificate file (PEM) that verifies a `rediss://` server; empty = the public CAs
    /// (Mozilla's list, compiled in).
    pub ca_file: String,
    /// Client certificate file (PEM) for a `rediss://` server that requires one; empty = none.
    pub cert_file: String,
    /// Private key file (PEM, unencrypted) of `cert_file`.
    pub key_file: String,
    /// Prefix of every key this worker writes.
    pub key_prefix: String,
    /// Timeout of one Redis call, milliseconds; slower counts as unavailable.
    pub timeout_ms: u64,
    /// How long a delivered job stays in the ledger, seconds.
    pub ledger_ttl_seconds: u64,
}

/// `[elasticsearch]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive endpoint faults that open an endpoint's circuit.
    pub failure_threshold: u32,
    /// How long a circuit stays open before one probe is sent, milliseconds.
    pub open_ms: u64,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Format of the log lines on stderr.
    pub format: LogFormat,
    /// tracing-subscriber filter directive.
    pub filter: String,
}

/// `log.format`: how log lines are written on stderr. Spelled `"text"` or `"json"` in the file,
/// the environment and `--log-format`; any other value is refused naming the field and both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl rules::Choice for LogFormat {
    const FIELD: &'static str = "log.format";
    const CHOICES: &'static [(&'static str, Self)] = &[("text", Self::Text), ("json", Self::Json)];
}

impl LogFormat {
    /// The spelling in the configuration: `text` or `json`.
    pub fn as_str(self) -> &'static str {
        rules::Choice::name(self)
    }
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        rules::deserialize_choice(d)
    }
}

impl Serialize for LogFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Config {
    /// Build the configuration from all layers: defaults, `file` (if any), the environment
    /// (`env` as name/value pairs, normally `std::env::vars()`), then `overrides` (flags, as
    /// `key = value` TOML pairs with dotted keys), and validate it.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, toml::Value)],
    ) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut merged = load::layers(file, env.iter().cloned(), overrides)?;
        // Closed sets first, so that a wrong spelling is refused naming its field.
        rules::choice::<LogFormat>(&merged)?;
        let secrets = match &mut merged {
            toml::Value::Table(t) => t.remove("secrets"),
            _ => None,
        };
        let mut config: Config =
            serde_path_to_error::deserialize(merged).map_err(|e| ConfigError::Shape {
                key: e.path().to_string(),
                problem: unquoted(e.inner().message()),
            })?;
        config.secrets = secret::parse_secrets(secrets)?;
        if let Some(console) = &mut config.console {
            console.resolve(&env, &config.secrets)?;
        }
        config.rate_limits = std::mem::take(&mut config.rate_limits)
            .into_iter()
            // Normalised to the endpoint key; one that does not parse stays as written, so
            // that validation names it (redacted).
            .map(|(k, v)| (crate::job::endpoint_of(&k).unwrap_or(k), v))
            .collect();
        config.validate()?;
        Ok(config)
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

    /// The secret `name` (case-insensitive), or None if it is not configured.
    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.get(&name.to_ascii_lowercase())
    }

    /// The signing keys of the secret `name` (case-insensitive), or None if it is not configured
    /// or is a credential (`value`), which never signs.
    pub fn signing_keys(&self, name: &str) -> Option<Vec<SigningKey>> {
        let secret = self.secret(name)?;
        if secret.keys.is_empty() {
            return None;
        }
        secret
            .keys
            .iter()
            .map(|v| SigningKey::parse(v).ok())
            .collect()
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

/// serde's message without the values it quotes (`invalid type: string "hunter2", expected u32`
/// becomes `invalid type: string, expected u32`): a value in the wrong place may be a secret.
/// Key names (in backticks) stay.
fn unquoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(" \"") {
        out.push_str(&rest[..start]);
        match rest[start + 2..].find('"') {
            Some(end) => rest = &rest[start + 2 + end + 1..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}
