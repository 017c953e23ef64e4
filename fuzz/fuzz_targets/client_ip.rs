//! `X-Forwarded-For` and `Forwarded` from a trusted peer: the client IP is the peer or one of
//! the addresses written, never a panic.
#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;

use gatehouse::proxy::fuzzing::client_ip;
use gatehouse::state::ServerSettings;
use libfuzzer_sys::fuzz_target;

fn settings() -> &'static ServerSettings {
    static S: OnceLock<ServerSettings> = OnceLock::new();
    S.get_or_init(|| ServerSettings {
        trusted_proxies: ["127.0.0.0/8", "10.0.0.0/8", "::1/128"]
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect(),
        ..ServerSettings::default()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let peer: IpAddr = if which & 1 == 0 {
        IpAddr::from([127, 0, 0, 1])
    } else {
        IpAddr::from([10, 1, 2, 3])
    };
    let (xff, fwd) = if which & 2 == 0 {
        (Some(rest), None)
    } else {
        (None, Some(rest))
    };
    let ip = client_ip(peer, xff, fwd, settings());
    // the peer, or an address written in the header (IPv6 may be written in another form)
    let text = String::from_utf8_lossy(rest).to_ascii_lowercase();
    let written = match ip {
        IpAddr::V4(v4) => text.contains(&v4.to_string()) || text.contains(':'),
        IpAddr::V6(_) => text.contains(':'),
    };
    assert!(ip == peer || written, "{ip} came from nowhere");
});
