//! The plugin API: the [`Plugin`] trait with its hooks, the [`Flow`]/[`Reply`] values a request
//! hook returns, the per-request [`PluginCtx`], and the [`Registry`] that turns a YAML entry
//! (`- kind: {config}`) into a plugin instance at config-compile time.

mod ctx;
mod global;
pub mod headers;
mod registry;
mod reply;
mod shared;
pub mod testing;
pub mod units;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

pub use ctx::{PluginCtx, RequestInfo};
pub use global::{GlobalCounters, GlobalDecision, GlobalError, OnError};
pub use headers::{edit_request, edit_response, HeaderEdit};
pub use pingora_error::{Error, ErrorType, Result};
pub use pingora_http::{RequestHeader, ResponseHeader};
pub use pingora_proxy::Session;
pub use registry::{BuildEnv, BuildError, BuildResult, PluginInstance, Registry};
pub use reply::{Flow, Reply, ReplyBody};

/// The request body as the body step ([`Plugin::request_body`]) saw it.
#[derive(Debug, Clone, Default)]
pub struct RequestBody {
    /// What was read: the whole body when `complete`, otherwise the first bytes (possibly
    /// none) of a longer one.
    pub bytes: bytes::Bytes,
    /// Whether `bytes` is the whole body (also for a request without one).
    pub complete: bool,
    /// The body's `Content-Length`, when the client declared one.
    pub declared: Option<u64>,
}

/// The most the body step buffers: what Pingora 0.9.1 can replay upstream after reading it
/// (`BODY_BUF_LIMIT`). A plugin's [`Plugin::request_body_limit`] is capped at this.
pub const MAX_BUFFERED_BODY: usize = 64 * 1024;
pub use shared::{CacheIntent, Claims, ClientCert, UpstreamChoice, VerifiedClaims};

/// A plugin instance, built once per config compile and shared by every request of the routes
/// that list it. All hooks have defaults that do nothing, so a plugin implements only the phases
/// it needs.
///
/// Contract:
/// - `request_filter` runs in chain order after the route matched. `Flow::Continue` passes the
///   request on; `Flow::Respond(reply)` ends it: the gateway writes the reply (after running the
///   `response_filter` of the plugins *before* this one, in reverse) and nothing reaches the
///   upstream. An `Err` becomes a 500 with the JSON error body.
/// - `upstream_request_filter` runs in chain order on the request about to go upstream (after
///   the gateway set `Host`, `X-Forwarded-*`, `X-Request-Id`).
/// - `response_filter` runs in reverse chain order on every response: from the upstream, a
///   gateway error (502/503/504) or a plugin reply. An `Err` replaces the response by the
///   gateway's 500, which goes through the other plugins' hooks but not this one's again.
/// - `logging` runs in reverse chain order once per request, after the response was sent or the
///   request failed.
///
/// Hooks must not block: they run on the proxy's worker threads.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// See the trait contract. Default: `Flow::Continue`.
    async fn request_filter(&self, _s: &mut Session, _cx: &mut PluginCtx<'_>) -> Result<Flow> {
        Ok(Flow::Continue)
    }

    /// Opt-in to the body step: the most request-body bytes this plugin needs to see (capped
    /// at [`MAX_BUFFERED_BODY`]). When any plugin of a route's chain asks, the gateway reads
    /// the body (up to the largest limit asked, plus one byte to know whether there is more)
    /// after every `request_filter` continued and before anything goes upstream, then calls
    /// [`Plugin::request_body`] of those plugins in chain order; the bytes read are then sent
    /// upstream as they came, followed by the rest of the body. A body declared
    /// (`Content-Length`) larger than the limit is not read: the hook sees it incomplete and
    /// empty. Default: `None` (no body step).
    fn request_body_limit(&self) -> Option<usize> {
        None
    }

    /// The body step (see [`Plugin::request_body_limit`]). `Flow::Respond` answers instead of
    /// the upstream, as from `request_filter`. Default: `Flow::Continue`.
    async fn request_body(
        &self,
        _s: &mut Session,
        _body: &RequestBody,
        _cx: &mut PluginCtx<'_>,
    ) -> Result<Flow> {
        Ok(Flow::Continue)
    }

    /// See the trait contract. Default: no change.
    async fn upstream_request_filter(
        &self,
        _s: &mut Session,
        _req: &mut RequestHeader,
        _cx: &mut PluginCtx<'_>,
    ) -> Result<()> {
        Ok(())
    }

    /// See the trait contract. Default: no change.
    async fn response_filter(
        &self,
        _s: &mut Session,
        _resp: &mut ResponseHeader,
        _cx: &mut PluginCtx<'_>,
    ) -> Result<()> {
        Ok(())
    }

    /// See the trait contract. Default: nothing.
    async fn logging(&self, _s: &mut Session, _e: Option<&Error>, _cx: &mut PluginCtx<'_>) {}

    /// Called once when the first config containing this instance starts serving (at
    /// startup, or when a reload is published); an instance that later reloads keep is not
    /// called again. Start background work (file watchers, refreshers) here, never in
    /// [`PluginSpec::build`]: a reload can be rejected after its plugins were built, and
    /// those instances are then dropped without ever serving. Default: nothing.
    fn published(&self) {}
}

/// A plugin that can be built from its YAML config. Implementing this (instead of writing a
/// factory by hand) is all [`Registry::register`] needs.
pub trait PluginSpec: Plugin + Sized {
    /// The YAML key of the plugin entry: `- <KIND>: {config}`.
    const KIND: &'static str;
    /// A counter of its own for the decisions this plugin records
    /// ([`RequestInfo::record`]), labelled `{route, result}`. `None` (the default): they are
    /// counted in `gatehouse_plugin_decisions_total{plugin, route, result}`.
    const DECISION_METRIC: Option<DecisionMetric> = None;
    /// The plugin's config; use `#[serde(deny_unknown_fields)]` so typos are config errors,
    /// and [`units::Dur`]/[`units::Size`] for durations and sizes.
    type Config: DeserializeOwned;
    /// Builds an instance. Called at startup and on every reload that changed this entry; must
    /// not panic and must not start anything that outlives a rejected config (it may read
    /// files and fetch keys). An error names what is wrong; the caller prefixes the YAML path.
    /// Non-fatal findings go to [`BuildEnv::warn`].
    fn build(config: Self::Config, env: &mut BuildEnv) -> BuildResult<Self>;
}

/// A Prometheus counter a plugin declares for its decisions (see
/// [`PluginSpec::DECISION_METRIC`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionMetric {
    /// Full metric name, e.g. `gatehouse_jwt_validations_total`.
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
}
