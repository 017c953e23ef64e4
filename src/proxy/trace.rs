//! W3C Trace Context (`traceparent`): a valid incoming trace is continued with the gateway's
//! own span id as the new parent; a missing or invalid one starts a fresh trace (and any
//! `tracestate` that came with an invalid parent is dropped, as the spec requires).

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// The trace this request belongs to (ids kept as fixed-size ASCII: no allocation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trace {
    /// 32 lowercase hex digits; all zero bytes before the request's trace is known.
    trace_id: [u8; 32],
    /// 2 lowercase hex digits (`01` = sampled).
    flags: [u8; 2],
    /// The client's parent span id (16 hex digits), all zero bytes without one.
    parent: [u8; 16],
    /// Whether the client sent a valid `traceparent`.
    pub continued: bool,
}

impl Trace {
    /// The 32-hex-digit trace id ("" before the request's trace is known).
    pub fn trace_id(&self) -> &str {
        if self.trace_id[0] == 0 {
            return "";
        }
        std::str::from_utf8(&self.trace_id).unwrap_or("")
    }

    /// Whether this holds a trace (the client's or a fresh one).
    pub fn is_set(&self) -> bool {
        self.trace_id[0] != 0
    }

    /// The 2-hex-digit trace flags.
    pub fn flags(&self) -> &str {
        std::str::from_utf8(&self.flags).unwrap_or("00")
    }

    /// Whether the client's trace is sampled (flag bit 0).
    pub fn sampled(&self) -> bool {
        (self.flags[1] as char)
            .to_digit(16)
            .is_some_and(|d| d & 1 == 1)
    }

    /// Sets or clears the sampled flag (what goes upstream from now on).
    pub fn set_sampled(&mut self, sampled: bool) {
        let d = (self.flags[1] as char).to_digit(16).unwrap_or(0);
        let d = if sampled { d | 1 } else { d & !1 };
        self.flags[1] = HEX[d as usize];
    }

    /// The trace id as 16 bytes (zeros before the request's trace is known).
    pub fn trace_id_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        if self.is_set() {
            for (i, o) in out.iter_mut().enumerate() {
                *o = u8::from_str_radix(
                    std::str::from_utf8(&self.trace_id[2 * i..2 * i + 2]).unwrap_or("0"),
                    16,
                )
                .unwrap_or(0);
            }
        }
        out
    }

    /// The client's parent span id, if it sent a trace.
    pub fn parent_span_id(&self) -> Option<u64> {
        if self.parent[0] == 0 {
            return None;
        }
        u64::from_str_radix(std::str::from_utf8(&self.parent).ok()?, 16).ok()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `v` as 16 lowercase hex digits into `out[..16]`.
pub fn put_hex(out: &mut [u8], v: u64) {
    for (i, o) in out.iter_mut().take(16).enumerate() {
        *o = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

fn hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// Parses `version-traceid-parentid-flags` (version `00`; later versions are read by the
/// same rules, as the spec asks).
pub fn parse(v: &[u8]) -> Option<Trace> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || !version.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if !hex(trace, 32)
        || !hex(parent, 16)
        || flags.len() != 2
        || !flags.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    let mut t = Trace {
        continued: true,
        ..Trace::default()
    };
    t.trace_id.copy_from_slice(trace.as_bytes());
    t.parent.copy_from_slice(parent.as_bytes());
    t.flags.copy_from_slice(flags.as_bytes());
    t.flags.make_ascii_lowercase();
    Some(t)
}

/// A random non-zero 64-bit value (span ids, fresh trace ids): SplitMix64 over a per-thread
/// state seeded once per thread from the process's random hasher keys, the clock and a
/// process-wide counter. Uniformly spread and distinct within a thread for 2^64 calls, a few
/// instructions each (a keyed SipHash per call was ~170); not for secrets.
pub fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(thread_seed());
    }
    let x = STATE.with(|s| {
        let x = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(x);
        x
    });
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) | 1
}

/// A fresh seed for one thread's [`random_u64`] state.
fn thread_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A fresh trace (not sampled: the gateway does not record spans itself).
pub fn fresh() -> Trace {
    let mut t = Trace {
        flags: *b"00",
        ..Trace::default()
    };
    put_hex(&mut t.trace_id[..16], random_u64());
    put_hex(&mut t.trace_id[16..], random_u64());
    t
}

/// The `traceparent` to send upstream: this trace with `span` (a new span id for the
/// gateway's attempt) as the parent.
pub fn upstream_header(t: &Trace, span: u64) -> [u8; 55] {
    let mut v = *b"00-________________________________-________________-__";
    v[3..35].copy_from_slice(&t.trace_id);
    put_hex(&mut v[36..52], span);
    v[53..55].copy_from_slice(&t.flags);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let t = parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags(), "01");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad}");
        }
        let up = upstream_header(&t, random_u64());
        let up = std::str::from_utf8(&up).unwrap();
        assert!(up.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(up.ends_with("-01"));
        assert!(
            !up.contains("00f067aa0ba902b7"),
            "the gateway is the new parent"
        );
        let f = fresh();
        assert!(parse(&upstream_header(&f, 7)).is_some());
        assert!(t.sampled() && !f.sampled());
        assert_eq!(t.parent_span_id(), Some(0x00f067aa0ba902b7));
        assert_eq!(t.trace_id_bytes()[0], 0x4b);
        assert_eq!(f.trace_id().len(), 32);
        assert_eq!(Trace::default().trace_id(), "");
    }

    #[test]
    fn random_values_are_distinct_and_non_zero_across_threads() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let v = random_u64();
            assert_ne!(v, 0);
            assert!(seen.insert(v));
        }
        let other = std::thread::spawn(|| (0..10_000).map(|_| random_u64()).collect::<Vec<_>>())
            .join()
            .unwrap();
        for v in other {
            assert!(seen.insert(v), "another thread draws other values");
        }
        // the bits are spread: every bit position is set in some value and clear in another
        let (and, or) = seen.iter().fold((u64::MAX, 0), |(a, o), v| (a & v, o | v));
        assert_eq!(or, u64::MAX);
        assert_eq!(and, 1, "only the forced low bit is always set");
    }
}
