//! Helpers for unit-testing plugins without a network: a [`Session`] parsed from raw request
//! bytes, and a [`RequestInfo`] with fixed values.
//!
//! ```ignore
//! let mut s = session_from_bytes(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await?;
//! let mut info = test_info();
//! let mut slot = None;
//! let flow = plugin.request_filter(&mut s, &mut PluginCtx::new(&mut info, &mut slot)).await?;
//! ```

use std::net::{IpAddr, Ipv4Addr};

use super::{RequestInfo, Result, Session};

/// Parses `raw` (a full HTTP/1.1 request head, optionally a body) into a proxy [`Session`].
/// Errors when the bytes are not a complete request head.
pub async fn session_from_bytes(raw: &[u8]) -> Result<Session> {
    let io = tokio_test::io::Builder::new().read(raw).build();
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
