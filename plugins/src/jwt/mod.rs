//! `jwt` plugin: verifies a JSON Web Token on every request of the route.
//!
//! ```yaml
//! - jwt:
//!     keys:                                  # rotation = several keys, picked by kid
//!       - { kid: "2026-11", algorithm: HS256, secret: "${JWT_SECRET}" }
//!       - { kid: "2026-10", algorithm: RS256, public_key_file: keys/old.pem }
//!     jwks_file: jwks.json                   # optional; re-read when it changes
//!     jwks_url: https://auth.internal/.well-known/jwks.json   # optional
//!     jwks_refresh: 10m
//!     issuer: https://auth.example.com       # optional; iss must match
//!     audience: [orders-api]                 # optional; aud must contain one
//!     leeway: 30s
//!     required: true                         # false: no token passes; a bad token is still 401
//!     token_from: ["header:Authorization", "cookie:session"]   # also "query:<name>"
//!     claims: { role: [admin, support] }     # unmet -> 403
//!     forward_claims: { sub: X-User-Id }
//! ```
//!
//! Security rules: the algorithm is pinned per key (a token whose `alg` differs from its key's
//! is rejected, so no HS/RS confusion and no `none`); `exp` is required; `nbf`, `iss`, `aud` are
//! checked with `leeway`; any `crit` header is rejected; tokens over 8 KiB are rejected before
//! decoding; a `kid` that matches no key is rejected; a token without `kid` is tried against the
//! keys of its algorithm only. Rejections are 401 with `WWW-Authenticate: Bearer
//! error="invalid_token"`; unmet `claims` are 403. `forward_claims` headers are always removed
//! from the client's request (any case, `_` or `-`) before the verified values are set.
//! Verified claims are put in `RequestInfo::ext` as the API's `VerifiedClaims`.

mod keys;
mod source;

/// The JWKS parser, for the fuzz targets.
pub mod fuzzing {
    pub use super::keys::parse_jwks;
}
mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;

use crate::api::units::Dur;
use crate::api::{
    edit_request, BuildEnv, BuildError, BuildResult, DecisionMetric, Flow, Plugin, PluginCtx,
    PluginSpec, Reply, RequestHeader, Result, Session, VerifiedClaims,
};
pub use keys::{parse_jwks, Key};
pub use source::{KeyStore, REFRESH_COOLDOWN};
pub use verify::{Reject, Rules, TokenCache, Validator, MAX_TOKEN_LEN};

/// One configured key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    #[serde(default)]
    kid: Option<String>,
    algorithm: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    public_key_file: Option<String>,
}

/// `audience:` as one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    Many(Vec<String>),
    One(String),
}

/// A claim requirement: one value or a list of accepted values.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Accepted {
    Many(Vec<Value>),
    One(Value),
}

/// The plugin's YAML config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    #[serde(default)]
    keys: Vec<RawKey>,
    #[serde(default)]
    jwks_file: Option<String>,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default = "default_refresh")]
    jwks_refresh: Dur,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audience: Option<OneOrMany>,
    #[serde(default = "default_leeway")]
    leeway: Dur,
    #[serde(default = "yes")]
    required: bool,
    #[serde(default)]
    token_from: Option<Vec<String>>,
    #[serde(default)]
    claims: BTreeMap<String, Accepted>,
    #[serde(default)]
    forward_claims: BTreeMap<String, String>,
    /// Verified tokens kept, any algorithm (exp/nbf are checked again on every use).
    #[serde(default = "default_cache")]
    cache_size: usize,
}

fn default_refresh() -> Dur {
    Dur(Duration::from_secs(600))
}
fn default_leeway() -> Dur {
    Dur(Duration::from_secs(30))
}
fn yes() -> bool {
    true
}
fn default_cache() -> usize {
    10_000
}

#[derive(Debug, Clone)]
enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Bearer,
    Header(HeaderName),
    Cookie(String),
    Query(String),
}

/// The `jwt` plugin.
pub struct Jwt {
    store: Arc<KeyStore>,
    validator: Validator,
    cache: TokenCache,
    required: bool,
    sources: Vec<TokenSource>,
    claims: Vec<(String, Vec<String>)>,
    forward: Vec<(String, HeaderName)>,
    /// normalized (lowercase, `_` -> `-`) names of the forwarded headers
    forward_norm: Vec<String>,
    has_url: bool,
    /// What the key watcher follows; started once, when the instance is published.
    watch: Option<(Option<PathBuf>, Option<String>, Duration)>,
    watching: std::sync::Once,
}

fn normalize(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

fn unauthorized(r: Reject) -> Reply {
    let challenge = format!(
        "Bearer error=\"invalid_token\", error_description=\"{}\"",
        r.message
    );
    Reply::error(401, r.message).with_header(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&challenge)
            .unwrap_or(HeaderValue::from_static("Bearer error=\"invalid_token\"")),
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Jwt {
    fn extract<'s>(&self, s: &'s Session) -> Option<std::borrow::Cow<'s, str>> {
        let req = s.req_header();
        for src in &self.sources {
            match src {
                TokenSource::Bearer => {
                    for v in req.headers.get_all(http::header::AUTHORIZATION) {
                        let Ok(v) = v.to_str() else { continue };
                        let v = v.trim();
                        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
                            return Some(v[7..].trim().into());
                        }
                    }
                }
                TokenSource::Header(h) => {
                    if let Some(v) = req.headers.get(h).and_then(|v| v.to_str().ok()) {
                        return Some(v.trim().into());
                    }
                }
                TokenSource::Cookie(name) => {
                    for v in req.headers.get_all(http::header::COOKIE) {
                        let Ok(v) = v.to_str() else { continue };
                        for pair in v.split(';') {
                            if let Some((k, val)) = pair.trim().split_once('=') {
                                if k == name {
                                    return Some(val.trim_matches('"').into());
                                }
                            }
                        }
                    }
                }
                TokenSource::Query(name) => {
                    if let Some(q) = req.uri.query() {
                        for pair in q.split('&') {
                            if let Some((k, val)) = pair.split_once('=') {
                                if k == name {
                                    return Some(val.into());
                                }
                            }
                        }
                    }
                }
            }
        }
        None
    }

    fn claims_met(&self, claims: &serde_json::Map<String, Value>) -> bool {
        self.claims
            .iter()
            .all(|(name, accepted)| match claims.get(name) {
                Some(Value::Array(have)) => {
                    have.iter().any(|h| accepted.iter().any(|a| same(h, a)))
                }
                Some(h) => accepted.iter().any(|a| same(h, a)),
                None => false,
            })
    }
}

/// Claim comparison that treats `"1"` in YAML and `1` in the token alike (`accepted` values
/// were turned into strings when the config was compiled).
fn same(have: &Value, want: &str) -> bool {
    match have {
        Value::String(a) => a == want,
        Value::Null | Value::Array(_) | Value::Object(_) => false,
        other => {
            let text = other.to_string();
            text == want
        }
    }
}

fn as_text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn claim_header_value(v: &Value) -> Option<HeaderValue> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => return None,
        other => other.to_string(),
    };
    HeaderValue::from_str(&s).ok()
}

#[async_trait]
impl Plugin for Jwt {
    async fn request_filter(&self, s: &mut Session, cx: &mut PluginCtx<'_>) -> Result<Flow> {
        let Some(token) = self.extract(s) else {
            if self.required {
                cx.info.record(Self::KIND, "missing");
                return Ok(Flow::Respond(
                    Reply::error(401, "missing token").with_header(
                        http::header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer"),
                    ),
                ));
            }
            cx.info.record(Self::KIND, "anonymous");
            return Ok(Flow::Continue);
        };
        let snap = self.store.load();
        let verified = self
            .validator
            .verify(&token, &snap.keys, snap.gen, now_secs(), &self.cache);
        let claims = match verified {
            Ok(c) => c,
            Err(r) => {
                if r == verify::UNKNOWN_KID && self.has_url {
                    self.store.request_refresh();
                }
                cx.info.record(Self::KIND, r.label);
                return Ok(Flow::Respond(unauthorized(r)));
            }
        };
        if !self.claims_met(&claims) {
            cx.info.record(Self::KIND, "forbidden");
            return Ok(Flow::Respond(
                Reply::error(403, "insufficient claims").with_header(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
                ),
            ));
        }
        cx.info.record(Self::KIND, "ok");
        cx.info.ext.insert(VerifiedClaims(Arc::clone(&claims)));
        cx.set_state(VerifiedClaims(claims));
        Ok(Flow::Continue)
    }

    async fn upstream_request_filter(
        &self,
        _s: &mut Session,
        req: &mut RequestHeader,
        cx: &mut PluginCtx<'_>,
    ) -> Result<()> {
        if self.forward.is_empty() {
            return Ok(());
        }
        // a client must never be able to set these itself, in any spelling
        let forged: Vec<HeaderName> = req
            .headers
            .keys()
            .filter(|k| {
                self.forward_norm
                    .iter()
                    .any(|n| *n == normalize(k.as_str()))
            })
            .cloned()
            .collect();
        let claims = cx.state::<VerifiedClaims>().map(|VerifiedClaims(c)| c);
        if forged.is_empty() && claims.is_none() {
            return Ok(());
        }
        edit_request(req, self.forward.len(), |h| {
            for n in &forged {
                h.remove(n);
            }
            let Some(claims) = claims else {
                return Ok(());
            };
            for (claim, header) in &self.forward {
                if let Some(v) = claims.get(claim).and_then(claim_header_value) {
                    h.set(header.clone(), v)?;
                }
            }
            Ok(())
        })
    }

    fn published(&self) {
        if let Some((file, url, refresh)) = &self.watch {
            self.watching.call_once(|| {
                source::spawn_watcher(&self.store, file.clone(), url.clone(), *refresh)
            });
        }
    }
}

impl PluginSpec for Jwt {
    const KIND: &'static str = "jwt";
    const DECISION_METRIC: Option<DecisionMetric> = Some(DecisionMetric {
        name: "gatehouse_jwt_validations_total",
        help: "JWT checks by route and result (ok, missing, expired, invalid_signature, ...).",
    });
    type Config = JwtConfig;

    fn build(c: JwtConfig, env: &mut BuildEnv) -> BuildResult<Self> {
        let fixed = fixed_keys(&c.keys, env)?;
        let jwks_path: Option<PathBuf> = c.jwks_file.as_deref().map(|f| env.resolve(f));
        let mut jwks = Vec::new();
        if let Some(path) = &jwks_path {
            let text = std::fs::read_to_string(path).map_err(|e| {
                BuildError::at(
                    "jwks_file",
                    format!("cannot read `{}`: {e}", path.display()),
                )
            })?;
            jwks = keys::parse_jwks(&text).map_err(|e| BuildError::at("jwks_file", e))?;
        }
        if let Some(url) = &c.jwks_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(BuildError::at("jwks_url", "must be an http(s) URL"));
            }
        }
        if fixed.is_empty() && jwks_path.is_none() && c.jwks_url.is_none() {
            return Err(BuildError::new("needs `keys`, `jwks_file` or `jwks_url`"));
        }
        let refresh = c.jwks_refresh.0;
        if refresh < Duration::from_secs(1) {
            return Err(BuildError::at("jwks_refresh", "must be at least 1s"));
        }
        let leeway = c.leeway.0;
        let sources = token_sources(c.token_from.as_deref())?;
        let forward = forward_headers(&c.forward_claims)?;
        let forward_norm = forward.iter().map(|(_, h)| normalize(h.as_str())).collect();
        let claims = c
            .claims
            .into_iter()
            .map(|(k, a)| {
                let list = match a {
                    Accepted::One(v) => vec![as_text(v)],
                    Accepted::Many(v) => v.into_iter().map(as_text).collect(),
                };
                (k, list)
            })
            .collect();
        let audience = match c.audience {
            None => Vec::new(),
            Some(OneOrMany::One(a)) => vec![a],
            Some(OneOrMany::Many(v)) => v,
        };
        let mut initial_url_keys = Vec::new();
        if let Some(url) = &c.jwks_url {
            // a first fetch so tokens verify from the start; an auth server that is down at
            // startup must not keep the gateway down: the watcher keeps trying
            match source::fetch_jwks(url, Duration::from_secs(3)) {
                Ok(k) => initial_url_keys = k,
                Err(e) => env.warn(format!("jwks_url: {e}; will retry every {refresh:?}")),
            }
        }
        jwks.extend(initial_url_keys);
        let store = Arc::new(KeyStore::new(
            fixed,
            jwks.into_iter().map(Arc::new).collect(),
        ));
        Ok(Jwt {
            store,
            validator: Validator::new(verify::Rules {
                issuer: c.issuer,
                audience,
                leeway_secs: leeway.as_secs(),
            }),
            cache: TokenCache::new(c.cache_size.max(1)),
            required: c.required,
            sources,
            claims,
            forward,
            forward_norm,
            has_url: c.jwks_url.is_some(),
            watch: (jwks_path.is_some() || c.jwks_url.is_some())
                .then(|| (jwks_path, c.jwks_url.clone(), refresh)),
            watching: std::sync::Once::new(),
        })
    }
}

/// The configured `keys`, each with its algorithm pinned.
fn fixed_keys(list: &[RawKey], env: &mut BuildEnv) -> BuildResult<Vec<Arc<Key>>> {
    let mut fixed = Vec::with_capacity(list.len());
    for (i, k) in list.iter().enumerate() {
        let p = format!("keys[{i}]");
        let alg = keys::parse_alg(&k.algorithm)
            .map_err(|e| BuildError::at(format!("{p}.algorithm"), e))?;
        let key = match (&k.secret, &k.public_key_file, keys::is_asymmetric(alg)) {
            (Some(secret), None, false) => {
                if secret.is_empty() {
                    return Err(BuildError::at(format!("{p}.secret"), "empty secret"));
                }
                if secret.len() < 32 {
                    env.warn(format!("{p}: an HMAC secret shorter than 32 bytes is weak"));
                }
                jsonwebtoken::DecodingKey::from_secret(secret.as_bytes())
            }
            (None, Some(file), true) => {
                let path = env.resolve(file);
                // a rotated key file is picked up by the next reload
                env.depends_on(path.clone());
                keys::load_pem(alg, &path)
                    .map_err(|e| BuildError::at(format!("{p}.public_key_file"), e))?
            }
            (_, _, asymmetric) => {
                let needs = if asymmetric {
                    "`public_key_file` (and no secret)"
                } else {
                    "`secret` (and no public_key_file)"
                };
                return Err(BuildError::at(&p, format!("{alg:?} needs {needs}")));
            }
        };
        if let Some(kid) = &k.kid {
            if list[..i].iter().any(|o| o.kid.as_deref() == Some(kid)) {
                return Err(BuildError::at(
                    format!("{p}.kid"),
                    format!("duplicate kid `{kid}`"),
                ));
            }
        }
        fixed.push(Arc::new(Key {
            kid: k.kid.clone(),
            alg,
            key,
        }));
    }
    Ok(fixed)
}

/// `token_from` (default: the `Authorization: Bearer` header).
fn token_sources(list: Option<&[String]>) -> BuildResult<Vec<TokenSource>> {
    let Some(list) = list else {
        return Ok(vec![TokenSource::Bearer]);
    };
    if list.is_empty() {
        return Err(BuildError::at("token_from", "needs at least one source"));
    }
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            let p = format!("token_from[{i}]");
            Ok(match s.split_once(':') {
                Some(("header", h)) if h.eq_ignore_ascii_case("authorization") => {
                    TokenSource::Bearer
                }
                Some(("header", h)) => TokenSource::Header(
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| BuildError::at(&p, format!("invalid header name `{h}`")))?,
                ),
                Some(("cookie", n)) if !n.is_empty() => TokenSource::Cookie(n.to_string()),
                Some(("query", n)) if !n.is_empty() => TokenSource::Query(n.to_string()),
                _ => {
                    return Err(BuildError::at(
                        &p,
                        format!("`{s}`: use header:<Name>, cookie:<name> or query:<name>"),
                    ))
                }
            })
        })
        .collect()
}

/// `forward_claims`: claim -> header sent upstream.
fn forward_headers(map: &BTreeMap<String, String>) -> BuildResult<Vec<(String, HeaderName)>> {
    map.iter()
        .map(|(claim, header)| {
            let h = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                BuildError::at(
                    format!("forward_claims.{claim}"),
                    format!("invalid header name `{header}`"),
                )
            })?;
            Ok((claim.clone(), h))
        })
        .collect()
}

#[cfg(test)]
mod tests;
