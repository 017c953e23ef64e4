//! Header edits for the gateway and its plugins, without Pingora's cost per insert where
//! the header keeps no case map.
//!
//! Pingora's `insert_header`/`append_header` turn every name into a case-keeping copy (a new
//! allocation with the name title-cased) and parse it back into a `HeaderName` (another
//! allocation for a name outside the standard set), whether or not the header keeps the
//! client's spelling: ~600 instructions an edit. Unless `server.preserve_header_case` is set,
//! the gateway drops the case map of the request it sends upstream and of the response it
//! sends back before the plugins' hooks run, so their edits can go to the plain `http` map:
//! [`edit_request`] and [`edit_response`] move the `http` parts out of Pingora's header and
//! back (a few hundred bytes moved, no allocation) and hand the edits to them, or to Pingora's
//! own methods when a case map is kept.

use http::header::MaxSizeReached;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};

/// One request's or response's headers while they are edited: Pingora's case-keeping header,
/// or the plain `http` parts moved out of it.
pub trait HeaderEdit {
    /// The headers as they are now.
    fn headers(&self) -> &HeaderMap;
    /// `name: value`, replacing every value the name had.
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
    /// `name: value` after the values the name has.
    fn add(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
    /// Every value of `name` removed.
    fn remove(&mut self, name: &HeaderName);
}

fn too_many(e: MaxSizeReached) -> Box<Error> {
    Error::because(ErrorType::InternalError, "too many headers", e)
}

macro_rules! pingora_edit {
    ($t:ty) => {
        impl HeaderEdit for $t {
            fn headers(&self) -> &HeaderMap {
                &self.headers
            }
            fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
                self.insert_header(name, value)
            }
            fn add(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
                self.append_header(name, value).map(drop)
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
        }
    };
}
pingora_edit!(RequestHeader);
pingora_edit!(ResponseHeader);

macro_rules! plain_edit {
    ($t:ty) => {
        impl HeaderEdit for $t {
            fn headers(&self) -> &HeaderMap {
                &self.headers
            }
            fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
                self.headers
                    .try_insert(name, value)
                    .map(drop)
                    .map_err(too_many)
            }
            fn add(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
                self.headers
                    .try_append(name, value)
                    .map(drop)
                    .map_err(too_many)
            }
            fn remove(&mut self, name: &HeaderName) {
                self.headers.remove(name);
            }
        }
    };
}
plain_edit!(http::request::Parts);
plain_edit!(http::response::Parts);

/// Runs `edit` on `req`'s headers: Pingora's own methods when `req` keeps the client's
/// spelling of names, otherwise the plain `http` parts (room made for `room` more headers
/// first).
pub fn edit_request(
    req: &mut RequestHeader,
    room: usize,
    edit: impl FnOnce(&mut dyn HeaderEdit) -> Result<()>,
) -> Result<()> {
    if req.has_case() {
        return edit(req);
    }
    with_request_parts(req, |p| {
        p.headers.try_reserve(room).map_err(too_many)?;
        edit(p)
    })
}

/// [`edit_request`] for a response.
pub fn edit_response(
    resp: &mut ResponseHeader,
    room: usize,
    edit: impl FnOnce(&mut dyn HeaderEdit) -> Result<()>,
) -> Result<()> {
    if resp.has_case() {
        return edit(resp);
    }
    with_response_parts(resp, |p| {
        p.headers.try_reserve(room).map_err(too_many)?;
        edit(p)
    })
}

/// Runs `edit` on `req`'s plain `http` parts, moved out and back. What the parts do not
/// carry is kept: a target the URI does not reproduce (absolute-form, or not UTF-8) and the
/// h2 END_STREAM choice. The case map, if any, is dropped.
pub fn with_request_parts(
    req: &mut RequestHeader,
    edit: impl FnOnce(&mut http::request::Parts) -> Result<()>,
) -> Result<()> {
    let (raw, uri) = (req.raw_path(), req.uri.path_and_query());
    let keep_target = (!raw.is_empty()
        && (!req.raw_path_is_utf8() || uri.map(|p| p.as_str().as_bytes()) != Some(raw)))
    .then(|| raw.to_vec());
    let send_end_stream = req.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(req, placeholder));
    let done = edit(&mut parts);
    *req = RequestHeader::from(parts);
    if let Some(t) = keep_target {
        req.set_raw_path(&t)?;
    }
    if let Some(e) = send_end_stream {
        req.set_send_end_stream(e);
    }
    done
}

/// Runs `edit` on `resp`'s plain `http` parts, moved out and back. What the parts do not
/// carry is kept: a reason phrase other than the status's own. The case map, if any, is
/// dropped.
pub fn with_response_parts(
    resp: &mut ResponseHeader,
    edit: impl FnOnce(&mut http::response::Parts) -> Result<()>,
) -> Result<()> {
    let reason = (resp.get_reason_phrase())
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(resp, placeholder));
    let done = edit(&mut parts);
    *resp = ResponseHeader::from(parts);
    if reason.is_some() {
        resp.set_reason_phrase(reason.as_deref())?;
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case_kept_response() -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.append_header("X-Upstream-Case", "a").unwrap();
        r
    }

    fn wire(r: &ResponseHeader) -> String {
        let mut b = bytes::BytesMut::new();
        r.header_to_h1_wire(&mut b);
        String::from_utf8(b.to_vec()).unwrap()
    }

    fn edits(h: &mut dyn HeaderEdit) -> Result<()> {
        h.set(
            HeaderName::from_static("x-one"),
            HeaderValue::from_static("1"),
        )?;
        h.add(
            HeaderName::from_static("x-one"),
            HeaderValue::from_static("2"),
        )?;
        h.add(http::header::VARY, HeaderValue::from_static("Origin"))?;
        h.set(
            HeaderName::from_static("x-gone"),
            HeaderValue::from_static("x"),
        )?;
        h.remove(&HeaderName::from_static("x-gone"));
        assert_eq!(h.headers().get_all("x-one").iter().count(), 2);
        Ok(())
    }

    #[test]
    fn both_ways_make_the_same_headers() {
        // a case map kept: Pingora's methods, the upstream's spelling stays
        let mut kept = case_kept_response();
        assert!(kept.has_case());
        edit_response(&mut kept, 4, edits).unwrap();
        assert!(kept.has_case());
        assert!(
            wire(&kept).contains("X-Upstream-Case: a"),
            "{}",
            wire(&kept)
        );
        // none: the plain parts, the same fields in the same order
        let mut plain = ResponseHeader::build_no_case(200, None).unwrap();
        plain.append_header("x-upstream-case", "a").unwrap();
        edit_response(&mut plain, 4, edits).unwrap();
        assert!(!plain.has_case());
        let fields = |r: &ResponseHeader| {
            (r.headers.iter())
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(fields(&kept), fields(&plain));
        assert_eq!(
            fields(&plain),
            ["x-upstream-case: a", "x-one: 1", "x-one: 2", "vary: Origin"]
        );
    }

    #[test]
    fn a_reason_phrase_and_a_raw_target_survive_the_move() {
        let mut r = ResponseHeader::build_no_case(299, None).unwrap();
        r.set_status(299).unwrap();
        r.set_reason_phrase(Some("Fine Indeed")).unwrap();
        edit_response(&mut r, 1, edits).unwrap();
        assert_eq!(r.get_reason_phrase(), Some("Fine Indeed"));
        assert_eq!(r.status.as_u16(), 299);

        let mut q = RequestHeader::build_no_case("GET", b"/a?x=\xff", None).unwrap();
        q.set_version(http::Version::HTTP_2);
        q.set_send_end_stream(false);
        assert!(!q.has_case());
        edit_request(&mut q, 2, |h| {
            h.set(http::header::HOST, HeaderValue::from_static("b"))
        })
        .unwrap();
        assert_eq!(q.raw_path(), b"/a?x=\xff");
        assert_eq!(q.send_end_stream(), Some(false));
        assert_eq!(q.headers["host"], "b");
    }

    #[test]
    fn a_full_map_is_an_error_not_a_panic() {
        let mut r = ResponseHeader::build_no_case(200, None).unwrap();
        let err = edit_response(&mut r, usize::MAX, |_| Ok(())).unwrap_err();
        assert_eq!(err.etype(), &ErrorType::InternalError);
    }
}
