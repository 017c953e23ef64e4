//! The disk tier of the response cache through the real binary: objects kept across a
//! restart, large objects streamed from disk, the size bound, damaged files, purge, and a
//! directory that cannot be written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{is_root, simple_config, Ports, TestGateway, Unwritable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The body the origin serves for `path` with `n` bytes: varied, different per path.
fn pattern(path: &str, n: usize) -> Vec<u8> {
    let seed = path
        .bytes()
        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// An origin serving `GET /<name>?size=N[&ttl=S]` with `pattern(path, N)`, cacheable for
/// `S` seconds (an hour by default), ETag `"v1"`: a request with `If-None-Match` gets a 304.
struct Origin {
    addr: std::net::SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_conn(mut s: tokio::net::TcpStream, hits: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    for _ in 0..1000 {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end);
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse::<usize>().ok())
        };
        let size = param("size").unwrap_or(100);
        let ttl = param("ttl").unwrap_or(3600);
        hits.fetch_add(1, Ordering::SeqCst);
        let lang = head
            .lines()
            .find_map(|l| l.strip_prefix("accept-language: "))
            .unwrap_or("");
        let body = pattern(&format!("{path}{lang}"), size);
        if head.to_ascii_lowercase().contains("if-none-match: \"v1\"") {
            let h = format!(
                "HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncache-control: max-age={ttl}\r\n\r\n"
            );
            if s.write_all(h.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let h = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {size}\r\ncache-control: max-age={ttl}\r\netag: \"v1\"\r\ncontent-type: application/octet-stream\r\n\r\n"
        );
        if s.write_all(h.as_bytes()).await.is_err() {
            return;
        }
        for part in body.chunks(64 * 1024) {
            if s.write_all(part).await.is_err() {
                return;
            }
        }
    }
}

async fn origin() -> Origin {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            conns.spawn(serve_conn(s, h.clone()));
        }
    });
    Origin { addr, hits, task }
}

/// A gateway with one caching route to `o`, the memory tier `mem` (`max_size`,
/// `max_object_size`) and the disk tier at `dir` (`disk_max`).
fn cfg(p: &Ports, o: &Origin, mem: (&str, &str), dir: &Path, disk_max: &str) -> String {
    cfg_with(p, o, mem, dir, disk_max, "")
}

/// [`cfg`] with more settings of the `cache` plugin.
fn cfg_with(
    p: &Ports,
    o: &Origin,
    mem: (&str, &str),
    dir: &Path,
    disk_max: &str,
    plugin: &str,
) -> String {
    let routes = format!("  - id: cached\n    upstream: up\n    plugins:\n      - cache: {{ max_object_size: 128MiB{plugin} }}\n");
    simple_config(
        p,
        &format!("  up:\n    backends: [\"{}\"]\n", o.addr),
        &routes,
    )
    .replace(
        "  threads: 2\n",
        &format!(
            "  threads: 2\n  cache:\n    max_size: {}\n    max_object_size: {}\n    disk: {{ path: \"{}\", max_size: {disk_max}, max_object_size: 128MiB }}\n",
            mem.0,
            mem.1,
            dir.display()
        ),
    )
    .replace("admin:\n", "admin:\n  token: \"s3cret\"\n")
}

/// GET `path` with a fixed Host (the cache key names host and port, and a restarted
/// gateway listens on another port in tests): status, Cache-Status, body (or the error).
async fn get(gw: &TestGateway, path: &str) -> (u16, String, Result<Vec<u8>, String>) {
    get_with(gw, path, &[]).await
}

async fn get_with(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Result<Vec<u8>, String>) {
    let mut r = gw.client.get(gw.url(path)).header("host", "cache.test:80");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let cs = r
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = r
        .bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string());
    (status, cs, body)
}

/// GET `path?size=n` and check the bytes; returns Cache-Status.
async fn fetch(gw: &TestGateway, name: &str, n: usize) -> String {
    let (status, cs, body) = get(gw, &format!("{name}?size={n}")).await;
    assert_eq!(status, 200, "{name}");
    let body = body.unwrap();
    assert_eq!(body.len(), n, "{name}: length");
    assert!(body == pattern(name, n), "{name}: the bytes differ");
    cs
}

/// The object files under the tier's directory: (path, size).
fn objects(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(shards) = std::fs::read_dir(dir.join("v1")) else {
        return out;
    };
    for s in shards.flatten() {
        if s.file_name() == "tmp" {
            continue;
        }
        for f in std::fs::read_dir(s.path()).unwrap().flatten() {
            out.push((f.path(), f.metadata().unwrap().len()));
        }
    }
    out
}

/// Waits until the disk tier holds `n` objects.
async fn disk_objects(gw: &TestGateway, n: f64) {
    assert!(
        gw.metric_reaches(
            "gatehouse_cache_tier_objects{tier=\"disk\"}",
            n,
            Duration::from_secs(20)
        )
        .await,
        "the disk tier holds {} objects, not {n}",
        gw.metric("gatehouse_cache_tier_objects{tier=\"disk\"}")
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_objects_and_large_ones_stream_from_disk() {
    let o = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let mem = ("16MiB", "1MiB");
    let big = 64 << 20;
    let gw = TestGateway::start(|p| cfg(p, &o, mem, dir.path(), "1GiB")).await;
    assert_eq!(
        gw.metric("gatehouse_cache_disk_available").await,
        1.0,
        "{}",
        gw.stderr()
    );
    assert_eq!(
        fetch(&gw, "/small", 10_000).await,
        "gatehouse; fwd=miss; stored"
    );
    assert_eq!(fetch(&gw, "/small", 10_000).await, "gatehouse; hit");
    // 64 MiB through a 16 MiB memory tier: written to disk, served from it
    assert_eq!(fetch(&gw, "/big", big).await, "gatehouse; fwd=miss; stored");
    assert_eq!(fetch(&gw, "/big", big).await, "gatehouse; hit; detail=disk");
    assert_eq!(o.hits.load(Ordering::SeqCst), 2);
    // the small object was written through to disk as well
    disk_objects(&gw, 2.0).await;
    assert!(
        gw.metric("gatehouse_cache_tier_size_bytes{tier=\"memory\"}")
            .await
            < (1 << 20) as f64
    );
    drop(gw);

    // a new process on the same directory: both objects are there
    let gw = TestGateway::start(|p| cfg(p, &o, mem, dir.path(), "1GiB")).await;
    assert_eq!(
        fetch(&gw, "/small", 10_000).await,
        "gatehouse; hit; detail=disk"
    );
    // promoted to memory by that hit
    assert_eq!(fetch(&gw, "/small", 10_000).await, "gatehouse; hit");
    assert_eq!(fetch(&gw, "/big", big).await, "gatehouse; hit; detail=disk");
    assert_eq!(
        o.hits.load(Ordering::SeqCst),
        2,
        "nothing was fetched again"
    );
    assert!(
        gw.metric_reaches(
            "gatehouse_cache_tier_lookups_total{result=\"hit\",tier=\"disk\"}",
            2.0,
            Duration::from_secs(5)
        )
        .await
    );
    disk_objects(&gw, 2.0).await;
    assert!(gw.stderr().contains("indexed 2 objects"), "{}", gw.stderr());
    // the access log names the tier of each hit
    let tiers: Vec<_> = gw
        .log_entries(3)
        .await
        .iter()
        .map(|e| (e["cache"].clone(), e["cache_tier"].clone()))
        .collect();
    assert_eq!(
        tiers,
        [
            ("hit".into(), "disk".into()),
            ("hit".into(), "memory".into()),
            ("hit".into(), "disk".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_tier_stays_within_max_size() {
    let o = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(|p| cfg(p, &o, ("16MiB", "1MiB"), dir.path(), "256MiB")).await;
    // 1 GiB in 32 objects of 32 MiB
    for i in 0..32 {
        assert_eq!(
            fetch(&gw, &format!("/o{i}"), 32 << 20).await,
            "gatehouse; fwd=miss; stored"
        );
    }
    // the last file may still be committing as its response ends
    assert!(
        gw.metric_reaches(
            "gatehouse_cache_disk_writes_total{result=\"ok\"}",
            32.0,
            Duration::from_secs(10)
        )
        .await
    );
    let files = objects(dir.path());
    let total: u64 = files.iter().map(|f| f.1).sum();
    assert!(
        total <= 256 << 20,
        "{total} bytes on disk, max_size is 256 MiB"
    );
    assert!(files.len() >= 6, "{} objects kept", files.len());
    let held = gw
        .metric("gatehouse_cache_tier_size_bytes{tier=\"disk\"}")
        .await;
    assert!(
        held <= (256 << 20) as f64 && held >= total as f64 * 0.99,
        "{held} vs {total}"
    );
    assert!(
        gw.metric("gatehouse_cache_tier_evictions_total{tier=\"disk\"}")
            .await
            >= 24.0
    );
    // the most recent object is still a disk hit; the oldest went
    assert_eq!(
        fetch(&gw, "/o31", 32 << 20).await,
        "gatehouse; hit; detail=disk"
    );
    assert_eq!(
        fetch(&gw, "/o0", 32 << 20).await,
        "gatehouse; fwd=miss; stored"
    );
    assert_eq!(o.hits.load(Ordering::SeqCst), 33);
}

/// The offset of the body in an object file (after the fixed header and the meta).
fn body_offset(bytes: &[u8]) -> usize {
    24 + u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize
}

fn damage(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_files_are_detected_and_refetched() {
    let o = origin().await;
    let dir = tempfile::tempdir().unwrap();
    // a memory tier of 1 KiB objects: every object here lives on disk only
    let gw = TestGateway::start(|p| cfg(p, &o, ("16MiB", "1KiB"), dir.path(), "1GiB")).await;
    let size = 300 * 1024;
    for name in ["/flip-start", "/truncated", "/flip-middle"] {
        assert_eq!(fetch(&gw, name, size).await, "gatehouse; fwd=miss; stored");
        assert_eq!(fetch(&gw, name, size).await, "gatehouse; hit; detail=disk");
    }
    let files = objects(dir.path());
    assert_eq!(files.len(), 3);
    let file_of = |name: &str| {
        // the one file whose body is this object's pattern
        let want = pattern(name, 64);
        files
            .iter()
            .map(|f| f.0.clone())
            .find(|p| {
                let b = std::fs::read(p).unwrap();
                let at = body_offset(&b);
                b[at..at + 64] == want[..]
            })
            .unwrap()
    };
    damage(&file_of("/flip-start"), |b| {
        let at = body_offset(b) + 1000;
        b[at] ^= 0x10;
    });
    damage(&file_of("/truncated"), |b| b.truncate(b.len() - 5000));
    damage(&file_of("/flip-middle"), |b| {
        let at = body_offset(b) + 200 * 1024;
        b[at] ^= 0x01;
    });
    // a damaged start or a short file: found before anything is sent, fetched again
    assert_eq!(
        fetch(&gw, "/flip-start", size).await,
        "gatehouse; fwd=miss; stored"
    );
    assert_eq!(
        fetch(&gw, "/truncated", size).await,
        "gatehouse; fwd=miss; stored"
    );
    assert_eq!(o.hits.load(Ordering::SeqCst), 5);
    // damage further in: found when that chunk is read, after the response started; the
    // response breaks off instead of carrying wrong bytes, and the next request refetches
    let (status, cs, body) = get(&gw, &format!("/flip-middle?size={size}")).await;
    assert_eq!((status, cs.as_str()), (200, "gatehouse; hit; detail=disk"));
    match body {
        Err(_) => {}
        Ok(b) => assert!(
            b.len() < size,
            "a damaged object was served whole ({} bytes)",
            b.len()
        ),
    }
    assert_eq!(
        fetch(&gw, "/flip-middle", size).await,
        "gatehouse; fwd=miss; stored"
    );
    assert_eq!(o.hits.load(Ordering::SeqCst), 6);
    assert!(
        gw.metric_reaches(
            "gatehouse_cache_disk_corrupt_objects_total",
            3.0,
            Duration::from_secs(5)
        )
        .await
    );
    // the refetched objects are whole again
    for name in ["/flip-start", "/truncated", "/flip-middle"] {
        assert_eq!(fetch(&gw, name, size).await, "gatehouse; hit; detail=disk");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_both_tiers() {
    let o = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(|p| cfg(p, &o, ("16MiB", "1MiB"), dir.path(), "1GiB")).await;
    fetch(&gw, "/p", 5000).await;
    fetch(&gw, "/q", 2 << 20).await;
    disk_objects(&gw, 2.0).await;
    for (url, n) in [
        ("http://cache.test:80/p?size=5000", 1),
        ("http://cache.test:80/q?size=2097152", 1),
        ("http://cache.test:80/q?size=2097152", 0),
    ] {
        let r = gw
            .client
            .post(gw.admin_url("/cache/purge"))
            .bearer_auth("s3cret")
            .body(format!("{{\"url\": \"{url}\"}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["purged"], n, "{url}: {v}");
    }
    assert!(objects(dir.path()).is_empty(), "{:?}", objects(dir.path()));
    assert_eq!(fetch(&gw, "/p", 5000).await, "gatehouse; fwd=miss; stored");
    assert_eq!(
        fetch(&gw, "/q", 2 << 20).await,
        "gatehouse; fwd=miss; stored"
    );
    assert_eq!(o.hits.load(Ordering::SeqCst), 4);

    // the disk tier is set at start: a reload that changes it says so and keeps serving
    gw.write_config(&cfg(&gw.ports, &o, ("16MiB", "1MiB"), dir.path(), "2GiB"));
    let r = gw
        .client
        .post(gw.admin_url("/reload"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["restart_required"],
        serde_json::json!(["server.cache.disk"]),
        "{v}"
    );
    assert_eq!(fetch(&gw, "/p", 5000).await, "gatehouse; hit");
    assert_eq!(
        fetch(&gw, "/q", 2 << 20).await,
        "gatehouse; hit; detail=disk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_or_missing_directory_degrades_to_memory_only() {
    let o = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let locked = Unwritable::new(dir.path());
    let gw = TestGateway::start(|p| cfg(p, &o, ("16MiB", "1MiB"), dir.path(), "1GiB")).await;
    assert_eq!(gw.metric("gatehouse_cache_disk_available").await, 0.0);
    assert!(gw.stderr().contains("memory only"), "{}", gw.stderr());
    // the memory tier serves alone; a large object streams through uncached
    assert_eq!(fetch(&gw, "/m", 5000).await, "gatehouse; fwd=miss; stored");
    assert_eq!(fetch(&gw, "/m", 5000).await, "gatehouse; hit");
    for _ in 0..2 {
        let cs = fetch(&gw, "/large", 3 << 20).await;
        assert!(cs.starts_with("gatehouse; fwd="), "{cs}");
    }
    assert_eq!(o.hits.load(Ordering::SeqCst), 3);
    assert!(objects(dir.path()).is_empty());
    drop(gw);
    drop(locked);

    // a directory that does not exist: the same
    let missing = dir.path().join("not-mounted");
    let gw = TestGateway::start(|p| cfg(p, &o, ("16MiB", "1MiB"), &missing, "1GiB")).await;
    assert_eq!(gw.metric("gatehouse_cache_disk_available").await, 0.0);
    assert!(gw.stderr().contains("does not exist"), "{}", gw.stderr());
    assert_eq!(fetch(&gw, "/m", 5000).await, "gatehouse; fwd=miss; stored");
    assert_eq!(fetch(&gw, "/m", 5000).await, "gatehouse; hit");
    assert!(
        !missing.exists(),
        "the gateway does not create the configured directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_revalidation_vary_head_and_stale_serving_work_from_disk() {
    let o = origin().await;
    let dir = tempfile::tempdir().unwrap();
    // 1 KiB memory objects: everything here is served from disk
    let gw = TestGateway::start(|p| {
        cfg_with(
            p,
            &o,
            ("16MiB", "1KiB"),
            dir.path(),
            "1GiB",
            ", vary: [Accept-Language], stale_if_error: 5m",
        )
    })
    .await;
    let hits = || o.hits.load(Ordering::SeqCst);
    assert_eq!(
        fetch(&gw, "/r", 5000).await.as_str(),
        "gatehouse; fwd=miss; stored"
    );

    // HEAD and Age on a disk hit
    let r = gw
        .client
        .head(gw.url("/r?size=5000"))
        .header("host", "cache.test:80")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-status"], "gatehouse; hit; detail=disk");
    assert_eq!(r.headers()["content-length"], "5000");
    assert!(r.headers().contains_key("age"));
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(hits(), 1);

    // expired: revalidated with If-None-Match, 304, the stored body served, the new
    // freshness written to the file
    assert_eq!(
        fetch(&gw, "/e", 8000).await.as_str(),
        "gatehouse; fwd=miss; stored"
    );
    let e = "/e?size=8000&ttl=1";
    assert_eq!(get(&gw, e).await.1, "gatehouse; fwd=miss; stored");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let writes = gw
        .metric("gatehouse_cache_disk_writes_total{result=\"ok\"}")
        .await;
    let (status, cs, body) = get(&gw, e).await;
    assert_eq!(
        (status, cs.as_str()),
        (200, "gatehouse; fwd=stale; fwd-status=304")
    );
    assert!(body.unwrap() == pattern("/e", 8000));
    assert_eq!(hits(), 4);
    assert!(
        gw.metric_reaches(
            "gatehouse_cache_disk_writes_total{result=\"ok\"}",
            writes + 1.0,
            Duration::from_secs(5)
        )
        .await
    );
    assert_eq!(get(&gw, e).await.1, "gatehouse; hit; detail=disk");
    assert_eq!(hits(), 4);

    // variants split on disk as in memory
    for lang in ["en", "de", "en", "de"] {
        let (_, _, body) = get_with(&gw, "/v?size=3000", &[("accept-language", lang)]).await;
        assert!(
            body.unwrap() == pattern(&format!("/v{lang}"), 3000),
            "{lang}"
        );
    }
    assert_eq!(hits(), 6, "two languages, two objects");
    let (_, cs, _) = get_with(&gw, "/v?size=3000", &[("accept-language", "de")]).await;
    assert_eq!(cs, "gatehouse; hit; detail=disk");

    // the origin down: a stale object inside stale-if-error is served from disk
    let s = "/s?size=6000&ttl=1";
    assert_eq!(get(&gw, s).await.1, "gatehouse; fwd=miss; stored");
    o.task.abort();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, _, body) = get(&gw, s).await;
    assert_eq!(status, 200, "stale not served on error");
    assert!(body.unwrap() == pattern("/s", 6000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_from_disk() {
    let o = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(|p| {
        cfg_with(
            p,
            &o,
            ("16MiB", "1KiB"),
            dir.path(),
            "1GiB",
            ", stale_while_revalidate: 30s",
        )
    })
    .await;
    let w = "/w?size=4000&ttl=1";
    assert_eq!(get(&gw, w).await.1, "gatehouse; fwd=miss; stored");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, cs, body) = get(&gw, w).await;
    assert_eq!(
        (status, cs.as_str()),
        (200, "gatehouse; hit; detail=stale-disk")
    );
    assert!(body.unwrap() == pattern("/w", 4000));
    // refreshed in the background (a conditional request, 304)
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            get(&gw, w).await.1 == "gatehouse; hit; detail=disk"
        })
        .await
    );
    assert_eq!(o.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_hits_over_h2() {
    let o = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let h2c = common::free_port();
    let gw = TestGateway::start(|p| {
        cfg(p, &o, ("16MiB", "1KiB"), dir.path(), "1GiB").replace(
            &format!("listen: [\"127.0.0.1:{}\"]", p.proxy),
            &format!(
                "listen: [\"127.0.0.1:{}\", {{ addr: \"127.0.0.1:{h2c}\", h2c: true }}]",
                p.proxy
            ),
        )
    })
    .await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let size = 300_000;
    for want in ["gatehouse; fwd=miss; stored", "gatehouse; hit; detail=disk"] {
        let r = client
            .get(format!("http://127.0.0.1:{h2c}/h?size={size}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["cache-status"], want);
        assert!(r.bytes().await.unwrap() == pattern("/h", size));
    }
    assert_eq!(o.hits.load(Ordering::SeqCst), 1);
    let entries = gw.log_entries(2).await;
    assert_eq!(entries[1]["cache_tier"], "disk", "{entries:?}");
}

/// A small tmpfs mounted on a directory (root only), unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(p: &Path, size: &str) -> SmallFs {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(p)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a {size} tmpfs on {} failed", p.display());
        SmallFs(p.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_degrades_to_memory_only() {
    if !is_root() {
        eprintln!(
            "a_full_disk_degrades_to_memory_only: skipped, mounting a small tmpfs needs root"
        );
        return;
    }
    let o = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let _fs = SmallFs::mount(dir.path(), "6m");
    let gw = TestGateway::start(|p| cfg(p, &o, ("16MiB", "1MiB"), dir.path(), "1GiB")).await;
    assert_eq!(gw.metric("gatehouse_cache_disk_available").await, 1.0);
    // 2 MiB objects (past the memory tier) into 6 MiB: the disk fills up after two; every
    // client still gets its whole answer
    for i in 0..8 {
        fetch(&gw, &format!("/f{i}"), 2 << 20).await;
    }
    assert!(
        gw.metric_reaches(
            "gatehouse_cache_disk_available",
            0.0,
            Duration::from_secs(10)
        )
        .await,
        "{}",
        gw.stderr()
    );
    assert!(
        gw.metric("gatehouse_cache_disk_writes_total{result=\"error\"}")
            .await
            >= 3.0
    );
    assert!(
        gw.stderr().contains("memory only until a probe succeeds"),
        "{}",
        gw.stderr()
    );
    // the objects that made it are still served from disk; the memory tier goes on
    assert_eq!(
        fetch(&gw, "/f0", 2 << 20).await,
        "gatehouse; hit; detail=disk"
    );
    assert_eq!(fetch(&gw, "/s", 5000).await, "gatehouse; fwd=miss; stored");
    assert_eq!(fetch(&gw, "/s", 5000).await, "gatehouse; hit");
    drop(gw);
}
