//! The `nats` action: the job's payload (the very bytes a webhook would POST) published to a
//! NATS JetStream subject rendered from the action's template, with `Nats-Msg-Id` = the job's
//! `webhook-id`, so that JetStream's duplicate window makes a redelivery a no-op. Delivered only
//! on the stream's publish acknowledgement (a duplicate's included); no stream for the subject,
//! no acknowledgement in time or no connection: retried, the error naming subject and server.
//!
//! One client per server URL ([`Pool`], [`super::server::Clients`]), connected on first use to
//! the address the network policy allowed ([`super::server`]), reconnecting by itself
//! afterwards; servers the cluster announces are ignored (they were never checked). `tls://`
//! verifies the server's certificate and host name against the worker's `streams.ca_file` or
//! the public CAs ([`crate::tls::StreamTls`]), never the machine's certificate store.

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::ConnectErrorKind;
use fraiseql_observers_core::action::{check_subject, MAX_SUBJECT_BYTES, NATS_DEFAULT_PORT};
use fraiseql_observers_core::net;
use fraiseql_observers_core::template::{self, Escape};
use fraiseql_observers_core::NatsAction;

use super::server::{Clients, Server};
use crate::job::{Attempted, ClaimedJob, Outcome};
use crate::secrets::Wire;
use crate::tls::StreamTls;

/// Longest wait for a connection to a NATS server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The NATS clients of this worker, one per server URL (the runner context holds it), and the
/// TLS configuration of `tls://` servers.
pub struct Pool {
    clients: Clients<async_nats::Client>,
    tls: rustls::ClientConfig,
}

impl Pool {
    pub fn new(tls: &StreamTls) -> Self {
        Pool {
            clients: Clients::default(),
            tls: tls.config.clone(),
        }
    }
}

/// Connect to `server` at the address the network policy allows, with the URL's credentials
/// given as options (never in the address, so that no error quotes them).
async fn connect(
    wire: &Wire,
    server: &Server,
    allow: &[net::Cidr],
    tls: &rustls::ClientConfig,
) -> Result<async_nats::Client, Outcome> {
    let addr = server.pin(allow).await?;
    let mut options = async_nats::ConnectOptions::new()
        .name("fraiseql-observers")
        .ignore_discovered_servers()
        .connection_timeout(CONNECT_TIMEOUT);
    if !server.user.is_empty() {
        options = match &server.password {
            Some(password) => options.user_and_password(server.user.clone(), password.clone()),
            None => options.token(server.user.clone()),
        };
    }
    let target = if server.tls() {
        options = options.require_tls(true).tls_client_config(tls.clone());
        server.endpoint()
    } else {
        format!("nats://{addr}")
    };
    options.connect(target).await.map_err(|e| {
        let fault = !matches!(
            e.kind(),
            ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation
        );
        Outcome::Retry {
            error: server.connect_error("NATS", wire, &e),
            not_before: None,
            endpoint_fault: fault,
        }
    })
}

/// The subject of this job's event: the action's template rendered over the delivered document
/// and checked ([`check_subject`]), or why it is not one.
pub fn subject(action: &NatsAction, payload: &str) -> Result<String, String> {
    let document: serde_json::Value =
        serde_json::from_str(payload).map_err(|e| format!("the job's payload is not JSON: {e}"))?;
    let rendered = template::render(
        &action.subject,
        &template::context(&document),
        Escape::None,
        MAX_SUBJECT_BYTES,
    )
    .map_err(|e| format!("action.subject: {e}"))?;
    check_subject(&rendered)
        .map_err(|e| format!("action.subject rendered to {rendered:?}, which {e}"))?;
    Ok(rendered)
}

/// Publish one job to the server of `wire`'s URL (the action's, resolved when it is a reference
/// to a secret) and wait for the JetStream acknowledgement.
pub async fn deliver(
    pool: &Pool,
    action: &NatsAction,
    wire: &Wire,
    job: &ClaimedJob,
    allow: &[net::Cidr],
) -> Attempted {
    let server = match Server::parse(&wire.url, NATS_DEFAULT_PORT) {
        Ok(s) => s,
        Err(error) => return retry(error, false).into(),
    };
    let subject = match subject(action, &job.payload) {
        Ok(s) => s,
        // This event cannot be published as the template says: dead-lettered (replayable once
        // the observer is fixed); the server is not at fault and the observer's other jobs flow.
        Err(error) => {
            return Outcome::Discard {
                error,
                pause: false,
            }
            .into()
        }
    };
    let connected = pool
        .clients
        .get(&wire.url, || connect(wire, &server, allow, &pool.tls));
    match connected.await {
        Ok(client) => publish(client, action, wire, &server, &subject, job).await,
        Err(outcome) => outcome,
    }
    .into()
}

/// The publish and its acknowledgement.
async fn publish(
    client: async_nats::Client,
    action: &NatsAction,
    wire: &Wire,
    server: &Server,
    subject: &str,
    job: &ClaimedJob,
) -> Outcome {
    let endpoint = server.endpoint();
    let connection = client.clone();
    let mut jetstream = async_nats::jetstream::new(client);
    jetstream.set_timeout(Duration::from_millis(action.timeout_ms));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        job.idempotency_key.as_str(),
    );
    headers.insert("Content-Type", "application/json");
    let acked = match jetstream
        .publish_with_headers(subject.to_string(), headers, job.payload.clone().into())
        .await
    {
        Ok(ack) => ack.await,
        Err(e) => Err(e),
    };
    match acked {
        Ok(ack) => {
            if ack.duplicate {
                tracing::info!(job = job.job_id, %subject, stream = %ack.stream, "already in the stream (duplicate within its window): delivered");
            }
            Outcome::Delivered
        }
        // Over a live connection, a missing or wrong acknowledgement says something about the
        // subject (which a row's value may choose: one a plain subscriber takes, which never
        // acknowledges), not about the server: it must not open the server's circuit for every
        // other observer. Only a connection that is down is the server's fault.
        Err(e) => match e.kind() {
            PublishErrorKind::StreamNotFound => retry(
                format!(
                    "no JetStream stream on {endpoint} takes subject {subject:?} (no responders): create a stream whose subjects cover it"
                ),
                false,
            ),
            // The job's document, not the server: it will never fit, so it is dead at once.
            PublishErrorKind::MaxPayloadExceeded => Outcome::Discard {
                error: format!(
                    "the document ({} bytes) is larger than the max_payload of {endpoint}: it cannot be published to subject {subject:?}",
                    job.payload.len()
                ),
                pause: false,
            },
            PublishErrorKind::TimedOut => retry(
                format!(
                    "no JetStream acknowledgement for subject {subject:?} from {endpoint} within {} ms (server down or stream unavailable)",
                    action.timeout_ms
                ),
                !connected(&connection),
            ),
            _ => retry(
                format!(
                    "publishing to subject {subject:?} on {endpoint} failed: {}",
                    server.scrub(wire, &e.to_string())
                ),
                !connected(&connection),
            ),
        },
    }
}

fn connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
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

    fn action(subject: &str) -> NatsAction {
        match fraiseql_observers_core::Action::from_value(serde_json::json!({
            "type": "nats", "url": "nats://n.example", "subject": subject
        })) {
            Ok(fraiseql_observers_core::Action::Nats(n)) => n,
            other => panic!("{other:?}"),
        }
    }

    const PAYLOAD: &str = r#"{"type":"orders","timestamp":"2026-11-22T10:00:00Z",
        "data":{"op":"INSERT","table":"public.orders","new":{"id":7,"region":"eu west"}}}"#;

    #[test]
    fn subjects_render_over_the_event_and_are_checked() {
        assert_eq!(
            subject(&action("{{ type }}.{{ op | lower }}.{{ new.id }}"), PAYLOAD),
            Ok("orders.insert.7".to_string())
        );
        let e = subject(&action("orders.{{ new.region }}"), PAYLOAD).expect_err("a space");
        assert!(e.contains("\"orders.eu west\""), "{e}");
        let e = subject(&action("orders.{{ new.missing }}"), PAYLOAD).expect_err("empty");
        assert!(e.contains("empty token"), "{e}");
    }
}
