#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use super::engine::{Rules, Source, Transaction};
use super::*;
use crate::api::testing::{build, request, Run};
use crate::api::{Flow, PluginCtx, RequestBody};

fn waf(yaml: &str) -> Waf {
    build::<Waf>(yaml).unwrap()
}

fn status(flow: &Flow) -> Option<u16> {
    match flow {
        Flow::Continue => None,
        Flow::Respond(r) => Some(r.status),
    }
}

fn rule_ids(run: &Run) -> Vec<u64> {
    run.info
        .details
        .iter()
        .filter(|(k, _)| *k == "waf")
        .flat_map(|(_, v)| v["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["id"].as_u64())
        .collect()
}

async fn body_step(p: &Waf, run: &mut Run, body: &[u8], complete: bool) -> Flow {
    let body = RequestBody {
        bytes: bytes::Bytes::copy_from_slice(body),
        complete,
        declared: None,
    };
    let mut cx = PluginCtx::new(&mut run.info, &mut run.slot);
    p.request_body(&mut run.session, &body, &mut cx)
        .await
        .unwrap()
}

const RULES: &str = r#"inline: |
  SecRule REQUEST_HEADERS:X-Evil "@streq yes" "id:1001,phase:1,deny,status:403,msg:'evil header'"
  SecRule REQUEST_BODY "@contains attack" "id:1002,phase:2,deny,status:406,msg:'evil body'"
  SecRule REQUEST_METHOD "@streq DELETE" "id:1003,phase:2,deny,status:405,msg:'no deletes'"
  SecRule RESPONSE_HEADERS:X-Leak "@streq 1" "id:1004,phase:3,deny,status:502,msg:'leak'"
  SecRule RESPONSE_STATUS "@streq 500" "id:1005,phase:5,pass,log,msg:'server error'"
  SecRule ARGS:go "@streq away" "id:1006,phase:1,redirect:https://example.test/elsewhere"
  SecRule ARGS:note "@streq odd" "id:1007,phase:1,pass,log,msg:'odd but fine'"
"#;

#[tokio::test]
async fn phase_1_blocks_before_anything_else_with_the_rule_logged() {
    let p = waf(RULES);
    let run = request(&p, b"GET /x HTTP/1.1\r\nHost: a\r\nX-Evil: yes\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status(&run.flow), Some(403));
    assert_eq!(run.info.outcomes, [("waf", "blocked")]);
    assert_eq!(rule_ids(&run), [1001]);
    // a redirect action answers with its target
    let run = request(&p, b"GET /x?go=away HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let Flow::Respond(reply) = &run.flow else {
        panic!("not redirected")
    };
    assert_eq!(reply.status, 302);
    assert!(reply
        .headers
        .iter()
        .any(|(n, v)| n == http::header::LOCATION && v == "https://example.test/elsewhere"));
}

#[tokio::test]
async fn phase_2_sees_the_body_and_runs_without_one() {
    let p = waf(RULES);
    let mut run = request(
        &p,
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status(&run.flow), None);
    assert_eq!(
        status(&body_step(&p, &mut run, b"an attack!", true).await),
        Some(406)
    );
    assert_eq!(rule_ids(&run), [1002]);
    // a clean body passes
    let mut run = request(
        &p,
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status(&body_step(&p, &mut run, b"hello", true).await), None);
    // no body at all: phase 2 still runs (the gateway calls the step with an empty body)
    let mut run = request(&p, b"DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status(&run.flow), None);
    assert_eq!(status(&body_step(&p, &mut run, b"", true).await), Some(405));
    // without body inspection phase 2 runs inside request_filter
    let p = waf(&format!("{RULES}request_body: {{ inspect: false }}\n"));
    assert_eq!(p.request_body_limit(), None);
    let run = request(&p, b"DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status(&run.flow), Some(405));
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_or_passed_uninspected() {
    let p = waf(&format!("{RULES}request_body: {{ max_size: 16 }}\n"));
    assert_eq!(p.request_body_limit(), Some(16));
    let mut run = request(&p, b"POST /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        status(&body_step(&p, &mut run, b"0123456789abcdef", false).await),
        Some(413)
    );
    assert_eq!(run.info.outcomes, [("waf", "body_too_large")]);
    let p = waf(&format!(
        "{RULES}request_body: {{ max_size: 16, on_larger: skip }}\n"
    ));
    let mut run = request(&p, b"POST /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // what was read is not inspected (an attack past the limit is not seen)
    assert_eq!(
        status(&body_step(&p, &mut run, b"an attack, longer", false).await),
        None
    );
    let mut cx = PluginCtx::new(&mut run.info, &mut run.slot);
    p.logging(&mut run.session, None, &mut cx).await;
    assert_eq!(run.info.outcomes, [("waf", "passed")]);
    assert_eq!(run.info.details[0].1["body_inspected"], false);
}

#[tokio::test]
async fn phase_3_and_phase_5() {
    let p = waf(RULES);
    let mut run = request(&p, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    body_step(&p, &mut run, b"", true).await;
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header("x-leak", "1").unwrap();
    let mut cx = PluginCtx::new(&mut run.info, &mut run.slot);
    let err = p
        .response_filter(&mut run.session, &mut resp, &mut cx)
        .await
        .unwrap_err();
    assert_eq!(err.etype(), &crate::api::ErrorType::HTTPStatus(502));
    assert_eq!(run.info.outcomes, [("waf", "blocked")]);

    // phase 5 sees the final status; a rule that only logs makes the request `detected`
    let mut run = request(&p, b"GET /x?note=odd HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    body_step(&p, &mut run, b"", true).await;
    let mut cx = PluginCtx::new(&mut run.info, &mut run.slot);
    p.logging(&mut run.session, None, &mut cx).await;
    assert_eq!(run.info.outcomes, [("waf", "detected")]);
    assert_eq!(rule_ids(&run), [1007]);
}

#[tokio::test]
async fn detect_mode_blocks_nothing_and_logs_the_rules() {
    let p = waf(&format!("{RULES}mode: detect\n"));
    let mut run = request(&p, b"DELETE /x HTTP/1.1\r\nHost: a\r\nX-Evil: yes\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status(&run.flow), None);
    assert_eq!(
        status(&body_step(&p, &mut run, b"attack", true).await),
        None
    );
    let mut cx = PluginCtx::new(&mut run.info, &mut run.slot);
    p.logging(&mut run.session, None, &mut cx).await;
    assert_eq!(run.info.outcomes, [("waf", "detected")]);
    let mut ids = rule_ids(&run);
    ids.sort_unstable();
    assert_eq!(ids, [1001, 1002, 1003]);
}

#[tokio::test]
async fn ordinary_requests_pass_with_nothing_logged() {
    let p = waf(RULES);
    let mut run = request(&p, b"GET /x?a=b HTTP/1.1\r\nHost: a\r\nCookie: s=1\r\n\r\n")
        .await
        .unwrap();
    body_step(&p, &mut run, b"", true).await;
    let mut cx = PluginCtx::new(&mut run.info, &mut run.slot);
    p.logging(&mut run.session, None, &mut cx).await;
    assert_eq!(run.info.outcomes, [("waf", "passed")]);
    assert!(run.info.details.is_empty());
}

/// Loads `text` as a rule set (the engine directly).
fn rules(text: &str) -> Arc<Rules> {
    Arc::new(Rules::load(&[Source::Text(text, "test")]).unwrap())
}

#[test]
fn header_bytes_arrive_exactly_nul_and_non_utf8_included() {
    let r = rules(
        r#"SecRuleEngine On
SecRule REQUEST_HEADERS:X-Bin "@rx a\x00b" "id:2001,phase:1,deny,status:403,msg:'nul'"
SecRule REQUEST_HEADERS:X-Latin "@rx caf\xe9" "id:2002,phase:1,deny,status:403,msg:'latin-1'"
"#,
    );
    let run = |name: &[u8], value: &[u8]| {
        let mut tx = Transaction::new(&r, "test-id").unwrap();
        tx.connection(
            "192.0.2.1".parse().unwrap(),
            1234,
            "127.0.0.1".parse().unwrap(),
            80,
        );
        tx.uri(b"/x", "GET", "1.1");
        tx.request_header(b"host", b"a");
        tx.request_header(name, value);
        tx.process_request_headers();
        (
            tx.intervention().map(|i| i.status),
            tx.log().matches.clone(),
        )
    };
    let (st, m) = run(b"x-bin", b"a\x00b");
    assert_eq!(st, Some(403));
    assert_eq!(m[0].id, 2001);
    // the same value cut at the NUL would not match
    assert_eq!(run(b"x-bin", b"a").0, None);
    let (st, m) = run(b"x-latin", b"caf\xe9");
    assert_eq!(st, Some(403));
    assert_eq!(m[0].id, 2002);
    assert_eq!(run(b"x-latin", "café".as_bytes()).0, None);
}

#[test]
fn syntax_errors_name_the_yaml_path_and_the_file_line() {
    let dir = tempfile_dir();
    let good = dir.join("good.conf");
    let bad = dir.join("bad.conf");
    std::fs::write(
        &good,
        "SecRule ARGS \"@streq x\" \"id:3001,phase:1,pass,nolog\"\n",
    )
    .unwrap();
    std::fs::write(
        &bad,
        "# fine\n\nSecRule ARGS \"@streq x\" \"id:3002,phase:1,nosuchaction\"\n",
    )
    .unwrap();
    let err = build::<Waf>(&format!(
        "rules: [\"{}\", \"{}\"]",
        good.display(),
        bad.display()
    ))
    .err()
    .unwrap();
    assert_eq!(err.path, "rules[1]");
    assert!(err.message.contains("bad.conf"), "{}", err.message);
    assert!(err.message.contains("Line: 3"), "{}", err.message);
    let err = build::<Waf>("inline: |\n  SecRule ARGS\n").err().unwrap();
    assert_eq!(err.path, "inline");
    let err = build::<Waf>(&format!("rules: [\"{}/*.nothing\"]", dir.display()))
        .err()
        .unwrap();
    assert_eq!(err.path, "rules[0]");
    assert!(err.message.contains("matches no file"), "{}", err.message);
    let err = build::<Waf>("rules: []").err().unwrap();
    assert_eq!(err.path, "rules");
    let err = build::<Waf>("inline: \"SecRuleEngine On\"\nrequest_body: { max_size: 1MiB }")
        .err()
        .unwrap();
    assert_eq!(err.path, "request_body.max_size");
    let err = build::<Waf>("inline: \"SecRuleEngine On\"\nparanoia_level: 5")
        .err()
        .unwrap();
    assert_eq!(err.path, "paranoia_level");
    // globs expand sorted, and the files are recorded for reloads
    let mut env = BuildEnv::default();
    crate::api::testing::build_with::<Waf>(
        &format!("rules: [\"{}/g*.conf\"]", dir.display()),
        &mut env,
    )
    .unwrap();
    assert_eq!(env.files, [good]);
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "gatehouse-waf-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The OWASP CRS as Debian installs it, when it is installed.
pub(crate) fn crs() -> Option<String> {
    let setup = "/etc/modsecurity/crs/crs-setup.conf";
    let rules = "/usr/share/modsecurity-crs/rules";
    (std::path::Path::new(setup).exists() && std::path::Path::new(rules).exists())
        .then(|| format!("rules: [\"{setup}\", \"{rules}/*.conf\"]\n"))
}

#[test]
fn two_configs_load_rules_at_once() {
    // the parser is not thread-safe: loads from several threads at once must still work
    let yaml = crs().unwrap_or_else(|| RULES.to_string());
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let yaml = yaml.clone();
            std::thread::spawn(move || {
                for _ in 0..2 {
                    build::<Waf>(&yaml).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[tokio::test]
async fn the_crs_blocks_a_classic_attack_in_phase_2() {
    let Some(yaml) = crs() else {
        eprintln!("modsecurity-crs is not installed: skipped");
        return;
    };
    let p = waf(&yaml);
    let mut run = request(
        &p,
        b"GET /?id=1%27%20OR%20%271%27=%271 HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status(&run.flow), None, "CRS decides in phase 2");
    assert_eq!(status(&body_step(&p, &mut run, b"", true).await), Some(403));
    let ids = rule_ids(&run);
    assert!(ids.contains(&949110), "{ids:?}");
    let score = run.info.details[0].1["anomaly_score"].as_u64().unwrap();
    assert!(score >= 5, "{score}");
}

#[tokio::test]
async fn setup_directives_come_before_the_rule_files() {
    let Some(yaml) = crs() else {
        eprintln!("modsecurity-crs is not installed: skipped");
        return;
    };
    let put = b"PUT /items/1 HTTP/1.1\r\nHost: api.test\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n";
    // CRS allows GET HEAD POST OPTIONS by default
    let p = waf(&yaml);
    let mut run = request(&p, put).await.unwrap();
    assert_eq!(status(&body_step(&p, &mut run, b"", true).await), Some(403));
    assert!(rule_ids(&run).contains(&911100));
    let p = waf(&format!(
        "{yaml}setup: |\n  SecAction \"id:900200,phase:1,nolog,pass,t:none,setvar:'tx.allowed_methods=GET HEAD POST OPTIONS PUT'\"\n"
    ));
    let mut run = request(&p, put).await.unwrap();
    assert_eq!(status(&body_step(&p, &mut run, b"", true).await), None);
}
