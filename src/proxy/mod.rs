//! The thin `ProxyHttp` implementation: each Pingora hook takes a few lines and delegates to
//! the router, the plugin [`pipeline`], the upstream group or [`error_page`].

pub mod attempts;
pub mod cache;
pub mod cache_store;
pub mod conn;
pub mod ctx;
pub mod error_page;
pub mod limits;
pub mod pipeline;
pub mod trace;

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use gatehouse_plugins::Reply;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::access_log::{self, AccessLog};
use crate::metrics::{Metrics, RouteMetrics};
use crate::state::{SharedState, UpstreamHost};
use ctx::Ctx;

/// The gateway's proxy logic.
pub struct Gateway {
    pub state: Arc<SharedState>,
    pub cache: cache::CacheRuntime,
    pub metrics: Arc<Metrics>,
    pub access_log: Arc<AccessLog>,
    /// Series for requests that matched no route.
    pub unmatched: RouteMetrics,
}

impl Gateway {
    /// A gateway over `state`.
    pub fn new(
        cache: cache::CacheRuntime,
        state: Arc<SharedState>,
        metrics: Arc<Metrics>,
        access_log: Arc<AccessLog>,
    ) -> Self {
        let unmatched = RouteMetrics::new(&metrics, "none");
        Gateway {
            cache,
            state,
            metrics,
            access_log,
            unmatched,
        }
    }
}

fn host_of(s: &Session) -> Option<&str> {
    let req = s.req_header();
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.state.snapshot())
    }

    async fn early_request_filter(&self, s: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.info.request_id = match s.req_header().headers.get("x-request-id") {
            Some(v) if ctx::valid_request_id(v.as_bytes()) => {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => ctx::new_request_id(),
        };
        if let Some(peer) = s.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) {
            ctx.peer_ip = peer.to_canonical();
            let h = &s.req_header().headers;
            let xff = h.get("x-forwarded-for").map(|v| v.as_bytes());
            let fwd = h.get(http::header::FORWARDED).map(|v| v.as_bytes());
            ctx.info.client_ip = ctx::client_ip(peer, xff, fwd, &ctx.snap.server);
        }
        // a fresh trace is made only when something needs it (Ctx::trace)
        if let Some(t) = s
            .req_header()
            .headers
            .get("traceparent")
            .and_then(|v| trace::parse(v.as_bytes()))
        {
            ctx.trace = t;
        }
        // no progress on the request body for this long ends the request
        s.set_read_timeout(Some(ctx.snap.server.body_read_timeout));
        Ok(())
    }

    async fn request_filter(&self, s: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Some(reply) = limits::check_head(s.req_header(), &ctx.snap.server) {
            ctx.error = Some("request head too large");
            s.set_keepalive(None);
            pipeline::write_reply(s, reply, ctx).await?;
            return Ok(true);
        }
        let idx = {
            let req = s.req_header();
            ctx.snap
                .router
                .lookup(host_of(s), req.uri.path(), &req.method, &req.headers)
        };
        let Some(route) = idx.and_then(|i| ctx.snap.routes.get(i)).cloned() else {
            ctx.error = Some("no route");
            pipeline::write_reply(s, Reply::error(404, "no route"), ctx).await?;
            return Ok(true);
        };
        if let Some(reply) = limits::check_content_length(s.req_header(), route.max_body_size) {
            ctx.error = Some("request body too large");
            // the body is not read: the connection cannot be reused
            s.set_keepalive(None);
            pipeline::write_reply(s, reply, ctx).await?;
            return Ok(true);
        }
        ctx.info.route_id = Arc::clone(&route.id);
        ctx.slots.resize_with(route.chain.len(), || None);
        ctx.route = Some(route);
        if let Some(reply) = pipeline::request_filter(s, ctx).await? {
            if reply.status >= 400 {
                ctx.error = Some("rejected by plugin");
            }
            pipeline::write_reply(s, reply, ctx).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(b), Some(route)) = (body.as_ref(), &ctx.route) {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > route.max_body_size {
                // fail before this chunk is forwarded: the upstream never sees the excess
                *body = None;
                ctx.error = Some("request body too large");
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body too large",
                ));
            }
        }
        Ok(())
    }

    fn request_cache_filter(&self, s: &mut Session, ctx: &mut Ctx) -> Result<()> {
        cache::request_cache_filter(&self.cache, s, ctx);
        Ok(())
    }

    fn cache_key_callback(&self, s: &Session, _ctx: &mut Ctx) -> Result<pingora_cache::CacheKey> {
        Ok(cache::cache_key(s))
    }

    fn response_cache_filter(
        &self,
        s: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<pingora_cache::RespCacheable> {
        Ok(cache::response_cache_filter(s, resp, ctx))
    }

    fn cache_vary_filter(
        &self,
        meta: &pingora_cache::CacheMeta,
        ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<pingora_cache::key::HashBinary> {
        cache::cache_vary_filter(meta, ctx, req)
    }

    fn should_serve_stale(&self, s: &mut Session, _ctx: &mut Ctx, error: Option<&Error>) -> bool {
        // inside the entry's stale windows (checked by Pingora): always during revalidation,
        // and on any failure that is not the client's
        let serve = error.is_none_or(|e| *e.esource() != pingora_error::ErrorSource::Downstream);
        if serve && error.is_some() {
            // Pingora does not reuse the client connection after a proxy error: say so
            s.set_keepalive(None);
        }
        serve
    }

    async fn upstream_peer(&self, s: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        attempts::upstream_peer(&self.metrics, s, ctx).await
    }

    fn fail_to_connect(
        &self,
        s: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        attempts::fail_to_connect(&self.metrics, s, peer, ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        s: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        attempts::error_while_proxy(&self.metrics, peer, s, e, ctx, client_reused)
    }

    async fn upstream_response_filter(
        &self,
        s: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        attempts::upstream_response(&self.metrics, s, resp, ctx)
    }

    async fn upstream_request_filter(
        &self,
        s: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(route) = &ctx.route else {
            return Ok(());
        };
        if let Some(prefix) = &route.strip_prefix {
            if let Some(rest) = req.uri.path().strip_prefix(prefix.as_str()) {
                let mut new = String::with_capacity(rest.len() + 1);
                if !rest.starts_with('/') {
                    new.push('/');
                }
                new.push_str(rest);
                if let Some(q) = req.uri.query() {
                    new.push('?');
                    new.push_str(q);
                }
                let uri = new.parse::<http::Uri>().map_err(|e| {
                    Error::because(
                        ErrorType::InternalError,
                        "strip_prefix produced a bad uri",
                        e,
                    )
                })?;
                req.set_uri(uri);
            }
        }
        match &route.upstream_host {
            UpstreamHost::Keep => {}
            UpstreamHost::Backend => {
                if let Some(b) = &ctx.backend {
                    req.insert_header(http::header::HOST, &*b.label)?;
                }
            }
            UpstreamHost::Fixed(v) => req.insert_header(http::header::HOST, v.clone())?,
        }
        let trusted_peer = ctx.snap.server.is_trusted(ctx.peer_ip);
        let xff = ctx::upstream_forwarded_for(req.headers.get("x-forwarded-for"), ctx.peer_ip)
            .map_err(|e| Error::because(ErrorType::InternalError, "x-forwarded-for", e))?;
        req.insert_header("x-forwarded-for", xff)?;
        if !(trusted_peer && req.headers.contains_key("x-forwarded-proto")) {
            req.insert_header("x-forwarded-proto", http::HeaderValue::from_static("http"))?;
        }
        if !(trusted_peer && req.headers.contains_key("x-forwarded-host")) {
            if let Some(h) = s.req_header().headers.get(http::header::HOST).cloned() {
                req.insert_header("x-forwarded-host", h)?;
            }
        }
        req.insert_header("x-request-id", ctx.request_id_value())?;
        req.insert_header(
            "traceparent",
            http::HeaderValue::from_bytes(&trace::upstream_header(ctx.trace()))
                .map_err(|e| Error::because(ErrorType::InternalError, "traceparent", e))?,
        )?;
        if !ctx.trace().continued {
            req.remove_header("tracestate");
        }
        if s.cache.enabled() {
            // fetch the whole object: HEAD becomes GET, Range and If-* go, a revalidation asks
            // with the stored validators
            pingora_cache::filters::upstream::request_filter(req, s.cache.maybe_cache_meta());
        }
        pipeline::upstream_request_filter(s, req, ctx).await
    }

    async fn response_filter(
        &self,
        s: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        pipeline::response_filter(s, resp, ctx).await?;
        resp.insert_header("x-request-id", ctx.request_id_value())?;
        if let Some((value, label)) = cache::status(s, ctx) {
            resp.insert_header("cache-status", value)?;
            ctx.cache_result = Some(label);
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, s: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        error_page::fail_to_proxy(s, e, ctx).await
    }

    fn suppress_error_log(&self, _s: &Session, ctx: &Ctx, e: &Error) -> bool {
        // "no healthy backend" is an expected condition with its own metric and access log line
        ctx.error.is_some() || matches!(e.etype(), ErrorType::HTTPStatus(_))
    }

    async fn logging(&self, s: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        pipeline::logging(s, e, ctx).await;
        let status = s.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.start.elapsed();
        let req = s.req_header();
        match &ctx.route {
            Some(r) => {
                r.metrics
                    .observe(&req.method, status, elapsed.as_secs_f64());
                r.metrics
                    .observe_sizes(ctx.body_bytes, s.body_bytes_sent() as u64);
                for (plugin, result) in &ctx.info.outcomes {
                    r.metrics.outcome(&self.metrics, plugin, result);
                }
                if let Some(result) = ctx.cache_result {
                    r.metrics.outcome(&self.metrics, "cache", result);
                }
            }
            None => self
                .unmatched
                .observe(&req.method, status, elapsed.as_secs_f64()),
        }
        if !self.access_log.enabled() {
            return;
        }
        ctx.trace();
        let entry = access_log::Entry {
            time: access_log::Timestamp(SystemTime::now()),
            request_id: &ctx.info.request_id,
            client_ip: ctx.info.client_ip,
            method: req.method.as_str(),
            host: host_of(s).unwrap_or(""),
            path: req.uri.path(),
            route: ctx.route.as_ref().map_or("", |r| &r.id),
            upstream: ctx.route.as_ref().map_or("", |r| &r.upstream.name),
            backend: ctx.backend.as_ref().map_or("", |b| &b.label),
            status,
            bytes: s.body_bytes_sent(),
            duration_ms: (elapsed.as_secs_f64() * 1e6).round() / 1e3,
            error: ctx.error,
            plugins: access_log::Outcomes(&ctx.info.outcomes),
            cache: ctx.cache_result,
            upstream_ms: ctx
                .attempt_start
                .map(|_| (ctx.upstream_time.as_secs_f64() * 1e6).round() / 1e3),
            retries: ctx.attempts.saturating_sub(1),
            trace_id: ctx.trace.trace_id(),
        };
        self.access_log.write(&entry);
    }
}
