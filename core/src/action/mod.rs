//! Observer actions: what the worker does with a job. The extension stores an action as jsonb and
//! validates it with [`Action::parse`] at `observer_create`, so a definition the worker cannot
//! perform (a bad URL, a template that does not compile, an address that is not one) is refused
//! with a clear error before any event is captured. A URL or header value may be a reference to
//! a worker secret instead ([`crate::secret`]); [`Action::check_credentials`], which only
//! `observer_create` applies, refuses credentials written where a reference belongs.
//!
//! One file per action type (`webhook`, `slack`, `email`) holds its definition and its checks;
//! this file holds the tagged enum, the errors with their hints, and the checks they share.

use serde::{Deserialize, Serialize};

pub use crate::secret::is_secret_name;
use crate::secret::{self, SecretRef, ValueOrSecret};
use crate::template;

mod batch;
mod email;
mod nats;
mod redis_stream;
mod slack;
mod webhook;

pub use batch::{BatchError, BatchPolicy};
pub use email::{is_template, looks_like_mailbox, EmailAction};
pub use nats::{check_subject, NatsAction, MAX_SUBJECT_BYTES, NATS_DEFAULT_PORT, NATS_SCHEMES};
pub use redis_stream::{
    check_stream_key, RedisStreamAction, DEFAULT_DEDUP_WINDOW_SECONDS, MAX_DEDUP_WINDOW_SECONDS,
    MAX_MAXLEN, MAX_STREAM_KEY_BYTES, REDIS_DEFAULT_PORT, REDIS_SCHEMES, RESERVED_KEY_PREFIX,
};
pub use slack::{block_strings, SlackAction};
pub use webhook::{
    ShapeError, WebhookAction, MAX_BODY_BYTES, MAX_HEADER_BYTES, MAX_URL_BYTES, METHODS,
};

/// Most recipients of one e-mail action.
pub const MAX_RECIPIENTS: usize = 50;
/// Longest template source accepted (each of `text`, `subject`, `body`, a block string).
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;

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
    /// Post a message rendered from a template to a Slack incoming webhook.
    Slack(SlackAction),
    /// Send an e-mail rendered from templates through the worker's SMTP server.
    Email(EmailAction),
    /// Publish the event to a NATS JetStream subject (rendered from a template).
    Nats(NatsAction),
    /// Append the event to a Redis stream (`XADD`, key rendered from a template).
    RedisStream(RedisStreamAction),
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn is_false(b: &bool) -> bool {
    !*b
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
    /// A template in a URL's scheme, host or port (only its path and query may have one).
    #[error("action.url {0:?} has a template before its path: the scheme, host and port must be written out")]
    TemplateInOrigin(String),
    #[error("action.method {0:?} is not supported")]
    BadMethod(String),
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
    #[error("action.{field} is not a valid template: {reason}")]
    BadTemplate { field: String, reason: String },
    #[error("action.blocks must be a JSON array of Block Kit blocks")]
    BadBlocks,
    #[error("action.{field} {address:?} is not an e-mail address")]
    BadAddress { field: String, address: String },
    #[error("action.to must list 1 to {MAX_RECIPIENTS} recipients, not {0}")]
    BadRecipients(usize),
    /// A malformed `{"secret": ...}` reference (`field`: `url`, `headers.<name>`).
    #[error("action.{field} {problem}")]
    BadReference { field: String, problem: String },
    /// A `nats` or `redis_stream` server address that is not one; never quotes it (it may
    /// carry a credential).
    #[error("action.url is not a {kind} server address: {reason}")]
    BadServerUrl { kind: &'static str, reason: String },
    /// A `nats` subject (its template's own text) that can never be a subject.
    #[error("action.subject {reason}")]
    BadSubject { reason: String },
    /// A `redis_stream` stream key (its template's own text) that can never be one.
    #[error("action.stream {reason}")]
    BadStreamKey { reason: String },
    #[error("action.maxlen {0} is out of range")]
    BadMaxlen(u64),
    #[error("action.dedup_window_seconds {0} is out of range")]
    BadDedupWindow(u64),
    /// A credential written where a reference belongs; never quotes the value.
    #[error("action.{field} holds a literal credential: {why}")]
    LiteralCredential { field: String, why: String },
    /// A webhook's `batch` option out of bounds, or on an action shaped by templates.
    #[error(transparent)]
    BadBatch(#[from] BatchError),
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
            Self::TemplateInOrigin(_) => {
                "Write scheme://host:port as they are and put templates in the path or the query only, e.g. https://api.example.com/accounts/{{ new.account_id }}/orders?status={{ new.status }} (every value is percent-encoded there)."
                    .to_string()
            }
            Self::BadMethod(_) => format!(
                "Use one of {} (in capitals); POST when absent.",
                webhook::METHODS.join(", ")
            ),
            Self::UrlCredentials => {
                r#"Keep the whole URL in the worker's configuration ([secrets.<name>] value = "https://user:password@...") and write "url": {"secret": "<name>"}, or send the credential in a header that is a reference."#
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
            Self::BadTemplate { .. } => format!(
                "Templates use Jinja syntax over the event: {{{{ new.column }}}}, {{{{ old.column }}}}, {{{{ op }}}}, {{{{ table }}}}, {{% if ... %}}...{{% endif %}}; at most {MAX_TEMPLATE_BYTES} bytes."
            ),
            Self::BadBlocks => {
                r#"Give Slack blocks as an array, e.g. [{"type": "section", "text": {"type": "mrkdwn", "text": "*{{ new.id }}* shipped"}}]."#
                    .to_string()
            }
            Self::BadAddress { .. } => {
                "Write one address per entry, as name@example.com or \"Name <name@example.com>\", or a template such as {{ new.email }}."
                    .to_string()
            }
            Self::BadRecipients(_) => format!("List between 1 and {MAX_RECIPIENTS} recipients in action.to."),
            Self::BadReference { .. } => {
                r#"Write a string, or {"secret": "<name>"} naming a secret of the worker's [secrets] table (1 to 64 letters, digits, _ or -); a header may add a literal "prefix": {"secret": "stripe_token", "prefix": "Bearer "}."#
                    .to_string()
            }
            Self::BadBatch(e) => e.hint(),
            Self::BadServerUrl { .. } => {
                r#"Write nats://host:4222 or tls://host:4222 (nats), redis://host:6379/0 or rediss://host:6379/0 (redis_stream), without a query or fragment; with credentials, keep the whole address in the worker's [secrets.<name>] and write "url": {"secret": "<name>"}."#
                    .to_string()
            }
            Self::BadSubject { .. } => format!(
                "A subject is tokens separated by '.', e.g. orders.{{{{ op | lower }}}}.{{{{ new.id }}}}: no space, '*' or '>', no empty token, not starting with '$', at most {MAX_SUBJECT_BYTES} bytes."
            ),
            Self::BadStreamKey { .. } => format!(
                "A stream key is 1 to {MAX_STREAM_KEY_BYTES} bytes without control characters, e.g. orders:{{{{ op | lower }}}}, and does not start with {RESERVED_KEY_PREFIX:?} (the worker's own keys)."
            ),
            Self::BadMaxlen(_) => format!("Use a maxlen between 1 and {MAX_MAXLEN}, or leave it out (no trimming)."),
            Self::BadDedupWindow(_) => format!(
                "Use a window between 1 and {MAX_DEDUP_WINDOW_SECONDS} seconds (default {DEFAULT_DEDUP_WINDOW_SECONDS}): longer than the observer's retries take."
            ),
            Self::LiteralCredential { field, .. } => {
                let example = if field == "url" {
                    r#""url": {"secret": "<name>"}"#
                } else {
                    r#"{"secret": "<name>", "prefix": "Bearer "}"#
                };
                format!(
                    r#"Store it in the worker's configuration ([secrets.<name>] value = "..." or FRAISEQL_OBSERVERS_SECRETS__<NAME>__VALUE, or __VALUE_FILE) and write {example}, so that the database holds only the name; if it is not a credential, set "allow_literal_credentials": true in the action."#
                )
            }
        }
    }
}

impl Action {
    /// Parse and validate an action from its JSON text.
    pub fn parse(json: &str) -> Result<Self, ActionError> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| ActionError::Shape(e.to_string()))?;
        Self::from_value(value)
    }

    /// Parse and validate an action from a JSON value.
    pub fn from_value(value: serde_json::Value) -> Result<Self, ActionError> {
        check_references(&value)?;
        let action: Action =
            serde_json::from_value(value).map_err(|e| ActionError::Shape(e.to_string()))?;
        action.validate()?;
        Ok(action)
    }

    /// Refuse credentials written where a reference to a worker secret belongs: a header that
    /// carries credentials ([`secret::credential_header`]) or a URL that is one
    /// ([`secret::credential_url`]), unless the action sets `allow_literal_credentials`.
    /// `observer_create` applies it; the worker does not, so actions stored before it existed
    /// keep being delivered.
    pub fn check_credentials(&self) -> Result<(), ActionError> {
        let (url, headers, allowed) = match self {
            Action::Webhook(w) => (&w.url, Some(&w.headers), w.allow_literal_credentials),
            Action::Slack(s) => (&s.url, None, s.allow_literal_credentials),
            Action::Email(_) => return Ok(()),
            Action::Nats(n) => (&n.url, None, n.allow_literal_credentials),
            Action::RedisStream(r) => (&r.url, None, r.allow_literal_credentials),
        };
        if allowed {
            return Ok(());
        }
        let found = |field: String, why: &str| ActionError::LiteralCredential {
            field,
            why: why.to_string(),
        };
        if let Some(why) = url.literal().and_then(server_credentials) {
            return Err(found("url".to_string(), why));
        }
        if let Some(why) = url.literal().and_then(secret::credential_url) {
            return Err(found("url".to_string(), why));
        }
        for (name, value) in headers.into_iter().flatten() {
            if let Some(why) = value
                .literal()
                .and_then(|v| secret::credential_header(name, v))
            {
                return Err(found(format!("headers.{name}"), why));
            }
        }
        Ok(())
    }

    /// Check everything serde's shape check cannot.
    pub fn validate(&self) -> Result<(), ActionError> {
        match self {
            Action::Webhook(w) => w.validate(),
            Action::Slack(s) => s.validate(),
            Action::Email(e) => e.validate(),
            Action::Nats(n) => n.validate(),
            Action::RedisStream(r) => r.validate(),
        }
    }

    /// The action type as the bounded metric/audit label.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Webhook(_) => "webhook",
            Action::Slack(_) => "slack",
            Action::Email(_) => "email",
            Action::Nats(_) => "nats",
            Action::RedisStream(_) => "redis_stream",
        }
    }

    /// The URL the action sends to (written out or a reference), for the actions that have one.
    pub fn url(&self) -> Option<&ValueOrSecret> {
        match self {
            Action::Webhook(w) => Some(&w.url),
            Action::Slack(s) => Some(&s.url),
            Action::Email(_) => None,
            Action::Nats(n) => Some(&n.url),
            Action::RedisStream(r) => Some(&r.url),
        }
    }

    /// The URL when it is written in the action (checked against the network policy at
    /// `observer_create`; the worker checks every URL, resolved ones included, at delivery).
    pub fn literal_url(&self) -> Option<&str> {
        self.url().and_then(ValueOrSecret::literal)
    }
}

/// The shape of every place a reference may stand (`url`, each of `headers`), on the raw JSON:
/// a string or `{"secret": "<name>"}` (with `"prefix"` for a header). Other places (an unknown
/// field, a wrong type elsewhere) are left to serde's check.
fn check_references(value: &serde_json::Value) -> Result<(), ActionError> {
    let kind = value.get("type").and_then(serde_json::Value::as_str);
    if !matches!(kind, Some("webhook" | "slack" | "nats" | "redis_stream")) {
        return Ok(());
    }
    let bad = |field: String, problem: String| ActionError::BadReference { field, problem };
    if let Some(url) = value.get("url") {
        secret::check_reference("url", url).map_err(|p| bad("url".to_string(), p))?;
    }
    if let Some(serde_json::Value::Object(headers)) = value.get("headers") {
        for (name, v) in headers {
            let field = format!("headers.{name}");
            secret::check_reference(&field, v).map_err(|p| bad(field, p))?;
        }
    }
    Ok(())
}

/// A reference built otherwise than through [`Action::from_value`] is held to the same rules.
fn validate_reference(field: &str, r: &SecretRef) -> Result<(), ActionError> {
    let mut json = serde_json::json!({ "secret": r.secret });
    if let Some(p) = &r.prefix {
        json["prefix"] = serde_json::Value::String(p.clone());
    }
    secret::check_reference(field, &json).map_err(|problem| ActionError::BadReference {
        field: field.to_string(),
        problem,
    })
}

/// A URL written out or a well-formed reference.
fn validate_target(url: &ValueOrSecret) -> Result<(), ActionError> {
    match url {
        ValueOrSecret::Literal(u) => validate_url(u),
        ValueOrSecret::Secret(r) => validate_reference("url", r),
    }
}

/// An absolute `http`/`https` URL with a host and no credentials.
fn validate_url(raw: &str) -> Result<(), ActionError> {
    let url = url::Url::parse(raw).map_err(|e| ActionError::BadUrl {
        url: raw.to_string(),
        reason: e.to_string(),
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(ActionError::BadScheme(url.scheme().to_string()));
    }
    if url.host().is_none() {
        return Err(ActionError::BadUrl {
            url: raw.to_string(),
            reason: "no host".to_string(),
        });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ActionError::UrlCredentials);
    }
    Ok(())
}

/// A `nats` or `redis_stream` server address written out (see [`validate_server_url`]) or a
/// well-formed reference.
fn validate_server_target(
    kind: &'static str,
    url: &ValueOrSecret,
    schemes: &[&str],
) -> Result<(), ActionError> {
    match url {
        ValueOrSecret::Literal(u) => validate_server_url(kind, u, schemes)
            .map_err(|reason| ActionError::BadServerUrl { kind, reason }),
        ValueOrSecret::Secret(r) => validate_reference("url", r),
    }
}

/// Why `raw` is not a server address of one of `schemes`, or Ok: a host, an optional port, no
/// query or fragment, and no path but a database number (`/0`) for Redis. User-info is allowed
/// here (a secret's value may carry it); [`Action::check_credentials`] refuses it written out.
/// The reason never quotes the address: it may carry a credential.
pub fn validate_server_url(kind: &str, raw: &str, schemes: &[&str]) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|e| format!("it does not parse ({e})"))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!(
            "the scheme {:?} is not one of {} for {kind}",
            url.scheme(),
            schemes.join(", ")
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("it has no host".to_string());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("it has a query or a fragment".to_string());
    }
    let path = url.path();
    let database = path
        .strip_prefix('/')
        .is_some_and(|d| !d.is_empty() && d.len() <= 5 && d.bytes().all(|b| b.is_ascii_digit()));
    let redis = schemes.contains(&"redis");
    if !(path.is_empty() || path == "/" || (redis && database)) {
        return Err(if redis {
            "its path is not a database number (/0)".to_string()
        } else {
            "it has a path".to_string()
        });
    }
    Ok(())
}

/// Why a server address written out carries a credential (`user:password@`, `token@`), or None.
fn server_credentials(raw: &str) -> Option<&'static str> {
    let url = url::Url::parse(raw).ok()?;
    let server = [NATS_SCHEMES, REDIS_SCHEMES]
        .iter()
        .any(|s| s.contains(&url.scheme()));
    (server && (!url.username().is_empty() || url.password().is_some()))
        .then_some("a server address with user:password@ or token@")
}

/// The text a template writes whatever the event: each `{{ ... }}` replaced by `value`, each
/// `{% ... %}` and `{# ... #}` by nothing (for checks at `observer_create` of what the
/// template's own text already decides).
fn template_skeleton(source: &str, value: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find('{') {
        let close = match rest[at..].chars().nth(1) {
            Some('{') => Some(("}}", value)),
            Some('%') => Some(("%}", "")),
            Some('#') => Some(("#}", "")),
            _ => None,
        };
        out.push_str(&rest[..at]);
        match close.and_then(|(end, with)| rest[at + 2..].find(end).map(|e| (e, end, with))) {
            Some((e, end, with)) => {
                out.push_str(with);
                rest = &rest[at + 2 + e + end.len()..];
            }
            None => {
                out.push('{');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn validate_timeout(timeout_ms: u64) -> Result<(), ActionError> {
    if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
        return Err(ActionError::BadTimeout(timeout_ms));
    }
    Ok(())
}

fn validate_template(field: &str, source: &str) -> Result<(), ActionError> {
    let bad = |reason: String| ActionError::BadTemplate {
        field: field.to_string(),
        reason,
    };
    if source.len() > MAX_TEMPLATE_BYTES {
        return Err(bad(format!("{} bytes is too long", source.len())));
    }
    template::check(source).map_err(|e| bad(e.0))
}

/// RFC 9110 field values: visible ASCII, space, tab and obs-text; never CR, LF or NUL.
pub fn is_header_value(value: &str) -> bool {
    !value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
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
        let Action::Webhook(w) = a else {
            panic!("a webhook")
        };
        assert_eq!(w.url.literal(), Some("https://example.com/hook"));
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
            err(r#"{"type":"webhook","url":"https://a.b","verb":"GET"}"#),
            ActionError::Shape(m) if m.contains("verb")
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
        let Action::Webhook(w) = ok else {
            panic!("a webhook")
        };
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
    fn parses_slack_with_templates_and_blocks() {
        let a = Action::parse(
            r#"{"type":"slack","url":"https://hooks.slack.com/services/T/B/x","text":"Order {{ new.id }} shipped",
                "blocks":[{"type":"section","text":{"type":"mrkdwn","text":"*{{ new.customer }}*"}}]}"#,
        )
        .expect("valid");
        assert_eq!(a.kind(), "slack");
        assert_eq!(
            a.literal_url(),
            Some("https://hooks.slack.com/services/T/B/x")
        );
        let Action::Slack(s) = &a else {
            panic!("slack")
        };
        assert_eq!(s.timeout_ms, DEFAULT_TIMEOUT_MS);
        let strings = block_strings(s.blocks.as_ref().expect("blocks"));
        assert!(strings.contains(&("blocks[0].text.text".to_string(), "*{{ new.customer }}*")));
        assert!(strings.contains(&("blocks[0].type".to_string(), "section")));
    }

    #[test]
    fn refuses_broken_slack_actions() {
        assert!(matches!(
            err(r#"{"type":"slack","url":"https://h.test/x","text":"{{ new.id "}"#),
            ActionError::BadTemplate { field, .. } if field == "text"
        ));
        assert!(matches!(
            err(r#"{"type":"slack","url":"https://h.test/x","text":"t","blocks":[{"text":"{% if %}"}]}"#),
            ActionError::BadTemplate { field, .. } if field == "blocks[0].text"
        ));
        assert_eq!(
            err(
                r#"{"type":"slack","url":"https://h.test/x","text":"t","blocks":{"type":"section"}}"#
            ),
            ActionError::BadBlocks
        );
        assert!(matches!(
            err(r#"{"type":"slack","url":"gopher://h.test/x","text":"t"}"#),
            ActionError::BadScheme(_)
        ));
        assert!(matches!(
            err(r#"{"type":"slack","url":"https://h.test/x"}"#),
            ActionError::Shape(m) if m.contains("text")
        ));
    }

    #[test]
    fn parses_email_with_address_and_template_recipients() {
        let a = Action::parse(
            r#"{"type":"email","to":["ops@example.com","Ada <ada@example.com>","{{ new.email }}"],
                "subject":"Order {{ new.id }}","body":"Hello {{ new.customer }}"}"#,
        )
        .expect("valid");
        assert_eq!(a.kind(), "email");
        assert_eq!(a.url(), None);
        assert_eq!(
            a.check_credentials(),
            Ok(()),
            "e-mail has no credential field"
        );
    }

    #[test]
    fn refuses_broken_email_actions() {
        for bad in [
            "not-an-address",
            "a@",
            "@b.c",
            "a b@c.d",
            "a@b.c, d@e.f",
            "Ada <ada@x.y",
        ] {
            let json = format!(r#"{{"type":"email","to":[{bad:?}],"subject":"s","body":"b"}}"#);
            assert!(
                matches!(err(&json), ActionError::BadAddress { field, .. } if field == "to[0]"),
                "{bad}"
            );
        }
        assert_eq!(
            err(r#"{"type":"email","to":[],"subject":"s","body":"b"}"#),
            ActionError::BadRecipients(0)
        );
        assert!(matches!(
            err(r#"{"type":"email","to":["a@b.c"],"subject":"{{ x","body":"b"}"#),
            ActionError::BadTemplate { field, .. } if field == "subject"
        ));
        assert!(matches!(
            err(r#"{"type":"email","to":["a@b.c"],"from":"nobody","subject":"s","body":"b"}"#),
            ActionError::BadAddress { field, .. } if field == "from"
        ));
    }

    #[test]
    fn urls_and_header_values_can_be_references() {
        let a = Action::parse(
            r#"{"type":"webhook","url":{"secret":"partner_url"},
                "headers":{"Authorization":{"secret":"stripe","prefix":"Bearer "},"X-Team":"billing"}}"#,
        )
        .expect("valid");
        assert_eq!(a.literal_url(), None);
        let Action::Webhook(w) = &a else {
            panic!("a webhook")
        };
        assert_eq!(
            w.url.reference().map(|r| r.secret.as_str()),
            Some("partner_url")
        );
        let auth = w.headers["Authorization"].reference().expect("a reference");
        assert_eq!(
            (auth.secret.as_str(), auth.prefix.as_deref()),
            ("stripe", Some("Bearer "))
        );
        assert_eq!(
            a.check_credentials(),
            Ok(()),
            "references are what it asks for"
        );
        // Stored as written: the normalised form keeps the reference, never a value.
        let back = serde_json::to_value(&a).expect("json");
        assert_eq!(back["url"], serde_json::json!({"secret": "partner_url"}));
        assert_eq!(
            back["headers"]["Authorization"],
            serde_json::json!({"secret": "stripe", "prefix": "Bearer "})
        );
        assert_eq!(Action::from_value(back).expect("round trip"), a);
        let slack = Action::parse(r#"{"type":"slack","url":{"secret":"ops_channel"},"text":"t"}"#)
            .expect("valid");
        assert_eq!(slack.check_credentials(), Ok(()));
    }

    #[test]
    fn malformed_references_name_their_field() {
        let cases = [
            (
                r#"{"type":"webhook","url":{"secret":42}}"#,
                "url",
                "a number, not a name",
            ),
            (
                r#"{"type":"webhook","url":{"secret":"x","file":"/etc/passwd"}}"#,
                "url",
                "unknown key \"file\"",
            ),
            (
                r#"{"type":"webhook","url":{"secret":"x","prefix":"https://evil.example/?"}}"#,
                "url",
                "the whole URL is the secret",
            ),
            (
                r#"{"type":"webhook","url":"https://a.b","headers":{"Authorization":{"secret":"a b"}}}"#,
                "headers.Authorization",
                "not a secret name",
            ),
            (
                r#"{"type":"webhook","url":"https://a.b","headers":{"X-A":{"name":"x"}}}"#,
                "headers.X-A",
                "unknown key",
            ),
            (
                r#"{"type":"webhook","url":"https://a.b","headers":{"X-A":5}}"#,
                "headers.X-A",
                "a number, not a string",
            ),
            (
                r#"{"type":"slack","url":{"secret":null},"text":"t"}"#,
                "url",
                "null, not a name",
            ),
            (r#"{"type":"slack","url":[],"text":"t"}"#, "url", "an array"),
        ];
        for (json, want_field, want) in cases {
            match err(json) {
                ActionError::BadReference { field, problem } => {
                    assert_eq!(field, want_field, "{json}");
                    assert!(problem.contains(want), "{json}: {problem}");
                    let e = ActionError::BadReference { field, problem };
                    assert!(
                        e.to_string().starts_with(&format!("action.{want_field} ")),
                        "{e}"
                    );
                    assert!(e.hint().contains(r#"{"secret": "<name>"}"#), "{}", e.hint());
                }
                other => panic!("{json}: {other:?}"),
            }
        }
        // A header reference's prefix is a scheme and its separator, nothing else (no control
        // character, no credential).
        match err(
            r#"{"type":"webhook","url":"https://a.b","headers":{"Authorization":{"secret":"s","prefix":"a\u0000"}}}"#,
        ) {
            ActionError::BadReference { field, problem } => {
                assert_eq!(field, "headers.Authorization");
                assert!(
                    problem.contains("not an authentication scheme"),
                    "{problem}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn literal_credentials_are_refused_at_create_unless_allowed() {
        let refused = |json: &str| -> ActionError {
            let a = Action::parse(json).expect("a valid action");
            a.check_credentials().expect_err(json)
        };
        for (json, field) in [
            (
                r#"{"type":"webhook","url":"https://a.b","headers":{"Authorization":"Bearer sk_live_1"}}"#,
                "headers.Authorization",
            ),
            (
                r#"{"type":"webhook","url":"https://a.b","headers":{"proxy-authorization":"Basic eDp5"}}"#,
                "headers.proxy-authorization",
            ),
            (
                r#"{"type":"webhook","url":"https://a.b","headers":{"X-Api-Key":"k1"}}"#,
                "headers.X-Api-Key",
            ),
            (
                r#"{"type":"webhook","url":"https://a.b","headers":{"X-Custom":"Bearer k1"}}"#,
                "headers.X-Custom",
            ),
            (
                r#"{"type":"webhook","url":"https://a.b/h?token=sk_live_1"}"#,
                "url",
            ),
            (
                r#"{"type":"webhook","url":"https://hooks.slack.com/services/T0/B0/sk_live_1"}"#,
                "url",
            ),
            (
                r#"{"type":"slack","url":"https://hooks.slack.com/services/T0/B0/sk_live_1","text":"t"}"#,
                "url",
            ),
        ] {
            let e = refused(json);
            assert!(
                matches!(&e, ActionError::LiteralCredential { field: f, .. } if f == field),
                "{json}: {e:?}"
            );
            let text = format!("{e} {}", e.hint());
            assert!(
                !text.contains("sk_live_1") && !text.contains("eDp5") && !text.contains("k1\""),
                "the value is never quoted: {text}"
            );
            assert!(text.contains("allow_literal_credentials"), "{text}");
            assert!(text.contains(r#"{"secret": "<name>""#), "{text}");
        }
        // Userinfo is refused in every literal URL, at create and at delivery alike.
        assert_eq!(
            err(
                r#"{"type":"webhook","url":"https://u:p@example.com/","allow_literal_credentials":true}"#
            ),
            ActionError::UrlCredentials
        );
        // Opting out is explicit and stored with the action.
        for json in [
            r#"{"type":"webhook","url":"https://a.b","headers":{"Authorization":"Bearer public-demo"},"allow_literal_credentials":true}"#,
            r#"{"type":"slack","url":"https://hooks.slack.com/services/T0/B0/x","text":"t","allow_literal_credentials":true}"#,
        ] {
            let a = Action::parse(json).expect("valid");
            assert_eq!(a.check_credentials(), Ok(()), "{json}");
            assert_eq!(
                serde_json::to_value(&a).expect("json")["allow_literal_credentials"],
                true
            );
        }
        // Ordinary headers and URLs pass; the flag is not stored when false.
        let plain = Action::parse(
            r#"{"type":"webhook","url":"https://a.b/h?team=1","headers":{"X-Team":"billing"}}"#,
        )
        .expect("valid");
        assert_eq!(plain.check_credentials(), Ok(()));
        assert!(serde_json::to_value(&plain)
            .expect("json")
            .get("allow_literal_credentials")
            .is_none());
    }

    #[test]
    fn stream_servers_have_their_schemes_and_no_written_credentials() {
        let parse = |t: &str, url: &str| {
            let extra = if t == "nats" { "subject" } else { "stream" };
            Action::from_value(serde_json::json!({"type": t, "url": url, extra: "orders"}))
        };
        for (t, url) in [
            ("nats", "nats://nats.example.com"),
            ("nats", "tls://nats.example.com:4443"),
            ("nats", "nats://10.0.0.1:4222/"),
            ("redis_stream", "redis://cache.example.com"),
            ("redis_stream", "rediss://cache.example.com:6380/3"),
        ] {
            let a = parse(t, url).expect(url);
            assert_eq!(a.kind(), t);
            assert_eq!(a.literal_url(), Some(url));
            assert_eq!(a.check_credentials(), Ok(()), "{url}");
        }
        for (t, url, why) in [
            ("nats", "https://nats.example.com", "not one of nats, tls"),
            ("nats", "redis://nats.example.com", "not one of nats, tls"),
            (
                "redis_stream",
                "nats://cache.example.com",
                "not one of redis, rediss",
            ),
            ("nats", "nats://nats.example.com/x", "has a path"),
            (
                "redis_stream",
                "redis://cache.example.com/orders",
                "not a database number",
            ),
            (
                "redis_stream",
                "redis://cache.example.com/0?protocol=resp3",
                "query",
            ),
            ("nats", "nats://", "no host"),
            ("nats", "not a url", "does not parse"),
        ] {
            match parse(t, url) {
                Err(e @ ActionError::BadServerUrl { .. }) => {
                    assert!(e.to_string().contains(why), "{url}: {e}");
                    assert!(e.hint().contains("nats://host:4222"), "{}", e.hint());
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        // A server address with credentials is accepted as a shape (a secret's value may be
        // one) but refused written out at create, never quoting them.
        for (t, url) in [
            ("nats", "nats://app:hunter2pass@nats.example.com"),
            ("nats", "tls://s3cr3tt0ken@nats.example.com"),
            ("redis_stream", "redis://:hunter2pass@cache.example.com/0"),
            (
                "redis_stream",
                "rediss://default:hunter2pass@cache.example.com",
            ),
        ] {
            let a = parse(t, url).expect(url);
            let e = a.check_credentials().expect_err(url);
            assert!(
                matches!(&e, ActionError::LiteralCredential { field, .. } if field == "url"),
                "{e:?}"
            );
            let text = format!("{e} {}", e.hint());
            assert!(
                !text.contains("hunter2") && !text.contains("s3cr3t"),
                "{text}"
            );
            let allowed = Action::from_value(serde_json::json!({
                "type": t, "url": url,
                (if t == "nats" { "subject" } else { "stream" }): "orders",
                "allow_literal_credentials": true
            }))
            .expect(url);
            assert_eq!(allowed.check_credentials(), Ok(()));
        }
        let e = parse("nats", "nats://u:hunter2pass@h.example/x").expect_err("a path");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        // A reference is the way to give one.
        let a = Action::from_value(
            serde_json::json!({"type": "nats", "url": {"secret": "nats_url"}, "subject": "o"}),
        )
        .expect("a reference");
        assert_eq!(a.literal_url(), None);
        assert!(matches!(
            Action::from_value(
                serde_json::json!({"type": "redis_stream", "url": {"secret": 1}, "stream": "o"})
            ),
            Err(ActionError::BadReference { .. })
        ));
    }

    #[test]
    fn template_skeletons_keep_the_written_text() {
        assert_eq!(template_skeleton("a.{{ b }}.c", "x"), "a.x.c");
        assert_eq!(
            template_skeleton("a{% if x %}.b{% endif %}{# note #}", "x"),
            "a.b"
        );
        assert_eq!(template_skeleton("a{b}.{{ c", "x"), "a{b}.{{ c");
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
