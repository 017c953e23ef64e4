//! A gatehouse build with a plugin that panics on purpose (`tests/hardening.rs` checks that a
//! panic in one request's plugin answers that request with an error and leaves the process,
//! and every other request, alone). Not for production.
//!
//! ```sh
//! cargo run --example panic_plugin -- run -c some.yaml   # `- panic_on_header: {}` on a route
//! ```

use std::process::ExitCode;

use async_trait::async_trait;
use gatehouse_plugins::api::{
    BuildEnv, BuildResult, Flow, Plugin, PluginCtx, PluginSpec, Result, Session,
};
use serde::Deserialize;

/// Panics when the request has an `X-Panic` header.
pub struct PanicOnHeader;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanicConfig {}

#[async_trait]
impl Plugin for PanicOnHeader {
    async fn request_filter(&self, s: &mut Session, _cx: &mut PluginCtx<'_>) -> Result<Flow> {
        if s.req_header().headers.contains_key("x-panic") {
            panic!("panic_on_header: X-Panic was set");
        }
        Ok(Flow::Continue)
    }
}

impl PluginSpec for PanicOnHeader {
    const KIND: &'static str = "panic_on_header";
    type Config = PanicConfig;

    fn build(_c: PanicConfig, _env: &mut BuildEnv) -> BuildResult<Self> {
        Ok(PanicOnHeader)
    }
}

fn main() -> ExitCode {
    let mut registry = gatehouse_plugins::builtins();
    registry.register::<PanicOnHeader>();
    gatehouse::cli::main(registry)
}
