//! A compiled upstream group: backends with their live state, the selector, timeouts and the
//! health-check spec. Built by the config compiler; reused whole across reloads when its raw
//! config did not change, and per backend (health kept) when only the backend list changed.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderName;
use pingora_load_balancing::Backend;

use super::balancer::{Balance, Balancer, Verdict};
use super::breaker::{Breaker, BreakerConfig, State};
use super::health::HealthSpec;
use super::retry::{RetryBudget, RetryPolicy};

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

/// One backend's live health, shared by every group generation that contains its address.
/// Written only by the health supervisor (and by reload warm-up probes).
#[derive(Debug)]
pub struct BackendState {
    /// Where to connect.
    pub addr: SocketAddr,
    /// `addr` as text, for logs and metric labels.
    pub label: Arc<str>,
    healthy: AtomicBool,
    pub(crate) counters: Mutex<HealthCounters>,
    /// When `healthy` last changed (Unix milliseconds; the start when it never did).
    since_ms: AtomicU64,
    /// Requests on their way to or from this backend now (the status page).
    in_flight: AtomicU64,
    /// Attempts sent to this backend, and those that failed (the status page's rates).
    attempts: AtomicU64,
    failures: AtomicU64,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
            since_ms: AtomicU64::new(unix_ms()),
            in_flight: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Whether the backend may get traffic (request path: one atomic load).
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, h: bool) {
        if self.healthy.swap(h, Ordering::Relaxed) != h {
            self.since_ms.store(unix_ms(), Ordering::Relaxed);
        }
    }

    /// When the health state last changed (Unix milliseconds).
    pub fn healthy_since_ms(&self) -> u64 {
        self.since_ms.load(Ordering::Relaxed)
    }

    /// Requests in flight to this backend, attempts so far, failed attempts so far.
    pub fn traffic(&self) -> (u64, u64, u64) {
        (
            self.in_flight.load(Ordering::Relaxed),
            self.attempts.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }

    /// Counts a failed attempt.
    pub(crate) fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt to this backend starts (counted, and in flight until [`Self::end`]).
    pub(crate) fn begin(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt [`Self::begin`] counted is over.
    pub(crate) fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A backend as one group generation sees it: the shared live health ([`BackendState`]) and
/// this generation's circuit breaker. The breaker is the previous generation's own `Arc` when
/// the backend stayed and the breaker settings did not change, so its state carries over; a
/// generation never writes into another one, so compiling a config that is then rejected
/// changes nothing that serves.
#[derive(Debug)]
pub struct Member {
    pub state: Arc<BackendState>,
    /// The passive circuit breaker, when the group configures one.
    pub breaker: Option<Arc<Breaker>>,
}

impl std::ops::Deref for Member {
    type Target = BackendState;
    fn deref(&self) -> &BackendState {
        &self.state
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
    pub balancer: Balancer,
    pub hash_key: Option<HashKey>,
    pub backends: Vec<Arc<Member>>,
    /// `backends`' index by address, for groups too large to scan (see [`Self::index_of`]).
    by_addr: HashMap<SocketAddr, usize, ahash::RandomState>,
    pub health: Option<HealthSpec>,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub budget: RetryBudget,
    /// Plain, h2c or TLS, with the TLS settings.
    pub transport: super::tls::Transport,
    /// `gatehouse_upstream_request_duration_seconds{upstream}`, resolved on first use (not
    /// while compiling: a rejected config must not leave series behind).
    pub latency: std::sync::OnceLock<prometheus::Histogram>,
}

/// Everything a group is built from, checked by the config compiler.
pub struct GroupSpec {
    pub name: String,
    pub balance: Balance,
    /// Resolved backend addresses with their weights.
    pub addrs: Vec<(SocketAddr, usize)>,
    pub hash_key: Option<HashKey>,
    pub health: Option<HealthSpec>,
    pub timeouts: Timeouts,
    pub breaker: Option<BreakerConfig>,
    pub retry: RetryPolicy,
    pub transport: super::tls::Transport,
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
    /// Builds the group. `previous` lends what stays: the health state of backends with the
    /// same address (when both generations have, or both lack, a health check) and their
    /// breaker when its settings are equal. Nothing of `previous` is written.
    pub fn new(spec: GroupSpec, previous: Option<&UpstreamGroup>) -> Result<Self, String> {
        let old: HashMap<SocketAddr, &Arc<Member>> = previous
            .map(|p| p.backends.iter().map(|m| (m.addr, m)).collect())
            .unwrap_or_default();
        let same_health = previous.is_some_and(|p| p.health.is_some() == spec.health.is_some());
        let mut members = Vec::with_capacity(spec.addrs.len());
        let mut set = BTreeSet::new();
        for (addr, weight) in spec.addrs {
            let prev = old.get(&addr);
            let state = match prev {
                Some(m) if same_health => Arc::clone(&m.state),
                // Without a health check a backend is always eligible; with one it must pass
                // its first probe before it gets traffic.
                _ => Arc::new(BackendState::new(addr, spec.health.is_none())),
            };
            // a breaker keeps its state while its settings stay the same
            let breaker = match (prev.and_then(|m| m.breaker.as_ref()), &spec.breaker) {
                (Some(b), Some(cfg)) if b.config() == cfg => Some(Arc::clone(b)),
                (_, cfg) => cfg.map(|c| Arc::new(Breaker::new(c))),
            };
            let member = Arc::new(Member { state, breaker });
            // the member is found by address (see `index_of`)
            let b = Backend::new_with_weight(&addr.to_string(), weight)
                .map_err(|e| format!("backend {addr}: {e}"))?;
            if !set.insert(b) {
                return Err(format!("backend {addr} is listed twice"));
            }
            members.push(member);
        }
        let by_addr = (members.iter().enumerate())
            .map(|(i, m)| (m.addr, i))
            .collect();
        Ok(UpstreamGroup {
            name: spec.name.into(),
            balancer: Balancer::new(spec.balance, &set),
            hash_key: spec.hash_key,
            backends: members,
            by_addr,
            health: spec.health,
            timeouts: spec.timeouts,
            retry: spec.retry,
            budget: RetryBudget::default(),
            transport: spec.transport,
            latency: std::sync::OnceLock::new(),
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
        on_transition: &mut dyn FnMut(&Member, State),
    ) -> Option<Arc<Member>> {
        let now = now_ms();
        let n = self.backends.len();
        let mut seen = Seen::new(n);
        let mut looked = 0;
        self.balancer.select_with(key, |b| {
            let Some(i) = self.index_of(b) else {
                return Verdict::Next;
            };
            if !seen.mark(i) {
                return Verdict::Next;
            }
            looked += 1;
            let Some(m) = self.backends.get(i) else {
                return Verdict::Next;
            };
            let admitted = m.is_healthy()
                && !exclude.contains(&m.addr)
                && match m.breaker.as_deref() {
                    None => true,
                    Some(br) => br.admits(now, &mut |st| on_transition(m, st)),
                };
            if admitted {
                Verdict::Take(Arc::clone(m))
            } else if looked >= n {
                Verdict::Stop
            } else {
                Verdict::Next
            }
        })
    }

    /// The index in `backends` of a backend of this generation's balancer.
    #[inline]
    fn index_of(&self, b: &Backend) -> Option<usize> {
        let addr = b.addr.as_inet()?;
        if self.backends.len() <= 8 {
            self.backends.iter().position(|m| m.addr == *addr)
        } else {
            self.by_addr.get(addr).copied()
        }
    }
}

/// The members one selection has looked at, a bit each: the algorithms may offer a backend
/// more than once, and its breaker is asked only the first time.
enum Seen {
    /// Groups of up to 64 backends: no allocation.
    Word(u64),
    Words(Vec<u64>),
}

impl Seen {
    fn new(n: usize) -> Self {
        if n <= 64 {
            Seen::Word(0)
        } else {
            Seen::Words(vec![0; n.div_ceil(64)])
        }
    }

    /// Marks member `i`; false when it was marked before.
    #[inline]
    fn mark(&mut self, i: usize) -> bool {
        let (word, bit) = match self {
            Seen::Word(w) => (w, i),
            Seen::Words(ws) => match ws.get_mut(i / 64) {
                Some(w) => (w, i % 64),
                None => return false,
            },
        };
        let m = 1u64 << (bit % 64);
        let fresh = *word & m == 0;
        *word |= m;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(n: u16) -> UpstreamGroup {
        group_of(n, Balance::RoundRobin)
    }

    fn group_of(n: u16, balance: Balance) -> UpstreamGroup {
        let spec = GroupSpec {
            name: "g".into(),
            balance,
            addrs: (1..=n)
                .map(|i| (SocketAddr::from(([127, 0, 0, 1], 9000 + i)), 1))
                .collect(),
            hash_key: None,
            health: None,
            timeouts: Timeouts {
                connect: Duration::from_secs(1),
                read: Duration::from_secs(1),
                write: Duration::from_secs(1),
                idle: Duration::from_secs(1),
            },
            breaker: None,
            retry: RetryPolicy::default(),
            transport: super::super::tls::Transport::Plain,
        };
        UpstreamGroup::new(spec, None).unwrap()
    }

    /// Members are found by address, scanned in small groups and through the index in large
    /// ones: every backend is chosen in turn, exclusions hold, and the member returned is the
    /// group's own (its breaker and state). Groups over 64 backends keep what a selection has
    /// seen in more than one word.
    #[test]
    fn selection_finds_each_member_by_address() {
        for n in [1u16, 3, 8, 9, 40, 64, 65, 200] {
            let g = group(n);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..(3 * n) {
                let m = g.select(b"", &[], &mut |_, _| {}).unwrap();
                assert!(g.backends.iter().any(|b| Arc::ptr_eq(b, &m)), "n={n}");
                seen.insert(m.addr);
            }
            assert_eq!(seen.len(), usize::from(n), "n={n}: every backend is chosen");
            let all: Vec<SocketAddr> = g.backends.iter().map(|m| m.addr).collect();
            let last = *all.last().unwrap();
            for _ in 0..n {
                let m = g
                    .select(b"", &all[..all.len() - 1], &mut |_, _| {})
                    .unwrap();
                assert_eq!(m.addr, last, "n={n}: the one backend not excluded");
            }
            assert!(g.select(b"", &all, &mut |_, _| {}).is_none(), "n={n}");
        }
    }

    /// Random and consistent hashing walk the same way: the member is the group's own, an
    /// excluded backend is never chosen, the same key keeps its backend, and a group with
    /// every backend excluded selects none.
    #[test]
    fn every_algorithm_honours_exclusions() {
        for balance in [Balance::Random, Balance::ConsistentHash] {
            for n in [1u16, 3, 9] {
                let g = group_of(n, balance);
                let all: Vec<SocketAddr> = g.backends.iter().map(|m| m.addr).collect();
                for k in 0..50u32 {
                    let key = k.to_le_bytes();
                    let m = g.select(&key, &all[1..], &mut |_, _| {}).unwrap();
                    assert_eq!(m.addr, all[0], "{balance:?} n={n}");
                    let m = g.select(&key, &[], &mut |_, _| {}).unwrap();
                    assert!(g.backends.iter().any(|b| Arc::ptr_eq(b, &m)));
                    if balance == Balance::ConsistentHash {
                        let again = g.select(&key, &[], &mut |_, _| {}).unwrap();
                        assert_eq!(again.addr, m.addr, "n={n}: a key keeps its backend");
                    }
                }
                assert!(
                    g.select(b"k", &all, &mut |_, _| {}).is_none(),
                    "{balance:?}"
                );
            }
        }
    }
}
