//! The `webhook` action: the event POSTed as JSON to a URL, with the action's headers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    default_timeout_ms, is_false, is_header_value, is_secret_name, is_token_byte,
    validate_reference, validate_target, validate_timeout, ActionError, RESERVED_HEADERS,
};
use crate::secret::ValueOrSecret;

/// `{"type": "webhook", "url": "...", "headers": {...}, "timeout_ms": 10000}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookAction {
    /// Absolute `http` or `https` URL the event is POSTed to, or a reference to a worker secret
    /// holding it (`{"secret": "<name>"}`).
    pub url: ValueOrSecret,
    /// Extra request headers; names are HTTP tokens, values carry no CR/LF, and the worker's own
    /// headers (signature, Host, framing) cannot be overridden. A value may be a reference to a
    /// worker secret (`{"secret": "<name>", "prefix": "Bearer "}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, ValueOrSecret>,
    /// Per-request timeout in milliseconds (default 10,000, at most 300,000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Name of the signing secret in the worker's configuration (`[secrets]`): requests then
    /// carry a Standard Webhooks `webhook-signature`. Only the name is stored in the database,
    /// never the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Accept credentials written in the action (a literal `Authorization` header, a token in
    /// the URL) at `observer_create`; default false: they are refused there, with the reference
    /// to write instead.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_literal_credentials: bool,
}

impl WebhookAction {
    pub(super) fn validate(&self) -> Result<(), ActionError> {
        validate_target(&self.url)?;
        for (name, value) in &self.headers {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(ActionError::BadHeaderName(name.clone()));
            }
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(ActionError::ReservedHeader(name.clone()));
            }
            // The worker checks a resolved value again (a secret's value carries no control
            // character either: its configuration refuses one).
            let written = match value {
                ValueOrSecret::Literal(v) => v,
                ValueOrSecret::Secret(r) => {
                    validate_reference(&format!("headers.{name}"), r)?;
                    match &r.prefix {
                        Some(p) => p,
                        None => continue,
                    }
                }
            };
            if !is_header_value(written) {
                return Err(ActionError::BadHeaderValue(name.clone()));
            }
        }
        validate_timeout(self.timeout_ms)?;
        if let Some(name) = &self.secret {
            if !is_secret_name(name) {
                return Err(ActionError::BadSecretName(name.clone()));
            }
        }
        Ok(())
    }
}
