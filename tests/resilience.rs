//! Circuit breakers, retries, timeouts and streaming through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, simple_config, Load, TestGateway, TestUpstream};

fn backends(list: &[&TestUpstream]) -> String {
    list.iter()
        .map(|u| format!("\"{}\"", u.addr))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_then_half_open_trial_then_fast_503() {
    let bad = TestUpstream::start("bad").await;
    bad.set_status(503);
    let ups = format!(
        "  up:\n    backends: [{}]\n    circuit_breaker: {{ consecutive_failures: 5, open_for: 1s, half_open_requests: 1 }}\n    retry: {{ attempts: 0 }}\n",
        backends(&[&bad])
    );
    let gw =
        TestGateway::start(|p| simple_config(p, &ups, "  - { id: all, upstream: up }\n")).await;
    for _ in 0..5 {
        assert_eq!(gw.get("/x").await.status(), 503);
    }
    assert_eq!(bad.hits(), 5);
    // open: fast 503 from the gateway, no upstream attempt
    for _ in 0..10 {
        let started = Instant::now();
        let r = gw.get("/x").await;
        assert_eq!(r.status(), 503);
        assert!(started.elapsed() < Duration::from_millis(200));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "no healthy backend");
    }
    assert_eq!(bad.hits(), 5, "an open breaker must keep requests away");
    let m = gw.metrics().await;
    assert!(
        m.contains(&format!(
            "gatehouse_circuit_breaker_state{{backend=\"{}\",upstream=\"up\"}} 2",
            bad.addr
        )),
        "{m}"
    );
    // after open_for: exactly one trial, which fails and opens it again
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..5 {
        gw.get("/x").await;
    }
    assert_eq!(bad.hits(), 6, "exactly the half-open trial");
    // after another open_for the backend recovers: the trial succeeds and it closes
    bad.set_status(200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            gw.get("/x").await.status() == 200
        })
        .await
    );
    for _ in 0..5 {
        assert_eq!(gw.get("/x").await.status(), 200);
    }
    let m = gw.metrics().await;
    assert!(
        m.contains(&format!(
            "gatehouse_circuit_breaker_state{{backend=\"{}\",upstream=\"up\"}} 0",
            bad.addr
        )),
        "{m}"
    );
    assert!(
        m.contains("gatehouse_circuit_breaker_transitions_total{"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_retries_go_to_another_backend() {
    let bad = TestUpstream::start("bad").await;
    let good = TestUpstream::start("good").await;
    bad.set_status(503);
    let ups = format!(
        "  up:\n    backends: [{}]\n    retry: {{ attempts: 2, on: [connect_failure, \"503\"], backoff: 5ms, budget: 1.0 }}\n",
        backends(&[&bad, &good])
    );
    let gw =
        TestGateway::start(|p| simple_config(p, &ups, "  - { id: all, upstream: up }\n")).await;
    for i in 0..20 {
        let r = gw.get("/x").await;
        assert_eq!(r.status(), 200, "GET {i}");
        assert_eq!(r.headers()["x-backend"], "good");
    }
    assert!(bad.hits() > 0);
    // a POST is never retried once it reached a backend
    let before = (bad.hits(), good.hits());
    let mut got_503 = 0;
    for _ in 0..10 {
        if gw
            .client
            .post(gw.url("/x"))
            .body("data")
            .send()
            .await
            .unwrap()
            .status()
            == 503
        {
            got_503 += 1;
        }
    }
    let (bad_posts, good_posts) = (bad.hits() - before.0, good.hits() - before.1);
    assert_eq!(
        bad_posts + good_posts,
        10,
        "each POST went to exactly one backend"
    );
    assert_eq!(got_503, bad_posts);
    let counted = eventually(Duration::from_secs(3), || async {
        gw.metrics()
            .await
            .contains("gatehouse_upstream_retries_total{reason=\"503\",upstream=\"up\"}")
    })
    .await;
    assert!(counted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_backend_under_load_gets_zero_failed_gets() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    let ups = format!(
        "  up:\n    backends: [{}]\n    retry: {{ attempts: 2, on: [connect_failure, reset, timeout] }}\n    circuit_breaker: {{ consecutive_failures: 3, open_for: 5s }}\n    timeouts: {{ connect: 300ms, read: 2s }}\n",
        backends(&[&a, &b, &c])
    );
    let gw =
        TestGateway::start(|p| simple_config(p, &ups, "  - { id: all, upstream: up }\n")).await;
    let load = Load::start(&gw.client, gw.url("/x"), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "GETs failed while a backend died");
    assert!(ok > 100);

    // a POST that reached a backend which then dies mid-request is not retried
    let slow = TestUpstream::start("slow").await;
    slow.set_delay(Duration::from_millis(800));
    let other = TestUpstream::start("other").await;
    let ups = format!(
        "  up:\n    backends: [{}]\n    balance: round_robin\n    retry: {{ attempts: 2, on: [connect_failure, reset, timeout] }}\n",
        backends(&[&slow, &other])
    );
    let gw2 =
        TestGateway::start(|p| simple_config(p, &ups, "  - { id: all, upstream: up }\n")).await;
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let (cl, url) = (gw2.client.clone(), gw2.url("/post"));
        let h = tokio::spawn(async move {
            cl.post(url)
                .body("once")
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
        if eventually(Duration::from_millis(400), || async { slow.hits() > 0 }).await {
            slow.stop().await;
            statuses.push(h.await.unwrap().map_or(0, |s| s));
            break;
        }
        statuses.push(h.await.unwrap().map_or(0, |s| s));
    }
    assert_eq!(
        other.seen().iter().filter(|s| s.method == "POST").count(),
        statuses.iter().filter(|s| **s == 200).count(),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&502),
        "the POST to the dying backend must fail, not be replayed: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_backend_ends_at_read_timeout() {
    // accepts connections, never answers
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..10 {
            match l.accept().await {
                Ok((s, _)) => held.push(s),
                Err(_) => break,
            }
        }
    });
    let ups = format!("  up:\n    backends: [\"{addr}\"]\n    timeouts: {{ read: 500ms }}\n");
    let routes = "  - { id: all, upstream: up, timeout: 2s }\n";
    let gw = TestGateway::start(|p| simple_config(p, &ups, routes)).await;
    let started = Instant::now();
    let r = gw.get("/x").await;
    assert_eq!(r.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_are_not_buffered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n").await;
        for i in 0..8 {
            let ev = format!("data: token {i}\n\n");
            let _ = s
                .write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes())
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let _ = s.write_all(b"0\r\n\r\n").await;
    });
    // read timeout shorter than the whole stream: data keeps flowing, so it is never cut
    let ups = format!("  up:\n    backends: [\"{addr}\"]\n    timeouts: {{ read: 1s }}\n");
    let gw =
        TestGateway::start(|p| simple_config(p, &ups, "  - { id: all, upstream: up }\n")).await;
    let mut r = gw.get("/chat").await;
    let started = Instant::now();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        let s = String::from_utf8_lossy(&chunk).to_string();
        for _ in 0..s.matches("data: token").count() {
            arrivals.push(started.elapsed());
        }
        text.push_str(&s);
    }
    assert_eq!(arrivals.len(), 8, "{text}");
    // each event arrives about when it was sent (300 ms apart), not all at the end
    for (i, t) in arrivals.iter().enumerate().skip(1) {
        let expected = Duration::from_millis(300 * i as u64);
        assert!(
            *t + Duration::from_millis(250) >= expected
                && *t <= expected + Duration::from_millis(250),
            "event {i} at {t:?}"
        );
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_and_jwt_on_upgrade() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // a WebSocket echo backend
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let upgrades = Arc::new(AtomicUsize::new(0));
    let up2 = upgrades.clone();
    let task = tokio::spawn(async move {
        for _ in 0..10 {
            let Ok((s, _)) = l.accept().await else { break };
            let up = up2.clone();
            tokio::spawn(async move {
                if let Ok(mut ws) = tokio_tungstenite::accept_async(s).await {
                    up.fetch_add(1, Ordering::SeqCst);
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_text() || m.is_binary() {
                            let _ = ws.send(m).await;
                        }
                    }
                }
            });
        }
    });
    let secret = "websocket-test-secret-websocket-test";
    let routes = format!(
        "  - id: ws\n    upstream: up\n    plugins:\n      - jwt: {{ keys: [{{ algorithm: HS256, secret: \"{secret}\" }}], token_from: [\"header:Authorization\", \"query:token\"] }}\n"
    );
    let gw = TestGateway::start(|p| {
        simple_config(p, &format!("  up:\n    backends: [\"{addr}\"]\n"), &routes)
    })
    .await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "ws", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let (mut ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/chat?token={token}", gw.port))
            .await
            .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    ws.close(None).await.unwrap();
    // without a valid token the upgrade is refused at the gateway
    let err = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/chat", gw.port))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status(), 401),
        other => panic!("expected a 401, got {other:?}"),
    }
    let err =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/chat?token=forged", gw.port))
            .await
            .unwrap_err();
    assert!(
        matches!(err, tokio_tungstenite::tungstenite::Error::Http(ref r) if r.status() == 401),
        "{err:?}"
    );
    assert_eq!(
        upgrades.load(Ordering::SeqCst),
        1,
        "refused upgrades never reached the backend"
    );
    task.abort();
}
