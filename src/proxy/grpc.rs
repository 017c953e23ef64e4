//! Gateway replies to gRPC calls. A gRPC client reads the call's outcome from `grpc-status`
//! and `grpc-message`, not from the HTTP status or a JSON body, so a reply gatehouse makes
//! itself (no route, 401, 403, 429, 502, 503, 504, ...) to a request with a gRPC content type
//! is sent as a "Trailers-Only" response: HTTP 200, `content-type: application/grpc`, the
//! status and message as headers, and no body (on HTTP/2 one HEADERS frame that ends the
//! stream). gRPC-Web (`application/grpc-web*`) carries its status in the body and is left as
//! it is.

use pingora_http::RequestHeader;

/// Whether `req` is a gRPC call (`application/grpc`, `application/grpc+proto`, ...).
pub(super) fn is_grpc(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .is_some_and(|ct| {
            ct.starts_with(b"application/grpc") && matches!(ct.get(16), None | Some(b'+' | b';'))
        })
}

/// The gRPC status code for a gateway reply's HTTP status.
pub(super) fn status_code(http: u16) -> u8 {
    match http {
        400 => 3,              // INVALID_ARGUMENT
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED: no route for this method
        408 | 504 => 4,        // DEADLINE_EXCEEDED
        413 | 429 | 431 => 8,  // RESOURCE_EXHAUSTED
        421 | 502 | 503 => 14, // UNAVAILABLE: the client may try again
        500 => 13,             // INTERNAL
        _ => 2,                // UNKNOWN
    }
}

/// `grpc-message`: bytes outside printable ASCII and `%` percent-encoded (gRPC over HTTP/2).
pub(super) fn encode_message(msg: &str) -> http::HeaderValue {
    let mut out = Vec::with_capacity(msg.len());
    for &b in msg.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    http::HeaderValue::from_bytes(&out).unwrap_or(http::HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ct: &str) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/pkg.Svc/Call", None).unwrap();
        r.insert_header("content-type", ct).unwrap();
        r
    }

    #[test]
    fn recognizes_grpc() {
        assert!(is_grpc(&req("application/grpc")));
        assert!(is_grpc(&req("application/grpc+proto")));
        assert!(!is_grpc(&req("application/grpc-web")));
        assert!(!is_grpc(&req("application/grpc-web+proto")));
        assert!(!is_grpc(&req("application/json")));
        assert!(!is_grpc(&RequestHeader::build("GET", b"/", None).unwrap()));
    }

    #[test]
    fn maps_and_encodes() {
        assert_eq!(status_code(429), 8);
        assert_eq!(status_code(503), 14);
        assert_eq!(status_code(504), 4);
        assert_eq!(status_code(404), 12);
        assert_eq!(status_code(418), 2);
        assert_eq!(encode_message("no route"), "no route");
        assert_eq!(encode_message("50% über"), "50%25 %C3%BCber");
    }
}
