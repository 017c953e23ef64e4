//! `rate_limit` plugin: limits requests per key over a sliding window, on Pingora's
//! `pingora-limits` rate estimator.
//!
//! ```yaml
//! - rate_limit:
//!     key: client_ip          # client_ip | global | client_cert | "header:X-Api-Key" | "claim:sub"
//!     requests: 100
//!     per: 1s                 # 1s, 1m, 1h ... (at least 1s)
//!     missing_key: reject     # header/claim/client_cert keys: reject (401) | client_ip (fall back)
//!     status: 429
//!     name: per-ip            # policy name in the RateLimit headers (default: the key)
//!     active_keys: 10000      # sizing of the estimator (memory), see below
//!     scope: local            # local (this instance counts alone) | global (shared on Redis)
//!     sync: exact             # with scope: global: exact (one atomic Redis call per request)
//!                             #   or an interval, e.g. 100ms: local decisions, batched pushes
//! ```
//!
//! ## `scope: global`
//!
//! Every gatehouse instance sharing the top-level `redis` section counts against one limit:
//! each limited request runs one atomic script on Redis (a sliding-window counter on Redis's
//! own clock, the same estimate as below), so N instances admit `requests` per window
//! together, not N times that, and the `RateLimit` headers stay exact. A key found over its
//! limit is refused locally until its window ends, without asking Redis again (at most
//! `active_keys` such keys are remembered). When Redis gives no answer within `redis.timeout`
//! (or its breaker is open) `redis.on_error` decides: `local` enforces
//! `ceil(requests / live instances)` on this instance's own counters, `allow` admits, `deny`
//! answers 503 with `Retry-After: 1`. Redis keys: `<key_prefix>rl:<route>:<name>:{<hash of the
//! counted value>}` (hash-tagged: one slot per key).
//!
//! ## How it counts, and its approximation
//!
//! Each instance owns a `pingora_limits::rate::Rate`: two count-min sketches (the current and
//! the previous window of length `per`), each `4 x slots` atomic counters. A request is allowed
//! when the sliding-window estimate `previous * (1 - elapsed_fraction) + current` plus this
//! request stays within `requests`; allowed requests are counted, rejected ones are not (so a
//! client over the limit still gets `requests` per window through, not zero).
//!
//! Memory is fixed at build time, whatever the number of distinct keys: `slots` is the next
//! power of two of `4 x active_keys` (10,000 keys: 65,536 slots, 4 MiB per instance). A
//! count-min sketch can only over-estimate: a key that shares a counter with busy keys in all
//! four rows looks busier than it is, which can reject a request early (never admit too many).
//! With `active_keys` sized to the real number of keys active within one window the chance is
//! small; `benches/rate_limit.rs` measures it (false rejections per million keys). The window
//! edges follow Pingora's estimator: the estimate assumes the previous window's requests were
//! spread evenly.
//!
//! ## Headers
//!
//! `RateLimit-Policy: "<name>";q=<requests>;w=<seconds>` and `RateLimit: "<name>";r=<remaining>;t=<seconds to reset>`
//! (draft-ietf-httpapi-ratelimit-headers) on allowed responses and on the rejection, which also
//! carries `Retry-After` (seconds, rounded up) and the gateway's JSON error body.

mod hybrid;

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_limits::rate::Rate;
use serde::Deserialize;

use crate::api::units::Dur;
use crate::api::{
    edit_response, BuildEnv, BuildError, BuildResult, DecisionMetric, Flow, GlobalCounters,
    GlobalError, OnError, Plugin, PluginCtx, PluginSpec, Reply, ResponseHeader, Result, Session,
    VerifiedClaims,
};

/// The plugin's YAML config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default = "default_key")]
    key: String,
    requests: u64,
    per: Dur,
    #[serde(default)]
    missing_key: Missing,
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default)]
    name: Option<String>,
    #[serde(default = "default_active")]
    active_keys: usize,
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    sync: Option<String>,
}

/// Who counts: this instance alone, or every instance on Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    Local,
    Global,
}

fn default_key() -> String {
    "client_ip".into()
}
fn default_status() -> u16 {
    429
}
fn default_active() -> usize {
    10_000
}

/// What to do when the request has no value for a header/claim key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    /// 401: a request without the key is not let through unlimited.
    #[default]
    Reject,
    /// Limit it by client IP instead.
    ClientIp,
}

#[derive(Debug, Clone)]
enum KeyKind {
    ClientIp,
    Global,
    /// The SHA-256 fingerprint of the verified client certificate (mutual TLS).
    ClientCert,
    Header(HeaderName),
    Claim(String),
}

/// What is counted. Variants keep an IP fallback apart from a header value with the same bytes.
#[derive(Hash)]
enum CountKey<'a> {
    V4(u32),
    /// The /64 prefix: an IPv6 client controls the lower 64 bits.
    V6(u64),
    Global,
    Value(&'a [u8]),
}

/// A [`CountKey`] that owns its value.
enum OwnedKey {
    V4(u32),
    V6(u64),
    Global,
    Value(Vec<u8>),
}

impl OwnedKey {
    fn as_key(&self) -> CountKey<'_> {
        match self {
            OwnedKey::V4(v) => CountKey::V4(*v),
            OwnedKey::V6(v) => CountKey::V6(*v),
            OwnedKey::Global => CountKey::Global,
            OwnedKey::Value(v) => CountKey::Value(v),
        }
    }
}

impl CountKey<'_> {
    fn owned(&self) -> OwnedKey {
        match self {
            CountKey::V4(v) => OwnedKey::V4(*v),
            CountKey::V6(v) => OwnedKey::V6(*v),
            CountKey::Global => OwnedKey::Global,
            CountKey::Value(v) => OwnedKey::Value(v.to_vec()),
        }
    }

    /// A stable 128-bit name for the counted value (the same in every instance and build).
    fn stable_hash(&self) -> u128 {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        match self {
            CountKey::V4(v) => {
                h.update([4]);
                h.update(v.to_be_bytes());
            }
            CountKey::V6(v) => {
                h.update([6]);
                h.update(v.to_be_bytes());
            }
            CountKey::Global => h.update([0]),
            CountKey::Value(v) => {
                h.update([1]);
                h.update(v);
            }
        }
        let d = h.finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        u128::from_be_bytes(b)
    }
}

fn ip_key(ip: IpAddr) -> CountKey<'static> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => CountKey::V4(u32::from(v4)),
        IpAddr::V6(v6) => CountKey::V6((u128::from(v6) >> 64) as u64),
    }
}

/// Per-request result kept for the response headers.
struct Seen {
    remaining: u64,
    reset: u64,
}

/// Keys known to be over their global limit, until their window ends (bounded).
struct OverLimit {
    until: Mutex<HashMap<u128, Instant>>,
    cap: usize,
}

impl OverLimit {
    /// How long `key` stays refused, if it is.
    fn left(&self, key: u128) -> Option<Duration> {
        let mut map = self.until.lock().ok()?;
        let until = *map.get(&key)?;
        let now = Instant::now();
        if until > now {
            return Some(until - now);
        }
        map.remove(&key);
        None
    }

    fn insert(&self, key: u128, until: Instant) {
        let Ok(mut map) = self.until.lock() else {
            return;
        };
        if map.len() >= self.cap {
            let now = Instant::now();
            map.retain(|_, t| *t > now);
            if map.len() >= self.cap {
                return;
            }
        }
        map.insert(key, until);
    }
}

/// The shared side of a `scope: global` limit.
struct Global {
    counters: Arc<dyn GlobalCounters>,
    /// `<key_prefix>rl:<route>:<name>:`
    prefix: String,
    over: OverLimit,
    /// `sync: <interval>`: local decisions, batched pushes ([`hybrid`]).
    hybrid: Option<Arc<hybrid::Hybrid>>,
    ticking: std::sync::Once,
}

/// What the limit says about one request.
enum Verdict {
    /// (allowed, remaining, seconds to reset)
    Decided(bool, u64, u64),
    /// The shared counters gave no answer and `on_error: deny`.
    Unavailable,
}

/// The `rate_limit` plugin.
pub struct RateLimit {
    global: Option<Global>,
    kind: KeyKind,
    limit: u64,
    per: Duration,
    missing: Missing,
    status: u16,
    rate: Rate,
    /// `"name";r=`: the start of every `RateLimit` value.
    rate_prefix: Vec<u8>,
    policy: HeaderValue,
}

impl RateLimit {
    /// `RateLimit: "name";r=remaining;t=reset`, written into one allocation of its exact size.
    fn rate_header(&self, remaining: u64, reset: u64) -> HeaderValue {
        let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (r, t) = (r.format(remaining).as_bytes(), t.format(reset).as_bytes());
        let mut v = Vec::with_capacity(self.rate_prefix.len() + r.len() + 3 + t.len());
        v.extend_from_slice(&self.rate_prefix);
        v.extend_from_slice(r);
        v.extend_from_slice(b";t=");
        v.extend_from_slice(t);
        HeaderValue::from_maybe_shared(bytes::Bytes::from(v))
            .unwrap_or(HeaderValue::from_static("\"limit\""))
    }

    /// (allowed, remaining, seconds to the window's end)
    fn decide(&self, key: &CountKey<'_>) -> (bool, u64, u64) {
        self.decide_within(key, self.limit)
    }

    /// The shared decision for `key` (see the module docs), recording fallbacks.
    async fn decide_global(
        &self,
        g: &Global,
        key: &CountKey<'_>,
        cx: &mut PluginCtx<'_>,
    ) -> Verdict {
        let h = key.stable_hash();
        if let Some(left) = g.over.left(h) {
            return Verdict::Decided(false, 0, left.as_secs_f64().ceil().max(1.0) as u64);
        }
        if let Some(hy) = &g.hybrid {
            if let hybrid::Local::Admit { remaining, reset } = hy.decide(h) {
                self.rate.observe(key, 1);
                return Verdict::Decided(true, remaining, reset);
            }
        }
        let redis_key = format!("{}{{{h:032x}}}", g.prefix);
        // with batched sync: this instance's unpushed counts go along (none left behind)
        let admitted = g.hybrid.as_ref().map_or(0, |hy| hy.take_pending(h));
        let asked = Instant::now();
        match g
            .counters
            .hit(&redis_key, self.limit, self.per, 1, admitted)
            .await
        {
            Ok(d) => {
                if let Some(hy) = &g.hybrid {
                    hy.learned(h, &redis_key, &d, admitted, asked);
                }
                let reset = d.reset.as_secs_f64().ceil().max(1.0) as u64;
                if d.allowed {
                    // the local counters follow, for the fallback
                    self.rate.observe(key, 1);
                } else {
                    g.over.insert(h, Instant::now() + d.reset);
                }
                Verdict::Decided(d.allowed, d.remaining, reset)
            }
            Err(e) => {
                if let Some(hy) = &g.hybrid {
                    hy.failed(h, admitted);
                }
                self.fallback(g, key, e, cx)
            }
        }
    }

    /// The verdict when the shared counters gave no answer, by `on_error`.
    fn fallback(
        &self,
        g: &Global,
        key: &CountKey<'_>,
        e: GlobalError,
        cx: &mut PluginCtx<'_>,
    ) -> Verdict {
        match g.counters.on_error() {
            OnError::Allow => {
                cx.info.record(Self::KIND, "fallback_allow");
                log::debug!("rate_limit: no global answer ({}), admitting", e.as_str());
                Verdict::Decided(true, self.limit.saturating_sub(1), self.per.as_secs())
            }
            OnError::Deny => {
                cx.info.record(Self::KIND, "fallback_deny");
                Verdict::Unavailable
            }
            OnError::Local => {
                cx.info.record(Self::KIND, "fallback_local");
                let n = g.counters.instances().max(1);
                let (a, r, t) = self.decide_within(key, self.limit.div_ceil(n));
                Verdict::Decided(a, r, t)
            }
        }
    }

    /// (allowed, remaining, seconds to the window's end) against `limit`, on this instance's
    /// counters.
    fn decide_within(&self, key: &CountKey<'_>, limit: u64) -> (bool, u64, u64) {
        let per_ms = self.per.as_millis() as f64;
        let (estimate, left_ms) = self.rate.rate_with(key, |c| {
            let est = c.prev_samples.max(0) as f64 * (1.0 - c.current_interval_fraction)
                + c.curr_samples.max(0) as f64;
            (est, (1.0 - c.current_interval_fraction) * per_ms)
        });
        let reset = ((left_ms / 1000.0).ceil() as u64).max(1);
        if estimate + 1.0 > limit as f64 {
            return (false, 0, reset);
        }
        self.rate.observe(key, 1);
        let remaining = (limit as f64 - estimate - 1.0).max(0.0).floor() as u64;
        (true, remaining, reset)
    }
}

#[async_trait]
impl Plugin for RateLimit {
    async fn request_filter(&self, s: &mut Session, cx: &mut PluginCtx<'_>) -> Result<Flow> {
        let ip = cx.info.client_ip;
        // the key borrows from the request or the claims: no copy per request
        let decision = {
            let text;
            let value: Option<&[u8]> = match &self.kind {
                KeyKind::ClientIp | KeyKind::Global => None,
                KeyKind::ClientCert => cx
                    .info
                    .client_cert
                    .as_ref()
                    .map(|c| c.fingerprint.as_bytes()),
                KeyKind::Header(h) => s.req_header().headers.get(h).map(|v| v.as_bytes()),
                KeyKind::Claim(c) => match cx
                    .info
                    .ext
                    .get::<VerifiedClaims>()
                    .and_then(|vc| vc.0.get(c))
                {
                    Some(serde_json::Value::String(v)) => Some(v.as_bytes()),
                    Some(serde_json::Value::Null) | None => None,
                    Some(other) => {
                        text = other.to_string();
                        Some(text.as_bytes())
                    }
                },
            };
            let key = match (&self.kind, value) {
                (KeyKind::ClientIp, _) => Some(ip_key(ip)),
                (KeyKind::Global, _) => Some(CountKey::Global),
                (_, Some(v)) if !v.is_empty() => Some(CountKey::Value(v)),
                (_, _) => (self.missing == Missing::ClientIp).then(|| ip_key(ip)),
            };
            match (key, &self.global) {
                (None, _) => None,
                (Some(k), None) => {
                    let (a, r, t) = self.decide(&k);
                    Some(Verdict::Decided(a, r, t))
                }
                (Some(k), Some(g)) => {
                    // owned: the value may borrow the request's claims, and cx goes on
                    let k = k.owned();
                    Some(self.decide_global(g, &k.as_key(), cx).await)
                }
            }
        };
        let (allowed, remaining, reset) = match decision {
            None => {
                cx.info.record(Self::KIND, "missing_key");
                return Ok(Flow::Respond(Reply::error(401, "missing rate limit key")));
            }
            Some(Verdict::Unavailable) => {
                let reply = Reply::error(503, "rate limit store unavailable")
                    .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                return Ok(Flow::Respond(reply));
            }
            Some(Verdict::Decided(a, r, t)) => (a, r, t),
        };
        if !allowed {
            cx.info.record(Self::KIND, "limited");
            let reply = Reply::error(self.status, "rate limit exceeded")
                .with_header(http::header::RETRY_AFTER, HeaderValue::from(reset))
                .with_header(
                    HeaderName::from_static("ratelimit-policy"),
                    self.policy.clone(),
                )
                .with_header(
                    HeaderName::from_static("ratelimit"),
                    self.rate_header(0, reset),
                );
            return Ok(Flow::Respond(reply));
        }
        cx.info.record(Self::KIND, "allowed");
        cx.set_state(Seen { remaining, reset });
        Ok(Flow::Continue)
    }

    fn published(&self) {
        if let Some(g) = &self.global {
            if let Some(hy) = &g.hybrid {
                g.ticking
                    .call_once(|| hybrid::spawn_ticker(Arc::downgrade(hy), hy.interval));
            }
        }
    }

    async fn response_filter(
        &self,
        _s: &mut Session,
        resp: &mut ResponseHeader,
        cx: &mut PluginCtx<'_>,
    ) -> Result<()> {
        let Some(seen) = cx.state::<Seen>() else {
            return Ok(());
        };
        let rate = self.rate_header(seen.remaining, seen.reset);
        edit_response(resp, 2, |h| {
            h.add(
                HeaderName::from_static("ratelimit-policy"),
                self.policy.clone(),
            )?;
            h.add(HeaderName::from_static("ratelimit"), rate)
        })
    }
}

impl PluginSpec for RateLimit {
    const KIND: &'static str = "rate_limit";
    const DECISION_METRIC: Option<DecisionMetric> = Some(DecisionMetric {
        name: "gatehouse_ratelimit_decisions_total",
        help: "Rate limit decisions by route and result (allowed, limited, missing_key; for scope: global without a Redis answer also fallback_local, fallback_allow, fallback_deny).",
    });
    type Config = RateLimitConfig;

    fn build(c: RateLimitConfig, env: &mut BuildEnv) -> BuildResult<Self> {
        let kind = match c.key.split_once(':') {
            None if c.key == "client_ip" => KeyKind::ClientIp,
            None if c.key == "global" => KeyKind::Global,
            None if c.key == "client_cert" => KeyKind::ClientCert,
            Some(("header", h)) => KeyKind::Header(
                HeaderName::from_bytes(h.trim().as_bytes()).map_err(|_| BuildError::at("key", format!("invalid header name `{h}`")))?,
            ),
            Some(("claim", n)) if !n.trim().is_empty() => KeyKind::Claim(n.trim().to_string()),
            _ => {
                return Err(BuildError::at(
                    "key",
                    format!("unknown key `{}`: use client_ip, global, client_cert, \"header:<Name>\" or \"claim:<name>\"", c.key),
                ))
            }
        };
        if c.requests == 0 {
            return Err(BuildError::at("requests", "must be at least 1"));
        }
        let per = c.per.0;
        if per < Duration::from_secs(1) || per > Duration::from_secs(86_400) {
            return Err(BuildError::at("per", "must be between 1s and 24h"));
        }
        if !(400..=599).contains(&c.status) {
            return Err(BuildError::at("status", "must be a 4xx or 5xx status"));
        }
        if c.active_keys == 0 || c.active_keys > 10_000_000 {
            return Err(BuildError::at("active_keys", "must be 1..=10000000"));
        }
        let rate = match kind {
            // one key: no sketch needed
            KeyKind::Global => Rate::new_with_estimator_config(per, 1, 1),
            _ => Rate::new_with_estimator_config(per, 4, (c.active_keys * 4).next_power_of_two()),
        };
        let name = c.name.unwrap_or_else(|| c.key.clone());
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            return Err(BuildError::at(
                "name",
                "printable ASCII without quotes or backslashes",
            ));
        }
        let policy =
            HeaderValue::from_str(&format!("\"{name}\";q={};w={}", c.requests, per.as_secs()))
                .map_err(|_| BuildError::at("name", "not a valid header value"))?;
        let global = match c.scope {
            Scope::Local => {
                if c.sync.is_some() {
                    return Err(BuildError::at("sync", "only with `scope: global`"));
                }
                None
            }
            Scope::Global => {
                let interval = match c.sync.as_deref() {
                    None | Some("exact") => None,
                    Some(text) => {
                        let d = crate::api::units::parse_duration(text).map_err(|e| {
                            BuildError::at("sync", format!("`exact` or an interval: {e}"))
                        })?;
                        if d < Duration::from_millis(10) || d > per / 4 {
                            return Err(BuildError::at(
                                "sync",
                                "an interval between 10ms and a quarter of `per`",
                            ));
                        }
                        Some(d)
                    }
                };
                let Some(counters) = env.global.clone() else {
                    return Err(BuildError::at(
                        "scope",
                        "`scope: global` needs the top-level `redis` section",
                    ));
                };
                let route = env.route_id.as_deref().unwrap_or("-");
                let hybrid = interval.map(|i| {
                    Arc::new(hybrid::Hybrid::new(
                        Arc::clone(&counters),
                        i,
                        c.requests,
                        per,
                        c.active_keys,
                    ))
                });
                Some(Global {
                    prefix: format!("{}rl:{route}:{name}:", counters.key_prefix()),
                    counters,
                    over: OverLimit {
                        until: Mutex::new(HashMap::new()),
                        cap: c.active_keys,
                    },
                    hybrid,
                    ticking: std::sync::Once::new(),
                })
            }
        };
        Ok(RateLimit {
            global,
            kind,
            limit: c.requests,
            per,
            missing: c.missing_key,
            status: c.status,
            rate,
            rate_prefix: format!("\"{name}\";r=").into_bytes(),
            policy,
        })
    }
}

impl RateLimit {
    /// Decides for one client IP (benchmarks: `true` = allowed).
    pub fn check_ip(&self, ip: IpAddr) -> bool {
        self.decide(&ip_key(ip)).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::{session_from_bytes, test_info};

    fn build(yaml: &str) -> BuildResult<RateLimit> {
        crate::api::testing::build(yaml)
    }

    async fn run(p: &RateLimit, ip: &str, headers: &str) -> (u16, Vec<(String, String)>) {
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{headers}\r\n");
        let mut s = session_from_bytes(raw.as_bytes()).await.unwrap();
        let mut info = test_info();
        info.client_ip = ip.parse().unwrap();
        let mut slot = None;
        let mut cx = PluginCtx::new(&mut info, &mut slot);
        match p.request_filter(&mut s, &mut cx).await.unwrap() {
            Flow::Respond(r) => (
                r.status,
                r.headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                    .collect(),
            ),
            Flow::Continue => {
                let mut resp = ResponseHeader::build(200, None).unwrap();
                p.response_filter(&mut s, &mut resp, &mut cx).await.unwrap();
                (
                    200,
                    resp.headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                        .collect(),
                )
            }
        }
    }

    #[tokio::test]
    async fn limits_per_ip_and_ipv6_prefix() {
        let p = build("key: client_ip\nrequests: 3\nper: 1m\nname: per-ip").unwrap();
        for i in 0..3 {
            let (st, h) = run(&p, "192.0.2.7", "").await;
            assert_eq!(st, 200);
            assert!(
                h.contains(&("ratelimit".into(), format!("\"per-ip\";r={};t=60", 2 - i))),
                "{h:?}"
            );
            assert!(h.contains(&("ratelimit-policy".into(), "\"per-ip\";q=3;w=60".into())));
        }
        let (st, h) = run(&p, "192.0.2.7", "").await;
        assert_eq!(st, 429);
        assert!(h
            .iter()
            .any(|(k, v)| k == "retry-after" && v.parse::<u64>().unwrap() >= 1));
        assert!(h.contains(&("ratelimit".into(), "\"per-ip\";r=0;t=60".into())));
        assert_eq!(
            run(&p, "192.0.2.8", "").await.0,
            200,
            "another client is not limited"
        );
        // IPv6: the /64 is one client
        for _ in 0..3 {
            assert_eq!(run(&p, "2001:db8:1:2::1", "").await.0, 200);
        }
        assert_eq!(run(&p, "2001:db8:1:2:ffff::9", "").await.0, 429);
        assert_eq!(run(&p, "2001:db8:1:3::1", "").await.0, 200);
    }

    #[tokio::test]
    async fn header_keys_and_missing_key() {
        let p = build("key: \"header:X-Api-Key\"\nrequests: 1\nper: 1m").unwrap();
        assert_eq!(run(&p, "192.0.2.1", "X-Api-Key: a\r\n").await.0, 200);
        assert_eq!(
            run(&p, "192.0.2.2", "X-Api-Key: a\r\n").await.0,
            429,
            "same key from another IP"
        );
        assert_eq!(run(&p, "192.0.2.1", "X-Api-Key: b\r\n").await.0, 200);
        assert_eq!(run(&p, "192.0.2.1", "").await.0, 401);
        let q = build("key: \"header:X-Api-Key\"\nrequests: 1\nper: 1m\nmissing_key: client_ip")
            .unwrap();
        assert_eq!(run(&q, "192.0.2.1", "").await.0, 200);
        assert_eq!(run(&q, "192.0.2.1", "").await.0, 429);
        assert_eq!(run(&q, "192.0.2.9", "").await.0, 200);
    }

    #[tokio::test]
    async fn client_cert_key_counts_per_certificate() {
        let p = build("key: client_cert\nrequests: 1\nper: 1m").unwrap();
        let go = |fp: Option<&str>| {
            let cert = fp.map(|f| {
                std::sync::Arc::new(crate::api::ClientCert {
                    subject: "CN=ops-1".into(),
                    sans: vec![],
                    fingerprint: f.into(),
                    serial: "01".into(),
                    not_after: 0,
                })
            });
            let p = &p;
            async move {
                let mut s = session_from_bytes(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                    .await
                    .unwrap();
                let mut info = test_info();
                info.client_cert = cert;
                let mut slot = None;
                let mut cx = PluginCtx::new(&mut info, &mut slot);
                match p.request_filter(&mut s, &mut cx).await.unwrap() {
                    Flow::Respond(r) => r.status,
                    Flow::Continue => 200,
                }
            }
        };
        assert_eq!(go(Some("aa11")).await, 200);
        assert_eq!(go(Some("aa11")).await, 429, "same certificate again");
        assert_eq!(go(Some("bb22")).await, 200, "another certificate");
        assert_eq!(go(None).await, 401, "no certificate: missing key");
    }

    #[test]
    fn config_errors() {
        assert_eq!(build("requests: 1\nper: 100ms").err().unwrap().path, "per");
        assert_eq!(
            build("requests: 0\nper: 1s").err().unwrap().path,
            "requests"
        );
        assert_eq!(
            build("key: cookie:x\nrequests: 1\nper: 1s")
                .err()
                .unwrap()
                .path,
            "key"
        );
        assert_eq!(
            build("requests: 1\nper: 1s\nstatus: 200")
                .err()
                .unwrap()
                .path,
            "status"
        );
        assert!(build("requests: 1\nper: 1s\nmissing_key: unlimited").is_err());
    }
}
