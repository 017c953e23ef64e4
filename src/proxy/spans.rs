//! What a request records for its spans when tracing is on ([`crate::otlp`]): its server span
//! id and start, and one entry per upstream attempt. Turned into spans (or nothing, when not
//! sampled) by [`finish`] when the request ends.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use pingora_proxy::Session;

use super::ctx::Ctx;
use super::trace;

/// One upstream attempt.
pub(crate) struct AttemptSpan {
    pub(crate) id: u64,
    pub(crate) start: SystemTime,
    pub(crate) end: Option<SystemTime>,
    pub(crate) backend: Arc<str>,
    pub(crate) number: u32,
    /// When the request went out on the connection (connected, or a pooled one taken).
    pub(crate) sent: Option<SystemTime>,
    /// What ended it: the upstream's status, or the failure.
    pub(crate) status: Option<u16>,
    pub(crate) error: Option<&'static str>,
}

/// A request's spans in the making.
pub(crate) struct SpanLog {
    pub(crate) server_id: u64,
    pub(crate) start: SystemTime,
    pub(crate) attempts: Vec<AttemptSpan>,
}

impl SpanLog {
    pub(crate) fn new() -> Box<SpanLog> {
        Box::new(SpanLog {
            server_id: trace::random_u64(),
            start: SystemTime::now(),
            attempts: Vec::new(),
        })
    }

    /// Ends the current attempt with an upstream status or a failure (once).
    pub(crate) fn end_attempt(&mut self, status: Option<u16>, error: Option<&'static str>) {
        if let Some(a) = self.attempts.last_mut() {
            if a.end.is_none() {
                a.end = Some(SystemTime::now());
                a.status = status;
                a.error = error;
            }
        }
    }
}

/// The uniform value in [0, 1) a trace id gives (its last 8 bytes), as OpenTelemetry's
/// ratio sampler reads it: every instance decides the same for one trace.
pub(crate) fn roll(trace_id: &[u8; 16]) -> f64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&trace_id[8..]);
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Builds the request's spans and queues them when the request is sampled.
pub(crate) fn finish(s: &Session, ctx: &mut Ctx, status: u16) {
    let Some(tracer) = ctx.snap.tracing.clone() else {
        return;
    };
    let Some(mut log) = ctx.spans.take() else {
        return;
    };
    let t = *ctx.trace();
    let id = t.trace_id_bytes();
    // a 5xx, or no response at all (the client went away, the gateway failed)
    let error = status >= 500 || status == 0;
    let parent = t.continued.then(|| t.sampled());
    if !tracer.sampled(parent, error, roll(&id)) {
        return;
    }
    let now = SystemTime::now();
    let req = s.req_header();
    let route = ctx.route.as_ref().map_or("none", |r| &*r.id).to_string();
    let mut attrs = vec![
        KeyValue::new("http.request.method", req.method.as_str().to_string()),
        KeyValue::new("http.route", route.clone()),
        KeyValue::new("http.response.status_code", i64::from(status)),
        KeyValue::new("url.path", req.uri.path().to_string()),
        KeyValue::new(
            "url.scheme",
            if ctx.ssl.is_some() { "https" } else { "http" },
        ),
        KeyValue::new("client.address", ctx.info.client_ip.to_string()),
        KeyValue::new(
            "network.protocol.version",
            match req.version {
                http::Version::HTTP_2 => "2",
                http::Version::HTTP_10 => "1.0",
                _ => "1.1",
            },
        ),
        KeyValue::new("gatehouse.request_id", ctx.info.request_id.clone()),
    ];
    if let Some(host) = super::logging::host_of(s) {
        attrs.push(KeyValue::new("server.address", host.to_string()));
    }
    if let Some(ua) = req
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        attrs.push(KeyValue::new("user_agent.original", ua.to_string()));
    }
    if let Some(c) = ctx.cache.result() {
        attrs.push(KeyValue::new("gatehouse.cache", c));
    }
    for (plugin, result) in &ctx.info.outcomes {
        attrs.push(KeyValue::new(format!("gatehouse.plugin.{plugin}"), *result));
    }
    let failure = ctx.failure.map(|f| f.as_str().to_string());
    if let Some(f) = &failure {
        attrs.push(KeyValue::new("error.type", f.clone()));
    }
    log.end_attempt(None, None);
    let mut spans = Vec::with_capacity(1 + log.attempts.len());
    let mut previous: Option<String> = None;
    for a in &log.attempts {
        let mut at = vec![
            KeyValue::new("http.request.method", req.method.as_str().to_string()),
            KeyValue::new("server.address", a.backend.to_string()),
            KeyValue::new("gatehouse.attempt", i64::from(a.number)),
        ];
        if let Some(st) = a.status {
            at.push(KeyValue::new("http.response.status_code", i64::from(st)));
        }
        if let Some(r) = &previous {
            at.push(KeyValue::new("gatehouse.retry_reason", r.clone()));
        }
        let outcome = match (a.status, a.error) {
            (_, Some(e)) => Some(e.to_string()),
            (Some(st), None) if st >= 500 => Some(format!("status {st}")),
            _ => None,
        };
        if let Some(e) = a.error {
            at.push(KeyValue::new("error.type", e));
        }
        let mut span = tracer.span(
            id,
            a.id,
            Some(log.server_id),
            false,
            SpanKind::Client,
            Cow::Owned(format!("{} {}", req.method.as_str(), a.backend)),
            a.start,
            a.end.unwrap_or(now),
            at,
            outcome.clone(),
        );
        if let Some(sent) = a.sent {
            // connect time = this event - the span's start; time to first byte = end - this
            span.events.events.push(opentelemetry::trace::Event::new(
                "request sent",
                sent,
                Vec::new(),
                0,
            ));
        }
        spans.push(span);
        previous = outcome;
    }
    spans.insert(
        0,
        tracer.span(
            id,
            log.server_id,
            t.parent_span_id(),
            t.continued,
            SpanKind::Server,
            Cow::Owned(route),
            log.start,
            now,
            attrs,
            error.then(|| failure.unwrap_or_else(|| format!("status {status}"))),
        ),
    );
    tracer.send(spans);
}
