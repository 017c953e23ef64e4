//! A raw chunked request body through the connection guard's framing check: the verdict
//! (ended where, refused where and why) is the same whatever the split, and a body it accepts
//! is one a strict whole-buffer reading accepts too, ending at the same byte.
#![no_main]

use gatehouse::proxy::fuzzing::{ChunkCheck, ChunkStep};
use libfuzzer_sys::fuzz_target;

/// A plain reading of RFC 9112 §7.1 on the whole buffer: where the body ends, if it does.
fn reference(data: &[u8]) -> Option<usize> {
    let line = |at: usize| -> Option<(&[u8], usize)> {
        let end = at + data.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        let l = &data[at..end];
        (!l.contains(&b'\n')).then_some((l, end + 2))
    };
    let mut at = 0;
    loop {
        let (l, next) = line(at)?;
        let digits = l.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&l[..digits]).ok()?, 16).ok()?;
        let size = usize::try_from(size).ok()?;
        if size == 0 {
            // trailer lines up to an empty one
            let mut t = next;
            loop {
                let (l, n) = line(t)?;
                if l.is_empty() {
                    return Some(n);
                }
                t = n;
            }
        }
        let end = next.checked_add(size)?;
        if data.get(end..end + 2)? != b"\r\n" {
            return None;
        }
        at = end + 2;
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else {
        return;
    };
    let at = usize::from(split).min(data.len());
    let mut whole = ChunkCheck::default();
    let verdict = whole.feed(data, u64::MAX);
    let mut parts = ChunkCheck::default();
    let split_verdict = match parts.feed(&data[..at], u64::MAX) {
        ChunkStep::More => match parts.feed(&data[at..], u64::MAX) {
            ChunkStep::More => ChunkStep::More,
            ChunkStep::End(n) => ChunkStep::End(at + n),
            ChunkStep::Bad(i, why) => ChunkStep::Bad(at + i, why),
        },
        v => v,
    };
    assert_eq!(verdict, split_verdict, "the verdict depends on the split at {at}");
    if let ChunkStep::End(n) = verdict {
        assert_eq!(reference(data), Some(n), "accepted a body a strict reading refuses");
    }
});
