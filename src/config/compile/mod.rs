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
mod redis;
mod routes;
mod server;
mod tracing;
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
    let server = server::compile_server(
        &raw.server,
        &env.base_dir,
        raw.acme.is_some(),
        &mut errs.scope("server"),
    );
    server::check_admin(&raw.admin, &mut errs.scope("admin"));

    let mut upstreams = HashMap::new();
    for (name, ru) in &raw.upstreams {
        let prev = env
            .previous
            .and_then(|p| Some((p.raw.upstreams.get(name)?, p.upstreams.get(name)?)));
        let mut s = errs.scope(format!("upstreams.{name}"));
        if let Some(g) = upstreams::compile_upstream(name, ru, prev, &env.base_dir, &mut s) {
            upstreams.insert(name.clone(), g);
        }
    }

    let redis = redis::compile_redis(raw.redis.as_ref(), env, &mut errs.scope("redis"));
    // plugin instances hold the link they were built with: a changed link rebuilds them
    let same_link = match (env.previous.and_then(|p| p.redis.as_ref()), &redis) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    };
    let global = redis
        .clone()
        .map(|l| l as Arc<dyn gatehouse_plugins::api::GlobalCounters>);
    let tracing = tracing::compile_tracing(raw.tracing.as_ref(), env, &mut errs.scope("tracing"));
    let acme = crate::acme::compile(raw.acme.as_ref(), &env.base_dir, &mut errs.scope("acme"));
    let mut chains = plugins::Chains::new(env, global, same_link);
    let global_chain = chains.chain(&raw.plugins, None, &mut errs.scope("plugins"));
    let route_env = routes::RouteEnv {
        upstreams: &upstreams,
        upstream_names: raw.upstreams.keys().map(String::as_str).collect(),
        max_body_size: raw.server.limits.max_body_size.0,
        asks_client_certs: raw.server.listen.iter().any(|l| {
            matches!(l, crate::config::raw::RawListen::Full(crate::config::raw::RawListener { tls: Some(t), .. })
                if t.client_auth.mode != crate::config::raw::ClientAuthMode::None)
        }),
        global: global_chain,
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
        redis,
        tracing,
        acme,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_tree;

    fn compile_text(yaml: &str, previous: Option<&Snapshot>) -> Result<Snapshot, Vec<String>> {
        let (raw, _) = parse_tree(yaml, &|_| None).unwrap();
        let registry = gatehouse_plugins::builtins();
        let metrics = Metrics::new().unwrap();
        let env = CompileEnv {
            registry: &registry,
            metrics: &metrics,
            base_dir: PathBuf::from("."),
            previous,
            version: previous.map_or(1, |p| p.version + 1),
        };
        compile(raw, &env).map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    const BASE: &str = "upstreams:\n  up:\n    backends: [\"127.0.0.1:1\"]\n";

    #[test]
    fn plugin_errors_carry_the_entry_path() {
        let errs = compile_text(
            &format!(
                "{BASE}plugins:\n  - {{ headers: {{}}, cors: {{}} }}\nroutes:\n  - id: r\n    upstream: up\n    plugins:\n      - nope: {{}}\n      - rate_limit: {{ requests: 0, per: 1s }}\n      - cache: {{ default_ttl: soon }}\n"
            ),
            None,
        )
        .err()
        .unwrap();
        let mut kinds = vec!["access", "cache", "cors", "headers", "jwt"];
        if cfg!(feature = "lua") {
            kinds.push("lua");
        }
        kinds.push("rate_limit");
        if cfg!(feature = "waf") {
            kinds.push("waf");
        }
        let known = kinds.join(", ");
        assert_eq!(
            errs,
            [
                "plugins[0]: a plugin entry is a mapping with one key, its kind: `- headers: {...}`",
                &format!("routes[0].plugins[0].nope: unknown plugin kind `nope` (known: {known})"),
                "routes[0].plugins[1].rate_limit.requests: must be at least 1",
                "routes[0].plugins[2].cache.default_ttl: invalid duration `soon`: write a number and a unit (ms, s, m, h, d), e.g. \"10s\"",
            ]
        );
    }

    #[test]
    fn route_errors_and_unknown_upstreams() {
        let errs = compile_text(
            &format!(
                "{BASE}  bad:\n    backends: []\nroutes:\n  - {{ id: a, upstream: nope }}\n  - {{ id: a, upstream: bad }}\n  - {{ id: c, upstream: up, strip_prefix: true, match: {{ path_exact: /x }} }}\n"
            ),
            None,
        )
        .err()
        .unwrap();
        assert_eq!(
            errs,
            [
                "upstreams.bad.backends: needs at least one backend",
                "routes[0].upstream: unknown upstream `nope`",
                "routes[1].id: duplicate route id `a`",
                "routes[1].upstream: upstream `bad` has errors",
                "routes[2].strip_prefix: needs match.path_prefix",
            ]
        );
    }

    #[test]
    fn unchanged_entries_keep_their_instances_and_groups() {
        let yaml = format!(
            "{BASE}routes:\n  - id: r\n    upstream: up\n    plugins: [ {{ rate_limit: {{ requests: 5, per: 1s }} }}, {{ rate_limit: {{ requests: 5, per: 1s }} }} ]\n"
        );
        let first = compile_text(&yaml, None).unwrap();
        assert_eq!(first.plugins.len(), 2, "two occurrences, two instances");
        let second = compile_text(&yaml, Some(&first)).unwrap();
        let same = |a: &gatehouse_plugins::PluginInstance,
                    b: &gatehouse_plugins::PluginInstance| {
            Arc::ptr_eq(&a.plugin, &b.plugin)
        };
        for (x, y) in first.routes[0].chain.iter().zip(&second.routes[0].chain) {
            assert!(same(x, y));
            assert_eq!(x.kind, "rate_limit");
        }
        assert!(Arc::ptr_eq(&first.upstreams["up"], &second.upstreams["up"]));
        let changed = compile_text(
            &yaml.replacen("requests: 5", "requests: 6", 1),
            Some(&first),
        )
        .unwrap();
        let chain = &changed.routes[0].chain;
        assert!(
            !same(&chain[0], &first.routes[0].chain[0]),
            "its config changed"
        );
        assert_eq!(chain.len(), 2);
    }
}
