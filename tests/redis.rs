//! Global rate limits on a real `redis-server` (one per test, on a unix socket): exact counts
//! across three gateway processes, the `scope: local` control, and what happens when Redis
//! hangs, restarts or loses its scripts, for each `on_error` mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::redis::TestRedis;
use common::{TestGateway, TestUpstream};

/// A gateway in front of `up` with `routes`, sharing `redis` (`extra`: more of the `redis`
/// section).
async fn gateway(up: &TestUpstream, redis: &TestRedis, extra: &str, routes: &str) -> TestGateway {
    let (addr, url) = (up.addr, redis.url());
    TestGateway::start(|p| {
        format!(
            "{}redis:\n  url: \"{url}\"\n{extra}",
            common::simple_config(p, &format!("  up:\n    backends: [\"{addr}\"]\n"), routes)
        )
    })
    .await
}

async fn status(c: &reqwest::Client, url: &str, key: &str) -> u16 {
    c.get(url)
        .header("x-api-key", key)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Waits (at most 16 s) until Redis's clock is at least 1 s into a 60 s window and 16 s
/// from its end, so that a short burst sees one window only.
fn fresh_window(redis: &TestRedis) {
    let at = redis.now_ms() % 60_000;
    if !(1_000..44_000).contains(&at) {
        let wait = (60_000 - at + 1_000) % 60_000;
        std::thread::sleep(Duration::from_millis(wait));
    }
}

/// `n` requests spread round-robin over `urls`, 6 at a time: the count of each status.
async fn offer(urls: &[String], key: &str, n: usize) -> std::collections::BTreeMap<u16, usize> {
    let c = reqwest::Client::new();
    let mut out = std::collections::BTreeMap::new();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let (c, url, key) = (c.clone(), urls[i % urls.len()].clone(), key.to_string());
        set.spawn(async move { status(&c, &url, &key).await });
        if set.len() >= 6 {
            *out.entry(set.join_next().await.unwrap().unwrap())
                .or_default() += 1;
        }
    }
    while let Some(s) = set.join_next().await {
        *out.entry(s.unwrap()).or_default() += 1;
    }
    out
}

/// Three gateways sharing `redis` (a generous timeout: a debug build on a loaded CI machine
/// must not fall back; `deny` otherwise), each knowing of the other two (their shares of a
/// limit depend on it), started at a fresh window of Redis's clock.
async fn three_gateways(up: &TestUpstream, redis: &TestRedis, routes: &str) -> [TestGateway; 3] {
    let extra = "  timeout: 1s\n  on_error: deny\n";
    let gws = [
        gateway(up, redis, extra, routes).await,
        gateway(up, redis, extra, routes).await,
        gateway(up, redis, extra, routes).await,
    ];
    for g in &gws {
        assert!(
            g.metric_reaches("gatehouse_redis_instances", 3.0, Duration::from_secs(5))
                .await,
            "instances not seen"
        );
    }
    fresh_window(redis);
    gws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limit_holds_exactly_across_three_instances() {
    let redis = TestRedis::start();
    let up = TestUpstream::start("up").await;
    let routes = "  - id: global\n    match: { path_prefix: /g }\n    upstream: up\n    plugins:\n      - rate_limit: { key: \"header:X-Api-Key\", requests: 100, per: 60s, scope: global }\n  - id: local\n    match: { path_prefix: /l }\n    upstream: up\n    plugins:\n      - rate_limit: { key: \"header:X-Api-Key\", requests: 100, per: 60s }\n";
    let gws = three_gateways(&up, &redis, routes).await;
    let global: Vec<String> = gws.iter().map(|g| g.url("/g")).collect();
    let got = offer(&global, "key-1", 300).await;
    assert_eq!(
        got.get(&200),
        Some(&100),
        "exactly the limit admitted: {got:?}"
    );
    assert_eq!(got.get(&429), Some(&200), "{got:?}");
    // the control: each instance counting alone admits its 100 of the 300
    let local: Vec<String> = gws.iter().map(|g| g.url("/l")).collect();
    let got = offer(&local, "key-1", 300).await;
    assert_eq!(got.get(&200), Some(&300), "{got:?}");
    // one key per counted value, hash-tagged, with a TTL
    let keys = redis.cmd(&["KEYS", "gh:rl:global:*"]);
    let redis::Value::Array(keys) = keys else {
        panic!("{keys:?}")
    };
    assert_eq!(keys.len(), 1, "{keys:?}");
    let redis::Value::BulkString(k) = &keys[0] else {
        panic!()
    };
    let k = String::from_utf8_lossy(k).into_owned();
    assert!(
        k.starts_with("gh:rl:global:header:X-Api-Key:{") && k.ends_with('}'),
        "{k}"
    );
    let ttl = redis.cmd(&["PTTL", &k]);
    assert!(
        matches!(ttl, redis::Value::Int(t) if t > 60_000 && t <= 120_000),
        "{ttl:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_keys_are_refused_without_asking_redis() {
    let redis = TestRedis::start();
    let up = TestUpstream::start("up").await;
    let routes = "  - id: r\n    upstream: up\n    plugins:\n      - rate_limit: { key: \"header:X-Api-Key\", requests: 3, per: 60s, scope: global }\n";
    let gw = gateway(&up, &redis, "  timeout: 1s\n", routes).await;
    fresh_window(&redis);
    let c = reqwest::Client::new();
    for _ in 0..3 {
        assert_eq!(status(&c, &gw.url("/"), "k").await, 200);
    }
    let r = c
        .get(gw.url("/"))
        .header("x-api-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let before = redis.calls("evalsha");
    for _ in 0..20 {
        assert_eq!(status(&c, &gw.url("/"), "k").await, 429);
    }
    assert_eq!(
        redis.calls("evalsha"),
        before,
        "refused locally, Redis not asked"
    );
    assert_eq!(status(&c, &gw.url("/"), "other").await, 200);
}

/// Requests answered while Redis hangs, each within `bound`: the statuses seen.
async fn during_hang(gw: &TestGateway, n: usize, bound: Duration) -> Vec<u16> {
    let c = reqwest::Client::new();
    let mut seen = Vec::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        seen.push(status(&c, &gw.url("/"), "k").await);
        slowest = slowest.max(t.elapsed());
    }
    eprintln!("slowest request while Redis hung: {slowest:?}");
    assert!(slowest < bound, "a request waited {slowest:?}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_trouble_never_stalls_traffic_and_enforcement_comes_back() {
    let mut redis = TestRedis::start();
    let up = TestUpstream::start("up").await;
    let routes = "  - id: r\n    upstream: up\n    plugins:\n      - rate_limit: { key: \"header:X-Api-Key\", requests: 1000, per: 60s, scope: global }\n";
    let gw = gateway(&up, &redis, "  timeout: 50ms\n  on_error: deny\n", routes).await;
    let c = reqwest::Client::new();
    assert_eq!(status(&c, &gw.url("/"), "k").await, 200);

    // hung (SIGSTOP): each request waits at most the timeout (plus a debug build's slack),
    // `deny` answers 503 with Retry-After; the breaker opens and Redis is not called
    redis.pause();
    let seen = during_hang(&gw, 12, Duration::from_millis(750)).await;
    assert!(seen.iter().all(|s| *s == 503), "{seen:?}");
    assert_eq!(gw.metric("gatehouse_redis_breaker_open").await, 1.0);
    let r = c
        .get(gw.url("/"))
        .header("x-api-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        gw.get_admin("/ready").await,
        200,
        "ready during a Redis outage"
    );
    // back: enforcement resumes within 2 s (a probe every 500 ms)
    redis.resume();
    let t = Instant::now();
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            status(&c, &gw.url("/"), "k").await == 200
        })
        .await
    );
    eprintln!("enforcement back {:?} after Redis resumed", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(gw.metric("gatehouse_redis_breaker_open").await, 0.0);

    // CLIENT PAUSE (every client's commands held for 400 ms): bounded as a hang is, and the
    // limit is enforced again once the pause ends
    redis.cmd(&["CLIENT", "PAUSE", "400", "ALL"]);
    let seen = during_hang(&gw, 4, Duration::from_millis(750)).await;
    eprintln!("during CLIENT PAUSE: {seen:?}");
    assert!(seen.contains(&503), "{seen:?}");
    let back = |what: &'static str| {
        let (c, url) = (c.clone(), gw.url("/"));
        async move {
            let t = Instant::now();
            assert!(
                common::eventually(Duration::from_secs(5), || async {
                    status(&c, &url, "k").await == 200
                })
                .await,
                "no recovery after {what}"
            );
            assert!(
                t.elapsed() < Duration::from_millis(2500),
                "{what}: {:?}",
                t.elapsed()
            );
        }
    };
    back("CLIENT PAUSE").await;
    // CLIENT KILL (the gateway's connections closed by the server): it reconnects by itself
    redis.cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
    back("CLIENT KILL").await;

    // scripts flushed: EVALSHA's NOSCRIPT loads it again, the request is answered
    redis.cmd(&["SCRIPT", "FLUSH"]);
    assert_eq!(status(&c, &gw.url("/"), "k").await, 200);

    // killed and restarted: the connection comes back on its own
    redis.restart();
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            status(&c, &gw.url("/"), "k").await == 200
        })
        .await,
        "no recovery after a restart"
    );
    assert!(
        gw.metric("gatehouse_redis_errors_total{op=\"rate_limit\",reason=\"timeout\"}")
            .await
            >= 1.0
    );
    assert!(
        gw.metric("gatehouse_ratelimit_decisions_total{result=\"fallback_deny\",route=\"r\"}")
            .await
            >= 1.0
            || gw.metrics().await.contains("fallback_deny"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_allow_admits_and_local_enforces_a_share() {
    let redis = TestRedis::start();
    let up = TestUpstream::start("up").await;
    let routes = "  - id: r\n    upstream: up\n    plugins:\n      - rate_limit: { key: \"header:X-Api-Key\", requests: 4, per: 60s, scope: global }\n";
    let allow = gateway(&up, &redis, "  timeout: 50ms\n  on_error: allow\n", routes).await;
    let local = gateway(&up, &redis, "  timeout: 50ms\n  on_error: local\n", routes).await;
    // both registered: the local share is ceil(4 / 2) = 2
    assert!(
        local
            .metric_reaches("gatehouse_redis_instances", 2.0, Duration::from_secs(5))
            .await
    );
    redis.pause();
    let seen = during_hang(&allow, 10, Duration::from_millis(750)).await;
    assert!(seen.iter().all(|s| *s == 200), "allow: {seen:?}");
    let seen = during_hang(&local, 6, Duration::from_millis(750)).await;
    assert_eq!(seen, [200, 200, 429, 429, 429, 429], "local share");
    redis.resume();
}

#[test]
fn config_errors_name_the_yaml_path() {
    let base = "upstreams:\n  up: { backends: [\"127.0.0.1:1\"] }\n";
    let route = "routes:\n  - id: r\n    upstream: up\n";
    let cases: [(String, &[&str]); 5] = [
        (
            format!("{route}    plugins:\n      - rate_limit: {{ requests: 1, per: 1s, scope: global }}\n"),
            &["routes[0].plugins[0].rate_limit.scope: `scope: global` needs the top-level `redis` section"],
        ),
        (
            format!("redis:\n  url: \"http://nope\"\n{route}"),
            &["redis.url: invalid Redis URL"],
        ),
        (
            format!("redis:\n  url: \"redis://127.0.0.1:1\"\n{route}    plugins:\n      - rate_limit: {{ requests: 1, per: 1s, scope: global, sync: 500ms }}\n"),
            &["rate_limit.sync: an interval between 10ms and a quarter of `per`"],
        ),
        (
            format!("redis:\n  url: \"redis://127.0.0.1:1\"\n  tls: {{ ca: ca.pem }}\n{route}"),
            &["redis.tls: needs a `rediss://` URL"],
        ),
        (
            format!("redis:\n  url: \"rediss://127.0.0.1:1\"\n  tls: {{ ca: /nonexistent/ca.pem, cert: c.pem }}\n{route}"),
            &[
                "redis.tls.ca: cannot read `/nonexistent/ca.pem`",
                "redis.tls.cert: cannot read `c.pem`",
            ],
        ),
    ];
    for (yaml, expected) in cases {
        let (code, out) = common::check_yaml(&format!("{base}{yaml}"));
        assert_ne!(code, 0, "{yaml}");
        for e in expected {
            assert!(out.contains(e), "{e}: {out}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_a_client_certificate() {
    let ca = common::pki::Ca::new();
    ca.leaf("redis", &["127.0.0.1"], false);
    ca.client_leaf("gatehouse", "gatehouse", &["gatehouse.test"]);
    let (redis, url) = TestRedis::start_tls(&ca, "redis", true);
    let up = TestUpstream::start("up").await;
    let addr = up.addr;
    let routes = "  - id: r\n    upstream: up\n    plugins:\n      - rate_limit: { key: \"header:X-Api-Key\", requests: 3, per: 60s, scope: global }\n";
    let start = |tls: String| {
        let url = url.clone();
        TestGateway::start(move |p| {
            format!(
                "{}redis:\n  url: \"{url}\"\n  timeout: 500ms\n  on_error: deny\n  tls:\n{tls}",
                common::simple_config(p, &format!("  up:\n    backends: [\"{addr}\"]\n"), routes)
            )
        })
    };
    let dir = ca.path("");
    let dir = dir.display();
    let gw = start(format!(
        "    ca: \"{dir}/redis-ca.pem\"\n    cert: \"{dir}/gatehouse.pem\"\n    key: \"{dir}/gatehouse.key\"\n"
    ))
    .await;
    // the link connects in the background: wait until it is up
    assert!(
        gw.metric_reaches("gatehouse_redis_up", 1.0, Duration::from_secs(10))
            .await,
        "{}",
        gw.stderr()
    );
    let c = reqwest::Client::new();
    let before = redis.calls("evalsha");
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(status(&c, &gw.url("/"), "tls-key").await);
    }
    assert_eq!(seen, [200, 200, 200, 429, 429], "counted on Redis over TLS");
    assert!(redis.calls("evalsha") - before >= 3);

    // without the client certificate the server refuses the handshake: never up, and
    // `on_error: deny` answers 503
    let anon = start(format!("    ca: \"{dir}/redis-ca.pem\"\n")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(anon.metric("gatehouse_redis_up").await, 0.0);
    assert_eq!(status(&c, &anon.url("/"), "tls-key").await, 503);
    // without the private CA the server's certificate is not trusted either
    let untrusting = start(format!(
        "    cert: \"{dir}/gatehouse.pem\"\n    key: \"{dir}/gatehouse.key\"\n"
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(untrusting.metric("gatehouse_redis_up").await, 0.0);
    assert_eq!(status(&c, &untrusting.url("/"), "other-key").await, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_password_and_url_credentials_are_redacted() {
    let redis = TestRedis::start();
    let up = TestUpstream::start("up").await;
    let gw = gateway(
        &up,
        &redis,
        "  password: \"planted-redis-secret\"\n",
        "  - { id: r, upstream: up }\n",
    )
    .await;
    let config = gw.get_admin_text("/config").await;
    assert!(!config.contains("planted-redis-secret"), "{config}");
    assert!(config.contains("<redacted>"), "{config}");
    // credentials in the URL (Redis on a port nobody listens on: the gateway serves anyway)
    let addr = up.addr;
    let gw = TestGateway::start(|p| {
        format!(
            "{}redis:\n  url: \"redis://user:planted-url-secret@127.0.0.1:1/0\"\n",
            common::simple_config(
                p,
                &format!("  up:\n    backends: [\"{addr}\"]\n"),
                "  - { id: r, upstream: up }\n"
            )
        )
    })
    .await;
    let config = gw.get_admin_text("/config").await;
    assert!(!config.contains("planted-url-secret"), "{config}");
    assert!(config.contains("redis://***@127.0.0.1:1/0"), "{config}");
    assert!(!gw.stderr().contains("planted-url-secret"));
}

/// A gateway caching `/` for 60 s in front of `up`, with Redis at `url`.
async fn caching_gateway(up: &TestUpstream, url: &str) -> TestGateway {
    let addr = up.addr;
    TestGateway::start(|p| {
        format!(
            "{}redis:\n  url: \"{url}\"\n  timeout: 200ms\n",
            common::simple_config(
                p,
                &format!("  up:\n    backends: [\"{addr}\"]\n"),
                "  - id: c\n    upstream: up\n    plugins:\n      - cache: { default_ttl: 60s }\n",
            )
        )
    })
    .await
}

async fn cache_status(gw: &TestGateway, path: &str) -> String {
    let r = gw.get(path).await;
    assert_eq!(r.status(), 200);
    r.headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn is_hit(gw: &TestGateway, path: &str) -> bool {
    cache_status(gw, path).await.contains("hit")
}

async fn purge(gw: &TestGateway, path: &str) -> serde_json::Value {
    gw.client
        .post(gw.admin_url("/cache/purge"))
        .json(&serde_json::json!({ "url": format!("http://127.0.0.1{path}") }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_reaches_every_instance_and_a_cut_off_one_replays_or_flushes() {
    let redis = TestRedis::start_tcp();
    let relay = common::redis::Relay::start(redis.tcp_addr()).await;
    let up = TestUpstream::start("up").await;
    let direct = format!("redis://{}", redis.tcp_addr());
    let a = caching_gateway(&up, &direct).await;
    let b = caching_gateway(&up, &direct).await;
    let c = caching_gateway(&up, &format!("redis://{}", relay.addr)).await;
    let all = [&a, &b, &c];
    // every feed is reading before the first purge
    for g in all {
        assert!(
            g.metric_reaches("gatehouse_cache_purge_feed_up", 1.0, Duration::from_secs(5))
                .await
        );
    }
    for g in all {
        cache_status(g, "/x").await;
        assert!(is_hit(g, "/x").await);
    }
    // purged on A: gone on B and C within 200 ms
    let answer = purge(&a, "/x").await;
    assert_eq!(answer["purged"], 1, "{answer}");
    assert_eq!(answer["propagated"], true, "{answer}");
    let t = Instant::now();
    for g in [&b, &c] {
        assert!(
            common::eventually(Duration::from_secs(2), || async {
                g.metric("gatehouse_cache_purges_shared_total{result=\"applied\"}")
                    .await
                    >= 1.0
            })
            .await
        );
    }
    eprintln!("purge applied everywhere after {:?}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_millis(200) * 5,
        "{:?}",
        t.elapsed()
    );
    for g in all {
        assert!(!is_hit(g, "/x").await, "still cached after the purge");
    }

    // C cut off Redis while A purges /y: on reconnecting it replays the purge (and keeps /z)
    for g in all {
        cache_status(g, "/y").await;
        cache_status(g, "/z").await;
    }
    relay.cut();
    assert!(
        c.metric_reaches("gatehouse_cache_purge_feed_up", 0.0, Duration::from_secs(5))
            .await
    );
    assert_eq!(purge(&a, "/y").await["propagated"], true);
    assert!(is_hit(&c, "/y").await, "C cannot have heard of it yet");
    relay.restore();
    assert!(
        common::eventually(Duration::from_secs(5), || async { !is_hit(&c, "/y").await }).await,
        "C did not replay the purge it missed"
    );
    assert!(
        is_hit(&c, "/z").await,
        "a replay purges only what was purged"
    );
    assert_eq!(
        c.metric("gatehouse_cache_flushes_total{reason=\"gap\"}")
            .await,
        0.0
    );

    // cut again, purge, and the stream trimmed past C: it cannot prove what it missed and
    // empties its cache
    cache_status(&c, "/y").await;
    relay.cut();
    assert!(
        c.metric_reaches("gatehouse_cache_purge_feed_up", 0.0, Duration::from_secs(5))
            .await
    );
    assert_eq!(purge(&a, "/w").await["propagated"], true);
    redis.cmd(&["XTRIM", "gh:cache:purge", "MAXLEN", "0"]);
    relay.restore();
    assert!(
        c.metric_reaches(
            "gatehouse_cache_flushes_total{reason=\"gap\"}",
            1.0,
            Duration::from_secs(5)
        )
        .await,
        "no flush after a gap"
    );
    assert!(!is_hit(&c, "/z").await, "the whole cache went");
    assert!(
        is_hit(&b, "/z").await,
        "B missed nothing: it keeps its cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_empties_every_cache_and_purges_say_when_not_propagated() {
    let mut redis = TestRedis::start();
    let up = TestUpstream::start("up").await;
    let gw = caching_gateway(&up, &redis.url()).await;
    assert!(
        gw.metric_reaches("gatehouse_cache_purge_feed_up", 1.0, Duration::from_secs(5))
            .await
    );
    cache_status(&gw, "/r").await;
    assert!(is_hit(&gw, "/r").await);
    redis.restart();
    assert!(
        gw.metric_reaches(
            "gatehouse_cache_flushes_total{reason=\"restart\"}",
            1.0,
            Duration::from_secs(10)
        )
        .await,
        "no flush after Redis restarted"
    );
    assert!(!is_hit(&gw, "/r").await);
    // Redis away: the purge is local only, and the answer says so
    redis.pause();
    cache_status(&gw, "/s").await;
    let answer = purge(&gw, "/s").await;
    assert_eq!(answer["purged"], 1, "{answer}");
    assert_eq!(answer["propagated"], false, "{answer}");
    redis.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_sync_stays_near_the_limit_and_spares_redis_below_it() {
    let redis = TestRedis::start();
    let up = TestUpstream::start("up").await;
    let routes = "  - id: h\n    match: { path_prefix: /h }\n    upstream: up\n    plugins:\n      - rate_limit: { key: \"header:X-Api-Key\", requests: 100, per: 60s, scope: global, sync: 100ms }\n  - id: far\n    match: { path_prefix: /far }\n    upstream: up\n    plugins:\n      - rate_limit: { key: \"header:X-Api-Key\", requests: 1000000, per: 60s, scope: global, sync: 100ms }\n";
    let gws = three_gateways(&up, &redis, routes).await;
    let urls: Vec<String> = gws.iter().map(|g| g.url("/h")).collect();
    // 3 x the limit across the three: between L and L + max(1, 2%)
    let got = offer(&urls, "key-1", 300).await;
    let admitted = got.get(&200).copied().unwrap_or(0);
    eprintln!("sync 100ms, 300 offered: {got:?}");
    assert!((100..=102).contains(&admitted), "{got:?}");
    // a flood of 50 x the limit as fast as the client goes: within 5%
    let t = Instant::now();
    let got = offer(&urls, "key-2", 5000).await;
    let admitted = got.get(&200).copied().unwrap_or(0);
    eprintln!("sync 100ms, flood of 5000 in {:?}: {got:?}", t.elapsed());
    assert!((100..=105).contains(&admitted), "{got:?}");

    // far below its limit: after the first request (exact, to learn the key) no Redis call
    // on the request path, only one batched push per interval
    let c = reqwest::Client::new();
    let far = gws[0].url("/far");
    assert_eq!(status(&c, &far, "calm").await, 200);
    // every count of the earlier phases pushed (and the key known from its first answer)
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&c, &far, "calm").await, 200);
    // the gateway's own count of request-path calls (`op="rate_limit"`) and pushes
    // (`op="sync"`); Redis's command counts would include every instance's heartbeat
    let calls = |op: &'static str| {
        let gw = &gws[0];
        async move {
            gw.metric(&format!(
                "gatehouse_redis_call_duration_seconds_count{{op=\"{op}\"}}"
            ))
            .await
        }
    };
    let (exact, pushes) = (calls("rate_limit").await, calls("sync").await);
    let t = Instant::now();
    for _ in 0..200 {
        assert_eq!(status(&c, &far, "calm").await, 200);
    }
    let elapsed = t.elapsed();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let pushes = calls("sync").await - pushes;
    let request_path = calls("rate_limit").await - exact;
    eprintln!(
        "200 requests in {elapsed:?}: {pushes} pushes, {request_path} calls on the request path"
    );
    assert!(
        pushes >= 1.0 && pushes <= (elapsed.as_millis() / 100 + 4) as f64,
        "{pushes}"
    );
    assert_eq!(request_path, 0.0, "Redis calls on the request path");
}
