//! Upstream attempts: backend choice (health + breaker), the outcome of each attempt (fed to
//! the backend's circuit breaker), and whether a failed attempt is retried on another backend.
//!
//! Retry rules: the failure reason must be listed in the group's `retry.on`; a connect failure
//! is always safe to retry; every other failure only for idempotent methods (GET, HEAD,
//! OPTIONS, PUT, DELETE, TRACE) whose request body is still fully buffered, so a POST that
//! reached a backend is never sent twice. Retries go to backends not tried yet, stay within
//! `retry.attempts`, the group's retry budget and the route's `timeout`, and wait
//! `retry.backoff` (doubled per try, jittered, capped) first.

use std::hash::{BuildHasher, Hasher};

use http::Method;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::ctx::Ctx;
use crate::metrics::Metrics;
use crate::upstream::breaker::State;
use crate::upstream::group::now_ms;
use crate::upstream::group::Member;
use crate::upstream::retry::Reason;
use crate::upstream::HashKey;

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn jitter() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    (h.finish() % 1000) as f64 / 1000.0
}

fn report(metrics: &Metrics, upstream: &str, b: &Member, st: State) {
    match st {
        State::Open => log::warn!(
            "upstream {upstream} backend {}: circuit breaker open",
            b.label
        ),
        _ => log::info!(
            "upstream {upstream} backend {}: circuit breaker {}",
            b.label,
            st.as_str()
        ),
    }
    metrics.breaker_transition(upstream, &b.label, st as i64, st.as_str());
}

/// Chooses the backend for the next attempt (Pingora's `upstream_peer`).
pub async fn upstream_peer(
    metrics: &Metrics,
    s: &mut Session,
    ctx: &mut Ctx,
) -> Result<Box<HttpPeer>> {
    let Some(route) = ctx.route.clone() else {
        return Err(Error::explain(
            ErrorType::InternalError,
            "no route at upstream_peer",
        ));
    };
    let group = &route.upstream;
    // the same attempt again on a fresh connection: no budget, no backoff, not a retry
    let fresh = std::mem::take(&mut ctx.fresh_connection_retry);
    if !fresh {
        if ctx.attempts == 0 {
            group.budget.record_request(now_ms());
        } else {
            let delay = group.retry.delay(ctx.attempts, jitter());
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
    }
    let remaining = match route.timeout {
        Some(total) => {
            let left = total.saturating_sub(ctx.start.elapsed());
            if left.is_zero() {
                ctx.error = Some("route timeout");
                return Err(Error::explain(ErrorType::HTTPStatus(504), "route timeout"));
            }
            Some(left)
        }
        None => None,
    };
    if !fresh {
        ctx.attempts += 1;
    }
    ctx.attempt_recorded = false;
    ctx.attempt_start = Some(std::time::Instant::now());
    let ip_key;
    let key: &[u8] = match &group.hash_key {
        None => b"",
        Some(HashKey::ClientIp) => {
            ip_key = ctx.info.client_ip.to_string();
            ip_key.as_bytes()
        }
        Some(HashKey::Path) => s.req_header().uri.path().as_bytes(),
        Some(HashKey::Header(h)) => s.req_header().headers.get(h).map_or(b"", |v| v.as_bytes()),
    };
    let name = &group.name;
    let backend = group.select(key, &ctx.tried, &mut |b, st| report(metrics, name, b, st));
    let Some(backend) = backend else {
        ctx.error = Some("no healthy backend");
        return Err(Error::explain(
            ErrorType::HTTPStatus(503),
            "no healthy backend",
        ));
    };
    ctx.tried.push(backend.addr);
    let mut peer = HttpPeer::new(backend.addr, false, String::new());
    let t = &group.timeouts;
    let cap = |d: std::time::Duration| Some(remaining.map_or(d, |r| d.min(r)));
    peer.options.connection_timeout = cap(t.connect);
    peer.options.read_timeout = cap(t.read);
    peer.options.write_timeout = cap(t.write);
    peer.options.idle_timeout = Some(t.idle);
    ctx.backend = Some(backend);
    Ok(Box::new(peer))
}

/// Counts a failed attempt by kind (connect, timeout, reset, 5xx).
fn upstream_error(metrics: &Metrics, ctx: &Ctx, kind: &str) {
    if let Some(route) = &ctx.route {
        metrics
            .upstream
            .errors
            .with_label_values(&[&route.upstream.name, kind])
            .inc();
    }
}

/// Feeds one attempt's outcome to the backend's breaker (once per attempt).
fn record(metrics: &Metrics, ctx: &mut Ctx, success: bool) {
    if ctx.attempt_recorded {
        return;
    }
    ctx.attempt_recorded = true;
    let (Some(route), Some(b)) = (&ctx.route, &ctx.backend) else {
        return;
    };
    if let Some(br) = &b.breaker {
        if let Some(st) = br.record(success, now_ms()) {
            report(metrics, &route.upstream.name, b, st);
        }
    }
}

/// Whether this failure may be retried now (and takes the retry from the budget if so).
fn may_retry(metrics: &Metrics, s: &Session, ctx: &Ctx, reason: Reason) -> bool {
    let Some(route) = &ctx.route else {
        return false;
    };
    let g = &route.upstream;
    let policy = &g.retry;
    if !policy.covers(reason) || ctx.attempts > policy.attempts {
        return false;
    }
    if s.response_written().is_some() {
        return false; // part of a response already went to the client
    }
    if reason != Reason::ConnectFailure
        && (!idempotent(&s.req_header().method) || s.as_ref().retry_buffer_truncated())
    {
        return false;
    }
    if ctx.tried.len() >= g.backends.len() {
        return false; // every backend was tried
    }
    if route.timeout.is_some_and(|t| ctx.start.elapsed() >= t) {
        return false;
    }
    if !g.budget.try_retry(policy.budget, now_ms()) {
        return false;
    }
    metrics
        .upstream
        .retries
        .with_label_values(&[&g.name, reason.label()])
        .inc();
    true
}

/// Pingora's `fail_to_connect`: the attempt failed before anything was sent.
pub fn fail_to_connect(
    metrics: &Metrics,
    s: &Session,
    _peer: &HttpPeer,
    ctx: &mut Ctx,
    mut e: Box<Error>,
) -> Box<Error> {
    upstream_error(metrics, ctx, "connect");
    record(metrics, ctx, false);
    let retry = may_retry(metrics, s, ctx, Reason::ConnectFailure);
    e.set_retry(retry);
    e
}

/// Pingora's `error_while_proxy`: the attempt failed after the connection was up.
pub fn error_while_proxy(
    metrics: &Metrics,
    peer: &HttpPeer,
    s: &Session,
    e: Box<Error>,
    ctx: &mut Ctx,
    client_reused: bool,
) -> Box<Error> {
    let mut e = e.more_context(format!("Peer: {peer}"));
    let reason = match e.etype() {
        ErrorType::HTTPStatus(code) if ctx.retry_status == Some(*code) => Reason::Status(*code),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => Reason::Timeout,
        _ => Reason::Reset,
    };
    if e.esource() == &pingora_error::ErrorSource::Downstream {
        e.set_retry(false);
        return e;
    }
    // A pooled connection the backend had already closed (nothing read back): not the
    // backend's failure. The request goes again on a fresh connection, to the same backends
    // (with one backend, excluding it would answer 503 for a healthy backend).
    if reason == Reason::Reset
        && client_reused
        && s.response_written().is_none()
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
        && idempotent(&s.req_header().method)
        && !s.as_ref().retry_buffer_truncated()
    {
        ctx.tried.pop();
        ctx.attempt_recorded = true;
        ctx.fresh_connection_retry = true;
        e.set_retry(true);
        return e;
    }
    match reason {
        Reason::Timeout => upstream_error(metrics, ctx, "timeout"),
        Reason::Reset => upstream_error(metrics, ctx, "reset"),
        // a 5xx that ends the attempt was counted when it arrived
        _ => {}
    }
    record(metrics, ctx, false);
    let retry = may_retry(metrics, s, ctx, reason);
    e.set_retry(retry);
    ctx.retry_status = None;
    e
}

/// Pingora's `upstream_response_filter`: a 5xx counts as a failed attempt, and a status the
/// group retries on ends this attempt (nothing has gone to the client yet) when a retry is
/// allowed; otherwise the response goes through.
pub fn upstream_response(
    metrics: &Metrics,
    s: &Session,
    resp: &ResponseHeader,
    ctx: &mut Ctx,
) -> Result<()> {
    let status = resp.status.as_u16();
    if let (Some(start), Some(route)) = (ctx.attempt_start, &ctx.route) {
        let d = start.elapsed();
        ctx.upstream_time += d;
        let g = &route.upstream;
        g.latency
            .get_or_init(|| metrics.upstream.duration.with_label_values(&[&g.name]))
            .observe(d.as_secs_f64());
    }
    if status < 500 || resp.status.is_informational() {
        record(metrics, ctx, true);
        return Ok(());
    }
    upstream_error(metrics, ctx, "5xx");
    record(metrics, ctx, false);
    let Some(route) = &ctx.route else {
        return Ok(());
    };
    if route.upstream.retry.covers(Reason::Status(status))
        && ctx.attempts <= route.upstream.retry.attempts
    {
        // decided in error_while_proxy, which also checks method, budget and backends left
        let would = idempotent(&s.req_header().method)
            && !s.as_ref().retry_buffer_truncated()
            && ctx.tried.len() < route.upstream.backends.len();
        if would {
            ctx.retry_status = Some(status);
            ctx.attempt_recorded = true;
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "retrying on another backend",
            ));
        }
    }
    Ok(())
}
