//! `headers` plugin: set, add and remove request headers (before they go upstream) and response
//! headers (before they go to the client).
//!
//! ```yaml
//! - headers:
//!     request:  { set: { X-Env: prod }, add: { Via: gatehouse }, remove: [X-Debug] }
//!     response: { set: { Cache-Control: no-store }, remove: [Server] }
//! ```
//! Order within one side: remove, then set (replaces every value), then add (appends).
//! Names and values are validated and converted once, when the config is compiled.

use std::collections::BTreeMap;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::api::{
    edit_request, edit_response, BuildEnv, BuildError, BuildResult, HeaderEdit, Plugin, PluginCtx,
    PluginSpec, RequestHeader, ResponseHeader, Result, Session,
};

/// One side's raw rewrite rules.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// The plugin's YAML config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    #[serde(default)]
    request: RawRewrite,
    #[serde(default)]
    response: RawRewrite,
}

#[derive(Debug, Default)]
struct Rewrite {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Rewrite {
    fn compile(raw: RawRewrite, side: &str) -> std::result::Result<Self, BuildError> {
        let name = |n: &str, field: &str| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                BuildError::at(
                    format!("{side}.{field}"),
                    format!("invalid header name `{n}`"),
                )
            })
        };
        let pairs = |m: BTreeMap<String, String>, field: &str| {
            m.into_iter()
                .map(|(k, v)| {
                    let value = HeaderValue::from_str(&v).map_err(|_| {
                        BuildError::at(
                            format!("{side}.{field}.{k}"),
                            "invalid header value (control characters?)",
                        )
                    })?;
                    Ok((name(&k, field)?, value))
                })
                .collect::<std::result::Result<Vec<_>, BuildError>>()
        };
        Ok(Rewrite {
            set: pairs(raw.set, "set")?,
            add: pairs(raw.add, "add")?,
            remove: raw
                .remove
                .iter()
                .map(|n| name(n, "remove"))
                .collect::<std::result::Result<_, _>>()?,
        })
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// The `headers` plugin.
#[derive(Debug)]
pub struct Headers {
    request: Rewrite,
    response: Rewrite,
}

impl Rewrite {
    /// The removals, then the `set` and `add` entries, in that order.
    fn apply(&self, h: &mut dyn HeaderEdit) -> Result<()> {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.set(n.clone(), v.clone())?;
        }
        for (n, v) in &self.add {
            h.add(n.clone(), v.clone())?;
        }
        Ok(())
    }

    /// The headers the rewrite may add.
    fn room(&self) -> usize {
        self.set.len() + self.add.len()
    }
}

#[async_trait]
impl Plugin for Headers {
    async fn upstream_request_filter(
        &self,
        _s: &mut Session,
        req: &mut RequestHeader,
        _cx: &mut PluginCtx<'_>,
    ) -> Result<()> {
        let rw = &self.request;
        if rw.is_empty() {
            return Ok(());
        }
        edit_request(req, rw.room(), |h| rw.apply(h))
    }

    async fn response_filter(
        &self,
        _s: &mut Session,
        resp: &mut ResponseHeader,
        _cx: &mut PluginCtx<'_>,
    ) -> Result<()> {
        let rw = &self.response;
        if rw.is_empty() {
            return Ok(());
        }
        edit_response(resp, rw.room(), |h| rw.apply(h))
    }
}

impl PluginSpec for Headers {
    const KIND: &'static str = "headers";
    type Config = HeadersConfig;

    fn build(config: HeadersConfig, _env: &mut BuildEnv) -> BuildResult<Self> {
        let h = Headers {
            request: Rewrite::compile(config.request, "request")?,
            response: Rewrite::compile(config.response, "response")?,
        };
        if h.request.is_empty() && h.response.is_empty() {
            return Err(BuildError::new("headers plugin with no rewrite rules"));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::{session_from_bytes, test_info};

    fn build(yaml: &str) -> BuildResult<Headers> {
        crate::api::testing::build(yaml)
    }

    #[tokio::test]
    async fn rewrites_request_and_response() {
        let p = build(
            "request: { set: { X-Env: prod }, add: { Via: gh }, remove: [X-Debug] }\n\
             response: { set: { Cache-Control: no-store }, remove: [Server] }",
        )
        .unwrap();
        let mut s = session_from_bytes(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Debug: 1\r\nX-Env: dev\r\nVia: x\r\n\r\n",
        )
        .await
        .unwrap();
        let mut req = s.req_header().clone();
        let mut info = test_info();
        let mut slot = None;
        let mut cx = PluginCtx::new(&mut info, &mut slot);
        p.upstream_request_filter(&mut s, &mut req, &mut cx)
            .await
            .unwrap();
        assert!(req.headers.get("x-debug").is_none());
        assert_eq!(req.headers.get_all("x-env").iter().count(), 1);
        assert_eq!(req.headers.get("x-env").unwrap(), "prod");
        let vias: Vec<_> = req.headers.get_all("via").iter().collect();
        assert_eq!(vias, vec!["x", "gh"]);

        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("Server", "backend").unwrap();
        p.response_filter(&mut s, &mut resp, &mut cx).await.unwrap();
        assert!(resp.headers.get("server").is_none());
        assert_eq!(resp.headers.get("cache-control").unwrap(), "no-store");
    }

    #[test]
    fn bad_config_names_the_field() {
        let e = build("request: { set: { \"bad name\": x } }").unwrap_err();
        assert_eq!(e.path, "request.set");
        let e = build("{}").unwrap_err();
        assert!(e.message.contains("no rewrite rules"));
        let reg = crate::builtins();
        let v: serde_yaml::Value = serde_yaml::from_str("{ request: { sett: {} } }").unwrap();
        let e = reg
            .build("headers", v, &mut BuildEnv::default())
            .err()
            .unwrap();
        assert_eq!(e.path, "request.sett");
        assert!(e.message.contains("unknown field `sett`"), "{e}");
        let e = reg
            .build("nope", serde_yaml::Value::Null, &mut BuildEnv::default())
            .err()
            .unwrap();
        assert!(e.message.contains("unknown plugin kind `nope`"));
    }
}
