//! `access` plugin: allow or deny by the resolved client IP.
//!
//! ```yaml
//! - access: { allow: ["10.0.0.0/8"], deny: ["10.6.6.0/24"] }
//! ```
//! Deny wins. With a non-empty `allow`, addresses outside it are denied. A denied request gets
//! 403 with the gateway's JSON error body. IPv4-mapped IPv6 addresses are compared as IPv4.

use std::net::IpAddr;

use async_trait::async_trait;
use ipnet::IpNet;
use serde::Deserialize;

use crate::api::{
    BuildEnv, BuildError, BuildResult, Flow, Plugin, PluginCtx, PluginSpec, Reply, Result, Session,
};

/// The plugin's YAML config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

/// The `access` plugin.
pub struct Access {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl Access {
    /// Whether `ip` may pass.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

#[async_trait]
impl Plugin for Access {
    async fn request_filter(&self, _s: &mut Session, cx: &mut PluginCtx<'_>) -> Result<Flow> {
        if self.permits(cx.info.client_ip) {
            cx.info.record(Self::KIND, "allowed");
            Ok(Flow::Continue)
        } else {
            cx.info.record(Self::KIND, "denied");
            Ok(Flow::Respond(Reply::error(403, "forbidden")))
        }
    }
}

fn nets(list: &[String], field: &str) -> std::result::Result<Vec<IpNet>, BuildError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| BuildError::at(format!("{field}[{i}]"), format!("invalid CIDR `{s}`")))
        })
        .collect()
}

impl PluginSpec for Access {
    const KIND: &'static str = "access";
    type Config = AccessConfig;

    fn build(c: AccessConfig, _env: &mut BuildEnv) -> BuildResult<Self> {
        if c.allow.is_empty() && c.deny.is_empty() {
            return Err(BuildError::new("needs `allow` or `deny`"));
        }
        Ok(Access {
            allow: nets(&c.allow, "allow")?,
            deny: nets(&c.deny, "deny")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins() {
        let a: Access = crate::api::testing::build(
            "{ allow: [\"10.0.0.0/8\", \"2001:db8::/32\"], deny: [\"10.6.6.0/24\"] }",
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(a.permits(ip("10.1.2.3")));
        assert!(!a.permits(ip("10.6.6.1")));
        assert!(!a.permits(ip("192.0.2.1")));
        assert!(a.permits(ip("2001:db8::1")));
        assert!(a.permits(ip("::ffff:10.1.2.3")));
        assert!(!a.permits(ip("::ffff:10.6.6.6")));
        let e = crate::api::testing::build::<Access>("{ deny: [\"nope\"] }")
            .err()
            .unwrap();
        assert_eq!(e.path, "deny[0]");
    }
}
