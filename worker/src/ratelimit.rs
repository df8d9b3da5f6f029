//! Per-endpoint rate limits (`[rate_limits]`: requests per second per endpoint), as GCRA
//! ("virtual scheduling"): each request reserves the next free slot, `1/rate` after the previous
//! one, and waits for it. Held in Redis when configured, so the limit holds across every
//! replica (see [`crate::redis`], which runs the same algorithm as a Lua script); held in this
//! process otherwise, or while Redis is unavailable (each replica then allows the full rate).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A slot is reserved: send after this wait (zero: now).
    Wait(Duration),
    /// The next slot is further away than the caller accepts: nothing reserved; try again no
    /// sooner than this.
    Busy(Duration),
}

/// The GCRA step, shared by the local limiter and (as Lua) the Redis one: `tat` is the earliest
/// time of the next slot, `now` the current time, both in microseconds. Returns the slot and the
/// new `tat` (unchanged when busy).
pub fn step(tat: u64, now: u64, interval_us: u64, max_wait_us: u64) -> (Slot, u64) {
    let slot = tat.max(now);
    let wait = slot - now;
    if wait > max_wait_us {
        return (Slot::Busy(Duration::from_micros(wait - max_wait_us)), tat);
    }
    (Slot::Wait(Duration::from_micros(wait)), slot + interval_us)
}

/// The interval between requests at `rate` per second, in microseconds (at least 1).
pub fn interval_us(rate: f64) -> u64 {
    ((1_000_000.0 / rate).round() as u64).max(1)
}

/// Limits kept in this process.
pub struct Local {
    tats: Mutex<HashMap<String, u64>>,
    /// Times are microseconds since this instant.
    start: Instant,
}

impl Default for Local {
    fn default() -> Self {
        Local {
            tats: Mutex::default(),
            start: Instant::now(),
        }
    }
}

impl Local {
    /// Reserve a slot for `endpoint` at `rate` per second, waiting at most `max_wait`.
    pub fn take(&self, endpoint: &str, rate: f64, max_wait: Duration) -> Slot {
        let now = self.start.elapsed().as_micros() as u64;
        let mut tats = self.tats.lock().unwrap_or_else(|e| e.into_inner());
        let tat = tats.entry(endpoint.to_string()).or_insert(0);
        let (slot, next) = step(*tat, now, interval_us(rate), max_wait.as_micros() as u64);
        *tat = next;
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spaced_by_the_interval() {
        // 10 per second: 100 ms apart.
        let i = interval_us(10.0);
        assert_eq!(i, 100_000);
        let (s, tat) = step(0, 1_000, i, 1_000_000);
        assert_eq!(s, Slot::Wait(Duration::ZERO));
        let (s, tat) = step(tat, 1_000, i, 1_000_000);
        assert_eq!(s, Slot::Wait(Duration::from_millis(100)));
        let (s, tat2) = step(tat, 2_000, i, 1_000_000);
        assert_eq!(s, Slot::Wait(Duration::from_micros(199_000)));
        // Idle time does not accumulate a burst: the next slot is "now".
        let (s, _) = step(tat2, 10_000_000, i, 1_000_000);
        assert_eq!(s, Slot::Wait(Duration::ZERO));
    }

    #[test]
    fn too_far_a_slot_is_not_reserved() {
        let i = interval_us(1.0);
        let (_, tat) = step(0, 0, i, 500_000);
        let (s, tat2) = step(tat, 0, i, 500_000);
        assert_eq!(s, Slot::Busy(Duration::from_millis(500)));
        assert_eq!(tat2, tat, "nothing reserved");
    }

    #[test]
    fn the_local_limiter_keeps_endpoints_apart() {
        let l = Local::default();
        assert_eq!(
            l.take("a", 1.0, Duration::from_secs(5)),
            Slot::Wait(Duration::ZERO)
        );
        assert_eq!(
            l.take("b", 1.0, Duration::from_secs(5)),
            Slot::Wait(Duration::ZERO)
        );
        assert!(matches!(
            l.take("a", 1.0, Duration::from_secs(5)),
            Slot::Wait(d) if d > Duration::from_millis(900)
        ));
    }
}
