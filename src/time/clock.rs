//! The clock every operator, source and alert reads processing time from. Production code
//! uses `SystemClock`; tests use `ManualClock` and move time by hand, so idleness, pacing and
//! alerts are tested without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Processing time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> i64;

    /// Blocks until `now_ms() >= deadline_ms` or `max_wait` has passed, whichever is first.
    /// Returns the time after waking.
    fn sleep_until(&self, deadline_ms: i64, max_wait: Duration) -> i64;
}

pub type ClockRef = Arc<dyn Clock>;

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl SystemClock {
    pub fn shared() -> ClockRef {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    fn sleep_until(&self, deadline_ms: i64, max_wait: Duration) -> i64 {
        let now = self.now_ms();
        if deadline_ms > now {
            let wait = Duration::from_millis((deadline_ms - now) as u64).min(max_wait);
            std::thread::sleep(wait);
        }
        self.now_ms()
    }
}

/// A clock that only moves when told to. `sleep_until` waits (really) until another thread
/// advances the clock past the deadline, or `max_wait` of real time passes.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicI64,
    moved: Mutex<()>,
    cond: Condvar,
}

impl ManualClock {
    pub fn new(start_ms: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: AtomicI64::new(start_ms),
            moved: Mutex::new(()),
            cond: Condvar::new(),
        })
    }

    pub fn set(&self, ms: i64) {
        let _guard = self.moved.lock().unwrap_or_else(|e| e.into_inner());
        self.now.store(ms, Ordering::SeqCst);
        self.cond.notify_all();
    }

    pub fn advance(&self, by: Duration) {
        self.set(self.now_ms() + by.as_millis() as i64);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, deadline_ms: i64, max_wait: Duration) -> i64 {
        let guard = self.moved.lock().unwrap_or_else(|e| e.into_inner());
        if self.now_ms() < deadline_ms {
            let _ = self
                .cond
                .wait_timeout_while(guard, max_wait, |_| self.now_ms() < deadline_ms);
        }
        self.now_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance(Duration::from_secs(2));
        assert_eq!(c.now_ms(), 3_000);
    }

    #[test]
    fn manual_clock_sleep_wakes_when_advanced() {
        let c = ManualClock::new(0);
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.sleep_until(500, Duration::from_secs(10)));
        // Advance in steps; the sleeper must wake exactly once the deadline is reached.
        c.set(100);
        c.set(600);
        assert_eq!(t.join().unwrap(), 600);
    }

    #[test]
    fn manual_clock_sleep_gives_up_after_max_wait() {
        let c = ManualClock::new(0);
        assert_eq!(c.sleep_until(500, Duration::from_millis(1)), 0);
    }
}
