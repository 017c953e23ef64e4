//! Spans exported over OTLP/HTTP to a receiver in the test (the protobuf decoded with the
//! OpenTelemetry proto types): names, parent/child links, attributes, the trace id shared
//! with the access log and the backend, sampling, retries, a collector that is down, and a
//! reload that turns tracing on and off.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{eventually, TestGateway, TestUpstream};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// Every span the collector received, with its service name.
fn spans(collector: &TestUpstream) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for seen in collector.seen() {
        assert_eq!(seen.path, "/v1/traces");
        assert_eq!(seen.header("content-type"), Some("application/x-protobuf"));
        let req = ExportTraceServiceRequest::decode(&seen.body[..]).unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Any::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push((service.clone(), s));
                }
            }
        }
    }
    out
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Any::StringValue(s)) => Some(s.clone()),
            Some(Any::IntValue(i)) => Some(i.to_string()),
            Some(Any::BoolValue(b)) => Some(b.to_string()),
            _ => None,
        })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Routes `api` (to `up`: both backends, one retry on 503) and `broken` (nothing listens);
/// spans to `collector` with `sampling`.
fn config(p: &common::Ports, up: &str, collector: &str, sampling: &str) -> String {
    format!(
        "{}tracing:\n  otlp: {{ endpoint: \"http://{collector}\", headers: {{ authorization: \"Bearer t\" }}, timeout: 2s }}\n  service_name: edge\n  sampling: {sampling}\n  resource: {{ deployment.environment: test }}\n",
        common::simple_config(
            p,
            &format!("  up:\n    backends: [{up}]\n    retry: {{ attempts: 1, on: [\"503\"], budget: 1.0 }}\n  down:\n    backends: [\"127.0.0.1:1\"]\n"),
            "  - id: api\n    match: { path_prefix: /api }\n    upstream: up\n  - id: broken\n    match: { path_prefix: /broken }\n    upstream: down\n  - id: denied\n    match: { path_prefix: /denied }\n    upstream: up\n    plugins: [{ access: { deny: [\"127.0.0.1/32\"] } }]\n",
        )
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_server_span_with_a_client_span_per_attempt() {
    let up = TestUpstream::start("up").await;
    let up2 = TestUpstream::start("up2").await;
    let collector = TestUpstream::start("collector").await;
    let ua = format!("\"{}\", \"{}\"", up.addr, up2.addr);
    let ca = collector.addr.to_string();
    let gw = TestGateway::start(|p| config(p, &ua, &ca, "{ ratio: 1.0 }")).await;
    let r = gw
        .client
        .get(gw.url("/api/users?x=1"))
        .header("user-agent", "tracing-test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            spans(&collector).len() >= 2
        })
        .await,
        "no spans"
    );
    let all = spans(&collector);
    let (service, server) = all
        .iter()
        .find(|(_, s)| s.kind == 2)
        .expect("no server span");
    assert_eq!(service, "edge");
    assert_eq!(server.name, "api");
    assert!(server.parent_span_id.is_empty(), "a new trace: no parent");
    assert_eq!(attr(server, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(server, "http.route").as_deref(), Some("api"));
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(server, "url.path").as_deref(), Some("/api/users"));
    assert_eq!(attr(server, "client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        attr(server, "user_agent.original").as_deref(),
        Some("tracing-test")
    );
    assert_eq!(
        attr(server, "network.protocol.version").as_deref(),
        Some("1.1")
    );
    let request_id = attr(server, "gatehouse.request_id").unwrap();
    assert_eq!(r.headers()["x-request-id"], request_id.as_str());
    let (_, client) = all
        .iter()
        .find(|(_, s)| s.kind == 3)
        .expect("no client span");
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(client.parent_span_id, server.span_id);
    let backend = attr(client, "server.address").unwrap();
    let hit = if backend == up.addr.to_string() {
        &up
    } else {
        &up2
    };
    assert_eq!(backend, hit.addr.to_string());
    assert_eq!(attr(client, "gatehouse.attempt").as_deref(), Some("1"));
    assert!(client.start_time_unix_nano <= client.end_time_unix_nano);
    let sent = client
        .events
        .iter()
        .find(|e| e.name == "request sent")
        .unwrap();
    assert!(
        (client.start_time_unix_nano..=client.end_time_unix_nano).contains(&sent.time_unix_nano)
    );
    assert!(server.start_time_unix_nano <= client.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);
    // the backend's parent is the attempt span; the access log has the same trace
    let tp = hit.last().header("traceparent").unwrap().to_string();
    assert_eq!(
        tp,
        format!("00-{}-{}-01", hex(&server.trace_id), hex(&client.span_id))
    );
    let log = gw.log_entries(1).await;
    assert_eq!(log[0]["trace_id"], hex(&server.trace_id));
    // the collector got the configured header, which GET /config does not show
    assert_eq!(collector.last().header("authorization"), Some("Bearer t"));
    let shown = gw.get_admin_text("/config").await;
    assert!(shown.contains(r#""authorization":"<redacted>""#), "{shown}");
    assert!(!shown.contains("Bearer t"), "{shown}");
    assert!(gw.metric("gatehouse_trace_spans_exported_total").await >= 2.0);

    // a plugin's decision is an attribute of the server span
    assert_eq!(gw.get("/denied").await.status(), 403);
    assert!(
        eventually(Duration::from_secs(5), || async {
            spans(&collector)
                .iter()
                .any(|(_, s)| attr(s, "gatehouse.plugin.access").as_deref() == Some("denied"))
        })
        .await
    );

    // a retried request: two attempt spans, the second naming why
    up.set_status(503);
    up2.set_status(503);
    let before = spans(&collector).len();
    let r = gw.get("/api/retry").await;
    assert_eq!(r.status(), 503);
    assert!(
        eventually(Duration::from_secs(5), || async {
            spans(&collector).len() >= before + 3
        })
        .await
    );
    let all = spans(&collector);
    let server = &all
        .iter()
        .find(|(_, s)| s.kind == 2 && attr(s, "url.path").as_deref() == Some("/api/retry"))
        .unwrap()
        .1;
    assert_eq!(server.status.as_ref().map(|s| s.code), Some(2), "an error");
    let mut attempts: Vec<&Span> = all
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.kind == 3 && s.parent_span_id == server.span_id)
        .collect();
    attempts.sort_by_key(|s| attr(s, "gatehouse.attempt"));
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        attr(attempts[0], "http.response.status_code").as_deref(),
        Some("503")
    );
    assert_eq!(attr(attempts[1], "gatehouse.attempt").as_deref(), Some("2"));
    assert_eq!(
        attr(attempts[1], "gatehouse.retry_reason").as_deref(),
        Some("status 503")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_parent_the_ratio_and_errors() {
    let up = TestUpstream::start("up").await;
    let collector = TestUpstream::start("collector").await;
    let (ua, ca) = (format!("\"{}\"", up.addr), collector.addr.to_string());
    let gw = TestGateway::start(|p| {
        config(
            p,
            &ua,
            &ca,
            "{ ratio: 0.0, parent_based: true, always_errors: true }",
        )
    })
    .await;
    // ratio 0, no parent: nothing, and the backend is told "not sampled"
    for _ in 0..5 {
        assert_eq!(gw.get("/api/a").await.status(), 200);
    }
    assert!(up.last().header("traceparent").unwrap().ends_with("-00"));
    // a sampled parent: exported, as its child
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = gw
        .client
        .get(gw.url("/api/b"))
        .header("traceparent", parent)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // an unsampled parent: nothing
    let r = gw
        .client
        .get(gw.url("/api/c"))
        .header(
            "traceparent",
            "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // a gateway error (no backend answers): exported although not sampled at the start
    assert_eq!(gw.get("/broken").await.status(), 502);
    assert!(
        eventually(Duration::from_secs(5), || async {
            spans(&collector)
                .iter()
                .filter(|(_, s)| s.kind == 2)
                .count()
                >= 2
        })
        .await
    );
    // (one more flush interval: nothing else arrives)
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let all = spans(&collector);
    let servers: HashMap<String, &Span> = all
        .iter()
        .filter(|(_, s)| s.kind == 2)
        .map(|(_, s)| (attr(s, "url.path").unwrap(), s))
        .collect();
    let mut paths: Vec<&String> = servers.keys().collect();
    paths.sort();
    assert_eq!(paths, ["/api/b", "/broken"]);
    let b = servers["/api/b"];
    assert_eq!(hex(&b.trace_id), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(hex(&b.parent_span_id), "b7ad6b7169203331");
    let broken = servers["/broken"];
    assert_eq!(
        attr(broken, "http.response.status_code").as_deref(),
        Some("502")
    );
    assert!(attr(broken, "error.type").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_requests_nothing_and_drops_are_counted() {
    let up = TestUpstream::start("up").await;
    let ua = format!("\"{}\"", up.addr);
    let dead = common::free_port();
    let gw = TestGateway::start(|p| config(p, &ua, &format!("127.0.0.1:{dead}"), "{ ratio: 1.0 }"))
        .await;
    for _ in 0..20 {
        assert_eq!(gw.get("/api/x").await.status(), 200);
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            gw.metric("gatehouse_trace_spans_dropped_total{reason=\"export_failed\"}")
                .await
                >= 40.0
        })
        .await,
        "{}",
        gw.metrics().await
    );
    assert_eq!(gw.metric("gatehouse_trace_spans_exported_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_tracing_on_and_off() {
    let up = TestUpstream::start("up").await;
    let collector = TestUpstream::start("collector").await;
    let (ua, ca) = (format!("\"{}\"", up.addr), collector.addr.to_string());
    let ports = std::sync::Mutex::new(None);
    let gw = TestGateway::start(|p| {
        *ports.lock().unwrap() = Some(p.clone());
        common::simple_config(
            p,
            &format!("  up:\n    backends: [{ua}]\n"),
            "  - id: api\n    upstream: up\n",
        )
    })
    .await;
    let p = ports.lock().unwrap().clone().unwrap();
    assert_eq!(gw.get("/a").await.status(), 200);
    gw.write_config(&config(&p, &ua, &ca, "{ ratio: 1.0 }"));
    let r = gw.reload().await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(gw.get("/api/b").await.status(), 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            !spans(&collector).is_empty()
        })
        .await,
        "tracing did not start with the reload"
    );
    // off again: no more spans
    gw.write_config(&common::simple_config(
        &p,
        &format!("  up:\n    backends: [{ua}]\n"),
        "  - id: api\n    upstream: up\n",
    ));
    let r = gw.reload().await;
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let n = spans(&collector).len();
    assert_eq!(gw.get("/api/c").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(spans(&collector).len(), n);
}
