//! Unit tests of the `jwt` plugin (compiled only for `cargo test`).

#![cfg(test)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::api::testing::{session_from_bytes, test_info};
use crate::api::{Flow, PluginCtx, ReplyBody};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const RSA_KEY: &[u8] = include_bytes!("../../../tests/keys/rsa.key");

fn keys_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/keys")
}

fn build(yaml: &str) -> Jwt {
    let mut env = BuildEnv {
        base_dir: keys_dir(),
        ..BuildEnv::default()
    };
    let p: Jwt = crate::api::testing::build_with(yaml, &mut env).unwrap();
    p.published();
    p
}

fn now() -> u64 {
    now_secs()
}

fn hs(claims: serde_json::Value, kid: Option<&str>) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = kid.map(str::to_string);
    encode(&h, &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn rs(claims: serde_json::Value, kid: Option<&str>) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = kid.map(str::to_string);
    encode(&h, &claims, &EncodingKey::from_rsa_pem(RSA_KEY).unwrap()).unwrap()
}

const CFG: &str = r#"
keys:
  - { kid: hs, algorithm: HS256, secret: "0123456789abcdef0123456789abcdef" }
  - { kid: rs, algorithm: RS256, public_key_file: rsa.pub }
issuer: https://auth.example.com
audience: [orders]
forward_claims: { sub: X-User-Id }
"#;

fn good() -> serde_json::Value {
    json!({"sub": "u1", "exp": now() + 300, "iss": "https://auth.example.com", "aud": "orders", "role": "admin"})
}

/// Runs request_filter (and upstream_request_filter when it passes). Returns the status of
/// the reply (0 = passed), the outcome label and the upstream request.
async fn run(p: &Jwt, extra_headers: &str) -> (u16, &'static str, RequestHeader) {
    let raw = format!("GET /x HTTP/1.1\r\nHost: a\r\n{extra_headers}\r\n");
    let mut s = session_from_bytes(raw.as_bytes()).await.unwrap();
    let mut info = test_info();
    let mut slot = None;
    let mut cx = PluginCtx::new(&mut info, &mut slot);
    let flow = p.request_filter(&mut s, &mut cx).await.unwrap();
    let mut up = s.req_header().clone();
    let status = match flow {
        Flow::Continue => {
            p.upstream_request_filter(&mut s, &mut up, &mut cx)
                .await
                .unwrap();
            0
        }
        Flow::Respond(r) => {
            assert!(matches!(r.body, ReplyBody::Error(_)));
            if r.status == 401 {
                assert!(r
                    .headers
                    .iter()
                    .any(|(n, _)| n == http::header::WWW_AUTHENTICATE));
            }
            r.status
        }
    };
    let label = info.outcomes.last().map(|o| o.1).unwrap_or("");
    (status, label, up)
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}\r\n")
}

#[tokio::test]
async fn valid_tokens_pass_and_claims_are_forwarded() {
    let p = build(CFG);
    for t in [
        hs(good(), Some("hs")),
        rs(good(), Some("rs")),
        hs(good(), None),
        rs(good(), None),
    ] {
        let (status, label, up) = run(
            &p,
            &format!("{}X-User-Id: forged\r\nx_user_id: forged2\r\n", bearer(&t)),
        )
        .await;
        assert_eq!((status, label), (0, "ok"));
        let ids: Vec<_> = up.headers.get_all("x-user-id").iter().collect();
        assert_eq!(ids, vec!["u1"]);
        assert!(up.headers.get("x_user_id").is_none());
    }
}

#[tokio::test]
async fn rejections() {
    let p = build(CFG);
    let mut expired = good();
    expired["exp"] = json!(now() - 120);
    let mut future = good();
    future["nbf"] = json!(now() + 120);
    let mut iss = good();
    iss["iss"] = json!("https://evil.example.com");
    let mut aud = good();
    aud["aud"] = json!("other");
    let mut no_exp = good();
    no_exp.as_object_mut().unwrap().remove("exp");
    let wrong_secret = encode(
        &Header::new(Algorithm::HS256),
        &good(),
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
    )
    .unwrap();
    // HS256 signed with the RSA public key bytes, claiming the RS key's kid
    let mut confused_h = Header::new(Algorithm::HS256);
    confused_h.kid = Some("rs".into());
    let confused = encode(
        &confused_h,
        &good(),
        &EncodingKey::from_secret(&std::fs::read(keys_dir().join("rsa.pub")).unwrap()),
    )
    .unwrap();
    let none = {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            e.encode(br#"{"alg":"none","typ":"JWT"}"#),
            e.encode(good().to_string())
        )
    };
    let mut crit_h = Header::new(Algorithm::HS256);
    crit_h.crit = Some(vec!["exp".into()]);
    let crit = encode(
        &crit_h,
        &good(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut big = good();
    big["pad"] = json!("x".repeat(9000));
    let cases = [
        (hs(expired, None), "expired"),
        (hs(future, None), "not_yet_valid"),
        (hs(iss, None), "bad_issuer"),
        (hs(aud, None), "bad_audience"),
        (hs(no_exp, None), "missing_claim"),
        (wrong_secret, "invalid_signature"),
        (confused, "alg_mismatch"),
        (none, "malformed"),
        (hs(good(), Some("nope")), "unknown_kid"),
        (crit, "crit"),
        (hs(big, None), "too_large"),
        ("garbage".to_string(), "malformed"),
        ("a.b.c".to_string(), "malformed"),
    ];
    for (t, want) in cases {
        let (status, label, _) = run(&p, &bearer(&t)).await;
        assert_eq!(
            (status, label),
            (401, want),
            "token {}",
            &t[..t.len().min(60)]
        );
    }
    let (status, label, _) = run(&p, "").await;
    assert_eq!((status, label), (401, "missing"));
}

#[tokio::test]
async fn hs_token_never_verifies_against_an_rs_key_without_kid() {
    let p = build("keys: [{ algorithm: RS256, public_key_file: rsa.pub }]");
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &good(),
        &EncodingKey::from_secret(&std::fs::read(keys_dir().join("rsa.pub")).unwrap()),
    )
    .unwrap();
    let (status, label, _) = run(&p, &bearer(&confused)).await;
    assert_eq!((status, label), (401, "no_key"));
}

#[tokio::test]
async fn optional_mode_and_claim_requirements() {
    let p = build(&format!(
        "{CFG}required: false\nclaims: {{ role: [admin, support] }}\n"
    ));
    let (status, label, up) = run(&p, "X-User-Id: forged\r\n").await;
    assert_eq!((status, label), (0, "anonymous"));
    assert!(
        up.headers.get("x-user-id").is_none(),
        "forged header must be removed without a token too"
    );
    let (status, _, _) = run(&p, &bearer("garbage")).await;
    assert_eq!(status, 401);
    let (status, _, _) = run(&p, &bearer(&hs(good(), None))).await;
    assert_eq!(status, 0);
    let mut user = good();
    user["role"] = json!("user");
    let (status, label, _) = run(&p, &bearer(&hs(user, None))).await;
    assert_eq!((status, label), (403, "forbidden"));
    let mut roles = good();
    roles["role"] = json!(["user", "support"]);
    assert_eq!(run(&p, &bearer(&hs(roles, None))).await.0, 0);
}

#[tokio::test]
async fn token_sources() {
    let p = build(&format!(
        "{CFG}token_from: [\"cookie:session\", \"header:X-Token\", \"query:access_token\"]\n"
    ));
    let t = hs(good(), None);
    assert_eq!(run(&p, &format!("Cookie: a=b; session={t}\r\n")).await.0, 0);
    assert_eq!(run(&p, &format!("X-Token: {t}\r\n")).await.0, 0);
    assert_eq!(
        run(&p, &bearer(&t)).await.0,
        401,
        "Authorization is not a configured source"
    );
}

#[tokio::test]
async fn cache_respects_expiry_and_key_changes() {
    let p = build(CFG);
    let t = rs(good(), Some("rs"));
    assert_eq!(run(&p, &bearer(&t)).await.0, 0);
    assert_eq!(p.cache.len(), 1);
    assert_eq!(run(&p, &bearer(&t)).await.0, 0);
    // HMAC tokens are kept too; a token differing in its signature is not a hit
    let h = hs(good(), Some("hs"));
    assert_eq!(run(&p, &bearer(&h)).await.0, 0);
    assert_eq!(p.cache.len(), 2);
    let mut forged = h.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(run(&p, &bearer(&forged)).await.0, 401);
    assert_eq!(p.cache.len(), 2);
    // a token that expires (with leeway 0) is rejected even when cached
    let strict = build(&format!("{CFG}leeway: 0s\n"));
    let mut short = good();
    short["exp"] = json!(now() + 1);
    let t2 = rs(short, Some("rs"));
    assert_eq!(run(&strict, &bearer(&t2)).await.0, 0);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (status, label, _) = run(&strict, &bearer(&t2)).await;
    assert_eq!((status, label), (401, "expired"));
    // a new key set voids cached verifications
    p.store.publish_jwks(vec![]);
    assert_eq!(
        run(&p, &bearer(&t)).await.0,
        0,
        "rs is a configured key, still valid"
    );
}

#[test]
fn config_errors_name_the_field() {
    let err = |y: &str| {
        let mut env = BuildEnv {
            base_dir: keys_dir(),
            ..BuildEnv::default()
        };
        crate::api::testing::build_with::<Jwt>(y, &mut env)
            .err()
            .unwrap()
    };
    assert_eq!(
        err("keys: [{ algorithm: HS999, secret: x }]").path,
        "keys[0].algorithm"
    );
    assert_eq!(
        err("keys: [{ algorithm: RS256, public_key_file: missing.pem }]").path,
        "keys[0].public_key_file"
    );
    assert_eq!(
        err("keys: [{ algorithm: RS256, secret: x }]").path,
        "keys[0]"
    );
    assert_eq!(
        err("keys: [{ algorithm: HS256, secret: \"\" }]").path,
        "keys[0].secret"
    );
    assert_eq!(err("jwks_file: missing.json").path, "jwks_file");
    assert_eq!(
        err("keys: [{ algorithm: ES256, public_key_file: rsa.pub }]").path,
        "keys[0].public_key_file"
    );
    assert!(err("{}").message.contains("needs `keys`"));
    assert_eq!(
        err("{ keys: [{ algorithm: HS256, secret: x }], token_from: [\"body:x\"] }").path,
        "token_from[0]"
    );
}

/// A JWKS endpoint on 127.0.0.1 serving whatever `doc` holds; counts fetches; answers 500
/// while `doc` is empty.
fn jwks_server(
    doc: std::sync::Arc<std::sync::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> String {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(200) {
            let Ok(mut s) = s else { break };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = doc.lock().unwrap().clone();
            let status = if body.is_empty() {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_fetch_refresh_on_unknown_kid_and_last_good_kept() {
    use std::sync::atomic::Ordering;
    let both = std::fs::read_to_string(keys_dir().join("jwks-both.json")).unwrap();
    let new_only = std::fs::read_to_string(keys_dir().join("jwks-new-only.json")).unwrap();
    let doc = std::sync::Arc::new(std::sync::Mutex::new(new_only.clone()));
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let url = jwks_server(doc.clone(), fetches.clone());
    let p = build(&format!("jwks_url: \"{url}\"\njwks_refresh: 1h\n"));
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "fetched once at build");
    let rs2 = std::fs::read(keys_dir().join("rsa2.key")).unwrap();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("new".into());
    let c = json!({"sub": "u", "exp": now() + 300});
    let new_tok = encode(&h, &c, &EncodingKey::from_rsa_pem(&rs2).unwrap()).unwrap();
    assert_eq!(run(&p, &bearer(&new_tok)).await.0, 0);
    // the endpoint now also publishes "old": an unknown kid triggers one early refresh
    *doc.lock().unwrap() = both;
    let old_tok = rs(c.clone(), Some("old"));
    assert_eq!(run(&p, &bearer(&old_tok)).await.1, "unknown_kid");
    let p2 = &p;
    let ok = wait_until(|| futures_lite_block(run(p2, &bearer(&old_tok))).0 == 0);
    assert!(ok, "unknown kid did not trigger a refresh");
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    // more misses within the cooldown never fetch again
    let mut h2 = Header::new(Algorithm::RS256);
    h2.kid = Some("other".into());
    let other = encode(&h2, &c, &EncodingKey::from_rsa_pem(&rs2).unwrap()).unwrap();
    for _ in 0..20 {
        assert_eq!(run(&p, &bearer(&other)).await.1, "unknown_kid");
    }
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "refresh must be rate limited, not per request"
    );

    // periodic refresh against an endpoint that now fails keeps the last good keys
    *doc.lock().unwrap() = new_only;
    let fetches2 = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let doc2 = std::sync::Arc::new(std::sync::Mutex::new(
        std::fs::read_to_string(keys_dir().join("jwks-new-only.json")).unwrap(),
    ));
    let url2 = jwks_server(doc2.clone(), fetches2.clone());
    let q = build(&format!("jwks_url: \"{url2}\"\njwks_refresh: 1s\n"));
    *doc2.lock().unwrap() = String::new();
    assert!(
        wait_until(|| fetches2.load(Ordering::SeqCst) >= 3),
        "periodic refresh did not run"
    );
    assert_eq!(run(&q, &bearer(&new_tok)).await.0, 0);
}

/// Drives a future to completion from a sync closure inside a multi-thread runtime.
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[test]
fn key_files_are_recorded_so_a_reload_sees_a_rotated_key() {
    let mut env = BuildEnv {
        base_dir: keys_dir(),
        ..BuildEnv::default()
    };
    let _: Jwt = crate::api::testing::build_with(
        "keys: [{ algorithm: RS256, public_key_file: rsa.pub }, { algorithm: HS256, secret: \"0123456789abcdef0123456789abcdef\" }]",
        &mut env,
    )
    .unwrap();
    assert_eq!(env.files, [keys_dir().join("rsa.pub")]);
}
