//! The thin `ProxyHttp` implementation: each Pingora hook is a list of phases that delegate
//! to the router, [`limits`], the plugin [`pipeline`], [`attempts`] (peer choice, breaker,
//! retries), [`forward`] (what goes upstream), [`cache`], [`error_page`] and [`logging`].

pub mod abuse;
pub mod attempts;
pub mod cache;
pub mod cache_disk;
pub mod cache_store;
mod client_ip;
pub mod conn;
pub mod ctx;
pub mod error_page;
mod forward;
mod grpc;
pub mod limits;
mod logging;
mod names;
pub mod pipeline;
mod spans;
mod strict;
pub mod trace;

/// Entry points for the fuzz targets in `fuzz/` (not a stable API): the parsers of untrusted
/// input that live in private modules.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::cache::{cache_decision, vary_names};
    pub use super::client_ip::client_ip;
    pub use super::strict::{
        check_h1, check_target, valid_host, ChunkCheck, ChunkStep, FieldSeen, LineCheck,
    };
}

use std::sync::Arc;

use async_trait::async_trait;
use gatehouse_plugins::Reply;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::access_log::AccessLog;
use crate::metrics::{Metrics, RouteMetrics};
use crate::state::SharedState;
use ctx::Ctx;
use error_page::Failure;

/// The gateway's proxy logic.
pub struct Gateway {
    state: Arc<SharedState>,
    cache: cache::CacheRuntime,
    metrics: Arc<Metrics>,
    access_log: Arc<AccessLog>,
    /// Series for requests that matched no route.
    unmatched: RouteMetrics,
    /// The status page's records of errors and 429s.
    board: Arc<crate::status::Board>,
}

impl Gateway {
    /// A gateway over `state`.
    pub fn new(
        cache: cache::CacheRuntime,
        state: Arc<SharedState>,
        metrics: Arc<Metrics>,
        access_log: Arc<AccessLog>,
        board: Arc<crate::status::Board>,
    ) -> Self {
        let unmatched = RouteMetrics::new(&metrics, "none");
        Gateway {
            board,
            cache,
            state,
            metrics,
            access_log,
            unmatched,
        }
    }
}

/// A gateway reply that ends the request, why, and whether the connection must close (the
/// request body was not read, so it cannot be reused).
struct Stop {
    reply: Reply,
    failure: Option<Failure>,
    close: bool,
}

impl Stop {
    fn new(reply: Reply, failure: Failure, close: bool) -> Self {
        Stop {
            reply,
            failure: Some(failure),
            close,
        }
    }
}

/// A plugin's [`UpstreamChoice`](gatehouse_plugins::api::UpstreamChoice): the request goes
/// to that group instead of the route's (500 when no group has the name).
fn choose_upstream(ctx: &mut Ctx) -> std::result::Result<(), Stop> {
    use gatehouse_plugins::api::UpstreamChoice;
    let Some(UpstreamChoice(name)) = ctx.info.ext.get::<UpstreamChoice>() else {
        return Ok(());
    };
    match ctx.snap.upstreams.get(&**name) {
        Some(g) => {
            ctx.chosen = Some(g.clone());
            Ok(())
        }
        None => {
            let shown: String = name.chars().take(64).collect();
            log::warn!(
                "route {}: a plugin chose upstream `{shown}`, which is not configured",
                ctx.info.route_id
            );
            Err(Stop::new(
                Reply::error(500, "the upstream chosen by a plugin is not configured"),
                Failure::Internal,
                false,
            ))
        }
    }
}

/// Admission before any plugin runs: the head's limits, the route (404 without one) and a
/// declared body size over the route's limit. On success the route is in `ctx`.
fn admit(s: &Session, ctx: &mut Ctx) -> std::result::Result<(), Stop> {
    let req = s.req_header();
    // the connection guard's view of the raw HTTP/1 bytes
    let raw = (s.as_downstream().stream())
        .and_then(|st| (**st).as_any().downcast_ref::<conn::HeadDeadline>());
    let refused = if req.method == http::Method::CONNECT {
        // no tunnels (Pingora lets them through to here, so that the answer is the gateway's)
        Some((405, "CONNECT is not supported"))
    } else if s.as_downstream().is_http2() {
        strict::check_target(req)
    } else {
        strict::check_h1(
            req,
            raw.is_none_or(conn::HeadDeadline::request_line_ok),
            raw.is_some_and(conn::HeadDeadline::had_length_field),
        )
    };
    if let Some((status, message)) = refused {
        return Err(Stop::new(
            Reply::error(status, message),
            Failure::BadRequest,
            true,
        ));
    }
    if let Some(reply) = limits::check_head(req, &ctx.snap.server) {
        return Err(Stop::new(reply, Failure::HeadTooLarge, true));
    }
    if let Some(reply) = acme_challenge(req, ctx) {
        return Err(reply);
    }
    let host = logging::host_of(s);
    let idx = (ctx.snap.router).lookup(host, req.uri.path(), &req.method, &req.headers);
    let Some(route) = idx.and_then(|i| ctx.snap.routes.get(i)).cloned() else {
        let reply = Reply::error(404, Failure::NoRoute.as_str());
        return Err(Stop::new(reply, Failure::NoRoute, false));
    };
    if let Some(reply) = limits::check_content_length(req, route.max_body_size) {
        return Err(Stop::new(reply, Failure::BodyTooLarge, true));
    }
    // a chunked body already read in part (often whole, with its head)
    if let Some(why) = raw.and_then(|hd| hd.body_refusal(route.max_body_size)) {
        let failure = Failure::from(why);
        let status = error_page::status_of(failure);
        return Err(Stop::new(
            Reply::error(status, failure.as_str()),
            failure,
            true,
        ));
    }
    let gate = match (route.https_redirect, &route.client_cert) {
        (Some(port), _) if ctx.ssl.is_none() => Err(https_redirect(host, req, port)),
        (_, Some(rule)) => check_client_cert(rule, host, ctx),
        _ => Ok(()),
    };
    // refused requests are still the route's (metrics, access log)
    ctx.info.route_id = Arc::clone(&route.id);
    ctx.route = Some(route);
    gate
}

/// The answer to an ACME HTTP-01 challenge of an order in progress, before routing (on
/// every listener: a CA follows redirects to HTTPS, and the first order has no certificate
/// yet). A token gatehouse did not issue goes on to routing, so a backend may answer its own.
fn acme_challenge(req: &RequestHeader, ctx: &Ctx) -> Option<Stop> {
    let settings = ctx.snap.acme.as_ref()?;
    let token = crate::acme::challenge_token(req.uri.path())?;
    let answer = (crate::acme::store().http01(token))
        .or_else(|| crate::acme::shared_http01(settings, token))?;
    log::info!("acme: answered the HTTP-01 challenge {token}");
    let reply = Reply {
        status: 200,
        headers: Vec::new(),
        body: gatehouse_plugins::api::ReplyBody::Raw {
            content_type: http::HeaderValue::from_static("text/plain"),
            bytes: bytes::Bytes::from(answer),
        },
    };
    Some(Stop {
        reply,
        failure: None,
        close: false,
    })
}

/// `host` without its port (`[v6]` keeps its brackets).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(n, _)| n)
}

/// 308 to the same host and path (and query) over HTTPS.
fn https_redirect(host: Option<&str>, req: &RequestHeader, port: Option<u16>) -> Stop {
    let name = host.map_or("", host_name);
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let location = match port {
        Some(p) => format!("https://{name}:{p}{path}"),
        None => format!("https://{name}{path}"),
    };
    let reply = match http::HeaderValue::from_str(&location) {
        Ok(v) if !name.is_empty() => {
            Reply::error(308, "use https").with_header(http::header::LOCATION, v)
        }
        _ => Reply::error(400, Failure::BadRequest.as_str()),
    };
    Stop {
        reply,
        failure: None,
        close: false,
    }
}

/// A route's `client_cert` rule: 403 without an allowed verified certificate; 421 when the
/// client reused a connection made for another host (HTTP/2 coalescing), so that it connects
/// again for this one and can present its certificate there.
fn check_client_cert(
    rule: &crate::tls::ClientCertRule,
    host: Option<&str>,
    ctx: &Ctx,
) -> std::result::Result<(), Stop> {
    match &ctx.info.client_cert {
        Some(cert) if rule.allows(cert) => Ok(()),
        Some(_) => Err(Stop::new(
            Reply::error(403, Failure::ClientCertNotAllowed.as_str()),
            Failure::ClientCertNotAllowed,
            false,
        )),
        None if !rule.required => Ok(()),
        None => {
            let sni = ctx.conn_tls().and_then(|t| t.sni.as_deref());
            let name = host.map(host_name);
            let failure = match (sni, name) {
                (Some(sni), Some(name)) if !sni.eq_ignore_ascii_case(name) => Failure::Misdirected,
                _ => Failure::ClientCertRequired,
            };
            let status = if failure == Failure::Misdirected {
                421
            } else {
                403
            };
            Err(Stop::new(
                Reply::error(status, failure.as_str()),
                failure,
                false,
            ))
        }
    }
}

/// Writes the reply of `stop`; `request_filter` returns `true` after it.
async fn reply_and_stop(s: &mut Session, ctx: &mut Ctx, stop: Stop) -> Result<bool> {
    if stop.failure.is_some() {
        ctx.failure = stop.failure;
    }
    if stop.close {
        s.set_keepalive(None);
    }
    pipeline::write_reply(s, stop.reply, ctx).await?;
    Ok(true)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.state.snapshot())
    }

    async fn early_request_filter(&self, s: &mut Session, ctx: &mut Ctx) -> Result<()> {
        if let Some(hd) = (s.as_downstream().stream())
            .and_then(|st| (**st).as_any().downcast_ref::<conn::HeadDeadline>())
        {
            // what is written from now on is the gateway's
            hd.admit();
        }
        ctx.identify(s);
        if s.as_downstream().is_http2() {
            self.metrics.tls.h2_streams.inc();
            ctx.h2_stream = Some(ctx::StreamGuard::new(&self.metrics.tls.h2_streams_active));
        }
        // no progress on the request body for this long ends the request
        s.set_read_timeout(Some(ctx.snap.server.body_read_timeout));
        Ok(())
    }

    async fn request_filter(&self, s: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Err(stop) = admit(s, ctx) {
            return reply_and_stop(s, ctx, stop).await;
        }
        let reply = match pipeline::request_filter(s, ctx).await? {
            None => {
                let reply = pipeline::request_body(s, ctx).await?;
                if reply.is_some() && !s.as_downstream_mut().is_body_done() {
                    // refused at the body step with a body read in part (or not at all: too
                    // large): the connection ends after the reply instead of draining it
                    s.set_keepalive(None);
                }
                reply
            }
            some => some,
        };
        match reply {
            None => match choose_upstream(ctx) {
                Ok(()) => Ok(false),
                Err(stop) => reply_and_stop(s, ctx, stop).await,
            },
            Some(reply) => {
                let failure = (reply.status >= 400).then_some(Failure::RejectedByPlugin);
                let stop = Stop {
                    reply,
                    failure,
                    close: false,
                };
                reply_and_stop(s, ctx, stop).await
            }
        }
    }

    async fn request_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        limits::count_body(body, ctx)
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

    async fn cache_hit_filter(
        &self,
        _s: &mut Session,
        _meta: &pingora_cache::CacheMeta,
        hit: &mut pingora_cache::HitHandler,
        _is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<pingora_cache::ForcedFreshness>> {
        cache::hit_filter(hit, ctx);
        Ok(None)
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
        forward::upstream_request(s, req, ctx)?;
        pipeline::upstream_request_filter(s, req, ctx).await
    }

    async fn response_filter(
        &self,
        s: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        forward::plain_response(resp, ctx)?;
        pipeline::response_filter(s, resp, ctx).await?;
        if conn::pipelined(s) {
            s.set_keepalive(None);
        }
        forward::response_request_id(resp, ctx)?;
        cache::response_header(s, resp, ctx)
    }

    async fn fail_to_proxy(&self, s: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        error_page::fail_to_proxy(s, e, ctx).await
    }

    fn suppress_error_log(&self, _s: &Session, ctx: &Ctx, e: &Error) -> bool {
        // "no healthy backend" is an expected condition with its own metric and access log line
        ctx.failure.is_some() || matches!(e.etype(), ErrorType::HTTPStatus(_))
    }

    async fn logging(&self, s: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        pipeline::logging(s, e, ctx).await;
        logging::finish(self, s, ctx);
    }
}
