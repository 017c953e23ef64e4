//! Certificate choice by SNI, during the handshake: the exact name, then a one-label
//! wildcard (`*.example.com` serves `a.example.com`, never `example.com` or `a.b.example.com`),
//! then the listener's default certificate. Without a default, a client without SNI or with
//! an unknown name gets no certificate and the handshake fails. No I/O: the map is built when
//! the config is compiled and replaced whole on reload.

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

    pub(crate) fn set_default(&mut self, key: Arc<CertifiedKey>) {
        self.default = Some(key);
    }

    /// The certificate for `name` (a client's SNI), if any.
    pub(crate) fn lookup(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = name.and_then(|n| {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
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
        self.lookup(hello.server_name())
    }
}
