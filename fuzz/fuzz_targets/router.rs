//! Route lookup with client-chosen host, path, method and headers against routes with every
//! kind of match (exact and wildcard hosts, prefixes, exact paths, a regex, methods, headers).
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use gatehouse::state::Snapshot;
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
upstreams:
  up: { backends: ["127.0.0.1:9"] }
routes:
  - { id: exact, match: { host: api.example.com, path_exact: /v1/status }, upstream: up }
  - { id: wild, match: { host: "*.example.com", path_prefix: /v1 }, upstream: up }
  - { id: regex, match: { path_regex: "^/users/[0-9]+/orders$", methods: [GET, POST] }, upstream: up }
  - { id: hdr, match: { path_prefix: /h, headers: { x-version: "2" } }, upstream: up }
  - { id: all, upstream: up }
"#;

fn snapshot() -> &'static Snapshot {
    static S: OnceLock<Snapshot> = OnceLock::new();
    S.get_or_init(|| {
        let (raw, tree) = gatehouse::config::parse_tree(CONFIG, &|_| None).expect("config");
        let registry = gatehouse_plugins::builtins();
        let metrics = gatehouse::metrics::Metrics::new().expect("metrics");
        let loaded = gatehouse::config::Loaded {
            raw,
            tree,
            hash: String::new(),
            origins: Default::default(),
        };
        gatehouse::config::compile_loaded(Path::new("fuzz.yaml"), loaded, &registry, &metrics, None)
            .expect("compile")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let host = parts.next().filter(|h| !h.is_empty());
    let path = parts.next().unwrap_or("/");
    let method = parts
        .next()
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(http::Method::GET);
    let mut headers = http::HeaderMap::new();
    if let Some(v) = parts.next().and_then(|v| http::HeaderValue::from_str(v).ok()) {
        headers.insert("x-version", v);
    }
    let snap = snapshot();
    let found = snap.router.lookup(host, path, &method, &headers);
    // the catch-all route takes every origin-form path (other targets are refused before
    // routing, `proxy::strict`)
    if path.starts_with('/') {
        assert!(found.is_some_and(|i| i < snap.routes.len()), "{path:?}");
    }
});
