//! The `nats` action: the delivered document published to a NATS JetStream subject, with
//! `Nats-Msg-Id` = the job's `webhook-id` so that JetStream's duplicate window turns a redelivery
//! into a no-op. The subject is a template over the event; the rendered subject must be a NATS
//! subject ([`check_subject`]), and a template whose own text already makes it invalid is
//! refused here, at `observer_create`.

use serde::{Deserialize, Serialize};

use super::{
    default_timeout_ms, is_false, template_skeleton, validate_server_target, validate_template,
    validate_timeout, ActionError,
};
use crate::secret::ValueOrSecret;

/// URL schemes of a NATS server: plain TCP, or TLS from the first byte.
pub const NATS_SCHEMES: &[&str] = &["nats", "tls"];
/// Port of a NATS server address that names none.
pub const NATS_DEFAULT_PORT: u16 = 4222;
/// Longest subject (rendered), in bytes: well under the server's control-line limit, and a
/// subject that long is a sign of a value that does not belong in it.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// `{"type": "nats", "url": "nats://nats.internal:4222", "subject": "orders.{{ op | lower }}"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsAction {
    /// The server: `nats://host[:port]` or `tls://host[:port]` (port 4222 by default), or a
    /// reference to a worker secret holding it (`{"secret": "<name>"}`), as a server address
    /// with `user:password@` or `token@` is a credential.
    pub url: ValueOrSecret,
    /// Subject template (see [`crate::template`]); renders to a NATS subject (see
    /// [`check_subject`]).
    pub subject: String,
    /// How long the worker waits for the JetStream acknowledgement, in milliseconds (default
    /// 10,000, at most 300,000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Accept a server address with credentials in it at `observer_create` (default false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_literal_credentials: bool,
}

impl NatsAction {
    pub(super) fn validate(&self) -> Result<(), ActionError> {
        validate_server_target("nats", &self.url, NATS_SCHEMES)?;
        validate_timeout(self.timeout_ms)?;
        validate_template("subject", &self.subject)?;
        check_subject_skeleton(&self.subject).map_err(|reason| ActionError::BadSubject { reason })
    }
}

/// The subject template's own text, checked before any event exists: every `{{ ... }}` stands
/// for one valid token, every `{% ... %}` for nothing, so what is left must already be a
/// subject (no space, wildcard or control character, no empty token, not a `$` system subject).
fn check_subject_skeleton(source: &str) -> Result<(), String> {
    let skeleton = template_skeleton(source, "x");
    if skeleton.is_empty() {
        return Err("renders to nothing".to_string());
    }
    check_subject(&skeleton).map_err(|e| format!("{e}, whatever the event (in its text)"))
}

/// Why `subject` is not a subject the worker publishes to, or Ok: 1 to [`MAX_SUBJECT_BYTES`]
/// bytes of tokens separated by `.`, none empty, without whitespace, control characters or the
/// wildcards `*` and `>`, and not a system subject (`$JS.`, `$SYS.`, `$KV.`, ...: the first
/// token may not start with `$`, so a delivered document can never be a JetStream API call).
pub fn check_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("is empty".to_string());
    }
    if subject.len() > MAX_SUBJECT_BYTES {
        return Err(format!(
            "is {} bytes long, more than {MAX_SUBJECT_BYTES}",
            subject.len()
        ));
    }
    if let Some(c) = subject
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '*' || *c == '>')
    {
        return Err(format!("holds {:?}", c.escape_default().to_string()));
    }
    if subject.split('.').any(str::is_empty) {
        return Err("has an empty token (a leading, trailing or doubled '.')".to_string());
    }
    if subject.starts_with('$') {
        return Err("is a system subject (starts with '$')".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;

    fn nats(subject: &str) -> Result<Action, ActionError> {
        Action::from_value(serde_json::json!({
            "type": "nats", "url": "nats://nats.example.com", "subject": subject
        }))
    }

    #[test]
    fn good_subjects_pass() {
        for ok in [
            "orders",
            "orders.created",
            "orders.{{ new.id }}",
            "{{ table }}.{{ op | lower }}",
            "orders.{% if new.vip %}vip{% else %}std{% endif %}",
            "a-b_c.ÄÖ.9",
        ] {
            assert!(nats(ok).is_ok(), "{ok}");
        }
        assert_eq!(check_subject("orders.1.created"), Ok(()));
    }

    #[test]
    fn bad_subjects_are_refused_at_create() {
        for (bad, why) in [
            ("", "renders to nothing"),
            ("{% if x %}{% endif %}", "renders to nothing"),
            ("orders created", "holds"),
            ("orders.*", "holds"),
            ("orders.>", "holds"),
            ("orders..{{ new.id }}", "empty token"),
            (".orders", "empty token"),
            ("orders.{{ new.id }}.", "empty token"),
            ("$JS.API.STREAM.DELETE.{{ new.id }}", "system subject"),
            ("a\tb", "holds"),
        ] {
            match nats(bad) {
                Err(ActionError::BadSubject { reason }) => {
                    assert!(reason.contains(why), "{bad:?}: {reason}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(matches!(
            nats(&"a".repeat(MAX_SUBJECT_BYTES + 1)),
            Err(ActionError::BadSubject { .. })
        ));
        assert!(matches!(
            nats("orders.{{ new.id "),
            Err(ActionError::BadTemplate { field, .. }) if field == "subject"
        ));
    }

    #[test]
    fn rendered_subjects_are_checked_too() {
        assert!(check_subject("orders.a b").is_err());
        assert!(check_subject("orders.").is_err());
        assert!(check_subject("orders.x*").is_err());
        assert!(check_subject(&"a".repeat(MAX_SUBJECT_BYTES)).is_ok());
    }
}
