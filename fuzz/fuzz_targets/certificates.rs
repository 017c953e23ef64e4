//! Certificate material: PEM chains and keys as the TLS config loads them (the first byte
//! splits the input into the two files), and DER certificates as a client presents them for
//! mutual TLS. Errors are data; never a panic.
#![no_main]

use gatehouse::tls::fuzzing::{load_pem, parse_client_cert};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = (split as usize * rest.len()) / 256;
    let (cert, key) = rest.split_at(at);
    if let Ok(loaded) = load_pem(cert, key, 0) {
        assert!(loaded >= 1, "a loaded chain without a certificate");
    }
    if let Some(c) = parse_client_cert(rest) {
        assert_eq!(c.fingerprint.len(), 64);
    }
});
