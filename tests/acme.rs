//! ACME against a real CA on loopback (pebble): certificates obtained for a listener's names
//! (HTTP-01 and TLS-ALPN-01), served by the next handshake and chaining to the CA's root;
//! kept across a restart (no new order, the account reused); renewed under load with no
//! failed request, and on their own before they expire; kept serving when the CA refuses;
//! ordered once by instances sharing a state directory; a reload that adds a name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::pebble::Pebble;
use common::pki::fingerprint;
use common::{
    check_yaml, eventually, free_port, Load, Ports, TestGateway, TestUpstream, Unwritable,
};

/// A gateway with a plain listener on `http` (where the CA validates HTTP-01), an HTTPS
/// listener on `tls` serving `names` from the CA, and the harness's own plain listener.
#[allow(clippy::too_many_arguments)]
fn config(
    p: &Ports,
    http: u16,
    tls: u16,
    names: &[&str],
    pebble: &Pebble,
    state: &Path,
    backend: &str,
    challenge: &str,
) -> String {
    format!(
        r#"server:
  listen:
    - "127.0.0.1:{proxy}"
    - "127.0.0.1:{http}"
    - addr: "127.0.0.1:{tls}"
      tls: {{ acme: [{names}] }}
  threads: 2
  grace_period: 1s
  access_log: {log}
admin:
  listen: "127.0.0.1:{admin}"
acme:
  directory: {dir}
  email: ops@example.com
  ca_roots: {roots}
  state_dir: {state}
  renew_before: 30d
  challenge: {challenge}
upstreams:
  app:
    backends: ["{backend}"]
routes:
  - id: app
    match: {{ path_prefix: / }}
    upstream: app
"#,
        proxy = p.proxy,
        admin = p.admin,
        log = p.access_log.display(),
        names = names.join(", "),
        dir = pebble.directory,
        roots = pebble.ca_roots.display(),
        state = state.display(),
    )
}

/// A backend, pebble and a state directory; the gateway's HTTP and HTTPS ports.
struct Env {
    backend: TestUpstream,
    pebble: Pebble,
    /// Pebble's root (PEM).
    root: String,
    state: tempfile::TempDir,
    http: u16,
    tls: u16,
    /// The route redirects plain HTTP to HTTPS.
    redirect: bool,
}

impl Env {
    /// Pebble validating on the gateway's ports (HTTP-01 on `ca_http` instead when given),
    /// issuing certificates valid for `validity` seconds when given.
    async fn new(validity: Option<u64>, ca_http: Option<u16>) -> Env {
        let backend = TestUpstream::start("app").await;
        let (http, tls) = (free_port(), free_port());
        let pebble = Pebble::start_with(ca_http.unwrap_or(http), tls, validity);
        Env {
            root: pebble.root_pem().await,
            backend,
            pebble,
            state: tempfile::tempdir().unwrap(),
            http,
            tls,
            redirect: false,
        }
    }

    fn yaml(&self, p: &Ports, names: &[&str], challenge: &str) -> String {
        let backend = self.backend.addr.to_string();
        let state = self.state.path();
        let yaml = config(
            p,
            self.http,
            self.tls,
            names,
            &self.pebble,
            state,
            &backend,
            challenge,
        );
        if self.redirect {
            return yaml.replace(
                "    upstream: app\n",
                "    upstream: app\n    https_redirect: true\n",
            );
        }
        yaml
    }

    async fn gateway(&self, names: &[&str], challenge: &str) -> TestGateway {
        TestGateway::start(|p: &Ports| self.yaml(p, names, challenge)).await
    }

    /// What the HTTPS listener serves for `name` once it serves something (60 s at most).
    async fn issued(&self, gw: &TestGateway, name: &str) -> (String, Vec<String>, usize) {
        let got = poll(Duration::from_secs(60), || async {
            served(self.tls, name, &self.root).await.ok()
        })
        .await;
        got.unwrap_or_else(|| {
            panic!(
                "nothing served for {name}\n{}\n{}",
                gw.stderr(),
                self.pebble.log()
            )
        })
    }

    /// A certificate for `name` other than `old`, once served (60 s at most).
    async fn replaced(&self, name: &str, old: &str) -> Option<String> {
        poll(Duration::from_secs(60), || async {
            served(self.tls, name, &self.root)
                .await
                .ok()
                .map(|s| s.0)
                .filter(|f| f != old)
        })
        .await
    }
}

/// A client config trusting only `root` (PEM), offering `alpn`.
fn tls_client(root: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A TLS handshake with the listener on `port` for `sni`.
async fn handshake(
    port: u16,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| "handshake timed out".to_string())?
}

/// What the listener on `port` serves for `sni`, verified against `root` only: (leaf
/// fingerprint, leaf DNS names sorted, chain length).
async fn served(port: u16, sni: &str, root: &str) -> Result<(String, Vec<String>, usize), String> {
    let conn = handshake(port, sni, tls_client(root, &[])).await?;
    let chain = conn.get_ref().1.peer_certificates().unwrap_or_default();
    let leaf = chain.first().ok_or("no certificate")?;
    let (_, x) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    let mut names: Vec<String> = x
        .subject_alternative_name()
        .unwrap()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    Ok((fingerprint(leaf.as_ref()), names, chain.len()))
}

/// A client trusting only `root`, sending `names` to the listener on `port`, one new
/// connection (and handshake) per request.
fn client(root: &str, port: u16, names: &[&str]) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10));
    for n in names {
        b = b.resolve(n, std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    b.build().unwrap()
}

/// Polls `f` every 100 ms until it gives a value or `max` passes.
async fn poll<T, F, Fut>(max: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + max;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn report(gw: &TestGateway) -> serde_json::Value {
    let r = gw.client.get(gw.admin_url("/acme")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn cert_field(gw: &TestGateway, field: &str) -> serde_json::Value {
    report(gw).await["certificates"][0][field].clone()
}

/// `gatehouse_acme_orders_total{result}`.
async fn orders(gw: &TestGateway, result: &str) -> f64 {
    gw.metric(&format!(
        "gatehouse_acme_orders_total{{result=\"{result}\"}}"
    ))
    .await
}

/// How many times the CA tried to validate a.test over HTTP (its log has a line per try).
fn a_validations(pebble: &Pebble) -> usize {
    pebble
        .log()
        .matches("Attempting to validate w/ HTTP: http://a.test:")
        .count()
}

async fn renew(gw: &TestGateway, name: &str) {
    let r = gw
        .client
        .post(gw.admin_url(&format!("/acme/renew?name={name}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
}

/// The files in `dir` with extension `ext`.
fn files(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issued_served_kept_across_restart_renewed_under_load_and_kept_when_refused() {
    // the route redirects plain HTTP to HTTPS: the CA's fetches are answered before it
    let mut env = Env::new(None, None).await;
    env.redirect = true;
    let (tls, root, state) = (env.tls, &env.root, env.state.path());
    let names = ["a.test", "b.test"];

    // 1. issuance: both names, one certificate, chaining to pebble's root, served by the
    // next handshake without a reload
    let gw = env.gateway(&names, "http-01").await;
    let (fp, sans, chain_len) = env.issued(&gw, "a.test").await;
    assert_eq!(sans, vec!["a.test", "b.test"]);
    assert!(chain_len >= 2, "leaf and intermediate: {chain_len}");
    let (fp_b, _, _) = served(tls, "b.test", root).await.unwrap();
    assert_eq!(fp_b, fp, "one certificate for both names");
    // a name the listener does not list gets no certificate
    assert!(served(tls, "c.test", root).await.is_err());
    let c = client(root, tls, &names);
    let r = c
        .get(format!("https://b.test:{tls}/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(env.backend.last().path, "/hello");
    assert_eq!(orders(&gw, "ok").await, 1.0);
    let m = gw.metrics().await;
    let expiry = format!("gatehouse_tls_certificate_expiry_seconds{{certificate=\"a.test\",listener=\"127.0.0.1:{tls}\"}}");
    assert!(m.contains(&expiry), "{m}");
    assert_eq!(cert_field(&gw, "fingerprint").await, fp.as_str());
    // the status page's listener list shows it with its days left
    let status = gw.get_admin_text("/api/status").await;
    assert!(status.contains(r#""name":"a.test""#), "{status}");
    let log = gw.stderr();
    assert!(
        log.contains("account") && log.contains("created at"),
        "{log}"
    );
    assert!(log.contains("answered the HTTP-01 challenge"), "{log}");
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = plain
        .get(format!("http://127.0.0.1:{}/x", env.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308, "the route redirects plain HTTP");
    // the state: account and certificate with its key, owner-only
    use std::os::unix::fs::PermissionsExt;
    let kept = [
        files(&state.join("accounts"), "json"),
        files(&state.join("certificates"), "pem"),
    ]
    .concat();
    assert_eq!(kept.len(), 2, "{kept:?}");
    for f in &kept {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }

    // 2. a restart serves the kept certificate at once: no order, no new account
    drop(gw);
    let gw = env.gateway(&names, "http-01").await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            served(tls, "a.test", root).await.is_ok_and(|s| s.0 == fp)
        })
        .await,
        "the kept certificate is not served after a restart\n{}",
        gw.stderr()
    );
    assert_eq!(cert_field(&gw, "orders").await, 0);
    assert_eq!(orders(&gw, "ok").await, 0.0);
    // and at the CA: still the one order and the one account of the first run
    let ca_log = env.pebble.log();
    assert_eq!(ca_log.matches("POST /order-plz").count(), 1, "{ca_log}");
    assert_eq!(ca_log.matches("POST /sign-me-up").count(), 1, "{ca_log}");
    assert!(gw
        .stderr()
        .contains("serving the certificate for a.test, b.test from"));

    // 3. a renewal (asked for by the operator) under load: the new certificate is served,
    // no request fails, the account is the one made before
    let load = Load::start(&c, format!("https://a.test:{tls}/load"), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    renew(&gw, "a.test").await;
    let renewed = env.replaced("a.test", &fp).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = load.stop().await;
    let renewed =
        renewed.unwrap_or_else(|| panic!("not renewed\n{}\n{}", gw.stderr(), env.pebble.log()));
    assert_eq!(
        failed, 0,
        "requests failed during the renewal ({ok} succeeded)"
    );
    assert!(ok > 10, "{ok}");
    assert_eq!(orders(&gw, "ok").await, 1.0);
    let log = gw.stderr();
    assert!(log.contains("reused from"), "{log}");
    assert!(!log.contains("created at"), "{log}");
    assert_eq!(files(&state.join("accounts"), "json").len(), 1);

    // 4. the CA refuses (its validation of a.test cannot reach the gateway): the error is
    // reported with the CA's text, the certificate in hand keeps serving
    env.pebble.set_address("a.test", "127.0.0.2").await;
    // Pebble puts the valid authorization of step 3 into a new order one time in a hundred
    // even with PEBBLE_AUTHZREUSE=0 (it makes a new one when `rand.Intn(100) > percent`):
    // such an order is issued without asking the gateway anything. The test sees that it
    // was (no validation of a.test in the CA's log) and asks again, at most three times.
    assert!(a_validations(&env.pebble) > 0, "{}", env.pebble.log());
    let mut renewed = renewed;
    let mut text = None;
    for _ in 0..3 {
        let ok_before = orders(&gw, "ok").await;
        let validations = a_validations(&env.pebble);
        renew(&gw, "a.test").await;
        let outcome = poll(Duration::from_secs(60), || async {
            if let Some(e) = cert_field(&gw, "last_error").await.as_str() {
                return Some(Err(e.to_string()));
            }
            (orders(&gw, "ok").await > ok_before).then_some(Ok(()))
        })
        .await;
        match outcome {
            Some(Err(e)) => {
                text = Some(e);
                break;
            }
            Some(Ok(())) => {
                assert_eq!(
                    a_validations(&env.pebble),
                    validations,
                    "issued although the CA validated a.test at 127.0.0.2\n{}\n{}",
                    gw.stderr(),
                    env.pebble.log()
                );
                renewed = env.replaced("a.test", &renewed).await.unwrap();
            }
            None => panic!("no failure reported\n{}\n{}", gw.stderr(), env.pebble.log()),
        }
    }
    let text = text.unwrap_or_else(|| panic!("the CA reused authorizations three times"));
    assert!(
        text.contains("127.0.0.2") && text.contains("refused"),
        "{text}"
    );
    assert!(
        text.contains("urn:ietf:params:acme:error:connection"),
        "{text}"
    );
    assert_eq!(orders(&gw, "error").await, 1.0);
    assert!(cert_field(&gw, "next_try").await.as_i64().is_some());
    assert!(gw.stderr().contains("no certificate for a.test, b.test"));
    assert_eq!(served(tls, "a.test", root).await.unwrap().0, renewed);
    let r = c
        .get(format!("https://a.test:{tls}/after"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // nothing of the failed order is left to answer
    assert_eq!(
        std::fs::read_dir(state.join("challenges")).unwrap().count(),
        0
    );
    env.pebble.clear_address("a.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_sharing_a_state_directory_order_once() {
    // the CA validates on the first instance's ports; the second answers through the files
    // the ordering instance writes into the shared directory
    let env = Env::new(None, None).await;
    let (http_b, tls_b) = (free_port(), free_port());
    let names = ["shared.test"];
    let addr = env.backend.addr.to_string();
    let (a, b) = tokio::join!(
        env.gateway(&names, "http-01"),
        TestGateway::start(|p: &Ports| {
            config(
                p,
                http_b,
                tls_b,
                &names,
                &env.pebble,
                env.state.path(),
                &addr,
                "http-01",
            )
        }),
    );
    let both = eventually(Duration::from_secs(60), || async {
        matches!(
            (served(env.tls, "shared.test", &env.root).await, served(tls_b, "shared.test", &env.root).await),
            (Ok(x), Ok(y)) if x.0 == y.0
        )
    })
    .await;
    assert!(
        both,
        "both instances should serve one certificate\nA:\n{}\nB:\n{}\n{}",
        a.stderr(),
        b.stderr(),
        env.pebble.log()
    );
    let placed = cert_field(&a, "orders").await.as_u64().unwrap()
        + cert_field(&b, "orders").await.as_u64().unwrap();
    assert_eq!(placed, 1, "A:\n{}\nB:\n{}", a.stderr(), b.stderr());
    let created = [a.stderr(), b.stderr()]
        .iter()
        .filter(|l| l.contains("created at"))
        .count();
    assert_eq!(created, 1, "one account");
    // whichever instance orders, the other answers the CA from the shared directory
    let challenges = env.state.path().join("challenges");
    std::fs::write(challenges.join("tok-1_x"), "tok-1_x.thumb").unwrap();
    for port in [env.http, http_b] {
        let url = format!("http://127.0.0.1:{port}/.well-known/acme-challenge/tok-1_x");
        let r = reqwest::get(&url).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "tok-1_x.thumb");
        // a token no order issued goes on to routing (the backend may answer its own)
        let r = reqwest::get(url.replace("tok-1_x", "other")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(env.backend.last().path, "/.well-known/acme-challenge/other");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_renew_on_their_own_before_they_expire() {
    // 30-second certificates: renewed a third of their life before expiry (renew_before 30d
    // is longer than the life), in the background, with no request from anyone
    let env = Env::new(Some(30), None).await;
    let gw = env.gateway(&["short.test"], "http-01").await;
    let (first, _, _) = env.issued(&gw, "short.test").await;
    let field = |f: &'static str| {
        let gw = &gw;
        async move { cert_field(gw, f).await.as_i64().unwrap() }
    };
    let (not_before, not_after, renew_at) = (
        field("not_before").await,
        field("not_after").await,
        field("renew_at").await,
    );
    let life = not_after - not_before;
    assert!((29..=31).contains(&life), "{life}");
    // a third of the life before expiry, less a jitter of at most a tenth of that
    assert!(
        renew_at <= not_after - life / 3 && renew_at >= not_after - life / 3 - life / 30 - 1,
        "{not_before} {renew_at} {not_after}"
    );
    let second = env.replaced("short.test", &first).await;
    assert!(second.is_some(), "not renewed\n{}", gw.stderr());
    assert!(field("not_after").await > not_after);
    assert_eq!(orders(&gw, "ok").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_that_adds_names_orders_them_without_a_restart() {
    let env = Env::new(None, None).await;
    let gw = env.gateway(&["one.test"], "http-01").await;
    let (first, _, _) = env.issued(&gw, "one.test").await;
    assert!(served(env.tls, "two.test", &env.root).await.is_err());
    gw.write_config(&env.yaml(&gw.ports, &["one.test", "two.test"], "http-01"));
    assert_eq!(gw.reload().await.status(), 200);
    // the name already served keeps its certificate until the new one is in hand
    for _ in 0..5 {
        assert!(served(env.tls, "one.test", &env.root).await.is_ok());
    }
    let (fp, sans, _) = env.issued(&gw, "two.test").await;
    assert_eq!(sans, vec!["one.test", "two.test"]);
    assert_ne!(fp, first);
    assert_eq!(served(env.tls, "one.test", &env.root).await.unwrap().0, fp);
    // the report lists the certificate the config asks for, not the one it replaced
    let r = report(&gw).await;
    assert_eq!(r["certificates"].as_array().unwrap().len(), 1, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unwritable_state_directory_is_an_error_report_not_a_crash() {
    // nothing can be locked or kept: no order is placed (instances could not coordinate,
    // and every restart would order again), the reason is reported, the gateway serves on
    let env = Env::new(None, None).await;
    let _locked = Unwritable::new(env.state.path());
    let gw = env.gateway(&["ro.test"], "http-01").await;
    let err = poll(Duration::from_secs(20), || async {
        cert_field(&gw, "last_error")
            .await
            .as_str()
            .map(str::to_string)
    })
    .await
    .unwrap_or_else(|| panic!("no error reported\n{}", gw.stderr()));
    assert!(
        err.contains("lock") && err.contains(&env.state.path().display().to_string()),
        "{err}"
    );
    assert_eq!(orders(&gw, "error").await, 1.0);
    assert_eq!(orders(&gw, "ok").await, 0.0);
    assert!(gw.stderr().contains("cannot create"), "{}", gw.stderr());
    assert!(served(env.tls, "ro.test", &env.root).await.is_err());
    // plain HTTP goes on
    assert_eq!(gw.get("/still").await.status(), 200);
    assert!(
        env.pebble.log().matches("POST /order-plz").count() == 0,
        "no order reached the CA"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_alpn_01_proves_names_on_the_https_listener_alone() {
    // the CA validates on the HTTPS port only: its HTTP-01 port has nothing listening
    let env = Env::new(None, Some(free_port())).await;
    let gw = env.gateway(&["alpn.test"], "tls-alpn-01").await;
    env.issued(&gw, "alpn.test").await;
    assert_eq!(orders(&gw, "ok").await, 1.0);
    // ordinary clients are unaffected by the extra protocol; h2 is still chosen
    let c = client(&env.root, env.tls, &["alpn.test"]);
    let r = c
        .get(format!("https://alpn.test:{}/x", env.tls))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    // with no order in progress, a client offering only acme-tls/1 gets no certificate
    let cfg = tls_client(&env.root, &[b"acme-tls/1"]);
    assert!(
        handshake(env.tls, "alpn.test", cfg).await.is_err(),
        "a validation handshake with no order in progress"
    );
}

#[test]
fn config_errors_name_their_path() {
    let base = |tls: &str, acme: &str| {
        format!(
            "server:\n  listen:\n    - addr: \"127.0.0.1:8443\"\n      tls: {tls}\n{acme}upstreams:\n  u:\n    backends: [\"127.0.0.1:9\"]\nroutes:\n  - id: r\n    match: {{ path_prefix: / }}\n    upstream: u\n"
        )
    };
    let acme =
        "acme:\n  directory: https://127.0.0.1:14000/dir\n  state_dir: /tmp/gatehouse-acme-check\n";
    // names without the CA
    let (code, out) = check_yaml(&base("{ acme: [a.example.com] }", ""));
    assert_ne!(code, 0);
    assert!(
        out.contains("server.listen[0].tls.acme") && out.contains("top-level `acme` section"),
        "{out}"
    );
    // names HTTP-01 cannot prove
    let (code, out) = check_yaml(&base(
        "{ acme: [\"*.example.com\", 10.0.0.1, example.com, example.com] }",
        acme,
    ));
    assert_ne!(code, 0);
    assert!(
        out.contains("server.listen[0].tls.acme[0]") && out.contains("wildcard"),
        "{out}"
    );
    assert!(
        out.contains("server.listen[0].tls.acme[1]") && out.contains("IP address"),
        "{out}"
    );
    assert!(
        out.contains("server.listen[0].tls.acme[3]") && out.contains("listed twice"),
        "{out}"
    );
    // the CA's settings
    let bad = "acme:\n  directory: http://ca.example/dir\n  email: nobody\n  ca_roots: missing.pem\n  state_dir: s\n  renew_before: 0s\n";
    let (code, out) = check_yaml(&base("{ acme: [a.example.com] }", bad));
    assert_ne!(code, 0);
    assert!(out.contains("acme.renew_before"), "{out}");
    let bad = "acme:\n  directory: http://ca.example/dir\n  email: nobody\n  ca_roots: missing.pem\n  state_dir: s\n";
    let (code, out) = check_yaml(&base("{ acme: [a.example.com] }", bad));
    assert_ne!(code, 0);
    assert!(
        out.contains("acme.directory") && out.contains("https://"),
        "{out}"
    );
    assert!(out.contains("acme.email"), "{out}");
    assert!(
        out.contains("acme.ca_roots") && out.contains("missing.pem"),
        "{out}"
    );
    let (code, out) = check_yaml(&base(
        "{ acme: [a.example.com] }",
        "acme:\n  directory: https://ca.example/dir\n  state_dir: s\n  challenge: dns-01\n",
    ));
    assert_ne!(code, 0);
    assert!(out.contains("acme") && out.contains("challenge"), "{out}");
    // valid: ACME names beside certificate files, or alone
    let (code, out) = check_yaml(&base("{ acme: [a.example.com, www.example.com] }", acme));
    assert_eq!(code, 0, "{out}");
}
