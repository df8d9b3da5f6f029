//! How the dispatchers (the background worker in the extension and the external worker) run
//! retention: `observer_prune(max_rows => BATCH)` every `EVERY`, and again on the next round
//! while a call comes back full, so that retention keeps up with any completion rate.

use std::time::Duration;

/// How often a dispatcher prunes old events and completed jobs.
pub const EVERY: Duration = Duration::from_secs(60);

/// Rows one prune call deletes at most (of each kind).
pub const BATCH: i32 = 10_000;

/// Whether a prune call that deleted `events` events and `jobs` jobs left more to do (a batch
/// came back full).
pub fn more_due(events: i64, jobs: i64) -> bool {
    events >= i64::from(BATCH) || jobs >= i64::from(BATCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_batch_of_either_kind_means_more_is_due() {
        assert!(!more_due(0, 0));
        assert!(!more_due(i64::from(BATCH) - 1, 3));
        assert!(more_due(i64::from(BATCH), 0));
        assert!(more_due(0, i64::from(BATCH)));
    }
}
