//! gatehouse: an API gateway and edge reverse proxy on Pingora.
//!
//! One YAML file ([`config`]) compiles into an immutable [`state::Snapshot`]; the proxy
//! ([`proxy::Gateway`]) routes each request ([`router`]) through the route's plugin chain to a
//! health-checked [`upstream`] group. [`app`] wires the Pingora services together;
//! [`cli`] is the command line, one entry point for the built-in and any custom registry.

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod otlp;
pub mod proxy;
pub mod purge_feed;
pub mod redis_link;
pub mod reload;
pub mod router;
pub mod state;
pub mod status;
pub mod tls;
pub mod upstream;
