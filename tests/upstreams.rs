//! Load balancing, health checks, and the gateway's 502/503/504 answers, through the real
//! binary with real backends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{eventually, simple_config, TestGateway, TestUpstream};

fn who(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn tally(
    gw: &TestGateway,
    n: usize,
    build: impl Fn(usize) -> reqwest::RequestBuilder,
) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for i in 0..n {
        let r = build(i).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        *m.entry(who(&r)).or_insert(0) += 1;
    }
    let _ = gw;
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_over_300_requests() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    let ups = format!(
        "  up:\n    backends:\n      - \"{}\"\n      - {{ addr: \"{}\", weight: 2 }}\n      - {{ addr: \"{}\", weight: 3 }}\n    balance: round_robin\n",
        a.addr, b.addr, c.addr
    );
    let gw =
        TestGateway::start(|p| simple_config(p, &ups, "  - { id: all, upstream: up }\n")).await;
    let m = tally(&gw, 300, |_| gw.client.get(gw.url("/x"))).await;
    for (name, weight) in [("a", 1.0), ("b", 2.0), ("c", 3.0)] {
        let expected = 300.0 * weight / 6.0;
        let got = *m.get(name).unwrap_or(&0) as f64;
        assert!(
            (got - expected).abs() <= expected * 0.1,
            "{name}: {got} vs {expected} ({m:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_balance_spreads_by_weight() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let ups = format!(
        "  up:\n    backends: [\"{}\", {{ addr: \"{}\", weight: 3 }}]\n    balance: random\n",
        a.addr, b.addr
    );
    let gw =
        TestGateway::start(|p| simple_config(p, &ups, "  - { id: all, upstream: up }\n")).await;
    let m = tally(&gw, 400, |_| gw.client.get(gw.url("/x"))).await;
    // binomial(400, 0.25): mean 100, sd ~8.7; 55..145 is over 5 sd
    let a_hits = *m.get("a").unwrap_or(&0);
    assert!((55..=145).contains(&a_hits), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_is_sticky() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    let ups = format!(
        "  up:\n    backends: [\"{}\", \"{}\", \"{}\"]\n    balance: consistent_hash\n    hash_key: \"header:X-User-Id\"\n",
        a.addr, b.addr, c.addr
    );
    let gw =
        TestGateway::start(|p| simple_config(p, &ups, "  - { id: all, upstream: up }\n")).await;
    let mut owners: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for u in 0..40 {
            let user = format!("user-{u}");
            let r = gw
                .client
                .get(gw.url("/x"))
                .header("x-user-id", &user)
                .send()
                .await
                .unwrap();
            let w = who(&r);
            match owners.get(&user) {
                Some(prev) => assert_eq!(prev, &w, "{user} moved in round {round}"),
                None => {
                    owners.insert(user, w);
                }
            }
        }
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert!(
        distinct.len() >= 2,
        "40 users all on one backend: {owners:?}"
    );
}

fn health_ups(list: &[&TestUpstream], interval: &str) -> String {
    let backends: Vec<String> = list.iter().map(|u| format!("\"{}\"", u.addr)).collect();
    format!(
        "  up:\n    backends: [{}]\n    health_check:\n      http: {{ path: /health }}\n      interval: {interval}\n      timeout: 500ms\n      healthy_after: 2\n      unhealthy_after: 2\n    timeouts: {{ connect: 500ms, read: 2s }}\n",
        backends.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_leaves_rotation_and_rejoins() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let ups = health_ups(&[&a, &b], "200ms");
    let gw =
        TestGateway::start(|p| simple_config(p, &ups, "  - { id: all, upstream: up }\n")).await;
    let m = tally(&gw, 20, |_| gw.client.get(gw.url("/x"))).await;
    assert_eq!(m.len(), 2, "{m:?}");

    b.stop().await;
    // interval x unhealthy_after = 400 ms; allow scheduling slack
    let left = eventually(Duration::from_secs(5), || async {
        gw.metrics().await.contains(&format!(
            "gatehouse_upstream_backend_healthy{{backend=\"{}\",upstream=\"up\"}} 0",
            b.addr
        ))
    })
    .await;
    assert!(left, "b not marked unhealthy");
    let before = b.hits();
    for i in 0..30 {
        let r = gw.get("/x").await;
        assert_eq!(r.status(), 200, "request {i} after the health window");
        assert_eq!(who(&r), "a");
    }
    assert_eq!(b.hits(), before);

    b.restart().await;
    let back = eventually(Duration::from_secs(5), || async {
        let r = gw.get("/x").await;
        who(&r) == "b"
    })
    .await;
    assert!(back, "b did not rejoin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failing_first_check_never_gets_traffic() {
    let a = TestUpstream::start("a").await;
    let dead = TestUpstream::start("dead").await;
    dead.stop().await;
    let ups = health_ups(&[&a, &dead], "10s");
    let gw =
        TestGateway::start(|p| simple_config(p, &ups, "  - { id: all, upstream: up }\n")).await;
    for _ in 0..20 {
        let r = gw.get("/x").await;
        assert_eq!(who(&r), "a");
    }
    let stderr = gw.stderr();
    assert!(
        !stderr.contains("Fail to proxy"),
        "a request went to the dead backend:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_is_503_json() {
    let a = TestUpstream::start("a").await;
    let ups = health_ups(&[&a], "200ms");
    let gw =
        TestGateway::start(|p| simple_config(p, &ups, "  - { id: all, upstream: up }\n")).await;
    assert_eq!(gw.get("/x").await.status(), 200);
    a.stop().await;
    // interval x unhealthy_after = 400 ms; until then requests fail with 502
    let gone = format!(
        "gatehouse_upstream_backend_healthy{{backend=\"{}\",upstream=\"up\"}} 0",
        a.addr
    );
    let down = eventually(Duration::from_secs(5), || async {
        gw.metrics().await.contains(&gone)
    })
    .await;
    assert!(down, "the stopped backend never left the rotation");
    let r = gw.get("/x").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/json");
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "no healthy backend");
    assert_eq!(body["request_id"], rid.as_str());
}

/// A backend that answers the first request of each connection and closes the connection when
/// a second request arrives on it (a keep-alive connection it had given up on): counts
/// connections accepted.
async fn one_request_per_connection_backend() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let Ok((mut s, _)) = l.accept().await else {
                break;
            };
            acc.fetch_add(1, Ordering::SeqCst);
            conns.spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                for served in 0..2 {
                    // read one request head (GETs without a body)
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.clear();
                    if served == 1 {
                        return; // drop the connection without answering
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    (addr, accepted, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_pooled_connection_is_retried_on_a_fresh_one() {
    // One backend, no retry policy: a pooled connection the backend closed is not a backend
    // failure. The request goes again on a new connection (not 503 "no healthy backend" for
    // the only, healthy, backend; not counted against its circuit breaker).
    let (addr, accepted, task) = one_request_per_connection_backend().await;
    let ups = format!(
        "  up:\n    backends: [\"{addr}\"]\n    circuit_breaker: {{ consecutive_failures: 1, open_for: 60s }}\n"
    );
    let gw =
        TestGateway::start(|p| simple_config(p, &ups, "  - { id: all, upstream: up }\n")).await;
    for i in 0..5 {
        let r = gw.get("/x").await;
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (200, "ok"), "request {i}");
    }
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 5);
    let m = gw.metrics().await;
    assert!(
        m.lines()
            .filter(|l| l.starts_with("gatehouse_upstream_errors_total{"))
            .all(|l| l.ends_with(" 0")),
        "a closed pooled connection was counted as an upstream error:\n{m}"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_without_health_check_is_502() {
    let a = TestUpstream::start("a").await;
    a.stop().await;
    let ups = format!(
        "  up:\n    backends: [\"{}\"]\n    timeouts: {{ connect: 500ms }}\n",
        a.addr
    );
    let gw =
        TestGateway::start(|p| simple_config(p, &ups, "  - { id: all, upstream: up }\n")).await;
    let r = gw.get("/x").await;
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "upstream unreachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_another_backend() {
    let a = TestUpstream::start("a").await;
    let dead = TestUpstream::start("dead").await;
    dead.stop().await;
    // no health check: the dead backend stays in rotation; every request must still succeed
    let ups = format!("  up:\n    backends: [\"{}\", \"{}\"]\n", a.addr, dead.addr);
    let gw =
        TestGateway::start(|p| simple_config(p, &ups, "  - { id: all, upstream: up }\n")).await;
    for i in 0..10 {
        let r = gw
            .client
            .post(gw.url("/x"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
    }
    assert_eq!(a.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504() {
    let a = TestUpstream::start("a").await;
    a.set_delay(Duration::from_secs(3));
    let ups = format!(
        "  up:\n    backends: [\"{}\"]\n    timeouts: {{ read: 300ms }}\n",
        a.addr
    );
    let gw =
        TestGateway::start(|p| simple_config(p, &ups, "  - { id: all, upstream: up }\n")).await;
    let r = gw.get("/slow").await;
    assert_eq!(r.status(), 504);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "upstream timeout");
    assert_eq!(a.hits(), 1, "a timed-out GET must not be sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_garbage_is_502() {
    // a "backend" that answers every connection with junk
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for _ in 0..10 {
            let Ok((mut s, _)) = l.accept().await else {
                break;
            };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"THIS IS NOT HTTP\r\n\r\n").await;
        }
    });
    let ups = format!("  up:\n    backends: [\"{addr}\"]\n");
    let gw =
        TestGateway::start(|p| simple_config(p, &ups, "  - { id: all, upstream: up }\n")).await;
    let r = gw.get("/x").await;
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "bad upstream response");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connections_are_reused() {
    // count accepted connections at a raw TCP proxy in front of the backend
    let a = TestUpstream::start("a").await;
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acc = accepted.clone();
    let target = a.addr;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = front.accept().await else {
                break;
            };
            acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    let ups = format!("  up:\n    backends: [\"{front_addr}\"]\n");
    let gw = TestGateway::start(|p| {
        simple_config(p, &ups, "  - { id: all, upstream: up }\n")
            .replace("threads: 2", "threads: 1")
    })
    .await;
    for _ in 0..50 {
        assert_eq!(gw.get("/x").await.status(), 200);
    }
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        n <= 3,
        "{n} upstream connections for 50 sequential requests"
    );
    task.abort();
}
