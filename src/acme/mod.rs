//! Certificates obtained and renewed from an ACME CA (RFC 8555: Let's Encrypt, ZeroSSL, a
//! private CA, pebble in the tests).
//!
//! - `acme:` names the CA (its directory URL and, for a private CA, the roots its server's
//!   certificate chains to), the state directory and when to renew; a listener lists the
//!   names it serves with `tls: { acme: [names] }`, one certificate per list.
//! - [`service::AcmeService`] (a background service) keeps one account per directory (its key
//!   in `state_dir/accounts/`, created once, reused after restarts), loads certificates kept
//!   in `state_dir/certificates/`, orders what is missing or due, and retries failures with
//!   backoff. Instances sharing `state_dir` take a lock file per certificate, so one of them
//!   orders and the others pick the result up from the directory.
//! - Issued certificates live in the process-wide [`AcmeStore`], outside the config snapshot:
//!   a listener's SNI resolver asks it for the names the listener lists, so a certificate is
//!   served by the next handshake after it is installed, with no reload, and keeps serving
//!   across reloads. HTTP-01 challenges are answered from the same store, before routing
//!   (`proxy::admit`).

pub(crate) mod client;
pub mod service;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

use crate::config::error::Scope;
pub use crate::config::raw::AcmeChallenge;
use crate::config::raw::RawAcme;

/// Where HTTP-01 challenges are fetched.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The ALPN protocol of TLS-ALPN-01 validation connections.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// `acme:` compiled: what the service needs to order and renew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    pub directory: String,
    /// `mailto:` contact of the account.
    pub contact: Option<String>,
    /// Roots for the ACME server's certificate (absent: the system's).
    pub ca_roots: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub renew_before: Duration,
    pub challenge: AcmeChallenge,
}

/// Compiles `acme:` (at scope `acme`); relative paths resolve against `base_dir`. Reads the
/// `ca_roots` file to check it holds certificates; touches nothing else (the state directory
/// is made by the service).
pub(crate) fn compile(
    raw: Option<&RawAcme>,
    base_dir: &Path,
    s: &mut Scope<'_>,
) -> Option<Arc<AcmeSettings>> {
    let raw = raw?;
    let dir = raw.directory.trim();
    match dir.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => {}
        _ => s.error_at(
            "directory",
            format!("`{dir}` is not the https:// URL of an ACME directory"),
        ),
    }
    let contact = match raw.email.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(e) if valid_email(e) => Some(format!("mailto:{e}")),
        Some(e) => {
            s.error_at("email", format!("`{e}` is not an e-mail address"));
            None
        }
    };
    let ca_roots = raw.ca_roots.as_ref().map(|p| base_dir.join(p));
    if let Some(p) = &ca_roots {
        if let Err(e) = client::read_roots(p) {
            s.error_at("ca_roots", e);
        }
    }
    if raw.state_dir.trim().is_empty() {
        s.error_at("state_dir", "a directory for the account and certificates");
    }
    Some(Arc::new(AcmeSettings {
        directory: dir.to_string(),
        contact,
        ca_roots,
        state_dir: base_dir.join(raw.state_dir.trim()),
        renew_before: raw.renew_before.0,
        challenge: raw.challenge,
    }))
}

fn valid_email(e: &str) -> bool {
    matches!(e.split_once('@'), Some((user, host)) if !user.is_empty() && host.contains('.') && !e.contains(char::is_whitespace))
}

/// Checks a listener's `tls.acme` list (at scope `...tls`): DNS names only (HTTP-01 cannot
/// prove a wildcard or an IP address), each once. The names, lowercase, in order.
pub(crate) fn check_names(names: &[String], s: &mut Scope<'_>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        let name = n.trim().trim_end_matches('.').to_ascii_lowercase();
        let why = if name.starts_with("*.") {
            Some("a wildcard needs the DNS-01 challenge, which gatehouse does not answer; list the names")
        } else if name.parse::<std::net::IpAddr>().is_ok() {
            Some("an IP address: ACME certificates here are for DNS names")
        } else if !valid_dns_name(&name) {
            Some("not a DNS name")
        } else if out.contains(&name) {
            Some("listed twice")
        } else {
            None
        };
        match why {
            Some(w) => s.item("acme", i).error(format!("`{n}`: {w}")),
            None => out.push(name),
        }
    }
    out
}

fn valid_dns_name(n: &str) -> bool {
    n.len() <= 253
        && n.contains('.')
        && n.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// An installed certificate.
#[derive(Clone)]
pub(crate) struct Served {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) not_after: i64,
}

/// The process-wide ACME state the data path reads: issued certificates by name and the
/// HTTP-01 answers of orders in progress. Written only by the service and the admin API.
#[derive(Default)]
pub struct AcmeStore {
    certs: ArcSwap<HashMap<String, Served>>,
    /// token -> key authorization, for the orders in progress (a handful at most).
    http01: Mutex<HashMap<String, String>>,
    /// name -> TLS-ALPN-01 challenge certificate, for the orders in progress.
    alpn01: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// The state directory, where instances sharing it publish their challenge answers.
    shared_dir: Mutex<Option<PathBuf>>,
    /// Names whose certificate an operator asked to renew now (`*`: all).
    forced: Mutex<HashSet<String>>,
    wake: tokio::sync::Notify,
    /// What `GET /acme` shows, written after every round of the service.
    report: Mutex<serde_json::Value>,
}

/// The one store of the process.
pub fn store() -> &'static AcmeStore {
    static STORE: OnceLock<AcmeStore> = OnceLock::new();
    STORE.get_or_init(AcmeStore::default)
}

impl AcmeStore {
    /// The issued certificate for `name` (lowercase, no trailing dot), if any.
    pub(crate) fn cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.certs.load().get(name).map(|s| Arc::clone(&s.key))
    }

    /// Expiry (Unix seconds) of the certificate served for `name`.
    pub(crate) fn not_after(&self, name: &str) -> Option<i64> {
        self.certs.load().get(name).map(|s| s.not_after)
    }

    pub(crate) fn install(&self, certs: HashMap<String, Served>) {
        self.certs.store(Arc::new(certs));
    }

    /// The key authorization for an HTTP-01 `token` of an order in progress.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01.lock().ok()?.get(token).cloned()
    }

    pub(crate) fn set_http01(&self, token: &str, key_authorization: &str) {
        if let Ok(mut m) = self.http01.lock() {
            m.insert(token.to_string(), key_authorization.to_string());
        }
    }

    pub(crate) fn clear_http01(&self, token: &str) {
        if let Ok(mut m) = self.http01.lock() {
            m.remove(token);
        }
    }

    /// The TLS-ALPN-01 certificate for `name` of an order in progress here or (through the
    /// state directory) in an instance sharing it.
    pub(crate) fn alpn01(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(k) = self.alpn01.lock().ok()?.get(name) {
            return Some(Arc::clone(k));
        }
        let dir = self.shared_dir.lock().ok()?.clone()?;
        let pem = std::fs::read(
            dir.join("challenges")
                .join(format!("{name}.tls-alpn-01.pem")),
        )
        .ok()?;
        client::alpn_cert_from_pem(&pem)
    }

    pub(crate) fn set_alpn01(&self, name: &str, key: Arc<CertifiedKey>) {
        if let Ok(mut m) = self.alpn01.lock() {
            m.insert(name.to_string(), key);
        }
    }

    pub(crate) fn clear_alpn01(&self, name: &str) {
        if let Ok(mut m) = self.alpn01.lock() {
            m.remove(name);
        }
    }

    pub(crate) fn set_shared_dir(&self, dir: Option<PathBuf>) {
        if let Ok(mut d) = self.shared_dir.lock() {
            *d = dir;
        }
    }

    /// Asks the service to renew the certificate serving `name` (all with `None`) now.
    pub fn force_renewal(&self, name: Option<&str>) {
        if let Ok(mut f) = self.forced.lock() {
            f.insert(name.map_or_else(|| "*".to_string(), str::to_ascii_lowercase));
        }
        self.wake.notify_one();
    }

    /// The renewals asked for so far (and forgets them): names, or `*` for all.
    pub(crate) fn take_forced(&self) -> HashSet<String> {
        self.forced
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default()
    }

    /// Wakes the service (a reload, an operator's request).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }

    pub(crate) fn set_report(&self, v: serde_json::Value) {
        if let Ok(mut r) = self.report.lock() {
            *r = v;
        }
    }

    /// The managed certificates: names, expiry, when renewal is due, the last error.
    pub fn report(&self) -> serde_json::Value {
        self.report
            .lock()
            .map(|r| r.clone())
            .unwrap_or(serde_json::Value::Null)
    }
}

/// The answer to `token` published in the state directory by an instance sharing it (a
/// small file read, only for well-formed challenge paths while `acme` is configured).
pub fn shared_http01(settings: &AcmeSettings, token: &str) -> Option<String> {
    client::shared_http01(settings, token)
}

/// Whether `path` is an HTTP-01 challenge fetch; its token when it is a well-formed one.
pub fn challenge_token(path: &str) -> Option<&str> {
    let token = path.strip_prefix(CHALLENGE_PREFIX)?;
    (!token.is_empty()
        && token.len() <= 128
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_with_their_path() {
        let mut errs = crate::config::error::Errors::default();
        let names: Vec<String> = [
            "API.example.com.",
            "*.example.com",
            "10.0.0.1",
            "bad_name.com",
            "api.example.com",
            "localhost",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let ok = check_names(&names, &mut errs.scope("server.listen[1].tls"));
        assert_eq!(ok, vec!["api.example.com"]);
        let text: Vec<String> = errs.into_vec().iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 5, "{text:?}");
        let expected = [
            ("server.listen[1].tls.acme[1]", "wildcard"),
            ("acme[2]", "IP address"),
            ("acme[3]", "not a DNS name"),
            ("acme[4]", "listed twice"),
            ("acme[5]", "not a DNS name"),
        ];
        for (t, (at, why)) in text.iter().zip(expected) {
            assert!(t.contains(at) && t.contains(why), "{t}");
        }
    }

    #[test]
    fn challenge_tokens_are_base64url() {
        assert_eq!(
            challenge_token("/.well-known/acme-challenge/abc-_1"),
            Some("abc-_1")
        );
        assert_eq!(challenge_token("/.well-known/acme-challenge/"), None);
        assert_eq!(challenge_token("/.well-known/acme-challenge/a/b"), None);
        assert_eq!(challenge_token("/.well-known/acme-challenge/a%2e"), None);
        assert_eq!(challenge_token("/other"), None);
    }

    #[test]
    fn forced_renewals_are_taken_once() {
        let s = AcmeStore::default();
        assert!(s.take_forced().is_empty());
        s.force_renewal(Some("B.test"));
        s.force_renewal(None);
        let f = s.take_forced();
        assert!(f.contains("b.test") && f.contains("*"));
        assert!(s.take_forced().is_empty());
    }
}
