//! The jwt plugin on a client-chosen bearer token: header and claims decoding, algorithm
//! pinning, time checks. Never a panic, and never accepted without the key.
#![no_main]

use std::sync::OnceLock;

use gatehouse_plugins::api::testing::{build, request};
use gatehouse_plugins::api::Flow;
use gatehouse_plugins::jwt::Jwt;
use libfuzzer_sys::fuzz_target;

fn plugin() -> &'static Jwt {
    static P: OnceLock<Jwt> = OnceLock::new();
    P.get_or_init(|| {
        build(r#"{ keys: [{ algorithm: HS256, secret: "fuzz-secret-fuzz-secret-fuzz-secret-0" }] }"#)
            .expect("jwt config")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if token.contains(['\r', '\n']) {
        return;
    }
    let raw = format!("GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\r\n");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    if let Ok(run) = rt.block_on(request(plugin(), raw.as_bytes())) {
        // without the secret no token can be right
        assert!(!matches!(run.flow, Flow::Continue), "accepted {token:?}");
    }
});
