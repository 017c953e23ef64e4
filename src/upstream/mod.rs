//! Upstream groups: the backends of one `upstreams.<name>` entry, how one is picked
//! ([`balancer`]), and their active health ([`health`]).

pub mod balancer;
pub mod breaker;
pub mod group;
pub mod health;
pub mod retry;
pub mod tls;

pub use group::{BackendState, HashKey, UpstreamGroup};
