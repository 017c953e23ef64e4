//! Config reloads: trigger (file change, SIGHUP, `POST /reload`) -> load -> compile against the
//! running snapshot (reusing the state of everything unchanged) -> warm up (health-check new
//! upstream groups) -> publish with one atomic swap.
//!
//! Any error keeps the running snapshot, is logged with its YAML path and counted in
//! `gatehouse_config_reloads_total{trigger,result="error"}`. One reload runs at a time.
//! Requests in flight finish on the snapshot they started with. Settings bound at startup
//! (listeners, threads, access log target, upgrade socket, grace period, read buffer, work
//! stealing, latency buckets, cache lock timeout: see `restart_required`) cannot change live:
//! such a change is logged as "restart required" and counted, and the rest is applied.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gatehouse_plugins::Registry;
use log::{error, info, warn};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::config::raw::RawServer;
use crate::config::{self, ConfigErrors};
use crate::metrics::Metrics;
use crate::proxy::cache::CacheRuntime;
use crate::state::{SharedState, Snapshot};
use crate::upstream::health;

/// How long the config file must be quiet before a change is loaded (editors and deploy
/// tools write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// How often the set of watched files is compared with the serving config's.
const WATCH_REFRESH: Duration = Duration::from_secs(2);

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// A new snapshot is serving.
    Applied {
        version: u64,
        restart_required: Vec<&'static str>,
    },
    /// The file did not change; nothing was done.
    Unchanged { version: u64 },
    /// The file is invalid; the running config stays.
    Failed(ConfigErrors),
}

/// Performs reloads. Shared by the admin listener and the reload service.
pub struct Reloader {
    path: PathBuf,
    registry: Registry,
    metrics: Arc<Metrics>,
    state: Arc<SharedState>,
    cache: CacheRuntime,
    /// the server settings the process started with
    started: RawServer,
    started_admin: String,
    lock: tokio::sync::Mutex<()>,
    /// The last reload that did something (applied or failed), for the status page.
    last: std::sync::Mutex<Option<LastReload>>,
}

/// A reload as the status page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastReload {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub trigger: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
    /// The version serving afterwards.
    pub version: u64,
    /// The errors (with their YAML paths) when it failed.
    pub error: Option<String>,
}

/// Settings that only take effect at startup that differ between `a` and `b`.
fn restart_required(a: &RawServer, a_admin: &str, b: &Snapshot) -> Vec<&'static str> {
    let s = &b.raw.server;
    [
        // addresses only: a listener's TLS settings (certificates too) apply live
        (
            !a.listen
                .iter()
                .map(|l| l.addr())
                .eq(s.listen.iter().map(|l| l.addr())),
            "server.listen",
        ),
        (a.threads != s.threads, "server.threads"),
        (a.access_log != s.access_log, "server.access_log"),
        (a.upgrade_sock != s.upgrade_sock, "server.upgrade_sock"),
        (a.grace_period != s.grace_period, "server.grace_period"),
        (a.read_buffer != s.read_buffer, "server.read_buffer"),
        (a.work_stealing != s.work_stealing, "server.work_stealing"),
        (
            a.latency_buckets != s.latency_buckets,
            "server.latency_buckets",
        ),
        (
            a.cache.lock_timeout != s.cache.lock_timeout,
            "server.cache.lock_timeout",
        ),
        (a.cache.disk != s.cache.disk, "server.cache.disk"),
        (a_admin != b.raw.admin.listen, "admin.listen"),
    ]
    .into_iter()
    .filter_map(|(changed, key)| changed.then_some(key))
    .collect()
}

impl Reloader {
    /// A reloader for the config at `path`, serving `state`.
    pub fn new(
        path: &Path,
        registry: Registry,
        metrics: Arc<Metrics>,
        state: Arc<SharedState>,
        cache: CacheRuntime,
    ) -> Self {
        let snap = state.snapshot();
        Reloader {
            path: path.to_path_buf(),
            registry,
            metrics,
            cache,
            started: snap.raw.server.clone(),
            started_admin: snap.raw.admin.listen.clone(),
            state,
            lock: tokio::sync::Mutex::new(()),
            last: std::sync::Mutex::new(None),
        }
    }

    /// The last reload that was applied or failed (`None`: none since start).
    pub fn last(&self) -> Option<LastReload> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    fn note(&self, trigger: &'static str, result: &'static str, error: Option<String>) {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if let Ok(mut l) = self.last.lock() {
            *l = Some(LastReload {
                at_ms,
                trigger,
                result,
                version: self.state.snapshot().version,
                error,
            });
        }
    }

    /// The config file being served.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the file and, when it is valid and different, publishes it. Never panics; an
    /// invalid file changes nothing.
    pub async fn reload(&self, trigger: &'static str) -> ReloadOutcome {
        let _one_at_a_time = self.lock.lock().await;
        let prev = self.state.snapshot();
        let (path, registry, metrics, base) = (
            self.path.clone(),
            self.registry.clone(),
            Arc::clone(&self.metrics),
            Arc::clone(&prev),
        );
        // file IO, DNS and JWKS fetches: off the async workers
        let compiled = tokio::task::spawn_blocking(move || {
            config::load(&path, &registry, &metrics, Some(&base))
        })
        .await;
        let snap = match compiled {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.failed(trigger, e),
            Err(join) => {
                let e = ConfigErrors {
                    file: self.path.display().to_string(),
                    errors: vec![crate::config::ConfigError::new(
                        "",
                        format!("the reload task failed: {join}"),
                    )],
                };
                return self.failed(trigger, e);
            }
        };
        // unchanged: the same YAML, the same certificates, and no plugin rebuilt because a
        // file it was built from changed (e.g. WAF rules)
        let same_plugins = snap.plugins.len() == prev.plugins.len()
            && snap.plugins.iter().all(|(k, p)| {
                prev.plugins
                    .get(k)
                    .is_some_and(|q| Arc::ptr_eq(&p.plugin, &q.plugin))
            });
        if snap.source_hash == prev.source_hash
            && snap.server.tls_digest() == prev.server.tls_digest()
            && same_plugins
        {
            self.metrics
                .config
                .reloads
                .with_label_values(&[trigger, "unchanged"])
                .inc();
            return ReloadOutcome::Unchanged {
                version: prev.version,
            };
        }
        // warm up: groups that are new in this snapshot are checked before they serve
        let new_groups: Vec<_> = snap
            .upstreams
            .values()
            .filter(|g| !prev.upstreams.values().any(|p| Arc::ptr_eq(p, g)))
            .cloned()
            .collect();
        health::check_groups(&new_groups, &self.metrics).await;
        let restart = restart_required(&self.started, &self.started_admin, &snap);
        if !restart.is_empty() {
            warn!(
                "config {}: {} changed: restart required (the rest is applied)",
                self.path.display(),
                restart.join(", ")
            );
            self.metrics.config.restart_required.inc();
        }
        let version = snap.version;
        publish(&self.state, &self.metrics, &self.cache, snap);
        self.metrics.config.applied(trigger, version);
        info!(
            "config {} reloaded ({trigger}): version {version}",
            self.path.display()
        );
        self.note(trigger, "ok", None);
        ReloadOutcome::Applied {
            version,
            restart_required: restart,
        }
    }

    fn failed(&self, trigger: &'static str, e: ConfigErrors) -> ReloadOutcome {
        error!(
            "config reload ({trigger}) rejected, keeping version {}: {e}",
            self.state.snapshot().version
        );
        self.metrics
            .config
            .reloads
            .with_label_values(&[trigger, "error"])
            .inc();
        self.note(trigger, "error", Some(e.to_string()));
        ReloadOutcome::Failed(e)
    }
}

/// Makes `next` the serving snapshot. What must outlive a compile is installed here, never
/// while compiling: the cache's size bound, and the metric series of what `next` serves
/// (backend health and breaker state from the start, upstream error counters) while the
/// series of backends, breakers, upstreams and routes that left go with them. Then one
/// atomic swap.
pub(crate) fn publish(
    state: &SharedState,
    metrics: &Metrics,
    cache: &CacheRuntime,
    next: Snapshot,
) {
    let prev = state.snapshot();
    let c = &next.raw.server.cache;
    cache.set_limits(
        usize::try_from(c.max_size.0).unwrap_or(usize::MAX),
        usize::try_from(c.memory_max_object()).unwrap_or(usize::MAX),
    );
    sync_series(metrics, Some(&prev), &next);
    start_plugins(Some(&prev), &next);
    state.publish(next);
    // the ACME service looks at the new listeners' names now
    crate::acme::store().wake();
}

/// Tells the plugin instances that are new in `next` that they serve from now on (they start
/// their background work); instances reused from `prev` were told when they first served.
/// Starts `next`'s Redis link.
pub(crate) fn start_plugins(prev: Option<&Snapshot>, next: &Snapshot) {
    // the shared Redis link too (once; a kept link is running already)
    if let Some(link) = &next.redis {
        link.start();
    }
    let id = |p: &gatehouse_plugins::PluginInstance| Arc::as_ptr(&p.plugin).cast::<()>() as usize;
    let known: HashSet<usize> =
        prev.map_or_else(HashSet::new, |prev| prev.plugins.values().map(id).collect());
    for p in next.plugins.values().filter(|p| !known.contains(&id(p))) {
        p.published();
    }
}

/// Brings the labelled series in line with `next` (and away from what of `prev` left).
pub(crate) fn sync_series(metrics: &Metrics, prev: Option<&Snapshot>, next: &Snapshot) {
    // (upstream, backend) -> whether it has a breaker in `next`
    let mut now: HashMap<(&str, &str), bool> = HashMap::new();
    for g in next.upstreams.values() {
        metrics.add_upstream(&g.name);
        for b in &g.backends {
            metrics.set_backend_health(&g.name, &b.label, b.is_healthy());
            match &b.breaker {
                Some(br) => metrics.set_breaker_state(&g.name, &b.label, br.state() as i64),
                None => metrics.remove_breaker(&g.name, &b.label),
            }
            now.insert((&g.name, &b.label), b.breaker.is_some());
        }
    }
    let tls_now = tls_series(&next.server);
    for (listener, names) in &tls_now {
        for (name, not_after) in names {
            metrics
                .tls
                .expiry
                .with_label_values(&[listener.as_str(), name.as_str()])
                .set(*not_after as f64);
        }
        for result in crate::metrics::HANDSHAKE_RESULTS {
            metrics
                .tls
                .handshakes
                .with_label_values(&[listener.as_str(), result]);
        }
        for v in crate::metrics::TLS_VERSIONS {
            for p in crate::metrics::TLS_PROTOCOLS {
                metrics
                    .tls
                    .sessions
                    .with_label_values(&[listener.as_str(), v, p]);
            }
        }
    }
    let Some(prev) = prev else { return };
    for (listener, names) in tls_series(&prev.server) {
        let kept = tls_now.iter().find(|(l, _)| *l == listener);
        for (name, _) in &names {
            if !kept.is_some_and(|(_, n)| n.iter().any(|(m, _)| m == name)) {
                let _ = metrics
                    .tls
                    .expiry
                    .remove_label_values(&[listener.as_str(), name.as_str()]);
            }
        }
        if kept.is_none() {
            for result in crate::metrics::HANDSHAKE_RESULTS {
                let _ = metrics
                    .tls
                    .handshakes
                    .remove_label_values(&[listener.as_str(), result]);
            }
            for v in crate::metrics::TLS_VERSIONS {
                for p in crate::metrics::TLS_PROTOCOLS {
                    let _ = metrics
                        .tls
                        .sessions
                        .remove_label_values(&[listener.as_str(), v, p]);
                }
            }
        }
    }
    for g in prev.upstreams.values() {
        if !next.upstreams.contains_key(&*g.name) {
            metrics.remove_upstream(&g.name);
        }
        for b in &g.backends {
            if !now.contains_key(&(&*g.name, &*b.label)) {
                metrics.remove_backend(&g.name, &b.label);
            }
        }
    }
    let ids: HashSet<&str> = next.routes.iter().map(|r| &*r.id).collect();
    for r in prev.routes.iter().filter(|r| !ids.contains(&*r.id)) {
        r.metrics.remove(metrics);
    }
}

/// (listener address, [(certificate name, expiry)]) of every HTTPS listener.
fn tls_series(server: &crate::state::ServerSettings) -> Vec<(String, Vec<(String, i64)>)> {
    (server.listeners.iter())
        .filter_map(|l| Some((l.label.to_string(), l.tls.as_ref()?.expiries.clone())))
        .collect()
}

/// Watches the config file and SIGHUP, and reloads on either.
pub struct ReloadService {
    pub reloader: Arc<Reloader>,
    pub watch_file: bool,
}

/// A file to watch, as (its directory made absolute, its name): editors and deploy tools
/// replace files by rename, so the directory is watched and events are matched by name.
fn watch_key(path: &Path) -> Option<(PathBuf, std::ffi::OsString)> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    Some((
        std::fs::canonicalize(dir).ok()?,
        path.file_name()?.to_os_string(),
    ))
}

/// Starts watching `files` (the config file and the certificate files it names) and sends a
/// unit on `tx` for every event that touches one of them.
fn watch(
    files: &[PathBuf],
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let keys: HashSet<(PathBuf, std::ffi::OsString)> =
        files.iter().filter_map(|f| watch_key(f)).collect();
    let dirs: HashSet<PathBuf> = keys.iter().map(|(d, _)| d.clone()).collect();
    // event paths are the watched (absolute) directory joined with the file's name
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let hit = ev.paths.is_empty()
                || ev.paths.iter().any(|p| {
                    p.parent()
                        .zip(p.file_name())
                        .is_some_and(|(d, n)| keys.contains(&(d.to_path_buf(), n.to_os_string())))
                });
            if hit && !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
    })?;
    for d in &dirs {
        w.watch(d, notify::RecursiveMode::NonRecursive)?;
    }
    Ok(w)
}

impl ReloadService {
    /// The files whose change triggers a reload: the config, its certificate files and the
    /// files plugins were built from (Lua scripts, key files, WAF rules).
    fn files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.reloader.path().to_path_buf()];
        let snap = self.reloader.state.snapshot();
        v.extend(snap.server.tls_files());
        v.extend(snap.plugin_files());
        v
    }

    /// A watcher over `files` (none when watching is off or fails; reloads then need SIGHUP
    /// or `POST /reload`).
    fn watcher(
        &self,
        files: &[PathBuf],
        tx: &tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Option<notify::RecommendedWatcher> {
        if !self.watch_file {
            return None;
        }
        watch(files, tx.clone())
            .map_err(|e| warn!("cannot watch {files:?}: {e}; reload with SIGHUP or POST /reload"))
            .ok()
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut files = self.files();
        let mut watcher = self.watcher(&files, &tx);
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    self.reloader.reload("signal").await;
                }
                Some(()) = rx.recv() => {
                    // let the writer finish: wait until the file has been quiet for DEBOUNCE
                    while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                    self.reloader.reload("file").await;
                }
                // a reload (from any trigger) may name other certificate or plugin files
                _ = tokio::time::sleep(WATCH_REFRESH) => {}
            }
            let now = self.files();
            if now != files {
                drop(watcher.take());
                watcher = self.watcher(&now, &tx);
                files = now;
            }
        }
    }
}
