//! Runs a route's plugin chain for each phase and writes gateway replies. Request hooks run in
//! chain order; response hooks and logging in reverse, and only for the plugins whose request
//! hook completed (`ChainState::ran`), so a plugin that replied does not filter its own reply but the
//! plugins before it do (a 401 from `jwt` still gets CORS headers from an earlier `cors`).

use bytes::Bytes;
use gatehouse_plugins::api::{edit_response, RequestBody, MAX_BUFFERED_BODY};
use gatehouse_plugins::{Flow, PluginCtx, Reply, ReplyBody};
use pingora_error::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::ctx::Ctx;
use super::names::X_REQUEST_ID;

type Slot = Option<Box<dyn std::any::Any + Send + Sync>>;

/// The chain's per-request state: one private slot per plugin of the route's chain, and how
/// many plugins' `request_filter` completed (the response hooks and logging run for those).
#[derive(Default)]
pub(crate) struct ChainState {
    slots: Vec<Slot>,
    ran: usize,
    /// Plugins whose response hook failed (by chain index; empty until one does): the
    /// gateway's error reply that follows goes through the others' hooks, not theirs again.
    response_failed: Vec<usize>,
}

/// Runs the request hooks; `Some(reply)` when a plugin answered.
pub(super) async fn request_filter(s: &mut Session, ctx: &mut Ctx) -> Result<Option<Reply>> {
    let Ctx {
        route, info, chain, ..
    } = ctx;
    let Some(route) = route else { return Ok(None) };
    chain.slots.resize_with(route.chain.len(), || None);
    for (i, p) in route.chain.iter().enumerate() {
        let mut cx = PluginCtx::new(info, &mut chain.slots[i]);
        match p.request_filter(s, &mut cx).await? {
            Flow::Continue => chain.ran = i + 1,
            Flow::Respond(reply) => return Ok(Some(reply)),
        }
    }
    Ok(None)
}

/// The body step ([`gatehouse_plugins::Plugin::request_body_limit`]): when a plugin of the
/// chain asks for the request body, reads it (bounded) and runs those plugins' body hooks in
/// chain order; `Some(reply)` when one answered. What was read is replayed upstream by
/// Pingora's retry buffer, then the rest of the body follows.
pub(super) async fn request_body(s: &mut Session, ctx: &mut Ctx) -> Result<Option<Reply>> {
    let Ctx {
        route, info, chain, ..
    } = ctx;
    let Some(route) = route else { return Ok(None) };
    let Some(limit) = (route.chain.iter().take(chain.ran))
        .filter_map(|p| p.request_body_limit())
        .max()
    else {
        return Ok(None);
    };
    let body = match read_body(s, limit.min(MAX_BUFFERED_BODY)).await? {
        Ok(body) => body,
        Err(reply) => return Ok(Some(reply)),
    };
    for (i, p) in route.chain.iter().enumerate().take(chain.ran) {
        if p.request_body_limit().is_none() {
            continue;
        }
        let mut cx = PluginCtx::new(info, &mut chain.slots[i]);
        if let Flow::Respond(reply) = p.request_body(s, &body, &mut cx).await? {
            return Ok(Some(reply));
        }
    }
    Ok(None)
}

/// Reads up to `limit` + 1 bytes of the request body into Pingora's retry buffer (so that they
/// still go upstream). A body declared longer than `limit` is not read. `Err(reply)` (413)
/// when what was read overflowed the retry buffer: it could no longer be sent on intact.
async fn read_body(
    s: &mut Session,
    limit: usize,
) -> Result<std::result::Result<RequestBody, Reply>> {
    let declared = s
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let ds = s.as_downstream_mut();
    if ds.is_body_empty() {
        return Ok(Ok(RequestBody {
            bytes: Bytes::new(),
            complete: true,
            declared,
        }));
    }
    if declared.is_some_and(|n| n > limit as u64) {
        return Ok(Ok(RequestBody {
            bytes: Bytes::new(),
            complete: false,
            declared,
        }));
    }
    ds.enable_retry_buffering();
    let mut parts: Vec<Bytes> = Vec::new();
    let mut read = 0;
    let mut complete = false;
    while read <= limit {
        match ds.read_request_body().await? {
            Some(b) => {
                read += b.len();
                parts.push(b);
                if ds.is_body_done() {
                    complete = read <= limit;
                    break;
                }
            }
            None => {
                complete = true;
                break;
            }
        }
    }
    if !complete && ds.retry_buffer_truncated() {
        return Ok(Err(Reply::error(413, "request body too large to inspect")));
    }
    let bytes = match parts.len() {
        0 => Bytes::new(),
        1 => parts.swap_remove(0),
        _ => {
            let mut all = bytes::BytesMut::with_capacity(read);
            for p in &parts {
                all.extend_from_slice(p);
            }
            all.freeze()
        }
    };
    Ok(Ok(RequestBody {
        bytes,
        complete,
        declared,
    }))
}

/// Runs the upstream-request hooks in chain order.
pub(super) async fn upstream_request_filter(
    s: &mut Session,
    req: &mut RequestHeader,
    ctx: &mut Ctx,
) -> Result<()> {
    let Ctx {
        route, info, chain, ..
    } = ctx;
    let Some(route) = route else { return Ok(()) };
    for (i, p) in route.chain.iter().enumerate().take(chain.ran) {
        let mut cx = PluginCtx::new(info, &mut chain.slots[i]);
        p.upstream_request_filter(s, req, &mut cx).await?;
    }
    Ok(())
}

/// Runs the response hooks in reverse order.
pub(super) async fn response_filter(
    s: &mut Session,
    resp: &mut ResponseHeader,
    ctx: &mut Ctx,
) -> Result<()> {
    let Ctx {
        route, info, chain, ..
    } = ctx;
    let Some(route) = route else { return Ok(()) };
    for i in (0..chain.ran).rev() {
        if chain.response_failed.contains(&i) {
            continue;
        }
        let mut cx = PluginCtx::new(info, &mut chain.slots[i]);
        if let Err(e) = route.chain[i].response_filter(s, resp, &mut cx).await {
            chain.response_failed.push(i);
            return Err(e);
        }
    }
    Ok(())
}

/// Runs the logging hooks in reverse order.
pub(super) async fn logging(s: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
    let Ctx {
        route, info, chain, ..
    } = ctx;
    let Some(route) = route else { return };
    for i in (0..chain.ran).rev() {
        let mut cx = PluginCtx::new(info, &mut chain.slots[i]);
        route.chain[i].logging(s, e, &mut cx).await;
    }
}

/// The gateway's JSON error body: `{"error": message, "request_id": id}`, written in one
/// buffer (no `serde_json::Value` map: this is on the path of every answer the gateway gives
/// itself), the strings escaped as the access log escapes them.
fn error_body(message: &str, request_id: &str) -> Bytes {
    let mut v = Vec::with_capacity(message.len() + request_id.len() + 32);
    v.extend_from_slice(b"{\"error\":");
    crate::access_log::json_str(&mut v, message);
    v.extend_from_slice(b",\"request_id\":");
    crate::access_log::json_str(&mut v, request_id);
    v.push(b'}');
    Bytes::from(v)
}

/// Writes a gateway reply: builds the head, runs the response hooks of the plugins that ran,
/// adds `X-Request-Id`, writes head and body (no body for HEAD).
pub(super) async fn write_reply(s: &mut Session, reply: Reply, ctx: &mut Ctx) -> Result<()> {
    if reply.status >= 400 && super::grpc::is_grpc(s.req_header()) {
        return write_grpc_reply(s, reply, ctx).await;
    }
    let (body, content_type) = match reply.body {
        ReplyBody::Empty => (Bytes::new(), None),
        ReplyBody::Error(msg) => (
            error_body(&msg, &ctx.info.request_id),
            Some(http::HeaderValue::from_static("application/json")),
        ),
        ReplyBody::Raw {
            content_type,
            bytes,
        } => (bytes, Some(content_type)),
    };
    let mut resp = answer_header(ctx, reply.status, 4 + reply.headers.len())?;
    edit_response(&mut resp, 0, |h| {
        if let Some(ct) = content_type {
            h.set(http::header::CONTENT_TYPE, ct)?;
        }
        h.set(http::header::CONTENT_LENGTH, body.len().into())?;
        for (n, v) in reply.headers {
            h.add(n, v)?;
        }
        Ok(())
    })?;
    response_filter(s, &mut resp, ctx).await?;
    if super::conn::pipelined(s) {
        s.set_keepalive(None);
    }
    let id = ctx.request_id_value();
    edit_response(&mut resp, 1, |h| h.set(X_REQUEST_ID, id))?;
    let head_only = s.req_header().method == http::Method::HEAD || body.is_empty();
    s.write_response_header(Box::new(resp), head_only).await?;
    if !head_only {
        s.write_response_body(Some(body), true).await?;
    }
    settle_request_body(s).await;
    Ok(())
}

/// The head of an answer the gateway gives itself, with room for `n` headers: without a case
/// map unless `server.preserve_header_case` (the names it sets are spelled the same either
/// way; a plugin's mixed-case header name then goes out lowercase).
fn answer_header(ctx: &Ctx, status: u16, n: usize) -> Result<ResponseHeader> {
    if ctx.snap.server.preserve_header_case {
        ResponseHeader::build(status, Some(n))
    } else {
        ResponseHeader::build_no_case(status, Some(n))
    }
}

/// After a gateway reply to an HTTP/2 request whose body was not read: read what is left of a
/// small body (bounded in bytes and time). An h2 stream dropped with its request side still
/// open is reset (`RST_STREAM(CANCEL)`), and some clients then report the reset instead of the
/// complete reply they already have. An HTTP/1.1 connection is closed instead (`Stop::close`).
async fn settle_request_body(s: &mut Session) {
    const MAX_BYTES: usize = 64 * 1024;
    const MAX_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
    let ds = s.as_downstream_mut();
    if !ds.is_http2() || ds.is_body_done() {
        return;
    }
    let _ = tokio::time::timeout(MAX_WAIT, async {
        let mut read = 0;
        while read <= MAX_BYTES && !ds.is_body_done() {
            match ds.read_request_body().await {
                Ok(Some(b)) => read += b.len(),
                _ => break,
            }
        }
    })
    .await;
}

/// [`write_reply`] for a gRPC call: a Trailers-Only response (see [`super::grpc`]).
async fn write_grpc_reply(s: &mut Session, reply: Reply, ctx: &mut Ctx) -> Result<()> {
    let message = match &reply.body {
        ReplyBody::Error(msg) => msg.as_str(),
        _ => http::StatusCode::from_u16(reply.status)
            .ok()
            .and_then(|c| c.canonical_reason())
            .unwrap_or("error"),
    };
    let mut resp = answer_header(ctx, 200, 4 + reply.headers.len())?;
    resp.insert_header(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    )?;
    resp.insert_header(
        "grpc-status",
        super::grpc::status_code(reply.status).to_string(),
    )?;
    resp.insert_header("grpc-message", super::grpc::encode_message(message))?;
    if !s.as_downstream().is_http2() {
        // gRPC needs HTTP/2; an HTTP/1.1 caller still gets a well-delimited response
        resp.insert_header(http::header::CONTENT_LENGTH, 0)?;
    }
    for (n, v) in reply.headers {
        resp.append_header(n, v)?;
    }
    response_filter(s, &mut resp, ctx).await?;
    let id = ctx.request_id_value();
    edit_response(&mut resp, 1, |h| h.set(X_REQUEST_ID, id))?;
    match s.as_downstream_mut() {
        // one HEADERS frame that ends the stream (Pingora's proxy session would end it with a
        // separate empty DATA frame, which gRPC clients read as "no trailers")
        pingora_core::protocols::http::ServerSession::H2(h2) => {
            h2.write_response_header(Box::new(resp), true)?;
        }
        _ => {
            s.write_response_header(Box::new(resp), true).await?;
            s.write_response_body(None, true).await?;
        }
    }
    settle_request_body(s).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_body_is_the_json_object_with_escaping() {
        for (msg, id) in [
            ("no route", "0123456789abcdef"),
            ("quote \" and \\ and \n and \u{1} and é", "id"),
            ("", ""),
        ] {
            let body = super::error_body(msg, id);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v, serde_json::json!({ "error": msg, "request_id": id }));
        }
    }
}
