//! `scope: global` with `sync: <interval>`: decisions made here, counts pushed to Redis in
//! one batch per interval.
//!
//! For each key this instance knows the global estimate as of its last exchange with Redis
//! and what it admitted since (not pushed yet). A request is admitted here, with no Redis call,
//! while this instance's unpushed count stays within its share of the headroom:
//! `unpushed + 1 <= (limit - global - band) / instances` (unpushed: admitted here and not yet
//! answered by a push), where the band, kept for the exact
//! path, is `max(10% of the limit, 2 x the key's arrival rate x interval)` (the rate measured
//! from successive syncs, or this instance's own arrivals times the instance count, whichever
//! is higher). Otherwise (a key not known here, last synced more than two intervals ago, or
//! inside the band) the request takes the exact path (one atomic script, as `sync: exact`),
//! whose answer refreshes the estimate; the instance's unpushed count for the key goes along
//! with that call, counted before the check. Since every instance keeps its unpushed counts within
//! its share, the true count stays within the limit while the arrival rate does not jump by
//! more than the band within two intervals.
//!
//! Every interval a thread of the instance pushes the keys with unpushed counts (at most
//! [`MAX_PER_TICK`], the rest at the next tick) in one pipeline and learns their new
//! estimates. A key far below its limit costs no Redis command on the request path. A
//! failed push is not retried (it may have counted in part); its counts are dropped, and the
//! keys go to the exact path until the next successful exchange. At most `active_keys` keys
//! are tracked; beyond that, requests take the exact path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::api::{GlobalCounters, GlobalDecision};

/// Keys pushed per tick at most; the rest wait for the next one.
pub const MAX_PER_TICK: usize = 2000;

struct KeyState {
    redis_key: Arc<str>,
    /// The global estimate at `synced` (this instance's pushed counts included).
    global: u64,
    synced: Instant,
    /// When the call whose answer set `global` was sent: an answer to an older call may
    /// arrive later and must not lower the estimate.
    asked: Instant,
    /// When the window of the last answer ends.
    window_end: Instant,
    /// Admitted here and not pushed yet.
    pending: u64,
    /// Taken by a push or an exact-path call that has not answered yet (no longer
    /// `pending`, so they cannot be sent a second time; not yet in `global` either).
    inflight: u64,
    /// Arrival rate of the key across every instance (per second), from successive syncs.
    rate: f64,
    /// Arrivals here since `arrivals_since`, and in the interval before (this instance's
    /// own rate).
    arrivals: u64,
    arrivals_since: Instant,
    prev_arrivals: u64,
}

impl KeyState {
    /// Takes a global estimate answered at `now` to a call sent at `asked`. An answer to a
    /// call sent before the one that set the current estimate may have been counted before
    /// it: it only ever raises the estimate.
    fn apply(&mut self, global: u64, window_end: Instant, now: Instant, asked: Instant) {
        if asked >= self.asked {
            self.global = global;
            self.asked = asked;
            self.synced = now;
            self.window_end = window_end;
        } else {
            self.global = self.global.max(global);
        }
    }
}

/// The local side of a hybrid limit.
pub struct Hybrid {
    pub counters: Arc<dyn GlobalCounters>,
    pub interval: Duration,
    pub limit: u64,
    pub per: Duration,
    pub cap: usize,
    keys: Mutex<HashMap<u128, KeyState>>,
}

/// A local decision.
pub enum Local {
    /// Admitted here: what is left and when the window ends (seconds).
    Admit { remaining: u64, reset: u64 },
    /// Take the exact path.
    AskRedis,
}

impl Hybrid {
    pub fn new(
        counters: Arc<dyn GlobalCounters>,
        interval: Duration,
        limit: u64,
        per: Duration,
        cap: usize,
    ) -> Self {
        Hybrid {
            counters,
            interval,
            limit,
            per,
            cap,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Decides `key` here if it can (see the module docs).
    pub fn decide(&self, key: u128) -> Local {
        let now = Instant::now();
        let Ok(mut map) = self.keys.lock() else {
            return Local::AskRedis;
        };
        let Some(st) = map.get_mut(&key) else {
            return Local::AskRedis;
        };
        st.arrivals += 1;
        if now.saturating_duration_since(st.synced) > self.interval * 2 || now >= st.window_end {
            return Local::AskRedis;
        }
        let n = self.counters.instances().max(1);
        // this instance's rate over the current and the previous interval, whichever is
        // higher (a burst must widen the band at once)
        let secs = self.interval.as_secs_f64();
        let own = (st.arrivals as f64
            / now
                .saturating_duration_since(st.arrivals_since)
                .as_secs_f64()
                .max(secs))
        .max(st.prev_arrivals as f64 / secs);
        let rate = st.rate.max(own * n as f64);
        let band = ((self.limit as f64 * 0.1).ceil())
            .max((2.0 * rate * self.interval.as_secs_f64()).ceil()) as u64;
        let share = self.limit.saturating_sub(st.global).saturating_sub(band) / n;
        let unpushed = st.pending + st.inflight;
        if unpushed + 1 > share {
            return Local::AskRedis;
        }
        st.pending += 1;
        let remaining = self.limit.saturating_sub(st.global + unpushed + 1);
        let reset = st
            .window_end
            .saturating_duration_since(now)
            .as_secs_f64()
            .ceil()
            .max(1.0) as u64;
        Local::Admit { remaining, reset }
    }

    /// Takes `key`'s unpushed count to send along with an exact-path call: until the call
    /// answers ([`Hybrid::learned`] or [`Hybrid::failed`] with the same count) it is in
    /// flight, still counted against this instance's share.
    pub fn take_pending(&self, key: u128) -> u64 {
        self.keys
            .lock()
            .ok()
            .and_then(|mut m| {
                m.get_mut(&key).map(|s| {
                    let n = std::mem::take(&mut s.pending);
                    s.inflight += n;
                    n
                })
            })
            .unwrap_or(0)
    }

    /// An exact-path call that carried `sent` counts got no answer: they are dropped (never
    /// sent twice), and the key takes the exact path until its next exchange.
    pub fn failed(&self, key: u128, sent: u64) {
        if let Ok(mut map) = self.keys.lock() {
            if let Some(st) = map.get_mut(&key) {
                st.inflight = st.inflight.saturating_sub(sent);
                let now = Instant::now();
                st.synced = now.checked_sub(self.interval * 3).unwrap_or(now);
            }
        }
    }

    /// Learns from the answer to an exact-path call for `key` that was sent at `asked`
    /// carrying `sent` unpushed counts.
    pub fn learned(
        &self,
        key: u128,
        redis_key: &str,
        d: &GlobalDecision,
        sent: u64,
        asked: Instant,
    ) {
        let now = Instant::now();
        let Ok(mut map) = self.keys.lock() else {
            return;
        };
        let global = if d.allowed {
            self.limit.saturating_sub(d.remaining)
        } else {
            self.limit
        };
        if let Some(st) = map.get_mut(&key) {
            st.inflight = st.inflight.saturating_sub(sent);
            st.apply(global, now + d.reset, now, asked);
            return;
        }
        if map.len() >= self.cap {
            // forget what has not been exchanged with Redis for a window
            let per = self.per;
            map.retain(|_, s| now.saturating_duration_since(s.synced) < per);
            if map.len() >= self.cap {
                return;
            }
        }
        map.insert(
            key,
            KeyState {
                redis_key: Arc::from(redis_key),
                global,
                synced: now,
                asked,
                window_end: now + d.reset,
                pending: 0,
                inflight: 0,
                rate: 0.0,
                arrivals: 1,
                arrivals_since: now,
                prev_arrivals: 0,
            },
        );
    }

    /// One push of the unpushed counts.
    pub async fn tick(&self) {
        let batch: Vec<(u128, Arc<str>, u64)> = match self.keys.lock() {
            Ok(mut map) => {
                let now = Instant::now();
                let per = self.per;
                // keys idle for two windows are forgotten (their estimate is worthless)
                map.retain(|_, s| {
                    s.pending > 0
                        || s.inflight > 0
                        || now.saturating_duration_since(s.synced) < per * 2
                });
                // the counts leave `pending` now: an exact-path call meanwhile must not send
                // them too
                map.iter_mut()
                    .filter(|(_, s)| s.pending > 0)
                    .take(MAX_PER_TICK)
                    .map(|(k, s)| {
                        let n = std::mem::take(&mut s.pending);
                        s.inflight += n;
                        (*k, Arc::clone(&s.redis_key), n)
                    })
                    .collect()
            }
            Err(_) => return,
        };
        if batch.is_empty() {
            return;
        }
        let items: Vec<(&str, u64)> = batch.iter().map(|(_, k, n)| (&**k, *n)).collect();
        let asked = Instant::now();
        let answer = self.counters.add_batch(&items, self.per).await;
        let Ok(mut map) = self.keys.lock() else {
            return;
        };
        let now = Instant::now();
        match answer {
            Ok(estimates) if estimates.len() == batch.len() => {
                for ((k, _, pushed), (est, reset)) in batch.iter().zip(estimates) {
                    if let Some(st) = map.get_mut(k) {
                        let elapsed = now.saturating_duration_since(st.synced).as_secs_f64();
                        if elapsed > 0.0 {
                            // quick to rise, slow to fall
                            let sample = est.saturating_sub(st.global) as f64 / elapsed;
                            st.rate = sample.max(st.rate * 0.5);
                        }
                        st.inflight = st.inflight.saturating_sub(*pushed);
                        st.apply(est, now + reset, now, asked);
                        st.prev_arrivals = std::mem::take(&mut st.arrivals);
                        st.arrivals_since = now;
                    }
                }
            }
            _ => {
                // dropped, never sent twice; the keys take the exact path until they are
                // exchanged again
                for (k, _, pushed) in &batch {
                    if let Some(st) = map.get_mut(k) {
                        st.inflight = st.inflight.saturating_sub(*pushed);
                        st.synced = now.checked_sub(self.interval * 3).unwrap_or(now);
                    }
                }
            }
        }
    }
}

/// Runs `hybrid`'s ticks on a thread of its own until the limit is dropped.
pub fn spawn_ticker(hybrid: Weak<Hybrid>, interval: Duration) {
    let spawned = std::thread::Builder::new()
        .name("gatehouse-rl-sync".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                log::error!("rate_limit: no runtime for the sync thread");
                return;
            };
            rt.block_on(async move {
                let mut every = tokio::time::interval(interval);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    let Some(h) = hybrid.upgrade() else {
                        return;
                    };
                    h.tick().await;
                }
            });
        });
    if let Err(e) = spawned {
        log::error!("rate_limit: could not start the sync thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU64, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::api::{GlobalError, OnError};

    /// A store that counts what it is sent; `add_batch` waits until released.
    #[derive(Debug, Default)]
    struct Store {
        counted: AtomicU64,
        gate: tokio::sync::Notify,
    }

    #[async_trait]
    impl GlobalCounters for Store {
        async fn hit(
            &self,
            _key: &str,
            limit: u64,
            _window: Duration,
            cost: u64,
            admitted: u64,
        ) -> Result<GlobalDecision, GlobalError> {
            let n = self.counted.fetch_add(admitted + cost, Ordering::SeqCst) + admitted + cost;
            Ok(GlobalDecision {
                allowed: n <= limit,
                remaining: limit.saturating_sub(n),
                reset: Duration::from_secs(60),
            })
        }

        async fn add_batch(
            &self,
            items: &[(&str, u64)],
            _window: Duration,
        ) -> Result<Vec<(u64, Duration)>, GlobalError> {
            self.gate.notified().await;
            let mut out = Vec::new();
            for (_, n) in items {
                let total = self.counted.fetch_add(*n, Ordering::SeqCst) + n;
                out.push((total, Duration::from_secs(60)));
            }
            Ok(out)
        }

        fn key_prefix(&self) -> &str {
            "t:"
        }
        fn on_error(&self) -> OnError {
            OnError::Deny
        }
        fn instances(&self) -> u64 {
            1
        }
    }

    /// A limit of 1,000 a minute synced every 100 ms, on `store`.
    fn hybrid(store: Arc<Store>) -> Hybrid {
        Hybrid::new(
            store,
            Duration::from_millis(100),
            1000,
            Duration::from_secs(60),
            100,
        )
    }

    #[tokio::test]
    async fn counts_in_a_push_are_not_sent_again_by_the_exact_path() {
        let store = Arc::new(Store::default());
        let h = Arc::new(hybrid(store.clone()));
        // learn the key from one exact answer, then admit 5 locally
        let d = store
            .hit("k", 1000, Duration::from_secs(60), 1, 0)
            .await
            .unwrap();
        h.learned(7, "k", &d, 0, Instant::now());
        for _ in 0..5 {
            assert!(matches!(h.decide(7), Local::Admit { .. }));
        }
        // a push takes the 5 and waits for its answer; meanwhile the exact path finds
        // nothing left to send along
        let pushing = {
            let h = h.clone();
            tokio::spawn(async move { h.tick().await })
        };
        // (one yield: the push runs up to its wait for the store on this thread)
        tokio::task::yield_now().await;
        assert_eq!(h.take_pending(7), 0);
        // the counts in flight still count against this instance's share
        assert!(matches!(h.decide(7), Local::Admit { remaining: 993, .. }));
        store.gate.notify_one();
        pushing.await.unwrap();
        // 1 exact + 5 pushed, each once
        assert_eq!(store.counted.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn counts_sent_with_an_exact_call_count_until_it_answers() {
        let store = Arc::new(Store::default());
        let h = hybrid(store.clone());
        let d = store
            .hit("k", 1000, Duration::from_secs(60), 1, 0)
            .await
            .unwrap();
        h.learned(7, "k", &d, 0, Instant::now());
        for _ in 0..5 {
            assert!(matches!(h.decide(7), Local::Admit { .. }));
        }
        // an exact-path call takes the 5 along; until it answers they still count here
        let asked = Instant::now();
        assert_eq!(h.take_pending(7), 5);
        assert!(matches!(h.decide(7), Local::Admit { remaining: 993, .. }));
        // it answers (1 + its own 1 + the 5 sent): in flight no more, in the estimate now
        let d = store
            .hit("k", 1000, Duration::from_secs(60), 1, 5)
            .await
            .unwrap();
        h.learned(7, "k", &d, 5, asked);
        // global 7, 1 pending: 1000 - (7 + 1 + 1)
        assert!(matches!(h.decide(7), Local::Admit { remaining: 991, .. }));
        // a failed call drops what it carried: neither pending nor in flight
        assert_eq!(h.take_pending(7), 2);
        h.failed(7, 2);
        assert_eq!(h.take_pending(7), 0);
        // and the key asks Redis until its next exchange
        assert!(matches!(h.decide(7), Local::AskRedis));
    }

    #[test]
    fn an_older_answer_arriving_late_never_lowers_the_estimate() {
        let h = hybrid(Arc::new(Store::default()));
        let answer = |remaining| GlobalDecision {
            allowed: true,
            remaining,
            reset: Duration::from_secs(60),
        };
        let older = Instant::now();
        let newer = older + Duration::from_millis(1);
        h.learned(7, "k", &answer(990), 0, older); // global 10
        h.learned(7, "k", &answer(900), 0, newer); // global 100
        h.learned(7, "k", &answer(950), 0, older); // sent earlier: 50, stale
        assert!(matches!(h.decide(7), Local::Admit { remaining: 899, .. }));
    }
}
