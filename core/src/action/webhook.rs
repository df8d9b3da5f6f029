//! The `webhook` action: the event sent as JSON to a URL, with the action's headers; by default a
//! `POST` of the delivered document, exactly as before request shaping existed. Shaping is
//! opt-in and checked here at `observer_create`: `method` (a closed set), a URL template (path
//! and query only, every value percent-encoded), a `body` template rendering JSON, and header
//! values that are templates. The worker renders them per job with [`WebhookAction::render_url`],
//! [`WebhookAction::render_body`] and [`WebhookAction::render_header`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    default_timeout_ms, is_false, is_header_value, is_secret_name, is_template, is_token_byte,
    validate_reference, validate_target, validate_template, validate_timeout, validate_url,
    ActionError, MAX_TEMPLATE_BYTES, RESERVED_HEADERS,
};
use crate::secret::ValueOrSecret;
use crate::template::{self, Escape};

/// The methods a webhook may use (`POST` by default).
pub const METHODS: &[&str] = &["POST", "PUT", "PATCH", "DELETE"];
/// Largest rendered URL, in bytes.
pub const MAX_URL_BYTES: usize = 8192;
/// Largest rendered header value, in bytes.
pub const MAX_HEADER_BYTES: usize = 8192;
/// Largest rendered `body` (and its source), in bytes: 1 MiB, the default largest captured
/// payload (`max_payload_bytes`).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// `{"type": "webhook", "url": "...", "headers": {...}, "timeout_ms": 10000}`, optionally with
/// `"method"`, a templated `url` path or query, a `"body"` template and templated header values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookAction {
    /// Absolute `http` or `https` URL the event is sent to, or a reference to a worker secret
    /// holding it (`{"secret": "<name>"}`). A URL written out may have templates in its path and
    /// query (`https://api.example.com/accounts/{{ new.account_id }}?status={{ new.status }}`),
    /// never in its scheme, host or port; interpolated values are percent-encoded.
    pub url: ValueOrSecret,
    /// `POST` (default), `PUT`, `PATCH` or `DELETE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The request body as a JSON template: strings are templates, a string that is exactly one
    /// `{{ expression }}` becomes its value with its JSON type. None: the delivered document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// Extra request headers; names are HTTP tokens, values carry no CR/LF, and the worker's own
    /// headers (signature, Host, framing) cannot be overridden. A value written out may be a
    /// template (`{{ new.id }}`); a value may be a reference to a worker secret
    /// (`{"secret": "<name>", "prefix": "Bearer "}`), which is never a template.
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
    /// Send the observer's jobs in batches, one request per batch (a JSON array of their
    /// documents); none by default: one request per job. See [`super::BatchPolicy`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<super::BatchPolicy>,
}

impl WebhookAction {
    pub(super) fn validate(&self) -> Result<(), ActionError> {
        match self.url_template() {
            Some(raw) => validate_url_template(raw)?,
            None => validate_target(&self.url)?,
        }
        if let Some(method) = &self.method {
            if !METHODS.contains(&method.as_str()) {
                return Err(ActionError::BadMethod(method.clone()));
            }
        }
        self.validate_headers()?;
        if let Some(body) = &self.body {
            validate_body(body)?;
        }
        validate_timeout(self.timeout_ms)?;
        if let Some(batch) = &self.batch {
            batch.validate(self.first_template())?;
        }
        if let Some(name) = &self.secret {
            if !is_secret_name(name) {
                return Err(ActionError::BadSecretName(name.clone()));
            }
        }
        Ok(())
    }

    fn validate_headers(&self) -> Result<(), ActionError> {
        for (name, value) in &self.headers {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(ActionError::BadHeaderName(name.clone()));
            }
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(ActionError::ReservedHeader(name.clone()));
            }
            // The worker checks a resolved value again (a secret's value carries no control
            // character either: its configuration refuses one), and a rendered one.
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
            if value.literal().is_some_and(is_template) {
                validate_template(&format!("headers.{name}"), written)?;
            }
        }
        Ok(())
    }

    /// The request method: `POST` unless the action says otherwise.
    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("POST")
    }

    /// The URL when it is written out and holds a template (a reference never is one).
    pub fn url_template(&self) -> Option<&str> {
        self.url.literal().filter(|u| is_template(u))
    }

    /// True when the request is shaped per event (a URL, body or header template), so the
    /// worker must render it; false: the document is sent as it is to the URL as written.
    pub fn is_shaped(&self) -> bool {
        self.url_template().is_some()
            || self.body.is_some()
            || self
                .headers
                .values()
                .any(|v| v.literal().is_some_and(is_template))
    }

    /// The URL rendered over `ctx` (see [`template::context`]), or None when it is not a
    /// template. Values are percent-encoded; the result is refused if its scheme, host or port
    /// differs from the template's, or a value made a `.`/`..` path segment (which would move
    /// the request to another path).
    pub fn render_url(&self, ctx: &minijinja::Value) -> Result<Option<String>, ShapeError> {
        let Some(raw) = self.url_template() else {
            return Ok(None);
        };
        render_url_template(raw, ctx).map(Some)
    }

    /// The body rendered over `ctx` as JSON text, or None when the action has no `body` (the
    /// delivered document is sent). At most [`MAX_BODY_BYTES`].
    pub fn render_body(&self, ctx: &minijinja::Value) -> Result<Option<String>, ShapeError> {
        let Some(body) = &self.body else {
            return Ok(None);
        };
        let rendered = template::render_json(body, "body", ctx, MAX_BODY_BYTES)
            .map_err(|(field, e)| ShapeError::new(field, e.0))?;
        Ok(Some(rendered.to_string()))
    }

    /// The header `name` rendered over `ctx`, or None when its value is not a template written
    /// in the action (a plain value or a reference to a secret, sent as it is). A rendered value
    /// holding a control character (CR, LF, tab, ...) is refused, naming the header, never
    /// quoting the value.
    pub fn render_header(
        &self,
        name: &str,
        ctx: &minijinja::Value,
    ) -> Result<Option<String>, ShapeError> {
        let Some(source) = self
            .headers
            .get(name)
            .and_then(ValueOrSecret::literal)
            .filter(|v| is_template(v))
        else {
            return Ok(None);
        };
        let field = format!("headers.{name}");
        let value = template::render(source, ctx, Escape::None, MAX_HEADER_BYTES)
            .map_err(|e| ShapeError::new(field.clone(), e.0))?;
        if let Some((at, c)) = value.chars().enumerate().find(|(_, c)| c.is_control()) {
            return Err(ShapeError::new(
                field,
                format!(
                    "the rendered value holds the control character {} at position {at}, which a header cannot carry (the value is not shown); the job is not sent",
                    c.escape_default()
                ),
            ));
        }
        Ok(Some(value))
    }
}

/// A shaped request that cannot be rendered for one job: the field (`url`, `body.order.id`,
/// `headers.X-Order-Id`) and why. The job fails; the observer's other jobs flow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("action.{field}: {reason}")]
pub struct ShapeError {
    /// The action's field, as `observer_create` names it.
    pub field: String,
    /// What went wrong, never quoting a rendered value.
    pub reason: String,
}

impl ShapeError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ShapeError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// `scheme://host:port` of a URL template and the rest (path, query), or None when the text
/// before the path is not `http://` or `https://` and an authority. The rest starts at the
/// first `/`, `?`, `#` or `\` after the authority.
fn split_origin(raw: &str) -> Option<(&str, &str)> {
    let (scheme, after) = raw.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let end = after.find(['/', '?', '#', '\\']).unwrap_or(after.len());
    Some(raw.split_at(scheme.len() + 3 + end))
}

/// A URL template: an `http(s)://host:port` written out (no template, no credentials), then a
/// path and query whose template compiles, and no fragment.
fn validate_url_template(raw: &str) -> Result<(), ActionError> {
    let bad = |reason: &str| ActionError::BadUrl {
        url: raw.to_string(),
        reason: reason.to_string(),
    };
    if split_origin(raw).is_some_and(|(origin, _)| origin.contains('{')) {
        return Err(ActionError::TemplateInOrigin(raw.to_string()));
    }
    let parsed = url::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if split_origin(raw).is_none() {
        return Err(ActionError::BadScheme(parsed.scheme().to_string()));
    }
    validate_url(raw)?;
    if parsed.fragment().is_some() {
        return Err(bad(
            "a URL template has no fragment (#...): it is never sent",
        ));
    }
    if raw.len() > MAX_TEMPLATE_BYTES {
        return Err(bad("longer than a template may be"));
    }
    validate_template("url", raw)
}

/// Render a URL template checked by [`validate_url_template`].
fn render_url_template(raw: &str, ctx: &minijinja::Value) -> Result<String, ShapeError> {
    let bad = |reason: String| ShapeError::new("url", reason);
    let (origin, rest) = split_origin(raw).ok_or_else(|| bad("not an http(s) URL".into()))?;
    let rendered = template::render(rest, ctx, Escape::Url, MAX_URL_BYTES).map_err(|e| bad(e.0))?;
    let path = rendered.split(['?', '#']).next().unwrap_or("");
    if let Some(segment) = path.split(['/', '\\']).find(|s| is_dot_segment(s)) {
        return Err(bad(format!(
            "the rendered path has the segment {segment:?}, which would move the request to another path; the job is not sent"
        )));
    }
    let url = format!("{origin}{rendered}");
    let parsed = url::Url::parse(&url).map_err(|e| bad(format!("renders no valid URL: {e}")))?;
    let written = url::Url::parse(origin).map_err(|e| bad(e.to_string()))?;
    let same_origin = parsed.scheme() == written.scheme()
        && parsed.host_str() == written.host_str()
        && parsed.port_or_known_default() == written.port_or_known_default()
        && parsed.username().is_empty()
        && parsed.password().is_none();
    if !same_origin || parsed.fragment().is_some() {
        return Err(bad(
            "the rendered URL does not keep the written scheme, host and port; the job is not sent"
                .into(),
        ));
    }
    Ok(parsed.into())
}

/// `.` or `..`, written out or percent-encoded (`%2e`, `.%2E`...): the URL standard removes such
/// a segment, or the one before it.
fn is_dot_segment(segment: &str) -> bool {
    let s = segment.to_ascii_lowercase().replace("%2e", ".");
    s == "." || s == ".."
}

/// Every string of a `body` is a template, or one expression; the whole source fits the cap.
fn validate_body(body: &serde_json::Value) -> Result<(), ActionError> {
    let size = body.to_string().len();
    if size > MAX_BODY_BYTES {
        return Err(ActionError::BadTemplate {
            field: "body".to_string(),
            reason: format!("{size} bytes is more than the {MAX_BODY_BYTES} a body may have"),
        });
    }
    for (field, source) in template::json_strings(body, "body") {
        match template::sole_expression(source) {
            Some(expression) => template::check_expression(expression)
                .map_err(|e| ActionError::BadTemplate { field, reason: e.0 })?,
            None => validate_template(&field, source)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;

    fn webhook(json: &str) -> WebhookAction {
        match Action::parse(json).expect(json) {
            Action::Webhook(w) => w,
            other => panic!("not a webhook: {other:?}"),
        }
    }

    fn refused(json: &str) -> ActionError {
        Action::parse(json).expect_err(json)
    }

    /// The context of an UPDATE whose new row carries `new`.
    fn ctx(new: serde_json::Value) -> minijinja::Value {
        template::context(&serde_json::json!({
            "type": "orders", "timestamp": "2026-12-03T10:00:00Z",
            "data": {"event_id": 9, "op": "UPDATE", "table": "public.orders",
                     "old": {"id": 1}, "new": new}
        }))
    }

    #[test]
    fn without_shaping_nothing_changes() {
        let w = webhook(r#"{"type":"webhook","url":"https://a.b/h?x=1","headers":{"X-Team":"a"}}"#);
        assert_eq!(w.method(), "POST");
        assert!(!w.is_shaped());
        let c = ctx(serde_json::json!({"id": 1}));
        assert_eq!(w.render_url(&c), Ok(None));
        assert_eq!(w.render_body(&c), Ok(None));
        assert_eq!(w.render_header("X-Team", &c), Ok(None));
        let stored = serde_json::to_value(Action::Webhook(w)).expect("json");
        assert_eq!(
            stored,
            serde_json::json!({"type": "webhook", "url": "https://a.b/h?x=1",
                               "headers": {"X-Team": "a"}, "timeout_ms": 10000}),
            "the stored form of an unshaped action is what it was"
        );
    }

    #[test]
    fn methods_are_a_closed_set() {
        for m in METHODS {
            let json = format!(r#"{{"type":"webhook","url":"https://a.b/h","method":"{m}"}}"#);
            assert_eq!(webhook(&json).method(), *m);
        }
        for bad in ["GET", "put", "CONNECT", "", "POST "] {
            let json = format!(r#"{{"type":"webhook","url":"https://a.b/h","method":{bad:?}}}"#);
            let e = refused(&json);
            assert_eq!(e, ActionError::BadMethod(bad.to_string()));
            assert!(e.to_string().starts_with("action.method "), "{e}");
            assert!(
                e.hint().contains("POST, PUT, PATCH, DELETE"),
                "{}",
                e.hint()
            );
        }
    }

    #[test]
    fn templates_before_the_path_are_refused() {
        for url in [
            "https://{{ new.host }}/x",
            "https://api.example.com{{ new.suffix }}/x",
            "https://api.example.com:{{ new.port }}/x",
            "https://{% if new.x %}a.example{% endif %}/x",
        ] {
            let json = serde_json::json!({"type": "webhook", "url": url}).to_string();
            let e = refused(&json);
            assert_eq!(e, ActionError::TemplateInOrigin(url.to_string()));
            assert!(e.to_string().starts_with("action.url "), "{e}");
        }
        assert_eq!(
            refused(r#"{"type":"webhook","url":"https://api.example.com:{{ new.port }}/x"}"#)
                .hint(),
            ActionError::TemplateInOrigin(String::new()).hint()
        );
        assert!(matches!(
            refused(r#"{"type":"webhook","url":"ftp://a.b/{{ new.id }}"}"#),
            ActionError::BadScheme(s) if s == "ftp"
        ));
        assert!(matches!(
            refused(r#"{"type":"webhook","url":"https://a.b/{{ new.id }}#top"}"#),
            ActionError::BadUrl { reason, .. } if reason.contains("fragment")
        ));
        assert!(matches!(
            refused(r#"{"type":"webhook","url":"https://a.b/{{ new.id "}"#),
            ActionError::BadTemplate { field, .. } if field == "url"
        ));
        assert_eq!(
            refused(r#"{"type":"webhook","url":"https://u:p@a.b/{{ new.id }}"}"#),
            ActionError::UrlCredentials
        );
    }

    #[test]
    fn url_values_are_percent_encoded_in_path_and_query() {
        let w = webhook(
            r#"{"type":"webhook","url":"https://api.example.com/accounts/{{ new.account }}/orders?status={{ new.status }}&n={{ new.id }}"}"#,
        );
        assert!(w.is_shaped());
        for (value, encoded) in [
            ("../", "..%2F"),
            ("a?b=c", "a%3Fb%3Dc"),
            ("x#y", "x%23y"),
            ("a/b", "a%2Fb"),
            ("a&b=c", "a%26b%3Dc"),
            ("two words", "two%20words"),
            ("ünï ✓", "%C3%BCn%C3%AF%20%E2%9C%93"),
            ("50%+\\", "50%25%2B%5C"),
            ("A-z_0.9~", "A-z_0.9~"),
        ] {
            let c = ctx(serde_json::json!({"id": 7, "account": value, "status": value}));
            let url = w.render_url(&c).expect(value).expect("a template");
            assert_eq!(
                url,
                format!("https://api.example.com/accounts/{encoded}/orders?status={encoded}&n=7"),
                "{value}"
            );
            let parsed = url::Url::parse(&url).expect("a URL");
            assert_eq!(parsed.host_str(), Some("api.example.com"));
            assert_eq!(parsed.path_segments().expect("path").count(), 3, "{value}");
            assert_eq!(parsed.query_pairs().count(), 2, "{value}");
            let status = parsed
                .query_pairs()
                .find(|(k, _)| k == "status")
                .expect("status");
            assert_eq!(status.1, value, "the receiver decodes the value as it was");
        }
    }

    #[test]
    fn url_values_cannot_redirect_the_request() {
        let w = webhook(
            r#"{"type":"webhook","url":"http://10.1.2.3:8080/a/{{ new.x }}?q={{ new.x }}"}"#,
        );
        for hostile in [
            "@evil.example/",
            "127.0.0.1",
            "//evil.example/x",
            "http://evil.example",
            ":9/",
        ] {
            let url = w
                .render_url(&ctx(serde_json::json!({"x": hostile})))
                .expect(hostile)
                .expect("a template");
            let parsed = url::Url::parse(&url).expect("a URL");
            assert_eq!(
                (parsed.host_str(), parsed.port()),
                (Some("10.1.2.3"), Some(8080)),
                "{hostile}: {url}"
            );
            assert!(parsed.path().starts_with("/a/"), "{url}");
            assert_eq!(parsed.path_segments().expect("path").count(), 2, "{url}");
        }
        // A value that is a dot segment would move the request up the path: refused.
        for dots in [".", ".."] {
            let e = w
                .render_url(&ctx(serde_json::json!({"x": dots})))
                .expect_err(dots);
            assert_eq!(e.field, "url");
            assert!(e.reason.contains("another path"), "{e}");
        }
        // Dots within a segment are ordinary characters.
        let url = w
            .render_url(&ctx(serde_json::json!({"x": "..x"})))
            .expect("..x")
            .expect("a template");
        assert_eq!(url, "http://10.1.2.3:8080/a/..x?q=..x");
        // A missing value leaves the segment empty, never removes it.
        let url = w
            .render_url(&ctx(serde_json::json!({})))
            .expect("empty")
            .expect("a template");
        assert_eq!(url, "http://10.1.2.3:8080/a/?q=");
    }

    #[test]
    fn a_body_renders_json_with_typed_values() {
        let w = webhook(
            r#"{"type":"webhook","url":"https://a.b/h","method":"PUT","body":{
                "order": {"id": "{{ new.id }}", "amount": "{{ new.total }}", "tags": "{{ new.tags }}",
                          "paid": "{{- new.paid -}}", "customer": "{{ new.customer }}", "gone": "{{ new.nope }}"},
                "summary": "Order {{ new.id }}: {{ new.customer }}",
                "op": "{{ op }}", "fixed": [1, true, null, "x"], "n": 3}}"#,
        );
        assert!(w.is_shaped());
        let c = ctx(serde_json::json!({
            "id": 5, "total": 42.5, "tags": ["a", "b"], "paid": true,
            "customer": "Ada \"the\" <x>\n\\"
        }));
        let body = w.render_body(&c).expect("renders").expect("a body");
        let parsed: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(
            parsed,
            serde_json::json!({
                "order": {"id": 5, "amount": 42.5, "tags": ["a", "b"], "paid": true,
                          "customer": "Ada \"the\" <x>\n\\", "gone": null},
                "summary": "Order 5: Ada \"the\" <x>\n\\",
                "op": "UPDATE", "fixed": [1, true, null, "x"], "n": 3
            })
        );
    }

    #[test]
    fn body_templates_are_checked_at_create_naming_their_field() {
        for (body, field) in [
            (r#"{"order": {"id": "{{ new.id "}}"#, "body.order.id"),
            (r#"{"order": {"id": "{{ new.id + }}"}}"#, "body.order.id"),
            (r#"{"items": ["ok", "{% if %}"]}"#, "body.items[1]"),
        ] {
            let json = format!(r#"{{"type":"webhook","url":"https://a.b/h","body":{body}}}"#);
            match refused(&json) {
                ActionError::BadTemplate { field: f, .. } => assert_eq!(f, field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        let big = "x".repeat(MAX_BODY_BYTES);
        let json =
            serde_json::json!({"type": "webhook", "url": "https://a.b/h", "body": {"a": big}});
        assert!(matches!(
            Action::from_value(json),
            Err(ActionError::BadTemplate { field, reason }) if field == "body" && reason.contains("more than")
        ));
    }

    #[test]
    fn a_body_past_its_cap_is_refused_with_the_reason() {
        let c = ctx(serde_json::json!({"id": 1}));
        for (body, field) in [
            (
                r#"{"x": "{% for i in range(10000) %}{{ 'x' * 200 }}{% endfor %}"}"#,
                "body.x",
            ),
            (r#"{"x": "{{ 'x' * 2000000 }}"}"#, "body.x"),
            (
                r#"{"a": "{{ 'a' * 700000 }}", "b": "{{ 'b' * 700000 }}"}"#,
                "body.b",
            ),
        ] {
            let json = format!(r#"{{"type":"webhook","url":"https://a.b/h","body":{body}}}"#);
            let e = webhook(&json).render_body(&c).expect_err(body);
            assert_eq!(e.field, field, "{body}");
            assert!(
                e.reason
                    .contains(&format!("more than the {MAX_BODY_BYTES} allowed"))
                    || e.reason.contains("allowed bytes"),
                "{e}"
            );
        }
    }

    #[test]
    fn header_templates_render_and_refuse_control_characters() {
        let w = webhook(
            r#"{"type":"webhook","url":"https://a.b/h","headers":{
                "X-Order-Id": "{{ new.id }}", "X-Note": "note: {{ new.note }}",
                "Authorization": {"secret": "api", "prefix": "Bearer "}, "X-Team": "billing"}}"#,
        );
        assert!(w.is_shaped());
        let c = ctx(serde_json::json!({"id": 42, "note": "fine"}));
        assert_eq!(
            w.render_header("X-Order-Id", &c),
            Ok(Some("42".to_string()))
        );
        assert_eq!(
            w.render_header("X-Note", &c),
            Ok(Some("note: fine".to_string()))
        );
        assert_eq!(
            w.render_header("Authorization", &c),
            Ok(None),
            "a secret is no template"
        );
        assert_eq!(w.render_header("X-Team", &c), Ok(None));
        for hostile in ["a\r\nX-Evil: 1", "a\nb", "a\u{0}b", "a\tb", "a\u{85}b"] {
            let c = ctx(serde_json::json!({"id": 1, "note": hostile}));
            let e = w.render_header("X-Note", &c).expect_err(hostile);
            assert_eq!(e.field, "headers.X-Note");
            assert!(e.reason.contains("control character"), "{e}");
            assert!(
                !e.to_string().contains("X-Evil"),
                "the value is never quoted: {e}"
            );
        }
        assert!(matches!(
            refused(r#"{"type":"webhook","url":"https://a.b/h","headers":{"X-Order-Id":"{{ new.id "}}"#),
            ActionError::BadTemplate { field, .. } if field == "headers.X-Order-Id"
        ));
        assert_eq!(
            refused(
                r#"{"type":"webhook","url":"https://a.b/h","headers":{"Webhook-Id":"{{ new.id }}"}}"#
            ),
            ActionError::ReservedHeader("Webhook-Id".into())
        );
    }

    /// The example of docs/actions.md ("Shaping the request").
    #[test]
    fn the_documented_example_renders_as_documented() {
        let w = webhook(
            r#"{"type": "webhook", "method": "PUT",
                "url": "https://crm.example.com/customers/{{ new.customer }}/orders/{{ new.id }}?status={{ new.status }}",
                "headers": {"X-Order-Id": "{{ new.id }}"},
                "body": {"order": {"id": "{{ new.id }}", "total": "{{ new.total }}",
                                   "shipped": "{{ new.status == 'shipped' }}"},
                         "summary": "Order {{ new.id }} for {{ new.customer }}: {{ op }}"}}"#,
        );
        let c = template::context(&serde_json::json!({
            "type": "order_to_crm", "timestamp": "2026-12-03T10:00:00Z",
            "data": {"event_id": 1, "op": "INSERT", "table": "public.orders", "old": null,
                     "new": {"id": 7, "customer": "Ada & co / EU", "status": "paid", "total": 42.5}}
        }));
        assert_eq!(
            w.render_url(&c).expect("url").as_deref(),
            Some(
                "https://crm.example.com/customers/Ada%20%26%20co%20%2F%20EU/orders/7?status=paid"
            )
        );
        assert_eq!(
            w.render_body(&c).expect("body").as_deref(),
            Some(
                r#"{"order":{"id":7,"shipped":false,"total":42.5},"summary":"Order 7 for Ada & co / EU: INSERT"}"#
            )
        );
        assert_eq!(w.render_header("X-Order-Id", &c), Ok(Some("7".to_string())));
    }
}
