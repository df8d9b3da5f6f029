//! The `webhook` action: send the job's payload as JSON, signed (Standard Webhooks) when the
//! observer has signing keys. By default a `POST` of the delivered document to the URL as
//! written; an action may shape the request ([`WebhookAction::is_shaped`]): its method, a URL
//! whose path and query are rendered from the event (values percent-encoded), a body rendered
//! from a JSON template, and header values rendered from templates. The request goes through the
//! shared client of [`super::http`] (SSRF guard on the rendered URL, no redirects, capped error
//! bodies), which also classifies the response.

use std::time::{Duration, SystemTime};

use fraiseql_observers_core::action::ShapeError;
use fraiseql_observers_core::template;
use fraiseql_observers_core::{net, WebhookAction};
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::Method;

use super::http::{refuse_literal, send};
use crate::job::{self, Attempted, ClaimedJob, Outcome};
use crate::secrets::Wire;
use crate::signing::{self, SigningKey};

/// What goes on the wire for one job: the action's URL, body and headers, rendered when the
/// action shapes them.
#[derive(Debug, PartialEq, Eq)]
pub struct Shaped {
    /// Where the request goes (the rendered URL of a URL template).
    pub url: String,
    /// The body sent, and signed: the rendered `body`, or the delivered document.
    pub body: String,
    /// The headers, templated values rendered, references resolved.
    pub headers: Vec<(String, String)>,
}

/// The request of `action` for the job whose delivered document is `payload`, `wire` holding
/// the action's URL and headers with their references resolved. An action that shapes nothing
/// sends `wire` and `payload` as they are (the document is not even parsed). An error names the
/// field that cannot be rendered for this job (never a rendered value).
pub fn shape(action: &WebhookAction, wire: &Wire, payload: &str) -> Result<Shaped, String> {
    if !action.is_shaped() {
        return Ok(Shaped {
            url: wire.url.clone(),
            body: payload.to_string(),
            headers: wire.headers.clone(),
        });
    }
    let document: serde_json::Value = serde_json::from_str(payload).map_err(|e| {
        format!("the job's payload is not JSON, so the action's templates cannot read it: {e}")
    })?;
    let ctx = template::context(&document);
    let rendered = |e: ShapeError| e.to_string();
    // A URL that is a reference to a secret is never a template: wire.url is then its value.
    let url = action.render_url(&ctx).map_err(rendered)?;
    let url = url.unwrap_or_else(|| wire.url.clone());
    // The endpoint (breaker, limits, metrics label) was taken from the URL as written; a
    // rendered URL keeps it (checked when rendering, and again here).
    if job::endpoint(&url) != job::endpoint(&wire.url) {
        return Err(format!(
            "action.url: the rendered URL leaves {}; the job is not sent",
            job::endpoint(&wire.url)
        ));
    }
    let body = action.render_body(&ctx).map_err(rendered)?;
    let mut headers = Vec::with_capacity(wire.headers.len());
    for (name, value) in &wire.headers {
        // A secret's value is never a template.
        let value = match wire.is_secret_header(name) {
            true => None,
            false => action.render_header(name, &ctx).map_err(rendered)?,
        }
        .unwrap_or_else(|| value.clone());
        headers.push((name.clone(), value));
    }
    Ok(Shaped {
        url,
        body: body.unwrap_or_else(|| payload.to_string()),
        headers,
    })
}

/// The action's method (validated at `observer_create` and when the job was claimed).
fn method(action: &WebhookAction) -> Method {
    match action.method() {
        "PUT" => Method::PUT,
        "PATCH" => Method::PATCH,
        "DELETE" => Method::DELETE,
        _ => Method::POST,
    }
}

/// Deliver one job to a webhook: to `wire`'s URL with `wire`'s headers (the action's, its
/// references to secrets resolved), both rendered when the action shapes them; the error text is
/// scrubbed of the secrets sent. A job whose request cannot be rendered (a value that would put
/// a control character in a header, a body past its cap) is dead-lettered with the field named,
/// without blaming the endpoint; the observer's other jobs flow.
pub async fn deliver(
    http: &reqwest::Client,
    action: &WebhookAction,
    wire: &Wire,
    job: &ClaimedJob,
    keys: Option<&[SigningKey]>,
    allow: &[net::Cidr],
    error_body_bytes: usize,
) -> Attempted {
    let shaped = match shape(action, wire, &job.payload) {
        Ok(shaped) => shaped,
        Err(error) => {
            return Outcome::Discard {
                error,
                pause: false,
            }
            .into()
        }
    };
    // The SSRF guard checks the URL the request goes to: a resolved secret's, a rendered one.
    if let Some(refused) = refuse_literal(&shaped.url, allow) {
        return refused.into();
    }
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut request = http
        .request(method(action), &shaped.url)
        .timeout(Duration::from_millis(action.timeout_ms))
        .header(CONTENT_TYPE, "application/json")
        .header("webhook-id", &job.idempotency_key)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(keys) = keys {
        // Over the body actually sent.
        request = request.header(
            "webhook-signature",
            signing::signature(
                keys,
                &job.idempotency_key,
                timestamp,
                shaped.body.as_bytes(),
            ),
        );
    }
    let mut request = request.body(shaped.body);
    for (name, value) in &shaped.headers {
        // Names and values were validated at observer_create (secret values when the worker's
        // configuration was loaded, rendered ones by render_header); a row edited by hand is
        // refused here.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn action(json: &str) -> WebhookAction {
        match fraiseql_observers_core::Action::parse(json).expect("valid") {
            fraiseql_observers_core::Action::Webhook(w) => w,
            other => panic!("not a webhook: {other:?}"),
        }
    }

    fn wire(url: &str, headers: &[(&str, &str)]) -> Wire {
        let mut wire = Wire::default();
        wire.url = url.to_string();
        wire.headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        wire
    }

    const PAYLOAD: &str = r#"{"type":"orders","timestamp":"2026-12-03T10:00:00Z",
        "data":{"event_id":7,"op":"INSERT","table":"public.orders","old":null,
                "new":{"id":3,"account":"a/../b","total":9.5,"note":"x\r\ny"}}}"#;

    #[test]
    fn an_unshaped_action_sends_the_document_as_it_is() {
        let a = action(r#"{"type":"webhook","url":"https://a.b/h","headers":{"X-Team":"x"}}"#);
        let w = wire("https://a.b/h", &[("X-Team", "x")]);
        let shaped = shape(&a, &w, "not even JSON").expect("nothing to render");
        assert_eq!(
            shaped,
            Shaped {
                url: "https://a.b/h".into(),
                body: "not even JSON".into(),
                headers: vec![("X-Team".into(), "x".into())],
            }
        );
        assert_eq!(method(&a), Method::POST);
    }

    #[test]
    fn a_shaped_action_renders_url_body_and_headers() {
        let url = "https://a.b/accounts/{{ new.account }}?id={{ new.id }}";
        let a = action(
            &serde_json::json!({
                "type": "webhook", "url": url, "method": "PATCH",
                "headers": {"X-Order-Id": "{{ new.id }}", "X-Team": "x"},
                "body": {"id": "{{ new.id }}", "total": "{{ new.total }}"}
            })
            .to_string(),
        );
        let w = wire(url, &[("X-Order-Id", "{{ new.id }}"), ("X-Team", "x")]);
        let shaped = shape(&a, &w, PAYLOAD).expect("renders");
        assert_eq!(shaped.url, "https://a.b/accounts/a%2F..%2Fb?id=3");
        assert_eq!(shaped.body, r#"{"id":3,"total":9.5}"#);
        assert_eq!(
            shaped.headers,
            vec![
                ("X-Order-Id".into(), "3".into()),
                ("X-Team".into(), "x".into())
            ]
        );
        assert_eq!(method(&a), Method::PATCH);
    }

    #[test]
    fn a_value_that_cannot_be_a_header_fails_with_its_field() {
        let a = action(
            r#"{"type":"webhook","url":"https://a.b/h","headers":{"X-Note":"{{ new.note }}"}}"#,
        );
        let w = wire("https://a.b/h", &[("X-Note", "{{ new.note }}")]);
        let e = shape(&a, &w, PAYLOAD).expect_err("CR LF");
        assert!(e.starts_with("action.headers.X-Note: "), "{e}");
        assert!(e.contains("control character \\r"), "{e}");
    }
}
