//! An upstream response's caching headers (`Cache-Control`, `Expires`, `Age`, `Vary`,
//! `Set-Cookie`, ...; one `name: value` per line): the storage decision and the variance key.
//! Never a panic; a response with `Set-Cookie` or `Vary: *` is never stored; the variance key's
//! names are sorted and unique.
#![no_main]

use std::time::{Duration, SystemTime};

use gatehouse::proxy::fuzzing::{cache_decision, vary_names};
use libfuzzer_sys::fuzz_target;
use pingora_http::ResponseHeader;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let status = [200u16, 203, 204, 301, 404, 500, 302][flags as usize % 7];
    let Ok(mut resp) = ResponseHeader::build(status, None) else {
        return;
    };
    for line in rest.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value.trim_ascii()),
        ) else {
            continue;
        };
        let _ = resp.append_header(name, value);
    }
    let now = SystemTime::now();
    let default_ttl = Duration::from_secs(60);
    let authorized = flags & 0x80 != 0;
    let decision = cache_decision(&resp, authorized, default_ttl, now);
    if decision.is_ok() {
        assert!(!resp.headers.contains_key(http::header::SET_COOKIE));
        let vary_star = resp.headers.get_all(http::header::VARY).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim() == "*"))
                .unwrap_or(true)
        });
        assert!(!vary_star);
    }
    let names = vary_names(&[], &resp.headers);
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
});
