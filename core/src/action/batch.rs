//! The `batch` option of a webhook action: several jobs of one observer sent as one request whose
//! body is a JSON array of their documents. The policy says how many events (`max_events`), how
//! many bytes of documents (`max_bytes`) and how long after the first job (`max_wait_ms`) a batch
//! may take; `observer_create` checks the bounds here, and refuses a batch on an action whose
//! request is shaped per event (a batch goes to one URL as an array of plain documents). The
//! worker collects and sends batches (`worker/src/runner/batch.rs`).

use serde::{Deserialize, Serialize};

use super::{is_template, WebhookAction};
use crate::secret::ValueOrSecret;

/// Most events in one request.
pub const MAX_BATCH_EVENTS: u32 = 1000;
/// Largest `max_bytes` accepted: 10 MiB of documents in one request.
pub const MAX_BATCH_BYTES: u64 = 10 * 1024 * 1024;
/// Smallest `max_bytes` accepted: below one kibibyte most events would go alone anyway.
pub const MIN_BATCH_BYTES: u64 = 1024;
/// Longest `max_wait_ms` accepted (10 s): jobs waiting for a batch hold their leases and the
/// worker's slots.
pub const MAX_BATCH_WAIT_MS: u64 = 10_000;

/// `"batch": {"max_events": 100, "max_bytes": 1048576, "max_wait_ms": 20}` in a webhook action:
/// up to `max_events` jobs of the observer, or up to `max_bytes` of their documents, whichever
/// comes first, go as one request; when fewer are ready, the worker waits up to `max_wait_ms`
/// after the first for more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchPolicy {
    /// Most events per request: 1 to 1000, default 100.
    #[serde(default = "default_max_events")]
    pub max_events: u32,
    /// Most bytes of documents per request (the array's brackets and commas aside): 1024 to
    /// 10485760, default 1048576 (1 MiB). A single document larger than this goes alone.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Longest wait for more events after the first, in milliseconds: 0 to 10000, default 20.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_events: default_max_events(),
            max_bytes: default_max_bytes(),
            max_wait_ms: default_max_wait_ms(),
        }
    }
}

fn default_max_events() -> u32 {
    100
}

fn default_max_bytes() -> u64 {
    1024 * 1024
}

fn default_max_wait_ms() -> u64 {
    20
}

/// Why a `batch` option was refused; [`BatchError::hint`] says the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("action.batch.max_events {0} is out of range")]
    MaxEvents(u32),
    #[error("action.batch.max_bytes {0} is out of range")]
    MaxBytes(u64),
    #[error("action.batch.max_wait_ms {0} is out of range")]
    MaxWait(u64),
    /// `batch` on an action whose request is shaped per event (`field`: the templated field).
    #[error("action.batch cannot be combined with the template in action.{0}: a batch is one request to one URL with the array of the events' documents as its body")]
    WithTemplate(String),
}

impl BatchError {
    /// What the user should do about it, for the SQL error's HINT or the CLI.
    pub fn hint(&self) -> String {
        match self {
            Self::MaxEvents(_) => {
                format!("Use between 1 and {MAX_BATCH_EVENTS} events per request.")
            }
            Self::MaxBytes(_) => format!(
                "Use between {MIN_BATCH_BYTES} and {MAX_BATCH_BYTES} bytes (10 MiB) per request."
            ),
            Self::MaxWait(_) => format!(
                "Use a wait between 0 (send what is ready at once) and {MAX_BATCH_WAIT_MS} ms."
            ),
            Self::WithTemplate(field) => format!(
                "Drop action.batch (one request per event, shaped by its templates) or drop the template in action.{field} (batches of the plain documents)."
            ),
        }
    }
}

impl BatchPolicy {
    /// Check the bounds, and that no field of the action is a template: `templated` is the
    /// first of the action's fields that renders per event (`url`, `body`, `headers.<name>`).
    pub fn validate(&self, templated: Option<String>) -> Result<(), BatchError> {
        if !(1..=MAX_BATCH_EVENTS).contains(&self.max_events) {
            return Err(BatchError::MaxEvents(self.max_events));
        }
        if !(MIN_BATCH_BYTES..=MAX_BATCH_BYTES).contains(&self.max_bytes) {
            return Err(BatchError::MaxBytes(self.max_bytes));
        }
        if self.max_wait_ms > MAX_BATCH_WAIT_MS {
            return Err(BatchError::MaxWait(self.max_wait_ms));
        }
        match templated {
            Some(field) => Err(BatchError::WithTemplate(field)),
            None => Ok(()),
        }
    }

    /// The longest wait for more events, as a duration.
    pub fn max_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.max_wait_ms)
    }
}

impl WebhookAction {
    /// The first field of the action that renders per event (a template in the URL, a `body`
    /// template, a template in a header value), which a batch cannot have; None when the request
    /// is the same for every event.
    pub(super) fn first_template(&self) -> Option<String> {
        let literal_template = |v: &ValueOrSecret| v.literal().is_some_and(is_template);
        if literal_template(&self.url) {
            return Some("url".to_string());
        }
        if self.body.is_some() {
            return Some("body".to_string());
        }
        self.headers
            .iter()
            .find(|(_, v)| literal_template(v))
            .map(|(name, _)| format!("headers.{name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_events: u32, max_bytes: u64, max_wait_ms: u64) -> BatchPolicy {
        BatchPolicy {
            max_events,
            max_bytes,
            max_wait_ms,
        }
    }

    #[test]
    fn defaults_fill_missing_fields_and_pass() {
        let p: BatchPolicy = serde_json::from_str("{}").expect("all optional");
        assert_eq!(p, BatchPolicy::default());
        assert_eq!(
            (p.max_events, p.max_bytes, p.max_wait_ms),
            (100, 1_048_576, 20)
        );
        assert_eq!(p.validate(None), Ok(()));
        let p: BatchPolicy = serde_json::from_str(r#"{"max_events": 10}"#).expect("partial");
        assert_eq!((p.max_events, p.max_wait_ms), (10, 20));
    }

    #[test]
    fn bounds_are_checked_with_the_field_named() {
        for (p, want) in [
            (policy(0, 4096, 0), "action.batch.max_events 0"),
            (policy(1001, 4096, 0), "action.batch.max_events 1001"),
            (policy(1, 1023, 0), "action.batch.max_bytes 1023"),
            (
                policy(1, MAX_BATCH_BYTES + 1, 0),
                "action.batch.max_bytes 10485761",
            ),
            (policy(1, 4096, 10_001), "action.batch.max_wait_ms 10001"),
        ] {
            let e = p.validate(None).expect_err(want);
            assert!(e.to_string().starts_with(want), "{e}");
            assert!(e.hint().starts_with("Use "), "{}", e.hint());
        }
        for p in [
            policy(1, MIN_BATCH_BYTES, 0),
            policy(MAX_BATCH_EVENTS, MAX_BATCH_BYTES, MAX_BATCH_WAIT_MS),
        ] {
            assert_eq!(p.validate(None), Ok(()), "{p:?}");
        }
    }

    #[test]
    fn templates_are_refused_naming_the_first() {
        let e = BatchPolicy::default()
            .validate(Some("body".to_string()))
            .expect_err("templated");
        assert_eq!(e, BatchError::WithTemplate("body".into()));
        assert!(e.to_string().contains("action.body"), "{e}");
        assert!(e.hint().contains("Drop action.batch"), "{}", e.hint());
    }

    #[test]
    fn actions_with_a_batch_and_a_template_are_refused_at_parse() {
        let parse = |json: &str| crate::Action::parse(json);
        let ok = parse(
            r#"{"type":"webhook","url":"https://a.b/h","headers":{"X-Team":"a"},"batch":{"max_events":10}}"#,
        )
        .expect("a batch on a plain webhook");
        let crate::Action::Webhook(w) = &ok else {
            panic!("a webhook")
        };
        assert_eq!(w.batch.map(|b| b.max_events), Some(10));
        for (json, field) in [
            (
                r#"{"type":"webhook","url":"https://a.b/{{ new.id }}","batch":{}}"#,
                "url",
            ),
            (
                r#"{"type":"webhook","url":"https://a.b/h","body":{"id":"{{ new.id }}"},"batch":{}}"#,
                "body",
            ),
            (
                r#"{"type":"webhook","url":"https://a.b/h","headers":{"X-Id":"{{ new.id }}"},"batch":{}}"#,
                "headers.X-Id",
            ),
        ] {
            let e = parse(json).expect_err(json);
            assert_eq!(
                e,
                super::super::ActionError::BadBatch(BatchError::WithTemplate(field.into())),
                "{json}"
            );
        }
        assert!(matches!(
            parse(r#"{"type":"webhook","url":"https://a.b/h","batch":{"max_events":0}}"#),
            Err(super::super::ActionError::BadBatch(BatchError::MaxEvents(
                0
            )))
        ));
        // Without a batch, nothing changes: the field is not stored.
        let plain = parse(r#"{"type":"webhook","url":"https://a.b/h"}"#).expect("plain");
        assert!(serde_json::to_value(&plain)
            .expect("json")
            .get("batch")
            .is_none());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<BatchPolicy>(r#"{"max_event": 5}"#).expect_err("typo");
        assert!(e.to_string().contains("max_event"), "{e}");
    }
}
