//! A compiled upstream group: backends with their live state, the selector, timeouts and the
//! health-check spec. Built by the config compiler; reused whole across reloads when its raw
//! config did not change, and per backend (health kept) when only the backend list changed.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderName;
use pingora_load_balancing::Backend;

use arc_swap::ArcSwapOption;

use super::balancer::Balancer;
use super::breaker::{Breaker, BreakerConfig, State};
use super::health::HealthSpec;
use super::retry::{RetryBudget, RetryPolicy};
use crate::config::raw::RawUpstream;

/// What a consistent-hash group hashes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Path,
    Header(HeaderName),
}

/// Counters behind a backend's health; touched only by the health supervisor.
#[derive(Debug, Default)]
pub(crate) struct HealthCounters {
    pub probed: bool,
    pub successes: u32,
    pub failures: u32,
}

/// One backend's live state, shared by every group generation that contains it.
#[derive(Debug)]
pub struct BackendState {
    /// Where to connect.
    pub addr: SocketAddr,
    /// `addr` as text, for logs and metric labels.
    pub label: Arc<str>,
    healthy: AtomicBool,
    pub(crate) counters: Mutex<HealthCounters>,
    /// The passive circuit breaker, when the group configures one.
    pub breaker: ArcSwapOption<Breaker>,
}

impl BackendState {
    /// A backend; `healthy` is its state until the first probe (false when it has to pass a
    /// check before it gets traffic).
    pub fn new(addr: SocketAddr, healthy: bool) -> Self {
        BackendState {
            addr,
            label: addr.to_string().into(),
            healthy: AtomicBool::new(healthy),
            counters: Mutex::new(HealthCounters::default()),
            breaker: ArcSwapOption::empty(),
        }
    }

    /// Whether the backend may get traffic (request path: one atomic load).
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, h: bool) {
        self.healthy.store(h, Ordering::Relaxed);
    }
}

/// Timeouts towards the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
}

/// A compiled `upstreams.<name>`.
pub struct UpstreamGroup {
    pub name: Arc<str>,
    /// The config it was built from; equal config on reload = reuse this group.
    pub raw: RawUpstream,
    pub balancer: Balancer,
    pub hash_key: Option<HashKey>,
    pub backends: Vec<Arc<BackendState>>,
    pub health: Option<HealthSpec>,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub budget: RetryBudget,
    /// `gatehouse_upstream_request_duration_seconds{upstream}`, resolved once.
    pub latency: Option<prometheus::Histogram>,
}

/// Milliseconds on a monotonic clock (breakers and budgets).
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl UpstreamGroup {
    /// Builds the group. `previous` lends the state of backends that stay (same address).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        raw: RawUpstream,
        addrs: Vec<(SocketAddr, usize)>,
        hash_key: Option<HashKey>,
        health: Option<HealthSpec>,
        timeouts: Timeouts,
        breaker: Option<BreakerConfig>,
        retry: RetryPolicy,
        previous: Option<&UpstreamGroup>,
    ) -> Result<Self, String> {
        let old: HashMap<SocketAddr, &Arc<BackendState>> = previous
            .filter(|p| p.health.is_some() == health.is_some())
            .map(|p| p.backends.iter().map(|b| (b.addr, b)).collect())
            .unwrap_or_default();
        let mut states = Vec::with_capacity(addrs.len());
        let mut set = BTreeSet::new();
        for (addr, weight) in addrs {
            let state = match old.get(&addr) {
                Some(s) => Arc::clone(s),
                // Without a health check a backend is always eligible; with one it must pass
                // its first probe before it gets traffic.
                None => Arc::new(BackendState::new(addr, health.is_none())),
            };
            // a breaker keeps its state while its settings stay the same
            let keep = match (state.breaker.load().as_deref(), &breaker) {
                (Some(b), Some(cfg)) => b.config() == cfg,
                (None, None) => true,
                _ => false,
            };
            if !keep {
                state
                    .breaker
                    .store(breaker.map(|c| Arc::new(Breaker::new(c))));
            }
            let mut b = Backend::new_with_weight(&addr.to_string(), weight)
                .map_err(|e| format!("backend {addr}: {e}"))?;
            b.ext.insert(Arc::clone(&state));
            if !set.insert(b) {
                return Err(format!("backend {addr} is listed twice"));
            }
            states.push(state);
        }
        Ok(UpstreamGroup {
            name: name.into(),
            balancer: Balancer::new(raw.balance, set)?,
            raw,
            hash_key,
            backends: states,
            health,
            timeouts,
            retry,
            budget: RetryBudget::default(),
            latency: None,
        })
    }

    /// Picks a backend that is healthy (active checks), admitted by its breaker (passive) and
    /// not in `exclude`; `key` is the consistent-hash key. `on_transition` hears of a breaker
    /// moving to half-open.
    #[inline]
    pub fn select(
        &self,
        key: &[u8],
        exclude: &[SocketAddr],
        on_transition: &mut dyn FnMut(&BackendState, State),
    ) -> Option<Arc<BackendState>> {
        let now = now_ms();
        let cell = std::cell::RefCell::new(on_transition);
        let b = self.balancer.select_with(key, |b| {
            b.ext.get::<Arc<BackendState>>().is_some_and(|s| {
                if !s.is_healthy() || exclude.contains(&s.addr) {
                    return false;
                }
                match s.breaker.load().as_deref() {
                    None => true,
                    Some(br) => br.admits(now, &mut |st| {
                        if let Ok(mut f) = cell.try_borrow_mut() {
                            f(s, st)
                        }
                    }),
                }
            })
        })?;
        b.ext.get::<Arc<BackendState>>().cloned()
    }
}
