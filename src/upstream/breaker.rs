//! Per-backend circuit breaker: a pure state machine (Closed -> Open -> HalfOpen -> Closed)
//! with the clock passed in (milliseconds), so its tests need no sleeps. The hot path is
//! atomics only: `admits` on every backend selection, `record` once per upstream attempt.
//!
//! - Closed: everything passes. It opens after `consecutive_failures` failures in a row, or
//!   when at least `min_requests` attempts in the last `window` failed at `failure_ratio` or more.
//! - Open: nothing passes until `open_for` has elapsed; then the first selection moves it to
//!   HalfOpen.
//! - HalfOpen: at most `half_open_requests` trial requests pass. If all of them succeed it
//!   closes; any failure opens it again for another `open_for`.
//!
//! The ratio window is 10 buckets of `window / 10`; counts are approximate under races, which
//! only shifts the moment of opening by an attempt or two.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::Duration;

/// Breaker settings (`upstreams.<name>.circuit_breaker`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub failure_ratio: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub open_for: Duration,
    pub half_open_requests: u32,
}

/// Breaker states, as exported in `gatehouse_circuit_breaker_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::HalfOpen,
            2 => State::Open,
            _ => State::Closed,
        }
    }

    /// Lowercase name for logs and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }
}

const BUCKETS: usize = 10;

/// One backend's breaker.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: AtomicU8,
    consecutive: AtomicU32,
    opened_at_ms: AtomicU64,
    trials_started: AtomicU32,
    trials_ok: AtomicU32,
    bucket_epoch: [AtomicU64; BUCKETS],
    bucket_total: [AtomicU32; BUCKETS],
    bucket_fail: [AtomicU32; BUCKETS],
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            cfg,
            state: AtomicU8::new(State::Closed as u8),
            consecutive: AtomicU32::new(0),
            opened_at_ms: AtomicU64::new(0),
            trials_started: AtomicU32::new(0),
            trials_ok: AtomicU32::new(0),
            bucket_epoch: Default::default(),
            bucket_total: Default::default(),
            bucket_fail: Default::default(),
        }
    }

    /// The settings it was built with.
    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// The current state.
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Relaxed))
    }

    fn bucket_ms(&self) -> u64 {
        (self.cfg.window.as_millis() as u64 / BUCKETS as u64).max(1)
    }

    /// Whether a request may go to this backend now. In HalfOpen this takes one trial slot,
    /// so call it only for the backend actually chosen. Returns the transition it caused, if
    /// any, through `on_transition`.
    pub fn admits(&self, now_ms: u64, on_transition: &mut dyn FnMut(State)) -> bool {
        match self.state() {
            State::Closed => true,
            State::Open => {
                let opened = self.opened_at_ms.load(Relaxed);
                if now_ms < opened.saturating_add(self.cfg.open_for.as_millis() as u64) {
                    return false;
                }
                // one caller moves it to half-open and resets the trial counters
                if self
                    .state
                    .compare_exchange(State::Open as u8, State::HalfOpen as u8, Relaxed, Relaxed)
                    .is_ok()
                {
                    self.trials_started.store(0, Relaxed);
                    self.trials_ok.store(0, Relaxed);
                    on_transition(State::HalfOpen);
                }
                self.take_trial()
            }
            State::HalfOpen => self.take_trial(),
        }
    }

    fn take_trial(&self) -> bool {
        let n = self.trials_started.fetch_add(1, Relaxed);
        if n < self.cfg.half_open_requests {
            true
        } else {
            self.trials_started.fetch_sub(1, Relaxed);
            false
        }
    }

    fn open(&self, now_ms: u64, from: State) -> bool {
        self.opened_at_ms.store(now_ms, Relaxed);
        self.consecutive.store(0, Relaxed);
        self.state
            .compare_exchange(from as u8, State::Open as u8, Relaxed, Relaxed)
            .is_ok()
    }

    fn window_counts(&self, now_ms: u64) -> (u32, u32) {
        let cur = now_ms / self.bucket_ms();
        let mut total = 0;
        let mut fail = 0;
        for i in 0..BUCKETS {
            let e = self.bucket_epoch[i].load(Relaxed);
            if e + BUCKETS as u64 > cur && e <= cur {
                total += self.bucket_total[i].load(Relaxed);
                fail += self.bucket_fail[i].load(Relaxed);
            }
        }
        (total, fail)
    }

    fn count(&self, now_ms: u64, failed: bool) {
        let epoch = now_ms / self.bucket_ms();
        let i = (epoch % BUCKETS as u64) as usize;
        let seen = self.bucket_epoch[i].load(Relaxed);
        if seen != epoch
            && self.bucket_epoch[i]
                .compare_exchange(seen, epoch, Relaxed, Relaxed)
                .is_ok()
        {
            self.bucket_total[i].store(0, Relaxed);
            self.bucket_fail[i].store(0, Relaxed);
        }
        self.bucket_total[i].fetch_add(1, Relaxed);
        if failed {
            self.bucket_fail[i].fetch_add(1, Relaxed);
        }
    }

    /// Records the outcome of one attempt; returns the new state when it changed.
    pub fn record(&self, success: bool, now_ms: u64) -> Option<State> {
        match self.state() {
            State::Open => None,
            State::HalfOpen => {
                if !success {
                    return self.open(now_ms, State::HalfOpen).then_some(State::Open);
                }
                let ok = self.trials_ok.fetch_add(1, Relaxed) + 1;
                if ok >= self.cfg.half_open_requests
                    && self
                        .state
                        .compare_exchange(
                            State::HalfOpen as u8,
                            State::Closed as u8,
                            Relaxed,
                            Relaxed,
                        )
                        .is_ok()
                {
                    self.consecutive.store(0, Relaxed);
                    for i in 0..BUCKETS {
                        self.bucket_total[i].store(0, Relaxed);
                        self.bucket_fail[i].store(0, Relaxed);
                    }
                    return Some(State::Closed);
                }
                None
            }
            State::Closed => {
                self.count(now_ms, !success);
                if success {
                    self.consecutive.store(0, Relaxed);
                    return None;
                }
                let run = self.consecutive.fetch_add(1, Relaxed) + 1;
                let (total, fail) = self.window_counts(now_ms);
                let ratio_trip = total >= self.cfg.min_requests
                    && total > 0
                    && f64::from(fail) / f64::from(total) >= self.cfg.failure_ratio;
                if (run >= self.cfg.consecutive_failures || ratio_trip)
                    && self.open(now_ms, State::Closed)
                {
                    return Some(State::Open);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(10),
            half_open_requests: 2,
        }
    }

    fn admits(b: &Breaker, now: u64) -> bool {
        b.admits(now, &mut |_| {})
    }

    #[test]
    fn opens_after_consecutive_failures_and_recovers() {
        let b = Breaker::new(cfg());
        for i in 0..4 {
            assert_eq!(b.record(false, 1000 + i), None);
        }
        assert_eq!(b.record(true, 1005), None, "a success resets the run");
        for i in 0..4 {
            assert_eq!(b.record(false, 1010 + i), None);
        }
        assert_eq!(b.record(false, 1020), Some(State::Open));
        assert!(!admits(&b, 1021));
        assert!(!admits(&b, 11_019));
        // open_for elapsed: half-open with two trials
        let mut transitions = Vec::new();
        assert!(b.admits(11_020, &mut |s| transitions.push(s)));
        assert_eq!(transitions, vec![State::HalfOpen]);
        assert!(admits(&b, 11_021));
        assert!(!admits(&b, 11_022), "only half_open_requests trials");
        assert_eq!(b.record(true, 11_030), None);
        assert_eq!(b.record(true, 11_031), Some(State::Closed));
        assert!(admits(&b, 11_032));
    }

    #[test]
    fn failed_trial_reopens() {
        let b = Breaker::new(cfg());
        for i in 0..5 {
            b.record(false, i);
        }
        assert_eq!(b.state(), State::Open);
        assert!(!admits(&b, 10_003));
        assert!(admits(&b, 10_004));
        assert_eq!(b.record(false, 10_005), Some(State::Open));
        assert!(!admits(&b, 19_000), "open again for another open_for");
        assert!(admits(&b, 20_005));
    }

    #[test]
    fn ratio_window() {
        let b = Breaker::new(cfg());
        // 19 attempts, alternating: below min_requests, no trip
        for i in 0..19u64 {
            assert_eq!(b.record(i % 2 == 1, 1000 + i), None);
        }
        // the 20th attempt is a failure: 10 of 20 failed = 0.5
        assert_eq!(b.record(false, 1019), Some(State::Open));

        let c = Breaker::new(cfg());
        for i in 0..30u64 {
            c.record(i % 4 != 0, 1000 + i); // 25% failures
        }
        assert_eq!(c.state(), State::Closed);
        // old buckets leave the window
        let d = Breaker::new(cfg());
        for i in 0..19u64 {
            d.record(i % 2 == 1, 1000 + i);
        }
        assert_eq!(
            d.record(false, 30_000),
            None,
            "the earlier attempts are outside the window"
        );
    }
}
