//! gatehouse's plugin API and its built-in plugins.
//!
//! A plugin is a value implementing [`api::Plugin`]; its hooks run inside the gateway's
//! Pingora `ProxyHttp` phases, in the order the route's chain lists them (response hooks and
//! logging in reverse). Built-ins are registered by [`builtins`]; a
//! third-party plugin implements [`api::PluginSpec`] and is registered explicitly.
//! See `plugins/README.md` for the contract and a worked example.

pub mod access;
pub mod api;
pub mod cache;
pub mod cors;
pub mod headers;
pub mod jwt;
#[cfg(feature = "lua")]
pub mod lua;
pub mod rate_limit;
#[cfg(feature = "waf")]
pub mod waf;

pub use api::{
    BuildEnv, BuildError, BuildResult, DecisionMetric, Flow, Plugin, PluginCtx, PluginInstance,
    PluginSpec, Registry, Reply, ReplyBody, RequestInfo,
};

/// A registry with every built-in plugin; register your own plugins on it before passing it
/// to `gatehouse::cli::main` (see `examples/custom_plugin.rs`).
pub fn builtins() -> Registry {
    let mut r = Registry::new();
    r.register::<access::Access>()
        .register::<cache::Cache>()
        .register::<cors::Cors>()
        .register::<headers::Headers>()
        .register::<jwt::Jwt>()
        .register::<rate_limit::RateLimit>();
    #[cfg(feature = "waf")]
    r.register::<waf::Waf>();
    #[cfg(feature = "lua")]
    r.register::<lua::Lua>();
    r
}
