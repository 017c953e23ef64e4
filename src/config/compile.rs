//! Raw config -> runtime [`Snapshot`]. Checks everything a serde type cannot (references,
//! duplicates, addresses, regexes, plugin configs) and collects every error with its YAML path.
//! Upstream groups whose raw config is unchanged since `previous` are reused as they are, so a
//! reload keeps their health state; a changed group keeps the state of backends that stayed.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use gatehouse_plugins::{BuildEnv, Plugin, Registry};
use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use regex::Regex;

use super::error::ConfigError;
use super::raw::{RawBalance, RawConfig, RawMatch, RawPlugin, RawRoute, RawUpstream};
use crate::metrics::{Metrics, RouteMetrics};
use crate::router::{HostMatch, PathMatch, RouteMatch, Router};
use crate::state::{Route, ServerSettings, Snapshot, UpstreamHost};
use crate::upstream::breaker::BreakerConfig;
use crate::upstream::group::Timeouts;
use crate::upstream::health::HealthSpec;
use crate::upstream::retry::RetryPolicy;
use crate::upstream::{HashKey, UpstreamGroup};

/// Largest accepted backend weight (the selector's table grows with the sum of weights).
pub const MAX_WEIGHT: u64 = 1000;

/// What compiling needs besides the raw config.
pub struct CompileEnv<'a> {
    pub registry: &'a Registry,
    pub metrics: &'a Metrics,
    /// Directory of the config file (relative paths in plugin configs resolve against it).
    pub base_dir: PathBuf,
    /// The running snapshot, whose state is reused where the config did not change.
    pub previous: Option<&'a Snapshot>,
    /// Version of the snapshot to build.
    pub version: u64,
}

/// Parses `ip:port` (or `[v6]:port`).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!("invalid listen address `{s}`: expected ip:port, e.g. \"0.0.0.0:8080\"")
    })
}

fn resolve_backend(addr: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    if !addr.contains(':') {
        return Err(format!(
            "invalid backend address `{addr}`: expected host:port"
        ));
    }
    let mut v: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("invalid backend address `{addr}`: {e}"))?
        .collect();
    v.sort();
    v.dedup();
    if v.is_empty() {
        return Err(format!("backend address `{addr}` resolves to nothing"));
    }
    Ok(v)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn compile_upstream(
    name: &str,
    raw: &RawUpstream,
    previous: Option<&Arc<UpstreamGroup>>,
    metrics: &Metrics,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<UpstreamGroup>> {
    let p = format!("upstreams.{name}");
    if let Some(prev) = previous.filter(|g| g.raw == *raw) {
        return Some(Arc::clone(prev));
    }
    let before = errors.len();
    if !valid_name(name) {
        errors.push(ConfigError::new(
            &p,
            "upstream names use letters, digits, `-`, `_` and `.`",
        ));
    }
    if raw.backends.is_empty() {
        errors.push(ConfigError::new(
            format!("{p}.backends"),
            "needs at least one backend",
        ));
    }
    let mut addrs = Vec::new();
    let mut seen = HashSet::new();
    for (i, b) in raw.backends.iter().enumerate() {
        let bp = format!("{p}.backends[{i}]");
        if b.weight == 0 || b.weight > MAX_WEIGHT {
            errors.push(ConfigError::new(
                format!("{bp}.weight"),
                format!("weight must be 1..={MAX_WEIGHT}"),
            ));
            continue;
        }
        match resolve_backend(&b.addr) {
            Ok(list) => {
                for a in list {
                    if !seen.insert(a) {
                        errors.push(ConfigError::new(
                            &bp,
                            format!("backend {a} is listed twice"),
                        ));
                    }
                    addrs.push((a, b.weight as usize));
                }
            }
            Err(e) => errors.push(ConfigError::new(&bp, e)),
        }
    }
    let hash_key = match (&raw.balance, raw.hash_key.as_deref()) {
        (RawBalance::ConsistentHash, None | Some("client_ip")) => Some(HashKey::ClientIp),
        (RawBalance::ConsistentHash, Some("path")) => Some(HashKey::Path),
        (RawBalance::ConsistentHash, Some(k)) => match k
            .strip_prefix("header:")
            .map(|h| HeaderName::from_bytes(h.trim().as_bytes()))
        {
            Some(Ok(h)) => Some(HashKey::Header(h)),
            _ => {
                errors.push(ConfigError::new(
                    format!("{p}.hash_key"),
                    format!("unknown hash key `{k}`: use client_ip, path or \"header:<Name>\""),
                ));
                None
            }
        },
        (_, Some(_)) => {
            errors.push(ConfigError::new(
                format!("{p}.hash_key"),
                "hash_key is only used with balance: consistent_hash",
            ));
            None
        }
        (_, None) => None,
    };
    let health = match &raw.health_check {
        None => None,
        Some(hc) => {
            let hp = format!("{p}.health_check");
            let mut ok = true;
            for (v, field) in [
                (hc.healthy_after, "healthy_after"),
                (hc.unhealthy_after, "unhealthy_after"),
            ] {
                if v == 0 {
                    errors.push(ConfigError::new(
                        format!("{hp}.{field}"),
                        "must be at least 1",
                    ));
                    ok = false;
                }
            }
            for (d, field) in [(hc.interval.0, "interval"), (hc.timeout.0, "timeout")] {
                if d.is_zero() {
                    errors.push(ConfigError::new(
                        format!("{hp}.{field}"),
                        "must be greater than 0",
                    ));
                    ok = false;
                }
            }
            match (&hc.http, &hc.tcp) {
                (Some(h), None) if ok => {
                    if !h.path.starts_with('/') {
                        errors.push(ConfigError::new(
                            format!("{hp}.http.path"),
                            "must start with `/`",
                        ));
                        None
                    } else if !(100..=599).contains(&h.expect_status) {
                        errors.push(ConfigError::new(
                            format!("{hp}.http.expect_status"),
                            "must be an HTTP status (100-599)",
                        ));
                        None
                    } else {
                        let host = h.host.as_deref().unwrap_or("localhost");
                        match HealthSpec::http(
                            &h.path,
                            host,
                            h.expect_status,
                            hc.interval.0,
                            hc.timeout.0,
                            hc.healthy_after,
                            hc.unhealthy_after,
                        ) {
                            Ok(s) => Some(s),
                            Err(e) => {
                                errors.push(ConfigError::new(format!("{hp}.http"), e));
                                None
                            }
                        }
                    }
                }
                (None, Some(_)) if ok => Some(HealthSpec::tcp(
                    hc.interval.0,
                    hc.timeout.0,
                    hc.healthy_after,
                    hc.unhealthy_after,
                )),
                (Some(_), Some(_)) | (None, None) => {
                    errors.push(ConfigError::new(&hp, "set exactly one of `http` or `tcp`"));
                    None
                }
                _ => None,
            }
        }
    };
    let t = &raw.timeouts;
    for (d, field) in [
        (t.connect, "connect"),
        (t.read, "read"),
        (t.write, "write"),
        (t.idle, "idle"),
    ] {
        if d.0.is_zero() {
            errors.push(ConfigError::new(
                format!("{p}.timeouts.{field}"),
                "must be greater than 0",
            ));
        }
    }
    let breaker = raw.circuit_breaker.as_ref().and_then(|b| {
        let bp = format!("{p}.circuit_breaker");
        let mut ok = true;
        for (v, field) in [
            (b.consecutive_failures, "consecutive_failures"),
            (b.min_requests, "min_requests"),
            (b.half_open_requests, "half_open_requests"),
        ] {
            if v == 0 {
                errors.push(ConfigError::new(
                    format!("{bp}.{field}"),
                    "must be at least 1",
                ));
                ok = false;
            }
        }
        if !(b.failure_ratio > 0.0 && b.failure_ratio <= 1.0) {
            errors.push(ConfigError::new(
                format!("{bp}.failure_ratio"),
                "must be in (0, 1]",
            ));
            ok = false;
        }
        for (d, field) in [(b.window, "window"), (b.open_for, "open_for")] {
            if d.0 < std::time::Duration::from_millis(10) {
                errors.push(ConfigError::new(
                    format!("{bp}.{field}"),
                    "must be at least 10ms",
                ));
                ok = false;
            }
        }
        ok.then_some(BreakerConfig {
            consecutive_failures: b.consecutive_failures,
            failure_ratio: b.failure_ratio,
            min_requests: b.min_requests,
            window: b.window.0,
            open_for: b.open_for.0,
            half_open_requests: b.half_open_requests,
        })
    });
    let retry = match &raw.retry {
        None => RetryPolicy::default(),
        Some(r) => {
            let rp = format!("{p}.retry");
            let mut policy = RetryPolicy {
                attempts: r.attempts,
                on_connect: false,
                on_timeout: false,
                on_reset: false,
                on_status: Vec::new(),
                backoff: r.backoff.map_or(std::time::Duration::ZERO, |b| b.0),
                budget: r.budget,
            };
            if r.attempts > 10 {
                errors.push(ConfigError::new(format!("{rp}.attempts"), "at most 10"));
            }
            if !(0.0..=1.0).contains(&r.budget) {
                errors.push(ConfigError::new(
                    format!("{rp}.budget"),
                    "a fraction between 0 and 1",
                ));
            }
            for (i, on) in r.on.iter().enumerate() {
                match on.as_str() {
                    "connect_failure" => policy.on_connect = true,
                    "timeout" => policy.on_timeout = true,
                    "reset" => policy.on_reset = true,
                    s => match s.parse::<u16>() {
                        Ok(code) if (500..=599).contains(&code) => policy.on_status.push(code),
                        _ => errors.push(ConfigError::new(
                            format!("{rp}.on[{i}]"),
                            format!("`{s}`: use connect_failure, timeout, reset or a 5xx status"),
                        )),
                    },
                }
            }
            policy
        }
    };
    if errors.len() > before {
        return None;
    }
    let idle = raw
        .pool
        .as_ref()
        .and_then(|p| p.idle_timeout)
        .map_or(t.idle.0, |d| d.0);
    let timeouts = Timeouts {
        connect: t.connect.0,
        read: t.read.0,
        write: t.write.0,
        idle,
    };
    match UpstreamGroup::new(
        name,
        raw.clone(),
        addrs,
        hash_key,
        health,
        timeouts,
        breaker,
        retry,
        previous.map(|g| &**g),
    ) {
        Ok(mut g) => {
            g.latency = Some(metrics.upstream_duration.with_label_values(&[name]));
            Some(Arc::new(g))
        }
        Err(e) => {
            errors.push(ConfigError::new(&p, e));
            None
        }
    }
}

/// Identifies a plugin entry across reloads: its chain, kind, exact config and which
/// occurrence of that same entry in the chain it is. An entry whose key existed in the previous
/// snapshot keeps its instance (and so its state: rate-limit windows, JWKS key sets, caches).
pub type PluginKey = (String, String, String, usize);

fn compile_plugins(
    list: &[RawPlugin],
    path: &str,
    env: &CompileEnv<'_>,
    route_id: Option<&str>,
    built: &mut HashMap<PluginKey, Arc<dyn Plugin>>,
    errors: &mut Vec<ConfigError>,
) -> Vec<Arc<dyn Plugin>> {
    let mut out = Vec::with_capacity(list.len());
    let scope = route_id.map_or_else(|| "plugins".to_string(), |r| format!("routes:{r}"));
    for (i, entry) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let mut it = entry.iter();
        let (kind, cfg) = match (it.next(), it.next()) {
            (Some((serde_yaml::Value::String(k), v)), None) => (k.as_str(), v.clone()),
            _ => {
                errors.push(ConfigError::new(
                    &p,
                    "a plugin entry is a mapping with one key, its kind: `- headers: {...}`",
                ));
                continue;
            }
        };
        let p = format!("{p}.{kind}");
        if !env.registry.contains(kind) {
            errors.push(ConfigError::new(
                &p,
                format!(
                    "unknown plugin kind `{kind}` (known: {})",
                    env.registry.kinds().join(", ")
                ),
            ));
            continue;
        }
        let text = serde_yaml::to_string(&cfg).unwrap_or_default();
        let occurrence = built
            .keys()
            .filter(|k| k.0 == scope && k.1 == kind && k.2 == text)
            .count();
        let key: PluginKey = (scope.clone(), kind.to_string(), text, occurrence);
        if let Some(prev) = env.previous.and_then(|s| s.plugins.get(&key)) {
            built.insert(key, Arc::clone(prev));
            out.push(Arc::clone(prev));
            continue;
        }
        let mut benv = BuildEnv {
            base_dir: env.base_dir.clone(),
            route_id: route_id.map(str::to_string),
            warnings: Vec::new(),
        };
        match env.registry.build(kind, cfg, &benv) {
            Ok(pl) => {
                built.insert(key, Arc::clone(&pl));
                out.push(pl)
            }
            Err(e) => {
                let ep = if e.path.is_empty() {
                    p.clone()
                } else {
                    format!("{p}.{}", e.path)
                };
                errors.push(ConfigError::new(ep, e.message));
            }
        }
        for w in benv.warnings.drain(..) {
            log::warn!("{p}: {w}");
        }
    }
    out
}

fn compile_match(m: &RawMatch, p: &str, errors: &mut Vec<ConfigError>) -> Option<RouteMatch> {
    let before = errors.len();
    let host = match m.host.as_deref() {
        None => HostMatch::Any,
        Some(h) => {
            let h = h.trim().to_ascii_lowercase();
            let (wild, name) = match h.strip_prefix("*.") {
                Some(rest) => (true, rest.to_string()),
                None => (false, h.clone()),
            };
            let ok = !name.is_empty()
                && name.split('.').all(|l| {
                    !l.is_empty()
                        && l.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                });
            if !ok {
                errors.push(ConfigError::new(
                    format!("{p}.host"),
                    format!("invalid host `{h}`: a name like api.example.com or *.example.com"),
                ));
                HostMatch::Any
            } else if wild {
                HostMatch::Wildcard(name)
            } else {
                HostMatch::Exact(name)
            }
        }
    };
    let set = [
        m.path_prefix.is_some(),
        m.path_exact.is_some(),
        m.path_regex.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set > 1 {
        errors.push(ConfigError::new(
            p,
            "use only one of path_prefix, path_exact, path_regex",
        ));
    }
    let path = if let Some(re) = &m.path_regex {
        match Regex::new(re) {
            Ok(r) => PathMatch::Regex(r),
            Err(e) => {
                errors.push(ConfigError::new(
                    format!("{p}.path_regex"),
                    format!("invalid regex: {e}"),
                ));
                PathMatch::Prefix("/".into())
            }
        }
    } else if let Some(e) = &m.path_exact {
        if !e.starts_with('/') {
            errors.push(ConfigError::new(
                format!("{p}.path_exact"),
                "must start with `/`",
            ));
        }
        PathMatch::Exact(e.clone())
    } else {
        let pre = m.path_prefix.clone().unwrap_or_else(|| "/".into());
        if !pre.starts_with('/') {
            errors.push(ConfigError::new(
                format!("{p}.path_prefix"),
                "must start with `/`",
            ));
        }
        PathMatch::Prefix(pre)
    };
    let methods = match &m.methods {
        None => None,
        Some(list) => {
            let mut v = Vec::with_capacity(list.len());
            for (i, s) in list.iter().enumerate() {
                match Method::from_bytes(s.to_ascii_uppercase().as_bytes()) {
                    Ok(mm) if !s.is_empty() => v.push(mm),
                    _ => errors.push(ConfigError::new(
                        format!("{p}.methods[{i}]"),
                        format!("invalid method `{s}`"),
                    )),
                }
            }
            if list.is_empty() {
                errors.push(ConfigError::new(
                    format!("{p}.methods"),
                    "an empty list matches nothing; omit it to match any method",
                ));
            }
            Some(v)
        }
    };
    let mut headers = Vec::new();
    for (k, v) in &m.headers {
        match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(n), Ok(val)) => headers.push((n, val)),
            (Err(_), _) => errors.push(ConfigError::new(
                format!("{p}.headers.{k}"),
                "invalid header name",
            )),
            (_, Err(_)) => errors.push(ConfigError::new(
                format!("{p}.headers.{k}"),
                "invalid header value",
            )),
        }
    }
    (errors.len() == before).then_some(RouteMatch {
        host,
        path,
        methods,
        headers,
    })
}

/// Compiles `raw` into a snapshot, or returns every error found.
pub fn compile(raw: RawConfig, env: &CompileEnv<'_>) -> Result<Snapshot, Vec<ConfigError>> {
    let mut errors = Vec::new();

    if raw.server.listen.is_empty() {
        errors.push(ConfigError::new(
            "server.listen",
            "needs at least one address",
        ));
    }
    for (i, l) in raw.server.listen.iter().enumerate() {
        if let Err(e) = parse_listen(l) {
            errors.push(ConfigError::new(format!("server.listen[{i}]"), e));
        }
    }
    if raw.server.threads == Some(0) {
        errors.push(ConfigError::new(
            "server.threads",
            "must be at least 1 (omit it for one per CPU)",
        ));
    }
    let mut trusted = Vec::new();
    for (i, t) in raw.server.trusted_proxies.iter().enumerate() {
        match t
            .parse::<IpNet>()
            .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
        {
            Ok(n) => trusted.push(n),
            Err(_) => errors.push(ConfigError::new(
                format!("server.trusted_proxies[{i}]"),
                format!("invalid CIDR `{t}`"),
            )),
        }
    }
    if raw.server.access_log.trim().is_empty() {
        errors.push(ConfigError::new(
            "server.access_log",
            "use stdout, off or a file path",
        ));
    }
    let lim = &raw.server.limits;
    for (v, field) in [
        (lim.max_body_size.0, "max_body_size"),
        (lim.max_header_size.0, "max_header_size"),
    ] {
        if v == 0 {
            errors.push(ConfigError::new(
                format!("server.limits.{field}"),
                "must be greater than 0",
            ));
        }
    }
    if lim.max_headers == 0 || lim.max_headers > 256 {
        errors.push(ConfigError::new(
            "server.limits.max_headers",
            "must be 1..=256",
        ));
    }
    if lim.max_connections == 0 {
        errors.push(ConfigError::new(
            "server.limits.max_connections",
            "must be at least 1",
        ));
    }
    for (d, field) in [
        (lim.header_read_timeout, "header_read_timeout"),
        (lim.body_read_timeout, "body_read_timeout"),
    ] {
        if d.0.is_zero() {
            errors.push(ConfigError::new(
                format!("server.limits.{field}"),
                "must be greater than 0",
            ));
        }
    }
    if let Some(b) = &raw.server.latency_buckets {
        if b.is_empty()
            || b.iter().any(|v| !v.is_finite() || *v <= 0.0)
            || b.windows(2).any(|w| w[0] >= w[1])
        {
            errors.push(ConfigError::new(
                "server.latency_buckets",
                "a non-empty list of increasing positive seconds",
            ));
        }
    }
    if raw.server.cache.max_size.0 == 0 {
        errors.push(ConfigError::new(
            "server.cache.max_size",
            "must be greater than 0",
        ));
    }
    if raw.server.cache.lock_timeout.0.is_zero() {
        errors.push(ConfigError::new(
            "server.cache.lock_timeout",
            "must be greater than 0",
        ));
    }
    if let Err(e) = parse_listen(&raw.admin.listen) {
        errors.push(ConfigError::new("admin.listen", e));
    }

    let mut upstreams = HashMap::new();
    for (name, ru) in &raw.upstreams {
        let prev = env.previous.and_then(|s| s.upstreams.get(name));
        if let Some(g) = compile_upstream(name, ru, prev, env.metrics, &mut errors) {
            upstreams.insert(name.clone(), g);
        }
    }

    let mut built = HashMap::new();
    let global = compile_plugins(&raw.plugins, "plugins", env, None, &mut built, &mut errors);

    let raw_names: HashSet<&str> = raw.upstreams.keys().map(String::as_str).collect();
    let mut ids = HashSet::new();
    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut matches = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        if let Some((route, m)) = compile_route(
            r,
            &p,
            &upstreams,
            &raw_names,
            raw.server.limits.max_body_size.0,
            &global,
            env,
            &mut ids,
            &mut built,
            &mut errors,
        ) {
            routes.push(Arc::new(route));
            matches.push(m);
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Snapshot {
        version: env.version,
        router: Router::new(matches),
        routes,
        upstreams,
        plugins: built,
        source_hash: String::new(),
        source: serde_yaml::Value::Null,
        server: ServerSettings {
            trusted_proxies: trusted,
            max_header_size: usize::try_from(raw.server.limits.max_header_size.0)
                .unwrap_or(usize::MAX),
            max_headers: raw.server.limits.max_headers,
            body_read_timeout: raw.server.limits.body_read_timeout.0,
            header_read_timeout: raw.server.limits.header_read_timeout.0,
            max_connections: raw.server.limits.max_connections,
        },
        raw,
    })
}

#[allow(clippy::too_many_arguments)]
fn compile_route(
    r: &RawRoute,
    p: &str,
    upstreams: &HashMap<String, Arc<UpstreamGroup>>,
    raw_names: &HashSet<&str>,
    server_max_body: u64,
    global: &[Arc<dyn Plugin>],
    env: &CompileEnv<'_>,
    ids: &mut HashSet<String>,
    built: &mut HashMap<PluginKey, Arc<dyn Plugin>>,
    errors: &mut Vec<ConfigError>,
) -> Option<(Route, RouteMatch)> {
    let before = errors.len();
    if !valid_name(&r.id) {
        errors.push(ConfigError::new(
            format!("{p}.id"),
            "route ids use letters, digits, `-`, `_` and `.`",
        ));
    } else if !ids.insert(r.id.clone()) {
        errors.push(ConfigError::new(
            format!("{p}.id"),
            format!("duplicate route id `{}`", r.id),
        ));
    }
    let upstream = upstreams.get(&r.upstream).cloned();
    if upstream.is_none() {
        let msg = if raw_names.contains(r.upstream.as_str()) {
            format!("upstream `{}` has errors", r.upstream)
        } else {
            format!("unknown upstream `{}`", r.upstream)
        };
        errors.push(ConfigError::new(format!("{p}.upstream"), msg));
    }
    let m = compile_match(&r.matcher, &format!("{p}.match"), errors);
    let strip_prefix = match (r.strip_prefix, &m) {
        (false, _) => None,
        (
            true,
            Some(RouteMatch {
                path: PathMatch::Prefix(pre),
                ..
            }),
        ) => Some(pre.trim_end_matches('/').to_string()),
        (true, _) => {
            errors.push(ConfigError::new(
                format!("{p}.strip_prefix"),
                "needs match.path_prefix",
            ));
            None
        }
    };
    let upstream_host = match r.upstream_host.as_str() {
        "keep" => UpstreamHost::Keep,
        "backend" => UpstreamHost::Backend,
        other => match HeaderValue::from_str(other) {
            Ok(v) if !other.is_empty() => UpstreamHost::Fixed(v),
            _ => {
                errors.push(ConfigError::new(
                    format!("{p}.upstream_host"),
                    "use keep, backend or a host name",
                ));
                UpstreamHost::Keep
            }
        },
    };
    let own = compile_plugins(
        &r.plugins,
        &format!("{p}.plugins"),
        env,
        Some(&r.id),
        built,
        errors,
    );
    if errors.len() > before {
        return None;
    }
    let mut chain = global.to_vec();
    chain.extend(own);
    let pos = |kind: &str| chain.iter().position(|p| p.kind() == kind);
    if let (Some(cors), Some(auth)) = (pos("cors"), pos("jwt")) {
        if cors > auth {
            log::warn!(
                "{p}.plugins: cors runs after jwt, so CORS preflights (which carry no token) get 401; list cors first"
            );
        }
    }
    let max_body_size = r.max_body_size.map_or(server_max_body, |s| s.0);
    if r.max_body_size.is_some_and(|s| s.0 == 0) {
        errors.push(ConfigError::new(
            format!("{p}.max_body_size"),
            "must be greater than 0",
        ));
        return None;
    }
    let route = Route {
        timeout: r.timeout.map(|t| t.0),
        max_body_size,
        id: r.id.as_str().into(),
        upstream: upstream?,
        strip_prefix,
        upstream_host,
        chain,
        metrics: RouteMetrics::new(env.metrics, &r.id),
    };
    Some((route, m?))
}
