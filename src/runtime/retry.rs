//! Retrying what failed for now: `Backoff` (capped exponential delays with jitter, so that
//! many clients retrying together do not hit a recovering service in step) and `Streak`
//! (a run of failures of one thing: counted in a metric every time, logged once when it
//! starts and once when it ends, so a flapping connection does not flood the log).
//!
//! Delays are processing time and only decide *when* something is tried again, never what a
//! record means, so the jitter does not touch determinism.

use std::time::Duration;

use crate::error::RunError;

/// Capped exponential backoff with "equal jitter": attempt `n` waits between half and all
/// of `min(max, initial · 2ⁿ)`.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let seed = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        Backoff::with_seed(initial, max, seed)
    }

    /// The same with a fixed seed (tests).
    pub fn with_seed(initial: Duration, max: Duration, seed: u64) -> Backoff {
        let initial_ms = (initial.as_millis() as u64).max(1);
        Backoff {
            initial_ms,
            max_ms: (max.as_millis() as u64).max(initial_ms),
            attempt: 0,
            seed,
        }
    }

    /// How long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .initial_ms
            .saturating_mul(1u64 << self.attempt.min(32))
            .min(self.max_ms);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let jitter = splitmix64(self.seed ^ u64::from(self.attempt)) % (ceiling - half + 1);
        Duration::from_millis(half + jitter)
    }

    /// Attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// It worked: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A run of failures of one thing (`what`, e.g. a source's connection).
#[derive(Debug)]
pub struct Streak {
    what: String,
    failures: u64,
    counter: metrics::Counter,
}

impl Streak {
    pub fn new(what: &str) -> Streak {
        Streak {
            what: what.to_string(),
            failures: 0,
            counter: metrics::counter!(crate::metrics::TRANSIENT_ERRORS, crate::metrics::LABEL_NODE => what.to_string()),
        }
    }

    /// One more failure; the first of a streak is logged.
    pub fn failed(&mut self, error: &RunError, retry_in: Duration) {
        self.counter.increment(1);
        self.failures += 1;
        if self.failures == 1 {
            tracing::warn!(
                component = %self.what,
                error = %error,
                retry_in_ms = retry_in.as_millis() as u64,
                "failed for now: retrying with backoff (logged once until it recovers)"
            );
        } else {
            tracing::debug!(component = %self.what, error = %error, failures = self.failures, "still failing");
        }
    }

    /// It worked again: the end of a streak is logged.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(component = %self.what, failures = self.failures, "recovered");
            self.failures = 0;
        }
    }

    /// Failures in the current streak.
    pub fn failures(&self) -> u64 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_within_bounds() {
        let mut b = Backoff::with_seed(Duration::from_millis(100), Duration::from_secs(5), 7);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let d = b.next_delay().as_millis() as u64;
            let ceiling = (100u64 << ceilings.len()).min(5_000);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d} outside [{}, {ceiling}]",
                ceiling / 2
            );
            ceilings.push(ceiling);
        }
        assert_eq!(*ceilings.last().unwrap(), 5_000, "capped");
        assert_eq!(b.attempts(), 10);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn two_clients_do_not_retry_in_step() {
        let mut a = Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(60), 1);
        let mut b = Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(60), 2);
        let same = (0..8).filter(|_| a.next_delay() == b.next_delay()).count();
        assert!(same < 8);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(30), 3);
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
    }

    #[test]
    fn a_streak_counts_every_failure_and_ends_on_success() {
        let mut s = Streak::new("src");
        let e = RunError::io(
            "x",
            std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        );
        s.failed(&e, Duration::ZERO);
        s.failed(&e, Duration::ZERO);
        assert_eq!(s.failures(), 2);
        s.succeeded();
        assert_eq!(s.failures(), 0);
    }
}
