//! Token verification against a key set, with a bounded cache of recently verified tokens for
//! the slow (public-key) algorithms. A cache hit still checks `exp`/`nbf` against the clock
//! and is void once the key set changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Algorithm, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::keys::Key;

/// Tokens longer than this are rejected before any decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Verified claims.
pub use crate::api::Claims;

/// Why a token was rejected: a metric/log label and a short message for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub label: &'static str,
    pub message: &'static str,
}

const fn reject(label: &'static str, message: &'static str) -> Reject {
    Reject { label, message }
}

pub const TOO_LARGE: Reject = reject("too_large", "token too large");
pub const MALFORMED: Reject = reject("malformed", "malformed token");
pub const CRIT: Reject = reject("crit", "unsupported critical header");
pub const UNKNOWN_KID: Reject = reject("unknown_kid", "unknown key id");
pub const NO_KEY: Reject = reject("no_key", "no key for the token's algorithm");
pub const ALG_MISMATCH: Reject = reject("alg_mismatch", "algorithm does not match the key");
pub const BAD_SIGNATURE: Reject = reject("invalid_signature", "invalid signature");
pub const EXPIRED: Reject = reject("expired", "token expired");
pub const NOT_YET_VALID: Reject = reject("not_yet_valid", "token not yet valid");
pub const BAD_ISSUER: Reject = reject("bad_issuer", "wrong issuer");
pub const BAD_AUDIENCE: Reject = reject("bad_audience", "wrong audience");
pub const MISSING_CLAIM: Reject = reject("missing_claim", "required claim missing");

/// Validation rules shared by every key.
#[derive(Debug, Clone)]
pub struct Rules {
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    pub leeway_secs: u64,
}

impl Rules {
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".to_string());
        }
        if self.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audience);
            v.required_spec_claims.insert("aud".to_string());
        }
        v
    }
}

/// Precomputed `Validation` per algorithm.
pub struct Validator {
    rules: Rules,
    by_alg: HashMap<Algorithm, Validation>,
}

impl Validator {
    pub fn new(rules: Rules) -> Self {
        use Algorithm::*;
        let by_alg = [
            HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
        ]
        .into_iter()
        .map(|a| (a, rules.validation(a)))
        .collect();
        Validator { rules, by_alg }
    }

    /// Verifies `token` against `keys` (generation `gen` of the key set) at unix time `now`.
    pub fn verify(
        &self,
        token: &str,
        keys: &[Arc<Key>],
        gen: u64,
        now: u64,
        cache: &TokenCache,
    ) -> Result<Claims, Reject> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TOO_LARGE);
        }
        // A token verified before under this key-set generation passed every check below
        // but the time checks, which are repeated. The digest is the token's SHA-256, so a
        // lookup can never confuse two tokens.
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = cache.get(&digest, gen) {
            return self.check_times(&hit, now).map(|()| hit.claims);
        }
        let header = decode_header(token).map_err(|_| MALFORMED)?;
        if header.crit.is_some() {
            return Err(CRIT);
        }
        let candidates: Vec<&Arc<Key>> = match header.kid.as_deref() {
            Some(kid) => {
                let k = keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .ok_or(UNKNOWN_KID)?;
                if k.alg != header.alg {
                    return Err(ALG_MISMATCH);
                }
                vec![k]
            }
            None => {
                let v: Vec<&Arc<Key>> = keys.iter().filter(|k| k.alg == header.alg).collect();
                if v.is_empty() {
                    return Err(NO_KEY);
                }
                v
            }
        };
        let validation = self.by_alg.get(&header.alg).ok_or(NO_KEY)?;
        let mut last = BAD_SIGNATURE;
        for k in candidates {
            match decode::<Map<String, Value>>(token, &k.key, validation) {
                Ok(data) => {
                    let claims: Claims = Arc::new(data.claims);
                    cache.insert(digest, Cached::new(Arc::clone(&claims), gen));
                    return Ok(claims);
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => BAD_SIGNATURE,
                        ErrorKind::ExpiredSignature => EXPIRED,
                        ErrorKind::ImmatureSignature => NOT_YET_VALID,
                        ErrorKind::InvalidIssuer => BAD_ISSUER,
                        ErrorKind::InvalidAudience => BAD_AUDIENCE,
                        ErrorKind::MissingRequiredClaim(_) => MISSING_CLAIM,
                        ErrorKind::InvalidAlgorithm => ALG_MISMATCH,
                        _ => MALFORMED,
                    };
                    // only a signature mismatch means "maybe another key"
                    if last != BAD_SIGNATURE {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn check_times(&self, c: &Cached, now: u64) -> Result<(), Reject> {
        let l = self.rules.leeway_secs;
        if let Some(exp) = c.exp {
            if now > exp.saturating_add(l) {
                return Err(EXPIRED);
            }
        }
        if let Some(nbf) = c.nbf {
            if now.saturating_add(l) < nbf {
                return Err(NOT_YET_VALID);
            }
        }
        Ok(())
    }
}

/// A verified token.
#[derive(Clone)]
pub struct Cached {
    claims: Claims,
    exp: Option<u64>,
    nbf: Option<u64>,
    gen: u64,
}

impl Cached {
    fn new(claims: Claims, gen: u64) -> Self {
        let num = |k: &str| claims.get(k).and_then(Value::as_f64).map(|f| f as u64);
        Cached {
            exp: num("exp"),
            nbf: num("nbf"),
            claims,
            gen,
        }
    }
}

const SHARDS: usize = 16;

/// Bounded cache of verified tokens keyed by the token's SHA-256 (so a lookup can never confuse
/// two tokens). Each shard holds at most `cap / SHARDS` entries; a full shard is cleared,
/// which keeps memory bounded whatever tokens clients send.
pub struct TokenCache {
    shards: Vec<Mutex<HashMap<[u8; 32], Cached>>>,
    per_shard: usize,
}

impl TokenCache {
    pub fn new(cap: usize) -> Self {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (cap / SHARDS).max(1),
        }
    }

    fn shard(&self, d: &[u8; 32]) -> &Mutex<HashMap<[u8; 32], Cached>> {
        &self.shards[usize::from(d[0]) % SHARDS]
    }

    fn get(&self, d: &[u8; 32], gen: u64) -> Option<Cached> {
        let g = self.shard(d).lock().ok()?;
        g.get(d).filter(|c| c.gen == gen).cloned()
    }

    fn insert(&self, d: [u8; 32], c: Cached) {
        if let Ok(mut g) = self.shard(&d).lock() {
            if g.len() >= self.per_shard {
                g.clear();
            }
            g.insert(d, c);
        }
    }

    /// Number of cached tokens (for tests).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|g| g.len()).unwrap_or(0))
            .sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
