//! Retry policy and retry budget of an upstream group.
//!
//! Which failures are retried is configured (`connect_failure`, `timeout`, `reset`, status
//! codes); whether a request may be retried at all is not: a connect failure is always safe
//! (nothing was sent), anything else only for idempotent methods whose body (if any) is still
//! buffered. The budget caps retries at a fraction of the group's requests over the last ~10 s
//! (plus a floor of 10 per window, so a quiet upstream can still retry).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Why an attempt failed, as retry reasons and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    ConnectFailure,
    Timeout,
    Reset,
    Status(u16),
}

impl Reason {
    /// Label for `gatehouse_upstream_retries_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            Reason::ConnectFailure => "connect_failure",
            Reason::Timeout => "timeout",
            Reason::Reset => "reset",
            Reason::Status(500) => "500",
            Reason::Status(502) => "502",
            Reason::Status(503) => "503",
            Reason::Status(504) => "504",
            Reason::Status(_) => "status",
        }
    }
}

/// A compiled `retry:` block.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub on_connect: bool,
    pub on_timeout: bool,
    pub on_reset: bool,
    pub on_status: Vec<u16>,
    pub backoff: Duration,
    pub budget: f64,
}

impl Default for RetryPolicy {
    /// Without a `retry:` block: connect failures go to up to two other backends.
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            on_connect: true,
            on_timeout: false,
            on_reset: false,
            on_status: Vec::new(),
            backoff: Duration::ZERO,
            budget: 0.2,
        }
    }
}

impl RetryPolicy {
    /// Whether `reason` is configured to be retried.
    pub fn covers(&self, reason: Reason) -> bool {
        match reason {
            Reason::ConnectFailure => self.on_connect,
            Reason::Timeout => self.on_timeout,
            Reason::Reset => self.on_reset,
            Reason::Status(s) => self.on_status.contains(&s),
        }
    }

    /// Backoff before retry number `n` (1-based): `backoff x 2^(n-1)`, jittered to 50-150%,
    /// capped at 1 s.
    pub fn delay(&self, n: u32, jitter: f64) -> Duration {
        if self.backoff.is_zero() {
            return Duration::ZERO;
        }
        let base = self
            .backoff
            .saturating_mul(1u32 << n.saturating_sub(1).min(10));
        base.mul_f64(0.5 + jitter.clamp(0.0, 1.0))
            .min(Duration::from_secs(1))
    }
}

const WINDOW_MS: u64 = 10_000;
const MIN_RETRIES: f64 = 10.0;

/// Requests and retries of one group over two ~10 s windows.
#[derive(Debug, Default)]
pub struct RetryBudget {
    epoch: AtomicU64,
    requests: [AtomicU64; 2],
    retries: [AtomicU64; 2],
}

impl RetryBudget {
    fn roll(&self, now_ms: u64) -> usize {
        let epoch = now_ms / WINDOW_MS;
        let seen = self.epoch.load(Relaxed);
        if epoch != seen
            && self
                .epoch
                .compare_exchange(seen, epoch, Relaxed, Relaxed)
                .is_ok()
        {
            let cur = (epoch % 2) as usize;
            let prev_stale = epoch > seen + 1;
            self.requests[cur].store(0, Relaxed);
            self.retries[cur].store(0, Relaxed);
            if prev_stale {
                self.requests[1 - cur].store(0, Relaxed);
                self.retries[1 - cur].store(0, Relaxed);
            }
        }
        (epoch % 2) as usize
    }

    /// Counts a first attempt.
    pub fn record_request(&self, now_ms: u64) {
        let i = self.roll(now_ms);
        self.requests[i].fetch_add(1, Relaxed);
    }

    /// Takes a retry from the budget; `false` when it is spent.
    pub fn try_retry(&self, ratio: f64, now_ms: u64) -> bool {
        let i = self.roll(now_ms);
        let requests = (self.requests[0].load(Relaxed) + self.requests[1].load(Relaxed)) as f64;
        let retries = (self.retries[0].load(Relaxed) + self.retries[1].load(Relaxed)) as f64;
        if retries + 1.0 > MIN_RETRIES + ratio * requests {
            return false;
        }
        self.retries[i].fetch_add(1, Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_caps_retries() {
        let b = RetryBudget::default();
        for _ in 0..100 {
            b.record_request(1000);
        }
        let allowed = (0..100).filter(|_| b.try_retry(0.2, 1000)).count();
        assert_eq!(allowed, 30, "10 floor + 20% of 100");
        // two windows later the counts are gone
        assert!(b.try_retry(0.2, 1000 + 3 * WINDOW_MS));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy {
            backoff: Duration::from_millis(25),
            ..RetryPolicy::default()
        };
        assert_eq!(p.delay(1, 0.5), Duration::from_millis(25));
        assert_eq!(p.delay(2, 0.5), Duration::from_millis(50));
        assert_eq!(p.delay(3, 0.0), Duration::from_millis(50));
        assert_eq!(p.delay(20, 1.0), Duration::from_secs(1));
        assert_eq!(RetryPolicy::default().delay(3, 0.5), Duration::ZERO);
    }
}
