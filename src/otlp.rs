//! Distributed tracing: spans exported over OTLP/HTTP (protobuf) with the OpenTelemetry crates.
//!
//! Each request makes one server span (named after its route) and one client span per
//! upstream attempt (its id is the parent id in the `traceparent` sent upstream). The spans
//! are built when the request ends, sampled then (parent-based on the client's sampled flag,
//! a ratio for new traces, and with `always_errors` every 5xx or gateway error), and put on a
//! bounded queue ([`QUEUE`]); one thread per exporter wakes every [`FLUSH`] (or when
//! [`BATCH`] spans wait) and sends them with `opentelemetry-otlp`. A full queue or a failed export
//! drops spans and counts them (`gatehouse_trace_spans_dropped_total{reason}`): requests never
//! wait for the collector. The exporter (queue and thread) is kept across reloads while the
//! `tracing` section does not change; a new one starts on the first span it gets, so a
//! config that is rejected never starts a thread.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;
use prometheus::IntCounterVec;

/// Spans waiting for the exporter at most.
pub const QUEUE: usize = 4096;
/// Spans per export at most.
pub const BATCH: usize = 512;
/// How long the exporter waits to fill a batch.
pub const FLUSH: Duration = Duration::from_millis(500);

/// What `tracing:` compiles to.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// `http(s)://host:port` (`/v1/traces` is added unless the path names it).
    pub endpoint: String,
    pub headers: BTreeMap<String, String>,
    pub timeout: Duration,
    pub service_name: String,
    pub ratio: f64,
    pub parent_based: bool,
    pub always_errors: bool,
    pub resource: BTreeMap<String, String>,
}

/// The traces endpoint for `endpoint`.
pub fn traces_url(endpoint: &str) -> String {
    let e = endpoint.trim_end_matches('/');
    if e.ends_with("/v1/traces") {
        e.to_string()
    } else {
        format!("{e}/v1/traces")
    }
}

/// Spans waiting for the exporter: the request path appends under a short lock, and wakes
/// the exporter only when a batch is full (one wake per batch, not per span).
#[derive(Default)]
struct Queue {
    spans: Mutex<Vec<SpanData>>,
    ready: Condvar,
    /// Set when the tracer is dropped: the exporter sends what is left and ends.
    closed: AtomicBool,
}

/// A tracer: the settings, the queue to its exporter thread and its counters.
pub struct Tracer {
    pub settings: TracingSettings,
    queue: Arc<Queue>,
    started: Once,
    exported: prometheus::IntCounter,
    dropped: IntCounterVec,
    scope: InstrumentationScope,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("settings", &self.settings)
            .finish()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.queue.closed.store(true, Ordering::Release);
        self.queue.ready.notify_all();
    }
}

impl Tracer {
    pub fn new(settings: TracingSettings, metrics: &crate::metrics::Metrics) -> Tracer {
        Tracer {
            settings,
            queue: Arc::new(Queue::default()),
            started: Once::new(),
            exported: metrics.trace.exported.clone(),
            dropped: metrics.trace.dropped.clone(),
            scope: InstrumentationScope::builder("gatehouse")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }

    /// Whether a request is sampled: `parent` is the client's sampled flag when it sent a
    /// trace; `error` whether the request ended in a 5xx or a gateway error; `roll` a
    /// uniform value in [0, 1) for this trace.
    pub fn sampled(&self, parent: Option<bool>, error: bool, roll: f64) -> bool {
        let s = &self.settings;
        if error && s.always_errors {
            return true;
        }
        match parent {
            Some(flag) if s.parent_based => flag,
            _ => roll < s.ratio,
        }
    }

    /// Queues `spans` for export (never waits for the exporter; what does not fit in the
    /// queue is dropped and counted).
    pub fn send(&self, spans: Vec<SpanData>) {
        self.started.call_once(|| {
            let (queue, settings) = (self.queue.clone(), self.settings.clone());
            let (exported, dropped) = (self.exported.clone(), self.dropped.clone());
            let spawned = std::thread::Builder::new()
                .name("gatehouse-otlp".into())
                .spawn(move || export_loop(&queue, &settings, &exported, &dropped));
            if let Err(e) = spawned {
                log::error!("tracing: cannot start the exporter thread: {e}");
                self.queue.closed.store(true, Ordering::Release);
            }
        });
        if self.queue.closed.load(Ordering::Acquire) {
            self.dropped
                .with_label_values(&["no_exporter"])
                .inc_by(spans.len() as u64);
            return;
        }
        let Ok(mut q) = self.queue.spans.lock() else {
            return;
        };
        let room = QUEUE.saturating_sub(q.len());
        let n = spans.len();
        q.extend(spans.into_iter().take(room));
        let wake = q.len() >= BATCH;
        drop(q);
        if n > room {
            self.dropped
                .with_label_values(&["queue_full"])
                .inc_by((n - room) as u64);
        }
        if wake {
            self.queue.ready.notify_one();
        }
    }

    /// A span of this tracer's scope.
    #[allow(clippy::too_many_arguments)]
    pub fn span(
        &self,
        trace_id: [u8; 16],
        span_id: u64,
        parent: Option<u64>,
        parent_remote: bool,
        kind: SpanKind,
        name: Cow<'static, str>,
        start: std::time::SystemTime,
        end: std::time::SystemTime,
        attributes: Vec<KeyValue>,
        error: Option<String>,
    ) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(trace_id),
                SpanId::from_bytes(span_id.to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent.map_or(SpanId::INVALID, |p| SpanId::from_bytes(p.to_be_bytes())),
            parent_span_is_remote: parent_remote,
            span_kind: kind,
            name,
            start_time: start,
            end_time: end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match error {
                Some(e) => Status::error(e),
                None => Status::Unset,
            },
            instrumentation_scope: self.scope.clone(),
        }
    }
}

/// The exporter thread: sends what the queue holds every [`FLUSH`] (sooner when a batch is
/// full), until the tracer is dropped.
fn export_loop(
    queue: &Queue,
    settings: &TracingSettings,
    exported: &prometheus::IntCounter,
    dropped: &IntCounterVec,
) {
    let built = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint_and(settings)
        .build();
    let mut exporter = match built {
        Ok(e) => e,
        Err(e) => {
            log::error!("tracing: cannot build the OTLP exporter: {e}");
            queue.closed.store(true, Ordering::Release);
            return;
        }
    };
    let mut resource = Resource::builder().with_service_name(settings.service_name.clone());
    for (k, v) in &settings.resource {
        resource = resource.with_attribute(KeyValue::new(k.clone(), v.clone()));
    }
    exporter.set_resource(&resource.build());
    let mut last_warn: Option<Instant> = None;
    loop {
        let (mut spans, closed) = {
            let Ok(mut q) = queue.spans.lock() else {
                return;
            };
            if q.len() < BATCH && !queue.closed.load(Ordering::Acquire) {
                q = match queue.ready.wait_timeout(q, FLUSH) {
                    Ok((q, _)) => q,
                    Err(_) => return,
                };
            }
            (
                std::mem::take(&mut *q),
                queue.closed.load(Ordering::Acquire),
            )
        };
        while !spans.is_empty() {
            let batch: Vec<SpanData> = spans.drain(..spans.len().min(BATCH)).collect();
            let n = batch.len() as u64;
            match futures::executor::block_on(exporter.export(batch)) {
                Ok(()) => exported.inc_by(n),
                Err(e) => {
                    dropped.with_label_values(&["export_failed"]).inc_by(n);
                    if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        log::warn!(
                            "tracing: export to {} failed: {e}",
                            traces_url(&settings.endpoint)
                        );
                        last_warn = Some(Instant::now());
                    }
                }
            }
        }
        if closed {
            break;
        }
    }
    let _ = exporter.shutdown();
}

/// The builder's endpoint, headers and timeout from the settings.
trait WithSettings {
    fn with_endpoint_and(self, s: &TracingSettings) -> Self;
}

impl WithSettings
    for opentelemetry_otlp::SpanExporterBuilder<opentelemetry_otlp::HttpExporterBuilderSet>
{
    fn with_endpoint_and(self, s: &TracingSettings) -> Self {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        self.with_endpoint(traces_url(&s.endpoint))
            .with_timeout(s.timeout)
            .with_headers(s.headers.clone().into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ratio: f64) -> TracingSettings {
        TracingSettings {
            endpoint: "http://127.0.0.1:4318".into(),
            headers: BTreeMap::new(),
            timeout: Duration::from_secs(2),
            service_name: "gatehouse".into(),
            ratio,
            parent_based: true,
            always_errors: true,
            resource: BTreeMap::new(),
        }
    }

    #[test]
    fn sampling_follows_the_parent_the_ratio_and_errors() {
        let m = crate::metrics::Metrics::new().unwrap();
        let t = Tracer::new(settings(0.0), &m);
        assert!(t.sampled(Some(true), false, 0.5), "a sampled parent");
        assert!(!t.sampled(Some(false), false, 0.0), "an unsampled parent");
        assert!(!t.sampled(None, false, 0.0), "ratio 0");
        assert!(t.sampled(None, true, 0.9), "an error");
        let t = Tracer::new(settings(0.25), &m);
        assert!(t.sampled(None, false, 0.2) && !t.sampled(None, false, 0.3));
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
