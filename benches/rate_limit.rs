//! Rate limiter accuracy and cost.
//!
//! Accuracy: the estimator is a count-min sketch of fixed size, so with many distinct keys it
//! can only over-count. This bench measures false rejections, i.e. requests rejected although
//! their key stayed under its limit, for 10,000 and for 1,000,000 distinct client IPs in one
//! window, with the default sizing (`active_keys: 10000`) and with `active_keys` sized to the
//! load. Each key sends `limit - 1` requests, so every rejection is a false one.
//!
//! Cost: one `rate_limit` decision (estimate + count) for a client IP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse_plugins::rate_limit::RateLimit;

fn limiter(requests: u64, active_keys: usize) -> RateLimit {
    gatehouse_plugins::api::testing::build(&format!(
        "key: client_ip\nrequests: {requests}\nper: 1h\nactive_keys: {active_keys}"
    ))
    .unwrap()
}

fn ip(i: u32) -> IpAddr {
    // 10.0.0.0/8 and beyond: distinct addresses
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000u32.wrapping_add(i)))
}

fn false_rejections(keys: u32, limit: u64, active_keys: usize) -> (u64, u64) {
    let rl = limiter(limit, active_keys);
    let (mut sent, mut rejected) = (0u64, 0u64);
    for round in 0..(limit - 1) {
        for k in 0..keys {
            let _ = round;
            sent += 1;
            if !rl.check_ip(ip(k)) {
                rejected += 1;
            }
        }
    }
    (sent, rejected)
}

fn report() {
    println!("\nrate_limit false rejections (each key sends limit-1 = 4 requests in one window):");
    println!(
        "{:>10} {:>12} {:>12} {:>10} {:>14}",
        "keys", "active_keys", "requests", "rejected", "rate"
    );
    for (keys, active) in [
        (10_000u32, 10_000usize),
        (100_000, 10_000),
        (1_000_000, 10_000),
        (1_000_000, 1_000_000),
    ] {
        let (sent, rejected) = false_rejections(keys, 5, active);
        println!(
            "{keys:>10} {active:>12} {sent:>12} {rejected:>10} {:>13.6}%",
            rejected as f64 * 100.0 / sent as f64
        );
    }
}

fn bench(c: &mut Criterion) {
    report();
    let rl = limiter(1_000_000, 10_000);
    let mut i = 0u32;
    c.bench_function("rate_limit/check_ip", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(rl.check_ip(ip(i % 10_000)))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
