//! `routes[i]` -> [`Route`] and its [`RouteMatch`]: the upstream it names, the match
//! conditions (host, path, methods, headers), prefix stripping, the Host sent upstream, the
//! body limit and the plugin chain (top-level chain first, then the route's own).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use gatehouse_plugins::PluginInstance;
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

use super::plugins::Chains;
use super::upstreams::valid_name;
use crate::config::error::Scope;
use crate::config::raw::{RawMatch, RawRoute};
use crate::metrics::RouteMetrics;
use crate::router::{HostMatch, PathMatch, RouteMatch};
use crate::state::{Route, UpstreamHost};
use crate::upstream::UpstreamGroup;

/// What every route of one compile shares.
pub(super) struct RouteEnv<'a> {
    /// The groups that compiled.
    pub upstreams: &'a HashMap<String, Arc<UpstreamGroup>>,
    /// Every name under `upstreams:`, compiled or not (to tell "unknown" from "has errors").
    pub upstream_names: HashSet<&'a str>,
    /// `server.limits.max_body_size`.
    pub max_body_size: u64,
    /// Whether any listener asks for client certificates (`client_cert` rules need one).
    pub asks_client_certs: bool,
    /// The top-level chain.
    pub global: Vec<PluginInstance>,
    pub metrics: &'a crate::metrics::Metrics,
}

/// Compiles `r` at scope `routes[i]`; `ids` collects the ids seen so far.
pub(super) fn compile_route(
    r: &RawRoute,
    env: &RouteEnv<'_>,
    chains: &mut Chains<'_, '_>,
    ids: &mut HashSet<String>,
    s: &mut Scope<'_>,
) -> Option<(Route, RouteMatch)> {
    if !valid_name(&r.id) {
        s.error_at("id", "route ids use letters, digits, `-`, `_` and `.`");
    } else if !ids.insert(r.id.clone()) {
        s.error_at("id", format!("duplicate route id `{}`", r.id));
    }
    let upstream = env.upstreams.get(&r.upstream).cloned();
    if upstream.is_none() {
        let msg = if env.upstream_names.contains(r.upstream.as_str()) {
            format!("upstream `{}` has errors", r.upstream)
        } else {
            format!("unknown upstream `{}`", r.upstream)
        };
        s.error_at("upstream", msg);
    }
    let m = compile_match(&r.matcher, &mut s.child("match"));
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
            s.error_at("strip_prefix", "needs match.path_prefix");
            None
        }
    };
    let upstream_host = upstream_host(&r.upstream_host, s);
    let client_cert = r
        .client_cert
        .as_ref()
        .and_then(|c| client_cert_rule(c, env.asks_client_certs, &mut s.child("client_cert")));
    if r.https_port.is_some() && !r.https_redirect {
        s.error_at("https_port", "only used with https_redirect: true");
    }
    let own = chains.chain(&r.plugins, Some(&r.id), &mut s.child("plugins"));
    let (upstream, m) = match (upstream, m) {
        (Some(u), Some(m)) if s.is_ok() => (u, m),
        _ => return None,
    };
    let mut chain = env.global.clone();
    chain.extend(own);
    warn_on_order(&chain, s.path());
    let route = Route {
        timeout: r.timeout.map(|t| t.0),
        max_body_size: r.max_body_size.map_or(env.max_body_size, |b| b.0),
        id: r.id.as_str().into(),
        upstream,
        strip_prefix,
        upstream_host,
        chain,
        metrics: RouteMetrics::new(env.metrics, &r.id),
        client_cert,
        https_redirect: r
            .https_redirect
            .then_some(r.https_port.filter(|p| *p != 443)),
    };
    Some((route, m))
}

/// Compiles `client_cert` (at its scope).
fn client_cert_rule(
    c: &crate::config::raw::RawClientCertRule,
    asks: bool,
    s: &mut Scope<'_>,
) -> Option<crate::tls::ClientCertRule> {
    if !asks {
        s.error(
            "no listener asks clients for a certificate: set client_auth.mode on a TLS listener in server.listen",
        );
    }
    let fingerprints = (c.allow.fingerprints.iter().enumerate())
        .filter_map(|(i, f)| {
            let n = crate::tls::client::normalize_fingerprint(f)
                .ok_or_else(|| format!("`{f}`: a SHA-256 fingerprint is 64 hex digits"));
            s.item("allow.fingerprints", i).take("", n)
        })
        .collect();
    s.is_ok().then(|| crate::tls::ClientCertRule {
        required: c.required,
        subjects: c.allow.subjects.clone(),
        sans: c.allow.sans.clone(),
        fingerprints,
    })
}

fn upstream_host(v: &str, s: &mut Scope<'_>) -> UpstreamHost {
    match v {
        "keep" => UpstreamHost::Keep,
        "backend" => UpstreamHost::Backend,
        other => match HeaderValue::from_str(other) {
            Ok(v) if !other.is_empty() => UpstreamHost::Fixed(v),
            _ => {
                s.error_at("upstream_host", "use keep, backend or a host name");
                UpstreamHost::Keep
            }
        },
    }
}

/// CORS preflights carry no token: a cors plugin after jwt answers them 401.
fn warn_on_order(chain: &[PluginInstance], path: &str) {
    let pos = |kind: &str| chain.iter().position(|p| p.kind == kind);
    if let (Some(cors), Some(auth)) = (pos("cors"), pos("jwt")) {
        if cors > auth {
            log::warn!(
                "{path}.plugins: cors runs after jwt, so CORS preflights (which carry no token) get 401; list cors first"
            );
        }
    }
}

/// Compiles `match:` at its scope; `None` when any condition is invalid.
fn compile_match(m: &RawMatch, s: &mut Scope<'_>) -> Option<RouteMatch> {
    let host = m.host.as_deref().map_or(HostMatch::Any, |h| host(h, s));
    let path = path(m, s);
    let methods = m.methods.as_deref().map(|list| methods(list, s));
    let headers = m
        .headers
        .iter()
        .filter_map(|(k, v)| {
            let pair = match (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                (Ok(n), Ok(val)) => Ok((n, val)),
                (Err(_), _) => Err("invalid header name".to_string()),
                (_, Err(_)) => Err("invalid header value".to_string()),
            };
            s.take(&format!("headers.{k}"), pair)
        })
        .collect();
    s.is_ok().then_some(RouteMatch {
        host,
        path,
        methods,
        headers,
    })
}

fn host(h: &str, s: &mut Scope<'_>) -> HostMatch {
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
    match (ok, wild) {
        (false, _) => {
            s.error_at(
                "host",
                format!("invalid host `{h}`: a name like api.example.com or *.example.com"),
            );
            HostMatch::Any
        }
        (true, true) => HostMatch::Wildcard(name),
        (true, false) => HostMatch::Exact(name),
    }
}

fn path(m: &RawMatch, s: &mut Scope<'_>) -> PathMatch {
    let set = [&m.path_prefix, &m.path_exact, &m.path_regex]
        .iter()
        .filter(|p| p.is_some())
        .count();
    if set > 1 {
        s.error("use only one of path_prefix, path_exact, path_regex");
    }
    if let Some(re) = &m.path_regex {
        let r = Regex::new(re).map_err(|e| format!("invalid regex: {e}"));
        return s
            .take("path_regex", r)
            .map_or_else(|| PathMatch::Prefix("/".into()), PathMatch::Regex);
    }
    let (field, p) = match &m.path_exact {
        Some(e) => ("path_exact", e.clone()),
        None => (
            "path_prefix",
            m.path_prefix.clone().unwrap_or_else(|| "/".into()),
        ),
    };
    s.check(p.starts_with('/'), field, "must start with `/`");
    if m.path_exact.is_some() {
        PathMatch::Exact(p)
    } else {
        PathMatch::Prefix(p)
    }
}

fn methods(list: &[String], s: &mut Scope<'_>) -> Vec<Method> {
    if list.is_empty() {
        s.error_at(
            "methods",
            "an empty list matches nothing; omit it to match any method",
        );
    }
    list.iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .ok()
                .filter(|_| !m.is_empty())
                .ok_or_else(|| format!("invalid method `{m}`"));
            s.item("methods", i).take("", method)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::error::Errors;

    fn compile(yaml: &str) -> (Option<RouteMatch>, Vec<String>) {
        let raw: RawMatch = serde_yaml::from_str(yaml).unwrap();
        let mut errs = Errors::default();
        let m = compile_match(&raw, &mut errs.scope("routes[0].match"));
        (m, errs.into_vec().iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn matches_compile() {
        let (m, e) = compile("{host: \"*.Example.com\", path_prefix: /api, methods: [get]}");
        assert!(e.is_empty(), "{e:?}");
        let m = m.unwrap();
        assert_eq!(m.host, HostMatch::Wildcard("example.com".into()));
        assert!(matches!(m.path, PathMatch::Prefix(ref p) if p == "/api"));
        assert_eq!(m.methods, Some(vec![Method::GET]));
    }

    #[test]
    fn match_errors_name_their_path() {
        assert_eq!(
            compile("{host: \"a..b\", path_prefix: api}").1,
            [
                "routes[0].match.host: invalid host `a..b`: a name like api.example.com or *.example.com",
                "routes[0].match.path_prefix: must start with `/`"
            ]
        );
        assert_eq!(
            compile("{path_exact: /a, path_regex: \"(\"}").1.len(),
            2,
            "both the conflict and the bad regex"
        );
        assert_eq!(
            compile("{methods: [GET, \"\"], headers: {\"bad name\": x}}").1,
            [
                "routes[0].match.methods[1]: invalid method ``",
                "routes[0].match.headers.bad name: invalid header name"
            ]
        );
        assert_eq!(
            compile("{methods: []}").1,
            ["routes[0].match.methods: an empty list matches nothing; omit it to match any method"]
        );
    }

    #[test]
    fn upstream_hosts() {
        let mut errs = Errors::default();
        let mut s = errs.scope("routes[0]");
        assert_eq!(upstream_host("keep", &mut s), UpstreamHost::Keep);
        assert_eq!(upstream_host("backend", &mut s), UpstreamHost::Backend);
        assert!(matches!(
            upstream_host("api.internal", &mut s),
            UpstreamHost::Fixed(_)
        ));
        upstream_host("bad\nhost", &mut s);
        assert_eq!(
            errs.into_vec()[0].to_string(),
            "routes[0].upstream_host: use keep, backend or a host name"
        );
    }
}
