//! The in-memory cache storage behind Pingora's cache phases.
//!
//! Objects live in sharded hash maps as immutable `Bytes` (a hit hands out a reference-counted
//! slice, no copy). A write is buffered by its miss handler and becomes visible only when it
//! finishes: a response whose upstream body breaks off is dropped with its handler and never
//! stored. Concurrent readers of a key being filled wait on Pingora's cache lock, not here.
//!
//! Memory is bounded by Pingora's LRU eviction manager (`src/proxy/cache.rs`), which is told
//! each object's weight (body + header) and asks the proxy to purge what falls out.
//!
//! The response header of an object is kept parsed: Pingora's serialized form is compressed
//! (zstd), and decompressing and parsing it on every hit cost more than the rest of the hit.
//! The storage keeps the byte total for `gatehouse_cache_size_bytes`, and an index from each
//! URL's primary key to its variants so an admin purge removes all of them.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora_cache::storage::{
    HandleHit, HandleMiss, MissFinishType, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta, HitHandler, MissHandler};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;

const SHARDS: usize = 16;

struct Object {
    meta: StoredMeta,
    body: Bytes,
}

impl Object {
    fn weight(&self) -> usize {
        self.body.len() + self.meta.internal.len() + self.meta.header_size
    }
}

/// An object's `CacheMeta`: the small internal part (times, variance) serialized, the
/// response header parsed.
struct StoredMeta {
    internal: Vec<u8>,
    header: ResponseHeader,
    /// What the parsed header holds in memory (estimated), for the object's weight.
    header_size: usize,
}

impl StoredMeta {
    fn new(meta: &CacheMeta) -> Result<Self> {
        let (internal, serialized) = meta.serialize()?;
        let header = meta.response_header_copy();
        let parsed: usize = header
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 64)
            .sum();
        Ok(StoredMeta {
            internal,
            header_size: serialized.len().max(parsed + 128),
            header,
        })
    }

    /// The `CacheMeta` for a hit: the internal part deserialized (with a minimal header, so
    /// nothing is decompressed), then the stored header cloned in.
    fn to_meta(&self) -> Result<CacheMeta> {
        let mut meta = CacheMeta::deserialize(&self.internal, minimal_header()?)?;
        *meta.response_header_mut() = self.header.clone();
        Ok(meta)
    }
}

/// The serialized form of a bare `200` header, made once.
fn minimal_header() -> Result<&'static [u8]> {
    static MINIMAL: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    MINIMAL
        .get_or_init(|| {
            let h = ResponseHeader::build(200, Some(0)).ok()?;
            let meta = CacheMeta::new(UNIX_EPOCH, UNIX_EPOCH, 0, 0, h);
            meta.serialize().ok().map(|(_, header)| header)
        })
        .as_deref()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache: minimal header"))
}

type Shard = RwLock<HashMap<HashBinary, Arc<Object>>>;

/// The storage. Created once at startup and leaked (`&'static`, as Pingora requires).
pub struct MemStore {
    shards: Vec<Shard>,
    /// primary key hash -> combined hashes of its stored variants
    variants: RwLock<HashMap<HashBinary, HashSet<HashBinary>>>,
    bytes: AtomicU64,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

fn lock_err<T>(_: T) -> Box<Error> {
    Error::new(ErrorType::InternalError)
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        MemStore {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            variants: RwLock::new(HashMap::new()),
            bytes: AtomicU64::new(0),
        }
    }

    fn shard(&self, combined: &HashBinary) -> &Shard {
        &self.shards[usize::from(combined[0]) % SHARDS]
    }

    /// Bytes held by stored objects (bodies and headers).
    pub fn size_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of stored objects.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, primary: HashBinary, combined: HashBinary, obj: Object) -> Result<usize> {
        let weight = obj.weight();
        let old = self
            .shard(&combined)
            .write()
            .map_err(lock_err)?
            .insert(combined, Arc::new(obj));
        self.bytes.fetch_add(weight as u64, Ordering::Relaxed);
        if let Some(old) = old {
            self.bytes.fetch_sub(old.weight() as u64, Ordering::Relaxed);
        }
        self.variants
            .write()
            .map_err(lock_err)?
            .entry(primary)
            .or_default()
            .insert(combined);
        Ok(weight)
    }

    fn remove(&self, primary: &HashBinary, combined: &HashBinary) -> bool {
        let removed = self
            .shard(combined)
            .write()
            .ok()
            .and_then(|mut m| m.remove(combined));
        if let Ok(mut v) = self.variants.write() {
            if let Some(set) = v.get_mut(primary) {
                set.remove(combined);
                if set.is_empty() {
                    v.remove(primary);
                }
            }
        }
        match removed {
            Some(obj) => {
                self.bytes.fetch_sub(obj.weight() as u64, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Removes every variant stored under `key`'s primary key; returns their compact keys (for
    /// the eviction manager) and how many went.
    pub fn purge_all_variants(&self, key: &CacheKey) -> Vec<CompactCacheKey> {
        let primary = key.primary_bin();
        let combined: Vec<HashBinary> = self
            .variants
            .read()
            .ok()
            .and_then(|v| v.get(&primary).map(|s| s.iter().copied().collect()))
            .unwrap_or_default();
        let mut out = Vec::new();
        for c in combined {
            if self.remove(&primary, &c) {
                let variance = (c != primary).then_some(c);
                out.push(CompactCacheKey {
                    primary,
                    variance: variance.map(Box::new),
                    user_tag: key.user_tag.clone().into_boxed_str(),
                });
            }
        }
        out
    }
}

impl MemStore {
    /// Removes every stored object; returns their compact keys (for the eviction manager).
    /// Cache keys carry no user tag in gatehouse.
    pub fn clear(&self) -> Vec<CompactCacheKey> {
        let all: Vec<(HashBinary, HashBinary)> = self
            .variants
            .read()
            .map(|v| {
                v.iter()
                    .flat_map(|(p, set)| set.iter().map(move |c| (*p, *c)))
                    .collect()
            })
            .unwrap_or_default();
        let mut out = Vec::with_capacity(all.len());
        for (primary, c) in all {
            if self.remove(&primary, &c) {
                out.push(CompactCacheKey {
                    primary,
                    variance: (c != primary).then(|| Box::new(c)),
                    user_tag: "".into(),
                });
            }
        }
        out
    }
}

struct Hit {
    body: Bytes,
    done: bool,
    start: usize,
    end: usize,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _s: &'static (dyn Storage + Sync),
        _k: &CacheKey,
        _t: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(ErrorType::InternalError, "seek start out of range");
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

struct Miss {
    store: &'static MemStore,
    primary: HashBinary,
    combined: HashBinary,
    meta: StoredMeta,
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let Miss {
            store,
            primary,
            combined,
            meta,
            body,
        } = *self;
        let weight = store.insert(
            primary,
            combined,
            Object {
                meta,
                body: body.freeze(),
            },
        )?;
        Ok(MissFinishType::Created(weight))
    }
}

#[async_trait]
impl Storage for MemStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _t: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let combined = key.combined_bin();
        let obj = self
            .shard(&combined)
            .read()
            .map_err(lock_err)?
            .get(&combined)
            .cloned();
        let Some(obj) = obj else { return Ok(None) };
        let meta = obj.meta.to_meta()?;
        let hit = Hit {
            end: obj.body.len(),
            body: obj.body.clone(),
            done: false,
            start: 0,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _t: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Miss {
            store: self,
            primary: key.primary_bin(),
            combined: key.combined_bin(),
            meta: StoredMeta::new(meta)?,
            body: BytesMut::new(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _ty: PurgeType,
        _t: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = target.key();
        let (primary, combined) = (key.primary_bin(), key.combined_bin());
        Ok(if self.remove(&primary, &combined) {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _t: &SpanHandle,
    ) -> Result<bool> {
        let combined = key.combined_bin();
        let meta = StoredMeta::new(meta)?;
        let mut shard = self.shard(&combined).write().map_err(lock_err)?;
        let Some(old) = shard.get(&combined).cloned() else {
            return Ok(false);
        };
        let new = Object {
            meta,
            body: old.body.clone(),
        };
        let (ow, nw) = (old.weight() as u64, new.weight() as u64);
        shard.insert(combined, Arc::new(new));
        self.bytes.fetch_add(nw, Ordering::Relaxed);
        self.bytes.fetch_sub(ow, Ordering::Relaxed);
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn stored_meta_round_trips_what_a_hit_needs() {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("Content-Type", "text/plain").unwrap();
        h.insert_header("X-Custom-Case", "v").unwrap();
        let created = SystemTime::now() - Duration::from_secs(30);
        let fresh = created + Duration::from_secs(60);
        let mut meta = CacheMeta::new(fresh, created, 10, 300, h);
        meta.set_variance([7u8; 16]);
        let stored = StoredMeta::new(&meta).unwrap();
        let back = stored.to_meta().unwrap();
        assert_eq!(back.created(), meta.created());
        assert_eq!(back.updated(), meta.updated());
        assert_eq!(back.fresh_until(), meta.fresh_until());
        assert_eq!(back.stale_while_revalidate_sec(), 10);
        assert_eq!(back.stale_if_error_sec(), 300);
        assert_eq!(back.variance(), meta.variance());
        assert_eq!(back.response_header().status.as_u16(), 200);
        assert_eq!(back.headers()["content-type"], "text/plain");
        // the header keeps its case on the wire
        let mut wire = Vec::new();
        back.response_header().header_to_h1_wire(&mut wire);
        assert!(String::from_utf8_lossy(&wire).contains("X-Custom-Case: v"));
        assert!(stored.header_size >= 128);
    }
}
