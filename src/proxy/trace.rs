//! W3C Trace Context (`traceparent`): a valid incoming trace is continued with the gateway's
//! own span id as the new parent; a missing or invalid one starts a fresh trace (and any
//! `tracestate` that came with an invalid parent is dropped, as the spec requires).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// The trace this request belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 2 hex digits (`01` = sampled).
    pub flags: String,
    /// Whether the client sent a valid `traceparent`.
    pub continued: bool,
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
    Some(Trace {
        trace_id: trace.to_string(),
        flags: flags.to_ascii_lowercase(),
        continued: true,
    })
}

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish() | 1
}

/// A fresh trace (not sampled: the gateway does not record spans itself).
pub fn fresh() -> Trace {
    Trace {
        trace_id: format!("{:016x}{:016x}", random_u64(), random_u64()),
        flags: "00".into(),
        continued: false,
    }
}

/// The `traceparent` to send upstream: this trace with a new span id for the gateway.
pub fn upstream_header(t: &Trace) -> String {
    format!("00-{}-{:016x}-{}", t.trace_id, random_u64(), t.flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let t = parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags, "01");
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
        let up = upstream_header(&t);
        assert!(up.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(up.ends_with("-01"));
        assert!(
            !up.contains("00f067aa0ba902b7"),
            "the gateway is the new parent"
        );
        let f = fresh();
        assert!(parse(upstream_header(&f).as_bytes()).is_some());
    }
}
