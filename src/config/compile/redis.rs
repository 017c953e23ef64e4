//! `redis:` -> the process's shared [`RedisLink`] (kept when the section did not change).

use std::sync::Arc;
use std::time::Duration;

use gatehouse_plugins::api::OnError;

use super::CompileEnv;
use crate::config::error::Scope;
use crate::config::raw::{RawOnError, RawRedis, RawRedisTls};
use crate::redis_link::{RedisLink, RedisSettings, TlsFiles};

/// Reads `redis.tls`'s files (relative to the config's directory).
fn tls_files(raw: &RawRedisTls, env: &CompileEnv<'_>, s: &mut Scope<'_>) -> TlsFiles {
    let mut s = s.child("tls");
    let mut read = |field: &str, path: &Option<String>| {
        let path = path.as_ref()?;
        match std::fs::read(env.base_dir.join(path)) {
            Ok(pem) => Some(pem),
            Err(e) => {
                s.error_at(field, format!("cannot read `{path}`: {e}"));
                None
            }
        }
    };
    let ca = read("ca", &raw.ca);
    let cert = read("cert", &raw.cert);
    let key = read("key", &raw.key);
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) if raw.key.is_none() => {
            s.error_at("key", "a client certificate needs its key");
            None
        }
        (None, Some(_)) if raw.cert.is_none() => {
            s.error_at("cert", "a client key needs its certificate");
            None
        }
        // a file that could not be read, already reported
        _ => None,
    };
    TlsFiles { ca, client }
}

pub(super) fn compile_redis(
    raw: Option<&RawRedis>,
    env: &CompileEnv<'_>,
    s: &mut Scope<'_>,
) -> Option<Arc<RedisLink>> {
    let raw = raw?;
    if raw.timeout.0 > Duration::from_secs(10) {
        s.error_at("timeout", "at most 10s (it bounds every limited request)");
    }
    if raw.key_prefix.len() > 64 {
        s.error_at("key_prefix", "at most 64 bytes");
    }
    if raw.tls.is_some() && !raw.url.starts_with("rediss://") {
        s.error_at("tls", "needs a `rediss://` URL");
    }
    let tls = raw.tls.as_ref().map(|t| tls_files(t, env, s));
    let settings = RedisSettings {
        url: raw.url.clone(),
        tls,
        password: raw.password.clone().filter(|p| !p.is_empty()),
        key_prefix: raw.key_prefix.clone(),
        timeout: raw.timeout.0,
        connect_timeout: raw.connect_timeout.0,
        on_error: match raw.on_error {
            RawOnError::Local => OnError::Local,
            RawOnError::Allow => OnError::Allow,
            RawOnError::Deny => OnError::Deny,
        },
    };
    if let Some(prev) = env.previous.and_then(|p| p.redis.as_ref()) {
        if prev.settings == settings {
            return Some(Arc::clone(prev));
        }
    }
    match RedisLink::new(settings, env.metrics.redis.clone()) {
        Ok(l) => Some(Arc::new(l)),
        Err(e) => {
            let field = if raw.tls.is_some() && e.starts_with("TLS settings") {
                "tls"
            } else {
                "url"
            };
            s.error_at(field, e);
            None
        }
    }
}
