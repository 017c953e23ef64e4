//! Prometheus metrics: one [`Metrics`] struct of typed handles, registered once at startup and
//! shared by the proxy, the health supervisor and the admin listener. Labels are bounded: route
//! ids, upstream names, backend addresses, status classes, standard methods.
//!
//! The request path never formats a label: each route carries [`RouteMetrics`] with its series
//! resolved on first use.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use gatehouse_plugins::api::DecisionMetric;
use http::Method;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Request latency buckets for an edge proxy: 0.5 ms to 30 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Series of requests, by route.
pub(crate) struct HttpMetrics {
    pub(crate) requests: IntCounterVec,
    pub(crate) duration: HistogramVec,
    pub(crate) request_size: HistogramVec,
    pub(crate) response_size: HistogramVec,
}

/// Series of upstream groups and their backends.
pub(crate) struct UpstreamMetrics {
    pub(crate) duration: HistogramVec,
    pub(crate) errors: IntCounterVec,
    pub(crate) retries: IntCounterVec,
    pub(crate) backend_healthy: IntGaugeVec,
    pub(crate) breaker_state: IntGaugeVec,
    pub(crate) breaker_transitions: IntCounterVec,
}

/// Series of client connections, by listener.
pub(crate) struct ConnectionMetrics {
    pub(crate) active: IntGaugeVec,
    pub(crate) accepted: IntCounterVec,
    /// Connections the guard closed on its own, by reason (`max_connections`, `blocked`,
    /// `h2_control_frames`).
    pub(crate) refused: IntCounterVec,
    /// HTTP/1 connections whose next request waited `limits.pause_after_429` after a 429.
    pub(crate) paused: IntCounter,
}

/// Series of HTTPS listeners.
#[derive(Clone)]
pub(crate) struct TlsMetrics {
    pub(crate) handshakes: IntCounterVec,
    pub(crate) expiry: prometheus::GaugeVec,
    /// Completed handshakes by listener, TLS version and negotiated protocol.
    pub(crate) sessions: IntCounterVec,
    /// HTTP/2 streams (requests) open now, and served.
    pub(crate) h2_streams_active: IntGauge,
    pub(crate) h2_streams: IntCounter,
    /// ACME orders by result: `ok` (a certificate issued and installed), `error`.
    pub(crate) acme_orders: IntCounterVec,
}

impl TlsMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = TlsMetrics {
            handshakes: counter_vec(
                "gatehouse_tls_handshakes_total",
                "TLS handshakes on HTTPS listeners, by listener and result: ok, timeout, or why it failed (no_certificate for the server name, certificate_refused by the client, client_certificate missing or invalid, version, alpn, closed, error).",
                &["listener", "result"],
            )?,
            sessions: counter_vec(
                "gatehouse_tls_sessions_total",
                "Completed TLS handshakes, by listener, TLS version (1.2, 1.3) and protocol (h2, http/1.1).",
                &["listener", "version", "protocol"],
            )?,
            h2_streams_active: IntGauge::new(
                "gatehouse_http2_streams_active",
                "HTTP/2 streams (requests) being served now, over TLS or h2c.",
            )?,
            h2_streams: IntCounter::new(
                "gatehouse_http2_streams_total",
                "HTTP/2 streams (requests) served, over TLS or h2c.",
            )?,
            expiry: prometheus::GaugeVec::new(
                Opts::new(
                    "gatehouse_tls_certificate_expiry_seconds",
                    "Unix time at which a served certificate expires, by listener and certificate (its first name).",
                ),
                &["listener", "certificate"],
            )?,
            acme_orders: counter_vec(
                "gatehouse_acme_orders_total",
                "ACME certificate orders by result: ok (issued and installed) or error (the CA refused, a challenge failed, or the CA was unreachable).",
                &["result"],
            )?,
        };
        for r in ["ok", "error"] {
            m.acme_orders.with_label_values(&[r]);
        }
        register(
            registry,
            vec![
                Box::new(m.handshakes.clone()),
                Box::new(m.expiry.clone()),
                Box::new(m.sessions.clone()),
                Box::new(m.h2_streams_active.clone()),
                Box::new(m.h2_streams.clone()),
                Box::new(m.acme_orders.clone()),
            ],
        )?;
        Ok(m)
    }
}

/// Results of `gatehouse_tls_handshakes_total{result}`.
pub(crate) const HANDSHAKE_RESULTS: [&str; 9] = [
    "ok",
    "timeout",
    "no_certificate",
    "certificate_refused",
    "client_certificate",
    "version",
    "alpn",
    "closed",
    "error",
];
/// `version` and `protocol` of `gatehouse_tls_sessions_total`.
pub(crate) const TLS_VERSIONS: [&str; 2] = ["1.2", "1.3"];
pub(crate) const TLS_PROTOCOLS: [&str; 2] = ["h2", "http/1.1"];

/// Series of config loads.
pub(crate) struct ConfigMetrics {
    pub(crate) reloads: IntCounterVec,
    pub(crate) version: IntGauge,
    pub(crate) last_success: prometheus::Gauge,
    pub(crate) restart_required: IntCounter,
}

/// Plugin decisions: plugins that declare a metric of their own
/// (`PluginSpec::DECISION_METRIC`) count there, every other plugin in
/// `gatehouse_plugin_decisions_total{plugin,route,result}`.
pub(crate) struct DecisionMetrics {
    own: HashMap<&'static str, IntCounterVec>,
    shared: IntCounterVec,
}

/// Failure kinds counted in `gatehouse_upstream_errors_total{kind}`.
pub(crate) const UPSTREAM_ERROR_KINDS: [&str; 4] = ["connect", "timeout", "reset", "5xx"];
/// Results of `gatehouse_config_reloads_total{result}` and the triggers that produce them.
const RELOAD_TRIGGERS: [&str; 4] = ["startup", "file", "signal", "admin"];
const RELOAD_RESULTS: [&str; 3] = ["ok", "error", "unchanged"];
/// States entered, as labels of `gatehouse_circuit_breaker_transitions_total{to}`.
const BREAKER_STATES: [&str; 3] = ["closed", "half_open", "open"];
/// Labels of `gatehouse_upstream_retries_total{reason}`.
const RETRY_REASONS: [&str; 8] = [
    "connect_failure",
    "timeout",
    "reset",
    "500",
    "502",
    "503",
    "504",
    "status",
];

/// All of gatehouse's metrics, grouped by area.
pub struct Metrics {
    registry: Registry,
    pub(crate) http: HttpMetrics,
    pub(crate) upstream: UpstreamMetrics,
    pub(crate) connections: ConnectionMetrics,
    pub(crate) config: ConfigMetrics,
    pub(crate) decisions: DecisionMetrics,
    pub(crate) tls: TlsMetrics,
    pub(crate) redis: RedisMetrics,
    pub(crate) cache_size: IntGauge,
    pub(crate) cache: CacheMetrics,
    pub(crate) access_log_dropped: IntCounter,
    pub(crate) trace: TraceMetrics,
}

/// Series of the cache tiers, copied from the store's counters at scrape time.
pub(crate) struct CacheMetrics {
    /// Bytes held per tier (`memory`: bodies and headers; `disk`: object files).
    bytes: IntGaugeVec,
    /// Objects held per tier.
    objects: IntGaugeVec,
    /// Lookups per tier and result (`hit`, `miss`); a disk lookup follows a memory miss.
    lookups: IntCounterVec,
    /// Objects evicted per tier (memory: demoted to disk when it has one).
    evictions: IntCounterVec,
    /// Disk writes by result: `ok`, `error`, `skipped` (queue full or tier unavailable).
    disk_writes: IntCounterVec,
    /// Disk objects that failed a checksum or length check (deleted, then refetched).
    corrupt: IntCounter,
    /// 1 while the disk tier takes writes.
    disk_available: IntGauge,
}

/// Raises a counter to `v` (the store's counters only grow).
fn raise(c: &IntCounter, v: u64) {
    let cur = c.get();
    if v > cur {
        c.inc_by(v - cur);
    }
}

impl CacheMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = CacheMetrics {
            bytes: gauge_vec(
                "gatehouse_cache_tier_size_bytes",
                "Bytes held by each cache tier (memory: bodies and headers; disk: object files).",
                &["tier"],
            )?,
            objects: gauge_vec(
                "gatehouse_cache_tier_objects",
                "Objects held by each cache tier.",
                &["tier"],
            )?,
            lookups: counter_vec(
                "gatehouse_cache_tier_lookups_total",
                "Cache lookups per tier and result (hit, miss); the disk is asked after a memory miss.",
                &["tier", "result"],
            )?,
            evictions: counter_vec(
                "gatehouse_cache_tier_evictions_total",
                "Objects evicted per cache tier (from memory: written to disk when there is a disk tier).",
                &["tier"],
            )?,
            disk_writes: counter_vec(
                "gatehouse_cache_disk_writes_total",
                "Disk tier writes by result: ok, error, skipped (queue full or tier unavailable).",
                &["result"],
            )?,
            corrupt: IntCounter::new(
                "gatehouse_cache_disk_corrupt_objects_total",
                "Disk tier objects that failed a checksum or length check (deleted and refetched).",
            )?,
            disk_available: IntGauge::new(
                "gatehouse_cache_disk_available",
                "1 while the disk cache tier takes writes, 0 while it is unavailable (memory only).",
            )?,
        };
        register(
            registry,
            vec![
                Box::new(m.bytes.clone()),
                Box::new(m.objects.clone()),
                Box::new(m.lookups.clone()),
                Box::new(m.evictions.clone()),
                Box::new(m.disk_writes.clone()),
                Box::new(m.corrupt.clone()),
                Box::new(m.disk_available.clone()),
            ],
        )?;
        Ok(m)
    }

    /// Copies the store's figures into the series (the disk's only when it has a disk tier).
    pub(crate) fn sync(&self, store: &crate::proxy::cache_store::TieredStore) {
        use std::sync::atomic::Ordering::Relaxed;
        let g = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        let st = &store.stats;
        self.bytes
            .with_label_values(&["memory"])
            .set(i64::try_from(store.size_bytes()).unwrap_or(i64::MAX));
        self.objects
            .with_label_values(&["memory"])
            .set(g(store.len()));
        raise(
            &self.lookups.with_label_values(&["memory", "hit"]),
            st.hits.load(Relaxed),
        );
        raise(
            &self.lookups.with_label_values(&["memory", "miss"]),
            st.misses.load(Relaxed),
        );
        raise(
            &self.evictions.with_label_values(&["memory"]),
            st.evictions.load(Relaxed),
        );
        let Some(d) = store.disk() else {
            return;
        };
        let ds = &d.stats;
        self.bytes
            .with_label_values(&["disk"])
            .set(g(d.size_bytes()));
        self.objects.with_label_values(&["disk"]).set(g(d.len()));
        raise(
            &self.lookups.with_label_values(&["disk", "hit"]),
            ds.hits.load(Relaxed),
        );
        raise(
            &self.lookups.with_label_values(&["disk", "miss"]),
            ds.misses.load(Relaxed),
        );
        raise(
            &self.evictions.with_label_values(&["disk"]),
            ds.evictions.load(Relaxed),
        );
        raise(
            &self.disk_writes.with_label_values(&["ok"]),
            ds.writes.load(Relaxed),
        );
        raise(
            &self.disk_writes.with_label_values(&["error"]),
            ds.write_errors.load(Relaxed),
        );
        raise(
            &self.disk_writes.with_label_values(&["skipped"]),
            ds.skipped.load(Relaxed),
        );
        raise(&self.corrupt, ds.corrupt.load(Relaxed));
        self.disk_available.set(i64::from(d.available()));
    }
}

/// Series of the span export (`tracing.otlp`).
#[derive(Clone)]
pub(crate) struct TraceMetrics {
    /// Spans the collector took.
    pub(crate) exported: IntCounter,
    /// Spans dropped, by reason (`queue_full`, `export_failed`, `no_exporter`).
    pub(crate) dropped: IntCounterVec,
}

/// Series of the connection to Redis (the top-level `redis` section).
#[derive(Clone)]
pub(crate) struct RedisMetrics {
    /// 1 while calls get answers (breaker closed, connection up).
    pub(crate) up: IntGauge,
    /// 1 while the breaker is open (no calls on the request path).
    pub(crate) breaker_open: IntGauge,
    /// Live gateway instances registered in Redis, as last read.
    pub(crate) instances: IntGauge,
    /// Call latency by operation (`rate_limit`, `heartbeat`, `probe`).
    pub(crate) calls: HistogramVec,
    /// Calls that gave no answer, by operation and reason (`timeout`, `error`,
    /// `breaker_open`).
    pub(crate) errors: IntCounterVec,
    /// Cache purges through Redis: `sent`, `not_sent` (Redis away), `applied` (from others).
    pub(crate) purges: IntCounterVec,
    /// Whole-cache flushes by the purge feed, by reason (`gap`: purges may have been missed,
    /// `restart`: Redis restarted).
    pub(crate) flushes: IntCounterVec,
    /// 1 while the purge feed is reading the stream.
    pub(crate) feed_up: IntGauge,
}

impl RedisMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = RedisMetrics {
            up: IntGauge::new(
                "gatehouse_redis_up",
                "1 while Redis answers (breaker closed, connected).",
            )?,
            breaker_open: IntGauge::new(
                "gatehouse_redis_breaker_open",
                "1 while the Redis breaker is open: the request path does not call Redis.",
            )?,
            instances: IntGauge::new(
                "gatehouse_redis_instances",
                "Gateway instances alive in Redis's registry, as last read.",
            )?,
            calls: histogram_vec(
                "gatehouse_redis_call_duration_seconds",
                "Redis call latency, by operation.",
                &[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
                ],
                &["op"],
            )?,
            errors: counter_vec(
                "gatehouse_redis_errors_total",
                "Redis calls without an answer, by operation and reason.",
                &["op", "reason"],
            )?,
            purges: counter_vec(
                "gatehouse_cache_purges_shared_total",
                "Cache purges through Redis: sent, not_sent (Redis away), applied (from other instances).",
                &["result"],
            )?,
            flushes: counter_vec(
                "gatehouse_cache_flushes_total",
                "Whole-cache flushes by the purge feed, by reason (gap, restart).",
                &["reason"],
            )?,
            feed_up: IntGauge::new(
                "gatehouse_cache_purge_feed_up",
                "1 while the purge feed reads the shared purge stream.",
            )?,
        };
        register(
            registry,
            vec![
                Box::new(m.up.clone()),
                Box::new(m.breaker_open.clone()),
                Box::new(m.instances.clone()),
                Box::new(m.calls.clone()),
                Box::new(m.errors.clone()),
                Box::new(m.purges.clone()),
                Box::new(m.flushes.clone()),
                Box::new(m.feed_up.clone()),
            ],
        )?;
        for result in ["sent", "not_sent", "applied"] {
            m.purges.with_label_values(&[result]);
        }
        for reason in ["gap", "restart"] {
            m.flushes.with_label_values(&[reason]);
        }
        // every series from the start (0 without a `redis` section), so dashboards and
        // alerts see them before the first failure
        for op in ["rate_limit", "sync", "heartbeat", "probe", "purge"] {
            m.calls.with_label_values(&[op]);
            for reason in ["timeout", "error", "breaker_open"] {
                m.errors.with_label_values(&[op, reason]);
            }
        }
        Ok(m)
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

fn histogram_vec(
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
}

/// Registers each collector (cloned handles share their series).
fn register(registry: &Registry, all: Vec<Box<dyn Collector>>) -> prometheus::Result<()> {
    all.into_iter().try_for_each(|c| registry.register(c))
}

impl HttpMetrics {
    fn new(buckets: &[f64], registry: &Registry) -> prometheus::Result<Self> {
        let sizes = prometheus::exponential_buckets(64.0, 4.0, 11)?;
        let m = HttpMetrics {
            requests: counter_vec(
                "gatehouse_http_requests_total",
                "HTTP requests answered, by route, method and status class.",
                &["route", "method", "status_class"],
            )?,
            duration: histogram_vec(
                "gatehouse_http_request_duration_seconds",
                "Time from the request head to the end of the response, by route.",
                buckets,
                &["route"],
            )?,
            request_size: histogram_vec(
                "gatehouse_http_request_size_bytes",
                "Request body size, by route.",
                &sizes,
                &["route"],
            )?,
            response_size: histogram_vec(
                "gatehouse_http_response_size_bytes",
                "Response body size sent to the client, by route.",
                &sizes,
                &["route"],
            )?,
        };
        register(
            registry,
            vec![
                Box::new(m.requests.clone()),
                Box::new(m.duration.clone()),
                Box::new(m.request_size.clone()),
                Box::new(m.response_size.clone()),
            ],
        )?;
        Ok(m)
    }
}

impl UpstreamMetrics {
    fn new(buckets: &[f64], registry: &Registry) -> prometheus::Result<Self> {
        let m = UpstreamMetrics {
            duration: histogram_vec(
                "gatehouse_upstream_request_duration_seconds",
                "Time from choosing a backend to its response header, per attempt, by upstream.",
                buckets,
                &["upstream"],
            )?,
            errors: counter_vec(
                "gatehouse_upstream_errors_total",
                "Failed upstream attempts by upstream and kind (connect, timeout, reset, 5xx).",
                &["upstream", "kind"],
            )?,
            retries: counter_vec(
                "gatehouse_upstream_retries_total",
                "Upstream attempts retried on another backend, by reason.",
                &["upstream", "reason"],
            )?,
            backend_healthy: gauge_vec(
                "gatehouse_upstream_backend_healthy",
                "1 when the backend gets traffic, 0 when its health checks fail.",
                &["upstream", "backend"],
            )?,
            breaker_state: gauge_vec(
                "gatehouse_circuit_breaker_state",
                "Circuit breaker state per backend: 0 closed, 1 half-open, 2 open.",
                &["upstream", "backend"],
            )?,
            breaker_transitions: counter_vec(
                "gatehouse_circuit_breaker_transitions_total",
                "Circuit breaker state changes per backend, by the state entered.",
                &["upstream", "backend", "to"],
            )?,
        };
        register(
            registry,
            vec![
                Box::new(m.duration.clone()),
                Box::new(m.errors.clone()),
                Box::new(m.retries.clone()),
                Box::new(m.backend_healthy.clone()),
                Box::new(m.breaker_state.clone()),
                Box::new(m.breaker_transitions.clone()),
            ],
        )?;
        Ok(m)
    }
}

impl ConnectionMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = ConnectionMetrics {
            active: gauge_vec(
                "gatehouse_connections_active",
                "Client connections open now, by listener.",
                &["listener"],
            )?,
            accepted: counter_vec(
                "gatehouse_connections_accepted_total",
                "Client connections accepted, by listener.",
                &["listener"],
            )?,
            refused: counter_vec(
                "gatehouse_connections_refused_total",
                "Client connections closed by the gateway's connection guard, by reason.",
                &["reason"],
            )?,
            paused: IntCounter::new(
                "gatehouse_connections_paused_total",
                "Times an HTTP/1 connection answered 429 waited limits.pause_after_429 before its next request was read.",
            )?,
        };
        register(
            registry,
            vec![
                Box::new(m.active.clone()),
                Box::new(m.accepted.clone()),
                Box::new(m.refused.clone()),
                Box::new(m.paused.clone()),
            ],
        )?;
        for reason in [
            "max_connections",
            "blocked",
            "h2_control_frames",
            "h2_enhance_your_calm",
        ] {
            m.refused.with_label_values(&[reason]);
        }
        Ok(m)
    }
}

impl ConfigMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = ConfigMetrics {
            reloads: counter_vec(
                "gatehouse_config_reloads_total",
                "Config loads, by trigger and result.",
                &["trigger", "result"],
            )?,
            version: IntGauge::new(
                "gatehouse_config_version",
                "Version of the active config (1 at startup, +1 per applied reload).",
            )?,
            last_success: prometheus::Gauge::new(
                "gatehouse_config_last_reload_success_timestamp_seconds",
                "Unix time of the last config load that was applied.",
            )?,
            restart_required: IntCounter::new(
                "gatehouse_config_restart_required_total",
                "Applied reloads that also changed settings only a restart applies (listeners, threads, ...).",
            )?,
        };
        // every trigger/result pair from the start: an alert on errors sees the first one
        for t in RELOAD_TRIGGERS {
            for r in RELOAD_RESULTS {
                m.reloads.with_label_values(&[t, r]);
            }
        }
        register(
            registry,
            vec![
                Box::new(m.reloads.clone()),
                Box::new(m.version.clone()),
                Box::new(m.last_success.clone()),
                Box::new(m.restart_required.clone()),
            ],
        )?;
        Ok(m)
    }

    /// Records an applied config: its version and the time.
    pub(crate) fn applied(&self, trigger: &str, version: u64) {
        self.reloads.with_label_values(&[trigger, "ok"]).inc();
        self.version.set(i64::try_from(version).unwrap_or(i64::MAX));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_success.set(now);
    }
}

impl DecisionMetrics {
    fn new(
        registry: &Registry,
        plugins: &[(&'static str, DecisionMetric)],
    ) -> prometheus::Result<Self> {
        let shared = counter_vec(
            "gatehouse_plugin_decisions_total",
            "Decisions of plugins without a metric of their own, by plugin, route and result.",
            &["plugin", "route", "result"],
        )?;
        registry.register(Box::new(shared.clone()))?;
        let mut own = HashMap::new();
        for (kind, m) in plugins {
            let v = counter_vec(m.name, m.help, &["route", "result"])?;
            registry.register(Box::new(v.clone()))?;
            own.insert(*kind, v);
        }
        Ok(DecisionMetrics { own, shared })
    }

    /// The counter a decision of plugin `kind` on `route` goes to.
    fn counter(&self, kind: &str, route: &str, result: &str) -> IntCounter {
        match self.own.get(kind) {
            Some(v) => v.with_label_values(&[route, result]),
            None => self.shared.with_label_values(&[kind, route, result]),
        }
    }

    fn remove(&self, kind: &str, route: &str, result: &str) {
        let _ = match self.own.get(kind) {
            Some(v) => v.remove_label_values(&[route, result]),
            None => self.shared.remove_label_values(&[kind, route, result]),
        };
    }
}

impl Metrics {
    /// Every metric with the default latency buckets and no plugin metrics of their own (for
    /// tools and tests; the gateway uses [`Metrics::for_gateway`]).
    pub fn new() -> Result<Self, prometheus::Error> {
        Self::for_gateway(DURATION_BUCKETS, &[])
    }

    /// Creates and registers every metric (and the process collector): latency histograms
    /// with `buckets` (seconds), and the decision counters the registered plugins declare.
    pub fn for_gateway(
        buckets: &[f64],
        plugins: &[(&'static str, DecisionMetric)],
    ) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let cache_size = IntGauge::new(
            "gatehouse_cache_size_bytes",
            "Bytes held by the response cache (bodies and headers).",
        )?;
        let access_log_dropped = IntCounter::new(
            "gatehouse_access_log_dropped_total",
            "Access log lines dropped because the writer could not keep up.",
        )?;
        let trace = TraceMetrics {
            exported: IntCounter::new(
                "gatehouse_trace_spans_exported_total",
                "Spans the OTLP collector accepted.",
            )?,
            dropped: counter_vec(
                "gatehouse_trace_spans_dropped_total",
                "Spans dropped: the export queue was full, the export failed, or no exporter.",
                &["reason"],
            )?,
        };
        let build_info = gauge_vec(
            "gatehouse_build_info",
            "Always 1; the version label tells the build.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        register(
            &registry,
            vec![
                Box::new(cache_size.clone()),
                Box::new(access_log_dropped.clone()),
                Box::new(trace.exported.clone()),
                Box::new(trace.dropped.clone()),
                Box::new(build_info),
            ],
        )?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            http: HttpMetrics::new(buckets, &registry)?,
            upstream: UpstreamMetrics::new(buckets, &registry)?,
            connections: ConnectionMetrics::new(&registry)?,
            config: ConfigMetrics::new(&registry)?,
            decisions: DecisionMetrics::new(&registry, plugins)?,
            tls: TlsMetrics::new(&registry)?,
            redis: RedisMetrics::new(&registry)?,
            cache: CacheMetrics::new(&registry)?,
            registry,
            cache_size,
            access_log_dropped,
            trace,
        })
    }

    /// Every metric family as it stands (the status page's sampler).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            log::error!("encoding metrics failed: {e}");
        }
        buf
    }

    /// Sets `gatehouse_upstream_backend_healthy{upstream,backend}`.
    pub(crate) fn set_backend_health(&self, upstream: &str, backend: &str, healthy: bool) {
        self.upstream
            .backend_healthy
            .with_label_values(&[upstream, backend])
            .set(i64::from(healthy));
    }

    /// Sets `gatehouse_circuit_breaker_state{upstream,backend}` (0 closed, 1 half-open, 2 open).
    pub(crate) fn set_breaker_state(&self, upstream: &str, backend: &str, state: i64) {
        self.upstream
            .breaker_state
            .with_label_values(&[upstream, backend])
            .set(state);
    }

    /// Records a circuit breaker transition into `state` (named `label`).
    pub(crate) fn breaker_transition(
        &self,
        upstream: &str,
        backend: &str,
        state: i64,
        label: &str,
    ) {
        self.set_breaker_state(upstream, backend, state);
        self.upstream
            .breaker_transitions
            .with_label_values(&[upstream, backend, label])
            .inc();
    }

    /// Removes the breaker series of a backend (its breaker, or the backend, left the config).
    pub(crate) fn remove_breaker(&self, upstream: &str, backend: &str) {
        let _ = self
            .upstream
            .breaker_state
            .remove_label_values(&[upstream, backend]);
        for to in BREAKER_STATES {
            let _ = self
                .upstream
                .breaker_transitions
                .remove_label_values(&[upstream, backend, to]);
        }
    }

    /// Removes every series of a backend that left the config.
    pub(crate) fn remove_backend(&self, upstream: &str, backend: &str) {
        let _ = self
            .upstream
            .backend_healthy
            .remove_label_values(&[upstream, backend]);
        self.remove_breaker(upstream, backend);
    }

    /// Creates the series of an upstream group where a zero means something (its error
    /// counters), so rates and alerts see the group before its first failure.
    pub(crate) fn add_upstream(&self, upstream: &str) {
        for kind in UPSTREAM_ERROR_KINDS {
            self.upstream.errors.with_label_values(&[upstream, kind]);
        }
    }

    /// Removes the series of an upstream group that left the config (not its backends').
    pub(crate) fn remove_upstream(&self, upstream: &str) {
        let u = &self.upstream;
        let _ = u.duration.remove_label_values(&[upstream]);
        for kind in UPSTREAM_ERROR_KINDS {
            let _ = u.errors.remove_label_values(&[upstream, kind]);
        }
        for reason in RETRY_REASONS {
            let _ = u.retries.remove_label_values(&[upstream, reason]);
        }
    }
}

const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

/// A route's series, resolved on first use (so compiling a route creates none, and unused
/// method/status-class combinations never appear).
pub struct RouteMetrics {
    route: Arc<str>,
    requests_vec: IntCounterVec,
    requests: [[OnceLock<IntCounter>; 6]; 10],
    duration_vec: HistogramVec,
    duration: OnceLock<Histogram>,
    request_size_vec: HistogramVec,
    request_size: OnceLock<Histogram>,
    response_size_vec: HistogramVec,
    response_size: OnceLock<Histogram>,
    /// plugin decision counters of this route, resolved on first use
    outcomes: std::sync::RwLock<Vec<(&'static str, &'static str, IntCounter)>>,
}

/// The series of `vec` for `route`, made on first use.
#[inline]
fn lazy<'a>(cell: &'a OnceLock<Histogram>, vec: &HistogramVec, route: &str) -> &'a Histogram {
    cell.get_or_init(|| vec.with_label_values(&[route]))
}

impl RouteMetrics {
    /// Series for route `route` (`none` is used for requests that matched no route).
    pub fn new(metrics: &Metrics, route: &str) -> Self {
        RouteMetrics {
            route: route.into(),
            requests_vec: metrics.http.requests.clone(),
            requests: Default::default(),
            duration_vec: metrics.http.duration.clone(),
            duration: OnceLock::new(),
            request_size_vec: metrics.http.request_size.clone(),
            request_size: OnceLock::new(),
            response_size_vec: metrics.http.response_size.clone(),
            response_size: OnceLock::new(),
            outcomes: std::sync::RwLock::new(Vec::new()),
        }
    }

    /// Counts a plugin decision (or the cache result, as plugin `cache`) on this route (no
    /// label hashing after the first time).
    pub fn outcome(&self, metrics: &Metrics, plugin: &'static str, result: &'static str) {
        if let Ok(list) = self.outcomes.read() {
            if let Some((_, _, c)) = list.iter().find(|(p, r, _)| *p == plugin && *r == result) {
                c.inc();
                return;
            }
        }
        let c = metrics.decisions.counter(plugin, &self.route, result);
        c.inc();
        if let Ok(mut list) = self.outcomes.write() {
            if !list.iter().any(|(p, r, _)| *p == plugin && *r == result) {
                list.push((plugin, result, c));
            }
        }
    }

    /// Counts request and response body sizes.
    #[inline]
    pub fn observe_sizes(&self, request: u64, response: u64) {
        lazy(&self.request_size, &self.request_size_vec, &self.route).observe(request as f64);
        lazy(&self.response_size, &self.response_size_vec, &self.route).observe(response as f64);
    }

    /// Removes this route's series (the route left the config).
    pub fn remove(&self, metrics: &Metrics) {
        for (mi, row) in self.requests.iter().enumerate() {
            for (ci, cell) in row.iter().enumerate() {
                if cell.get().is_some() {
                    let _ = self.requests_vec.remove_label_values(&[
                        &*self.route,
                        METHODS[mi],
                        CLASSES[ci],
                    ]);
                }
            }
        }
        if let Ok(list) = self.outcomes.read() {
            for (p, r, _) in list.iter() {
                metrics.decisions.remove(p, &self.route, r);
            }
        }
        for v in [
            &self.duration_vec,
            &self.request_size_vec,
            &self.response_size_vec,
        ] {
            let _ = v.remove_label_values(&[&*self.route]);
        }
    }

    /// Counts one finished request.
    #[inline]
    pub fn observe(&self, method: &Method, status: u16, seconds: f64) {
        let (mi, ci) = (method_index(method), class_index(status));
        self.requests[mi][ci]
            .get_or_init(|| {
                self.requests_vec
                    .with_label_values(&[&*self.route, METHODS[mi], CLASSES[ci]])
            })
            .inc();
        lazy(&self.duration, &self.duration_vec, &self.route).observe(seconds);
    }
}
