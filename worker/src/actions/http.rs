//! The HTTP client every HTTP action shares (webhook, Slack) and the classification of its
//! responses into outcomes. Redirects are never followed (a 3xx is a failure: the endpoint must
//! be configured with its final URL), no proxy is used, every resolved address passes the network
//! policy (SSRF guard), and a failed response's body is read only up to a cap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fraiseql_observers_core::net;
use fraiseql_observers_core::text::{printable, with_sources};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderValue, RETRY_AFTER};

use crate::job::{Attempted, Outcome};

/// Resolves host names for the HTTP client and keeps only the addresses the network policy
/// allows (SSRF guard): the check happens on the very addresses the connection will use, so a
/// DNS answer that changes between two lookups (rebinding) cannot get past it.
struct GuardedResolver {
    allow: Arc<Vec<net::Cidr>>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match net::check(a.ip(), &allow) {
                    Ok(()) => true,
                    Err(reason) => {
                        refused = Some((a.ip(), reason));
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = match refused {
                    Some((ip, reason)) => format!(
                        "{host} resolves to {ip}, a {reason} address: refused by the network policy (http.allow_networks)"
                    ),
                    None => format!("{host} has no address"),
                };
                return Err(why.into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// Build the HTTP client shared by all HTTP deliveries (webhook and Slack actions).
///
/// It never uses a proxy from the environment (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`):
/// through a proxy the resolver above would check only the proxy's address, and the proxy would
/// reach the destination, internal or not, on our behalf.
pub fn client(user_agent: &str, allow: Vec<net::Cidr>) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .no_proxy()
        .user_agent(user_agent)
        .dns_resolver(Arc::new(GuardedResolver {
            allow: Arc::new(allow),
        }))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
}

/// Why a job's idempotency key cannot be its `webhook-id` header (or its e-mail's Message-ID),
/// or Ok. Keys of enqueued jobs are chosen by the `app` role: such a key is the job's fault, never
/// the endpoint's, so it is checked before any request is built.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the job's idempotency key (webhook-id) is empty".to_string());
    }
    // Stricter than HTTP (which allows a tab and C1 bytes): no control character at all.
    if HeaderValue::from_str(key).is_ok() && !key.chars().any(char::is_control) {
        return Ok(());
    }
    let (at, c) = key
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control())
        .unwrap_or((0, '?'));
    Err(format!(
        "the job's idempotency key (webhook-id) cannot be a header value: it holds the control character {} at position {at}; enqueue it again with a key of visible characters",
        c.escape_default()
    ))
}

/// The refusal of a URL written with a literal address the network policy forbids (such an
/// address never reaches the client's resolver, which checks every resolved one).
pub fn refuse_literal(url: &str, allow: &[net::Cidr]) -> Option<Outcome> {
    let ip = net::literal_host_of(url)?;
    let reason = net::check(ip, allow).err()?;
    Some(Outcome::Retry {
        error: format!(
            "{ip} is a {reason} address: refused by the network policy (http.allow_networks)"
        ),
        not_before: None,
        endpoint_fault: false,
    })
}

/// Send a prepared request and classify the response: 2xx delivered; 410 discarded and the
/// endpoint paused; 429/503 `Retry-After` honoured; 5xx, 408, 429, timeouts and connection
/// errors count against the endpoint's breaker; a failed response's body is read up to a cap.
pub async fn send(request: reqwest::RequestBuilder, error_body_bytes: usize) -> Attempted {
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Retry {
                error: describe_send_error(e),
                not_before: None,
                endpoint_fault: true,
            }
            .into()
        }
    };
    let status = response.status();
    let answered = |outcome| Attempted {
        outcome,
        status: Some(status.as_u16()),
    };
    if status.is_success() {
        return answered(Outcome::Delivered);
    }
    let not_before = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let excerpt = read_capped(response, error_body_bytes).await;
    let error = if excerpt.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {excerpt}", status.as_u16())
    };
    if status == reqwest::StatusCode::GONE {
        return answered(Outcome::Discard { error, pause: true });
    }
    let endpoint_fault = status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT;
    answered(Outcome::Retry {
        error,
        not_before,
        endpoint_fault,
    })
}

/// `Retry-After` as delay-seconds (the HTTP-date form is not used by webhook receivers we know
/// of and is ignored), capped at one day.
fn parse_retry_after(value: &str) -> Option<SystemTime> {
    let secs: u64 = value.trim().parse().ok()?;
    Some(SystemTime::now() + Duration::from_secs(secs.min(86_400)))
}

/// Read at most `cap` bytes of the body, lossily as UTF-8.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < cap {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk[..chunk.len().min(cap - buf.len())]),
            _ => break,
        }
    }
    // Control characters are escaped (the text reaches logs, last_error and terminals), NUL
    // included: Postgres text cannot hold it, and one would fail the whole batch of reports.
    printable(String::from_utf8_lossy(&buf).trim())
}

fn describe_send_error(e: reqwest::Error) -> String {
    let e = &e.without_url();
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // Never the URL: it can carry a credential (Slack's incoming-webhook URLs are one), and
    // this text is stored on the job and logged. The source chain carries the useful part
    // ("Connection refused").
    format!("{kind}: {}", with_sources(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a NUL byte in an endpoint's error body made Postgres reject the whole batch
    /// of failure reports.
    #[tokio::test]
    async fn error_excerpts_never_carry_nul_bytes() {
        let response = reqwest::Response::from(
            http::Response::builder()
                .status(500)
                .body("bad\0body")
                .expect("response"),
        );
        assert_eq!(read_capped(response, 100).await, "bad\\u{0}body");
    }

    /// Regression (review F18): newlines and escape sequences of an endpoint's error body
    /// reached the logs, last_error and the CLI as they were.
    #[tokio::test]
    async fn error_excerpts_carry_no_control_characters() {
        let response = reqwest::Response::from(
            http::Response::builder()
                .status(500)
                .body("oops\r\n2026-01-01 INFO forged\u{1b}[31m")
                .expect("response"),
        );
        let excerpt = read_capped(response, 100).await;
        assert_eq!(excerpt, "oops\\r\\n2026-01-01 INFO forged\\u{1b}[31m");
        assert!(!excerpt.chars().any(char::is_control), "{excerpt:?}");
    }

    /// Regression (review F11): a key with a control character failed at send() and counted as
    /// an endpoint fault; it is now refused before any request exists.
    #[test]
    fn keys_that_cannot_be_header_values_are_refused() {
        assert_eq!(check_key("evt_12_3"), Ok(()));
        assert_eq!(check_key("order 5 / é"), Ok(()));
        let e = check_key("bad\nkey").expect_err("newline");
        assert!(e.contains("\\n at position 3"), "{e}");
        assert!(check_key("a\rb").is_err());
        assert!(check_key("a\u{7f}").is_err());
        assert!(check_key("a\tb").is_err());
        assert!(check_key("a\u{85}b").is_err());
        assert!(check_key("").is_err());
    }

    #[test]
    fn retry_after_seconds_are_honoured_and_capped() {
        let now = SystemTime::now();
        let t = parse_retry_after(" 30 ").expect("seconds");
        assert!(t >= now + Duration::from_secs(29));
        let capped = parse_retry_after("999999999").expect("seconds");
        assert!(capped <= SystemTime::now() + Duration::from_secs(86_401));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
