//! A small HTTP backend for trying gatehouse: listens on every address given on the command
//! line and answers each request with JSON naming the listener (`demo-1`, `demo-2`, ...), the
//! method, path and the forwarding headers the gateway added. `GET /health` answers `ok`.
//!
//! ```sh
//! cargo run --example demo_backend -- 127.0.0.1:9001 127.0.0.1:9002
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;

fn header(req: &Request<Incoming>, name: &str) -> serde_json::Value {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map_or(serde_json::Value::Null, |s| s.into())
}

async fn handle(name: String, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/health" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))));
    }
    let body = serde_json::json!({
        "backend": name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "host": header(&req, "host"),
        "x_forwarded_for": header(&req, "x-forwarded-for"),
        "x_request_id": header(&req, "x-request-id"),
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addrs: Vec<SocketAddr> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    if addrs.is_empty() {
        return Err("usage: demo_backend ADDR [ADDR...]  (e.g. 127.0.0.1:9001)".into());
    }
    let mut tasks = Vec::new();
    for (i, addr) in addrs.into_iter().enumerate() {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let name = format!("demo-{}", i + 1);
        eprintln!("{name} listening on {addr}");
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let name = name.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(name.clone(), req));
                    let _ = Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}
