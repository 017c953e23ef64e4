//! Backend selection: Pingora's selection algorithms (`pingora-load-balancing`'s weighted
//! round robin, weighted random and Ketama consistent hashing), walked by gatehouse itself.
//!
//! Pingora's `LoadBalancer::select_with` wraps the algorithm's iterator in a `UniqueIterator`
//! (each candidate SipHashed into a fresh `HashSet`, which allocates) and asks its own health
//! table about every candidate (`Backends::ready`, a second hash). Health is not Pingora's
//! here: its backends start "healthy", so gatehouse keeps its own per-backend state (see
//! [`super::health`]) and the group remembers which members it has looked at in a bit set
//! (see [`super::group::UpstreamGroup::select`]). The algorithms and their order of
//! candidates are Pingora's, unchanged.

use std::collections::BTreeSet;
use std::sync::Arc;

use pingora_load_balancing::selection::{
    BackendIter, BackendSelection, Consistent, Random, RoundRobin,
};
use pingora_load_balancing::Backend;

/// How many candidates a selection may look at before giving up: enough to walk past every
/// unhealthy backend of any realistic group, bounded so a request never scans forever.
pub const MAX_ITERATIONS: usize = 256;

/// The selection algorithm of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Weighted round robin.
    RoundRobin,
    /// Weighted random.
    Random,
    /// Ketama consistent hashing on the group's hash key.
    ConsistentHash,
}

/// One group's selector.
pub enum Balancer {
    RoundRobin(Arc<RoundRobin>),
    Random(Arc<Random>),
    ConsistentHash(Arc<Consistent>),
}

/// What the caller of [`Balancer::select_with`] makes of a candidate.
pub enum Verdict<T> {
    /// Take it: the selection ends with this.
    Take(T),
    /// Look at the next candidate.
    Next,
    /// Every backend has been looked at: the selection ends with none.
    Stop,
}

impl Balancer {
    /// Builds the selector over `backends` (weights already set).
    pub fn new(kind: Balance, backends: &BTreeSet<Backend>) -> Self {
        match kind {
            Balance::RoundRobin => Balancer::RoundRobin(Arc::new(RoundRobin::build(backends))),
            Balance::Random => Balancer::Random(Arc::new(Random::build(backends))),
            Balance::ConsistentHash => {
                Balancer::ConsistentHash(Arc::new(Consistent::build(backends)))
            }
        }
    }

    /// Walks the algorithm's candidates for `key` (which matters only for consistent hashing)
    /// until `judge` takes one or stops, for at most [`MAX_ITERATIONS`] candidates. The same
    /// backend may come more than once: `judge` keeps track of what it has seen.
    #[inline]
    pub fn select_with<T>(
        &self,
        key: &[u8],
        judge: impl FnMut(&Backend) -> Verdict<T>,
    ) -> Option<T> {
        match self {
            Balancer::RoundRobin(s) => walk(s.iter(key), judge),
            Balancer::Random(s) => walk(s.iter(key), judge),
            Balancer::ConsistentHash(s) => walk(s.iter(key), judge),
        }
    }
}

#[inline]
fn walk<T>(mut iter: impl BackendIter, mut judge: impl FnMut(&Backend) -> Verdict<T>) -> Option<T> {
    for _ in 0..MAX_ITERATIONS {
        match judge(iter.next()?) {
            Verdict::Take(t) => return Some(t),
            Verdict::Next => {}
            Verdict::Stop => return None,
        }
    }
    None
}
