//! Cache storage under a workload larger than the cache: the store plus Pingora's LRU
//! eviction manager, driven the way the proxy drives them (write, finish, admit, purge what
//! the LRU evicts). Reports the bytes held against `max_size` and the process RSS growth, then
//! measures a lookup (hit) on a warm store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse::proxy::cache::CacheRuntime;
use pingora_cache::eviction::{CacheEntryKey, EvictionManager};
use pingora_cache::storage::{MissFinishType, PurgeTarget, PurgeType, Storage};
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

async fn fill(rt: CacheRuntime, objects: usize, size: usize) {
    let span = Span::inactive().handle();
    let body = Bytes::from(vec![b'x'; size]);
    for i in 0..objects {
        let key = CacheKey::new(format!("GET http://bench:80/obj/{i}"), "");
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("content-length", size).unwrap();
        let fresh = SystemTime::now() + Duration::from_secs(3600);
        let meta = CacheMeta::new(fresh, SystemTime::now(), 0, 0, h);
        let mut miss = rt.store.get_miss_handler(&key, &meta, &span).await.unwrap();
        miss.write_body(body.clone(), true).await.unwrap();
        let MissFinishType::Created(weight) = miss.finish().await.unwrap() else {
            unreachable!()
        };
        for evicted in rt
            .eviction
            .admit(CacheEntryKey::KeyOnly(key.to_compact()), weight, fresh)
        {
            rt.store
                .purge(PurgeTarget::Exact(&evicted), PurgeType::Eviction, &span)
                .await
                .unwrap();
        }
    }
}

fn bench(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let max = 64usize << 20;
    let rt = CacheRuntime::new(max, Duration::from_secs(3));
    let before = rss_bytes();
    // 4x the cache: 256 MiB of 16 KiB objects through a 64 MiB cache
    tokio.block_on(fill(rt, 16_384, 16 << 10));
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
    let key = CacheKey::new("GET http://bench:80/obj/16383", "");
    c.bench_function("cache/lookup_hit_16KiB", |b| {
        b.iter(|| {
            tokio.block_on(async {
                let hit = rt.store.lookup(black_box(&key), &span).await.unwrap();
                black_box(hit.is_some())
            })
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
