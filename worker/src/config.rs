//! Worker configuration, in layers: the commented defaults compiled in (`config.default.toml`),
//! then the user's TOML file, then `FRAISEQL_OBSERVERS_*` environment variables, then flags.
//! [`Config::validate`] names the bad field and the fix.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fraiseql_observers_core::net;

use crate::signing::{Destination, SigningKey};

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
    /// TLS settings (`sslmode` and the files of `database_url`, `redis.ca_file`, ...); the
    /// message names the parameter and the fix.
    #[error("invalid TLS setting for `{field}`: {source}")]
    Tls {
        field: &'static str,
        source: crate::tls::TlsError,
    },
    #[error("invalid value for `{field}`: {problem}; {fix}")]
    Invalid {
        field: &'static str,
        problem: String,
        fix: &'static str,
    },
    /// A `[secrets.<name>]` entry; the message never holds a secret's value.
    #[error("invalid value for `secrets.{name}`: {problem}; {fix}")]
    Secret {
        name: String,
        problem: String,
        fix: String,
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
    /// Secrets by name (lowercase): signing secrets (`keys`), each bound to the destinations
    /// it may sign for, and credentials (`value`) that actions reference as a URL or header
    /// value (`{"secret": "stripe_token"}`); the database never holds a secret. Read by hand
    /// from the merged TOML (see [`parse_secrets`]) so that no error quotes a value.
    #[serde(skip)]
    pub secrets: BTreeMap<String, Secret>,
}

/// `[secrets.<name>]`: one secret and where it may be used. Either a signing secret (`keys`) or
/// a credential (`value`), never both.
#[derive(Clone, Default)]
pub struct Secret {
    /// `whsec_<base64>` values, newest first while rotating (each one signs).
    pub keys: Vec<String>,
    /// A credential an action references as its URL or a header value, resolved right before
    /// the request (`value`, or read at start from `value_file`, trailing newline trimmed).
    pub value: Option<String>,
    /// URL prefixes (`scheme://host[:port][/path]`) of the requests this secret may go to: the
    /// requests a signing secret signs (at least one), the requests a credential is a header of
    /// (none: it can only be a URL, which is then its own destination).
    pub destinations: Vec<String>,
}

/// Never print a secret's keys or value (`validate-config` prints the configuration).
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("keys", &vec!["whsec_***"; self.keys.len()])
            .field("value", &self.value.as_ref().map(|_| "***"))
            .field("destinations", &self.destinations)
            .finish()
    }
}

impl Secret {
    /// True when a request to `url` lies under one of [`Secret::destinations`].
    pub fn covers(&self, url: &str) -> bool {
        self.destinations().iter().any(|d| d.matches(url))
    }

    /// The parsed [`Secret::destinations`] (validated by [`Config::validate`]).
    pub fn destinations(&self) -> Vec<Destination> {
        self.destinations
            .iter()
            .filter_map(|d| Destination::parse(d).ok())
            .collect()
    }

    /// True when this secret may sign a request to `url`.
    pub fn may_sign_for(&self, url: &str) -> bool {
        self.covers(url)
    }
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
    /// Senders an action's `from` may name besides [`SmtpConfig::from`]: addresses
    /// (`shop@example.com`) or whole domains (`@example.com`). Default: none.
    pub allowed_from: Vec<String>,
    /// Timeout of one SMTP exchange, milliseconds.
    pub timeout_ms: u64,
}

/// `[redis]`
#[derive(Debug, Clone, Deserialize)]
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
        let env: Vec<(String, String)> = env.into_iter().collect();
        for (var, value) in &env {
            let Some(key) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // The config file's path (--config), not a setting.
            if key == "CONFIG" {
                continue;
            }
            let (var, key, value) = match file_variable(key, &merged) {
                Some(plain) => {
                    let plain_var = format!("{ENV_PREFIX}{plain}");
                    if env.iter().any(|(v, _)| v.eq_ignore_ascii_case(&plain_var)) {
                        return Err(ConfigError::Env {
                            var: var.clone(),
                            message: format!("{plain_var} is set too; set one of them"),
                        });
                    }
                    let content = read_secret_file(value).map_err(|e| ConfigError::Env {
                        var: var.clone(),
                        message: format!("cannot read {value}: {e}"),
                    })?;
                    (plain_var, plain.to_string(), content)
                }
                None => (var.clone(), key.to_string(), value.clone()),
            };
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
            // FRAISEQL_OBSERVERS_SECRETS__<NAME>="whsec_new whsec_old" (its keys, also
            // SECRETS__<NAME>__KEYS), SECRETS__<NAME>__VALUE="..." (a credential, as it is) and
            // SECRETS__<NAME>__DESTINATIONS="https://a/x https://b"; each also as _FILE (above):
            // names are free-form.
            if path.first().map(String::as_str) == Some("secrets") {
                let target = match path.as_slice() {
                    [_, name] => vec!["secrets".to_string(), name.clone(), "keys".to_string()],
                    [_, _, part]
                        if part == "keys" || part == "destinations" || part == "value" =>
                    {
                        path.clone()
                    }
                    _ => {
                        return Err(ConfigError::Env {
                            var: var.clone(),
                            message: "use FRAISEQL_OBSERVERS_SECRETS__<NAME> (its keys), FRAISEQL_OBSERVERS_SECRETS__<NAME>__VALUE or FRAISEQL_OBSERVERS_SECRETS__<NAME>__DESTINATIONS, each also with _FILE".to_string(),
                        })
                    }
                };
                let typed = if target[2] == "value" {
                    toml::Value::String(value)
                } else {
                    toml::Value::Array(
                        value
                            .split([' ', ','])
                            .filter(|v| !v.is_empty())
                            .map(|v| toml::Value::String(v.to_string()))
                            .collect(),
                    )
                };
                // This layer replaces the file's `keys_file` / `value_file` as it does `keys`.
                if let Some(toml::Value::Table(entry)) = merged
                    .get_mut("secrets")
                    .and_then(|s| s.get_mut(&target[1]))
                {
                    entry.remove(&format!("{}_file", target[2]));
                }
                set(&mut merged, &target, typed);
                continue;
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
        let secrets = match &mut merged {
            toml::Value::Table(t) => t.remove("secrets"),
            _ => None,
        };
        let mut config: Config = merged
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Shape(e.message().to_string()))?;
        config.secrets = parse_secrets(secrets)?;
        config.rate_limits = std::mem::take(&mut config.rate_limits)
            .into_iter()
            .map(|(k, v)| (crate::job::endpoint(&k), v))
            .collect();
        config.validate()?;
        Ok(config)
    }

    /// `redis.url` and its TLS files: a `rediss://` URL verifies the server's certificate
    /// against `redis.ca_file` (or the public CAs); the files are read and checked here.
    fn validate_redis_tls(&self) -> Result<(), ConfigError> {
        let redis = &self.redis;
        let files = [
            ("redis.ca_file", &redis.ca_file),
            ("redis.cert_file", &redis.cert_file),
            ("redis.key_file", &redis.key_file),
        ];
        let parsed = url::Url::parse(&redis.url).ok();
        let scheme = parsed.as_ref().map(|u| u.scheme());
        if !redis.url.is_empty()
            && !matches!(scheme, Some("redis" | "rediss" | "redis+unix" | "unix"))
        {
            return Err(ConfigError::Invalid {
                field: "redis.url",
                problem: format!(
                    "{:?} is not a redis://, rediss:// or unix:// URL",
                    redact(&redis.url)
                ),
                fix: "use e.g. \"redis://127.0.0.1:6379/0\", \"rediss://redis.internal:6380/0\" for TLS, or \"\" to run without Redis",
            });
        }
        if scheme != Some("rediss") {
            if let Some((field, _)) = files.iter().find(|(_, v)| !v.is_empty()) {
                return Err(ConfigError::Invalid {
                    field,
                    problem: "it is set, and redis.url is not a rediss:// URL (only TLS connections use it)".to_string(),
                    fix: "use rediss:// in redis.url for TLS to Redis, or remove the setting",
                });
            }
            return Ok(());
        }
        if parsed.as_ref().and_then(|u| u.fragment()).is_some() {
            return Err(ConfigError::Invalid {
                field: "redis.url",
                problem: "it has a #fragment (#insecure would turn certificate verification off)".to_string(),
                fix: "remove it; for a server whose certificate a private CA signed, set redis.ca_file to that CA's certificate (PEM)",
            });
        }
        crate::tls::redis_certificates(&redis.ca_file, &redis.cert_file, &redis.key_file)
            .map(|_| ())
            .map_err(|source| ConfigError::Tls {
                field: "redis.url",
                source,
            })
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
        // Parsed as the connection will be: the TLS parameters (sslmode, sslrootcert, ...) taken
        // out and their files read, so a wrong mode or an unreadable certificate stops the start.
        match crate::tls::PgConnector::from_url(&self.database_url) {
            Ok(_) => {}
            Err(crate::tls::PgConnectError::Tls(source)) => {
                return Err(ConfigError::Tls {
                    field: "database_url",
                    source,
                })
            }
            // Never the string itself: it can hold a password, and an unparsable one cannot be
            // redacted reliably.
            Err(crate::tls::PgConnectError::Parse(e) | crate::tls::PgConnectError::Connect(e)) => {
                return Err(ConfigError::Invalid {
                    field: "database_url",
                    problem: connection_string_problem(&self.database_url, &e),
                    fix: "use postgres://user:password@host:port/dbname (percent-encode special characters of the password) or \"host=... port=... dbname=... password='a b'\"",
                });
            }
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
        for (name, secret) in &self.secrets {
            let refuse = |problem: String, fix: String| ConfigError::Secret {
                name: name.clone(),
                problem,
                fix,
            };
            let var = format!("{ENV_PREFIX}SECRETS__{}", name.to_ascii_uppercase());
            if !fraiseql_observers_core::action::is_secret_name(name) {
                return Err(refuse(
                    "the name is not allowed".to_string(),
                    "name secrets with 1 to 64 letters, digits, _ or -".to_string(),
                ));
            }
            if let Some(value) = &secret.value {
                if !secret.keys.is_empty() {
                    return Err(refuse(
                        "it has both keys (a signing secret) and a value (a credential)"
                            .to_string(),
                        "give each its own [secrets.<name>] table".to_string(),
                    ));
                }
                if value.is_empty() {
                    return Err(refuse(
                        "its value is empty".to_string(),
                        format!("give value = \"...\" or value_file = \"/run/secrets/{name}\" (or {var}__VALUE, {var}__VALUE_FILE)"),
                    ));
                }
                // It becomes a header value or a URL: a line break would split the request.
                if value.chars().any(char::is_control) {
                    return Err(refuse(
                        "its value holds a control character (a line break inside its file?)".to_string(),
                        "keep the value on one line; only trailing line breaks of a file are trimmed".to_string(),
                    ));
                }
            } else if secret.keys.is_empty() {
                return Err(refuse(
                    "it has no key and no value".to_string(),
                    format!("give a signing secret keys = [\"whsec_<base64>\"] (the newest first while rotating, or {var}), a credential value = \"...\" or value_file = \"/run/secrets/{name}\" (or {var}__VALUE, {var}__VALUE_FILE)"),
                ));
            }
            for (i, v) in secret.keys.iter().enumerate() {
                SigningKey::parse(v).map_err(|e| {
                    refuse(
                        format!("key {} is not usable: {e}", i + 1),
                        format!("use whsec_ followed by the base64 of 24 to 64 random bytes; a credential that is not a signing key is a value = \"...\" (or {var}__VALUE)"),
                    )
                })?;
            }
            // A credential without destinations can only be a URL (its own destination).
            if secret.destinations.is_empty() && secret.value.is_none() {
                return Err(refuse(
                    "it is bound to no destination, so it could sign nothing".to_string(),
                    format!("list the URL prefixes it may sign for: destinations = [\"https://receiver.example/hooks\"] (or {var}__DESTINATIONS)"),
                ));
            }
            for d in &secret.destinations {
                Destination::parse(d).map_err(|e| {
                    refuse(
                        format!("destination {:?}: {e}", redact(d)),
                        "write each destination as scheme://host[:port][/path]".to_string(),
                    )
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
        for sender in &self.smtp.allowed_from {
            let ok = match sender.strip_prefix('@') {
                Some(domain) => {
                    !domain.is_empty()
                        && !domain.contains(['@', ' ', '<', '>'])
                        && domain.contains('.')
                }
                None => fraiseql_observers_core::action::looks_like_mailbox(sender),
            };
            if !ok {
                return Err(ConfigError::Invalid {
                    field: "smtp.allowed_from",
                    problem: format!("{sender:?} is neither an address nor @domain"),
                    fix:
                        "list addresses (\"shop@example.com\") or whole domains (\"@example.com\")",
                });
            }
        }
        if !(100..=600_000).contains(&self.smtp.timeout_ms) {
            return Err(invalid(
                "smtp.timeout_ms",
                self.smtp.timeout_ms,
                "use 100 to 600000",
            ));
        }
        self.validate_redis_tls()?;
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

/// A URL (or libpq `key=value` string) with its passwords replaced by `***`, for messages: the
/// user-info password and `password=` query parameters of a URL; `password=` values of a libpq
/// string, quoted (`password='a b'`) or not.
pub fn redact(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            if u.query_pairs().any(|(k, _)| is_password_key(&k)) {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if is_password_key(&k) {
                            "***".to_string()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => redact_key_values(raw),
    }
}

/// Query or libpq keys that carry a password.
fn is_password_key(key: &str) -> bool {
    key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("pass")
}

/// A libpq `key=value ...` string with each password value (quoted or not, with `\'` escapes)
/// replaced by `***`.
fn redact_key_values(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = find_password_key(rest) {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        // after = "password" [spaces] "=" [spaces] value ...
        let eq = after.find('=').map(|i| i + 1).unwrap_or(after.len());
        out.push_str(&after[..eq]);
        let value = &after[eq..];
        let trimmed = value.trim_start_matches(' ');
        out.push_str(&value[..value.len() - trimmed.len()]);
        out.push_str("***");
        rest = skip_value(trimmed);
    }
    out.push_str(rest);
    out
}

/// Byte offset of the next `password` keyword followed by `=` (at the start or after a space).
fn find_password_key(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find("password").map(|i| i + from) {
        let starts_word = i == 0 || s.as_bytes()[i - 1] == b' ';
        let after = s[i + "password".len()..].trim_start_matches(' ');
        if starts_word && after.starts_with('=') {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// What follows a libpq value: after its closing quote when quoted, else after its first space.
fn skip_value(value: &str) -> &str {
    if let Some(quoted) = value.strip_prefix('\'') {
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '\'' => return &quoted[i + 1..],
                _ => {}
            }
        }
        ""
    } else {
        value.find(' ').map(|i| &value[i..]).unwrap_or("")
    }
}

/// What is wrong with an unparsable connection string, without quoting it (it can hold a
/// password).
fn connection_string_problem(raw: &str, e: &tokio_postgres::Error) -> String {
    let form = if raw.trim_start().starts_with("postgres://")
        || raw.trim_start().starts_with("postgresql://")
    {
        "the postgres:// URL"
    } else {
        "the key=value connection string"
    };
    // The driver names the option whose value is bad ("invalid value for option `port`") and
    // otherwise describes the syntax error, sometimes with a character of the input: only the
    // option name is kept.
    let detail = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    let part = if let Some(option) = detail
        .strip_prefix("invalid value for option `")
        .and_then(|r| r.strip_suffix('`'))
    {
        format!("the value of `{option}` is not valid")
    } else if detail.starts_with("unknown option") {
        "it names an unknown option".to_string()
    } else if detail.contains("unterminated") {
        "a quoted value is not closed".to_string()
    } else {
        "its syntax is broken (a value with spaces must be quoted: password='a b')".to_string()
    };
    format!("{form} does not parse: {part} (not shown: it can hold a password)")
}

/// `<KEY>` when the environment variable `FRAISEQL_OBSERVERS_<KEY>_FILE` stands for the file
/// holding `<KEY>`'s value (any case), or None: the container convention for secrets (Docker
/// secrets, Kubernetes secret volumes mounted as files). A setting whose own name ends in
/// `_file` keeps its variable; under `SECRETS__` the suffix always means a file (a secret whose
/// name ends in `_file` is written in the TOML file).
fn file_variable<'a>(key: &'a str, merged: &toml::Value) -> Option<&'a str> {
    let plain = key
        .len()
        .checked_sub("_FILE".len())
        .filter(|&at| key.is_char_boundary(at) && key[at..].eq_ignore_ascii_case("_FILE"))
        .map(|at| &key[..at])?;
    let path: Vec<String> = key
        .to_ascii_lowercase()
        .split("__")
        .map(str::to_string)
        .collect();
    let setting =
        path.first().map(String::as_str) != Some("secrets") && lookup(merged, &path).is_some();
    (!setting && !plain.is_empty()).then_some(plain)
}

/// A secret's file (`*_FILE`, `value_file`, `keys_file`), read at start: its content with the
/// trailing line break an editor or `echo` adds removed (`\n` or `\r\n`, repeated).
pub fn read_secret_file(path: &str) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// The `[secrets]` table of the merged configuration, read by hand so that no error quotes a
/// secret's value (serde's would: `invalid type: string "whsec_..."`).
fn parse_secrets(value: Option<toml::Value>) -> Result<BTreeMap<String, Secret>, ConfigError> {
    let table = match value {
        None => return Ok(BTreeMap::new()),
        Some(toml::Value::Table(t)) => t,
        Some(other) => {
            return Err(ConfigError::Invalid {
                field: "secrets",
                problem: format!("it is a {}, not a table", other.type_str()),
                fix: "write one [secrets.<name>] table per secret, with keys and destinations",
            })
        }
    };
    let mut secrets = BTreeMap::new();
    for (name, entry) in table {
        // Secret names are case-insensitive (environment variables are upper case).
        let name = name.to_ascii_lowercase();
        let refuse = |problem: String| {
            ConfigError::Secret {
            name: name.clone(),
            problem,
            fix: format!(
                "write [secrets.{name}] with keys = [\"whsec_...\"] and destinations = [\"https://receiver.example/hooks\"] (or {ENV_PREFIX}SECRETS__{0} and {ENV_PREFIX}SECRETS__{0}__DESTINATIONS) for a signing secret, or value = \"...\" or value_file = \"/run/secrets/{name}\" (or {ENV_PREFIX}SECRETS__{0}__VALUE) for a credential",
                name.to_ascii_uppercase()
            ),
        }
        };
        let fields = match entry {
            toml::Value::Table(t) => t,
            toml::Value::Array(_) => {
                return Err(refuse(
                    "a list of keys alone binds the secret to no destination".to_string(),
                ))
            }
            other => {
                return Err(refuse(format!("it is a {}, not a table", other.type_str())));
            }
        };
        let mut secret = Secret::default();
        let mut files = Vec::new();
        for (key, v) in fields {
            if key == "value" || key == "value_file" || key == "keys_file" {
                let toml::Value::String(text) = v else {
                    return Err(refuse(format!("`{key}` must be a string")));
                };
                if key == "value" {
                    secret.value = Some(text);
                } else {
                    files.push((key, text));
                }
                continue;
            }
            let list = match v {
                toml::Value::Array(items) => items
                    .into_iter()
                    .map(|i| match i {
                        toml::Value::String(s) => Some(s),
                        _ => None,
                    })
                    .collect::<Option<Vec<String>>>(),
                _ => None,
            };
            let Some(list) = list else {
                return Err(refuse(format!("`{key}` must be a list of strings")));
            };
            match key.as_str() {
                "keys" => secret.keys = list,
                "destinations" => secret.destinations = list,
                _ => return Err(refuse(format!("unknown key {key:?}"))),
            }
        }
        for (key, path) in files {
            let inline = if key == "value_file" {
                secret.value.is_some()
            } else {
                !secret.keys.is_empty()
            };
            if inline {
                return Err(refuse(format!(
                    "it has both `{key}` and `{}`",
                    key.trim_end_matches("_file")
                )));
            }
            let text = read_secret_file(&path)
                .map_err(|e| refuse(format!("cannot read `{key}` {path}: {e}")))?;
            if key == "value_file" {
                secret.value = Some(text);
            } else {
                secret.keys = text
                    .split([' ', ',', '\n', '\r', '\t'])
                    .filter(|k| !k.is_empty())
                    .map(str::to_string)
                    .collect();
            }
        }
        secrets.insert(name, secret);
    }
    Ok(secrets)
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
        for secret in c.secrets.values_mut() {
            for v in secret.keys.iter_mut() {
                *v = "whsec_***".to_string();
            }
            if let Some(v) = secret.value.as_mut() {
                *v = "***".to_string();
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

    const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// Regression (review F08): a secret signed for whatever URL an action named. Now each one
    /// lists its destinations, and one with none is refused at start-up.
    #[test]
    fn secrets_are_bound_to_destinations() {
        let dir = tempdir();
        let file = dir.join("secrets.toml");
        std::fs::write(
            &file,
            format!("[secrets.Orders]\nkeys = [\"{KEY}\"]\ndestinations = [\"https://hooks.example.com/orders\"]\n"),
        )
        .expect("write");
        let c = Config::load(Some(&file), env(&[]), &[]).expect("valid");
        let orders = c.secret("ORDERS").expect("configured");
        assert!(orders.may_sign_for("https://hooks.example.com/orders/paid"));
        assert!(!orders.may_sign_for("https://attacker.example/collect"));
        assert_eq!(c.signing_keys("orders").map(|k| k.len()), Some(1));

        // The environment form: the keys, then the destinations.
        let c = Config::load(
            None,
            env(&[
                (
                    "FRAISEQL_OBSERVERS_SECRETS__BILLING",
                    &format!("{KEY},{KEY}"),
                ),
                (
                    "FRAISEQL_OBSERVERS_SECRETS__BILLING__DESTINATIONS",
                    "https://a.example/x http://127.0.0.1:9000",
                ),
            ]),
            &[],
        )
        .expect("valid");
        let billing = c.secret("billing").expect("configured");
        assert_eq!(billing.keys.len(), 2);
        assert!(billing.may_sign_for("http://127.0.0.1:9000/hook"));

        // Safe default: no destination, no start.
        let e = Config::load(
            None,
            env(&[("FRAISEQL_OBSERVERS_SECRETS__ORDERS", KEY)]),
            &[],
        )
        .expect_err("no destination");
        let text = e.to_string();
        assert!(text.contains("`secrets.orders`"), "{text}");
        assert!(text.contains("bound to no destination"), "{text}");
        assert!(
            text.contains("FRAISEQL_OBSERVERS_SECRETS__ORDERS__DESTINATIONS"),
            "{text}"
        );
        assert!(!text.contains(KEY), "{text}");

        // The former list form is refused with the fix.
        std::fs::write(&file, format!("[secrets]\norders = [\"{KEY}\"]\n")).expect("write");
        let e = Config::load(Some(&file), env(&[]), &[]).expect_err("list form");
        let text = e.to_string();
        assert!(text.contains("[secrets.orders]"), "{text}");
        assert!(!text.contains(KEY), "{text}");

        let e = Config::load(
            None,
            env(&[
                ("FRAISEQL_OBSERVERS_SECRETS__ORDERS", KEY),
                (
                    "FRAISEQL_OBSERVERS_SECRETS__ORDERS__DESTINATIONS",
                    "https://u:hunter22@a.example/",
                ),
            ]),
            &[],
        )
        .expect_err("credentials in a destination");
        assert!(!e.to_string().contains("hunter22"), "{e}");
    }

    /// Regression (review F17): a secret written as a string was echoed by serde's message
    /// (`invalid type: string "whsec_..."`).
    #[test]
    fn a_secret_of_the_wrong_type_is_not_echoed() {
        let dir = tempdir();
        let file = dir.join("wrong-type.toml");
        for body in [
            format!("[secrets]\norders = \"{KEY}\"\n"),
            format!("[secrets.orders]\nkeys = \"{KEY}\"\ndestinations = [\"https://a.example\"]\n"),
            format!("[secrets.orders]\nkeys = [\"{KEY}\", 3]\ndestinations = [\"https://a.example\"]\n"),
            format!("secrets = \"{KEY}\"\n"),
            "[secrets.orders]\nkeys = [\"whsec_c2VjcmV0LXRvby1zaG9ydA==\"]\ndestinations = [\"https://a.example\"]\n".to_string(),
        ] {
            std::fs::write(&file, &body).expect("write");
            let e = Config::load(Some(&file), env(&[]), &[]).expect_err("wrong type");
            let text = e.to_string();
            assert!(text.contains("secrets"), "{text}");
            assert!(!text.contains("MfKQ9r8G"), "{body}: {text}");
            assert!(!text.contains("c2VjcmV0"), "{body}: {text}");
        }
    }

    /// Credentials (`value`) referenced by actions come inline, from the environment, or from
    /// files (`value_file`, `*_FILE`), the way containers and Kubernetes pass secrets.
    #[test]
    fn credentials_come_inline_from_the_environment_or_from_files() {
        let dir = tempdir();
        let token = dir.join("stripe-token");
        std::fs::write(&token, "sk_test_from_file\n").expect("write");
        let crlf = dir.join("crlf");
        std::fs::write(&crlf, "tok_crlf\r\n").expect("write");
        let keys = dir.join("orders-keys");
        std::fs::write(&keys, format!("{KEY}\n")).expect("write");
        let db = dir.join("database-url");
        std::fs::write(&db, "postgres://w:pw@db/app\n").expect("write");
        let file = dir.join("credentials.toml");
        std::fs::write(
            &file,
            format!(
                "[secrets.inline]\nvalue = \"Bearer-less token\"\ndestinations = [\"https://api.example.com\"]\n\
                 [secrets.stripe]\nvalue_file = \"{}\"\ndestinations = [\"https://api.stripe.com/v1\"]\n\
                 [secrets.overridden]\nvalue_file = \"/nonexistent/overridden\"\n",
                token.display()
            ),
        )
        .expect("write");
        let crlf_path = crlf.display().to_string();
        let keys_path = keys.display().to_string();
        let db_path = db.display().to_string();
        let c = Config::load(
            Some(&file),
            env(&[
                (
                    "FRAISEQL_OBSERVERS_SECRETS__SLACK_OPS__VALUE",
                    "https://hooks.slack.com/services/T/B/x",
                ),
                ("FRAISEQL_OBSERVERS_SECRETS__CRLF__VALUE_FILE", &crlf_path),
                ("FRAISEQL_OBSERVERS_SECRETS__ORDERS_FILE", &keys_path),
                (
                    "FRAISEQL_OBSERVERS_SECRETS__ORDERS__DESTINATIONS",
                    "https://orders.example.com",
                ),
                // The environment layer replaces the file's value_file (never read).
                ("FRAISEQL_OBSERVERS_SECRETS__OVERRIDDEN__VALUE", "from env"),
                ("FRAISEQL_OBSERVERS_DATABASE_URL_FILE", &db_path),
            ]),
            &[],
        )
        .expect("valid");
        let value = |name: &str| c.secret(name).and_then(|s| s.value.clone());
        assert_eq!(value("inline").as_deref(), Some("Bearer-less token"));
        assert_eq!(
            value("stripe").as_deref(),
            Some("sk_test_from_file"),
            "trailing newline trimmed"
        );
        assert_eq!(value("crlf").as_deref(), Some("tok_crlf"));
        assert_eq!(
            value("slack_ops").as_deref(),
            Some("https://hooks.slack.com/services/T/B/x")
        );
        assert_eq!(value("overridden").as_deref(), Some("from env"));
        assert!(c
            .secret("stripe")
            .expect("stripe")
            .covers("https://api.stripe.com/v1/charges"));
        assert!(
            c.secret("slack_ops")
                .expect("slack")
                .destinations
                .is_empty(),
            "a URL needs none"
        );
        assert_eq!(
            c.signing_keys("orders").map(|k| k.len()),
            Some(1),
            "keys from a file"
        );
        assert_eq!(c.signing_keys("stripe"), None, "a credential never signs");
        assert_eq!(
            c.database_url, "postgres://w:pw@db/app",
            "any setting has a _FILE form"
        );
        // Never printed: validate-config prints the redacted configuration with {:#?}.
        for printed in [format!("{:#?}", c.redacted()), format!("{c:?}")] {
            for value in [
                "sk_test_from_file",
                "Bearer-less",
                "hooks.slack.com",
                "tok_crlf",
                "from env",
                "MfKQ9r8G",
            ] {
                assert!(!printed.contains(value), "{value} in {printed}");
            }
        }
    }

    /// A secret file that cannot be read stops the worker at start, naming the path; a value
    /// given twice, or both kinds of secret at once, is refused too, never quoting a value.
    #[test]
    fn unreadable_or_ambiguous_secrets_stop_the_start() {
        let dir = tempdir();
        let e = Config::load(
            None,
            env(&[(
                "FRAISEQL_OBSERVERS_SECRETS__STRIPE__VALUE_FILE",
                "/nonexistent/stripe",
            )]),
            &[],
        )
        .expect_err("missing file");
        let text = e.to_string();
        assert!(
            text.contains("FRAISEQL_OBSERVERS_SECRETS__STRIPE__VALUE_FILE"),
            "{text}"
        );
        assert!(text.contains("cannot read /nonexistent/stripe"), "{text}");

        let file = dir.join("missing-file.toml");
        std::fs::write(
            &file,
            "[secrets.stripe]\nvalue_file = \"/nonexistent/stripe\"\n",
        )
        .expect("write");
        let text = Config::load(Some(&file), env(&[]), &[])
            .expect_err("missing")
            .to_string();
        assert!(text.contains("`secrets.stripe`"), "{text}");
        assert!(
            text.contains("cannot read `value_file` /nonexistent/stripe"),
            "{text}"
        );

        let token = dir.join("token");
        std::fs::write(&token, "sk_live_twice").expect("write");
        let path = token.display().to_string();
        let text = Config::load(
            None,
            env(&[
                ("FRAISEQL_OBSERVERS_SECRETS__STRIPE__VALUE", "sk_live_twice"),
                ("FRAISEQL_OBSERVERS_SECRETS__STRIPE__VALUE_FILE", &path),
            ]),
            &[],
        )
        .expect_err("twice")
        .to_string();
        assert!(text.contains("set one of them"), "{text}");
        assert!(!text.contains("sk_live_twice"), "{text}");

        for (body, problem) in [
            (format!("[secrets.s]\nvalue = \"v\"\nvalue_file = \"{path}\"\n"), "both `value_file` and `value`"),
            (format!("[secrets.s]\nvalue = \"sk_live_twice\"\nkeys = [\"{KEY}\"]\ndestinations = [\"https://a.example\"]\n"), "both keys"),
            ("[secrets.s]\nvalue = \"\"\n".to_string(), "its value is empty"),
            ("[secrets.s]\nvalue = \"sk_live_twice\\nX-Evil: 1\"\n".to_string(), "control character"),
            ("[secrets.s]\nvalue = 3\n".to_string(), "`value` must be a string"),
            ("[secrets.s]\ndestinations = [\"https://a.example\"]\n".to_string(), "no key and no value"),
        ] {
            std::fs::write(&file, &body).expect("write");
            let text = Config::load(Some(&file), env(&[]), &[]).expect_err(&body).to_string();
            assert!(text.contains("`secrets.s`"), "{body}: {text}");
            assert!(text.contains(problem), "{body}: {text}");
            assert!(!text.contains("sk_live_twice"), "{body}: {text}");
            assert!(!text.contains("MfKQ9r8G"), "{body}: {text}");
        }
        // A signing key that is not one points to `value` for a credential.
        let text = Config::load(
            None,
            env(&[
                ("FRAISEQL_OBSERVERS_SECRETS__S", "sk_live_twice"),
                (
                    "FRAISEQL_OBSERVERS_SECRETS__S__DESTINATIONS",
                    "https://a.example",
                ),
            ]),
            &[],
        )
        .expect_err("not whsec")
        .to_string();
        assert!(
            text.contains("FRAISEQL_OBSERVERS_SECRETS__S__VALUE"),
            "{text}"
        );
        assert!(!text.contains("sk_live_twice"), "{text}");
    }

    /// Regression (review F17): an unparsable database_url was printed as it was, password
    /// included.
    #[test]
    fn an_unparsable_database_url_is_not_echoed() {
        for (url, part) in [
            ("postgres://worker:S3cretPw@db:54x2/app", "`port`"),
            ("host=db password=S3cretPw port=5x", "`port`"),
            ("host=db password='S3cretPw", "not closed"),
            ("host=db S3cretPw", "syntax"),
            ("host=db sslmode=S3cretPw", "`sslmode`"),
        ] {
            let e = Config::load(None, env(&[("FRAISEQL_OBSERVERS_DATABASE_URL", url)]), &[])
                .expect_err("unparsable");
            let text = e.to_string();
            assert!(text.contains("`database_url`"), "{text}");
            assert!(text.contains(part), "{url}: {text}");
            assert!(!text.contains("S3cretPw"), "{url}: {text}");
        }
    }

    /// Regression (review F17): `?password=` in a URL and quoted libpq passwords were printed.
    #[test]
    fn redact_masks_every_password_form() {
        assert_eq!(
            redact("postgres://worker:S3cret@db/app"),
            "postgres://worker:***@db/app"
        );
        let r = redact("postgres://db/app?user=worker&password=S3cret&sslmode=require");
        assert_eq!(
            r,
            "postgres://db/app?user=worker&password=***&sslmode=require"
        );
        let r = redact("postgresql://db/app?PASSWORD=S3cret");
        assert!(!r.contains("S3cret"), "{r}");
        assert_eq!(
            redact("host=db password='a b c' user=w"),
            "host=db password=*** user=w"
        );
        assert_eq!(
            redact("host=db password = 'it\\'s secret' dbname=x"),
            "host=db password = *** dbname=x"
        );
        assert_eq!(redact("password=S3cret host=db"), "password=*** host=db");
        assert_eq!(redact("host=db user=w"), "host=db user=w");
        assert_eq!(
            redact("host=db password='unterminated"),
            "host=db password=***"
        );
    }

    #[test]
    fn allowed_senders_are_validated() {
        let c = Config::load(
            None,
            env(&[(
                "FRAISEQL_OBSERVERS_SMTP__ALLOWED_FROM",
                "shop@example.com,@example.org",
            )]),
            &[],
        )
        .expect("valid");
        assert_eq!(c.smtp.allowed_from.len(), 2);
        let e = Config::load(
            None,
            env(&[("FRAISEQL_OBSERVERS_SMTP__ALLOWED_FROM", "example.org")]),
            &[],
        )
        .expect_err("neither");
        assert!(e.to_string().contains("`smtp.allowed_from`"), "{e}");
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
