//! The admin listener (/health, /ready, /metrics) and graceful shutdown on SIGTERM/SIGINT.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{eventually, simple_config, TestGateway, TestUpstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_metrics() {
    let a = TestUpstream::start("a").await;
    // a backend that accepts and never answers: the first health round takes `timeout`
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..20 {
            match hang.accept().await {
                Ok((s, _)) => held.push(s),
                Err(_) => break,
            }
        }
    });
    let ups = format!(
        "  up:\n    backends: [\"{}\", \"{hang_addr}\"]\n    health_check:\n      http: {{ path: /health }}\n      interval: 1s\n      timeout: 3s\n",
        a.addr
    );
    let gw = TestGateway::start_with(
        |p| simple_config(p, &ups, "  - { id: all, upstream: up }\n"),
        false,
    )
    .await;
    let c = &gw.client;
    let r = c.get(gw.admin_url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().trim(), "ok");
    // the first round is still waiting on the hanging backend
    let r = c.get(gw.admin_url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let ready = eventually(Duration::from_secs(10), || async {
        c.get(gw.admin_url("/ready")).send().await.unwrap().status() == 200
    })
    .await;
    assert!(ready);

    for _ in 0..5 {
        assert_eq!(gw.get("/x").await.status(), 200);
    }
    assert_eq!(gw.get("/x").await.headers()["x-backend"], "a");
    // requests are counted in the logging phase, just after the response went out
    let counted = eventually(Duration::from_secs(5), || async {
        gw.metrics()
            .await
            .contains("gatehouse_http_request_duration_seconds_count{route=\"all\"} 6")
    })
    .await;
    assert!(counted);
    let r = c.get(gw.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let m = r.text().await.unwrap();
    for needle in [
        "gatehouse_http_requests_total{method=\"GET\",route=\"all\",status_class=\"2xx\"} 6",
        "gatehouse_http_request_duration_seconds_bucket{route=\"all\",le=\"0.0005\"}",
        "gatehouse_http_request_duration_seconds_count{route=\"all\"} 6",
        &format!(
            "gatehouse_upstream_backend_healthy{{backend=\"{}\",upstream=\"up\"}} 1",
            a.addr
        ),
        &format!("gatehouse_upstream_backend_healthy{{backend=\"{hang_addr}\",upstream=\"up\"}} 0"),
        "gatehouse_config_version 1",
        "process_resident_memory_bytes",
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }

    assert_eq!(
        c.get(gw.admin_url("/nope")).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        c.post(gw.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    // the proxy listener does not serve admin paths
    assert_eq!(
        gw.get("/metrics")
            .await
            .headers()
            .get("x-backend")
            .map(|v| v.to_str().unwrap()),
        Some("a")
    );
    keep.abort();
}

async fn in_flight_request_survives(sig: i32) {
    let a = TestUpstream::start("a").await;
    a.set_delay(Duration::from_millis(1500));
    let ups = format!("  up:\n    backends: [\"{}\"]\n", a.addr);
    let mut gw = TestGateway::start(|p| {
        simple_config(p, &ups, "  - { id: all, upstream: up }\n")
            .replace("grace_period: 1s", "grace_period: 3s")
    })
    .await;
    let url = gw.url("/slow");
    let client = gw.client.clone();
    let req =
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    let arrived = eventually(Duration::from_secs(5), || async { a.hits() == 1 }).await;
    assert!(arrived);
    gw.signal(sig);
    let status = req
        .await
        .unwrap()
        .expect("in-flight request failed during shutdown");
    assert_eq!(status, 200);
    let exit = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(15)));
    assert!(
        exit.is_some(),
        "gateway did not exit after the grace period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    in_flight_request_survives(libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_in_flight_requests() {
    in_flight_request_survives(libc::SIGINT).await;
}
