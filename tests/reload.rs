//! Hot reload through the real binary: file changes under load, broken files, state that
//! survives, long streams across reloads, SIGHUP, POST /reload, GET /config.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{eventually, Load, Ports, TestGateway, TestUpstream};

fn base(p: &Ports) -> String {
    format!(
        "server:\n  listen: [\"127.0.0.1:{}\"]\n  threads: 2\n  grace_period: 1s\n  access_log: off\nadmin:\n  listen: \"127.0.0.1:{}\"\n  token: \"adm1n-token\"\n",
        p.proxy, p.admin
    )
}

/// Version `k` of a config: a stable route on `stable_backend`, one route per applied version
/// (`/r0` .. `/rk`) and a rate limit that changes with `k`. The health check's timeout is
/// generous: a backend's first probe decides its health, and one probe stalled past a short
/// timeout on a loaded machine would take the stable route down for a second or two.
fn version(p: &Ports, k: usize, stable_backend: &TestUpstream, other: &TestUpstream) -> String {
    let mut s = base(p);
    s.push_str(&format!(
        "upstreams:\n  stable:\n    backends: [\"{}\"]\n    health_check: {{ http: {{ path: /health }}, interval: 500ms, timeout: 2s }}\n  other:\n    backends: [\"{}\"]\nroutes:\n  - id: stable\n    match: {{ path_prefix: /stable }}\n    upstream: stable\n    plugins:\n      - rate_limit: {{ key: global, requests: {}, per: 1s }}\n",
        stable_backend.addr,
        other.addr,
        100_000 + k
    ));
    for i in 0..=k {
        s.push_str(&format!(
            "  - {{ id: r{i}, match: {{ path_exact: /r{i} }}, upstream: other }}\n"
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_changes_under_load_never_fail_a_request() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(|p| version(p, 0, &a, &b)).await;
    let ports = gw.ports.clone();

    // steady load on the stable route for the whole test
    let load = Load::start(&gw.client, gw.url("/stable"), 2);

    let (mut valid, mut invalid) = (0usize, 0usize);
    let mut applied = 0usize;
    for step in 1..=10usize {
        let started = Instant::now();
        if step % 5 == 0 {
            // broken: an unknown key
            gw.write_config(
                &version(&ports, applied + 1, &a, &b).replace("upstreams:", "upstreamz:"),
            );
            invalid += 1;
            let counted = eventually(Duration::from_secs(3), || async {
                gw.metric("gatehouse_config_reloads_total{result=\"error\",trigger=\"file\"}")
                    .await as usize
                    == invalid
            })
            .await;
            assert!(counted, "invalid write {step} not counted");
            assert_eq!(
                gw.get(&format!("/r{}", applied + 1)).await.status(),
                404,
                "an invalid file was applied"
            );
            continue;
        }
        applied += 1;
        // swap the stable upstream's backend every other version
        let (stable, other) = if applied.is_multiple_of(2) {
            (&a, &b)
        } else {
            (&b, &a)
        };
        let text = version(&ports, applied, stable, other);
        if step == 3 {
            // written in two halves, like a slow editor
            let cut = text.len() / 2;
            std::fs::write(gw.config_path(), &text[..cut]).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            std::fs::write(gw.config_path(), &text).unwrap();
        } else {
            gw.write_config(&text);
        }
        valid += 1;
        let path = format!("/r{applied}");
        let visible = eventually(Duration::from_secs(1), || async {
            gw.get(&path).await.status() == 200
        })
        .await;
        assert!(visible, "version {applied} not visible within 1 s");
        let spent = started.elapsed();
        if spent < Duration::from_millis(700) {
            tokio::time::sleep(Duration::from_millis(700) - spent).await;
        }
    }
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "requests failed during reloads");
    assert!(ok > 100, "the load loop barely ran");
    let ok_reloads = gw
        .metric("gatehouse_config_reloads_total{result=\"ok\",trigger=\"file\"}")
        .await as usize;
    let err_reloads = gw
        .metric("gatehouse_config_reloads_total{result=\"error\",trigger=\"file\"}")
        .await as usize;
    assert_eq!(
        (ok_reloads, err_reloads),
        (valid, invalid),
        "reload counters"
    );
    assert_eq!(
        gw.metric("gatehouse_config_version").await as usize,
        1 + valid
    );
    // both backends served the stable route at some point: the swaps were applied
    assert!(a.hits() > 0 && b.hits() > 0);
}

fn health_cfg(
    p: &Ports,
    alive: &TestUpstream,
    dead: &TestUpstream,
    extra_route: bool,
    new_upstream: bool,
) -> String {
    let mut s = base(p);
    s.push_str(&format!(
        "upstreams:\n  mixed:\n    backends: [\"{}\", \"{}\"]\n    health_check: {{ http: {{ path: /health }}, interval: 10s, timeout: 300ms }}\n",
        alive.addr, dead.addr
    ));
    if new_upstream {
        s.push_str(&format!("  fresh:\n    backends: [\"{}\", \"{}\"]\n    health_check: {{ tcp: {{}}, interval: 10s, timeout: 300ms }}\n", dead.addr, alive.addr));
    }
    s.push_str("routes:\n  - { id: mixed, match: { path_prefix: /mixed }, upstream: mixed }\n");
    if extra_route {
        s.push_str("  - { id: extra, match: { path_prefix: /extra }, upstream: mixed }\n");
    }
    if new_upstream {
        s.push_str("  - { id: fresh, match: { path_prefix: /fresh }, upstream: fresh }\n");
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_state_survives_and_new_groups_are_checked_first() {
    let alive = TestUpstream::start("alive").await;
    let dead = TestUpstream::start("dead").await;
    dead.stop().await;
    // interval 10 s: after the first round, nothing would re-check within this test
    let gw = TestGateway::start(|p| health_cfg(p, &alive, &dead, false, false)).await;
    let ports = gw.ports.clone();
    gw.write_config(&health_cfg(&ports, &alive, &dead, true, false));
    assert!(
        eventually(Duration::from_secs(2), || async {
            gw.get("/extra").await.status() == 200
        })
        .await
    );
    for _ in 0..20 {
        let r = gw.get("/mixed").await;
        assert_eq!(
            r.status(),
            200,
            "a request went to the dead backend after the reload"
        );
    }
    gw.write_config(&health_cfg(&ports, &alive, &dead, true, true));
    assert!(
        eventually(Duration::from_secs(3), || async {
            gw.get("/fresh").await.status() != 404
        })
        .await
    );
    for _ in 0..20 {
        assert_eq!(
            gw.get("/fresh").await.status(),
            200,
            "the new upstream routed to its dead backend"
        );
    }
    assert!(!gw.stderr().contains("Fail to proxy"), "{}", gw.stderr());
}

/// A backend that answers every request with an SSE stream of `n` events, one per 100 ms.
async fn sse_backend(n: usize) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        for _ in 0..5 {
            let Ok((mut s, _)) = l.accept().await else {
                break;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await;
                for i in 0..n {
                    let ev = format!("data: event {i}\n\n");
                    let _ = s
                        .write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes())
                        .await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_keeps_flowing_across_reloads() {
    let (addr, task) = sse_backend(30).await;
    let cfg = move |p: &Ports, k: usize| {
        let mut s = base(p);
        s.push_str(&format!("upstreams:\n  sse:\n    backends: [\"{addr}\"]\nroutes:\n  - {{ id: events, match: {{ path_prefix: /events }}, upstream: sse }}\n"));
        for i in 0..k {
            s.push_str(&format!(
                "  - {{ id: extra{i}, match: {{ path_prefix: /extra{i} }}, upstream: sse }}\n"
            ));
        }
        s
    };
    let gw = TestGateway::start(|p| cfg(p, 0)).await;
    let ports = gw.ports.clone();
    let mut resp = gw.client.get(gw.url("/events")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut received = String::new();
    let mut reloads = 0;
    let started = Instant::now();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        received.push_str(&String::from_utf8_lossy(&chunk));
        let events = received.matches("data: event").count();
        // reload three times while the stream is open
        if reloads < 3 && events >= 5 * (reloads + 1) {
            reloads += 1;
            let r = gw
                .client
                .post(gw.admin_url("/reload"))
                .bearer_auth("adm1n-token")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            gw.write_config(&cfg(&ports, reloads));
            let path = format!("/extra{}", reloads - 1);
            assert!(
                eventually(Duration::from_secs(2), || async {
                    gw.get(&path).await.status() != 404
                })
                .await
            );
        }
        assert!(started.elapsed() < Duration::from_secs(20));
    }
    assert_eq!(reloads, 3);
    for i in 0..30 {
        assert!(
            received.contains(&format!("data: event {i}\n")),
            "event {i} lost:\n{received}"
        );
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_admin_reload_config_view_and_restart_required() {
    let b = TestUpstream::start("b").await;
    let cfg = |p: &Ports, route: &str, listen_extra: bool| {
        let mut s = base(p).replace(
            "  access_log: off\n",
            "  access_log: off\n  watch_config: false\n",
        );
        if listen_extra {
            s = s.replace(
                &format!("listen: [\"127.0.0.1:{}\"]", p.proxy),
                &format!("listen: [\"127.0.0.1:{}\", \"127.0.0.1:1\"]", p.proxy),
            );
        }
        s.push_str(&format!(
            "upstreams:\n  up:\n    backends: [\"{}\"]\nroutes:\n  - {{ id: {route}, match: {{ path_prefix: /{route} }}, upstream: up }}\nplugins:\n  - jwt: {{ keys: [{{ algorithm: HS256, secret: \"super-secret-value-super-secret-value\" }}], required: false }}\n",
            b.addr
        ));
        s
    };
    let gw = TestGateway::start(|p| cfg(p, "one", false)).await;
    let ports = gw.ports.clone();
    // watch_config: false, so only SIGHUP or the admin endpoint apply a change
    gw.write_config(&cfg(&ports, "two", false));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gw.get("/two").await.status(), 404);
    gw.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(3), || async {
            gw.get("/two").await.status() == 200
        })
        .await
    );
    assert_eq!(
        gw.metric("gatehouse_config_reloads_total{result=\"ok\",trigger=\"signal\"}")
            .await,
        1.0
    );

    // POST /reload: needs the token; answers with the outcome
    let admin = |path: &str| gw.client.post(gw.admin_url(path));
    assert_eq!(admin("/reload").send().await.unwrap().status(), 401);
    let r: serde_json::Value = admin("/reload")
        .bearer_auth("adm1n-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["result"], "unchanged");
    gw.write_config(&cfg(&ports, "three", false).replace("upstreams:", "upstreamz:"));
    let r = admin("/reload")
        .bearer_auth("adm1n-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r: serde_json::Value = r.json().await.unwrap();
    assert_eq!(r["result"], "error");
    assert!(
        r["errors"][0].as_str().unwrap().contains("upstreamz"),
        "{r}"
    );
    assert_eq!(r["version"], 2);
    gw.write_config(&cfg(&ports, "three", true));
    let r: serde_json::Value = admin("/reload")
        .bearer_auth("adm1n-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["result"], "ok");
    assert_eq!(r["version"], 3);
    assert_eq!(r["restart_required"][0], "server.listen");
    assert_eq!(
        gw.get("/three").await.status(),
        200,
        "the rest of the change is applied"
    );
    assert_eq!(
        gw.metric("gatehouse_config_restart_required_total").await,
        1.0
    );

    // GET /config: version, hash, content without secrets
    let r = gw
        .client
        .get(gw.admin_url("/config"))
        .bearer_auth("adm1n-token")
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 3);
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(v["config"]["routes"][0]["id"], "three");
    assert!(
        !text.contains("super-secret-value") && !text.contains("adm1n-token"),
        "{text}"
    );
    // the ACME endpoints need the token too; without an `acme` section there is nothing to renew
    assert_eq!(
        gw.client
            .get(gw.admin_url("/acme"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(admin("/acme/renew").send().await.unwrap().status(), 401);
    let r = gw
        .client
        .get(gw.admin_url("/acme"))
        .bearer_auth("adm1n-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = admin("/acme/renew")
        .bearer_auth("adm1n-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("no `acme` section"));
    assert!(
        gw.metric("gatehouse_config_last_reload_success_timestamp_seconds")
            .await
            > 1.7e9
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_upgrade_under_load() {
    let b = TestUpstream::start("b").await;
    let slow = TestUpstream::start("slow").await;
    slow.set_delay(Duration::from_millis(2500));
    let mut gw = TestGateway::start(|p| {
        let sock = p.access_log.with_file_name("upgrade.sock");
        let mut s = base(p).replace("  access_log: off\n", &format!("  access_log: off\n  upgrade_sock: \"{}\"\n", sock.display()));
        s = s.replace("grace_period: 1s", "grace_period: 4s");
        s.push_str(&format!(
            "upstreams:\n  up:\n    backends: [\"{}\"]\n  slow:\n    backends: [\"{}\"]\nroutes:\n  - {{ id: fast, match: {{ path_prefix: /fast }}, upstream: up }}\n  - {{ id: slow, match: {{ path_prefix: /slow }}, upstream: slow }}\n",
            b.addr, slow.addr
        ));
        s
    })
    .await;
    let load = Load::start(&gw.client, gw.url("/fast"), 2);
    // an in-flight slow request on the old process
    let (c, url) = (gw.client.clone(), gw.url("/slow"));
    let in_flight =
        tokio::spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) });
    assert!(eventually(Duration::from_secs(5), || async { slow.hits() == 1 }).await);

    /// Stops the upgraded process however the test ends.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _new = KillOnDrop(gw.spawn_upgrade());
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.signal(libc::SIGQUIT);
    let old_exit = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(20)));
    assert!(old_exit.is_some(), "the old process did not exit");
    // the new process keeps serving alone
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed) = load.stop().await;
    assert_eq!(
        in_flight
            .await
            .unwrap()
            .expect("the in-flight request failed"),
        200
    );
    let served_before = ok;
    assert_eq!(failed, 0, "failed or refused requests during the upgrade");
    assert!(served_before > 50);
    assert_eq!(
        gw.get("/fast").await.status(),
        200,
        "the new process serves"
    );
}

/// A reload that is rejected changes nothing that serves: the running breaker keeps its
/// threshold and its count, a rate limit keeps its window, and no metric series of the
/// rejected file's new routes or upstreams appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_reload_changes_nothing_that_runs() {
    let bad = TestUpstream::start("bad").await;
    bad.set_status(503);
    let good = TestUpstream::start("good").await;
    let cfg = |p: &Ports, threshold: u32, limit: u32, extra: &str| {
        format!(
            "{}upstreams:\n  up:\n    backends: [\"{}\"]\n    circuit_breaker: {{ consecutive_failures: {threshold}, open_for: 60s }}\n    retry: {{ attempts: 0 }}\n  good:\n    backends: [\"{}\"]\n{extra}routes:\n  - id: limited\n    match: {{ path_prefix: /limited }}\n    upstream: good\n    plugins: [ {{ rate_limit: {{ key: global, requests: {limit}, per: 1h }} }} ]\n  - {{ id: all, upstream: up }}\n",
            base(p),
            bad.addr,
            good.addr
        )
    };
    let gw = TestGateway::start(|p| cfg(p, 5, 3, "")).await;
    for _ in 0..2 {
        assert_eq!(gw.get("/limited").await.status(), 200);
        assert_eq!(gw.get("/x").await.status(), 503);
    }
    assert_eq!(bad.hits(), 2);

    // threshold 1 and a limit of 100, plus a new upstream and route, and one broken route
    let extra = format!("  fresh:\n    backends: [\"{}\"]\n", good.addr);
    let rejected = cfg(&gw.ports, 1, 100, &extra).replace(
        "routes:\n",
        "routes:\n  - { id: ghost, match: { path_prefix: /ghost }, upstream: fresh }\n  - { id: broken, match: { path_prefix: /b }, upstream: nope }\n",
    );
    gw.write_config(&rejected);
    let r = gw
        .client
        .post(gw.admin_url("/reload"))
        .bearer_auth("adm1n-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("routes[1].upstream: unknown upstream `nope`"),
        "{body}"
    );

    // the old breaker (threshold 5, two failures so far) is still the one that counts
    for _ in 0..3 {
        let r = gw.get("/x").await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.text().await.unwrap(), "bad", "answered by the backend");
    }
    assert_eq!(
        bad.hits(),
        5,
        "the breaker stayed closed below the old threshold"
    );
    let r = gw.get("/x").await;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "no healthy backend", "open after 5 failures");
    assert_eq!(bad.hits(), 5);

    // the old rate limit (3 per hour, two used) is still the one that counts
    assert_eq!(gw.get("/limited").await.status(), 200);
    assert_eq!(gw.get("/limited").await.status(), 429);

    let m = gw.metrics().await;
    assert!(!m.contains("route=\"ghost\""), "{m}");
    assert!(!m.contains("upstream=\"fresh\""), "{m}");
    assert!(!m.contains("route=\"broken\""), "{m}");

    // an empty file (an editor's truncation caught mid-write) is refused, not applied as a
    // config of no routes
    gw.write_config("");
    let r = gw
        .client
        .post(gw.admin_url("/reload"))
        .bearer_auth("adm1n-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        (body["errors"][0].as_str().unwrap()).contains("the file holds no config"),
        "{body}"
    );
    assert_eq!(gw.get("/x").await.status(), 503, "the routes still answer");
    assert_eq!(
        gw.metric("gatehouse_config_reloads_total{result=\"error\",trigger=\"admin\"}")
            .await,
        2.0
    );
    assert_eq!(gw.metric("gatehouse_config_version").await, 1.0);
}

/// A chain used by two routes: changing it once changes both on reload, and `GET /config`
/// shows it inlined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_chain_reaches_every_route_using_it() {
    let b = TestUpstream::start("b").await;
    let cfg = |p: &Ports, tag: &str| {
        format!(
            "{}upstream_defaults:\n  timeouts: {{ connect: 1s }}\nupstreams:\n  up: {{ backends: [\"{}\"] }}\nchains:\n  tagged:\n    - headers: {{ response: {{ set: {{ X-Chain: {tag} }} }} }}\nroutes:\n  - {{ id: one, match: {{ path_prefix: /one }}, upstream: up, plugins: [{{ use: tagged }}] }}\n  - {{ id: two, match: {{ path_prefix: /two }}, upstream: up, plugins: [{{ headers: {{ response: {{ set: {{ X-Own: yes }} }} }} }}, {{ use: tagged }}] }}\n",
            base(p),
            b.addr
        )
    };
    let gw = TestGateway::start(|p| cfg(p, "v1")).await;
    let tag = |r: &reqwest::Response| {
        r.headers()
            .get("x-chain")
            .map(|v| v.to_str().unwrap().to_string())
    };
    for path in ["/one", "/two"] {
        assert_eq!(tag(&gw.get(path).await).as_deref(), Some("v1"), "{path}");
    }
    gw.write_config(&cfg(&gw.ports, "v2"));
    let r = gw
        .client
        .post(gw.admin_url("/reload"))
        .bearer_auth("adm1n-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for path in ["/one", "/two"] {
        let r = gw.get(path).await;
        assert_eq!(tag(&r).as_deref(), Some("v2"), "{path}");
        if path == "/two" {
            assert_eq!(r.headers()["x-own"], "yes", "the route's own entry stays");
        }
    }
    // the effective config: the chain inlined, the defaults merged
    let v: serde_json::Value = gw
        .client
        .get(gw.admin_url("/config"))
        .bearer_auth("adm1n-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let c = &v["config"];
    assert!(c.get("chains").is_none(), "{c}");
    assert_eq!(
        c["routes"][1]["plugins"][1]["headers"]["response"]["set"]["X-Chain"],
        "v2"
    );
    assert_eq!(c["upstreams"]["up"]["timeouts"]["connect"], "1s");
}
