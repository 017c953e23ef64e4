//! Connection-level guards around the proxy's Pingora app: a cap on concurrent connections
//! (beyond it new connections are closed at once) and a deadline for each request head
//! (slowloris): Pingora only bounds each single read, so a client trickling one byte at a time
//! could hold a connection open indefinitely.
//!
//! The deadline is enforced by wrapping the accepted stream ([`HeadDeadline`]): while a request
//! head is being read, a read that would pass the deadline fails with `TimedOut`, which makes
//! Pingora drop the connection. The head ends at the first `\r\n\r\n`; a new head starts with
//! the first bytes read after the gateway wrote a response. (A request body sent only after a
//! `100 Continue` therefore counts as a head until its first blank line; such uploads must
//! start within `header_read_timeout`.)
//!
//! Idle connections are cheap: Pingora allocates its whole per-request state (the boxed
//! `process_new_http` future, ~20 KiB) before it reads a request, so a keep-alive connection
//! waiting for its next request would hold all of it. [`Guarded`] runs the HTTP/1 keep-alive
//! loop itself instead and waits for the first bytes of each request with a small future;
//! the bytes read while waiting are handed to Pingora's parser first ([`HeadDeadline`]), so
//! this costs no extra syscall.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::ALPN;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::abuse::{Blocklist, GoawayWatch, H2Budget};
use super::strict::{BadBody, ChunkCheck, ChunkStep, FieldSeen};
use crate::state::SharedState;
use crate::tls::TlsListener;

/// Wraps the proxy app with the connection limits of the current config
/// (`server.limits.header_read_timeout`, `max_connections`; a reload applies to new
/// connections).
pub struct Guarded<A> {
    pub inner: Arc<A>,
    pub state: Arc<SharedState>,
    pub active: Arc<AtomicUsize>,
    /// `gatehouse_connections_active{listener="proxy"}`
    pub active_gauge: prometheus::IntGauge,
    /// `gatehouse_connections_accepted_total{listener="proxy"}`
    pub accepted: prometheus::IntCounter,
    /// `gatehouse_tls_handshakes_total{listener,result}`, `gatehouse_tls_sessions_total`
    pub(crate) tls_metrics: crate::metrics::TlsMetrics,
    /// Set (and `idle_close` notified) when idle connections are to be closed (cleanup).
    pub closed: std::sync::atomic::AtomicBool,
    pub idle_close: Notify,
    /// Sources refused for a while (`proxy::abuse`; also the listeners' connection filter,
    /// which does the refusing); kept across reloads.
    pub(crate) blocklist: Arc<Blocklist>,
    /// `gatehouse_connections_refused_total{reason}`
    pub(crate) refused: prometheus::IntCounterVec,
    /// `gatehouse_connections_paused_total`
    pub(crate) paused: prometheus::IntCounter,
}

/// The first bytes of every HTTP/2 connection (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a keep-alive connection may wait for its next request: Pingora's keep-alive
/// timeout, which gatehouse keeps.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

impl<A> Guarded<A> {
    /// A guard around `inner`.
    pub(crate) fn new(
        inner: A,
        state: Arc<SharedState>,
        conns: &crate::metrics::ConnectionMetrics,
        tls_metrics: crate::metrics::TlsMetrics,
        blocklist: Arc<Blocklist>,
    ) -> Self {
        Guarded {
            blocklist,
            refused: conns.refused.clone(),
            paused: conns.paused.clone(),
            tls_metrics,
            inner: Arc::new(inner),
            state,
            active: Arc::new(AtomicUsize::new(0)),
            active_gauge: conns.active.with_label_values(&["proxy"]),
            accepted: conns.accepted.with_label_values(&["proxy"]),
            closed: std::sync::atomic::AtomicBool::new(false),
            idle_close: Notify::new(),
        }
    }

    /// Waits for the first bytes of the next request on `hd`: `false` when the client closed
    /// or failed, the head deadline passed, the gateway is closing idle connections, or
    /// (with `idle`) the connection stayed idle that long. The idle timer and the close
    /// notification belong to the connection (`w`): set up the first time a wait is not
    /// answered at once, then only re-armed (extending a timer is lock-free in tokio).
    async fn wait_for_request<'a>(
        &'a self,
        hd: &mut HeadDeadline,
        idle: Option<Duration>,
        w: &mut Waits<'a>,
    ) -> bool {
        let mut armed = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = hd.poll_first_bytes(cx) {
                return Poll::Ready(r.unwrap_or(false));
            }
            let n = w
                .closing
                .get_or_insert_with(|| Box::pin(self.idle_close.notified()));
            // checked after registering, so a close between the two is not missed
            if n.as_mut().poll(cx).is_ready() || self.closed.load(Ordering::Acquire) {
                return Poll::Ready(false);
            }
            if let Some(idle) = idle {
                if !armed {
                    armed = true;
                    let at = Instant::now() + idle;
                    match &mut w.idle {
                        Some(s) => s.as_mut().reset(at),
                        None => w.idle = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                }
                if let Some(s) = &mut w.idle {
                    if s.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(false);
                    }
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// A connection's wait state between requests, created on first use.
#[derive(Default)]
struct Waits<'a> {
    idle: Option<Pin<Box<Sleep>>>,
    closing: Option<Pin<Box<tokio::sync::futures::Notified<'a>>>>,
}

struct ActiveGuard(Arc<AtomicUsize>, prometheus::IntGauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.dec();
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let digest = session.get_socket_digest();
        let peer = || {
            (digest.as_ref()).and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
        };
        let snap = self.state.snapshot();
        let (max, head_timeout) = (snap.server.max_connections, snap.server.header_read_timeout);
        let listener = (digest.as_ref())
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied())
            .and_then(|local| snap.server.listener_for(local));
        let h2c = listener.is_some_and(|l| l.h2c);
        let tls = listener.and_then(|l| Some((Arc::clone(&l.label), l.tls.clone()?)));
        let budget = snap.server.h2_control_frames_per_second;
        // the source to refuse when it breaks the h2 budget (never a trusted proxy)
        let block = (budget > 0 && !snap.server.abuse_block.is_zero())
            .then(peer)
            .flatten()
            .filter(|ip| !snap.server.is_trusted(*ip))
            .map(|ip| (ip, snap.server.abuse_block));
        drop(snap);
        self.accepted.inc();
        self.active_gauge.inc();
        let before = self.active.fetch_add(1, Ordering::Relaxed);
        let _guard = ActiveGuard(Arc::clone(&self.active), self.active_gauge.clone());
        if before >= max {
            log::debug!("max_connections ({max}) reached, closing a new connection");
            self.refused.with_label_values(&["max_connections"]).inc();
            return None;
        }
        let watch = (budget > 0).then(|| H2Watch {
            budget: H2Budget::new(budget),
            out: GoawayWatch::default(),
            block: block.map(|(ip, d)| (Arc::clone(&self.blocklist), ip, d)),
            refused: self.refused.with_label_values(&["h2_control_frames"]),
            calm: self.refused.with_label_values(&["h2_enhance_your_calm"]),
        });
        // the handshake counts against the cap and has its own deadline
        let session = match tls {
            Some((listener, tls)) => {
                // boxed: the handshake's state is large, and inline it would be part of every
                // connection's task, plain ones included, for the connection's whole life
                let (stream, result) = Box::pin(handshake(session, &tls)).await;
                let m = &self.tls_metrics;
                m.handshakes.with_label_values(&[&*listener, result]).inc();
                let stream = stream?;
                let version = match stream.get_ssl_digest().as_deref().map(|d| &*d.version) {
                    Some("TLSv1_2" | "TLSv1.2") => "1.2",
                    _ => "1.3",
                };
                let protocol = match stream.selected_alpn_proto() {
                    Some(ALPN::H2) => "h2",
                    Some(ALPN::Custom(c)) if c.protocol() == crate::acme::ACME_TLS_ALPN => {
                        // a TLS-ALPN-01 validation: the handshake was the answer (RFC 8737:
                        // no data follows)
                        return None;
                    }
                    _ => "http/1.1",
                };
                m.sessions
                    .with_label_values(&[&*listener, version, protocol])
                    .inc();
                stream
            }
            None => session,
        };
        let mut hd = Box::new(HeadDeadline::new(session, head_timeout));
        let mut waits = Waits::default();
        if hd.selected_alpn_proto() == Some(ALPN::H2) {
            // the client's whole preface within the head deadline (Pingora's h2 handshake has
            // no timeout of its own), then Pingora's own HTTP/2 path: GOAWAY on shutdown, idle
            // timeout, one task per stream
            if !self.wait_for_request(&mut hd, None, &mut waits).await
                || !hd.fill_pending(H2_PREFACE.len()).await
                || !hd.h2_preface_pending()
            {
                return None;
            }
            hd.pass_through(watch);
            return ServerApp::process_new(&self.inner, hd, shutdown).await;
        }
        if h2c {
            // prior knowledge: a connection that starts with the HTTP/2 preface is HTTP/2
            if !self.wait_for_request(&mut hd, None, &mut waits).await {
                return None;
            }
            if hd.h2_preface_pending() {
                if !hd.fill_pending(H2_PREFACE.len()).await {
                    return None;
                }
                hd.pass_through(watch);
                return ServerApp::process_new(&self.inner, hd, shutdown).await;
            }
        }
        self.serve_http1(hd, waits, shutdown).await
    }

    /// Called when the listeners stopped (shutdown or upgrade). Pingora's cleanup closes
    /// idle keep-alive connections at once, which races with a client sending its next request
    /// on one. Instead they stay open for most of the grace period: a request arriving on them
    /// is still served, with `Connection: close`; whatever is idle after that is closed.
    async fn cleanup(&self) {
        let grace = self.state.snapshot().raw.server.grace_period.0;
        tokio::time::sleep(grace.saturating_sub(Duration::from_secs(1))).await;
        self.closed.store(true, Ordering::Release);
        self.idle_close.notify_waiters();
        self.inner.http_cleanup().await
    }
}

/// Whether the client sent more than its HTTP/1 request (a pipelined next request) in the
/// bytes read so far: the response then says `Connection: close` (RFC 9112 §9.3.2 lets the
/// client retry the rest on a new connection) rather than a keep-alive followed by a close.
/// A chunked body counts once its last chunk has been read.
pub(crate) fn pipelined(s: &pingora_proxy::Session) -> bool {
    let ds = s.as_downstream();
    if ds.is_http2() {
        return false;
    }
    let Some(hd) = (ds.stream()).and_then(|st| (**st).as_any().downcast_ref::<HeadDeadline>())
    else {
        return false;
    };
    let req = ds.req_header();
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return hd.chunked_overread();
    }
    let declared = (req.headers.get(http::header::CONTENT_LENGTH))
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    hd.overread(declared)
}

/// The TLS handshake on an accepted TCP stream, within the listener's handshake timeout.
/// Failures are the client's business: logged at debug, the connection closed.
async fn handshake(session: Stream, tls: &TlsListener) -> (Option<Stream>, &'static str) {
    let peer = session
        .get_socket_digest()
        .and_then(|d| d.peer_addr().map(|a| a.to_string()));
    let Ok(l4) = session.into_any().downcast::<L4Stream>() else {
        log::warn!("TLS listener: the accepted stream is not a TCP stream");
        return (None, "error");
    };
    // the hook records SNI and the verified client certificate in the session digest, where
    // every request of the connection (HTTP/1 or h2) finds them
    let hs = pingora_core::protocols::tls::server::handshake_with_callback(
        &tls.acceptor,
        *l4,
        &crate::tls::client::Identify,
    );
    match tokio::time::timeout(tls.handshake_timeout, hs).await {
        Ok(Ok(stream)) => (Some(Box::new(stream)), "ok"),
        Ok(Err(e)) => {
            log::debug!("TLS handshake with {peer:?} failed: {e}");
            (None, failure_class(&e))
        }
        Err(_) => {
            log::debug!("TLS handshake with {peer:?} timed out");
            (None, "timeout")
        }
    }
}

/// Why a handshake failed, as a `gatehouse_tls_handshakes_total{result}` label. Pingora keeps
/// the rustls error only as text in some paths, so the classes come from rustls's own
/// messages (never from anything the client wrote), or from the I/O error kind.
fn failure_class(e: &pingora_error::Error) -> &'static str {
    if let Some(io) = e.root_cause().downcast_ref::<std::io::Error>() {
        if matches!(
            io.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
        ) {
            return "closed";
        }
    }
    let text = e.to_string();
    const CLASSES: [(&str, &str); 9] = [
        ("no server certificate chain resolved", "no_certificate"),
        ("peer sent no certificates", "client_certificate"),
        ("invalid peer certificate", "client_certificate"),
        (
            "received fatal alert: BadCertificate",
            "certificate_refused",
        ),
        ("received fatal alert: UnknownCA", "certificate_refused"),
        (
            "received fatal alert: CertificateUnknown",
            "certificate_refused",
        ),
        ("peer doesn't support any known protocol", "alpn"),
        ("peer is incompatible", "version"),
        ("unexpected end of file", "closed"),
    ];
    CLASSES
        .iter()
        .find(|(needle, _)| text.contains(needle))
        .map_or("error", |(_, class)| class)
}

impl<A: HttpServerApp + Send + Sync + 'static> Guarded<A> {
    /// Pingora's HTTP/1 keep-alive loop (apps::ServerApp for HttpServerApp), with the wait for
    /// each request outside Pingora's per-request state. gatehouse does not turn on Pingora's
    /// HTTP/1 pipelining (so no bytes of a next request are carried in the persistent
    /// settings).
    async fn serve_http1<'a>(
        &'a self,
        mut hd: Box<HeadDeadline>,
        mut waits: Waits<'a>,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let request_limit = self
            .inner
            .server_options()
            .and_then(|o| o.keepalive_request_limit);
        let mut reused: Option<Option<HttpPersistentSettings>> = None;
        loop {
            let idle = reused.is_some().then_some(KEEPALIVE_IDLE);
            if !self.wait_for_request(&mut hd, idle, &mut waits).await {
                return None;
            }
            let mut session = ServerSession::new_http1(hd);
            match reused.take() {
                None => {
                    if *shutdown.borrow() {
                        session.set_keepalive(None);
                    } else {
                        session.set_keepalive(Some(KEEPALIVE_IDLE.as_secs()));
                    }
                    session.set_keepalive_reuses_remaining(request_limit);
                }
                Some(Some(settings)) => settings.apply_to_session(&mut session),
                Some(None) => {}
            }
            let (stream, settings) = self
                .inner
                .process_new_http(session, shutdown)
                .await?
                .consume();
            hd = stream.into_any().downcast::<HeadDeadline>().ok()?;
            reused = Some(settings);
            // owned here: a plain read and reset, no atomic operation per request
            if std::mem::take(hd.answered_429.get_mut()) {
                // a client told to slow down is read again only after a pause: flooding a
                // limited route then cannot keep the worker from the other connections
                let pause = self.state.snapshot().server.pause_after_429;
                if !pause.is_zero() {
                    self.paused.inc();
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// A stream that fails reads of a request head that takes longer than its deadline. The
/// timer is only created when a read has to wait while a head is incomplete, so a head that
/// arrives in one piece costs no timer at all.
pub struct HeadDeadline {
    inner: Stream,
    timeout: Duration,
    /// `Some` while a head is being read.
    deadline: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// how many bytes of `\r\n\r\n` the previous read ended with
    matched: u8,
    wrote_since_head: bool,
    /// Bytes read by [`Self::poll_first_bytes`], served to the next reads before the socket.
    pending: Vec<u8>,
    pending_pos: usize,
    /// No deadline any more ([`Self::pass_through`]).
    passthrough: bool,
    /// The raw request line of the current head, and whether it has a `Content-Length`
    /// field (`proxy::strict`).
    line: super::strict::LineCheck,
    length_field: FieldSeen,
    /// Bytes read after the end of the current head: its body, and anything beyond it, which
    /// can only be a pipelined next request.
    after_head: u64,
    /// Whether the current head has a `Transfer-Encoding` field (the strict checks refuse
    /// any but `chunked`), and then its body's framing check.
    te_field: FieldSeen,
    chunks: Option<ChunkCheck>,
    /// Bytes read after the end of the current chunked body (a pipelined next request).
    chunk_extra: u64,
    /// The route's `max_body_size`, once the request is routed (`u64::MAX` before).
    body_limit: AtomicU64,
    /// Set when the body broke its framing: the bytes before the offending one were handed
    /// on, every later read fails with this (the request gets a 400 or 413,
    /// `error_page`), and the connection is not read again.
    refused: Option<BadBody>,
    /// Set when the current request reached the gateway's hooks (`early_request_filter`).
    /// What is written before that is Pingora's own refusal of a head it could not parse:
    /// replaced by the gateway's JSON error ([`own_reply`]).
    admitted: AtomicBool,
    /// That replacement, and how much of it is written.
    own_reply: Option<(Vec<u8>, usize)>,
    /// An HTTP/2 connection's control-frame budget.
    h2: Option<Box<H2Watch>>,
    /// The gateway answered the current request 429 (`limits.pause_after_429`).
    answered_429: AtomicBool,
}

/// The h2 control-frame budget of one connection, and whom to block when it is spent.
pub struct H2Watch {
    budget: H2Budget,
    /// What the gateway's HTTP/2 layer writes: its own abuse verdicts.
    out: GoawayWatch,
    block: Option<(Arc<Blocklist>, std::net::IpAddr, Duration)>,
    refused: prometheus::IntCounter,
    calm: prometheus::IntCounter,
}

impl H2Watch {
    /// The client spent its control-frame budget.
    fn tripped(&mut self) {
        self.refused.inc();
        self.block_source("too many control frames (RST_STREAM/PING/SETTINGS/PRIORITY)");
    }

    /// Looks at `written` (bytes the gateway sent): when the HTTP/2 layer closed the
    /// connection with `ENHANCE_YOUR_CALM`, the source is blocked too.
    fn wrote(&mut self, written: &[u8]) {
        if self.out.feed(written) {
            self.calm.inc();
            self.block_source("the HTTP/2 layer sent GOAWAY ENHANCE_YOUR_CALM (e.g. rapid reset)");
        }
    }

    fn block_source(&mut self, why: &str) {
        match self.block.take() {
            Some((list, ip, d)) => {
                log::info!(
                    "closing an HTTP/2 connection from {ip}: {why}; refusing {ip} for {d:?}"
                );
                list.block(ip, d);
            }
            None => log::info!("closing an HTTP/2 connection: {why}"),
        }
    }
}

fn h2_abuse() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "HTTP/2 control frame budget spent",
    )
}

impl fmt::Debug for HeadDeadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadDeadline")
            .field("inner", &self.inner)
            .finish()
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "request head not received in time",
    )
}

impl HeadDeadline {
    /// Wraps `inner`; the first head's deadline starts now.
    pub fn new(inner: Stream, timeout: Duration) -> Self {
        HeadDeadline {
            inner,
            timeout,
            deadline: Some(Instant::now() + timeout),
            sleep: None,
            matched: 0,
            wrote_since_head: false,
            pending: Vec::new(),
            pending_pos: 0,
            passthrough: false,
            line: super::strict::LineCheck::default(),
            length_field: FieldSeen::content_length(),
            after_head: 0,
            te_field: FieldSeen::transfer_encoding(),
            chunks: None,
            chunk_extra: 0,
            body_limit: AtomicU64::new(u64::MAX),
            refused: None,
            admitted: AtomicBool::new(false),
            own_reply: None,
            h2: None,
            answered_429: AtomicBool::new(false),
        }
    }

    /// The current request was answered 429: the connection pauses before its next one.
    pub fn answered_429(&self) {
        self.answered_429.store(true, Ordering::Relaxed);
    }

    /// The current request reached the gateway's hooks.
    pub fn admit(&self) {
        self.admitted.store(true, Ordering::Relaxed);
    }

    /// Whether the current request's chunked body broke its framing in the bytes read so
    /// far; `limit` (the route's `max_body_size`) bounds the chunk sizes read from now on,
    /// and is checked against those already read.
    pub fn body_refusal(&self, limit: u64) -> Option<BadBody> {
        self.body_limit.store(limit, Ordering::Relaxed);
        if let Some(r) = self.refused {
            return Some(r);
        }
        (self.chunks.is_some_and(|c| c.declared > limit)).then_some(BadBody::TooLarge)
    }

    /// Whether a chunked body has ended and more bytes followed it (a pipelined request).
    pub fn chunked_overread(&self) -> bool {
        self.chunks.is_some_and(|c| c.done()) && self.chunk_extra > 0
    }

    /// Whether more bytes arrived after the current request's head than its body declared
    /// (`declared`): the client pipelined its next request.
    pub fn overread(&self, declared: u64) -> bool {
        self.after_head > declared
    }

    /// Whether the current request's raw request line is acceptable (`proxy::strict`).
    pub fn request_line_ok(&self) -> bool {
        self.line.ok()
    }

    /// Whether the current request's raw head had a `Content-Length` field.
    pub fn had_length_field(&self) -> bool {
        self.length_field.seen
    }

    /// Reads until `n` bytes are pending (the HTTP/2 preface of an h2c client, replayed to
    /// Pingora's h2 server, which peeks at it): `false` when the stream ended, failed or the
    /// head deadline passed first.
    pub async fn fill_pending(&mut self, n: usize) -> bool {
        std::future::poll_fn(|cx| loop {
            if self.pending.len() - self.pending_pos >= n {
                return Poll::Ready(true);
            }
            let mut tmp = [std::mem::MaybeUninit::<u8>::uninit(); 64];
            let mut rb = ReadBuf::uninit(&mut tmp);
            match self.poll_read_socket(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    self.pending.drain(..self.pending_pos);
                    self.pending_pos = 0;
                    self.pending.extend_from_slice(rb.filled());
                }
                Poll::Ready(_) => return Poll::Ready(false),
                Poll::Pending => return Poll::Pending,
            }
        })
        .await
    }

    /// Whether the bytes read so far start like the HTTP/2 connection preface.
    pub fn h2_preface_pending(&self) -> bool {
        let have = &self.pending[self.pending_pos..];
        let n = have.len().min(H2_PREFACE.len());
        n > 0 && have[..n] == H2_PREFACE[..n]
    }

    /// From now on only replays the bytes read while waiting, then passes everything through:
    /// for HTTP/2, whose frames have no head to find (its streams are bounded by Pingora's
    /// h2 settings and idle timeout instead).
    /// With `watch`, the client's h2 control frames draw on its budget from the first byte.
    pub fn pass_through(&mut self, watch: Option<H2Watch>) {
        self.passthrough = true;
        self.deadline = None;
        self.sleep = None;
        if let Some(mut w) = watch {
            if !w.budget.feed(&self.pending[self.pending_pos..]) {
                w.tripped();
                self.refused = Some(BadBody::Framing);
            }
            self.h2 = Some(Box::new(w));
        }
    }

    /// Waits for the next bytes from the client and keeps them for the next read:
    /// `Ok(true)` when there are some, `Ok(false)` at end of stream. The read buffer lives on
    /// the stack of this call only, so a connection waiting here holds nothing but `self`.
    pub fn poll_first_bytes(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        if self.pending_pos < self.pending.len() {
            return Poll::Ready(Ok(true));
        }
        let mut tmp = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut rb = ReadBuf::uninit(&mut tmp);
        match Pin::new(&mut *self).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(Ok(false)),
            Poll::Ready(Ok(())) => {
                self.pending.clear();
                self.pending.extend_from_slice(rb.filled());
                self.pending_pos = 0;
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Scans newly read bytes for the end of the head (`\r\n\r\n`, which may be split
    /// across reads).
    /// Returns where the head ended in `data`, when it did.
    fn scan(&mut self, data: &[u8]) -> Option<usize> {
        self.line.feed(data);
        self.find_end(data);
        // the head's own bytes: all of `data`, or, when the head ended here, what came before
        // the bytes that followed its end
        let (head, end) = if self.deadline.is_none() {
            let after = usize::try_from(self.after_head).unwrap_or(usize::MAX);
            let end = data.len().saturating_sub(after);
            (&data[..end], Some(end))
        } else {
            (data, None)
        };
        self.length_field.feed(head);
        self.te_field.feed(head);
        end
    }

    /// Checks bytes of a chunked body (`data`, from a read that already has `before` bytes
    /// of the same read in front of it): how many of them may be handed on.
    fn check_chunks(&mut self, data: &[u8], before: usize) -> usize {
        let Some(c) = &mut self.chunks else {
            return data.len();
        };
        if c.done() {
            self.chunk_extra += data.len() as u64;
            return data.len();
        }
        match c.feed(data, self.body_limit.load(Ordering::Relaxed)) {
            ChunkStep::More => data.len(),
            ChunkStep::End(n) => {
                self.chunk_extra += (data.len() - n) as u64;
                data.len()
            }
            ChunkStep::Bad(at, why) => {
                log::debug!("{why} (offset {} of a read)", before + at);
                self.refused = Some(why);
                at
            }
        }
    }

    fn find_end(&mut self, data: &[u8]) {
        const END: &[u8; 4] = b"\r\n\r\n";
        let mut rest = data;
        // finish a match begun at the end of the previous read
        while self.matched > 0 {
            let Some((&b, tail)) = rest.split_first() else {
                return;
            };
            if b == END[usize::from(self.matched)] {
                self.matched += 1;
                rest = tail;
                if self.matched == 4 {
                    self.head_done(tail.len());
                    return;
                }
            } else {
                // `b` is looked at again below: it may start a new match
                self.matched = 0;
            }
        }
        if let Some(at) = find_head_end(rest) {
            self.head_done(rest.len() - at - END.len());
            return;
        }
        // a match may begin in the last three bytes
        self.matched = (1..=3u8)
            .rev()
            .find(|&k| rest.ends_with(&END[..usize::from(k)]))
            .unwrap_or(0);
    }

    /// The head ended, with `after` more bytes in the same read (body, or a pipelined request).
    fn head_done(&mut self, after: usize) {
        self.after_head = after as u64;
        self.deadline = None;
        self.sleep = None;
        self.matched = 0;
        self.wrote_since_head = false;
    }
}

/// Where the first `\r\n\r\n` in `h` starts: each `\n` (found with `memchr`) is checked as
/// the last byte of one. A head has a handful of lines, so this is a few `memchr` calls;
/// `memmem::find` set up a Rabin-Karp (or, from 64 bytes, a two-way) search on every read.
fn find_head_end(h: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = h.get(from..).and_then(|rest| memchr::memchr(b'\n', rest)) {
        let nl = from + i;
        if nl >= 3 && h.get(nl - 3..=nl) == Some(b"\r\n\r\n".as_slice()) {
            return Some(nl - 3);
        }
        from = nl + 1;
    }
    None
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pending_pos < this.pending.len() {
            // already scanned when they were read
            let n = buf.remaining().min(this.pending.len() - this.pending_pos);
            buf.put_slice(&this.pending[this.pending_pos..this.pending_pos + n]);
            this.pending_pos += n;
            if this.pending_pos == this.pending.len() {
                this.pending = Vec::new();
                this.pending_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        this.poll_read_socket(cx, buf)
    }
}

impl HeadDeadline {
    /// A read from the socket under the head deadline (the pending bytes are not looked at).
    fn poll_read_socket(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self;
        // the deadline is enforced by the timer below, polled whenever a read of an
        // incomplete head has to wait (a head cannot grow past Pingora's size limit without
        // waiting, so no clock read is needed on reads that find data)
        if let Some(why) = this.refused {
            if this.passthrough {
                return Poll::Ready(Err(h2_abuse()));
            }
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                why,
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) if this.passthrough => {
                if let Some(w) = &mut this.h2 {
                    if !w.budget.feed(&buf.filled()[before..]) {
                        w.tripped();
                        this.refused = Some(BadBody::Framing);
                        buf.set_filled(before);
                        return Poll::Ready(Err(h2_abuse()));
                    }
                }
            }
            Poll::Ready(Ok(())) if buf.filled().len() > before && !this.passthrough => {
                let n = buf.filled().len() - before;
                // a chunked body goes on across a `100 Continue` the gateway wrote
                let in_body = this.chunks.is_some_and(|c| !c.done());
                if this.deadline.is_none() && (!this.wrote_since_head || in_body) {
                    // the current request's body (or what follows it)
                    this.after_head += n as u64;
                    let keep = this.check_chunks(&buf.filled()[before..], 0);
                    return this.hand_on(buf, before, keep);
                }
                if this.deadline.is_none() && this.wrote_since_head {
                    // first bytes of the next request on this connection
                    this.deadline = Some(Instant::now() + this.timeout);
                    this.sleep = None;
                    this.matched = 0;
                    this.line = super::strict::LineCheck::default();
                    this.length_field = FieldSeen::content_length();
                    this.te_field = FieldSeen::transfer_encoding();
                    this.chunks = None;
                    this.chunk_extra = 0;
                    this.body_limit.store(u64::MAX, Ordering::Relaxed);
                    this.admitted.store(false, Ordering::Relaxed);
                }
                if this.deadline.is_some() {
                    if let Some(end) = this.scan(&buf.filled()[before..]) {
                        if this.te_field.seen {
                            this.chunks = Some(ChunkCheck::default());
                            let body = &buf.filled()[before + end..];
                            let keep = this.check_chunks(body, end);
                            return this.hand_on(buf, before, end + keep);
                        }
                    }
                }
            }
            Poll::Pending => {
                if let Some(at) = this.deadline {
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(timed_out()));
                    }
                }
            }
            _ => {}
        }
        r
    }
}

impl HeadDeadline {
    /// Hands on the first `keep` of the `n` bytes just read (past `before` in `buf`): all of
    /// them, unless the body broke its framing; then the read fails when nothing is left.
    fn hand_on(
        &mut self,
        buf: &mut ReadBuf<'_>,
        before: usize,
        keep: usize,
    ) -> Poll<std::io::Result<()>> {
        if before + keep < buf.filled().len() {
            buf.set_filled(before + keep);
            if keep == 0 {
                if let Some(why) = self.refused {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        why,
                    )));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl HeadDeadline {
    /// Writes the gateway's reply in place of Pingora's own error response (`data` starts
    /// the write of `len` bytes): `None` when the write is the gateway's and passes as it is.
    fn poll_own_reply(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
        len: usize,
    ) -> Option<Poll<std::io::Result<usize>>> {
        if self.own_reply.is_none() {
            if self.passthrough || self.admitted.load(Ordering::Relaxed) {
                return None;
            }
            self.own_reply = Some((own_reply(data)?, 0));
        }
        let (bytes, pos) = self.own_reply.as_mut()?;
        while *pos < bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*pos..]) {
                Poll::Ready(Ok(0)) => {
                    return Some(Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(n)) => *pos += n,
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Pending => return Some(Poll::Pending),
            }
        }
        // the rest of Pingora's response (an empty body) is dropped
        Some(Poll::Ready(Ok(len)))
    }
}

/// The gateway's JSON error for the status of an error response Pingora wrote on its own
/// (`HTTP/1.1 400 ...` for a head it could not parse): the same body, `X-Request-Id` and
/// `Connection: close` as every gateway error. `None` for anything else.
fn own_reply(data: &[u8]) -> Option<Vec<u8>> {
    let status = data.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    let status = http::StatusCode::from_bytes(status).ok()?;
    if !status.is_client_error() && !status.is_server_error() {
        return None;
    }
    let message = match status.as_u16() {
        400 => "bad request".to_string(),
        _ => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
    };
    let id = super::ctx::new_request_id();
    log::debug!("refused a request head Pingora could not read: {status} (request id {id})");
    let body = serde_json::json!({ "error": message, "request_id": id }).to_string();
    Some(
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len(),
        )
        .into_bytes(),
    )
}

use std::future::Future;

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(r) = this.poll_own_reply(cx, data, data.len()) {
            return r;
        }
        if this.deadline.is_none() {
            this.wrote_since_head = true;
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if let (Some(w), Poll::Ready(Ok(n))) = (&mut this.h2, &r) {
            w.wrote(&data[..*n]);
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        let total = bufs.iter().map(|b| b.len()).sum();
        if let Some(r) = this.poll_own_reply(cx, first, total) {
            return r;
        }
        if this.deadline.is_none() {
            this.wrote_since_head = true;
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let (Some(w), Poll::Ready(Ok(n))) = (&mut this.h2, &r) {
            let mut left = *n;
            for b in bufs {
                if left == 0 {
                    break;
                }
                let k = left.min(b.len());
                w.wrote(&b[..k]);
                left -= k;
            }
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

/// The TLS facts of the wrapped stream: the session digest (for `X-Forwarded-Proto` and the
/// access log) and the ALPN choice must not disappear behind the wrapper.
impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, d: SocketDigest) {
        self.inner.set_socket_digest(d)
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        if self.pending_pos < self.pending.len() {
            let have = &self.pending[self.pending_pos..];
            if have.len() >= buf.len() {
                buf.copy_from_slice(&have[..buf.len()]);
                return Ok(true);
            }
            return Ok(false);
        }
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    /// The head's end is found where `memmem` finds `\r\n\r\n`, for every string of up to
    /// nine bytes of `\r`, `\n` and `a`, and in real heads.
    #[test]
    fn head_end_is_memmems() {
        let alphabet = [b'\r', b'\n', b'a'];
        for len in 0..=9u32 {
            for code in 0..3usize.pow(len) {
                let mut c = code;
                let h: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = alphabet[c % 3];
                        c /= 3;
                        b
                    })
                    .collect();
                assert_eq!(
                    find_head_end(&h),
                    memchr::memmem::find(&h, b"\r\n\r\n"),
                    "{h:?}"
                );
            }
        }
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX: \n\r\n\r\nbody\r\n\r\n";
        assert_eq!(find_head_end(head), memchr::memmem::find(head, b"\r\n\r\n"));
    }

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The byte-at-a-time scanner the fast one must agree with.
    fn naive_end(chunks: &[&[u8]]) -> Option<usize> {
        let all: Vec<u8> = chunks.concat();
        all.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
    }

    #[test]
    fn handshake_failures_are_classified() {
        let e = |text: &str| {
            pingora_error::Error::explain(
                pingora_error::ErrorType::TLSHandshakeFailure,
                text.to_string(),
            )
        };
        for (text, class) in [
            (
                "tls connect error: peer sent no certificates",
                "client_certificate",
            ),
            (
                "TLS accept() failed: invalid peer certificate: UnknownIssuer",
                "client_certificate",
            ),
            (
                "unexpected error: no server certificate chain resolved",
                "no_certificate",
            ),
            (
                "received fatal alert: BadCertificate",
                "certificate_refused",
            ),
            ("peer doesn't support any known protocol", "alpn"),
            ("peer is incompatible: Tls12NotOffered", "version"),
            ("something else", "error"),
        ] {
            assert_eq!(failure_class(&e(text)), class, "{text}");
        }
        let closed = pingora_error::Error::because(
            pingora_error::ErrorType::TLSHandshakeFailure,
            "accept",
            std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
        );
        assert_eq!(failure_class(&closed), "closed");
    }

    #[test]
    fn head_end_found_across_any_split() {
        let heads: [&[u8]; 5] = [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: \r\r\n\r\r\nHost: a\r\n\r\nBODY",
            b"\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r",
            b"\r\r\n\n\r\n\r\r\n\r\n",
        ];
        for head in heads {
            for a in 0..=head.len() {
                for b in a..=head.len() {
                    let chunks = [&head[..a], &head[a..b], &head[b..]];
                    let (client, server) = tokio::io::duplex(16);
                    drop(client);
                    let mut s = HeadDeadline::new(Box::new(server), Duration::from_secs(5));
                    let mut done_at = None;
                    let mut seen = 0;
                    for c in chunks {
                        if done_at.is_none() {
                            s.scan(c);
                            seen += c.len();
                            if s.deadline.is_none() {
                                done_at = Some(seen);
                            }
                        }
                    }
                    // done after the chunk holding the end, whichever chunk that was
                    let want = naive_end(&chunks).map(|end| {
                        let mut acc = 0;
                        chunks
                            .iter()
                            .map(|c| {
                                acc += c.len();
                                acc
                            })
                            .find(|&acc| acc >= end)
                            .unwrap_or(0)
                    });
                    assert_eq!(done_at, want, "{head:?} split at {a}, {b}");
                }
            }
        }
    }

    #[tokio::test]
    async fn bytes_read_while_waiting_come_first() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut s = HeadDeadline::new(Box::new(server), Duration::from_secs(5));
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let got = std::future::poll_fn(|cx| s.poll_first_bytes(cx)).await;
        assert!(got.unwrap());
        // waiting again does not read more
        assert!(std::future::poll_fn(|cx| s.poll_first_bytes(cx))
            .await
            .unwrap());
        client.write_all(b"Host: a\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 5];
        assert_eq!(s.read(&mut buf).await.unwrap(), 5);
        assert_eq!(&buf, b"GET /");
        let mut rest = Vec::new();
        let mut chunk = [0u8; 64];
        while !rest.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            rest.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(rest, b" HTTP/1.1\r\nHost: a\r\n\r\n");
        drop(client);
        assert!(!std::future::poll_fn(|cx| s.poll_first_bytes(cx))
            .await
            .unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn slow_head_times_out_complete_head_does_not() {
        let (client, server) = tokio::io::duplex(1024);
        let mut s = HeadDeadline::new(Box::new(server), Duration::from_secs(5));
        let mut client = client;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        tokio::time::advance(Duration::from_secs(6)).await;
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);

        let (client, server) = tokio::io::duplex(1024);
        let mut s = HeadDeadline::new(Box::new(server), Duration::from_secs(5));
        let mut client = client;
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r")
            .await
            .unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        client.write_all(b"\n").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        // head complete: a slow body is not this guard's business
        tokio::time::advance(Duration::from_secs(60)).await;
        client.write_all(b"abc").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 3);
        // after a response, the next head gets a fresh deadline from its first byte
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        client.write_all(b"GET /2 HTTP/1.1\r\n").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        tokio::time::advance(Duration::from_secs(4)).await;
        client.write_all(b"Host: a\r\n\r\n").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
    }
}
