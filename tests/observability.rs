//! Metrics checked by real clients (promtool, a real Prometheus server), the Grafana
//! dashboard's expressions, W3C trace context and the access log fields.
//!
//! Needs Debian's `prometheus` package (`promtool`, `prometheus`); `scripts/test.sh` installs
//! it. Set GATEHOUSE_SKIP_PROMETHEUS=1 to skip on a machine without it; without that variable
//! a missing binary fails the tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{eventually, free_port, simple_config, Ports, TestGateway, TestUpstream};

fn have(bin: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found && std::env::var_os("GATEHOUSE_SKIP_PROMETHEUS").is_none() {
        panic!("{bin} is not installed (apt-get install -y prometheus), or set GATEHOUSE_SKIP_PROMETHEUS=1");
    }
    found
}

const SECRET: &str = "observability-secret-observability-secret";

/// A gateway with every feature in use, and traffic through all of it.
async fn busy_gateway(b: &TestUpstream, dead: &TestUpstream) -> TestGateway {
    let routes = format!(
        r#"
  - id: api
    match: {{ path_prefix: /api }}
    upstream: up
    plugins:
      - cors: {{ allow_origins: ["https://app.example.com"] }}
      - jwt: {{ keys: [{{ algorithm: HS256, secret: "{SECRET}" }}], required: false }}
      - rate_limit: {{ key: client_ip, requests: 5, per: 1m }}
      - headers: {{ response: {{ set: {{ X-Served-By: gatehouse }} }} }}
  - id: cached
    match: {{ path_prefix: /cached }}
    upstream: up
    plugins:
      - cache: {{ default_ttl: 60s }}
  - id: flaky
    match: {{ path_prefix: /flaky }}
    upstream: flaky
  - id: denied
    match: {{ path_prefix: /denied }}
    upstream: up
    plugins:
      - access: {{ deny: ["127.0.0.0/8"] }}
"#
    );
    let ups = format!(
        "  up:\n    backends: [\"{}\"]\n    health_check: {{ http: {{ path: /health }}, interval: 1s }}\n  flaky:\n    backends: [\"{}\", \"{}\"]\n    circuit_breaker: {{ consecutive_failures: 2, open_for: 30s }}\n    retry: {{ attempts: 1, on: [connect_failure] }}\n",
        b.addr, b.addr, dead.addr
    );
    let gw = TestGateway::start(|p| simple_config(p, &ups, &routes)).await;
    let c = &gw.client;
    for _ in 0..8 {
        c.get(gw.url("/api/x"))
            .header("origin", "https://app.example.com")
            .send()
            .await
            .unwrap();
    }
    c.get(gw.url("/api/x"))
        .bearer_auth("garbage")
        .send()
        .await
        .unwrap();
    for _ in 0..3 {
        c.get(gw.url("/cached/a")).send().await.unwrap();
    }
    for _ in 0..6 {
        c.get(gw.url("/flaky")).send().await.unwrap();
    }
    c.get(gw.url("/denied")).send().await.unwrap();
    c.get(gw.url("/nowhere"))
        .header("host", "other")
        .send()
        .await
        .unwrap();
    c.post(gw.url("/api/upload"))
        .body(vec![b'x'; 3000])
        .send()
        .await
        .unwrap();
    // counted in the logging phase, after the responses went out
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.metrics()
                .await
                .contains("gatehouse_http_requests_total{method=\"POST\"")
        })
        .await
    );
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics() {
    if !have("promtool") {
        return;
    }
    let b = TestUpstream::start("b").await;
    let dead = TestUpstream::start("dead").await;
    dead.stop().await;
    let gw = busy_gateway(&b, &dead).await;
    let text = gw.metrics().await;
    for family in [
        "gatehouse_http_requests_total",
        "gatehouse_http_request_duration_seconds",
        "gatehouse_http_request_size_bytes",
        "gatehouse_http_response_size_bytes",
        "gatehouse_upstream_request_duration_seconds",
        "gatehouse_upstream_errors_total",
        "gatehouse_upstream_backend_healthy",
        "gatehouse_circuit_breaker_state",
        "gatehouse_circuit_breaker_transitions_total",
        "gatehouse_upstream_retries_total",
        "gatehouse_jwt_validations_total",
        "gatehouse_ratelimit_decisions_total",
        "gatehouse_cache_requests_total",
        "gatehouse_cache_size_bytes",
        "gatehouse_config_reloads_total",
        "gatehouse_config_version",
        "gatehouse_connections_active",
        "gatehouse_connections_accepted_total",
        "gatehouse_build_info",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing from\n{text}"
        );
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {report}");
    assert!(report.trim().is_empty(), "promtool warnings: {report}");
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_gateway() {
    if !have("prometheus") {
        return;
    }
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(|p: &Ports| {
        simple_config(
            p,
            &format!("  up:\n    backends: [\"{}\"]\n", b.addr),
            "  - { id: all, upstream: up }\n",
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: gatehouse\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
            gw.admin_port
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prom = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    const N: usize = 37;
    for _ in 0..N {
        assert_eq!(gw.get("/x").await.status(), 200);
    }
    let query = |q: &str| {
        let c = gw.client.clone();
        let url = format!("http://127.0.0.1:{port}/api/v1/query");
        let q = q.to_string();
        async move {
            let r = c.get(url).query(&[("query", q)]).send().await.ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            let s = v["data"]["result"][0]["value"][1].as_str()?.to_string();
            s.parse::<f64>().ok()
        }
    };
    let up = eventually(Duration::from_secs(30), || async {
        query("up{job=\"gatehouse\"}").await == Some(1.0)
    })
    .await;
    assert!(
        up,
        "Prometheus never saw the target up:\n{}",
        std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
    );
    let counted = eventually(Duration::from_secs(30), || async {
        query("sum(gatehouse_http_requests_total{route=\"all\",status_class=\"2xx\"})").await
            == Some(N as f64)
    })
    .await;
    assert!(
        counted,
        "Prometheus did not report {N} requests (got {:?})",
        query("sum(gatehouse_http_requests_total{route=\"all\"})").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_uses_only_exported_metrics() {
    let b = TestUpstream::start("b").await;
    let dead = TestUpstream::start("dead").await;
    dead.stop().await;
    let gw = busy_gateway(&b, &dead).await;
    // the TLS series exist on a gateway with an HTTPS listener
    let ca = common::pki::Ca::new();
    ca.leaf("a", &["a.test"], false);
    let tls = TestGateway::start(|p| {
        format!(
            "server:\n  listen:\n    - \"127.0.0.1:{}\"\n    - addr: \"127.0.0.1:{}\"\n      tls: {{ certificates: [{{ cert: \"{dir}/a.pem\", key: \"{dir}/a.key\" }}] }}\n  access_log: off\nadmin:\n  listen: \"127.0.0.1:{}\"\nupstreams:\n  up: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ id: all, upstream: up }}\n",
            p.proxy,
            common::free_port(),
            p.admin,
            b.addr,
            dir = ca.dir.path().display()
        )
    })
    .await;
    let text = gw.metrics().await + &tls.metrics().await;
    let exported: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conf/grafana/gatehouse-dashboard.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if (k == "expr" || k == "query") && v.is_string() {
                        out.push(v.as_str().unwrap().to_string());
                    } else {
                        walk(v, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    assert!(exprs.len() >= 10);
    let re = regex::Regex::new(r"gatehouse_[a-z0-9_]+").unwrap();
    let mut names = 0;
    for e in &exprs {
        for m in re.find_iter(e) {
            let name = m.as_str();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                exported.contains(base) || exported.contains(name),
                "dashboard uses `{name}`, not exported:\n{e}"
            );
            names += 1;
        }
    }
    assert!(names >= 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_and_access_log_fields() {
    let b = TestUpstream::start("b").await;
    let routes = "  - id: all\n    upstream: up\n    plugins:\n      - jwt: { keys: [{ algorithm: HS256, secret: \"trace-secret-trace-secret-trace-secret\" }], required: false }\n";
    let gw = TestGateway::start(|p| {
        simple_config(
            p,
            &format!("  up:\n    backends: [\"{}\"]\n", b.addr),
            routes,
        )
    })
    .await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    gw.client
        .get(gw.url("/t"))
        .header("traceparent", incoming)
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    let s = b.last();
    let tp = s.header("traceparent").unwrap().to_string();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-01"),
        "{tp}"
    );
    assert_ne!(tp, incoming, "the gateway is the new parent");
    assert_eq!(s.header("tracestate"), Some("vendor=abc"));
    // invalid: a fresh trace, tracestate dropped
    gw.client
        .get(gw.url("/t2"))
        .header("traceparent", "00-zzz-1-01")
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    let s = b.last();
    let tp2 = s.header("traceparent").unwrap().to_string();
    assert_eq!(tp2.len(), 55);
    assert!(!tp2.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
    assert!(s.header("tracestate").is_none());
    let log_path = gw.dir.path().join("access.log");
    assert!(
        eventually(Duration::from_secs(5), || {
            let p = log_path.clone();
            async move {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .count()
                    >= 2
            }
        })
        .await
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(first["upstream_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(first["retries"], 0);
    assert_eq!(first["plugins"]["jwt"], "anonymous");
    let second: serde_json::Value = serde_json::from_str(log.lines().nth(1).unwrap()).unwrap();
    assert_eq!(second["trace_id"].as_str().unwrap(), &tp2[3..35]);
}

/// Every backend with a breaker exports its state from the start (0 = closed), upstream error
/// counters exist before the first error, and a reload takes away the series of the
/// backends, breakers, upstreams and routes that left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_exist_from_the_start_and_leave_with_what_they_describe() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    let with_all = |p: &Ports| {
        simple_config(
            p,
            &format!(
                "  up:\n    backends: [\"{}\", \"{}\"]\n    circuit_breaker: {{ consecutive_failures: 3 }}\n  other:\n    backends: [\"{}\"]\n",
                a.addr, b.addr, c.addr
            ),
            "  - { id: o, match: { path_prefix: /o }, upstream: other }\n  - { id: all, upstream: up }\n",
        )
    };
    let gw = TestGateway::start(with_all).await;
    let m = gw.metrics().await;
    for backend in [&a, &b] {
        let series = format!(
            "gatehouse_circuit_breaker_state{{backend=\"{}\",upstream=\"up\"}} 0",
            backend.addr
        );
        assert!(m.contains(&series), "missing {series}\n{m}");
    }
    assert!(
        !m.contains(&format!(
            "gatehouse_circuit_breaker_state{{backend=\"{}\"",
            c.addr
        )),
        "no breaker configured for `other`"
    );
    for kind in ["connect", "timeout", "reset", "5xx"] {
        let series =
            format!("gatehouse_upstream_errors_total{{kind=\"{kind}\",upstream=\"up\"}} 0");
        assert!(m.contains(&series), "missing {series}\n{m}");
    }
    assert!(m.contains("gatehouse_config_reloads_total{result=\"error\",trigger=\"file\"} 0"));
    assert_eq!(gw.get("/o").await.status(), 200);
    assert_eq!(gw.get("/x").await.status(), 200);
    assert!(gw.metrics().await.contains("route=\"o\""));

    // `b` and `other` (with its route) leave; `up` drops its breaker
    let next = simple_config(
        &gw.ports,
        &format!("  up:\n    backends: [\"{}\"]\n", a.addr),
        "  - { id: all, upstream: up }\n",
    );
    gw.write_config(&next);
    assert!(
        gw.metric_reaches("gatehouse_config_version", 2.0, Duration::from_secs(5))
            .await,
        "reload not applied: {}",
        gw.stderr()
    );
    let m = gw.metrics().await;
    assert!(
        m.contains(&format!(
            "gatehouse_upstream_backend_healthy{{backend=\"{}\",upstream=\"up\"}} 1",
            a.addr
        )),
        "{m}"
    );
    assert!(
        !m.contains("gatehouse_circuit_breaker_state{"),
        "breaker removed: {m}"
    );
    assert!(!m.contains(&format!("backend=\"{}\"", b.addr)), "{m}");
    assert!(!m.contains("upstream=\"other\""), "{m}");
    assert!(!m.contains("route=\"o\""), "{m}");
}
