//! The W3C `traceparent` parser: never panics, and what it accepts goes upstream as a
//! well-formed header.
#![no_main]

use gatehouse::proxy::trace;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(t) = trace::parse(data) {
        let out = trace::upstream_header(&t, trace::random_u64());
        assert!(out.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-'));
        let back = trace::parse(&out).expect("our own header must parse");
        assert_eq!(back.trace_id_bytes(), t.trace_id_bytes());
        assert_eq!(back.sampled(), t.sampled());
        // the sampled flag can be set and cleared without touching the other bits
        let mut u = t;
        u.set_sampled(!t.sampled());
        assert_eq!(u.sampled(), !t.sampled());
        u.set_sampled(t.sampled());
        assert_eq!(u.flags(), t.flags());
    }
});
