//! JWT verification cost per algorithm family, uncached (every call verifies the signature)
//! and cached (a recently verified token: SHA-256 of the token + map lookup + exp check).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse_plugins::jwt::{Key, Rules, TokenCache, Validator};
use jsonwebtoken::{encode, Algorithm, DecodingKey, EncodingKey, Header};

fn keys_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn setup(alg: Algorithm) -> (String, Vec<Arc<Key>>) {
    let read = |f: &str| std::fs::read(keys_dir().join(f)).unwrap();
    let (enc, dec) = match alg {
        Algorithm::HS256 => (
            EncodingKey::from_secret(b"bench-secret-bench-secret-bench!"),
            DecodingKey::from_secret(b"bench-secret-bench-secret-bench!"),
        ),
        Algorithm::RS256 => (
            EncodingKey::from_rsa_pem(&read("rsa.key")).unwrap(),
            DecodingKey::from_rsa_pem(&read("rsa.pub")).unwrap(),
        ),
        Algorithm::ES256 => (
            EncodingKey::from_ec_pem(&read("ec256.key")).unwrap(),
            DecodingKey::from_ec_pem(&read("ec256.pub")).unwrap(),
        ),
        _ => unreachable!(),
    };
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let mut h = Header::new(alg);
    h.kid = Some("k".into());
    let claims = serde_json::json!({"sub": "user-42", "exp": exp, "iss": "https://auth.example.com", "aud": "api", "role": "admin"});
    let token = encode(&h, &claims, &enc).unwrap();
    (
        token,
        vec![Arc::new(Key {
            kid: Some("k".into()),
            alg,
            key: dec,
        })],
    )
}

fn bench(c: &mut Criterion) {
    let validator = Validator::new(Rules {
        issuer: Some("https://auth.example.com".into()),
        audience: vec!["api".into()],
        leeway_secs: 30,
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut g = c.benchmark_group("jwt_verify");
    for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256] {
        let (token, keys) = setup(alg);
        let cache = TokenCache::new(10_000);
        assert!(validator.verify(&token, &keys, 1, now, &cache).is_ok());
        // a new key-set generation on every call: never a cache hit
        let mut gen = 1u64;
        g.bench_function(format!("{alg:?}/uncached"), |b| {
            b.iter(|| {
                gen += 1;
                validator
                    .verify(black_box(&token), &keys, gen, now, &cache)
                    .unwrap()
            })
        });
        let cache = TokenCache::new(10_000);
        let _ = validator.verify(&token, &keys, 1, now, &cache);
        g.bench_function(format!("{alg:?}/cached"), |b| {
            b.iter(|| {
                validator
                    .verify(black_box(&token), &keys, 1, now, &cache)
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
