//! What the gateway changes on the request it sends upstream (`upstream_request_filter`,
//! before the plugins' hooks): the route's prefix stripped, `Host`, `X-Forwarded-For`,
//! `-Proto` and `-Host` (a client's values kept only from a trusted proxy), `X-Request-Id`,
//! `traceparent` (and `tracestate` only when the client's trace is continued), and for a cached
//! route, the whole object asked for.

use std::net::IpAddr;

use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use super::ctx::Ctx;
use super::trace;
use crate::state::{Route, UpstreamHost};

/// Rewrites `req` (going upstream) for the request's route.
pub(super) fn upstream_request(s: &Session, req: &mut RequestHeader, ctx: &mut Ctx) -> Result<()> {
    // the route is borrowed for the route's parts, before the parts that update `ctx`
    let Some(route) = ctx.route.as_deref() else {
        return Ok(());
    };
    strip_prefix(route, req)?;
    match &route.upstream_host {
        // HTTP/1.0 clients may omit Host; the HTTP/1.1 request upstream must carry one
        UpstreamHost::Keep if !req.headers.contains_key(http::header::HOST) => {
            if let Some(b) = ctx.attempt.backend() {
                req.insert_header(http::header::HOST, &*b.label)?;
            }
        }
        UpstreamHost::Keep => {}
        UpstreamHost::Backend => {
            if let Some(b) = ctx.attempt.backend() {
                req.insert_header(http::header::HOST, &*b.label)?;
            }
        }
        UpstreamHost::Fixed(v) => req.insert_header(http::header::HOST, v.clone())?,
    }
    let (cert_headers, tracestate) = client_headers_to_drop(req, ctx);
    forwarded(s, req, ctx)?;
    client_cert_headers(req, ctx, cert_headers)?;
    req.insert_header("x-request-id", ctx.request_id_value())?;
    // the attempt's own span (when tracing) is the backend's parent
    let span = match ctx.spans.as_mut().and_then(|l| l.attempts.last_mut()) {
        Some(a) => {
            a.sent = Some(std::time::SystemTime::now());
            a.id
        }
        None => trace::random_u64(),
    };
    let traceparent = http::HeaderValue::from_bytes(&trace::upstream_header(ctx.trace(), span))
        .map_err(|e| Error::because(ErrorType::InternalError, "traceparent", e))?;
    req.insert_header("traceparent", traceparent)?;
    if tracestate && !ctx.trace().continued {
        req.remove_header("tracestate");
    }
    if s.cache.enabled() {
        // fetch the whole object: HEAD becomes GET, Range and If-* go, a revalidation asks
        // with the stored validators
        pingora_cache::filters::upstream::request_filter(req, s.cache.maybe_cache_meta());
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
fn forwarded(s: &Session, req: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    let trusted_peer = ctx.snap.server.is_trusted(ctx.peer_ip);
    let xff = upstream_forwarded_for(req.headers.get("x-forwarded-for"), ctx.peer_ip)
        .map_err(|e| Error::because(ErrorType::InternalError, "x-forwarded-for", e))?;
    req.insert_header("x-forwarded-for", xff)?;
    if !(trusted_peer && req.headers.contains_key("x-forwarded-proto")) {
        let proto = if ctx.ssl.is_some() { "https" } else { "http" };
        req.insert_header("x-forwarded-proto", http::HeaderValue::from_static(proto))?;
    }
    if !(trusted_peer && req.headers.contains_key("x-forwarded-host")) {
        if let Some(h) = s.req_header().headers.get(http::header::HOST).cloned() {
            req.insert_header("x-forwarded-host", h)?;
        }
    }
    Ok(())
}

/// Whether the client sent any of the client-certificate identity headers, and whether it
/// sent `tracestate`: one pass over its header names, so that the common request (none of
/// them) costs no hashed removal per name.
fn client_headers_to_drop(req: &RequestHeader, ctx: &Ctx) -> (bool, bool) {
    let names = &ctx.snap.server.client_cert_headers;
    let (mut cert, mut tracestate) = (false, false);
    for k in req.headers.keys() {
        cert |= *k == names.subject
            || *k == names.sans
            || *k == names.fingerprint
            || *k == names.verified;
        tracestate |= k.as_str() == "tracestate";
    }
    (cert, tracestate)
}

/// The verified client certificate's subject, SANs, fingerprint and `verified: true`, after
/// every copy the client sent of those headers is removed (a client cannot claim an identity;
/// `present`: it sent at least one of them).
fn client_cert_headers(req: &mut RequestHeader, ctx: &Ctx, present: bool) -> Result<()> {
    let names = &ctx.snap.server.client_cert_headers;
    if present {
        for n in [
            &names.subject,
            &names.sans,
            &names.fingerprint,
            &names.verified,
        ] {
            req.remove_header(n);
        }
    }
    let Some(cert) = &ctx.info.client_cert else {
        return Ok(());
    };
    let value = |v: &str| http::HeaderValue::from_bytes(v.as_bytes()).ok();
    if let Some(v) = value(&cert.subject) {
        req.insert_header(names.subject.clone(), v)?;
    }
    if !cert.sans.is_empty() {
        if let Some(v) = value(&cert.sans.join(", ")) {
            req.insert_header(names.sans.clone(), v)?;
        }
    }
    if let Some(v) = value(&cert.fingerprint) {
        req.insert_header(names.fingerprint.clone(), v)?;
    }
    req.insert_header(
        names.verified.clone(),
        http::HeaderValue::from_static("true"),
    )?;
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
