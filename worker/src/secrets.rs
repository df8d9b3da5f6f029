//! Secrets by reference, resolved. An action's URL and header values may be references,
//! `{"secret": "<name>"}` (`core::secret`), to credentials of the worker's configuration
//! (`[secrets.<name>] value = ...`): the database holds the name only. [`resolve`] turns an
//! action into what goes on the wire, right before the request and nowhere else; the values
//! live in that [`Wire`] for one attempt and are never logged, stored or used as a label.
//!
//! Where a credential may go (the threat: whoever defines observers must not be able to send a
//! secret to a server of their choice):
//! - a header value goes only to its secret's `destinations` (URL prefixes, as for signing),
//!   checked against the URL the request is actually sent to; a credential without
//!   destinations cannot be a header at all;
//! - a URL is its own destination: the request goes where the secret says, so the one who
//!   wrote the action chooses neither the host nor the path. When the secret lists
//!   destinations, its value must lie under one of them too (a guard against a mistyped value).
//!
//! A reference the worker cannot resolve fails the job without blaming the endpoint: a secret
//! that is not configured (or is a signing secret, not a credential) is retried, as a missing
//! signing secret is, since the operator may be adding it; a credential bound to other
//! destinations dead-letters the job at once, never sent.

use fraiseql_observers_core::action::{validate_server_url, NATS_SCHEMES, REDIS_SCHEMES};
use fraiseql_observers_core::{Action, ValueOrSecret};

use crate::config::{Config, Secret, ENV_PREFIX};
use crate::job::{self, Attempted, Outcome};

/// Shortest part of a secret URL (a path segment, a query value, a password) that error texts
/// are scrubbed of on its own: tokens are longer, and shorter parts (`/hook`) are no secret.
const MIN_HIDDEN_PART: usize = 8;
/// Shortest start of a secret value that is scrubbed when an error text ends with it (an echo
/// cut by the error body's cap).
const MIN_CUT_ECHO: usize = 6;

/// An action's URL and headers with every reference resolved: what goes on the wire.
#[derive(Default)]
pub struct Wire {
    /// Where the request goes.
    pub url: String,
    /// The action's headers, references resolved (`prefix` + value).
    pub headers: Vec<(String, String)>,
    /// Names of the headers whose value is a secret.
    secret_headers: Vec<String>,
    /// Each secret value sent (and, for a URL, its telltale parts) with the text that replaces
    /// it in error texts, longest first.
    hidden: Vec<(String, String)>,
}

/// Never print the resolved values.
impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("endpoint", &job::endpoint(&self.url))
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Why an action's references could not be resolved. Messages name the secret and the field,
/// never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    #[error("secret {name:?} (action.{field}) is not configured in this worker: give it value = \"...\" in [secrets.{name}], or {var}__VALUE or {var}__VALUE_FILE", var = env_var(name))]
    Missing { name: String, field: String },
    #[error("secret {name:?} (action.{field}) is a signing secret (keys), not a credential: give the credential its own [secrets.<name>] with value = \"...\" and reference that")]
    NotACredential { name: String, field: String },
    #[error("secret {name:?} (action.{field}) is not bound to {endpoint}: {why}; the request is not sent")]
    NotBound {
        name: String,
        field: String,
        endpoint: String,
        why: &'static str,
    },
    /// `expected`: what the action's `url` must be (`an http:// or https:// URL`, ...).
    #[error("secret {name:?} (action.url) is not {expected} with a host (its value is not shown)")]
    NotAUrl {
        name: String,
        expected: &'static str,
    },
}

fn env_var(name: &str) -> String {
    format!("{ENV_PREFIX}SECRETS__{}", name.to_ascii_uppercase())
}

impl Unresolved {
    /// What becomes of the job: never an endpoint fault, since nothing was sent.
    pub fn outcome(&self) -> Outcome {
        let error = self.to_string();
        match self {
            // The operator may be adding or fixing the secret: retried, then dead-lettered
            // (replayable), as a missing signing secret is.
            Unresolved::Missing { .. }
            | Unresolved::NotACredential { .. }
            | Unresolved::NotAUrl { .. } => Outcome::Retry {
                error,
                not_before: None,
                endpoint_fault: false,
            },
            // A refusal of where the action would send the secret: dead at once, never sent.
            Unresolved::NotBound { .. } => Outcome::Discard {
                error,
                pause: false,
            },
        }
    }

    /// The endpoint the job was for, when known (for its attempt in the audit trail).
    pub fn endpoint(&self) -> Option<String> {
        match self {
            Unresolved::NotBound { endpoint, .. } => Some(endpoint.clone()),
            _ => None,
        }
    }
}

/// The credential `name` of the configuration, for `field`.
fn credential<'a>(
    config: &'a Config,
    name: &str,
    field: &str,
) -> Result<(&'a Secret, &'a str), Unresolved> {
    let Some(secret) = config.secret(name) else {
        return Err(Unresolved::Missing {
            name: name.to_string(),
            field: field.to_string(),
        });
    };
    match secret.value.as_deref() {
        Some(value) => Ok((secret, value)),
        None => Err(Unresolved::NotACredential {
            name: name.to_string(),
            field: field.to_string(),
        }),
    }
}

/// What a resolved `url` of `action` must be, and the check of a value.
fn url_kind(action: &Action) -> (&'static str, fn(&str) -> bool) {
    match action {
        Action::Nats(_) => ("a nats:// or tls:// server address", |v| {
            server_url(v, NATS_SCHEMES)
        }),
        Action::RedisStream(_) => ("a redis:// or rediss:// server address", |v| {
            server_url(v, REDIS_SCHEMES)
        }),
        _ => ("an http:// or https:// URL", is_http_url),
    }
}

/// Whether `value` is a server address of one of `schemes` (`core::action::validate_server_url`).
fn server_url(value: &str, schemes: &[&str]) -> bool {
    validate_server_url("", value, schemes).is_ok()
}

/// Resolve `action`'s references against the configuration (e-mail has none: an empty wire).
pub fn resolve(config: &Config, action: &Action) -> Result<Wire, Unresolved> {
    let (url, headers) = match action {
        Action::Webhook(w) => (&w.url, Some(&w.headers)),
        Action::Slack(s) => (&s.url, None),
        Action::Nats(n) => (&n.url, None),
        Action::RedisStream(r) => (&r.url, None),
        Action::Email(_) => return Ok(Wire::default()),
    };
    let mut wire = Wire::default();
    match url {
        ValueOrSecret::Literal(u) => wire.url = u.clone(),
        ValueOrSecret::Secret(r) => {
            let name = r.secret.to_ascii_lowercase();
            let (secret, value) = credential(config, &name, "url")?;
            let (expected, fits) = url_kind(action);
            if !fits(value) {
                return Err(Unresolved::NotAUrl { name, expected });
            }
            if !secret.destinations.is_empty() && !secret.covers(value) {
                return Err(Unresolved::NotBound {
                    name: name.clone(),
                    field: "url".to_string(),
                    endpoint: job::endpoint(value),
                    why:
                        "its value lies outside its own destinations (secrets.<name>.destinations)",
                });
            }
            wire.hide_url(&name, value);
            wire.url = value.to_string();
        }
    }
    for (header, value) in headers.into_iter().flatten() {
        match value {
            ValueOrSecret::Literal(v) => wire.headers.push((header.clone(), v.clone())),
            ValueOrSecret::Secret(r) => {
                let name = r.secret.to_ascii_lowercase();
                let field = format!("headers.{header}");
                let (secret, v) = credential(config, &name, &field)?;
                // A URL secret is its own destination: sent as a header, its value (a private
                // URL: a Slack hook, a tokened endpoint) would reach whatever URL the action
                // names, another tenant's path on the same host included.
                if is_http_url(v) {
                    return Err(Unresolved::NotBound {
                        name,
                        field,
                        endpoint: job::endpoint(&wire.url),
                        why: "its value is a URL, and a URL secret can only be an action's url",
                    });
                }
                if !secret.covers(&wire.url) {
                    let why = if secret.destinations.is_empty() {
                        "it has no destinations, so it can only be an action's url; list where it may be sent in secrets.<name>.destinations"
                    } else {
                        "the URL lies outside its destinations (secrets.<name>.destinations)"
                    };
                    return Err(Unresolved::NotBound {
                        name,
                        field,
                        endpoint: job::endpoint(&wire.url),
                        why,
                    });
                }
                wire.hide(&name, v);
                wire.secret_headers.push(header.clone());
                let prefix = r.prefix.as_deref().unwrap_or("");
                wire.headers.push((header.clone(), format!("{prefix}{v}")));
            }
        }
    }
    wire.hidden
        .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    Ok(wire)
}

/// Whether `value` is an http(s) URL with a host.
fn is_http_url(value: &str) -> bool {
    url::Url::parse(value)
        .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .unwrap_or(false)
}

/// Every byte but RFC 3986's unreserved characters is percent-encoded (upper-case hex).
const URL_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `value` as an endpoint may quote it back when it echoes what it received: JSON-escaped (a
/// `/` as `\/` or `\u002f`, as PHP's `json_encode` writes it; `"` and `\` escaped) and
/// percent-encoded (either case of hex digit). The forms that differ from `value`.
fn echo_forms(value: &str) -> Vec<String> {
    let json = serde_json::to_string(value).unwrap_or_default();
    let json = json
        .strip_prefix('"')
        .and_then(|j| j.strip_suffix('"'))
        .unwrap_or_default()
        .to_string();
    let percent = percent_encoding::utf8_percent_encode(value, URL_UNRESERVED).to_string();
    let mut forms = vec![
        json.replace('/', "\\/"),
        json.replace('/', "\\u002f"),
        json.replace('/', "\\u002F"),
        json,
        percent.clone(),
        lower_hex(&percent),
    ];
    forms.retain(|f| f != value);
    forms.sort();
    forms.dedup();
    forms
}

/// `text` with the hex digits of its `%XX` escapes in lower case.
fn lower_hex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending = 0;
    for c in text.chars() {
        if c == '%' {
            pending = 2;
            out.push(c);
        } else if pending > 0 {
            pending -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

impl Wire {
    /// True when the header `name` carries a secret.
    pub fn is_secret_header(&self, name: &str) -> bool {
        self.secret_headers.iter().any(|h| h == name)
    }

    fn hide(&mut self, name: &str, value: &str) {
        if !value.is_empty() {
            let replacement = format!("[secret {name}]");
            for form in echo_forms(value) {
                self.hidden.push((form, replacement.clone()));
            }
            self.hidden.push((value.to_string(), replacement));
        }
    }

    /// A secret URL, whole and by its parts: an endpoint that echoes its URL back may quote only
    /// its path or its token.
    fn hide_url(&mut self, name: &str, value: &str) {
        self.hide(name, value);
        let Ok(u) = url::Url::parse(value) else {
            return;
        };
        // As the URL parser writes it too (an endpoint would quote that form).
        let mut parts = vec![
            u.as_str().to_string(),
            u[url::Position::BeforePath..].to_string(),
        ];
        parts.extend(u.path_segments().into_iter().flatten().map(str::to_string));
        parts.extend(u.query_pairs().map(|(_, v)| v.into_owned()));
        parts.extend(u.query().map(str::to_string));
        parts.extend(u.password().map(str::to_string));
        if !u.username().is_empty() {
            parts.push(u.username().to_string());
        }
        for part in parts {
            if part.len() >= MIN_HIDDEN_PART {
                self.hide(name, &part);
            }
        }
    }

    /// `text` with every secret value sent replaced by `[secret <name>]`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (value, replacement) in &self.hidden {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), replacement);
            }
        }
        // The endpoint's answer is cut at http.error_body_bytes: an echo cut inside a value
        // ends the text with the value's first characters.
        for (value, replacement) in &self.hidden {
            let cut = (MIN_CUT_ECHO..value.len())
                .rev()
                .filter(|&k| value.is_char_boundary(k))
                .find(|&k| out.ends_with(&value[..k]));
            if let Some(k) = cut {
                out.truncate(out.len() - k);
                out.push_str(replacement);
            }
        }
        out
    }

    /// An attempt's outcome with its error text scrubbed (the endpoint's answer is kept on the
    /// job, in the audit trail and in the logs).
    pub fn scrub_attempt(&self, attempted: Attempted) -> Attempted {
        if self.hidden.is_empty() {
            return attempted;
        }
        let outcome = match attempted.outcome {
            Outcome::Retry {
                error,
                not_before,
                endpoint_fault,
            } => Outcome::Retry {
                error: self.scrub(&error),
                not_before,
                endpoint_fault,
            },
            Outcome::Discard { error, pause } => Outcome::Discard {
                error: self.scrub(&error),
                pause,
            },
            Outcome::Snooze { until, reason } => Outcome::Snooze {
                until,
                reason: self.scrub(&reason),
            },
            Outcome::Split { reason } => Outcome::Split {
                reason: self.scrub(&reason),
            },
            Outcome::Delivered => Outcome::Delivered,
        };
        Attempted {
            outcome,
            status: attempted.status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Red team (issue 15): an endpoint echoing a credential JSON-escaped (`\/`) or
    /// percent-encoded kept it in last_error and the audit trail.
    #[test]
    fn escaped_echoes_are_scrubbed() {
        let mut wire = Wire::default();
        wire.hide("stripe", "sk_live_Ab/Cd+Ef\"x");
        for echo in [
            "sk_live_Ab\\/Cd+Ef\\\"x",
            "sk_live_Ab\\u002fCd+Ef\\\"x",
            "sk_live_Ab\\u002FCd+Ef\\\"x",
            "sk_live_Ab%2FCd%2BEf%22x",
            "sk_live_Ab%2fCd%2bEf%22x",
        ] {
            let text = format!("{{\"got\": \"{echo}\"}}");
            let scrubbed = wire.scrub(&text);
            assert!(scrubbed.contains("[secret stripe]"), "{echo}: {scrubbed}");
            assert!(!scrubbed.contains("Ab"), "{echo}: {scrubbed}");
        }
    }

    const TOKEN: &str = "sk_live_51Hx9qTOKENvalue";
    const HOOK: &str = "https://hooks.example.com/services/T0/B0/abcdefghijklmnopqrstuvwx";

    fn config() -> Config {
        let pairs = [
            ("FRAISEQL_OBSERVERS_SECRETS__STRIPE__VALUE", TOKEN),
            (
                "FRAISEQL_OBSERVERS_SECRETS__STRIPE__DESTINATIONS",
                "https://api.stripe.com/v1",
            ),
            ("FRAISEQL_OBSERVERS_SECRETS__HOOK__VALUE", HOOK),
            (
                "FRAISEQL_OBSERVERS_SECRETS__NOWHERE__VALUE",
                "tok_unbound_123",
            ),
            (
                "FRAISEQL_OBSERVERS_SECRETS__PINNED__VALUE",
                "https://other.example.com/x",
            ),
            (
                "FRAISEQL_OBSERVERS_SECRETS__PINNED__DESTINATIONS",
                "https://hooks.example.com",
            ),
            (
                "FRAISEQL_OBSERVERS_SECRETS__ORDERS",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
            (
                "FRAISEQL_OBSERVERS_SECRETS__ORDERS__DESTINATIONS",
                "https://api.stripe.com",
            ),
        ];
        Config::load(
            None,
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            &[],
        )
        .expect("valid")
    }

    fn action(json: &str) -> Action {
        Action::parse(json).expect("valid action")
    }

    #[test]
    fn references_resolve_to_the_configured_values() {
        let c = config();
        let wire = resolve(
            &c,
            &action(
                r#"{"type":"webhook","url":"https://api.stripe.com/v1/charges",
                    "headers":{"Authorization":{"secret":"STRIPE","prefix":"Bearer "},"X-Team":"billing"}}"#,
            ),
        )
        .expect("resolves");
        assert_eq!(wire.url, "https://api.stripe.com/v1/charges");
        assert_eq!(
            wire.headers,
            vec![
                ("Authorization".to_string(), format!("Bearer {TOKEN}")),
                ("X-Team".to_string(), "billing".to_string())
            ]
        );
        assert!(wire.is_secret_header("Authorization"));
        assert!(!wire.is_secret_header("X-Team"));
        assert!(!format!("{wire:?}").contains(TOKEN), "{wire:?}");

        let wire = resolve(
            &c,
            &action(r#"{"type":"slack","url":{"secret":"hook"},"text":"t"}"#),
        )
        .expect("resolves");
        assert_eq!(wire.url, HOOK);
        assert!(!format!("{wire:?}").contains("abcdefgh"), "{wire:?}");

        let email = action(r#"{"type":"email","to":["a@b.c"],"subject":"s","body":"b"}"#);
        assert_eq!(resolve(&c, &email).expect("nothing to resolve").url, "");
    }

    #[test]
    fn unresolvable_references_fail_the_job_not_the_endpoint() {
        let c = config();
        let outcome = |json: &str| resolve(&c, &action(json)).expect_err(json);
        // Not configured: retried, naming the secret and the variable to set.
        let e = outcome(r#"{"type":"webhook","url":{"secret":"absent"}}"#);
        assert!(
            matches!(
                e.outcome(),
                Outcome::Retry {
                    endpoint_fault: false,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("secret \"absent\" (action.url) is not configured"),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("FRAISEQL_OBSERVERS_SECRETS__ABSENT__VALUE"),
            "{e}"
        );
        assert_eq!(e.endpoint(), None);
        // A signing secret is not a credential.
        let e = outcome(
            r#"{"type":"webhook","url":"https://api.stripe.com","headers":{"X-Key":{"secret":"orders"}}}"#,
        );
        assert!(matches!(e, Unresolved::NotACredential { .. }), "{e}");
        assert!(matches!(
            e.outcome(),
            Outcome::Retry {
                endpoint_fault: false,
                ..
            }
        ));
        // A header secret bound elsewhere: dead at once, never sent, endpoint not blamed.
        for (json, why) in [
            (
                r#"{"type":"webhook","url":"https://attacker.example/collect","headers":{"Authorization":{"secret":"stripe"}}}"#,
                "outside its destinations",
            ),
            (
                r#"{"type":"webhook","url":"https://api.stripe.com/v1","headers":{"X-T":{"secret":"nowhere"}}}"#,
                "has no destinations",
            ),
            (
                r#"{"type":"webhook","url":{"secret":"hook"},"headers":{"Authorization":{"secret":"stripe"}}}"#,
                "outside its destinations",
            ),
            (
                r#"{"type":"webhook","url":{"secret":"pinned"}}"#,
                "outside its own destinations",
            ),
        ] {
            let e = outcome(json);
            assert!(
                matches!(e.outcome(), Outcome::Discard { pause: false, .. }),
                "{json}: {e}"
            );
            assert!(e.to_string().contains(why), "{json}: {e}");
            assert!(e.endpoint().is_some(), "{json}");
            for value in [TOKEN, "tok_unbound_123", "abcdefgh", "other.example.com/x"] {
                assert!(!e.to_string().contains(value), "{json}: {e}");
            }
        }
        assert_eq!(
            outcome(r#"{"type":"webhook","url":"https://attacker.example/c","headers":{"A":{"secret":"stripe"}}}"#)
                .endpoint()
                .as_deref(),
            Some("https://attacker.example:443")
        );
        // A credential that is not a URL, used as one: retried (the operator fixes the value).
        let e = outcome(r#"{"type":"webhook","url":{"secret":"nowhere"}}"#);
        assert_eq!(
            e,
            Unresolved::NotAUrl {
                name: "nowhere".into(),
                expected: "an http:// or https:// URL"
            }
        );
        // A stream action's url must be a server address of its own schemes.
        let e = outcome(r#"{"type":"nats","url":{"secret":"hook"},"subject":"s"}"#);
        assert!(
            e.to_string()
                .contains("is not a nats:// or tls:// server address"),
            "{e}"
        );
        assert!(!e.to_string().contains("abcdefgh"), "{e}");
        assert!(!e.to_string().contains("tok_unbound_123"), "{e}");
    }

    #[test]
    fn error_texts_are_scrubbed_of_the_secrets_sent() {
        let c = config();
        let wire = resolve(
            &c,
            &action(
                r#"{"type":"webhook","url":"https://api.stripe.com/v1","headers":{"Authorization":{"secret":"stripe","prefix":"Bearer "}}}"#,
            ),
        )
        .expect("resolves");
        let echoed = Attempted {
            outcome: Outcome::Retry {
                error: format!("HTTP 401: bad credentials \"Bearer {TOKEN}\""),
                not_before: None,
                endpoint_fault: false,
            },
            status: Some(401),
        };
        let scrubbed = wire.scrub_attempt(echoed);
        assert_eq!(
            scrubbed.outcome,
            Outcome::Retry {
                error: "HTTP 401: bad credentials \"Bearer [secret stripe]\"".to_string(),
                not_before: None,
                endpoint_fault: false,
            }
        );
        assert_eq!(scrubbed.status, Some(401));

        let wire = resolve(
            &c,
            &action(r#"{"type":"slack","url":{"secret":"hook"},"text":"t"}"#),
        )
        .expect("resolves");
        for echo in [
            HOOK.to_string(),
            "/services/T0/B0/abcdefghijklmnopqrstuvwx".to_string(),
            "no such token: abcdefghijklmnopqrstuvwx".to_string(),
        ] {
            let out = wire.scrub(&echo);
            assert!(!out.contains("abcdefghijklmnopqrstuvwx"), "{echo} -> {out}");
            assert!(out.contains("[secret hook]"), "{out}");
        }
        assert_eq!(wire.scrub("HTTP 500: oops"), "HTTP 500: oops");

        // An echo cut by the error body's cap, inside the value.
        let wire = resolve(
            &c,
            &action(
                r#"{"type":"webhook","url":"https://api.stripe.com/v1","headers":{"Authorization":{"secret":"stripe"}}}"#,
            ),
        )
        .expect("resolves");
        let cut = format!("HTTP 401: you sent {}", &TOKEN[..12]);
        assert_eq!(
            wire.scrub(&cut),
            "HTTP 401: you sent [secret stripe]",
            "{cut}"
        );
    }
}
