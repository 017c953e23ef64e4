//! Proxy errors -> status + small JSON body (`fail_to_proxy`): 502 when the upstream cannot be
//! reached or answers garbage, 503 when no healthy backend is left, 504 on upstream timeouts.
//! The reply passes the response hooks of the plugins that ran, like every gateway reply.

use gatehouse_plugins::Reply;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_proxy::{FailToProxy, Session};

use super::ctx::Ctx;
use super::pipeline;
use super::strict::BadBody;

/// Why the gateway answered a request itself (or gave up on it): the reply's message and the
/// access log's `error` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    HeadTooLarge,
    NoRoute,
    BodyTooLarge,
    InvalidBody,
    RejectedByPlugin,
    ClientCertRequired,
    ClientCertNotAllowed,
    Misdirected,
    RouteTimeout,
    NoHealthyBackend,
    UpstreamConnectTimeout,
    UpstreamTimeout,
    UpstreamUnreachable,
    UpstreamTls,
    BadUpstreamResponse,
    RequestTimeout,
    ClientClosed,
    BadRequest,
    GatewayError,
    Internal,
}

impl Failure {
    /// The message in the JSON reply and the access log.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Failure::HeadTooLarge => "request head too large",
            Failure::NoRoute => "no route",
            Failure::BodyTooLarge => "request body too large",
            Failure::InvalidBody => "invalid chunked body",
            Failure::RejectedByPlugin => "rejected by plugin",
            Failure::ClientCertRequired => "client certificate required",
            Failure::ClientCertNotAllowed => "client certificate not allowed",
            Failure::Misdirected => "misdirected request",
            Failure::RouteTimeout => "route timeout",
            Failure::NoHealthyBackend => "no healthy backend",
            Failure::UpstreamConnectTimeout => "upstream connect timeout",
            Failure::UpstreamTimeout => "upstream timeout",
            Failure::UpstreamUnreachable => "upstream unreachable",
            Failure::UpstreamTls => "upstream TLS handshake failed",
            Failure::BadUpstreamResponse => "bad upstream response",
            Failure::RequestTimeout => "request timeout",
            Failure::ClientClosed => "client closed",
            Failure::BadRequest => "bad request",
            Failure::GatewayError => "gateway error",
            Failure::Internal => "internal error",
        }
    }

    /// The Pingora error that answers `status` with this failure's message.
    pub(crate) fn error(self, status: u16) -> Box<Error> {
        Error::explain(ErrorType::HTTPStatus(status), self.as_str())
    }
}

impl From<BadBody> for Failure {
    fn from(b: BadBody) -> Self {
        match b {
            BadBody::Framing => Failure::InvalidBody,
            BadBody::TooLarge => Failure::BodyTooLarge,
        }
    }
}

/// The status of a failure found in the request body.
pub(crate) fn status_of(f: Failure) -> u16 {
    if f == Failure::BodyTooLarge {
        413
    } else {
        400
    }
}

/// The status and failure for `e`; status 0 means the client is gone and nothing is written.
pub(crate) fn classify(e: &Error) -> (u16, Failure) {
    use ErrorType::*;
    // the connection guard refused the request body's framing (`conn::HeadDeadline`)
    let io = e.root_cause().downcast_ref::<std::io::Error>();
    if let Some(b) = io.and_then(|io| io.get_ref()?.downcast_ref::<BadBody>()) {
        let f = Failure::from(*b);
        return (status_of(f), f);
    }
    match (e.etype(), e.esource()) {
        (HTTPStatus(503), _) => (503, Failure::NoHealthyBackend),
        (HTTPStatus(413), _) => (413, Failure::BodyTooLarge),
        (HTTPStatus(code), _) => (*code, Failure::GatewayError),
        (ConnectTimedout, _) | (TLSHandshakeTimedout, _) => (504, Failure::UpstreamConnectTimeout),
        (TLSHandshakeFailure | InvalidCert | HandshakeError, _) => (502, Failure::UpstreamTls),
        (ReadTimedout | WriteTimedout, ErrorSource::Upstream) => (504, Failure::UpstreamTimeout),
        (ConnectRefused | ConnectNoRoute | ConnectError | BindError | SocketError, _) => {
            (502, Failure::UpstreamUnreachable)
        }
        (_, ErrorSource::Upstream) => (502, Failure::BadUpstreamResponse),
        (ReadTimedout, ErrorSource::Downstream) => (408, Failure::RequestTimeout),
        (ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => {
            (0, Failure::ClientClosed)
        }
        (_, ErrorSource::Downstream) => (400, Failure::BadRequest),
        _ => (500, Failure::Internal),
    }
}

/// Answers a failed request (Pingora's `fail_to_proxy`).
pub(crate) async fn fail_to_proxy(s: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
    let (code, failure) = classify(e);
    // a failure the gateway named itself (route timeout, ...) keeps its name
    let failure = *ctx.failure.get_or_insert(failure);
    if failure == Failure::UpstreamTls {
        // the operator's problem (certificate, CA, server name), not the client's
        log::warn!(
            "upstream {} backend {}: {e}",
            ctx.group().map_or("-", |g| &*g.name),
            ctx.attempt.backend().map_or("-", |b| &*b.label),
        );
    }
    // Pingora does not reuse the client connection after a proxy error (its reuse hint only
    // covers errors before a backend is chosen): say so instead of closing under the
    // client's next request
    s.set_keepalive(None);
    if code > 0 && s.response_written().is_none() {
        if let Err(we) = pipeline::write_reply(s, Reply::error(code, failure.as_str()), ctx).await {
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
