//! Where the keys come from, and keeping them fresh: configured keys never change; a JWKS file
//! is re-read when it changes; a JWKS URL is fetched every `jwks_refresh` and, on demand, when a
//! token names an unknown `kid` (at most once per cooldown). One background thread per plugin
//! instance does both, single-flight; it starts when the instance is published (never for an
//! instance of a rejected reload) and ends when the instance is dropped (after a reload).
//! A refresh that fails keeps the last good key set.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use log::{info, warn};

use super::keys::{parse_jwks, Key};

/// How often the watcher thread wakes up.
const POLL: Duration = Duration::from_millis(250);
/// Minimum time between two on-demand JWKS URL fetches.
pub const REFRESH_COOLDOWN: Duration = Duration::from_secs(30);

/// The keys in force, with a generation that changes whenever they do.
pub struct KeySnapshot {
    pub keys: Vec<Arc<Key>>,
    pub gen: u64,
}

/// The plugin's key store.
pub struct KeyStore {
    fixed: Vec<Arc<Key>>,
    current: ArcSwap<KeySnapshot>,
    refresh_wanted: AtomicBool,
    gen: AtomicU64,
}

impl KeyStore {
    /// A store with the configured keys and an initial JWKS set.
    pub fn new(fixed: Vec<Arc<Key>>, jwks: Vec<Arc<Key>>) -> Self {
        let mut keys = fixed.clone();
        keys.extend(jwks);
        KeyStore {
            fixed,
            current: ArcSwap::from_pointee(KeySnapshot { keys, gen: 1 }),
            refresh_wanted: AtomicBool::new(false),
            gen: AtomicU64::new(1),
        }
    }

    /// The keys in force.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<KeySnapshot>> {
        self.current.load()
    }

    /// Replaces the JWKS part of the key set.
    pub fn publish_jwks(&self, jwks: Vec<Key>) {
        let mut keys = self.fixed.clone();
        keys.extend(jwks.into_iter().map(Arc::new));
        let gen = self.gen.fetch_add(1, Ordering::Relaxed) + 1;
        self.current.store(Arc::new(KeySnapshot { keys, gen }));
    }

    /// Asks the watcher for an early JWKS URL fetch (a token named an unknown kid).
    pub fn request_refresh(&self) {
        self.refresh_wanted.store(true, Ordering::Relaxed);
    }
}

/// Fetches a JWKS document over HTTP(S).
pub fn fetch_jwks(url: &str, timeout: Duration) -> Result<Vec<Key>, String> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(true)
        .build()
        .new_agent();
    let mut resp = agent
        .get(url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .map_err(|e| format!("GET {url}: {e}"))?;
    parse_jwks(&body)
}

fn file_stamp(p: &PathBuf) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Starts the watcher thread for `store` (only when there is a file or URL to watch).
pub fn spawn_watcher(
    store: &Arc<KeyStore>,
    file: Option<PathBuf>,
    url: Option<String>,
    refresh: Duration,
) {
    if file.is_none() && url.is_none() {
        return;
    }
    let weak: Weak<KeyStore> = Arc::downgrade(store);
    let mut stamp = file.as_ref().and_then(file_stamp);
    let spawned = std::thread::Builder::new()
        .name("gatehouse-jwks".into())
        .spawn(move || {
            let mut next_fetch = Instant::now() + refresh;
            // the first on-demand refresh may happen at once
            let mut last_fetch = Instant::now()
                .checked_sub(REFRESH_COOLDOWN)
                .unwrap_or_else(Instant::now);
            loop {
                std::thread::sleep(POLL);
                let Some(store) = weak.upgrade() else { return };
                if let Some(path) = &file {
                    let now_stamp = file_stamp(path);
                    if now_stamp.is_some() && now_stamp != stamp {
                        match std::fs::read_to_string(path)
                            .map_err(|e| e.to_string())
                            .and_then(|t| parse_jwks(&t))
                        {
                            Ok(keys) => {
                                info!("jwks file {} reloaded: {} keys", path.display(), keys.len());
                                store.publish_jwks(keys);
                                stamp = now_stamp;
                            }
                            // maybe half written: try again at the next poll, keep the old keys
                            Err(e) => warn!(
                                "jwks file {}: {e}; keeping the previous keys",
                                path.display()
                            ),
                        }
                    }
                }
                if let Some(url) = &url {
                    let now = Instant::now();
                    let wanted = store.refresh_wanted.swap(false, Ordering::Relaxed)
                        && now.duration_since(last_fetch) >= REFRESH_COOLDOWN;
                    if wanted || now >= next_fetch {
                        last_fetch = now;
                        next_fetch = now + refresh;
                        match fetch_jwks(url, Duration::from_secs(5)) {
                            Ok(keys) => store.publish_jwks(keys),
                            Err(e) => warn!("jwks {url}: {e}; keeping the previous keys"),
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the jwks watcher: {e}");
    }
}
