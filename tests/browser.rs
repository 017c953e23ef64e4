//! A real browser (headless Chromium) calls the gateway from another origin: `fetch` with
//! credentials and custom headers (so a preflight happens) must be readable from an allowed
//! origin and blocked by the browser for a disallowed one.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it). Set GATEHOUSE_SKIP_BROWSER=1 to skip on a
//! machine without it; without that variable a missing browser fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{browser_or_skip, simple_config, TestGateway, TestUpstream};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

const SECRET: &str = "browser-test-secret-browser-test-secret";

/// Serves one HTML page on 127.0.0.1 (reachable as 127.0.0.1 and as localhost: two origins).
/// The page is set after the server started, once the gateway's port is known.
async fn page_server(html: Arc<Mutex<String>>) -> (u16, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { break };
            let html = Arc::clone(&html);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = html.lock().unwrap().clone();
                    async move {
                        let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                        r.headers_mut()
                            .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (port, task)
}

/// Loads `url` in headless Chromium (with `extra` switches) and returns the DOM after scripts
/// ran.
fn dump_dom(browser: &str, url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_reads_cross_origin_response_only_from_allowed_origin() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let backend = TestUpstream::start("api-backend").await;
    let html = Arc::new(Mutex::new(String::new()));
    let (page_port, page_task) = page_server(Arc::clone(&html)).await;
    let routes = format!(
        r#"
  - id: api
    match: {{ path_prefix: /api }}
    upstream: up
    plugins:
      - cors:
          allow_origins: ["http://127.0.0.1:{page_port}"]
          allow_methods: [GET, POST]
          allow_headers: [Authorization, X-Custom]
          allow_credentials: true
      - jwt:
          keys: [{{ algorithm: HS256, secret: "{SECRET}" }}]
"#
    );
    let gw = TestGateway::start(|p| {
        simple_config(
            p,
            &format!("  up:\n    backends: [\"{}\"]\n", backend.addr),
            &routes,
        )
    })
    .await;
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "browser", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    *html.lock().unwrap() = format!(
        r#"<!doctype html><html><body><div id="out">pending</div><script>
fetch("http://127.0.0.1:{gw_port}/api/data", {{
  method: "GET", credentials: "include", mode: "cors",
  headers: {{ "Authorization": "Bearer {token}", "X-Custom": "1" }}
}}).then(r => r.text().then(t => {{ document.getElementById("out").textContent = "READ " + r.status + " " + t; }}))
  .catch(e => {{ document.getElementById("out").textContent = "BLOCKED " + e; }});
</script></body></html>"#,
        gw_port = gw.port
    );

    let b = browser.clone();
    let url = format!("http://127.0.0.1:{page_port}/");
    let dom = tokio::task::spawn_blocking(move || dump_dom(&b, &url, &[]))
        .await
        .unwrap();
    assert!(
        dom.contains("READ 200 api-backend"),
        "the allowed origin could not read the response:\n{dom}\n{}",
        gw.stderr()
    );
    assert_eq!(backend.hits(), 1);
    assert_eq!(backend.last().header("x-custom"), Some("1"));

    // same page, other origin (localhost vs 127.0.0.1): the browser must block it
    let b = browser.clone();
    let url = format!("http://localhost:{page_port}/");
    let dom = tokio::task::spawn_blocking(move || dump_dom(&b, &url, &[]))
        .await
        .unwrap();
    assert!(
        dom.contains("BLOCKED"),
        "a disallowed origin could read the response:\n{dom}"
    );
    // its preflight got no CORS headers, so the real request was never sent
    assert_eq!(backend.hits(), 1);
    page_task.abort();
}

/// The page and the API both behind an HTTPS listener: the browser loads the page over HTTP/2
/// and makes a credentialed cross-origin request (with its preflight) to another host name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_uses_http2_and_cors_over_https() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let ca = common::pki::Ca::new();
    ca.leaf("site", &["app.test", "api.test"], false);
    let backend = TestUpstream::start("api-backend").await;
    let html = Arc::new(Mutex::new(String::new()));
    let (page_port, page_task) = page_server(Arc::clone(&html)).await;
    let https = Mutex::new(0u16);
    let log = Mutex::new(std::path::PathBuf::new());
    let gw = TestGateway::start(|p| {
        let port = common::free_port();
        *https.lock().unwrap() = port;
        *log.lock().unwrap() = p.access_log.clone();
        format!(
            r#"server:
  listen:
    - "127.0.0.1:{proxy}"
    - addr: "127.0.0.1:{port}"
      tls: {{ certificates: [{{ cert: "{dir}/site.pem", key: "{dir}/site.key" }}] }}
  access_log: "{log}"
admin:
  listen: "127.0.0.1:{admin}"
upstreams:
  page: {{ backends: ["127.0.0.1:{page_port}"] }}
  up: {{ backends: ["{up}"] }}
routes:
  - id: api
    match: {{ host: api.test, path_prefix: /api }}
    upstream: up
    plugins:
      - cors:
          allow_origins: ["https://app.test:{port}"]
          allow_headers: [X-Custom]
          allow_credentials: true
  - {{ id: page, match: {{ host: app.test }}, upstream: page }}
"#,
            proxy = p.proxy,
            admin = p.admin,
            dir = ca.dir.path().display(),
            log = p.access_log.display(),
            up = backend.addr,
        )
    })
    .await;
    let https = *https.lock().unwrap();
    *html.lock().unwrap() = format!(
        r#"<!doctype html><html><body><div id="out">pending</div><script>
fetch("https://api.test:{https}/api/data", {{
  method: "GET", credentials: "include", mode: "cors", headers: {{ "X-Custom": "1" }}
}}).then(r => r.text().then(t => {{ document.getElementById("out").textContent = "READ " + r.status + " " + t; }}))
  .catch(e => {{ document.getElementById("out").textContent = "BLOCKED " + e; }});
</script></body></html>"#
    );
    let extra = vec![
        "--host-resolver-rules=MAP *.test 127.0.0.1".to_string(),
        "--ignore-certificate-errors".to_string(),
    ];
    let url = format!("https://app.test:{https}/");
    let dom = tokio::task::spawn_blocking(move || dump_dom(&browser, &url, &extra))
        .await
        .unwrap();
    assert!(
        dom.contains("READ 200 api-backend"),
        "the page could not read the API over HTTPS:\n{dom}\n{}",
        gw.stderr()
    );
    assert_eq!(backend.last().header("x-custom"), Some("1"));
    assert_eq!(backend.last().header("x-forwarded-proto"), Some("https"));
    let path = log.lock().unwrap().clone();
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let logged = common::eventually(Duration::from_secs(3), || async {
        lines()
            .iter()
            .any(|l| l["route"] == "api" && l["method"] == "GET")
    })
    .await;
    assert!(logged, "no access log line for the API request");
    for l in lines() {
        if l["route"] == "page" || l["route"] == "api" {
            assert_eq!(l["protocol"], "HTTP/2.0", "{l}");
        }
    }
    assert!(
        lines()
            .iter()
            .any(|l| l["route"] == "api" && l["method"] == "OPTIONS"),
        "the browser's preflight went through the gateway"
    );
    page_task.abort();
}
