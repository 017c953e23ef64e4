//! The background service that keeps ACME certificates: loads them from the state directory,
//! orders the missing and the due, installs them into the [`super::AcmeStore`] and keeps the
//! expiry metric, the log and `GET /acme` current.
//!
//! Schedule: a certificate is renewed `renew_before` before it expires (never more than a
//! third of its life before, so short-lived certificates are not renewed in a loop), minus a
//! jitter of up to a tenth of that window, so instances and certificates do not renew in
//! step. A failed order is retried after 1 min, doubling up to 6 h; the certificate in hand
//! keeps serving meanwhile. An operator can ask for a renewal now (`POST /acme/renew`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde_json::json;

use super::{store, AcmeSettings, Served};
use crate::metrics::Metrics;
use crate::state::{SharedState, Snapshot};
use crate::tls::certs::LoadedCert;

/// How often the service looks at its certificates without being woken.
const ROUND: Duration = Duration::from_secs(5);
/// How often the state directory is read for certificates another instance renewed.
const DISK_CHECK: Duration = Duration::from_secs(60);
/// A whole order (account, challenges, finalisation) gives up after this long.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
const FIRST_RETRY: i64 = 60;
const MAX_RETRY: i64 = 6 * 3600;

/// The service (one per process; idle without an `acme` section).
pub struct AcmeService {
    pub state: Arc<SharedState>,
    pub metrics: Arc<Metrics>,
}

/// One certificate the config asks for: its names (one order) and the listeners serving it.
struct Managed {
    names: Vec<String>,
    listeners: Vec<Arc<str>>,
    file: PathBuf,
    lock: PathBuf,
    served: Option<LoadedCert>,
    renew_at: i64,
    /// Seed of this certificate's jitter.
    seed: u64,
    failures: u32,
    next_try: i64,
    last_error: Option<String>,
    orders: u64,
    disk_checked: Option<Instant>,
}

/// The service's own state between rounds.
struct Manager {
    settings: Option<Arc<AcmeSettings>>,
    account: Option<instant_acme::Account>,
    certs: BTreeMap<String, Managed>,
    /// Certificates the config no longer asks for, serving the names they cover until the
    /// ones that replace them are in hand (a reload that adds a name to a list).
    retired: Vec<Managed>,
    /// (listener, certificate) series of the expiry gauge this service set.
    exported: HashSet<(String, String)>,
    metrics: Arc<Metrics>,
    jitter: ahash::RandomState,
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut m = Manager {
            settings: None,
            account: None,
            certs: BTreeMap::new(),
            retired: Vec::new(),
            exported: HashSet::new(),
            metrics: Arc::clone(&self.metrics),
            jitter: ahash::RandomState::new(),
        };
        // the first order waits for the gateway to be ready (listeners up, first health
        // round done): a CA validating HTTP-01 before the plain listener accepts would fail
        // the order and send it into backoff
        let ready = async {
            for _ in 0..100 {
                if self.state.is_ready() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ready => {}
        }
        loop {
            let snap = self.state.snapshot();
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = m.round(&snap) => {}
            }
            drop(snap);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = store().woken() => {}
                _ = tokio::time::sleep(ROUND) => {}
            }
        }
    }
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The certificates `snap` asks for: (id, names, listeners), one per distinct name list.
fn wanted(snap: &Snapshot, settings: &AcmeSettings) -> Vec<(String, Vec<String>, Vec<Arc<str>>)> {
    let mut out: Vec<(String, Vec<String>, Vec<Arc<str>>)> = Vec::new();
    for l in &snap.server.listeners {
        let Some(t) = &l.tls else { continue };
        if t.acme_names.is_empty() {
            continue;
        }
        let mut sorted = t.acme_names.clone();
        sorted.sort();
        let id = format!(
            "{}-{}",
            t.acme_names[0],
            &super::client::short_hash(&format!("{}\n{}", settings.directory, sorted.join(",")))
                [..8]
        );
        match out.iter_mut().find(|(i, _, _)| *i == id) {
            Some((_, _, ls)) => ls.push(Arc::clone(&l.label)),
            None => out.push((id, t.acme_names.clone(), vec![Arc::clone(&l.label)])),
        }
    }
    out
}

/// When a certificate valid from `not_before` to `not_after` is due for renewal.
pub(crate) fn renew_at(not_before: i64, not_after: i64, renew_before: Duration, seed: u64) -> i64 {
    let life = (not_after - not_before).max(3);
    let before = i64::try_from(renew_before.as_secs()).unwrap_or(i64::MAX);
    let window = before.min(life / 3);
    let jitter = i64::try_from(seed % (u64::try_from(window / 10).unwrap_or(0) + 1)).unwrap_or(0);
    not_after - window - jitter
}

fn backoff(failures: u32) -> i64 {
    let exp = failures.saturating_sub(1).min(20);
    FIRST_RETRY.saturating_mul(1_i64 << exp).min(MAX_RETRY)
}

impl Manager {
    /// One look at every certificate: load, order what is due, publish.
    async fn round(&mut self, snap: &Snapshot) {
        let settings = snap.acme.clone();
        if settings != self.settings {
            // another CA, another account and other certificates
            self.account = None;
            // what they serve goes on serving until the new CA's certificates are in hand
            let old = std::mem::take(&mut self.certs);
            self.retired
                .extend(old.into_values().filter(|m| m.served.is_some()));
            if let Some(s) = &settings {
                prepare_dir(&s.state_dir);
            }
            store().set_shared_dir(settings.as_ref().map(|s| s.state_dir.clone()));
            self.settings = settings.clone();
        }
        let Some(settings) = settings else {
            if !self.exported.is_empty() {
                self.publish();
            }
            return;
        };
        let wanted = wanted(snap, &settings);
        let gone: Vec<String> = (self.certs.keys())
            .filter(|id| !wanted.iter().any(|(w, _, _)| w == *id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(m) = self.certs.remove(&id) {
                if m.served.is_some() {
                    self.retired.push(m);
                }
            }
        }
        for (id, names, listeners) in wanted {
            let m = self.certs.entry(id.clone()).or_insert_with(|| Managed {
                file: settings
                    .state_dir
                    .join("certificates")
                    .join(format!("{id}.pem")),
                lock: settings.state_dir.join("locks").join(format!("{id}.lock")),
                seed: self.jitter.hash_one(&id),
                names,
                listeners: Vec::new(),
                served: None,
                renew_at: 0,
                failures: 0,
                next_try: 0,
                last_error: None,
                orders: 0,
                disk_checked: None,
            });
            m.listeners = listeners;
        }
        // asked for until now; what is asked for during this round waits for the next
        let asked = store().take_forced();
        let ids: Vec<String> = self.certs.keys().cloned().collect();
        for id in ids {
            let Some(m) = self.certs.get_mut(&id) else {
                continue;
            };
            // a certificate found on disk serves at once, before any order of this round
            if m.disk_checked.is_none_or(|t| t.elapsed() >= DISK_CHECK)
                && load_from_disk(m, &settings)
            {
                self.publish();
            }
            let Some(m) = self.certs.get_mut(&id) else {
                continue;
            };
            let forced = asked.contains("*") || m.names.iter().any(|n| asked.contains(n));
            let now = now_unix();
            let due = m.served.is_none() || now >= m.renew_at;
            if forced || (due && now >= m.next_try) {
                let account = &mut self.account;
                let metrics = &self.metrics;
                renew(m, &settings, account, metrics, forced).await;
                self.publish();
            }
        }
        self.publish();
    }

    /// The store's certificates, the expiry gauge and the report, from `self.certs` (after
    /// every change, so a certificate serves the moment it is in hand).
    fn publish(&mut self) {
        let mut by_name = HashMap::new();
        let mut series = HashSet::new();
        let mut report = Vec::new();
        // retired certificates serve names still listed until every certificate is in hand
        let listed: HashSet<&String> = self.certs.values().flat_map(|m| &m.names).collect();
        if self.certs.values().all(|m| m.served.is_some()) {
            self.retired.clear();
        }
        self.retired
            .retain(|r| r.names.iter().any(|n| listed.contains(n)));
        for r in &self.retired {
            if let Some(c) = &r.served {
                for n in r.names.iter().filter(|n| listed.contains(n)) {
                    by_name.insert(
                        n.clone(),
                        Served {
                            key: Arc::clone(&c.key),
                            not_after: c.not_after,
                        },
                    );
                }
            }
        }
        for (id, m) in &self.certs {
            if let Some(c) = &m.served {
                for n in &m.names {
                    by_name.insert(
                        n.clone(),
                        Served {
                            key: Arc::clone(&c.key),
                            not_after: c.not_after,
                        },
                    );
                }
                let first = m.names.first().map_or("", String::as_str);
                for l in &m.listeners {
                    series.insert((l.to_string(), first.to_string()));
                    self.metrics
                        .tls
                        .expiry
                        .with_label_values(&[&**l, first])
                        .set(c.not_after as f64);
                }
            }
            report.push(json!({
                "id": id,
                "names": m.names,
                "listeners": m.listeners.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                "not_before": m.served.as_ref().map(|c| c.not_before),
                "not_after": m.served.as_ref().map(|c| c.not_after),
                "fingerprint": m.served.as_ref().map(|c| leaf_fingerprint(&c.key)),
                "renew_at": m.served.as_ref().map(|_| m.renew_at),
                "orders": m.orders,
                "failures": m.failures,
                "next_try": (m.failures > 0).then_some(m.next_try),
                "last_error": m.last_error,
                "file": m.file.display().to_string(),
            }));
        }
        for (l, n) in self.exported.difference(&series) {
            let _ = self.metrics.tls.expiry.remove_label_values(&[l, n]);
        }
        self.exported = series;
        store().install(by_name);
        store().set_report(json!({
            "directory": self.settings.as_ref().map(|s| s.directory.clone()),
            "certificates": report,
        }));
    }
}

/// SHA-256 of the leaf, lowercase hex.
fn leaf_fingerprint(key: &rustls::sign::CertifiedKey) -> String {
    use sha2::Digest;
    key.cert.first().map_or_else(String::new, |c| {
        sha2::Sha256::digest(c.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

/// Makes the state directory (owner-only) and its subdirectories; logs what fails (the
/// order that needs them reports it again).
fn prepare_dir(dir: &Path) {
    for sub in ["", "accounts", "certificates", "locks", "challenges"] {
        let d = dir.join(sub);
        if d.is_dir() {
            continue;
        }
        match std::fs::create_dir_all(&d) {
            Ok(()) => {
                let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
            }
            Err(e) => log::error!("acme: cannot create `{}`: {e}", d.display()),
        }
    }
}

/// Reads `m.file` and serves it when it differs from what `m` serves, covers its names and
/// has not expired (a certificate renewed by another instance, or the one kept across a
/// restart). True when it installed one.
fn load_from_disk(m: &mut Managed, settings: &AcmeSettings) -> bool {
    m.disk_checked = Some(Instant::now());
    let bytes = match std::fs::read(&m.file) {
        Ok(b) => b,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("acme: cannot read `{}`: {e}", m.file.display());
            }
            return false;
        }
    };
    let name = m.file.display().to_string();
    let loaded = match crate::tls::certs::from_pem(&bytes, &bytes, now_unix(), &name, &name) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("acme: not serving the stored certificate: {e}");
            return false;
        }
    };
    if m.served.as_ref().is_some_and(|s| s.digest == loaded.digest) {
        return false;
    }
    if let Some(missing) = m.names.iter().find(|n| !loaded.names.contains(n)) {
        log::info!(
            "acme: `{}` does not cover {missing}; a new certificate is due",
            m.file.display()
        );
        return false;
    }
    if m.served
        .as_ref()
        .is_some_and(|s| s.not_after > loaded.not_after)
    {
        return false;
    }
    install(m, loaded, settings);
    log::info!(
        "acme: serving the certificate for {} from `{}`",
        m.names.join(", "),
        m.file.display()
    );
    true
}

fn install(m: &mut Managed, c: LoadedCert, settings: &AcmeSettings) {
    m.renew_at = renew_at(c.not_before, c.not_after, settings.renew_before, m.seed);
    m.served = Some(c);
    m.failures = 0;
    m.next_try = 0;
}

/// Orders a new certificate for `m` (under its lock file) and installs it; on failure keeps
/// what `m` serves and schedules the next try.
async fn renew(
    m: &mut Managed,
    settings: &AcmeSettings,
    account: &mut Option<instant_acme::Account>,
    metrics: &Metrics,
    forced: bool,
) {
    let lock = match try_lock(&m.lock) {
        Ok(Some(l)) => l,
        Ok(None) => {
            // another instance orders it; its result is read from the directory
            log::info!(
                "acme: another instance is ordering the certificate for {}",
                m.names.join(", ")
            );
            m.disk_checked = None;
            return;
        }
        Err(e) => {
            fail(m, metrics, format!("lock `{}`: {e}", m.lock.display()));
            return;
        }
    };
    // another instance may have renewed it while this one was not looking
    if load_from_disk(m, settings) && !forced && now_unix() < m.renew_at {
        return;
    }
    log::info!(
        "acme: ordering a certificate for {} from {}{}",
        m.names.join(", "),
        settings.directory,
        if forced { " (renewal asked for)" } else { "" }
    );
    m.orders += 1;
    let result = tokio::time::timeout(ORDER_TIMEOUT, async {
        if account.is_none() {
            *account = Some(super::client::account(settings).await?);
        }
        match account {
            Some(a) => super::client::order(settings, a, &m.names).await,
            None => Err("no account".to_string()),
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no certificate within {ORDER_TIMEOUT:?}")));
    let issued = match result {
        Ok(i) => i,
        Err(e) => {
            if e.contains("accountDoesNotExist") {
                // the CA forgot the account (a reset test CA): the next try makes a new one
                *account = None;
                let _ = std::fs::remove_file(super::client::account_file(settings));
            }
            fail(m, metrics, e);
            drop(lock);
            return;
        }
    };
    let pem = format!("{}{}", issued.chain_pem, issued.key_pem);
    let name = m.file.display().to_string();
    let loaded =
        match crate::tls::certs::from_pem(pem.as_bytes(), pem.as_bytes(), now_unix(), &name, &name)
        {
            Ok(c) => c,
            Err(e) => {
                fail(
                    m,
                    metrics,
                    format!("the issued certificate is unusable: {e}"),
                );
                return;
            }
        };
    if let Err(e) = write_private(&m.file, pem.as_bytes()) {
        // served anyway; a restart orders again
        log::error!("acme: cannot keep `{}`: {e}", m.file.display());
    }
    drop(lock);
    log::info!(
        "acme: certificate for {} issued, expires {}; served from now on",
        m.names.join(", "),
        x509_parser::time::ASN1Time::from_timestamp(loaded.not_after)
            .map_or_else(|_| loaded.not_after.to_string(), |t| t.to_string())
    );
    install(m, loaded, settings);
    m.last_error = None;
    metrics.tls.acme_orders.with_label_values(&["ok"]).inc();
}

fn fail(m: &mut Managed, metrics: &Metrics, e: String) {
    m.failures = m.failures.saturating_add(1);
    let wait = backoff(m.failures);
    m.next_try = now_unix() + wait;
    log::error!(
        "acme: no certificate for {} (try {}; next in {wait} s): {e}",
        m.names.join(", "),
        m.failures
    );
    m.last_error = Some(e);
    metrics.tls.acme_orders.with_label_values(&["error"]).inc();
}

/// Writes `bytes` to `path` readable by the owner only, whole or not at all (a temporary
/// file renamed over it).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Writes `bytes` to `path` (world-readable: an HTTP-01 answer is public) by rename.
pub(crate) fn write_public(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_private(path, bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

/// An exclusive lock on a file, held until dropped (released by the kernel if the process
/// dies).
pub(crate) struct FileLock(#[allow(dead_code)] std::fs::File);

/// The lock at `path`, or `None` when another process holds it.
pub(crate) fn try_lock(path: &Path) -> std::io::Result<Option<FileLock>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(Some(FileLock(f)));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// The lock at `path`, waiting for it up to `max`.
pub(crate) async fn lock_wait(path: &Path, max: Duration) -> Result<FileLock, String> {
    let deadline = Instant::now() + max;
    loop {
        match try_lock(path) {
            Ok(Some(l)) => return Ok(l),
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(None) => return Err(format!("`{}` stayed locked for {max:?}", path.display())),
            Err(e) => return Err(format!("lock `{}`: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_before_expiry_by_the_window_and_never_loops() {
        let day = 86_400;
        // 90-day certificate, renew 30 days before: at day 60, minus up to 3 days of jitter
        for seed in [0, 1, 12345, u64::MAX] {
            let at = renew_at(0, 90 * day, Duration::from_secs(30 * day as u64), seed);
            assert!(at <= 60 * day && at >= 57 * day, "{at}");
        }
        // 6-day certificate with the same setting: a third of its life, not before it began
        let at = renew_at(0, 6 * day, Duration::from_secs(30 * day as u64), 0);
        assert_eq!(at, 4 * day);
    }

    #[test]
    fn retries_back_off_to_a_ceiling() {
        assert_eq!(backoff(1), 60);
        assert_eq!(backoff(2), 120);
        assert_eq!(backoff(5), 960);
        assert_eq!(backoff(40), MAX_RETRY);
    }

    #[test]
    fn the_lock_is_exclusive_between_holders_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("locks").join("x.lock");
        let a = try_lock(&p).unwrap();
        assert!(a.is_some());
        // flock locks belong to the open file description: a second open is another holder
        assert!(try_lock(&p).unwrap().is_none());
        drop(a);
        assert!(try_lock(&p).unwrap().is_some());
    }

    #[test]
    fn private_files_are_owner_only_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c").join("k.pem");
        write_private(&p, b"secret").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"secret");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
