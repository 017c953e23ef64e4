//! Routing, request rewriting and forwarding headers through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{simple_config, TestGateway, TestUpstream};

fn ups(list: &[(&str, &TestUpstream)]) -> String {
    list.iter()
        .map(|(name, u)| format!("  {name}:\n    backends: [\"{}\"]\n", u.addr))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_path_method_header_in_specificity_order() {
    let names = [
        "any",
        "wild",
        "exact-host",
        "exact-path",
        "long-prefix",
        "regex",
        "post-only",
        "v2",
    ];
    let mut backends = Vec::new();
    for n in names {
        backends.push(TestUpstream::start(n).await);
    }
    let upstreams = ups(&names
        .iter()
        .zip(&backends)
        .map(|(n, b)| (*n, b))
        .collect::<Vec<_>>());
    let routes = r#"
  - { id: r-any, match: { path_prefix: / }, upstream: any }
  - { id: r-wild, match: { host: "*.example.com", path_prefix: / }, upstream: wild }
  - { id: r-exact-host, match: { host: api.example.com, path_prefix: / }, upstream: exact-host }
  - { id: r-exact-path, match: { host: api.example.com, path_exact: /users/me }, upstream: exact-path }
  - { id: r-long, match: { host: api.example.com, path_prefix: /users/admin }, upstream: long-prefix }
  - { id: r-regex, match: { path_regex: "^/items/[0-9]+$" }, upstream: regex }
  - { id: r-post, match: { path_prefix: /orders, methods: [POST] }, upstream: post-only }
  - { id: r-v2, match: { path_prefix: /orders, headers: { x-api-version: "2" } }, upstream: v2 }
"#;
    let gw = TestGateway::start(|p| simple_config(p, &upstreams, routes)).await;
    let c = &gw.client;
    let who = |r: reqwest::Response| r.headers()["x-backend"].to_str().unwrap().to_string();
    let get = |host: &str, path: &str| c.get(gw.url(path)).header("host", host.to_string()).send();

    assert_eq!(who(get("other.org", "/x").await.unwrap()), "any");
    assert_eq!(who(get("www.example.com", "/x").await.unwrap()), "wild");
    assert_eq!(who(get("a.b.example.com", "/x").await.unwrap()), "wild");
    assert_eq!(who(get("example.com", "/x").await.unwrap()), "any");
    assert_eq!(
        who(get("API.example.com:8080", "/x").await.unwrap()),
        "exact-host"
    );
    assert_eq!(
        who(get("api.example.com", "/users/me").await.unwrap()),
        "exact-path"
    );
    assert_eq!(
        who(get("api.example.com", "/users/admin/1").await.unwrap()),
        "long-prefix"
    );
    assert_eq!(
        who(get("api.example.com", "/users/adminx").await.unwrap()),
        "exact-host"
    );
    // regex routes come after prefixes in their host tier: "/" of the any-host tier wins
    // over nothing, but the regex wins over a tier without a match
    assert_eq!(who(get("other.org", "/items/42").await.unwrap()), "any");
    assert_eq!(
        who(c.post(gw.url("/orders")).send().await.unwrap()),
        "post-only"
    );
    assert_eq!(who(c.get(gw.url("/orders")).send().await.unwrap()), "any");
    assert_eq!(
        who(c
            .get(gw.url("/orders/1"))
            .header("x-api-version", "2")
            .send()
            .await
            .unwrap()),
        "v2"
    );
    for (name, b) in names.iter().zip(&backends) {
        // the regex route is shadowed by the any-host "/" prefix in this table
        let expect_hit = *name != "regex";
        assert_eq!(b.hits() > 0, expect_hit, "{name}: {} hits", b.hits());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_route_and_no_route_404() {
    let b = TestUpstream::start("regex").await;
    let upstreams = ups(&[("regex", &b)]);
    let routes = r#"
  - { id: r-regex, match: { path_regex: "^/items/[0-9]+$", methods: [GET] }, upstream: regex }
"#;
    let gw = TestGateway::start(|p| simple_config(p, &upstreams, routes)).await;
    let r = gw.get("/items/42").await;
    assert_eq!(r.status(), 200);
    let r = gw.client.delete(gw.url("/items/42")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "no route");
    assert_eq!(body["request_id"], rid.as_str());
    assert_eq!(gw.get("/items/x").await.status(), 404);
    assert_eq!(b.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_and_upstream_host() {
    let b = TestUpstream::start("b").await;
    let upstreams = ups(&[("up", &b)]);
    let routes = r#"
  - { id: strip, match: { path_prefix: /users }, upstream: up, strip_prefix: true }
  - { id: strip-slash, match: { path_prefix: /static/ }, upstream: up, strip_prefix: true, upstream_host: backend }
  - { id: fixed, match: { path_prefix: /fixed }, upstream: up, upstream_host: users.internal }
"#;
    let gw = TestGateway::start(|p| simple_config(p, &upstreams, routes)).await;
    gw.get("/users/42?x=1").await;
    assert_eq!(b.last().path, "/42?x=1");
    gw.get("/users").await;
    assert_eq!(b.last().path, "/");
    gw.get("/users?y=2").await;
    assert_eq!(b.last().path, "/?y=2");
    gw.get("/static/app.js").await;
    let s = b.last();
    assert_eq!(s.path, "/app.js");
    assert_eq!(s.header("host"), Some(b.addr.to_string().as_str()));
    gw.get("/fixed/a").await;
    let s = b.last();
    assert_eq!(s.path, "/fixed/a");
    assert_eq!(s.header("host"), Some("users.internal"));
    assert_eq!(
        s.header("x-forwarded-host"),
        Some(format!("127.0.0.1:{}", gw.port).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_request_id() {
    let b = TestUpstream::start("b").await;
    let upstreams = ups(&[("up", &b)]);
    let routes = "  - { id: all, upstream: up }\n";
    let gw = TestGateway::start(|p| simple_config(p, &upstreams, routes)).await;

    let r = gw
        .client
        .get(gw.url("/a"))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(rid.len(), 32);
    let s = b.last();
    // appended, never replaced; proto from an untrusted peer is overwritten
    assert_eq!(s.header("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(s.header("x-forwarded-proto"), Some("http"));
    assert_eq!(s.header("x-forwarded-host"), Some("shop.example.com"));
    assert_eq!(s.header("host"), Some("shop.example.com"));
    assert_eq!(s.header("x-request-id"), Some(rid.as_str()));

    // a well-formed client id is kept end to end
    let r = gw
        .client
        .get(gw.url("/b"))
        .header("x-request-id", "abc-123.X_y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123.X_y");
    assert_eq!(b.last().header("x-request-id"), Some("abc-123.X_y"));
    // a malformed one is replaced
    let r = gw
        .client
        .get(gw.url("/c"))
        .header("x-request-id", "bad id<script>")
        .send()
        .await
        .unwrap();
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(rid, "bad id<script>");
    assert_eq!(b.last().header("x-request-id"), Some(rid.as_str()));

    // the access log has one JSON line per request
    let log_path = gw.dir.path().join("access.log");
    let ok = common::eventually(std::time::Duration::from_secs(5), || {
        let p = log_path.clone();
        async move {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .count()
                >= 3
        }
    })
    .await;
    assert!(ok, "access log lines missing");
    let log = std::fs::read_to_string(&log_path).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["request_id"], rid.as_str());
    assert_eq!(last["route"], "all");
    assert_eq!(last["upstream"], "up");
    assert_eq!(last["backend"], b.addr.to_string().as_str());
    assert_eq!(last["status"], 200);
    assert_eq!(last["method"], "GET");
    assert_eq!(last["path"], "/c");
    assert_eq!(last["client_ip"], "127.0.0.1");
    assert!(last["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(last["time"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_forwarded_for() {
    let b = TestUpstream::start("b").await;
    let upstreams = ups(&[("up", &b)]);
    let routes = "  - { id: all, upstream: up }\n";
    let gw = TestGateway::start(|p| {
        simple_config(p, &upstreams, routes).replace(
            "  threads: 2\n",
            "  threads: 2\n  trusted_proxies: [\"127.0.0.0/8\"]\n",
        )
    })
    .await;
    gw.client
        .get(gw.url("/a"))
        .header("x-forwarded-for", "198.51.100.7, 10.1.1.1")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let s = b.last();
    assert_eq!(s.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        s.header("x-forwarded-for"),
        Some("198.51.100.7, 10.1.1.1, 127.0.0.1")
    );
    let log_path = gw.dir.path().join("access.log");
    let ok = common::eventually(std::time::Duration::from_secs(5), || {
        let p = log_path.clone();
        async move { !std::fs::read_to_string(p).unwrap_or_default().is_empty() }
    })
    .await;
    assert!(ok);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let line: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    // 10.1.1.1 is not a trusted proxy, so it is the client
    assert_eq!(line["client_ip"], "10.1.1.1");
}
