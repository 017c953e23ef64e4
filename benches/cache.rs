//! Cache storage, driven the way the proxy drives it (miss handler, write, finish; lookup,
//! read the body):
//!
//! - a workload larger than the memory tier: the bytes held against `max_size` and the
//!   process RSS growth;
//! - hits of 4 KiB, 64 KiB and 1 MiB objects from the memory tier and from the disk tier
//!   (lookup, header check, body read and checked chunk by chunk);
//! - the memory held while a 512 MiB object streams from the disk tier.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse::proxy::cache::{CacheRuntime, CacheSettings, DiskSettings};
use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_http::ResponseHeader;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn key(name: &str) -> CacheKey {
    CacheKey::new(format!("GET http://bench:80/{name}"), "")
}

async fn put(rt: CacheRuntime, name: &str, size: usize, part: usize) {
    let span = Span::inactive().handle();
    let mut h = ResponseHeader::build(200, None).unwrap();
    h.insert_header("content-length", size).unwrap();
    let fresh = SystemTime::now() + Duration::from_secs(3600);
    let meta = CacheMeta::new(fresh, SystemTime::now(), 0, 0, h);
    let mut miss = rt
        .store
        .get_miss_handler(&key(name), &meta, &span)
        .await
        .unwrap();
    let piece = Bytes::from(vec![b'x'; part.min(size)]);
    let mut left = size;
    while left > 0 {
        let n = left.min(piece.len());
        miss.write_body(piece.slice(..n), false).await.unwrap();
        left -= n;
    }
    miss.finish().await.unwrap();
}

/// Looks `name` up and reads its whole body; the bytes read.
async fn hit(rt: CacheRuntime, name: &CacheKey) -> usize {
    let span = Span::inactive().handle();
    let (_, mut h) = rt.store.lookup(name, &span).await.unwrap().unwrap();
    let mut n = 0;
    while let Some(b) = h.read_body().await.unwrap() {
        n += b.len();
    }
    n
}

fn runtime(max: usize, max_object: usize, disk: Option<&std::path::Path>) -> CacheRuntime {
    CacheRuntime::new(CacheSettings {
        max_size: max,
        max_object_size: max_object,
        lock_timeout: Duration::from_secs(3),
        disk: disk.map(|d| DiskSettings {
            path: d.to_path_buf(),
            max_size: 4 << 30,
            max_object_size: 1 << 30,
            max_objects: 1_000_000,
        }),
    })
}

fn bench(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let max = 64usize << 20;
    let rt = runtime(max, max / 8, None);
    let before = rss_bytes();
    // 4x the cache: 256 MiB of 16 KiB objects through a 64 MiB cache
    tokio.block_on(async {
        for i in 0..16_384 {
            put(rt, &format!("obj/{i}"), 16 << 10, 16 << 10).await;
        }
    });
    let held = rt.store.size_bytes();
    let rss = rss_bytes().saturating_sub(before);
    println!(
        "\ncache: wrote 256 MiB through max_size 64 MiB: holds {:.1} MiB in {} objects ({:.3}x max_size), process RSS grew {:.1} MiB ({:.2}x max_size)",
        held as f64 / 1048576.0,
        rt.store.len(),
        held as f64 / max as f64,
        rss as f64 / 1048576.0,
        rss as f64 / max as f64
    );
    let span = Span::inactive().handle();
    let k = key("obj/16383");
    c.bench_function("cache/lookup_hit_16KiB", |b| {
        b.iter(|| {
            tokio.block_on(async {
                let hit = rt.store.lookup(black_box(&k), &span).await.unwrap();
                black_box(hit.is_some())
            })
        })
    });

    // memory hits against disk hits (a memory tier too small to promote into)
    let dir = tempfile::tempdir().unwrap();
    let mem = runtime(64 << 20, 8 << 20, None);
    let disk = runtime(1 << 20, 1, Some(dir.path()));
    for _ in 0..500 {
        if disk.store.disk().unwrap().indexed() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (name, size) in [("4KiB", 4 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        tokio.block_on(put(mem, name, size, 16 << 10));
        tokio.block_on(put(disk, name, size, 16 << 10));
        let k = key(name);
        assert_eq!(tokio.block_on(hit(disk, &k)), size, "a disk hit");
        c.bench_function(&format!("cache/hit_memory_{name}"), |b| {
            b.iter(|| tokio.block_on(hit(mem, black_box(&k))))
        });
        c.bench_function(&format!("cache/hit_disk_{name}"), |b| {
            b.iter(|| tokio.block_on(hit(disk, black_box(&k))))
        });
    }

    // the memory held while a 512 MiB object streams from disk
    tokio.block_on(put(disk, "huge", 512 << 20, 1 << 20));
    let k = key("huge");
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let before = rss_bytes();
    let p = peak.clone();
    let sampler = std::thread::spawn(move || {
        for _ in 0..100_000 {
            let r = rss_bytes();
            p.fetch_max(r, std::sync::atomic::Ordering::Relaxed);
            if p.load(std::sync::atomic::Ordering::Relaxed) == u64::MAX {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let started = std::time::Instant::now();
    let n = tokio.block_on(hit(disk, &k));
    let took = started.elapsed();
    let grew = peak
        .swap(u64::MAX, std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before);
    sampler.join().unwrap();
    assert_eq!(n, 512 << 20);
    println!(
        "\ncache: streamed a 512 MiB object from the disk tier in {took:?}: process RSS grew {:.1} MiB at most",
        grew as f64 / 1048576.0
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
