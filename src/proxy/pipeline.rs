//! Runs a route's plugin chain for each phase and writes gateway replies. Request hooks run in
//! chain order; response hooks and logging in reverse, and only for the plugins whose request
//! hook completed (`ChainState::ran`), so a plugin that replied does not filter its own reply but the
//! plugins before it do (a 401 from `jwt` still gets CORS headers from an earlier `cors`).

use bytes::Bytes;
use gatehouse_plugins::{Flow, PluginCtx, Reply, ReplyBody};
use pingora_error::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::ctx::Ctx;

type Slot = Option<Box<dyn std::any::Any + Send + Sync>>;

/// The chain's per-request state: one private slot per plugin of the route's chain, and how
/// many plugins' `request_filter` completed (the response hooks and logging run for those).
#[derive(Default)]
pub(crate) struct ChainState {
    slots: Vec<Slot>,
    ran: usize,
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
        let mut cx = PluginCtx::new(info, &mut chain.slots[i]);
        route.chain[i].response_filter(s, resp, &mut cx).await?;
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

/// The gateway's JSON error body: `{"error": message, "request_id": id}`.
fn error_body(message: &str, request_id: &str) -> Bytes {
    let v = serde_json::json!({ "error": message, "request_id": request_id });
    Bytes::from(v.to_string())
}

/// Writes a gateway reply: builds the head, runs the response hooks of the plugins that ran,
/// adds `X-Request-Id`, writes head and body (no body for HEAD).
pub(super) async fn write_reply(s: &mut Session, reply: Reply, ctx: &mut Ctx) -> Result<()> {
    let (body, content_type) = match reply.body {
        ReplyBody::Empty => (Bytes::new(), None),
        ReplyBody::Error(msg) => (
            error_body(&msg, &ctx.info.request_id),
            Some("application/json"),
        ),
        ReplyBody::Raw {
            content_type,
            bytes,
        } => (bytes, Some(content_type)),
    };
    let mut resp = ResponseHeader::build(reply.status, Some(4 + reply.headers.len()))?;
    if let Some(ct) = content_type {
        resp.insert_header(http::header::CONTENT_TYPE, ct)?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    for (n, v) in reply.headers {
        resp.append_header(n, v)?;
    }
    response_filter(s, &mut resp, ctx).await?;
    resp.insert_header("x-request-id", ctx.request_id_value())?;
    let head_only = s.req_header().method == http::Method::HEAD || body.is_empty();
    s.write_response_header(Box::new(resp), head_only).await?;
    if !head_only {
        s.write_response_body(Some(body), true).await?;
    }
    Ok(())
}
