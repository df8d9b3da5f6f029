//! What every action works on and returns: the claimed job (as `observer_claim` hands it out),
//! the outcome of one attempt, and what the worker reports back (a failure, the audit columns).
//! Below every other worker module: actions, secrets, the database session and the runner all
//! speak these types, so none of them has to import another to say what happened.

use std::time::SystemTime;

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx: the job is done.
    Delivered,
    /// Anything else: retry with the extension's backoff, not before `not_before` if set.
    /// `endpoint_fault`: the endpoint itself failed (connection, timeout, 5xx, 429, 408), which
    /// counts towards its circuit breaker; a refusal of this request (other 4xx) or a problem on
    /// our side does not.
    Retry {
        error: String,
        not_before: Option<SystemTime>,
        endpoint_fault: bool,
    },
    /// The job can never succeed as it is: end it at once (it goes to the dead-letter queue with
    /// the reason, replayable). `pause`: the endpoint itself is gone (HTTP 410), so the
    /// observer's deliveries are paused too; otherwise only this job is refused (a permanent
    /// SMTP rejection, a recipient that is not an address).
    Discard { error: String, pause: bool },
    /// Not attempted (the endpoint is at its in-flight limit): back to the queue, due at
    /// `until`, without using an attempt.
    Snooze { until: SystemTime, reason: String },
    /// A batch job ([`ClaimedJob::is_batch`]) that cannot go as one request (its observer's
    /// action no longer batches, it is over the action's `max_bytes`, or the receiver refused
    /// its content): given back as jobs of its own events, due at once, without using an
    /// attempt (`observer_split`). The worker's collector then batches those (and bisection
    /// finds an event the receiver refuses). `reason` is for the log.
    Split { reason: String },
}

/// One attempt's outcome and, when the endpoint answered, its status code (HTTP status, SMTP
/// reply code), for the audit trail.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempted {
    pub outcome: Outcome,
    pub status: Option<u16>,
}

impl From<Outcome> for Attempted {
    /// An outcome reached without an answer from the endpoint.
    fn from(outcome: Outcome) -> Self {
        Attempted {
            outcome,
            status: None,
        }
    }
}

/// The endpoint of a URL, as limits are kept: `scheme://host:port` (bounded: no path or query,
/// never a credential). A URL that does not parse is `<scheme>://invalid` ([`invalid_endpoint`]).
pub fn endpoint(url: &str) -> String {
    endpoint_of(url).unwrap_or_else(|| invalid_endpoint(url))
}

/// `scheme://host:port` of a URL that parses, or None.
pub fn endpoint_of(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    Some(format!(
        "{}://{}:{}",
        u.scheme(),
        u.host_str().unwrap_or(""),
        u.port_or_known_default().unwrap_or(0)
    ))
}

/// The endpoint key of an address that does not parse: its scheme when it has one that looks
/// like a scheme, and nothing else of it. Such an address can still hold a credential
/// (`https://user:pass@exa mple.com`), and keys become metric labels, log fields and audit
/// rows, which must stay bounded and carry no secret.
pub fn invalid_endpoint(url: &str) -> String {
    let scheme = url.split_once(':').map(|(s, _)| s).filter(|s| {
        (1..=16).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    });
    match scheme {
        Some(scheme) => format!("{}://invalid", scheme.to_ascii_lowercase()),
        None => "invalid".to_string(),
    }
}

/// A claim held on a job: the job and the fencing token of the claim. Every report on the job
/// carries it; the database refuses one whose token is stale (another worker claimed the job
/// since).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// `observer.jobs.id`.
    pub job_id: i64,
    /// The claim's fencing token.
    pub token: i64,
}

/// A claimed job, as `observer_claim` returns it.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// `observer.jobs.id`.
    pub job_id: i64,
    /// Fencing token of this claim; complete/fail are rejected once it is stale.
    pub token: i64,
    /// 1 for the first attempt.
    pub attempt: i32,
    /// Observer name (a bounded label).
    pub observer: String,
    /// The observer's action, as JSON text.
    pub action: String,
    /// Stable across retries and replays: the `webhook-id`.
    pub idempotency_key: String,
    /// The document to deliver, as JSON text.
    pub payload: String,
    /// When the event was captured (its transaction's start) or the job enqueued, Unix seconds
    /// by the database clock.
    pub event_at: f64,
}

impl ClaimedJob {
    /// Whether this is a batch job: one job the dispatcher made for a full batch of the events
    /// one statement matched. Its payload is the JSON array of their documents (each with its
    /// own `webhook_id`) and its key the batch's `webhook-id`; any other job's document is a
    /// JSON object, so the first character tells them apart without parsing.
    pub fn is_batch(&self) -> bool {
        self.payload.trim_start().starts_with('[')
    }

    /// The claim held on the job.
    pub fn lease(&self) -> Lease {
        Lease {
            job_id: self.job_id,
            token: self.token,
        }
    }
}

/// A delivered job, to complete.
#[derive(Debug, Clone)]
pub struct Completion {
    pub lease: Lease,
    /// For the audit trail.
    pub audit: Audit,
}

/// How a failed job should be retried.
#[derive(Debug, Clone)]
pub struct Failure {
    pub lease: Lease,
    /// What went wrong (stored on the job and its attempt).
    pub error: String,
    /// Earliest retry time demanded by the endpoint (`Retry-After`).
    pub not_before: Option<SystemTime>,
    /// For the audit trail.
    pub audit: Audit,
}

/// A job sent back to the queue without using an attempt (circuit open, endpoint at its limit).
#[derive(Debug, Clone)]
pub struct Snooze {
    pub lease: Lease,
    /// When it is due again.
    pub until: SystemTime,
    /// Why (the job's last error until it runs).
    pub reason: String,
}

/// A job ended at once into the dead-letter queue.
#[derive(Debug, Clone)]
pub struct Discard {
    pub lease: Lease,
    /// Why it can never succeed as it is.
    pub error: String,
    /// The endpoint is gone (HTTP 410): pause the observer too.
    pub pause: bool,
    /// For the audit trail.
    pub audit: Audit,
}

/// What the audit trail records of an attempt besides its outcome.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    /// `scheme://host:port`.
    pub endpoint: Option<String>,
    /// HTTP status or SMTP reply code.
    pub status: Option<i32>,
    /// Time spent on the attempt.
    pub duration_ms: Option<i32>,
}

/// A claimed job of observer `orders` for unit tests: token 7, attempt 1, captured at second `id`.
#[cfg(test)]
pub(crate) fn test_job(id: i64, key: &str, payload: &str) -> ClaimedJob {
    ClaimedJob {
        job_id: id,
        token: 7,
        attempt: 1,
        observer: "orders".into(),
        action: "{}".into(),
        idempotency_key: key.into(),
        payload: payload.into(),
        event_at: id as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_carry_no_path_query_or_credential_even_when_the_url_is_bad() {
        assert_eq!(
            endpoint("https://u:hunter2@hooks.example.com/p?q=1"),
            "https://hooks.example.com:443"
        );
        assert_eq!(endpoint("http://[::1]:8080/x"), "http://[::1]:8080");
        // Not a URL: the scheme at most, never the rest (it may hold a credential).
        assert_eq!(
            endpoint("https://u:hunter2@exa mple.com/"),
            "https://invalid"
        );
        assert_eq!(endpoint("hunter2@example.com"), "invalid");
        // A scheme and a path only (no host): the path is dropped as always.
        assert_eq!(endpoint("tok:en@h"), "tok://:0");
        assert_eq!(endpoint(""), "invalid");
        assert_eq!(endpoint_of("not a url"), None);
    }

    #[test]
    fn a_batch_job_is_told_by_its_array_payload() {
        let job = |payload: &str| test_job(1, "k", payload);
        assert!(job(r#"[{"webhook_id":"evt_1_1"}]"#).is_batch());
        assert!(job(" [] ").is_batch());
        assert!(!job(r#"{"data":[1]}"#).is_batch());
        assert!(!job("{}").is_batch());
    }
}
