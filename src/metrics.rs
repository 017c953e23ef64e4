//! Prometheus metrics: one [`Metrics`] struct of typed handles, registered once at startup and
//! shared by the proxy, the health supervisor and the admin listener. Labels are bounded: route
//! ids, upstream names, backend addresses, status classes, standard methods.
//!
//! The request path never formats a label: each route carries [`RouteMetrics`] with its series
//! resolved on first use.

use std::sync::{Arc, OnceLock};

use http::Method;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Request latency buckets for an edge proxy: 0.5 ms to 30 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// All of gatehouse's metrics.
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_request_size: HistogramVec,
    pub http_response_size: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub connections_active: IntGaugeVec,
    pub connections_accepted: IntCounterVec,
    pub backend_healthy: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub config_version: IntGauge,
    pub access_log_dropped: IntCounter,
    pub jwt_validations: IntCounterVec,
    pub ratelimit_decisions: IntCounterVec,
    pub plugin_decisions: IntCounterVec,
    pub cache_requests: IntCounterVec,
    pub cache_size: IntGauge,
    pub config_last_success: prometheus::Gauge,
    pub config_restart_required: IntCounter,
    pub breaker_state: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
    pub upstream_retries: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric (and the process collector) with the default
    /// latency buckets.
    pub fn new() -> Result<Self, prometheus::Error> {
        Self::with_buckets(DURATION_BUCKETS.to_vec())
    }

    /// Like [`Metrics::new`] with the given latency buckets (seconds).
    pub fn with_buckets(buckets: Vec<f64>) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let sizes = prometheus::exponential_buckets(64.0, 4.0, 11)?;
        let http_request_size = HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_http_request_size_bytes",
                "Request body size, by route.",
            )
            .buckets(sizes.clone()),
            &["route"],
        )?;
        let http_response_size = HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_http_response_size_bytes",
                "Response body size sent to the client, by route.",
            )
            .buckets(sizes),
            &["route"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_upstream_request_duration_seconds",
                "Time from choosing a backend to its response header, per attempt, by upstream.",
            )
            .buckets(buckets.clone()),
            &["upstream"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "gatehouse_upstream_errors_total",
                "Failed upstream attempts by upstream and kind (connect, timeout, reset, 5xx).",
            ),
            &["upstream", "kind"],
        )?;
        let connections_active = IntGaugeVec::new(
            Opts::new(
                "gatehouse_connections_active",
                "Client connections open now, by listener.",
            ),
            &["listener"],
        )?;
        let connections_accepted = IntCounterVec::new(
            Opts::new(
                "gatehouse_connections_accepted_total",
                "Client connections accepted, by listener.",
            ),
            &["listener"],
        )?;
        for r in [&http_request_size, &http_response_size, &upstream_duration] {
            registry.register(Box::new(r.clone()))?;
        }
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(connections_active.clone()))?;
        registry.register(Box::new(connections_accepted.clone()))?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "gatehouse_http_requests_total",
                "HTTP requests answered, by route, method and status class.",
            ),
            &["route", "method", "status_class"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_http_request_duration_seconds",
                "Time from the request head to the end of the response, by route.",
            )
            .buckets(buckets),
            &["route"],
        )?;
        let backend_healthy = IntGaugeVec::new(
            Opts::new(
                "gatehouse_upstream_backend_healthy",
                "1 when the backend gets traffic, 0 when its health checks fail.",
            ),
            &["upstream", "backend"],
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "gatehouse_config_reloads_total",
                "Config loads, by trigger and result.",
            ),
            &["trigger", "result"],
        )?;
        let config_version = IntGauge::new(
            "gatehouse_config_version",
            "Version of the active config (1 at startup, +1 per applied reload).",
        )?;
        let access_log_dropped = IntCounter::new(
            "gatehouse_access_log_dropped_total",
            "Access log lines dropped because the writer could not keep up.",
        )?;
        let jwt_validations = IntCounterVec::new(
            Opts::new(
                "gatehouse_jwt_validations_total",
                "JWT checks by route and result (ok, missing, expired, invalid_signature, ...).",
            ),
            &["route", "result"],
        )?;
        let ratelimit_decisions = IntCounterVec::new(
            Opts::new(
                "gatehouse_ratelimit_decisions_total",
                "Rate limit decisions by route and result (allowed, limited, missing_key).",
            ),
            &["route", "result"],
        )?;
        let cache_requests = IntCounterVec::new(
            Opts::new(
                "gatehouse_cache_requests_total",
                "Requests on caching routes by route and result (hit, miss, stale, expired, bypass, revalidated).",
            ),
            &["route", "result"],
        )?;
        let cache_size = IntGauge::new(
            "gatehouse_cache_size_bytes",
            "Bytes held by the response cache (bodies and headers).",
        )?;
        let config_last_success = prometheus::Gauge::new(
            "gatehouse_config_last_reload_success_timestamp_seconds",
            "Unix time of the last config load that was applied.",
        )?;
        let config_restart_required = IntCounter::new(
            "gatehouse_config_restart_required_total",
            "Applied reloads that also changed settings only a restart applies (listeners, threads, ...).",
        )?;
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "gatehouse_circuit_breaker_state",
                "Circuit breaker state per backend: 0 closed, 1 half-open, 2 open.",
            ),
            &["upstream", "backend"],
        )?;
        let breaker_transitions = IntCounterVec::new(
            Opts::new(
                "gatehouse_circuit_breaker_transitions_total",
                "Circuit breaker state changes per backend, by the state entered.",
            ),
            &["upstream", "backend", "to"],
        )?;
        let upstream_retries = IntCounterVec::new(
            Opts::new(
                "gatehouse_upstream_retries_total",
                "Upstream attempts retried on another backend, by reason.",
            ),
            &["upstream", "reason"],
        )?;
        let plugin_decisions = IntCounterVec::new(
            Opts::new(
                "gatehouse_plugin_decisions_total",
                "Decisions of plugins without a metric of their own, by plugin, route and result.",
            ),
            &["plugin", "route", "result"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "gatehouse_build_info",
                "Always 1; the version label tells the build.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(backend_healthy.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(config_version.clone()))?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        registry.register(Box::new(jwt_validations.clone()))?;
        registry.register(Box::new(ratelimit_decisions.clone()))?;
        registry.register(Box::new(plugin_decisions.clone()))?;
        registry.register(Box::new(cache_requests.clone()))?;
        registry.register(Box::new(cache_size.clone()))?;
        registry.register(Box::new(config_last_success.clone()))?;
        registry.register(Box::new(config_restart_required.clone()))?;
        registry.register(Box::new(breaker_state.clone()))?;
        registry.register(Box::new(breaker_transitions.clone()))?;
        registry.register(Box::new(upstream_retries.clone()))?;
        registry.register(Box::new(build_info))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            http_requests,
            http_duration,
            http_request_size,
            http_response_size,
            upstream_duration,
            upstream_errors,
            connections_active,
            connections_accepted,
            backend_healthy,
            config_reloads,
            config_version,
            access_log_dropped,
            jwt_validations,
            ratelimit_decisions,
            plugin_decisions,
            cache_requests,
            cache_size,
            config_last_success,
            config_restart_required,
            breaker_state,
            breaker_transitions,
            upstream_retries,
        })
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
    pub fn set_backend_health(&self, upstream: &str, backend: &str, healthy: bool) {
        self.backend_healthy
            .with_label_values(&[upstream, backend])
            .set(i64::from(healthy));
    }

    /// The counter a plugin decision goes to.
    pub fn plugin_outcome_counter(&self, plugin: &str, route: &str, result: &str) -> IntCounter {
        match plugin {
            "jwt" => self.jwt_validations.with_label_values(&[route, result]),
            "rate_limit" => self.ratelimit_decisions.with_label_values(&[route, result]),
            "cache" => self.cache_requests.with_label_values(&[route, result]),
            _ => self
                .plugin_decisions
                .with_label_values(&[plugin, route, result]),
        }
    }

    fn remove_plugin_outcome(&self, plugin: &str, route: &str, result: &str) {
        let _ = match plugin {
            "jwt" => self.jwt_validations.remove_label_values(&[route, result]),
            "rate_limit" => self
                .ratelimit_decisions
                .remove_label_values(&[route, result]),
            "cache" => self.cache_requests.remove_label_values(&[route, result]),
            _ => self
                .plugin_decisions
                .remove_label_values(&[plugin, route, result]),
        };
    }

    /// Records a circuit breaker transition.
    pub fn breaker_transition(
        &self,
        upstream: &str,
        backend: &str,
        to: crate::upstream::breaker::State,
    ) {
        self.breaker_state
            .with_label_values(&[upstream, backend])
            .set(to as i64);
        self.breaker_transitions
            .with_label_values(&[upstream, backend, to.as_str()])
            .inc();
    }

    /// Removes the series of a backend that left the config.
    pub fn remove_backend(&self, upstream: &str, backend: &str) {
        let _ = self
            .backend_healthy
            .remove_label_values(&[upstream, backend]);
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

/// A route's resolved series; request counters are created on first use so unused
/// method/class combinations never appear.
pub struct RouteMetrics {
    route: Arc<str>,
    requests_vec: IntCounterVec,
    requests: [[OnceLock<IntCounter>; 6]; 10],
    duration: Histogram,
    request_size: Histogram,
    response_size: Histogram,
    /// plugin decision counters of this route, resolved on first use
    outcomes: std::sync::RwLock<Vec<(&'static str, &'static str, IntCounter)>>,
}

impl RouteMetrics {
    /// Series for route `route` (`none` is used for requests that matched no route).
    pub fn new(metrics: &Metrics, route: &str) -> Self {
        RouteMetrics {
            route: route.into(),
            requests_vec: metrics.http_requests.clone(),
            requests: Default::default(),
            duration: metrics.http_duration.with_label_values(&[route]),
            request_size: metrics.http_request_size.with_label_values(&[route]),
            response_size: metrics.http_response_size.with_label_values(&[route]),
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
        let c = metrics.plugin_outcome_counter(plugin, &self.route, result);
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
        self.request_size.observe(request as f64);
        self.response_size.observe(response as f64);
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
                metrics.remove_plugin_outcome(p, &self.route, r);
            }
        }
        let _ = metrics.http_duration.remove_label_values(&[&*self.route]);
        let _ = metrics
            .http_request_size
            .remove_label_values(&[&*self.route]);
        let _ = metrics
            .http_response_size
            .remove_label_values(&[&*self.route]);
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
        self.duration.observe(seconds);
    }
}
