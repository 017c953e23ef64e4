//! How gatehouse talks to a group's backends: plain HTTP/1.1, cleartext HTTP/2 (`h2c`), or
//! TLS (`upstreams.<name>.tls`) with an SNI that is never empty, verification on by default
//! (system roots or a configured CA), an optional client certificate and ALPN. Files are read
//! when the config is compiled; the peers of one group share one parsed CA and key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use pingora_core::protocols::tls::CaType;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{CertKey, WrappedX509};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::config::error::Scope;
use crate::config::raw::RawUpstreamTls;

/// Concurrent streams gatehouse opens on one HTTP/2 connection to a backend.
const H2_STREAMS: usize = 100;

/// The transport to a group's backends.
#[derive(Debug, Clone, Default)]
pub enum Transport {
    #[default]
    Plain,
    /// HTTP/2 with prior knowledge, no TLS.
    H2c,
    Tls(Arc<UpstreamTls>),
}

impl Transport {
    /// The peer for one attempt at `addr`.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        match self {
            Transport::Plain => HttpPeer::new(addr, false, String::new()),
            Transport::H2c => {
                let mut p = HttpPeer::new(addr, false, String::new());
                p.options.alpn = ALPN::H2;
                p.options.max_h2_streams = H2_STREAMS;
                p
            }
            Transport::Tls(t) => t.peer(addr),
        }
    }

    /// Whether the backends are reached over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }
}

/// A compiled `upstreams.<name>.tls`.
pub struct UpstreamTls {
    /// `tls.sni`, or per backend address its host as written in `backends`.
    sni: Option<String>,
    backend_sni: HashMap<SocketAddr, Arc<str>>,
    verify: bool,
    ca: Option<Arc<CaType>>,
    client_cert: Option<Arc<CertKey>>,
    alpn: ALPN,
    /// Keeps pooled connections apart from those of groups with other TLS settings (Pingora's
    /// pool key leaves the CA out).
    group_key: u64,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .field("ca", &self.ca.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .field("alpn", &self.alpn)
            .finish()
    }
}

impl UpstreamTls {
    /// The server name for `addr` (never empty: checked when compiled).
    pub fn sni(&self, addr: SocketAddr) -> String {
        match (&self.sni, self.backend_sni.get(&addr)) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => s.to_string(),
            (None, None) => addr.ip().to_string(),
        }
    }

    /// A TLS peer for `addr` with every setting of the group.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut p = HttpPeer::new(addr, true, self.sni(addr));
        self.apply(&mut p);
        p
    }

    /// Sets the TLS options on `p` (whose address and SNI are set).
    pub fn apply(&self, p: &mut HttpPeer) {
        p.options.verify_cert = self.verify;
        p.options.verify_hostname = self.verify;
        p.options.ca = self.ca.clone();
        p.client_cert_key = self.client_cert.clone();
        p.options.alpn = self.alpn.clone();
        if self.alpn.get_max_http_version() == 2 {
            p.options.max_h2_streams = H2_STREAMS;
        }
        p.group_key = self.group_key;
    }
}

/// Reads PEM certificates; each must parse as X.509 (Pingora's wrappers panic otherwise).
fn read_certs(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&bytes)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{}`: not a PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", path.display()));
    }
    for c in &certs {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| format!("`{}`: a certificate does not parse: {e}", path.display()))?;
    }
    Ok(certs)
}

/// The client certificate chain and key: read and checked like a listener's certificate
/// (the pair matches, the leaf has not expired), and every certificate of the chain parses
/// (Pingora's wrappers panic otherwise).
fn client_cert(cert: &Path, key: &Path) -> Result<CertKey, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let loaded = crate::tls::certs::load(cert, key, now)?;
    let chain: Vec<Vec<u8>> = loaded.key.cert.iter().map(|c| c.to_vec()).collect();
    for c in &chain {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| format!("`{}`: a certificate does not parse: {e}", cert.display()))?;
    }
    Ok(CertKey::new(chain, loaded.key_der))
}

fn alpn(list: &[String], s: &mut Scope<'_>) -> ALPN {
    let (mut h1, mut h2) = (false, false);
    for (i, p) in list.iter().enumerate() {
        match p.as_str() {
            "http/1.1" => h1 = true,
            "h2" => h2 = true,
            other => s
                .item("alpn", i)
                .error(format!("`{other}`: use h2 or http/1.1")),
        }
    }
    match (h1, h2) {
        // Pingora offers both in one order: h2 first
        (true, true) => ALPN::H2H1,
        (false, true) => ALPN::H2,
        (true, false) => ALPN::H1,
        (false, false) => {
            s.error_at("alpn", "offer at least one of h2, http/1.1");
            ALPN::H1
        }
    }
}

/// Compiles `tls` (at scope `upstreams.<name>.tls`) for backends written as `hosts` (each
/// `host:port` with the addresses it resolved to). Files resolve against `base_dir`.
pub fn compile(
    tls: &RawUpstreamTls,
    hosts: &[(&str, Vec<SocketAddr>)],
    base_dir: &Path,
    s: &mut Scope<'_>,
) -> Option<Arc<UpstreamTls>> {
    let mut key = Sha256::new();
    if let Some(sni) = &tls.sni {
        if sni.trim().is_empty() || rustls_pki_types::ServerName::try_from(sni.as_str()).is_err() {
            s.error_at("sni", format!("`{sni}` is not a DNS name or IP address"));
        }
        key.update(sni.as_bytes());
    }
    key.update([0, u8::from(tls.verify)]);
    let mut backend_sni = HashMap::new();
    if tls.sni.is_none() {
        for (host, addrs) in hosts {
            let name = host_part(host);
            for a in addrs {
                backend_sni.insert(*a, Arc::<str>::from(name));
            }
        }
    }
    let ca = tls.ca.as_ref().and_then(|c| {
        let path = base_dir.join(c);
        let certs = s.take("ca", read_certs(&path))?;
        for c in &certs {
            key.update(Sha256::digest(c));
        }
        let wrapped: Vec<WrappedX509> = certs
            .into_iter()
            .map(|c| WrappedX509::new(c, pingora_core::utils::tls::parse_x509))
            .collect();
        Some(Arc::<CaType>::from(wrapped.into_boxed_slice()))
    });
    let client = tls.client_cert.as_ref().and_then(|c| {
        let (cert, k) = (base_dir.join(&c.cert), base_dir.join(&c.key));
        let ck = s.take("client_cert", client_cert(&cert, &k))?;
        if let Ok(b) = std::fs::read(&cert) {
            key.update(Sha256::digest(b));
        }
        Some(Arc::new(ck))
    });
    let alpn = alpn(&tls.alpn, s);
    key.update(tls.alpn.join(",").as_bytes());
    let digest = key.finalize();
    let mut group_key = [0u8; 8];
    group_key.copy_from_slice(&digest[..8]);
    s.is_ok().then(|| {
        Arc::new(UpstreamTls {
            sni: tls.sni.clone(),
            backend_sni,
            verify: tls.verify,
            ca,
            client_cert: client,
            alpn,
            group_key: u64::from_le_bytes(group_key),
        })
    })
}

/// `host` of `host:port` (`[v6]:port` gives the bare address).
fn host_part(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_parts() {
        assert_eq!(host_part("billing.internal:443"), "billing.internal");
        assert_eq!(host_part("10.0.0.7:443"), "10.0.0.7");
        assert_eq!(host_part("[::1]:443"), "::1");
    }
}
