//! The `redis_stream` action: the delivered document appended to a Redis stream with one Lua
//! script (atomic): `SET <guard> NX EX <window>`; if the guard was already set, nothing is
//! appended (a redelivery: delivered, reported as a duplicate); otherwise `XADD <stream>
//! [MAXLEN ~ n] * field value ...` and the guard keeps the entry's id. An `XADD` that fails
//! (the key holds another type) removes the guard again, so a retry appends.
//!
//! The entry's fields are the document's top-level fields, `type`, `timestamp`, `attempt` (when
//! the document has it), `data`, then any other by name: a string as it is, anything else as
//! JSON text; then `webhook_id`, the job's idempotency key. The guard key is
//! `<redis.key_prefix>xadd:<length of the stream key>:<stream key>:<webhook-id>`.
//!
//! One connection manager per server URL ([`Pool`]), connected on first use to the address the
//! network policy allowed ([`super::server`]); it reconnects by itself after a failure.
//! `rediss://` verifies the server's certificate and host name against the worker's
//! `streams.ca_file` or the public CAs ([`crate::tls::StreamTls`]).

use std::time::Duration;

use fraiseql_observers_core::action::{
    check_stream_key, MAX_STREAM_KEY_BYTES, REDIS_DEFAULT_PORT, RESERVED_KEY_PREFIX,
};
use fraiseql_observers_core::net;
use fraiseql_observers_core::template::{self, Escape};
use fraiseql_observers_core::RedisStreamAction;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::server::{Clients, Server};
use crate::job::{Attempted, ClaimedJob, Outcome};
use crate::secrets::Wire;
use crate::tls::StreamTls;

/// KEYS[1] the guard, KEYS[2] the stream; ARGV[1] the window (s), ARGV[2] the maxlen ('' for
/// none), then field, value, ... Returns {1, id} when appended, {0, id} when the guard was set.
const APPEND: &str = r"
local seen = redis.call('GET', KEYS[1])
if seen then return {0, seen} end
redis.call('SET', KEYS[1], '', 'NX', 'EX', ARGV[1])
local args = {'XADD', KEYS[2]}
if ARGV[2] ~= '' then
  args[#args + 1] = 'MAXLEN'; args[#args + 1] = '~'; args[#args + 1] = ARGV[2]
end
args[#args + 1] = '*'
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
local id = redis.pcall(unpack(args))
if type(id) == 'table' and id.err then
  redis.call('DEL', KEYS[1])
  return id
end
redis.call('SET', KEYS[1], id, 'EX', ARGV[1])
return {1, id}
";

/// The document's fields that come first in an entry, in this order; any other follows by name.
const FIRST: &[&str] = &["type", "timestamp", "attempt", "data"];

/// The Redis connections of this worker, one per server URL, and the script (the runner
/// context holds it).
pub struct Pool {
    connections: Clients<ConnectionManager>,
    script: redis::Script,
    /// `streams.ca_file`'s PEM, which verifies `rediss://` servers; None: the public CAs.
    ca_pem: Option<Vec<u8>>,
}

impl Pool {
    pub fn new(tls: &StreamTls) -> Self {
        Pool {
            connections: Clients::default(),
            script: redis::Script::new(APPEND),
            ca_pem: tls.ca_pem.clone(),
        }
    }
}

/// Connect to `server`: plain TCP to the address the network policy allowed, TLS by name.
async fn connect(
    wire: &Wire,
    server: &Server,
    allow: &[net::Cidr],
    timeout: Duration,
    ca_pem: Option<&[u8]>,
) -> Result<ConnectionManager, Outcome> {
    let addr = server.pin(allow).await?;
    let failed = |e: redis::RedisError| Outcome::Retry {
        error: server.connect_error("Redis", wire, &e),
        not_before: None,
        endpoint_fault: true,
    };
    let mut target = url::Url::parse(&wire.url).map_err(|e| Outcome::Retry {
        error: format!("the Redis server address does not parse ({e})"),
        not_before: None,
        endpoint_fault: false,
    })?;
    if server.tls() {
        // The redis crate builds its rustls configuration with the process default.
        crate::tls::install_default_provider();
    } else {
        let _ = target.set_ip_host(addr.ip());
        let _ = target.set_port(Some(addr.port()));
    }
    let client = match ca_pem {
        Some(pem) if server.tls() => redis::Client::build_with_tls(
            target.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
        _ => redis::Client::open(target.as_str()),
    }
    .map_err(failed)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(failed)
}

/// The stream key of this job's event and the fields of its entry, or why there are none.
pub fn entry(
    action: &RedisStreamAction,
    job: &ClaimedJob,
    reserved: &str,
) -> Result<(String, Vec<(String, String)>), String> {
    let document: serde_json::Value = serde_json::from_str(&job.payload)
        .map_err(|e| format!("the job's payload is not JSON: {e}"))?;
    let key = template::render(
        &action.stream,
        &template::context(&document),
        Escape::None,
        MAX_STREAM_KEY_BYTES,
    )
    .map_err(|e| format!("action.stream: {e}"))?;
    // The worker's own prefix, and the default one too: another deployment of workers may
    // keep its state on the same server under it.
    check_stream_key(&key, reserved)
        .and_then(|()| check_stream_key(&key, RESERVED_KEY_PREFIX))
        .map_err(|e| format!("action.stream rendered to {key:?}, which {e}"))?;
    let serde_json::Value::Object(top) = document else {
        return Err("the job's payload is not a JSON object".to_string());
    };
    let rank = |name: &str| FIRST.iter().position(|f| *f == name).unwrap_or(FIRST.len());
    let mut fields: Vec<(String, String)> = top
        .into_iter()
        .filter(|(name, _)| name != "webhook_id")
        .map(|(name, value)| match value {
            serde_json::Value::String(s) => (name, s),
            other => (name, other.to_string()),
        })
        .collect();
    fields.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then_with(|| a.0.cmp(&b.0)));
    fields.push(("webhook_id".to_string(), job.idempotency_key.clone()));
    Ok((key, fields))
}

/// Append one job to the stream on the server of `wire`'s URL (the action's, resolved when it
/// is a reference to a secret). `prefix` is the worker's `redis.key_prefix`: guard keys live
/// under it, and stream keys may not.
pub async fn deliver(
    pool: &Pool,
    action: &RedisStreamAction,
    wire: &Wire,
    job: &ClaimedJob,
    allow: &[net::Cidr],
    prefix: &str,
) -> Attempted {
    let server = match Server::parse(&wire.url, REDIS_DEFAULT_PORT) {
        Ok(s) => s,
        Err(error) => return retry(error, false).into(),
    };
    let (key, fields) = match entry(action, job, prefix) {
        Ok(e) => e,
        // This event cannot be appended as the template says: dead-lettered (replayable once
        // the observer is fixed); the server is not at fault and the other jobs flow.
        Err(error) => {
            return Outcome::Discard {
                error,
                pause: false,
            }
            .into()
        }
    };
    let timeout = Duration::from_millis(action.timeout_ms);
    let connection = pool.connections.get(&wire.url, || {
        connect(wire, &server, allow, timeout, pool.ca_pem.as_deref())
    });
    match connection.await {
        Ok(mut conn) => {
            let guard = format!("{prefix}xadd:{}:{key}:{}", key.len(), job.idempotency_key);
            let mut call = pool.script.key(&guard);
            call.key(&key)
                .arg(action.dedup_window_seconds)
                .arg(action.maxlen.map(|m| m.to_string()).unwrap_or_default());
            for (name, value) in &fields {
                call.arg(name).arg(value);
            }
            let answer =
                tokio::time::timeout(timeout, call.invoke_async::<(i64, String)>(&mut conn));
            settle(answer.await, wire, &server, &key, job)
        }
        Err(outcome) => outcome,
    }
    .into()
}

/// The script's answer as an outcome.
fn settle(
    answer: Result<redis::RedisResult<(i64, String)>, tokio::time::error::Elapsed>,
    wire: &Wire,
    server: &Server,
    key: &str,
    job: &ClaimedJob,
) -> Outcome {
    let endpoint = server.endpoint();
    match answer {
        Ok(Ok((appended, id))) => {
            if appended == 0 {
                tracing::info!(job = job.job_id, stream = %key, %id, "duplicate: already appended within the guard's window, not appended again");
            }
            Outcome::Delivered
        }
        Ok(Err(e)) => {
            let connection = e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout();
            retry(
                format!(
                    "XADD to stream {key:?} on {endpoint} failed: {}",
                    server.scrub(wire, &e.to_string())
                ),
                connection,
            )
        }
        Err(_) => retry(
            format!("no answer from {endpoint} for stream {key:?} within the action's timeout_ms"),
            true,
        ),
    }
}

fn retry(error: String, endpoint_fault: bool) -> Outcome {
    Outcome::Retry {
        error,
        not_before: None,
        endpoint_fault,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(payload: &str) -> ClaimedJob {
        ClaimedJob {
            job_id: 1,
            token: 1,
            attempt: 1,
            observer: "o".into(),
            action: String::new(),
            idempotency_key: "evt_1".into(),
            payload: payload.into(),
            event_at: 0.0,
        }
    }

    fn action(stream: &str) -> RedisStreamAction {
        match fraiseql_observers_core::Action::from_value(serde_json::json!({
            "type": "redis_stream", "url": "redis://r.example", "stream": stream
        })) {
            Ok(fraiseql_observers_core::Action::RedisStream(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fields_are_the_documents_top_level_and_the_webhook_id() {
        let j = job(
            r#"{"type":"orders","timestamp":"2026-11-22T10:00:00Z","attempt":2,"webhook_id":"forged","data":{"op":"INSERT","new":{"id":7}}}"#,
        );
        let (key, fields) =
            entry(&action("s:{{ op | lower }}"), &j, "fraiseql_observers:").expect("an entry");
        assert_eq!(key, "s:insert");
        assert_eq!(
            fields,
            vec![
                ("type".to_string(), "orders".to_string()),
                ("timestamp".to_string(), "2026-11-22T10:00:00Z".to_string()),
                ("attempt".to_string(), "2".to_string()),
                (
                    "data".to_string(),
                    r#"{"new":{"id":7},"op":"INSERT"}"#.to_string()
                ),
                ("webhook_id".to_string(), "evt_1".to_string()),
            ]
        );
        let e = entry(
            &action("{{ new.key }}"),
            &job(r#"{"data":{"new":{"key":"mine:x"}}}"#),
            "mine:",
        )
        .expect_err("reserved");
        assert!(e.contains("prefix of the worker's own keys"), "{e}");
        let e = entry(
            &action("{{ new.key }}"),
            &job(r#"{"data":{"new":{"key":"fraiseql_observers:breaker:x"}}}"#),
            "mine:",
        )
        .expect_err("the default prefix, whatever the worker's");
        assert!(e.contains("\"fraiseql_observers:\""), "{e}");
    }
}
