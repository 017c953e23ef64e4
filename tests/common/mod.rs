//! Test harness: real backends ([`TestUpstream`]) and the real gateway binary ([`TestGateway`])
//! on 127.0.0.1 with ephemeral ports. Every wait is a poll with a deadline; every process and
//! task started here is stopped on drop.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod pebble;
pub mod pki;
pub mod redis;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;

/// What a [`TestUpstream`] saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, Vec<String>>,
    /// The request body as received (its first 256 KiB).
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

#[derive(Default)]
struct Behaviour {
    delay_ms: AtomicU64,
    status: AtomicU64,
    headers: Mutex<Vec<(String, String)>>,
    body_size: AtomicUsize,
}

struct Shared {
    name: String,
    hits: AtomicUsize,
    body_bytes: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    behaviour: Behaviour,
}

/// A real HTTP backend on 127.0.0.1: answers `GET /health` with 200 and everything else with
/// a body naming the backend; counts hits (not health checks) and records requests. Latency
/// and status can be injected; `stop` closes the listener and every open connection.
pub struct TestUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Mutex<Option<tokio::task::JoinSet<()>>>,
    /// Serves HTTPS with this config (HTTP/2 when its ALPN offers h2).
    tls: Option<Arc<rustls::ServerConfig>>,
    /// While stopped: the port, bound but not listening, so connecting is refused and no other
    /// test's listener can take the port over.
    reserved: Mutex<Option<tokio::net::TcpSocket>>,
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/health" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok"))));
    }
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let mut seen = Seen {
        version: format!("{:?}", req.version()),
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers,
        body: Vec::new(),
    };
    // count body bytes as they arrive, so a body cut short still shows what got through
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    shared.body_bytes.fetch_add(d.len(), Ordering::SeqCst);
                    let room = (256usize << 10).saturating_sub(seen.body.len());
                    seen.body.extend_from_slice(&d[..d.len().min(room)]);
                }
            }
            Err(_) => {
                return Ok(Response::new(Full::new(Bytes::new())));
            }
        }
    }
    shared.hits.fetch_add(1, Ordering::SeqCst);
    shared.seen.lock().unwrap().push(seen);
    let delay = shared.behaviour.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = match shared.behaviour.status.load(Ordering::SeqCst) {
        0 => 200,
        s => s as u16,
    };
    let size = shared.behaviour.body_size.load(Ordering::SeqCst);
    let body = if size > 0 {
        Bytes::from(vec![b'b'; size])
    } else {
        Bytes::from(shared.name.clone())
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert("x-backend", shared.name.parse().unwrap());
    // which upstream response this is (1-based), to tell cached from fresh
    let n = shared.hits.load(Ordering::SeqCst);
    resp.headers_mut()
        .insert("x-hit", n.to_string().parse().unwrap());
    for (k, v) in shared.behaviour.headers.lock().unwrap().iter() {
        resp.headers_mut().append(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    Ok(resp)
}

impl TestUpstream {
    /// Starts a backend named `name` on an ephemeral port.
    pub async fn start(name: &str) -> TestUpstream {
        Self::start_with_tls(name, None).await
    }

    /// A backend that speaks TLS with `config` (HTTP/1.1, or HTTP/2 by ALPN).
    pub async fn start_tls(name: &str, config: rustls::ServerConfig) -> TestUpstream {
        Self::start_with_tls(name, Some(Arc::new(config))).await
    }

    async fn start_with_tls(name: &str, tls: Option<Arc<rustls::ServerConfig>>) -> TestUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let u = TestUpstream {
            addr,
            shared: Arc::new(Shared {
                name: name.to_string(),
                hits: AtomicUsize::new(0),
                body_bytes: AtomicUsize::new(0),
                seen: Mutex::new(Vec::new()),
                behaviour: Behaviour::default(),
            }),
            tasks: Mutex::new(None),
            tls,
            reserved: Mutex::new(None),
        };
        u.serve(listener);
        u
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let mut set = tokio::task::JoinSet::new();
        let shared = Arc::clone(&self.shared);
        let conns: Arc<Mutex<tokio::task::JoinSet<()>>> =
            Arc::new(Mutex::new(tokio::task::JoinSet::new()));
        let conns2 = Arc::clone(&conns);
        let tls = self.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        set.spawn(async move {
            // holding the connection set here: aborting this task drops (aborts) them all
            let _guard = conns2;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = Arc::clone(&shared);
                let tls = tls.clone();
                _guard.lock().unwrap().spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| handle(Arc::clone(&shared), req));
                    let b = Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = b.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            // a failed handshake (e.g. a rejected client) just ends here
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = b.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                    }
                });
            }
        });
        drop(conns);
        *self.tasks.lock().unwrap() = Some(set);
    }

    /// Closes the listener and every connection (the backend is "killed").
    pub async fn stop(&self) {
        let set = self.tasks.lock().unwrap().take();
        if let Some(mut set) = set {
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
        // hold the port (bound, not listening): connections are refused, as for a dead
        // backend, and the port is not handed to another listener meanwhile
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_reuseaddr(true).unwrap();
        if sock.bind(self.addr).is_ok() {
            *self.reserved.lock().unwrap() = Some(sock);
        }
    }

    /// Starts serving again on the same port.
    pub async fn restart(&self) {
        drop(self.reserved.lock().unwrap().take());
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.set_reuseaddr(true).unwrap();
            match sock.bind(self.addr) {
                Ok(()) => break sock.listen(128).unwrap(),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebinding {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }
    /// Request body bytes received, complete requests or not.
    pub fn body_bytes(&self) -> usize {
        self.shared.body_bytes.load(Ordering::SeqCst)
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }
    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("no request reached the backend")
    }
    pub fn set_delay(&self, d: Duration) {
        self.shared
            .behaviour
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
    /// Response headers added to every answer (replacing earlier ones set here).
    pub fn set_headers(&self, h: &[(&str, &str)]) {
        *self.shared.behaviour.headers.lock().unwrap() = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }
    /// Answer with a body of this many bytes instead of the name (0 = the name).
    pub fn set_body_size(&self, n: usize) {
        self.shared.behaviour.body_size.store(n, Ordering::SeqCst);
    }
    pub fn set_status(&self, s: u16) {
        self.shared
            .behaviour
            .status
            .store(u64::from(s), Ordering::SeqCst);
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        if let Ok(mut g) = self.tasks.lock() {
            if let Some(mut set) = g.take() {
                set.abort_all();
            }
        }
    }
}

/// A free port on 127.0.0.1 (bound then released; `TestGateway` retries if it is taken),
/// never one this test process handed out before: Pingora binds with SO_REUSEPORT, so two
/// gateways of concurrent tests given the same port would both listen on it and share its
/// connections.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no fresh port in 100 tries");
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gatehouse")
}

/// Runs `gatehouse check -c <yaml in a temp file>`: (exit code, stdout + stderr).
pub fn check_yaml(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.yaml");
    std::fs::write(&path, yaml).unwrap();
    check_file(&path)
}

/// Runs `gatehouse check -c FILE`.
pub fn check_file(path: &Path) -> (i32, String) {
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The real gateway binary on ephemeral ports; killed on drop.
pub struct TestGateway {
    child: Child,
    pub ports: Ports,
    pub port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

/// Ports handed to the config template.
#[derive(Debug, Clone)]
pub struct Ports {
    pub proxy: u16,
    pub admin: u16,
    /// A file in the gateway's temp dir for the access log.
    pub access_log: PathBuf,
}

impl TestGateway {
    /// Starts the gateway with the config `yaml(ports)` and waits until `/ready` answers 200.
    pub async fn start(yaml: impl Fn(&Ports) -> String) -> TestGateway {
        Self::start_with(yaml, true).await
    }

    /// Like `start`; with `wait_ready: false` it returns once `/health` answers.
    pub async fn start_with(yaml: impl Fn(&Ports) -> String, wait_ready: bool) -> TestGateway {
        Self::start_binary(Path::new(bin()), yaml, wait_ready).await
    }

    /// Like `start_with`, running another build of gatehouse (e.g. an example with its own
    /// plugins).
    pub async fn start_binary(
        binary: &Path,
        yaml: impl Fn(&Ports) -> String,
        wait_ready: bool,
    ) -> TestGateway {
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let ports = Ports {
                proxy: free_port(),
                admin: free_port(),
                access_log: dir.path().join("access.log"),
            };
            let cfg = dir.path().join("gatehouse.yaml");
            std::fs::write(&cfg, yaml(&ports)).unwrap();
            let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
            let stdout = std::fs::File::create(dir.path().join("stdout.log")).unwrap();
            let child = Command::new(binary)
                .args(["run", "-c"])
                .arg(&cfg)
                .env("RUST_LOG", "info")
                .stdout(Stdio::from(stdout))
                .stderr(Stdio::from(stderr))
                .spawn()
                .unwrap();
            let mut gw = TestGateway {
                child,
                ports: ports.clone(),
                port: ports.proxy,
                admin_port: ports.admin,
                dir,
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap(),
            };
            let path = if wait_ready { "/ready" } else { "/health" };
            match gw.wait_admin(path, Duration::from_secs(15)).await {
                Ok(()) => {
                    // the proxy listener starts beside the admin one; a port taken between
                    // free_port() and the bind makes the gateway exit: check it is up
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    let alive = matches!(gw.child.try_wait(), Ok(None));
                    let listening = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
                        .await
                        .is_ok();
                    if alive && listening {
                        return gw;
                    }
                    last_err = format!(
                        "proxy listener not up (alive {alive})\nstderr:\n{}",
                        gw.stderr()
                    );
                }
                Err(e) => last_err = format!("{e}\nstderr:\n{}", gw.stderr()),
            }
        }
        panic!("gateway did not start: {last_err}");
    }

    async fn wait_admin(&mut self, path: &str, max: Duration) -> Result<(), String> {
        let deadline = Instant::now() + max;
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("gateway exited: {status}"));
            }
            if let Ok(r) = self
                .client
                .get(&url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
            {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("{path} not 200 within {max:?}"))
    }

    /// Starts a second gateway process on the same config with `run --upgrade` (it waits for
    /// this one's listening sockets on `server.upgrade_sock`). Send SIGQUIT to `self` next.
    pub fn spawn_upgrade(&self) -> Child {
        let stderr = std::fs::File::create(self.dir.path().join("stderr-upgrade.log")).unwrap();
        Command::new(bin())
            .args(["run", "--upgrade", "-c"])
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap()
    }

    /// The config file the gateway runs on.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gatehouse.yaml")
    }
    /// Replaces the config file by writing a temp file and renaming it over (atomic).
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.dir.path().join("gatehouse.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }
    /// Asks for a reload (`POST /reload` on the admin listener, no token): its answer.
    pub async fn reload(&self) -> reqwest::Response {
        self.client
            .post(self.admin_url("/reload"))
            .send()
            .await
            .unwrap()
    }
    /// The access log's JSON entries (waits, at most 5 s, until there are at least `n`).
    pub async fn log_entries(&self, n: usize) -> Vec<serde_json::Value> {
        let path = self.dir.path().join("access.log");
        let read = || {
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .collect::<Vec<_>>()
        };
        eventually(Duration::from_secs(5), || async { read().len() >= n }).await;
        read()
    }
    /// Value of a metric line that starts with `prefix` (e.g. `name{labels}`), or 0.
    /// Waits (at most `max`) until [`Self::metric`] of `prefix` reads `value`; whether it did.
    pub async fn metric_reaches(&self, prefix: &str, value: f64, max: Duration) -> bool {
        eventually(max, || async { self.metric(prefix).await == value }).await
    }

    pub async fn metric(&self, prefix: &str) -> f64 {
        let m = self.metrics().await;
        m.lines()
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    /// The status of GET `path` on the admin listener.
    pub async fn get_admin(&self, path: &str) -> u16 {
        self.client
            .get(self.admin_url(path))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }
    /// The body of GET `path` on the admin listener.
    pub async fn get_admin_text(&self, path: &str) -> String {
        self.client
            .get(self.admin_url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
    /// The gateway process's resident memory (VmRSS), KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    /// Sends a signal to the gateway process.
    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }
    /// Waits up to `max` for the process to exit; its exit status if it did.
    pub fn wait_exit(&mut self, max: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + max;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends raw bytes on a new connection and reads until the server closes it or `max` passes.
/// Returns what was read (lossy UTF-8).
pub async fn raw_exchange(port: u16, data: &[u8], max: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(data).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(max, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `f` every 50 ms until it returns true or `max` passes; returns the last result.
pub async fn eventually<F, Fut>(max: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + max;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal config with one upstream `up` over `backends` and the given routes YAML.
pub fn simple_config(p: &Ports, upstreams: &str, routes: &str) -> String {
    format!(
        "server:\n  listen: [\"127.0.0.1:{}\"]\n  threads: 2\n  grace_period: 1s\n  access_log: {}\nadmin:\n  listen: \"127.0.0.1:{}\"\nupstreams:\n{upstreams}\nroutes:\n{routes}\n",
        p.proxy,
        p.access_log.display(),
        p.admin
    )
}

/// A steady load: `clients` loops sending GET `url` back to back (bounded to 60 s) until
/// [`Load::stop`]; counts 200s and everything else.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(client: &reqwest::Client, url: String, clients: usize) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failed, c, url) = (
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    client.clone(),
                    url.clone(),
                );
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                        match c.get(&url).send().await {
                            Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::SeqCst),
                            other => {
                                eprintln!("load request: {other:?}");
                                failed.fetch_add(1, Ordering::SeqCst)
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Stops the loops; (succeeded, failed).
    pub async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

/// Headless Chromium for the browser tests (Debian's `chromium`, `.ci/run` installs it).
/// The browser, or `None` when the test is to be skipped (GATEHOUSE_SKIP_BROWSER set).
pub fn browser_or_skip() -> Option<String> {
    match chromium() {
        Some(b) => Some(b),
        None if std::env::var_os("GATEHOUSE_SKIP_BROWSER").is_some() => {
            eprintln!("skipped: no chromium and GATEHOUSE_SKIP_BROWSER is set");
            None
        }
        None => panic!(
            "chromium is not installed (apt-get install -y chromium), or set GATEHOUSE_SKIP_BROWSER=1"
        ),
    }
}

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find(|b| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {b}"))
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|b| b.to_string())
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Makes a directory unwritable, even for root (`chattr +i`), until dropped.
pub struct Unwritable(PathBuf);

impl Unwritable {
    pub fn new(p: &Path) -> Unwritable {
        if is_root() {
            let ok = std::process::Command::new("chattr")
                .arg("+i")
                .arg(p)
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "chattr +i {} failed: root needs it to make a directory read-only",
                p.display()
            );
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        assert!(
            std::fs::write(p.join("probe"), b"x").is_err(),
            "{} is still writable",
            p.display()
        );
        Unwritable(p.to_path_buf())
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
    }
}
