//! Mutual TLS towards clients: the verifier a listener's `client_auth` compiles to, what the
//! handshake learns about the connection ([`ConnTls`]: SNI and the verified client
//! certificate, parsed once per connection and shared by all its requests and h2 streams),
//! and the per-route `client_cert` rules.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use gatehouse_plugins::api::ClientCert;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::config::raw::ClientAuthMode;

/// What a TLS connection's handshake established, in the session's `SslDigest` extension.
#[derive(Debug, Default)]
pub struct ConnTls {
    /// The server name the client asked for (lowercase), if it sent one.
    pub sni: Option<Box<str>>,
    /// The client certificate, verified against the listener's CA.
    pub client_cert: Option<Arc<ClientCert>>,
}

/// The handshake-complete hook: records [`ConnTls`].
pub(crate) struct Identify;

#[async_trait]
impl TlsAccept for Identify {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let sni = tls.server_name().map(|n| n.to_ascii_lowercase().into());
        // only ever a chain the verifier accepted: rustls fails the handshake otherwise
        let client_cert = tls.peer_certificate_der().and_then(parse).map(Arc::new);
        Some(Arc::new(ConnTls { sni, client_cert }))
    }
}

/// The facts of a DER certificate that rules, headers and plugins use.
pub(crate) fn parse(der: &[u8]) -> Option<ClientCert> {
    use x509_parser::extensions::GeneralName;
    let (_, x) = x509_parser::parse_x509_certificate(der).ok()?;
    let sans = match x.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) | GeneralName::URI(d) | GeneralName::RFC822Name(d) => {
                    Some((*d).to_string())
                }
                GeneralName::IPAddress(b) => ip_text(b),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(ClientCert {
        subject: x.subject().to_string(),
        sans,
        fingerprint: hex(&Sha256::digest(der)),
        serial: hex(x.raw_serial()),
        not_after: x.validity().not_after.timestamp(),
    })
}

fn ip_text(b: &[u8]) -> Option<String> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b)
            .ok()
            .map(|a| std::net::Ipv4Addr::from(a).to_string()),
        16 => <[u8; 16]>::try_from(b)
            .ok()
            .map(|a| std::net::Ipv6Addr::from(a).to_string()),
        _ => None,
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// The verifier for `mode` with the CA certificates in `ca` (PEM); `Ok(None)` for `none`.
/// The error names what is wrong with the file.
pub(crate) fn verifier(
    mode: ClientAuthMode,
    ca: &Path,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, String> {
    if mode == ClientAuthMode::None {
        return Ok(None);
    }
    let bytes = std::fs::read(ca).map_err(|e| format!("cannot read `{}`: {e}", ca.display()))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&bytes) {
        let c = c.map_err(|e| format!("`{}`: not a PEM certificate: {e}", ca.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("`{}`: unusable CA certificate: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("`{}` holds no certificate", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match mode {
        ClientAuthMode::Optional => builder.allow_unauthenticated(),
        _ => builder,
    };
    builder
        .build()
        .map(Some)
        .map_err(|e| format!("`{}`: {e}", ca.display()))
}

/// A route's `client_cert` rule, compiled.
#[derive(Debug, Clone, Default)]
pub struct ClientCertRule {
    /// No certificate: 403.
    pub required: bool,
    /// Subject patterns (`*` matches any run of characters), each compared with the whole
    /// subject and with each of its attributes (`CN=ops-*` matches `CN=ops-1, O=Corp`).
    pub subjects: Vec<String>,
    /// Patterns for any one subject alternative name.
    pub sans: Vec<String>,
    /// SHA-256 fingerprints, lowercase hex without separators.
    pub fingerprints: Vec<String>,
}

impl ClientCertRule {
    /// Whether `cert` passes the allow lists: any entry of any list matches, or every list is
    /// empty.
    pub fn allows(&self, cert: &ClientCert) -> bool {
        if self.subjects.is_empty() && self.sans.is_empty() && self.fingerprints.is_empty() {
            return true;
        }
        self.fingerprints.contains(&cert.fingerprint)
            || self
                .sans
                .iter()
                .any(|p| cert.sans.iter().any(|s| glob(p, s)))
            || self.subjects.iter().any(|p| {
                glob(p, &cert.subject) || cert.subject.split(", ").any(|part| glob(p, part))
            })
    }
}

/// `*` matches any run of characters (none included); everything else matches itself.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Normalizes a configured fingerprint (`AB:CD:..` or `abcd..`) to lowercase hex; `None` when
/// it is not 64 hex digits.
pub(crate) fn normalize_fingerprint(f: &str) -> Option<String> {
    let h: String = f
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())).then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches() {
        assert!(glob("CN=ops-*", "CN=ops-1"));
        assert!(glob("CN=ops-*", "CN=ops-"));
        assert!(!glob("CN=ops-*", "CN=dev-1"));
        assert!(glob("spiffe://corp/ops/*", "spiffe://corp/ops/api"));
        assert!(glob("*a*b*", "xxaxxbxx"));
        assert!(!glob("*a*b", "xxaxxbxx"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(glob("*", ""));
    }

    #[test]
    fn rules() {
        let cert = ClientCert {
            subject: "CN=ops-1, O=Corp".into(),
            sans: vec!["spiffe://corp/ops/api".into(), "ops.corp".into()],
            fingerprint: "ab".repeat(32),
            serial: "01".into(),
            not_after: 0,
        };
        let any = ClientCertRule::default();
        assert!(any.allows(&cert));
        let by_subject = ClientCertRule {
            subjects: vec!["CN=ops-*".into()],
            ..Default::default()
        };
        assert!(by_subject.allows(&cert));
        let whole = ClientCertRule {
            subjects: vec!["CN=ops-1, O=Corp".into()],
            ..Default::default()
        };
        assert!(whole.allows(&cert));
        let other = ClientCertRule {
            subjects: vec!["CN=dev-*".into()],
            sans: vec!["spiffe://corp/dev/*".into()],
            fingerprints: vec!["cd".repeat(32)],
            ..Default::default()
        };
        assert!(!other.allows(&cert));
        let by_san = ClientCertRule {
            sans: vec!["spiffe://corp/ops/*".into()],
            ..Default::default()
        };
        assert!(by_san.allows(&cert));
        let by_fp = ClientCertRule {
            fingerprints: vec!["ab".repeat(32)],
            ..Default::default()
        };
        assert!(by_fp.allows(&cert));
        assert!(normalize_fingerprint("AB:CD").is_none());
        assert!(normalize_fingerprint(&"zz".repeat(32)).is_none());
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(normalize_fingerprint(&colons), Some("ab".repeat(32)));
    }
}
