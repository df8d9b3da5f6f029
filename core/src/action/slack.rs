//! The `slack` action: a message rendered from templates, posted to an incoming webhook.

use serde::{Deserialize, Serialize};

use super::{
    default_timeout_ms, is_false, validate_target, validate_template, validate_timeout, ActionError,
};
use crate::secret::ValueOrSecret;

/// `{"type": "slack", "url": "https://hooks.slack.com/services/...", "text": "Order {{ new.id }} shipped"}`:
/// an incoming-webhook message. `text` is a template (see [`crate::template`]; values are escaped
/// as Slack requires); `blocks`, when given, is a Block Kit array whose string values are
/// templates too (`text` is then the notification fallback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackAction {
    /// The incoming-webhook URL (`http` or `https`), or a reference to a worker secret holding
    /// it (`{"secret": "<name>"}`): the URL is itself a credential.
    pub url: ValueOrSecret,
    /// Message text template (Slack mrkdwn).
    pub text: String,
    /// Optional Block Kit blocks (a JSON array); every string in it is a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<serde_json::Value>,
    /// Per-request timeout in milliseconds (default 10,000, at most 300,000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Accept a literal `hooks.slack.com` URL at `observer_create` (default false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_literal_credentials: bool,
}

/// Every string of a Slack `blocks` value, with its path (`blocks[0].text.text`), in order.
pub fn block_strings(value: &serde_json::Value) -> Vec<(String, &str)> {
    fn walk<'a>(v: &'a serde_json::Value, path: String, out: &mut Vec<(String, &'a str)>) {
        match v {
            serde_json::Value::String(s) => out.push((path, s)),
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk(x, format!("{path}[{i}]"), out);
                }
            }
            serde_json::Value::Object(o) => {
                for (k, x) in o {
                    walk(x, format!("{path}.{k}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, "blocks".to_string(), &mut out);
    out
}

impl SlackAction {
    pub(super) fn validate(&self) -> Result<(), ActionError> {
        validate_target(&self.url)?;
        validate_timeout(self.timeout_ms)?;
        validate_template("text", &self.text)?;
        if let Some(blocks) = &self.blocks {
            if !blocks.is_array() {
                return Err(ActionError::BadBlocks);
            }
            for (path, source) in block_strings(blocks) {
                validate_template(&path, source)?;
            }
        }
        Ok(())
    }
}
