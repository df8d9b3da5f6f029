//! The `webhook` action: POST the job's payload as JSON, signed (Standard Webhooks) when the
//! observer has signing keys. The request goes through the shared client of [`super::http`]
//! (SSRF guard, no redirects, capped error bodies), which also classifies the response.

use std::time::{Duration, SystemTime};

use fraiseql_observers_core::net;
use fraiseql_observers_core::WebhookAction;
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};

use super::http::{refuse_literal, send};
use crate::job::{Attempted, ClaimedJob, Outcome};
use crate::secrets::Wire;
use crate::signing::{self, SigningKey};

/// Deliver one job to a webhook: to `wire`'s URL with `wire`'s headers (the action's, its
/// references to secrets resolved); the error text is scrubbed of the secrets sent.
pub async fn deliver(
    http: &reqwest::Client,
    action: &WebhookAction,
    wire: &Wire,
    job: &ClaimedJob,
    keys: Option<&[SigningKey]>,
    allow: &[net::Cidr],
    error_body_bytes: usize,
) -> Attempted {
    // The SSRF guard checks the URL the request goes to: a resolved secret's too.
    if let Some(refused) = refuse_literal(&wire.url, allow) {
        return refused.into();
    }
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut request = http
        .post(&wire.url)
        .timeout(Duration::from_millis(action.timeout_ms))
        .header(CONTENT_TYPE, "application/json")
        .header("webhook-id", &job.idempotency_key)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(keys) = keys {
        request = request.header(
            "webhook-signature",
            signing::signature(
                keys,
                &job.idempotency_key,
                timestamp,
                job.payload.as_bytes(),
            ),
        );
    }
    let mut request = request.body(job.payload.clone());
    for (name, value) in &wire.headers {
        // Names and values were validated at observer_create (secret values when the worker's
        // configuration was loaded); a row edited by hand is refused here.
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(mut v)) => {
                // Kept out of HTTP/2 header compression tables and debug output of the client.
                v.set_sensitive(wire.is_secret_header(name));
                request = request.header(n, v)
            }
            _ => {
                return Outcome::Retry {
                    error: format!("invalid header {name:?} in the observer's action"),
                    not_before: None,
                    endpoint_fault: false,
                }
                .into()
            }
        }
    }
    wire.scrub_attempt(send(request, error_body_bytes).await)
}
