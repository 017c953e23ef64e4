//! Planted secrets (a JWT HS256 secret, the admin token, an upstream client key, a TLS
//! private key) never show up in what gatehouse says: logs, the access log, `/metrics`,
//! `/config`, reload errors and `gatehouse check` output, even when a request carries a wrong
//! token or a reload fails on a broken secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Mutex;

use common::pki::Ca;
use common::{free_port, TestGateway, TestUpstream};

const JWT_SECRET: &str = "PLANTED-jwt-secret-0123456789abcdef0123";
const ADMIN_TOKEN: &str = "PLANTED-admin-token-0123456789";

fn config(p: &common::Ports, https: u16, ca: &Ca, up: &TestUpstream, secret: &str) -> String {
    format!(
        "server:
  listen:
    - \"127.0.0.1:{proxy}\"
    - addr: \"127.0.0.1:{https}\"
      tls: {{ certificates: [{{ cert: \"{dir}/a.pem\", key: \"{dir}/a.key\" }}], default_certificate: 0 }}
  access_log: \"{log}\"
admin:
  listen: \"127.0.0.1:{admin}\"
  token: \"{ADMIN_TOKEN}\"
upstreams:
  up: {{ backends: [\"{up}\"] }}
routes:
  - id: api
    upstream: up
    plugins:
      - jwt: {{ keys: [{{ algorithm: HS256, secret: \"{secret}\" }}] }}
",
        proxy = p.proxy,
        admin = p.admin,
        dir = ca.dir.path().display(),
        log = p.access_log.display(),
        up = up.addr,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_secrets_never_appear_in_any_output() {
    let ca = Ca::new();
    ca.leaf("a", &["a.test"], false);
    let key_pem = std::fs::read_to_string(ca.path("a.key")).unwrap();
    // a line from the middle of the private key
    let key_line = key_pem.lines().nth(1).unwrap().to_string();
    let up = TestUpstream::start("up").await;
    let https = Mutex::new(0u16);
    let gw = TestGateway::start(|p| {
        let port = free_port();
        *https.lock().unwrap() = port;
        config(p, port, &ca, &up, JWT_SECRET)
    })
    .await;
    let https = *https.lock().unwrap();
    let c = &gw.client;
    // requests with wrong credentials of every kind
    let r = c
        .get(gw.url("/x"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body = r.text().await.unwrap();
    let forged = format!("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.{JWT_SECRET}");
    let r = c
        .get(gw.url("/x"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body2 = r.text().await.unwrap();
    let wrong = c
        .post(gw.admin_url("/reload"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let config_view = c
        .get(gw.admin_url("/config"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(config_view.contains("<redacted>"), "{config_view}");
    // a short secret only warns; a key that fails to build fails the reload: neither message
    // may echo the secret
    let short = "PLANTED-short";
    let original = std::fs::read_to_string(gw.config_path()).unwrap();
    let yaml = original.replace(JWT_SECRET, short);
    let (_, check_short) = common::check_yaml(&yaml);
    let bad = original.replace("algorithm: HS256", "algorithm: HS999");
    gw.write_config(&bad);
    let failed = c
        .post(gw.admin_url("/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(failed.contains("\"error\""), "{failed}");
    let (code, check_out) = common::check_yaml(&bad);
    assert_ne!(code, 0);
    let check_out = check_out + &check_short;
    let metrics = gw.metrics().await;
    let _ = https;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let access_log = std::fs::read_to_string(&gw.ports.access_log).unwrap_or_default();
    let outputs = [
        ("401 body", body),
        ("401 body (forged token)", body2),
        ("/config", config_view),
        ("failed reload", failed),
        ("gatehouse check", check_out),
        ("/metrics", metrics),
        ("access log", access_log),
        ("process log", gw.stderr()),
    ];
    for (what, text) in &outputs {
        for secret in [JWT_SECRET, ADMIN_TOKEN, short, key_line.as_str()] {
            assert!(
                !text.contains(secret),
                "{what} shows a planted secret ({secret}):\n{text}"
            );
        }
    }
}
