//! Features over HTTP/2 (TLS with ALPN h2) as over HTTP/1.1: jwt, cors preflights, the cache,
//! retries past a dead backend, and a server-sent-event stream that reaches the client event
//! by event. Clients: reqwest with rustls, HTTP/2 checked on every response.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use common::pki::Ca;
use common::{free_port, TestGateway, TestUpstream};
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};

const SECRET: &str = "h2-secret-h2-secret-h2-secret-h2-secret";

fn token(sub: &str) -> String {
    let claims = serde_json::json!({ "sub": sub, "exp": 4_000_000_000u64 });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A backend that answers `/events` with `text/event-stream`: one event at once, the second
/// only after the test sends on the returned channel (so a client that sees the first event
/// before sending proves the stream was not buffered).
async fn sse_backend() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(1);
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((s, _)) = l.accept().await {
            let rx = rx.clone();
            conns.spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let rx = rx.clone();
                    async move {
                        let stream = futures_util::stream::unfold(0u8, move |n| {
                            let rx = rx.clone();
                            async move {
                                match n {
                                    0 => Some((
                                        Ok::<_, Infallible>(Frame::data(Bytes::from(
                                            "data: one\n\n",
                                        ))),
                                        1,
                                    )),
                                    1 => {
                                        rx.lock().await.recv().await?;
                                        Some((Ok(Frame::data(Bytes::from("data: two\n\n"))), 2))
                                    }
                                    _ => None,
                                }
                            }
                        });
                        let mut resp = hyper::Response::new(StreamBody::new(stream));
                        resp.headers_mut()
                            .insert("content-type", "text/event-stream".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, tx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_cache_retries_and_streams_work_over_http2() {
    let ca = Ca::new();
    ca.leaf("a", &["a.test"], false);
    let up = TestUpstream::start("up").await;
    let dead = TestUpstream::start("dead").await;
    dead.stop().await;
    let (sse, next_event, _sse_task) = sse_backend().await;
    let https = Mutex::new(0u16);
    let _gw = TestGateway::start(|p| {
        let port = free_port();
        *https.lock().unwrap() = port;
        format!(
            "server:
  listen:
    - \"127.0.0.1:{proxy}\"
    - addr: \"127.0.0.1:{port}\"
      tls: {{ certificates: [{{ cert: \"{dir}/a.pem\", key: \"{dir}/a.key\" }}] }}
  access_log: off
admin:
  listen: \"127.0.0.1:{admin}\"
upstreams:
  up: {{ backends: [\"{up}\"] }}
  flaky:
    backends: [\"{dead}\", \"{up}\"]
    balance: round_robin
    retry: {{ attempts: 1, on: [connect_failure] }}
  sse: {{ backends: [\"{sse}\"] }}
routes:
  - id: api
    match: {{ path_prefix: /api }}
    upstream: up
    plugins:
      - cors: {{ allow_origins: [\"https://app.test\"] }}
      - jwt: {{ keys: [{{ algorithm: HS256, secret: \"{SECRET}\" }}] }}
  - id: cached
    match: {{ path_prefix: /cached }}
    upstream: up
    plugins: [ {{ cache: {{ default_ttl: 60s }} }} ]
  - {{ id: flaky, match: {{ path_prefix: /flaky }}, upstream: flaky }}
  - {{ id: events, match: {{ path_prefix: /events }}, upstream: sse }}
",
            proxy = p.proxy,
            admin = p.admin,
            dir = ca.dir.path().display(),
            up = up.addr,
            dead = dead.addr,
        )
    })
    .await;
    let https = *https.lock().unwrap();
    let c = ca.client(https, &["a.test"]);
    let url = |p: &str| format!("https://a.test:{https}{p}");
    let h2 = reqwest::Version::HTTP_2;

    // jwt
    let r = c.get(url("/api/x")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (401, h2));
    let r = c
        .get(url("/api/x"))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, h2));
    // a cors preflight answers at the gateway, before jwt
    let r = c
        .request(reqwest::Method::OPTIONS, url("/api/x"))
        .header("origin", "https://app.test")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), h2);
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.test"
    );

    // the cache: stored once, then hits
    let r = c.get(url("/cached/a")).send().await.unwrap();
    assert_eq!(r.headers()["cache-status"], "gatehouse; fwd=miss; stored");
    let hits = up.hits();
    for _ in 0..3 {
        let r = c.get(url("/cached/a")).send().await.unwrap();
        assert_eq!((r.version(), r.status().as_u16()), (h2, 200));
        assert_eq!(r.headers()["cache-status"], "gatehouse; hit");
    }
    assert_eq!(up.hits(), hits);

    // retries: every request lands on the live backend
    for _ in 0..4 {
        let r = c.get(url("/flaky/x")).send().await.unwrap();
        assert_eq!((r.version(), r.status().as_u16()), (h2, 200));
        assert_eq!(r.headers()["x-backend"], "up");
    }

    // a server-sent-event stream: the first event arrives before the second is even sent
    let mut r = c.get(url("/events")).send().await.unwrap();
    assert_eq!((r.version(), r.status().as_u16()), (h2, 200));
    let first = tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: one\n\n");
    next_event.send(()).await.unwrap();
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"data: two\n\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_http2_preface_is_cut_at_the_head_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = Ca::new();
    ca.leaf("a", &["a.test"], false);
    let up = TestUpstream::start("up").await;
    let https = Mutex::new(0u16);
    let _gw = TestGateway::start(|p| {
        let port = free_port();
        *https.lock().unwrap() = port;
        format!(
            "server:\n  listen:\n    - \"127.0.0.1:{}\"\n    - addr: \"127.0.0.1:{port}\"\n      tls: {{ certificates: [{{ cert: \"{dir}/a.pem\", key: \"{dir}/a.key\" }}] }}\n  access_log: off\n  limits: {{ header_read_timeout: 1s }}\nadmin:\n  listen: \"127.0.0.1:{}\"\nupstreams:\n  up: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ id: all, upstream: up }}\n",
            p.proxy,
            p.admin,
            up.addr,
            dir = ca.dir.path().display()
        )
    })
    .await;
    let https = *https.lock().unwrap();
    // five bytes of the preface, then nothing: closed at the deadline (well before 10 s)
    let mut tls = ca.connect_tls(https, "a.test", &[b"h2"]).await;
    tls.write_all(b"PRI *").await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = [0u8; 256];
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
        .await
        .expect("the stalled connection must be closed by the gateway");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // something that is not the preface is closed at once
    let mut tls = ca.connect_tls(https, "a.test", &[b"h2"]).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}
