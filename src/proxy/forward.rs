//! What the gateway changes on the request it sends upstream (`upstream_request_filter`,
//! before the plugins' hooks): the route's prefix stripped, `Host`, `X-Forwarded-For`,
//! `-Proto` and `-Host` (a client's values kept only from a trusted proxy), `X-Request-Id`,
//! `traceparent` (and `tracestate` only when the client's trace is continued), and for a cached
//! route, the whole object asked for.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora_core::upstreams::peer::HttpUpstreamRequestPolicy;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::ctx::Ctx;
use super::names::{
    TRACEPARENT, TRACESTATE, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID,
};
use super::trace;
use crate::state::{Route, UpstreamHost};
use gatehouse_plugins::api::headers::{with_request_parts, with_response_parts, HeaderEdit};

/// Headers gatehouse may add to a request going upstream: `Host`, `X-Forwarded-For`, `-Proto`,
/// `-Host`, `X-Request-Id`, `traceparent` and the four client-certificate headers.
const ADDED_HEADERS: usize = 10;

/// Rewrites `req` (going upstream) for the request's route.
///
/// By default the headers are edited as a plain `http` header map, moved out of `req` and
/// back: names gatehouse adds are inserted as they are (Pingora's `insert_header` parses
/// each name again, copies it twice and grows its maps one insert at a time), and the
/// request goes upstream with lowercase header names (Pingora capitalises a dozen common
/// ones: `Host`, `Content-Type`, ...) instead of the client's spelling.
/// `server.preserve_header_case: true` keeps the client's spelling, at that cost.
pub(super) fn upstream_request(s: &Session, req: &mut RequestHeader, ctx: &mut Ctx) -> Result<()> {
    let Some(route) = ctx.route.as_deref() else {
        return Ok(());
    };
    strip_prefix(route, req)?;
    if ctx.snap.server.preserve_header_case && req.has_case() {
        rewrite(s, req, ctx)?;
    } else {
        with_request_parts(req, |parts| {
            (parts.headers.try_reserve(ADDED_HEADERS))
                .map_err(|e| Error::because(ErrorType::InternalError, "upstream headers", e))?;
            rewrite(s, parts, ctx)
        })?;
    }
    if s.cache.enabled() {
        // fetch the whole object: HEAD becomes GET, Range and If-* go, a revalidation asks
        // with the stored validators
        pingora_cache::filters::upstream::request_filter(req, s.cache.maybe_cache_meta());
    }
    Ok(())
}

/// Before the plugins' response hooks: unless `server.preserve_header_case`, the response
/// going to the client leaves Pingora's case-keeping form for plain `http` parts (the
/// client then sees lowercase names, but for a dozen common ones Pingora capitalises), with
/// room for the headers the gateway and its plugins add, so that those inserts neither copy
/// names into a second map nor grow the map one at a time.
pub(super) fn plain_response(resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
    let plugins = ctx.route.as_ref().map_or(0, |r| r.chain.len());
    // without plugins, `response_request_id` alone moves the parts (once)
    if ctx.snap.server.preserve_header_case || !resp.has_case() || plugins == 0 {
        return Ok(());
    }
    let room = 2 + 2 * plugins.min(8);
    with_response_parts(resp, |p| {
        (p.headers.try_reserve(room))
            .map_err(|e| Error::because(ErrorType::InternalError, "response headers", e))
    })
}

/// `X-Request-Id` on the response going to the client.
pub(super) fn response_request_id(resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
    let id = ctx.request_id_value();
    if ctx.snap.server.preserve_header_case && resp.has_case() {
        return resp.insert_header("x-request-id", id);
    }
    with_response_parts(resp, |p| p.set(X_REQUEST_ID, id))
}

/// `Host`, `X-Forwarded-*`, the client certificate's headers, `X-Request-Id` and the trace
/// context.
fn rewrite(s: &Session, req: &mut impl HeaderEdit, ctx: &mut Ctx) -> Result<()> {
    if let Some(route) = ctx.route.as_deref() {
        match &route.upstream_host {
            // HTTP/1.0 clients may omit Host; the HTTP/1.1 request upstream must carry one
            UpstreamHost::Keep if req.headers().contains_key(http::header::HOST) => {}
            UpstreamHost::Keep | UpstreamHost::Backend => {
                if let Some(b) = ctx.attempt.backend() {
                    let host = HeaderValue::from_str(&b.label)
                        .map_err(|e| Error::because(ErrorType::InternalError, "host", e))?;
                    req.set(http::header::HOST, host)?;
                }
            }
            UpstreamHost::Fixed(v) => req.set(http::header::HOST, v.clone())?,
        }
    }
    let sent = SentNames::of(ctx, req.headers());
    forwarded(s, req, ctx)?;
    client_cert_headers(req, ctx, sent.cert)?;
    req.set(X_REQUEST_ID, ctx.request_id_value())?;
    // the attempt's own span (when tracing) is the backend's parent
    let span = match ctx.spans.as_mut().and_then(|l| l.attempts.last_mut()) {
        Some(a) => {
            a.sent = Some(std::time::SystemTime::now());
            a.id
        }
        None => trace::random_u64(),
    };
    let mut traceparent = HeaderValue::from_bytes(&trace::upstream_header(ctx.trace(), span))
        .map_err(|e| Error::because(ErrorType::InternalError, "traceparent", e))?;
    // new with every request: never indexed by an HTTP/2 upstream's HPACK (as the request id)
    traceparent.set_sensitive(true);
    req.set(TRACEPARENT, traceparent)?;
    if sent.tracestate && !ctx.trace().continued {
        req.remove(&TRACESTATE);
    }
    Ok(())
}

/// `strip_prefix: true`: `/api/users?x` on a `/api` route goes up as `/users?x`.
fn strip_prefix(route: &Route, req: &mut RequestHeader) -> Result<()> {
    let Some(prefix) = &route.strip_prefix else {
        return Ok(());
    };
    let Some(rest) = req.uri.path().strip_prefix(prefix.as_str()) else {
        return Ok(());
    };
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
    Ok(())
}

/// `X-Forwarded-For` (the peer appended), `-Proto` and `-Host`.
fn forwarded(s: &Session, req: &mut impl HeaderEdit, ctx: &Ctx) -> Result<()> {
    let trusted_peer = ctx.snap.server.is_trusted(ctx.peer_ip);
    let xff = upstream_forwarded_for(req.headers().get(&X_FORWARDED_FOR), ctx.peer_ip)
        .map_err(|e| Error::because(ErrorType::InternalError, "x-forwarded-for", e))?;
    req.set(X_FORWARDED_FOR, xff)?;
    if !(trusted_peer && req.headers().contains_key(&X_FORWARDED_PROTO)) {
        let proto = if ctx.ssl.is_some() { "https" } else { "http" };
        req.set(X_FORWARDED_PROTO, HeaderValue::from_static(proto))?;
    }
    if !(trusted_peer && req.headers().contains_key(&X_FORWARDED_HOST)) {
        if let Some(h) = s.req_header().headers.get(http::header::HOST).cloned() {
            req.set(X_FORWARDED_HOST, h)?;
        }
    }
    Ok(())
}

/// What the client's header names hold that the upstream request's handling depends on,
/// found in one pass over them (most requests hold none of it), once per request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SentNames {
    /// One of the client-certificate identity headers (removed: a client cannot claim one).
    pub cert: bool,
    /// `tracestate` (removed unless the client's trace is continued).
    pub tracestate: bool,
    /// A hop-by-hop field: `Connection` (and what it nominates), `Keep-Alive`,
    /// `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`, `Trailer`,
    /// `Transfer-Encoding`, `Upgrade`, `HTTP2-Settings`. Pingora strips them from the
    /// upstream request (its standard `HttpUpstreamRequestPolicy`); without any of them that
    /// work (ten hashed removals, ~2.7k instructions) finds nothing, so the attempt's peer
    /// skips it (see [`upstream_policy`]).
    pub hop_by_hop: bool,
}

impl SentNames {
    /// The request's names, looked at on first use.
    pub(crate) fn of(ctx: &mut Ctx, headers: &HeaderMap) -> SentNames {
        if let Some(sent) = ctx.sent {
            return sent;
        }
        let names = &ctx.snap.server.client_cert_headers;
        let mut sent = SentNames::default();
        for k in headers.keys() {
            sent.cert |= *k == names.subject
                || *k == names.sans
                || *k == names.fingerprint
                || *k == names.verified;
            sent.tracestate |= *k == TRACESTATE;
            sent.hop_by_hop |= is_hop_by_hop(k);
        }
        ctx.sent = Some(sent);
        sent
    }
}

/// The fields Pingora's standard upstream request policy strips (or acts on: `Connection`
/// nominates more, `Upgrade` may be a WebSocket handshake), as `pingora-proxy` 0.9 lists them
/// (`sanitize_h1_upstream_request`, `strip_standard_hop_by_hop_headers`): to be checked again
/// when Pingora is upgraded. tests/hardening.rs `hop_by_hop_fields_never_reach_the_backend`
/// sends each of them.
fn is_hop_by_hop(k: &HeaderName) -> bool {
    use http::header::{
        CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING,
        UPGRADE,
    };
    *k == CONNECTION
        || *k == TRANSFER_ENCODING
        || *k == TE
        || *k == UPGRADE
        || *k == TRAILER
        || *k == PROXY_AUTHENTICATE
        || *k == PROXY_AUTHORIZATION
        || matches!(
            k.as_str(),
            "keep-alive" | "proxy-connection" | "http2-settings"
        )
}

/// The policy Pingora applies to the downstream request's headers on their way upstream:
/// its standard one (hop-by-hop fields stripped, `Connection` nominations removed or refused,
/// only a WebSocket upgrade passed on) whenever the client sent one of the fields it acts
/// on, and none at all when it sent none, where the standard policy would change nothing.
pub(crate) fn upstream_policy(sent: SentNames) -> HttpUpstreamRequestPolicy {
    if sent.hop_by_hop {
        HttpUpstreamRequestPolicy::standard()
    } else {
        HttpUpstreamRequestPolicy::preserve()
    }
}

/// The verified client certificate's subject, SANs, fingerprint and `verified: true`, after
/// every copy the client sent of those headers is removed (a client cannot claim an identity;
/// `present`: it sent at least one of them).
fn client_cert_headers(req: &mut impl HeaderEdit, ctx: &Ctx, present: bool) -> Result<()> {
    let names = &ctx.snap.server.client_cert_headers;
    if present {
        for n in [
            &names.subject,
            &names.sans,
            &names.fingerprint,
            &names.verified,
        ] {
            req.remove(n);
        }
    }
    let Some(cert) = &ctx.info.client_cert else {
        return Ok(());
    };
    let value = |v: &str| HeaderValue::from_bytes(v.as_bytes()).ok();
    if let Some(v) = value(&cert.subject) {
        req.set(names.subject.clone(), v)?;
    }
    if !cert.sans.is_empty() {
        if let Some(v) = value(&cert.sans.join(", ")) {
            req.set(names.sans.clone(), v)?;
        }
    }
    if let Some(v) = value(&cert.fingerprint) {
        req.set(names.fingerprint.clone(), v)?;
    }
    req.set(names.verified.clone(), HeaderValue::from_static("true"))?;
    Ok(())
}

/// The `X-Forwarded-For` sent upstream: the client's value (when it has one) with the
/// connecting peer appended. Built in one buffer, no formatting machinery.
fn upstream_forwarded_for(
    prev: Option<&http::HeaderValue>,
    peer: IpAddr,
) -> Result<http::HeaderValue, http::header::InvalidHeaderValue> {
    let prev = prev
        .and_then(|v| v.to_str().ok())
        .filter(|p| !p.trim().is_empty());
    let mut v = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + 39);
    if let Some(p) = prev {
        v.extend_from_slice(p.as_bytes());
        v.extend_from_slice(b", ");
    }
    match peer {
        IpAddr::V4(a) => {
            for (i, octet) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    v.push(b'.');
                }
                if octet >= 100 {
                    v.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    v.push(b'0' + (octet / 10) % 10);
                }
                v.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(a) => {
            use std::io::Write;
            let _ = write!(v, "{a}");
        }
    }
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn upstream_forwarded_for_appends_the_peer() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.100.9",
            "2001:db8::1",
        ] {
            let peer: IpAddr = ip.parse().unwrap();
            assert_eq!(upstream_forwarded_for(None, peer).unwrap(), ip);
            let prev = http::HeaderValue::from_static("203.0.113.7, 10.0.0.1");
            assert_eq!(
                upstream_forwarded_for(Some(&prev), peer).unwrap(),
                format!("203.0.113.7, 10.0.0.1, {ip}").as_str()
            );
            let blank = http::HeaderValue::from_static("  ");
            assert_eq!(upstream_forwarded_for(Some(&blank), peer).unwrap(), ip);
        }
        for n in 0..=255u8 {
            let peer = IpAddr::V4(Ipv4Addr::new(n, 0, n, 9));
            assert_eq!(
                upstream_forwarded_for(None, peer).unwrap(),
                peer.to_string().as_str()
            );
        }
    }
}
