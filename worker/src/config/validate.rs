//! [`Config::validate`]: what types cannot check, as a list of rules (`rules.rs`), one line per
//! setting, in the order of `config.default.toml`. The first failure names the field, the
//! problem and the fix.

use fraiseql_observers_core::{action::looks_like_mailbox, net};

use super::rules::{self, Checked, Unit, UrlRule, HTTP_URL};
use super::{redact, secret, Config, ConfigError};

/// `smtp.url`: plain SMTP (STARTTLS with `?tls=required`) or TLS from the start.
const SMTP_URL: UrlRule = UrlRule {
    schemes: &["smtp", "smtps"],
    needs_host: true,
    what: "an smtp:// or smtps:// URL",
};

/// `redis.url`: TCP, TLS or a Unix socket (which has no host).
const REDIS_URL: UrlRule = UrlRule {
    schemes: &["redis", "rediss", "redis+unix", "unix"],
    needs_host: false,
    what: "a redis://, rediss:// or unix:// URL",
};

impl Config {
    /// Check what types cannot: ranges, forms and relations between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_database_url()?;
        rules::range("batch_size", self.batch_size, 1..=10_000)?;
        rules::range("concurrency", self.concurrency, 1..=100_000)?;
        rules::range("claim_sessions", self.claim_sessions, 1..=16)?;
        rules::duration(
            "lease_seconds",
            self.lease_seconds.into(),
            Unit::Seconds,
            1..=86_400,
        )?;
        rules::duration(
            "poll_interval_ms",
            self.poll_interval_ms,
            Unit::Millis,
            10..=3_600_000,
        )?;
        rules::range("dispatch_batch", self.dispatch_batch, 1..=1_000_000)?;
        let http = &self.http;
        rules::range(
            "http.max_in_flight_per_endpoint",
            http.max_in_flight_per_endpoint,
            1..=100_000,
        )?;
        rules::duration(
            "http.endpoint_retry_ms",
            http.endpoint_retry_ms,
            Unit::Millis,
            10..=3_600_000,
        )?;
        rules::range(
            "breaker.failure_threshold",
            self.breaker.failure_threshold,
            1..=10_000,
        )?;
        rules::duration(
            "breaker.open_ms",
            self.breaker.open_ms,
            Unit::Millis,
            100..=86_400_000,
        )?;
        rules::optional_socket_addr(
            "metrics.listen",
            &self.metrics.listen,
            "use e.g. \"127.0.0.1:9187\", or \"\" to turn metrics off",
        )?;
        rules::each(&http.allow_networks, |block| {
            block.parse::<net::Cidr>().map(|_| ()).map_err(|e| {
                rules::refuse(
                    "http.allow_networks",
                    e.to_string(),
                    "list address blocks such as \"127.0.0.0/8\" or \"::1/128\"",
                )
            })
        })?;
        rules::each(&self.secrets, |(name, s)| secret::validate(name, s))?;
        self.validate_smtp()?;
        self.validate_redis()?;
        crate::tls::StreamTls::new(&self.streams.ca_file).map_err(|source| ConfigError::Tls {
            field: "streams.ca_file",
            source,
        })?;
        rules::each(&self.rate_limits, |(endpoint, rate)| {
            rate_limit(endpoint, *rate)
        })?;
        // log.format is an enum: serde refused any other spelling, naming the field.
        self.validate_elasticsearch()
    }

    /// `database_url`, parsed as the connection will be: the TLS parameters (sslmode,
    /// sslrootcert, ...) taken out and their files read, so a wrong mode or an unreadable
    /// certificate stops the start.
    fn validate_database_url(&self) -> Checked {
        rules::check(
            "database_url",
            !self.database_url.trim().is_empty(),
            || "it is empty".to_string(),
            "set it to a postgres:// URL or a libpq connection string",
        )?;
        match crate::tls::PgConnector::from_url(&self.database_url) {
            Ok(_) => Ok(()),
            Err(crate::tls::PgConnectError::Tls(source)) => Err(ConfigError::Tls {
                field: "database_url",
                source,
            }),
            // Never the string itself: it can hold a password, and an unparsable one cannot be
            // redacted reliably.
            Err(crate::tls::PgConnectError::Parse(e) | crate::tls::PgConnectError::Connect(e)) => {
                Err(rules::refuse(
                    "database_url",
                    super::redact::connection_string_problem(&self.database_url, &e),
                    "use postgres://user:password@host:port/dbname (percent-encode special characters of the password) or \"host=... port=... dbname=... password='a b'\"",
                ))
            }
        }
    }

    /// `[smtp]`: the server's URL, the default sender and the senders actions may name.
    fn validate_smtp(&self) -> Checked {
        let smtp = &self.smtp;
        rules::optional_url(
            "smtp.url",
            &smtp.url,
            &SMTP_URL,
            "use e.g. \"smtp://mail.internal:25\", \"smtp://user:pass@host:587?tls=required\" or \"smtps://host:465\"",
        )?;
        rules::check(
            "smtp.from",
            looks_like_mailbox(&smtp.from),
            || format!("{:?} is not an e-mail address", smtp.from),
            "use e.g. \"observers@example.com\" or \"Observers <observers@example.com>\"",
        )?;
        rules::each(&smtp.allowed_from, |sender| {
            rules::check(
                "smtp.allowed_from",
                is_sender(sender),
                || format!("{sender:?} is neither an address nor @domain"),
                "list addresses (\"shop@example.com\") or whole domains (\"@example.com\")",
            )
        })?;
        rules::duration(
            "smtp.timeout_ms",
            smtp.timeout_ms,
            Unit::Millis,
            100..=600_000,
        )
    }

    /// `[redis]`: its URL and TLS files, the timeout and the ledger's lifetime.
    fn validate_redis(&self) -> Checked {
        let redis = &self.redis;
        rules::optional_url(
            "redis.url",
            &redis.url,
            &REDIS_URL,
            "use e.g. \"redis://127.0.0.1:6379/0\", \"rediss://redis.internal:6380/0\" for TLS, or \"\" to run without Redis",
        )?;
        self.validate_redis_tls()?;
        rules::duration(
            "redis.timeout_ms",
            redis.timeout_ms,
            Unit::Millis,
            10..=60_000,
        )?;
        rules::duration(
            "redis.ledger_ttl_seconds",
            redis.ledger_ttl_seconds,
            Unit::Seconds,
            1..=31_536_000,
        )
        .map_err(|e| rules::noted(e, "keep it above the longest time a job can stay leased"))
    }

    /// `redis.url`'s TLS files: a `rediss://` URL verifies the server's certificate against
    /// `redis.ca_file` (or the public CAs); the files are read and checked here, and refused
    /// without `rediss://` (only TLS connections use them).
    fn validate_redis_tls(&self) -> Checked {
        let redis = &self.redis;
        let parsed = url::Url::parse(&redis.url).ok();
        if parsed.as_ref().map(|u| u.scheme()) != Some("rediss") {
            let files = [
                ("redis.ca_file", &redis.ca_file),
                ("redis.cert_file", &redis.cert_file),
                ("redis.key_file", &redis.key_file),
            ];
            return rules::each(files, |(field, value)| {
                rules::check(
                    field,
                    value.is_empty(),
                    || {
                        "it is set, and redis.url is not a rediss:// URL (only TLS connections use it)".to_string()
                    },
                    "use rediss:// in redis.url for TLS to Redis, or remove the setting",
                )
            });
        }
        rules::check(
            "redis.url",
            parsed.as_ref().and_then(|u| u.fragment()).is_none(),
            || "it has a #fragment (#insecure would turn certificate verification off)".to_string(),
            "remove it; for a server whose certificate a private CA signed, set redis.ca_file to that CA's certificate (PEM)",
        )?;
        crate::tls::redis_certificates(&redis.ca_file, &redis.cert_file, &redis.key_file)
            .map(|_| ())
            .map_err(|source| ConfigError::Tls {
                field: "redis.url",
                source,
            })
    }

    /// `[elasticsearch]`: its URL, the index prefix, the batch and the timings.
    fn validate_elasticsearch(&self) -> Checked {
        let es = &self.elasticsearch;
        rules::optional_url(
            "elasticsearch.url",
            &es.url,
            &HTTP_URL,
            "use e.g. \"https://es.internal:9200\", or \"\" to keep the audit trail in Postgres only",
        )?;
        rules::check(
            "elasticsearch.index_prefix",
            is_index_name(&es.index_prefix),
            || format!("{:?} is not a valid index name", es.index_prefix),
            "use lowercase letters, digits, - and _, not starting with -, _ or +",
        )?;
        rules::range("elasticsearch.batch_size", es.batch_size, 1..=10_000)?;
        rules::duration(
            "elasticsearch.flush_ms",
            es.flush_ms,
            Unit::Millis,
            10..=3_600_000,
        )?;
        rules::duration(
            "elasticsearch.timeout_ms",
            es.timeout_ms,
            Unit::Millis,
            100..=600_000,
        )?;
        rules::at_least(
            "elasticsearch.max_backoff_ms",
            es.max_backoff_ms,
            "elasticsearch.flush_ms",
            es.flush_ms,
        )
    }
}

/// One `[rate_limits]` entry: an http(s) endpoint and a rate above 0, at most 1000000.
fn rate_limit(endpoint: &str, rate: f64) -> Checked {
    rules::check(
        "rate_limits",
        HTTP_URL.accepts(endpoint) && rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0,
        || format!("{:?} = {rate}", redact(endpoint)),
        "map an endpoint (scheme://host[:port]) to requests per second, above 0 and at most 1000000",
    )
}

/// An `smtp.allowed_from` entry: an address, or `@domain` for every address of a domain.
fn is_sender(sender: &str) -> bool {
    match sender.strip_prefix('@') {
        Some(domain) => {
            !domain.is_empty() && !domain.contains(['@', ' ', '<', '>']) && domain.contains('.')
        }
        None => looks_like_mailbox(sender),
    }
}

/// An Elasticsearch index name prefix: lowercase letters, digits, `-` and `_`, not starting
/// with `-`, `_` or `+`.
fn is_index_name(prefix: &str) -> bool {
    !prefix.is_empty()
        && !prefix.starts_with(['-', '_', '+'])
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
