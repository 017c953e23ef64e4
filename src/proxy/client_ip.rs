//! The client IP of a request: the socket peer, or, when the peer is a configured trusted
//! proxy, the address it forwarded (`X-Forwarded-For`, else RFC 7239 `Forwarded`), walked from
//! the right. Resolved in `early_request_filter`, before any plugin runs.

use std::net::{IpAddr, SocketAddr};

use crate::state::ServerSettings;

/// Parses one address from a forwarding header entry: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]:443`, optionally quoted.
pub(super) fn parse_forwarded_addr(v: &str) -> Option<IpAddr> {
    let v = v.trim().trim_matches('"');
    v.parse::<IpAddr>()
        .ok()
        .or_else(|| v.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            v.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse().ok())
        })
}

/// The `for=` addresses of an RFC 7239 `Forwarded` header, left to right (`None` for an
/// element without a usable address, e.g. `for=unknown` or an obfuscated name).
fn forwarded_for(v: &str) -> Vec<Option<IpAddr>> {
    v.split(',')
        .map(|element| {
            element.split(';').find_map(|pair| {
                let (k, val) = pair.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_forwarded_addr(val))
            })?
        })
        .collect()
}

/// The client IP: `peer`, unless `peer` is a trusted proxy; then `X-Forwarded-For` (or, when
/// absent, RFC 7239 `Forwarded`) is walked from the right and the first address that is not a
/// trusted proxy wins. An entry that does not parse stops the walk (everything left of it is
/// client-controlled). IPv4-mapped IPv6 addresses are returned as IPv4.
pub fn client_ip(
    peer: IpAddr,
    xff: Option<&[u8]>,
    forwarded: Option<&[u8]>,
    settings: &ServerSettings,
) -> IpAddr {
    let peer = peer.to_canonical();
    if !settings.is_trusted(peer) {
        return peer;
    }
    let hops: Vec<Option<IpAddr>> = match (
        xff.and_then(|v| std::str::from_utf8(v).ok()),
        forwarded.and_then(|v| std::str::from_utf8(v).ok()),
    ) {
        (Some(x), _) => x.split(',').map(parse_forwarded_addr).collect(),
        (None, Some(f)) => forwarded_for(f),
        (None, None) => return peer,
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) => {
                client = ip.to_canonical();
                if !settings.is_trusted(client) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(cidrs: &[&str]) -> ServerSettings {
        ServerSettings {
            trusted_proxies: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            ..ServerSettings::default()
        }
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_headers_ignored_without_trusted_proxies() {
        let s = settings(&[]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some(b"1.2.3.4"), Some(b"for=1.2.3.4"), &s),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), None, None, &s),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn xff_walked_from_the_right() {
        let s = settings(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(
                ip("10.0.0.1"),
                Some(b"9.9.9.9, 1.2.3.4, 10.0.0.7"),
                None,
                &s
            ),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_ip(ip("8.8.8.8"), Some(b"1.2.3.4"), None, &s),
            ip("8.8.8.8")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some(b"garbage, 10.0.0.9"), None, &s),
            ip("10.0.0.9")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), None, None, &s), ip("10.0.0.1"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some(b"[2001:db8::1]:443"), None, &s),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some(b"10.0.0.2, 10.0.0.3"), None, &s),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn forwarded_header() {
        let s = settings(&["10.0.0.0/8"]);
        let f = |v: &str| client_ip(ip("10.0.0.1"), None, Some(v.as_bytes()), &s);
        assert_eq!(
            f("for=192.0.2.60;proto=http;by=203.0.113.43"),
            ip("192.0.2.60")
        );
        assert_eq!(
            f("for=192.0.2.1, for=\"[2001:db8:cafe::17]:4711\", For=10.0.0.5"),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(f("for=unknown, for=10.0.0.5"), ip("10.0.0.5"));
        assert_eq!(f("for=198.51.100.1:8080"), ip("198.51.100.1"));
        // X-Forwarded-For wins when both are present
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some(b"1.1.1.1"), Some(b"for=2.2.2.2"), &s),
            ip("1.1.1.1")
        );
    }
}
