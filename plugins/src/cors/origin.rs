//! Allowed origins: `*`, an exact `scheme://host[:port]`, or `scheme://*.domain[:port]`
//! (one or more labels before the domain, same scheme and port), parsed once when the config
//! is compiled and matched against each request's `Origin`.

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum OriginRule {
    Any,
    /// `scheme://host[:port]`, lowercase.
    Exact(String),
    /// `scheme://*.suffix[:port]`: `suffix` without the leading dot.
    Wildcard {
        scheme: String,
        suffix: String,
        port: Option<String>,
    },
}

/// Splits a serialized origin into (scheme, host, port), lowercase. `None` for `null` or
/// anything that is not `scheme://host[:port]`.
fn split_origin(o: &str) -> Option<(String, String, Option<String>)> {
    let (scheme, rest) = o.split_once("://")?;
    if scheme.is_empty() || rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (h, Some(p.to_string()))
        }
        _ => (rest, None),
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme.to_ascii_lowercase(), host.to_ascii_lowercase(), port))
}

fn valid_label(l: &str) -> bool {
    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl OriginRule {
    pub(super) fn parse(s: &str) -> std::result::Result<Self, String> {
        if s == "*" {
            return Ok(OriginRule::Any);
        }
        if s.eq_ignore_ascii_case("null") {
            return Err(
                "`null` origins cannot be allowed (sandboxed and file pages share it)".into(),
            );
        }
        let (scheme, host, port) = split_origin(s)
            .ok_or_else(|| format!("`{s}` is not an origin (scheme://host[:port], no path)"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("`{s}`: scheme must be http or https"));
        }
        if let Some(suffix) = host.strip_prefix("*.") {
            if !suffix.split('.').all(valid_label) || !suffix.contains('.') {
                return Err(format!("`{s}`: a wildcard needs a domain with at least two labels, e.g. https://*.example.com"));
            }
            return Ok(OriginRule::Wildcard {
                scheme,
                suffix: suffix.to_string(),
                port,
            });
        }
        if host.contains('*') {
            return Err(format!(
                "`{s}`: `*` is only allowed as the first label (https://*.example.com)"
            ));
        }
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        Ok(OriginRule::Exact(format!("{scheme}://{host}{port}")))
    }

    pub(super) fn matches(&self, origin: &str) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(e) => e.eq_ignore_ascii_case(origin),
            OriginRule::Wildcard {
                scheme,
                suffix,
                port,
            } => {
                let Some((s, host, p)) = split_origin(origin) else {
                    return false;
                };
                if s != *scheme || p != *port {
                    return false;
                }
                let Some(prefix) = host
                    .strip_suffix(suffix.as_str())
                    .and_then(|h| h.strip_suffix('.'))
                else {
                    return false;
                };
                !prefix.is_empty() && prefix.split('.').all(valid_label)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_match() {
        let w = OriginRule::parse("https://*.Example.com").unwrap();
        assert!(w.matches("https://a.example.com"));
        assert!(w.matches("https://a.b.example.com"));
        for no in [
            "https://example.com",
            "https://evil-example.com",
            "https://example.com.evil.net",
            "http://a.example.com",
            "https://a.example.com:8443",
            "null",
        ] {
            assert!(!w.matches(no), "{no}");
        }
        let e = OriginRule::parse("http://localhost:3000").unwrap();
        assert!(e.matches("http://LOCALHOST:3000"));
        assert!(!e.matches("http://localhost:3001"));
        assert!(OriginRule::parse("*").unwrap().matches("https://x.y"));
        for bad in [
            "null",
            "ftp://a.b",
            "https://a.b/path",
            "https://*.com",
            "https://a.*.b",
        ] {
            assert!(OriginRule::parse(bad).is_err(), "{bad}");
        }
    }
}
