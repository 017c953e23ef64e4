//! The JSON access log: one line per request, written by a dedicated thread so a slow disk or
//! a blocked stdout never stalls request handling. The request path only formats the line and
//! appends it to a bounded buffer; when the writer falls behind, lines are dropped and counted
//! (`gatehouse_access_log_dropped_total`) rather than buffered without bound.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;
use serde::Serialize;

/// One access log record.
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
            if serde_json::to_writer(&mut *line, e).is_err() {
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
