//! HTTPS listeners through the real binary: certificates minted at test time (rcgen), chosen
//! by SNI; HTTP/2 and HTTP/1.1 by ALPN; certificates swapped by a reload while connections
//! stay open; broken certificate files as config errors; a stalled handshake cut at its
//! timeout. Clients: reqwest with rustls (trusting only the test CA).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::pki::Ca;
use common::{check_yaml, free_port, TestGateway, TestUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tls_listener(https: u16, dir: &Path, certs: &[&str], extra: &str) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|c| {
            format!(
                "{{ cert: \"{}\", key: \"{}\" }}",
                dir.join(format!("{c}.pem")).display(),
                dir.join(format!("{c}.key")).display()
            )
        })
        .collect();
    format!(
        "    - addr: \"127.0.0.1:{https}\"\n      tls:\n        certificates: [{}]\n{extra}",
        list.join(", ")
    )
}

/// A gateway with a plain listener and an HTTPS one (its port is returned) in front of `up`.
async fn gateway(ca: &Ca, up: &TestUpstream, certs: &[&str], extra: &str) -> (TestGateway, u16) {
    let https = Mutex::new(0u16);
    let gw = TestGateway::start(|p| {
        let port = free_port();
        *https.lock().unwrap() = port;
        format!(
            "server:\n  listen:\n    - \"127.0.0.1:{}\"\n{}  threads: 2\n  grace_period: 1s\n  access_log: off\nadmin:\n  listen: \"127.0.0.1:{}\"\nupstreams:\n  up:\n    backends: [\"{}\"]\nroutes:\n  - {{ id: all, upstream: up }}\n",
            p.proxy,
            tls_listener(port, ca.dir.path(), certs, extra),
            p.admin,
            up.addr
        )
    })
    .await;
    let port = *https.lock().unwrap();
    (gw, port)
}

/// GET `url`: its status and HTTP version.
async fn status_and_version(c: &reqwest::Client, url: &str) -> (u16, reqwest::Version) {
    let r = c.get(url).send().await.unwrap();
    (r.status().as_u16(), r.version())
}

fn peer_cert(r: &reqwest::Response) -> Vec<u8> {
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_and_alpn_the_protocol() {
    let ca = Ca::new();
    let a = ca.leaf("a", &["a.test"], false);
    let wild = ca.leaf("wild", &["*.wild.test"], false);
    let up = TestUpstream::start("up").await;
    let (gw, https) = gateway(&ca, &up, &["a", "wild"], "        default_certificate: 0\n").await;
    let names = ["a.test", "x.wild.test", "a.b.wild.test", "other.test"];
    let client = ca.client(https, &names);

    // exact name, HTTP/2 by ALPN; the backend hears that the client used HTTPS
    let r = client
        .get(format!("https://a.test:{https}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(peer_cert(&r), a);
    assert_eq!(up.last().header("x-forwarded-proto"), Some("https"));
    // one-label wildcard
    let r = client
        .get(format!("https://x.wild.test:{https}/"))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), peer_cert(&r)), (200, wild.clone()));
    // two labels below the wildcard, or an unknown name: the default certificate (a.test),
    // which the client rejects for that name
    for host in ["a.b.wild.test", "other.test"] {
        let e = client.get(format!("https://{host}:{https}/")).send().await;
        assert!(e.is_err(), "{host} must not verify");
    }
    // HTTP/1.1 over TLS, kept alive
    let h1 = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .resolve("a.test", SocketAddr::from(([127, 0, 0, 1], https)))
        .http1_only()
        .build()
        .unwrap();
    let url = format!("https://a.test:{https}/h1");
    for _ in 0..3 {
        let got = status_and_version(&h1, &url).await;
        assert_eq!(got, (200, reqwest::Version::HTTP_11));
    }
    // the plain listener still speaks plain HTTP
    assert_eq!(gw.get("/plain").await.status(), 200);
    assert_eq!(up.last().header("x-forwarded-proto"), Some("http"));
    // handshakes and certificate expiry in the metrics
    let m = gw.metrics().await;
    let listener = format!("listener=\"127.0.0.1:{https}\"");
    for cert in ["a.test", "*.wild.test"] {
        let series = format!(
            "gatehouse_tls_certificate_expiry_seconds{{certificate=\"{cert}\",{listener}}}"
        );
        assert!(m.contains(&series), "missing {series}\n{m}");
    }
    let ok = format!("gatehouse_tls_handshakes_total{{{listener},result=\"ok\"}}");
    let error =
        format!("gatehouse_tls_handshakes_total{{{listener},result=\"certificate_refused\"}}");
    assert!(gw.metric(&ok).await >= 3.0);
    let h2 = format!("gatehouse_tls_sessions_total{{{listener},protocol=\"h2\",version=\"1.3\"}}");
    let h1 =
        format!("gatehouse_tls_sessions_total{{{listener},protocol=\"http/1.1\",version=\"1.3\"}}");
    assert!(gw.metric(&h2).await >= 1.0, "{m}");
    assert!(gw.metric(&h1).await >= 1.0, "{m}");
    assert!(gw.metric("gatehouse_http2_streams_total").await >= 1.0);
    let counted = common::eventually(Duration::from_secs(3), || async {
        gw.metric(&error).await >= 1.0
    })
    .await;
    assert!(
        counted,
        "the handshakes whose certificate the client rejected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_unknown_names_are_refused() {
    let ca = Ca::new();
    ca.leaf("a", &["a.test"], false);
    let up = TestUpstream::start("up").await;
    let (gw, https) = gateway(&ca, &up, &["a"], "").await;
    let client = ca.client(https, &["a.test", "b.test"]);
    assert!(client
        .get(format!("https://b.test:{https}/"))
        .send()
        .await
        .is_err());
    let r = client
        .get(format!("https://a.test:{https}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.hits(),
        1,
        "the refused handshake never reached the backend"
    );
    let refused = format!(
        "gatehouse_tls_handshakes_total{{listener=\"127.0.0.1:{https}\",result=\"no_certificate\"}}"
    );
    assert_eq!(gw.metric(&refused).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_swap_on_reload_while_connections_stay_open() {
    let ca = Ca::new();
    let old = ca.leaf("a", &["a.test"], false);
    let up = TestUpstream::start("up").await;
    let (gw, https) = gateway(&ca, &up, &["a"], "").await;
    let kept = ca.client(https, &["a.test"]);
    let r = kept
        .get(format!("https://a.test:{https}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(peer_cert(&r), old);

    // new files (renamed into place), same config text: a reload applies them
    let new = ca.leaf("a", &["a.test"], false);
    let admin = |path: &str| gw.client.post(gw.admin_url(path));
    let r: serde_json::Value = admin("/reload").send().await.unwrap().json().await.unwrap();
    // the file watcher may have applied the new files first
    assert!(r["result"] == "ok" || r["result"] == "unchanged", "{r}");
    let fresh = ca.client(https, &["a.test"]);
    let r = fresh
        .get(format!("https://a.test:{https}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        peer_cert(&r),
        new,
        "a new connection gets the new certificate"
    );
    // the connection opened before the swap keeps working with its certificate
    for _ in 0..3 {
        let r = kept
            .get(format!("https://a.test:{https}/"))
            .send()
            .await
            .unwrap();
        assert_eq!((r.status().as_u16(), peer_cert(&r)), (200, old.clone()));
    }

    // a broken key file: the reload is rejected with its path, the new certificate stays
    std::fs::write(ca.path("a.key"), "not a key").unwrap();
    let r = admin("/reload").send().await.unwrap();
    assert_eq!(r.status(), 422);
    let r: serde_json::Value = r.json().await.unwrap();
    let msg = r["errors"][0].as_str().unwrap();
    assert!(
        msg.starts_with("server.listen[1].tls.certificates[0]: "),
        "{msg}"
    );
    assert!(msg.contains("no PEM private key"), "{msg}");
    let again = ca.client(https, &["a.test"]);
    let r = again
        .get(format!("https://a.test:{https}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(peer_cert(&r), new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_cut_at_its_timeout() {
    let ca = Ca::new();
    ca.leaf("a", &["a.test"], false);
    let up = TestUpstream::start("up").await;
    let (gw, https) = gateway(&ca, &up, &["a"], "        handshake_timeout: 500ms\n").await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", https))
        .await
        .unwrap();
    // the first bytes of a ClientHello record, then nothing
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the gateway must close the connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(started.elapsed() < Duration::from_secs(5));
    let listener = format!("listener=\"127.0.0.1:{https}\"");
    let timeouts = format!("gatehouse_tls_handshakes_total{{{listener},result=\"timeout\"}}");
    // counted as the connection is dropped: the client may see the close first
    let counted = gw
        .metric_reaches(&timeouts, 1.0, Duration::from_secs(3))
        .await;
    assert!(counted, "{}", gw.metrics().await);
}

#[test]
fn broken_certificate_files_are_config_errors_with_their_path() {
    let ca = Ca::new();
    ca.leaf("a", &["a.test"], false);
    ca.leaf("b", &["b.test"], false);
    ca.leaf("old", &["old.test"], true);
    // a's certificate with b's key
    std::fs::copy(ca.path("b.key"), ca.path("mixed.key")).unwrap();
    std::fs::copy(ca.path("a.pem"), ca.path("mixed.pem")).unwrap();
    let dir = ca.dir.path();
    let cfg = |certs: &[&str], extra: &str| {
        format!(
            "server:\n  listen:\n{}admin:\n  listen: \"127.0.0.1:{}\"\nupstreams:\n  up: {{ backends: [\"127.0.0.1:1\"] }}\nroutes:\n  - {{ id: all, upstream: up }}\n",
            tls_listener(free_port(), dir, certs, extra),
            free_port()
        )
    };
    let (code, out) = check_yaml(&cfg(&["a", "b"], "        default_certificate: 1\n"));
    assert_eq!(code, 0, "{out}");
    for (certs, extra, expect) in [
        (vec!["mixed"], "", "server.listen[0].tls.certificates[0]: "),
        (vec!["mixed"], "", "does not match the certificate"),
        (
            vec!["a", "old"],
            "",
            "server.listen[0].tls.certificates[1]: ",
        ),
        (vec!["old"], "", "expired"),
        (vec!["missing"], "", "cannot read"),
        (
            vec!["a"],
            "        default_certificate: 3\n",
            "server.listen[0].tls.default_certificate: ",
        ),
        (
            vec!["a"],
            "        alpn: [h3]\n",
            "server.listen[0].tls.alpn[0]: `h3`",
        ),
        (
            vec!["a"],
            "        min_version: \"1.1\"\n",
            "server.listen[0].tls.min_version: ",
        ),
    ] {
        let (code, out) = check_yaml(&cfg(&certs, extra));
        assert_eq!(code, 1, "{certs:?} {extra}: {out}");
        assert!(
            out.contains(expect),
            "{certs:?} {extra}: expected `{expect}` in\n{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_replies_and_the_access_log_work_over_http2() {
    let ca = Ca::new();
    ca.leaf("a", &["a.test"], false);
    let up = TestUpstream::start("up").await;
    let https = Mutex::new(0u16);
    let log = Mutex::new(PathBuf::new());
    let gw = TestGateway::start(|p| {
        let port = free_port();
        *https.lock().unwrap() = port;
        *log.lock().unwrap() = p.access_log.clone();
        format!(
            "server:\n  listen:\n    - \"127.0.0.1:{}\"\n{}  access_log: {}\nadmin:\n  listen: \"127.0.0.1:{}\"\nupstreams:\n  up:\n    backends: [\"{}\"]\nroutes:\n  - id: limited\n    upstream: up\n    plugins:\n      - headers: {{ response: {{ set: {{ X-Served-By: gatehouse }} }} }}\n      - rate_limit: {{ key: global, requests: 2, per: 1h }}\n",
            p.proxy,
            tls_listener(port, ca.dir.path(), &["a"], ""),
            p.access_log.display(),
            p.admin,
            up.addr
        )
    })
    .await;
    let https = *https.lock().unwrap();
    let client = ca.client(https, &["a.test"]);
    for i in 0..3 {
        let r = client
            .get(format!("https://a.test:{https}/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.headers()["x-served-by"], "gatehouse", "request {i}");
        assert!(r.headers().contains_key("x-request-id"));
        let status = r.status().as_u16();
        if i < 2 {
            assert_eq!(status, 200);
        } else {
            assert_eq!(status, 429);
            let body: serde_json::Value = r.json().await.unwrap();
            assert!(
                body["error"].is_string() && body["request_id"].is_string(),
                "{body}"
            );
        }
    }
    assert_eq!(up.hits(), 2);
    let path = log.lock().unwrap().clone();
    assert!(
        common::eventually(Duration::from_secs(3), || async {
            std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() >= 3)
        })
        .await
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("\"status\":429") && l.contains("\"route\":\"limited\"")),
        "{text}"
    );
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["protocol"], "HTTP/2.0", "{line}");
    assert!(line["tls"].as_str().unwrap().starts_with("TLS"), "{line}");
    assert!(
        gw.metric("gatehouse_ratelimit_decisions_total{result=\"limited\",route=\"limited\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificate_files_are_picked_up_without_a_trigger() {
    let ca = Ca::new();
    let old = ca.leaf("a", &["a.test"], false);
    let up = TestUpstream::start("up").await;
    let (gw, https) = gateway(&ca, &up, &["a"], "").await;
    let r = ca
        .client(https, &["a.test"])
        .get(format!("https://a.test:{https}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(peer_cert(&r), old);
    let new = ca.leaf("a", &["a.test"], false);
    let seen = common::eventually(Duration::from_secs(5), || async {
        let c = ca.client(https, &["a.test"]);
        match c.get(format!("https://a.test:{https}/")).send().await {
            Ok(r) => peer_cert(&r) == new,
            Err(_) => false,
        }
    })
    .await;
    assert!(seen, "the new certificate was not served: {}", gw.stderr());
    assert_eq!(
        gw.metric("gatehouse_config_reloads_total{result=\"ok\",trigger=\"file\"}")
            .await,
        1.0,
        "one reload for the two renamed files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_listener_speaks_http2_with_prior_knowledge_and_http1() {
    let up = TestUpstream::start("up").await;
    let plain = Mutex::new(0u16);
    let gw = TestGateway::start(|p| {
        let port = free_port();
        *plain.lock().unwrap() = port;
        format!(
            "server:\n  listen:\n    - \"127.0.0.1:{}\"\n    - {{ addr: \"127.0.0.1:{port}\", h2c: true }}\n  access_log: off\nadmin:\n  listen: \"127.0.0.1:{}\"\nupstreams:\n  up:\n    backends: [\"{}\"]\nroutes:\n  - {{ id: all, upstream: up }}\n",
            p.proxy, p.admin, up.addr
        )
    })
    .await;
    let port = *plain.lock().unwrap();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/x");
    for _ in 0..3 {
        let got = status_and_version(&h2, &url).await;
        assert_eq!(got, (200, reqwest::Version::HTTP_2));
    }
    assert_eq!(up.last().header("x-forwarded-proto"), Some("http"));
    let r = gw
        .client
        .get(format!("http://127.0.0.1:{port}/y"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_11)
    );
    // HTTP/2 prior knowledge on a listener without h2c is not HTTP/2
    assert!(h2.get(gw.url("/z")).send().await.is_err());
    // h2c is for plain listeners
    let ca = Ca::new();
    ca.leaf("a", &["a.test"], false);
    let listener = tls_listener(free_port(), ca.dir.path(), &["a"], "")
        .replace("      tls:", "      h2c: true\n      tls:");
    let (code, out) = check_yaml(&format!(
        "server:\n  listen:\n{listener}upstreams:\n  up: {{ backends: [\"127.0.0.1:1\"] }}\nroutes:\n  - {{ id: all, upstream: up }}\n"
    ));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("server.listen[0].h2c: h2c is for plain listeners"),
        "{out}"
    );
    // a typo inside a listener names the field
    let listener = tls_listener(
        free_port(),
        ca.dir.path(),
        &["a"],
        "        min_versoin: \"1.3\"\n",
    );
    let (code, out) = check_yaml(&format!(
        "server:\n  listen:\n{listener}upstreams:\n  up: {{ backends: [\"127.0.0.1:1\"] }}\nroutes:\n  - {{ id: all, upstream: up }}\n"
    ));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("server.listen[0]: tls.min_versoin: unknown field `min_versoin`"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_count_against_max_connections() {
    let ca = Ca::new();
    ca.leaf("a", &["a.test"], false);
    let up = TestUpstream::start("up").await;
    // server-level keys after the listener's tls block; the timeout leaves the refused
    // attempt below seconds of margin on a loaded machine (CI runs it beside other tests)
    let extra = "        handshake_timeout: 3s\n  limits: { max_connections: 2 }\n";
    let (_gw, https) = gateway(&ca, &up, &["a"], extra).await;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", https))
            .await
            .unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = ca.client(https, &["a.test"]);
    let url = format!("https://a.test:{https}/");
    assert!(
        client.get(&url).send().await.is_err(),
        "two handshakes in progress fill max_connections"
    );
    // once they are cut at the handshake timeout, there is room again
    let served = common::eventually(Duration::from_secs(8), || async {
        ca.client(https, &["a.test"])
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(served);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_http2_stream_finish() {
    let ca = Ca::new();
    ca.leaf("a", &["a.test"], false);
    let up = TestUpstream::start("up").await;
    up.set_delay(Duration::from_millis(600));
    let (mut gw, https) = gateway(&ca, &up, &["a"], "").await;
    let client = ca.client(https, &["a.test"]);
    let url = format!("https://a.test:{https}/slow");
    let inflight = tokio::spawn({
        let client = client.clone();
        let url = url.clone();
        async move {
            client
                .get(url)
                .send()
                .await
                .map(|r| (r.status().as_u16(), r.version()))
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal(libc::SIGTERM);
    let r = inflight
        .await
        .unwrap()
        .expect("the in-flight stream completes");
    assert_eq!(r, (200, reqwest::Version::HTTP_2));
    assert!(
        gw.wait_exit(Duration::from_secs(10)).is_some(),
        "exits after the grace period"
    );
    assert!(ca
        .client(https, &["a.test"])
        .get(&url)
        .send()
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_swaps_under_http2_and_http1_load_fail_nothing() {
    let ca = Ca::new();
    ca.leaf("a", &["a.test"], false);
    let up = TestUpstream::start("up").await;
    let (gw, https) = gateway(&ca, &up, &["a"], "").await;
    let url = format!("https://a.test:{https}/load");
    let h2 = ca.client(https, &["a.test"]);
    let h1 = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .resolve("a.test", SocketAddr::from(([127, 0, 0, 1], https)))
        .http1_only()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let load_h2 = common::Load::start(&h2, url.clone(), 4);
    let load_h1 = common::Load::start(&h1, url.clone(), 4);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let new = ca.leaf("a", &["a.test"], false);
        let r = gw.reload().await;
        assert_eq!(r.status(), 200);
        // a new connection sees the new certificate (the file watcher may apply it first)
        let seen = common::eventually(Duration::from_secs(5), || async {
            let fresh = ca.client(https, &["a.test"]);
            fresh
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200 && peer_cert(&r) == new)
        })
        .await;
        assert!(seen, "new connections did not get the new certificate");
    }
    let (ok2, failed2) = load_h2.stop().await;
    let (ok1, failed1) = load_h1.stop().await;
    assert_eq!(
        (failed2, failed1),
        (0, 0),
        "requests failed during the swaps"
    );
    assert!(ok2 > 0 && ok1 > 0, "{ok2} {ok1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_open_handshakes_is_bounded_and_cut() {
    let ca = Ca::new();
    ca.leaf("a", &["a.test"], false);
    let up = TestUpstream::start("up").await;
    let extra = "        handshake_timeout: 1s\n  limits: { max_connections: 200 }\n";
    let (gw, https) = gateway(&ca, &up, &["a"], extra).await;
    let rss = || gw.rss_kib();
    let rss_before = rss();
    // 1,000 connections that send half a ClientHello and stop
    let mut held = Vec::new();
    for _ in 0..1000 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", https)).await {
            let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
            held.push(s);
        }
    }
    let active = "gatehouse_connections_active{listener=\"proxy\"}";
    let mut most = 0.0f64;
    for _ in 0..10 {
        most = most.max(gw.metric(active).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(most <= 200.0, "{most} connections served at once");
    // all cut at the handshake timeout: the server closes every one of them
    let closed = gw
        .metric_reaches(active, 0.0, Duration::from_secs(10))
        .await;
    assert!(closed, "half-open handshakes were not all cut");
    let listener = format!("listener=\"127.0.0.1:{https}\"");
    let timeouts = format!("gatehouse_tls_handshakes_total{{{listener},result=\"timeout\"}}");
    assert!(gw.metric(&timeouts).await >= 150.0);
    drop(held);
    let r = ca
        .client(https, &["a.test"])
        .get(format!("https://a.test:{https}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        rss() < rss_before + 100 * 1024,
        "memory grew by {} KiB",
        rss() - rss_before
    );
}
