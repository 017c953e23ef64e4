//! The disk tier of the response cache: objects evicted from memory, and those too large for
//! it, kept in files under `server.cache.disk.path`, bounded by `max_size`, across restarts.
//!
//! # Layout
//!
//! `<path>/v1/<xx>/<primary>.<combined>`: one file per object, named by the hex of its primary
//! key hash (`xx` is its first byte) and of its combined (primary + variance) hash. A lookup
//! opens the path the key names, so serving needs no index: the index (the LRU below) is only
//! for the size bound, and is rebuilt in the background at start, traffic flowing meanwhile.
//! Purging a URL lists one shard directory for files with its primary prefix (all variants).
//!
//! # File format (little endian)
//!
//! ```text
//! "GHC1" | meta_len u32 | body_len u64 | chunk u32 | crc u32 (of the 20 bytes before it + meta)
//! meta:  primary [16] | combined [16] | internal_len u32 | internal (Pingora's form)
//!        | status u16 | header lines `Name: value\r\n` (as sent; Pingora's own form is
//!        zstd-compressed, and decompressing it cost more than the rest of a small disk hit)
//! body:  body_len bytes, checked in chunks of `chunk` bytes
//! crcs:  one CRC-32 per chunk
//! ```
//!
//! A write goes to `<path>/v1/tmp/` and is renamed into place when complete, so a reader
//! never sees a partial file, and a crash leaves only temporary files (removed at start). A
//! lookup checks the header's CRC and the file's length (a truncated file is never served);
//! the body is checked chunk by chunk before each chunk is handed out, so a large object
//! streams with one chunk in memory. An object that fails a check is deleted and counted.
//!
//! # Reads without a thread hop
//!
//! A lookup and each chunk read first try on the request's own thread with `preadv2(...,
//! RWF_NOWAIT)`, which only copies what is in the page cache and otherwise says it would
//! block; only then does the read go to a blocking thread. Hot objects (the page cache is
//! where a busy disk tier's objects live) are served without the thread hop, which cost
//! three times the rest of a 4 KiB disk hit; a cold read never stalls the event loop on the
//! disk.
//!
//! # Trouble
//!
//! A missing directory, or one that cannot be written (read-only, full), leaves the tier
//! unavailable for writes (`gatehouse_cache_disk_available 0`, one log line): the memory tier
//! goes on alone and stored objects are still read. A probe every [`PROBE_EVERY`] brings the
//! tier back when the directory is writable again. Write failures are counted; three in a row
//! mark the tier unavailable until the next successful probe. No disk trouble reaches a client.
//!
//! # Why an own store
//!
//! The tier sits behind Pingora's `Storage` trait and must stream objects of hundreds of MiB
//! both ways with one chunk in memory, check every chunk before it is sent, and serve while
//! its index is rebuilt. `foyer`'s disk engine reads and writes whole values, and `cacache`
//! has no size bound and checks integrity only at the end of a stream, after the bytes went
//! out; both would need the same index and eviction code around them. The format above is
//! small, and the LRU is Pingora's own (`pingora-lru`).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use pingora_cache::key::HashBinary;
use pingora_cache::CacheMeta;
use pingora_http::ResponseHeader;
use pingora_lru::Lru;

use super::cache_store::meta_with_header;

const MAGIC: [u8; 4] = *b"GHC1";
/// Bytes of the fixed header.
const FIXED: usize = 24;
/// Body bytes per checked chunk (and per read while streaming).
pub const CHUNK: usize = 64 * 1024;
/// How often an unavailable tier probes its directory.
pub const PROBE_EVERY: Duration = Duration::from_secs(30);
/// Failed writes in a row that mark the tier unavailable.
const FAILURES_TO_DEGRADE: u64 = 3;
/// Largest meta block accepted from a file (headers are far smaller).
const MAX_META: usize = 1 << 20;
/// Bytes read with the first read of a lookup: the header, the meta and, for small objects,
/// the body and checksums, in one system call.
const PREFIX: u64 = 16 * 1024;
/// One shard: a sharded LRU evicts the oldest object of a random shard, which with a few large
/// objects per shard can be the newest one; disk operations cost far more than one lock.
const LRU_SHARDS: usize = 1;

/// Whether a read may wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A blocking read (on a blocking thread).
    Block,
    /// Only what the page cache holds; `WouldBlock` otherwise.
    NoWait,
}

/// Set once the kernel or filesystem turns `RWF_NOWAIT` down: every read then blocks (on a
/// blocking thread).
static NOWAIT_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Reads `buf.len()` bytes at `off`. With [`Wait::NoWait`], fails with `WouldBlock` as soon
/// as the page cache lacks a byte.
fn read_at(file: &File, mut buf: &mut [u8], mut off: u64, wait: Wait) -> io::Result<()> {
    if wait == Wait::Block {
        return file.read_exact_at(buf, off);
    }
    if NOWAIT_UNSUPPORTED.load(Ordering::Relaxed) {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    while !buf.is_empty() {
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let at = libc::off_t::try_from(off).map_err(io::Error::other)?;
        // SAFETY: `iov` describes `buf`, valid for writes of its length for the whole call;
        // the descriptor is `file`'s, open for the call's duration.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
                Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => {
                    NOWAIT_UNSUPPORTED.store(true, Ordering::Relaxed);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                _ => return Err(e),
            }
        }
        let n = usize::try_from(n).unwrap_or(0);
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        off += n as u64;
    }
    Ok(())
}

/// Whether an error is a [`Wait::NoWait`] read that would have blocked.
pub fn would_block(e: &ReadError) -> bool {
    matches!(e, ReadError::Io(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The LRU key of an object: the first 8 bytes of its combined hash (a blake2 hash, uniform).
pub fn lru_key(combined: &HashBinary) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&combined[..8]);
    u64::from_le_bytes(b)
}

fn hex(h: &HashBinary) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(32);
    for b in h {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// The response header as the file keeps it: status, then the header lines as sent.
pub fn header_wire(h: &ResponseHeader) -> Vec<u8> {
    let mut v = Vec::with_capacity(512);
    v.extend_from_slice(&h.status.as_u16().to_le_bytes());
    h.header_to_h1_wire(&mut v);
    v
}

/// Parses [`header_wire`]'s form.
fn parse_header(b: &[u8]) -> Option<ResponseHeader> {
    let status = u16::from_le_bytes([*b.first()?, *b.get(1)?]);
    let mut rest = b.get(2..)?;
    let lines = rest.windows(2).filter(|w| w == b"\r\n").count();
    let mut h = ResponseHeader::build(status, Some(lines)).ok()?;
    while !rest.is_empty() {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = &rest[..end];
        let colon = line.iter().position(|&c| c == b':')?;
        let name = std::str::from_utf8(&line[..colon]).ok()?;
        let value = &line[colon + 1..];
        let value = value.strip_prefix(b" ").unwrap_or(value);
        h.append_header(name.to_string(), http::HeaderValue::from_bytes(value).ok()?)
            .ok()?;
        rest = &rest[end + 2..];
    }
    Some(h)
}

fn unhex(s: &str) -> Option<HashBinary> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What an LRU entry names.
#[derive(Clone, Copy)]
struct Entry {
    primary: HashBinary,
    combined: HashBinary,
}

/// Counters of the tier, read by the metrics at scrape time.
#[derive(Default)]
pub struct DiskStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    pub writes: AtomicU64,
    pub write_errors: AtomicU64,
    /// Demotions not written because the write queue was full or the tier unavailable.
    pub skipped: AtomicU64,
    pub corrupt: AtomicU64,
}

/// Why reading an object failed.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    /// The file fails a check; it has been deleted.
    Corrupt(&'static str),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Work done off the request path by the tier's writer thread.
enum Job {
    /// Write a whole object (demoted from memory).
    Store {
        primary: HashBinary,
        combined: HashBinary,
        meta: CacheMeta,
        body: Bytes,
    },
    /// Delete an object (a newer version now lives in memory).
    Remove {
        primary: HashBinary,
        combined: HashBinary,
    },
    /// Rewrite an object's meta (after a revalidation), keeping its body.
    UpdateMeta {
        primary: HashBinary,
        combined: HashBinary,
        meta: Arc<PendingMeta>,
    },
    /// Delete every variant of a primary key (in queue order, after writes queued before).
    Purge {
        primary: HashBinary,
        reply: tokio::sync::oneshot::Sender<usize>,
    },
    /// Delete everything.
    Clear {
        reply: tokio::sync::oneshot::Sender<usize>,
    },
}

/// A revalidated meta waiting for its file's rewrite: lookups use it meanwhile, so the
/// object is not revalidated again before the rewrite lands.
pub struct PendingMeta {
    generation: u64,
    internal: Vec<u8>,
    header: Vec<u8>,
}

/// The disk tier. Created once at startup and leaked (`&'static`, like the rest of the cache).
pub struct DiskTier {
    path: PathBuf,
    root: PathBuf,
    tmp: PathBuf,
    lru: Lru<Entry, LRU_SHARDS>,
    /// Serialises renames, deletions and LRU admissions, so an eviction never deletes a file
    /// renamed into place after the LRU let go of it.
    ops: Mutex<()>,
    max_object_size: usize,
    available: AtomicBool,
    failures_in_row: AtomicU64,
    indexed: AtomicBool,
    index_started: AtomicBool,
    seq: AtomicU64,
    jobs: SyncSender<Job>,
    /// Body bytes waiting in the writer's queue, bounded by `queue_limit`.
    queued: AtomicUsize,
    queue_limit: usize,
    /// Revalidated metas whose rewrite is queued, by combined key.
    pending_meta: Mutex<HashMap<HashBinary, Arc<PendingMeta>>>,
    pending_count: AtomicUsize,
    pub stats: DiskStats,
}

impl DiskTier {
    /// Opens the tier at `path` (which must exist), bounded by `max_size` bytes and
    /// `max_objects` files, starts its writer thread and the index rebuild. Trouble with the
    /// directory leaves the tier unavailable (logged), not absent.
    pub fn open(
        path: &Path,
        max_size: usize,
        max_object_size: usize,
        max_objects: usize,
    ) -> &'static DiskTier {
        let root = path.join("v1");
        let (jobs, rx) = sync_channel(1024);
        let tier: &'static DiskTier = Box::leak(Box::new(DiskTier {
            path: path.to_path_buf(),
            tmp: root.join("tmp"),
            root,
            // the index: about 120 bytes per object, bounded by `max_objects`
            lru: Lru::with_capacity_and_watermark(max_size, 1024, Some(max_objects)),
            ops: Mutex::new(()),
            max_object_size,
            available: AtomicBool::new(false),
            failures_in_row: AtomicU64::new(0),
            indexed: AtomicBool::new(false),
            index_started: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            jobs,
            queued: AtomicUsize::new(0),
            queue_limit: 64 << 20,
            pending_meta: Mutex::new(HashMap::new()),
            pending_count: AtomicUsize::new(0),
            stats: DiskStats::default(),
        }));
        match tier.probe() {
            Ok(()) => tier.became_available(true),
            Err(e) => log::error!(
                "cache disk tier {}: {e}: memory only until the directory is writable (probed every {}s)",
                tier.path.display(),
                PROBE_EVERY.as_secs()
            ),
        }
        let spawned = std::thread::Builder::new()
            .name("gatehouse-cache-disk".into())
            .spawn(move || tier.writer_loop(rx));
        if let Err(e) = spawned {
            log::error!("cache disk tier: writer thread: {e}: memory only");
            tier.available.store(false, Ordering::Relaxed);
        }
        tier
    }

    /// Whether objects are written to the tier now.
    pub fn available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    /// Whether the index rebuild at start has finished.
    pub fn indexed(&self) -> bool {
        self.indexed.load(Ordering::Relaxed)
    }

    /// Largest object the tier takes.
    pub fn max_object_size(&self) -> usize {
        self.max_object_size
    }

    /// Bytes of the objects the tier holds (file sizes).
    pub fn size_bytes(&self) -> usize {
        self.lru.weight()
    }

    /// Objects the tier holds.
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// Whether the tier holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the tier holds the object (by its index).
    pub fn contains(&self, combined: &HashBinary) -> bool {
        self.lru.peek(lru_key(combined))
    }

    /// The directory exists and takes a file: creates the tier's own directories inside it.
    fn probe(&self) -> io::Result<()> {
        if !self.path.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the directory does not exist",
            ));
        }
        fs::create_dir_all(&self.tmp)?;
        let p = self.tmp.join(format!("probe.{}", std::process::id()));
        fs::write(&p, b"gatehouse")?;
        fs::remove_file(&p)
    }

    fn became_available(&'static self, first: bool) {
        self.failures_in_row.store(0, Ordering::Relaxed);
        self.available.store(true, Ordering::Relaxed);
        if !first {
            log::warn!("cache disk tier {}: writable again", self.path.display());
        }
        if !self.index_started.swap(true, Ordering::Relaxed) {
            let spawned = std::thread::Builder::new()
                .name("gatehouse-cache-index".into())
                .spawn(move || self.rebuild_index());
            if let Err(e) = spawned {
                log::error!("cache disk tier: index thread: {e}");
            }
        }
    }

    fn write_failed(&self, what: &str, e: &io::Error) {
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        let n = self.failures_in_row.fetch_add(1, Ordering::Relaxed) + 1;
        if n == FAILURES_TO_DEGRADE && self.available.swap(false, Ordering::Relaxed) {
            log::error!(
                "cache disk tier {}: {what}: {e}: {n} writes failed in a row, memory only until a probe succeeds (every {}s)",
                self.path.display(),
                PROBE_EVERY.as_secs()
            );
        } else {
            log::warn!("cache disk tier {}: {what}: {e}", self.path.display());
        }
    }

    fn object_path(&self, primary: &HashBinary, combined: &HashBinary) -> PathBuf {
        let mut p = self.root.join(format!("{:02x}", primary[0]));
        p.push(format!("{}.{}", hex(primary), hex(combined)));
        p
    }

    /// Admits a file to the index; deletes what falls out of `max_size`.
    fn admit(&self, e: Entry, size: usize) {
        let _g = self.ops.lock();
        self.lru.admit(lru_key(&e.combined), e, size);
        self.evict_locked();
    }

    fn evict_locked(&self) {
        for (old, _) in self.lru.evict_to_limit() {
            let _ = fs::remove_file(self.object_path(&old.primary, &old.combined));
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Deletes one object; whether it was there.
    pub fn remove(&self, primary: &HashBinary, combined: &HashBinary) -> bool {
        let _g = self.ops.lock();
        self.lru.remove(lru_key(combined));
        fs::remove_file(self.object_path(primary, combined)).is_ok()
    }

    fn drop_corrupt(&self, primary: &HashBinary, combined: &HashBinary, why: &'static str) {
        self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "cache disk tier {}: object {}.{} {why}: deleted",
            self.path.display(),
            hex(primary),
            hex(combined)
        );
        self.remove(primary, combined);
    }

    /// Deletes every variant of a primary key; how many went.
    pub fn remove_primary(&self, primary: &HashBinary) -> usize {
        let prefix = format!("{}.", hex(primary));
        let dir = self.root.join(format!("{:02x}", primary[0]));
        let Ok(entries) = fs::read_dir(&dir) else {
            return 0;
        };
        let mut n = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(combined) = name
                .to_str()
                .and_then(|s| s.strip_prefix(&prefix))
                .and_then(unhex)
            else {
                continue;
            };
            n += usize::from(self.remove(primary, &combined));
        }
        n
    }

    /// Deletes every object; how many went.
    pub fn clear(&self) -> usize {
        let mut n = 0;
        for (primary, combined, _, _) in self.list() {
            n += usize::from(self.remove(&primary, &combined));
        }
        n
    }

    /// Every object file: keys, size, modification time.
    fn list(&self) -> Vec<(HashBinary, HashBinary, u64, SystemTime)> {
        let mut out = Vec::new();
        let Ok(shards) = fs::read_dir(&self.root) else {
            return out;
        };
        for shard in shards.flatten() {
            let name = shard.file_name();
            if name.len() != 2 || !shard.path().is_dir() {
                continue;
            }
            let Ok(files) = fs::read_dir(shard.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let keys = name.to_str().and_then(|s| {
                    let (p, c) = s.split_once('.')?;
                    Some((unhex(p)?, unhex(c)?))
                });
                let Some((primary, combined)) = keys else {
                    continue;
                };
                if let Ok(md) = f.metadata() {
                    let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    out.push((primary, combined, md.len(), mtime));
                }
            }
        }
        out
    }

    /// Rebuilds the index from the files (newest first to the LRU's tail, so objects written
    /// since start stay the most recent), deletes leftover temporary files, evicts down to
    /// `max_size`. Runs on its own thread; lookups meanwhile open files directly.
    fn rebuild_index(&self) {
        let started = Instant::now();
        if let Ok(tmp) = fs::read_dir(&self.tmp) {
            for f in tmp.flatten() {
                let _ = fs::remove_file(f.path());
            }
        }
        let mut files = self.list();
        files.sort_by_key(|f| std::cmp::Reverse(f.3));
        let n = files.len();
        for (primary, combined, size, _) in files {
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            self.lru
                .insert_tail(lru_key(&combined), Entry { primary, combined }, size.max(1));
        }
        {
            let _g = self.ops.lock();
            self.evict_locked();
        }
        self.indexed.store(true, Ordering::Relaxed);
        log::info!(
            "cache disk tier {}: indexed {n} objects ({} bytes) in {:?}",
            self.path.display(),
            self.size_bytes(),
            started.elapsed()
        );
    }

    /// Queues a job for the writer thread; false when the queue is full.
    fn submit(&self, job: Job) -> bool {
        let bytes = match &job {
            Job::Store { body, .. } => body.len(),
            _ => 0,
        };
        if bytes > 0 && self.queued.fetch_add(bytes, Ordering::Relaxed) + bytes > self.queue_limit {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match self.jobs.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(bytes, Ordering::Relaxed);
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Writes a whole object from memory, off the request path; whether it was queued.
    /// Skipped (counted) when the tier is unavailable, the object too large, or the queue full.
    pub fn demote(
        &self,
        primary: HashBinary,
        combined: HashBinary,
        meta: CacheMeta,
        body: Bytes,
    ) -> bool {
        if !self.available() || body.len() > self.max_object_size {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.submit(Job::Store {
            primary,
            combined,
            meta,
            body,
        })
    }

    /// Deletes an object off the request path (a newer version replaced it in memory).
    pub fn forget(&self, primary: HashBinary, combined: HashBinary) {
        if !self.submit(Job::Remove { primary, combined }) {
            // the queue is full: the index lets go now; the file is overwritten or evicted
            // as an orphan at the next start
            let _g = self.ops.lock();
            self.lru.remove(lru_key(&combined));
        }
    }

    /// Rewrites an object's meta off the request path; lookups see the new meta at once.
    pub fn update_meta(&self, primary: HashBinary, combined: HashBinary, meta: &CacheMeta) {
        let Ok((internal, _)) = meta.serialize() else {
            self.remove(&primary, &combined);
            return;
        };
        let pending = Arc::new(PendingMeta {
            generation: self.seq.fetch_add(1, Ordering::Relaxed),
            internal,
            header: header_wire(meta.response_header()),
        });
        if let Ok(mut m) = self.pending_meta.lock() {
            if m.insert(combined, Arc::clone(&pending)).is_none() {
                self.pending_count.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !self.submit(Job::UpdateMeta {
            primary,
            combined,
            meta: pending,
        }) {
            // stale meta must not outlive the revalidation: drop the object
            self.remove(&primary, &combined);
            self.meta_written(&combined, u64::MAX);
        }
    }

    /// The rewrite of `generation` landed (or failed): lookups read the file's meta again.
    /// `u64::MAX`: whatever is pending.
    fn meta_written(&self, combined: &HashBinary, generation: u64) {
        if let Ok(mut m) = self.pending_meta.lock() {
            let ours = m
                .get(combined)
                .is_some_and(|p| generation == u64::MAX || p.generation == generation);
            if ours && m.remove(combined).is_some() {
                self.pending_count.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// The revalidated meta of `combined` still being written, if any.
    fn pending_meta(&self, combined: &HashBinary) -> Option<Arc<PendingMeta>> {
        if self.pending_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.pending_meta.lock().ok()?.get(combined).cloned()
    }

    /// Deletes every variant of `primary`, after the writes queued before it (a demotion
    /// queued before a purge does not bring the object back). Blocking: call it off the
    /// runtime's threads.
    pub fn purge_blocking(&self, primary: HashBinary) -> usize {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if self.jobs.send(Job::Purge { primary, reply }).is_err() {
            return self.remove_primary(&primary);
        }
        rx.blocking_recv()
            .unwrap_or_else(|_| self.remove_primary(&primary))
    }

    /// Deletes every object, after the writes queued before. Blocking, like
    /// [`Self::purge_blocking`].
    pub fn clear_blocking(&self) -> usize {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if self.jobs.send(Job::Clear { reply }).is_err() {
            return self.clear();
        }
        rx.blocking_recv().unwrap_or_else(|_| self.clear())
    }

    fn writer_loop(&'static self, rx: Receiver<Job>) {
        let mut next_probe = Instant::now() + PROBE_EVERY;
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(job) => self.run(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if !self.available() && Instant::now() >= next_probe {
                next_probe = Instant::now() + PROBE_EVERY;
                if self.probe().is_ok() {
                    self.became_available(false);
                }
            }
        }
    }

    fn run(&self, job: Job) {
        match job {
            Job::Store {
                primary,
                combined,
                meta,
                body,
            } => {
                self.queued.fetch_sub(body.len(), Ordering::Relaxed);
                if !self.available() {
                    self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let written = self.writer(primary, combined, &meta).and_then(|mut w| {
                    w.write(&body)?;
                    w.commit()
                });
                if let Err(e) = written {
                    self.write_failed("storing an object", &e);
                }
            }
            Job::Remove { primary, combined } => {
                self.remove(&primary, &combined);
            }
            Job::Purge { primary, reply } => {
                let _ = reply.send(self.remove_primary(&primary));
            }
            Job::Clear { reply } => {
                let _ = reply.send(self.clear());
            }
            Job::UpdateMeta {
                primary,
                combined,
                meta,
            } => {
                if let Err(e) = self.rewrite_meta(primary, combined, &meta) {
                    self.remove(&primary, &combined);
                    if let ReadError::Io(e) = e {
                        if e.kind() != io::ErrorKind::NotFound {
                            self.write_failed("updating an object's meta", &e);
                        }
                    }
                }
                self.meta_written(&combined, meta.generation);
            }
        }
    }

    fn rewrite_meta(
        &self,
        primary: HashBinary,
        combined: HashBinary,
        meta: &PendingMeta,
    ) -> Result<(), ReadError> {
        let Some((obj, _)) = self.open_object(primary, combined, Wait::Block)? else {
            return Ok(());
        };
        let mut w = self.writer_serialized(primary, combined, &meta.internal, &meta.header)?;
        for i in 0..obj.chunks() {
            w.write(&obj.read_chunk(self, i, Wait::Block)?)?;
        }
        w.commit()?;
        Ok(())
    }

    /// Opens the object `primary`/`combined` and checks its header and length; `None` when
    /// there is no such file. A file failing a check is deleted (`Corrupt`).
    pub fn open_object(
        &self,
        primary: HashBinary,
        combined: HashBinary,
        wait: Wait,
    ) -> Result<Option<(DiskObject, CacheMeta)>, ReadError> {
        let path = self.object_path(&primary, &combined);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match DiskObject::parse(file, primary, combined, wait) {
            Ok(o) => Ok(Some(o)),
            Err(ReadError::Corrupt(why)) => {
                self.drop_corrupt(&primary, &combined, why);
                Err(ReadError::Corrupt(why))
            }
            Err(e) => Err(e),
        }
    }

    /// A lookup: the object, its body read and checked whole when it is at most `whole_up_to`
    /// bytes (to be promoted to memory), else its first chunk read and checked (a damaged
    /// start is a miss, before any byte is sent). Counts a hit or a miss, and refreshes the
    /// object's place in the LRU. With [`Wait::NoWait`], [`WouldBlock`] says the page cache
    /// lacked something: ask again with [`Wait::Block`] on a blocking thread.
    pub fn lookup(
        &self,
        primary: HashBinary,
        combined: HashBinary,
        whole_up_to: usize,
        wait: Wait,
    ) -> Result<Option<Found>, WouldBlock> {
        let miss = || {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        };
        let (obj, mut meta) = match self.open_object(primary, combined, wait) {
            Ok(Some(o)) => o,
            Err(e) if would_block(&e) => return Err(WouldBlock),
            Ok(None) | Err(ReadError::Corrupt(_)) => return miss(),
            Err(ReadError::Io(e)) => {
                log::warn!("cache disk tier {}: lookup: {e}", self.path.display());
                return miss();
            }
        };
        let read = if obj.body_len() <= whole_up_to as u64 {
            obj.read_all(self, wait).map(|b| (Some(b), None))
        } else {
            obj.read_chunk(self, 0, wait).map(|b| (None, Some(b)))
        };
        let (whole, first) = match read {
            Ok(r) => r,
            Err(e) if would_block(&e) => return Err(WouldBlock),
            Err(_) => return miss(),
        };
        if let Some(p) = self.pending_meta(&combined) {
            // revalidated, the file not rewritten yet
            let newer = parse_header(&p.header).and_then(|h| meta_with_header(&p.internal, h).ok());
            if let Some(newer) = newer {
                meta = newer;
            }
        }
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        if !self.lru.promote(lru_key(&combined)) {
            // written before start and not indexed yet, or indexed away meanwhile
            self.admit(Entry { primary, combined }, obj.file_len);
        }
        Ok(Some(Found {
            obj,
            meta,
            whole,
            first,
        }))
    }

    /// Starts writing an object; `commit` makes it visible.
    pub fn writer(
        &self,
        primary: HashBinary,
        combined: HashBinary,
        meta: &CacheMeta,
    ) -> io::Result<DiskWriter<'_>> {
        let (internal, _) = meta
            .serialize()
            .map_err(|e| io::Error::other(e.to_string()))?;
        let header = header_wire(meta.response_header());
        DiskWriter::create(self, primary, combined, &internal, &header)
    }

    /// Starts writing an object whose meta is already serialized: Pingora's internal part and
    /// [`header_wire`].
    pub fn writer_serialized(
        &self,
        primary: HashBinary,
        combined: HashBinary,
        internal: &[u8],
        header: &[u8],
    ) -> io::Result<DiskWriter<'_>> {
        DiskWriter::create(self, primary, combined, internal, header)
    }

    /// Counts a failed streaming write (see [`DiskWriter`]).
    pub fn streaming_write_failed(&self, e: &io::Error) {
        self.write_failed("writing an object", e);
    }
}

/// A [`Wait::NoWait`] lookup found the page cache lacking.
#[derive(Debug)]
pub struct WouldBlock;

/// What a lookup found.
pub struct Found {
    pub obj: DiskObject,
    pub meta: CacheMeta,
    /// The whole body, read and checked (objects small enough for memory).
    pub whole: Option<Bytes>,
    /// The first chunk, read and checked (larger objects).
    pub first: Option<Bytes>,
}

/// An open, header-checked object.
pub struct DiskObject {
    file: File,
    primary: HashBinary,
    combined: HashBinary,
    body_off: u64,
    body_len: u64,
    chunk: usize,
    crcs: Vec<u32>,
    file_len: usize,
    /// The file's first bytes, read by the lookup.
    prefix: Bytes,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

impl DiskObject {
    fn parse(
        file: File,
        primary: HashBinary,
        combined: HashBinary,
        wait: Wait,
    ) -> Result<(Self, CacheMeta), ReadError> {
        let file_len = file.metadata()?.len();
        if file_len < FIXED as u64 {
            return Err(ReadError::Corrupt("is truncated"));
        }
        let mut prefix = vec![0u8; usize::try_from(file_len.min(PREFIX)).unwrap_or(0)];
        read_at(&file, &mut prefix, 0, wait)?;
        let prefix = Bytes::from(prefix);
        let fixed = &prefix[..FIXED];
        if fixed[..4] != MAGIC {
            return Err(ReadError::Corrupt("has no gatehouse header"));
        }
        let meta_len = u32_at(fixed, 4) as usize;
        let mut bl = [0u8; 8];
        bl.copy_from_slice(&fixed[8..16]);
        let body_len = u64::from_le_bytes(bl);
        let chunk = u32_at(fixed, 16) as usize;
        if !(40..=MAX_META).contains(&meta_len) || chunk == 0 {
            return Err(ReadError::Corrupt("has a bad header"));
        }
        let chunks = body_len.div_ceil(chunk as u64);
        let expect = (FIXED as u64)
            .checked_add(meta_len as u64)
            .and_then(|v| v.checked_add(body_len))
            .and_then(|v| v.checked_add(chunks.checked_mul(4)?));
        if expect != Some(file_len) {
            return Err(ReadError::Corrupt("is truncated or has a bad length"));
        }
        let read = |off: u64, len: u64| -> Result<Bytes, ReadError> {
            let end = off + len;
            if end <= prefix.len() as u64 {
                return Ok(prefix.slice(off as usize..end as usize));
            }
            let mut v = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
            read_at(&file, &mut v, off, wait)?;
            Ok(Bytes::from(v))
        };
        let meta_block = read(FIXED as u64, meta_len as u64)?;
        let mut h = crc32fast::Hasher::new();
        h.update(&fixed[..20]);
        h.update(&meta_block);
        if h.finalize() != u32_at(fixed, 20) {
            return Err(ReadError::Corrupt("fails its header checksum"));
        }
        if meta_block[..16] != primary || meta_block[16..32] != combined {
            return Err(ReadError::Corrupt("names another key"));
        }
        let internal_len = u32_at(&meta_block, 32) as usize;
        let Some(internal) = meta_block.get(36..36 + internal_len) else {
            return Err(ReadError::Corrupt("has a bad meta length"));
        };
        let header = parse_header(&meta_block[36 + internal_len..]).ok_or(ReadError::Corrupt(
            "has a response header that does not parse",
        ))?;
        let meta = meta_with_header(internal, header)
            .map_err(|_| ReadError::Corrupt("has a meta that does not parse"))?;
        let body_off = FIXED as u64 + meta_len as u64;
        let table = read(body_off + body_len, chunks * 4)?;
        let crcs = table.chunks_exact(4).map(|c| u32_at(c, 0)).collect();
        let obj = DiskObject {
            file,
            primary,
            combined,
            body_off,
            body_len,
            chunk,
            crcs,
            file_len: usize::try_from(file_len).unwrap_or(usize::MAX),
            prefix,
        };
        Ok((obj, meta))
    }

    /// The body's length.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// Body bytes per chunk.
    pub fn chunk_size(&self) -> usize {
        self.chunk
    }

    /// Number of body chunks.
    pub fn chunks(&self) -> usize {
        self.crcs.len()
    }

    /// Reads and checks chunk `i`; a failed check deletes the object.
    pub fn read_chunk(&self, tier: &DiskTier, i: usize, wait: Wait) -> Result<Bytes, ReadError> {
        let start = i as u64 * self.chunk as u64;
        let len = (self.body_len.saturating_sub(start)).min(self.chunk as u64) as usize;
        let buf = self.body_bytes(start, len, wait)?;
        if self.crcs.get(i) != Some(&crc32fast::hash(&buf)) {
            tier.drop_corrupt(&self.primary, &self.combined, "fails a body checksum");
            return Err(ReadError::Corrupt("fails a body checksum"));
        }
        Ok(buf)
    }

    /// `len` body bytes from `start`: from the prefix the lookup read, else from the file.
    fn body_bytes(&self, start: u64, len: usize, wait: Wait) -> Result<Bytes, ReadError> {
        let off = self.body_off + start;
        let end = off + len as u64;
        if end <= self.prefix.len() as u64 {
            return Ok(self.prefix.slice(off as usize..end as usize));
        }
        let mut buf = vec![0u8; len];
        read_at(&self.file, &mut buf, off, wait)?;
        Ok(Bytes::from(buf))
    }

    /// Reads and checks the whole body.
    pub fn read_all(&self, tier: &DiskTier, wait: Wait) -> Result<Bytes, ReadError> {
        let len = usize::try_from(self.body_len).map_err(io::Error::other)?;
        let out = self.body_bytes(0, len, wait)?;
        for (i, c) in out.chunks(self.chunk).enumerate() {
            if self.crcs.get(i) != Some(&crc32fast::hash(c)) {
                tier.drop_corrupt(&self.primary, &self.combined, "fails a body checksum");
                return Err(ReadError::Corrupt("fails a body checksum"));
            }
        }
        Ok(out)
    }
}

/// An object being written to a temporary file; [`DiskWriter::commit`] renames it into
/// place. Dropped uncommitted, it deletes its file.
pub struct DiskWriter<'a> {
    tier: &'a DiskTier,
    file: File,
    tmp_path: PathBuf,
    head: Vec<u8>,
    pending: Vec<u8>,
    crcs: Vec<u8>,
    body_len: u64,
    primary: HashBinary,
    combined: HashBinary,
    done: bool,
}

impl<'a> DiskWriter<'a> {
    fn create(
        tier: &'a DiskTier,
        primary: HashBinary,
        combined: HashBinary,
        internal: &[u8],
        header: &[u8],
    ) -> io::Result<Self> {
        let internal_len = u32::try_from(internal.len()).map_err(io::Error::other)?;
        // `header`: status + lines (see `header_wire`)
        let mut head = Vec::with_capacity(FIXED + 36 + internal.len() + header.len());
        head.extend_from_slice(&[0u8; FIXED]);
        head.extend_from_slice(&primary);
        head.extend_from_slice(&combined);
        head.extend_from_slice(&internal_len.to_le_bytes());
        head.extend_from_slice(internal);
        head.extend_from_slice(header);
        if head.len() - FIXED > MAX_META {
            return Err(io::Error::other(
                "response header too large for the disk tier",
            ));
        }
        let n = tier.seq.fetch_add(1, Ordering::Relaxed);
        let tmp_path = tier
            .tmp
            .join(format!("{}.{}.{n}", hex(&combined), std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)?;
        let mut w = DiskWriter {
            tier,
            file,
            tmp_path,
            head,
            pending: Vec::with_capacity(CHUNK),
            crcs: Vec::new(),
            body_len: 0,
            primary,
            combined,
            done: false,
        };
        w.file.write_all(&w.head)?;
        Ok(w)
    }

    /// Appends body bytes.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.body_len += data.len() as u64;
        if self.body_len > self.tier.max_object_size as u64 {
            return Err(io::Error::other("object larger than disk.max_object_size"));
        }
        while !data.is_empty() {
            if self.pending.is_empty() && data.len() >= CHUNK {
                let (c, rest) = data.split_at(CHUNK);
                self.crcs
                    .extend_from_slice(&crc32fast::hash(c).to_le_bytes());
                self.file.write_all(c)?;
                data = rest;
                continue;
            }
            let take = (CHUNK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == CHUNK {
                self.flush_pending()?;
            }
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.crcs
                .extend_from_slice(&crc32fast::hash(&self.pending).to_le_bytes());
            self.file.write_all(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Completes the file and renames it into place; admits it to the index (evicting what
    /// falls out of `max_size`). Returns the file's size.
    pub fn commit(mut self) -> io::Result<usize> {
        self.flush_pending()?;
        self.file.write_all(&self.crcs)?;
        let meta_len = u32::try_from(self.head.len() - FIXED).map_err(io::Error::other)?;
        let mut fixed = [0u8; FIXED];
        fixed[..4].copy_from_slice(&MAGIC);
        fixed[4..8].copy_from_slice(&meta_len.to_le_bytes());
        fixed[8..16].copy_from_slice(&self.body_len.to_le_bytes());
        fixed[16..20].copy_from_slice(&(CHUNK as u32).to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&fixed[..20]);
        h.update(&self.head[FIXED..]);
        fixed[20..24].copy_from_slice(&h.finalize().to_le_bytes());
        self.file.write_all_at(&fixed, 0)?;
        let size = self.head.len() + self.body_len as usize + self.crcs.len();
        let dest = self.tier.object_path(&self.primary, &self.combined);
        {
            let _g = self.tier.ops.lock();
            if let Some(dir) = dest.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::rename(&self.tmp_path, &dest)?;
            self.done = true;
            let e = Entry {
                primary: self.primary,
                combined: self.combined,
            };
            self.tier.lru.admit(lru_key(&e.combined), e, size);
            self.tier.evict_locked();
        }
        self.tier.failures_in_row.store(0, Ordering::Relaxed);
        self.tier.stats.writes.fetch_add(1, Ordering::Relaxed);
        Ok(size)
    }
}

impl Drop for DiskWriter<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_http::ResponseHeader;

    fn meta() -> CacheMeta {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("content-type", "text/plain").unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h)
    }

    fn tier(dir: &Path, max: usize) -> &'static DiskTier {
        let t = DiskTier::open(dir, max, max, 1000);
        for _ in 0..200 {
            if t.indexed() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(t.available() && t.indexed());
        t
    }

    fn put(t: &DiskTier, k: u8, body: &[u8]) -> (HashBinary, HashBinary) {
        let (p, c) = ([k; 16], [k; 16]);
        let mut w = t.writer(p, c, &meta()).unwrap();
        for part in body.chunks(1000) {
            w.write(part).unwrap();
        }
        w.commit().unwrap();
        (p, c)
    }

    #[test]
    fn the_header_keeps_status_case_and_order() {
        let mut h = ResponseHeader::build(404, None).unwrap();
        h.append_header("X-Custom-Case", "a: b").unwrap();
        h.append_header("set-thing", "1").unwrap();
        h.append_header("set-thing", "2").unwrap();
        let back = parse_header(&header_wire(&h)).unwrap();
        assert_eq!(back.status.as_u16(), 404);
        assert_eq!(back.headers["x-custom-case"], "a: b");
        let all: Vec<_> = back.headers.get_all("set-thing").iter().collect();
        assert_eq!(all, ["1", "2"]);
        let mut wire = Vec::new();
        back.header_to_h1_wire(&mut wire);
        assert!(String::from_utf8_lossy(&wire).contains("X-Custom-Case: a: b"));
        assert!(parse_header(b"\xc8\x00Bad line without colon\r\n").is_none());
    }

    #[test]
    fn round_trip_in_chunks_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let t = tier(dir.path(), 16 << 20);
        let body: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        let (p, c) = put(t, 1, &body);
        let Found {
            obj, meta, whole, ..
        } = t.lookup(p, c, usize::MAX, Wait::Block).unwrap().unwrap();
        assert_eq!(whole.unwrap(), body);
        assert_eq!(obj.chunks(), 4);
        assert_eq!(obj.read_chunk(t, 3, Wait::Block).unwrap().len(), 17);
        assert_eq!(meta.headers()["content-type"], "text/plain");
        let Found { whole, first, .. } = t.lookup(p, c, 10, Wait::Block).unwrap().unwrap();
        assert!(whole.is_none(), "large objects are streamed");
        assert_eq!(first.unwrap().len(), CHUNK, "their first chunk is checked");
        assert_eq!(t.stats.hits.load(Ordering::Relaxed), 2);
        assert!(t
            .lookup([9; 16], [9; 16], 0, Wait::Block)
            .unwrap()
            .is_none());
        // an empty body
        let (p, c) = put(t, 2, b"");
        assert_eq!(
            t.lookup(p, c, 100, Wait::Block)
                .unwrap()
                .unwrap()
                .whole
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn a_damaged_file_is_detected_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let t = tier(dir.path(), 16 << 20);
        let body = vec![7u8; 2 * CHUNK];
        let (p, c) = put(t, 3, &body);
        let path = t.object_path(&p, &c);
        // a flipped bit in the second body chunk: the header opens, that chunk fails
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() - 8 - 10;
        bytes[at] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let obj = t.lookup(p, c, 0, Wait::Block).unwrap().unwrap().obj;
        assert!(obj.read_chunk(t, 0, Wait::NoWait).is_ok());
        assert!(matches!(
            obj.read_chunk(t, 1, Wait::Block),
            Err(ReadError::Corrupt(_))
        ));
        assert!(!path.exists(), "the corrupt file is deleted");
        assert_eq!(t.stats.corrupt.load(Ordering::Relaxed), 1);
        // a truncated file never opens
        let (p, c) = put(t, 4, &body);
        let path = t.object_path(&p, &c);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(1000).unwrap();
        assert!(t.lookup(p, c, usize::MAX, Wait::Block).unwrap().is_none());
        assert!(!path.exists());
        assert_eq!(t.stats.corrupt.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn max_size_bounds_the_files_and_a_restart_reindexes() {
        let dir = tempfile::tempdir().unwrap();
        let t = tier(dir.path(), 1 << 20);
        for k in 0..40u8 {
            put(t, k, &vec![k; 100 * 1024]);
        }
        assert!(t.size_bytes() <= 1 << 20, "{}", t.size_bytes());
        let on_disk: u64 = t.list().iter().map(|f| f.2).sum();
        assert!(on_disk <= 1 << 20, "{on_disk}");
        assert!(t.stats.evictions.load(Ordering::Relaxed) >= 30);
        // a leftover temporary file, as a crash leaves it
        fs::write(t.tmp.join("x.tmp"), b"partial").unwrap();
        let n = t.len();
        let again = tier(dir.path(), 1 << 20);
        assert_eq!(again.len(), n);
        assert!(!again.tmp.join("x.tmp").exists());
        // the most recent object is still there
        assert!(again
            .lookup([39; 16], [39; 16], usize::MAX, Wait::NoWait)
            .unwrap()
            .is_some());
        assert_eq!(again.remove_primary(&[39; 16]), 1);
        assert!(again
            .lookup([39; 16], [39; 16], usize::MAX, Wait::Block)
            .unwrap()
            .is_none());
        assert_eq!(again.clear(), n - 1);
    }

    #[test]
    fn a_revalidated_meta_is_seen_at_once_and_then_written() {
        let dir = tempfile::tempdir().unwrap();
        let t = tier(dir.path(), 16 << 20);
        let body = vec![5u8; 100_000];
        let (p, c) = put(t, 6, &body);
        let mut newer = meta();
        newer
            .response_header_mut()
            .insert_header("x-v", "2")
            .unwrap();
        t.update_meta(p, c, &newer);
        let seen = |t: &DiskTier| {
            t.lookup(p, c, usize::MAX, Wait::Block)
                .unwrap()
                .unwrap()
                .meta
                .headers()
                .get("x-v")
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(seen(t).as_deref(), Some("2"));
        for _ in 0..500 {
            if t.pending_count.load(Ordering::Relaxed) == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(t.pending_count.load(Ordering::Relaxed), 0);
        assert_eq!(seen(t).as_deref(), Some("2"), "the file has the new meta");
        let whole = t
            .lookup(p, c, usize::MAX, Wait::Block)
            .unwrap()
            .unwrap()
            .whole;
        assert_eq!(whole.unwrap(), body, "and the same body");
    }

    #[test]
    fn max_objects_bounds_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let t = DiskTier::open(dir.path(), 1 << 30, 1 << 20, 10);
        for _ in 0..200 {
            if t.indexed() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for k in 0..30u8 {
            put(t, k, b"small");
        }
        assert_eq!(t.len(), 10);
        assert_eq!(t.list().len(), 10, "evicted files are deleted");
    }

    #[test]
    fn a_missing_directory_leaves_the_tier_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let t = DiskTier::open(&dir.path().join("nope"), 1 << 20, 1 << 20, 1000);
        assert!(!t.available());
        assert!(t
            .lookup([1; 16], [1; 16], 0, Wait::Block)
            .unwrap()
            .is_none());
        assert!(!t.demote([1; 16], [1; 16], meta(), Bytes::from_static(b"x")));
        assert_eq!(t.stats.skipped.load(Ordering::Relaxed), 1);
    }
}
