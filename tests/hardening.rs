//! A hostile-input corpus against the real binary: raw HTTP/1 requests (smuggling patterns,
//! transfer-coding and content-length tricks, control bytes and bad targets, Host cases,
//! pipelining) sent on raw sockets. Behind gatehouse sits a backend that frames strictly and
//! records every request it gets; for every case the test asserts the client's answer and that
//! the backend got exactly one well-framed request or nothing. Where nginx is installed the
//! same bytes go through nginx too, and gatehouse must not accept what nginx rejects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{free_port, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the strict backend saw: one entry per request, or `Err` for a framing error.
type Log = Arc<Mutex<Vec<Result<(String, Vec<u8>), String>>>>;

/// Reads from `s` until `buf` holds at least `n` bytes.
async fn fill(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, n: usize) -> Result<(), String> {
    while buf.len() < n {
        let mut chunk = [0u8; 4096];
        let r = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if r == 0 {
            return Err("eof in body".into());
        }
        buf.extend_from_slice(&chunk[..r]);
    }
    Ok(())
}

/// Reads one request strictly (CRLF line ends, one Content-Length or chunked with plain
/// hex sizes): its head (without the blank line) and body; `Ok(None)` at a clean end of
/// stream.
async fn read_request(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<(String, Vec<u8>)>, String> {
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err("eof in head".into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).map_err(|_| "non-utf8 head")?;
    buf.drain(..head_end + 4);
    let lines: Vec<&str> = head.split("\r\n").collect();
    if lines.iter().any(|l| l.contains('\n') || l.contains('\r')) {
        return Err("bare CR or LF in head".into());
    }
    let field = |name: &str| -> Vec<String> {
        lines[1..]
            .iter()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    };
    let (cl, te) = (field("content-length"), field("transfer-encoding"));
    if cl.len() > 1 || te.len() > 1 || (!cl.is_empty() && !te.is_empty()) {
        return Err(format!("ambiguous framing: {head}"));
    }
    if field("host").len() != 1 {
        return Err(format!("not exactly one Host: {head}"));
    }
    let mut body = Vec::new();
    if let Some(cl) = cl.first() {
        let n: usize = cl.parse().map_err(|_| format!("bad Content-Length {cl}"))?;
        fill(s, buf, n).await?;
        body = buf.drain(..n).collect();
    } else if let Some(te) = te.first() {
        if te != "chunked" {
            return Err(format!("Transfer-Encoding {te}"));
        }
        loop {
            let line_end = loop {
                if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                let len = buf.len();
                fill(s, buf, len + 1).await?;
            };
            let line = String::from_utf8(buf[..line_end].to_vec()).map_err(|_| "chunk line")?;
            buf.drain(..line_end + 2);
            if line.is_empty() || !line.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("chunk size line {line:?}"));
            }
            let size = usize::from_str_radix(&line, 16).map_err(|_| "chunk size")?;
            fill(s, buf, size + 2).await?;
            if &buf[size..size + 2] != b"\r\n" {
                return Err("chunk not followed by CRLF".into());
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        }
    }
    Ok(Some((head.clone(), body)))
}

/// A gateway in front of the strict backend at `backend` with no retries (a refused or broken
/// request must reach the backend once or not at all) and `route` as its one route.
async fn strict_gateway(backend: SocketAddr, route: &str) -> TestGateway {
    TestGateway::start(|p| {
        common::simple_config(
            p,
            &format!("  up:\n    backends: [\"{backend}\"]\n    retry: {{ attempts: 0 }}\n"),
            route,
        )
    })
    .await
}

/// The strict backend on 127.0.0.1: answers every well-framed request 200 `ok`.
async fn strict_backend() -> (SocketAddr, Log, tokio::task::JoinHandle<()>) {
    strict_backend_answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await
}

/// [`strict_backend`] answering every request with `answer`.
async fn strict_backend_answering(
    answer: &'static [u8],
) -> (SocketAddr, Log, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let log: Log = Arc::default();
    let log2 = Arc::clone(&log);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut s, _)) = l.accept().await {
            let log = Arc::clone(&log2);
            conns.spawn(async move {
                let mut buf = Vec::new();
                loop {
                    match read_request(&mut s, &mut buf).await {
                        Ok(Some(req)) => {
                            log.lock().unwrap().push(Ok(req));
                            let _ = s.write_all(answer).await;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            log.lock().unwrap().push(Err(e));
                            break;
                        }
                    }
                }
            });
        }
    });
    (addr, log, task)
}

/// Sends `bytes` on a new connection and reads until the peer closes or 3 s pass.
async fn exchange(port: u16, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
            _ => break,
        }
        if complete_keepalive(&out) {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One whole response with a Content-Length, on a connection kept alive (nothing more will
/// come until the next request).
fn complete_keepalive(out: &[u8]) -> bool {
    let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
    if head.contains("connection: close")
        || out.windows(9).filter(|w| w == b"HTTP/1.1 ").count() > 1
    {
        return false;
    }
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    len.is_some_and(|n| out.len() >= end + 4 + n)
}

fn status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// nginx in front of `backend` (None when nginx is not installed).
struct Nginx {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker too (SIGKILL would orphan it)
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx(backend: SocketAddr) -> Option<Nginx> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  upstream b {{ server {backend}; }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://b; proxy_http_version 1.1; }}\n  }}\n}}\n",
        d = dir.path().display()
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = std::process::Command::new(bin)
        .args([
            "-c",
            path.to_str().unwrap(),
            "-p",
            dir.path().to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    // bounded wait for its port
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nginx did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Nginx {
        child,
        port,
        _dir: dir,
    })
}

/// A chunked POST with `body` as its raw body bytes.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut v = b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    v.extend_from_slice(body);
    v
}

/// (name, bytes, what gatehouse must answer: Some(status), or None for "any 2xx")
fn corpus() -> Vec<(&'static str, Vec<u8>, Option<u16>)> {
    let h = |s: &str| s.replace("\n", "\r\n").into_bytes();
    let mut v: Vec<(&'static str, Vec<u8>, Option<u16>)> = vec![
        ("plain GET", h("GET /a HTTP/1.1\nHost: a.test\n\n"), None),
        (
            "POST with Content-Length",
            h("POST /a HTTP/1.1\nHost: a.test\nContent-Length: 5\n\nhello"),
            None,
        ),
        (
            "POST chunked",
            h("POST /a HTTP/1.1\nHost: a.test\nTransfer-Encoding: chunked\n\n5\nhello\n0\n\n"),
            None,
        ),
        ("HTTP/1.0 without Host", h("GET /a HTTP/1.0\n\n"), None),
        ("absolute-form", h("GET http://a.test/a HTTP/1.1\nHost: a.test\n\n"), None),
        ("absolute-form, other Host", h("GET http://a.test/a HTTP/1.1\nHost: b.test\n\n"), Some(400)),
        // transfer codings
        ("TE identity, chunked", h("POST /a HTTP/1.1\nHost: a.test\nTransfer-Encoding: identity, chunked\n\n5\nhello\n0\n\n"), Some(400)),
        ("TE gzip, chunked", h("POST /a HTTP/1.1\nHost: a.test\nTransfer-Encoding: gzip, chunked\n\n5\nhello\n0\n\n"), Some(400)),
        ("TE chunked, chunked", h("POST /a HTTP/1.1\nHost: a.test\nTransfer-Encoding: chunked, chunked\n\n5\nhello\n0\n\n"), Some(400)),
        ("two TE fields", h("POST /a HTTP/1.1\nHost: a.test\nTransfer-Encoding: chunked\nTransfer-Encoding: chunked\n\n5\nhello\n0\n\n"), Some(400)),
        ("unknown coding", h("POST /a HTTP/1.1\nHost: a.test\nTransfer-Encoding: br, chunked\n\n5\nhello\n0\n\n"), Some(501)),
        ("CL.TE", h("POST /a HTTP/1.1\nHost: a.test\nContent-Length: 6\nTransfer-Encoding: chunked\n\n0\n\nG"), Some(400)),
        ("TE.CL", h("POST /a HTTP/1.1\nHost: a.test\nTransfer-Encoding: chunked\nContent-Length: 3\n\n8\nSMUGGLED\n0\n\n"), Some(400)),
        ("TE in HTTP/1.0", h("POST /a HTTP/1.0\nHost: a.test\nTransfer-Encoding: chunked\n\n5\nhello\n0\n\n"), Some(400)),
        // content length
        ("duplicate identical CL", h("POST /a HTTP/1.1\nHost: a.test\nContent-Length: 5\nContent-Length: 5\n\nhello"), Some(400)),
        ("different CLs", h("POST /a HTTP/1.1\nHost: a.test\nContent-Length: 5\nContent-Length: 6\n\nhello!"), Some(400)),
        ("CL list", h("POST /a HTTP/1.1\nHost: a.test\nContent-Length: 5, 5\n\nhello"), Some(400)),
        ("CL with sign", h("POST /a HTTP/1.1\nHost: a.test\nContent-Length: +5\n\nhello"), Some(400)),
        // underscores
        ("Transfer_Encoding", h("POST /a HTTP/1.1\nHost: a.test\nContent-Length: 5\nTransfer_Encoding: chunked\n\nhello"), Some(400)),
        ("Content_Length", h("POST /a HTTP/1.1\nHost: a.test\nContent-Length: 5\nContent_Length: 0\n\nhello"), Some(400)),
        ("Host with underscore", h("GET /a HTTP/1.1\nHost: a.test\nHost_: b.test\n\n"), None),
        // request targets
        ("space in target", h("GET /a b HTTP/1.1\nHost: a.test\n\n"), Some(400)),
        ("two spaces before target", h("GET  /a HTTP/1.1\nHost: a.test\n\n"), Some(400)),
        ("NUL in target", b"GET /a\x00b HTTP/1.1\r\nHost: a.test\r\n\r\n".to_vec(), Some(400)),
        ("0x01 in target", b"GET /a\x01b HTTP/1.1\r\nHost: a.test\r\n\r\n".to_vec(), Some(400)),
        ("DEL in target", b"GET /a\x7fb HTTP/1.1\r\nHost: a.test\r\n\r\n".to_vec(), Some(400)),
        ("bare CR in target", b"GET /a\rb HTTP/1.1\r\nHost: a.test\r\n\r\n".to_vec(), Some(400)),
        ("non-ASCII target", b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a.test\r\n\r\n".to_vec(), Some(400)),
        ("relative target", h("GET a HTTP/1.1\nHost: a.test\n\n"), Some(400)),
        ("asterisk on GET", h("GET * HTTP/1.1\nHost: a.test\n\n"), Some(400)),
        // Host
        ("no Host on 1.1", h("GET /a HTTP/1.1\n\n"), Some(400)),
        ("two Hosts", h("GET /a HTTP/1.1\nHost: a.test\nHost: b.test\n\n"), Some(400)),
        ("empty Host", h("GET /a HTTP/1.1\nHost: \n\n"), Some(400)),
        // chunk lines (RFC 9112 §7.1): every line ends with CRLF
        ("chunk extension", chunked(b"5;a=b;c=\"d e\"\r\nhello\r\n0\r\n\r\n"), None),
        ("chunk trailer", chunked(b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), None),
        ("chunk extension ends at bare LF", chunked(b"5;a=b\nhello\r\n0\r\n\r\n"), Some(400)),
        ("chunk size ends at bare LF", chunked(b"5\nhello\r\n0\r\n\r\n"), Some(400)),
        ("chunk data ends at bare LF", chunked(b"5\r\nhello\n0\r\n\r\n"), Some(400)),
        ("last chunk ends at bare LF", chunked(b"5\r\nhello\r\n0\n\r\n"), Some(400)),
        ("empty chunk-size line", chunked(b"\r\nhello\r\n0\r\n\r\n"), Some(400)),
        ("chunk data longer than its size", chunked(b"5\r\nhelloXX\r\n0\r\n\r\n"), Some(400)),
        ("chunk size 0x5", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), Some(400)),
        ("chunk size with sign", chunked(b"+5\r\nhello\r\n0\r\n\r\n"), Some(400)),
        ("chunk size overflow", chunked(b"10000000000000005\r\nhello\r\n0\r\n\r\n"), Some(400)),
        ("NUL in chunk extension", chunked(b"5;a\x00\r\nhello\r\n0\r\n\r\n"), Some(400)),
        // a body announced over max_body_size is refused at its chunk-size line
        ("4 GiB chunk", chunked(b"100000000\r\nhello"), Some(413)),
        // heads Pingora's parser refuses, and CONNECT: the gateway's own error all the same
        ("space in field name", h("GET /a HTTP/1.1\nHost: a.test\nBad Name: x\n\n"), Some(400)),
        ("no colon in field", h("GET /a HTTP/1.1\nHost: a.test\nNoColon\n\n"), Some(400)),
        ("CONNECT", h("CONNECT a.test:443 HTTP/1.1\nHost: a.test:443\n\n"), Some(405)),
    ];
    for bad in [
        "a.test:abc",
        "a.test:99999999",
        "a.test:80:80",
        "a test",
        "a.test, evil.test",
        "a.test/x",
    ] {
        v.push((
            "invalid Host",
            h(&format!("GET /a HTTP/1.1\nHost: {bad}\n\n")),
            Some(400),
        ));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_or_forwarded_well_framed() {
    let (backend, log, _task) = strict_backend().await;
    let gw = strict_gateway(backend, "  - { id: all, upstream: up }\n").await;
    let ngx = nginx(backend);
    let mut report = Vec::new();
    for (name, bytes, want) in corpus() {
        let before = log.lock().unwrap().len();
        let answer = exchange(gw.port, &bytes).await;
        let got = status(&answer);
        let seen: Vec<_> = log.lock().unwrap()[before..].to_vec();
        assert!(
            seen.iter().all(Result::is_ok),
            "{name}: the backend saw a badly framed request: {seen:?}"
        );
        match want {
            Some(code) => {
                assert_eq!(got, code, "{name}: {answer}");
                assert!(seen.is_empty(), "{name}: forwarded {seen:?}");
                // every refusal is the gateway's JSON error, even for heads Pingora's
                // parser refused
                let lower = answer.to_ascii_lowercase();
                assert!(
                    answer.contains("\"error\"")
                        && answer.contains("\"request_id\"")
                        && lower.contains("x-request-id: ")
                        && lower.contains("connection: close")
                        && !lower.contains("pingora"),
                    "{name}: JSON error and close expected: {answer}"
                );
            }
            None => {
                assert!((200..300).contains(&got), "{name}: {answer}");
                assert_eq!(seen.len(), 1, "{name}: {seen:?}");
            }
        }
        if let Some(n) = &ngx {
            let before = log.lock().unwrap().len();
            let nginx_got = status(&exchange(n.port, &bytes).await);
            let nginx_seen = log.lock().unwrap().len() - before;
            report.push(format!(
                "{name}: gatehouse {got}, nginx {nginx_got} (nginx forwarded {nginx_seen})"
            ));
            // never accept what nginx rejects
            if !(200..300).contains(&nginx_got) && nginx_got != 0 {
                assert!(
                    !(200..300).contains(&got),
                    "{name}: nginx answers {nginx_got}, gatehouse accepted it"
                );
            }
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_get_an_honest_connection_header() {
    let (backend, log, _task) = strict_backend().await;
    let gw = TestGateway::start(|p| {
        common::simple_config(
            p,
            &format!("  up:\n    backends: [\"{backend}\"]\n"),
            "  - { id: all, upstream: up }\n",
        )
    })
    .await;
    let two = b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let answer = exchange(gw.port, two).await;
    let first = answer
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert!(first.starts_with("http/1.1 200"), "{answer}");
    let answered = answer.matches("HTTP/1.1 ").count();
    if answered == 1 {
        // the second request is not served: the first answer must say the connection closes
        assert!(first.contains("connection: close"), "{answer}");
    } else {
        assert_eq!(answered, 2, "{answer}");
    }
    assert_eq!(log.lock().unwrap().len(), answered);
    // a body followed by a pipelined request
    let with_body =
        b"POST /1 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n\r\nokGET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let answer = exchange(gw.port, with_body).await;
    let first = answer
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    if answer.matches("HTTP/1.1 ").count() == 1 {
        assert!(first.contains("connection: close"), "{answer}");
    }
    // a chunked body followed by a pipelined request
    let with_chunks = b"POST /1 HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nGET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let answer = exchange(gw.port, with_chunks).await;
    let first = answer
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert!(first.starts_with("http/1.1 200"), "{answer}");
    if answer.matches("HTTP/1.1 ").count() == 1 {
        assert!(first.contains("connection: close"), "{answer}");
    }
    // one request alone stays kept alive
    let answer = exchange(gw.port, b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}

/// A chunked body whose framing breaks after the request went upstream: the client gets the
/// gateway's 400 (or 413 for an oversized chunk), and the backend never a complete request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_framing_broken_mid_body_is_refused() {
    let (backend, log, _task) = strict_backend().await;
    let gw = strict_gateway(
        backend,
        "  - { id: all, upstream: up, max_body_size: 1MiB }\n",
    )
    .await;
    for (later, want) in [
        (&b"5;a=b\nhello\r\n0\r\n\r\n"[..], 400),
        (b"\r\nhello\r\n0\r\n\r\n", 400),
        (b"5\r\nhello\n0\r\n\r\n", 400),
        (b"200000\r\n", 413),
    ] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .unwrap();
        s.write_all(&chunked(b"3\r\nabc\r\n")).await.unwrap();
        // the head and a first chunk go upstream before the rest arrives
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(later).await.unwrap();
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut buf = [0u8; 4096];
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        let answer = String::from_utf8_lossy(&out);
        assert_eq!(status(&answer), want, "{later:?}: {answer}");
        assert!(answer.contains("\"request_id\""), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        // at most the start of a request, cut off: never a complete one
        let seen = log.lock().unwrap().drain(..).collect::<Vec<_>>();
        assert!(seen.iter().all(Result::is_err), "{later:?}: {seen:?}");
    }
}

/// The `panic_plugin` example binary, built if `cargo test` has not built it yet.
fn panic_binary() -> std::path::PathBuf {
    let bin = std::path::Path::new(common::bin());
    let path = bin.parent().unwrap().join("examples/panic_plugin");
    if !path.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", "panic_plugin"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success());
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_plugin_fails_its_request_only() {
    let binary = tokio::task::spawn_blocking(panic_binary).await.unwrap();
    let (backend, log, _task) = strict_backend().await;
    let mut gw = TestGateway::start_binary(
        &binary,
        |p| {
            common::simple_config(
                p,
                &format!("  up:\n    backends: [\"{backend}\"]\n"),
                "  - id: all\n    upstream: up\n    plugins: [ { panic_on_header: {} } ]\n",
            )
        },
        true,
    )
    .await;
    for _ in 0..3 {
        let r = gw
            .client
            .get(gw.url("/boom"))
            .header("x-panic", "1")
            .send()
            .await;
        // the panicking request fails (an error status or a closed connection) ...
        if let Ok(r) = r {
            assert!(r.status().is_server_error(), "{}", r.status());
        }
        // ... and the next one is served
        assert_eq!(gw.get("/fine").await.status(), 200);
    }
    assert_eq!(
        log.lock().unwrap().len(),
        3,
        "only the calm requests went upstream"
    );
    assert!(
        gw.wait_exit(Duration::from_millis(200)).is_none(),
        "the process is alive"
    );
}

/// Header names go upstream, and back to the client, lowercase by default (but for the dozen
/// Pingora writes capitalised: `Host`, `Content-Type`, ...), and as the client and the backend
/// spelled them with `server.preserve_header_case: true`. Either way the backend's reason
/// phrase reaches the client, an absolute-form target goes upstream as it came, the
/// gateway's own headers are there once, and a client's copies of them are replaced.
#[tokio::test]
async fn header_name_spelling_by_default_and_preserved() {
    let (backend, log, task) = strict_backend_answering(
        b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 2\r\nX-Backend-Thing: 1\r\ncontent-TYPE: text/plain\r\n\r\nok",
    )
    .await;
    let mut targets = Vec::new();
    for preserve in [false, true] {
        let gw = TestGateway::start(|p| {
            common::simple_config(
                p,
                &format!("  up:\n    backends: [\"{backend}\"]\n    retry: {{ attempts: 0 }}\n"),
                "  - id: p\n    match: { path_prefix: /p }\n    upstream: up\n",
            )
            .replace(
                "server:\n",
                &format!("server:\n  preserve_header_case: {preserve}\n"),
            )
        })
        .await;
        for (target, tail) in [("/p?q=1", "/p?q=1"), ("http://a.test/p/x", "/p/x")] {
            let req = format!(
                "GET {target} HTTP/1.1\r\nHost: a.test\r\nX-Client-Thing: 1\r\nuser-AGENT: t\r\nX-Request-Id: not valid!\r\nX-Forwarded-Proto: gopher\r\n\r\n"
            );
            let answer = exchange(gw.port, req.as_bytes()).await;
            let (head, _) = log.lock().unwrap().pop().unwrap().unwrap();
            let line = head.lines().next().unwrap().to_string();
            assert!(
                line.starts_with("GET ") && line.ends_with(&format!("{tail} HTTP/1.1")),
                "{line}"
            );
            targets.push(line);
            assert!(
                answer.starts_with("HTTP/1.1 200 Fine Thanks\r\n"),
                "{answer}"
            );
            assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
            let has = |text: &str, line: &str| text.split("\r\n").any(|l| l == line);
            if preserve {
                assert!(
                    has(&head, "X-Client-Thing: 1") && has(&head, "user-AGENT: t"),
                    "{head}"
                );
                assert!(has(&answer, "X-Backend-Thing: 1"), "{answer}");
                assert!(has(&answer, "content-TYPE: text/plain"), "{answer}");
            } else {
                assert!(
                    has(&head, "x-client-thing: 1")
                        && has(&head, "user-agent: t")
                        && has(&head, "Host: a.test"),
                    "{head}"
                );
                assert!(has(&answer, "x-backend-thing: 1"), "{answer}");
                assert!(has(&answer, "Content-Type: text/plain"), "{answer}");
            }
            let lower = head.to_ascii_lowercase();
            for name in [
                "x-request-id: ",
                "x-forwarded-for: 127.0.0.1",
                "traceparent: 00-",
                "host: a.test",
            ] {
                assert_eq!(
                    lower.matches(&format!("\r\n{name}")).count(),
                    1,
                    "{name} in {head}"
                );
            }
            assert!(has(&head, "x-forwarded-proto: http"), "{head}");
            assert!(
                !lower.contains("not valid") && !lower.contains("gopher"),
                "{head}"
            );
            let id = answer
                .split("\r\n")
                .find_map(|l| l.strip_prefix("x-request-id: "));
            assert!(id.is_some_and(|id| head.contains(id)), "{answer}");
        }
    }
    // the same request lines upstream in both modes
    assert_eq!(targets[..2], targets[2..], "{targets:?}");
    task.abort();
}

/// Hop-by-hop fields never reach the backend, whichever of them the client sends (the
/// standard Pingora policy then applies), and a request with none of them goes up with its
/// own fields untouched (gatehouse skips the policy's removals then): `Connection` and what
/// it nominates, `Keep-Alive`, `Proxy-Connection`, `Proxy-Authorization`, `TE`, `Trailer`,
/// `Upgrade` (not a WebSocket one) and `HTTP2-Settings`. A `Connection` that nominates a
/// field the gateway sets itself is refused.
#[tokio::test]
async fn hop_by_hop_fields_never_reach_the_backend() {
    let (backend, log, task) =
        strict_backend_answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = TestGateway::start(|p| {
        common::simple_config(
            p,
            &format!("  up:\n    backends: [\"{backend}\"]\n    retry: {{ attempts: 0 }}\n"),
            "  - id: p\n    match: { path_prefix: /p }\n    upstream: up\n",
        )
    })
    .await;
    let hop = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "http2-settings",
        "x-secret",
    ];
    let cases: [&str; 5] = [
        "",
        "Connection: X-Secret, keep-alive\r\nKeep-Alive: timeout=5\r\nX-Secret: s\r\n",
        "Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\nTrailer: X-T\r\n",
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
        "Keep-Alive: timeout=5\r\n",
    ];
    for (i, extra) in cases.iter().enumerate() {
        let req = format!(
            "GET /p/{i} HTTP/1.1\r\nHost: a.test\r\nX-Client-Thing: {i}\r\nAccept: */*\r\n{extra}\r\n"
        );
        let answer = exchange(gw.port, req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{i}: {answer}");
        let (head, _) = log.lock().unwrap().pop().unwrap().unwrap();
        let lower = head.to_ascii_lowercase();
        let names: Vec<&str> = (lower.split("\r\n").skip(1))
            .filter_map(|l| l.split_once(':').map(|(n, _)| n))
            .collect();
        for name in hop {
            assert!(!names.contains(&name), "{i}: {name} went upstream: {head}");
        }
        assert!(
            names.contains(&"x-client-thing") && names.contains(&"accept"),
            "{i}: {head}"
        );
        assert!(
            lower.starts_with(&format!("get /p/{i} http/1.1\r\n")),
            "{head}"
        );
    }
    // nominating a field the gateway sets (or a pseudo-header) is refused, not forwarded
    let before = log.lock().unwrap().len();
    for nominated in ["X-Forwarded-For", ":authority"] {
        let req = format!(
            "GET /p/n HTTP/1.1\r\nHost: a.test\r\nConnection: {nominated}\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"
        );
        let answer = exchange(gw.port, req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{nominated}: {answer}");
    }
    assert_eq!(
        log.lock().unwrap().len(),
        before,
        "nothing reached the backend"
    );
    task.abort();
}
