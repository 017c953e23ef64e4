//! The process's one connection to Redis (the top-level `redis` section): shared counters for
//! `rate_limit` with `scope: global`, and the registry of live gateway instances.
//!
//! - One `redis::aio::ConnectionManager` (one multiplexed socket, TCP_NODELAY on), driven by a
//!   thread of its own with a small runtime, so it lives independently of the proxy's
//!   runtimes and of reloads. A reload whose `redis` section did not change keeps the link
//!   (and so its connection); a changed section builds a new one and the old one stops when
//!   the last snapshot using it is gone.
//! - Every call on the request path is bounded by `redis.timeout`. A breaker opens after
//!   [`Breaker::THRESHOLD`] failures in a row (timeouts or errors); while it is open the
//!   request path does not call Redis at all (callers fall back, `redis.on_error`), and the
//!   link thread probes with `PING` every 500 ms. A probe that succeeds closes the breaker;
//!   three that fail rebuild the connection (the manager reconnects on its own after a
//!   dropped connection, never after a hung one: only timeouts tell of that).
//! - Counting scripts are never retried (a retried count could count twice). `EVALSHA`
//!   answered `NOSCRIPT` (after `SCRIPT FLUSH` or a restart) loads the script and runs it: the
//!   first call did not run, so nothing is counted twice.
//! - Every second each instance registers itself (`ZADD <prefix>instances`, on Redis's clock)
//!   and reads how many registered within 5 s: `on_error: local` enforces
//!   `ceil(limit / instances)`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use gatehouse_plugins::api::{GlobalCounters, GlobalDecision, GlobalError, OnError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::metrics::RedisMetrics;

/// The compiled `redis` section. Two links with equal settings are the same link.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: String,
    /// `redis.tls`, read: the files' contents (a rotated certificate is a changed setting).
    pub tls: Option<TlsFiles>,
    pub password: Option<String>,
    pub key_prefix: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub on_error: OnError,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the password, nor the URL's user info
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// PEM contents of `redis.tls`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<Vec<u8>>,
    /// Certificate chain and key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// `url` with any user info (`user:password@` before the host) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme + 3..];
    let authority = rest.find(['/', '?', '#']).map_or(rest, |end| &rest[..end]);
    match authority.rfind('@') {
        Some(at) => format!("{}***{}", &url[..scheme + 3], &rest[at..]),
        None => url.to_string(),
    }
}

/// Parses the connection info of `settings` (the URL, with the password field): the message
/// is a config error for `redis.url`.
pub fn connection_info(settings: &RedisSettings) -> Result<redis::ConnectionInfo, String> {
    use redis::IntoConnectionInfo;
    let info = settings
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("invalid Redis URL `{}`: {e}", redact_url(&settings.url)))?;
    let mut redis_info = info.redis_settings().clone();
    if let Some(p) = &settings.password {
        redis_info = redis_info.set_password(p);
    }
    let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
    Ok(info.set_redis_settings(redis_info).set_tcp_settings(tcp))
}

/// The client for `settings`: its URL and password, and with `rediss://` its TLS roots and
/// client certificate. The message is a config error for `redis.url`.
pub fn client(settings: &RedisSettings) -> Result<redis::Client, String> {
    let info = connection_info(settings)?;
    let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    match &settings.tls {
        Some(files) if tls => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: files
                    .client
                    .as_ref()
                    .map(|(cert, key)| redis::ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.clone(),
                    }),
                root_cert: files.ca.clone(),
            },
        )
        .map_err(|e| format!("TLS settings for `{}`: {e}", redact_url(&settings.url))),
        Some(_) => Err(format!(
            "`redis.tls` needs a `rediss://` URL, not `{}`",
            redact_url(&settings.url)
        )),
        None => redis::Client::open(info)
            .map_err(|e| format!("invalid Redis URL `{}`: {e}", redact_url(&settings.url))),
    }
}

/// The sliding-window check-and-count, on Redis's clock: KEYS[1] a hash of window index ->
/// count; ARGV limit, window in ms, cost, and hits already admitted elsewhere (counted first,
/// unconditionally). Returns {allowed, remaining, ms to the window's end}.
const HIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local w = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local admitted = tonumber(ARGV[4])
local idx = math.floor(now / w)
local frac = (now % w) / w
if admitted > 0 then
  redis.call('HINCRBY', KEYS[1], idx, admitted)
  redis.call('PEXPIRE', KEYS[1], 2 * w)
end
local curr = tonumber(redis.call('HGET', KEYS[1], idx) or '0')
local prev = tonumber(redis.call('HGET', KEYS[1], idx - 1) or '0')
local est = prev * (1 - frac) + curr
local reset = w - (now % w)
if est + cost > limit then
  return {0, 0, reset}
end
if cost > 0 then
  redis.call('HINCRBY', KEYS[1], idx, cost)
  redis.call('HDEL', KEYS[1], idx - 2)
  redis.call('PEXPIRE', KEYS[1], 2 * w)
end
return {1, math.floor(limit - est - cost), reset}
";

/// Adds ARGV[2] (already admitted) to KEYS[1]'s current window (ARGV[1] ms): returns
/// {estimate after, ms to the window's end}.
const ADD: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local w = tonumber(ARGV[1])
local idx = math.floor(now / w)
local frac = (now % w) / w
local curr = redis.call('HINCRBY', KEYS[1], idx, tonumber(ARGV[2]))
redis.call('HDEL', KEYS[1], idx - 2)
redis.call('PEXPIRE', KEYS[1], 2 * w)
local prev = tonumber(redis.call('HGET', KEYS[1], idx - 1) or '0')
return {math.ceil(prev * (1 - frac) + curr), w - (now % w)}
";

/// Registers ARGV[1] in the sorted set KEYS[1] at Redis's time, drops entries older than
/// ARGV[2] ms, returns how many are left.
const REGISTER: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
";

/// Failures in a row before the breaker opens.
#[derive(Debug, Default)]
pub struct Breaker {
    failures: AtomicU32,
    open: AtomicBool,
}

impl Breaker {
    pub const THRESHOLD: u32 = 5;

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// A failed call: `true` when this one opened the breaker.
    fn failure(&self) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        n >= Self::THRESHOLD && !self.open.swap(true, Ordering::Relaxed)
    }

    fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A probe succeeded: calls resume.
    fn close(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.open.store(false, Ordering::Relaxed);
    }
}

/// The shared connection and what goes with it. See the module docs.
pub struct RedisLink {
    pub settings: RedisSettings,
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    breaker: Breaker,
    instances: AtomicU64,
    /// This process's name in the instance registry.
    id: String,
    hit: redis::Script,
    add: redis::Script,
    register: redis::Script,
    metrics: RedisMetrics,
    started: AtomicBool,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RedisLink {
    /// A link for `settings`, not started (compiling a config starts nothing): calls fail
    /// with [`GlobalError::Unavailable`] until [`RedisLink::start`].
    pub(crate) fn new(settings: RedisSettings, metrics: RedisMetrics) -> Result<Self, String> {
        let client = client(&settings)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Ok(RedisLink {
            settings,
            client,
            conn: ArcSwapOption::empty(),
            breaker: Breaker::default(),
            instances: AtomicU64::new(1),
            id: format!("{}-{nanos:08x}", std::process::id()),
            hit: redis::Script::new(HIT),
            add: redis::Script::new(ADD),
            register: redis::Script::new(REGISTER),
            metrics,
            started: AtomicBool::new(false),
        })
    }

    /// Starts the link's thread (once; later calls do nothing). It connects, registers this
    /// instance every second, probes while the breaker is open, and ends when the link is
    /// dropped.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("gatehouse-redis".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        log::error!("redis: no runtime for the link thread: {e}");
                        return;
                    }
                };
                rt.block_on(run(weak));
            });
        if let Err(e) = spawned {
            log::error!("redis: could not start the link thread: {e}");
        }
    }

    /// A new connection manager (lazy: it connects on first use, in the background).
    fn connect(&self) -> Option<Arc<ConnectionManager>> {
        let client = self.client.clone();
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout))
            .set_response_timeout(Some(self.settings.connect_timeout))
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1));
        match ConnectionManager::new_lazy_with_config(client, cfg) {
            Ok(m) => Some(Arc::new(m)),
            Err(e) => {
                log::error!("redis: {e}");
                None
            }
        }
    }

    fn failed(&self, op: &str, reason: GlobalError) {
        self.metrics
            .errors
            .with_label_values(&[op, reason.as_str()])
            .inc();
        if self.breaker.failure() {
            log::warn!(
                "redis: {} failures in a row, the breaker opens: falling back (on_error) until Redis answers again",
                Breaker::THRESHOLD
            );
            self.metrics.breaker_open.set(1);
            self.metrics.up.set(0);
        }
    }

    /// Runs `f` on the connection within `limit`, counting it under `op`.
    async fn call<T, F, Fut>(&self, op: &str, limit: Duration, f: F) -> Result<T, GlobalError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let Some(conn) = self.conn.load_full() else {
            return Err(GlobalError::Unavailable);
        };
        let started = Instant::now();
        let r = tokio::time::timeout(limit, f((*conn).clone())).await;
        self.metrics
            .calls
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        match r {
            Ok(Ok(v)) => {
                self.breaker.success();
                Ok(v)
            }
            Ok(Err(e)) => {
                log::debug!("redis: {op}: {e}");
                self.failed(op, GlobalError::Failed);
                Err(GlobalError::Failed)
            }
            Err(_) => {
                self.failed(op, GlobalError::Timeout);
                Err(GlobalError::Timeout)
            }
        }
    }

    /// The registry key.
    fn instances_key(&self) -> String {
        format!("{}instances", self.settings.key_prefix)
    }

    /// The stream every instance's purges go through (`purge_feed`).
    pub fn purge_stream(&self) -> String {
        format!("{}cache:purge", self.settings.key_prefix)
    }

    /// This instance's name (in the registry and as the origin of its purges).
    pub fn instance_id(&self) -> &str {
        &self.id
    }

    /// How to open a connection of one's own (the purge feed's blocking reads must not hold
    /// up the shared one).
    pub fn client(&self) -> redis::Client {
        self.client.clone()
    }

    pub(crate) fn metrics(&self) -> &RedisMetrics {
        &self.metrics
    }

    /// Publishes a purge of `url` to the other instances (`XADD` to the purge stream, kept to
    /// about 10,000 entries): whether Redis took it within `connect_timeout`.
    pub async fn publish_purge(&self, url: &str) -> bool {
        if self.breaker.is_open() {
            return false;
        }
        let (key, id) = (self.purge_stream(), self.id.clone());
        let r = self
            .call("purge", self.settings.connect_timeout, |mut c| async move {
                redis::cmd("XADD")
                    .arg(key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(10_000)
                    .arg("*")
                    .arg("url")
                    .arg(url)
                    .arg("origin")
                    .arg(id)
                    .query_async::<String>(&mut c)
                    .await
            })
            .await;
        let sent = r.is_ok();
        self.metrics
            .purges
            .with_label_values(&[if sent { "sent" } else { "not_sent" }])
            .inc();
        sent
    }
}

/// The link thread: connect, then every second register this instance; while the breaker is
/// open, probe every 500 ms and rebuild the connection after three failed probes.
async fn run(link: Weak<RedisLink>) {
    const PROBE: Duration = Duration::from_millis(500);
    const BEAT: Duration = Duration::from_secs(1);
    const ALIVE_MS: u64 = 5000;
    let mut failed_probes = 0u32;
    let mut next_beat = tokio::time::Instant::now();
    loop {
        let Some(l) = link.upgrade() else {
            return;
        };
        if l.conn.load().is_none() {
            l.conn.store(l.connect());
        }
        if l.breaker.is_open() {
            let ok = l
                .call("probe", l.settings.connect_timeout, |mut c| async move {
                    redis::cmd("PING").query_async::<String>(&mut c).await
                })
                .await
                .is_ok();
            if ok {
                log::info!("redis: answering again, the breaker closes");
                l.breaker.close();
                l.metrics.breaker_open.set(0);
                l.metrics.up.set(1);
                failed_probes = 0;
            } else {
                failed_probes += 1;
                if failed_probes >= 3 {
                    // a hung connection never reconnects by itself
                    log::debug!("redis: rebuilding the connection");
                    l.conn.store(l.connect());
                    failed_probes = 0;
                }
            }
        }
        if !l.breaker.is_open() && tokio::time::Instant::now() >= next_beat {
            next_beat = tokio::time::Instant::now() + BEAT;
            let (key, id) = (l.instances_key(), l.id.clone());
            let script = l.register.clone();
            let n = l
                .call(
                    "heartbeat",
                    l.settings.connect_timeout,
                    |mut c| async move {
                        script
                            .key(key)
                            .arg(id)
                            .arg(ALIVE_MS)
                            .invoke_async::<u64>(&mut c)
                            .await
                    },
                )
                .await;
            if let Ok(n) = n {
                l.instances.store(n.max(1), Ordering::Relaxed);
                l.metrics
                    .instances
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
                l.metrics.up.set(1);
            }
        }
        drop(l);
        tokio::time::sleep(PROBE.min(BEAT)).await;
    }
}

#[async_trait]
impl GlobalCounters for RedisLink {
    async fn hit(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        cost: u64,
        admitted: u64,
    ) -> Result<GlobalDecision, GlobalError> {
        if self.breaker.is_open() {
            self.metrics
                .errors
                .with_label_values(&["rate_limit", GlobalError::Unavailable.as_str()])
                .inc();
            return Err(GlobalError::Unavailable);
        }
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let script = &self.hit;
        let (allowed, remaining, reset_ms) = self
            .call("rate_limit", self.settings.timeout, |mut c| async move {
                script
                    .key(key)
                    .arg(limit)
                    .arg(window_ms)
                    .arg(cost)
                    .arg(admitted)
                    .invoke_async::<(i64, i64, i64)>(&mut c)
                    .await
            })
            .await?;
        Ok(GlobalDecision {
            allowed: allowed == 1,
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset: Duration::from_millis(u64::try_from(reset_ms).unwrap_or(0)),
        })
    }

    async fn add_batch(
        &self,
        items: &[(&str, u64)],
        window: Duration,
    ) -> Result<Vec<(u64, Duration)>, GlobalError> {
        if self.breaker.is_open() {
            self.metrics
                .errors
                .with_label_values(&["sync", GlobalError::Unavailable.as_str()])
                .inc();
            return Err(GlobalError::Unavailable);
        }
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        // loading first makes the EVALSHAs below safe after a SCRIPT FLUSH or a restart
        pipe.load_script(&self.add).ignore();
        let invocations: Vec<_> = items
            .iter()
            .map(|(key, n)| {
                let mut i = self.add.key(*key);
                i.arg(window_ms).arg(*n);
                i
            })
            .collect();
        for i in &invocations {
            pipe.invoke_script(i);
        }
        let limit = self.settings.timeout.max(Duration::from_millis(250));
        let out: Vec<(i64, i64)> = self
            .call("sync", limit, |mut c| async move {
                pipe.query_async(&mut c).await
            })
            .await?;
        Ok(out
            .into_iter()
            .map(|(est, ms)| {
                (
                    u64::try_from(est).unwrap_or(0),
                    Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
                )
            })
            .collect())
    }

    fn key_prefix(&self) -> &str {
        &self.settings.key_prefix
    }

    fn on_error(&self) -> OnError {
        self.settings.on_error
    }

    fn instances(&self) -> u64 {
        self.instances.load(Ordering::Relaxed).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://user:secret@h:6379/0"),
            "redis://***@h:6379/0"
        );
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(
            redact_url("https://example.test/@someone"),
            "https://example.test/@someone"
        );
        assert_eq!(redact_url("plain text @ here"), "plain text @ here");
        assert_eq!(
            redact_url("redis+unix:///tmp/r.sock"),
            "redis+unix:///tmp/r.sock"
        );
    }

    #[test]
    fn the_breaker_opens_after_the_threshold_and_closes_on_a_probe() {
        let b = Breaker::default();
        for _ in 0..Breaker::THRESHOLD - 1 {
            assert!(!b.failure());
        }
        assert!(b.failure(), "the fifth failure opens it");
        assert!(b.is_open());
        assert!(!b.failure(), "opened once");
        b.close();
        assert!(!b.is_open());
        b.failure();
        b.success();
        for _ in 0..Breaker::THRESHOLD - 1 {
            assert!(!b.failure());
        }
    }
}
