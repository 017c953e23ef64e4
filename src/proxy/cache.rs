//! Response caching on Pingora's cache phases. A route caches when its `cache` plugin set a
//! [`CacheIntent`]; then:
//!
//! - `request_cache_filter` enables Pingora's cache with the shared [`TieredStore`] (memory,
//!   bounded by `server.cache.max_size`, and the disk tier of `server.cache.disk`; the store
//!   runs both LRUs) and the cache lock (concurrent misses for one key make one upstream
//!   request; the others wait up to `lock_timeout`);
//! - `cache_key_callback` keys on scheme, host, port, method class (HEAD shares GET's entry)
//!   and the full path with query, so two hosts or ports never share an entry;
//! - `response_cache_filter` decides cacheability and freshness (RFC 9111): `Cache-Control`
//!   (`no-store`, `private`, `no-cache`, `max-age`, `s-maxage`), `Expires`, minus `Age`;
//!   `default_ttl` only when the upstream says nothing. Never stored: `Set-Cookie`, `Vary: *`,
//!   answers to requests with `Authorization` unless `public`/`s-maxage` allows it;
//! - `cache_vary_filter` splits entries by the configured request headers and the upstream's
//!   `Vary`;
//! - stale entries are served inside `stale_while_revalidate` (refreshed in the background)
//!   and, when the upstream fails, inside `stale_if_error` (RFC 5861); upstream directives count.
//!
//! Responses carry `Cache-Status` (RFC 9211), with `detail=disk` on hits from the disk tier;
//! Pingora adds `Age` to hits.

use std::time::{Duration, SystemTime};

use gatehouse_plugins::api::CacheIntent;
use http::header::{AUTHORIZATION, HOST, SET_COOKIE, VARY};
use http::HeaderValue;
use pingora_cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora_cache::filters::{calculate_expires_header_time, calculate_serve_stale_durations};
use pingora_cache::key::HashBinary;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::{
    CacheKey, CacheMeta, CacheMetaDefaults, CachePhase, NoCacheReason, RespCacheable,
    VarianceBuilder,
};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::cache_disk::DiskTier;
use super::cache_store::{hit_tier, Tier, TieredStore};
use super::ctx::Ctx;

/// The process-wide cache: the tiered storage and the lock, created once at startup.
#[derive(Clone, Copy)]
pub struct CacheRuntime {
    pub store: &'static TieredStore,
    pub lock: &'static CacheKeyLockImpl,
}

/// The cache's settings that take effect at startup (see `server.cache`).
pub struct CacheSettings {
    pub max_size: usize,
    pub max_object_size: usize,
    pub lock_timeout: Duration,
    /// The disk tier.
    pub disk: Option<DiskSettings>,
}

/// `server.cache.disk` as the cache takes it.
pub struct DiskSettings {
    pub path: std::path::PathBuf,
    pub max_size: usize,
    pub max_object_size: usize,
    pub max_objects: usize,
}

impl CacheRuntime {
    /// Creates the cache (leaked: Pingora needs `'static` references; there is one per process).
    /// Opening the disk tier never fails: trouble with its directory leaves it unavailable
    /// (logged, `gatehouse_cache_disk_available 0`) and the memory tier serves alone.
    pub fn new(s: CacheSettings) -> Self {
        let disk = s
            .disk
            .map(|d| DiskTier::open(&d.path, d.max_size, d.max_object_size, d.max_objects));
        CacheRuntime {
            store: Box::leak(Box::new(TieredStore::new(
                s.max_size,
                s.max_object_size,
                disk,
            ))),
            lock: Box::leak(CacheLock::new_boxed(s.lock_timeout)),
        }
    }

    /// Applies new memory bounds (the LRU evicts down to `max_size` as objects are admitted).
    pub fn set_limits(&self, max_size: usize, max_object_size: usize) {
        self.store.set_limits(max_size, max_object_size);
    }

    /// Purges every variant of `GET http://host:port/path?query` for each of `ports` (a URL
    /// without a port may have been cached under any listener's), from both tiers; returns
    /// how many objects went.
    pub async fn purge(&self, host: &str, ports: &[u16], path_and_query: &str) -> usize {
        let mut purged = 0;
        for port in ports {
            let key = CacheKey::new(format!("GET http://{host}:{port}{path_and_query}"), "");
            purged += self.store.purge_all_variants(&key).await;
        }
        purged
    }

    /// Empties the whole cache (both tiers); returns how many objects went.
    pub async fn clear(&self) -> usize {
        self.store.clear().await
    }
}

/// A request's cache state.
#[derive(Default)]
pub(crate) struct CacheState {
    /// The route's cache intent, when caching is enabled for this request.
    intent: Option<CacheIntent>,
    /// Whether the response is being stored.
    stored: bool,
    /// The cache result, for metrics and the access log.
    result: Option<&'static str>,
    /// The tier a hit came from.
    tier: Option<Tier>,
}

impl CacheState {
    /// The cache result (`hit`, `miss`, ...) of a request on a caching route.
    pub(crate) fn result(&self) -> Option<&'static str> {
        self.result
    }

    /// The tier a hit came from (`memory`, `disk`).
    pub(crate) fn tier(&self) -> Option<&'static str> {
        self.tier.map(Tier::label)
    }
}

/// Enables caching for this request when the route's `cache` plugin asked for it.
pub(super) fn request_cache_filter(rt: &CacheRuntime, s: &mut Session, ctx: &mut Ctx) {
    let Some(intent) = ctx.info.ext.get::<CacheIntent>() else {
        return;
    };
    if ctx.chosen.is_some() {
        // the cache is keyed by URL: a response from an upstream a plugin chose (a canary)
        // is neither served from it nor stored in it
        return;
    }
    // the store runs its tiers' LRUs itself: Pingora gets no eviction manager
    s.cache.enable(rt.store, None, None, Some(rt.lock), None);
    s.cache
        .set_max_file_size_bytes(intent.max_object_size.min(rt.store.max_storable()));
    ctx.cache.intent = Some(intent.clone());
}

/// `scheme://host:port/path?query`, lowercase host, explicit port.
pub fn url_key(req: &RequestHeader, listener_port: u16) -> String {
    let mut out = String::with_capacity(64);
    push_url_key(&mut out, req, listener_port);
    out
}

/// Appends [`url_key`] to `out`.
fn push_url_key(out: &mut String, req: &RequestHeader, listener_port: u16) {
    use std::fmt::Write;
    let host = req
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())
        .unwrap_or("");
    let (name, port) = split_host_port(host, listener_port);
    let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
    out.push_str("http://");
    out.extend(name.chars().map(|c| c.to_ascii_lowercase()));
    let _ = write!(out, ":{port}");
    out.push_str(pq);
}

fn split_host_port(host: &str, default_port: u16) -> (&str, u16) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((v6, tail)) = rest.split_once(']') {
            let port = tail
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .unwrap_or(default_port);
            return (v6, port);
        }
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().unwrap_or(default_port)),
        _ => (host, default_port),
    }
}

/// The cache key: method class + URL. Primary only; variants come from `cache_vary_filter`.
pub(super) fn cache_key(s: &Session) -> CacheKey {
    let port = s
        .server_addr()
        .and_then(|a| a.as_inet())
        .map_or(80, |a| a.port());
    // HEAD is answered from GET's entry
    let mut primary = String::with_capacity(96);
    primary.push_str("GET ");
    push_url_key(&mut primary, s.req_header(), port);
    let mut key = CacheKey::new(primary, "");
    // Pingora hashes the primary key (blake2b) each time it asks for it (lookup, lock,
    // eviction, storage); hash once and hand it the result
    let bin = pingora_cache::key::CacheHashKey::primary_bin(&key);
    key.set_primary_bin_override(bin);
    key
}

/// Statuses cacheable by default (RFC 9110 15.1) when the upstream gives no freshness.
fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

fn no_fresh(_: http::StatusCode) -> Option<Duration> {
    None
}

/// Decides whether and how long the response may be stored.
pub(super) fn response_cache_filter(
    s: &Session,
    resp: &ResponseHeader,
    ctx: &mut Ctx,
) -> RespCacheable {
    let Some(intent) = &ctx.cache.intent else {
        return RespCacheable::Uncacheable(NoCacheReason::NeverEnabled);
    };
    let cc = CacheControl::from_resp_headers(resp);
    let authorized = s.req_header().headers.contains_key(AUTHORIZATION);
    let now = SystemTime::now();
    let fresh_until = match decide(resp, cc.as_ref(), authorized, intent.default_ttl, now) {
        Ok(t) => t,
        Err(reason) => return RespCacheable::Uncacheable(reason),
    };
    let defaults = CacheMetaDefaults::new(
        no_fresh,
        intent
            .stale_while_revalidate
            .as_secs()
            .min(u64::from(u32::MAX)) as u32,
        intent.stale_if_error.as_secs().min(u64::from(u32::MAX)) as u32,
    );
    let (swr, sie) = calculate_serve_stale_durations(cc.as_ref(), &defaults);
    let mut header = resp.clone();
    if let Some(c) = &cc {
        c.strip_private_headers(&mut header);
    }
    ctx.cache.stored = true;
    RespCacheable::Cacheable(CacheMeta::new(fresh_until, now, swr, sie, header))
}

/// Whether `resp` may be stored (RFC 9111) and until when it is fresh: `Set-Cookie`,
/// `Vary: *`, `no-store`/`private`, and an `Authorization` request without `public` or
/// `s-maxage` are never stored; the lifetime is `s-maxage`/`max-age`, else `Expires`, else
/// `default_ttl` for heuristically cacheable statuses, minus `Age`. A response stale from
/// the start is stored already expired (to be revalidated).
fn decide(
    resp: &ResponseHeader,
    cc: Option<&CacheControl>,
    authorized: bool,
    default_ttl: Duration,
    now: SystemTime,
) -> Result<SystemTime, NoCacheReason> {
    if resp.headers.contains_key(SET_COOKIE) {
        return Err(NoCacheReason::Custom("set-cookie"));
    }
    let vary_star = resp.headers.get_all(VARY).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim() == "*"))
            .unwrap_or(true)
    });
    if vary_star {
        return Err(NoCacheReason::Custom("vary-star"));
    }
    if authorized && !cc.is_some_and(|c| c.allow_caching_authorized_req()) {
        return Err(NoCacheReason::Custom("authorization"));
    }
    if cc.is_some_and(|c| c.is_cacheable() == Cacheable::No) {
        return Err(NoCacheReason::OriginNotCache);
    }
    let age = resp
        .headers
        .get(http::header::AGE)
        .and_then(|a| a.to_str().ok())
        .and_then(|a| a.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let lifetime = cc.and_then(|c| c.fresh_duration());
    let fresh_until = match lifetime {
        Some(l) => now.checked_add(l.saturating_sub(age)),
        None => calculate_expires_header_time(resp).or_else(|| {
            heuristically_cacheable(resp.status.as_u16())
                .then(|| now.checked_add(default_ttl.saturating_sub(age)))
                .flatten()
        }),
    };
    let Some(mut fresh_until) = fresh_until else {
        return Err(NoCacheReason::OriginNotCache);
    };
    if fresh_until <= now {
        // stale from the start (no-cache, max-age=0, old Expires): store, but revalidate
        fresh_until = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
    }
    Ok(fresh_until)
}

/// The caching decision on a response's headers alone, for the fuzz target.
pub fn cache_decision(
    resp: &ResponseHeader,
    authorized: bool,
    default_ttl: Duration,
    now: SystemTime,
) -> Result<SystemTime, NoCacheReason> {
    let cc = CacheControl::from_resp_headers(resp);
    decide(resp, cc.as_ref(), authorized, default_ttl, now)
}

/// The request headers an entry varies on: `configured` plus the response's `Vary`
/// (`headers`),
/// lowercase, sorted, each once.
pub fn vary_names(configured: &[http::HeaderName], headers: &http::HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = configured.iter().map(|h| h.as_str().to_string()).collect();
    for v in headers.get_all(VARY) {
        if let Ok(v) = v.to_str() {
            names.extend(
                v.split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .filter(|t| !t.is_empty()),
            );
        }
    }
    names.sort();
    names.dedup();
    names
}

/// The variance key: the configured headers plus the upstream's `Vary`.
pub(super) fn cache_vary_filter(
    meta: &CacheMeta,
    ctx: &Ctx,
    req: &RequestHeader,
) -> Option<HashBinary> {
    let intent = ctx.cache.intent.as_ref()?;
    let names = vary_names(&intent.vary, meta.headers());
    if names.is_empty() {
        return None;
    }
    let values: Vec<(String, Vec<u8>)> = names
        .into_iter()
        .map(|n| {
            let v = req
                .headers
                .get_all(n.as_str())
                .iter()
                .map(|v| v.as_bytes())
                .collect::<Vec<_>>()
                .join(&b',');
            (n, v)
        })
        .collect();
    let mut vb = VarianceBuilder::new();
    for (n, v) in &values {
        vb.add_value(n, v);
    }
    vb.finalize()
}

/// Notes which tier a hit comes from (for `Cache-Status`).
pub(super) fn hit_filter(hit: &pingora_cache::HitHandler, ctx: &mut Ctx) {
    ctx.cache.tier = Some(hit_tier(hit));
}

/// `Cache-Status` (RFC 9211) and the metric label for this response.
fn status(s: &Session, stored: bool, tier: Option<Tier>) -> (&'static str, &'static str) {
    let disk = tier == Some(Tier::Disk);
    match (s.cache.phase(), stored) {
        (CachePhase::Hit, _) if disk => ("gatehouse; hit; detail=disk", "hit"),
        (CachePhase::Hit, _) => ("gatehouse; hit", "hit"),
        (CachePhase::Stale | CachePhase::StaleUpdating, _) if disk => {
            ("gatehouse; hit; detail=stale-disk", "stale")
        }
        (CachePhase::Stale | CachePhase::StaleUpdating, _) => {
            ("gatehouse; hit; detail=stale", "stale")
        }
        (CachePhase::Miss, false) => ("gatehouse; fwd=miss", "miss"),
        (CachePhase::Miss, true) => ("gatehouse; fwd=miss; stored", "miss"),
        (CachePhase::Expired, false) => ("gatehouse; fwd=stale", "expired"),
        (CachePhase::Expired, true) => ("gatehouse; fwd=stale; stored", "expired"),
        (CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_), _) => {
            ("gatehouse; fwd=stale; fwd-status=304", "revalidated")
        }
        _ => ("gatehouse; fwd=bypass", "bypass"),
    }
}

/// On a caching route: adds `Cache-Status` to the response and notes the result.
pub(super) fn response_header(s: &Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
    if ctx.cache.intent.is_none() {
        return Ok(());
    }
    let (value, label) = status(s, ctx.cache.stored, ctx.cache.tier);
    resp.insert_header("cache-status", HeaderValue::from_static(value))?;
    ctx.cache.result = Some(label);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_hosts_and_ports() {
        let mut a = RequestHeader::build("GET", b"/p?q=1", None).unwrap();
        a.insert_header("host", "Example.com").unwrap();
        assert_eq!(url_key(&a, 8080), "http://example.com:8080/p?q=1");
        a.insert_header("host", "example.com:9000").unwrap();
        assert_eq!(url_key(&a, 8080), "http://example.com:9000/p?q=1");
        a.insert_header("host", "[::1]:81").unwrap();
        assert_eq!(url_key(&a, 8080), "http://::1:81/p?q=1");
    }
}
