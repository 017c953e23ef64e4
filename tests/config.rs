//! `gatehouse check`: every shipped config passes; every kind of config error exits 1 and
//! names its YAML path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{check_file, check_yaml};

const BASE: &str = r#"
server:
  listen: ["127.0.0.1:18080"]
upstreams:
  up:
    backends: ["127.0.0.1:9001", { addr: "127.0.0.1:9002", weight: 2 }]
routes:
  - id: r1
    match: { path_prefix: /a }
    upstream: up
"#;

#[test]
fn every_shipped_config_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut files = Vec::new();
    let mut dirs = vec![root];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(p);
            }
        }
    }
    assert!(!files.is_empty());
    for f in files {
        let (code, out) = check_file(&f);
        assert_eq!(code, 0, "{}:\n{out}", f.display());
        assert!(out.contains(": ok"), "{out}");
    }
}

#[test]
fn valid_config_passes() {
    let (code, out) = check_yaml(BASE);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (1 routes, 1 upstreams)"), "{out}");
}

/// Each case: a config change and the `path: message` fragments the output must contain.
#[test]
fn each_config_error_exits_1_with_its_path() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            BASE.replace("  listen: [", "  lissen: ["),
            vec!["server.lissen: unknown field `lissen`"],
        ),
        (
            BASE.replace("upstream: up", "upstream: nope"),
            vec!["routes[0].upstream: unknown upstream `nope`"],
        ),
        (
            format!("{BASE}  - id: r1\n    upstream: up\n"),
            vec!["routes[1].id: duplicate route id `r1`"],
        ),
        (
            BASE.replace("\"127.0.0.1:9001\"", "\"not-an-address\""),
            vec!["upstreams.up.backends[0]: invalid backend address"],
        ),
        (
            BASE.replace("127.0.0.1:18080", "127.0.0.1:99999"),
            vec!["server.listen[0]: invalid listen address"],
        ),
        (
            BASE.replace("path_prefix: /a", "path_regex: \"(unclosed\""),
            vec!["routes[0].match.path_regex: invalid regex"],
        ),
        (
            BASE.replace("weight: 2", "weight: 0"),
            vec!["upstreams.up.backends[1].weight: weight must be"],
        ),
        (
            BASE.replace(
                "backends: [\"127.0.0.1:9001\", { addr: \"127.0.0.1:9002\", weight: 2 }]",
                "backends: []",
            ),
            vec!["upstreams.up.backends: needs at least one backend"],
        ),
        (
            BASE.replace(
                "    upstream: up\n",
                "    upstream: up\n    plugins:\n      - nosuch: {}\n",
            ),
            vec!["routes[0].plugins[0].nosuch: unknown plugin kind `nosuch`"],
        ),
        (
            BASE.replace(
                "    upstream: up\n",
                "    upstream: up\n    plugins:\n      - headers: { request: { sett: {} } }\n",
            ),
            vec!["routes[0].plugins[0].headers.request.sett: unknown field `sett`"],
        ),
        (
            BASE.replace(
                "routes:",
                "admin:\n  token: \"${GATEHOUSE_TEST_UNSET_VAR}\"\nroutes:",
            ),
            vec!["admin.token: environment variable `GATEHOUSE_TEST_UNSET_VAR` is not set"],
        ),
        (
            BASE.replace("  listen: [", "  grace_period: 10 parsecs\n  listen: ["),
            vec!["server.grace_period: invalid duration"],
        ),
        (
            BASE.replace(
                "weight: 2 }]",
                "weight: 2 }]\n    health_check: { interval: 1s }",
            ),
            vec!["upstreams.up.health_check: set exactly one of `http` or `tcp`"],
        ),
        (
            BASE.replace("routes:\n  - id: r1", "routes:\n  - id: \"bad id!\""),
            vec!["routes[0].id: route ids use"],
        ),
        (
            BASE.replace("path_prefix: /a", "path_prefix: a"),
            vec!["routes[0].match.path_prefix: must start with `/`"],
        ),
        (
            BASE.replace("path_prefix: /a", "path_prefix: /a, methods: [\"G E T\"]"),
            vec!["routes[0].match.methods[0]: invalid method"],
        ),
        ("server: [1, 2\n".to_string(), vec!["invalid YAML"]),
    ];
    for (yaml, expect) in cases {
        let (code, out) = check_yaml(&yaml);
        assert_eq!(code, 1, "expected failure for:\n{yaml}\noutput:\n{out}");
        for e in expect {
            assert!(out.contains(e), "missing `{e}` in:\n{out}");
        }
    }
}

#[test]
fn strip_prefix_needs_a_prefix_route() {
    let (code, out) = check_yaml(&BASE.replace("path_prefix: /a", "path_exact: /a").replace(
        "    upstream: up\n",
        "    upstream: up\n    strip_prefix: true\n",
    ));
    assert_eq!(code, 1);
    assert!(
        out.contains("routes[0].strip_prefix: needs match.path_prefix"),
        "{out}"
    );
}

#[test]
fn all_errors_are_reported_at_once() {
    let yaml = BASE
        .replace("upstream: up", "upstream: nope")
        .replace("\"127.0.0.1:9001\"", "\"bad\"")
        .replace("127.0.0.1:18080", "nowhere");
    let (code, out) = check_yaml(&yaml);
    assert_eq!(code, 1);
    assert!(out.contains("3 error(s)"), "{out}");
    assert!(out.contains("server.listen[0]"), "{out}");
    assert!(out.contains("upstreams.up.backends[0]"), "{out}");
    assert!(out.contains("routes[0].upstream"), "{out}");
}

#[test]
fn env_vars_are_substituted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.yaml");
    std::fs::write(&path, BASE.replace("127.0.0.1:9001", "${GH_TEST_BACKEND}")).unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["check", "-c"])
        .arg(&path)
        .env("GH_TEST_BACKEND", "127.0.0.1:7000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn missing_file_is_an_error() {
    let (code, out) = check_file(std::path::Path::new("/nonexistent/gatehouse.yaml"));
    assert_eq!(code, 1);
    assert!(out.contains("cannot read the file"), "{out}");
}

#[test]
fn help_explains_run_and_check() {
    let out = std::process::Command::new(common::bin())
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("run") && text.contains("check"), "{text}");
}

/// Config at scale: `x-` anchors, `upstream_defaults`, `chains`, one error per cause.
#[test]
fn many_services_written_once_and_one_error_per_cause() {
    let routes: String = (0..21)
        .map(|i| {
            format!("  - {{ id: s{i}, match: {{ path_prefix: /s{i} }}, upstream: up, plugins: [{{ use: authed }}] }}\n")
        })
        .collect();
    let yaml = format!(
        "x-probe: &probe {{ http: {{ path: /health }}, interval: 5s }}\nserver:\n  listen: [\"127.0.0.1:18080\"]\nupstream_defaults:\n  health_check: *probe\n  timeouts: {{ connect: 1s }}\nupstreams:\n  up: {{ backends: [\"127.0.0.1:9001\"], timeouts: {{ read: 3s }} }}\nchains:\n  authed:\n    - jwt: {{ keys: [{{ kid: k1, algorithm: HS256, secret: \"${{GH_TEST_UNSET_SECRET}}\" }}] }}\nroutes:\n{routes}"
    );
    // the variable is used once (in the chain): one error, at the chain
    let (code, out) = check_yaml(&yaml);
    assert_eq!(code, 1, "{out}");
    assert_eq!(out.matches("is not set").count(), 1, "{out}");
    assert!(out.contains("1 error(s)"), "{out}");
    assert!(out.contains("chains.authed[0].jwt.keys[0].secret: environment variable `GH_TEST_UNSET_SECRET` is not set"), "{out}");

    // copied into every route as well (the chain still defined): still one error, naming
    // the places
    let copied = yaml.replace(
        "plugins: [{ use: authed }]",
        "plugins: [{ jwt: { keys: [{ kid: k1, algorithm: HS256, secret: \"${GH_TEST_UNSET_SECRET}\" }] } }]",
    );
    let (code, out) = check_yaml(&copied);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("1 error(s)"), "{out}");
    assert!(out.contains("(also at routes[0].plugins[0].jwt.keys[0].secret, routes[1].plugins[0].jwt.keys[0].secret, routes[2].plugins[0].jwt.keys[0].secret and 18 more)"), "{out}");

    // an invalid entry in a chain used 21 times: one error at the chain, with its users
    let bad = yaml
        .replace(
            "${GH_TEST_UNSET_SECRET}",
            "a-secret-long-enough-for-hs256-keys-0123456789",
        )
        .replace("algorithm: HS256", "algorithm: XS256");
    let (code, out) = check_yaml(&bad);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("1 error(s)"), "{out}");
    assert!(out.contains("chains.authed[0].jwt"), "{out}");
    assert!(out.contains("in a chain used at routes[0].plugins[0], routes[1].plugins[0], routes[2].plugins[0] and 18 more"), "{out}");

    // valid: the effective config shows the merged upstream and the inlined chain
    let good = yaml.replace(
        "${GH_TEST_UNSET_SECRET}",
        "a-secret-long-enough-for-hs256-keys-0123456789",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.yaml");
    std::fs::write(&path, &good).unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["check", "--print", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let effective: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let up = &effective["upstreams"]["up"];
    assert_eq!(up["timeouts"]["connect"], "1s");
    assert_eq!(up["timeouts"]["read"], "3s");
    assert_eq!(up["health_check"]["interval"], "5s");
    assert!(effective.get("chains").is_none() && effective.get("x-probe").is_none());
    assert!(effective["routes"][20]["plugins"][0]["jwt"].is_mapping());
    assert_eq!(
        effective["routes"][0]["plugins"][0]["jwt"]["keys"][0]["secret"],
        "<redacted>"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("ok (21 routes, 1 upstreams)"));

    // unknown names and cycles, with their paths
    let (code, out) = check_yaml(&good.replace("{ use: authed }", "{ use: authd }"));
    assert_eq!(code, 1);
    assert!(out.contains("1 error(s)"), "{out}");
    assert!(
        out.contains("routes[0].plugins[0].use: unknown chain `authd` (defined: authed)"),
        "{out}"
    );
    let cyclic = good.replace(
        "chains:\n  authed:\n",
        "chains:\n  a: [{ use: b }]\n  b: [{ use: a }]\n  authed:\n",
    );
    let (code, out) = check_yaml(&cyclic);
    assert_eq!(code, 1);
    assert!(
        out.contains("chains use each other in a cycle: a -> b -> a"),
        "{out}"
    );
}

/// A file with no config in it (empty, blank, comments only) is an error, not a config of no
/// routes: a reload that read a file an editor had just truncated would take every route down.
#[test]
fn an_empty_file_is_not_a_config() {
    for text in ["", "\n  \n", "# only a comment\n---\n"] {
        let (code, out) = check_yaml(text);
        assert_eq!(code, 1, "{text:?}: {out}");
        assert!(out.contains("the file holds no config"), "{text:?}: {out}");
    }
}
