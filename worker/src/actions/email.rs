//! The `email` action: a plain-text message rendered from the action's templates, sent through
//! the SMTP server of the worker's `[smtp]` configuration (lettre, pooled connections).
//!
//! Each message carries `Message-ID: <webhook-id@fraiseql-observers>`, stable across retries
//! and replays like a webhook's `webhook-id`, so a receiver can recognise a redelivered message.
//! Outcomes: accepted → delivered; a transient SMTP reply (4xx), a timeout or a connection
//! failure → retried (counted against the SMTP server's circuit breaker); a permanent reply
//! (5xx, e.g. an unknown mailbox) or a recipient that does not render to an address → the job is
//! dead-lettered at once with the reason (replayable), and the observer keeps running.

use std::time::Duration;

use fraiseql_observers_core::template::{self, Escape};
use fraiseql_observers_core::text::{printable, with_sources};
use fraiseql_observers_core::EmailAction;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{redact, SmtpConfig};
use crate::job::{Attempted, ClaimedJob, Outcome};

/// Longest rendered subject.
const MAX_SUBJECT_BYTES: usize = 998;
/// Longest rendered body.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Why the SMTP transport could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("smtp.url {url}: {source}")]
pub struct MailerError {
    url: String,
    source: lettre::transport::smtp::Error,
}

/// The SMTP transport and defaults; `None` inside when `smtp.url` is empty.
pub struct Mailer {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: String,
    /// `smtp.allowed_from`: addresses and `@domain`s, lowercase.
    allowed_from: Vec<String>,
    /// `smtp://host:port`, the circuit breaker's and the per-endpoint limit's key.
    endpoint: String,
}

impl Mailer {
    /// Build the transport (connections are opened lazily, on the first message).
    pub fn new(config: &SmtpConfig) -> Result<Self, MailerError> {
        if config.url.is_empty() {
            return Ok(Mailer {
                transport: None,
                from: config.from.clone(),
                allowed_from: lowercase(&config.allowed_from),
                endpoint: "smtp://unconfigured".to_string(),
            });
        }
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.url)
            .map_err(|source| MailerError {
                url: redact(&config.url),
                source,
            })?
            .timeout(Some(Duration::from_millis(config.timeout_ms)))
            .build();
        let endpoint = match url::Url::parse(&config.url) {
            Ok(u) => format!(
                "{}://{}:{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                // lettre's defaults: 465 for smtps, 587 for STARTTLS (tls=required), else 25.
                u.port().unwrap_or(if u.scheme() == "smtps" {
                    465
                } else if u.query_pairs().any(|(k, v)| k == "tls" && v == "required") {
                    587
                } else {
                    25
                })
            ),
            Err(_) => "smtp://invalid".to_string(),
        };
        Ok(Mailer {
            transport: Some(transport),
            from: config.from.clone(),
            allowed_from: lowercase(&config.allowed_from),
            endpoint,
        })
    }

    /// Ok when this worker may send as `from` (an action's sender): `smtp.from` itself, an
    /// address of `smtp.allowed_from`, or one in a domain listed there as `@domain`. Whoever
    /// defines observers chooses `from`; without this check they could send as anyone through
    /// the company's SMTP server.
    pub fn check_sender(&self, from: &str) -> Result<(), String> {
        let address = |text: &str| {
            text.parse::<Mailbox>()
                .ok()
                .map(|m| m.email.to_string().to_ascii_lowercase())
        };
        let Some(wanted) = address(from) else {
            return Err(format!("sender {from:?} is not an address"));
        };
        let domain = wanted
            .rsplit_once('@')
            .map(|(_, d)| format!("@{d}"))
            .unwrap_or_default();
        let allowed = address(&self.from).as_deref() == Some(wanted.as_str())
            || self
                .allowed_from
                .iter()
                .any(|a| *a == wanted || *a == domain);
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "sender {wanted:?} is not allowed by this worker (smtp.from or smtp.allowed_from): the e-mail is not sent"
            ))
        }
    }

    /// The SMTP server as an endpoint key.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Render and send one job's e-mail.
    pub async fn deliver(&self, action: &EmailAction, job: &ClaimedJob) -> Attempted {
        let Some(transport) = &self.transport else {
            return Outcome::Retry {
                error: "e-mail is not configured in this worker: set smtp.url (FRAISEQL_OBSERVERS_SMTP__URL)".to_string(),
                not_before: None,
                endpoint_fault: false,
            }
            .into();
        };
        let message = match self.message(action, job) {
            Ok(m) => m,
            Err(error) => {
                return Outcome::Discard {
                    error,
                    pause: false,
                }
                .into()
            }
        };
        match transport.send(message).await {
            Ok(response) => Attempted {
                outcome: Outcome::Delivered,
                status: reply_code(&response.code()),
            },
            Err(e) => {
                let status = e.status().as_ref().and_then(reply_code);
                let outcome = if e.is_permanent() {
                    Outcome::Discard {
                        error: printable(&format!("SMTP server refused the message for good: {e}")),
                        pause: false,
                    }
                } else {
                    Outcome::Retry {
                        error: printable(&format!("SMTP: {}", with_sources(&e))),
                        not_before: None,
                        endpoint_fault: true,
                    }
                };
                Attempted { outcome, status }
            }
        }
    }

    /// The message for this job's event, or why there is none.
    pub fn message(&self, action: &EmailAction, job: &ClaimedJob) -> Result<Message, String> {
        let document: serde_json::Value = serde_json::from_str(&job.payload)
            .map_err(|e| format!("the job's payload is not JSON: {e}"))?;
        let ctx = template::context(&document);
        let render = |field: &str, source: &str, max: usize| {
            template::render(source, &ctx, Escape::None, max)
                .map_err(|e| format!("action.{field}: {e}"))
        };
        let from = action.from.as_deref().unwrap_or(&self.from);
        let from: Mailbox = from
            .parse()
            .map_err(|e| format!("sender {from:?} is not an address: {e}"))?;
        let subject = render("subject", &action.subject, MAX_SUBJECT_BYTES)?;
        // One line: a header cannot carry a line break (header injection).
        let subject = subject.split_whitespace().collect::<Vec<_>>().join(" ");
        let body = render("body", &action.body, MAX_BODY_BYTES)?;
        let mut builder = Message::builder()
            .from(from)
            .subject(subject)
            .message_id(Some(format!(
                "<{}@fraiseql-observers>",
                job.idempotency_key
            )))
            .header(ContentType::TEXT_PLAIN);
        for (i, to) in action.to.iter().enumerate() {
            let address = render(&format!("to[{i}]"), to, 998)?;
            let address = address.trim();
            let mailbox: Mailbox = address
                .parse()
                .map_err(|e| format!("action.to[{i}] rendered {address:?}, not an address: {e}"))?;
            builder = builder.to(mailbox);
        }
        builder
            .body(body)
            .map_err(|e| format!("cannot build the message: {e}"))
    }
}

fn lowercase(list: &[String]) -> Vec<String> {
    list.iter().map(|a| a.trim().to_ascii_lowercase()).collect()
}

/// An SMTP reply code as a number (250, 550).
fn reply_code(code: &lettre::transport::smtp::response::Code) -> Option<u16> {
    code.to_string().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailer() -> Mailer {
        Mailer::new(&SmtpConfig {
            url: "smtp://127.0.0.1:2525".to_string(),
            from: "Observers <obs@example.com>".to_string(),
            allowed_from: vec![
                "shop@example.com".to_string(),
                "@Mail.Example.org".to_string(),
            ],
            timeout_ms: 1000,
        })
        .expect("mailer")
    }

    fn job(payload: &str) -> ClaimedJob {
        ClaimedJob {
            job_id: 1,
            token: 1,
            attempt: 1,
            observer: "o".to_string(),
            action: String::new(),
            idempotency_key: "evt_1024_1".to_string(),
            payload: payload.to_string(),
            event_at: 0.0,
        }
    }

    fn action(json: &str) -> EmailAction {
        match fraiseql_observers_core::Action::parse(json).expect("valid") {
            fraiseql_observers_core::Action::Email(e) => e,
            other => panic!("not email: {other:?}"),
        }
    }

    const PAYLOAD: &str = r#"{"type":"o","data":{"op":"INSERT","new":{"id":5,"email":"ada@example.com","note":"a\r\nBcc: evil@x.test"}}}"#;

    // The pooled transport starts a task when built: these run inside a runtime.
    #[tokio::test]
    async fn builds_the_message_from_templates() {
        let m = mailer()
            .message(
                &action(
                    r#"{"type":"email","to":["ops@example.com","{{ new.email }}"],"subject":"Order {{ new.id }} {{ new.note }}","body":"Hello,\nline 2 {{ op }}"}"#,
                ),
                &job(PAYLOAD),
            )
            .expect("message");
        let text = String::from_utf8(m.formatted()).expect("utf8");
        assert!(
            text.contains("From: Observers <obs@example.com>\r\n"),
            "{text}"
        );
        assert!(
            text.contains("To: ops@example.com, ada@example.com\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Subject: Order 5 a Bcc: evil@x.test\r\n"),
            "the subject is one line: {text}"
        );
        assert!(!text.contains("\r\nBcc:"), "{text}");
        assert!(
            text.contains("Message-ID: <evt_1024_1@fraiseql-observers>\r\n"),
            "{text}"
        );
        assert!(text.contains("Hello,\r\nline 2 INSERT"), "{text}");
    }

    /// Regression (review F08): an action's `from` was free, so whoever defined observers could
    /// send as anyone through the SMTP server.
    #[tokio::test]
    async fn senders_are_bound_to_the_configuration() {
        let m = mailer();
        assert_eq!(m.check_sender("obs@example.com"), Ok(()));
        assert_eq!(m.check_sender("Shop <Shop@Example.com>"), Ok(()));
        assert_eq!(m.check_sender("news@mail.example.org"), Ok(()));
        let e = m
            .check_sender("CEO <ceo@example.com>")
            .expect_err("not listed");
        assert!(e.contains("\"ceo@example.com\" is not allowed"), "{e}");
        assert!(m.check_sender("x@sub.mail.example.org").is_err());
        assert!(m.check_sender("x@evil-mail.example.org").is_err());
        assert!(m.check_sender("nobody").is_err());
    }

    #[tokio::test]
    async fn a_recipient_that_renders_to_no_address_is_refused() {
        let e = mailer()
            .message(
                &action(r#"{"type":"email","to":["{{ new.missing }}"],"subject":"s","body":"b"}"#),
                &job(PAYLOAD),
            )
            .expect_err("empty address");
        assert!(e.starts_with("action.to[0] rendered \"\""), "{e}");
    }
}
