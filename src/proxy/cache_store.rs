//! The cache storage behind Pingora's cache phases: a memory tier and, when configured, a disk
//! tier below it (`cache_disk.rs`).
//!
//! Lookups go memory, then disk. A disk hit small enough for memory (`server.cache
//! .max_object_size`) is read whole, checked and promoted to memory; a larger one streams from
//! its file chunk by chunk. A miss is buffered in memory while it fits there; once it grows
//! past that, it streams to a disk file instead. Objects the memory LRU evicts are written to
//! disk by the disk tier's own thread (demotion), unless the disk already holds them. The
//! tiers are inclusive: a promoted object keeps its file, and a newer version stored in
//! memory deletes the older file. Both LRUs are managed here (Pingora gets no eviction
//! manager), so a disk hit never counts against the memory bound.
//!
//! # Memory tier
//!
//! Objects live in sharded hash maps as immutable `Bytes` (a hit hands out a reference-counted
//! slice, no copy). A write is buffered by its miss handler and becomes visible only when it
//! finishes: a response whose upstream body breaks off is dropped with its handler and never
//! stored. Concurrent readers of a key being filled wait on Pingora's cache lock, not here.
//!
//! Memory is bounded by an LRU (`pingora-lru`) told each object's weight (body + header).
//!
//! The response header of an object is kept parsed: Pingora's serialized form is compressed
//! (zstd), and decompressing and parsing it on every hit cost more than the rest of the hit.
//! The storage keeps the byte total for `gatehouse_cache_size_bytes`, and an index from each
//! URL's primary key to its variants so an admin purge removes all of them.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::storage::{
    HandleHit, HandleMiss, MissFinishType, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta, HitHandler, MissHandler};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_lru::Lru;

use super::cache_disk::{
    header_wire, lru_key, would_block, DiskObject, DiskTier, DiskWriter, Found, ReadError, Wait,
};

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
        meta_with_header(&self.internal, self.header.clone())
    }
}

/// A `CacheMeta` from Pingora's serialized internal part and a parsed response header.
pub(super) fn meta_with_header(internal: &[u8], header: ResponseHeader) -> Result<CacheMeta> {
    let mut meta = CacheMeta::deserialize(internal, minimal_header()?)?;
    *meta.response_header_mut() = header;
    Ok(meta)
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

/// The memory tier's objects.
struct MemStore {
    shards: Vec<Shard>,
    /// primary key hash -> combined hashes of its stored variants
    variants: RwLock<HashMap<HashBinary, HashSet<HashBinary>>>,
    bytes: AtomicU64,
}

fn lock_err<T>(_: T) -> Box<Error> {
    Error::new(ErrorType::InternalError)
}

impl MemStore {
    fn new() -> Self {
        MemStore {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            variants: RwLock::new(HashMap::new()),
            bytes: AtomicU64::new(0),
        }
    }

    fn shard(&self, combined: &HashBinary) -> &Shard {
        &self.shards[usize::from(combined[0]) % SHARDS]
    }

    fn get(&self, combined: &HashBinary) -> Result<Option<Arc<Object>>> {
        Ok(self
            .shard(combined)
            .read()
            .map_err(lock_err)?
            .get(combined)
            .cloned())
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

    fn remove(&self, primary: &HashBinary, combined: &HashBinary) -> Option<Arc<Object>> {
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
        if let Some(obj) = &removed {
            self.bytes.fetch_sub(obj.weight() as u64, Ordering::Relaxed);
        }
        removed
    }

    fn variants_of(&self, primary: &HashBinary) -> Vec<HashBinary> {
        self.variants
            .read()
            .ok()
            .and_then(|v| v.get(primary).map(|s| s.iter().copied().collect()))
            .unwrap_or_default()
    }

    fn all(&self) -> Vec<(HashBinary, HashBinary)> {
        self.variants
            .read()
            .map(|v| {
                v.iter()
                    .flat_map(|(p, set)| set.iter().map(move |c| (*p, *c)))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

/// Which tier served a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Disk,
}

impl Tier {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
        }
    }
}

/// The tier a hit handler reads from.
pub fn hit_tier(h: &HitHandler) -> Tier {
    let any = h.as_any();
    if any.is::<DiskHit>() {
        return Tier::Disk;
    }
    any.downcast_ref::<Hit>().map_or(Tier::Memory, |h| h.tier)
}

/// Counters of the memory tier, read by the metrics at scrape time.
#[derive(Default)]
pub struct MemStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
}

/// What an LRU entry names.
#[derive(Clone, Copy)]
struct Entry {
    primary: HashBinary,
    combined: HashBinary,
}

/// The storage. Created once at startup and leaked (`&'static`, as Pingora requires).
pub struct TieredStore {
    mem: MemStore,
    lru: Lru<Entry, SHARDS>,
    /// Largest object (body + header) the memory tier holds.
    mem_max_object: AtomicUsize,
    disk: Option<&'static DiskTier>,
    pub stats: MemStats,
}

impl TieredStore {
    /// An empty store: memory bounded by `max_size`, objects up to `max_object` in memory,
    /// and the disk tier when there is one.
    pub fn new(max_size: usize, max_object: usize, disk: Option<&'static DiskTier>) -> Self {
        TieredStore {
            mem: MemStore::new(),
            // the capacity only preallocates: the LRU grows with the objects stored
            lru: Lru::with_capacity(max_size, 64),
            mem_max_object: AtomicUsize::new(max_object),
            disk,
            stats: MemStats::default(),
        }
    }

    /// Applies new memory bounds (the LRU evicts down to `max_size` as objects are admitted).
    pub fn set_limits(&self, max_size: usize, max_object: usize) {
        self.lru.set_weight_limit(max_size);
        self.mem_max_object.store(max_object, Ordering::Relaxed);
    }

    /// The disk tier, when configured.
    pub fn disk(&self) -> Option<&'static DiskTier> {
        self.disk
    }

    /// Largest object the memory tier holds.
    pub fn mem_max_object(&self) -> usize {
        self.mem_max_object.load(Ordering::Relaxed)
    }

    /// Largest object stored at all: the disk's bound while the disk tier takes writes, else
    /// the memory's.
    pub fn max_storable(&self) -> usize {
        match self.disk {
            Some(d) if d.available() => d.max_object_size().max(self.mem_max_object()),
            _ => self.mem_max_object(),
        }
    }

    /// Bytes held by the memory tier (bodies and headers).
    pub fn size_bytes(&self) -> u64 {
        self.mem.bytes.load(Ordering::Relaxed)
    }

    /// Objects in the memory tier.
    pub fn len(&self) -> usize {
        self.mem.len()
    }

    /// Whether the memory tier is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores an object in memory and admits it to the LRU; with a disk tier, a new version
    /// (`fresh`: from the upstream) is also written to disk (off the request path), so a
    /// restart keeps it. Objects that fall out of memory are written to disk if it lacks them.
    fn admit_mem(
        &self,
        primary: HashBinary,
        combined: HashBinary,
        obj: Object,
        fresh: bool,
    ) -> Result<usize> {
        let disk_copy = match self.disk {
            Some(d) if fresh => obj.meta.to_meta().ok().map(|m| (d, m, obj.body.clone())),
            _ => None,
        };
        let weight = self.mem.insert(primary, combined, obj)?;
        if let Some((d, meta, body)) = disk_copy {
            if !d.demote(primary, combined, meta, body) {
                // not written: an older file must not outlive this version
                d.forget(primary, combined);
            }
        }
        self.lru
            .admit(lru_key(&combined), Entry { primary, combined }, weight);
        for (e, _) in self.lru.evict_to_limit() {
            let Some(old) = self.mem.remove(&e.primary, &e.combined) else {
                continue;
            };
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            if let Some(d) = self.disk {
                if !d.contains(&e.combined) {
                    if let Ok(meta) = old.meta.to_meta() {
                        d.demote(e.primary, e.combined, meta, old.body.clone());
                    }
                }
            }
        }
        Ok(weight)
    }

    fn remove_mem(&self, primary: &HashBinary, combined: &HashBinary) -> bool {
        self.lru.remove(lru_key(combined));
        self.mem.remove(primary, combined).is_some()
    }

    /// Removes every variant stored under `key`'s primary key, in both tiers; how many
    /// objects went (an object in both tiers counts once: the larger of the two counts).
    pub async fn purge_all_variants(&self, key: &CacheKey) -> usize {
        let primary = key.primary_bin();
        let mut n = 0;
        for c in self.mem.variants_of(&primary) {
            n += usize::from(self.remove_mem(&primary, &c));
        }
        if let Some(d) = self.disk {
            let on_disk = tokio::task::spawn_blocking(move || d.purge_blocking(primary))
                .await
                .unwrap_or(0);
            n = n.max(on_disk);
        }
        n
    }

    /// Removes every object of both tiers; how many went (counted as in
    /// [`Self::purge_all_variants`]).
    pub async fn clear(&self) -> usize {
        let mut n = 0;
        for (p, c) in self.mem.all() {
            n += usize::from(self.remove_mem(&p, &c));
        }
        if let Some(d) = self.disk {
            let on_disk = tokio::task::spawn_blocking(move || d.clear_blocking())
                .await
                .unwrap_or(0);
            n = n.max(on_disk);
        }
        n
    }
}

/// What both hit handlers do alike (besides an empty `finish`, which `async_trait` must see
/// written out): seekable (ranges), no access counted by Pingora (the store runs its LRUs
/// itself), and the downcasts.
macro_rules! hit_common {
    () => {
        fn can_seek(&self) -> bool {
            true
        }

        fn should_count_access(&self) -> bool {
            false
        }

        fn as_any(&self) -> &(dyn Any + Send + Sync) {
            self
        }

        fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
            self
        }
    };
}

struct Hit {
    body: Bytes,
    done: bool,
    start: usize,
    end: usize,
    /// `Disk` for an object just promoted from disk.
    tier: Tier,
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

    hit_common!();

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(ErrorType::InternalError, "seek start out of range");
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        self.done = false;
        Ok(())
    }
}

fn disk_error(e: ReadError) -> Box<Error> {
    match e {
        ReadError::Io(e) => Error::explain(ErrorType::InternalError, format!("cache disk: {e}")),
        ReadError::Corrupt(why) => Error::explain(
            ErrorType::InternalError,
            format!("cache disk: object {why}"),
        ),
    }
}

type ChunkRead = tokio::task::JoinHandle<std::result::Result<Bytes, ReadError>>;

/// A hit streamed from a disk file, one checked chunk at a time: from the page cache on the
/// request's thread, else on a blocking thread with the next chunk read ahead.
struct DiskHit {
    tier: &'static DiskTier,
    obj: Arc<DiskObject>,
    /// Next body offset to hand out, and the end of the range.
    pos: u64,
    end: u64,
    ahead: Option<(usize, ChunkRead)>,
    /// The first chunk, read and checked by the lookup (a damaged start is a miss, not a
    /// broken response).
    first: Option<Bytes>,
}

impl DiskHit {
    fn read(&self, i: usize) -> ChunkRead {
        let (tier, obj) = (self.tier, Arc::clone(&self.obj));
        tokio::task::spawn_blocking(move || obj.read_chunk(tier, i, Wait::Block))
    }

    /// Chunk `i`: the one read ahead, else from the page cache, else from a blocking thread
    /// (and then the next one is read ahead: the object is cold).
    async fn chunk(&mut self, i: usize) -> Result<Bytes> {
        let pending = match self.ahead.take() {
            Some((j, h)) if j == i => Some(h),
            _ => None,
        };
        let pending = match pending {
            Some(h) => h,
            None => match self.obj.read_chunk(self.tier, i, Wait::NoWait) {
                Ok(b) => return Ok(b),
                Err(e) if would_block(&e) => self.read(i),
                Err(e) => return Err(disk_error(e)),
            },
        };
        let chunk = pending
            .await
            .map_err(|e| Error::explain(ErrorType::InternalError, format!("cache disk: {e}")))?
            .map_err(disk_error)?;
        if i + 1 < self.obj.chunks() {
            self.ahead = Some((i + 1, self.read(i + 1)));
        }
        Ok(chunk)
    }
}

#[async_trait]
impl HandleHit for DiskHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let size = self.obj.chunk_size() as u64;
        let i = usize::try_from(self.pos / size).unwrap_or(usize::MAX);
        let chunk = match (i, self.first.clone()) {
            (0, Some(first)) => first,
            _ => self.chunk(i).await?,
        };
        let base = i as u64 * size;
        let from = usize::try_from(self.pos - base).unwrap_or(0);
        let to = usize::try_from((self.end - base).min(chunk.len() as u64)).unwrap_or(0);
        if from >= to {
            return Error::e_explain(ErrorType::InternalError, "cache disk: short chunk");
        }
        self.pos = base + to as u64;
        Ok(Some(chunk.slice(from..to)))
    }

    async fn finish(
        self: Box<Self>,
        _s: &'static (dyn Storage + Sync),
        _k: &CacheKey,
        _t: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    hit_common!();

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.obj.body_len();
        if start as u64 >= len {
            return Error::e_explain(ErrorType::InternalError, "seek start out of range");
        }
        self.pos = start as u64;
        self.end = end.map_or(len, |e| (e as u64).min(len));
        self.ahead = None;
        Ok(())
    }
}

/// Messages to a streaming disk write.
enum Feed {
    Data(Bytes),
    Commit,
}

/// A miss being written to disk by a blocking task.
struct DiskSink {
    tx: tokio::sync::mpsc::Sender<Feed>,
    task: tokio::task::JoinHandle<std::io::Result<usize>>,
}

impl DiskSink {
    /// Starts the file with the body bytes buffered so far.
    fn start(tier: &'static DiskTier, m: &Miss, first: Bytes) -> DiskSink {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Feed>(8);
        let (primary, combined) = (m.primary, m.combined);
        let internal = m.meta.internal.clone();
        let header = m.header.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut w: DiskWriter<'static> =
                tier.writer_serialized(primary, combined, &internal, &header)?;
            w.write(&first)?;
            while let Some(f) = rx.blocking_recv() {
                match f {
                    Feed::Data(b) => w.write(&b)?,
                    Feed::Commit => return w.commit(),
                }
            }
            // the miss was dropped (the upstream broke off): no object
            Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "write abandoned",
            ))
        });
        DiskSink { tx, task }
    }
}

enum Sink {
    Memory(BytesMut),
    Disk(DiskSink),
    /// The disk write failed or could not start: nothing is stored.
    Failed,
}

struct Miss {
    store: &'static TieredStore,
    primary: HashBinary,
    combined: HashBinary,
    meta: StoredMeta,
    /// The response header as a disk file keeps it (with a disk tier).
    header: Vec<u8>,
    sink: Sink,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        match &mut self.sink {
            Sink::Memory(body) => {
                body.extend_from_slice(&data);
                let weight = body.len() + self.meta.internal.len() + self.meta.header_size;
                if weight > self.store.mem_max_object() {
                    // too large for memory: to disk (the request set no larger limit than
                    // the disk takes, see `max_storable`)
                    self.sink = match self.store.disk {
                        Some(d) if d.available() => {
                            let first = std::mem::take(body).freeze();
                            Sink::Disk(DiskSink::start(d, self, first))
                        }
                        _ => Sink::Failed,
                    };
                }
            }
            Sink::Disk(d) => {
                if d.tx.send(Feed::Data(data)).await.is_err() {
                    // the writer stopped on an error; `finish` reports it
                    let Sink::Disk(d) = std::mem::replace(&mut self.sink, Sink::Failed) else {
                        return Ok(());
                    };
                    if let (Ok(Err(e)), Some(tier)) = (d.task.await, self.store.disk) {
                        tier.streaming_write_failed(&e);
                    }
                }
            }
            Sink::Failed => {}
        }
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let Miss {
            store,
            primary,
            combined,
            meta,
            sink,
            ..
        } = *self;
        match sink {
            Sink::Memory(body) => {
                let weight = store.admit_mem(
                    primary,
                    combined,
                    Object {
                        meta,
                        body: body.freeze(),
                    },
                    true,
                )?;
                Ok(MissFinishType::Created(weight))
            }
            Sink::Disk(d) => {
                let _ = d.tx.send(Feed::Commit).await;
                match d.task.await {
                    Ok(Ok(size)) => {
                        // an older, smaller version may still be in memory
                        store.remove_mem(&primary, &combined);
                        Ok(MissFinishType::Created(size))
                    }
                    Ok(Err(e)) => {
                        if let Some(tier) = store.disk {
                            tier.streaming_write_failed(&e);
                        }
                        Error::e_explain(ErrorType::InternalError, format!("cache disk: {e}"))
                    }
                    Err(e) => {
                        Error::e_explain(ErrorType::InternalError, format!("cache disk: {e}"))
                    }
                }
            }
            Sink::Failed => Error::e_explain(ErrorType::InternalError, "cache: not stored"),
        }
    }
}

#[async_trait]
impl Storage for TieredStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _t: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let combined = key.combined_bin();
        if let Some(obj) = self.mem.get(&combined)? {
            self.lru.promote(lru_key(&combined));
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            let meta = obj.meta.to_meta()?;
            let hit = Hit {
                end: obj.body.len(),
                body: obj.body.clone(),
                done: false,
                start: 0,
                tier: Tier::Memory,
            };
            return Ok(Some((meta, Box::new(hit))));
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let Some(disk) = self.disk else {
            return Ok(None);
        };
        let primary = key.primary_bin();
        let whole_up_to = self.mem_max_object();
        // from the page cache on this thread, else on a blocking thread
        let found = match disk.lookup(primary, combined, whole_up_to, Wait::NoWait) {
            Ok(found) => found,
            Err(_) => tokio::task::spawn_blocking(move || {
                disk.lookup(primary, combined, whole_up_to, Wait::Block)
                    .ok()
                    .flatten()
            })
            .await
            .map_err(|e| Error::explain(ErrorType::InternalError, format!("cache disk: {e}")))?,
        };
        let Some(Found {
            obj,
            meta,
            whole,
            first,
        }) = found
        else {
            return Ok(None);
        };
        if let Some(body) = whole {
            // small enough for memory: promoted (the file stays: the tiers are inclusive)
            let stored = StoredMeta::new(&meta)?;
            let hit = Hit {
                end: body.len(),
                body: body.clone(),
                done: false,
                start: 0,
                tier: Tier::Disk,
            };
            let object = Object { meta: stored, body };
            if object.weight() <= whole_up_to {
                self.admit_mem(primary, combined, object, false)?;
            }
            return Ok(Some((meta, Box::new(hit))));
        }
        let end = obj.body_len();
        let hit = DiskHit {
            tier: disk,
            obj: Arc::new(obj),
            pos: 0,
            end,
            ahead: None,
            first,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _t: &SpanHandle,
    ) -> Result<MissHandler> {
        // the header as a disk file keeps it, in case the object grows past memory
        let header = match self.disk {
            Some(_) => header_wire(meta.response_header()),
            None => Vec::new(),
        };
        let meta = StoredMeta::new(meta)?;
        Ok(Box::new(Miss {
            store: self,
            primary: key.primary_bin(),
            combined: key.combined_bin(),
            meta,
            header,
            sink: Sink::Memory(BytesMut::new()),
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
        let mut found = self.remove_mem(&primary, &combined);
        if let Some(d) = self.disk {
            // queued after any write of this object still waiting
            found |= d.contains(&combined);
            d.forget(primary, combined);
        }
        Ok(if found {
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
        let (primary, combined) = (key.primary_bin(), key.combined_bin());
        let mut updated = false;
        {
            let stored = StoredMeta::new(meta)?;
            let mut shard = self.mem.shard(&combined).write().map_err(lock_err)?;
            if let Some(old) = shard.get(&combined).cloned() {
                let new = Object {
                    meta: stored,
                    body: old.body.clone(),
                };
                let (ow, nw) = (old.weight() as u64, new.weight() as u64);
                shard.insert(combined, Arc::new(new));
                self.mem.bytes.fetch_add(nw, Ordering::Relaxed);
                self.mem.bytes.fetch_sub(ow, Ordering::Relaxed);
                updated = true;
            }
        }
        if let Some(d) = self.disk {
            if d.contains(&combined) {
                d.update_meta(primary, combined, meta);
                updated = true;
            }
        }
        Ok(updated)
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
