//! TLS termination on HTTPS listeners (rustls through Pingora's acceptor). A listener's
//! [`TlsListener`] is compiled from `server.listen[i].tls` with the rest of the config:
//! certificates are read and checked then ([`certs`]), chosen by SNI during the handshake
//! ([`sni`]), and replaced whole on every reload, so new handshakes see new certificates while
//! open connections keep theirs. The handshake itself runs in the connection guard
//! (`proxy::conn`), under the connection cap and the listener's handshake timeout.

pub(crate) mod certs;
pub mod client;
mod sni;

/// The certificate parsers, for the fuzz targets.
pub mod fuzzing {
    /// A PEM chain and key as `tls.certificates` loads them (expiry checked against `now`):
    /// the chain's length.
    pub fn load_pem(cert: &[u8], key: &[u8], now: i64) -> Result<usize, String> {
        super::certs::from_pem(cert, key, now, "cert", "key").map(|l| l.key.cert.len())
    }

    /// A client certificate (DER) as a mutual-TLS client presents it.
    pub fn parse_client_cert(der: &[u8]) -> Option<gatehouse_plugins::api::ClientCert> {
        super::client::parse(der)
    }
}

pub use client::{ClientCertRule, ConnTls};

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::listeners::tls::Acceptor;
use rustls::ServerConfig;

use crate::config::error::Scope;
use crate::config::raw::RawTls;

/// A compiled HTTPS listener setting.
pub struct TlsListener {
    pub(crate) acceptor: Acceptor,
    pub(crate) handshake_timeout: Duration,
    /// SHA-256 over every certificate and key file, in order: a reload whose files changed is
    /// not "unchanged" even when the config text is.
    pub(crate) digest: Vec<u8>,
    /// (first name, expiry in Unix seconds) per certificate.
    pub(crate) expiries: Vec<(String, i64)>,
    /// The certificate and key files (and the client CA), as resolved (watched for changes).
    pub(crate) files: Vec<std::path::PathBuf>,
    /// Whether clients are asked for a certificate.
    pub(crate) client_auth: crate::config::raw::ClientAuthMode,
    /// Names served with the certificate the ACME service obtains (`tls.acme`), lowercase.
    pub(crate) acme_names: Vec<String>,
}

impl fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsListener")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("certificates", &self.expiries)
            .field("client_auth", &self.client_auth)
            .finish()
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Compiles `tls` at scope `server.listen[i].tls`; relative file names resolve against
/// `base_dir`; `acme`: whether the config has the `acme` section its `acme` names need.
/// `None` (with the errors recorded) when anything is wrong.
pub(crate) fn compile(
    tls: &RawTls,
    base_dir: &Path,
    acme: bool,
    s: &mut Scope<'_>,
) -> Option<Arc<TlsListener>> {
    if tls.certificates.is_empty() && tls.acme.is_empty() {
        s.error_at(
            "certificates",
            "needs at least one certificate (or names under `acme`)",
        );
    }
    if !acme && !tls.acme.is_empty() {
        s.error_at(
            "acme",
            "needs the top-level `acme` section (the CA to order from)",
        );
    }
    let acme_names = crate::acme::check_names(&tls.acme, s);
    let now = now_unix();
    let mut resolver = sni::SniResolver::default();
    resolver.set_acme(&acme_names);
    let mut digest = Vec::with_capacity(32 * tls.certificates.len());
    let mut expiries = Vec::new();
    let mut keys = Vec::new();
    let mut files = Vec::new();
    for (i, c) in tls.certificates.iter().enumerate() {
        let (cert, key) = (base_dir.join(&c.cert), base_dir.join(&c.key));
        let loaded = certs::load(&cert, &key, now);
        files.extend([cert, key]);
        let Some(cert) = s.item("certificates", i).take("", loaded) else {
            continue;
        };
        resolver.add(&cert.names, &cert.key);
        digest.extend_from_slice(&cert.digest);
        expiries.push((
            cert.names.first().cloned().unwrap_or_default(),
            cert.not_after,
        ));
        keys.push(cert.key);
    }
    match tls.default_certificate {
        Some(d) if d < tls.certificates.len() => {
            if let Some(k) = keys.get(d) {
                resolver.set_default(Arc::clone(k));
            }
        }
        Some(_) => s.error_at(
            "default_certificate",
            "an index into `certificates`, counted from 0",
        ),
        None => {}
    }
    let verifier = client_auth(tls, base_dir, &mut digest, &mut files, s);
    let alpn = alpn(&tls.alpn, s);
    let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.min_version.as_str() {
        "1.2" => &[&rustls::version::TLS13, &rustls::version::TLS12],
        "1.3" => &[&rustls::version::TLS13],
        _ => {
            s.error_at("min_version", "use \"1.2\" or \"1.3\"");
            &[]
        }
    };
    if !s.is_ok() {
        return None;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| s.error(format!("TLS settings rejected: {e}")))
        .ok()?;
    let config = match verifier.flatten() {
        Some(v) => config.with_client_cert_verifier(v),
        None => config.with_no_client_auth(),
    };
    let mut config = config.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn;
    if !acme_names.is_empty() {
        // offered last: chosen only by a CA validating TLS-ALPN-01, which offers nothing else
        config
            .alpn_protocols
            .push(crate::acme::ACME_TLS_ALPN.to_vec());
    }
    Some(Arc::new(TlsListener {
        acceptor: Acceptor::from_server_config(Arc::new(config)),
        handshake_timeout: tls.handshake_timeout.0,
        digest,
        expiries,
        files,
        client_auth: tls.client_auth.mode,
        acme_names,
    }))
}

/// The client-certificate verifier of `tls.client_auth` (at scope `...tls`); the CA file joins
/// the listener's digest and watched files. `None` when there were errors.
fn client_auth(
    tls: &RawTls,
    base_dir: &Path,
    digest: &mut Vec<u8>,
    files: &mut Vec<std::path::PathBuf>,
    s: &mut Scope<'_>,
) -> Option<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>> {
    use crate::config::raw::ClientAuthMode;
    use sha2::Digest;
    let auth = &tls.client_auth;
    let ca = match (auth.mode, &auth.ca) {
        (ClientAuthMode::None, _) => return Some(None),
        (_, None) => {
            s.error_at("client_auth.ca", "needed when mode is optional or required");
            return None;
        }
        (_, Some(ca)) => base_dir.join(ca),
    };
    let v = client::verifier(auth.mode, &ca);
    if let Ok(bytes) = std::fs::read(&ca) {
        digest.extend_from_slice(&sha2::Sha256::digest(&bytes));
    }
    files.push(ca);
    s.take("client_auth.ca", v)
}

fn alpn(list: &[String], s: &mut Scope<'_>) -> Vec<Vec<u8>> {
    if list.is_empty() {
        s.error_at("alpn", "offer at least one of h2, http/1.1");
    }
    list.iter()
        .enumerate()
        .filter_map(|(i, p)| match p.as_str() {
            "h2" | "http/1.1" => Some(p.as_bytes().to_vec()),
            other => {
                s.item("alpn", i)
                    .error(format!("`{other}`: use h2 or http/1.1"));
                None
            }
        })
        .collect()
}
