//! The cors plugin (origin patterns with wildcards) on a client-chosen `Origin` and preflight
//! headers, through the plugin's request hook as the gateway runs it.
#![no_main]

use std::sync::OnceLock;

use gatehouse_plugins::api::testing::{build, request};
use gatehouse_plugins::cors::Cors;
use libfuzzer_sys::fuzz_target;

fn plugin() -> &'static Cors {
    static P: OnceLock<Cors> = OnceLock::new();
    P.get_or_init(|| {
        build(r#"{ allow_origins: ["https://app.example.com", "https://*.example.org", "http://localhost:3000"], allow_methods: [GET, POST], allow_headers: [Authorization], allow_credentials: true }"#)
            .expect("cors config")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (origin, method) = text.split_once('\n').unwrap_or((&text, "GET"));
    if origin.contains(['\r', '\n']) || method.contains(['\r', '\n']) {
        return;
    }
    let raw = format!(
        "OPTIONS /x HTTP/1.1\r\nHost: a\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: {method}\r\n\r\n"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let _ = rt.block_on(request(plugin(), raw.as_bytes()));
});
