//! Cache purges from the other instances: a background service that follows the purge stream
//! (`<key_prefix>cache:purge`, a Redis Stream: unlike pub/sub it keeps what was sent while a
//! reader was away) and applies every purge another instance published (`POST /cache/purge`
//! there). It reads on a connection of its own (`XREAD BLOCK` would hold up the shared one).
//!
//! Where it stands is the last entry id it applied, how many entries the stream had taken in
//! up to there (`entries-added` of `XINFO STREAM`, counted on), and the Redis server's
//! `run_id`. After a broken connection it goes on from that id, replaying exactly the purges
//! it missed, unless it cannot prove it missed none: Redis restarted (another `run_id`: the
//! stream is new), the stream is gone, or fewer entries are left after its position than were
//! added since (trimmed or deleted). Then it empties the whole local cache
//! (`gatehouse_cache_flushes_total{reason}`): a cache is only a copy, and serving a purged
//! object for its whole TTL is what a purge must prevent.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use redis::Value;

use crate::proxy::cache::CacheRuntime;
use crate::redis_link::RedisLink;
use crate::state::SharedState;

/// A stream entry id, `ms-seq`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryId(u64, u64);

impl EntryId {
    pub fn parse(s: &str) -> Option<EntryId> {
        let (ms, seq) = s.split_once('-')?;
        Some(EntryId(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// How far the feed has read, on which Redis server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    run_id: String,
    last: EntryId,
    /// `entries-added` of the stream when it was at `last`.
    added: u64,
}

/// The stream as `XINFO STREAM` describes it (`None`: no stream).
struct StreamInfo {
    last_generated: EntryId,
    entries_added: u64,
}

/// Why the local cache is emptied on reconnecting, if it must be: `stream` is what Redis
/// has now, `left` how many entries it still holds after `at.last` (looked up only when
/// entries were added since).
fn must_flush(
    at: &Position,
    run_id: &str,
    stream: Option<&StreamInfo>,
    left: u64,
) -> Option<&'static str> {
    if at.run_id != run_id {
        return Some("restart");
    }
    match stream {
        None if at.added > 0 => Some("gap"),
        Some(s) if left < s.entries_added.saturating_sub(at.added) => Some("gap"),
        _ => None,
    }
}

/// The background service.
pub struct PurgeFeed {
    pub state: Arc<SharedState>,
    pub cache: CacheRuntime,
}

#[async_trait]
impl BackgroundService for PurgeFeed {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut at: Option<Position> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let link = self.state.snapshot().redis.clone();
            if let Some(link) = link {
                if let Err(e) = self.follow(&link, &mut at, &mut shutdown).await {
                    log::debug!("purge feed: {e}");
                }
                link.metrics().feed_up.set(0);
            } else {
                at = None;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

impl PurgeFeed {
    /// Follows `link`'s stream until an error, a change of link, or shutdown.
    async fn follow(
        &self,
        link: &Arc<RedisLink>,
        at: &mut Option<Position>,
        shutdown: &mut ShutdownWatch,
    ) -> Result<(), String> {
        let limit = link.settings.connect_timeout;
        let client = link.client();
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(limit))
            // longer than the blocking read below
            .set_response_timeout(Some(Duration::from_secs(3)));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(text)?;
        let key = link.purge_stream();
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .map_err(text)?;
        let run_id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|r| r.trim().to_string())
            .ok_or("no run_id in INFO")?;
        let stream = stream_info(&mut conn, &key).await?;
        let metrics = link.metrics();
        let start = Position {
            run_id: run_id.clone(),
            last: stream
                .as_ref()
                .map(|s| s.last_generated)
                .unwrap_or_default(),
            added: stream.as_ref().map_or(0, |s| s.entries_added),
        };
        let pos = match at.take() {
            None => start,
            Some(old) => {
                let missed = stream
                    .as_ref()
                    .map_or(0, |s| s.entries_added.saturating_sub(old.added));
                let left = if missed > 0 && old.run_id == run_id {
                    count_after(&mut conn, &key, old.last, missed).await?
                } else {
                    0
                };
                match must_flush(&old, &run_id, stream.as_ref(), left) {
                    Some(reason) => {
                        let n = self.cache.clear().await;
                        log::warn!(
                            "purge feed: purges may have been missed ({reason}): emptied the cache ({n} objects)"
                        );
                        metrics.flushes.with_label_values(&[reason]).inc();
                        start
                    }
                    None => old,
                }
            }
        };
        *at = Some(pos);
        metrics.feed_up.set(1);
        loop {
            let last = at.as_ref().map(|p| p.last).unwrap_or_default();
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(100)
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(&key)
                .arg(last.to_string());
            let read = cmd.query_async::<Value>(&mut conn);
            let reply = tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                r = read => r.map_err(text)?,
            };
            let snap = self.state.snapshot();
            for (id, url, origin) in entries(&reply) {
                if origin != link.instance_id() {
                    if let Some(n) = crate::admin::purge_local(&self.cache, &snap, &url).await {
                        log::debug!("purge feed: {url} from {origin}: {n} objects");
                        metrics.purges.with_label_values(&["applied"]).inc();
                    }
                }
                if let Some(p) = at.as_mut() {
                    p.last = id;
                    p.added += 1;
                }
            }
            // a reload that changed the `redis` section: follow the new link
            if !snap.redis.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
                return Ok(());
            }
        }
    }
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// `XINFO STREAM key`: `Ok(None)` when there is no stream yet.
async fn stream_info(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Result<Option<StreamInfo>, String> {
    let reply = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query_async::<Value>(conn)
        .await;
    let fields = match reply {
        Ok(v) => v,
        Err(e) if e.to_string().contains("no such key") => return Ok(None),
        Err(e) => return Err(text(e)),
    };
    let pairs = flat_pairs(&fields);
    let id = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| as_text(v))
            .and_then(|t| EntryId::parse(&t))
            .unwrap_or_default()
    };
    let added = pairs
        .iter()
        .find(|(k, _)| k == "entries-added")
        .and_then(|(_, v)| match v {
            Value::Int(n) => u64::try_from(*n).ok(),
            other => as_text(other)?.parse().ok(),
        })
        .ok_or("no entries-added in XINFO STREAM (Redis 7.0 or later is needed)")?;
    Ok(Some(StreamInfo {
        last_generated: id("last-generated-id"),
        entries_added: added,
    }))
}

/// How many entries the stream holds after `after`, counting to `max` at most.
async fn count_after(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    after: EntryId,
    max: u64,
) -> Result<u64, String> {
    let reply: Value = redis::cmd("XRANGE")
        .arg(key)
        .arg(format!("({after}"))
        .arg("+")
        .arg("COUNT")
        .arg(max)
        .query_async(conn)
        .await
        .map_err(text)?;
    Ok(match reply {
        Value::Array(a) => a.len() as u64,
        _ => 0,
    })
}

/// A reply's key/value pairs (RESP2 flat array or RESP3 map).
fn flat_pairs(v: &Value) -> Vec<(String, Value)> {
    match v {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|c| Some((as_text(c.first()?)?, c.get(1)?.clone())))
            .collect(),
        Value::Map(m) => m
            .iter()
            .filter_map(|(k, v)| Some((as_text(k)?, v.clone())))
            .collect(),
        _ => Vec::new(),
    }
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// The entries of an `XREAD` reply on one stream: (id, url, origin).
fn entries(reply: &Value) -> Vec<(EntryId, String, String)> {
    // [[key, [[id, [field, value, ...]], ...]]] (RESP3: {key: [...]})
    let streams: Vec<Value> = match reply {
        Value::Array(s) => s
            .iter()
            .filter_map(|kv| match kv {
                Value::Array(kv) => kv.get(1).cloned(),
                _ => None,
            })
            .collect(),
        Value::Map(m) => m.iter().map(|(_, v)| v.clone()).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for s in streams {
        let Value::Array(items) = s else { continue };
        for item in items {
            let Value::Array(pair) = item else { continue };
            let (Some(id), Some(fields)) = (pair.first().and_then(as_text), pair.get(1)) else {
                continue;
            };
            let Some(id) = EntryId::parse(&id) else {
                continue;
            };
            let f = flat_pairs(fields);
            let get = |n: &str| {
                f.iter()
                    .find(|(k, _)| k == n)
                    .and_then(|(_, v)| as_text(v))
                    .unwrap_or_default()
            };
            out.push((id, get("url"), get("origin")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_and_parse() {
        assert!(EntryId::parse("5-1") > EntryId::parse("4-9"));
        assert!(EntryId::parse("5-10") > EntryId::parse("5-9"));
        assert_eq!(EntryId::parse("x"), None);
        assert_eq!(EntryId(7, 3).to_string(), "7-3");
    }

    #[test]
    fn flush_decisions() {
        let at = Position {
            run_id: "a".into(),
            last: EntryId(10, 0),
            added: 5,
        };
        let s = |added: u64| StreamInfo {
            last_generated: EntryId(20, 0),
            entries_added: added,
        };
        assert_eq!(must_flush(&at, "b", Some(&s(5)), 0), Some("restart"));
        assert_eq!(must_flush(&at, "a", Some(&s(5)), 0), None, "nothing new");
        assert_eq!(
            must_flush(&at, "a", Some(&s(8)), 3),
            None,
            "three to replay"
        );
        assert_eq!(
            must_flush(&at, "a", Some(&s(8)), 2),
            Some("gap"),
            "one trimmed"
        );
        assert_eq!(must_flush(&at, "a", None, 0), Some("gap"), "stream gone");
        let start = Position {
            run_id: "a".into(),
            last: EntryId::default(),
            added: 0,
        };
        assert_eq!(
            must_flush(&start, "a", None, 0),
            None,
            "nothing read, nothing missed"
        );
    }

    #[test]
    fn xread_entries() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("gh:cache:purge"),
            Value::Array(vec![Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![
                    bulk("url"),
                    bulk("http://a.test/x"),
                    bulk("origin"),
                    bulk("i1"),
                ]),
            ])]),
        ])]);
        assert_eq!(
            entries(&reply),
            [(EntryId(1, 0), "http://a.test/x".into(), "i1".into())]
        );
        assert!(entries(&Value::Nil).is_empty());
    }
}
