//! Per-request context, plus the two facts resolved before anything else: the request id and
//! the client IP.

use std::any::Any;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use gatehouse_plugins::RequestInfo;

use crate::state::{Route, ServerSettings, Snapshot};
use crate::upstream::group::Member;

/// State one request carries through the Pingora hooks.
pub struct Ctx {
    /// The snapshot taken in `new_ctx`, kept to the end of the request.
    pub snap: Arc<Snapshot>,
    /// The matched route (None before routing or when nothing matched).
    pub route: Option<Arc<Route>>,
    /// What plugins see.
    pub info: RequestInfo,
    /// One private slot per plugin of the route's chain.
    pub slots: Vec<Option<Box<dyn Any + Send + Sync>>>,
    /// How many plugins' `request_filter` completed; response hooks run for these.
    pub ran: usize,
    pub start: Instant,
    /// The socket peer's IP (before `X-Forwarded-For`).
    pub peer_ip: IpAddr,
    /// The backend of the current (last) attempt.
    pub backend: Option<Arc<Member>>,
    /// Backends tried by this request (a retry goes elsewhere).
    pub tried: Vec<SocketAddr>,
    /// Upstream attempts made so far.
    pub attempts: u32,
    /// Whether the current attempt's outcome went to the breaker.
    pub attempt_recorded: bool,
    /// Set when an attempt is ended to retry on this upstream status.
    pub retry_status: Option<u16>,
    /// Set when a pooled upstream connection turned out to be closed by the backend: the next
    /// attempt is the same request on a fresh connection, not a retry of the backend's failure.
    pub fresh_connection_retry: bool,
    /// When the current attempt started (backend chosen).
    pub attempt_start: Option<Instant>,
    /// Time spent waiting for upstream response headers, all attempts.
    pub upstream_time: std::time::Duration,
    /// The W3C trace this request belongs to: the client's, or (see [`Ctx::trace`]) a
    /// fresh one made when first needed.
    pub trace: super::trace::Trace,
    /// `info.request_id` as a header value, built once and shared (refcounted) by every
    /// header that carries it.
    request_id_header: Option<http::HeaderValue>,
    /// Why the gateway answered itself, for the access log.
    pub error: Option<&'static str>,
    /// Request body bytes received so far.
    pub body_bytes: u64,
    /// The route's cache intent, when caching is enabled for this request.
    pub cache: Option<gatehouse_plugins::cache::CacheIntent>,
    /// Whether the response is being stored.
    pub cache_stored: bool,
    /// Cache result for metrics and the access log.
    pub cache_result: Option<&'static str>,
}

impl Ctx {
    /// A fresh context on `snap`.
    pub fn new(snap: Arc<Snapshot>) -> Self {
        Ctx {
            snap,
            route: None,
            info: RequestInfo::new(String::new(), IpAddr::V4(Ipv4Addr::UNSPECIFIED), empty_id()),
            slots: Vec::new(),
            ran: 0,
            start: Instant::now(),
            peer_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            backend: None,
            tried: Vec::new(),
            attempts: 0,
            attempt_recorded: false,
            retry_status: None,
            fresh_connection_retry: false,
            attempt_start: None,
            upstream_time: std::time::Duration::ZERO,
            trace: super::trace::Trace::default(),
            request_id_header: None,
            error: None,
            body_bytes: 0,
            cache: None,
            cache_stored: false,
            cache_result: None,
        }
    }
}

impl Ctx {
    /// The request's trace, made now if the client sent none (a random trace id costs two
    /// hashes: requests that never go upstream and are not logged skip them).
    pub fn trace(&mut self) -> &super::trace::Trace {
        if !self.trace.is_set() {
            self.trace = super::trace::fresh();
        }
        &self.trace
    }

    /// The request id as a header value (made once, then cloned by reference count).
    pub fn request_id_value(&mut self) -> http::HeaderValue {
        if let Some(v) = &self.request_id_header {
            return v.clone();
        }
        let v = http::HeaderValue::from_str(&self.info.request_id)
            .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"));
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

/// The `X-Forwarded-For` sent upstream: the client's value (when it has one) with the
/// connecting peer appended. Built in one buffer, no formatting machinery.
pub fn upstream_forwarded_for(
    prev: Option<&http::HeaderValue>,
    peer: IpAddr,
) -> Result<http::HeaderValue, http::header::InvalidHeaderValue> {
    let prev = prev
        .and_then(|v| v.to_str().ok())
        .filter(|p| !p.trim().is_empty());
    let mut v = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + 39);
    if let Some(p) = prev {
        v.extend_from_slice(p.as_bytes());
        v.extend_from_slice(b", ");
    }
    match peer {
        IpAddr::V4(a) => {
            for (i, octet) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    v.push(b'.');
                }
                if octet >= 100 {
                    v.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    v.push(b'0' + (octet / 10) % 10);
                }
                v.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(a) => {
            use std::io::Write;
            let _ = write!(v, "{a}");
        }
    }
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from(v))
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
    String::from_utf8_lossy(&id).into_owned()
}

/// Parses one address from a forwarding header entry: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]:443`, optionally quoted.
fn parse_forwarded_addr(v: &str) -> Option<IpAddr> {
    let v = v.trim().trim_matches('"');
    v.parse::<IpAddr>()
        .ok()
        .or_else(|| v.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            v.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse().ok())
        })
}

/// The `for=` addresses of an RFC 7239 `Forwarded` header, left to right (`None` for an
/// element without a usable address, e.g. `for=unknown` or an obfuscated name).
fn forwarded_for(v: &str) -> Vec<Option<IpAddr>> {
    v.split(',')
        .map(|element| {
            element.split(';').find_map(|pair| {
                let (k, val) = pair.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_forwarded_addr(val))
            })?
        })
        .collect()
}

/// The client IP: `peer`, unless `peer` is a trusted proxy; then `X-Forwarded-For` (or, when
/// absent, RFC 7239 `Forwarded`) is walked from the right and the first address that is not a
/// trusted proxy wins. An entry that does not parse stops the walk (everything left of it is
/// client-controlled). IPv4-mapped IPv6 addresses are returned as IPv4.
pub fn client_ip(
    peer: IpAddr,
    xff: Option<&[u8]>,
    forwarded: Option<&[u8]>,
    settings: &ServerSettings,
) -> IpAddr {
    let peer = peer.to_canonical();
    if !settings.is_trusted(peer) {
        return peer;
    }
    let hops: Vec<Option<IpAddr>> = match (
        xff.and_then(|v| std::str::from_utf8(v).ok()),
        forwarded.and_then(|v| std::str::from_utf8(v).ok()),
    ) {
        (Some(x), _) => x.split(',').map(parse_forwarded_addr).collect(),
        (None, Some(f)) => forwarded_for(f),
        (None, None) => return peer,
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) => {
                client = ip.to_canonical();
                if !settings.is_trusted(client) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_forwarded_for_appends_the_peer() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.100.9",
            "2001:db8::1",
        ] {
            let peer: IpAddr = ip.parse().unwrap();
            assert_eq!(upstream_forwarded_for(None, peer).unwrap(), ip);
            let prev = http::HeaderValue::from_static("203.0.113.7, 10.0.0.1");
            assert_eq!(
                upstream_forwarded_for(Some(&prev), peer).unwrap(),
                format!("203.0.113.7, 10.0.0.1, {ip}").as_str()
            );
            let blank = http::HeaderValue::from_static("  ");
            assert_eq!(upstream_forwarded_for(Some(&blank), peer).unwrap(), ip);
        }
        for n in 0..=255u8 {
            let peer = IpAddr::V4(Ipv4Addr::new(n, 0, n, 9));
            assert_eq!(
                upstream_forwarded_for(None, peer).unwrap(),
                peer.to_string().as_str()
            );
        }
    }

    #[test]
    fn request_ids_are_32_hex_digits_and_distinct() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    fn settings(cidrs: &[&str]) -> ServerSettings {
        ServerSettings {
            trusted_proxies: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            ..ServerSettings::default()
        }
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_headers_ignored_without_trusted_proxies() {
        let s = settings(&[]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some(b"1.2.3.4"), Some(b"for=1.2.3.4"), &s),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), None, None, &s),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn xff_walked_from_the_right() {
        let s = settings(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(
                ip("10.0.0.1"),
                Some(b"9.9.9.9, 1.2.3.4, 10.0.0.7"),
                None,
                &s
            ),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_ip(ip("8.8.8.8"), Some(b"1.2.3.4"), None, &s),
            ip("8.8.8.8")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some(b"garbage, 10.0.0.9"), None, &s),
            ip("10.0.0.9")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), None, None, &s), ip("10.0.0.1"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some(b"[2001:db8::1]:443"), None, &s),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some(b"10.0.0.2, 10.0.0.3"), None, &s),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn forwarded_header() {
        let s = settings(&["10.0.0.0/8"]);
        let f = |v: &str| client_ip(ip("10.0.0.1"), None, Some(v.as_bytes()), &s);
        assert_eq!(
            f("for=192.0.2.60;proto=http;by=203.0.113.43"),
            ip("192.0.2.60")
        );
        assert_eq!(
            f("for=192.0.2.1, for=\"[2001:db8:cafe::17]:4711\", For=10.0.0.5"),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(f("for=unknown, for=10.0.0.5"), ip("10.0.0.5"));
        assert_eq!(f("for=198.51.100.1:8080"), ip("198.51.100.1"));
        // X-Forwarded-For wins when both are present
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some(b"1.1.1.1"), Some(b"for=2.2.2.2"), &s),
            ip("1.1.1.1")
        );
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
