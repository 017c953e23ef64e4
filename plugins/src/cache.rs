//! `cache` plugin: marks a route's responses as cacheable. The plugin only states the intent
//! ([`CacheIntent`] in `RequestInfo::ext`); the gateway's cache phases (Pingora's cache hooks,
//! `src/proxy/cache.rs`) do the work. Every plugin of the chain runs before the cache lookup,
//! so authentication and rate limits apply to hits as well.
//!
//! ```yaml
//! - cache:
//!     default_ttl: 60s              # only when the upstream sends no freshness information
//!     methods: [GET, HEAD]          # HEAD is answered from a cached GET
//!     vary: [Accept-Encoding, Accept-Language]   # request headers that split the cache
//!     max_object_size: 1MiB         # larger responses stream through uncached
//!     stale_while_revalidate: 10s
//!     stale_if_error: 5m
//! ```

use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderName, Method};
use serde::Deserialize;

use crate::api::units::{Dur, NonZeroSize};
use crate::api::{
    BuildEnv, BuildError, BuildResult, CacheIntent, DecisionMetric, Flow, Plugin, PluginCtx,
    PluginSpec, Result, Session,
};

/// The plugin's YAML config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default = "default_ttl")]
    default_ttl: Dur,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    vary: Vec<String>,
    #[serde(default = "default_max_object")]
    max_object_size: NonZeroSize,
    #[serde(default)]
    stale_while_revalidate: Dur,
    #[serde(default)]
    stale_if_error: Dur,
}

fn default_ttl() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_max_object() -> NonZeroSize {
    NonZeroSize(1 << 20)
}

/// The `cache` plugin.
pub struct Cache {
    intent: CacheIntent,
}

#[async_trait]
impl Plugin for Cache {
    async fn request_filter(&self, s: &mut Session, cx: &mut PluginCtx<'_>) -> Result<Flow> {
        if self.intent.methods.contains(&s.req_header().method) {
            cx.info.ext.insert(self.intent.clone());
        }
        Ok(Flow::Continue)
    }
}

impl PluginSpec for Cache {
    const KIND: &'static str = "cache";
    /// The gateway reports each caching route's cache result under this plugin's kind.
    const DECISION_METRIC: Option<DecisionMetric> = Some(DecisionMetric {
        name: "gatehouse_cache_requests_total",
        help: "Requests on caching routes by route and result (hit, miss, stale, expired, bypass, revalidated).",
    });
    type Config = CacheConfig;

    fn build(c: CacheConfig, _env: &mut BuildEnv) -> BuildResult<Self> {
        let mut methods = Vec::new();
        for (i, m) in c
            .methods
            .unwrap_or_else(|| vec!["GET".into(), "HEAD".into()])
            .iter()
            .enumerate()
        {
            match m.to_ascii_uppercase().as_str() {
                "GET" => methods.push(Method::GET),
                "HEAD" => methods.push(Method::HEAD),
                _ => {
                    return Err(BuildError::at(
                        format!("methods[{i}]"),
                        format!("`{m}`: only GET and HEAD responses are cached"),
                    ))
                }
            }
        }
        let mut vary = Vec::new();
        for (i, v) in c.vary.iter().enumerate() {
            vary.push(HeaderName::from_bytes(v.as_bytes()).map_err(|_| {
                BuildError::at(format!("vary[{i}]"), format!("invalid header name `{v}`"))
            })?);
        }
        vary.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        vary.dedup();
        Ok(Cache {
            intent: CacheIntent {
                default_ttl: c.default_ttl.0,
                methods,
                vary,
                max_object_size: usize::try_from(c.max_object_size.0).unwrap_or(usize::MAX),
                stale_while_revalidate: c.stale_while_revalidate.0,
                stale_if_error: c.stale_if_error.0,
            },
        })
    }
}
