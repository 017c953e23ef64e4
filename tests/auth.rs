//! JWT and CORS through the real binary: what a client gets and what the backend sees.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{eventually, simple_config, Ports, TestGateway, TestUpstream};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "integration-secret-integration-secret";

fn keys() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> serde_json::Value {
    json!({"sub": "user-42", "email": "u@example.com", "exp": now() + 600, "iss": "https://auth.example.com", "aud": ["orders"], "role": "admin"})
}

fn mint(alg: Algorithm, kid: Option<&str>, c: &serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    let pem = |f: &str| std::fs::read(keys().join(f)).unwrap();
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(&pem("rsa.key")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem("ec256.key")).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(&pem("ec384.key")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem("ed25519.key")).unwrap(),
        other => panic!("no test key for {other:?}"),
    };
    encode(&h, c, &key).unwrap()
}

fn config(p: &Ports, b: &TestUpstream, extra_jwt: &str) -> String {
    let k = keys();
    let k = k.display();
    let routes = format!(
        r#"
  - id: api
    match: {{ path_prefix: /api }}
    upstream: up
    plugins:
      - cors:
          allow_origins: ["https://app.example.com", "https://*.example.com"]
          allow_methods: [GET, POST]
          allow_headers: [Authorization, Content-Type, X-Custom]
          expose_headers: [X-Request-Id]
          allow_credentials: true
          max_age: 10m
      - jwt:
          keys:
            - {{ kid: hs, algorithm: HS256, secret: "{SECRET}" }}
            - {{ kid: rs, algorithm: RS256, public_key_file: {k}/rsa.pub }}
            - {{ kid: ps, algorithm: PS256, public_key_file: {k}/rsa.pub }}
            - {{ kid: es, algorithm: ES256, public_key_file: {k}/ec256.pub }}
            - {{ kid: es384, algorithm: ES384, public_key_file: {k}/ec384.pub }}
            - {{ kid: ed, algorithm: EdDSA, public_key_file: {k}/ed25519.pub }}
          issuer: https://auth.example.com
          audience: [orders]
          forward_claims: {{ sub: X-User-Id, email: X-User-Email }}
{extra_jwt}
"#
    );
    simple_config(
        p,
        &format!("  up:\n    backends: [\"{}\"]\n", b.addr),
        &routes,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_of_every_family_pass_with_forwarded_claims() {
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(|p| config(p, &b, "")).await;
    for (alg, kid) in [
        (Algorithm::HS256, "hs"),
        (Algorithm::RS256, "rs"),
        (Algorithm::PS256, "ps"),
        (Algorithm::ES256, "es"),
        (Algorithm::ES384, "es384"),
        (Algorithm::EdDSA, "ed"),
    ] {
        let t = mint(alg, Some(kid), &claims());
        let r = gw
            .client
            .get(gw.url("/api/orders"))
            .bearer_auth(&t)
            .header("X-User-Id", "admin")
            .header("x_user_id", "admin")
            .header("X-USER-EMAIL", "forged@evil.com")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{alg:?}");
        let s = b.last();
        assert_eq!(
            s.headers.get("x-user-id"),
            Some(&vec!["user-42".to_string()]),
            "{alg:?}"
        );
        assert!(
            !s.headers.contains_key("x_user_id"),
            "{alg:?}: underscore variant reached the upstream"
        );
        assert_eq!(
            s.headers.get("x-user-email"),
            Some(&vec!["u@example.com".to_string()])
        );
    }
    // the token is not needed for a token-less family: no kid works too
    let r = gw
        .client
        .get(gw.url("/api/x"))
        .bearer_auth(mint(Algorithm::ES256, None, &claims()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // counted in the logging phase, just after the response went out
    let counted = eventually(Duration::from_secs(5), || async {
        gw.metrics()
            .await
            .contains("gatehouse_jwt_validations_total{result=\"ok\",route=\"api\"} 7")
    })
    .await;
    assert!(counted, "{}", gw.metrics().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_and_never_reach_the_upstream() {
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(|p| config(p, &b, "")).await;
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims();
        f(&mut c);
        c
    };
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let none = format!(
        "{}.{}.",
        e.encode(br#"{"alg":"none","typ":"JWT"}"#),
        e.encode(claims().to_string())
    );
    let mut crit = Header::new(Algorithm::HS256);
    crit.crit = Some(vec!["exp".into()]);
    crit.kid = Some("hs".into());
    let crit = encode(
        &crit,
        &claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    // HS256 "signed" with the RS public key, claiming the RS kid: algorithm confusion
    let mut conf = Header::new(Algorithm::HS256);
    conf.kid = Some("rs".into());
    let confused = encode(
        &conf,
        &claims(),
        &EncodingKey::from_secret(&std::fs::read(keys().join("rsa.pub")).unwrap()),
    )
    .unwrap();
    let wrong_sig = {
        let t = mint(Algorithm::RS256, Some("rs"), &claims());
        let mut parts: Vec<&str> = t.split('.').collect();
        let other = mint(
            Algorithm::RS256,
            Some("rs"),
            &with(&|c| c["sub"] = json!("someone-else")),
        );
        let sig = other.split('.').nth(2).unwrap().to_string();
        parts[2] = &sig;
        parts.join(".")
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            mint(
                Algorithm::HS256,
                Some("hs"),
                &with(&|c| c["exp"] = json!(now() - 120)),
            ),
        ),
        (
            "not_yet_valid",
            mint(
                Algorithm::HS256,
                Some("hs"),
                &with(&|c| c["nbf"] = json!(now() + 300)),
            ),
        ),
        (
            "bad_issuer",
            mint(
                Algorithm::HS256,
                Some("hs"),
                &with(&|c| c["iss"] = json!("https://evil")),
            ),
        ),
        (
            "bad_audience",
            mint(
                Algorithm::HS256,
                Some("hs"),
                &with(&|c| c["aud"] = json!("billing")),
            ),
        ),
        ("invalid_signature", wrong_sig),
        ("malformed", none),
        ("alg_mismatch", confused),
        (
            "unknown_kid",
            mint(Algorithm::HS256, Some("nope"), &claims()),
        ),
        ("crit", crit),
        (
            "too_large",
            mint(
                Algorithm::HS256,
                Some("hs"),
                &with(&|c| c["pad"] = json!("x".repeat(9000))),
            ),
        ),
        ("malformed", "not.a.jwt".to_string()),
        ("malformed", "garbage".to_string()),
    ];
    for (label, t) in &cases {
        let r = gw
            .client
            .get(gw.url("/api/x"))
            .bearer_auth(t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{label}");
        let www = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            www.starts_with("Bearer error=\"invalid_token\""),
            "{label}: {www}"
        );
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["error"].is_string() && body["request_id"].is_string(),
            "{label}: {body}"
        );
    }
    let r = gw.get("/api/x").await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(b.hits(), 0, "a rejected request reached the upstream");
    let all_counted = eventually(Duration::from_secs(5), || async {
        gw.metrics()
            .await
            .contains("gatehouse_jwt_validations_total{result=\"missing\",route=\"api\"} 1")
    })
    .await;
    assert!(all_counted);
    let m = gw.metrics().await;
    for label in [
        "expired",
        "not_yet_valid",
        "bad_issuer",
        "bad_audience",
        "invalid_signature",
        "alg_mismatch",
        "unknown_kid",
        "crit",
        "too_large",
        "missing",
    ] {
        assert!(
            m.contains(&format!(
                "gatehouse_jwt_validations_total{{result=\"{label}\",route=\"api\"}}"
            )),
            "{label} not counted"
        );
    }
    // the reason is in the access log, the token never is
    let log_path = gw.dir.path().join("access.log");
    let want = cases.len() + 1;
    let ok = eventually(Duration::from_secs(5), || {
        let p = log_path.clone();
        async move {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .count()
                >= want
        }
    })
    .await;
    assert!(ok);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("\"plugins\":{\"jwt\":\"expired\"}"), "{log}");
    for (_, t) in &cases {
        if t.len() > 20 {
            assert!(!log.contains(t.as_str()), "a token was logged");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_mode_and_claim_requirements() {
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(|p| {
        config(
            p,
            &b,
            "          required: false\n          claims: { role: [admin, support] }",
        )
    })
    .await;
    let r = gw
        .client
        .get(gw.url("/api/x"))
        .header("x-user-id", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        !b.last().headers.contains_key("x-user-id"),
        "forged identity reached the upstream"
    );
    let r = gw
        .client
        .get(gw.url("/api/x"))
        .bearer_auth("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "a bad token is still rejected in optional mode"
    );
    let mut c = claims();
    c["role"] = json!("viewer");
    let hits = b.hits();
    let r = gw
        .client
        .get(gw.url("/api/x"))
        .bearer_auth(mint(Algorithm::HS256, Some("hs"), &c))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(b.hits(), hits);
    c["role"] = json!(["viewer", "support"]);
    let r = gw
        .client
        .get(gw.url("/api/x"))
        .bearer_auth(mint(Algorithm::HS256, Some("hs"), &c))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_through_the_jwks_file() {
    let b = TestUpstream::start("b").await;
    let jwks_dir = tempfile::tempdir().unwrap();
    let jwks = jwks_dir.path().join("jwks.json");
    std::fs::copy(keys().join("jwks-both.json"), &jwks).unwrap();
    let routes = format!(
        "  - id: api\n    upstream: up\n    plugins:\n      - jwt: {{ jwks_file: \"{}\" }}\n",
        jwks.display()
    );
    let gw = TestGateway::start(|p| {
        simple_config(
            p,
            &format!("  up:\n    backends: [\"{}\"]\n", b.addr),
            &routes,
        )
    })
    .await;
    let rs2 = std::fs::read(keys().join("rsa2.key")).unwrap();
    let old = mint(Algorithm::RS256, Some("old"), &claims());
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("new".into());
    let new = encode(&h, &claims(), &EncodingKey::from_rsa_pem(&rs2).unwrap()).unwrap();
    let status = |t: String| {
        let c = gw.client.clone();
        let url = gw.url("/x");
        async move {
            c.get(url)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(old.clone()).await, 200);
    assert_eq!(status(new.clone()).await, 200);
    // rotate: write the new set next to it and rename over (what deploy tools do)
    let tmp = jwks_dir.path().join("jwks.json.tmp");
    std::fs::copy(keys().join("jwks-new-only.json"), &tmp).unwrap();
    std::fs::rename(&tmp, &jwks).unwrap();
    let gone = eventually(Duration::from_secs(10), || {
        status(old.clone()).then(|s| async move { s == 401 })
    })
    .await;
    assert!(gone, "the removed key still verifies");
    assert_eq!(status(new.clone()).await, 200);
    // a broken file keeps the last good keys
    std::fs::write(&jwks, "{ not json").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(status(new).await, 200);
}

use futures_util_shim::FutureThen;
mod futures_util_shim {
    use std::future::Future;
    /// `fut.then(f)` without pulling in the futures crate.
    pub trait FutureThen: Future + Sized {
        fn then<F, Fut>(self, f: F) -> impl Future<Output = Fut::Output>
        where
            F: FnOnce(Self::Output) -> Fut,
            Fut: Future,
        {
            async move { f(self.await).await }
        }
    }
    impl<T: Future> FutureThen for T {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_origins_credentials_and_vary() {
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(|p| config(p, &b, "")).await;
    let c = &gw.client;
    // preflight without a token
    let r = c
        .request(reqwest::Method::OPTIONS, gw.url("/api/orders"))
        .header("origin", "https://shop.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, x-custom")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://shop.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(
        h["access-control-allow-headers"],
        "Authorization, Content-Type, X-Custom"
    );
    assert_eq!(h["access-control-max-age"], "600");
    assert!(h["vary"].to_str().unwrap().contains("Origin"));
    assert_eq!(b.hits(), 0);

    let token = mint(Algorithm::HS256, Some("hs"), &claims());
    for (origin, allowed) in [
        ("https://app.example.com", true),
        ("https://a.b.example.com", true),
        ("https://example.com", false),
        ("https://evil-example.com", false),
        ("https://example.com.evil.net", false),
        ("http://a.example.com", false),
        ("null", false),
    ] {
        let r = c
            .get(gw.url("/api/x"))
            .bearer_auth(&token)
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{origin}");
        let acao: Vec<_> = r
            .headers()
            .get_all("access-control-allow-origin")
            .iter()
            .collect();
        if allowed {
            assert_eq!(acao, vec![origin], "{origin}");
            assert_eq!(r.headers()["access-control-expose-headers"], "X-Request-Id");
        } else {
            assert!(acao.is_empty(), "{origin} got {acao:?}");
        }
        assert_eq!(r.headers()["vary"], "Origin", "{origin}");
    }
    // a 401 from jwt still carries CORS headers, so the browser can read it
    let r = c
        .get(gw.url("/api/x"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(r.headers()["vary"], "Origin");
    // a plain OPTIONS (no Access-Control-Request-Method) is a normal, authenticated request
    let r = c
        .request(reqwest::Method::OPTIONS, gw.url("/api/x"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // gateway errors carry Vary too
    b.stop().await;
    // (connections the stopped backend still had open may answer for a moment)
    let down = eventually(Duration::from_secs(5), || async {
        c.get(gw.url("/api/x"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status()
            == 502
    })
    .await;
    assert!(down);
    let r = c
        .get(gw.url("/api/x"))
        .bearer_auth(&token)
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["vary"], "Origin");
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
}
