//! A budget for HTTP/2 control frames per connection, and a short block for the sources of
//! connections that broke it.
//!
//! Rapid reset (open and cancel streams), SETTINGS and PING floods cost the gateway work for
//! every frame while producing no request, and an attacker whose connection is closed simply
//! opens the next one. The connection guard reads the client's h2 frame headers as they pass
//! ([`H2Budget`]): `RST_STREAM`, `PING`, `SETTINGS` and `PRIORITY` frames draw on a token
//! bucket (`server.limits.h2_control_frames_per_second`, a burst of four seconds' worth);
//! the connection that empties it is closed, and its source address is refused new
//! connections for `server.limits.abuse_block` ([`Blocklist`]). Trusted proxies are never
//! blocked (they carry many clients); their abusive connections are still closed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The h2 frame types that draw on the budget.
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const PRIORITY: u8 = 0x2;
/// The ACK flag of SETTINGS and PING (an ACK answers the gateway's own frame).
const ACK: u8 = 0x1;

/// Reads h2 frame headers out of a byte stream that arrives in pieces: the 9-byte header of
/// each frame, its payload skipped (or handed out in part, [`FrameHeads::payload`]).
#[derive(Debug, Default)]
struct FrameHeads {
    /// The frame header being read, and how much of it.
    head: [u8; 9],
    have: u8,
    /// Payload bytes of the current frame still to come.
    skip: u32,
}

impl FrameHeads {
    /// Consumes from `data` up to the next complete frame header, skipping payload bytes on
    /// the way: the header, or `None` when `data` ran out first.
    fn next(&mut self, data: &mut &[u8]) -> Option<[u8; 9]> {
        loop {
            if self.skip > 0 {
                let n = (self.skip as usize).min(data.len());
                self.skip -= n as u32;
                *data = &data[n..];
            }
            if data.is_empty() {
                return None;
            }
            let have = usize::from(self.have);
            let n = (9 - have).min(data.len());
            self.head[have..have + n].copy_from_slice(&data[..n]);
            self.have += n as u8;
            *data = &data[n..];
            if self.have == 9 {
                self.have = 0;
                self.skip = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]);
                return Some(self.head);
            }
        }
    }

    /// Takes up to `max` bytes of the current frame's payload from `data`.
    fn payload<'d>(&mut self, data: &mut &'d [u8], max: usize) -> &'d [u8] {
        let n = max.min(self.skip as usize).min(data.len());
        let (taken, rest) = data.split_at(n);
        self.skip -= n as u32;
        *data = rest;
        taken
    }
}

/// The client-to-gateway h2 byte stream's frame headers, and the control-frame bucket.
#[derive(Debug)]
pub struct H2Budget {
    /// Bytes of the connection preface still to skip.
    preface: u8,
    frames: FrameHeads,
    /// Tokens (frames) left, refilled at `rate` per second up to `burst`.
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Option<Instant>,
}

impl H2Budget {
    /// A budget of `rate` control frames per second (a burst of four seconds' worth).
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        H2Budget {
            preface: 24,
            frames: FrameHeads::default(),
            tokens: rate * 4.0,
            rate,
            burst: rate * 4.0,
            last: None,
        }
    }

    /// Reads `data` (the next bytes from the client): `false` once the budget is spent.
    pub fn feed(&mut self, mut data: &[u8]) -> bool {
        let p = usize::from(self.preface).min(data.len());
        self.preface -= p as u8;
        data = &data[p..];
        while let Some(h) = self.frames.next(&mut data) {
            let counted = match h[3] {
                RST_STREAM | PRIORITY => true,
                SETTINGS | PING => h[4] & ACK == 0,
                _ => false,
            };
            if counted && !self.spend() {
                return false;
            }
        }
        true
    }

    fn spend(&mut self) -> bool {
        let now = Instant::now();
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// The gateway-to-client h2 byte stream's frame headers: whether the HTTP/2 layer itself sent
/// `GOAWAY` with `ENHANCE_YOUR_CALM` (its own abuse checks: too many streams reset before
/// they were accepted, the rapid-reset pattern, closes the connection at 20). Such a source
/// is blocked like one that spent the control-frame budget.
#[derive(Debug, Default)]
pub struct GoawayWatch {
    frames: FrameHeads,
    /// The first 8 payload bytes of a `GOAWAY` (last stream id, error code), as they come.
    goaway: Option<([u8; 8], u8)>,
}

impl GoawayWatch {
    const GOAWAY: u8 = 0x7;
    const ENHANCE_YOUR_CALM: u32 = 0xb;

    /// Reads `data` (the next bytes written to the client): `true` when it completed a
    /// `GOAWAY` with `ENHANCE_YOUR_CALM`.
    pub fn feed(&mut self, mut data: &[u8]) -> bool {
        let mut calm = false;
        loop {
            if let Some((buf, have)) = &mut self.goaway {
                let at = usize::from(*have);
                let got = self.frames.payload(&mut data, 8 - at);
                buf[at..at + got.len()].copy_from_slice(got);
                *have += got.len() as u8;
                if *have < 8 {
                    return calm;
                }
                let code = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                calm |= code == Self::ENHANCE_YOUR_CALM;
                self.goaway = None;
            }
            match self.frames.next(&mut data) {
                Some(h) if h[3] == Self::GOAWAY && self.frames.skip >= 8 => {
                    self.goaway = Some(([0; 8], 0));
                }
                Some(_) => {}
                None => return calm,
            }
        }
    }
}

/// Source addresses refused for a while, at most [`Blocklist::CAPACITY`] of them. It is the
/// proxy listeners' Pingora connection filter: a refused source's connections are closed in
/// the accept loop, before any per-connection work.
#[derive(Debug, Default)]
pub struct Blocklist {
    until: Mutex<HashMap<IpAddr, Instant>>,
    /// Entries in the map, read without the lock on every accepted connection.
    len: AtomicUsize,
    /// `gatehouse_connections_refused_total{reason="blocked"}`
    refused: Option<prometheus::IntCounter>,
}

#[async_trait::async_trait]
impl pingora_core::listeners::ConnectionFilter for Blocklist {
    async fn should_accept(&self, addr: Option<&std::net::SocketAddr>) -> bool {
        let blocked = self.any() && addr.is_some_and(|a| self.blocked(a.ip().to_canonical()));
        if blocked {
            if let Some(c) = &self.refused {
                c.inc();
            }
        }
        !blocked
    }
}

impl Blocklist {
    pub const CAPACITY: usize = 4096;

    /// An empty list counting what it refuses in `refused`.
    pub fn new(refused: prometheus::IntCounter) -> Self {
        Blocklist {
            refused: Some(refused),
            ..Blocklist::default()
        }
    }

    /// Whether any source is on the list (no lock taken).
    pub fn any(&self) -> bool {
        self.len.load(Ordering::Relaxed) > 0
    }

    /// Whether `ip` is refused now.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        if self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let Ok(mut map) = self.until.lock() else {
            return false;
        };
        match map.get(&ip) {
            Some(&t) if t > Instant::now() => true,
            Some(_) => {
                map.remove(&ip);
                self.len.store(map.len(), Ordering::Relaxed);
                false
            }
            None => false,
        }
    }

    /// Refuses `ip` for `d`. When the list is full of live entries, the one that ends
    /// soonest makes room.
    pub fn block(&self, ip: IpAddr, d: Duration) {
        let Ok(mut map) = self.until.lock() else {
            return;
        };
        let now = Instant::now();
        if map.len() >= Self::CAPACITY && !map.contains_key(&ip) {
            map.retain(|_, t| *t > now);
            if map.len() >= Self::CAPACITY {
                if let Some(k) = map.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                    map.remove(&k);
                }
            }
        }
        map.insert(ip, now + d);
        self.len.store(map.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![
            0,
            (payload >> 8) as u8,
            payload as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.resize(9 + payload, 0xAA);
        f
    }

    #[test]
    fn counts_control_frames_across_any_split() {
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for _ in 0..10 {
            wire.extend(frame(0x1, 0x5, 300)); // HEADERS: free
            wire.extend(frame(RST_STREAM, 0, 4));
            wire.extend(frame(PING, ACK, 8)); // an ACK: free
            wire.extend(frame(0x0, 0, 1000)); // DATA: free
        }
        for split in [1, 7, 9, 100, wire.len()] {
            // 10 tokens (rate 2.5/s, burst 4 s): all ten resets pass, an eleventh does not
            let mut b = H2Budget::new(3);
            b.tokens = 10.0;
            b.burst = 10.0;
            b.rate = 1e-9;
            assert!(wire.chunks(split).all(|c| b.feed(c)), "split {split}");
            assert!(!b.feed(&frame(SETTINGS, 0, 6)), "split {split}");
        }
    }

    #[test]
    fn sees_enhance_your_calm_across_any_split() {
        let mut wire = frame(SETTINGS, 0, 6);
        wire.extend(frame(0x1, 0x4, 40)); // HEADERS
        let mut goaway = frame(0x7, 0, 8 + 13);
        goaway[9..17].copy_from_slice(&[0, 0, 0, 41, 0, 0, 0, 0xb]);
        wire.extend(goaway);
        for split in 1..wire.len() {
            let mut w = GoawayWatch::default();
            let seen = wire.chunks(split).fold(false, |a, c| a | w.feed(c));
            assert!(seen, "split {split}");
        }
        // NO_ERROR is a plain close
        let mut other = frame(0x7, 0, 8);
        other[9..17].copy_from_slice(&[0, 0, 0, 41, 0, 0, 0, 0]);
        assert!(!GoawayWatch::default().feed(&other));
    }

    #[test]
    fn the_bucket_refills() {
        let mut b = H2Budget::new(1000);
        b.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let ping = frame(PING, 0, 8);
        let spent = (0..10_000).take_while(|_| b.feed(&ping)).count();
        assert!((4000..4100).contains(&spent), "{spent}");
        std::thread::sleep(Duration::from_millis(20));
        assert!(b.feed(&ping), "refilled after 20 ms at 1000/s");
    }

    #[test]
    fn blocklist_is_bounded_and_expires() {
        let l = Blocklist::default();
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(i));
        assert!(!l.blocked(ip(1)));
        l.block(ip(1), Duration::from_millis(30));
        assert!(l.blocked(ip(1)));
        for i in 2..(Blocklist::CAPACITY as u32 + 100) {
            l.block(ip(i), Duration::from_secs(60));
        }
        assert!(l.until.lock().unwrap().len() <= Blocklist::CAPACITY);
        assert!(l.blocked(ip(Blocklist::CAPACITY as u32 + 50)));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!l.blocked(ip(1)));
    }
}
