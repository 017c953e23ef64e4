//! Request limits checked before routing and before the body is read: the request head's size
//! and header count (431), and a declared `Content-Length` over the route's `max_body_size`
//! (413). A chunked body over the limit is stopped in `request_body_filter` as it arrives.

use bytes::Bytes;
use gatehouse_plugins::Reply;
use pingora_error::Result;
use pingora_http::RequestHeader;

use super::ctx::Ctx;
use super::error_page::Failure;
use crate::state::ServerSettings;

/// 431 when the head has more header lines or more bytes than allowed.
pub(super) fn check_head(req: &RequestHeader, limits: &ServerSettings) -> Option<Reply> {
    if req.headers.len() > limits.max_headers {
        return Some(Reply::error(431, "too many request headers"));
    }
    let uri = &req.uri;
    let uri_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let mut size = req.method.as_str().len() + uri_len + 12;
    for (name, value) in req.headers.iter() {
        size += name.as_str().len() + value.len() + 4;
    }
    (size > limits.max_header_size).then(|| Reply::error(431, "request header fields too large"))
}

/// 413 when `Content-Length` says the body is larger than `max`.
pub(super) fn check_content_length(req: &RequestHeader, max: u64) -> Option<Reply> {
    let len = req.headers.get(http::header::CONTENT_LENGTH)?;
    let len: u64 = std::str::from_utf8(len.as_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (len > max).then(|| Reply::error(413, "request body too large"))
}

/// Counts a request body chunk (`request_body_filter`). Past the route's `max_body_size` the
/// chunk is dropped before it is forwarded, so the upstream never sees the excess, and the
/// request fails with 413.
pub(super) fn count_body(body: &mut Option<Bytes>, ctx: &mut Ctx) -> Result<()> {
    let (Some(b), Some(route)) = (body.as_ref(), &ctx.route) else {
        return Ok(());
    };
    ctx.body_bytes += b.len() as u64;
    if ctx.body_bytes > route.max_body_size {
        *body = None;
        ctx.failure = Some(Failure::BodyTooLarge);
        return Err(Failure::BodyTooLarge.error(413));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_limits() {
        let limits = ServerSettings {
            max_header_size: 200,
            max_headers: 3,
            ..ServerSettings::default()
        };
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("a", "1").unwrap();
        assert!(check_head(&req, &limits).is_none());
        let long =
            RequestHeader::build("GET", format!("/{}", "p".repeat(200)).as_bytes(), None).unwrap();
        assert_eq!(
            check_head(&long, &limits).unwrap().status,
            431,
            "the URI counts"
        );
        req.insert_header("b", "x".repeat(300)).unwrap();
        assert_eq!(check_head(&req, &limits).unwrap().status, 431);
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for h in ["a", "b", "c", "d"] {
            req.insert_header(h, "1").unwrap();
        }
        assert_eq!(check_head(&req, &limits).unwrap().status, 431);
    }

    #[test]
    fn content_length() {
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        assert!(check_content_length(&req, 10).is_none());
        req.insert_header("content-length", "10").unwrap();
        assert!(check_content_length(&req, 10).is_none());
        req.insert_header("content-length", "11").unwrap();
        assert_eq!(check_content_length(&req, 10).unwrap().status, 413);
    }
}
