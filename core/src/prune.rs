//! The one retention schedule of the dispatchers (the background worker in the extension and
//! the external worker): `observer_prune(max_rows => BATCH)` every `EVERY`, and again on the
//! next round while a call comes back full, so that retention keeps up with any completion rate.

use std::time::{Duration, Instant};

/// How often a dispatcher prunes old events and completed jobs.
pub const EVERY: Duration = Duration::from_secs(60);

/// Rows one prune call deletes at most (of each kind).
pub const BATCH: i32 = 10_000;

/// What one `observer_prune` call deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    /// Events deleted.
    pub events: i64,
    /// Finished jobs deleted.
    pub jobs: i64,
}

impl Pruned {
    /// Whether the call left more to do (a batch of either kind came back full).
    pub fn more_due(&self) -> bool {
        self.events >= i64::from(BATCH) || self.jobs >= i64::from(BATCH)
    }
}

/// When a dispatcher prunes: [`EVERY`] after the last call, or at once while the last call came
/// back full.
#[derive(Debug, Clone)]
pub struct Schedule {
    last: Instant,
    backlog: bool,
}

impl Default for Schedule {
    fn default() -> Self {
        Self::new()
    }
}

impl Schedule {
    /// A schedule whose first prune is due [`EVERY`] from now.
    pub fn new() -> Self {
        Schedule {
            last: Instant::now(),
            backlog: false,
        }
    }

    /// Whether a prune is due now; if so it counts as started (call [`Schedule::finished`]
    /// with what it deleted, or nothing when it failed: the next one is then [`EVERY`] away).
    pub fn start_if_due(&mut self) -> bool {
        if !self.backlog && self.last.elapsed() < EVERY {
            return false;
        }
        self.last = Instant::now();
        self.backlog = false;
        true
    }

    /// What the prune started by [`Schedule::start_if_due`] deleted.
    pub fn finished(&mut self, pruned: Pruned) {
        self.backlog = pruned.more_due();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_batch_of_either_kind_means_more_is_due() {
        let p = |events, jobs| Pruned { events, jobs };
        assert!(!p(0, 0).more_due());
        assert!(!p(i64::from(BATCH) - 1, 3).more_due());
        assert!(p(i64::from(BATCH), 0).more_due());
        assert!(p(0, i64::from(BATCH)).more_due());
    }

    #[test]
    fn the_schedule_waits_a_period_unless_the_last_call_was_full() {
        let mut s = Schedule::new();
        assert!(!s.start_if_due(), "not due right after start");
        s.last = Instant::now() - EVERY;
        assert!(s.start_if_due(), "due after a period");
        assert!(!s.start_if_due(), "started: not due again at once");
        s.finished(Pruned {
            events: i64::from(BATCH),
            jobs: 0,
        });
        assert!(s.start_if_due(), "a full batch: due on the next round");
        s.finished(Pruned::default());
        assert!(!s.start_if_due(), "a partial batch: wait a period");
    }
}
