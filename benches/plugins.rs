//! Plugin chain cost per request: the full chain used by the load comparison (cors, jwt HS256,
//! rate_limit not triggered, headers) against an empty chain, request and response hooks,
//! on a parsed request; the `lua` plugin against the compiled `headers` plugin; plus the cache
//! key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse_plugins::api::testing::{session_from_bytes, test_info};
use gatehouse_plugins::{BuildEnv, Plugin, PluginCtx};
use pingora_http::{RequestHeader, ResponseHeader};

const SECRET: &str = "bench-secret-bench-secret-bench-secret";

fn chain(yaml: &str) -> Vec<Arc<dyn Plugin>> {
    let reg = gatehouse_plugins::builtins();
    let list: Vec<serde_yaml::Mapping> = serde_yaml::from_str(yaml).unwrap();
    list.into_iter()
        .map(|m| {
            let (k, v) = m.into_iter().next().unwrap();
            reg.build(k.as_str().unwrap(), v, &mut BuildEnv::default())
                .unwrap()
                .plugin
        })
        .collect()
}

fn token() -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 86400;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "bench", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let full = chain(&format!(
        r#"
- cors: {{ allow_origins: ["https://app.example.com"], allow_credentials: true }}
- jwt: {{ keys: [{{ algorithm: HS256, secret: "{SECRET}" }}] }}
- rate_limit: {{ key: client_ip, requests: 1000000000, per: 1s }}
- headers: {{ request: {{ set: {{ X-Env: bench }} }}, response: {{ set: {{ X-Served-By: gatehouse }} }} }}
"#
    ));
    let raw = format!(
        "GET /api/orders?page=2 HTTP/1.1\r\nHost: api.example.com\r\nOrigin: https://app.example.com\r\nAuthorization: Bearer {}\r\nAccept: application/json\r\n\r\n",
        token()
    );
    let mut session = rt.block_on(session_from_bytes(raw.as_bytes())).unwrap();
    let resp = ResponseHeader::build(200, Some(4)).unwrap();
    let mut run = |plugins: &[Arc<dyn Plugin>]| {
        rt.block_on(async {
            let mut info = test_info();
            let mut slots: Vec<Option<Box<dyn std::any::Any + Send + Sync>>> =
                (0..plugins.len()).map(|_| None).collect();
            for (i, p) in plugins.iter().enumerate() {
                let mut cx = PluginCtx::new(&mut info, &mut slots[i]);
                black_box(p.request_filter(&mut session, &mut cx).await.unwrap());
            }
            let mut up: RequestHeader = session.req_header().clone();
            for (i, p) in plugins.iter().enumerate() {
                let mut cx = PluginCtx::new(&mut info, &mut slots[i]);
                p.upstream_request_filter(&mut session, &mut up, &mut cx)
                    .await
                    .unwrap();
            }
            let mut r = resp.clone();
            for (i, p) in plugins.iter().enumerate().rev() {
                let mut cx = PluginCtx::new(&mut info, &mut slots[i]);
                p.response_filter(&mut session, &mut r, &mut cx)
                    .await
                    .unwrap();
            }
            for (i, p) in plugins.iter().enumerate().rev() {
                let mut cx = PluginCtx::new(&mut info, &mut slots[i]);
                p.logging(&mut session, None, &mut cx).await;
            }
            black_box(r);
        })
    };
    let mut g = c.benchmark_group("plugin_chain");
    g.bench_function("empty", |b| b.iter(|| run(&[])));
    g.bench_function("cors+jwt+rate_limit+headers", |b| b.iter(|| run(&full)));
    g.finish();

    // the `lua` plugin: one phase call reading a header and setting one, the three-phase
    // script of the README, and the compiled `headers` plugin doing the same set
    let one_line = chain(
        r#"
- lua: { access: 'gatehouse.service.request.set_header("x-tenant", gatehouse.request.get_header("accept"))' }
"#,
    );
    let three = chain(
        r#"
- lua:
    config: { default_tenant: acme }
    access: |
      local t = gatehouse.request.get_header("x-tenant") or conf.default_tenant
      ctx.tenant = t
      gatehouse.service.request.set_header("x-tenant", t)
    header_filter: |
      gatehouse.response.set_header("x-tenant", ctx.tenant)
    log: |
      local status = gatehouse.response.get_status()
"#,
    );
    let rust = chain("- headers: { request: { set: { X-Tenant: acme } } }\n");
    let mut g = c.benchmark_group("lua");
    g.bench_function("no plugin", |b| b.iter(|| run(&[])));
    g.bench_function("headers plugin (compiled)", |b| b.iter(|| run(&rust)));
    g.bench_function("access: header read + set", |b| b.iter(|| run(&one_line)));
    g.bench_function("access + header_filter + log (ctx)", |b| {
        b.iter(|| run(&three))
    });
    g.finish();

    let mut req = RequestHeader::build("GET", b"/catalog/items/42?lang=de&page=3", None).unwrap();
    req.insert_header("host", "Shop.Example.com").unwrap();
    c.bench_function("cache_key", |b| {
        b.iter(|| gatehouse::proxy::cache::url_key(black_box(&req), 8080))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
