//! `tracing:` -> the span exporter ([`Tracer`]), kept from the running snapshot when the
//! section did not change (its queue and thread go on).

use std::sync::Arc;

use super::CompileEnv;
use crate::config::error::Scope;
use crate::config::raw::RawTracing;
use crate::otlp::{Tracer, TracingSettings};

pub(super) fn compile_tracing(
    raw: Option<&RawTracing>,
    env: &CompileEnv<'_>,
    s: &mut Scope<'_>,
) -> Option<Arc<Tracer>> {
    let raw = raw?;
    let endpoint = raw.otlp.endpoint.trim();
    match endpoint.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
        _ => s.error_at(
            "otlp.endpoint",
            format!("`{endpoint}` is not an http(s):// URL of an OTLP/HTTP receiver"),
        ),
    }
    for (k, v) in &raw.otlp.headers {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err()
            || http::HeaderValue::from_str(v).is_err()
        {
            s.error_at(&format!("otlp.headers.{k}"), "not a valid HTTP header");
        }
    }
    if !(0.0..=1.0).contains(&raw.sampling.ratio) {
        s.error_at("sampling.ratio", "between 0 and 1");
    }
    if raw.service_name.is_empty() {
        s.error_at("service_name", "must not be empty");
    }
    let settings = TracingSettings {
        endpoint: endpoint.to_string(),
        // (an unset `${VAR:-}` leaves a header out)
        headers: (raw.otlp.headers.iter())
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        timeout: raw.otlp.timeout.0,
        service_name: raw.service_name.clone(),
        ratio: raw.sampling.ratio,
        parent_based: raw.sampling.parent_based,
        always_errors: raw.sampling.always_errors,
        resource: raw.resource.clone(),
    };
    if let Some(prev) = env.previous.and_then(|p| p.tracing.as_ref()) {
        if prev.settings == settings {
            return Some(prev.clone());
        }
    }
    Some(Arc::new(Tracer::new(settings, env.metrics)))
}
