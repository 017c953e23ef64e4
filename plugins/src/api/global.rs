//! Counters shared by every gatehouse instance (the top-level `redis` section): what a plugin
//! sees of them. The gateway owns the one connection per process and hands plugins a
//! [`GlobalCounters`] through [`crate::api::BuildEnv::global`]; plugins never open their own.

use std::time::Duration;

use async_trait::async_trait;

/// The answer of one atomic check-and-count on the shared store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalDecision {
    /// Whether the hit fit within the limit (and was counted).
    pub allowed: bool,
    /// What is left of the limit after this hit.
    pub remaining: u64,
    /// Time until the current window ends (on the store's clock).
    pub reset: Duration,
}

/// Why the shared store gave no answer: the caller falls back ([`OnError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalError {
    /// The call did not finish within the configured `timeout`.
    Timeout,
    /// The breaker is open after repeated failures: the store is not being called.
    Unavailable,
    /// The store answered with an error, or the connection failed.
    Failed,
}

impl GlobalError {
    /// A metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            GlobalError::Timeout => "timeout",
            GlobalError::Unavailable => "breaker_open",
            GlobalError::Failed => "error",
        }
    }
}

/// What a limiter does while the shared store cannot answer (`redis.on_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Each instance enforces its share, `ceil(limit / live instances)`, on its own counters.
    #[default]
    Local,
    /// Admit.
    Allow,
    /// Refuse with 503 and `Retry-After`.
    Deny,
}

/// Sliding-window counters shared across instances.
#[async_trait]
pub trait GlobalCounters: Send + Sync + std::fmt::Debug + 'static {
    /// Atomically counts `admitted` hits already let through (whatever the limit), then
    /// checks `key` against `limit` hits per `window` and, when `cost` more fit, counts them
    /// (the store's clock decides the window, so instance clocks do not matter). Never
    /// retried: a retried count could count twice.
    async fn hit(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        cost: u64,
        admitted: u64,
    ) -> Result<GlobalDecision, GlobalError>;

    /// Adds counts already admitted (`items`: key and how many) to their windows in one
    /// round trip, whatever the limit: the estimate of each window afterwards, and the time
    /// to its end. Never retried: a failed batch may have counted in part, and its counts are
    /// dropped rather than counted twice.
    async fn add_batch(
        &self,
        items: &[(&str, u64)],
        window: Duration,
    ) -> Result<Vec<(u64, Duration)>, GlobalError>;

    /// The prefix every key of this gateway's starts with (`redis.key_prefix`).
    fn key_prefix(&self) -> &str;

    /// What to do without an answer.
    fn on_error(&self) -> OnError;

    /// The gateway instances alive now, as last seen in the store (at least 1).
    fn instances(&self) -> u64;
}
