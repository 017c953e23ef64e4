//! The `lua` plugin through the real binary: every phase over HTTP/1.1 and HTTP/2, `exit`,
//! `ctx` from access to log, upstream header changes, errors, budget and memory limits
//! answered 500 and counted, the sandbox, no state kept between requests, a canary split by
//! header, and a script replaced (file watched) under load with no failed request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{eventually, free_port, TestGateway, TestUpstream};

const SCRIPT: &str = r#"
local function exit_json(status, t, headers)
  return gatehouse.response.exit(status, t, headers)
end

function access(conf, ctx)
  local path = gatehouse.request.get_path()
  if path == "/api/loop" then while true do end end
  if path == "/api/memory" then local s = string.rep("x", 2^30) end
  if path == "/api/error" then error("no such thing") end
  if path == "/api/global" then leaked = true end
  if path == "/api/leaked" then return gatehouse.response.exit(200, tostring(leaked)) end
  if path == "/api/sandbox" then
    return gatehouse.response.exit(200, tostring(io) .. tostring(os) .. tostring(require)
      .. tostring(load) .. tostring(dofile) .. tostring(debug))
  end
  if gatehouse.request.get_header("authorization") == "Bearer nope" then
    return exit_json(401, { error = "bad token" }, { ["www-authenticate"] = "Bearer" })
  end
  local canary = gatehouse.request.get_header("x-canary")
  if canary == "1" then gatehouse.service.set_upstream("canary") end
  if canary == "bad" then gatehouse.service.set_upstream("nowhere") end
  local t = gatehouse.request.get_header("x-tenant") or conf.default_tenant
  ctx.tenant = t
  gatehouse.service.request.set_header("x-tenant", t)
  gatehouse.service.request.clear_header("x-debug")
end

function header_filter(conf, ctx)
  if gatehouse.request.get_path() == "/api/hf-error" then error("in header_filter") end
  gatehouse.response.set_header("x-tenant", ctx.tenant or "-")
  gatehouse.response.set_header("x-script", "VERSION")
end

function log(conf, ctx)
  gatehouse.log.info("tenant ", ctx.tenant, " status ", gatehouse.response.get_status())
end
"#;

/// Writes the script (version `v`) by rename, as deploy tools do.
fn write_script(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Setup {
    gw: TestGateway,
    h2c: u16,
    stable: TestUpstream,
    canary: TestUpstream,
    script: PathBuf,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let stable = TestUpstream::start("stable").await;
    let canary = TestUpstream::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tenant.lua");
    write_script(&script, &SCRIPT.replace("VERSION", "v1"));
    let h2c = std::sync::Mutex::new(0u16);
    let gw = TestGateway::start(|p| {
        let port = free_port();
        *h2c.lock().unwrap() = port;
        format!(
            "server:\n  listen:\n    - \"127.0.0.1:{}\"\n    - {{ addr: \"127.0.0.1:{port}\", h2c: true }}\n  threads: 2\n  grace_period: 1s\n  access_log: {}\nadmin:\n  listen: \"127.0.0.1:{}\"\nupstreams:\n  stable: {{ backends: [\"{}\"] }}\n  canary: {{ backends: [\"{}\"] }}\nroutes:\n  - id: api\n    match: {{ path_prefix: /api }}\n    upstream: stable\n    plugins:\n      - lua:\n          file: \"{}\"\n          config: {{ default_tenant: acme }}\n          max_instructions: 100000\n          max_memory: 2MiB\n  - id: inline\n    match: {{ path_prefix: /inline }}\n    upstream: stable\n    plugins:\n      - lua:\n          access: |\n            if gatehouse.request.get_header(\"x-tenant\") == nil then\n              return gatehouse.response.exit(400, '{{\"error\":\"x-tenant required\"}}',\n                                             {{ [\"content-type\"] = \"application/json\" }})\n            end\n",
            p.proxy,
            p.access_log.display(),
            p.admin,
            stable.addr,
            canary.addr,
            script.display()
        )
    })
    .await;
    let h2c = *h2c.lock().unwrap();
    Setup {
        gw,
        h2c,
        stable,
        canary,
        script,
        _dir: dir,
    }
}

async fn lua_outcome(gw: &TestGateway, result: &str) -> f64 {
    gw.metric(&format!(
        "gatehouse_plugin_decisions_total{{plugin=\"lua\",result=\"{result}\",route=\"api\"}}"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_phase_exit_errors_and_limits_through_the_binary() {
    let s = setup().await;
    let gw = &s.gw;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for (proto, client, base) in [
        ("HTTP/1.1", gw.client.clone(), gw.url("")),
        ("HTTP/2", h2.clone(), format!("http://127.0.0.1:{}", s.h2c)),
    ] {
        // access changes the request that goes upstream; header_filter the response
        let r = client
            .get(format!("{base}/api/x"))
            .header("x-tenant", "blue")
            .header("x-debug", "on")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{proto}");
        assert_eq!(r.headers()["x-tenant"], "blue", "{proto}");
        assert_eq!(r.headers()["x-script"], "v1", "{proto}");
        let seen = s.stable.last();
        assert_eq!(seen.header("x-tenant"), Some("blue"), "{proto}");
        assert_eq!(
            seen.header("x-debug"),
            None,
            "{proto}: client header removed"
        );
        // conf's default
        let r = client.get(format!("{base}/api/y")).send().await.unwrap();
        assert_eq!(r.headers()["x-tenant"], "acme", "{proto}");
        assert_eq!(s.stable.last().header("x-tenant"), Some("acme"));
        // exit: a body and headers, nothing upstream
        let hits = s.stable.hits();
        let r = client
            .get(format!("{base}/api/x"))
            .header("authorization", "Bearer nope")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{proto}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert!(r.headers().contains_key("x-request-id"));
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v, serde_json::json!({ "error": "bad token" }), "{proto}");
        let r = client.get(format!("{base}/inline")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{proto}");
        assert_eq!(r.text().await.unwrap(), r#"{"error":"x-tenant required"}"#);
        assert_eq!(
            s.stable.hits(),
            hits,
            "{proto}: an exit never goes upstream"
        );
        // errors, the budget and the memory limit: 500 with the gateway's JSON error
        for path in ["/api/error", "/api/loop", "/api/memory"] {
            let r = client.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 500, "{proto} {path}");
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"], "lua script failed", "{proto} {path}");
            assert!(v["request_id"].is_string());
        }
        assert_eq!(s.stable.hits(), hits, "{proto}");
        // an error in header_filter: the upstream's response is replaced by a 500
        let r = client
            .get(format!("{base}/api/hf-error"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500, "{proto}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["request_id"].is_string(), "{proto}: {v}");
        // ... and the next request is served as usual
        let r = client.get(format!("{base}/api/z")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{proto}");
        // the sandbox, and no global kept from one request to the next
        let r = client
            .get(format!("{base}/api/sandbox"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "nilnilnilnilnilnil", "{proto}");
        let r = client
            .get(format!("{base}/api/global"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500, "{proto}");
        let r = client
            .get(format!("{base}/api/leaked"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "nil", "{proto}");
    }
    // counted per outcome (both protocols)
    // (401, sandbox and leaked, per protocol)
    assert_eq!(lua_outcome(gw, "exit").await, 6.0);
    assert_eq!(lua_outcome(gw, "error").await, 6.0);
    assert_eq!(lua_outcome(gw, "budget").await, 2.0);
    assert_eq!(lua_outcome(gw, "memory").await, 2.0);
    // the access log has the outcome and the script's error with its line
    let entries = gw.log_entries(20).await;
    let e = entries
        .iter()
        .find(|e| e["path"] == "/api/error")
        .expect("no entry for /api/error");
    let err = e["details"]["lua"]["error"].as_str().unwrap();
    assert!(err.contains("tenant.lua:10: no such thing"), "{e}");
    assert_eq!(e["details"]["lua"]["phase"], "access");
    let e = entries.iter().find(|e| e["path"] == "/api/loop").unwrap();
    assert_eq!(e["details"]["lua"]["error"], "instruction budget exhausted");
    // log ran after the response, with ctx from access
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.stderr().contains("tenant blue status 200")
        })
        .await,
        "{}",
        gw.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_split_by_header() {
    let s = setup().await;
    let gw = &s.gw;
    for _ in 0..5 {
        let r = gw
            .client
            .get(gw.url("/api/c"))
            .header("x-canary", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "canary");
        assert_eq!(gw.get("/api/c").await.text().await.unwrap(), "stable");
    }
    assert_eq!(s.canary.hits(), 5);
    // the access log and the upstream metrics name the group the request went to
    let entries = gw.log_entries(10).await;
    let upstreams: Vec<_> = entries.iter().map(|e| e["upstream"].clone()).collect();
    assert_eq!(upstreams.iter().filter(|u| *u == "canary").count(), 5);
    assert_eq!(upstreams.iter().filter(|u| *u == "stable").count(), 5);
    // a name no upstream has: 500, nothing sent anywhere
    let hits = (s.stable.hits(), s.canary.hits());
    let r = gw
        .client
        .get(gw.url("/api/c"))
        .header("x-canary", "bad")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["error"],
        "the upstream chosen by a plugin is not configured"
    );
    assert_eq!((s.stable.hits(), s.canary.hits()), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_replaced_under_load_with_no_failed_request() {
    let s = setup().await;
    let gw = &s.gw;
    let load = common::Load::start(&gw.client, gw.url("/api/load"), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // the file changes, the YAML does not: the watcher reloads it
    write_script(&s.script, &SCRIPT.replace("VERSION", "v2"));
    assert!(
        eventually(Duration::from_secs(10), || async {
            gw.get("/api/x").await.headers()["x-script"] == "v2"
        })
        .await,
        "the new script was not loaded"
    );
    // a syntax error: the reload is refused with the YAML path and the Lua line; the
    // script in force stays
    write_script(&s.script, "function access()\n  if then\nend\n");
    let r = gw.reload().await;
    let text = r.text().await.unwrap();
    assert!(text.contains("routes[0].plugins[0].lua.file"), "{text}");
    assert!(text.contains("tenant.lua:2:"), "{text}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gw.get("/api/x").await.headers()["x-script"], "v2");
    let (ok, failed) = load.stop().await;
    assert!(ok > 0);
    assert_eq!(failed, 0, "requests failed across the reloads");
}
