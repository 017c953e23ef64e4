//! The admin listener (its own socket, loopback by default): `GET /health` (200 while the
//! process serves), `GET /ready` (200 once the config is loaded and the first health round is
//! done, 503 before), `GET /metrics` (Prometheus text), `POST /cache/purge`.
//!
//! Mutating endpoints need `Authorization: Bearer <admin.token>` when a token is configured.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::metrics::Metrics;
use crate::proxy::cache::CacheRuntime;
use crate::reload::{ReloadOutcome, Reloader};
use crate::state::SharedState;
use crate::state::Snapshot;

/// Largest admin request body read.
const MAX_BODY: usize = 64 * 1024;

/// The admin HTTP app.
pub struct AdminApp {
    pub state: Arc<SharedState>,
    pub metrics: Arc<Metrics>,
    pub cache: CacheRuntime,
    pub reloader: Arc<Reloader>,
    /// The status page's records (errors, 429s, history).
    pub board: Arc<crate::status::Board>,
}

/// A static asset of the status page: no data in it, cacheable for a short while.
fn asset(content_type: &str, body: &str) -> Response<Vec<u8>> {
    let mut r = reply(StatusCode::OK, content_type, body.as_bytes().to_vec());
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    r.headers_mut().insert(
        http::header::HeaderName::from_static("content-security-policy"),
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    r.headers_mut().insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    r
}

/// The value of `name` in a query string (percent-decoded, `+` as space).
fn query_param(query: &str, name: &str) -> Option<String> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| {
            let bytes = v.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                let decoded = (bytes[i] == b'%')
                    .then(|| Some(hex(*bytes.get(i + 1)?)? * 16 + hex(*bytes.get(i + 2)?)?))
                    .flatten();
                match (bytes[i], decoded) {
                    (_, Some(b)) => {
                        out.push(b);
                        i += 3;
                    }
                    (b'+', None) => {
                        out.push(b' ');
                        i += 1;
                    }
                    (b, None) => {
                        out.push(b);
                        i += 1;
                    }
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        })
    })
}

/// Mapping keys whose values `GET /config` never shows.
const SECRET_KEYS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "api_key",
    "apikey",
    "client_secret",
    "private_key",
    // header maps (`tracing.otlp.headers`)
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
];

/// Replaces the values of secret-looking keys (at any depth) with `"<redacted>"`.
pub fn redact(v: &mut serde_yaml::Value) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, val) in m.iter_mut() {
                let secret = k
                    .as_str()
                    .is_some_and(|k| SECRET_KEYS.contains(&k.to_ascii_lowercase().as_str()));
                if secret && !val.as_str().is_some_and(str::is_empty) {
                    *val = serde_yaml::Value::String("<redacted>".into());
                } else {
                    redact(val);
                }
            }
        }
        serde_yaml::Value::Sequence(s) => s.iter_mut().for_each(redact),
        serde_yaml::Value::Tagged(t) => redact(&mut t.value),
        // credentials in a URL (`redis://user:pass@host`)
        serde_yaml::Value::String(text) => {
            let clean = crate::redis_link::redact_url(text);
            if clean != *text {
                *text = clean;
            }
        }
        _ => {}
    }
}

/// One admin request, as the router needs it.
pub struct AdminRequest<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    /// The query string (`q=api&page=2`), empty without one.
    pub query: &'a str,
    pub authorization: Option<&'a [u8]>,
    pub body: &'a [u8],
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

fn json(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", v.to_string().into_bytes())
}

fn json_error(status: StatusCode, msg: &str) -> Response<Vec<u8>> {
    json(status, serde_json::json!({ "error": msg }))
}

fn unauthorized() -> Response<Vec<u8>> {
    let mut resp = json_error(StatusCode::UNAUTHORIZED, "admin token required");
    resp.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    resp
}

/// Compares without an early exit, so response time does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Splits `http(s)://host[:port]/path?q` into (host, explicit port, path+query).
/// Purges `url` (`http(s)://host[:port]/path?query`, every variant) from this instance's
/// cache: how many objects went, or `None` for a URL that is not one. A URL without a port
/// may have been cached under any listener's port (and 80, 443): all are purged.
pub(crate) async fn purge_local(cache: &CacheRuntime, snap: &Snapshot, url: &str) -> Option<usize> {
    let (host, port, pq) = parse_url(url)?;
    let mut ports: Vec<u16> = match port {
        Some(p) => vec![p],
        None => {
            let mut v = vec![80, 443];
            v.extend(
                snap.raw
                    .server
                    .listen
                    .iter()
                    .filter_map(|l| l.addr().parse::<std::net::SocketAddr>().ok())
                    .map(|a| a.port()),
            );
            v
        }
    };
    ports.sort_unstable();
    ports.dedup();
    Some(cache.purge(&host, &ports, &pq).await)
}

fn parse_url(url: &str) -> Option<(String, Option<u16>, String)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (authority, pq) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p.parse().ok()?)),
        _ => (authority, None),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    (!host.is_empty()).then_some((host, port, pq))
}

impl AdminApp {
    fn authorized(&self, auth: Option<&[u8]>) -> bool {
        let snap = self.state.snapshot();
        let token = snap.raw.admin.token.as_bytes();
        if token.is_empty() {
            return true;
        }
        let Some(given) = auth.and_then(|a| a.strip_prefix(b"Bearer ")) else {
            return false;
        };
        constant_time_eq(given, token)
    }

    async fn purge(&self, body: &[u8]) -> Response<Vec<u8>> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Purge {
            url: String,
        }
        let Ok(p) = serde_json::from_slice::<Purge>(body) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "expected {\"url\": \"http://host/path?query\"}",
            );
        };
        let snap = self.state.snapshot();
        let Some(purged) = purge_local(&self.cache, &snap, &p.url).await else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "url must be http(s)://host[:port]/path",
            );
        };
        // and on every other instance, through the shared feed (`purge_feed`)
        let link = snap.redis.clone();
        drop(snap);
        let propagated = match link {
            Some(link) => link.publish_purge(&p.url).await,
            None => false,
        };
        json(
            StatusCode::OK,
            serde_json::json!({ "purged": purged, "propagated": propagated }),
        )
    }

    async fn reload(&self) -> Response<Vec<u8>> {
        match self.reloader.reload("admin").await {
            ReloadOutcome::Applied {
                version,
                restart_required,
            } => json(
                StatusCode::OK,
                serde_json::json!({ "version": version, "result": "ok", "restart_required": restart_required }),
            ),
            ReloadOutcome::Unchanged { version } => json(
                StatusCode::OK,
                serde_json::json!({ "version": version, "result": "unchanged" }),
            ),
            ReloadOutcome::Failed(e) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({
                    "version": self.state.snapshot().version,
                    "result": "error",
                    "errors": e.errors.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
                }),
            ),
        }
    }

    fn config(&self) -> Response<Vec<u8>> {
        let snap = self.state.snapshot();
        let mut tree = snap.source.clone();
        redact(&mut tree);
        json(
            StatusCode::OK,
            serde_json::json!({ "version": snap.version, "sha256": snap.source_hash, "config": tree }),
        )
    }

    /// Routes one admin request (async: a reload waits for the new config to be compiled).
    pub async fn handle_async(&self, r: &AdminRequest<'_>) -> Response<Vec<u8>> {
        match r.path {
            "/reload" | "/config" if !self.authorized(r.authorization) => unauthorized(),
            "/reload" if r.method == http::Method::POST => self.reload().await,
            "/config" if r.method == http::Method::GET => self.config(),
            "/reload" | "/config" => {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            "/cache/purge" if r.method != http::Method::POST => {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            "/cache/purge" if !self.authorized(r.authorization) => unauthorized(),
            // async: the purge is published to the other instances
            "/cache/purge" => self.purge(r.body).await,
            "/acme" | "/acme/renew" if !self.authorized(r.authorization) => unauthorized(),
            "/acme" if r.method == http::Method::GET => {
                json(StatusCode::OK, crate::acme::store().report())
            }
            "/acme/renew" if r.method == http::Method::POST => self.acme_renew(r),
            "/acme" | "/acme/renew" => {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => self.handle(r),
        }
    }

    /// `POST /acme/renew[?name=N]`: the certificate serving `N` (every one without) is ordered
    /// anew now, whatever its expiry; the old one serves until the new one is in hand.
    fn acme_renew(&self, r: &AdminRequest<'_>) -> Response<Vec<u8>> {
        let snap = self.state.snapshot();
        if snap.acme.is_none() {
            return json_error(StatusCode::NOT_FOUND, "no `acme` section in the config");
        }
        let name = query_param(r.query, "name").map(|n| n.to_ascii_lowercase());
        let managed: Vec<String> = (snap.server.listeners.iter())
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|t| t.acme_names.iter().cloned())
            .collect();
        match &name {
            Some(n) if !managed.contains(n) => {
                return json_error(
                    StatusCode::NOT_FOUND,
                    "no listener lists this name under tls.acme",
                );
            }
            None if managed.is_empty() => {
                return json_error(
                    StatusCode::NOT_FOUND,
                    "no listener lists names under tls.acme",
                );
            }
            _ => {}
        }
        crate::acme::store().force_renewal(name.as_deref());
        json(
            StatusCode::ACCEPTED,
            serde_json::json!({ "renewing": name.map_or(managed, |n| vec![n]) }),
        )
    }

    /// The status page (`/`, its assets) and its JSON API (`/api/*`, read-only; the admin
    /// token when one is set).
    fn status_page(&self, r: &AdminRequest<'_>) -> Option<Response<Vec<u8>>> {
        use crate::status::{PAGE_CSS, PAGE_HTML, PAGE_JS};
        let get = r.method == http::Method::GET || r.method == http::Method::HEAD;
        let resp = match r.path {
            "/" | "/status.css" | "/status.js" | "/api/status" | "/api/routes"
            | "/api/upstreams"
                if !get =>
            {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            "/" => asset("text/html; charset=utf-8", PAGE_HTML),
            "/status.css" => asset("text/css; charset=utf-8", PAGE_CSS),
            "/status.js" => asset("text/javascript; charset=utf-8", PAGE_JS),
            "/api/status" | "/api/routes" | "/api/upstreams"
                if !self.authorized(r.authorization) =>
            {
                unauthorized()
            }
            "/api/status" => json(
                StatusCode::OK,
                self.board.status(
                    &self.state.snapshot(),
                    &self.cache,
                    self.reloader.last(),
                    &self.reloader.path().display().to_string(),
                    self.state.is_ready(),
                ),
            ),
            "/api/routes" => {
                let q = query_param(r.query, "q").unwrap_or_default();
                let num = |n: &str, d: usize| {
                    query_param(r.query, n)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(d)
                };
                json(
                    StatusCode::OK,
                    self.board.routes(
                        &self.state.snapshot(),
                        &self.metrics,
                        &q,
                        num("page", 1),
                        num("per_page", 50),
                    ),
                )
            }
            "/api/upstreams" => json(StatusCode::OK, self.board.upstreams(&self.state.snapshot())),
            _ => return None,
        };
        Some(resp)
    }

    /// Routes one admin request.
    pub fn handle(&self, r: &AdminRequest<'_>) -> Response<Vec<u8>> {
        if let Some(resp) = self.status_page(r) {
            return resp;
        }
        self.handle_rest(r)
    }

    /// The health, readiness and metrics endpoints.
    fn handle_rest(&self, r: &AdminRequest<'_>) -> Response<Vec<u8>> {
        let get = r.method == http::Method::GET || r.method == http::Method::HEAD;
        match r.path {
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
            "/metrics" => {
                self.metrics
                    .cache_size
                    .set(i64::try_from(self.cache.store.size_bytes()).unwrap_or(i64::MAX));
                self.metrics.cache.sync(self.cache.store);
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.encode(),
                )
            }
            _ => json_error(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let req = s.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let query = req.uri.query().unwrap_or("").to_string();
        let auth = req
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec());
        let mut body = Vec::new();
        loop {
            match s.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY {
                        return json_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => {
                    return json_error(StatusCode::BAD_REQUEST, "cannot read the request body")
                }
            }
        }
        self.handle_async(&AdminRequest {
            method: &method,
            path: &path,
            query: &query,
            authorization: auth.as_deref(),
            body: &body,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://Example.com/a?b=1"),
            Some(("example.com".into(), None, "/a?b=1".into()))
        );
        assert_eq!(
            parse_url("http://h:8080"),
            Some(("h".into(), Some(8080), "/".into()))
        );
        assert_eq!(parse_url("ftp://h/"), None);
        assert_eq!(parse_url("http://h:x/"), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(
            query_param("q=a%2Fb+c&page=2", "q").as_deref(),
            Some("a/b c")
        );
        assert_eq!(query_param("q=%zz%4", "q").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("page=2", "q"), None);
        assert_eq!(query_param("q=%C3%A9", "q").as_deref(), Some("é"));
    }
}
