//! Mutual TLS towards clients, and the HTTPS redirect, through the real binary: client
//! certificates minted at test time (rcgen) from the right CA and a wrong one; per-route
//! rules by subject, SAN and fingerprint; the verified identity passed upstream with the
//! client's own copies removed; the certificate as a rate-limit key; 421 for a reused
//! connection made for another host. Clients: reqwest with rustls.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use common::pki::{fingerprint, Ca};
use common::{check_yaml, free_port, TestGateway, TestUpstream};

struct Setup {
    gw: TestGateway,
    https: u16,
    /// Signs the server certificate.
    server_ca: Ca,
    /// Signs the accepted client certificates.
    clients: Ca,
    log: PathBuf,
    _logdir: tempfile::TempDir,
}

/// A gateway with a plain listener and an HTTPS one asking for client certificates (`mode`),
/// in front of `up`, with `routes` after `server`/`upstreams`.
async fn setup(up: &TestUpstream, mode: &str, routes: &str) -> Setup {
    let server_ca = Ca::new();
    server_ca.leaf("a", &["a.test", "b.test"], false);
    let clients = Ca::new();
    let ca_file = clients.write_ca("clients-ca.pem");
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("access.log");
    let https = Mutex::new(0u16);
    let gw = TestGateway::start(|p| {
        let port = free_port();
        *https.lock().unwrap() = port;
        format!(
            "server:
  listen:
    - \"127.0.0.1:{proxy}\"
    - addr: \"127.0.0.1:{port}\"
      tls:
        certificates: [{{ cert: \"{dir}/a.pem\", key: \"{dir}/a.key\" }}]
        client_auth: {{ mode: {mode}, ca: \"{ca}\" }}
  access_log: \"{log}\"
  grace_period: 1s
admin:
  listen: \"127.0.0.1:{admin}\"
upstreams:
  up:
    backends: [\"{up}\"]
routes:
{routes}",
            proxy = p.proxy,
            admin = p.admin,
            dir = server_ca.dir.path().display(),
            ca = ca_file.display(),
            log = log.display(),
            up = up.addr,
        )
    })
    .await;
    let https = *https.lock().unwrap();
    Setup {
        gw,
        https,
        server_ca,
        clients,
        log,
        _logdir: logdir,
    }
}

impl Setup {
    /// A client trusting the server CA, with the client certificate `file` of `from` (if any).
    fn client(&self, from: Option<(&Ca, &str)>) -> reqwest::Client {
        match from {
            None => self.server_ca.client(self.https, &["a.test", "b.test"]),
            Some((ca, file)) => {
                let id = ca.identity(file);
                reqwest::Client::builder()
                    .use_rustls_tls()
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(
                        reqwest::Certificate::from_pem(self.server_ca.pem.as_bytes()).unwrap(),
                    )
                    .identity(id)
                    .resolve("a.test", SocketAddr::from(([127, 0, 0, 1], self.https)))
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap()
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://a.test:{}{path}", self.https)
    }
}

/// GET with spoofed identity headers: the status and the JSON error (if any).
async fn get(c: &reqwest::Client, url: &str) -> (u16, String, reqwest::Version) {
    let r = c
        .get(url)
        .header("x-client-cert-subject", "CN=admin")
        .header("x-client-cert-verified", "true")
        .header("x-client-cert-fingerprint", "00")
        .send()
        .await
        .unwrap();
    let (status, version) = (r.status().as_u16(), r.version());
    let body = r.text().await.unwrap();
    let error = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_default();
    (status, error, version)
}

const ROUTES: &str = "  - { id: ops, match: { path_prefix: /ops }, upstream: up, client_cert: { allow: { subjects: [\"CN=ops-*\"] } } }
  - { id: spiffe, match: { path_prefix: /spiffe }, upstream: up, client_cert: { allow: { sans: [\"spiffe://corp/ops/*\"] } } }
  - { id: limited, match: { path_prefix: /limited }, upstream: up, plugins: [ { rate_limit: { key: client_cert, requests: 1, per: 1m } } ] }
  - { id: all, upstream: up }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates_gate_routes_and_reach_the_backend() {
    let up = TestUpstream::start("up").await;
    let st = setup(&up, "optional", ROUTES).await;
    let ops = st
        .clients
        .client_leaf("ops", "ops-1", &["spiffe://corp/ops/api"]);
    st.clients
        .client_leaf("dev", "dev-1", &["spiffe://corp/dev/api"]);
    let wrong_ca = Ca::new();
    wrong_ca.client_leaf("ops", "ops-1", &["spiffe://corp/ops/api"]);

    // without a certificate: open routes pass, spoofed identity headers do not
    let anon = st.client(None);
    let (status, _, version) = get(&anon, &st.url("/open")).await;
    assert_eq!((status, version), (200, reqwest::Version::HTTP_2));
    let seen = up.last();
    for h in [
        "x-client-cert-subject",
        "x-client-cert-verified",
        "x-client-cert-fingerprint",
        "x-client-cert-sans",
    ] {
        assert_eq!(seen.header(h), None, "{h} must not pass from the client");
    }
    assert_eq!(
        get(&anon, &st.url("/ops")).await.0,
        403,
        "the route needs a certificate"
    );
    assert_eq!(
        get(&anon, &st.url("/ops")).await.1,
        "client certificate required"
    );

    // the right certificate: the backend gets the verified identity, over HTTP/2
    let ops_client = st.client(Some((&st.clients, "ops")));
    let (status, _, version) = get(&ops_client, &st.url("/ops")).await;
    assert_eq!((status, version), (200, reqwest::Version::HTTP_2));
    let seen = up.last();
    assert_eq!(seen.header("x-client-cert-subject"), Some("CN=ops-1"));
    assert_eq!(
        seen.header("x-client-cert-sans"),
        Some("spiffe://corp/ops/api")
    );
    assert_eq!(
        seen.header("x-client-cert-fingerprint"),
        Some(fingerprint(&ops).as_str())
    );
    assert_eq!(seen.header("x-client-cert-verified"), Some("true"));
    assert_eq!(get(&ops_client, &st.url("/spiffe")).await.0, 200);

    // a verified certificate the rules do not allow
    let dev_client = st.client(Some((&st.clients, "dev")));
    assert_eq!(
        get(&dev_client, &st.url("/ops")).await,
        (
            403,
            "client certificate not allowed".into(),
            reqwest::Version::HTTP_2
        )
    );
    assert_eq!(get(&dev_client, &st.url("/spiffe")).await.0, 403);
    assert_eq!(get(&dev_client, &st.url("/open")).await.0, 200);

    // a certificate from another CA does not get through the handshake
    let stranger = st.client(Some((&wrong_ca, "ops")));
    assert!(stranger.get(st.url("/open")).send().await.is_err());

    // the certificate as a rate-limit key: one per certificate, none without one
    assert_eq!(get(&ops_client, &st.url("/limited")).await.0, 200);
    assert_eq!(get(&ops_client, &st.url("/limited")).await.0, 429);
    assert_eq!(get(&dev_client, &st.url("/limited")).await.0, 200);
    assert_eq!(get(&anon, &st.url("/limited")).await.0, 401);

    // the access log names the certificate and the server name
    let fp = fingerprint(&ops);
    let found = common::eventually(Duration::from_secs(3), || async {
        std::fs::read_to_string(&st.log).is_ok_and(|t| t.contains(&fp))
    })
    .await;
    assert!(found, "no access log line with the client certificate");
    let text = std::fs::read_to_string(&st.log).unwrap();
    let line: serde_json::Value = serde_json::from_str(
        text.lines()
            .find(|l| l.contains(&fp) && l.contains("\"route\":\"ops\""))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["sni"], "a.test", "{line}");
    assert_eq!(line["client_cert"], fp.as_str(), "{line}");
    let refused = text.lines().find(|l| l.contains("\"status\":403")).unwrap();
    assert!(refused.contains("client certificate"), "{refused}");
    // refused by the handshake: counted as a failed handshake
    let listener = format!("listener=\"127.0.0.1:{}\"", st.https);
    let errors =
        format!("gatehouse_tls_handshakes_total{{{listener},result=\"client_certificate\"}}");
    assert!(st.gw.metric(&errors).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_made_for_another_host_gets_421() {
    let up = TestUpstream::start("up").await;
    let st = setup(&up, "optional", ROUTES).await;
    // HTTP/1.1 so the Host header can differ from the server name of the connection
    let h1 = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(st.server_ca.pem.as_bytes()).unwrap())
        .resolve("a.test", SocketAddr::from(([127, 0, 0, 1], st.https)))
        .http1_only()
        .build()
        .unwrap();
    let r = h1
        .get(st.url("/ops"))
        .header("host", format!("b.test:{}", st.https))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
    let r = h1.get(st.url("/ops")).send().await.unwrap();
    assert_eq!(r.status(), 403, "same host: a plain refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_are_checked_in_the_handshake() {
    let up = TestUpstream::start("up").await;
    let st = setup(&up, "required", "  - { id: all, upstream: up }\n").await;
    st.clients.client_leaf("svc", "svc-1", &["svc.corp"]);
    let anon = st.client(None);
    assert!(
        anon.get(st.url("/")).send().await.is_err(),
        "no certificate, no connection"
    );
    let svc = st.client(Some((&st.clients, "svc")));
    assert_eq!(get(&svc, &st.url("/")).await.0, 200);
    assert_eq!(up.last().header("x-client-cert-sans"), Some("svc.corp"));
    let refused = format!(
        "gatehouse_tls_handshakes_total{{listener=\"127.0.0.1:{}\",result=\"client_certificate\"}}",
        st.https
    );
    assert!(st.gw.metric(&refused).await >= 1.0);
    // the plain listener is not affected by the TLS listener's policy
    assert_eq!(st.gw.get("/").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_are_redirected_to_https() {
    let up = TestUpstream::start("up").await;
    let routes = "  - id: web
    upstream: up
    https_redirect: true
    https_port: HTTPS_PORT
    plugins:
      - headers: { response: { set: { Strict-Transport-Security: \"max-age=31536000; includeSubDomains\" } } }
";
    // the HTTPS port is only known once the gateway runs: write the route after
    let st = setup(&up, "none", "  - { id: all, upstream: up }\n").await;
    let yaml = std::fs::read_to_string(st.gw.config_path()).unwrap();
    let yaml = yaml.replace(
        "routes:\n  - { id: all, upstream: up }\n",
        &format!(
            "routes:\n{}",
            routes.replace("HTTPS_PORT", &st.https.to_string())
        ),
    );
    st.gw.write_config(&yaml);
    let r = st.gw.reload().await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = plain
        .get(st.gw.url("/x/y?q=1"))
        .header("host", "a.test:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://a.test:{}/x/y?q=1", st.https).as_str()
    );
    let hits = up.hits();
    // over HTTPS the route serves, with HSTS
    let r = st
        .client(None)
        .get(st.url("/x/y?q=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    assert_eq!(up.hits(), hits + 1, "the redirect never went upstream");
}

#[test]
fn client_certificate_settings_are_checked() {
    let yaml = |listen_tls: &str, route: &str| {
        format!(
            "server:\n  listen:\n    - addr: \"127.0.0.1:1\"\n      tls:\n        certificates: [{{ cert: /nonexistent.pem, key: /nonexistent.key }}]\n{listen_tls}upstreams:\n  up: {{ backends: [\"127.0.0.1:2\"] }}\nroutes:\n  - {{ id: r, upstream: up{route} }}\n"
        )
    };
    let (code, out) = check_yaml(&yaml(
        "",
        ", client_cert: { allow: { subjects: [\"CN=x\"] } }",
    ));
    assert_ne!(code, 0);
    assert!(
        out.contains("routes[0].client_cert: no listener asks clients for a certificate"),
        "{out}"
    );
    let (code, out) = check_yaml(&yaml("        client_auth: { mode: optional }\n", ""));
    assert_ne!(code, 0);
    assert!(
        out.contains(
            "server.listen[0].tls.client_auth.ca: needed when mode is optional or required"
        ),
        "{out}"
    );
    let (code, out) = check_yaml(&yaml(
        "        client_auth: { mode: required, ca: /nonexistent-ca.pem }\n",
        ", client_cert: { allow: { fingerprints: [\"abc\"] } }",
    ));
    assert_ne!(code, 0);
    assert!(
        out.contains("server.listen[0].tls.client_auth.ca: cannot read `/nonexistent-ca.pem`"),
        "{out}"
    );
    assert!(
        out.contains("routes[0].client_cert.allow.fingerprints[0]: `abc`: a SHA-256 fingerprint is 64 hex digits"),
        "{out}"
    );
    let (code, out) = check_yaml(&yaml("", ", https_port: 8443"));
    assert_ne!(code, 0);
    assert!(
        out.contains("routes[0].https_port: only used with https_redirect: true"),
        "{out}"
    );
}
