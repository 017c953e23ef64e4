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
//! All header values are computed when the config is compiled; [`origin`] parses and
//! matches the allowed origins.

mod origin;

use async_trait::async_trait;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;

use crate::api::units::Dur;
use origin::OriginRule;

use crate::api::{
    edit_response, BuildEnv, BuildError, BuildResult, Flow, HeaderEdit, Plugin, PluginCtx,
    PluginSpec, Reply, ResponseHeader, Result, Session,
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
    max_age: Option<Dur>,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"]
        .iter()
        .map(|s| s.to_string())
        .collect()
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

fn add_vary(h: &mut dyn HeaderEdit, what: &'static str) -> Result<()> {
    let present = h.headers().get_all(VARY).iter().any(|v| {
        v.to_str()
            .map(|s| {
                s.split(',')
                    .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case(what))
            })
            .unwrap_or(false)
    });
    if !present {
        h.add(VARY, HeaderValue::from_static(what))?;
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
        let allowed = match cx.state::<Decision>() {
            Some(Decision::Allowed(origin)) => Some(origin),
            _ => None,
        };
        edit_response(resp, 4, |h| {
            for n in &UPSTREAM_CORS {
                h.remove(n);
            }
            if let Some(origin) = allowed {
                h.set(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
                if self.credentials {
                    h.set(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE)?;
                }
                if let Some(e) = &self.expose {
                    h.set(ACCESS_CONTROL_EXPOSE_HEADERS, e.clone())?;
                }
            }
            add_vary(h, "Origin")
        })
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
        let max_age = c.max_age.map(|d| HeaderValue::from(d.0.as_secs()));
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
mod tests;
