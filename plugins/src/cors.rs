//! `cors` plugin: Cross-Origin Resource Sharing per the Fetch standard.
//!
//! ```yaml
//! - cors:
//!     allow_origins: ["https://app.example.com", "https://*.example.com"]   # or ["*"]
//!     allow_methods: [GET, POST, PUT, DELETE]
//!     allow_headers: [Authorization, Content-Type]                          # or ["*"]
//!     expose_headers: [X-Request-Id]
//!     allow_credentials: true
//!     max_age: 10m
//! ```
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here
//!   with 204 and never reaches later plugins or the upstream (put `cors` before `jwt`). A plain
//!   `OPTIONS` is a normal request.
//! - An allowed origin is echoed exactly (never `*` together with credentials: that config is
//!   rejected). A disallowed origin gets no CORS headers; its request still proceeds and the
//!   browser blocks the response.
//! - Every response of the route carries `Vary: Origin` (also 401/403/429/5xx from the gateway)
//!   and at most one `Access-Control-Allow-Origin`: the upstream's CORS headers are replaced.
//! - `https://*.example.com` matches one or more labels before `.example.com` with the same
//!   scheme and port: `https://a.example.com`, `https://a.b.example.com`; never
//!   `https://example.com`, `https://evil-example.com`, `https://example.com.evil.net`,
//!   `http://a.example.com` or `null`.
//!
//! All header values are computed when the config is compiled.

use async_trait::async_trait;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;

use crate::api::{
    BuildEnv, BuildError, BuildResult, Flow, Plugin, PluginCtx, PluginSpec, Reply, ResponseHeader,
    Result, Session,
};

/// The plugin's YAML config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    allow_origins: Vec<String>,
    #[serde(default = "default_methods")]
    allow_methods: Vec<String>,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    allow_credentials: bool,
    #[serde(default)]
    max_age: Option<String>,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    Any,
    /// `scheme://host[:port]`, lowercase.
    Exact(String),
    /// `scheme://*.suffix[:port]`: `suffix` without the leading dot.
    Wildcard {
        scheme: String,
        suffix: String,
        port: Option<String>,
    },
}

/// Splits a serialized origin into (scheme, host, port), lowercase. `None` for `null` or
/// anything that is not `scheme://host[:port]`.
fn split_origin(o: &str) -> Option<(String, String, Option<String>)> {
    let (scheme, rest) = o.split_once("://")?;
    if scheme.is_empty() || rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (h, Some(p.to_string()))
        }
        _ => (rest, None),
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme.to_ascii_lowercase(), host.to_ascii_lowercase(), port))
}

fn valid_label(l: &str) -> bool {
    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl OriginRule {
    fn parse(s: &str) -> std::result::Result<Self, String> {
        if s == "*" {
            return Ok(OriginRule::Any);
        }
        if s.eq_ignore_ascii_case("null") {
            return Err(
                "`null` origins cannot be allowed (sandboxed and file pages share it)".into(),
            );
        }
        let (scheme, host, port) = split_origin(s)
            .ok_or_else(|| format!("`{s}` is not an origin (scheme://host[:port], no path)"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("`{s}`: scheme must be http or https"));
        }
        if let Some(suffix) = host.strip_prefix("*.") {
            if !suffix.split('.').all(valid_label) || !suffix.contains('.') {
                return Err(format!("`{s}`: a wildcard needs a domain with at least two labels, e.g. https://*.example.com"));
            }
            return Ok(OriginRule::Wildcard {
                scheme,
                suffix: suffix.to_string(),
                port,
            });
        }
        if host.contains('*') {
            return Err(format!(
                "`{s}`: `*` is only allowed as the first label (https://*.example.com)"
            ));
        }
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        Ok(OriginRule::Exact(format!("{scheme}://{host}{port}")))
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(e) => e.eq_ignore_ascii_case(origin),
            OriginRule::Wildcard {
                scheme,
                suffix,
                port,
            } => {
                let Some((s, host, p)) = split_origin(origin) else {
                    return false;
                };
                if s != *scheme || p != *port {
                    return false;
                }
                let Some(prefix) = host
                    .strip_suffix(suffix.as_str())
                    .and_then(|h| h.strip_suffix('.'))
                else {
                    return false;
                };
                !prefix.is_empty() && prefix.split('.').all(valid_label)
            }
        }
    }
}

/// Per-request decision, kept from the request to the response.
enum Decision {
    /// Echo this origin.
    Allowed(HeaderValue),
    /// Origin present but not allowed, or no Origin: only `Vary: Origin`.
    None,
}

/// The `cors` plugin.
pub struct Cors {
    rules: Vec<OriginRule>,
    any: bool,
    credentials: bool,
    methods: HeaderValue,
    /// `None` + `headers_any`: echo the request's `Access-Control-Request-Headers`.
    headers: Option<HeaderValue>,
    headers_any: bool,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
}

const STAR: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");

fn join(
    list: &[String],
    field: &str,
    check: impl Fn(&str) -> bool,
) -> std::result::Result<Option<HeaderValue>, BuildError> {
    if list.is_empty() {
        return Ok(None);
    }
    for (i, item) in list.iter().enumerate() {
        if !check(item) {
            return Err(BuildError::at(
                format!("{field}[{i}]"),
                format!("invalid value `{item}`"),
            ));
        }
    }
    HeaderValue::from_str(&list.join(", "))
        .map(Some)
        .map_err(|_| BuildError::at(field, "invalid header value"))
}

fn add_vary(h: &mut ResponseHeader, what: &'static str) -> Result<()> {
    let present = h.headers.get_all(VARY).iter().any(|v| {
        v.to_str()
            .map(|s| {
                s.split(',')
                    .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case(what))
            })
            .unwrap_or(false)
    });
    if !present {
        h.append_header(VARY, what)?;
    }
    Ok(())
}

impl Cors {
    fn allowed(&self, origin: &HeaderValue) -> bool {
        match origin.to_str() {
            Ok(o) => self.rules.iter().any(|r| r.matches(o)),
            Err(_) => false,
        }
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any && !self.credentials {
            STAR
        } else {
            origin.clone()
        }
    }

    fn preflight(&self, s: &Session, origin: &HeaderValue) -> Reply {
        let mut r = Reply::empty(204);
        if self.allowed(origin) {
            r = r
                .with_header(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(origin))
                .with_header(ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
            if self.credentials {
                r = r.with_header(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
            }
            let req_headers = s.req_header().headers.get(ACCESS_CONTROL_REQUEST_HEADERS);
            let allow_headers = match (&self.headers, self.headers_any) {
                (Some(h), _) => Some(h.clone()),
                (None, true) if !self.credentials => Some(STAR),
                (None, true) => req_headers.cloned(),
                (None, false) => None,
            };
            if let Some(h) = allow_headers {
                r = r.with_header(ACCESS_CONTROL_ALLOW_HEADERS, h);
            }
            if let Some(m) = &self.max_age {
                r = r.with_header(ACCESS_CONTROL_MAX_AGE, m.clone());
            }
        }
        r.with_header(
            VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        )
    }
}

const UPSTREAM_CORS: [HeaderName; 6] = [
    ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_ALLOW_CREDENTIALS,
    ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_MAX_AGE,
];

#[async_trait]
impl Plugin for Cors {
    async fn request_filter(&self, s: &mut Session, cx: &mut PluginCtx<'_>) -> Result<Flow> {
        let req = s.req_header();
        let Some(origin) = req.headers.get(ORIGIN).cloned() else {
            cx.set_state(Decision::None);
            return Ok(Flow::Continue);
        };
        if req.method == Method::OPTIONS && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        {
            return Ok(Flow::Respond(self.preflight(s, &origin)));
        }
        let d = if self.allowed(&origin) {
            Decision::Allowed(self.allow_origin_value(&origin))
        } else {
            Decision::None
        };
        cx.set_state(d);
        Ok(Flow::Continue)
    }

    async fn response_filter(
        &self,
        _s: &mut Session,
        resp: &mut ResponseHeader,
        cx: &mut PluginCtx<'_>,
    ) -> Result<()> {
        for h in &UPSTREAM_CORS {
            resp.remove_header(h);
        }
        if let Some(Decision::Allowed(origin)) = cx.state::<Decision>() {
            resp.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
            if self.credentials {
                resp.insert_header(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE)?;
            }
            if let Some(e) = &self.expose {
                resp.insert_header(ACCESS_CONTROL_EXPOSE_HEADERS, e.clone())?;
            }
        }
        add_vary(resp, "Origin")
    }
}

fn token(s: &str) -> bool {
    !s.is_empty() && HeaderName::from_bytes(s.as_bytes()).is_ok()
}

impl PluginSpec for Cors {
    const KIND: &'static str = "cors";
    type Config = CorsConfig;

    fn build(c: CorsConfig, _env: &mut BuildEnv) -> BuildResult<Self> {
        if c.allow_origins.is_empty() {
            return Err(BuildError::at(
                "allow_origins",
                "needs at least one origin (or \"*\")",
            ));
        }
        let mut rules = Vec::with_capacity(c.allow_origins.len());
        for (i, o) in c.allow_origins.iter().enumerate() {
            rules.push(
                OriginRule::parse(o.trim())
                    .map_err(|e| BuildError::at(format!("allow_origins[{i}]"), e))?,
            );
        }
        let any = rules.contains(&OriginRule::Any);
        if any && c.allow_credentials {
            return Err(BuildError::at(
                "allow_origins",
                "\"*\" cannot be combined with allow_credentials: true (browsers reject it); list the origins",
            ));
        }
        if any && rules.len() > 1 {
            return Err(BuildError::at(
                "allow_origins",
                "\"*\" already allows every origin; list nothing else",
            ));
        }
        let methods = join(&c.allow_methods, "allow_methods", |m| {
            Method::from_bytes(m.as_bytes()).is_ok() && m != "*"
        })?
        .ok_or_else(|| BuildError::at("allow_methods", "needs at least one method"))?;
        let headers_any = c.allow_headers.iter().any(|h| h == "*");
        if headers_any && c.allow_headers.len() > 1 {
            return Err(BuildError::at(
                "allow_headers",
                "\"*\" already allows every header; list nothing else",
            ));
        }
        let headers = if headers_any {
            None
        } else {
            join(&c.allow_headers, "allow_headers", token)?
        };
        let expose = join(&c.expose_headers, "expose_headers", token)?;
        let max_age = match &c.max_age {
            None => None,
            Some(s) => {
                let secs = crate::api::units::duration_at(s, "max_age")?.as_secs();
                Some(HeaderValue::from(secs))
            }
        };
        Ok(Cors {
            rules,
            any,
            credentials: c.allow_credentials,
            methods,
            headers,
            headers_any,
            expose,
            max_age,
        })
    }
}

#[cfg(test)]
mod tests {
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
        let (r, _) = run(&c, "OPTIONS /x HTTP/1.1\r\nOrigin: https://evil.com\r\nAccess-Control-Request-Method: POST").await;
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
}
