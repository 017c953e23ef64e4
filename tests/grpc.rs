//! gRPC through the real binary: unary and server-streaming calls over HTTP/2 (h2c and TLS
//! with ALPN) to an h2c backend, trailers (`grpc-status`, `grpc-message`) passed intact, and
//! the gateway's own errors (no route, rate limited, backend down) answered as gRPC statuses.
//! The backend is a hyper HTTP/2 server speaking gRPC's framing; the client is hyper's HTTP/2
//! client, which reads trailers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::pki::Ca;
use common::{free_port, TestGateway};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// One gRPC message: flag 0, big-endian length, payload.
fn frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b.freeze()
}

/// The payloads of the gRPC messages in `body`.
fn messages(mut body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let n = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        out.push(body[5..5 + n].to_vec());
        body = &body[5 + n..];
    }
    out
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn trailers(status: &str, message: Option<&str>) -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", status.parse().unwrap());
    if let Some(m) = message {
        t.insert("grpc-message", m.parse().unwrap());
    }
    t
}

/// The demo service: `Unary` echoes, `Stream` sends three messages 50 ms apart, `Fail` ends
/// with NOT_FOUND and a message.
async fn serve(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let input = messages(&body).pop().unwrap_or_default();
    let frames: Vec<(Duration, Frame<Bytes>)> = match path.rsplit('/').next().unwrap_or("") {
        "Unary" => vec![
            (
                Duration::ZERO,
                Frame::data(frame(&[b"echo:".as_slice(), &input].concat())),
            ),
            (Duration::ZERO, Frame::trailers(trailers("0", None))),
        ],
        "Stream" => {
            let mut v: Vec<_> = (1..=3)
                .map(|i| {
                    (
                        Duration::from_millis(50),
                        Frame::data(frame(format!("part {i}").as_bytes())),
                    )
                })
                .collect();
            v.push((Duration::ZERO, Frame::trailers(trailers("0", None))));
            v
        }
        _ => vec![(
            Duration::ZERO,
            Frame::trailers(trailers("5", Some("not found: x"))),
        )],
    };
    let stream = futures_util::stream::unfold(frames.into_iter(), |mut it| async move {
        let (delay, f) = it.next()?;
        tokio::time::sleep(delay).await;
        Some((Ok::<_, Infallible>(f), it))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    Ok(resp)
}

/// An h2c gRPC backend on 127.0.0.1; its task ends with the returned handle.
async fn backend() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((s, _)) = l.accept().await {
            conns.spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(serve))
                    .await;
            });
        }
    });
    (addr, task)
}

/// What a call got back: HTTP status, headers, messages and trailers.
struct Call {
    status: u16,
    headers: http::HeaderMap,
    messages: Vec<Vec<u8>>,
    trailers: Option<http::HeaderMap>,
}

impl Call {
    /// `grpc-status` and `grpc-message` from the trailers, or from the headers for a
    /// Trailers-Only answer.
    fn grpc(&self) -> (String, String) {
        let from = self
            .trailers
            .as_ref()
            .filter(|t| t.contains_key("grpc-status"))
            .unwrap_or(&self.headers);
        let get = |k: &str| {
            from.get(k)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        (get("grpc-status"), get("grpc-message"))
    }
}

async fn call<S>(io: S, authority: &str, method: &str, payload: &[u8]) -> Call
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://{authority}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame(payload)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let (parts, body) = resp.into_parts();
    // a stream reset after a complete reply is still an error here: replies must end cleanly
    let collected = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .unwrap()
        .unwrap();
    let trailers = collected.trailers().cloned();
    Call {
        status: parts.status.as_u16(),
        headers: parts.headers,
        messages: messages(&collected.to_bytes()),
        trailers,
    }
}

struct Setup {
    gw: TestGateway,
    h2c: u16,
    https: u16,
    ca: Ca,
    _backend: tokio::task::JoinHandle<()>,
}

async fn setup() -> Setup {
    let (addr, task) = backend().await;
    let ca = Ca::new();
    ca.leaf("a", &["a.test"], false);
    let ports = Mutex::new((0u16, 0u16));
    let gw = TestGateway::start(|p| {
        let (h2c, https) = (free_port(), free_port());
        *ports.lock().unwrap() = (h2c, https);
        format!(
            "server:
  listen:
    - \"127.0.0.1:{proxy}\"
    - {{ addr: \"127.0.0.1:{h2c}\", h2c: true }}
    - addr: \"127.0.0.1:{https}\"
      tls: {{ certificates: [{{ cert: \"{dir}/a.pem\", key: \"{dir}/a.key\" }}] }}
  access_log: off
  grace_period: 1s
admin:
  listen: \"127.0.0.1:{admin}\"
upstreams:
  grpc: {{ backends: [\"{addr}\"], h2c: true }}
  down: {{ backends: [\"127.0.0.1:{dead}\"], h2c: true, retry: {{ attempts: 0 }} }}
routes:
  - {{ id: limited, match: {{ path_prefix: /demo.Limited/ }}, upstream: grpc, plugins: [ {{ rate_limit: {{ key: global, requests: 1, per: 1m }} }} ] }}
  - {{ id: down, match: {{ path_prefix: /demo.Down/ }}, upstream: down }}
  - {{ id: echo, match: {{ path_prefix: /demo.Echo/ }}, upstream: grpc }}
",
            proxy = p.proxy,
            admin = p.admin,
            dir = ca.dir.path().display(),
            dead = free_port(),
        )
    })
    .await;
    let (h2c, https) = *ports.lock().unwrap();
    Setup {
        gw,
        h2c,
        https,
        ca,
        _backend: task,
    }
}

impl Setup {
    async fn h2c_call(&self, method: &str, payload: &[u8]) -> Call {
        let io = tokio::net::TcpStream::connect(("127.0.0.1", self.h2c))
            .await
            .unwrap();
        call(io, &format!("127.0.0.1:{}", self.h2c), method, payload).await
    }

    async fn tls_call(&self, method: &str, payload: &[u8]) -> Call {
        let tls = self.ca.connect_tls(self.https, "a.test", &[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
        call(tls, &format!("a.test:{}", self.https), method, payload).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_keep_their_trailers() {
    let st = setup().await;
    let c = st.h2c_call("/demo.Echo/Unary", b"hi").await;
    assert_eq!(c.status, 200);
    assert_eq!(c.messages, vec![b"echo:hi".to_vec()]);
    assert_eq!(c.grpc(), ("0".into(), String::new()));
    assert!(c.trailers.is_some(), "grpc-status arrives as a trailer");

    let c = st.h2c_call("/demo.Echo/Stream", b"").await;
    assert_eq!(
        c.messages,
        vec![b"part 1".to_vec(), b"part 2".to_vec(), b"part 3".to_vec()]
    );
    assert_eq!(c.grpc().0, "0");
    assert!(c.trailers.is_some());

    let c = st.h2c_call("/demo.Echo/Fail", b"").await;
    assert_eq!(c.grpc(), ("5".into(), "not found: x".into()));

    // the same over TLS with ALPN h2
    let c = st.tls_call("/demo.Echo/Unary", b"tls").await;
    assert_eq!(c.messages, vec![b"echo:tls".to_vec()]);
    assert_eq!(c.grpc().0, "0");
    let c = st.tls_call("/demo.Echo/Stream", b"").await;
    assert_eq!(c.messages.len(), 3);
    assert_eq!(c.grpc().0, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_are_grpc_statuses() {
    let st = setup().await;
    let cases = [
        ("/other.Svc/Call", "12", "no route"),
        ("/demo.Down/Call", "14", "upstream unreachable"),
    ];
    for (method, code, message) in cases {
        let c = st.h2c_call(method, b"").await;
        assert_eq!(c.status, 200, "{method}");
        assert_eq!(c.headers["content-type"], "application/grpc");
        assert_eq!(c.grpc(), (code.into(), message.into()), "{method}");
        assert!(c.messages.is_empty());
        assert!(c.headers.contains_key("x-request-id"));
    }
    assert_eq!(st.h2c_call("/demo.Limited/Unary", b"").await.grpc().0, "0");
    let c = st.tls_call("/demo.Limited/Unary", b"").await;
    assert_eq!(c.grpc(), ("8".into(), "rate limit exceeded".into()));
    assert!(c.headers.contains_key("retry-after"));
    // a plain HTTP client still gets the JSON error
    let r = st.gw.get("/other").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
}
