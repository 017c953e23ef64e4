//! A `redis-server` of the test's own: on a unix socket in a temp dir (no TCP, no
//! persistence), stopped when dropped, with the fault knobs the Redis tests use.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestRedis {
    child: Child,
    dir: tempfile::TempDir,
    /// Also listening on 127.0.0.1:port (for a relay in front of it).
    port: Option<u16>,
}

impl TestRedis {
    /// Starts a server and waits (bounded) until it answers PING.
    pub fn start() -> TestRedis {
        let dir = tempfile::tempdir().unwrap();
        let child = spawn(&dir, None);
        let r = TestRedis {
            child,
            dir,
            port: None,
        };
        r.wait_ready();
        r
    }

    /// Like [`TestRedis::start`], also on an ephemeral TCP port of 127.0.0.1.
    pub fn start_tcp() -> TestRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let child = spawn(&dir, Some(port));
        let r = TestRedis {
            child,
            dir,
            port: Some(port),
        };
        r.wait_ready();
        r
    }

    /// Like [`TestRedis::start`], also TLS-only on an ephemeral port of 127.0.0.1 with the
    /// certificate `<file>.pem`/`.key` of `ca`'s directory, asking clients for a certificate
    /// of `ca` when `client_auth`; returns the `rediss://` URL with it.
    pub fn start_tls(ca: &super::pki::Ca, file: &str, client_auth: bool) -> (TestRedis, String) {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let path = |f: String| ca.path(&f).to_str().unwrap().to_string();
        let ca_file = ca.write_ca("redis-ca.pem");
        let extra = [
            "--tls-port".to_string(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(format!("{file}.pem")),
            "--tls-key-file".into(),
            path(format!("{file}.key")),
            "--tls-ca-cert-file".into(),
            ca_file.to_str().unwrap().to_string(),
            "--tls-auth-clients".into(),
            (if client_auth { "yes" } else { "no" }).into(),
        ];
        let child = spawn_with(&dir, None, &extra);
        let r = TestRedis {
            child,
            dir,
            port: None,
        };
        r.wait_ready();
        (r, format!("rediss://127.0.0.1:{port}/0"))
    }

    pub fn tcp_addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port.expect("start_tcp")).into()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.try_cmd(&["PING"]).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("r.sock")
    }

    /// The URL gatehouse's `redis.url` takes.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// One command (sync, its own short-lived connection, 2 s timeout).
    pub fn try_cmd(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.url())?;
        let mut c = client.get_connection_with_timeout(Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut c)
    }

    pub fn cmd(&self, args: &[&str]) -> redis::Value {
        self.try_cmd(args).unwrap()
    }

    /// Redis's clock, in ms.
    pub fn now_ms(&self) -> u64 {
        match self.cmd(&["TIME"]) {
            redis::Value::Array(v) => {
                let n = |x: &redis::Value| match x {
                    redis::Value::BulkString(b) => {
                        String::from_utf8_lossy(b).parse::<u64>().unwrap()
                    }
                    other => panic!("{other:?}"),
                };
                n(&v[0]) * 1000 + n(&v[1]) / 1000
            }
            other => panic!("TIME: {other:?}"),
        }
    }

    /// `calls` of one command in `INFO commandstats` (0 when never called).
    pub fn calls(&self, command: &str) -> u64 {
        let info = match self.cmd(&["INFO", "commandstats"]) {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::VerbatimString { text, .. } => text,
            other => panic!("{other:?}"),
        };
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// SIGSTOP: the socket stays open, commands hang.
    pub fn pause(&self) {
        signal(self.child.id(), libc::SIGSTOP);
    }

    pub fn resume(&self) {
        signal(self.child.id(), libc::SIGCONT);
    }

    /// Kills the server and starts a new one on the same socket (its data is gone).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.socket());
        self.child = spawn(&self.dir, self.port);
        self.wait_ready();
    }
}

fn spawn(dir: &tempfile::TempDir, port: Option<u16>) -> Child {
    spawn_with(dir, port, &[])
}

fn spawn_with(dir: &tempfile::TempDir, port: Option<u16>, extra: &[String]) -> Child {
    let port = port.unwrap_or(0).to_string();
    Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
            "--unixsocket",
            dir.path().join("r.sock").to_str().unwrap(),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.path().to_str().unwrap(),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)")
}

fn signal(pid: u32, sig: i32) {
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        // a stopped process must be continued to die cleanly
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay on 127.0.0.1 in front of `target`, which the test can cut (every relayed
/// connection dropped, new ones closed at once) and restore.
pub struct Relay {
    pub addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: std::net::SocketAddr) -> Relay {
        use std::sync::atomic::Ordering;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Default::default();
        let (o, c) = (open.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = l.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                c.lock().unwrap().push(h);
            }
        });
        Relay {
            addr,
            open,
            conns,
            task,
        }
    }

    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
