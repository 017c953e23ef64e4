//! `server:` and `admin:` -> [`ServerSettings`]: listen addresses, trusted proxies, request
//! limits, latency buckets. Zero durations and sizes are already rejected by their serde types.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use ipnet::IpNet;

use crate::config::error::Scope;
use crate::config::raw::{RawAdmin, RawListen, RawListener, RawServer};
use crate::state::{ClientCertHeaders, Listener, ServerSettings};

/// Most header lines a request may be allowed to carry.
const MAX_HEADERS: usize = 256;

/// Parses `ip:port` (or `[v6]:port`).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!("invalid listen address `{s}`: expected ip:port, e.g. \"0.0.0.0:8080\"")
    })
}

/// The listeners: addresses, and TLS settings (certificates read from files relative to
/// `base_dir`; `acme`: whether the config has an `acme` section for `tls.acme` names).
fn listeners(raw: &RawServer, base_dir: &Path, acme: bool, s: &mut Scope<'_>) -> Vec<Listener> {
    if raw.listen.is_empty() {
        s.error_at("listen", "needs at least one address");
    }
    let mut out = Vec::with_capacity(raw.listen.len());
    for (i, l) in raw.listen.iter().enumerate() {
        let mut ls = s.item("listen", i);
        let field = if matches!(l, RawListen::Addr(_)) {
            ""
        } else {
            "addr"
        };
        let addr = ls.take(field, parse_listen(l.addr()));
        if out.iter().any(|o: &Listener| Some(o.addr) == addr) {
            ls.error("this address is listed twice");
        }
        let tls = match l {
            RawListen::Full(RawListener { tls: Some(t), .. }) => {
                crate::tls::compile(t, base_dir, acme, &mut ls.child("tls"))
            }
            _ => None,
        };
        let h2c = matches!(l, RawListen::Full(RawListener { h2c: true, .. }));
        if h2c && matches!(l, RawListen::Full(RawListener { tls: Some(_), .. })) {
            ls.error_at(
                "h2c",
                "h2c is for plain listeners; a TLS listener offers h2 by ALPN",
            );
        }
        if let Some(addr) = addr {
            out.push(Listener {
                addr,
                label: addr.to_string().into(),
                tls,
                h2c,
            });
        }
    }
    out
}

/// Checks `server:` (at scope `server`) and compiles what requests need of it; `acme`:
/// whether the config has an `acme` section.
pub(super) fn compile_server(
    raw: &RawServer,
    base_dir: &Path,
    acme: bool,
    s: &mut Scope<'_>,
) -> ServerSettings {
    let listeners = listeners(raw, base_dir, acme, s);
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let net = t
                .parse::<IpNet>()
                .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("invalid CIDR `{t}`"));
            s.item("trusted_proxies", i).take("", net)
        })
        .collect();
    s.check(
        !raw.access_log.trim().is_empty(),
        "access_log",
        "use stdout, off or a file path",
    );
    let lim = &raw.limits;
    s.check(
        (1..=MAX_HEADERS).contains(&lim.max_headers),
        "limits.max_headers",
        "must be 1..=256",
    );
    if let Some(b) = &raw.latency_buckets {
        s.check(
            !b.is_empty()
                && b.iter().all(|v| v.is_finite() && *v > 0.0)
                && b.windows(2).all(|w| w[0] < w[1]),
            "latency_buckets",
            "a non-empty list of increasing positive seconds",
        );
    }
    s.check(
        lim.pause_after_429.0 <= std::time::Duration::from_secs(1),
        "limits.pause_after_429",
        "at most 1s",
    );
    let cache = &raw.cache;
    s.check(
        cache.memory_max_object() <= cache.max_size.0,
        "cache.max_object_size",
        "at most cache.max_size",
    );
    if let Some(d) = &cache.disk {
        s.check(!d.path.trim().is_empty(), "cache.disk.path", "a directory");
        s.check(
            d.max_object_size.0 <= d.max_size.0,
            "cache.disk.max_object_size",
            "at most cache.disk.max_size",
        );
        s.check(d.max_objects > 0, "cache.disk.max_objects", "at least 1");
    }
    let client_cert_headers = client_cert_headers(&raw.client_cert_headers, s);
    ServerSettings {
        client_cert_headers,
        listeners,
        trusted_proxies,
        max_header_size: usize::try_from(lim.max_header_size.0).unwrap_or(usize::MAX),
        max_headers: lim.max_headers,
        body_read_timeout: lim.body_read_timeout.0,
        header_read_timeout: lim.header_read_timeout.0,
        max_connections: lim.max_connections.get(),
        h2_control_frames_per_second: lim.h2_control_frames_per_second,
        abuse_block: lim.abuse_block.0,
        pause_after_429: lim.pause_after_429.0,
        preserve_header_case: raw.preserve_header_case,
    }
}

/// `server.client_cert_headers`: four distinct valid header names.
fn client_cert_headers(
    raw: &crate::config::raw::RawClientCertHeaders,
    s: &mut Scope<'_>,
) -> ClientCertHeaders {
    let mut out = ClientCertHeaders::default();
    let mut seen = Vec::new();
    for (field, name, slot) in [
        ("subject", &raw.subject, &mut out.subject),
        ("sans", &raw.sans, &mut out.sans),
        ("fingerprint", &raw.fingerprint, &mut out.fingerprint),
        ("verified", &raw.verified, &mut out.verified),
    ] {
        let path = format!("client_cert_headers.{field}");
        match http::HeaderName::from_bytes(name.trim().as_bytes()) {
            Ok(h) if seen.contains(&h) => s.error_at(&path, format!("`{name}` is used twice")),
            Ok(h) => {
                seen.push(h.clone());
                *slot = h;
            }
            Err(_) => s.error_at(&path, format!("`{name}` is not a valid header name")),
        }
    }
    out
}

/// Checks `admin:` (at scope `admin`).
pub(super) fn check_admin(raw: &RawAdmin, s: &mut Scope<'_>) {
    let Some(addr) = s.take("listen", parse_listen(&raw.listen)) else {
        return;
    };
    if !addr.ip().is_loopback() && raw.token.is_empty() && !raw.allow_unauthenticated {
        s.error_at(
            "listen",
            format!(
                "{addr} is reachable from other machines: set admin.token (reload, purge and the config view need it), or admin.allow_unauthenticated: true"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::error::Errors;

    fn errors(yaml: &str) -> Vec<String> {
        let raw: RawServer = serde_yaml::from_str(yaml).unwrap();
        let mut errs = Errors::default();
        compile_server(&raw, Path::new("."), false, &mut errs.scope("server"));
        errs.into_vec().iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn settings() {
        let raw: RawServer = serde_yaml::from_str(
            "{trusted_proxies: [10.0.0.0/8, 192.0.2.7], limits: {max_headers: 5}}",
        )
        .unwrap();
        let mut errs = Errors::default();
        let s = compile_server(&raw, Path::new("."), false, &mut errs.scope("server"));
        assert!(errs.is_empty());
        assert!(s.is_trusted("10.1.2.3".parse().unwrap()));
        assert!(s.is_trusted("192.0.2.7".parse().unwrap()));
        assert!(!s.is_trusted("192.0.2.8".parse().unwrap()));
        assert_eq!(s.max_headers, 5);
        assert_eq!(s.pause_after_429, std::time::Duration::from_millis(10));
    }

    #[test]
    fn errors_name_their_path() {
        assert_eq!(
            errors("{listen: [\"0.0.0.0:80\", \"localhost\"], trusted_proxies: [nope]}"),
            [
                "server.listen[1]: invalid listen address `localhost`: expected ip:port, e.g. \"0.0.0.0:8080\"",
                "server.trusted_proxies[0]: invalid CIDR `nope`"
            ]
        );
        assert_eq!(
            errors("{listen: []}"),
            ["server.listen: needs at least one address"]
        );
        assert_eq!(
            errors("{limits: {pause_after_429: 2s}}"),
            ["server.limits.pause_after_429: at most 1s"]
        );
        assert_eq!(
            errors("{cache: {max_size: 1MiB, max_object_size: 2MiB, disk: {path: \" \", max_size: 1GiB, max_object_size: 2GiB, max_objects: 0}}}"),
            [
                "server.cache.max_object_size: at most cache.max_size",
                "server.cache.disk.path: a directory",
                "server.cache.disk.max_object_size: at most cache.disk.max_size",
                "server.cache.disk.max_objects: at least 1"
            ]
        );
        assert!(
            errors("{cache: {disk: {path: /var/cache/gatehouse, max_size: 20GiB}}}").is_empty()
        );
        assert_eq!(
            errors("{limits: {max_headers: 300}, latency_buckets: [1, 0.5], access_log: \" \"}"),
            [
                "server.access_log: use stdout, off or a file path",
                "server.limits.max_headers: must be 1..=256",
                "server.latency_buckets: a non-empty list of increasing positive seconds"
            ]
        );
    }

    #[test]
    fn an_open_admin_listener_needs_a_token() {
        let check = |yaml: &str| {
            let raw: RawAdmin = serde_yaml::from_str(yaml).unwrap();
            let mut errs = Errors::default();
            check_admin(&raw, &mut errs.scope("admin"));
            errs.into_vec()
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        };
        assert!(check("{listen: \"127.0.0.1:9180\"}").is_empty());
        assert!(check("{listen: \"[::1]:9180\"}").is_empty());
        let e = check("{listen: \"0.0.0.0:9180\"}");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("admin.listen: 0.0.0.0:9180 is reachable"),
            "{e:?}"
        );
        assert!(check("{listen: \"0.0.0.0:9180\", token: t0k3n}").is_empty());
        assert!(check("{listen: \"0.0.0.0:9180\", allow_unauthenticated: true}").is_empty());
    }

    #[test]
    fn zeros_are_rejected_by_their_types() {
        for yaml in [
            "{limits: {max_body_size: 0}}",
            "{limits: {header_read_timeout: 0s}}",
            "{cache: {lock_timeout: 0ms}}",
        ] {
            let e = serde_yaml::from_str::<RawServer>(yaml)
                .unwrap_err()
                .to_string();
            assert!(e.contains("must be greater than 0"), "{yaml}: {e}");
        }
        assert!(serde_yaml::from_str::<RawServer>("{threads: 0}").is_err());
        assert!(serde_yaml::from_str::<RawServer>("{cache: {disk: {path: /x}}}").is_err());
        assert!(serde_yaml::from_str::<RawServer>("{limits: {max_connections: 0}}").is_err());
    }
}
