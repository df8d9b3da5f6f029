//! The `slack` action: a message to a Slack incoming webhook
//! (<https://api.slack.com/messaging/webhooks>): `POST` of `{"text": ..., "blocks": [...]}` as
//! JSON, answered `200 ok`. The text and every string of the blocks are templates over the event
//! (values escaped as Slack's message format requires). Responses are classified like a
//! webhook's: Slack answers `410 channel_is_archived` for a channel that is gone (the observer is
//! paused), `429` with `Retry-After` when rate-limited, `4xx` with an error code in the body
//! (`invalid_payload`, `no_service`, ...) kept as the attempt's error.

use std::time::Duration;

use fraiseql_observers_core::action::block_strings;
use fraiseql_observers_core::net;
use fraiseql_observers_core::template::{self, Escape};
use fraiseql_observers_core::SlackAction;
use reqwest::header::CONTENT_TYPE;

use super::http;
use crate::job::{Attempted, ClaimedJob, Outcome};
use crate::secrets::Wire;

/// Slack truncates message text beyond 40,000 characters; we refuse instead of cutting.
const MAX_TEXT_BYTES: usize = 40_000;
/// Largest text of one block element (Slack's limit for a section's text is 3,000 characters).
const MAX_BLOCK_TEXT_BYTES: usize = 3_000;

/// The JSON body of the message for this job's event.
pub fn message(action: &SlackAction, payload: &str) -> Result<serde_json::Value, String> {
    let document: serde_json::Value =
        serde_json::from_str(payload).map_err(|e| format!("the job's payload is not JSON: {e}"))?;
    let ctx = template::context(&document);
    let text = template::render(&action.text, &ctx, Escape::Slack, MAX_TEXT_BYTES)
        .map_err(|e| format!("action.text: {e}"))?;
    let mut body = serde_json::json!({ "text": text });
    if let Some(blocks) = &action.blocks {
        let mut rendered = blocks.clone();
        for (path, source) in block_strings(blocks) {
            let out = template::render(source, &ctx, Escape::Slack, MAX_BLOCK_TEXT_BYTES)
                .map_err(|e| format!("action.{path}: {e}"))?;
            if let Some(slot) = pointer_mut(&mut rendered, &path) {
                *slot = serde_json::Value::String(out);
            }
        }
        body["blocks"] = rendered;
    }
    Ok(body)
}

/// The value at a `blocks[0].text.text` path (as [`block_strings`] names them) inside `blocks`.
fn pointer_mut<'a>(
    blocks: &'a mut serde_json::Value,
    path: &str,
) -> Option<&'a mut serde_json::Value> {
    let mut pointer = String::new();
    let rest = path.strip_prefix("blocks")?;
    for part in rest.split('.').flat_map(|p| p.split('[')) {
        if part.is_empty() {
            continue;
        }
        let key = part.strip_suffix(']').unwrap_or(part);
        pointer.push('/');
        pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
    }
    blocks.pointer_mut(&pointer)
}

/// Post one job's message to `wire`'s URL (the action's, resolved when it is a reference to a
/// secret); the error text is scrubbed of it.
pub async fn deliver(
    http: &reqwest::Client,
    action: &SlackAction,
    wire: &Wire,
    job: &ClaimedJob,
    allow: &[net::Cidr],
    error_body_bytes: usize,
) -> Attempted {
    if let Some(refused) = http::refuse_literal(&wire.url, allow) {
        return refused.into();
    }
    let body = match message(action, &job.payload) {
        Ok(b) => b,
        // The template cannot render this event: nothing to send; the job is dead-lettered
        // (replayable once the observer's action is fixed), the channel is not at fault.
        Err(error) => {
            return Outcome::Discard {
                error,
                pause: false,
            }
            .into()
        }
    };
    let request = http
        .post(&wire.url)
        .timeout(Duration::from_millis(action.timeout_ms))
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_string());
    wire.scrub_attempt(http::send(request, error_body_bytes).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(json: &str) -> SlackAction {
        match fraiseql_observers_core::Action::parse(json).expect("valid") {
            fraiseql_observers_core::Action::Slack(s) => s,
            other => panic!("not slack: {other:?}"),
        }
    }

    const PAYLOAD: &str = r#"{"type":"order_shipped","timestamp":"2026-11-22T10:00:00Z",
        "data":{"event_id":7,"op":"UPDATE","table":"public.orders","old":{"id":3,"status":"new"},
                "new":{"id":3,"status":"shipped","customer":"Ada <ada@x.test>"}}}"#;

    #[test]
    fn renders_text_and_block_strings() {
        let a = action(
            r#"{"type":"slack","url":"https://hooks.slack.com/services/T0/B0/x",
                "text":"Order {{ new.id }} {{ old.status }} -> {{ new.status }}",
                "blocks":[{"type":"section","text":{"type":"mrkdwn","text":"*{{ new.customer }}*"}}]}"#,
        );
        let body = message(&a, PAYLOAD).expect("renders");
        assert_eq!(
            body,
            serde_json::json!({
                "text": "Order 3 new -> shipped",
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*Ada &lt;ada@x.test&gt;*"}}]
            })
        );
    }

    #[test]
    fn a_template_error_is_reported_with_its_field() {
        let a = action(
            r#"{"type":"slack","url":"https://h.test/x","text":"{% for i in range(1000000) %}{% for j in range(1000000) %}.{% endfor %}{% endfor %}"}"#,
        );
        let e = message(&a, PAYLOAD).expect_err("out of fuel");
        assert!(e.starts_with("action.text: "), "{e}");
    }
}
