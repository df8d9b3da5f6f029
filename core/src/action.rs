//! Observer actions: what the worker does with a job. The extension stores an action as jsonb and
//! validates it with [`Action::parse`] at `observer_create`, so a definition the worker cannot
//! perform is refused with a clear error before any event is captured.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Default per-request timeout of a webhook, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Largest accepted webhook timeout, in milliseconds (5 minutes): beyond that a lease would have
/// to be heartbeated for a single request, and endpoints that slow should answer 202 instead.
pub const MAX_TIMEOUT_MS: u64 = 300_000;

/// Headers the worker sets itself; a custom header may not override them, so that signatures,
/// routing and framing stay under the worker's control.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// An action, as stored in `observer.observers.action` (jsonb with a `"type"` tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// POST the event as JSON to a URL.
    Webhook(WebhookAction),
}

/// `{"type": "webhook", "url": "...", "headers": {...}, "timeout_ms": 10000}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookAction {
    /// Absolute `http` or `https` URL the event is POSTed to.
    pub url: String,
    /// Extra request headers; names are HTTP tokens, values carry no CR/LF, and the worker's own
    /// headers (signature, Host, framing) cannot be overridden.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout in milliseconds (default 10,000, at most 300,000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Name of the signing secret in the worker's configuration (`[secrets]`): requests then
    /// carry a Standard Webhooks `webhook-signature`. Only the name is stored in the database,
    /// never the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

/// Why an action definition was refused. Each variant names the field and, through
/// [`ActionError::hint`], the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("action is not valid JSON for its type: {0}")]
    Shape(String),
    #[error("action.url {url:?} is not a valid URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("action.url scheme {0:?} is not supported")]
    BadScheme(String),
    #[error("action.url must not carry credentials")]
    UrlCredentials,
    #[error("action.headers name {0:?} is not a valid HTTP header name")]
    BadHeaderName(String),
    #[error("action.headers value of {0:?} contains a control character")]
    BadHeaderValue(String),
    #[error("action.headers {0:?} is set by the worker and cannot be overridden")]
    ReservedHeader(String),
    #[error("action.timeout_ms {0} is out of range")]
    BadTimeout(u64),
    #[error("action.secret {0:?} is not a secret name")]
    BadSecretName(String),
}

impl ActionError {
    /// What the user should do about it, for the SQL error's HINT or the CLI.
    pub fn hint(&self) -> String {
        match self {
            Self::Shape(_) => {
                r#"Write the action as {"type": "webhook", "url": "https://...", "headers": {...}, "timeout_ms": 10000}."#
                    .to_string()
            }
            Self::BadUrl { .. } | Self::BadScheme(_) => {
                "Use an absolute http:// or https:// URL with a host.".to_string()
            }
            Self::UrlCredentials => {
                "Remove user:password@ from the URL; put credentials in action.headers or use signing."
                    .to_string()
            }
            Self::BadHeaderName(_) => {
                "Header names may contain letters, digits and !#$%&'*+-.^_`|~ only.".to_string()
            }
            Self::BadHeaderValue(_) => "Remove CR, LF and other control characters.".to_string(),
            Self::ReservedHeader(_) => format!(
                "Drop it from action.headers; the worker sets {}.",
                RESERVED_HEADERS.join(", ")
            ),
            Self::BadTimeout(_) => format!("Use a timeout between 1 and {MAX_TIMEOUT_MS} ms."),
            Self::BadSecretName(_) => "Name a secret of the worker's [secrets] table: 1 to 64 letters, digits, _ or -; never the secret itself.".to_string(),
        }
    }
}

impl Action {
    /// Parse and validate an action from its JSON text.
    pub fn parse(json: &str) -> Result<Self, ActionError> {
        let action: Action =
            serde_json::from_str(json).map_err(|e| ActionError::Shape(e.to_string()))?;
        action.validate()?;
        Ok(action)
    }

    /// Parse and validate an action from a JSON value.
    pub fn from_value(value: serde_json::Value) -> Result<Self, ActionError> {
        let action: Action =
            serde_json::from_value(value).map_err(|e| ActionError::Shape(e.to_string()))?;
        action.validate()?;
        Ok(action)
    }

    /// Check everything serde's shape check cannot.
    pub fn validate(&self) -> Result<(), ActionError> {
        match self {
            Action::Webhook(w) => w.validate(),
        }
    }

    /// The action type as the bounded metric/audit label (`"webhook"`).
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Webhook(_) => "webhook",
        }
    }
}

impl WebhookAction {
    fn validate(&self) -> Result<(), ActionError> {
        let url = url::Url::parse(&self.url).map_err(|e| ActionError::BadUrl {
            url: self.url.clone(),
            reason: e.to_string(),
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(ActionError::BadScheme(url.scheme().to_string()));
        }
        if url.host().is_none() {
            return Err(ActionError::BadUrl {
                url: self.url.clone(),
                reason: "no host".to_string(),
            });
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ActionError::UrlCredentials);
        }
        for (name, value) in &self.headers {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(ActionError::BadHeaderName(name.clone()));
            }
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(ActionError::ReservedHeader(name.clone()));
            }
            // RFC 9110 field values: visible ASCII, space, tab and obs-text; never CR, LF or NUL.
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(ActionError::BadHeaderValue(name.clone()));
            }
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(ActionError::BadTimeout(self.timeout_ms));
        }
        if let Some(name) = &self.secret {
            if !is_secret_name(name) {
                return Err(ActionError::BadSecretName(name.clone()));
            }
        }
        Ok(())
    }
}

/// A signing secret's name: 1 to 64 of `[A-Za-z0-9_-]` (it is also an environment variable
/// suffix, `FRAISEQL_OBSERVERS_SECRETS__<NAME>`). A `whsec_` value is refused by this rule too.
pub fn is_secret_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with("whsec_")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> ActionError {
        Action::parse(json).expect_err(json)
    }

    #[test]
    fn parses_a_minimal_webhook_with_defaults() {
        let a =
            Action::parse(r#"{"type":"webhook","url":"https://example.com/hook"}"#).expect("valid");
        let Action::Webhook(w) = a;
        assert_eq!(w.url, "https://example.com/hook");
        assert_eq!(w.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert!(w.headers.is_empty());
    }

    #[test]
    fn round_trips_through_json() {
        let json = r#"{"type":"webhook","url":"http://127.0.0.1:9/x","headers":{"X-Team":"a"},"timeout_ms":500}"#;
        let a = Action::parse(json).expect("valid");
        let back = serde_json::to_string(&a).expect("serialises");
        assert_eq!(Action::parse(&back).expect("valid again"), a);
        assert_eq!(a.kind(), "webhook");
    }

    #[test]
    fn refuses_unknown_type_and_unknown_fields() {
        assert!(matches!(
            err(r#"{"type":"fax","url":"x"}"#),
            ActionError::Shape(_)
        ));
        assert!(matches!(
            err(r#"{"type":"webhook","url":"https://a.b","method":"GET"}"#),
            ActionError::Shape(m) if m.contains("method")
        ));
        assert!(matches!(
            err(r#"{"url":"https://a.b"}"#),
            ActionError::Shape(_)
        ));
    }

    #[test]
    fn refuses_bad_urls() {
        assert!(matches!(
            err(r#"{"type":"webhook","url":"not a url"}"#),
            ActionError::BadUrl { .. }
        ));
        assert!(matches!(
            err(r#"{"type":"webhook","url":"ftp://example.com/"}"#),
            ActionError::BadScheme(s) if s == "ftp"
        ));
        assert_eq!(
            err(r#"{"type":"webhook","url":"https://u:p@example.com/"}"#),
            ActionError::UrlCredentials
        );
    }

    #[test]
    fn refuses_header_injection_and_overrides() {
        assert_eq!(
            err(r#"{"type":"webhook","url":"https://a.b","headers":{"X-A":"v\r\nX-Evil: 1"}}"#),
            ActionError::BadHeaderValue("X-A".into())
        );
        assert_eq!(
            err(r#"{"type":"webhook","url":"https://a.b","headers":{"Bad Name":"v"}}"#),
            ActionError::BadHeaderName("Bad Name".into())
        );
        assert_eq!(
            err(r#"{"type":"webhook","url":"https://a.b","headers":{"Webhook-Signature":"v1,x"}}"#),
            ActionError::ReservedHeader("Webhook-Signature".into())
        );
        assert_eq!(
            err(r#"{"type":"webhook","url":"https://a.b","headers":{"HOST":"evil"}}"#),
            ActionError::ReservedHeader("HOST".into())
        );
    }

    #[test]
    fn secrets_are_named_never_given() {
        let ok =
            Action::parse(r#"{"type":"webhook","url":"https://e.com/h","secret":"orders-v2"}"#)
                .expect("a secret name");
        let Action::Webhook(w) = ok;
        assert_eq!(w.secret.as_deref(), Some("orders-v2"));
        for bad in ["", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "a b", "x/y"] {
            let json = format!(r#"{{"type":"webhook","url":"https://e.com/h","secret":{bad:?}}}"#);
            assert_eq!(
                err(&json),
                ActionError::BadSecretName(bad.to_string()),
                "{bad}"
            );
        }
    }

    #[test]
    fn refuses_out_of_range_timeouts() {
        assert_eq!(
            err(r#"{"type":"webhook","url":"https://a.b","timeout_ms":0}"#),
            ActionError::BadTimeout(0)
        );
        assert_eq!(
            err(r#"{"type":"webhook","url":"https://a.b","timeout_ms":300001}"#),
            ActionError::BadTimeout(300_001)
        );
    }

    #[test]
    fn every_error_has_a_hint() {
        for e in [
            err(r#"{"type":"fax"}"#),
            err(r#"{"type":"webhook","url":"ftp://x/"}"#),
            err(r#"{"type":"webhook","url":"https://a.b","timeout_ms":0}"#),
        ] {
            assert!(!e.hint().is_empty(), "{e}");
        }
    }
}
