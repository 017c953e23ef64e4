//! Backend selection: an enum over Pingora's `LoadBalancer` algorithms so the request path
//! makes one static call, no boxing. Health is not Pingora's here: its backends start
//! "healthy", so gatehouse keeps its own per-backend state (see [`super::health`]) and passes
//! it in through `select_with`.

use std::collections::BTreeSet;

use futures::FutureExt;
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::selection::{Consistent, Random, RoundRobin};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};

/// How many candidates `select_with` may look at before giving up: enough to walk past every
/// unhealthy backend of any realistic group, bounded so a request never scans forever.
const MAX_ITERATIONS: usize = 256;

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
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    ConsistentHash(LoadBalancer<Consistent>),
}

fn build<S>(backends: BTreeSet<Backend>) -> Result<LoadBalancer<S>, String>
where
    S: pingora_load_balancing::selection::BackendSelection + 'static,
    S::Iter: pingora_load_balancing::selection::BackendIter,
{
    let lb = LoadBalancer::<S>::from_backends(Backends::new(Static::new(backends)));
    // Static discovery never awaits: the update completes on the first poll.
    match lb.update().now_or_never() {
        Some(Ok(())) => Ok(lb),
        Some(Err(e)) => Err(format!("building the backend selector failed: {e}")),
        None => Err("building the backend selector did not complete".to_string()),
    }
}

impl Balancer {
    /// Builds the selector over `backends` (weights already set).
    pub fn new(kind: Balance, backends: BTreeSet<Backend>) -> Result<Self, String> {
        Ok(match kind {
            Balance::RoundRobin => Balancer::RoundRobin(build(backends)?),
            Balance::Random => Balancer::Random(build(backends)?),
            Balance::ConsistentHash => Balancer::ConsistentHash(build(backends)?),
        })
    }

    /// Picks a backend that `accept` admits; `key` matters only for consistent hashing.
    /// `None` when no admitted backend was found.
    #[inline]
    pub fn select_with(&self, key: &[u8], accept: impl Fn(&Backend) -> bool) -> Option<Backend> {
        let f = |b: &Backend, _pingora_health: bool| accept(b);
        match self {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_ITERATIONS, f),
            Balancer::Random(lb) => lb.select_with(key, MAX_ITERATIONS, f),
            Balancer::ConsistentHash(lb) => lb.select_with(key, MAX_ITERATIONS, f),
        }
    }
}
