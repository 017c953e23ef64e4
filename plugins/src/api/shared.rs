//! Request facts that one plugin produces and others (or the gateway) read through
//! `RequestInfo::ext`. They live in the API so that plugins never import each other: the
//! `jwt` plugin writes [`VerifiedClaims`], `rate_limit` reads them; the `cache` plugin writes a
//! [`CacheIntent`], the gateway's cache phases read it.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};

/// The claims of a token, as a JSON object.
pub type Claims = Arc<serde_json::Map<String, serde_json::Value>>;

/// The claims of the request's verified token (`info.ext.get::<VerifiedClaims>()`), set by
/// the `jwt` plugin after the signature and every rule passed.
#[derive(Debug, Clone)]
pub struct VerifiedClaims(pub Claims);

/// What the gateway's cache phases need to know about this route.
#[derive(Debug, Clone)]
pub struct CacheIntent {
    pub default_ttl: Duration,
    pub methods: Vec<Method>,
    /// Lowercase request header names that split the cache, besides the upstream's `Vary`.
    pub vary: Vec<HeaderName>,
    pub max_object_size: usize,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
}

/// The verified client certificate of the request's TLS connection (mutual TLS), in
/// `RequestInfo::client_cert`. Only certificates whose chain the listener's `client_auth.ca`
/// verified ever get here; a connection without one has `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject as RFC 4514-style text in certificate order, e.g. `CN=ops-1, O=Corp`.
    pub subject: String,
    /// The subject alternative names: DNS names, URIs, e-mail addresses and IP addresses, as
    /// written in the certificate (no type prefix).
    pub sans: Vec<String>,
    /// SHA-256 of the certificate's DER, lowercase hex without separators.
    pub fingerprint: String,
    /// The serial number, lowercase hex.
    pub serial: String,
    /// When the certificate expires (Unix seconds).
    pub not_after: i64,
}

/// The upstream group a plugin chose for this request instead of the route's own
/// (`info.ext`), by its name in `upstreams:`. The gateway reads it after the request chain
/// continued; an unknown name answers 500 naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamChoice(pub Arc<str>);
