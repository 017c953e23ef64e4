//! The routing state: an immutable [`Snapshot`] compiled from one config file, published
//! through exactly one `ArcSwap` ([`SharedState`]). A request takes one snapshot in `new_ctx`
//! and keeps it to its end, so no request ever sees half a reload.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use gatehouse_plugins::PluginInstance;
use http::HeaderValue;
use ipnet::IpNet;

use crate::config::raw::RawConfig;
use crate::metrics::RouteMetrics;
use crate::router::Router;
use crate::upstream::UpstreamGroup;

/// Identifies a plugin entry across reloads: its chain (`plugins` or `routes:<id>`), kind,
/// exact config (as YAML text) and which occurrence of that same entry in the chain it is. An
/// entry whose key existed in the previous snapshot keeps its instance, and so its state.
pub type PluginKey = (String, String, String, usize);

/// Which Host header goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamHost {
    /// The client's Host.
    Keep,
    /// The backend's `ip:port`.
    Backend,
    /// This fixed name.
    Fixed(HeaderValue),
}

/// A compiled route.
pub struct Route {
    pub id: Arc<str>,
    pub upstream: Arc<UpstreamGroup>,
    /// The `path_prefix` to remove before the request goes upstream (`strip_prefix: true`).
    pub strip_prefix: Option<String>,
    pub upstream_host: UpstreamHost,
    /// The top-level chain followed by the route's own plugins, in config order.
    pub chain: Vec<PluginInstance>,
    pub metrics: RouteMetrics,
    /// Largest request body accepted, in bytes.
    pub max_body_size: u64,
    /// Total time upstream (all attempts and backoff), if limited.
    pub timeout: Option<std::time::Duration>,
    /// Who may use the route by client certificate.
    pub client_cert: Option<crate::tls::ClientCertRule>,
    /// `Some(port)`: plain-HTTP requests are redirected to HTTPS (`None` inside: port 443).
    pub https_redirect: Option<Option<u16>>,
}

/// A proxy listener as compiled: its address and, for HTTPS, its TLS settings.
#[derive(Debug, Clone)]
pub struct Listener {
    pub addr: std::net::SocketAddr,
    /// `addr` as text, for metric labels (made once).
    pub label: Arc<str>,
    pub tls: Option<Arc<crate::tls::TlsListener>>,
    /// Cleartext HTTP/2 (prior knowledge) accepted beside HTTP/1.1.
    pub h2c: bool,
}

/// Settings that apply to every request.
#[derive(Debug, Clone, Default)]
pub struct ServerSettings {
    /// The proxy listeners, in config order.
    pub listeners: Vec<Listener>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Largest request head (all header lines), in bytes; larger = 431.
    pub max_header_size: usize,
    /// Most header lines accepted; more = 431.
    pub max_headers: usize,
    /// No progress on a request body for this long closes the request.
    pub body_read_timeout: std::time::Duration,
    /// The whole request head must arrive within this time.
    pub header_read_timeout: std::time::Duration,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// h2 control frames per second per connection (0: no budget), and how long the source
    /// of a connection that broke it is refused (`proxy::abuse`).
    pub h2_control_frames_per_second: u32,
    pub abuse_block: std::time::Duration,
    /// How long an HTTP/1 connection that was just answered 429 waits before its next
    /// request is read (`proxy::conn`).
    pub pause_after_429: std::time::Duration,
    /// The headers that pass a verified client certificate upstream.
    pub client_cert_headers: ClientCertHeaders,
    /// Requests go upstream with the client's spelling of header names (`proxy::forward`).
    pub preserve_header_case: bool,
}

/// `server.client_cert_headers`, compiled.
#[derive(Debug, Clone)]
pub struct ClientCertHeaders {
    pub subject: http::HeaderName,
    pub sans: http::HeaderName,
    pub fingerprint: http::HeaderName,
    pub verified: http::HeaderName,
}

impl Default for ClientCertHeaders {
    fn default() -> Self {
        ClientCertHeaders {
            subject: http::HeaderName::from_static("x-client-cert-subject"),
            sans: http::HeaderName::from_static("x-client-cert-sans"),
            fingerprint: http::HeaderName::from_static("x-client-cert-fingerprint"),
            verified: http::HeaderName::from_static("x-client-cert-verified"),
        }
    }
}

impl ServerSettings {
    /// The listener a connection accepted on `local` belongs to (a listener on `0.0.0.0` or
    /// `[::]` matches any local address with its port).
    pub fn listener_for(&self, local: std::net::SocketAddr) -> Option<&Listener> {
        self.listeners.iter().find(|l| {
            l.addr.port() == local.port()
                && (l.addr.ip() == local.ip().to_canonical() || l.addr.ip().is_unspecified())
        })
    }

    /// Whether any listener asks clients for a certificate.
    pub fn asks_client_certs(&self) -> bool {
        (self.listeners.iter())
            .filter_map(|l| l.tls.as_ref())
            .any(|t| t.client_auth != crate::config::raw::ClientAuthMode::None)
    }

    /// Every listener's certificate and key files.
    pub fn tls_files(&self) -> Vec<std::path::PathBuf> {
        (self.listeners.iter())
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|t| t.files.iter().cloned())
            .collect()
    }

    /// SHA-256 digests of every listener's certificate and key files, in order.
    pub fn tls_digest(&self) -> Vec<u8> {
        (self.listeners.iter())
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|t| t.digest.iter().copied())
            .collect()
    }

    /// Whether `ip` is a configured trusted proxy.
    #[inline]
    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        !self.trusted_proxies.is_empty() && self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// Everything a request needs, compiled from one config file. Immutable.
pub struct Snapshot {
    /// Increases by one with every published config.
    pub version: u64,
    /// The config it was compiled from (for diffs on reload).
    pub raw: RawConfig,
    pub router: Router,
    /// Indexed by the router's route index.
    pub routes: Vec<Arc<Route>>,
    pub upstreams: HashMap<String, Arc<UpstreamGroup>>,
    pub server: ServerSettings,
    /// Every plugin instance by its reuse key.
    pub plugins: HashMap<PluginKey, PluginInstance>,
    /// SHA-256 of the config file's text, hex.
    pub source_hash: String,
    /// The config as loaded (variables substituted), for `GET /config` (redacted there).
    pub source: serde_yaml::Value,
    /// The shared Redis link (`redis:`), started when the snapshot is published.
    pub redis: Option<Arc<crate::redis_link::RedisLink>>,
    /// The span exporter (`tracing:`), when configured.
    pub tracing: Option<Arc<crate::otlp::Tracer>>,
    /// The ACME CA and state (`acme:`), when configured.
    pub acme: Option<Arc<crate::acme::AcmeSettings>>,
}

impl Snapshot {
    /// The files plugins were built from (scripts, key files, rule files), sorted, each once.
    pub fn plugin_files(&self) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = (self.plugins.values())
            .flat_map(|p| p.files.iter().map(|(f, _)| f.clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The one swappable pointer to the current snapshot, plus process-wide readiness.
pub struct SharedState {
    current: ArcSwap<Snapshot>,
    health_ready: AtomicBool,
}

impl SharedState {
    /// State serving `snapshot`; not ready until the first health round is done.
    pub fn new(snapshot: Snapshot) -> Self {
        SharedState {
            current: ArcSwap::from_pointee(snapshot),
            health_ready: AtomicBool::new(false),
        }
    }

    /// The current snapshot (a request keeps this `Arc` to its end).
    #[inline]
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publishes a new snapshot with one atomic swap.
    pub fn publish(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }

    /// Marks the first health round as done.
    pub fn set_health_ready(&self) {
        self.health_ready.store(true, Ordering::Release);
    }

    /// Whether the gateway is ready: config loaded and first health round done.
    pub fn is_ready(&self) -> bool {
        self.health_ready.load(Ordering::Acquire)
    }
}
