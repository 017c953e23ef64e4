//! `upstreams.<name>` -> [`UpstreamGroup`]: backend addresses and weights, balancing, health
//! check, timeouts, circuit breaker and retry policy. A group whose raw config equals the
//! running one is reused as it is; a changed group borrows the state of backends that stayed
//! (see [`UpstreamGroup::new`]), without writing to the running group.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::config::error::Scope;
use crate::config::raw::{RawBalance, RawBreaker, RawHealthCheck, RawRetry, RawUpstream};
use crate::upstream::balancer::Balance;
use crate::upstream::breaker::BreakerConfig;
use crate::upstream::group::{GroupSpec, Timeouts};
use crate::upstream::health::{HealthSpec, HealthTiming};
use crate::upstream::retry::RetryPolicy;
use crate::upstream::tls::{self, Transport};
use crate::upstream::{HashKey, UpstreamGroup};

/// Largest accepted backend weight (the selector's table grows with the sum of weights).
const MAX_WEIGHT: u64 = 1000;

/// Shortest breaker window and open time.
const MIN_BREAKER_PERIOD: Duration = Duration::from_millis(10);

/// Names of upstreams and routes: letters, digits, `-`, `_` and `.`, 1-128 characters.
pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Compiles one group at scope `upstreams.<name>`. `previous` is the running group with the
/// raw config it was built from.
pub(super) fn compile_upstream(
    name: &str,
    raw: &RawUpstream,
    previous: Option<(&RawUpstream, &Arc<UpstreamGroup>)>,
    base_dir: &Path,
    s: &mut Scope<'_>,
) -> Option<Arc<UpstreamGroup>> {
    // TLS files are read again on every reload, so a TLS group is always rebuilt (it still
    // borrows the running backends' state)
    if let Some((_, group)) = previous.filter(|(r, _)| *r == raw && raw.tls.is_none()) {
        return Some(Arc::clone(group));
    }
    if !valid_name(name) {
        s.error("upstream names use letters, digits, `-`, `_` and `.`");
    }
    let (addrs, hosts) = backends(raw, s);
    let transport = match (&raw.tls, raw.h2c) {
        (Some(_), true) => {
            s.error_at(
                "h2c",
                "h2c is cleartext HTTP/2; over TLS use tls.alpn: [h2]",
            );
            Transport::Plain
        }
        (Some(t), false) => tls::compile(t, &hosts, base_dir, &mut s.child("tls"))
            .map_or(Transport::Plain, Transport::Tls),
        (None, true) => Transport::H2c,
        (None, false) => Transport::Plain,
    };
    let hash_key = hash_key(raw, s);
    let backend_addrs: Vec<SocketAddr> = addrs.iter().map(|(a, _)| *a).collect();
    let health =
        (raw.health_check.as_ref()).and_then(|hc| health(hc, &transport, &backend_addrs, s));
    let breaker = raw
        .circuit_breaker
        .as_ref()
        .and_then(|b| breaker(b, &mut s.child("circuit_breaker")));
    let retry = raw
        .retry
        .as_ref()
        .map_or_else(RetryPolicy::default, |r| retry(r, &mut s.child("retry")));
    if !s.is_ok() {
        return None;
    }
    let t = &raw.timeouts;
    let spec = GroupSpec {
        name: name.to_string(),
        balance: match raw.balance {
            RawBalance::RoundRobin => Balance::RoundRobin,
            RawBalance::Random => Balance::Random,
            RawBalance::ConsistentHash => Balance::ConsistentHash,
        },
        addrs,
        hash_key,
        health,
        timeouts: Timeouts {
            connect: t.connect.0,
            read: t.read.0,
            write: t.write.0,
            idle: raw
                .pool
                .as_ref()
                .and_then(|p| p.idle_timeout)
                .map_or(t.idle.0, |d| d.0),
        },
        breaker,
        retry,
        transport,
    };
    let group = UpstreamGroup::new(spec, previous.map(|(_, g)| &**g));
    s.take("", group).map(Arc::new)
}

/// `host:port` (or `[v6]:port`): the literal address, or every address the name resolves to.
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

/// A `backends` entry as written, with the addresses it resolved to.
type Written<'r> = (&'r str, Vec<SocketAddr>);

/// The backends' addresses with their weights, and each entry's text with what it resolved
/// to (for server names).
fn backends<'r>(
    raw: &'r RawUpstream,
    s: &mut Scope<'_>,
) -> (Vec<(SocketAddr, usize)>, Vec<Written<'r>>) {
    if raw.backends.is_empty() {
        s.error_at("backends", "needs at least one backend");
    }
    let mut addrs = Vec::new();
    let mut hosts = Vec::new();
    let mut seen = HashSet::new();
    for (i, b) in raw.backends.iter().enumerate() {
        let mut bs = s.item("backends", i);
        if !bs.check(
            (1..=MAX_WEIGHT).contains(&b.weight),
            "weight",
            &format!("weight must be 1..={MAX_WEIGHT}"),
        ) {
            continue;
        }
        let resolved = bs.take("", resolve_backend(&b.addr)).unwrap_or_default();
        for &a in &resolved {
            if !seen.insert(a) {
                bs.error(format!("backend {a} is listed twice"));
            }
            addrs.push((a, usize::try_from(b.weight).unwrap_or(1)));
        }
        hosts.push((b.addr.as_str(), resolved));
    }
    (addrs, hosts)
}

fn hash_key(raw: &RawUpstream, s: &mut Scope<'_>) -> Option<HashKey> {
    match (&raw.balance, raw.hash_key.as_deref()) {
        (RawBalance::ConsistentHash, None | Some("client_ip")) => Some(HashKey::ClientIp),
        (RawBalance::ConsistentHash, Some("path")) => Some(HashKey::Path),
        (RawBalance::ConsistentHash, Some(k)) => {
            let header = k
                .strip_prefix("header:")
                .and_then(|h| HeaderName::from_bytes(h.trim().as_bytes()).ok());
            if header.is_none() {
                s.error_at(
                    "hash_key",
                    format!("unknown hash key `{k}`: use client_ip, path or \"header:<Name>\""),
                );
            }
            header.map(HashKey::Header)
        }
        (_, Some(_)) => {
            s.error_at(
                "hash_key",
                "hash_key is only used with balance: consistent_hash",
            );
            None
        }
        (_, None) => None,
    }
}

fn health(
    hc: &RawHealthCheck,
    transport: &Transport,
    addrs: &[SocketAddr],
    s: &mut Scope<'_>,
) -> Option<HealthSpec> {
    let mut s = s.child("health_check");
    let timing = HealthTiming {
        interval: hc.interval.0,
        timeout: hc.timeout.0,
        healthy_after: hc.healthy_after.get(),
        unhealthy_after: hc.unhealthy_after.get(),
    };
    match (&hc.http, &hc.tcp) {
        (Some(h), None) => {
            let path_ok = s.check(h.path.starts_with('/'), "http.path", "must start with `/`");
            let status_ok = s.check(
                (100..=599).contains(&h.expect_status),
                "http.expect_status",
                "must be an HTTP status (100-599)",
            );
            if !(path_ok && status_ok) {
                return None;
            }
            let host = h.host.as_deref().unwrap_or("localhost");
            s.take(
                "http",
                HealthSpec::http(&h.path, host, h.expect_status, timing, transport, addrs),
            )
        }
        (None, Some(_)) => Some(HealthSpec::tcp(timing)),
        _ => {
            s.error("set exactly one of `http` or `tcp`");
            None
        }
    }
}

fn breaker(b: &RawBreaker, s: &mut Scope<'_>) -> Option<BreakerConfig> {
    s.check(
        b.failure_ratio > 0.0 && b.failure_ratio <= 1.0,
        "failure_ratio",
        "must be in (0, 1]",
    );
    for (d, field) in [(b.window, "window"), (b.open_for, "open_for")] {
        s.check(d.0 >= MIN_BREAKER_PERIOD, field, "must be at least 10ms");
    }
    s.is_ok().then_some(BreakerConfig {
        consecutive_failures: b.consecutive_failures.get(),
        failure_ratio: b.failure_ratio,
        min_requests: b.min_requests.get(),
        window: b.window.0,
        open_for: b.open_for.0,
        half_open_requests: b.half_open_requests.get(),
    })
}

fn retry(r: &RawRetry, s: &mut Scope<'_>) -> RetryPolicy {
    let mut policy = RetryPolicy {
        attempts: r.attempts,
        on_connect: false,
        on_timeout: false,
        on_reset: false,
        on_status: Vec::new(),
        backoff: r.backoff.map_or(Duration::ZERO, |b| b.0),
        budget: r.budget,
    };
    s.check(r.attempts <= 10, "attempts", "at most 10");
    s.check(
        (0.0..=1.0).contains(&r.budget),
        "budget",
        "a fraction between 0 and 1",
    );
    for (i, on) in r.on.iter().enumerate() {
        match on.as_str() {
            "connect_failure" => policy.on_connect = true,
            "timeout" => policy.on_timeout = true,
            "reset" => policy.on_reset = true,
            other => match other.parse::<u16>() {
                Ok(code) if (500..=599).contains(&code) => policy.on_status.push(code),
                _ => s.item("on", i).error(format!(
                    "`{other}`: use connect_failure, timeout, reset or a 5xx status"
                )),
            },
        }
    }
    policy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::error::Errors;

    fn compile_yaml(yaml: &str) -> Result<Arc<UpstreamGroup>, Vec<String>> {
        let raw: RawUpstream = serde_yaml::from_str(yaml).unwrap();
        let mut errs = Errors::default();
        let g = compile_upstream(
            "up",
            &raw,
            None,
            Path::new("."),
            &mut errs.scope("upstreams.up"),
        );
        match g {
            Some(g) if errs.is_empty() => Ok(g),
            _ => Err(errs.into_vec().iter().map(|e| e.to_string()).collect()),
        }
    }

    fn errors(yaml: &str) -> Vec<String> {
        compile_yaml(yaml)
            .err()
            .expect("the config should be rejected")
    }

    #[test]
    fn backends_weights_and_duplicates() {
        let g = compile_yaml("backends: [127.0.0.1:1, {addr: 127.0.0.1:2, weight: 3}]").unwrap();
        assert_eq!(g.backends.len(), 2);
        assert_eq!(
            errors("backends: [{addr: 127.0.0.1:1, weight: 0}]"),
            ["upstreams.up.backends[0].weight: weight must be 1..=1000"]
        );
        assert_eq!(
            errors("backends: [127.0.0.1:1, 127.0.0.1:1]"),
            ["upstreams.up.backends[1]: backend 127.0.0.1:1 is listed twice"]
        );
        assert_eq!(
            errors("backends: []"),
            ["upstreams.up.backends: needs at least one backend"]
        );
        assert_eq!(
            errors("backends: [nohostport]"),
            ["upstreams.up.backends[0]: invalid backend address `nohostport`: expected host:port"]
        );
    }

    #[test]
    fn hash_keys() {
        let g = compile_yaml(
            "{backends: [127.0.0.1:1], balance: consistent_hash, hash_key: \"header:X-User\"}",
        )
        .unwrap();
        assert_eq!(
            g.hash_key,
            Some(HashKey::Header(HeaderName::from_static("x-user")))
        );
        assert_eq!(
            errors("{backends: [127.0.0.1:1], balance: consistent_hash, hash_key: cookie}"),
            ["upstreams.up.hash_key: unknown hash key `cookie`: use client_ip, path or \"header:<Name>\""]
        );
        assert_eq!(
            errors("{backends: [127.0.0.1:1], hash_key: path}"),
            ["upstreams.up.hash_key: hash_key is only used with balance: consistent_hash"]
        );
    }

    #[test]
    fn health_checks() {
        let g = compile_yaml(
            "{backends: [127.0.0.1:1], health_check: {http: {path: /hz}, interval: 5s}}",
        )
        .unwrap();
        let h = g.health.as_ref().unwrap();
        assert_eq!(h.timing.interval, Duration::from_secs(5));
        assert!(!g.backends[0].is_healthy(), "must pass a probe first");
        assert_eq!(
            errors(
                "{backends: [127.0.0.1:1], health_check: {http: {path: hz, expect_status: 99}}}"
            ),
            [
                "upstreams.up.health_check.http.path: must start with `/`",
                "upstreams.up.health_check.http.expect_status: must be an HTTP status (100-599)"
            ]
        );
        assert_eq!(
            errors("{backends: [127.0.0.1:1], health_check: {interval: 1s}}"),
            ["upstreams.up.health_check: set exactly one of `http` or `tcp`"]
        );
    }

    #[test]
    fn breakers_and_retries() {
        let g = compile_yaml(
            "{backends: [127.0.0.1:1], circuit_breaker: {consecutive_failures: 3}, retry: {on: [timeout, \"503\"]}}",
        )
        .unwrap();
        let b = g.backends[0].breaker.as_ref().unwrap();
        assert_eq!(b.config().consecutive_failures, 3);
        assert!(g.retry.on_timeout && !g.retry.on_connect);
        assert_eq!(g.retry.on_status, [503]);
        assert_eq!(
            errors("{backends: [127.0.0.1:1], circuit_breaker: {failure_ratio: 1.5, window: 1ms}}"),
            [
                "upstreams.up.circuit_breaker.failure_ratio: must be in (0, 1]",
                "upstreams.up.circuit_breaker.window: must be at least 10ms"
            ]
        );
        assert_eq!(
            errors("{backends: [127.0.0.1:1], retry: {attempts: 11, budget: 2, on: [\"404\"]}}"),
            [
                "upstreams.up.retry.attempts: at most 10",
                "upstreams.up.retry.budget: a fraction between 0 and 1",
                "upstreams.up.retry.on[0]: `404`: use connect_failure, timeout, reset or a 5xx status"
            ]
        );
    }

    #[test]
    fn unchanged_group_is_reused_changed_one_shares_nothing_it_writes() {
        let yaml = "{backends: [127.0.0.1:1], circuit_breaker: {consecutive_failures: 3}}";
        let raw: RawUpstream = serde_yaml::from_str(yaml).unwrap();
        let g = compile_yaml(yaml).unwrap();
        let mut errs = Errors::default();
        let same = compile_upstream(
            "up",
            &raw,
            Some((&raw, &g)),
            Path::new("."),
            &mut errs.scope("u"),
        )
        .unwrap();
        assert!(Arc::ptr_eq(&same, &g));

        let changed: RawUpstream = serde_yaml::from_str(
            "{backends: [127.0.0.1:1], circuit_breaker: {consecutive_failures: 9}}",
        )
        .unwrap();
        let next = compile_upstream(
            "up",
            &changed,
            Some((&raw, &g)),
            Path::new("."),
            &mut errs.scope("u"),
        )
        .unwrap();
        assert!(Arc::ptr_eq(&next.backends[0].state, &g.backends[0].state));
        assert_eq!(
            next.backends[0]
                .breaker
                .as_ref()
                .unwrap()
                .config()
                .consecutive_failures,
            9
        );
        assert_eq!(
            g.backends[0]
                .breaker
                .as_ref()
                .unwrap()
                .config()
                .consecutive_failures,
            3
        );
    }
}
