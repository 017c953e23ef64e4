//! Response caching through the real binary: RFC 9111 freshness, variants, stale serving,
//! the cache lock, purge and the memory bound.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{eventually, simple_config, Ports, TestGateway, TestUpstream};

fn cfg(
    p: &Ports,
    b: &TestUpstream,
    cache: &str,
    extra_server: &str,
    extra_route_plugins: &str,
) -> String {
    let routes = format!(
        "  - id: cached\n    upstream: up\n    plugins:\n{extra_route_plugins}      - cache: {{ {cache} }}\n"
    );
    simple_config(
        p,
        &format!("  up:\n    backends: [\"{}\"]\n", b.addr),
        &routes,
    )
    .replace("  threads: 2\n", &format!("  threads: 2\n{extra_server}"))
    .replace("admin:\n", "admin:\n  token: \"s3cret\"\n")
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = gw.client.get(gw.url(path));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

fn h(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_after_miss_ttl_and_head() {
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(|p| cfg(p, &b, "default_ttl: 1s", "", "")).await;
    let r = get(&gw, "/a?x=1", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(h(&r, "cache-status"), "gatehouse; fwd=miss; stored");
    let r = get(&gw, "/a?x=1", &[]).await;
    assert_eq!(h(&r, "cache-status"), "gatehouse; hit");
    assert_eq!(h(&r, "x-hit"), "1");
    assert!(!h(&r, "age").is_empty(), "a hit carries Age");
    assert_eq!(r.text().await.unwrap(), "b");
    assert_eq!(b.hits(), 1);
    // HEAD is answered from the cached GET
    let r = gw.client.head(gw.url("/a?x=1")).send().await.unwrap();
    assert_eq!(h(&r, "cache-status"), "gatehouse; hit");
    assert_eq!(b.hits(), 1);
    // another query string is another object
    assert_eq!(
        h(&get(&gw, "/a?x=2", &[]).await, "cache-status"),
        "gatehouse; fwd=miss; stored"
    );
    // default_ttl 1s: expired afterwards
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = get(&gw, "/a?x=1", &[]).await;
    assert_eq!(h(&r, "x-hit"), "3", "expired entry must be fetched again");
    assert!(
        h(&r, "cache-status").starts_with("gatehouse; fwd="),
        "{}",
        h(&r, "cache-status")
    );
    let counted = eventually(Duration::from_secs(5), || async {
        let m = gw.metrics().await;
        m.contains("gatehouse_cache_requests_total{result=\"hit\",route=\"cached\"} 2")
            && m.contains("gatehouse_cache_requests_total{result=\"miss\",route=\"cached\"} 2")
    })
    .await;
    assert!(counted, "{}", gw.metrics().await);
    assert!(gw.metrics().await.contains("gatehouse_cache_size_bytes"));
}

/// Sends the same request three times with the upstream answering `headers`; returns how many
/// reached the upstream.
async fn upstream_hits_for(
    gw: &TestGateway,
    b: &TestUpstream,
    path: &str,
    headers: &[(&str, &str)],
    req: &[(&str, &str)],
) -> usize {
    b.set_headers(headers);
    let before = b.hits();
    for _ in 0..3 {
        assert_eq!(get(gw, path, req).await.status(), 200);
    }
    b.hits() - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_control_cases() {
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(|p| cfg(p, &b, "default_ttl: 60s", "", "")).await;
    assert_eq!(upstream_hits_for(&gw, &b, "/default", &[], &[]).await, 1);
    assert_eq!(
        upstream_hits_for(&gw, &b, "/max-age", &[("cache-control", "max-age=60")], &[]).await,
        1
    );
    assert_eq!(
        upstream_hits_for(&gw, &b, "/no-store", &[("cache-control", "no-store")], &[]).await,
        3
    );
    assert_eq!(
        upstream_hits_for(
            &gw,
            &b,
            "/private",
            &[("cache-control", "private, max-age=60")],
            &[]
        )
        .await,
        3
    );
    // no-cache: may be stored but must be revalidated every time
    assert_eq!(
        upstream_hits_for(&gw, &b, "/no-cache", &[("cache-control", "no-cache")], &[]).await,
        3
    );
    assert_eq!(
        upstream_hits_for(
            &gw,
            &b,
            "/max-age-0",
            &[("cache-control", "max-age=0")],
            &[]
        )
        .await,
        3
    );
    assert_eq!(
        upstream_hits_for(
            &gw,
            &b,
            "/s-maxage",
            &[("cache-control", "s-maxage=60")],
            &[]
        )
        .await,
        1
    );
    // Age already used up the freshness lifetime
    assert_eq!(
        upstream_hits_for(
            &gw,
            &b,
            "/aged",
            &[("cache-control", "max-age=30"), ("age", "45")],
            &[]
        )
        .await,
        3
    );
    assert_eq!(
        upstream_hits_for(
            &gw,
            &b,
            "/expires-past",
            &[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")],
            &[]
        )
        .await,
        3
    );
    assert_eq!(
        upstream_hits_for(
            &gw,
            &b,
            "/expires-future",
            &[("expires", "Fri, 01 Jan 2100 00:00:00 GMT")],
            &[]
        )
        .await,
        1
    );
    // never stored: Set-Cookie, Vary: *, answers to Authorization (unless public/s-maxage)
    assert_eq!(
        upstream_hits_for(
            &gw,
            &b,
            "/cookie",
            &[("set-cookie", "a=b"), ("cache-control", "max-age=60")],
            &[]
        )
        .await,
        3
    );
    assert_eq!(
        upstream_hits_for(
            &gw,
            &b,
            "/vary-star",
            &[("vary", "*"), ("cache-control", "max-age=60")],
            &[]
        )
        .await,
        3
    );
    assert_eq!(
        upstream_hits_for(
            &gw,
            &b,
            "/auth",
            &[("cache-control", "max-age=60")],
            &[("authorization", "Bearer x")]
        )
        .await,
        3
    );
    assert_eq!(
        upstream_hits_for(
            &gw,
            &b,
            "/auth-public",
            &[("cache-control", "public, max-age=60")],
            &[("authorization", "Bearer x")]
        )
        .await,
        1
    );
    assert_eq!(
        upstream_hits_for(
            &gw,
            &b,
            "/auth-smaxage",
            &[("cache-control", "s-maxage=60")],
            &[("authorization", "Bearer x")]
        )
        .await,
        1
    );
    // only cacheable statuses without explicit freshness
    b.set_status(500);
    b.set_headers(&[]);
    let before = b.hits();
    for _ in 0..2 {
        assert_eq!(get(&gw, "/error", &[]).await.status(), 500);
    }
    assert_eq!(
        b.hits() - before,
        2,
        "a 500 without freshness info must not be cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_configured_and_upstream() {
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(|p| cfg(p, &b, "vary: [Accept-Language]", "", "")).await;
    for lang in ["en", "de", "en", "de"] {
        get(&gw, "/v", &[("accept-language", lang)]).await;
    }
    assert_eq!(b.hits(), 2, "two languages, two entries");
    let r = get(&gw, "/v", &[("accept-language", "de")]).await;
    assert_eq!(h(&r, "x-hit"), "2");
    // the upstream's Vary splits too
    b.set_headers(&[("vary", "X-Tenant"), ("cache-control", "max-age=60")]);
    for t in ["a", "b", "a", "b"] {
        get(&gw, "/uv", &[("x-tenant", t)]).await;
    }
    assert_eq!(b.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_ports_never_share_an_entry() {
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(|p| cfg(p, &b, "", "", "")).await;
    for host in [
        "a.example.com",
        "b.example.com",
        "a.example.com:8443",
        "A.example.com",
    ] {
        get(&gw, "/same", &[("host", host)]).await;
    }
    assert_eq!(b.hits(), 3, "host case folds, port and host split");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_never_skips_authentication() {
    let b = TestUpstream::start("b").await;
    let secret = "cache-test-secret-cache-test-secret-xx";
    let jwt = format!("      - jwt: {{ keys: [{{ algorithm: HS256, secret: \"{secret}\" }}] }}\n");
    let gw = TestGateway::start(|p| cfg(p, &b, "", "", &jwt)).await;
    b.set_headers(&[("cache-control", "public, max-age=60")]);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "u", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let auth = format!("Bearer {token}");
    assert_eq!(
        get(&gw, "/private-data", &[("authorization", &auth)])
            .await
            .status(),
        200
    );
    let r = get(&gw, "/private-data", &[("authorization", &auth)]).await;
    assert_eq!(h(&r, "cache-status"), "gatehouse; hit");
    assert_eq!(get(&gw, "/private-data", &[]).await.status(), 401);
    assert_eq!(
        get(&gw, "/private-data", &[("authorization", "Bearer forged")])
            .await
            .status(),
        401
    );
    assert_eq!(b.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_upstream_request() {
    let b = TestUpstream::start("b").await;
    b.set_delay(Duration::from_millis(500));
    let gw = TestGateway::start(|p| cfg(p, &b, "default_ttl: 60s", "", "")).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let c = gw.client.clone();
        let url = gw.url("/hot");
        tasks.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        b.hits(),
        1,
        "50 concurrent misses must cause one upstream request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_then_refreshed() {
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(|p| {
        cfg(
            p,
            &b,
            "default_ttl: 1s, stale_while_revalidate: 30s",
            "",
            "",
        )
    })
    .await;
    assert_eq!(h(&get(&gw, "/swr", &[]).await, "x-hit"), "1");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    b.set_delay(Duration::from_millis(800));
    let started = std::time::Instant::now();
    let r = get(&gw, "/swr", &[]).await;
    assert_eq!(h(&r, "x-hit"), "1", "stale served");
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "stale must be served at once, not after the refresh"
    );
    assert_eq!(h(&r, "cache-status"), "gatehouse; hit; detail=stale");
    let refreshed = eventually(Duration::from_secs(5), || async {
        h(&get(&gw, "/swr", &[]).await, "x-hit") == "2"
    })
    .await;
    assert!(refreshed, "the background refresh did not land");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_with_the_backend_down() {
    let b = TestUpstream::start("b").await;
    let gw =
        TestGateway::start(|p| cfg(p, &b, "default_ttl: 1s, stale_if_error: 5m", "", "")).await;
    assert_eq!(get(&gw, "/sie", &[]).await.status(), 200);
    // the upstream's own directive counts too
    b.set_headers(&[("cache-control", "max-age=1, stale-if-error=300")]);
    assert_eq!(get(&gw, "/sie2", &[]).await.status(), 200);
    b.stop().await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for path in ["/sie", "/sie2"] {
        let r = get(&gw, path, &[]).await;
        assert_eq!(r.status(), 200, "{path}: stale entry not served on error");
        assert_eq!(h(&r, "x-hit"), if path == "/sie" { "1" } else { "2" });
    }
    assert_eq!(get(&gw, "/never-cached", &[]).await.status(), 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_every_variant() {
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(|p| cfg(p, &b, "vary: [Accept-Language]", "", "")).await;
    for lang in ["en", "de"] {
        get(&gw, "/p?q=1", &[("accept-language", lang)]).await;
    }
    assert_eq!(b.hits(), 2);
    let url = serde_json::json!({ "url": format!("http://127.0.0.1:{}/p?q=1", gw.port) });
    let r = gw
        .client
        .post(gw.admin_url("/cache/purge"))
        .json(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "purge needs the admin token");
    let r = gw
        .client
        .post(gw.admin_url("/cache/purge"))
        .bearer_auth("s3cret")
        .json(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["purged"], 2);
    for lang in ["en", "de"] {
        assert_eq!(
            h(
                &get(&gw, "/p?q=1", &[("accept-language", lang)]).await,
                "cache-status"
            ),
            "gatehouse; fwd=miss; stored"
        );
    }
    assert_eq!(b.hits(), 4);
    let r = gw
        .client
        .post(gw.admin_url("/cache/purge"))
        .bearer_auth("s3cret")
        .body("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_memory_under_max_size() {
    let b = TestUpstream::start("b").await;
    b.set_body_size(4096);
    let gw = TestGateway::start(|p| {
        cfg(
            p,
            &b,
            "default_ttl: 60s",
            "  cache: { max_size: 256KiB }\n",
            "",
        )
    })
    .await;
    // ~50 objects fit; 200 go through
    for i in 0..200 {
        assert_eq!(get(&gw, &format!("/obj/{i}"), &[]).await.status(), 200);
    }
    let m = gw.metrics().await;
    let size: f64 = m
        .lines()
        .find(|l| l.starts_with("gatehouse_cache_size_bytes "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert!(size > 0.0);
    // the bound plus at most one object in flight
    assert!(
        size <= 262144.0 + 4096.0 + 1024.0,
        "cache holds {size} bytes, max_size is 256KiB"
    );
    // recent objects are still there (the LRU is sharded: it evicts the least recently used
    // object of one shard at a time, so this is "most", not "all")
    let mut hits = 0;
    for i in (192..200).rev() {
        if h(&get(&gw, &format!("/obj/{i}"), &[]).await, "cache-status") == "gatehouse; hit" {
            hits += 1;
        }
    }
    assert!(hits >= 6, "{hits} of the 8 most recent objects were hits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_truncated_bodies_are_not_stored() {
    let b = TestUpstream::start("b").await;
    b.set_body_size(3000);
    let gw = TestGateway::start(|p| cfg(p, &b, "max_object_size: 2KiB", "", "")).await;
    for _ in 0..2 {
        let r = get(&gw, "/big", &[]).await;
        assert_eq!(
            r.text().await.unwrap().len(),
            3000,
            "large bodies still stream through"
        );
    }
    assert_eq!(b.hits(), 2);

    // a backend that promises 1000 bytes, sends 500 and dies
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s2 = served.clone();
    let task = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for _ in 0..10 {
            let Ok((mut s, _)) = l.accept().await else {
                break;
            };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            s2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nCache-Control: max-age=60\r\n\r\n",
                )
                .await;
            let _ = s.write_all(&[b'x'; 500]).await;
            drop(s);
        }
    });
    let routes = "  - id: cached\n    upstream: up\n    plugins:\n      - cache: {}\n";
    let gw2 = TestGateway::start(|p| {
        simple_config(p, &format!("  up:\n    backends: [\"{addr}\"]\n"), routes)
    })
    .await;
    for _ in 0..2 {
        let _ = gw2
            .client
            .get(gw2.url("/cut"))
            .send()
            .await
            .map(|r| async { r.bytes().await });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        served.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "a truncated body must not be served from cache"
    );
    task.abort();
}
