//! Active health checks: one supervisor task drives every group of the current snapshot.
//!
//! Pingora's own health state starts every backend as healthy; gatehouse must not send traffic
//! to a backend before it passed a check, so the supervisor keeps the state itself
//! ([`super::BackendState`]) and only borrows Pingora's probes (`HttpHealthCheck`,
//! `TcpHealthCheck`). A new backend is out of rotation until its first probe: the first result
//! decides. After that it leaves after `unhealthy_after` consecutive failures and comes back
//! after `healthy_after` consecutive successes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::{info, warn};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::Backend;

use super::{BackendState, UpstreamGroup};
use crate::metrics::Metrics;
use crate::state::SharedState;

/// How often the supervisor wakes up to see which groups are due.
const TICK: Duration = Duration::from_millis(100);

/// A compiled `health_check:`.
pub struct HealthSpec {
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
    probe: Arc<dyn HealthCheck + Send + Sync>,
}

impl HealthSpec {
    /// An HTTP probe: `GET path` with `Host: host`, passing on `expect_status`.
    pub fn http(
        path: &str,
        host: &str,
        expect_status: u16,
        interval: Duration,
        timeout: Duration,
        healthy_after: u32,
        unhealthy_after: u32,
    ) -> Result<Self, String> {
        let mut hc = HttpHealthCheck::new(host, false);
        let mut req = RequestHeader::build("GET", path.as_bytes(), None)
            .map_err(|e| format!("invalid health check path `{path}`: {e}"))?;
        req.insert_header("Host", host)
            .map_err(|e| format!("invalid health check host `{host}`: {e}"))?;
        req.insert_header("User-Agent", "gatehouse-health-check")
            .map_err(|e| e.to_string())?;
        hc.req = req;
        hc.peer_template.options.connection_timeout = Some(timeout);
        hc.peer_template.options.read_timeout = Some(timeout);
        hc.peer_template.options.write_timeout = Some(timeout);
        hc.validator = Some(Box::new(move |resp| {
            if resp.status.as_u16() == expect_status {
                Ok(())
            } else {
                pingora_error::Error::e_explain(
                    pingora_error::ErrorType::CustomCode("unexpected status", resp.status.as_u16()),
                    format!("expected {expect_status}"),
                )
            }
        }));
        Ok(Self::with_probe(
            Arc::new(hc),
            interval,
            timeout,
            healthy_after,
            unhealthy_after,
        ))
    }

    /// A TCP connect probe.
    pub fn tcp(
        interval: Duration,
        timeout: Duration,
        healthy_after: u32,
        unhealthy_after: u32,
    ) -> Self {
        let mut hc = TcpHealthCheck::new();
        hc.peer_template.options.connection_timeout = Some(timeout);
        Self::with_probe(
            Arc::from(hc as Box<dyn HealthCheck + Send + Sync>),
            interval,
            timeout,
            healthy_after,
            unhealthy_after,
        )
    }

    fn with_probe(
        probe: Arc<dyn HealthCheck + Send + Sync>,
        interval: Duration,
        timeout: Duration,
        healthy_after: u32,
        unhealthy_after: u32,
    ) -> Self {
        HealthSpec {
            interval,
            timeout,
            healthy_after,
            unhealthy_after,
            probe,
        }
    }
}

/// Applies one probe result to a backend's state; returns `Some(new_health)` on a flip.
pub fn observe(
    state: &BackendState,
    ok: bool,
    healthy_after: u32,
    unhealthy_after: u32,
) -> Option<bool> {
    let mut c = match state.counters.lock() {
        Ok(c) => c,
        Err(p) => p.into_inner(),
    };
    let was = state.is_healthy();
    if !c.probed {
        c.probed = true;
        c.successes = u32::from(ok);
        c.failures = u32::from(!ok);
        state.set_healthy(ok);
        return (was != ok).then_some(ok);
    }
    if ok {
        c.successes = c.successes.saturating_add(1);
        c.failures = 0;
        if !was && c.successes >= healthy_after {
            state.set_healthy(true);
            return Some(true);
        }
    } else {
        c.failures = c.failures.saturating_add(1);
        c.successes = 0;
        if was && c.failures >= unhealthy_after {
            state.set_healthy(false);
            return Some(false);
        }
    }
    None
}

async fn probe_group(group: &UpstreamGroup, spec: &HealthSpec, metrics: &Metrics) {
    let checks = group.backends.iter().map(|b| {
        let probe = Arc::clone(&spec.probe);
        let b = Arc::clone(b);
        async move {
            let target = match Backend::new(&b.addr.to_string()) {
                Ok(t) => t,
                Err(_) => return (b, Err("invalid backend address".to_string())),
            };
            let r = match tokio::time::timeout(spec.timeout, probe.check(&target)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", spec.timeout)),
            };
            (b, r)
        }
    });
    for (b, r) in futures::future::join_all(checks).await {
        let ok = r.is_ok();
        if let Some(now) = observe(&b, ok, spec.healthy_after, spec.unhealthy_after) {
            if now {
                info!("upstream {} backend {} is healthy", group.name, b.label);
            } else {
                warn!(
                    "upstream {} backend {} is unhealthy: {}",
                    group.name,
                    b.label,
                    r.err().unwrap_or_default()
                );
            }
        }
        metrics.set_backend_health(&group.name, &b.label, b.is_healthy());
    }
}

/// Runs the health checks of every group in the current snapshot at each group's interval.
/// The first round runs at once and marks the gateway ready (`/ready`).
pub struct HealthSupervisor {
    pub state: Arc<SharedState>,
    pub metrics: Arc<Metrics>,
}

/// Probes every group in `groups` once (all in parallel). Used for the first round and by
/// reloads to warm up new groups before they serve.
pub async fn check_groups(groups: &[Arc<UpstreamGroup>], metrics: &Metrics) {
    let rounds = groups
        .iter()
        .filter_map(|g| g.health.as_ref().map(|s| probe_group(g, s, metrics)));
    futures::future::join_all(rounds).await;
}

impl HealthSupervisor {
    async fn check_all(&self, groups: &[Arc<UpstreamGroup>]) {
        check_groups(groups, &self.metrics).await
    }
}

#[async_trait]
impl BackgroundService for HealthSupervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let snap = self.state.snapshot();
        let groups: Vec<_> = snap.upstreams.values().cloned().collect();
        self.check_all(&groups).await;
        self.state.set_health_ready();
        info!("first health check round done");

        // next due time per group, keyed by the group's address (a reload that rebuilds a
        // group gets a fresh entry and is probed at once)
        let mut due: HashMap<usize, Instant> = HashMap::new();
        let now = Instant::now();
        for g in &groups {
            if let Some(s) = &g.health {
                due.insert(Arc::as_ptr(g) as usize, now + s.interval);
            }
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            let snap = self.state.snapshot();
            let now = Instant::now();
            let mut live = HashMap::with_capacity(due.len());
            let mut to_probe = Vec::new();
            for g in snap.upstreams.values() {
                let Some(spec) = &g.health else { continue };
                let key = Arc::as_ptr(g) as usize;
                let next = due.get(&key).copied().unwrap_or(now);
                if next <= now {
                    to_probe.push(Arc::clone(g));
                    live.insert(key, now + spec.interval);
                } else {
                    live.insert(key, next);
                }
            }
            due = live;
            if !to_probe.is_empty() {
                self.check_all(&to_probe).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_probe_decides_then_thresholds() {
        let b = BackendState::new("127.0.0.1:1".parse().unwrap(), false);
        assert_eq!(observe(&b, false, 2, 2), None);
        assert!(!b.is_healthy());
        assert_eq!(observe(&b, true, 2, 2), None);
        assert_eq!(observe(&b, true, 2, 2), Some(true));
        assert_eq!(observe(&b, false, 2, 2), None);
        assert!(b.is_healthy());
        assert_eq!(observe(&b, true, 2, 2), None);
        assert_eq!(observe(&b, false, 2, 2), None);
        assert_eq!(observe(&b, false, 2, 2), Some(false));
        assert!(!b.is_healthy());

        let c = BackendState::new("127.0.0.1:2".parse().unwrap(), false);
        assert_eq!(observe(&c, true, 3, 3), Some(true));
    }
}
