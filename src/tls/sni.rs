//! Certificate choice by SNI, during the handshake: the exact name, then a one-label
//! wildcard (`*.example.com` serves `a.example.com`, never `example.com` or `a.b.example.com`),
//! then the listener's default certificate. Without a default, a client without SNI or with
//! an unknown name gets no certificate and the handshake fails. No I/O: the map is built when
//! the config is compiled and replaced whole on reload. Names the listener lists under
//! `tls.acme` are served first with the certificate the ACME service installed for them
//! (read from its store at each handshake, so an issued or renewed certificate is served at
//! once, with no reload); until there is one, the files' certificates apply.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// One listener's certificates by name.
#[derive(Debug, Default)]
pub(crate) struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// keyed by the suffix after `*.`
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// Names served from the ACME store.
    acme: std::collections::HashSet<String>,
}

impl SniResolver {
    /// Adds `key` for each of `names`; a name already taken by an earlier certificate keeps it.
    pub(crate) fn add(&mut self, names: &[String], key: &Arc<CertifiedKey>) {
        for n in names {
            let (map, name) = match n.strip_prefix("*.") {
                Some(suffix) => (&mut self.wildcard, suffix),
                None => (&mut self.exact, n.as_str()),
            };
            map.entry(name.to_string())
                .or_insert_with(|| Arc::clone(key));
        }
    }

    pub(crate) fn set_acme(&mut self, names: &[String]) {
        self.acme = names.iter().cloned().collect();
    }

    pub(crate) fn set_default(&mut self, key: Arc<CertifiedKey>) {
        self.default = Some(key);
    }

    /// The certificate for `name` (a client's SNI), if any.
    pub(crate) fn lookup(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = name.and_then(|n| {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            if self.acme.contains(&n) {
                if let Some(k) = crate::acme::store().cert(&n) {
                    return Some(k);
                }
            }
            self.exact.get(&n).cloned().or_else(|| {
                let (_, parent) = n.split_once('.')?;
                self.wildcard.get(parent).cloned()
            })
        });
        found.or_else(|| self.default.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // an ACME CA validating TLS-ALPN-01 for a name this listener lists gets the
        // challenge certificate of the order in progress, and nothing else does
        if hello
            .alpn()
            .is_some_and(|mut a| a.any(|p| p == crate::acme::ACME_TLS_ALPN))
        {
            let name = hello
                .server_name()?
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if !self.acme.contains(&name) {
                return None;
            }
            return crate::acme::store().alpn01(&name);
        }
        self.lookup(hello.server_name())
    }
}
