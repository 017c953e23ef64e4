//! Raw HTTP/1 request bytes: the connection guard's incremental request-line and
//! Content-Length scanners (the same verdict whatever the split), then Pingora's parser and
//! gatehouse's strict head checks.
#![no_main]

use gatehouse::proxy::fuzzing::{check_h1, valid_host, FieldSeen, LineCheck};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(data.len());
    let (mut a, mut b) = (LineCheck::default(), LineCheck::default());
    a.feed(data);
    b.feed(&data[..at]);
    b.feed(&data[at..]);
    assert_eq!(a, b, "the request-line verdict depends on the split");
    let (mut c, mut d) = (FieldSeen::content_length(), FieldSeen::content_length());
    c.feed(data);
    d.feed(&data[..at]);
    d.feed(&data[at..]);
    assert_eq!(c.seen, d.seen, "the Content-Length verdict depends on the split");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    if let Ok(session) = rt.block_on(gatehouse_plugins::api::testing::session_from_bytes(data)) {
        let req = session.req_header();
        let _ = check_h1(req, a.ok(), c.seen);
        if let Some(h) = req.headers.get(http::header::HOST) {
            let _ = valid_host(h.as_bytes());
        }
    }
});
