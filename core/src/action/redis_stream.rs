//! The `redis_stream` action: the delivered document appended to a Redis stream (`XADD`), its
//! top-level fields as the entry's fields plus `webhook_id`, behind an idempotency guard (a key
//! set with `NX EX` in the same Lua script as the `XADD`), so a redelivered job does not append
//! twice within the guard's window. The stream key is a template over the event.

use serde::{Deserialize, Serialize};

use super::{
    default_timeout_ms, is_false, template_skeleton, validate_server_target, validate_template,
    validate_timeout, ActionError,
};
use crate::secret::ValueOrSecret;

/// URL schemes of a Redis server: plain TCP, or TLS.
pub const REDIS_SCHEMES: &[&str] = &["redis", "rediss"];
/// Port of a Redis server address that names none.
pub const REDIS_DEFAULT_PORT: u16 = 6379;
/// Longest stream key (rendered), in bytes.
pub const MAX_STREAM_KEY_BYTES: usize = 512;
/// Default window of the idempotency guard, in seconds (24 h): longer than any retry schedule
/// the extension's backoff allows by default.
pub const DEFAULT_DEDUP_WINDOW_SECONDS: u64 = 86_400;
/// Longest window of the idempotency guard, in seconds (7 days): one small key per job lives
/// that long.
pub const MAX_DEDUP_WINDOW_SECONDS: u64 = 7 * 86_400;
/// Largest `maxlen` (approximate trimming of the stream).
pub const MAX_MAXLEN: u64 = 1_000_000_000;
/// Keys of the worker's own state in Redis start with this (its default `redis.key_prefix`);
/// a stream key may not, so that an observer cannot clobber breakers, rate limits or guards.
pub const RESERVED_KEY_PREFIX: &str = "fraiseql_observers:";

fn default_dedup_window() -> u64 {
    DEFAULT_DEDUP_WINDOW_SECONDS
}

/// `{"type": "redis_stream", "url": "redis://cache.internal:6379/0", "stream": "orders:{{ op | lower }}"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamAction {
    /// The server: `redis://host[:port][/db]` or `rediss://...` (TLS; port 6379 by default), or
    /// a reference to a worker secret holding it (`{"secret": "<name>"}`), as an address with
    /// `user:password@` is a credential.
    pub url: ValueOrSecret,
    /// Stream key template (see [`crate::template`]); renders to 1 to
    /// [`MAX_STREAM_KEY_BYTES`] bytes without control characters, not under
    /// [`RESERVED_KEY_PREFIX`].
    pub stream: String,
    /// Approximate cap on the stream's length (`XADD ... MAXLEN ~ n`), 1 to [`MAX_MAXLEN`];
    /// none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxlen: Option<u64>,
    /// How long a delivered job's guard key lives, in seconds (default 86,400, 1 to 604,800): a
    /// redelivery within it appends nothing.
    #[serde(default = "default_dedup_window")]
    pub dedup_window_seconds: u64,
    /// How long the worker waits for the server, in milliseconds (default 10,000, at most
    /// 300,000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Accept a server address with credentials in it at `observer_create` (default false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_literal_credentials: bool,
}

impl RedisStreamAction {
    pub(super) fn validate(&self) -> Result<(), ActionError> {
        validate_server_target("redis_stream", &self.url, REDIS_SCHEMES)?;
        validate_timeout(self.timeout_ms)?;
        if let Some(maxlen) = self.maxlen {
            if maxlen == 0 || maxlen > MAX_MAXLEN {
                return Err(ActionError::BadMaxlen(maxlen));
            }
        }
        if self.dedup_window_seconds == 0 || self.dedup_window_seconds > MAX_DEDUP_WINDOW_SECONDS {
            return Err(ActionError::BadDedupWindow(self.dedup_window_seconds));
        }
        validate_template("stream", &self.stream)?;
        let skeleton = template_skeleton(&self.stream, "x");
        check_stream_key(&skeleton, RESERVED_KEY_PREFIX).map_err(|e| ActionError::BadStreamKey {
            reason: format!("{e}, whatever the event (in its text)"),
        })
    }
}

/// Why `key` is not a stream key the worker appends to, or Ok: 1 to [`MAX_STREAM_KEY_BYTES`]
/// bytes, no control character, not under `reserved` (the worker's own key prefix).
pub fn check_stream_key(key: &str, reserved: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("is empty".to_string());
    }
    if key.len() > MAX_STREAM_KEY_BYTES {
        return Err(format!(
            "is {} bytes long, more than {MAX_STREAM_KEY_BYTES}",
            key.len()
        ));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(format!("holds {:?}", c.escape_default().to_string()));
    }
    if !reserved.is_empty() && key.starts_with(reserved) {
        return Err(format!(
            "starts with {reserved:?}, the prefix of the worker's own keys"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;

    fn parse(extra: serde_json::Value) -> Result<Action, ActionError> {
        let mut json = serde_json::json!({
            "type": "redis_stream", "url": "redis://cache.example.com:6379/2", "stream": "orders"
        });
        if let (Some(o), serde_json::Value::Object(e)) = (json.as_object_mut(), extra) {
            o.extend(e);
        }
        Action::from_value(json)
    }

    #[test]
    fn defaults_and_bounds() {
        let Action::RedisStream(r) = parse(serde_json::json!({})).expect("valid") else {
            panic!("a redis_stream")
        };
        assert_eq!(r.dedup_window_seconds, DEFAULT_DEDUP_WINDOW_SECONDS);
        assert_eq!(r.maxlen, None);
        assert!(parse(serde_json::json!({"maxlen": 1000, "dedup_window_seconds": 60})).is_ok());
        for maxlen in [0, MAX_MAXLEN + 1] {
            assert_eq!(
                parse(serde_json::json!({ "maxlen": maxlen })),
                Err(ActionError::BadMaxlen(maxlen))
            );
        }
        for window in [0, MAX_DEDUP_WINDOW_SECONDS + 1] {
            assert_eq!(
                parse(serde_json::json!({ "dedup_window_seconds": window })),
                Err(ActionError::BadDedupWindow(window))
            );
        }
        assert!(matches!(
            parse(serde_json::json!({ "maxlen": -1 })),
            Err(ActionError::Shape(_))
        ));
    }

    #[test]
    fn stream_keys_are_checked() {
        assert!(parse(serde_json::json!({"stream": "orders:{{ new.id }}"})).is_ok());
        for (bad, why) in [
            ("", "is empty"),
            ("{% if x %}{% endif %}", "is empty"),
            ("orders\n{{ new.id }}", "holds"),
            (
                "fraiseql_observers:breaker:x",
                "prefix of the worker's own keys",
            ),
        ] {
            match parse(serde_json::json!({ "stream": bad })) {
                Err(ActionError::BadStreamKey { reason }) => {
                    assert!(reason.contains(why), "{bad:?}: {reason}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(check_stream_key(&"k".repeat(MAX_STREAM_KEY_BYTES + 1), "").is_err());
        assert!(check_stream_key("mine:x", "mine:").is_err());
        assert!(check_stream_key("orders", "mine:").is_ok());
    }
}
