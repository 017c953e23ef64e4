//! Per-request context, grouped by the module that owns each part ([`ChainState`] for the
//! plugin pipeline, [`AttemptState`] for upstream attempts, [`CacheState`] for the cache
//! phases), plus the request's identity, resolved before anything else in
//! `early_request_filter`: the request id, the client IP and the trace.

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use gatehouse_plugins::RequestInfo;
use pingora_core::protocols::tls::SslDigest;
use pingora_proxy::Session;

use super::attempts::AttemptState;
use super::cache::CacheState;
use super::client_ip::client_ip;
use super::error_page::Failure;
use super::pipeline::ChainState;
use super::trace::{self, Trace};
use crate::state::{Route, Snapshot};
use crate::tls::ConnTls;
use crate::upstream::UpstreamGroup;

/// Counts an HTTP/2 stream as active until dropped (with the request's context).
pub(crate) struct StreamGuard(prometheus::IntGauge);

impl StreamGuard {
    pub(crate) fn new(active: &prometheus::IntGauge) -> Self {
        active.inc();
        StreamGuard(active.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// State one request carries through the Pingora hooks.
pub struct Ctx {
    /// The snapshot taken in `new_ctx`, kept to the end of the request.
    pub(crate) snap: Arc<Snapshot>,
    /// The matched route (None before routing or when nothing matched).
    pub(crate) route: Option<Arc<Route>>,
    /// The upstream group a plugin chose for this request instead of the route's
    /// (`UpstreamChoice`, see [`Ctx::group`]).
    pub(crate) chosen: Option<Arc<UpstreamGroup>>,
    /// What plugins see.
    pub(crate) info: RequestInfo,
    pub(crate) start: Instant,
    /// The socket peer's IP (before `X-Forwarded-For`).
    pub(crate) peer_ip: IpAddr,
    /// The connection's TLS session (None on plain listeners).
    pub(crate) ssl: Option<Arc<SslDigest>>,
    /// Held while an HTTP/2 stream is served (`gatehouse_http2_streams_active`).
    pub(crate) h2_stream: Option<StreamGuard>,
    /// The W3C trace this request belongs to: the client's, or (see [`Ctx::trace`]) a fresh
    /// one made when first needed.
    trace: Trace,
    /// `info.request_id` as a header value, built once and shared (refcounted) by every
    /// header that carries it.
    request_id_header: Option<http::HeaderValue>,
    /// Why the gateway answered itself, for the access log.
    pub(crate) failure: Option<Failure>,
    /// What the client's header names hold that the upstream request depends on (looked at
    /// once, when first needed).
    pub(crate) sent: Option<super::forward::SentNames>,
    /// Request body bytes received so far (`limits::count_body`).
    pub(crate) body_bytes: u64,
    /// The plugin chain's per-request state (`pipeline`).
    pub(crate) chain: ChainState,
    /// Upstream attempts (`attempts`).
    pub(crate) attempt: AttemptState,
    /// The cache phases (`cache`).
    pub(crate) cache: CacheState,
    /// The request's spans in the making, when tracing is on (`spans`).
    pub(crate) spans: Option<Box<super::spans::SpanLog>>,
}

impl Ctx {
    /// The upstream group the request goes to: the one a plugin chose, or the route's.
    pub(crate) fn group(&self) -> Option<&Arc<UpstreamGroup>> {
        self.chosen
            .as_ref()
            .or(self.route.as_ref().map(|r| &r.upstream))
    }

    /// A fresh context on `snap`.
    pub fn new(snap: Arc<Snapshot>) -> Self {
        let spans = snap.tracing.is_some().then(super::spans::SpanLog::new);
        Ctx {
            snap,
            spans,
            route: None,
            chosen: None,
            info: RequestInfo::new(String::new(), IpAddr::V4(Ipv4Addr::UNSPECIFIED), empty_id()),
            start: Instant::now(),
            peer_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ssl: None,
            h2_stream: None,
            trace: Trace::default(),
            request_id_header: None,
            failure: None,
            sent: None,
            body_bytes: 0,
            chain: ChainState::default(),
            attempt: AttemptState::default(),
            cache: CacheState::default(),
        }
    }

    /// Resolves the request's identity from its head: the request id (the client's
    /// `X-Request-Id` when well-formed), the client IP (trusted proxies only) and the client's
    /// trace context. A fresh trace is made only when something needs it ([`Ctx::trace`]).
    pub(crate) fn identify(&mut self, s: &Session) {
        let h = &s.req_header().headers;
        self.info.request_id = match h.get(super::names::X_REQUEST_ID) {
            Some(v) if valid_request_id(v.as_bytes()) => {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => new_request_id(),
        };
        if let Some(peer) = s.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) {
            self.peer_ip = peer.to_canonical();
            // the forwarding headers are looked up only when the peer may set them
            self.info.client_ip = if self.snap.server.is_trusted(self.peer_ip) {
                let xff = h.get(super::names::X_FORWARDED_FOR).map(|v| v.as_bytes());
                let fwd = h.get(http::header::FORWARDED).map(|v| v.as_bytes());
                client_ip(peer, xff, fwd, &self.snap.server)
            } else {
                self.peer_ip
            };
        }
        if let Some(ssl) = s.digest().and_then(|d| d.ssl_digest.as_ref()) {
            self.info.client_cert =
                (ssl.extension.get::<ConnTls>()).and_then(|t| t.client_cert.clone());
            self.ssl = Some(Arc::clone(ssl));
        }
        if let Some(t) = h
            .get(super::names::TRACEPARENT)
            .and_then(|v| trace::parse(v.as_bytes()))
        {
            self.trace = t;
        }
    }

    /// What the TLS handshake established (SNI, client certificate), on TLS listeners.
    pub(crate) fn conn_tls(&self) -> Option<&ConnTls> {
        self.ssl
            .as_deref()
            .and_then(|d| d.extension.get::<ConnTls>())
    }

    /// The request's trace, made now if the client sent none (a random trace id costs two
    /// hashes: requests that never go upstream and are not logged skip them).
    pub(crate) fn trace(&mut self) -> &Trace {
        if !self.trace.is_set() {
            self.trace = trace::fresh();
            // a new trace is sampled by the ratio (decided from its id, as every instance
            // would): the flag goes upstream so that backends record it too
            if let Some(t) = &self.snap.tracing {
                let roll = super::spans::roll(&self.trace.trace_id_bytes());
                self.trace.set_sampled(t.sampled(None, false, roll));
            }
        }
        &self.trace
    }

    /// The trace id (empty until [`Ctx::trace`] made or took one).
    pub(crate) fn trace_id(&self) -> &str {
        self.trace.trace_id()
    }

    /// The request id as a header value (made once, then cloned by reference count).
    ///
    /// Marked sensitive: HTTP/2's HPACK then sends it as a literal never indexed. A value new
    /// with every request would otherwise be added to the connection's dynamic table each
    /// time, evicting the entries that do repeat, after a search through every earlier id
    /// still in the table (up to ~50 of them in the default 4 KiB). HTTP/1 ignores the mark.
    pub(crate) fn request_id_value(&mut self) -> http::HeaderValue {
        if let Some(v) = &self.request_id_header {
            return v.clone();
        }
        let mut v = http::HeaderValue::from_str(&self.info.request_id)
            .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"));
        v.set_sensitive(true);
        self.request_id_header = Some(v.clone());
        v
    }
}

fn empty_id() -> Arc<str> {
    static EMPTY: OnceLock<Arc<str>> = OnceLock::new();
    Arc::clone(EMPTY.get_or_init(|| Arc::from("")))
}

/// Whether a client-sent request id is safe to keep: 1-128 characters from
/// `[A-Za-z0-9._:-]` (so it cannot inject into logs or headers).
pub fn valid_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A new request id: 32 hex digits, unique per process (random per-process prefix + counter),
/// usable as a W3C trace id.
pub fn new_request_id() -> String {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        h.finish()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // mix the counter so consecutive ids do not look sequential
    let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.rotate_left(17);
    let mut id = [0u8; 32];
    super::trace::put_hex(&mut id[..16], seed);
    super::trace::put_hex(&mut id[16..], mixed);
    // hex digits: always UTF-8 (checked, not assumed)
    String::from_utf8(id.to_vec()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_hex_digits_and_distinct() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn request_ids() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(valid_request_id(a.as_bytes()));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(&[b'a'; 129]));
    }
}
