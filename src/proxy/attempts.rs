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
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::ctx::Ctx;
use super::error_page::Failure;
use crate::metrics::Metrics;
use crate::upstream::breaker::State;
use crate::upstream::group::now_ms;
use crate::upstream::group::Member;
use crate::upstream::retry::Reason;
use crate::upstream::HashKey;

/// A request's upstream attempts so far.
#[derive(Default)]
pub(crate) struct AttemptState {
    /// The backend of the current (last) attempt.
    backend: Option<Arc<Member>>,
    /// Backends tried by this request (a retry goes elsewhere).
    tried: Vec<SocketAddr>,
    /// Upstream attempts made so far.
    attempts: u32,
    /// Whether the current attempt's outcome went to the breaker.
    recorded: bool,
    /// Set when an attempt is ended to retry on this upstream status.
    retry_status: Option<u16>,
    /// Set when a pooled upstream connection turned out to be closed by the backend: the next
    /// attempt is the same request on a fresh connection, not a retry of the backend's failure.
    fresh_connection: bool,
    /// When the current attempt started (backend chosen).
    started: Option<Instant>,
    /// Time spent waiting for upstream response headers, all attempts.
    upstream_time: Duration,
}

impl AttemptState {
    /// The next attempt goes to `b`: it is in flight there (the previous one no longer) until
    /// the next attempt or the request's end.
    fn begin(&mut self, b: Arc<Member>) {
        b.begin();
        if let Some(prev) = self.backend.replace(b) {
            prev.end();
        }
    }
}

impl Drop for AttemptState {
    fn drop(&mut self) {
        if let Some(b) = &self.backend {
            b.end();
        }
    }
}

impl AttemptState {
    /// The backend of the last attempt, if one was chosen.
    pub(crate) fn backend(&self) -> Option<&Arc<Member>> {
        self.backend.as_ref()
    }

    /// Attempts after the first.
    pub(crate) fn retries(&self) -> u32 {
        self.attempts.saturating_sub(1)
    }

    /// Time spent waiting for upstream response heads, if any attempt started.
    pub(crate) fn upstream_time(&self) -> Option<Duration> {
        self.started.map(|_| self.upstream_time)
    }
}

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
pub(super) async fn upstream_peer(
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
    // a plugin's choice, or the route's own group (no extra reference count without a choice)
    let chosen = ctx.chosen.clone();
    let group = chosen.as_ref().unwrap_or(&route.upstream);
    // the same attempt again on a fresh connection: no budget, no backoff, not a retry
    let fresh = std::mem::take(&mut ctx.attempt.fresh_connection);
    if !fresh {
        if ctx.attempt.attempts == 0 {
            group.budget.record_request(now_ms());
        } else {
            let delay = group.retry.delay(ctx.attempt.attempts, jitter());
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
    }
    let remaining = match route.timeout {
        Some(total) => {
            let left = total.saturating_sub(ctx.start.elapsed());
            if left.is_zero() {
                ctx.failure = Some(Failure::RouteTimeout);
                return Err(Failure::RouteTimeout.error(504));
            }
            Some(left)
        }
        None => None,
    };
    if !fresh {
        ctx.attempt.attempts += 1;
    }
    ctx.attempt.recorded = false;
    ctx.attempt.started = Some(Instant::now());
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
    let backend = group.select(key, &ctx.attempt.tried, &mut |b, st| {
        report(metrics, name, b, st)
    });
    let Some(backend) = backend else {
        ctx.failure = Some(Failure::NoHealthyBackend);
        return Err(Failure::NoHealthyBackend.error(503));
    };
    ctx.attempt.tried.push(backend.addr);
    let mut peer = group.transport.peer(backend.addr);
    let t = &group.timeouts;
    let cap = |d: Duration| Some(remaining.map_or(d, |r| d.min(r)));
    peer.options.connection_timeout = cap(t.connect);
    peer.options.read_timeout = cap(t.read);
    peer.options.write_timeout = cap(t.write);
    peer.options.idle_timeout = Some(t.idle);
    let sent = super::forward::SentNames::of(ctx, &s.req_header().headers);
    peer.options.http_upstream_request_policy = super::forward::upstream_policy(sent);
    if let Some(log) = ctx.spans.as_mut() {
        log.end_attempt(None, Some("abandoned"));
        log.attempts.push(super::spans::AttemptSpan {
            id: super::trace::random_u64(),
            start: std::time::SystemTime::now(),
            end: None,
            backend: backend.label.clone(),
            number: ctx.attempt.attempts,
            sent: None,
            status: None,
            error: None,
        });
    }
    ctx.attempt.begin(backend);
    Ok(Box::new(peer))
}

/// Counts a failed attempt by kind (connect, timeout, reset, 5xx).
fn upstream_error(metrics: &Metrics, ctx: &Ctx, kind: &str) {
    if let Some(g) = ctx.group() {
        metrics
            .upstream
            .errors
            .with_label_values(&[&g.name, kind])
            .inc();
    }
}

/// Feeds one attempt's outcome to the backend's breaker (once per attempt).
fn record(metrics: &Metrics, ctx: &mut Ctx, success: bool) {
    if ctx.attempt.recorded {
        return;
    }
    ctx.attempt.recorded = true;
    let (Some(g), Some(b)) = (ctx.group(), &ctx.attempt.backend) else {
        return;
    };
    if !success {
        b.failed();
    }
    if let Some(br) = &b.breaker {
        if let Some(st) = br.record(success, now_ms()) {
            report(metrics, &g.name, b, st);
        }
    }
}

/// Whether this failure may be retried now (and takes the retry from the budget if so).
fn may_retry(metrics: &Metrics, s: &Session, ctx: &Ctx, reason: Reason) -> bool {
    let Some(g) = ctx.group() else {
        return false;
    };
    let policy = &g.retry;
    if !policy.covers(reason) || ctx.attempt.attempts > policy.attempts {
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
    if ctx.attempt.tried.len() >= g.backends.len() {
        return false; // every backend was tried
    }
    if (ctx.route.as_ref())
        .and_then(|r| r.timeout)
        .is_some_and(|t| ctx.start.elapsed() >= t)
    {
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
pub(super) fn fail_to_connect(
    metrics: &Metrics,
    s: &Session,
    _peer: &HttpPeer,
    ctx: &mut Ctx,
    mut e: Box<Error>,
) -> Box<Error> {
    upstream_error(metrics, ctx, "connect");
    record(metrics, ctx, false);
    if let Some(log) = ctx.spans.as_mut() {
        log.end_attempt(None, Some("connect"));
    }
    let retry = may_retry(metrics, s, ctx, Reason::ConnectFailure);
    e.set_retry(retry);
    e
}

/// Pingora's `error_while_proxy`: the attempt failed after the connection was up.
pub(super) fn error_while_proxy(
    metrics: &Metrics,
    peer: &HttpPeer,
    s: &Session,
    e: Box<Error>,
    ctx: &mut Ctx,
    client_reused: bool,
) -> Box<Error> {
    let mut e = e.more_context(format!("Peer: {peer}"));
    let reason = match e.etype() {
        ErrorType::HTTPStatus(code) if ctx.attempt.retry_status == Some(*code) => {
            Reason::Status(*code)
        }
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => Reason::Timeout,
        _ => Reason::Reset,
    };
    if e.esource() == &pingora_error::ErrorSource::Downstream {
        e.set_retry(false);
        return e;
    }
    if let Some(log) = ctx.spans.as_mut() {
        match reason {
            Reason::Status(code) => log.end_attempt(Some(code), None),
            Reason::Timeout => log.end_attempt(None, Some("timeout")),
            _ => log.end_attempt(None, Some("reset")),
        }
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
        ctx.attempt.tried.pop();
        ctx.attempt.recorded = true;
        ctx.attempt.fresh_connection = true;
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
    ctx.attempt.retry_status = None;
    e
}

/// Pingora's `upstream_response_filter`: a 5xx counts as a failed attempt, and a status the
/// group retries on ends this attempt (nothing has gone to the client yet) when a retry is
/// allowed; otherwise the response goes through.
pub(super) fn upstream_response(
    metrics: &Metrics,
    s: &Session,
    resp: &ResponseHeader,
    ctx: &mut Ctx,
) -> Result<()> {
    let status = resp.status.as_u16();
    if let Some(start) = ctx.attempt.started {
        let d = start.elapsed();
        ctx.attempt.upstream_time += d;
        if let Some(g) = ctx.group() {
            g.latency
                .get_or_init(|| metrics.upstream.duration.with_label_values(&[&g.name]))
                .observe(d.as_secs_f64());
        }
    }
    if let Some(log) = ctx.spans.as_mut() {
        if !resp.status.is_informational() {
            log.end_attempt(Some(status), None);
        }
    }
    if status < 500 || resp.status.is_informational() {
        record(metrics, ctx, true);
        return Ok(());
    }
    upstream_error(metrics, ctx, "5xx");
    record(metrics, ctx, false);
    let Some(g) = ctx.group() else {
        return Ok(());
    };
    if g.retry.covers(Reason::Status(status)) && ctx.attempt.attempts <= g.retry.attempts {
        // decided in error_while_proxy, which also checks method, budget and backends left
        let would = idempotent(&s.req_header().method)
            && !s.as_ref().retry_buffer_truncated()
            && ctx.attempt.tried.len() < g.backends.len();
        if would {
            ctx.attempt.retry_status = Some(status);
            ctx.attempt.recorded = true;
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "retrying on another backend",
            ));
        }
    }
    Ok(())
}
