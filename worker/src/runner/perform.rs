//! Performing one claimed job: its action is parsed, its secrets resolved, the job refused at
//! once if it can never be sent as it is; otherwise it passes its endpoint's gates (circuit
//! breaker, in-flight limit, rate limit) and the action runs ([`crate::actions`]). What the
//! attempt says about the endpoint goes to its breaker.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fraiseql_observers_core::action::{NATS_DEFAULT_PORT, REDIS_DEFAULT_PORT};
use fraiseql_observers_core::{Action, ActionError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::actions::{http, nats, redis_stream, server, slack, webhook};
use crate::breaker::{self, Verdict};
use crate::job::{self, Attempted, ClaimedJob, Outcome};
use crate::ratelimit::Slot;
use crate::secrets::{self, Wire};
use crate::signing::SigningKey;

use super::Context;

/// Longest a delivery waits for a free slot of its endpoint (`http.max_in_flight_per_endpoint`)
/// before its job goes back to the queue: long enough for a fast endpoint's slot to free, short
/// enough that jobs for a slow endpoint do not hold the worker's slots.
const ENDPOINT_WAIT: Duration = Duration::from_millis(250);
/// Longest a delivery waits in its slot for a rate-limited endpoint; a later slot sends the job
/// back to the queue (no attempt used) instead.
const MAX_RATE_WAIT: Duration = Duration::from_secs(1);

/// Perform one job's action, under its endpoint's circuit breaker and in-flight limit.
/// Returns the attempt and the endpoint it was for (when the action is valid).
pub(super) async fn perform(
    ctx: &Context,
    job: &ClaimedJob,
    action: Result<Action, ActionError>,
) -> (Attempted, Option<String>) {
    let action = match action {
        Ok(a) => a,
        Err(e) => {
            let invalid = Outcome::Retry {
                error: format!("the observer's action is invalid: {e}"),
                not_before: None,
                endpoint_fault: false,
            };
            return (invalid.into(), None);
        }
    };
    // References to secrets are resolved here, right before the request, and nowhere else; one
    // that cannot be never counts against the endpoint (nothing was sent).
    let wire = match secrets::resolve(&ctx.config, &action) {
        Ok(wire) => wire,
        Err(unresolved) => return (unresolved.outcome().into(), unresolved.endpoint()),
    };
    let endpoint = match &action {
        Action::Email(_) => ctx.mailer.endpoint().to_string(),
        Action::Nats(_) => server::endpoint(&wire.url, NATS_DEFAULT_PORT),
        Action::RedisStream(_) => server::endpoint(&wire.url, REDIS_DEFAULT_PORT),
        _ => job::endpoint(&wire.url),
    };
    // A job that can never be sent as it is goes to the dead-letter queue before anything
    // touches its endpoint: the job's fault never counts against the endpoint's breaker.
    if let Err(error) = refuse_job(ctx, job, &action, &wire.url) {
        let refused = Outcome::Discard {
            error,
            pause: false,
        };
        return (refused.into(), Some(endpoint));
    }
    let attempted = match pass_gates(ctx, &endpoint).await {
        Ok(_slot) => {
            let attempted = act(ctx, job, &action, &wire, &endpoint).await;
            let verdict = Verdict::of(&attempted.outcome);
            breaker::sync::record(&ctx.breakers, &ctx.shared, &endpoint, verdict).await;
            attempted
        }
        Err(held_back) => held_back,
    };
    (attempted, Some(endpoint))
}

/// Why this job must not be sent at all, or Ok: its idempotency key cannot be a header value
/// (chosen by whoever enqueued it), its signing secret is not bound to its URL, or its e-mail
/// sender is not one the worker's configuration allows. A secret that is not configured at all
/// is left to [`signing_keys`], which retries (the operator may be adding it).
fn refuse_job(ctx: &Context, job: &ClaimedJob, action: &Action, url: &str) -> Result<(), String> {
    http::check_key(&job.idempotency_key)?;
    match action {
        Action::Webhook(w) => {
            let Some(name) = &w.secret else { return Ok(()) };
            match ctx.config.secret(name) {
                // A credential named here is not a signing secret: reported at delivery.
                Some(secret) if !secret.keys.is_empty() && !secret.may_sign_for(url) => Err(format!(
                    "signing secret {name:?} is not bound to {}: its destinations (secrets.{}.destinations) do not cover this URL; the request is neither signed nor sent",
                    job::endpoint(url),
                    name.to_ascii_lowercase()
                )),
                _ => Ok(()),
            }
        }
        Action::Email(e) => match &e.from {
            Some(from) => ctx.mailer.check_sender(from),
            None => Ok(()),
        },
        // Their server passes the network policy when the connection is made (`actions::server`).
        Action::Slack(_) | Action::Nats(_) | Action::RedisStream(_) => Ok(()),
    }
}

/// The endpoint's gates, in order: its circuit (an open one sends the job back at once, without
/// waiting for a slot: a hanging endpoint's slots stay taken until its requests time out), a
/// slot of its in-flight limit, its breaker's decision as it is once the slot is held, and its
/// rate limit. Ok with the slot (held until the attempt ends), or the outcome of a job held back
/// without using an attempt.
async fn pass_gates(ctx: &Context, endpoint: &str) -> Result<OwnedSemaphorePermit, Attempted> {
    let circuit_open = |until| -> Attempted {
        Outcome::Snooze {
            until,
            reason: format!("circuit open for {endpoint}"),
        }
        .into()
    };
    breaker::sync::learn(&ctx.breakers, &ctx.shared, endpoint).await;
    if let Some(until) = ctx.breakers.open_until(endpoint) {
        return Err(circuit_open(until));
    }
    // Per-endpoint limit: a job whose endpoint stays saturated goes back to the queue (no attempt
    // used) after a short wait instead of holding one of the global slots, so a slow endpoint
    // cannot starve the others.
    let Some(slot) = ctx.endpoints.enter(endpoint, ENDPOINT_WAIT).await else {
        return Err(Outcome::Snooze {
            until: SystemTime::now() + ctx.config.http.endpoint_retry(),
            reason: format!(
                "{endpoint} has {} deliveries in flight (http.max_in_flight_per_endpoint)",
                ctx.config.http.max_in_flight_per_endpoint
            ),
        }
        .into());
    };
    if let breaker::Decision::Reject(until) = ctx.breakers.before(endpoint) {
        return Err(circuit_open(until));
    }
    if let Some(&rate) = ctx.config.rate_limits.get(endpoint) {
        let taken = match ctx.shared.take_slot(endpoint, rate, MAX_RATE_WAIT).await {
            Some(taken) => taken,
            None => ctx.local_limits.take(endpoint, rate, MAX_RATE_WAIT),
        };
        match taken {
            Slot::Wait(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
            Slot::Wait(_) => {}
            Slot::Busy(after) => {
                // The breaker let a delivery through that will not happen: it learns nothing.
                ctx.breakers.after(endpoint, Verdict::Neutral);
                return Err(Outcome::Snooze {
                    until: SystemTime::now() + after,
                    reason: format!("{endpoint} is at its rate limit ({rate}/s)"),
                }
                .into());
            }
        }
    }
    Ok(slot)
}

/// The attempt itself, by action type.
async fn act(
    ctx: &Context,
    job: &ClaimedJob,
    action: &Action,
    wire: &Wire,
    endpoint: &str,
) -> Attempted {
    let cap = ctx.config.http.error_body_bytes;
    match action {
        Action::Webhook(w) => match signing_keys(ctx, w.secret.as_deref()) {
            Ok(keys) => {
                webhook::deliver(&ctx.http, w, wire, job, keys.as_deref(), &ctx.allow, cap).await
            }
            Err(error) => {
                // Not sent unsigned: retried (then dead-lettered, replayable) until the operator
                // configures the secret. The breaker learns nothing: nothing was sent.
                ctx.breakers.after(endpoint, Verdict::Neutral);
                Outcome::Retry {
                    error,
                    not_before: None,
                    endpoint_fault: false,
                }
                .into()
            }
        },
        Action::Slack(s) => slack::deliver(&ctx.http, s, wire, job, &ctx.allow, cap).await,
        Action::Email(e) => ctx.mailer.deliver(e, job).await,
        Action::Nats(n) => nats::deliver(&ctx.nats, n, wire, job, &ctx.allow).await,
        Action::RedisStream(r) => {
            let prefix = &ctx.config.redis.key_prefix;
            redis_stream::deliver(&ctx.redis_streams, r, wire, job, &ctx.allow, prefix).await
        }
    }
}

/// The signing keys of a webhook's `secret` (None when it names none), or why it cannot be
/// signed: the secret is not configured in this worker, or is a credential, not a signing key.
fn signing_keys(ctx: &Context, secret: Option<&str>) -> Result<Option<Vec<SigningKey>>, String> {
    let Some(name) = secret else { return Ok(None) };
    if let Some(keys) = ctx.config.signing_keys(name) {
        return Ok(Some(keys));
    }
    Err(if ctx.config.secret(name).is_some() {
        format!("signing secret {name:?} is a credential (value) in this worker, not a signing secret: give the signing key its own [secrets.<name>] with keys = [\"whsec_...\"] and name that in action.secret")
    } else {
        format!(
            "signing secret {name:?} is not configured in this worker ([secrets] or FRAISEQL_OBSERVERS_SECRETS__{})",
            name.to_ascii_uppercase()
        )
    })
}

/// In-flight deliveries per endpoint, with a limit: one semaphore per endpoint (endpoints come
/// from observer definitions, so the map stays small).
pub(super) struct EndpointSlots {
    limit: u32,
    slots: std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
}

impl EndpointSlots {
    pub(super) fn new(limit: u32) -> Self {
        EndpointSlots {
            limit,
            slots: std::sync::Mutex::default(),
        }
    }

    /// A slot for `endpoint`, waiting up to `wait` for one; None when it stays at the limit.
    /// Released on drop.
    async fn enter(&self, endpoint: &str, wait: Duration) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .entry(endpoint.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.limit as usize)))
                .clone()
        };
        // A free slot is taken at once: the timeout polls the acquisition before its timer.
        tokio::time::timeout(wait, semaphore.acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::EndpointSlots;
    use std::time::Duration;

    #[tokio::test]
    async fn slots_are_limited_per_endpoint_waited_for_and_released_on_drop() {
        let slots = EndpointSlots::new(2);
        let short = Duration::from_millis(20);
        let a1 = slots.enter("http://a:80", short).await.expect("first");
        let _a2 = slots.enter("http://a:80", short).await.expect("second");
        assert!(
            slots.enter("http://a:80", short).await.is_none(),
            "a is full"
        );
        assert!(
            slots.enter("http://b:80", short).await.is_some(),
            "b is not"
        );
        // A slot freed while a delivery waits goes to it.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(a1);
        });
        assert!(
            slots
                .enter("http://a:80", Duration::from_secs(5))
                .await
                .is_some(),
            "a slot freed during the wait is taken"
        );
        release.await.expect("release");
    }
}
