//! A JWKS document as a key server could send it: parsed into pinned keys or refused with an
//! error, never a panic; every key it yields is a signing key of the algorithm it is pinned to.
#![no_main]

use gatehouse_plugins::jwt::fuzzing::parse_jwks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(keys) = parse_jwks(text) {
        assert!(!keys.is_empty(), "Ok with no key");
    }
});
