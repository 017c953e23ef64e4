//! TLS to backends through the real binary: verification against a configured CA (and
//! failure against the system roots or a wrong CA, as 502 or an unhealthy backend), the
//! server name, `verify: false`, a client certificate for backends that require one, HTTP/2 by
//! ALPN and h2c, and pooled connections kept apart by TLS settings. Backends are hyper servers
//! behind rustls, with certificates minted at test time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::pki::Ca;
use common::{TestGateway, TestUpstream};

/// A gateway with `upstreams` (YAML lines under `upstreams:`) and one route per group:
/// `/<group>` goes to `<group>`.
async fn gateway(upstreams: &str, groups: &[&str]) -> TestGateway {
    let routes: String = groups
        .iter()
        .map(|g| {
            format!(
                "  - {{ id: {g}, match: {{ path_prefix: /{g} }}, upstream: {g}, strip_prefix: true }}\n"
            )
        })
        .collect();
    TestGateway::start(|p| {
        format!(
            "server:\n  listen: [\"127.0.0.1:{}\"]\n  access_log: off\n  grace_period: 1s\nadmin:\n  listen: \"127.0.0.1:{}\"\nupstreams:\n{upstreams}routes:\n{routes}",
            p.proxy, p.admin
        )
    })
    .await
}

async fn status_and_error(gw: &TestGateway, path: &str) -> (u16, String) {
    let r = gw.get(path).await;
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    (status, body["error"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_are_verified_against_the_configured_ca() {
    let ca = Ca::new();
    ca.leaf("backend", &["backend.test", "127.0.0.1"], false);
    let ca_file = ca.write_ca("ca.pem");
    let other = Ca::new();
    let other_file = other.write_ca("other.pem");
    let up =
        TestUpstream::start_tls("tls-up", ca.server_config("backend", &["http/1.1"], None)).await;
    let addr = up.addr;
    let upstreams = format!(
        "  good: {{ backends: [\"{addr}\"], tls: {{ sni: backend.test, ca: \"{ca}\" }} }}
  byip: {{ backends: [\"{addr}\"], tls: {{ ca: \"{ca}\" }} }}
  wrongname: {{ backends: [\"{addr}\"], tls: {{ sni: other.test, ca: \"{ca}\" }} }}
  wrongca: {{ backends: [\"{addr}\"], tls: {{ sni: backend.test, ca: \"{other}\" }} }}
  systemroots: {{ backends: [\"{addr}\"], tls: {{ sni: backend.test }} }}
  noverify: {{ backends: [\"{addr}\"], tls: {{ sni: backend.test, verify: false }} }}
  plain: {{ backends: [\"{addr}\"] }}
",
        ca = ca_file.display(),
        other = other_file.display()
    );
    let gw = gateway(
        &upstreams,
        &[
            "good",
            "byip",
            "wrongname",
            "wrongca",
            "systemroots",
            "noverify",
            "plain",
        ],
    )
    .await;
    assert_eq!(gw.get("/good/x").await.status(), 200);
    let seen = up.last();
    assert_eq!(
        (seen.path.as_str(), seen.version.as_str()),
        ("/x", "HTTP/1.1")
    );
    // no sni: the backend's address is the name verified (an IP SAN)
    assert_eq!(gw.get("/byip/x").await.status(), 200);
    let hits = up.hits();
    for g in ["wrongname", "wrongca", "systemroots"] {
        assert_eq!(
            status_and_error(&gw, &format!("/{g}/x")).await,
            (502, "upstream TLS handshake failed".to_string()),
            "{g}"
        );
    }
    assert_eq!(up.hits(), hits, "no request reached the backend unverified");
    assert_eq!(gw.get("/noverify/x").await.status(), 200);
    // plain HTTP to a TLS port is not a valid response either
    assert_eq!(gw.get("/plain/x").await.status(), 502);
    let log = gw.stderr();
    for g in ["wrongname", "wrongca", "systemroots"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("upstream {g} backend {addr}")) && l.contains("TLS")),
            "a log line names the failed handshake of {g}: {log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_are_not_shared_across_tls_settings() {
    let ca = Ca::new();
    ca.leaf("backend", &["backend.test"], false);
    let ca_file = ca.write_ca("ca.pem");
    let other = Ca::new();
    let other_file = other.write_ca("other.pem");
    let up =
        TestUpstream::start_tls("tls-up", ca.server_config("backend", &["http/1.1"], None)).await;
    // same address and server name; only the CA differs
    let upstreams = format!(
        "  good: {{ backends: [\"{a}\"], tls: {{ sni: backend.test, ca: \"{ca}\" }} }}
  bad: {{ backends: [\"{a}\"], tls: {{ sni: backend.test, ca: \"{other}\" }} }}
",
        a = up.addr,
        ca = ca_file.display(),
        other = other_file.display()
    );
    let gw = gateway(&upstreams, &["good", "bad"]).await;
    for _ in 0..3 {
        assert_eq!(gw.get("/good/").await.status(), 200);
        assert_eq!(
            gw.get("/bad/").await.status(),
            502,
            "a connection verified with another CA must not be reused"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_with_a_bad_certificate_is_taken_out_by_its_health_check() {
    let ca = Ca::new();
    ca.leaf("backend", &["backend.test"], false);
    let ca_file = ca.write_ca("ca.pem");
    let stranger = Ca::new();
    stranger.leaf("backend", &["backend.test"], false);
    let good =
        TestUpstream::start_tls("good", ca.server_config("backend", &["http/1.1"], None)).await;
    let bad = TestUpstream::start_tls(
        "bad",
        stranger.server_config("backend", &["http/1.1"], None),
    )
    .await;
    let upstreams = format!(
        "  pool:\n    backends: [\"{}\", \"{}\"]\n    tls: {{ sni: backend.test, ca: \"{}\" }}\n    health_check: {{ http: {{ path: /health }}, interval: 200ms, timeout: 1s }}\n",
        good.addr,
        bad.addr,
        ca_file.display()
    );
    let gw = gateway(&upstreams, &["pool"]).await;
    for _ in 0..6 {
        let r = gw.get("/pool/").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-backend"], "good");
    }
    assert_eq!(bad.hits(), 0);
    let m = gw.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("gatehouse_upstream_backend_healthy")
                && l.contains(&bad.addr.to_string())
                && l.ends_with(" 0")),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_to_backends_that_require_one() {
    let ca = Ca::new();
    ca.leaf("backend", &["backend.test"], false);
    let ca_file = ca.write_ca("ca.pem");
    let clients = Ca::new();
    clients.client_leaf("gw", "gatehouse", &["gw.internal"]);
    let up = TestUpstream::start_tls(
        "mtls-up",
        ca.server_config("backend", &["http/1.1"], Some(&clients)),
    )
    .await;
    let cert = clients.path("gw.pem");
    let key = clients.path("gw.key");
    let upstreams = format!(
        "  with: {{ backends: [\"{a}\"], tls: {{ sni: backend.test, ca: \"{ca}\", client_cert: {{ cert: \"{cert}\", key: \"{key}\" }} }} }}
  without: {{ backends: [\"{a}\"], tls: {{ sni: backend.test, ca: \"{ca}\" }} }}
",
        a = up.addr,
        ca = ca_file.display(),
        cert = cert.display(),
        key = key.display()
    );
    let gw = gateway(&upstreams, &["with", "without"]).await;
    assert_eq!(gw.get("/with/").await.status(), 200);
    assert_eq!(gw.get("/without/").await.status(), 502);
    assert_eq!(gw.get("/with/").await.status(), 200);
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_to_backends_by_alpn_and_h2c() {
    let ca = Ca::new();
    ca.leaf("backend", &["backend.test"], false);
    let ca_file = ca.write_ca("ca.pem");
    let tls_up = TestUpstream::start_tls(
        "h2-up",
        ca.server_config("backend", &["h2", "http/1.1"], None),
    )
    .await;
    let plain_up = TestUpstream::start("h2c-up").await;
    let upstreams = format!(
        "  h2: {{ backends: [\"{t}\"], tls: {{ sni: backend.test, ca: \"{ca}\", alpn: [h2] }} }}
  h1: {{ backends: [\"{t}\"], tls: {{ sni: backend.test, ca: \"{ca}\" }} }}
  h2c: {{ backends: [\"{p}\"], h2c: true }}
",
        t = tls_up.addr,
        p = plain_up.addr,
        ca = ca_file.display()
    );
    let gw = gateway(&upstreams, &["h2", "h1", "h2c"]).await;
    // several requests: streams share the backend connection
    for _ in 0..3 {
        assert_eq!(gw.get("/h2/a").await.status(), 200);
        assert_eq!(tls_up.last().version, "HTTP/2.0");
    }
    assert_eq!(gw.get("/h1/a").await.status(), 200);
    assert_eq!(tls_up.last().version, "HTTP/1.1");
    assert_eq!(gw.get("/h2c/a").await.status(), 200);
    assert_eq!(plain_up.last().version, "HTTP/2.0");
    assert_eq!(plain_up.last().path, "/a");
}

#[test]
fn upstream_tls_settings_are_checked() {
    let yaml = |tls: &str| {
        format!("upstreams:\n  up:\n    backends: [\"127.0.0.1:1\"]\n{tls}routes:\n  - {{ id: r, upstream: up }}\n")
    };
    let cases = [
        (
            "    tls: { ca: /nonexistent.pem }\n",
            "upstreams.up.tls.ca: cannot read `/nonexistent.pem`",
        ),
        (
            "    tls: { sni: \"\" }\n",
            "upstreams.up.tls.sni: `` is not a DNS name or IP address",
        ),
        (
            "    tls: { alpn: [h3] }\n",
            "upstreams.up.tls.alpn[0]: `h3`: use h2 or http/1.1",
        ),
        (
            "    tls: { client_cert: { cert: /nonexistent.pem, key: /nonexistent.key } }\n",
            "upstreams.up.tls.client_cert: cannot read `/nonexistent.pem`",
        ),
        (
            "    tls: {}\n    h2c: true\n",
            "upstreams.up.h2c: h2c is cleartext HTTP/2",
        ),
    ];
    for (tls, want) in cases {
        let (code, out) = common::check_yaml(&yaml(tls));
        assert_ne!(code, 0, "{tls}");
        assert!(out.contains(want), "{tls}: {out}");
    }
    // a key that does not match its certificate
    let ca = Ca::new();
    ca.leaf("a", &["a.test"], false);
    ca.leaf("b", &["b.test"], false);
    let (code, out) = common::check_yaml(&yaml(&format!(
        "    tls: {{ client_cert: {{ cert: \"{}\", key: \"{}\" }} }}\n",
        ca.path("a.pem").display(),
        ca.path("b.key").display()
    )));
    assert_ne!(code, 0);
    assert!(out.contains("does not match the certificate"), "{out}");
}
