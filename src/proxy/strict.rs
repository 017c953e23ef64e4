//! Strict HTTP/1 request checks, before routing: what RFC 9110/9112 say must be rejected and
//! what nginx rejects, so that gatehouse never forwards (or routes on) a request a backend or
//! another proxy could read differently. Each failure is a 400 (501 for an unknown transfer
//! coding) with the gateway's JSON error, and the connection is closed.
//!
//! - the request line: one space on each side of a target made of visible ASCII only (checked
//!   on the raw bytes by the connection guard, `conn::HeadDeadline`, before Pingora would
//!   percent-encode a bad target into a different one);
//! - the target's form: origin-form (`/...`), absolute-form (`http://...`) or `*` for OPTIONS;
//! - `Host`: exactly one on HTTP/1.1 (at most one on 1.0), a valid `host[:port]`;
//! - `Transfer-Encoding`: one field, exactly `chunked`, on HTTP/1.1, without `Content-Length`;
//! - `Content-Length`: one field, one value;
//! - no `Host`, `Content-Length` or `Transfer-Encoding` spelled with underscores (CGI-style
//!   backends read `_` as `-`).

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use std::fmt;

use pingora_http::RequestHeader;

/// Why a request is refused: status and message.
pub type Refusal = (u16, &'static str);

/// Checks an HTTP/1 request head (`raw_line_ok`: the connection guard's verdict on the raw
/// request line; `raw_length`: the raw head had a `Content-Length` field).
pub fn check_h1(req: &RequestHeader, raw_line_ok: bool, raw_length: bool) -> Option<Refusal> {
    if !raw_line_ok {
        return Some((400, "invalid request line"));
    }
    if let Some(r) = check_target(req) {
        return Some(r);
    }
    let h = &req.headers;
    let mut hosts = h.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Some((400, "more than one Host header")),
        (None, None) if req.version == http::Version::HTTP_11 => {
            return Some((400, "missing Host header"))
        }
        (Some(v), None) if !valid_host(v.as_bytes()) => return Some((400, "invalid Host header")),
        (Some(v), None) => {
            // an absolute-form target names the host itself: the two must agree
            if let Some(a) = absolute_authority(req.raw_path()) {
                if !a.eq_ignore_ascii_case(v.as_bytes()) {
                    return Some((400, "Host does not match the request target"));
                }
            }
        }
        _ => {}
    }
    let mut lengths = h.get_all(CONTENT_LENGTH).iter();
    match (lengths.next(), lengths.next()) {
        (_, Some(_)) => return Some((400, "more than one Content-Length")),
        (Some(v), None) if v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit) => {
            return Some((400, "invalid Content-Length"))
        }
        _ => {}
    }
    let mut codings = h.get_all(TRANSFER_ENCODING).iter();
    if let Some(te) = codings.next() {
        if codings.next().is_some() {
            return Some((400, "more than one Transfer-Encoding"));
        }
        if req.version != http::Version::HTTP_11 {
            return Some((400, "Transfer-Encoding before HTTP/1.1"));
        }
        if raw_length || h.contains_key(CONTENT_LENGTH) {
            return Some((400, "both Transfer-Encoding and Content-Length"));
        }
        if !te.as_bytes().eq_ignore_ascii_case(b"chunked") {
            let known = te.as_bytes().split(|b| *b == b',').all(|c| {
                let c = c.trim_ascii();
                c.is_empty()
                    || [
                        "chunked", "gzip", "x-gzip", "deflate", "compress", "identity",
                    ]
                    .iter()
                    .any(|k| c.eq_ignore_ascii_case(k.as_bytes()))
            });
            return Some(if known {
                (400, "invalid Transfer-Encoding")
            } else {
                (501, "unsupported transfer coding")
            });
        }
    }
    if h.keys().any(|n| {
        let n = n.as_str().as_bytes();
        n.contains(&b'_')
            && ["host", "content-length", "transfer-encoding"]
                .iter()
                .any(|k| {
                    k.len() == n.len()
                        && k.bytes()
                            .zip(n)
                            .all(|(a, b)| a == *b || (a == b'-' && *b == b'_'))
                })
    }) {
        return Some((400, "framing header spelled with underscores"));
    }
    None
}

/// The target's form (HTTP/1 and HTTP/2): origin-form, absolute-form, or `*` for OPTIONS.
pub fn check_target(req: &RequestHeader) -> Option<Refusal> {
    let t = req.raw_path();
    let ok = match t.first() {
        Some(b'/') => true,
        Some(b'*') => t.len() == 1 && req.method == http::Method::OPTIONS,
        _ => absolute_authority(t).is_some_and(|a| !a.is_empty()),
    };
    (!ok).then_some((400, "invalid request target"))
}

/// The authority of an absolute-form target (`http://authority/path`).
fn absolute_authority(t: &[u8]) -> Option<&[u8]> {
    let rest = [&b"http://"[..], b"https://"].iter().find_map(|p| {
        (t.len() >= p.len() && t[..p.len()].eq_ignore_ascii_case(p)).then(|| &t[p.len()..])
    })?;
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// `host [":" port]`: a reg-name of letters, digits, `-`, `.`, `_`, `~` (or `%XX`), an IPv4
/// address, or an IPv6 literal in brackets; the port 0-65535.
pub fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|b| *b == b']') else {
            return false;
        };
        let inner = &rest[..end];
        let ok = !inner.is_empty()
            && std::str::from_utf8(inner).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
        if !ok {
            return false;
        }
        match &rest[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (&b""[..], Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().position(|b| *b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        }
    };
    if let Some(p) = port {
        let digits = !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit);
        if !digits || std::str::from_utf8(p).map_or(true, |s| s.parse::<u16>().is_err()) {
            return false;
        }
    }
    // the bracketed form was checked above (host is empty there)
    host.iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%'))
        && (!host.is_empty() || v.starts_with(b"["))
}

/// Incremental check of a raw HTTP/1 request line, fed the bytes of a head as they arrive:
/// `METHOD SP target SP version`, with a target of visible ASCII (0x21-0x7E) and no `#`.
/// Leading empty lines are allowed (RFC 9112 §2.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LineCheck {
    #[default]
    Start,
    Method,
    TargetStart,
    Target,
    Version,
    Ok,
    Bad,
}

impl LineCheck {
    /// Advances over `data`; stops looking once the line is decided.
    pub fn feed(&mut self, data: &[u8]) {
        for &b in data {
            *self = match (*self, b) {
                (LineCheck::Ok | LineCheck::Bad, _) => return,
                (LineCheck::Start, b'\r' | b'\n') => LineCheck::Start,
                (LineCheck::Start | LineCheck::Method, b) if is_tchar(b) => LineCheck::Method,
                (LineCheck::Method, b' ') => LineCheck::TargetStart,
                (LineCheck::Target, b' ') => LineCheck::Version,
                (LineCheck::TargetStart | LineCheck::Target, 0x21..=0x7e) if b != b'#' => {
                    LineCheck::Target
                }
                (LineCheck::Version, b'\r' | b'\n') => LineCheck::Ok,
                (LineCheck::Version, 0x21..=0x7e) => LineCheck::Version,
                _ => LineCheck::Bad,
            };
        }
    }

    /// Whether the line seen so far is acceptable (an unfinished line is judged by Pingora).
    pub fn ok(self) -> bool {
        self != LineCheck::Bad
    }
}

/// Whether a raw head has a field of one name. `Content-Length`: Pingora drops it when
/// `Transfer-Encoding` is present too (as RFC 9112 §6.3 allows), and gatehouse refuses such
/// requests (as nginx does), so the raw bytes are looked at. `Transfer-Encoding`: the
/// connection guard then checks the chunked body's framing ([`ChunkCheck`]). Fed the head's
/// bytes only (never its body), it jumps from line start to line start.
#[derive(Debug, Clone, Copy)]
pub struct FieldSeen {
    /// the lowercase name with its colon
    name: &'static [u8],
    /// How many bytes of the name the current line started with (`None`: this line does
    /// not, or the request line is still going).
    at: Option<u8>,
    pub seen: bool,
}

impl FieldSeen {
    pub const fn content_length() -> Self {
        FieldSeen {
            name: b"content-length:",
            at: None,
            seen: false,
        }
    }

    pub const fn transfer_encoding() -> Self {
        FieldSeen {
            name: b"transfer-encoding:",
            at: None,
            seen: false,
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        loop {
            if let Some(pos) = self.at {
                let pos = usize::from(pos);
                let n = (self.name.len() - pos).min(data.len());
                if data[..n].eq_ignore_ascii_case(&self.name[pos..pos + n]) {
                    if pos + n == self.name.len() {
                        self.seen = true;
                        self.at = None;
                    } else {
                        self.at = Some((pos + n) as u8);
                        return;
                    }
                } else {
                    self.at = None;
                }
            }
            match memchr::memchr(b'\n', data) {
                Some(i) => {
                    data = &data[i + 1..];
                    self.at = Some(0);
                }
                None => return,
            }
        }
    }
}

/// Why the connection guard stops reading a chunked request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadBody {
    /// Not chunked framing as RFC 9112 §7.1 writes it (400).
    Framing,
    /// A chunk-size line takes the body past the route's `max_body_size` (413).
    TooLarge,
}

impl fmt::Display for BadBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadBody::Framing => "invalid chunked body",
            BadBody::TooLarge => "request body too large",
        })
    }
}

impl std::error::Error for BadBody {}

/// What [`ChunkCheck::feed`] found in the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStep {
    /// All of them belong to the body; it goes on.
    More,
    /// The body ended after this many of them (the rest is a pipelined next request).
    End(usize),
    /// The byte at this offset breaks the framing (or its chunk-size line the size limit).
    Bad(usize, BadBody),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Chunk {
    /// chunk-size digits
    #[default]
    Size,
    /// after the size: BWS, `;` and extensions up to the CR
    Ext,
    /// the LF of a chunk-size line
    SizeLf,
    /// chunk data (`left` bytes to go)
    Data,
    DataCr,
    DataLf,
    /// at the start of a trailer line, or of the final empty line
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Strict incremental check of a chunked request body (RFC 9112 §7.1), fed its raw bytes as
/// they arrive, in any split: every line ends with CRLF (a bare LF is refused, where Pingora's
/// chunk parser would read on to the next CRLF), a chunk-size line has at least one hex digit
/// (an empty one is not the last chunk), chunk data is followed by CRLF, no control bytes in
/// extensions or trailers, and lines are bounded. It also adds up the declared chunk sizes, so
/// a body announced larger than the limit is refused at its chunk-size line.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkCheck {
    state: Chunk,
    /// the chunk's size while reading its size line, then the data bytes left
    left: u64,
    digits: u8,
    /// bytes of the current chunk-size or trailer line, or of the whole trailer section
    line: u32,
    /// the sum of the chunk sizes so far
    pub declared: u64,
}

impl ChunkCheck {
    /// The longest chunk-size line (with its extensions).
    pub const MAX_LINE: u32 = 4096;
    /// The largest trailer section.
    pub const MAX_TRAILERS: u32 = 16 * 1024;

    /// Whether the body's last chunk and trailer section have been seen.
    pub fn done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Advances over `data` (the bytes after the previous call's); `limit` bounds the sum of
    /// the chunk sizes.
    pub fn feed(&mut self, data: &[u8], limit: u64) -> ChunkStep {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            let bad = ChunkStep::Bad(i, BadBody::Framing);
            self.state = match self.state {
                Chunk::Done => return ChunkStep::End(i),
                Chunk::Data => {
                    let n = usize::try_from(self.left)
                        .unwrap_or(usize::MAX)
                        .min(data.len() - i);
                    self.left -= n as u64;
                    i += n;
                    if self.left == 0 {
                        self.state = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.left > u64::MAX >> 4 {
                            return bad;
                        }
                        self.left = self.left << 4 | u64::from(hex(b));
                        self.digits = self.digits.saturating_add(1);
                        Chunk::Size
                    }
                    _ if self.digits == 0 => return bad,
                    b';' | b' ' | b'\t' => Chunk::Ext,
                    b'\r' => Chunk::SizeLf,
                    _ => return bad,
                },
                Chunk::Ext => match b {
                    b'\r' => Chunk::SizeLf,
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => Chunk::Ext,
                    _ => return bad,
                },
                Chunk::SizeLf if b == b'\n' => {
                    let size = std::mem::take(&mut self.left);
                    self.digits = 0;
                    self.line = 0;
                    if size == 0 {
                        Chunk::TrailerStart
                    } else {
                        self.declared = self.declared.saturating_add(size);
                        if self.declared > limit {
                            return ChunkStep::Bad(i, BadBody::TooLarge);
                        }
                        self.left = size;
                        Chunk::Data
                    }
                }
                Chunk::DataCr if b == b'\r' => Chunk::DataLf,
                Chunk::DataLf if b == b'\n' => Chunk::Size,
                Chunk::TrailerStart => match b {
                    b'\r' => Chunk::EndLf,
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => Chunk::Trailer,
                    _ => return bad,
                },
                Chunk::Trailer => match b {
                    b'\r' => Chunk::TrailerLf,
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => Chunk::Trailer,
                    _ => return bad,
                },
                Chunk::TrailerLf if b == b'\n' => Chunk::TrailerStart,
                Chunk::EndLf if b == b'\n' => {
                    self.state = Chunk::Done;
                    return ChunkStep::End(i + 1);
                }
                Chunk::SizeLf | Chunk::DataCr | Chunk::DataLf | Chunk::TrailerLf | Chunk::EndLf => {
                    return bad
                }
            };
            // chunk-size lines and the trailer section are bounded (the trailer count goes on
            // across its lines)
            let max = match self.state {
                Chunk::Size | Chunk::Ext | Chunk::SizeLf => Self::MAX_LINE,
                Chunk::TrailerStart | Chunk::Trailer | Chunk::TrailerLf | Chunk::EndLf => {
                    Self::MAX_TRAILERS
                }
                _ => u32::MAX,
            };
            self.line = self.line.saturating_add(1);
            if self.line > max {
                return bad;
            }
            if self.state == Chunk::Size && b == b'\n' {
                // the LF ending a chunk's data: the next size line starts
                self.line = 0;
            }
            i += 1;
        }
        if self.state == Chunk::Done {
            ChunkStep::End(data.len())
        } else {
            ChunkStep::More
        }
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &[u8]) -> bool {
        let mut c = LineCheck::default();
        // fed in every split, the verdict is the same
        for i in 0..=s.len() {
            let mut d = LineCheck::default();
            d.feed(&s[..i]);
            d.feed(&s[i..]);
            c = d;
        }
        c.ok()
    }

    #[test]
    fn request_lines() {
        assert!(line(b"GET /a?b=c HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(line(b"\r\nGET / HTTP/1.1\r\n"));
        assert!(line(b"OPTIONS * HTTP/1.1\r\n"));
        assert!(line(b"GET http://a.test/x HTTP/1.1\r\n"));
        for bad in [
            &b"GET /a b HTTP/1.1\r\n"[..],
            b"GET  / HTTP/1.1\r\n",
            b"GET /a\rb HTTP/1.1\r\n",
            b"GET /a\0 HTTP/1.1\r\n",
            b"GET /a\x01 HTTP/1.1\r\n",
            b"GET /a\x7f HTTP/1.1\r\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\n",
            b"GET /a#frag HTTP/1.1\r\n",
            b" GET / HTTP/1.1\r\n",
            b"GET / HTTP/1.1 x\r\n",
        ] {
            assert!(!line(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn raw_content_length() {
        let seen = |head: &[u8]| {
            let mut r = None;
            for i in 0..=head.len() {
                let mut f = FieldSeen::content_length();
                f.feed(&head[..i]);
                f.feed(&head[i..]);
                assert!(r.is_none_or(|r| r == f.seen), "split at {i}");
                r = Some(f.seen);
            }
            r.unwrap_or(false)
        };
        assert!(seen(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n"
        ));
        assert!(seen(b"POST / HTTP/1.1\r\ncOnTeNt-LeNgTh:3\r\n\r\n"));
        assert!(!seen(b"POST / HTTP/1.1\r\nX-Content-Length: 3\r\n\r\n"));
        assert!(!seen(b"POST / HTTP/1.1\r\nHost: content-length:\r\n\r\n"));
        assert!(!seen(b"content-length: / HTTP/1.1\r\n\r\n"));
        assert!(check_h1(
            &req(
                &[("host", "a"), ("transfer-encoding", "chunked")],
                http::Version::HTTP_11
            ),
            true,
            true
        )
        .is_some());
    }

    #[test]
    fn hosts() {
        for ok in [
            &b"a.test"[..],
            b"a.test:8080",
            b"127.0.0.1",
            b"127.0.0.1:80",
            b"[::1]",
            b"[::1]:443",
            b"xn--bcher-kva.test",
        ] {
            assert!(valid_host(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"a.test:abc"[..],
            b"a.test:99999999",
            b"a.test:65536",
            b"a.test:80:80",
            b"a test",
            b"a.test, evil.test",
            b"a.test/x",
            b"",
            b":80",
            b"[::1",
            b"[nothost]:80",
            b"[::1]x",
            b"a.test:",
        ] {
            assert!(!valid_host(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn req(head: &[(&str, &str)], version: http::Version) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/x", None).unwrap();
        r.set_version(version);
        for (k, v) in head {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn framing_headers() {
        use http::Version as V;
        let ok = |h: &[(&str, &str)]| check_h1(&req(h, V::HTTP_11), true, false);
        assert_eq!(ok(&[("host", "a")]), None);
        assert_eq!(ok(&[("host", "a"), ("transfer-encoding", "Chunked")]), None);
        assert_eq!(ok(&[("host", "a"), ("content-length", "5")]), None);
        assert_eq!(ok(&[]).unwrap().1, "missing Host header");
        assert_eq!(check_h1(&req(&[], V::HTTP_10), true, false), None);
        assert_eq!(ok(&[("host", "a"), ("host", "a")]).unwrap().0, 400);
        assert_eq!(ok(&[("host", "a test")]).unwrap().1, "invalid Host header");
        for te in [
            "identity, chunked",
            "gzip, chunked",
            "chunked, chunked",
            "chunked,",
        ] {
            assert_eq!(
                ok(&[("host", "a"), ("transfer-encoding", te)]),
                Some((400, "invalid Transfer-Encoding")),
                "{te}"
            );
        }
        assert_eq!(
            ok(&[("host", "a"), ("transfer-encoding", "br, chunked")])
                .unwrap()
                .0,
            501
        );
        assert_eq!(
            ok(&[
                ("host", "a"),
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ])
            .unwrap()
            .0,
            400
        );
        assert_eq!(
            ok(&[
                ("host", "a"),
                ("transfer-encoding", "chunked"),
                ("content-length", "3")
            ])
            .unwrap()
            .1,
            "both Transfer-Encoding and Content-Length"
        );
        assert_eq!(
            check_h1(
                &req(&[("transfer-encoding", "chunked")], V::HTTP_10),
                true,
                false
            )
            .unwrap()
            .1,
            "Transfer-Encoding before HTTP/1.1"
        );
        assert_eq!(
            ok(&[
                ("host", "a"),
                ("content-length", "5"),
                ("content-length", "5")
            ])
            .unwrap()
            .1,
            "more than one Content-Length"
        );
        assert_eq!(
            ok(&[("host", "a"), ("content-length", "5, 5")]).unwrap().0,
            400
        );
        for n in ["transfer_encoding", "content_length", "Host_"] {
            let r = ok(&[("host", "a"), (n, "x")]);
            if n == "Host_" {
                assert_eq!(r, None);
            } else {
                assert_eq!(
                    r.unwrap().1,
                    "framing header spelled with underscores",
                    "{n}"
                );
            }
        }
        assert_eq!(ok(&[("host", "a"), ("x_api_key", "k")]), None);
    }

    /// The verdict on a chunked body, the same whatever the split: `Ok(n)` the body ended
    /// after n bytes, `Err(None)` it goes on, `Err(Some((at, why)))` refused at byte `at`.
    fn chunks(body: &[u8], limit: u64) -> Result<usize, Option<(usize, BadBody)>> {
        let whole = {
            let mut c = ChunkCheck::default();
            c.feed(body, limit)
        };
        for i in 0..=body.len() {
            for j in i..=body.len().min(i + 3) {
                let mut c = ChunkCheck::default();
                let mut step = ChunkStep::More;
                for (off, part) in [(0, &body[..i]), (i, &body[i..j]), (j, &body[j..])] {
                    step = match c.feed(part, limit) {
                        ChunkStep::More => ChunkStep::More,
                        ChunkStep::End(n) => ChunkStep::End(off + n),
                        ChunkStep::Bad(at, why) => ChunkStep::Bad(off + at, why),
                    };
                    if step != ChunkStep::More {
                        break;
                    }
                }
                assert_eq!(step, whole, "split at {i}, {j}");
            }
        }
        match whole {
            ChunkStep::End(n) => Ok(n),
            ChunkStep::More => Err(None),
            ChunkStep::Bad(at, why) => Err(Some((at, why))),
        }
    }

    #[test]
    fn chunked_bodies() {
        let framing = |at| Err(Some((at, BadBody::Framing)));
        assert_eq!(chunks(b"5\r\nhello\r\n0\r\n\r\n", 100), Ok(15));
        assert_eq!(chunks(b"5\r\nhello\r\n0\r\n\r\nGET /", 100), Ok(15));
        assert_eq!(
            chunks(b"0005;a=b;c=\"d e\"\r\nhello\r\n00\r\n\r\n", 100),
            Ok(31)
        );
        assert_eq!(
            chunks(b"A\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n", 100),
            Ok(28)
        );
        assert_eq!(chunks(b"5 ;x\r\nhello\r\n", 100), Err(None));
        // a bare LF ends no line
        assert_eq!(chunks(b"5;a=b\nhello\r\n0\r\n\r\n", 100), framing(5));
        assert_eq!(chunks(b"5\nhello\r\n0\r\n\r\n", 100), framing(1));
        assert_eq!(chunks(b"5\r\nhello\n0\r\n\r\n", 100), framing(8));
        assert_eq!(chunks(b"5\r\nhello\r\n0\r\n\n", 100), framing(13));
        assert_eq!(chunks(b"5\r\nhello\r\n0\r\nX: 1\n\r\n", 100), framing(17));
        // an empty chunk-size line is not the last chunk
        assert_eq!(chunks(b"\r\nhello\r\n0\r\n\r\n", 100), framing(0));
        // data not followed by CRLF, sizes that are not hex, overflow, control bytes
        assert_eq!(chunks(b"5\r\nhelloX\r\n", 100), framing(8));
        for bad in [&b" 5\r\n"[..], b"0x5\r\n", b"-5\r\n", b"+5\r\n", b"5g\r\n"] {
            assert!(
                matches!(chunks(bad, 100), Err(Some((_, BadBody::Framing)))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(chunks(b"10000000000000000\r\n", u64::MAX), framing(16));
        assert_eq!(chunks(b"5;a\x00\r\n", 100), framing(3));
        // long lines
        let mut long = b"5;".to_vec();
        long.resize(ChunkCheck::MAX_LINE as usize + 10, b'a');
        assert_eq!(chunks(&long, 100), framing(ChunkCheck::MAX_LINE as usize));
        // the declared sizes against the limit, at the size line
        assert_eq!(
            chunks(b"5\r\nhello\r\n6\r\n", 10),
            Err(Some((12, BadBody::TooLarge)))
        );
        assert_eq!(
            chunks(b"FFFFFFFF\r\n", 10),
            Err(Some((9, BadBody::TooLarge)))
        );
        assert_eq!(chunks(b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", 10), Ok(25));
    }

    #[test]
    fn transfer_encoding_field() {
        let mut f = FieldSeen::transfer_encoding();
        f.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-");
        f.feed(b"Encoding: chunked\r\n\r\n");
        assert!(f.seen);
        let mut f = FieldSeen::transfer_encoding();
        f.feed(b"POST / HTTP/1.1\r\nX-Transfer-Encoding: chunked\r\n\r\n");
        assert!(!f.seen);
    }
}
