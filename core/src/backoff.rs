//! The one exponential backoff of the project: the extension's dispatcher after a failed round,
//! the worker's reconnection to the database, and the audit export after a failed bulk request
//! all wait `base`, then twice that, and so on up to `max`, and start again from `base` after a
//! success.

use std::time::Duration;

/// Waits that double from `base` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff whose first wait is `base` (at most `max`).
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            current: base.min(max),
        }
    }

    /// The wait after one more failure in a row.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        wait
    }

    /// A success: the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.current = self.base.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_reset_after_a_success() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(200), ms(1000));
        let waits: Vec<_> = (0..5).map(|_| b.next_wait()).collect();
        assert_eq!(waits, [ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        b.reset();
        assert_eq!(b.next_wait(), ms(200));
        // A cap below the base wins; a huge run of failures never overflows.
        let mut capped = Backoff::new(ms(500), ms(100));
        assert_eq!(capped.next_wait(), ms(100));
        let mut long = Backoff::new(ms(100), Duration::from_secs(30));
        for _ in 0..200 {
            long.next_wait();
        }
        assert_eq!(long.next_wait(), Duration::from_secs(30));
    }
}
