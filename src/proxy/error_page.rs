//! Proxy errors -> status + small JSON body (`fail_to_proxy`): 502 when the upstream cannot be
//! reached or answers garbage, 503 when no healthy backend is left, 504 on upstream timeouts.
//! The reply passes the response hooks of the plugins that ran, like every gateway reply.

use gatehouse_plugins::Reply;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_proxy::{FailToProxy, Session};

use super::ctx::Ctx;
use super::pipeline;

/// The status and message for `e`; status 0 means the client is gone and nothing is written.
pub fn classify(e: &Error) -> (u16, &'static str) {
    use ErrorType::*;
    match (e.etype(), e.esource()) {
        (HTTPStatus(503), _) => (503, "no healthy backend"),
        (HTTPStatus(413), _) => (413, "request body too large"),
        (HTTPStatus(code), _) => (*code, "gateway error"),
        (ConnectTimedout, _) | (TLSHandshakeTimedout, _) => (504, "upstream connect timeout"),
        (ReadTimedout | WriteTimedout, ErrorSource::Upstream) => (504, "upstream timeout"),
        (ConnectRefused | ConnectNoRoute | ConnectError | BindError | SocketError, _) => {
            (502, "upstream unreachable")
        }
        (_, ErrorSource::Upstream) => (502, "bad upstream response"),
        (ReadTimedout, ErrorSource::Downstream) => (408, "request timeout"),
        (ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => {
            (0, "client closed")
        }
        (_, ErrorSource::Downstream) => (400, "bad request"),
        _ => (500, "internal error"),
    }
}

/// Answers a failed request (Pingora's `fail_to_proxy`).
pub async fn fail_to_proxy(s: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
    let (code, message) = classify(e);
    ctx.error.get_or_insert(message);
    // Pingora does not reuse the client connection after a proxy error (its reuse hint only
    // covers errors before a backend is chosen): say so instead of closing under the
    // client's next request
    s.set_keepalive(None);
    if code > 0 && s.response_written().is_none() {
        if let Err(we) = pipeline::write_reply(s, Reply::error(code, message), ctx).await {
            log::debug!("writing the error reply failed: {we}");
        }
    }
    FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(t: ErrorType, src: ErrorSource) -> Box<Error> {
        let mut e = Error::new(t);
        e.esource = src;
        e
    }

    #[test]
    fn maps_errors() {
        assert_eq!(
            classify(&err(ErrorType::HTTPStatus(503), ErrorSource::Internal)).0,
            503
        );
        assert_eq!(
            classify(&err(ErrorType::ConnectRefused, ErrorSource::Upstream)).0,
            502
        );
        assert_eq!(
            classify(&err(ErrorType::ConnectTimedout, ErrorSource::Upstream)).0,
            504
        );
        assert_eq!(
            classify(&err(ErrorType::ReadTimedout, ErrorSource::Upstream)).0,
            504
        );
        assert_eq!(
            classify(&err(ErrorType::InvalidHTTPHeader, ErrorSource::Upstream)).0,
            502
        );
        assert_eq!(
            classify(&err(ErrorType::ConnectionClosed, ErrorSource::Downstream)).0,
            0
        );
        assert_eq!(
            classify(&err(ErrorType::InvalidHTTPHeader, ErrorSource::Downstream)).0,
            400
        );
    }
}
