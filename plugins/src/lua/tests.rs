#![allow(clippy::unwrap_used)]

use super::*;
use crate::api::testing::{build, build_with, request, Run};
use crate::api::{ReplyBody, RequestInfo, VerifiedClaims};

const GET: &[u8] = b"GET /api/x?a=1&b=two%20words&a=3 HTTP/1.1\r\nHost: example.test\r\nX-Tenant: blue\r\nX-Debug: on\r\nAccept: a\r\nAccept: b\r\n\r\n";

fn lua(yaml: &str) -> Lua {
    match build::<Lua>(yaml) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn reply(run: &Run) -> &Reply {
    match &run.flow {
        Flow::Respond(r) => r,
        Flow::Continue => panic!("continued"),
    }
}

fn body(r: &Reply) -> String {
    match &r.body {
        ReplyBody::Raw { bytes, .. } => String::from_utf8_lossy(bytes).into_owned(),
        ReplyBody::Error(m) => m.clone(),
        ReplyBody::Empty => String::new(),
    }
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, v)| v.to_str().unwrap())
}

/// Runs the upstream request and response hooks after `request`: the request as it would
/// go upstream and the response as it would reach the client.
async fn rest(p: &Lua, run: &mut Run, status: u16) -> (RequestHeader, ResponseHeader) {
    let mut up = run.session.req_header().clone();
    let mut resp = ResponseHeader::build(status, None).unwrap();
    let mut cx = PluginCtx::new(&mut run.info, &mut run.slot);
    p.upstream_request_filter(&mut run.session, &mut up, &mut cx)
        .await
        .unwrap();
    p.response_filter(&mut run.session, &mut resp, &mut cx)
        .await
        .unwrap();
    p.logging(&mut run.session, None, &mut cx).await;
    (up, resp)
}

fn outcomes(info: &RequestInfo) -> Vec<&'static str> {
    info.outcomes.iter().map(|(_, r)| *r).collect()
}

#[tokio::test]
async fn the_request_is_readable_in_access() {
    let p = lua(r#"
access: |
  local q = gatehouse.request.get_query()
  local h = gatehouse.request.get_headers()
  return gatehouse.response.exit(200, table.concat({
    gatehouse.request.get_method(), gatehouse.request.get_path(),
    gatehouse.request.get_raw_query(), gatehouse.request.get_query_arg("b"),
    q.a[1], q.a[2], h.accept[2], gatehouse.request.get_header("X-TENANT"),
    tostring(gatehouse.request.get_header("missing")), gatehouse.request.get_host(),
    gatehouse.client.get_ip(), gatehouse.request.get_route_id(), gatehouse.request.get_id(),
    tostring(gatehouse.request.get_claims()), tostring(gatehouse.client.get_cert()),
  }, "|"))
"#);
    let run = request(&p, GET).await.unwrap();
    assert_eq!(
        body(reply(&run)),
        "GET|/api/x|a=1&b=two%20words&a=3|two words|1|3|b|blue|nil|example.test|192.0.2.1|test-route|test-request-id|nil|nil"
    );
    assert_eq!(outcomes(&run.info), ["exit"]);
}

#[tokio::test]
async fn claims_from_jwt_are_a_table() {
    let p = lua("{ access: 'return gatehouse.response.exit(200, gatehouse.request.get_claims().sub .. gatehouse.request.get_claims().roles[2])' }");
    let mut session = crate::api::testing::session_from_bytes(GET).await.unwrap();
    let mut info = crate::api::testing::test_info();
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(r#"{"sub":"alice","roles":["a","admin"]}"#).unwrap();
    info.ext.insert(VerifiedClaims(Arc::new(claims)));
    let mut slot = None;
    let flow = p
        .request_filter(&mut session, &mut PluginCtx::new(&mut info, &mut slot))
        .await
        .unwrap();
    let Flow::Respond(r) = flow else { panic!() };
    assert_eq!(body(&r), "aliceadmin");
}

#[tokio::test]
async fn every_phase_runs_and_ctx_goes_from_access_to_log() {
    let p = lua(r#"
access: |
  ctx.tenant = gatehouse.request.get_header("x-tenant") or conf.default_tenant
  ctx.nested = { n = 1, list = { "x", "y" } }
  gatehouse.service.request.set_header("x-tenant", ctx.tenant)
  gatehouse.service.request.clear_header("x-debug")
  gatehouse.response.set_header("x-early", "yes")
header_filter: |
  gatehouse.response.set_header("x-tenant", ctx.tenant)
  gatehouse.response.set_header("x-status", gatehouse.response.get_status())
  gatehouse.response.clear_header("server")
  ctx.seen = gatehouse.response.get_header("x-early")
log: |
  if ctx.tenant ~= "blue" or ctx.nested.list[2] ~= "y" or ctx.seen ~= "yes" then
    error("ctx lost")
  end
config: { default_tenant: acme }
"#);
    let mut run = request(&p, GET).await.unwrap();
    assert!(matches!(run.flow, Flow::Continue));
    let (up, resp) = rest(&p, &mut run, 201).await;
    assert_eq!(up.headers.get("x-tenant").unwrap(), "blue");
    assert!(up.headers.get("x-debug").is_none(), "client header removed");
    assert_eq!(resp.headers.get("x-tenant").unwrap(), "blue");
    assert_eq!(resp.headers.get("x-status").unwrap(), "201");
    assert_eq!(resp.headers.get("x-early").unwrap(), "yes");
    assert!(outcomes(&run.info).is_empty(), "{:?}", run.info.details);
    // the default from conf when the header is missing
    let mut run = request(&p, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (up, _) = rest(&p, &mut run, 200).await;
    assert_eq!(up.headers.get("x-tenant").unwrap(), "acme");
    // (the log phase's check failed here: the tenant is not "blue")
    assert_eq!(outcomes(&run.info), ["error"]);
}

#[tokio::test]
async fn a_script_file_defines_its_phases() {
    let dir = std::env::temp_dir().join(format!("gh-lua-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::write(
        dir.join("scripts/tenant.lua"),
        r#"
local function tenant(conf)
  return gatehouse.request.get_header("x-tenant") or conf.default_tenant
end
function access(conf, ctx)
  ctx.tenant = tenant(conf)
  gatehouse.service.request.set_header("x-tenant", ctx.tenant)
end
function header_filter(conf, ctx)
  gatehouse.response.set_header("x-tenant", ctx.tenant)
end
"#,
    )
    .unwrap();
    let mut env = BuildEnv {
        base_dir: dir.clone(),
        ..Default::default()
    };
    let p: Lua = build_with(
        "{ file: scripts/tenant.lua, config: { default_tenant: acme } }",
        &mut env,
    )
    .unwrap();
    assert_eq!(env.files, [dir.join("scripts/tenant.lua")]);
    assert!(p.defines(Phase::Access) && p.defines(Phase::HeaderFilter));
    assert!(!p.defines(Phase::Log));
    let mut run = request(&p, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (up, resp) = rest(&p, &mut run, 200).await;
    assert_eq!(up.headers.get("x-tenant").unwrap(), "acme");
    assert_eq!(resp.headers.get("x-tenant").unwrap(), "acme");

    // a syntax error names the file and the line
    std::fs::write(dir.join("bad.lua"), "function access()\n  if then\nend\n").unwrap();
    let e = build_with::<Lua>("{ file: bad.lua }", &mut env)
        .err()
        .unwrap();
    assert_eq!(e.path, "file");
    assert!(e.message.starts_with("bad.lua:2:"), "{e}");
    // an error in the top level too
    std::fs::write(dir.join("top.lua"), "\n\nlocal x = nil + 1\n").unwrap();
    let e = build_with::<Lua>("{ file: top.lua }", &mut env)
        .err()
        .unwrap();
    assert!(e.message.starts_with("top.lua:3:"), "{e}");
    // a script with no phase
    std::fs::write(dir.join("none.lua"), "local x = 1\n").unwrap();
    let e = build_with::<Lua>("{ file: none.lua }", &mut env)
        .err()
        .unwrap();
    assert!(e.message.contains("defines none"), "{e}");
    let e = build_with::<Lua>("{ file: missing.lua }", &mut env)
        .err()
        .unwrap();
    assert!(e.message.contains("cannot read"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn config_errors_name_the_field_and_the_line() {
    let e = build::<Lua>("{ access: \"local a = 1\\nif a then\\n\" }")
        .err()
        .unwrap();
    assert_eq!(e.path, "access");
    assert!(e.message.starts_with("access:3:"), "{e}");
    let e = build::<Lua>("{ header_filter: 'x = = 1' }").err().unwrap();
    assert_eq!(e.path, "header_filter");
    assert!(e.message.starts_with("header_filter:1:"), "{e}");
    let e = build::<Lua>("{ file: a.lua, access: 'x()' }")
        .err()
        .unwrap();
    assert!(e.message.contains("not both"), "{e}");
    let e = build::<Lua>("{ config: { a: 1 } }").err().unwrap();
    assert!(e.message.contains("no script"), "{e}");
    let e = build::<Lua>("{ access: 'x()', max_memory: 1KiB }")
        .err()
        .unwrap();
    assert_eq!(e.path, "max_memory");
    let e = build::<Lua>("{ access: 'x()', max_instructions: 0 }")
        .err()
        .unwrap();
    assert_eq!(e.path, "max_instructions");
    let e = build::<Lua>("{ access: 'x()', typo: 1 }").err().unwrap();
    assert!(e.message.contains("unknown field"), "{e}");
}

#[tokio::test]
async fn exit_answers_with_a_body_and_headers() {
    let p = lua(r#"
access: |
  if gatehouse.request.get_header("x-tenant") == "blue" then
    gatehouse.response.set_header("x-before", "1")
    gatehouse.response.exit(400, '{"error":"x-tenant required"}',
                            { ["content-type"] = "application/json", ["x-a"] = { "1", "2" } })
    error("not reached")
  end
  return gatehouse.response.exit(403, { error = "forbidden", tenant = false })
"#);
    let run = request(&p, GET).await.unwrap();
    let r = reply(&run);
    assert_eq!(r.status, 400);
    assert_eq!(body(r), r#"{"error":"x-tenant required"}"#);
    let ReplyBody::Raw { content_type, .. } = &r.body else {
        panic!()
    };
    assert_eq!(content_type, "application/json");
    let xa: Vec<_> = r.headers.iter().filter(|(n, _)| n == "x-a").collect();
    assert_eq!(xa.len(), 2);
    assert_eq!(header(r, "x-before"), Some("1"));
    assert_eq!(outcomes(&run.info), ["exit"]);
    // a table body is JSON
    let run = request(&p, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let r = reply(&run);
    assert_eq!(r.status, 403);
    let v: serde_json::Value = serde_json::from_str(&body(r)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"error": "forbidden", "tenant": false})
    );
    // pcall does not swallow an exit: the script ends there
    let p = lua("{ access: 'pcall(gatehouse.response.exit, 204); gatehouse.service.request.set_header(\"x\", \"after\")', log: 'error(\"log ran\")' }");
    let run = request(&p, GET).await.unwrap();
    assert_eq!(reply(&run).status, 204);
    assert_eq!(outcomes(&run.info), ["exit"]);
    let p = lua("{ access: 'local ok = pcall(gatehouse.response.exit, 204) if not ok then error(\"caught\") end' }");
    let run = request(&p, GET).await.unwrap();
    assert_eq!(reply(&run).status, 204);
    assert!(run.info.details.is_empty(), "{:?}", run.info.details);
    // a bad status is an error
    let p = lua("{ access: 'gatehouse.response.exit(99)' }");
    let run = request(&p, GET).await.unwrap();
    assert_eq!(reply(&run).status, 500);
    assert_eq!(outcomes(&run.info), ["error"]);
}

#[tokio::test]
async fn errors_answer_500_and_are_recorded_with_the_line() {
    let p = lua("{ access: \"local t = nil\\nreturn t.x\" }");
    let run = request(&p, GET).await.unwrap();
    let r = reply(&run);
    assert_eq!(r.status, 500);
    assert_eq!(r.body, ReplyBody::Error("lua script failed".into()));
    assert_eq!(outcomes(&run.info), ["error"]);
    let (_, detail) = &run.info.details[0];
    assert_eq!(detail["phase"], "access");
    assert!(
        detail["error"].as_str().unwrap().starts_with("access:2:"),
        "{detail}"
    );
    // the next request is served as usual
    let p =
        lua("{ access: \"if gatehouse.request.get_header('x-tenant') then error('boom') end\" }");
    assert_eq!(reply(&request(&p, GET).await.unwrap()).status, 500);
    let run = request(&p, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(matches!(run.flow, Flow::Continue));
}

#[tokio::test]
async fn an_endless_loop_runs_out_of_budget() {
    for (name, code) in [
        ("plain", "while true do end"),
        ("pcall", "while true do pcall(function() while true do end end) end"),
        ("xpcall", "while true do xpcall(function() while true do end end, function(e) return e end) end"),
        (
            "coroutine",
            "local co = coroutine.wrap(function() while true do end end) co()",
        ),
        (
            "resume",
            "while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
        ),
        ("recursion", "local function f() return f() end f()"),
        ("gsub", "local s = string.rep('a', 1000) while true do s:gsub('a', function(c) return c end) end"),
    ] {
        let p = lua(&format!("{{ access: \"{code}\", max_instructions: 100000 }}"));
        let run = request(&p, GET).await.unwrap();
        assert_eq!(reply(&run).status, 500, "{name}");
        assert_eq!(outcomes(&run.info), ["budget"], "{name}: {:?}", run.info.details);
    }
    // a state that ran out is replaced, and serves the next request
    let p = lua(
        "{ access: \"if gatehouse.request.get_header('x-tenant') then while true do end end\" }",
    );
    assert_eq!(reply(&request(&p, GET).await.unwrap()).status, 500);
    let run = request(&p, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(matches!(run.flow, Flow::Continue));
}

#[tokio::test]
async fn memory_is_limited_per_state() {
    for code in [
        "local s = string.rep('x', 2^30)",
        "local t = {} for i = 1, 1e8 do t[i] = i end",
        "local t = {} for i = 1, 1e6 do t[i] = tostring(i) .. 'xxxxxxxxxxxxxxxx' end",
    ] {
        let p = lua(&format!(
            "{{ access: \"{code}\", max_memory: 1MiB, max_instructions: 100000000 }}"
        ));
        let run = request(&p, GET).await.unwrap();
        assert_eq!(reply(&run).status, 500, "{code}");
        assert_eq!(
            outcomes(&run.info),
            ["memory"],
            "{code}: {:?}",
            run.info.details
        );
        let run = request(&p, GET).await.unwrap();
        assert_eq!(outcomes(&run.info), ["memory"], "{code}");
    }
}

#[tokio::test]
async fn the_sandbox_has_no_way_out() {
    let p = lua(r#"
access: |
  local names = { "io", "os", "require", "load", "loadfile", "dofile", "debug", "package",
                  "collectgarbage", "rawset", "warn", "module", "loadstring", "setfenv" }
  local found = {}
  for _, n in ipairs(names) do
    if _G[n] ~= nil then found[#found + 1] = n end
  end
  if string.dump ~= nil then found[#found + 1] = "string.dump" end
  if getmetatable("") ~= false then found[#found + 1] = "string metatable" end
  return gatehouse.response.exit(200, "[" .. table.concat(found, ",") .. "]")
"#);
    let run = request(&p, GET).await.unwrap();
    assert_eq!(body(reply(&run)), "[]");
}

#[tokio::test]
async fn nothing_set_in_one_request_is_seen_by_the_next() {
    for (code, expect) in [
        ("counter = (counter or 0) + 1", "global 'counter' written"),
        ("string.upper = nil", "string is read-only"),
        ("gatehouse.request = nil", "gatehouse is read-only"),
        ("conf.a = 2", "conf is read-only"),
        (
            "local mt = getmetatable(_G) mt.__newindex = nil",
            "attempt to index",
        ),
        ("setmetatable(_G, nil)", "protected metatable"),
        ("math.pi = 3", "math is read-only"),
    ] {
        let p = lua(&format!(
            "{{ access: \"if gatehouse.request.get_header('x-tenant') then {code} end\", config: {{ a: 1 }} }}"
        ));
        let run = request(&p, GET).await.unwrap();
        assert_eq!(reply(&run).status, 500, "{code}");
        let err = run.info.details[0].1["error"].as_str().unwrap().to_string();
        assert!(err.contains(expect), "{code}: {err}");
        // and nothing changed for the next request
        let run = request(&p, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(matches!(run.flow, Flow::Continue), "{code}");
    }
    // a table left in a global by the script's load is read-only too
    let dir = std::env::temp_dir().join(format!("gh-lua-g-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("s.lua"),
        "settings = { mode = 'on' }\nfunction access() settings.mode = 'off' end\n",
    )
    .unwrap();
    let mut env = BuildEnv {
        base_dir: dir.clone(),
        ..Default::default()
    };
    let p: Lua = build_with("{ file: s.lua }", &mut env).unwrap();
    let run = request(&p, GET).await.unwrap();
    let err = run.info.details[0].1["error"].as_str().unwrap().to_string();
    assert!(err.contains("settings is read-only"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
    // the per-request ctx starts empty every time
    let p = lua("{ access: \"if ctx.seen then error('leak') end ctx.seen = true\" }");
    for _ in 0..3 {
        let run = request(&p, GET).await.unwrap();
        assert!(matches!(run.flow, Flow::Continue));
    }
}

#[tokio::test]
async fn upstream_path_query_and_choice() {
    let p = lua(r#"
access: |
  gatehouse.service.request.set_path("/v2" .. gatehouse.request.get_path())
  gatehouse.service.request.set_raw_query("x=1")
  if gatehouse.request.get_header("x-tenant") == "blue" then
    gatehouse.service.set_upstream("canary")
  end
"#);
    let mut run = request(&p, GET).await.unwrap();
    assert_eq!(
        run.info.ext.get::<UpstreamChoice>(),
        Some(&UpstreamChoice("canary".into()))
    );
    let (up, _) = rest(&p, &mut run, 200).await;
    assert_eq!(up.uri.path(), "/v2/api/x");
    assert_eq!(up.uri.query(), Some("x=1"));
    for (code, expect) in [
        (
            "gatehouse.service.request.set_path('no-slash')",
            "not a valid path",
        ),
        (
            "gatehouse.service.request.set_header('content-length', '1')",
            "frames the message",
        ),
        (
            "gatehouse.service.request.set_header('transfer-encoding', 'chunked')",
            "frames the message",
        ),
        (
            "gatehouse.service.request.set_header('x', 'a\\\\nb')",
            "invalid header value",
        ),
        (
            "gatehouse.service.request.set_header('bad name', 'v')",
            "invalid header name",
        ),
        ("gatehouse.service.request.set_header('x')", "no value"),
    ] {
        let p = lua(&format!("{{ access: \"{code}\" }}"));
        let run = request(&p, GET).await.unwrap();
        assert_eq!(reply(&run).status, 500, "{code}");
        let err = run.info.details[0].1["error"].as_str().unwrap().to_string();
        assert!(err.contains(expect), "{code}: {err}");
    }
}

#[tokio::test]
async fn phase_rules_and_ctx_limits() {
    // exit and upstream changes belong to access
    let p = lua("{ header_filter: 'gatehouse.response.exit(403)' }");
    let mut run = request(&p, GET).await.unwrap();
    let mut resp = ResponseHeader::build(200, None).unwrap();
    let r = p
        .response_filter(
            &mut run.session,
            &mut resp,
            &mut PluginCtx::new(&mut run.info, &mut run.slot),
        )
        .await;
    assert!(r.is_err());
    assert_eq!(outcomes(&run.info), ["error"]);
    let err = run.info.details[0].1["error"].as_str().unwrap().to_string();
    assert!(err.contains("not available in header_filter"), "{err}");
    // a function cannot be carried to a later phase
    let p = lua("{ access: 'ctx.f = print', log: 'x = 1' }");
    let run = request(&p, GET).await.unwrap();
    assert_eq!(reply(&run).status, 500);
    let err = run.info.details[0].1["error"].as_str().unwrap().to_string();
    assert!(err.contains("ctx.f: a function cannot be kept"), "{err}");
    // nor too much
    let p = lua("{ access: 'for i = 1, 1000 do ctx[i] = i end', log: 'local x = 1' }");
    let run = request(&p, GET).await.unwrap();
    assert_eq!(reply(&run).status, 500);
    // pattern functions refuse long subjects
    let p = lua("{ access: \"local s = string.rep('a', 20000) s:find('a-b')\" }");
    let run = request(&p, GET).await.unwrap();
    let err = run.info.details[0].1["error"].as_str().unwrap().to_string();
    assert!(err.contains("subject longer than"), "{err}");
}

#[tokio::test]
async fn json_helpers_and_logging() {
    let p = lua(r#"
access: |
  local v = gatehouse.json.decode('{"a":[1,2,{"b":"c"}]}')
  gatehouse.log.info("decoded ", v.a[3].b, " at ", gatehouse.now() > 0)
  print("print goes to the log", 1, nil)
  return gatehouse.response.exit(200, gatehouse.json.encode({ n = v.a[2] }))
"#);
    let run = request(&p, GET).await.unwrap();
    assert_eq!(body(reply(&run)), r#"{"n":2}"#);
}

#[test]
fn a_state_is_small() {
    let p = lua("{ access: 'local x = 1' }");
    let used = p.with_state(|st| Ok(st.used_memory())).unwrap();
    eprintln!("one state with a one-line script: {used} bytes");
    assert!(used < 256 * 1024, "{used}");
}

#[test]
fn states_are_per_thread() {
    let p = Arc::new(lua("{ access: 'local x = 1' }"));
    // (all four alive at once: the ids of exited threads are reused, with their states)
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (p, barrier) = (p.clone(), barrier.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for _ in 0..50 {
                        let run = request(&*p, GET).await.unwrap();
                        assert!(matches!(run.flow, Flow::Continue));
                    }
                });
                barrier.wait();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let Ok(p) = Arc::try_unwrap(p) else { panic!() };
    let states: Vec<_> = p.states.into_iter().collect();
    assert_eq!(states.len(), 4);
    assert!(states.iter().all(|s| s.borrow().is_some()));
}
