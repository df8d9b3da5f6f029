//! Per-endpoint circuit breakers (in this worker process): Closed → Open after
//! `failure_threshold` consecutive endpoint faults → Half-open after `open_ms` (one probe
//! delivery) → Closed on its success, Open again on its failure. While a breaker is open (or its
//! probe is out), jobs for the endpoint are snoozed back to the queue without using an attempt,
//! so a dead endpoint burns no retries and holds no delivery slots.
//!
//! This file is the state machine; [`sync`] shares it: circuits opened by other replicas
//! (through Redis), transitions published to them, and the breakers reported to the database for
//! `observer_status()` and the metrics.

pub mod sync;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::db::BreakerRow;
use crate::job::Outcome;

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// What to do with a delivery to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Deliver.
    Allow,
    /// Deliver: it is the half-open probe.
    Probe,
    /// Do not deliver; the job may run again at this time.
    Reject(SystemTime),
}

/// What one delivery says about its endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It answered with success.
    Healthy,
    /// It failed (connection, timeout, 5xx, 429, 408): counts towards opening the circuit.
    Faulty,
    /// Neither: the endpoint is up but refused this request (a 4xx), or nothing was sent (a
    /// snooze, a refusal before sending).
    Neutral,
}

impl Verdict {
    /// What an attempt's outcome says about its endpoint.
    pub fn of(outcome: &Outcome) -> Verdict {
        match outcome {
            Outcome::Delivered => Verdict::Healthy,
            Outcome::Retry {
                endpoint_fault: true,
                ..
            } => Verdict::Faulty,
            Outcome::Retry { .. }
            | Outcome::Discard { .. }
            | Outcome::Snooze { .. }
            | Outcome::Split { .. } => Verdict::Neutral,
        }
    }
}

/// A transition other workers should know about (shared through Redis when configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The circuit opened (or opened again) until this time.
    Opened(SystemTime),
    /// The circuit closed (a probe succeeded).
    Closed,
}

/// The breakers of every endpoint this worker delivers to.
pub struct Breakers {
    threshold: u32,
    open_for: Duration,
    states: Mutex<HashMap<String, State>>,
}

impl Breakers {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Breakers {
            threshold,
            open_for,
            states: Mutex::default(),
        }
    }

    /// Until when `endpoint`'s circuit is open, without changing anything (no probe is started):
    /// None when it is closed, or open past its time (the next `before` decides on a probe).
    pub fn open_until(&self, endpoint: &str) -> Option<SystemTime> {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        match states.get(endpoint) {
            Some(State::Open { until }) if Instant::now() < *until => {
                Some(SystemTime::now() + (*until - Instant::now()))
            }
            _ => None,
        }
    }

    /// Before a delivery to `endpoint`.
    pub fn before(&self, endpoint: &str) -> Decision {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let state = states
            .entry(endpoint.to_string())
            .or_insert(State::Closed { failures: 0 });
        match *state {
            State::Closed { .. } => Decision::Allow,
            State::Open { until } if Instant::now() < until => {
                Decision::Reject(SystemTime::now() + (until - Instant::now()))
            }
            State::Open { .. } => {
                *state = State::HalfOpen;
                tracing::info!(endpoint, "circuit half-open: sending one probe");
                Decision::Probe
            }
            // The probe is out: the others wait for its verdict.
            State::HalfOpen => {
                Decision::Reject(SystemTime::now() + self.open_for.min(Duration::from_secs(1)))
            }
        }
    }

    /// After a delivery to `endpoint`, with what it said about the endpoint. Returns the
    /// transition, if the circuit opened or closed.
    pub fn after(&self, endpoint: &str, verdict: Verdict) -> Option<Change> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let state = states
            .entry(endpoint.to_string())
            .or_insert(State::Closed { failures: 0 });
        let next = match (*state, verdict) {
            (_, Verdict::Healthy) => State::Closed { failures: 0 },
            (State::HalfOpen, Verdict::Faulty) => State::Open {
                until: Instant::now() + self.open_for,
            },
            (State::Closed { failures }, Verdict::Faulty) if failures + 1 >= self.threshold => {
                State::Open {
                    until: Instant::now() + self.open_for,
                }
            }
            (State::Closed { failures }, Verdict::Faulty) => State::Closed {
                failures: failures + 1,
            },
            // A probe that was neither leaves the breaker half-open for the next probe.
            (State::HalfOpen, Verdict::Neutral) => State::Open {
                until: Instant::now(),
            },
            (s, _) => s,
        };
        let change = match (*state, next) {
            (State::Closed { .. }, State::Open { until }) => {
                tracing::warn!(
                    endpoint,
                    seconds = self.open_for.as_secs_f64(),
                    "circuit open: endpoint failing, its jobs wait without using attempts"
                );
                Some(Change::Opened(wall_clock(until)))
            }
            (State::HalfOpen, State::Open { until }) if verdict == Verdict::Faulty => {
                tracing::warn!(endpoint, "circuit open again: probe failed");
                Some(Change::Opened(wall_clock(until)))
            }
            (State::HalfOpen, State::Closed { .. }) => {
                tracing::info!(endpoint, "circuit closed: probe succeeded");
                Some(Change::Closed)
            }
            _ => None,
        };
        *state = next;
        change
    }

    /// Another worker opened `endpoint`'s circuit until `until`: open it here too (a closed
    /// circuit, or one open until earlier). Returns whether anything changed.
    pub fn open_remote(&self, endpoint: &str, until: SystemTime) -> bool {
        let Ok(left) = until.duration_since(SystemTime::now()) else {
            return false;
        };
        let until = Instant::now() + left;
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let state = states
            .entry(endpoint.to_string())
            .or_insert(State::Closed { failures: 0 });
        match *state {
            State::Closed { .. } => {
                tracing::warn!(
                    endpoint,
                    seconds = left.as_secs_f64(),
                    "circuit open: opened by another worker"
                );
                *state = State::Open { until };
                true
            }
            State::Open { until: mine } if mine + Duration::from_millis(100) < until => {
                *state = State::Open { until };
                true
            }
            _ => false,
        }
    }

    /// Whether this worker has a circuit for `endpoint` yet (it has delivered to it, or learnt
    /// that another worker opened it).
    pub fn knows(&self, endpoint: &str) -> bool {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.contains_key(endpoint)
    }

    /// Make `endpoint` known (closed) if it is not: the periodic sync follows it from now on.
    pub fn track(&self, endpoint: &str) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states
            .entry(endpoint.to_string())
            .or_insert(State::Closed { failures: 0 });
    }

    /// Every endpoint this worker knows.
    pub fn endpoints(&self) -> Vec<String> {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.keys().cloned().collect()
    }

    /// Every endpoint's state as reported to the database.
    pub fn report(&self) -> Vec<BreakerRow> {
        self.snapshot()
            .into_iter()
            .map(|(endpoint, state)| {
                let (state, failures, open_until) = match state {
                    State::Closed { failures } => {
                        ("closed", i32::try_from(failures).unwrap_or(i32::MAX), None)
                    }
                    State::Open { until } => ("open", 0, Some(wall_clock(until))),
                    State::HalfOpen => ("half_open", 0, None),
                };
                BreakerRow {
                    endpoint,
                    state,
                    failures,
                    open_until,
                }
            })
            .collect()
    }

    /// Every endpoint's state, for reporting.
    pub fn snapshot(&self) -> Vec<(String, State)> {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<(String, State)> = states.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// An `Instant` in the future as wall-clock time (for other processes).
fn wall_clock(at: Instant) -> SystemTime {
    SystemTime::now() + at.saturating_duration_since(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_and_closes() {
        let b = Breakers::new(3, Duration::from_millis(50));
        let e = "http://x:80";
        for _ in 0..2 {
            assert_eq!(b.before(e), Decision::Allow);
            b.after(e, Verdict::Faulty);
        }
        b.after(e, Verdict::Neutral); // a 4xx neither opens nor resets
        assert_eq!(b.before(e), Decision::Allow);
        assert!(matches!(
            b.after(e, Verdict::Faulty),
            Some(Change::Opened(_))
        )); // third fault: open
        assert!(matches!(b.before(e), Decision::Reject(_)));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.before(e), Decision::Probe);
        assert!(
            matches!(b.before(e), Decision::Reject(_)),
            "one probe at a time"
        );
        b.after(e, Verdict::Faulty); // probe failed: open again
        assert!(matches!(b.before(e), Decision::Reject(_)));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.before(e), Decision::Probe);
        assert_eq!(b.after(e, Verdict::Healthy), Some(Change::Closed)); // probe succeeded: closed
        assert_eq!(b.before(e), Decision::Allow);
        assert_eq!(
            b.snapshot(),
            vec![(e.to_string(), State::Closed { failures: 0 })]
        );
    }

    #[test]
    fn a_circuit_opened_elsewhere_opens_here() {
        let b = Breakers::new(5, Duration::from_millis(50));
        let e = "http://z:80";
        assert!(b.open_remote(e, SystemTime::now() + Duration::from_secs(30)));
        assert!(matches!(b.before(e), Decision::Reject(_)));
        assert!(
            !b.open_remote(e, SystemTime::now() + Duration::from_secs(1)),
            "an earlier deadline changes nothing"
        );
        assert!(!b.open_remote("http://past:80", SystemTime::now() - Duration::from_secs(1)));
        assert!(
            !b.knows("http://past:80"),
            "a deadline already past opens nothing"
        );
        assert!(b.knows(e));
        assert!(!b.knows("http://new:80"));
        let _ = b.before("http://new:80");
        assert!(
            b.knows("http://new:80"),
            "a delivery makes the endpoint known"
        );
        b.track("http://read:80");
        assert!(b.knows("http://read:80"));
        assert!(b.open_until("http://read:80").is_none(), "tracked closed");
    }

    #[test]
    fn open_until_reads_without_starting_a_probe() {
        let b = Breakers::new(1, Duration::from_millis(50));
        let e = "http://w:80";
        assert_eq!(b.open_until(e), None, "unknown endpoint: closed");
        b.after(e, Verdict::Faulty);
        assert!(b.open_until(e).is_some(), "open after the fault");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            b.open_until(e),
            None,
            "open past its time: no longer holds jobs back"
        );
        assert_eq!(b.open_until(e), None, "asking twice starts nothing");
        assert_eq!(
            b.before(e),
            Decision::Probe,
            "the probe is still the next delivery's"
        );
    }

    #[test]
    fn outcomes_give_verdicts_on_their_endpoint() {
        let retry = |endpoint_fault| Outcome::Retry {
            error: "x".into(),
            not_before: None,
            endpoint_fault,
        };
        assert_eq!(Verdict::of(&Outcome::Delivered), Verdict::Healthy);
        assert_eq!(Verdict::of(&retry(true)), Verdict::Faulty);
        assert_eq!(Verdict::of(&retry(false)), Verdict::Neutral, "a 4xx");
        let gone = Outcome::Discard {
            error: "410".into(),
            pause: true,
        };
        assert_eq!(Verdict::of(&gone), Verdict::Neutral);
        let snoozed = Outcome::Snooze {
            until: SystemTime::now(),
            reason: "limit".into(),
        };
        assert_eq!(Verdict::of(&snoozed), Verdict::Neutral);
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breakers::new(2, Duration::from_secs(60));
        let e = "http://y:80";
        b.after(e, Verdict::Faulty);
        b.after(e, Verdict::Healthy);
        b.after(e, Verdict::Faulty);
        assert_eq!(b.before(e), Decision::Allow, "faults must be consecutive");
    }
}
