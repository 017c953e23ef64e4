//! The HTTPS listener seen by the standard command-line tools: `openssl s_client` (server
//! name, ALPN, the whole chain served and verified against the root, session resumption that
//! keeps the client certificate), `curl` (HTTP/2, client certificates) and `h2load`
//! (multiplexed HTTP/2 load). Certificates are minted at test time (rcgen): a root, an
//! intermediate that signs the server certificate, and a client CA.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::pki::{fingerprint, Ca};
use common::{free_port, TestGateway, TestUpstream};

struct Setup {
    _gw: TestGateway,
    https: u16,
    root: Ca,
    issuer: Ca,
    clients: Ca,
    leaf: Vec<u8>,
}

async fn setup(up: &TestUpstream) -> Setup {
    let root = Ca::new();
    let issuer = root.intermediate();
    let leaf = issuer.leaf("a", &["a.test"], false);
    let clients = Ca::new();
    let ca_file = clients.write_ca("clients.pem");
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
        default_certificate: 0
        client_auth: {{ mode: optional, ca: \"{ca}\" }}
  access_log: off
admin:
  listen: \"127.0.0.1:{admin}\"
upstreams:
  up: {{ backends: [\"{up}\"] }}
routes:
  - {{ id: ops, match: {{ path_prefix: /ops }}, upstream: up, client_cert: {{ allow: {{ subjects: [\"CN=ops-*\"] }} }} }}
  - {{ id: all, upstream: up }}
",
            proxy = p.proxy,
            admin = p.admin,
            dir = issuer.dir.path().display(),
            ca = ca_file.display(),
            up = up.addr,
        )
    })
    .await;
    let https = *https.lock().unwrap();
    Setup {
        _gw: gw,
        https,
        root,
        issuer,
        clients,
        leaf,
    }
}

/// Runs a command with `input` on stdin and a time limit; returns (success, stdout + stderr).
fn run(cmd: &mut Command, input: &[u8]) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_sees_the_name_protocol_and_whole_chain() {
    let up = TestUpstream::start("up").await;
    let st = setup(&up).await;
    let root = st.root.write_ca("root.pem");
    let (_, out) = run(
        Command::new("openssl").args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", st.https),
            "-servername",
            "a.test",
            "-alpn",
            "h2,http/1.1",
            "-showcerts",
            "-CAfile",
            root.to_str().unwrap(),
            "-verify_hostname",
            "a.test",
        ]),
        b"",
    );
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    // the leaf and the intermediate, verified up to the root the client holds
    assert!(out.contains(" 0 s:CN = a.test"), "{out}");
    assert!(
        out.contains(" 1 s:CN = gatehouse test intermediate"),
        "{out}"
    );
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(!st.issuer.chain.is_empty());
    // the served leaf's fingerprint
    let (_, pem) = run(
        Command::new("sh").arg("-c").arg(format!(
            "openssl s_client -connect 127.0.0.1:{} -servername a.test </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
            st.https
        )),
        b"",
    );
    let want = fingerprint(&st.leaf).to_uppercase();
    assert_eq!(
        pem.trim().rsplit('=').next().unwrap().replace(':', ""),
        want
    );
    // HTTP/1.1 only
    let (_, out) = run(
        Command::new("openssl").args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", st.https),
            "-servername",
            "a.test",
            "-alpn",
            "http/1.1",
        ]),
        b"",
    );
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_http2_with_and_without_a_client_certificate() {
    let up = TestUpstream::start("up").await;
    let st = setup(&up).await;
    let leaf = st.clients.client_leaf("ops", "ops-7", &["ops.corp"]);
    let root = st.root.write_ca("root.pem");
    let curl = |extra: &[&str], path: &str| {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "--http2",
            "--max-time",
            "10",
            "--cacert",
            root.to_str().unwrap(),
            "--resolve",
            &format!("a.test:{}:127.0.0.1", st.https),
        ])
        .args(extra)
        .arg(format!("https://a.test:{}{path}", st.https));
        run(&mut c, b"").1
    };
    assert_eq!(curl(&[], "/open"), "200 2");
    assert_eq!(curl(&[], "/ops"), "403 2");
    let cert = st.clients.path("ops.pem");
    let key = st.clients.path("ops.key");
    let with = [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    assert_eq!(curl(&with, "/ops"), "200 2");
    assert_eq!(
        up.last().header("x-client-cert-fingerprint"),
        Some(fingerprint(&leaf).as_str())
    );
    assert_eq!(up.last().header("x-client-cert-subject"), Some("CN=ops-7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_keeps_its_client_certificate() {
    let up = TestUpstream::start("up").await;
    let st = setup(&up).await;
    st.clients.client_leaf("ops", "ops-1", &[]);
    let root = st.root.write_ca("root.pem");
    let sess = st.clients.path("session.pem");
    let request = b"GET /ops HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    let s_client = |extra: &[&str]| {
        let mut c = Command::new("openssl");
        c.args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", st.https),
            "-servername",
            "a.test",
            "-alpn",
            "http/1.1",
            "-CAfile",
            root.to_str().unwrap(),
            "-cert",
            st.clients.path("ops.pem").to_str().unwrap(),
            "-key",
            st.clients.path("ops.key").to_str().unwrap(),
            "-ign_eof",
        ])
        .args(extra);
        run(&mut c, request).1
    };
    let first = s_client(&["-sess_out", sess.to_str().unwrap()]);
    assert!(first.contains("HTTP/1.1 200"), "{first}");
    assert!(first.contains("New, TLSv1.3"), "{first}");
    let again = s_client(&["-sess_in", sess.to_str().unwrap()]);
    assert!(again.contains("Reused, TLSv1.3"), "{again}");
    assert!(
        again.contains("HTTP/1.1 200"),
        "the resumed session still has its certificate: {again}"
    );
    assert_eq!(up.last().header("x-client-cert-subject"), Some("CN=ops-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_multiplexes_requests_through_the_gateway() {
    let up = TestUpstream::start("up").await;
    let st = setup(&up).await;
    let (ok, out) = run(
        Command::new("h2load").args([
            "-n",
            "400",
            "-c",
            "4",
            "-m",
            "10",
            &format!("https://127.0.0.1:{}/load", st.https),
        ]),
        b"",
    );
    assert!(ok, "{out}");
    assert!(out.contains("Application protocol: h2"), "{out}");
    assert!(out.contains("400 succeeded, 0 failed, 0 errored"), "{out}");
    assert_eq!(up.hits(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_and_ecdsa_certificates_side_by_side() {
    let up = TestUpstream::start("up").await;
    let ca = Ca::new();
    ca.leaf("ec", &["ec.test"], false);
    let rsa_key = ca.path("rsa.key");
    let rsa_cert = ca.path("rsa.pem");
    let (ok, out) = run(
        Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=rsa.test",
            "-addext",
            "subjectAltName=DNS:rsa.test",
            "-keyout",
            rsa_key.to_str().unwrap(),
            "-out",
            rsa_cert.to_str().unwrap(),
        ]),
        b"",
    );
    assert!(ok, "{out}");
    let https = Mutex::new(0u16);
    let _gw = TestGateway::start(|p| {
        let port = free_port();
        *https.lock().unwrap() = port;
        format!(
            "server:\n  listen:\n    - \"127.0.0.1:{}\"\n    - addr: \"127.0.0.1:{port}\"\n      tls:\n        certificates:\n          - {{ cert: \"{dir}/ec.pem\", key: \"{dir}/ec.key\" }}\n          - {{ cert: \"{dir}/rsa.pem\", key: \"{dir}/rsa.key\" }}\n  access_log: off\nadmin:\n  listen: \"127.0.0.1:{}\"\nupstreams:\n  up: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ id: all, upstream: up }}\n",
            p.proxy,
            p.admin,
            up.addr,
            dir = ca.dir.path().display()
        )
    })
    .await;
    let https = *https.lock().unwrap();
    for (name, bits) in [("rsa.test", "2048"), ("ec.test", "256")] {
        let (_, out) = run(
            Command::new("openssl").args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{https}"),
                "-servername",
                name,
            ]),
            b"",
        );
        assert!(
            out.contains(&format!("Server public key is {bits} bit")),
            "{name}: {out}"
        );
        assert!(
            out.contains(&format!("subject=CN = {name}")),
            "{name}: {out}"
        );
    }
}
