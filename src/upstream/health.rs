//! Active health checks: one supervisor task drives every group of the current snapshot.
//!
//! Pingora's own health state starts every backend as healthy; gatehouse must not send traffic
//! to a backend before it passed a check, so the supervisor keeps the state itself
//! ([`super::BackendState`]) and only borrows Pingora's probes (`HttpHealthCheck`,
//! `TcpHealthCheck`). A new backend is out of rotation until its first probe: the first result
//! decides. After that it leaves after `unhealthy_after` consecutive failures and comes back
//! after `healthy_after` consecutive successes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::{info, warn};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::Backend;

use super::tls::Transport;
use super::{BackendState, UpstreamGroup};
use crate::metrics::Metrics;

/// How often the supervisor wakes up to see which groups are due.
const TICK: Duration = Duration::from_millis(100);

/// When backends are probed and how many results in a row flip their state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthTiming {
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
}

/// A compiled `health_check:`.
pub struct HealthSpec {
    pub timing: HealthTiming,
    probe: Arc<dyn HealthCheck + Send + Sync>,
}

impl HealthSpec {
    /// An HTTP probe: `GET path` with `Host: host`, passing on `expect_status`, over the
    /// group's `transport` (TLS probes use the same server name, CA and client certificate as
    /// requests do, so a backend with a bad certificate is taken out of rotation).
    pub fn http(
        path: &str,
        host: &str,
        expect_status: u16,
        timing: HealthTiming,
        transport: &Transport,
        addrs: &[SocketAddr],
    ) -> Result<Self, String> {
        let mut req = RequestHeader::build("GET", path.as_bytes(), None)
            .map_err(|e| format!("invalid health check path `{path}`: {e}"))?;
        req.insert_header("Host", host)
            .map_err(|e| format!("invalid health check host `{host}`: {e}"))?;
        req.insert_header("User-Agent", "gatehouse-health-check")
            .map_err(|e| e.to_string())?;
        let make = |addr: Option<SocketAddr>| {
            let mut hc = HttpHealthCheck::new(host, false);
            hc.req = req.clone();
            if let Some(addr) = addr {
                // the template's address is replaced by the backend's for each probe
                hc.peer_template = transport.peer(addr);
            }
            hc.peer_template.options.connection_timeout = Some(timing.timeout);
            hc.peer_template.options.read_timeout = Some(timing.timeout);
            hc.peer_template.options.write_timeout = Some(timing.timeout);
            hc.validator = Some(Box::new(move |resp| {
                if resp.status.as_u16() == expect_status {
                    Ok(())
                } else {
                    pingora_error::Error::e_explain(
                        pingora_error::ErrorType::CustomCode(
                            "unexpected status",
                            resp.status.as_u16(),
                        ),
                        format!("expected {expect_status}"),
                    )
                }
            }));
            Arc::new(hc) as Arc<dyn HealthCheck + Send + Sync>
        };
        let probe = match transport {
            Transport::Plain => make(None),
            // one probe per backend: its peer carries the backend's server name
            _ => Arc::new(PerBackend(
                addrs.iter().map(|a| (*a, make(Some(*a)))).collect(),
            )),
        };
        Ok(HealthSpec { timing, probe })
    }

    /// A TCP connect probe.
    pub fn tcp(timing: HealthTiming) -> Self {
        let mut hc = TcpHealthCheck::new();
        hc.peer_template.options.connection_timeout = Some(timing.timeout);
        HealthSpec {
            timing,
            probe: Arc::from(hc as Box<dyn HealthCheck + Send + Sync>),
        }
    }
}

/// Probes chosen by the backend's address.
struct PerBackend(HashMap<SocketAddr, Arc<dyn HealthCheck + Send + Sync>>);

#[async_trait]
impl HealthCheck for PerBackend {
    async fn check(&self, target: &Backend) -> pingora_error::Result<()> {
        let probe = target.addr.as_inet().and_then(|a| self.0.get(a));
        match probe {
            Some(p) => p.check(target).await,
            None => pingora_error::Error::e_explain(
                pingora_error::ErrorType::InternalError,
                "no probe for this backend",
            ),
        }
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
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

/// Probes every backend of `group` once (in parallel) and applies the results. Logs flips.
async fn probe_group(group: &UpstreamGroup, spec: &HealthSpec) {
    let checks = group.backends.iter().map(|b| {
        let probe = Arc::clone(&spec.probe);
        let b = Arc::clone(b);
        async move {
            let target = match Backend::new(&b.addr.to_string()) {
                Ok(t) => t,
                Err(_) => return (b, Err("invalid backend address".to_string())),
            };
            let timeout = spec.timing.timeout;
            let r = match tokio::time::timeout(timeout, probe.check(&target)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            (b, r)
        }
    });
    let t = spec.timing;
    for (b, r) in futures::future::join_all(checks).await {
        match observe(&b, r.is_ok(), t.healthy_after, t.unhealthy_after) {
            Some(true) => info!("upstream {} backend {} is healthy", group.name, b.label),
            Some(false) => warn!(
                "upstream {} backend {} is unhealthy: {}",
                group.name,
                b.label,
                r.err().unwrap_or_default()
            ),
            None => {}
        }
    }
}

/// Probes every group in `groups` once (all in parallel) and exports the backends' health.
/// Used by reloads to warm up new groups before they serve.
pub async fn check_groups(groups: &[Arc<UpstreamGroup>], metrics: &Metrics) {
    probe_all(groups).await;
    export(groups, metrics);
}

async fn probe_all(groups: &[Arc<UpstreamGroup>]) {
    let rounds = groups
        .iter()
        .filter_map(|g| g.health.as_ref().map(|s| probe_group(g, s)));
    futures::future::join_all(rounds).await;
}

fn export(groups: &[Arc<UpstreamGroup>], metrics: &Metrics) {
    for g in groups {
        for b in &g.backends {
            metrics.set_backend_health(&g.name, &b.label, b.is_healthy());
        }
    }
}

type Groups = Box<dyn Fn() -> Vec<Arc<UpstreamGroup>> + Send + Sync>;

/// Runs the health checks of the serving groups at each group's interval. The first round
/// runs at once, then `ready` is called (`/ready`). It is handed what it needs: `groups` lists
/// the groups serving now (asked every tick, so reloads are followed).
pub struct HealthSupervisor {
    groups: Groups,
    ready: Box<dyn Fn() + Send + Sync>,
    metrics: Arc<Metrics>,
}

impl HealthSupervisor {
    /// A supervisor over the groups `groups` returns.
    pub fn new(
        groups: impl Fn() -> Vec<Arc<UpstreamGroup>> + Send + Sync + 'static,
        ready: impl Fn() + Send + Sync + 'static,
        metrics: Arc<Metrics>,
    ) -> Self {
        HealthSupervisor {
            groups: Box::new(groups),
            ready: Box::new(ready),
            metrics,
        }
    }

    /// Probes `groups`, then exports the health of those still serving (a reload may have
    /// removed a backend meanwhile: its series must not come back).
    async fn round(&self, groups: &[Arc<UpstreamGroup>]) {
        probe_all(groups).await;
        let serving = (self.groups)();
        let still: Vec<_> = groups
            .iter()
            .filter(|g| serving.iter().any(|s| Arc::ptr_eq(s, g)))
            .cloned()
            .collect();
        export(&still, &self.metrics);
    }
}

#[async_trait]
impl BackgroundService for HealthSupervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let groups = (self.groups)();
        self.round(&groups).await;
        (self.ready)();
        info!("first health check round done");

        // next due time per group, keyed by the group's address (a reload that rebuilds a
        // group gets a fresh entry and is probed at once)
        let mut due: HashMap<usize, Instant> = HashMap::new();
        let now = Instant::now();
        for g in &groups {
            if let Some(s) = &g.health {
                due.insert(Arc::as_ptr(g) as usize, now + s.timing.interval);
            }
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            let now = Instant::now();
            let mut live = HashMap::with_capacity(due.len());
            let mut to_probe = Vec::new();
            for g in (self.groups)() {
                let Some(spec) = &g.health else { continue };
                let key = Arc::as_ptr(&g) as usize;
                let next = due.get(&key).copied().unwrap_or(now);
                if next <= now {
                    live.insert(key, now + spec.timing.interval);
                    to_probe.push(g);
                } else {
                    live.insert(key, next);
                }
            }
            due = live;
            if !to_probe.is_empty() {
                self.round(&to_probe).await;
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
