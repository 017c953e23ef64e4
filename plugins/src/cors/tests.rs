//! The cors plugin against sessions parsed from raw requests.

use super::*;
use crate::api::testing::{session_from_bytes, test_info};
use crate::api::ReplyBody;

fn build(yaml: &str) -> BuildResult<Cors> {
    crate::api::testing::build(yaml)
}

const CFG: &str = r#"
allow_origins: ["https://app.example.com", "https://*.example.com", "http://localhost:3000"]
allow_methods: [GET, POST]
allow_headers: [Authorization, Content-Type]
expose_headers: [X-Request-Id]
allow_credentials: true
max_age: 10m
"#;

#[test]
fn origin_matching() {
    let c = build(CFG).unwrap();
    let ok = |o: &str| c.allowed(&HeaderValue::from_str(o).unwrap());
    assert!(ok("https://app.example.com"));
    assert!(ok("https://a.example.com"));
    assert!(ok("https://a.b.example.com"));
    assert!(ok("http://localhost:3000"));
    assert!(!ok("https://example.com"));
    assert!(!ok("https://evil-example.com"));
    assert!(!ok("https://example.com.evil.net"));
    assert!(!ok("http://a.example.com"));
    assert!(!ok("https://a.example.com:8443"));
    assert!(!ok("http://localhost:3001"));
    assert!(!ok("null"));
    assert!(!ok("https://.example.com"));
    assert!(!ok("https://a..example.com"));
}

async fn run(c: &Cors, head: &str) -> (Option<Reply>, ResponseHeader) {
    let raw = format!("{head}\r\nHost: api\r\n\r\n");
    let raw = raw.replace("\r\n\r\nHost", "\r\nHost");
    let mut s = session_from_bytes(raw.as_bytes()).await.unwrap();
    let mut info = test_info();
    let mut slot = None;
    let mut cx = PluginCtx::new(&mut info, &mut slot);
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        .unwrap();
    match c.request_filter(&mut s, &mut cx).await.unwrap() {
        Flow::Respond(r) => (Some(r), resp),
        Flow::Continue => {
            c.response_filter(&mut s, &mut resp, &mut cx).await.unwrap();
            (None, resp)
        }
    }
}

fn get<'a>(r: &'a Reply, n: &HeaderName) -> Option<&'a HeaderValue> {
    r.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v)
}

#[tokio::test]
async fn preflight_is_answered() {
    let c = build(CFG).unwrap();
    let (r, _) = run(&c, "OPTIONS /x HTTP/1.1\r\nOrigin: https://a.example.com\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization").await;
    let r = r.unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(r.body, ReplyBody::Empty);
    assert_eq!(
        get(&r, &ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(),
        "https://a.example.com"
    );
    assert_eq!(get(&r, &ACCESS_CONTROL_ALLOW_CREDENTIALS).unwrap(), "true");
    assert_eq!(get(&r, &ACCESS_CONTROL_ALLOW_METHODS).unwrap(), "GET, POST");
    assert_eq!(
        get(&r, &ACCESS_CONTROL_ALLOW_HEADERS).unwrap(),
        "Authorization, Content-Type"
    );
    assert_eq!(get(&r, &ACCESS_CONTROL_MAX_AGE).unwrap(), "600");
    assert!(get(&r, &VARY).unwrap().to_str().unwrap().contains("Origin"));
    // disallowed origin: answered, but without CORS headers
    let (r, _) = run(
        &c,
        "OPTIONS /x HTTP/1.1\r\nOrigin: https://evil.com\r\nAccess-Control-Request-Method: POST",
    )
    .await;
    let r = r.unwrap();
    assert_eq!(r.status, 204);
    assert!(get(&r, &ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    // plain OPTIONS is a normal request
    let (r, _) = run(&c, "OPTIONS /x HTTP/1.1\r\nOrigin: https://a.example.com").await;
    assert!(r.is_none());
}

#[tokio::test]
async fn simple_requests() {
    let c = build(CFG).unwrap();
    let (_, resp) = run(&c, "GET /x HTTP/1.1\r\nOrigin: https://app.example.com").await;
    let all: Vec<_> = resp
        .headers
        .get_all(ACCESS_CONTROL_ALLOW_ORIGIN)
        .iter()
        .collect();
    assert_eq!(all, vec!["https://app.example.com"]);
    assert_eq!(
        resp.headers.get(ACCESS_CONTROL_EXPOSE_HEADERS).unwrap(),
        "X-Request-Id"
    );
    assert_eq!(resp.headers.get(VARY).unwrap(), "Origin");
    let (_, resp) = run(&c, "GET /x HTTP/1.1\r\nOrigin: https://evil.com").await;
    assert!(
        resp.headers.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
        "upstream's ACAO must be removed"
    );
    assert_eq!(resp.headers.get(VARY).unwrap(), "Origin");
    let (_, resp) = run(&c, "GET /x HTTP/1.1").await;
    assert!(resp.headers.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    assert_eq!(resp.headers.get(VARY).unwrap(), "Origin");
}

#[tokio::test]
async fn star_without_credentials() {
    let c = build("allow_origins: [\"*\"]\nallow_headers: [\"*\"]").unwrap();
    let (_, resp) = run(&c, "GET /x HTTP/1.1\r\nOrigin: https://x.org").await;
    assert_eq!(resp.headers.get(ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(), "*");
    let (r, _) = run(
        &c,
        "OPTIONS /x HTTP/1.1\r\nOrigin: https://x.org\r\nAccess-Control-Request-Method: PUT",
    )
    .await;
    assert_eq!(
        get(&r.unwrap(), &ACCESS_CONTROL_ALLOW_HEADERS).unwrap(),
        "*"
    );
}

#[test]
fn config_errors() {
    let e = build("allow_origins: [\"*\"]\nallow_credentials: true")
        .err()
        .unwrap();
    assert_eq!(e.path, "allow_origins");
    assert_eq!(
        build("allow_origins: [\"null\"]").err().unwrap().path,
        "allow_origins[0]"
    );
    assert_eq!(
        build("allow_origins: [\"https://a.com/path\"]")
            .err()
            .unwrap()
            .path,
        "allow_origins[0]"
    );
    assert_eq!(
        build("allow_origins: [\"https://*.com\"]")
            .err()
            .unwrap()
            .path,
        "allow_origins[0]"
    );
    assert_eq!(
        build("allow_origins: [\"ftp://a.com\"]")
            .err()
            .unwrap()
            .path,
        "allow_origins[0]"
    );
    assert_eq!(
        build("allow_origins: [\"https://a.*.com\"]")
            .err()
            .unwrap()
            .path,
        "allow_origins[0]"
    );
    assert_eq!(
        build("allow_origins: [\"https://a.com\"]\nallow_methods: [\"G T\"]")
            .err()
            .unwrap()
            .path,
        "allow_methods[0]"
    );
    assert_eq!(
        build("allow_origins: [\"https://a.com\"]\nmax_age: forever")
            .err()
            .unwrap()
            .path,
        "max_age"
    );
}
