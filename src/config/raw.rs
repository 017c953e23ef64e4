//! The YAML config as written: serde types with `deny_unknown_fields`, defaults applied, no
//! cross-checks (those are in `compile.rs`). These names are the user-facing interface.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use std::num::{NonZeroU32, NonZeroUsize};

use super::units::{Dur, NonZeroDur, NonZeroSize, Size};

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// The chain that runs for every route, before the route's own plugins.
    #[serde(default)]
    pub plugins: Vec<RawPlugin>,
    /// The store shared by every instance (`rate_limit` with `scope: global`).
    #[serde(default)]
    pub redis: Option<RawRedis>,
    /// Span export (OTLP).
    #[serde(default)]
    pub tracing: Option<RawTracing>,
    /// Certificates obtained and renewed from an ACME CA (listeners' `tls.acme`).
    #[serde(default)]
    pub acme: Option<RawAcme>,
}

/// `acme:` the CA certificates are ordered from, and where its state is kept.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    /// The CA's RFC 8555 directory URL (https).
    pub directory: String,
    /// The account's contact (`mailto:`), optional.
    #[serde(default)]
    pub email: Option<String>,
    /// PEM file of the roots that sign the ACME server's own certificate (a private CA, a
    /// test CA); absent: the system's roots.
    #[serde(default)]
    pub ca_roots: Option<String>,
    /// Account key, certificates and keys; survives restarts; may be shared by instances.
    pub state_dir: String,
    /// How names are proven: `http-01` (on a plain listener: port 80 for a public CA) or
    /// `tls-alpn-01` (on the HTTPS listener itself: port 443).
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// A certificate is renewed this long before it expires (at most a third of its life).
    #[serde(default = "default_renew_before")]
    pub renew_before: NonZeroDur,
}

fn default_renew_before() -> NonZeroDur {
    NonZeroDur(std::time::Duration::from_secs(30 * 86_400))
}

/// `acme.challenge`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AcmeChallenge {
    /// The CA fetches `http://<name>/.well-known/acme-challenge/<token>`.
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// The CA opens a TLS connection to `<name>:443` offering only ALPN `acme-tls/1` and
    /// checks the certificate it gets (RFC 8737).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// `tracing:` spans exported over OTLP/HTTP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    pub otlp: RawOtlp,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    #[serde(default)]
    pub sampling: RawSampling,
    /// Resource attributes (e.g. `deployment.environment: prod`).
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
}

fn default_service_name() -> String {
    "gatehouse".into()
}

/// `tracing.otlp`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    /// `http(s)://host:port` of the collector's OTLP/HTTP receiver.
    pub endpoint: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_otlp_timeout")]
    pub timeout: NonZeroDur,
}

fn default_otlp_timeout() -> NonZeroDur {
    NonZeroDur(std::time::Duration::from_secs(10))
}

/// `tracing.sampling`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSampling {
    /// The share of new traces recorded (0 to 1).
    #[serde(default = "default_sampling_ratio")]
    pub ratio: f64,
    /// Follow the client's sampled flag when it sends a trace.
    #[serde(default = "default_true")]
    pub parent_based: bool,
    /// Record every request that ends in a 5xx or a gateway error.
    #[serde(default = "default_true")]
    pub always_errors: bool,
}

impl Default for RawSampling {
    fn default() -> Self {
        RawSampling {
            ratio: default_sampling_ratio(),
            parent_based: true,
            always_errors: true,
        }
    }
}

fn default_sampling_ratio() -> f64 {
    1.0
}

/// `redis:` one Redis (or Valkey) server shared by every gatehouse instance.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://host:port/db`, `rediss://host:port/db` (TLS) or `redis+unix:///path?db=N`.
    pub url: String,
    /// With `rediss://`: the CA to trust (default: the system's roots) and a client
    /// certificate for mutual TLS.
    #[serde(default)]
    pub tls: Option<RawRedisTls>,
    /// Its own field (redacted by `GET /config`); empty = none.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Per call on the request path.
    #[serde(default = "default_redis_timeout")]
    pub timeout: NonZeroDur,
    /// Connecting, and the background calls (heartbeat, probes).
    #[serde(default = "default_redis_connect")]
    pub connect_timeout: NonZeroDur,
    #[serde(default)]
    pub on_error: RawOnError,
}

/// `redis.tls`: PEM files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedisTls {
    /// The CA certificates that sign the server's certificate.
    #[serde(default)]
    pub ca: Option<String>,
    /// A client certificate chain (with `key`) for servers that ask for one.
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
}

fn default_key_prefix() -> String {
    "gh:".into()
}
fn default_redis_timeout() -> NonZeroDur {
    NonZeroDur(std::time::Duration::from_millis(20))
}
fn default_redis_connect() -> NonZeroDur {
    NonZeroDur(std::time::Duration::from_secs(1))
}

/// `redis.on_error`: what a global limit does without an answer from Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawOnError {
    /// Each instance enforces `ceil(limit / live instances)` alone.
    #[default]
    Local,
    Allow,
    Deny,
}

/// `server:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Listeners: `"ip:port"` (plain HTTP/1.1) or `{ addr, tls }`.
    #[serde(default = "default_listen")]
    pub listen: Vec<RawListen>,
    /// Worker threads; `None` = number of CPUs.
    #[serde(default)]
    pub threads: Option<NonZeroUsize>,
    #[serde(default = "default_grace")]
    pub grace_period: Dur,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// `stdout` | `off` | a file path.
    #[serde(default = "default_access_log")]
    pub access_log: String,
    /// Unix socket the listening sockets are handed over on during `run --upgrade`.
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub cache: RawCache,
    /// Reload when the config file changes.
    #[serde(default = "default_true")]
    pub watch_config: bool,
    /// Latency histogram buckets in seconds (read at startup).
    #[serde(default)]
    pub latency_buckets: Option<Vec<f64>>,
    /// Log filter when `RUST_LOG` is not set, e.g. `info` or `info,gatehouse=debug`.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Socket read buffer per client connection (read at startup). 0 (the default): the HTTP
    /// parser reads straight from the socket into its own buffer, nothing extra is held per
    /// idle connection.
    #[serde(default = "default_read_buffer")]
    pub read_buffer: Size,
    /// Let idle worker threads steal tasks from busy ones (Pingora's `work_stealing`). Off by
    /// default: each worker runs its own connections, which is cheaper per request.
    #[serde(default)]
    pub work_stealing: bool,
    /// Request headers that carry a verified client certificate upstream (mutual TLS). Every
    /// copy a client sent of them is removed first, on every listener.
    #[serde(default)]
    pub client_cert_headers: RawClientCertHeaders,
    /// Send header names upstream as the client spelled them, and to the client as the
    /// backend did. Off (the default): names go out lowercase, as over HTTP/2 (a dozen common
    /// ones capitalised: `Host`, `Content-Type`, `Content-Length`, ...), which lets the gateway
    /// add its own headers without Pingora's per-insert name parsing and copies.
    #[serde(default)]
    pub preserve_header_case: bool,
}

/// `server.client_cert_headers`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClientCertHeaders {
    pub subject: String,
    pub sans: String,
    pub fingerprint: String,
    pub verified: String,
}

impl Default for RawClientCertHeaders {
    fn default() -> Self {
        RawClientCertHeaders {
            subject: "x-client-cert-subject".into(),
            sans: "x-client-cert-sans".into(),
            fingerprint: "x-client-cert-fingerprint".into(),
            verified: "x-client-cert-verified".into(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_read_buffer() -> Size {
    Size(0)
}

/// `server.cache:` the response cache shared by every route with a `cache` plugin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Memory bound for all cached objects together (bodies and headers).
    #[serde(default = "default_cache_size")]
    pub max_size: NonZeroSize,
    /// Largest object (body and header) the memory tier holds; default: 1/8 of `max_size`.
    /// Larger ones go to the disk tier, or stream through uncached without one.
    #[serde(default)]
    pub max_object_size: Option<NonZeroSize>,
    /// The disk tier below memory.
    #[serde(default)]
    pub disk: Option<RawCacheDisk>,
    /// How long concurrent misses for one key wait for the request that fetches it.
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout: NonZeroDur,
}

fn default_cache_size() -> NonZeroSize {
    NonZeroSize(256 << 20)
}

impl RawCache {
    /// The memory tier's largest object.
    pub fn memory_max_object(&self) -> u64 {
        self.max_object_size.map_or(self.max_size.0 / 8, |s| s.0)
    }
}

/// `server.cache.disk:` the disk tier: objects evicted from memory and those too large for
/// it, kept across restarts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheDisk {
    /// An existing directory (relative paths: to the config file's directory).
    pub path: String,
    /// Bound for the object files together.
    pub max_size: NonZeroSize,
    /// Largest object the tier takes.
    #[serde(default = "default_disk_object")]
    pub max_object_size: NonZeroSize,
    /// Most objects the tier keeps: its index holds about 120 bytes of memory per object.
    #[serde(default = "default_disk_objects")]
    pub max_objects: usize,
}

fn default_disk_object() -> NonZeroSize {
    NonZeroSize(512 << 20)
}
fn default_disk_objects() -> usize {
    1_000_000
}
fn default_lock_timeout() -> NonZeroDur {
    NonZeroDur(std::time::Duration::from_secs(3))
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            max_size: default_cache_size(),
            max_object_size: None,
            disk: None,
            lock_timeout: default_lock_timeout(),
        }
    }
}

/// `server.limits:` what a client may send.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default = "default_max_body")]
    pub max_body_size: NonZeroSize,
    #[serde(default = "default_max_header")]
    pub max_header_size: NonZeroSize,
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout: NonZeroDur,
    #[serde(default = "default_body_timeout")]
    pub body_read_timeout: NonZeroDur,
    #[serde(default = "default_max_conns")]
    pub max_connections: NonZeroUsize,
    /// HTTP/2 `RST_STREAM`, `PING`, `SETTINGS` and `PRIORITY` frames a client connection may
    /// send per second (a burst of four seconds' worth); 0 turns the budget off.
    #[serde(default = "default_h2_control_frames")]
    pub h2_control_frames_per_second: u32,
    /// How long a source address that broke the budget is refused new connections; `0s`
    /// only closes the connection.
    #[serde(default = "default_abuse_block")]
    pub abuse_block: Dur,
    /// After the gateway answers 429 on an HTTP/1 keep-alive connection, its next request is
    /// read only after this pause (`0s`: none), so a client flooding a limited route cannot
    /// take the worker from the others.
    #[serde(default = "default_pause_after_429")]
    pub pause_after_429: Dur,
}

fn default_h2_control_frames() -> u32 {
    100
}
fn default_abuse_block() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}
fn default_pause_after_429() -> Dur {
    Dur(std::time::Duration::from_millis(10))
}

fn default_max_body() -> NonZeroSize {
    NonZeroSize(10 << 20)
}
fn default_max_header() -> NonZeroSize {
    NonZeroSize(32 << 10)
}
fn default_max_headers() -> usize {
    100
}
fn default_header_timeout() -> NonZeroDur {
    NonZeroDur(std::time::Duration::from_secs(10))
}
fn default_body_timeout() -> NonZeroDur {
    NonZeroDur(std::time::Duration::from_secs(30))
}
fn default_max_conns() -> NonZeroUsize {
    NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN)
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_body_size: default_max_body(),
            max_header_size: default_max_header(),
            max_headers: default_max_headers(),
            header_read_timeout: default_header_timeout(),
            body_read_timeout: default_body_timeout(),
            max_connections: default_max_conns(),
            h2_control_frames_per_second: default_h2_control_frames(),
            abuse_block: default_abuse_block(),
            pause_after_429: default_pause_after_429(),
        }
    }
}

fn default_listen() -> Vec<RawListen> {
    vec![RawListen::Addr("0.0.0.0:8080".to_string())]
}

/// One `server.listen` entry: a plain address, or an address with settings.
#[derive(Debug, Clone, PartialEq)]
pub enum RawListen {
    Addr(String),
    Full(RawListener),
}

impl<'de> Deserialize<'de> for RawListen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(addr) => Ok(RawListen::Addr(addr)),
            v @ serde_yaml::Value::Mapping(_) => {
                // the nested error (e.g. `tls: unknown field ...`) says which field
                serde_path_to_error::deserialize(v)
                    .map(RawListen::Full)
                    .map_err(|e| D::Error::custom(format!("{}: {}", e.path(), e.inner())))
            }
            _ => Err(D::Error::custom(
                "expected \"ip:port\" or { addr: \"ip:port\", tls: {...} }",
            )),
        }
    }
}

impl RawListen {
    /// The `ip:port` to bind.
    pub fn addr(&self) -> &str {
        match self {
            RawListen::Addr(a) => a,
            RawListen::Full(l) => &l.addr,
        }
    }
}

/// `server.listen[i]` written out: `{ addr: "0.0.0.0:8443", tls: {...} }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub addr: String,
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// Cleartext HTTP/2 with prior knowledge (`h2c`) beside HTTP/1.1 on a plain listener.
    #[serde(default)]
    pub h2c: bool,
}

/// `server.listen[i].tls`: HTTPS on this listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Chosen by SNI: exact name, then a `*.` wildcard, among each certificate's DNS names.
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    /// Names served with one certificate obtained from the `acme` CA (beside or instead of
    /// `certificates`; for these names it is preferred once issued).
    #[serde(default)]
    pub acme: Vec<String>,
    /// Index into `certificates` for clients without SNI or with an unknown name; absent:
    /// such handshakes are refused.
    #[serde(default)]
    pub default_certificate: Option<usize>,
    /// Protocols offered by ALPN, in order of preference: `h2`, `http/1.1`.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// Oldest TLS version accepted: `"1.2"` or `"1.3"`.
    #[serde(default = "default_min_version")]
    pub min_version: String,
    /// The whole handshake must complete in this time.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: NonZeroDur,
    /// Mutual TLS: whether clients are asked for a certificate, and the CA that signs them.
    #[serde(default)]
    pub client_auth: RawClientAuth,
}

/// `server.listen[i].tls.client_auth`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    #[serde(default)]
    pub mode: ClientAuthMode,
    /// PEM file of the CA certificate(s) client chains must lead to.
    #[serde(default)]
    pub ca: Option<String>,
}

/// Whether a listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    /// No certificate is asked for.
    #[default]
    None,
    /// Asked for; a client without one connects, one with a bad one does not.
    Optional,
    /// A verified certificate is needed to connect at all.
    Required,
}

/// A certificate chain (PEM, leaf first) and its private key (PEM).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
}

fn default_alpn() -> Vec<String> {
    vec!["h2".to_string(), "http/1.1".to_string()]
}
fn default_min_version() -> String {
    "1.2".to_string()
}
fn default_handshake_timeout() -> NonZeroDur {
    NonZeroDur(std::time::Duration::from_secs(10))
}
fn default_grace() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}
fn default_access_log() -> String {
    "stdout".to_string()
}
fn default_upgrade_sock() -> String {
    "/tmp/gatehouse_upgrade.sock".to_string()
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: default_listen(),
            threads: None,
            grace_period: default_grace(),
            trusted_proxies: Vec::new(),
            access_log: default_access_log(),
            upgrade_sock: default_upgrade_sock(),
            limits: RawLimits::default(),
            cache: RawCache::default(),
            watch_config: true,
            latency_buckets: None,
            log_level: None,
            work_stealing: false,
            read_buffer: default_read_buffer(),
            client_cert_headers: RawClientCertHeaders::default(),
            preserve_header_case: false,
        }
    }
}

/// `admin:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// When non-empty, mutating admin endpoints need `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: String,
    /// Lets an admin listener outside loopback run without a token (otherwise a config
    /// error: reload, purge and the config view would be open to the network).
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9180".to_string()
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            allow_unauthenticated: false,
            listen: default_admin_listen(),
            token: String::new(),
        }
    }
}

/// `upstreams.<name>:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub backends: Vec<RawBackend>,
    #[serde(default)]
    pub balance: RawBalance,
    /// For `consistent_hash`: `client_ip` | `path` | `header:<Name>`.
    #[serde(default)]
    pub hash_key: Option<String>,
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub circuit_breaker: Option<RawBreaker>,
    #[serde(default)]
    pub retry: Option<RawRetry>,
    #[serde(default)]
    pub pool: Option<RawPool>,
    /// TLS to the backends.
    #[serde(default)]
    pub tls: Option<RawUpstreamTls>,
    /// Cleartext HTTP/2 with prior knowledge to the backends (gRPC servers without TLS).
    #[serde(default)]
    pub h2c: bool,
}

/// `upstreams.<name>.tls`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// The server name sent and verified; absent: each backend's host as written.
    #[serde(default)]
    pub sni: Option<String>,
    /// Verify the backend's certificate chain and name.
    #[serde(default = "default_true")]
    pub verify: bool,
    /// PEM CA certificate(s) to verify against; absent: the system roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// A client certificate for backends that ask for one (upstream mutual TLS).
    #[serde(default)]
    pub client_cert: Option<RawCertificate>,
    /// Protocols offered by ALPN: `http/1.1` (default) and/or `h2`.
    #[serde(default = "default_upstream_alpn")]
    pub alpn: Vec<String>,
}

fn default_upstream_alpn() -> Vec<String> {
    vec!["http/1.1".to_string()]
}

/// `circuit_breaker:` passive failure detection per backend.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: NonZeroU32,
    #[serde(default = "default_ratio")]
    pub failure_ratio: f64,
    #[serde(default = "default_min_requests")]
    pub min_requests: NonZeroU32,
    #[serde(default = "default_window")]
    pub window: Dur,
    #[serde(default = "default_window")]
    pub open_for: Dur,
    #[serde(default = "default_half_open")]
    pub half_open_requests: NonZeroU32,
}

fn nonzero(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN)
}
fn default_consecutive() -> NonZeroU32 {
    nonzero(5)
}
fn default_ratio() -> f64 {
    0.5
}
fn default_min_requests() -> NonZeroU32 {
    nonzero(20)
}
fn default_window() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}
fn default_half_open() -> NonZeroU32 {
    NonZeroU32::MIN
}

/// `retry:` when a failed attempt is tried again on another backend.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Extra tries after the first.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// `connect_failure`, `timeout`, `reset`, or a status code such as `"503"`.
    #[serde(default = "default_retry_on")]
    pub on: Vec<String>,
    #[serde(default)]
    pub backoff: Option<Dur>,
    /// Retries may add at most this fraction to the request volume.
    #[serde(default = "default_budget")]
    pub budget: f64,
}

fn default_attempts() -> u32 {
    2
}
fn default_retry_on() -> Vec<String> {
    vec!["connect_failure".into()]
}
fn default_budget() -> f64 {
    0.2
}

/// `pool:` connections kept open to the backends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Idle connections kept per process (Pingora's pool is shared by all upstreams: the
    /// largest value configured wins; read at startup).
    #[serde(default)]
    pub max_idle: Option<usize>,
    /// How long an idle pooled connection is kept (overrides `timeouts.idle`).
    #[serde(default)]
    pub idle_timeout: Option<NonZeroDur>,
}

/// Balancing algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawBalance {
    #[default]
    RoundRobin,
    Random,
    ConsistentHash,
}

/// A backend: `"host:port"` or `{ addr: "host:port", weight: 3 }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawBackend {
    pub addr: String,
    pub weight: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackendLong {
    addr: String,
    #[serde(default = "one")]
    weight: u64,
}

fn one() -> u64 {
    1
}

impl<'de> Deserialize<'de> for RawBackend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(addr) => Ok(RawBackend { addr, weight: 1 }),
            v @ serde_yaml::Value::Mapping(_) => {
                let l: RawBackendLong = serde_yaml::from_value(v).map_err(D::Error::custom)?;
                Ok(RawBackend {
                    addr: l.addr,
                    weight: l.weight,
                })
            }
            _ => Err(D::Error::custom(
                "expected \"host:port\" or { addr: \"host:port\", weight: N }",
            )),
        }
    }
}

/// `health_check:`. Exactly one of `http` or `tcp`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[serde(default)]
    pub http: Option<RawHttpCheck>,
    #[serde(default)]
    pub tcp: Option<RawTcpCheck>,
    #[serde(default = "default_interval")]
    pub interval: NonZeroDur,
    #[serde(default = "default_check_timeout")]
    pub timeout: NonZeroDur,
    #[serde(default = "default_threshold")]
    pub healthy_after: NonZeroU32,
    #[serde(default = "default_threshold")]
    pub unhealthy_after: NonZeroU32,
}

fn default_interval() -> NonZeroDur {
    NonZeroDur(std::time::Duration::from_secs(2))
}
fn default_check_timeout() -> NonZeroDur {
    NonZeroDur(std::time::Duration::from_secs(1))
}
fn default_threshold() -> NonZeroU32 {
    nonzero(2)
}

/// `health_check.http:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpCheck {
    #[serde(default = "default_check_path")]
    pub path: String,
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
    /// Host header of the probe; default: the backend address.
    #[serde(default)]
    pub host: Option<String>,
}

fn default_check_path() -> String {
    "/health".to_string()
}
fn default_expect_status() -> u16 {
    200
}

/// `health_check.tcp: {}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTcpCheck {}

/// `timeouts:` towards the backends of one upstream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    #[serde(default = "default_connect")]
    pub connect: NonZeroDur,
    #[serde(default = "default_rw")]
    pub read: NonZeroDur,
    #[serde(default = "default_rw")]
    pub write: NonZeroDur,
    #[serde(default = "default_idle")]
    pub idle: NonZeroDur,
}

fn default_connect() -> NonZeroDur {
    NonZeroDur(std::time::Duration::from_secs(1))
}
fn default_rw() -> NonZeroDur {
    NonZeroDur(std::time::Duration::from_secs(30))
}
fn default_idle() -> NonZeroDur {
    NonZeroDur(std::time::Duration::from_secs(60))
}

impl Default for RawTimeouts {
    fn default() -> Self {
        RawTimeouts {
            connect: default_connect(),
            read: default_rw(),
            write: default_rw(),
            idle: default_idle(),
        }
    }
}

/// `routes[i]:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub id: String,
    #[serde(default, rename = "match")]
    pub matcher: RawMatch,
    pub upstream: String,
    #[serde(default)]
    pub strip_prefix: bool,
    /// `keep` | `backend` | a fixed host name.
    #[serde(default = "default_upstream_host")]
    pub upstream_host: String,
    /// Overrides `server.limits.max_body_size` for this route.
    #[serde(default)]
    pub max_body_size: Option<NonZeroSize>,
    /// Total time for the request upstream, retries and backoff included.
    #[serde(default)]
    pub timeout: Option<NonZeroDur>,
    #[serde(default)]
    pub plugins: Vec<RawPlugin>,
    /// Who may use this route by client certificate (mutual TLS).
    #[serde(default)]
    pub client_cert: Option<RawClientCertRule>,
    /// Requests that arrive over plain HTTP are answered 308 to the same URL over HTTPS.
    #[serde(default)]
    pub https_redirect: bool,
    /// The port in the redirect's URL (absent: 443, left out of the URL).
    #[serde(default)]
    pub https_port: Option<u16>,
}

/// `routes[i].client_cert`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientCertRule {
    /// Without a verified certificate the route answers 403.
    #[serde(default = "default_true")]
    pub required: bool,
    #[serde(default)]
    pub allow: RawClientCertAllow,
}

/// `routes[i].client_cert.allow`: a certificate passes when any entry matches (`*` wildcards),
/// or when every list is empty.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientCertAllow {
    #[serde(default)]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub sans: Vec<String>,
    #[serde(default)]
    pub fingerprints: Vec<String>,
}

fn default_upstream_host() -> String {
    "keep".to_string()
}

/// `routes[i].match:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path_exact: Option<String>,
    #[serde(default)]
    pub path_regex: Option<String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A plugin entry, `- <kind>: {config}`: a mapping with exactly one key, checked when compiled.
pub type RawPlugin = serde_yaml::Mapping;
