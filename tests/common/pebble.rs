//! A real ACME CA on loopback: Debian's `pebble` with `pebble-challtestsrv` as its DNS
//! server (every name resolves to 127.0.0.1 unless a test says otherwise), its HTTPS
//! certificate minted by a test CA. Both processes are stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use super::pki::Ca;

pub struct Pebble {
    children: Vec<Child>,
    pub dir: tempfile::TempDir,
    /// The CA of pebble's own HTTPS certificate (`acme.ca_roots`).
    pub ca: Ca,
    pub ca_roots: PathBuf,
    /// `https://127.0.0.1:P/dir`.
    pub directory: String,
    pub mgmt_port: u16,
    pub dns_mgmt_port: u16,
}

fn wait_port(port: u16, max: Duration) -> bool {
    let deadline = Instant::now() + max;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Pebble {
    /// Starts the DNS server and pebble, validating HTTP-01 on `http_port` and TLS-ALPN-01
    /// on `tls_port` of 127.0.0.1.
    pub fn start(http_port: u16, tls_port: u16) -> Pebble {
        Self::start_with(http_port, tls_port, None)
    }

    /// [`Pebble::start`] issuing certificates valid for `validity` seconds (pebble's default:
    /// five years).
    pub fn start_with(http_port: u16, tls_port: u16, validity: Option<u64>) -> Pebble {
        for bin in ["pebble", "pebble-challtestsrv"] {
            assert!(
                Command::new(bin).arg("-h").output().is_ok(),
                "`{bin}` is needed (Debian package `pebble`; scripts/test.sh installs it)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        ca.leaf("pebble", &["127.0.0.1", "localhost"], false);
        let ca_roots = ca.write_ca("ca.pem");
        let (acme, mgmt, dns, dns_mgmt) = (free_port(), free_port(), free_port(), free_port());
        let log = |name: &str| Stdio::from(std::fs::File::create(dir.path().join(name)).unwrap());
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .unwrap();
        let mut config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": ca.path("pebble.pem"),
            "privateKey": ca.path("pebble.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(v) = validity {
            config["pebble"]["certificateValidityPeriod"] = v.into();
        }
        let cfg = dir.path().join("pebble.json");
        std::fs::write(&cfg, config.to_string()).unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&cfg)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // validate at once, never refuse a good nonce, reuse an authorization as rarely
            // as pebble can (a renewal proves the names again; pebble still reuses a valid
            // one in 1% of new orders at 0: it makes a new one when `rand.Intn(100) > 0`)
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .unwrap();
        let p = Pebble {
            children: vec![dns_server, pebble],
            directory: format!("https://127.0.0.1:{acme}/dir"),
            ca,
            ca_roots,
            mgmt_port: mgmt,
            dns_mgmt_port: dns_mgmt,
            dir,
        };
        let up = wait_port(acme, Duration::from_secs(15))
            && wait_port(mgmt, Duration::from_secs(5))
            && wait_port(dns_mgmt, Duration::from_secs(5));
        assert!(up, "pebble did not start:\n{}", p.log());
        p
    }

    pub fn log(&self) -> String {
        [
            "pebble.log",
            "pebble.err",
            "challtestsrv.log",
            "challtestsrv.err",
        ]
        .iter()
        .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
    }

    fn client(&self) -> reqwest::Client {
        self.ca.client(0, &[])
    }

    /// Pebble's root (PEM): what its certificates chain to.
    pub async fn root_pem(&self) -> String {
        let url = format!("https://127.0.0.1:{}/roots/0", self.mgmt_port);
        let r = self.client().get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// Makes `host` resolve to `ip` for the CA's validation.
    pub async fn set_address(&self, host: &str, ip: &str) {
        self.dns(
            "add-a",
            serde_json::json!({"host": host, "addresses": [ip]}),
        )
        .await;
    }

    /// Back to the default (127.0.0.1) for `host`.
    pub async fn clear_address(&self, host: &str) {
        self.dns("clear-a", serde_json::json!({"host": host})).await;
    }

    /// A request to the DNS server's management API.
    async fn dns(&self, path: &str, body: serde_json::Value) {
        let url = format!("http://127.0.0.1:{}/{path}", self.dns_mgmt_port);
        let r = reqwest::Client::new()
            .post(url)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
