//! The W3C `traceparent` parser: never panics, and what it accepts goes upstream as a
//! well-formed header.
#![no_main]

use gatehouse::proxy::trace;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(t) = trace::parse(data) {
        let out = trace::upstream_header(&t);
        assert!(out.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-'));
        assert!(trace::parse(&out).is_some(), "our own header must parse");
    }
});
