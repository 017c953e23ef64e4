//! What a request hook returns: go on, or answer the client now.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

/// The outcome of a plugin's `request_filter`.
pub enum Flow {
    /// Pass the request to the next plugin (and finally to the upstream).
    Continue,
    /// Answer the client with this reply; nothing goes upstream.
    Respond(Reply),
}

/// The body of a [`Reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    /// No body (`Content-Length: 0`), e.g. a 204 preflight answer.
    Empty,
    /// The gateway's JSON error shape, `{"error": <message>, "request_id": <id>}`; the
    /// request id is filled in by the gateway.
    Error(String),
    /// Raw bytes with their content type (`HeaderValue::from_static` for a fixed one).
    Raw {
        content_type: HeaderValue,
        bytes: Bytes,
    },
}

/// A response produced at the gateway instead of by the upstream.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Extra response headers, written in order (a name may repeat).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: ReplyBody,
}

impl Reply {
    /// A reply with the gateway's JSON error body, e.g. `Reply::error(401, "invalid token")`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: ReplyBody::Error(message.into()),
        }
    }

    /// A reply with no body.
    pub fn empty(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: ReplyBody::Empty,
        }
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}
