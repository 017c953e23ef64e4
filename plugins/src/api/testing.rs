//! Helpers for unit-testing plugins without a network: build a plugin from its YAML config the
//! way the gateway does, parse a [`Session`] from raw request bytes, and run a request through
//! a plugin's `request_filter`.
//!
//! ```ignore
//! let p: MyPlugin = build("{ header: X-Env }")?;
//! let run = request(&p, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await?;
//! assert!(matches!(run.flow, Flow::Continue));
//! ```

use std::net::{IpAddr, Ipv4Addr};

use super::registry::parse_config;
use super::{
    BuildEnv, BuildError, BuildResult, Flow, Plugin, PluginCtx, PluginSpec, RequestInfo, Result,
    Session,
};

/// Builds `P` from its YAML config (`{}` or an empty string for the defaults), as the gateway
/// does: unknown fields are errors with their path, then [`PluginSpec::build`] runs with a
/// default [`BuildEnv`].
pub fn build<P: PluginSpec>(yaml: &str) -> BuildResult<P> {
    build_with(yaml, &mut BuildEnv::default())
}

/// [`build`] with a given environment (e.g. `base_dir` for key files); warnings land in
/// `env.warnings`.
pub fn build_with<P: PluginSpec>(yaml: &str, env: &mut BuildEnv) -> BuildResult<P> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(yaml).map_err(|e| BuildError::new(format!("invalid YAML: {e}")))?;
    let value = match value {
        serde_yaml::Value::Null => serde_yaml::Value::Mapping(Default::default()),
        v => v,
    };
    P::build(parse_config::<P>(value)?, env)
}

/// Parses `raw` (a full HTTP/1.1 request head, optionally a body) into a proxy [`Session`].
/// Errors when the bytes are not a complete request head.
pub async fn session_from_bytes(raw: &[u8]) -> Result<Session> {
    // an in-memory stream that, unlike a strict mock, does not mind a body left unread
    let io = std::io::Cursor::new(raw.to_vec());
    let mut session = Session::new_h1(Box::new(io));
    if !session.downstream_session.read_request().await? {
        return pingora_error::Error::e_explain(
            pingora_error::ErrorType::InvalidHTTPHeader,
            "incomplete request head",
        );
    }
    Ok(session)
}

/// A [`RequestInfo`] for route `test-route`, client 192.0.2.1, request id `test-request-id`.
pub fn test_info() -> RequestInfo {
    RequestInfo::new(
        "test-request-id".to_string(),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        "test-route".into(),
    )
}

/// A request that went through a plugin's `request_filter`: what it decided, the shared
/// request facts it left, its private per-request state, and the session (for later hooks).
pub struct Run {
    pub flow: Flow,
    pub info: RequestInfo,
    pub slot: Option<Box<dyn std::any::Any + Send + Sync>>,
    pub session: Session,
}

/// Parses `raw` and runs `plugin.request_filter` on it with [`test_info`].
pub async fn request<P: Plugin + ?Sized>(plugin: &P, raw: &[u8]) -> Result<Run> {
    let mut session = session_from_bytes(raw).await?;
    let mut info = test_info();
    let mut slot = None;
    let flow = plugin
        .request_filter(&mut session, &mut PluginCtx::new(&mut info, &mut slot))
        .await?;
    Ok(Run {
        flow,
        info,
        slot,
        session,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[tokio::test]
    async fn a_body_left_unread_is_fine() {
        // found by the cors_origin fuzz target: the strict mock stream panicked on drop
        let s = super::session_from_bytes(
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await
        .unwrap();
        assert_eq!(s.req_header().uri.path(), "/x");
        drop(s);
    }
}
