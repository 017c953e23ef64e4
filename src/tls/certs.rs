//! Loading a certificate chain and its private key from PEM files: the pair must match, the
//! leaf must not have expired, and the names it is served for are its DNS subject
//! alternative names (or, without any, its common name). Read at compile time; nothing here
//! touches what serves.

use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// A certificate ready to serve.
pub(crate) struct LoadedCert {
    pub(crate) key: Arc<CertifiedKey>,
    /// Lowercase DNS names (`*.example.com` for a wildcard).
    pub(crate) names: Vec<String>,
    /// When the leaf became valid and when it expires (Unix seconds).
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    /// SHA-256 of the files' bytes (to tell a changed file on reload).
    pub(crate) digest: [u8; 32],
    /// The private key's DER (for Pingora's upstream client certificate).
    pub(crate) key_der: Vec<u8>,
}

/// Reads and checks `cert` (chain, leaf first) and `key`. The error says what is wrong with
/// which file, for the config error at the entry's YAML path.
pub(crate) fn load(cert: &Path, key: &Path, now: i64) -> Result<LoadedCert, String> {
    let cert_bytes =
        std::fs::read(cert).map_err(|e| format!("cannot read `{}`: {e}", cert.display()))?;
    let key_bytes =
        std::fs::read(key).map_err(|e| format!("cannot read `{}`: {e}", key.display()))?;
    from_pem(
        &cert_bytes,
        &key_bytes,
        now,
        &cert.display().to_string(),
        &key.display().to_string(),
    )
}

/// [`load`] on the files' contents (`cert_name`, `key_name`: what the errors call them).
pub(crate) fn from_pem(
    cert_bytes: &[u8],
    key_bytes: &[u8],
    now: i64,
    cert_name: &str,
    key_name: &str,
) -> Result<LoadedCert, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{cert_name}`: not a PEM certificate chain: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("`{cert_name}` holds no certificate"));
    };
    let private = PrivateKeyDer::from_pem_slice(key_bytes)
        .map_err(|e| format!("`{key_name}`: no PEM private key: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| format!("`{key_name}`: unsupported private key: {e}"))?;
    let (names, not_before, not_after) =
        leaf_facts(leaf).map_err(|e| format!("`{cert_name}`: {e}"))?;
    if not_after < now {
        return Err(format!(
            "`{cert_name}` expired (not after {})",
            x509_parser::time::ASN1Time::from_timestamp(not_after)
                .map_or_else(|_| not_after.to_string(), |t| t.to_string())
        ));
    }
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|_| format!("`{key_name}` does not match the certificate `{cert_name}`"))?;
    let mut h = Sha256::new();
    h.update(cert_bytes);
    h.update(key_bytes);
    Ok(LoadedCert {
        key_der: private.secret_der().to_vec(),
        key: Arc::new(certified),
        names,
        not_before,
        not_after,
        digest: h.finalize().into(),
    })
}

/// The leaf's DNS names, start and expiry.
fn leaf_facts(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64, i64), String> {
    let (_, x) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("the leaf certificate does not parse: {e}"))?;
    let mut names: Vec<String> = match x.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            x.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let v = x.validity();
    Ok((names, v.not_before.timestamp(), v.not_after.timestamp()))
}
