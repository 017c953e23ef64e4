//! The admin listener (its own socket, loopback by default): `GET /health` (200 while the
//! process serves), `GET /ready` (200 once the config is loaded and the first health round is
//! done, 503 before), `GET /metrics` (Prometheus text).

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::metrics::Metrics;
use crate::state::SharedState;

/// The admin HTTP app.
pub struct AdminApp {
    pub state: Arc<SharedState>,
    pub metrics: Arc<Metrics>,
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = r.body().len();
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, len.into());
    r
}

fn json_error(status: StatusCode, msg: &str) -> Response<Vec<u8>> {
    reply(
        status,
        "application/json",
        serde_json::json!({ "error": msg }).to_string().into_bytes(),
    )
}

impl AdminApp {
    /// Routes one admin request.
    pub fn handle(&self, method: &http::Method, path: &str) -> Response<Vec<u8>> {
        let get = method == http::Method::GET || method == http::Method::HEAD;
        match path {
            "/health" | "/ready" | "/metrics" if !get => {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            "/health" => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/ready" if self.state.is_ready() => {
                reply(StatusCode::OK, "text/plain", b"ready\n".to_vec())
            }
            "/ready" => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                b"not ready\n".to_vec(),
            ),
            "/metrics" => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.encode(),
            ),
            _ => json_error(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let req = s.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        // drain a request body, if any, so keep-alive works
        while let Ok(Some(_)) = s.read_request_body().await {}
        self.handle(&method, &path)
    }
}
