//! Raw config -> runtime [`Snapshot`], by area: [`server`], [`upstreams`], [`plugins`],
//! [`routes`]. Checks everything a serde type cannot (references, duplicates, addresses,
//! regexes, plugin configs) and collects every error with its YAML path through one
//! [`Errors`] collector.
//!
//! Compiling has no side effects on what is running: it reads the previous snapshot to reuse
//! what did not change (upstream groups, backend health, breakers, plugin instances) and
//! writes nothing of it, creates no metric series and starts no background work. What must
//! be installed happens when the snapshot is published (`crate::reload::publish`).

mod plugins;
mod routes;
mod server;
mod upstreams;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use gatehouse_plugins::Registry;

use super::error::{ConfigError, Errors};
use super::raw::RawConfig;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::state::Snapshot;

/// What compiling needs besides the raw config.
pub struct CompileEnv<'a> {
    pub registry: &'a Registry,
    /// Lends the metric vectors routes and groups resolve their series from (on first use).
    pub metrics: &'a Metrics,
    /// Directory of the config file (relative paths in plugin configs resolve against it).
    pub base_dir: PathBuf,
    /// The running snapshot, whose state is reused where the config did not change.
    pub previous: Option<&'a Snapshot>,
    /// Version of the snapshot to build.
    pub version: u64,
}

/// Compiles `raw` into a snapshot, or returns every error found.
pub fn compile(raw: RawConfig, env: &CompileEnv<'_>) -> Result<Snapshot, Vec<ConfigError>> {
    let mut errs = Errors::default();
    let server = server::compile_server(&raw.server, &mut errs.scope("server"));
    server::check_admin(&raw.admin, &mut errs.scope("admin"));

    let mut upstreams = HashMap::new();
    for (name, ru) in &raw.upstreams {
        let prev = env
            .previous
            .and_then(|p| Some((p.raw.upstreams.get(name)?, p.upstreams.get(name)?)));
        let mut s = errs.scope(format!("upstreams.{name}"));
        if let Some(g) = upstreams::compile_upstream(name, ru, prev, &mut s) {
            upstreams.insert(name.clone(), g);
        }
    }

    let mut chains = plugins::Chains::new(env);
    let global = chains.chain(&raw.plugins, None, &mut errs.scope("plugins"));
    let route_env = routes::RouteEnv {
        upstreams: &upstreams,
        upstream_names: raw.upstreams.keys().map(String::as_str).collect(),
        max_body_size: raw.server.limits.max_body_size.0,
        global,
        metrics: env.metrics,
    };
    let mut ids = std::collections::HashSet::new();
    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut matches = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.iter().enumerate() {
        let mut s = errs.scope(format!("routes[{i}]"));
        if let Some((route, m)) =
            routes::compile_route(r, &route_env, &mut chains, &mut ids, &mut s)
        {
            routes.push(Arc::new(route));
            matches.push(m);
        }
    }
    drop(route_env);

    if !errs.is_empty() {
        return Err(errs.into_vec());
    }
    Ok(Snapshot {
        version: env.version,
        router: Router::new(matches),
        routes,
        upstreams,
        plugins: chains.built,
        source_hash: String::new(),
        source: serde_yaml::Value::Null,
        server,
        raw,
    })
}
