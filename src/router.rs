//! Request routing: host + path (+ method, headers) -> route index. Runs in `request_filter`.
//!
//! Precedence, most specific first:
//! 1. host: exact (`api.example.com`) before wildcard (`*.example.com`, longest suffix first)
//!    before routes without a host;
//! 2. within one host tier: `path_exact`, then `path_prefix` from the longest matching prefix to
//!    the shortest, then `path_regex` routes in file order;
//! 3. routes with the same host and path: those with more constraints (headers, methods) first,
//!    then file order. A candidate whose methods or headers do not match is skipped and the
//!    search goes on, into the next tier if needed.
//!
//! Prefixes match whole path segments: `/users` matches `/users`, `/users/42` and `/users?x`,
//! never `/usersettings`; a prefix ending in `/` (`/static/`) matches only below it.
//!
//! Lookup cost does not grow with the number of routes: one hash lookup per path segment and
//! host tier, plus the regex routes of the tiers reached.

use std::collections::HashMap;

/// The router's maps: keyed by what clients send (hosts, path segments), so with a randomly
/// keyed hasher, but aHash instead of the standard SipHash (a lookup per path segment on
/// every request: ~100 instructions per short key with SipHash, a third of that with aHash).
type Map<V> = HashMap<Box<str>, V, ahash::RandomState>;

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

/// How a route matches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Any host.
    Any,
    /// Exactly this host (lowercase, no port).
    Exact(String),
    /// `*.suffix`: one or more labels before `suffix` (lowercase, stored without `*.`).
    Wildcard(String),
}

/// How a route matches the path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The path equals this.
    Exact(String),
    /// The path starts with these whole segments.
    Prefix(String),
    /// The regex matches the path (anchor it yourself with `^...$`).
    Regex(Regex),
}

/// A route's match conditions, as compiled from `routes[i].match`.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub host: HostMatch,
    pub path: PathMatch,
    /// `None` = any method.
    pub methods: Option<Vec<Method>>,
    /// Each header must be present with exactly this value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug)]
struct Candidate {
    route: usize,
    methods: Option<Vec<Method>>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Candidate {
    fn specificity(&self) -> usize {
        self.headers.len() * 2 + usize::from(self.methods.is_some())
    }

    #[inline]
    fn accepts(&self, method: &Method, headers: &http::HeaderMap) -> bool {
        if let Some(m) = &self.methods {
            if !m.contains(method) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(n, v)| headers.get_all(n).iter().any(|have| have == v))
    }
}

#[derive(Debug, Default)]
struct Table {
    exact: Map<Vec<Candidate>>,
    prefix: Map<Vec<Candidate>>,
    regex: Vec<(Regex, Candidate)>,
}

impl Table {
    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefix.is_empty() && self.regex.is_empty()
    }

    fn sort(&mut self) {
        for v in self.exact.values_mut().chain(self.prefix.values_mut()) {
            // stable: equal specificity keeps file order
            v.sort_by_key(|c| std::cmp::Reverse(c.specificity()));
        }
    }

    fn first(list: Option<&Vec<Candidate>>, m: &Method, h: &http::HeaderMap) -> Option<usize> {
        list?.iter().find(|c| c.accepts(m, h)).map(|c| c.route)
    }

    fn lookup(&self, path: &str, m: &Method, h: &http::HeaderMap) -> Option<usize> {
        if !self.exact.is_empty() {
            if let Some(r) = Self::first(self.exact.get(path), m, h) {
                return Some(r);
            }
        }
        if !self.prefix.is_empty() {
            if let Some(r) = Self::first(self.prefix.get(path), m, h) {
                return Some(r);
            }
            // Walk segment boundaries from the right: "/a/b" tries "/a/", "/a", "/".
            let bytes = path.as_bytes();
            let mut i = bytes.len();
            while i > 0 {
                i -= 1;
                if bytes[i] != b'/' {
                    continue;
                }
                if i + 1 < bytes.len() {
                    if let Some(r) = Self::first(self.prefix.get(&path[..=i]), m, h) {
                        return Some(r);
                    }
                }
                if i > 0 {
                    if let Some(r) = Self::first(self.prefix.get(&path[..i]), m, h) {
                        return Some(r);
                    }
                }
            }
        }
        self.regex
            .iter()
            .find(|(re, c)| c.accepts(m, h) && re.is_match(path))
            .map(|(_, c)| c.route)
    }
}

/// The compiled routing table. Immutable; rebuilt on reload.
#[derive(Debug, Default)]
pub struct Router {
    exact_hosts: Map<Table>,
    wildcard_hosts: Map<Table>,
    any_host: Table,
}

impl Router {
    /// Builds the table; `routes[i]` becomes route index `i`.
    pub fn new(routes: Vec<RouteMatch>) -> Router {
        let mut r = Router::default();
        for (idx, rm) in routes.into_iter().enumerate() {
            let table = match rm.host {
                HostMatch::Any => &mut r.any_host,
                HostMatch::Exact(h) => r.exact_hosts.entry(h.into()).or_default(),
                HostMatch::Wildcard(s) => r.wildcard_hosts.entry(s.into()).or_default(),
            };
            let cand = Candidate {
                route: idx,
                methods: rm.methods,
                headers: rm.headers,
            };
            match rm.path {
                PathMatch::Exact(p) => table.exact.entry(p.into()).or_default().push(cand),
                PathMatch::Prefix(p) => table.prefix.entry(p.into()).or_default().push(cand),
                PathMatch::Regex(re) => table.regex.push((re, cand)),
            }
        }
        for t in r
            .exact_hosts
            .values_mut()
            .chain(r.wildcard_hosts.values_mut())
            .chain(std::iter::once(&mut r.any_host))
        {
            t.sort();
        }
        r
    }

    /// Finds the route for a request. `host` is the raw Host (any case, may carry a port);
    /// `path` excludes the query. `None` means no route matches (404).
    pub fn lookup(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
        headers: &http::HeaderMap,
    ) -> Option<usize> {
        if let Some(host) =
            host.filter(|_| !(self.exact_hosts.is_empty() && self.wildcard_hosts.is_empty()))
        {
            let host = normalize_host(host);
            let host: &str = &host;
            if let Some(r) = self
                .exact_hosts
                .get(host)
                .and_then(|t| t.lookup(path, method, headers))
            {
                return Some(r);
            }
            if !self.wildcard_hosts.is_empty() {
                let mut rest = host;
                while let Some(dot) = rest.find('.') {
                    rest = &rest[dot + 1..];
                    if let Some(r) = self
                        .wildcard_hosts
                        .get(rest)
                        .and_then(|t| t.lookup(path, method, headers))
                    {
                        return Some(r);
                    }
                }
            }
        }
        if self.any_host.is_empty() {
            return None;
        }
        self.any_host.lookup(path, method, headers)
    }
}

/// Lowercases and strips the port (`API.example.com:8080` -> `api.example.com`, `[::1]:80` ->
/// `[::1]`). Borrows when nothing changes.
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let no_port = if host.starts_with('[') {
        host.find(']').map_or(host, |i| &host[..=i])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let no_port = no_port.strip_suffix('.').unwrap_or(no_port);
    if no_port.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(no_port.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(no_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rm(host: HostMatch, path: PathMatch) -> RouteMatch {
        RouteMatch {
            host,
            path,
            methods: None,
            headers: vec![],
        }
    }
    fn pre(p: &str) -> PathMatch {
        PathMatch::Prefix(p.into())
    }
    fn get(r: &Router, host: &str, path: &str) -> Option<usize> {
        r.lookup(Some(host), path, &Method::GET, &http::HeaderMap::new())
    }

    #[test]
    fn host_precedence() {
        let r = Router::new(vec![
            rm(HostMatch::Any, pre("/")),
            rm(HostMatch::Wildcard("example.com".into()), pre("/")),
            rm(HostMatch::Exact("api.example.com".into()), pre("/")),
        ]);
        assert_eq!(get(&r, "api.example.com", "/x"), Some(2));
        assert_eq!(get(&r, "API.Example.com:8080", "/x"), Some(2));
        assert_eq!(get(&r, "www.example.com", "/x"), Some(1));
        assert_eq!(get(&r, "a.b.example.com", "/x"), Some(1));
        assert_eq!(get(&r, "example.com", "/x"), Some(0));
        assert_eq!(get(&r, "evil-example.com", "/x"), Some(0));
        assert_eq!(
            r.lookup(None, "/x", &Method::GET, &http::HeaderMap::new()),
            Some(0)
        );
    }

    #[test]
    fn path_precedence_and_segments() {
        let r = Router::new(vec![
            rm(HostMatch::Any, pre("/")),
            rm(HostMatch::Any, pre("/users")),
            rm(HostMatch::Any, pre("/users/admin")),
            rm(HostMatch::Any, PathMatch::Exact("/users/me".into())),
            rm(
                HostMatch::Any,
                PathMatch::Regex(Regex::new("^/users/[0-9]+/avatar$").unwrap()),
            ),
            rm(HostMatch::Any, pre("/static/")),
        ]);
        assert_eq!(get(&r, "h", "/users"), Some(1));
        assert_eq!(get(&r, "h", "/users/42"), Some(1));
        assert_eq!(get(&r, "h", "/users/admin/x"), Some(2));
        assert_eq!(get(&r, "h", "/users/admin"), Some(2));
        assert_eq!(get(&r, "h", "/users/me"), Some(3));
        assert_eq!(get(&r, "h", "/usersettings"), Some(0));
        // prefix beats regex in the same tier
        assert_eq!(get(&r, "h", "/users/7/avatar"), Some(1));
        assert_eq!(get(&r, "h", "/static/a.css"), Some(5));
        assert_eq!(get(&r, "h", "/static"), Some(0));
        assert_eq!(get(&r, "h", "/"), Some(0));
    }

    #[test]
    fn regex_after_prefix_in_file_order() {
        let r = Router::new(vec![
            rm(HostMatch::Any, PathMatch::Regex(Regex::new("^/a").unwrap())),
            rm(
                HostMatch::Any,
                PathMatch::Regex(Regex::new("^/a/b").unwrap()),
            ),
            rm(HostMatch::Any, pre("/z")),
        ]);
        assert_eq!(get(&r, "h", "/a/b"), Some(0));
        assert_eq!(get(&r, "h", "/z/a"), Some(2));
        assert_eq!(get(&r, "h", "/q"), None);
    }

    #[test]
    fn methods_and_headers() {
        let mut a = rm(HostMatch::Any, pre("/api"));
        a.methods = Some(vec![Method::POST]);
        let mut b = rm(HostMatch::Any, pre("/api"));
        b.headers = vec![(
            HeaderName::from_static("x-api-version"),
            HeaderValue::from_static("2"),
        )];
        let c = rm(HostMatch::Any, pre("/api"));
        let mut d = rm(HostMatch::Exact("h".into()), pre("/api"));
        d.methods = Some(vec![Method::DELETE]);
        let r = Router::new(vec![c, a, b, d]);
        let mut h = http::HeaderMap::new();
        assert_eq!(r.lookup(Some("h"), "/api", &Method::GET, &h), Some(0));
        assert_eq!(r.lookup(Some("h"), "/api", &Method::POST, &h), Some(1));
        assert_eq!(r.lookup(Some("h"), "/api", &Method::DELETE, &h), Some(3));
        h.insert("x-api-version", HeaderValue::from_static("2"));
        assert_eq!(r.lookup(Some("h"), "/api/x", &Method::GET, &h), Some(2));
        h.insert("x-api-version", HeaderValue::from_static("3"));
        assert_eq!(r.lookup(Some("h"), "/api/x", &Method::GET, &h), Some(0));
    }

    #[test]
    fn many_routes() {
        let routes = (0..10_000)
            .map(|i| {
                rm(
                    HostMatch::Exact(format!("h{i}.example.com")),
                    pre(&format!("/svc{i}")),
                )
            })
            .collect();
        let r = Router::new(routes);
        assert_eq!(get(&r, "h9999.example.com", "/svc9999/x"), Some(9999));
        assert_eq!(get(&r, "h9999.example.com", "/svc9998/x"), None);
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("A.com:80"), "a.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("a.com."), "a.com");
    }
}
