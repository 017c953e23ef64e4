//! The status page on the admin listener, in a real headless Chromium driven over the
//! DevTools protocol: it loads, follows traffic, a backend going down and a failed reload
//! without being reloaded itself, and asks for the admin token when one is set. A screenshot
//! is kept as an artifact (`target/tmp/status-page.png`).
//!
//! Needs Debian's `chromium` (`.ci/run` installs it). Set GATEHOUSE_SKIP_BROWSER=1 to skip on
//! a machine without it; without that variable a missing browser fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{browser_or_skip, free_port, simple_config, TestGateway, TestUpstream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One page in a headless Chromium, driven over the DevTools protocol.
struct Page {
    ws: Ws,
    next: u64,
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Page {
    async fn open(browser: &str, url: &str) -> Page {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1400,1300",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // Chromium writes the port it chose to DevToolsActivePort in its profile
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let client = reqwest::Client::new();
        let ws_url = loop {
            let list: Option<Vec<Value>> = match client
                .get(format!("http://127.0.0.1:{port}/json/list"))
                .send()
                .await
            {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            let found = list.unwrap_or_default().into_iter().find_map(|t| {
                (t["type"] == "page")
                    .then(|| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
                    .flatten()
            });
            if let Some(u) = found {
                break u;
            }
            assert!(Instant::now() < deadline, "chromium shows no page target");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
        Page {
            ws,
            next: 0,
            child,
            _profile: profile,
        }
    }

    /// Sends one DevTools command and returns its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("the DevTools connection closed")
                .unwrap();
            if let Message::Text(t) = frame {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    /// Evaluates a JavaScript expression in the page; its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Waits (at most `max`) until `expr` is true in the page.
    async fn wait_for(&mut self, expr: &str, max: Duration) -> bool {
        let deadline = Instant::now() + max;
        while Instant::now() < deadline {
            if self.eval(expr).await == json!(true) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Saves a PNG of the page.
    async fn screenshot(&mut self, path: &std::path::Path) {
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

fn config(
    p: &common::Ports,
    a: &TestUpstream,
    b1: &TestUpstream,
    b2: &TestUpstream,
    dead: u16,
    token: &str,
) -> String {
    let upstreams = format!(
        "  a:\n    backends: [\"{}\"]\n  b:\n    backends: [\"{}\", \"{}\"]\n    health_check:\n      http: {{ path: /health }}\n      interval: 300ms\n      timeout: 300ms\n      unhealthy_after: 1\n  down:\n    backends: [\"127.0.0.1:{dead}\"]\n    retry: {{ attempts: 0 }}\n",
        a.addr, b1.addr, b2.addr
    );
    let routes = "  - id: ra\n    match: { path_prefix: /a }\n    upstream: a\n    plugins:\n      - headers: { response: { set: { X-Route: a } } }\n  - id: rb\n    match: { path_prefix: /b }\n    upstream: b\n  - id: rdown\n    match: { path_prefix: /down }\n    upstream: down\n  - id: rlimited\n    match: { path_prefix: /limited }\n    upstream: a\n    plugins:\n      - rate_limit: { key: client_ip, requests: 1, per: 1h }\n";
    let token = if token.is_empty() {
        String::new()
    } else {
        format!("  token: \"{token}\"\n")
    };
    simple_config(p, &upstreams, routes).replace("admin:\n", &format!("admin:\n{token}"))
}

/// The backends and the gateway of a test: upstream `a`, upstream `b` (two backends,
/// health-checked), `down` (nothing listens there); `token`: the admin token (none if empty).
struct Setup {
    b1: TestUpstream,
    b2: TestUpstream,
    dead: u16,
    gw: TestGateway,
    a: TestUpstream,
}

async fn setup(token: &str) -> Setup {
    let a = TestUpstream::start("a").await;
    let b1 = TestUpstream::start("b1").await;
    let b2 = TestUpstream::start("b2").await;
    let dead = free_port();
    let gw = TestGateway::start(|p| config(p, &a, &b1, &b2, dead, token)).await;
    Setup {
        b1,
        b2,
        dead,
        gw,
        a,
    }
}

fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_follows_traffic_health_and_reloads_live() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let Setup {
        a,
        b1,
        b2,
        dead,
        gw,
    } = setup("").await;
    let mut page = Page::open(&browser, &gw.admin_url("/")).await;
    assert!(
        page.wait_for(
            "document.body.dataset.loaded === '1'",
            Duration::from_secs(20)
        )
        .await,
        "the page did not load its data"
    );
    // the two upstream groups and their backends, healthy
    let b2_row = format!(
        "document.querySelector('tr[data-backend=\"b/{}\"]')",
        b2.addr
    );
    assert!(
        page.wait_for(
            &format!("{b2_row} !== null && {b2_row}.dataset.health === 'healthy'"),
            Duration::from_secs(10)
        )
        .await
    );
    assert_eq!(
        page.eval("document.querySelectorAll('#backend-rows tr').length")
            .await,
        json!(4)
    );
    // a group without health checks is not called healthy
    assert!(page
        .eval(&format!(
            "document.querySelector('tr[data-backend=\"down/127.0.0.1:{dead}\"]').textContent"
        ))
        .await
        .as_str()
        .unwrap()
        .contains("no health check"));
    // the page is never reloaded from here on: this mark would go with it
    page.eval("window.__mark = 42").await;

    // traffic shows up in the route's counter
    let requests = "document.querySelector('tr[data-route=\"ra\"] td:nth-child(5)').textContent";
    assert_eq!(page.eval(requests).await, json!("0"));
    for _ in 0..25 {
        assert_eq!(gw.get("/a/x").await.status(), 200);
    }
    assert!(
        page.wait_for(&format!("{requests} === '25'"), Duration::from_secs(10))
            .await,
        "the route counter shows {}",
        page.eval(requests).await
    );
    // the backend counted every attempt, and none is left in flight
    let u: Value = gw
        .client
        .get(gw.admin_url("/api/upstreams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let a_backend = &u["upstreams"][0]["backends"][0];
    assert_eq!(u["upstreams"][0]["name"], "a");
    assert_eq!(a_backend["attempts_total"], 25, "{u}");
    assert_eq!(a_backend["in_flight"], 0, "{u}");
    assert_eq!(
        page.eval("document.querySelector('tr[data-route=\"ra\"] .plugins').textContent")
            .await,
        json!("headers")
    );

    // a backend goes down: its row says so (in text, not only in colour)
    b2.stop().await;
    assert!(
        page.wait_for(
            &format!("{b2_row}.dataset.health === 'unhealthy' && {b2_row}.textContent.includes('unhealthy since')"),
            Duration::from_secs(10)
        )
        .await,
        "the backend row still says {}",
        page.eval(&format!("{b2_row}.textContent")).await
    );

    // an upstream error lands in the recent errors
    assert_eq!(gw.get("/down").await.status(), 502);
    assert!(
        page.wait_for(
            "document.getElementById('error-rows').textContent.includes('502')",
            Duration::from_secs(10)
        )
        .await
    );

    // the gateway's 429s: the client in the most limited list
    assert_eq!(gw.get("/limited").await.status(), 200);
    for _ in 0..3 {
        assert_eq!(gw.get("/limited").await.status(), 429);
    }
    assert!(
        page.wait_for(
            "document.getElementById('limited-rows').textContent.includes('rlimited127.0.0.13')",
            Duration::from_secs(10)
        )
        .await,
        "{}",
        page.eval("document.getElementById('limited-rows').textContent")
            .await
    );

    // a failed reload appears on the overview, with the error's YAML path
    gw.write_config(
        &config(&gw.ports, &a, &b1, &b2, dead, "").replace("interval: 300ms", "interval: soon"),
    );
    assert_eq!(gw.reload().await.status(), 422);
    assert!(
        page.wait_for(
            "!document.getElementById('reload-error').hidden && document.getElementById('reload-error').textContent.includes('upstreams.b.health_check.interval')",
            Duration::from_secs(10)
        )
        .await,
        "{}",
        page.eval("document.getElementById('overview').textContent").await
    );
    assert_eq!(
        page.eval("window.__mark").await,
        json!(42),
        "the page was reloaded"
    );
    let shot = artifact("status-page.png");
    page.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    eprintln!("status page screenshot: {}", shot.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_page_asks_for_it_and_the_api_answers_401() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let Setup {
        a: _a,
        b1,
        b2: _b2,
        gw,
        ..
    } = setup("s3cret-token").await;
    for path in ["/api/status", "/api/routes", "/api/upstreams"] {
        let r = gw.client.get(gw.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = gw
            .client
            .get(gw.admin_url(path))
            .bearer_auth("s3cret-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let v: Value = r.json().await.unwrap();
        assert!(
            !v.to_string().contains("s3cret-token"),
            "{path} shows the token"
        );
    }
    // the page itself holds no data: served without the token
    let r = gw.client.get(gw.admin_url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));

    let mut page = Page::open(&browser, &gw.admin_url("/")).await;
    assert!(
        page.wait_for(
            "document.body.dataset.login === '1' && !document.getElementById('login').hidden && document.getElementById('main').hidden",
            Duration::from_secs(20)
        )
        .await,
        "no login prompt"
    );
    // a wrong token is refused, the right one shows the status
    page.eval("document.getElementById('token').value = 'nope'; document.getElementById('login-form').requestSubmit(); true")
        .await;
    assert!(
        page.wait_for(
            "document.getElementById('login-error').textContent.includes('not accepted')",
            Duration::from_secs(10)
        )
        .await
    );
    page.eval("document.getElementById('token').value = 's3cret-token'; document.getElementById('login-form').requestSubmit(); true")
        .await;
    assert!(
        page.wait_for(
            "document.body.dataset.loaded === '1' && document.getElementById('login').hidden",
            Duration::from_secs(10)
        )
        .await
    );
    assert!(page
        .eval("document.getElementById('backend-rows').textContent")
        .await
        .as_str()
        .unwrap()
        .contains(&b1.addr.to_string()));
}
