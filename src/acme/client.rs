//! Talking to the CA: the HTTPS client (roots from `acme.ca_roots` or the system), the
//! account (created once per directory, its credentials kept in the state directory) and one
//! order, from new-order to the issued chain. Every error is the CA's own text where it gave
//! one (the RFC 7807 problem detail, per failed authorization).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, HttpClient,
    Identifier, KeyAuthorization, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::AcmeSettings;

/// The certificates in the PEM file `path` (at least one).
pub(crate) fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{}`: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", path.display()));
    }
    Ok(certs)
}

/// An HTTPS client for the CA (ring, TLS 1.2/1.3, HTTP/1.1 and h2).
fn http_client(settings: &AcmeSettings) -> Result<Box<dyn HttpClient>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &settings.ca_roots {
        Some(p) => {
            for c in read_roots(p)? {
                roots
                    .add(c)
                    .map_err(|e| format!("`{}`: {e}", p.display()))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                // a system store may hold a certificate rustls cannot use; the rest serve
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(
                    "no system root certificates (install ca-certificates, or set acme.ca_roots)"
                        .into(),
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, BodyWrapper<Bytes>>(connector);
    Ok(Box::new(client))
}

/// The account file of `settings.directory` (one per directory: another CA is another
/// account).
pub(crate) fn account_file(settings: &AcmeSettings) -> std::path::PathBuf {
    settings
        .state_dir
        .join("accounts")
        .join(format!("{}.json", short_hash(&settings.directory)))
}

/// 16 hex digits of SHA-256 of `s`.
pub(crate) fn short_hash(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The account: from its file, or created at the CA (and written, owner-only) when there is
/// none. Two instances sharing the state directory take the account lock, so one creates it.
pub(crate) async fn account(settings: &AcmeSettings) -> Result<Account, String> {
    let path = account_file(settings);
    if let Some(a) = load_account(settings, &path).await? {
        return Ok(a);
    }
    let lock_path = path.with_extension("lock");
    let _lock = super::service::lock_wait(&lock_path, Duration::from_secs(60)).await?;
    // made by another instance while this one waited
    if let Some(a) = load_account(settings, &path).await? {
        return Ok(a);
    }
    let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
    let (account, creds) = Account::builder_with_http(http_client(settings)?)
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("creating the account at {}: {e}", settings.directory))?;
    // the account is used even when it cannot be kept (the caller keeps it for this
    // process's life): failing here would create another account at every retry
    match serde_json::to_vec_pretty(&creds) {
        Ok(json) => {
            if let Err(e) = super::service::write_private(&path, &json) {
                log::error!(
                    "acme: cannot keep the account in `{}` (a restart will create another): {e}",
                    path.display()
                );
            }
        }
        Err(e) => log::error!("acme: cannot serialize the account: {e}"),
    }
    log::info!(
        "acme: account {} created at {} (kept in {})",
        account.id(),
        settings.directory,
        path.display()
    );
    Ok(account)
}

async fn load_account(settings: &AcmeSettings, path: &Path) -> Result<Option<Account>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading `{}`: {e}", path.display())),
    };
    let creds: AccountCredentials = serde_json::from_slice(&bytes)
        .map_err(|e| format!("`{}` is not an account file: {e}", path.display()))?;
    let account = Account::builder_with_http(http_client(settings)?)
        .from_credentials(creds)
        .await
        .map_err(|e| format!("reaching {}: {e}", settings.directory))?;
    log::info!(
        "acme: account {} reused from {}",
        account.id(),
        path.display()
    );
    Ok(Some(account))
}

/// The challenge answers of an order in progress: in the store, and as files in
/// `state_dir/challenges/` so that every instance sharing the state directory answers them
/// (the CA's validation may reach any instance behind a load balancer). Removed when the
/// order ends, however it ends.
struct Answers {
    dir: std::path::PathBuf,
    /// HTTP-01 tokens, and names with a TLS-ALPN-01 certificate.
    tokens: Vec<String>,
    names: Vec<String>,
}

impl Answers {
    fn publish(&self, file: &str, bytes: &[u8]) {
        let path = self.dir.join(file);
        if let Err(e) = super::service::write_public(&path, bytes) {
            log::warn!(
                "acme: cannot write `{}` (other instances will not answer this challenge): {e}",
                path.display()
            );
        }
    }

    fn http01(&mut self, token: &str, key_authorization: &str) {
        super::store().set_http01(token, key_authorization);
        self.publish(token, key_authorization.as_bytes());
        self.tokens.push(token.to_string());
    }

    fn tls_alpn01(
        &mut self,
        name: &str,
        key_authorization: &KeyAuthorization,
    ) -> Result<(), String> {
        let (key, pem) = alpn_cert(name, key_authorization)?;
        super::store().set_alpn01(name, key);
        self.publish(&format!("{name}.tls-alpn-01.pem"), pem.as_bytes());
        self.names.push(name.to_string());
        Ok(())
    }
}

impl Drop for Answers {
    fn drop(&mut self) {
        for t in &self.tokens {
            super::store().clear_http01(t);
            let _ = std::fs::remove_file(self.dir.join(t));
        }
        for n in &self.names {
            super::store().clear_alpn01(n);
            let _ = std::fs::remove_file(self.dir.join(format!("{n}.tls-alpn-01.pem")));
        }
    }
}

/// The TLS-ALPN-01 certificate for `name` (RFC 8737: self-signed, the name as its only SAN,
/// the key authorization's SHA-256 in the critical acmeIdentifier extension), and its PEM
/// (certificate, then key).
fn alpn_cert(
    name: &str,
    key_authorization: &KeyAuthorization,
) -> Result<(Arc<rustls::sign::CertifiedKey>, String), String> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])
        .map_err(|e| format!("challenge certificate for {name}: {e}"))?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(
            key_authorization.digest().as_ref(),
        ));
    let key = rcgen::KeyPair::generate().map_err(|e| format!("challenge key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("challenge certificate for {name}: {e}"))?;
    let pem = format!("{}{}", cert.pem(), key.serialize_pem());
    let certified = alpn_cert_from_pem(pem.as_bytes())
        .ok_or_else(|| format!("challenge certificate for {name}: unusable"))?;
    Ok((certified, pem))
}

/// A challenge certificate and key from one PEM text.
pub(crate) fn alpn_cert_from_pem(pem: &[u8]) -> Option<Arc<rustls::sign::CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .ok()?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem).ok()?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).ok()?;
    Some(Arc::new(rustls::sign::CertifiedKey::new(chain, signing)))
}

/// The answer another instance sharing the state directory published for `token`.
pub(crate) fn shared_http01(settings: &AcmeSettings, token: &str) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(settings.state_dir.join("challenges").join(token)).ok()?;
    let mut s = String::new();
    f.take(1024).read_to_string(&mut s).ok()?;
    (!s.is_empty()).then_some(s)
}

/// An issued certificate: the chain (PEM, leaf first) and its new private key (PEM).
pub(crate) struct Issued {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
}

/// Orders one certificate for `names` (HTTP-01) and waits for it.
pub(crate) async fn order(
    settings: &AcmeSettings,
    account: &Account,
    names: &[String],
) -> Result<Issued, String> {
    let ids: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut answers = Answers {
        dir: settings.state_dir.join("challenges"),
        tokens: Vec::new(),
        names: Vec::new(),
    };
    let kind = match settings.challenge {
        super::AcmeChallenge::Http01 => ChallengeType::Http01,
        super::AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    {
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a.map_err(|e| format!("authorization: {e}"))?;
            let name = a.identifier().to_string();
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization for {name} is {other:?}")),
            }
            let Some(mut ch) = a.challenge(kind.clone()) else {
                return Err(format!("the CA offers no {kind:?} challenge for {name}"));
            };
            if kind == ChallengeType::TlsAlpn01 {
                answers.tls_alpn01(&name, &ch.key_authorization())?;
            } else if super::challenge_token(&format!("{}{}", super::CHALLENGE_PREFIX, ch.token))
                .is_some()
            {
                answers.http01(&ch.token, ch.key_authorization().as_str());
            } else {
                return Err(format!(
                    "the CA's challenge token for {name} is not base64url"
                ));
            }
            ch.set_ready()
                .await
                .map_err(|e| format!("challenge for {name}: {e}"))?;
        }
    }
    let poll = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(Duration::from_secs(90));
    let status = order.poll_ready(&poll).await;
    if !matches!(status, Ok(OrderStatus::Ready)) {
        let why = match status {
            Err(e) => e.to_string(),
            Ok(s) => format!("order {s:?}"),
        };
        return Err(explain(&why, &authorization_errors(&mut order).await));
    }
    drop(answers);
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain_pem = order
        .poll_certificate(&poll)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    Ok(Issued { chain_pem, key_pem })
}

/// A failed authorization: the name and the CA's problem text.
struct Refusal {
    name: String,
    problem: String,
}

/// Why the CA refused: each failed authorization's challenge error.
async fn authorization_errors(order: &mut instant_acme::Order) -> Vec<Refusal> {
    let mut out = Vec::new();
    let mut authzs = order.authorizations();
    while let Some(Ok(mut a)) = authzs.next().await {
        let Ok(state) = a.refresh().await else {
            continue;
        };
        let name = state.identifier().to_string();
        for c in &state.challenges {
            if let Some(p) = &c.error {
                out.push(Refusal {
                    name: name.clone(),
                    problem: p.to_string(),
                });
            }
        }
    }
    out
}

/// The order's failure `why` with the authorizations' problems it does not already say (a
/// CA often repeats the one authorization's problem as the order's).
fn explain(why: &str, refusals: &[Refusal]) -> String {
    let extra: Vec<String> = (refusals.iter())
        .filter(|r| !why.contains(&r.problem))
        .map(|r| format!("{}: {}", r.name, r.problem))
        .collect();
    if !extra.is_empty() {
        return format!("{why}: {}", extra.join("; "));
    }
    if refusals.is_empty() {
        return why.to_string();
    }
    let names: Vec<&str> = refusals.iter().map(|r| r.name.as_str()).collect();
    format!("{why} (for {})", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_explained_once() {
        let r = |name: &str, problem: &str| Refusal {
            name: name.into(),
            problem: problem.into(),
        };
        let why = "API error: connection refused (urn:x:connection)";
        assert_eq!(
            explain(
                why,
                &[r(
                    "a.test",
                    "API error: connection refused (urn:x:connection)"
                )]
            ),
            format!("{why} (for a.test)")
        );
        assert_eq!(
            explain(
                "order Invalid",
                &[r("a.test", "dns"), r("b.test", "timeout")]
            ),
            "order Invalid: a.test: dns; b.test: timeout"
        );
        assert_eq!(explain("order Invalid", &[]), "order Invalid");
    }
}
