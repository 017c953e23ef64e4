//! Router lookup cost with 10, 1,000 and 10,000 routes (exact hosts with prefixes, plus a
//! shared any-host table), and request-id generation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use gatehouse::router::{HostMatch, PathMatch, RouteMatch, Router};
use http::{HeaderMap, Method};

fn table(n: usize) -> Router {
    let mut routes = Vec::with_capacity(n);
    for i in 0..n {
        let host = if i % 2 == 0 {
            HostMatch::Exact(format!("svc{i}.example.com"))
        } else {
            HostMatch::Any
        };
        routes.push(RouteMatch {
            host,
            path: PathMatch::Prefix(format!("/api/v1/svc{i}")),
            methods: None,
            headers: vec![],
        });
    }
    Router::new(routes)
}

fn bench_router(c: &mut Criterion) {
    let mut g = c.benchmark_group("router_lookup");
    let headers = HeaderMap::new();
    for n in [10usize, 1_000, 10_000] {
        let r = table(n);
        let target = n - 1;
        let host = format!("svc{}.example.com", target - (target % 2));
        let path = format!("/api/v1/svc{target}/items/42");
        assert!(r
            .lookup(Some(&host), &path, &Method::GET, &headers)
            .is_some());
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                r.lookup(
                    black_box(Some(host.as_str())),
                    black_box(&path),
                    &Method::GET,
                    &headers,
                )
            })
        });
    }
    g.finish();
}

fn bench_request_id(c: &mut Criterion) {
    c.bench_function("request_id", |b| {
        b.iter(gatehouse::proxy::ctx::new_request_id)
    });
}

criterion_group!(benches, bench_router, bench_request_id);
criterion_main!(benches);
