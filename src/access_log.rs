//! The JSON access log: one line per request, written by a dedicated thread so a slow disk or
//! a blocked stdout never stalls request handling. The request path only formats the line and
//! appends it to a bounded buffer; when the writer falls behind, lines are dropped and counted
//! (`gatehouse_access_log_dropped_total`) rather than buffered without bound.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;
use serde::Serialize;

/// One access log record. It is written by [`Entry::write_json`]; the `Serialize` derive is
/// the reference the tests hold that writer to (and a description of the line's shape).
#[derive(Serialize)]
pub struct Entry<'a> {
    /// RFC 3339 UTC time the request finished.
    pub time: Timestamp,
    pub request_id: &'a str,
    pub client_ip: std::net::IpAddr,
    pub method: &'a str,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: &'a str,
    /// The TLS version on HTTPS listeners (`TLSv1.3`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<&'a str>,
    /// The server name the TLS client asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<&'a str>,
    /// SHA-256 fingerprint of the verified client certificate (mutual TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<&'a str>,
    pub host: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub upstream: &'a str,
    pub backend: &'a str,
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: usize,
    pub duration_ms: f64,
    /// Time spent waiting for upstream response headers (all attempts), when one was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<f64>,
    /// Attempts after the first.
    pub retries: u32,
    /// W3C trace id, as passed upstream in `traceparent`.
    pub trace_id: &'a str,
    /// Why the gateway answered itself (`no route`, `no healthy backend`, ...), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// Cache result (`hit`, `miss`, `stale`, ...) on caching routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'a str>,
    /// The cache tier a hit came from (`memory`, `disk`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_tier: Option<&'a str>,
    /// Plugin decisions, e.g. `{"jwt": "expired"}`.
    #[serde(skip_serializing_if = "Pairs::is_empty")]
    pub plugins: Outcomes<'a>,
    /// What plugins said beyond their decision, e.g. `{"waf": {"rules": [...]}}`.
    #[serde(skip_serializing_if = "Pairs::is_empty")]
    pub details: Details<'a>,
}

/// Plugin decisions, serialized as a JSON object.
pub type Outcomes<'a> = Pairs<'a, &'static str>;

/// Plugin details, serialized as a JSON object.
pub type Details<'a> = Pairs<'a, serde_json::Value>;

/// `(plugin kind, value)` pairs, serialized as a JSON object.
pub struct Pairs<'a, V>(pub &'a [(&'static str, V)]);

impl<V> Pairs<'_, V> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V: Serialize> Serialize for Pairs<'_, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Where access log lines go.
///
/// Request threads append finished lines to a shared buffer under a short lock (the line is
/// formatted before, outside it); a writer thread swaps the buffer out every
/// [`FLUSH_EVERY`] and writes it. Producers never wake the writer, so logging costs no
/// syscall or context switch per request. When the buffer holds [`MAX_PENDING`] bytes (the
/// writer cannot keep up), further lines are dropped and counted.
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
    dropped: IntCounter,
}

struct Shared {
    buf: Mutex<Vec<u8>>,
    out: Mutex<Box<dyn Write + Send>>,
}

/// How often the writer thread writes what accumulated.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Bytes that may wait for the writer.
pub const MAX_PENDING: usize = 16 << 20;

thread_local! {
    static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(512));
}

impl AccessLog {
    /// `target` is `stdout`, `off` or a file path (appended to, created if missing).
    pub fn open(target: &str, dropped: IntCounter) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match target {
            "off" => {
                return Ok(AccessLog {
                    shared: None,
                    dropped,
                })
            }
            "stdout" => Box::new(std::io::stdout()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(64 * 1024)),
            out: Mutex::new(out),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("gatehouse-access-log".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                let Some(s) = weak.upgrade() else { return };
                s.flush();
            })?;
        Ok(AccessLog {
            shared: Some(shared),
            dropped,
        })
    }

    /// Whether lines are written at all (skip building them when not).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Queues one record; never blocks on I/O.
    pub fn write(&self, e: &Entry<'_>) {
        let Some(shared) = &self.shared else { return };
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            if e.write_json(&mut line).is_err() {
                return;
            }
            line.push(b'\n');
            let Ok(mut buf) = shared.buf.lock() else {
                return;
            };
            if buf.len() + line.len() > MAX_PENDING {
                self.dropped.inc();
                return;
            }
            buf.extend_from_slice(&line);
        });
    }

    /// Writes everything queued now (also called once the server has stopped).
    pub fn flush(&self) {
        if let Some(s) = &self.shared {
            s.flush();
        }
    }
}

impl Shared {
    fn flush(&self) {
        let pending = match self.buf.lock() {
            Ok(mut b) if !b.is_empty() => std::mem::replace(&mut *b, Vec::with_capacity(64 * 1024)),
            _ => return,
        };
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(&pending);
            let _ = out.flush();
        }
    }
}

/// `,"name":`, an object's key as [`Object::key`] writes it.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

impl Entry<'_> {
    /// Appends the record as one JSON object, byte for byte what `serde_json` writes for it
    /// (the tests hold the two equal): field by field, with [`json_str`]'s escape that passes
    /// eight plain bytes at a time. serde's per-byte escape loop was the larger part of a
    /// line's cost (~3.6k instructions of a proxied request's ~133k, benches/README).
    pub fn write_json(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let mut o = Object::open(out);
        let mut ts = [0u8; 24];
        o.str(key!("time"), rfc3339_into(self.time.0, &mut ts));
        o.str(key!("request_id"), self.request_id);
        o.key(key!("client_ip"));
        ip_str(o.out, self.client_ip);
        o.str(key!("method"), self.method);
        o.str(key!("protocol"), self.protocol);
        o.opt_str(key!("tls"), self.tls);
        o.opt_str(key!("sni"), self.sni);
        o.opt_str(key!("client_cert"), self.client_cert);
        o.str(key!("host"), self.host);
        o.str(key!("path"), self.path);
        o.str(key!("route"), self.route);
        o.str(key!("upstream"), self.upstream);
        o.str(key!("backend"), self.backend);
        o.uint(key!("status"), u64::from(self.status));
        o.uint(key!("bytes"), self.bytes as u64);
        o.float(key!("duration_ms"), self.duration_ms);
        if let Some(ms) = self.upstream_ms {
            o.float(key!("upstream_ms"), ms);
        }
        o.uint(key!("retries"), u64::from(self.retries));
        o.str(key!("trace_id"), self.trace_id);
        o.opt_str(key!("error"), self.error);
        o.opt_str(key!("cache"), self.cache);
        o.opt_str(key!("cache_tier"), self.cache_tier);
        if !self.plugins.is_empty() {
            o.key(key!("plugins"));
            o.out.push(b'{');
            for (i, (kind, outcome)) in self.plugins.0.iter().enumerate() {
                if i > 0 {
                    o.out.push(b',');
                }
                json_str(o.out, kind);
                o.out.push(b':');
                json_str(o.out, outcome);
            }
            o.out.push(b'}');
        }
        if !self.details.is_empty() {
            o.key(key!("details"));
            serde_json::to_writer(&mut *o.out, &self.details)?;
        }
        o.close();
        Ok(())
    }
}

/// A JSON object being written.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Object<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Object { out, first: true }
    }

    /// A key gatehouse names, made by [`key!`] (`,"name":`, plain ASCII): one copy.
    fn key(&mut self, k: &'static str) {
        let k = k.as_bytes();
        let k = match std::mem::take(&mut self.first) {
            true => k.split_first().map_or(k, |(_comma, rest)| rest),
            false => k,
        };
        self.out.extend_from_slice(k);
    }

    fn str(&mut self, k: &'static str, v: &str) {
        self.key(k);
        json_str(self.out, v);
    }

    fn opt_str(&mut self, k: &'static str, v: Option<&str>) {
        if let Some(v) = v {
            self.str(k, v);
        }
    }

    fn uint(&mut self, k: &'static str, v: u64) {
        self.key(k);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    /// As serde_json: the shortest form that reads back the same (`zmij`, serde_json's own), `null` when not
    /// finite.
    fn float(&mut self, k: &'static str, v: f64) {
        self.key(k);
        if v.is_finite() {
            self.out
                .extend_from_slice(zmij::Buffer::new().format_finite(v).as_bytes());
        } else {
            self.out.extend_from_slice(b"null");
        }
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// An address as a JSON string, as its `Display` writes it.
fn ip_str(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    out.push(b'"');
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut n = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(n.format(octet).as_bytes());
            }
        }
        std::net::IpAddr::V6(v6) => {
            // Display never fails writing into a Vec
            let _ = write!(out, "{v6}");
        }
    }
    out.push(b'"');
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether none of the eight bytes in `w` needs escaping in a JSON string (a control byte
/// below 0x20, `"` or `\`). Exact: each test is the classic "has a byte less than n" /
/// "has a zero byte", which never reports a byte that is not there.
#[inline]
fn plain8(w: u64) -> bool {
    let ctrl = w.wrapping_sub(ONES * 0x20) & !w;
    let q = w ^ (ONES * u64::from(b'"'));
    let q = q.wrapping_sub(ONES) & !q;
    let bs = w ^ (ONES * u64::from(b'\\'));
    let bs = bs.wrapping_sub(ONES) & !bs;
    (ctrl | q | bs) & HIGHS == 0
}

/// Appends `s` as a JSON string, escaped as `serde_json` escapes it: `\"`, `\\`, the short
/// forms `\b \t \n \f \r`, other control bytes as `\u00xx`; everything else as it is.
/// A string with nothing to escape (nearly every one) is checked eight bytes at a time and
/// copied whole.
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    if is_plain(b) {
        out.extend_from_slice(b);
    } else {
        escape_into(out, b);
    }
    out.push(b'"');
}

/// Whether no byte of `b` needs escaping.
#[inline]
fn is_plain(b: &[u8]) -> bool {
    let mut blocks = b.chunks_exact(8);
    for block in &mut blocks {
        let mut w = [0u8; 8];
        w.copy_from_slice(block);
        if !plain8(u64::from_le_bytes(w)) {
            return false;
        }
    }
    let rest = blocks.remainder();
    // the last few bytes padded with a byte that needs no escape
    let mut w = [b' '; 8];
    w[..rest.len()].copy_from_slice(rest);
    plain8(u64::from_le_bytes(w))
}

/// The escaping itself, byte by byte, for a string that needs it.
#[cold]
fn escape_into(out: &mut Vec<u8>, b: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut copied = 0;
    for (i, &c) in b.iter().enumerate() {
        let short = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x09 => b't',
            0x0a => b'n',
            0x0c => b'f',
            0x0d => b'r',
            0x00..=0x1f => 0,
            _ => continue,
        };
        out.extend_from_slice(&b[copied..i]);
        if short != 0 {
            out.extend_from_slice(&[b'\\', short]);
        } else {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 0xf)]);
        }
        copied = i + 1;
    }
    out.extend_from_slice(&b[copied..]);
}

/// Writes `t` as RFC 3339 UTC with milliseconds (`2026-11-26T01:27:10.629Z`, 24 bytes)
/// into `buf`, without allocating.
pub fn rfc3339_into(t: std::time::SystemTime, buf: &mut [u8; 24]) -> &str {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = (yoe + era * 400 + i64::from(month <= 2)).clamp(0, 9999) as u64;
    let mut put = |at: usize, v: u64, width: usize| {
        let mut v = v;
        for k in (0..width).rev() {
            buf[at + k] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month as u64, 2);
    put(8, day as u64, 2);
    put(11, (rem / 3600) as u64, 2);
    put(14, ((rem % 3600) / 60) as u64, 2);
    put(17, (rem % 60) as u64, 2);
    put(20, u64::from(d.subsec_millis()), 3);
    for (at, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        buf[at] = c;
    }
    std::str::from_utf8(&buf[..]).unwrap_or("1970-01-01T00:00:00.000Z")
}

/// A timestamp that serializes as RFC 3339 without allocating.
pub struct Timestamp(pub std::time::SystemTime);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 24];
        s.serialize_str(rfc3339_into(self.0, &mut buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings of every kind of byte, short and long, plain and escaped at each position of
    /// an eight-byte block: escaped exactly as serde_json escapes them.
    #[test]
    fn json_str_escapes_as_serde_json() {
        let pieces = [
            "",
            "a",
            "\"",
            "\\",
            "\n",
            "\r",
            "\t",
            "\u{8}",
            "\u{c}",
            "\u{0}",
            "\u{1f}",
            "\u{7f}",
            " ",
            "~",
            "/",
            "é",
            "€",
            "😀",
            "abcdefgh",
            "0123456789abcdef",
            "/users/42?x=1",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut cases: Vec<String> = pieces.iter().map(|p| p.to_string()).collect();
        for c in 0u8..0x80 {
            for at in 0..17 {
                let mut s = "x".repeat(at);
                s.push(char::from(c));
                s.push_str("yyyyyyyyy");
                cases.push(s);
            }
        }
        for _ in 0..5000 {
            let n = (next() % 12) as usize;
            cases.push(
                (0..n)
                    .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                    .collect(),
            );
        }
        for s in &cases {
            let mut out = Vec::new();
            json_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap(),
                "{s:?}"
            );
        }
    }

    fn entry<'a>(
        outcomes: &'a [(&'static str, &'static str)],
        details: &'a [(&'static str, serde_json::Value)],
    ) -> Entry<'a> {
        Entry {
            time: Timestamp(std::time::UNIX_EPOCH + Duration::from_millis(1_795_651_200_123)),
            request_id: "01JDQ3X6Z1",
            client_ip: [10, 0, 200, 7].into(),
            method: "GET",
            protocol: "HTTP/1.1",
            tls: None,
            sni: None,
            client_cert: None,
            host: "api.example.com",
            path: "/users/42",
            route: "users",
            upstream: "users",
            backend: "127.0.0.1:9001",
            status: 200,
            bytes: 1234,
            duration_ms: 1.25,
            upstream_ms: None,
            retries: 0,
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
            error: None,
            cache: None,
            cache_tier: None,
            plugins: Pairs(outcomes),
            details: Pairs(details),
        }
    }

    /// The hand-written line is serde_json's, byte for byte: with optional fields absent and
    /// present, odd strings (quotes, control bytes, non-ASCII) in every client-given field,
    /// IPv6 clients, whole, fractional, tiny, huge and non-finite durations.
    #[test]
    fn write_json_is_serde_jsons_line() {
        let check = |e: &Entry<'_>| {
            let mut mine = Vec::new();
            e.write_json(&mut mine).unwrap();
            let reference = serde_json::to_vec(e).unwrap();
            assert_eq!(
                String::from_utf8(mine).unwrap(),
                String::from_utf8(reference).unwrap()
            );
        };
        check(&entry(&[], &[]));
        let outcomes = [("jwt", "ok"), ("rate_limit", "allowed"), ("cors", "simple")];
        let details = [
            (
                "waf",
                serde_json::json!({"rules": [942100, 920350], "score": 10}),
            ),
            ("lua", serde_json::json!("say \"hi\"\n")),
        ];
        let odd = "a\"b\\c\u{1}d\te\u{7f}é😀/%20?q=\"x\"";
        for (i, ms) in [
            0.0,
            1.0,
            0.001,
            12.345,
            1e-7,
            1e21,
            123456789.125,
            f64::NAN,
            f64::INFINITY,
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = entry(&outcomes, &details);
            e.duration_ms = ms;
            e.upstream_ms = Some(ms / 2.0);
            e.tls = Some("TLSv1.3");
            e.sni = Some(odd);
            e.client_cert = Some("ab:cd");
            e.host = odd;
            e.path = odd;
            e.route = odd;
            e.request_id = odd;
            e.error = Some("no healthy backend");
            e.cache = Some("hit");
            e.cache_tier = Some("disk");
            e.status = 599;
            e.bytes = usize::MAX;
            e.retries = u32::MAX;
            if i % 2 == 1 {
                e.client_ip = "2001:db8::1".parse().unwrap();
            }
            if i == 3 {
                e.client_ip = "::ffff:192.0.2.1".parse().unwrap();
            }
            check(&e);
        }
    }

    #[test]
    fn formats_time() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_651_200_123);
        let mut buf = [0u8; 24];
        assert_eq!(rfc3339_into(t, &mut buf), "2026-11-26T00:00:00.123Z");
        assert_eq!(
            rfc3339_into(std::time::UNIX_EPOCH, &mut buf),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            serde_json::to_string(&Timestamp(t)).unwrap(),
            "\"2026-11-26T00:00:00.123Z\""
        );
    }
}
