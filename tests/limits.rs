//! Client identity, rate limits, access control and request limits through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{eventually, raw_exchange, simple_config, Ports, TestGateway, TestUpstream};

fn ups(b: &TestUpstream) -> String {
    format!("  up:\n    backends: [\"{}\"]\n", b.addr)
}

/// `simple_config` plus server-level extra YAML (indented under `server:`) and a top-level
/// plugin chain.
fn cfg(p: &Ports, b: &TestUpstream, server_extra: &str, routes: &str, global: &str) -> String {
    let mut c = simple_config(p, &ups(b), routes)
        .replace("  threads: 2\n", &format!("  threads: 2\n{server_extra}"));
    if !global.is_empty() {
        c.push_str(&format!("plugins:\n{global}\n"));
    }
    c
}

async fn status(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = gw.client.get(gw.url(path));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

async fn last_log(gw: &TestGateway, n: usize) -> serde_json::Value {
    let entries = gw.log_entries(n).await;
    assert!(entries.len() >= n, "access log has fewer than {n} lines");
    entries[n - 1].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_resolution() {
    let b = TestUpstream::start("b").await;
    // untrusted peer: forwarded headers are never believed
    let gw = TestGateway::start(|p| cfg(p, &b, "", "  - { id: all, upstream: up }\n", "")).await;
    status(
        &gw,
        "/",
        &[
            ("x-forwarded-for", "203.0.113.1"),
            ("forwarded", "for=203.0.113.2"),
        ],
    )
    .await;
    assert_eq!(last_log(&gw, 1).await["client_ip"], "127.0.0.1");
    drop(gw);
    // trusted chain: the first untrusted address from the right
    let gw = TestGateway::start(|p| {
        cfg(
            p,
            &b,
            "  trusted_proxies: [\"127.0.0.1\", \"10.0.0.0/8\"]\n",
            "  - { id: all, upstream: up }\n",
            "",
        )
    })
    .await;
    status(
        &gw,
        "/",
        &[("x-forwarded-for", "198.51.100.9, 203.0.113.7, 10.1.2.3")],
    )
    .await;
    assert_eq!(last_log(&gw, 1).await["client_ip"], "203.0.113.7");
    status(
        &gw,
        "/",
        &[(
            "forwarded",
            "for=198.51.100.1, for=\"[2001:db8::5]:1234\";proto=https",
        )],
    )
    .await;
    assert_eq!(last_log(&gw, 2).await["client_ip"], "2001:db8::5");
    status(&gw, "/", &[]).await;
    assert_eq!(last_log(&gw, 3).await["client_ip"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_headers_and_metrics() {
    let b = TestUpstream::start("b").await;
    let routes = "  - id: all\n    upstream: up\n    plugins:\n      - rate_limit: { key: client_ip, requests: 3, per: 1m, name: per-ip }\n";
    let gw = TestGateway::start(|p| cfg(p, &b, "  trusted_proxies: [\"127.0.0.1\"]\n", routes, ""))
        .await;
    for i in 0..3u64 {
        let r = status(&gw, "/", &[("x-forwarded-for", "198.51.100.1")]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-policy"], "\"per-ip\";q=3;w=60");
        let rl = r.headers()["ratelimit"].to_str().unwrap().to_string();
        assert!(
            rl.starts_with(&format!("\"per-ip\";r={};t=", 2 - i)),
            "{rl}"
        );
    }
    let r = status(&gw, "/", &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    assert!(r.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"per-ip\";r=0;"));
    assert_eq!(r.headers()["ratelimit-policy"], "\"per-ip\";q=3;w=60");
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate limit exceeded");
    // other clients are not affected; an IPv6 client is keyed by its /64
    assert_eq!(
        status(&gw, "/", &[("x-forwarded-for", "198.51.100.2")])
            .await
            .status(),
        200
    );
    for _ in 0..3 {
        assert_eq!(
            status(&gw, "/", &[("x-forwarded-for", "2001:db8:aa:bb::1")])
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        status(&gw, "/", &[("x-forwarded-for", "2001:db8:aa:bb:ffff::2")])
            .await
            .status(),
        429
    );
    assert_eq!(
        status(&gw, "/", &[("x-forwarded-for", "2001:db8:aa:bc::1")])
            .await
            .status(),
        200
    );
    assert_eq!(b.hits(), 3 + 1 + 3 + 1);
    let counted = eventually(Duration::from_secs(5), || async {
        let m = gw.metrics().await;
        m.contains("gatehouse_ratelimit_decisions_total{result=\"limited\",route=\"all\"} 2")
            && m.contains("gatehouse_ratelimit_decisions_total{result=\"allowed\",route=\"all\"} 8")
    })
    .await;
    assert!(counted, "{}", gw.metrics().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarded_for_from_untrusted_peer_is_one_client() {
    let b = TestUpstream::start("b").await;
    let routes = "  - id: all\n    upstream: up\n    plugins:\n      - rate_limit: { key: client_ip, requests: 10, per: 1m }\n";
    let gw = TestGateway::start(|p| cfg(p, &b, "", routes, "")).await;
    let mut ok = 0;
    for i in 0..1000u32 {
        let spoof = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        let r = status(
            &gw,
            "/",
            &[
                ("x-forwarded-for", &spoof),
                ("forwarded", &format!("for={spoof}")),
            ],
        )
        .await;
        if r.status() == 200 {
            ok += 1;
        } else {
            assert_eq!(r.status(), 429);
        }
    }
    assert_eq!(ok, 10, "1,000 spoofed addresses must count as one client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_claim_global_keys_multi_level_and_missing_key() {
    let b = TestUpstream::start("b").await;
    let secret = "rate-limit-test-secret-rate-limit-test";
    let routes = format!(
        r#"
  - id: keyed
    match: {{ path_prefix: /keyed }}
    upstream: up
    plugins:
      - rate_limit: {{ key: "header:X-Api-Key", requests: 2, per: 1m }}
  - id: fallback
    match: {{ path_prefix: /fallback }}
    upstream: up
    plugins:
      - rate_limit: {{ key: "header:X-Api-Key", requests: 1, per: 1m, missing_key: client_ip }}
  - id: user
    match: {{ path_prefix: /user }}
    upstream: up
    plugins:
      - jwt: {{ keys: [{{ algorithm: HS256, secret: "{secret}" }}] }}
      - rate_limit: {{ key: "claim:sub", requests: 2, per: 1m }}
  - id: login
    match: {{ path_prefix: /login }}
    upstream: up
    plugins:
      - rate_limit: {{ key: client_ip, requests: 1, per: 1m, name: login }}
  - id: open
    match: {{ path_prefix: / }}
    upstream: up
"#
    );
    let global = "  - rate_limit: { key: global, requests: 20, per: 1m, name: global }";
    let gw = TestGateway::start(|p| cfg(p, &b, "", &routes, global)).await;
    // header key: per key value, whatever the IP
    assert_eq!(
        status(&gw, "/keyed", &[("x-api-key", "k1")]).await.status(),
        200
    );
    assert_eq!(
        status(&gw, "/keyed", &[("x-api-key", "k1")]).await.status(),
        200
    );
    assert_eq!(
        status(&gw, "/keyed", &[("x-api-key", "k1")]).await.status(),
        429
    );
    assert_eq!(
        status(&gw, "/keyed", &[("x-api-key", "k2")]).await.status(),
        200
    );
    // missing key: rejected, never unlimited
    let r = status(&gw, "/keyed", &[]).await;
    assert_eq!(r.status(), 401);
    // ... or limited by client IP when configured
    assert_eq!(status(&gw, "/fallback", &[]).await.status(), 200);
    assert_eq!(status(&gw, "/fallback", &[]).await.status(), 429);
    // claim key: per user
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let tok = |sub: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"sub": sub, "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let (alice, bob) = (
        format!("Bearer {}", tok("alice")),
        format!("Bearer {}", tok("bob")),
    );
    assert_eq!(
        status(&gw, "/user", &[("authorization", &alice)])
            .await
            .status(),
        200
    );
    assert_eq!(
        status(&gw, "/user", &[("authorization", &alice)])
            .await
            .status(),
        200
    );
    assert_eq!(
        status(&gw, "/user", &[("authorization", &alice)])
            .await
            .status(),
        429
    );
    assert_eq!(
        status(&gw, "/user", &[("authorization", &bob)])
            .await
            .status(),
        200
    );
    // a stricter limit on the login route, under the global one: both policies are announced
    let r = status(&gw, "/login", &[]).await;
    assert_eq!(r.status(), 200);
    let policies: Vec<_> = r
        .headers()
        .get_all("ratelimit-policy")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(policies.len(), 2, "{policies:?}");
    assert!(
        policies.iter().any(|p| p.starts_with("\"global\";q=20"))
            && policies.iter().any(|p| p.starts_with("\"login\";q=1"))
    );
    let r = status(&gw, "/login", &[]).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"login\""));
    // the global limit (20) counts every request it let through, whichever route: 13 so far
    // (it runs first, so requests rejected later by a route's own limit or by jwt count too)
    let mut open_ok = 0;
    for _ in 0..10 {
        if status(&gw, "/open", &[]).await.status() == 200 {
            open_ok += 1;
        }
    }
    let r = status(&gw, "/open", &[]).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"global\""));
    assert_eq!(open_ok, 7, "the global limit did not apply to /open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_rate_is_within_ten_percent() {
    let b = TestUpstream::start("b").await;
    let routes = "  - id: all\n    upstream: up\n    plugins:\n      - rate_limit: { key: global, requests: 20, per: 1s }\n";
    let gw = TestGateway::start(|p| cfg(p, &b, "", routes, "")).await;
    // offer ~50 requests/s for 3 s against a 20/s limit
    let start = Instant::now();
    let mut allowed = 0u32;
    let mut sent = 0u32;
    while start.elapsed() < Duration::from_secs(3) && sent < 400 {
        let due = start + Duration::from_millis(20 * u64::from(sent));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        if start.elapsed() >= Duration::from_secs(3) {
            break;
        }
        sent += 1;
        if gw.get("/x").await.status() == 200 {
            allowed += 1;
        }
    }
    eprintln!("rate limit 20/s: {allowed} of {sent} allowed in 3 s");
    // 20/s over 3 s = 60 (the first window may start with a full budget)
    assert!(
        (54..=66).contains(&allowed),
        "allowed {allowed} of {sent} in 3 s at 20/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_allow_and_deny() {
    let b = TestUpstream::start("b").await;
    let routes = "  - id: all\n    upstream: up\n    plugins:\n      - access: { allow: [\"10.0.0.0/8\"], deny: [\"10.6.6.0/24\"] }\n";
    let gw = TestGateway::start(|p| cfg(p, &b, "  trusted_proxies: [\"127.0.0.1\"]\n", routes, ""))
        .await;
    assert_eq!(
        status(&gw, "/", &[("x-forwarded-for", "10.1.1.1")])
            .await
            .status(),
        200
    );
    let r = status(&gw, "/", &[("x-forwarded-for", "10.6.6.7")]).await;
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "forbidden");
    assert_eq!(
        status(&gw, "/", &[("x-forwarded-for", "192.0.2.1")])
            .await
            .status(),
        403
    );
    assert_eq!(
        status(&gw, "/", &[]).await.status(),
        403,
        "127.0.0.1 is not in the allow list"
    );
    assert_eq!(b.hits(), 1);
}

const LIMITS: &str = "  limits:\n    max_body_size: 1KiB\n    max_header_size: 4KiB\n    max_headers: 20\n    header_read_timeout: 1s\n    max_connections: 4\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_without_the_excess_upstream() {
    let b = TestUpstream::start("b").await;
    let routes = "  - { id: small, match: { path_prefix: /small }, upstream: up }\n  - { id: big, match: { path_prefix: /big }, upstream: up, max_body_size: 4KiB }\n";
    let gw = TestGateway::start(|p| cfg(p, &b, LIMITS, routes, "")).await;
    // declared length over the limit: refused before reading
    let body = vec![b'x'; 2000];
    let mut req = format!(
        "POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let resp = raw_exchange(gw.port, &req, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("request body too large"));
    assert_eq!(b.body_bytes(), 0);
    assert_eq!(b.hits(), 0);
    // chunked: stopped as soon as it crosses the limit; nothing past the limit goes upstream
    let mut req = b"POST /small HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(format!("{:x}\r\n", 600).as_bytes());
        req.extend_from_slice(&[b'y'; 600]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let resp = raw_exchange(gw.port, &req, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        b.body_bytes() <= 1024,
        "{} body bytes reached the upstream",
        b.body_bytes()
    );
    assert_eq!(b.hits(), 0);
    // within the limit, and a route that allows more
    let r = gw
        .client
        .post(gw.url("/small"))
        .body(vec![b'z'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = gw
        .client
        .post(gw.url("/big"))
        .body(vec![b'z'; 3000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = gw
        .client
        .post(gw.url("/big"))
        .body(vec![b'z'; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431() {
    let b = TestUpstream::start("b").await;
    let gw =
        TestGateway::start(|p| cfg(p, &b, LIMITS, "  - { id: all, upstream: up }\n", "")).await;
    let mut many = String::from("GET / HTTP/1.1\r\nHost: t\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let resp = raw_exchange(gw.port, many.as_bytes(), Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(5000)
    );
    let resp = raw_exchange(gw.port, big.as_bytes(), Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert_eq!(b.hits(), 0);
    let ok = raw_exchange(
        gw.port,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_head_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = TestUpstream::start("b").await;
    let gw =
        TestGateway::start(|p| cfg(p, &b, LIMITS, "  - { id: all, upstream: up }\n", "")).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let started = Instant::now();
    // trickle a header line every 300 ms: each read is quick, the whole head is not
    let mut closed = false;
    for i in 0..20 {
        if s.write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        if i == 0 {
            let _ = s.write_all(b"").await;
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(0)) | Ok(Err(_)) =
            tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await
        {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a head trickled for {:?} was not cut off",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed only after {:?}",
        started.elapsed()
    );
    assert_eq!(b.hits(), 0);
    // a normal request still works
    assert_eq!(gw.get("/").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_are_refused() {
    use tokio::io::AsyncReadExt;
    let b = TestUpstream::start("b").await;
    let gw =
        TestGateway::start(|p| cfg(p, &b, LIMITS, "  - { id: all, upstream: up }\n", "")).await;
    // the harness's own client may hold a pooled connection; open idle ones up to the cap
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "connection over max_connections was not closed: {r:?}"
    );
    drop(held);
    let back = eventually(Duration::from_secs(5), || async {
        raw_exchange(
            gw.port,
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await
        .starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_real_source_addresses_are_distinct_clients() {
    let b = TestUpstream::start("b").await;
    let routes = "  - id: all\n    upstream: up\n    plugins:\n      - rate_limit: { key: client_ip, requests: 2, per: 1m }\n";
    let gw = TestGateway::start(|p| cfg(p, &b, "", routes, "")).await;
    // 200 clients on 127.0.1.x / 127.0.2.x (all of 127/8 is loopback on Linux)
    let mut allowed = 0;
    for i in 0..200u32 {
        let src = std::net::IpAddr::V4(std::net::Ipv4Addr::new(
            127,
            0,
            1 + (i / 250) as u8,
            1 + (i % 250) as u8,
        ));
        let client = reqwest::Client::builder()
            .local_address(src)
            .build()
            .unwrap();
        for _ in 0..2 {
            if client.get(gw.url("/")).send().await.unwrap().status() == 200 {
                allowed += 1;
            }
        }
        if i % 50 == 0 {
            assert_eq!(
                client.get(gw.url("/")).send().await.unwrap().status(),
                429,
                "third request from {src}"
            );
        }
    }
    assert_eq!(allowed, 400, "every source address has its own budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_ends_at_body_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = TestUpstream::start("b").await;
    let limits = "  limits:\n    body_read_timeout: 1s\n";
    let gw =
        TestGateway::start(|p| cfg(p, &b, limits, "  - { id: all, upstream: up }\n", "")).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stalled body was waited on for {:?}",
        started.elapsed()
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request timeout"), "{text}");
    assert_eq!(
        b.hits(),
        0,
        "an incomplete body never completes a request upstream"
    );
}

/// Sends `GET /` on `conn` and reads the whole answer (head and `Content-Length` body); its
/// status.
async fn exchange(conn: &mut tokio::net::TcpStream) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return head[9..12].parse().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "no whole answer");
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the gateway closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_answered_429_pauses_before_its_next_request() {
    let b = TestUpstream::start("b").await;
    let routes = "  - id: all\n    upstream: up\n    plugins:\n      - rate_limit: { key: client_ip, requests: 1, per: 1h }\n";
    let pause = Duration::from_millis(400);
    let gw =
        TestGateway::start(|p| cfg(p, &b, "  limits: { pause_after_429: 400ms }\n", routes, ""))
            .await;
    // one keep-alive connection (a raw socket: a client pool may open another one): 200,
    // then 429s
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    assert_eq!(exchange(&mut conn).await, 200);
    assert_eq!(exchange(&mut conn).await, 429);
    for _ in 0..2 {
        let t = Instant::now();
        assert_eq!(exchange(&mut conn).await, 429);
        // the connection was read again only after the pause that followed the last 429
        assert!(
            t.elapsed() >= pause - Duration::from_millis(50),
            "the next request was read {:?} after a 429",
            t.elapsed()
        );
    }
    // the third pause starts once the third 429 is written
    let counted = gw
        .metric_reaches(
            "gatehouse_connections_paused_total",
            3.0,
            Duration::from_secs(5),
        )
        .await;
    assert!(counted, "three pauses were not counted");
    assert_eq!(b.hits(), 1, "refused requests never went upstream");
    drop(gw);

    // `0s`: no pause, nothing counted
    let gw =
        TestGateway::start(|p| cfg(p, &b, "  limits: { pause_after_429: 0s }\n", routes, "")).await;
    for expected in [200, 429, 429, 429] {
        assert_eq!(status(&gw, "/", &[]).await.status(), expected);
    }
    assert_eq!(gw.metric("gatehouse_connections_paused_total").await, 0.0);
}
