//! A gatehouse build with a plugin of its own: the `require_tenant` plugin below, registered
//! next to the built-ins and served by the same command line as the `gatehouse` binary
//! (`run`, `check`, `--upgrade`).
//!
//! ```sh
//! cargo run --example custom_plugin -- check -c examples/custom_plugin.yaml
//! cargo run --example custom_plugin -- run -c examples/custom_plugin.yaml
//! ```

use std::process::ExitCode;

use async_trait::async_trait;
use gatehouse_plugins::api::{
    BuildEnv, BuildError, BuildResult, Flow, Plugin, PluginCtx, PluginSpec, Reply, Result, Session,
};
use serde::Deserialize;

/// Rejects requests without an `X-Tenant` header.
pub struct RequireTenant {
    status: u16,
}

/// `- require_tenant: { status: 400 }`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequireTenantConfig {
    #[serde(default = "default_status")]
    status: u16,
}

fn default_status() -> u16 {
    400
}

#[async_trait]
impl Plugin for RequireTenant {
    async fn request_filter(&self, s: &mut Session, cx: &mut PluginCtx<'_>) -> Result<Flow> {
        if s.req_header().headers.contains_key("x-tenant") {
            cx.info.record(Self::KIND, "allowed");
            Ok(Flow::Continue)
        } else {
            cx.info.record(Self::KIND, "rejected");
            Ok(Flow::Respond(Reply::error(self.status, "missing X-Tenant")))
        }
    }
}

impl PluginSpec for RequireTenant {
    const KIND: &'static str = "require_tenant";
    type Config = RequireTenantConfig;

    fn build(c: RequireTenantConfig, env: &mut BuildEnv) -> BuildResult<Self> {
        if !(400..=499).contains(&c.status) {
            return Err(BuildError::at("status", "must be a 4xx status"));
        }
        if c.status != 400 {
            env.warn("clients usually expect 400 for a missing header");
        }
        Ok(RequireTenant { status: c.status })
    }
}

fn main() -> ExitCode {
    let mut registry = gatehouse_plugins::builtins();
    registry.register::<RequireTenant>();
    gatehouse::cli::main(registry)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use gatehouse_plugins::api::testing::{build, request};

    #[tokio::test]
    async fn rejects_without_tenant_and_passes_with_one() {
        let p: RequireTenant = build("{ status: 403 }").unwrap();
        let run = request(&p, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(matches!(run.flow, Flow::Respond(ref r) if r.status == 403));
        assert_eq!(run.info.outcomes, [("require_tenant", "rejected")]);
        let run = request(&p, b"GET / HTTP/1.1\r\nHost: a\r\nX-Tenant: t1\r\n\r\n")
            .await
            .unwrap();
        assert!(matches!(run.flow, Flow::Continue));
        let e = build::<RequireTenant>("{ status: 200 }").err().unwrap();
        assert_eq!(
            (e.path.as_str(), e.message.as_str()),
            ("status", "must be a 4xx status")
        );
        assert!(
            build::<RequireTenant>("{ code: 400 }").is_err(),
            "unknown field"
        );
    }
}
