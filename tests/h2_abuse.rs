//! HTTP/2 denial-of-service patterns against an h2c listener, written as raw frames: rapid
//! reset (CVE-2023-44487), a CONTINUATION flood (CVE-2024-27316 family), an oversized header
//! list, a SETTINGS and PING flood, and too many concurrent streams. For each: the attacker's
//! connection is refused or closed within a bounded number of frames, the process's memory
//! stays bounded, and a normal client is still served. And the other way round: the request
//! id, new in every response, never enters a client's HPACK table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::{free_port, TestGateway, TestUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET http://a/`: indexed :method GET, :scheme http, :path /, literal :authority.
const GET_BLOCK: &[u8] = &[0x82, 0x86, 0x84, 0x41, 0x01, b'a'];
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

struct Setup {
    gw: TestGateway,
    h2c: u16,
    up: TestUpstream,
}

async fn setup() -> Setup {
    let up = TestUpstream::start("up").await;
    let port = Mutex::new(0u16);
    let gw = TestGateway::start(|p| {
        let h2c = free_port();
        *port.lock().unwrap() = h2c;
        format!(
            "server:\n  listen:\n    - \"127.0.0.1:{}\"\n    - {{ addr: \"127.0.0.1:{h2c}\", h2c: true }}\n  access_log: off\n  grace_period: 1s\nadmin:\n  listen: \"127.0.0.1:{}\"\nupstreams:\n  up: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ id: all, upstream: up }}\n",
            p.proxy, p.admin, up.addr
        )
    })
    .await;
    let h2c = *port.lock().unwrap();
    Setup { gw, h2c, up }
}

impl Setup {
    /// A connection from 127.0.0.2 (the normal client comes from 127.0.0.1: the gateway
    /// refuses an attacker's address for a while), with the preface sent.
    async fn attacker(&self) -> tokio::net::TcpStream {
        let mut s = attacker_socket(self.h2c).await.unwrap();
        s.write_all(PREFACE).await.unwrap();
        s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        s
    }

    /// A well-behaved HTTP/2 client gets its answer.
    async fn normal_client_served(&self) {
        let c = reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let r = c
            .get(format!("http://127.0.0.1:{}/normal", self.h2c))
            .send()
            .await
            .unwrap();
        assert_eq!(
            (r.status().as_u16(), r.version()),
            (200, reqwest::Version::HTTP_2)
        );
    }

    /// A new connection from the attacker's address is closed unread.
    async fn assert_attacker_refused(&self) {
        let Ok(mut again) = attacker_socket(self.h2c).await else {
            return; // refused at connect: refused all the same
        };
        let _ = again.write_all(PREFACE).await;
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), again.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a blocked address was served: {read:?}"
        );
    }

    /// `gatehouse_connections_refused_total{reason}` is above 0 for each of `reasons`.
    async fn assert_refused_counted(&self, reasons: &[&str]) {
        let metrics = self.gw.metrics().await;
        for reason in reasons {
            let line = format!("gatehouse_connections_refused_total{{reason=\"{reason}\"}} ");
            assert!(
                metrics
                    .lines()
                    .any(|l| l.starts_with(&line) && !l.ends_with(" 0")),
                "{reason} not counted: {metrics}"
            );
        }
    }

    fn rss_mib(&self) -> u64 {
        self.gw.rss_kib() / 1024
    }
}

async fn attacker_socket(port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind("127.0.0.2:0".parse().unwrap())?;
    sock.connect(([127, 0, 0, 1], port).into()).await
}

/// What the server sent next.
#[derive(Debug, PartialEq)]
enum Next {
    /// A whole frame of this type.
    Frame(u8),
    Closed,
    TimedOut,
}

/// Reads the server's frames one at a time.
struct FrameReader {
    r: tokio::net::tcp::OwnedReadHalf,
    buf: Vec<u8>,
    /// Start of the first frame not returned yet.
    at: usize,
    /// Where the frame returned last starts in `buf`.
    last: usize,
}

impl FrameReader {
    fn new(r: tokio::net::tcp::OwnedReadHalf) -> Self {
        FrameReader {
            r,
            buf: Vec::new(),
            at: 0,
            last: 0,
        }
    }

    /// The next whole frame's type, the end of the connection, or nothing before `deadline`.
    async fn next(&mut self, deadline: tokio::time::Instant) -> Next {
        loop {
            let b = &self.buf[self.at..];
            if b.len() >= 9 {
                let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
                if b.len() >= 9 + len {
                    let kind = b[3];
                    self.last = self.at;
                    self.at += 9 + len;
                    return Next::Frame(kind);
                }
            }
            // what was parsed is dropped only before reading more (no copy per frame)
            self.buf.drain(..self.at);
            self.at = 0;
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout_at(deadline, self.r.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Next::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return Next::TimedOut,
            }
        }
    }

    /// The flags, stream and payload of the frame returned last.
    fn last(&self) -> (u8, u32, &[u8]) {
        let f = &self.buf[self.last..self.at];
        let stream = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
        (f[4], stream, &f[9..])
    }
}

/// A field representation in an HPACK block (RFC 7541 §6).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rep {
    Indexed,
    /// Literal with incremental indexing: the field enters the decoder's table.
    Incremental,
    NotIndexed,
    NeverIndexed,
    SizeUpdate,
}

/// The representations of an HPACK block, in order; string literals are skipped, not
/// decoded.
fn representations(mut b: &[u8]) -> Vec<Rep> {
    fn int(b: &mut &[u8], prefix: u32) -> usize {
        let mask = (1usize << prefix) - 1;
        let mut v = usize::from(b[0]) & mask;
        *b = &b[1..];
        if v == mask {
            let mut shift = 0;
            loop {
                let c = b[0];
                *b = &b[1..];
                v += usize::from(c & 0x7f) << shift;
                shift += 7;
                if c & 0x80 == 0 {
                    break;
                }
            }
        }
        v
    }
    fn skip_str(b: &mut &[u8]) {
        let len = int(b, 7);
        *b = &b[len..];
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let first = b[0];
        let rep = if first & 0x80 != 0 {
            int(&mut b, 7);
            Rep::Indexed
        } else if first & 0x40 != 0 {
            if int(&mut b, 6) == 0 {
                skip_str(&mut b);
            }
            skip_str(&mut b);
            Rep::Incremental
        } else if first & 0x20 != 0 {
            int(&mut b, 5);
            Rep::SizeUpdate
        } else {
            if int(&mut b, 4) == 0 {
                skip_str(&mut b);
            }
            skip_str(&mut b);
            if first & 0x10 != 0 {
                Rep::NeverIndexed
            } else {
                Rep::NotIndexed
            }
        };
        out.push(rep);
    }
    out
}

/// Writes `frames` (stopping when the peer stops reading or closes) while draining what the
/// server sends; true when the server closed the connection or sent GOAWAY within `max`.
async fn flood_until_closed(s: tokio::net::TcpStream, frames: Vec<Vec<u8>>, max: Duration) -> bool {
    let (r, mut w) = s.into_split();
    let reader = tokio::spawn(async move {
        let mut frames = FrameReader::new(r);
        let deadline = tokio::time::Instant::now() + max;
        loop {
            match frames.next(deadline).await {
                Next::Closed | Next::Frame(GOAWAY) => return true,
                Next::Frame(_) => {}
                Next::TimedOut => return false,
            }
        }
    });
    for f in frames {
        let write = tokio::time::timeout(Duration::from_secs(5), w.write_all(&f)).await;
        if !matches!(write, Ok(Ok(()))) {
            break;
        }
    }
    tokio::time::timeout(Duration::from_secs(15), reader)
        .await
        .map(|r| r.unwrap())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off() {
    let st = setup().await;
    let rss_before = st.rss_mib();
    let mut frames = Vec::new();
    for i in 0..20_000u32 {
        let id = 1 + 2 * i;
        frames.push(frame(HEADERS, END_STREAM | END_HEADERS, id, GET_BLOCK));
        frames.push(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let s = st.attacker().await;
    assert!(
        flood_until_closed(s, frames, Duration::from_secs(10)).await,
        "20,000 opened-and-reset streams did not get the connection closed"
    );
    // the HTTP/2 layer's GOAWAY (ENHANCE_YOUR_CALM) blocks the source: no reconnecting
    st.assert_attacker_refused().await;
    st.normal_client_served().await;
    assert!(st.rss_mib() < rss_before + 100, "memory grew past 100 MiB");
    st.assert_refused_counted(&["h2_enhance_your_calm", "blocked"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_and_oversized_headers_are_cut_off() {
    let st = setup().await;
    let rss_before = st.rss_mib();
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end the block
    let mut junk = Vec::new();
    for i in 0..200u32 {
        // literal header without indexing, new name: 0x00, name, value
        let name = format!("x-junk-{i}");
        junk.push(0x00);
        junk.push(name.len() as u8);
        junk.extend_from_slice(name.as_bytes());
        junk.push(100);
        junk.extend(std::iter::repeat_n(b'v', 100));
    }
    let mut frames = vec![frame(HEADERS, END_STREAM, 1, GET_BLOCK)];
    for _ in 0..20_000 {
        frames.push(frame(CONTINUATION, 0, 1, &junk[..1000]));
    }
    let s = st.attacker().await;
    assert!(
        flood_until_closed(s, frames, Duration::from_secs(10)).await,
        "an endless CONTINUATION sequence did not get the connection closed"
    );
    // one complete header block far over the header list limit (64 KiB): 8 x ~22 KiB
    let mut frames = vec![frame(HEADERS, END_STREAM, 1, GET_BLOCK)];
    for _ in 0..8 {
        for chunk in junk.chunks(16_000) {
            frames.push(frame(CONTINUATION, 0, 1, chunk));
        }
    }
    frames.push(frame(CONTINUATION, END_HEADERS, 1, &[]));
    frames.push(frame(PING, 0, 0, &[0; 8]));
    let s = st.attacker().await;
    let (r, mut w) = s.into_split();
    for f in frames {
        if w.write_all(&f).await.is_err() {
            // the gateway cut the connection off while the block was still coming in
            break;
        }
    }
    // the stream is refused (RST_STREAM or GOAWAY), or answered by the gateway itself (a
    // response HEADERS: its 431), never served upstream (checked below)
    let mut frames = FrameReader::new(r);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        match frames.next(deadline).await {
            Next::Closed | Next::Frame(RST_STREAM | GOAWAY | HEADERS) => break true,
            Next::Frame(_) => {}
            Next::TimedOut => break false,
        }
    };
    assert!(refused, "an oversized header list got no answer");
    assert_eq!(st.up.hits(), 0, "an oversized header list went upstream");
    st.normal_client_served().await;
    assert!(st.rss_mib() < rss_before + 100, "memory grew past 100 MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_ping_floods_stay_bounded() {
    let st = setup().await;
    let rss_before = st.rss_mib();
    let mut frames = Vec::new();
    for i in 0..50_000u64 {
        frames.push(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        frames.push(frame(PING, 0, 0, &i.to_be_bytes()));
    }
    let s = st.attacker().await;
    // the control-frame budget (100/s, a burst of 400) closes the connection
    assert!(
        flood_until_closed(s, frames, Duration::from_secs(10)).await,
        "100,000 SETTINGS and PING frames did not get the connection closed"
    );
    // the attacker's address is refused for a while
    st.assert_attacker_refused().await;
    st.normal_client_served().await;
    assert!(st.rss_mib() < rss_before + 100, "memory grew past 100 MiB");
    st.assert_refused_counted(&["h2_control_frames", "blocked"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_concurrency_limit_are_refused() {
    let st = setup().await;
    // 500 streams opened at once, none finished (no END_STREAM): the limit is 100
    let block_without_end = GET_BLOCK;
    let mut frames = Vec::new();
    for i in 0..500u32 {
        frames.push(frame(HEADERS, END_HEADERS, 1 + 2 * i, block_without_end));
    }
    let s = st.attacker().await;
    let (r, mut w) = s.into_split();
    for f in &frames {
        w.write_all(f).await.unwrap();
    }
    let mut frames = FrameReader::new(r);
    let mut resets = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let closed = loop {
        match frames.next(deadline).await {
            Next::Closed => break true,
            Next::Frame(RST_STREAM) => {
                resets += 1;
                if resets >= 400 {
                    break false;
                }
            }
            Next::Frame(_) => {}
            Next::TimedOut => break false,
        }
    };
    assert!(
        closed || resets >= 400,
        "streams over the limit were neither refused nor the connection closed ({resets} resets)"
    );
    st.normal_client_served().await;
}

/// The request id is new in every response: sent as a literal never indexed (RFC 7541
/// §6.2.3), it never enters the client's HPACK table, where each one would evict the entries
/// that do repeat (and intermediaries are told not to index it either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_never_enters_the_clients_hpack_table() {
    let st = setup().await;
    let s = tokio::net::TcpStream::connect(("127.0.0.1", st.h2c))
        .await
        .unwrap();
    let (r, mut w) = s.into_split();
    w.write_all(PREFACE).await.unwrap();
    w.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let streams = [1u32, 3, 5, 7];
    for id in streams {
        let f = frame(HEADERS, END_STREAM | END_HEADERS, id, GET_BLOCK);
        w.write_all(&f).await.unwrap();
    }
    let mut frames = FrameReader::new(r);
    let mut blocks = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while blocks.len() < streams.len() {
        match frames.next(deadline).await {
            Next::Frame(HEADERS) => {
                let (flags, stream, payload) = frames.last();
                // one frame per block, no padding or priority: the block is the payload
                assert_eq!(flags & (0x8 | 0x20), 0, "{flags:#x}");
                assert_eq!(flags & END_HEADERS, END_HEADERS, "{flags:#x}");
                blocks.push((stream, representations(payload)));
            }
            Next::Frame(_) => {}
            other => panic!("{other:?} after {} responses", blocks.len()),
        }
    }
    for (stream, reps) in &blocks {
        // `:status: 200` first, from the static table
        assert_eq!(
            reps.first(),
            Some(&Rep::Indexed),
            "stream {stream}: {reps:?}"
        );
        let never = reps.iter().filter(|r| **r == Rep::NeverIndexed).count();
        assert_eq!(never, 1, "stream {stream}: {reps:?}");
    }
    assert_eq!(st.up.hits(), streams.len());
}
