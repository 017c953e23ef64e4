//! The status page's data: what the admin listener serves at `/api/status`, `/api/routes`
//! and `/api/upstreams`, and the page itself (`page.html`, `page.css`, `page.js`, embedded
//! in the binary).
//!
//! - The data path feeds two small bounded records, on its error paths only: the last
//!   [`MAX_ERRORS`] responses of 500 and above (status, route, reason, request id), and the
//!   clients the gateway answered 429 most often (route and client IP, the access log's own
//!   fields; a Space-Saving top list of [`MAX_LIMITED`] entries).
//! - A sampler ([`Sampler`], a background service) reads the route series of the metrics
//!   registry every [`SAMPLE`] and keeps, per route, the last [`HISTORY`] intervals of request
//!   rate, error rate (5xx) and p50/p99 latency (from the latency histogram's bucket deltas),
//!   and per backend the request and failure rates. Nothing of that runs on the data path.
//! - Backends count their attempts, failures and in-flight requests themselves (three
//!   relaxed atomics per attempt), and know since when their health state holds.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::proxy::cache::CacheRuntime;
use crate::state::{SharedState, Snapshot};

/// The page and its assets.
pub const PAGE_HTML: &str = include_str!("page.html");
pub const PAGE_CSS: &str = include_str!("page.css");
pub const PAGE_JS: &str = include_str!("page.js");

/// Recent errors kept.
pub const MAX_ERRORS: usize = 50;
/// Limited clients tracked.
pub const MAX_LIMITED: usize = 64;
/// Sampling interval of the history.
pub const SAMPLE: Duration = Duration::from_secs(5);
/// Intervals kept per route (5 minutes).
pub const HISTORY: usize = 60;

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One error the gateway answered or passed on.
#[derive(Clone, serde::Serialize)]
struct ErrorEntry {
    at_ms: u64,
    status: u16,
    route: String,
    reason: String,
    request_id: String,
}

/// One interval of a route's traffic.
#[derive(Clone, Copy, serde::Serialize)]
struct Point {
    at_ms: u64,
    rps: f64,
    error_rate: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

/// A route's totals at the last sample and its history.
#[derive(Default)]
struct RouteHistory {
    /// Whether a sample was taken (the first one only sets the totals).
    sampled: bool,
    requests: u64,
    errors: u64,
    buckets: Vec<(f64, u64)>,
    points: VecDeque<Point>,
}

/// A backend's (attempts, failures) at the last sample, and (requests/s, error rate) since.
type BackendRates = ((u64, u64), (f64, f64));

/// What the status page shows beyond the snapshot: fed by the data path (errors, 429s) and
/// the sampler (history).
pub struct Board {
    started: SystemTime,
    errors: Mutex<VecDeque<ErrorEntry>>,
    limited: Mutex<Vec<((String, String), u64)>>,
    routes: Mutex<HashMap<String, RouteHistory>>,
    /// Per `upstream/backend`: counters at the last sample and the rates since.
    backends: Mutex<HashMap<String, BackendRates>>,
}

impl Default for Board {
    fn default() -> Self {
        Self::new()
    }
}

impl Board {
    pub fn new() -> Self {
        Board {
            started: SystemTime::now(),
            errors: Mutex::new(VecDeque::with_capacity(MAX_ERRORS)),
            limited: Mutex::new(Vec::with_capacity(MAX_LIMITED)),
            routes: Mutex::new(HashMap::new()),
            backends: Mutex::new(HashMap::new()),
        }
    }

    /// Notes a response of 500 or above (data path, error responses only).
    pub fn error(&self, status: u16, route: &str, reason: &str, request_id: &str) {
        if let Ok(mut e) = self.errors.lock() {
            if e.len() == MAX_ERRORS {
                e.pop_front();
            }
            e.push_back(ErrorEntry {
                at_ms: unix_ms(SystemTime::now()),
                status,
                route: route.to_string(),
                reason: reason.to_string(),
                request_id: request_id.to_string(),
            });
        }
    }

    /// Counts a 429 the gateway answered (data path, 429s only): Space-Saving, so the list
    /// stays [`MAX_LIMITED`] long and a frequent client is never pushed out by rare ones.
    pub fn limited(&self, route: &str, client: &str) {
        let Ok(mut l) = self.limited.lock() else {
            return;
        };
        if let Some(e) = l.iter_mut().find(|e| e.0 .0 == route && e.0 .1 == client) {
            e.1 += 1;
            return;
        }
        let key = (route.to_string(), client.to_string());
        if l.len() < MAX_LIMITED {
            l.push((key, 1));
        } else if let Some(min) = l.iter_mut().min_by_key(|e| e.1) {
            // the newcomer inherits the smallest count (an upper bound of its own)
            *min = (key, min.1 + 1);
        }
    }

    fn top_limited(&self, n: usize) -> Vec<Value> {
        let mut l = self.limited.lock().map(|l| l.clone()).unwrap_or_default();
        l.sort_by_key(|e| std::cmp::Reverse(e.1));
        l.into_iter()
            .take(n)
            .map(|((route, client), count)| json!({"route": route, "client": client, "count": count}))
            .collect()
    }

    /// Takes one sample: the route series' totals from the registry, the backends' counters.
    pub fn sample(&self, snap: &Snapshot, metrics: &Metrics) {
        let now = SystemTime::now();
        let secs = SAMPLE.as_secs_f64();
        let totals = route_totals(metrics);
        if let Ok(mut routes) = self.routes.lock() {
            routes.retain(|id, _| snap.routes.iter().any(|r| &*r.id == id.as_str()));
            for r in &snap.routes {
                let t = totals.get(&*r.id).cloned().unwrap_or_default();
                let h = routes.entry(r.id.to_string()).or_default();
                let first = !std::mem::replace(&mut h.sampled, true);
                let (dr, de) = (
                    t.requests.saturating_sub(h.requests),
                    t.errors.saturating_sub(h.errors),
                );
                let deltas: Vec<(f64, u64)> = t
                    .buckets
                    .iter()
                    .map(|(le, c)| {
                        let before = h
                            .buckets
                            .iter()
                            .find(|(l, _)| l == le)
                            .map_or(0, |(_, c)| *c);
                        (*le, c.saturating_sub(before))
                    })
                    .collect();
                if !first {
                    if h.points.len() == HISTORY {
                        h.points.pop_front();
                    }
                    h.points.push_back(Point {
                        at_ms: unix_ms(now),
                        rps: dr as f64 / secs,
                        error_rate: if dr == 0 { 0.0 } else { de as f64 / dr as f64 },
                        p50_ms: quantile(&deltas, 0.5).map(|s| s * 1e3),
                        p99_ms: quantile(&deltas, 0.99).map(|s| s * 1e3),
                    });
                }
                h.requests = t.requests;
                h.errors = t.errors;
                h.buckets = t.buckets;
            }
        }
        if let Ok(mut b) = self.backends.lock() {
            let mut seen = Vec::new();
            for g in snap.upstreams.values() {
                for m in &g.backends {
                    let (_, attempts, failures) = m.traffic();
                    let key = format!("{}/{}", g.name, m.label);
                    let e = b
                        .entry(key.clone())
                        .or_insert(((attempts, failures), (0.0, 0.0)));
                    let da = attempts.saturating_sub(e.0 .0);
                    let df = failures.saturating_sub(e.0 .1);
                    *e = (
                        (attempts, failures),
                        (
                            da as f64 / secs,
                            if da == 0 { 0.0 } else { df as f64 / da as f64 },
                        ),
                    );
                    seen.push(key);
                }
            }
            b.retain(|k, _| seen.contains(k));
        }
    }

    /// `/api/status`.
    pub fn status(
        &self,
        snap: &Snapshot,
        cache: &CacheRuntime,
        last_reload: Option<crate::reload::LastReload>,
        config_file: &str,
        ready: bool,
    ) -> Value {
        let now = SystemTime::now();
        let now_s = unix_ms(now) / 1000;
        let listeners: Vec<Value> = snap
            .server
            .listeners
            .iter()
            .map(|l| {
                let certs: Vec<Value> = l
                    .tls
                    .as_ref()
                    .map(|t| {
                        // the ACME certificate (named by its first name) and the files'
                        let acme = (t.acme_names.first())
                            .and_then(|n| Some((n.clone(), crate::acme::store().not_after(n)?)));
                        (acme.iter().chain(t.expiries.iter()))
                            .map(|(name, not_after)| {
                                let left = (*not_after - now_s as i64) / 86_400;
                                json!({"name": name, "not_after_ms": not_after.saturating_mul(1000), "days_left": left})
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                json!({"addr": l.label.to_string(), "tls": l.tls.is_some(), "h2c": l.h2c, "certificates": certs})
            })
            .collect();
        let st = &cache.store.stats;
        let ratio = |h: u64, m: u64| {
            if h + m == 0 {
                None
            } else {
                Some(h as f64 / (h + m) as f64)
            }
        };
        use std::sync::atomic::Ordering::Relaxed;
        let (mh, mm) = (st.hits.load(Relaxed), st.misses.load(Relaxed));
        let disk = cache.store.disk().map(|d| {
            let (h, m) = (d.stats.hits.load(Relaxed), d.stats.misses.load(Relaxed));
            json!({
                "available": d.available(),
                "bytes": d.size_bytes(),
                "objects": d.len(),
                "hits": h,
                "misses": m,
                "hit_ratio": ratio(h, m),
                "evictions": d.stats.evictions.load(Relaxed),
                "write_errors": d.stats.write_errors.load(Relaxed),
                "corrupt": d.stats.corrupt.load(Relaxed),
            })
        });
        let errors: Vec<ErrorEntry> = self
            .errors
            .lock()
            .map(|e| e.iter().rev().cloned().collect())
            .unwrap_or_default();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started_ms": unix_ms(self.started),
            "uptime_s": now.duration_since(self.started).map_or(0, |d| d.as_secs()),
            "config": {"version": snap.version, "sha256": snap.source_hash, "file": config_file},
            "last_reload": last_reload,
            "ready": ready,
            "listeners": listeners,
            "cache": {
                "memory": {
                    "bytes": cache.store.size_bytes(),
                    "objects": cache.store.len(),
                    "hits": mh,
                    "misses": mm,
                    "hit_ratio": ratio(mh, mm),
                    "evictions": st.evictions.load(Relaxed),
                },
                "disk": disk,
            },
            "limited": self.top_limited(10),
            "errors": errors,
        })
    }

    /// `/api/routes`: routes whose id, upstream or match contains `q`, one page of them.
    pub fn routes(
        &self,
        snap: &Snapshot,
        metrics: &Metrics,
        q: &str,
        page: usize,
        per_page: usize,
    ) -> Value {
        let mut source = snap.source.clone();
        crate::admin::redact(&mut source);
        let raw_routes = source
            .get("routes")
            .and_then(|r| r.as_sequence())
            .cloned()
            .unwrap_or_default();
        let totals = route_totals(metrics);
        let history = self.routes.lock().ok();
        let q = q.to_ascii_lowercase();
        let mut out = Vec::new();
        for r in &raw_routes {
            let id = r.get("id").and_then(|v| v.as_str()).unwrap_or("");
            let upstream = r.get("upstream").and_then(|v| v.as_str()).unwrap_or("");
            let m = r
                .get("match")
                .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            let hay = format!("{id} {upstream} {m}").to_ascii_lowercase();
            if !q.is_empty() && !hay.contains(&q) {
                continue;
            }
            let plugins: Vec<String> = r
                .get("plugins")
                .and_then(|p| p.as_sequence())
                .map(|p| {
                    p.iter()
                        .filter_map(|e| e.as_mapping())
                        .flat_map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_string)))
                        .collect()
                })
                .unwrap_or_default();
            let t = totals.get(id).cloned().unwrap_or_default();
            let points: Vec<Point> = history
                .as_ref()
                .and_then(|h| h.get(id))
                .map(|h| h.points.iter().copied().collect())
                .unwrap_or_default();
            out.push(json!({
                "id": id,
                "match": m,
                "upstream": upstream,
                "plugins": plugins,
                "requests_total": t.requests,
                "errors_total": t.errors,
                "history": points,
            }));
        }
        let total = out.len();
        let per_page = per_page.clamp(1, 500);
        let page = page.max(1);
        let items: Vec<Value> = out
            .into_iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .collect();
        json!({"total": total, "page": page, "per_page": per_page, "sample_seconds": SAMPLE.as_secs(), "routes": items})
    }

    /// `/api/upstreams`.
    pub fn upstreams(&self, snap: &Snapshot) -> Value {
        let rates = self.backends.lock().ok();
        let mut names: Vec<&String> = snap.upstreams.keys().collect();
        names.sort();
        let groups: Vec<Value> = names
            .into_iter()
            .filter_map(|n| snap.upstreams.get(n))
            .map(|g| {
                let backends: Vec<Value> = g
                    .backends
                    .iter()
                    .map(|m| {
                        let (in_flight, attempts, failures) = m.traffic();
                        let (rps, error_rate) = rates
                            .as_ref()
                            .and_then(|r| r.get(&format!("{}/{}", g.name, m.label)))
                            .map_or((0.0, 0.0), |e| e.1);
                        json!({
                            "addr": m.label.to_string(),
                            "healthy": m.is_healthy(),
                            "since_ms": m.healthy_since_ms(),
                            "breaker": m.breaker.as_ref().map(|b| b.state().as_str()),
                            "in_flight": in_flight,
                            "attempts_total": attempts,
                            "failures_total": failures,
                            "rps": rps,
                            "error_rate": error_rate,
                        })
                    })
                    .collect();
                json!({
                    "name": g.name.to_string(),
                    "health_checked": g.health.is_some(),
                    "backends": backends,
                })
            })
            .collect();
        json!({"upstreams": groups})
    }
}

/// A route's totals in the registry.
#[derive(Default, Clone)]
struct Totals {
    requests: u64,
    errors: u64,
    /// Latency histogram: (upper bound in seconds, cumulative count).
    buckets: Vec<(f64, u64)>,
}

/// Every route's totals, read from the registry.
fn route_totals(metrics: &Metrics) -> HashMap<String, Totals> {
    let mut out: HashMap<String, Totals> = HashMap::new();
    for f in metrics.gather() {
        match f.name() {
            "gatehouse_http_requests_total" => {
                for m in f.get_metric() {
                    let label = |n: &str| {
                        m.get_label()
                            .iter()
                            .find(|l| l.name() == n)
                            .map(|l| l.value().to_string())
                            .unwrap_or_default()
                    };
                    let v = m.get_counter().value() as u64;
                    let t = out.entry(label("route")).or_default();
                    t.requests += v;
                    if label("status_class") == "5xx" {
                        t.errors += v;
                    }
                }
            }
            "gatehouse_http_request_duration_seconds" => {
                for m in f.get_metric() {
                    let route = m
                        .get_label()
                        .iter()
                        .find(|l| l.name() == "route")
                        .map(|l| l.value().to_string())
                        .unwrap_or_default();
                    let h = m.get_histogram();
                    out.entry(route).or_default().buckets = h
                        .get_bucket()
                        .iter()
                        .map(|b| (b.upper_bound(), b.cumulative_count()))
                        .collect();
                }
            }
            _ => {}
        }
    }
    out
}

/// The `q` quantile (seconds) of one interval's histogram deltas (cumulative counts per
/// upper bound), interpolated inside its bucket; `None` without observations. Past the
/// last finite bound it answers that bound.
fn quantile(deltas: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = deltas.last().map(|d| d.1)?;
    if total == 0 {
        return None;
    }
    let target = q * total as f64;
    let mut prev = (0.0, 0u64);
    for &(le, cum) in deltas {
        if le.is_infinite() {
            break;
        }
        if cum as f64 >= target {
            if cum == prev.1 {
                return Some(le);
            }
            let frac = (target - prev.1 as f64) / (cum - prev.1) as f64;
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, cum);
    }
    Some(prev.0)
}

/// Samples the history every [`SAMPLE`] (a background service).
pub struct Sampler {
    pub board: Arc<Board>,
    pub state: Arc<SharedState>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl BackgroundService for Sampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            self.board.sample(&self.state.snapshot(), &self.metrics);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(SAMPLE) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        // 100 observations: 50 under 10 ms, 40 in 10-100 ms, 10 in 100 ms - 1 s
        let d = [(0.01, 50), (0.1, 90), (1.0, 100), (f64::INFINITY, 100)];
        assert_eq!(quantile(&d, 0.5), Some(0.01));
        let p99 = quantile(&d, 0.99).unwrap();
        assert!((p99 - 0.91).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&[(0.01, 0), (f64::INFINITY, 0)], 0.5), None);
        // all beyond the last finite bound
        assert_eq!(quantile(&[(0.01, 0), (f64::INFINITY, 5)], 0.5), Some(0.01));
    }

    #[test]
    fn the_limited_list_stays_bounded_and_keeps_heavy_hitters() {
        let b = Board::new();
        for _ in 0..100 {
            b.limited("api", "192.0.2.1");
        }
        for i in 0..1000 {
            b.limited("api", &format!("198.51.100.{}", i % 250));
        }
        assert_eq!(b.limited.lock().unwrap().len(), MAX_LIMITED);
        let top = b.top_limited(3);
        assert_eq!(top[0]["client"], "192.0.2.1");
        assert!(top[0]["count"].as_u64().unwrap() >= 100);
    }

    #[test]
    fn recent_errors_are_bounded() {
        let b = Board::new();
        for i in 0..(MAX_ERRORS + 10) {
            b.error(502, "r", "upstream", &format!("id-{i}"));
        }
        let e = b.errors.lock().unwrap();
        assert_eq!(e.len(), MAX_ERRORS);
        assert_eq!(
            e.back().unwrap().request_id,
            format!("id-{}", MAX_ERRORS + 9)
        );
    }
}
