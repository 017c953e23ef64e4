//! Verification keys: configured keys (secret or PEM file, algorithm pinned per key) and key
//! sets from a JWKS file or URL. A key set is immutable; a refresh publishes a new one.

use std::path::Path;
use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// One verification key, pinned to one algorithm.
pub struct Key {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

/// The algorithms gatehouse accepts (no `none`, no encryption algorithms).
pub const SUPPORTED: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

/// Parses an algorithm name from the config.
pub fn parse_alg(s: &str) -> Result<Algorithm, String> {
    Algorithm::from_str(s)
        .map_err(|_| format!("unsupported algorithm `{s}` (supported: {SUPPORTED})"))
}

/// Whether `alg` verifies with a public key (worth caching: far slower than HMAC).
pub fn is_asymmetric(alg: Algorithm) -> bool {
    alg.family() != AlgorithmFamily::Hmac
}

/// Loads a PEM public key for `alg`.
pub fn load_pem(alg: Algorithm, path: &Path) -> Result<DecodingKey, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let key = match alg.family() {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&pem),
        AlgorithmFamily::Hmac => {
            return Err(format!("{alg:?} uses `secret`, not a public key file"));
        }
    };
    key.map_err(|e| {
        format!(
            "`{}` is not a valid {alg:?} public key: {e}",
            path.display()
        )
    })
}

/// Parses a JWKS document. Keys for encryption (`use: enc`) and keys whose algorithm cannot be
/// pinned are skipped; `Err` when the document is not a JWKS or yields no usable key.
pub fn parse_jwks(text: &str) -> Result<Vec<Key>, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut out = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let alg = match jwk.common.key_algorithm {
            Some(ka) => match Algorithm::try_from(ka) {
                Ok(a) => a,
                Err(_) => continue, // an encryption algorithm
            },
            // pin by key type where it is unambiguous
            None => match &jwk.algorithm {
                AlgorithmParameters::EllipticCurve(p) => match p.curve {
                    EllipticCurve::P256 => Algorithm::ES256,
                    EllipticCurve::P384 => Algorithm::ES384,
                    _ => continue,
                },
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                _ => continue,
            },
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("keys[{i}]: {e}"))?;
        if key.family() != alg.family() {
            return Err(format!(
                "keys[{i}]: key type does not fit algorithm {alg:?}"
            ));
        }
        out.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    if out.is_empty() {
        return Err("the JWKS has no usable signing key".to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_parsing() {
        let doc = r#"{"keys":[
            {"kty":"oct","kid":"h","alg":"HS256","k":"c2VjcmV0"},
            {"kty":"oct","kid":"noalg","k":"c2VjcmV0"},
            {"kty":"EC","kid":"e","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let keys = parse_jwks(doc).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].alg, Algorithm::HS256);
        assert_eq!(keys[1].alg, Algorithm::ES256);
        assert!(parse_jwks("{}").is_err());
        assert!(parse_jwks(r#"{"keys":[]}"#).is_err());
    }

    #[test]
    fn algorithms() {
        assert!(parse_alg("RS256").is_ok());
        assert!(parse_alg("none").is_err());
        assert!(parse_alg("RSA-OAEP").is_err());
    }
}
