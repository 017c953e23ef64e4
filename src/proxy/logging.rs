//! The `logging` phase, after the response went out or the request failed: the route's
//! metrics (requests, latency, sizes, plugin decisions, cache result) and the access log
//! entry. [`crate::access_log`] is the writer and knows nothing of the request context; the
//! entry is assembled here.

use std::time::SystemTime;

use gatehouse_plugins::cache::Cache;
use gatehouse_plugins::PluginSpec;
use pingora_proxy::Session;

use super::ctx::Ctx;
use super::Gateway;
use crate::access_log::{Entry, Pairs, Timestamp};

/// The request's `Host` (header, or the authority of an absolute-form URI).
pub(super) fn host_of(s: &Session) -> Option<&str> {
    let req = s.req_header();
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())
}

/// Counts the finished request and writes its access log entry.
pub(super) fn finish(gw: &Gateway, s: &Session, ctx: &mut Ctx) {
    let status = s.response_written().map_or(0, |r| r.status.as_u16());
    // the gateway's own 429 (a backend's is passed on as it is)
    if status == 429 && ctx.failure.is_some() {
        if let Some(hd) = (s.as_downstream().stream())
            .and_then(|st| (**st).as_any().downcast_ref::<super::conn::HeadDeadline>())
        {
            hd.answered_429();
        }
    }
    // the status page: errors and the gateway's 429s only
    if status >= 500 || (status == 429 && ctx.failure.is_some()) {
        let route = ctx.route.as_deref().map_or("", |r| &r.id);
        if status == 429 {
            gw.board.limited(route, &ctx.info.client_ip.to_string());
        } else {
            let reason = ctx.failure.map_or("upstream response", |f| f.as_str());
            gw.board.error(status, route, reason, &ctx.info.request_id);
        }
    }
    let elapsed = ctx.start.elapsed();
    let method = &s.req_header().method;
    match &ctx.route {
        Some(r) => {
            r.metrics.observe(method, status, elapsed.as_secs_f64());
            r.metrics
                .observe_sizes(ctx.body_bytes, s.body_bytes_sent() as u64);
            for (plugin, result) in &ctx.info.outcomes {
                r.metrics.outcome(&gw.metrics, plugin, result);
            }
            if let Some(result) = ctx.cache.result() {
                // counted as decisions of the route's cache plugin
                r.metrics.outcome(&gw.metrics, Cache::KIND, result);
            }
        }
        None => gw.unmatched.observe(method, status, elapsed.as_secs_f64()),
    }
    super::spans::finish(s, ctx, status);
    if !gw.access_log.enabled() {
        return;
    }
    ctx.trace(); // made now if the client sent none: every entry has a trace id
    let ctx = &*ctx;
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let req = s.req_header();
    let route = ctx.route.as_deref();
    let entry = Entry {
        time: Timestamp(SystemTime::now()),
        request_id: &ctx.info.request_id,
        client_ip: ctx.info.client_ip,
        method: req.method.as_str(),
        protocol: match req.version {
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        tls: ctx.ssl.as_deref().map(|d| &*d.version),
        sni: ctx.conn_tls().and_then(|t| t.sni.as_deref()),
        client_cert: ctx.info.client_cert.as_deref().map(|c| &*c.fingerprint),
        host: host_of(s).unwrap_or(""),
        path: req.uri.path(),
        route: route.map_or("", |r| &r.id),
        upstream: ctx.group().map_or("", |g| &g.name),
        backend: ctx.attempt.backend().map_or("", |b| &b.label),
        status,
        bytes: s.body_bytes_sent(),
        duration_ms: ms(elapsed),
        error: ctx.failure.map(|f| f.as_str()),
        plugins: Pairs(&ctx.info.outcomes),
        details: Pairs(&ctx.info.details),
        cache: ctx.cache.result(),
        cache_tier: ctx.cache.tier(),
        upstream_ms: ctx.attempt.upstream_time().map(ms),
        retries: ctx.attempt.retries(),
        trace_id: ctx.trace_id(),
    };
    gw.access_log.write(&entry);
}
