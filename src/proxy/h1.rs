//! One client connection over HTTP/1.x: read a request head, send it and
//! its body to a backend connection, relay the response, and again. All of
//! it runs in the connection's own task with one read buffer per side and
//! one write buffer: a small response goes out head and body in a single
//! write, and nothing is allocated per request on the way.
//!
//! Timeouts: `client_header_timeout` for a whole request head (from the
//! connection's start, or from the first byte of a later request),
//! `idle_timeout` between requests and for the client to take what it is
//! sent, `connect_timeout` per connection attempt, `response_timeout` for
//! the response head (from the last request byte sent) and then between
//! pieces of the response body, `tunnel_timeout` for silence on an upgraded
//! connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, Duration, Instant, Sleep};
use tracing::{debug, warn};

use super::codec::buf::{self, ReadBuf, BODY_CHUNK};
use super::codec::chunked::{ChunkError, Remaining};
use super::codec::head::{self as wire, Framing, HeadError, Preface, Request, ResponseContext, Scheme};
use super::upstream::idle::IdleConns;
use super::upstream::{acquire, answered, conclude, Acquired};
use super::upstream::{Upstream, UpstreamStream};
use super::within::within;
use crate::proxy::attempt::{AccessLog, Attempts, Outcome};
use crate::proxy::backends::{ListenerPool, Pool};

/// How long a connection closed after an error answer keeps reading (and
/// discarding) what the client still sends, so the answer is not lost to a
/// reset; and how much it reads at most.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// A client connection's bytes: a TCP socket, or TLS over one.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// How the client reached the proxy.
    const SCHEME: Scheme;

    /// The address the client connected to.
    fn local_addr(&self) -> std::io::Result<SocketAddr>;

    /// Its reading and writing sides, to use at once (a tunnel).
    fn halves(&mut self) -> (impl AsyncRead + Unpin + '_, impl AsyncWrite + Unpin + '_);

    /// Resolves once a read may find something: bytes, or the end.
    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send + '_;
}

impl ClientStream for TcpStream {
    const SCHEME: Scheme = Scheme::Http;

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        TcpStream::local_addr(self)
    }

    fn halves(&mut self) -> (impl AsyncRead + Unpin + '_, impl AsyncWrite + Unpin + '_) {
        self.split()
    }

    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send + '_ {
        TcpStream::readable(self)
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    const SCHEME: Scheme = Scheme::Https;

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.get_ref().0.local_addr()
    }

    fn halves(&mut self) -> (impl AsyncRead + Unpin + '_, impl AsyncWrite + Unpin + '_) {
        // TLS has one state for both directions: the halves share it.
        tokio::io::split(self)
    }

    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send + '_ {
        let (tcp, session) = self.get_ref();
        // Plaintext (or a close) already decrypted and not yet read: at once.
        let waiting = !session.wants_read();
        async move {
            if waiting {
                Ok(())
            } else {
                tcp.readable().await
            }
        }
    }
}

/// How a connection ended.
#[derive(Debug)]
pub enum Ended<S> {
    /// Closed; nothing more to do.
    Closed,
    /// The client speaks HTTP/2 with prior knowledge: the connection and
    /// the bytes already read from it, for the HTTP/2 server.
    H2(S, Vec<u8>),
}

/// The client side of the connection.
struct Client<S> {
    stream: S,
    peer: SocketAddr,
    buf: ReadBuf,
    /// Bytes on their way to the client (or, briefly, to a backend).
    out: Vec<u8>,
    /// Time the client gets to take a write.
    write_timeout: Duration,
    /// The last [`Client::write_out`] had to wait for the client.
    write_waited: bool,
    /// For waits on the client (its next request, the rest of a head).
    client_timer: Deadline,
    /// For waits on a backend (its answer, the next piece of it).
    backend_timer: Deadline,
}

/// One timer a connection keeps for one kind of wait, set again for each.
/// From one wait to the next of a kind the deadline mostly moves later,
/// which tokio does by updating the timer in place (its wheel catches up
/// when the old deadline comes); an earlier one (a head timeout after a
/// longer idle wait) takes the slower way of a new place in the wheel. A
/// fresh timer per wait would be an insertion and a removal, under the
/// driver's lock, for every request.
struct Deadline(Pin<Box<Sleep>>);

impl Deadline {
    fn new() -> Self {
        // Far off, and never polled until set.
        Deadline(Box::pin(tokio::time::sleep(Duration::from_secs(86_400))))
    }

    /// `io`, or `None` if `at` comes first.
    async fn run<F: Future>(&mut self, at: Instant, io: F) -> Option<F::Output> {
        let timer = self.set(at);
        tokio::select! {
            biased;
            r = io => Some(r),
            _ = timer => None,
        }
    }

    /// The timer, set to go off at `at`.
    fn set(&mut self, at: Instant) -> Pin<&mut Sleep> {
        self.0.as_mut().reset(at);
        self.0.as_mut()
    }
}

impl<S: ClientStream> Client<S> {
    async fn write_out(&mut self) -> bool {
        // Flushed: over TLS the last records wait in rustls until then.
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        self.write_waited = false;
        let ok = matches!(within(self.write_timeout, write, &mut self.write_waited).await, Ok(Ok(())));
        self.out.clear();
        ok
    }

    /// A short answer of the proxy's own.
    async fn reply(&mut self, status: u16, reason: &str, text: &str, close: bool) -> bool {
        let date = super::date::now();
        wire::local_response(status, reason, text, close, date.as_ref().map(|d| d.as_bytes()), &mut self.out);
        self.write_out().await
    }

    /// Answers with `(status, reason, text)` of the proxy's own and writes
    /// the request's access-log line, if any. Returns whether it went out.
    async fn reply_logged(
        &mut self,
        log: Option<Box<AccessLog>>,
        (status, reason, text): (u16, &str, &str),
        close: bool,
    ) -> bool {
        let sent = self.reply(status, reason, text, close).await;
        if let Some(mut l) = log {
            l.status = status;
            l.emit(text.len() as u64, sent);
        }
        sent
    }

    /// Closes after an answer while the client may still be sending: stop
    /// writing, then read and drop its bytes for a while so that the kernel
    /// does not reset the connection under the answer.
    async fn linger(&mut self) {
        let _ = timeout(LINGER, async {
            let _ = self.stream.shutdown().await;
            let mut read = 0;
            while read < LINGER_BYTES {
                self.buf.consume(usize::MAX);
                match self.buf.read_from(&mut self.stream, buf::BASE).await {
                    Ok(n) if n > 0 => read += n,
                    _ => break,
                }
            }
        })
        .await;
    }
}

/// Serves one client connection until it closes, fails, idles out or the
/// proxy stops.
///
/// Built outside the future it returns, and with the requests' state boxed
/// apart: an idle keep-alive connection holds only its [`Client`] (the
/// stream and two timers), not room for a request on its way. (An `async
/// fn` would also keep its `stream` argument beside the `Client` it moved
/// into.)
pub fn serve<'a, S: ClientStream>(
    stream: S,
    peer: SocketAddr,
    listener: &'a ListenerPool,
    idle: &'a IdleConns<Upstream>,
    stop: &'a mut watch::Receiver<bool>,
) -> impl Future<Output = Ended<S>> + 'a {
    let mut c = Client {
        stream,
        peer,
        buf: ReadBuf::default(),
        out: Vec::with_capacity(1024),
        write_timeout: listener.current().config.idle_timeout,
        write_waited: false,
        client_timer: Deadline::new(),
        backend_timer: Deadline::new(),
    };
    // `c` is used where it was captured, not moved into a local: a
    // future keeps room for what it captured, and would have it twice.
    async move {
        // The first request, or an idle connection's deadline when it
        // wakes (a client sending a byte at a time does not move it).
        let mut from = Resume::First;
        let served = loop {
            match Box::pin(requests(&mut c, listener, idle, stop, from)).await {
                Served::Idle(until) => {
                    from = Resume::Idle(until);
                    // Only the kernel (and TLS) hold what comes next.
                    let woke = tokio::select! {
                        biased;
                        r = c.stream.readable() => r.is_ok(),
                        _ = c.client_timer.set(until) => false,
                        _ = stop.changed() => false,
                    };
                    if !woke {
                        break Served::Closed;
                    }
                    c.out.reserve(1024);
                }
                served => break served,
            }
        };
        match served {
            Served::H2(read) => Ended::H2(c.stream, read),
            Served::Closed | Served::Idle(_) => {
                // TLS says that it ends (close_notify), so that a client
                // reading to the end can tell it from a cut connection.
                if S::SCHEME == Scheme::Https {
                    let _ = timeout(CLOSE_NOTIFY_WAIT, c.stream.shutdown()).await;
                }
                Ended::Closed
            }
            Served::Linger => {
                c.linger().await;
                Ended::Closed
            }
        }
    }
}

/// Where [`requests`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// The connection's first request.
    First,
    /// A connection that was idle, with its idle deadline.
    Idle(Instant),
}

/// How [`requests`] ended.
enum Served {
    Closed,
    /// Idle with its buffers given back: wait for the client to send again
    /// until then (the idle timeout), and call [`requests`] again.
    Idle(Instant),
    /// Closed after an error answer: linger.
    Linger,
    /// HTTP/2 with prior knowledge: what was read of it.
    H2(Vec<u8>),
}

/// How long a keep-alive connection waits for its next request with its
/// buffers; past it, it holds none while it waits on.
const KEEP_BUFFERS_IDLE: Duration = Duration::from_secs(1);

/// How long closing a TLS connection may take (its close_notify).
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_millis(500);

/// The requests of one connection, one after the other.
async fn requests<S: ClientStream>(
    c: &mut Client<S>,
    listener: &ListenerPool,
    idle: &IdleConns<Upstream>,
    stop: &mut watch::Receiver<bool>,
    from: Resume,
) -> Served {
    let peer = c.peer;
    let mut pool = listener.current();
    let cfg = &pool.config;
    let mut up_head = Vec::with_capacity(1024);
    // From the connection's start for its first request, else from the
    // request's first byte (set once the head needs a second read: most
    // come whole and never read the clock for it).
    let accepted_deadline = Instant::now() + cfg.client_header_timeout;
    let mut first = from == Resume::First;
    let mut resumed = match from {
        Resume::Idle(until) => Some(until),
        Resume::First => None,
    };
    let mut head_deadline = first.then_some(accepted_deadline);
    // When the last answer went out, if that was just before (no wait
    // since): the idle time counts from it, and the clock is not read again.
    let mut answered_at = None;
    loop {
        let cfg = &pool.config;
        let answered = answered_at.take();
        if c.buf.is_empty() {
            // A stop (a planned stop, an upgrade) closes idle keep-alive
            // connections, whose clients may send again elsewhere. A new
            // connection's first request is on its way, though: it is
            // waited for (as long as a request head may take) and answered,
            // with `Connection: close`, not dropped unread.
            if !first && *stop.borrow() {
                return Served::Closed;
            }
            c.buf.shrink();
            let now = answered.unwrap_or_else(Instant::now);
            let idle_until = match (first, resumed.take()) {
                (true, _) => accepted_deadline,
                (false, Some(until)) => until,
                (false, None) => now + cfg.idle_timeout,
            };
            // A keep-alive connection reads with its buffers for a while
            // (one timer, as for any read); one that stays idle gives them
            // back until the client sends again (the kernel and TLS hold
            // what comes).
            let keep_until = if first { idle_until } else { idle_until.min(now + KEEP_BUFFERS_IDLE) };
            let soon = tokio::select! {
                biased;
                r = c.buf.read_from(&mut c.stream, cfg.max_header_size) => Some(r),
                _ = c.client_timer.set(keep_until) => None,
                _ = stop.changed(), if !first => return Served::Closed,
            };
            let read = match soon {
                Some(r) => r,
                None if keep_until >= idle_until => return Served::Closed,
                None => {
                    c.buf.release();
                    c.out = Vec::new();
                    return Served::Idle(idle_until);
                }
            };
            if !matches!(read, Ok(n) if n > 0) {
                return Served::Closed;
            }
        }
        // Each request on the generation current when it begins (a reload
        // between two requests of a keep-alive client takes effect).
        listener.refresh(&mut pool);
        let cfg = &pool.config;
        if !first {
            head_deadline = None;
        }
        // From its first byte to its answer, a request keeps a resigning
        // master's VIPs (the drain gate), also before it reaches a backend.
        let _begun = pool.request_begun();
        let req = loop {
            let parsed = match (first, wire::preface(c.buf.filled())) {
                (true, Preface::H2) => {
                    let read = c.buf.filled().to_vec();
                    return Served::H2(read);
                }
                (true, Preface::Maybe) => Ok(None),
                _ => wire::parse_request(c.buf.filled(), peer.ip(), S::SCHEME, &mut up_head),
            };
            match parsed {
                Ok(Some(r)) if r.head_len <= cfg.max_header_size => break r,
                Ok(Some(_)) | Err(HeadError::TooManyHeaders) => {
                    pool.meter().responses.count(431);
                    c.reply(431, "Request Header Fields Too Large", "request head too large\n", true).await;
                    return Served::Linger;
                }
                Ok(None) if c.buf.len() >= cfg.max_header_size => {
                    pool.meter().responses.count(431);
                    c.reply(431, "Request Header Fields Too Large", "request head too large\n", true).await;
                    return Served::Linger;
                }
                Ok(None) => {
                    let deadline = *head_deadline.get_or_insert_with(|| Instant::now() + cfg.client_header_timeout);
                    match c.client_timer.run(deadline, c.buf.read_from(&mut c.stream, cfg.max_header_size)).await {
                        Some(Ok(n)) if n > 0 => {}
                        Some(_) => return Served::Closed,
                        None => {
                            debug!(%peer, "client did not finish its request head in time");
                            pool.meter().responses.count(408);
                            c.reply(408, "Request Timeout", "request head timed out\n", true).await;
                            return Served::Closed;
                        }
                    }
                }
                Err(e) => {
                    let (status, reason) = e.status();
                    debug!(%peer, why = %e, status, "request refused");
                    pool.meter().responses.count(status);
                    c.reply(status, reason, refusal_text(&e), true).await;
                    return Served::Linger;
                }
            }
        };
        first = false;
        let mut req = req;
        if req.needs_host {
            // What the client connected to is the host it meant.
            if let Ok(local) = c.stream.local_addr() {
                wire::insert_host(&mut up_head, &local.to_string());
            }
        }
        if let Some(redirect) = &cfg.redirect_https {
            let to = wire::upstream_host_and_target(&up_head).filter(|(_, target)| redirect.applies_to(target));
            if let Some((host, target)) = to {
                let location = wire::https_location(host, target, redirect.port);
                // A body is not read: the connection closes after the answer.
                let close = !req.keep_alive || req.framing != Framing::Empty;
                let date = super::date::now();
                wire::redirect_response(&location, close, date.as_ref().map(|d| d.as_bytes()), &mut c.out);
                pool.meter().responses.count(308);
                if !c.write_out().await {
                    return Served::Closed;
                }
                if close {
                    return Served::Linger;
                }
                c.buf.consume(req.head_len);
                continue;
            }
        }
        // The backend and the access log see the same id.
        req.request_id = wire::ensure_request_id(&mut up_head, req.client_request_ids, fastrand::u64(..));
        match forward(c, &req, &up_head, &pool, idle, stop).await {
            Next::KeepOpen(at) => answered_at = at,
            Next::Close => return Served::Closed,
            Next::Linger => {
                return Served::Linger;
            }
        }
    }
}

/// The body of the answer to a request head refused as `e` says.
fn refusal_text(e: &HeadError) -> &'static str {
    match e {
        HeadError::Malformed(_) => "bad request\n",
        HeadError::TooManyHeaders => "request head too large\n",
        HeadError::UnknownCoding => "transfer coding not implemented\n",
        HeadError::Version => "HTTP version not supported\n",
        HeadError::Method => "method not allowed\n",
    }
}

/// What becomes of the client connection after a request.
enum Next {
    /// Keep it for the next request; the time the answer ended, if known
    /// without reading the clock.
    KeepOpen(Option<Instant>),
    Close,
    /// Close, but the client may still be sending (an unread body).
    Linger,
}

/// What one attempt on one backend connection came to.
enum Exchange {
    /// A response was relayed to the client, completely or not.
    Answered(Answer),
    /// The backend closed or broke the connection before any response byte.
    NoAnswer(String),
    /// The response head is not valid HTTP, or is too large.
    BadResponse(String),
    /// No response head within `response_timeout`.
    TimedOut,
    /// The backend switched protocols: its 101 head is in the client's
    /// write buffer, bytes after it in the upstream buffer.
    Switched,
    /// The client went away while the request was being sent.
    ClientGone,
    /// The client stopped sending its body for `response_timeout`.
    ClientStalled,
    /// The client's chunked body is broken.
    BadRequestBody(ChunkError),
}

struct Answer {
    status: u16,
    /// Body bytes sent to the client.
    bytes: u64,
    /// Request body bytes taken from the client.
    uploaded: u64,
    /// From the request sent to the response head.
    head_after: Duration,
    /// When the response was done.
    finished: Instant,
    /// The whole response went out.
    complete: bool,
    keep_client: bool,
    /// The backend connection may serve another request.
    reuse: bool,
}

/// Serves one parsed request whose upstream head is `up_head`.
async fn forward<S: ClientStream>(
    c: &mut Client<S>,
    req: &Request,
    up_head: &[u8],
    pool: &Arc<Pool>,
    idle: &IdleConns<Upstream>,
    stop: &watch::Receiver<bool>,
) -> Next {
    let cfg = &pool.config;
    let meter = pool.meter();
    let started = Instant::now();
    let mut log = (cfg.access_log && tracing::enabled!(target: "access", tracing::Level::INFO)).then(|| {
        let head = c.buf.filled();
        let text = |r: std::ops::Range<usize>| String::from_utf8_lossy(head.get(r).unwrap_or_default()).into_owned();
        Box::new(AccessLog {
            client: c.peer,
            method: text(req.method.clone()),
            path: text(req.target.clone()),
            status: 0,
            backend: None,
            started: started.into_std(),
            request_id: String::from_utf8_lossy(up_head.get(req.request_id.clone()).unwrap_or_default()).into_owned(),
        })
    });
    c.buf.consume(req.head_len);
    let mut body = Remaining::new(req.framing);
    // An upgrade (never with a body) gets a connection of its own.
    let upgrade = req.upgrade;
    // Only a bodiless idempotent request may be sent a second time after a
    // connection broke under it.
    let mut attempts = Attempts::new(cfg.retries, req.framing == Framing::Empty && req.idempotent);
    // The first attempt's pool lookup goes by `started` (a clock read less).
    let mut now = Some(started.into_std());
    let failure = loop {
        let Acquired { index: i, backend, in_flight, mut up } =
            match acquire(pool, idle, &mut attempts, upgrade, log.as_deref_mut(), now.take()).await {
                Ok(a) => a,
                Err(answer) => break answer,
            };
        let addr = backend.address;
        let outcome = match exchange(c, &mut up, req, up_head, &mut body, pool, stop).await {
            Exchange::Answered(a) => {
                answered(pool, &mut attempts, i, &backend, a.status, Some(a.head_after));
                meter.bytes_out.fetch_add(a.bytes, Ordering::Relaxed);
                meter.bytes_in.fetch_add(a.uploaded, Ordering::Relaxed);
                let done = a.finished;
                meter.request_time.observe(done - started);
                if a.reuse {
                    up.pool_again(idle, addr, done.into_std());
                }
                drop(in_flight);
                if let Some(mut l) = log {
                    l.status = a.status;
                    l.emit(a.bytes, a.complete);
                }
                return match (a.keep_client, body.is_done()) {
                    (true, _) => Next::KeepOpen(Some(done)),
                    // Answered before the client finished sending its body.
                    (false, false) => Next::Linger,
                    (false, true) => Next::Close,
                };
            }
            Exchange::Switched => {
                answered(pool, &mut attempts, i, &backend, 101, None);
                let mut in_flight = in_flight;
                in_flight.release_slot();
                if let Some(mut l) = log {
                    l.status = 101;
                    l.emit(0, true);
                }
                tunnel(c, up, cfg.tunnel_timeout).await;
                drop(in_flight);
                return Next::Close;
            }
            Exchange::ClientGone => {
                debug!(peer = %c.peer, backend = %addr, "client went away during its request");
                if let Some(l) = log {
                    l.emit(0, false);
                }
                return Next::Close;
            }
            Exchange::ClientStalled => {
                debug!(peer = %c.peer, backend = %addr, "client stalled inside its request body");
                meter.responses.count(408);
                c.reply_logged(log, (408, "Request Timeout", "request body timed out\n"), true).await;
                return Next::Linger;
            }
            Exchange::BadRequestBody(e) => {
                debug!(peer = %c.peer, backend = %addr, error = %e, "bad request body");
                meter.responses.count(400);
                c.reply_logged(log, (400, "Bad Request", "bad request body\n"), true).await;
                return Next::Linger;
            }
            Exchange::NoAnswer(why) => {
                if up.reused {
                    // Most likely a pooled connection the backend had just closed.
                    debug!(backend = %addr, why, "pooled connection closed under the request");
                } else {
                    warn!(backend = %addr, why, "backend connection failed before the response");
                }
                Outcome::NoAnswer { reused: up.reused }
            }
            Exchange::BadResponse(why) => {
                warn!(backend = %addr, why, "invalid response from backend");
                Outcome::BadResponse
            }
            Exchange::TimedOut => {
                warn!(backend = %addr, timeout = ?cfg.response_timeout, "backend response timed out");
                Outcome::TimedOut
            }
        };
        drop(in_flight);
        if let Some(answer) = conclude(pool, &mut attempts, i, outcome) {
            break answer;
        }
    };
    // A body the client is still sending cannot be skipped over.
    let unread_body = !body.is_done();
    let close = !req.keep_alive || unread_body || *stop.borrow();
    meter.responses.count(failure.status);
    meter.request_time.observe(started.elapsed());
    let sent = c.reply_logged(log, (failure.status, failure.reason, failure.text), close).await;
    match (sent, close, unread_body) {
        (true, false, _) => Next::KeepOpen(None),
        (true, true, true) => Next::Linger,
        _ => Next::Close,
    }
}

/// Sends the request on `up` (the head, then the body as the client sends
/// it and the backend takes it) and relays the response to the client.
async fn exchange<S: ClientStream>(
    c: &mut Client<S>,
    up: &mut Upstream,
    req: &Request,
    up_head: &[u8],
    body: &mut Remaining,
    pool: &Pool,
    stop: &watch::Receiver<bool>,
) -> Exchange {
    match send_request(c, up, up_head, body, pool.config.response_timeout).await {
        Ok(uploaded) => relay_response(c, up, req, body, pool, stop, uploaded).await,
        Err(e) => e,
    }
}

/// The first write of a request: its head and as much of the body as has
/// arrived (the rest follows beside the response, in [`relay_response`]).
/// Returns the body bytes taken from the client.
async fn send_request<S: ClientStream>(
    c: &mut Client<S>,
    up: &mut Upstream,
    up_head: &[u8],
    body: &mut Remaining,
    limit: Duration,
) -> Result<u64, Exchange> {
    let mut uploaded = 0u64;
    // (After an upgrade's head, bytes are not the backend's until it
    // switches.) A bodiless request's head goes as it is, not copied.
    c.out.clear();
    let first: &[u8] = if body.is_done() {
        up_head
    } else {
        c.out.extend_from_slice(up_head);
        match body.relay(c.buf.filled(), &mut c.out, false) {
            Ok(n) => {
                uploaded += n as u64;
                c.buf.consume(n)
            }
            Err(e) => return Err(Exchange::BadRequestBody(e)),
        }
        &c.out
    };
    let send = async {
        up.stream.write_all(first).await?;
        up.stream.flush().await
    };
    let mut waited = false;
    let sent = match within(limit, send, &mut waited).await {
        Ok(Ok(())) => Ok(uploaded),
        Ok(Err(e)) => Err(Exchange::NoAnswer(format!("send: {e}"))),
        Err(_) => Err(Exchange::TimedOut),
    };
    c.out.clear();
    sent
}

/// The response, relayed to the client as it comes (head, then body) while
/// the rest of the request body goes on up.
#[allow(clippy::too_many_arguments)]
async fn relay_response<S: ClientStream>(
    c: &mut Client<S>,
    up: &mut Upstream,
    req: &Request,
    body: &mut Remaining,
    pool: &Pool,
    stop: &watch::Receiver<bool>,
    mut uploaded: u64,
) -> Exchange {
    let cfg = &pool.config;
    // Counted from the last request byte sent: a long upload is not a slow
    // backend.
    let sent = Instant::now();
    let mut deadline = sent + cfg.response_timeout;

    // The response head, then its body. Meanwhile the rest of the request
    // body goes up, read from the client only once the backend has taken
    // the previous piece, and never blocking the read side: a backend may
    // answer early (413, 401) and stop reading, or answer while it reads
    // (a full-duplex exchange) and need the rest to go on.
    let mut upload = Upload { tls: matches!(up.stream, UpstreamStream::Tls(_)), ..Upload::default() };
    let mut heard = false;
    let resp = loop {
        if !up.buf.is_empty() {
            let ctx = ResponseContext {
                is_head: req.is_head,
                client_http10: req.http10,
                close_client: !req.keep_alive || *stop.borrow(),
                body_unfinished: !body.is_done(),
                upgrade: req.upgrade,
            };
            match wire::parse_response(up.buf.filled(), ctx, &mut c.out) {
                Ok(Some(r)) if r.interim => {
                    up.buf.consume(r.head_len);
                    if !c.out.is_empty() && !c.write_out().await {
                        return Exchange::ClientGone;
                    }
                    continue;
                }
                Ok(Some(r)) => {
                    // Most backends date their answers; one that does not
                    // gets the proxy's date (RFC 9110 §6.6.1).
                    if !r.dated && r.status >= 200 {
                        if let Some(date) = super::date::now() {
                            wire::put_date(&mut c.out, date.as_bytes());
                        }
                    }
                    break r;
                }
                Ok(None) if up.buf.len() >= cfg.max_header_size => {
                    return Exchange::BadResponse("response head too large".into());
                }
                Ok(None) => {}
                Err(e) => return Exchange::BadResponse(e.to_string()),
            }
        }
        let read =
            match wait_for_backend(c, up, body, &mut upload, &mut deadline, cfg.response_timeout, cfg.max_header_size)
                .await
            {
                Waited::Read(r) => r,
                Waited::Uploaded(n) => {
                    uploaded += n;
                    continue;
                }
                Waited::ClientGone => return Exchange::ClientGone,
                Waited::BadBody(e) => return Exchange::BadRequestBody(e),
                Waited::TimedOut { uploading: true } => return Exchange::TimedOut,
                Waited::TimedOut { uploading: false } if upload.waits_for_client(body) => {
                    return Exchange::ClientStalled
                }
                Waited::TimedOut { .. } => return Exchange::TimedOut,
            };
        match read {
            Ok(n) if n > 0 => heard = true,
            Ok(_) if !heard => return Exchange::NoAnswer("closed".into()),
            Err(e) if !heard => return Exchange::NoAnswer(format!("receive: {e}")),
            _ => return Exchange::BadResponse("connection ended inside the response head".into()),
        }
    };
    up.buf.consume(resp.head_len);
    let head_at = Instant::now();
    let head_after = head_at - sent;
    if resp.status == 101 {
        return Exchange::Switched;
    }

    // The body: what is buffered goes out with the head, then piece by
    // piece, the upload going on beside it.
    let mut left = Remaining::new(resp.framing);
    let mut bytes = 0u64;
    let mut complete = true;
    // The time the response is done: the head's, unless something waited
    // after it (most answers go out with their head, in one write).
    let mut finished = Some(head_at);
    loop {
        if !left.is_done() && !up.buf.is_empty() {
            let before = c.out.len();
            let taken = left.relay(up.buf.filled(), &mut c.out, resp.dechunk);
            bytes += (c.out.len() - before) as u64;
            match taken {
                Ok(n) => up.buf.consume(n),
                Err(e) => {
                    warn!(why = %e, "backend sent a broken response body");
                    complete = false;
                }
            }
        }
        if !c.out.is_empty() && !c.write_out().await {
            complete = false;
        }
        if c.write_waited {
            finished = None;
        }
        if left.is_done() || !complete {
            break;
        }
        finished = None;
        deadline = Instant::now() + cfg.response_timeout;
        let read =
            match wait_for_backend(c, up, body, &mut upload, &mut deadline, cfg.response_timeout, BODY_CHUNK).await {
                Waited::Read(r) => r,
                Waited::Uploaded(n) => {
                    uploaded += n;
                    continue;
                }
                Waited::ClientGone | Waited::BadBody(_) => {
                    // The answer goes on; the rest of the request does not.
                    upload.broken = true;
                    continue;
                }
                Waited::TimedOut { uploading: false } if upload.waits_for_client(body) => {
                    // The backend waits for the rest of the body (full duplex).
                    debug!(peer = %c.peer, "client stalled inside its body during the response");
                    complete = false;
                    break;
                }
                Waited::TimedOut { .. } => {
                    warn!(timeout = ?cfg.response_timeout, "backend stalled inside the response body");
                    complete = false;
                    break;
                }
            };
        match read {
            Ok(n) if n > 0 => {}
            Ok(_) if left.end_of_stream() => break,
            _ => {
                warn!("backend closed the connection inside the response body");
                complete = false;
                break;
            }
        }
    }
    // A whole answer that came before the whole upload (a 2xx while the
    // body comes, full duplex) said nothing about closing: the rest of the
    // body goes up as before, then both connections stay (a close the head
    // did not announce leaves the client to guess, RFC 9112 §9.6).
    if complete && !resp.close_client && !upload.is_done(body) {
        finished = None;
        deadline = Instant::now() + cfg.response_timeout;
        uploaded += finish_upload(c, up, body, &mut upload, &mut deadline, cfg.response_timeout).await;
    }
    // Whether the backend got the whole request (else it is not reused).
    let request_sent = upload.is_done(body);
    let reuse = complete && resp.backend_keep_alive && up.buf.is_empty() && request_sent && !req.upgrade;
    up.buf.shrink();
    Exchange::Answered(Answer {
        status: resp.status,
        bytes,
        uploaded,
        head_after,
        finished: finished.unwrap_or_else(Instant::now),
        complete,
        keep_client: complete && !resp.close_client && body.is_done(),
        reuse,
    })
}

/// The request body's way up once the head is sent: bytes taken from the
/// client and not yet written to the backend.
#[derive(Debug, Default)]
struct Upload {
    pending: Vec<u8>,
    sent: usize,
    /// The backend stopped taking it (it may have answered and closed).
    broken: bool,
    /// Body bytes TLS took but may not have sent yet: flushed before any
    /// wait that needs the backend to have them (a write is cancel-safe, a
    /// write-then-flush is not, so they are two steps).
    unflushed: bool,
    tls: bool,
}

impl Upload {
    fn writing(&self) -> bool {
        self.sent < self.pending.len()
    }

    /// All of the body is with the backend.
    fn is_done(&self, body: &Remaining) -> bool {
        body.is_done() && !self.writing() && !self.broken && !self.unflushed
    }

    /// Stalled for want of the client's bytes, not the backend's taking.
    fn waits_for_client(&self, body: &Remaining) -> bool {
        !self.broken && !self.writing() && !self.unflushed && !body.is_done()
    }
}

/// What [`wait_for_backend`] saw first.
enum Waited {
    /// A read from the backend into its buffer.
    Read(std::io::Result<usize>),
    /// The upload moved on (so many request body bytes taken).
    Uploaded(u64),
    /// The client closed inside its body.
    ClientGone,
    /// The client's chunked body is broken.
    BadBody(ChunkError),
    /// Nothing moved until the deadline; `uploading`: bytes were waiting
    /// for the backend to take them.
    TimedOut { uploading: bool },
}

/// Waits for the backend's next bytes (up to `limit` buffered) while the
/// request body goes on up: one step of it at a time, each cancel-safe.
/// Any progress of the upload moves `deadline` to `response_timeout` ahead.
async fn wait_for_backend<S: ClientStream>(
    c: &mut Client<S>,
    up: &mut Upstream,
    body: &mut Remaining,
    upload: &mut Upload,
    deadline: &mut Instant,
    response_timeout: Duration,
    limit: usize,
) -> Waited {
    let writing = upload.writing();
    let uploading = !upload.broken && (writing || !body.is_done());
    if !uploading && upload.unflushed {
        // The body's last records go out before the wait for the answer.
        upload.unflushed = false;
        match c.backend_timer.run(*deadline, up.stream.flush()).await {
            None => return Waited::TimedOut { uploading: true },
            // The last records may not have left: not a whole request.
            Some(Err(_)) => upload.broken = true,
            Some(Ok(())) => {}
        }
    }
    if !uploading {
        return match c.backend_timer.run(*deadline, up.buf.read_from(&mut up.stream, limit)).await {
            Some(r) => Waited::Read(r),
            None => Waited::TimedOut { uploading: false },
        };
    }
    let (mut from_backend, mut to_backend) = up.stream.split();
    tokio::select! {
        biased;
        r = up.buf.read_from(&mut from_backend, limit) => Waited::Read(r),
        // One step to the backend: more of the body, or, once all of it is
        // written, a flush of what TLS still holds.
        w = async {
            if writing {
                to_backend.write(&upload.pending[upload.sent..]).await.map(Some)
            } else {
                to_backend.flush().await.map(|()| None)
            }
        }, if writing || upload.unflushed => {
            match w {
                Ok(Some(n)) if n > 0 => {
                    upload.unflushed = upload.tls;
                    upload.sent += n;
                    if upload.sent == upload.pending.len() {
                        upload.pending.clear();
                        upload.sent = 0;
                    }
                    *deadline = Instant::now() + response_timeout;
                }
                Ok(None) => upload.unflushed = false,
                // The backend may have answered and closed: read on.
                _ => upload.broken = true,
            }
            Waited::Uploaded(0)
        }
        r = c.buf.read_from(&mut c.stream, BODY_CHUNK), if !writing => {
            if !matches!(r, Ok(n) if n > 0) {
                return Waited::ClientGone;
            }
            match body.relay(c.buf.filled(), &mut upload.pending, false) {
                Ok(n) => {
                    c.buf.consume(n);
                    *deadline = Instant::now() + response_timeout;
                    Waited::Uploaded(n as u64)
                }
                Err(e) => Waited::BadBody(e),
            }
        }
        _ = c.backend_timer.set(*deadline) => Waited::TimedOut { uploading: writing || upload.unflushed },
    }
}

/// Sends the rest of the request body up after its whole response, each
/// step within `response_timeout` of the last; stops at anything from the
/// backend (bytes past its answer, or a close), a client that goes or
/// stalls, or a backend that stops taking it. Returns the body bytes taken.
async fn finish_upload<S: ClientStream>(
    c: &mut Client<S>,
    up: &mut Upstream,
    body: &mut Remaining,
    upload: &mut Upload,
    deadline: &mut Instant,
    response_timeout: Duration,
) -> u64 {
    let mut taken = 0;
    while !upload.broken && !upload.is_done(body) {
        if body.is_done() && !upload.writing() {
            // Only what TLS holds is left (`wait_for_backend` would flush
            // it, then wait for an answer that has already come).
            upload.unflushed = false;
            if !matches!(c.backend_timer.run(*deadline, up.stream.flush()).await, Some(Ok(()))) {
                upload.broken = true;
            }
            continue;
        }
        match wait_for_backend(c, up, body, upload, deadline, response_timeout, BODY_CHUNK).await {
            Waited::Uploaded(n) => taken += n,
            Waited::Read(_) | Waited::ClientGone | Waited::BadBody(_) | Waited::TimedOut { .. } => {
                debug!(peer = %c.peer, "request body not finished after its answer; closing");
                break;
            }
        }
    }
    taken
}

/// After a 101: the switch goes to the client with whatever the backend
/// sent after it, whatever the client sent after its request goes up, then
/// bytes flow both ways at once until both sides have closed, or neither
/// direction has moved for `silence`.
async fn tunnel<S: ClientStream>(c: &mut Client<S>, mut up: Upstream, silence: Duration) {
    c.out.extend_from_slice(up.buf.filled());
    up.buf.consume(usize::MAX);
    if !c.write_out().await {
        return;
    }
    let (mut client_open, mut backend_open) = (true, true);
    loop {
        // A direction is live while its reader is open or bytes wait to be written.
        let upward = client_open || !c.buf.is_empty();
        let downward = backend_open || !up.buf.is_empty();
        if !upward && !downward {
            break;
        }
        let (mut from_client, mut to_client) = c.stream.halves();
        let (mut from_backend, mut to_backend) = up.stream.split();
        let moved = tokio::select! {
            ok = tunnel_step(&mut c.buf, &mut from_client, &mut to_backend, &mut client_open), if upward => ok,
            ok = tunnel_step(&mut up.buf, &mut from_backend, &mut to_client, &mut backend_open), if downward => ok,
            _ = tokio::time::sleep(silence) => {
                debug!(peer = %c.peer, ?silence, "upgraded connection silent; closing");
                false
            }
        };
        if !moved {
            break;
        }
    }
}

/// One step of one tunnel direction: write some of what `buf` holds, or,
/// when it is empty, read more; at the end of the stream, mark the side
/// closed and close the other side's writing half. False when a write
/// failed. Cancel-safe: a read or write that did not finish did nothing.
async fn tunnel_step<R, W>(buf: &mut ReadBuf, from: &mut R, to: &mut W, open: &mut bool) -> bool
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    if !buf.is_empty() {
        return match to.write(buf.filled()).await {
            Ok(n) if n > 0 => {
                buf.consume(n);
                true
            }
            _ => false,
        };
    }
    // What was written goes out before waiting for more (TLS holds its
    // last records until flushed; a flush with nothing held is free).
    if to.flush().await.is_err() {
        return false;
    }
    match buf.read_from(from, BODY_CHUNK).await {
        Ok(n) if n > 0 => {}
        _ => {
            *open = false;
            let _ = to.shutdown().await;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    //! The exchange with a backend over in-memory streams, in virtual time:
    //! each timeout is a deadline the paused clock jumps to, never a sleep.
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, DuplexStream};

    impl ClientStream for DuplexStream {
        const SCHEME: Scheme = Scheme::Http;

        fn local_addr(&self) -> std::io::Result<SocketAddr> {
            Ok(SocketAddr::from(([192, 0, 2, 10], 80)))
        }

        fn halves(&mut self) -> (impl AsyncRead + Unpin + '_, impl AsyncWrite + Unpin + '_) {
            tokio::io::split(self)
        }

        fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send + '_ {
            std::future::ready(Ok(()))
        }
    }

    /// The proxy's side of one client connection and one backend connection.
    struct Proxy {
        c: Client<DuplexStream>,
        up: Upstream,
        pool: Arc<Pool>,
    }

    /// A listener's configuration: one backend (never reached), `extra` keys.
    fn listener_config(extra: &str) -> crate::proxy::params::HttpConfig {
        let text =
            format!("[[http]]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"192.0.2.21:80\"]\n{extra}\n");
        let config = crate::config::parse(&text, std::path::Path::new("t.toml")).expect("valid config");
        config.http[0].clone()
    }

    /// The proxy, and the client's and the backend's ends, which the test plays.
    fn rig(extra: &str) -> (Proxy, DuplexStream, DuplexStream) {
        let (client_side, client) = duplex(64 * 1024);
        let (backend_side, backend) = duplex(64 * 1024);
        let c = Client {
            stream: client_side,
            peer: SocketAddr::from(([198, 51, 100, 7], 40_000)),
            buf: ReadBuf::default(),
            out: Vec::new(),
            write_timeout: Duration::from_secs(5),
            write_waited: false,
            client_timer: Deadline::new(),
            backend_timer: Deadline::new(),
        };
        let up = Upstream { stream: UpstreamStream::Memory(backend_side), buf: ReadBuf::default(), reused: false };
        (Proxy { c, up, pool: Pool::new(listener_config(extra)) }, client, backend)
    }

    impl Proxy {
        /// Reads a request head as `requests` does, then runs the exchange.
        async fn exchange(&mut self) -> (Exchange, Remaining) {
            let mut up_head = Vec::new();
            let req = loop {
                let n = self.c.buf.read_from(&mut self.c.stream, 16_384).await.expect("read");
                assert!(n > 0, "the client closed before its head");
                let parsed = wire::parse_request(self.c.buf.filled(), self.c.peer.ip(), Scheme::Http, &mut up_head);
                if let Some(r) = parsed.expect("a valid head") {
                    break r;
                }
            };
            self.c.buf.consume(req.head_len);
            let mut body = Remaining::new(req.framing);
            let (_stop_tx, stop) = watch::channel(false);
            let e = exchange(&mut self.c, &mut self.up, &req, &up_head, &mut body, &self.pool, &stop).await;
            (e, body)
        }
    }

    /// A plain listener that answers every request itself (a redirect to
    /// HTTPS, kept alive): the keep-alive loop without a backend. Returns
    /// the client's end and the running connection.
    fn redirecting(idle_timeout: &str) -> (DuplexStream, tokio::task::JoinHandle<()>) {
        let extra = format!("redirect_https = true\nidle_timeout = \"{idle_timeout}\"");
        let listener = ListenerPool::new(listener_config(&extra));
        let (proxy_side, client) = duplex(64 * 1024);
        let conn = tokio::spawn(async move {
            let idle = IdleConns::default();
            let (_stop_tx, mut stop) = watch::channel(false);
            let peer = SocketAddr::from(([198, 51, 100, 7], 40_000));
            assert!(matches!(serve(proxy_side, peer, &listener, &idle, &mut stop).await, Ended::Closed));
        });
        (client, conn)
    }

    /// Asserts that `want` passed since `t` (virtual time: to the tick).
    fn took_exactly(t: Instant, want: Duration) {
        let took = t.elapsed();
        assert!(took >= want && took < want + Duration::from_millis(10), "{took:?}");
    }

    /// Reads until the stream ends.
    async fn read_to_end(s: &mut DuplexStream, got: &mut Vec<u8>) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_client_idle_past_its_buffers_is_served_again() {
        let (mut client, conn) = redirecting("10s");
        let mut got = Vec::new();
        client.write_all(b"GET /a HTTP/1.1\r\nHost: x.test\r\n\r\n").await.expect("write");
        read_until(&mut client, &mut got, b"moved to https://x.test/a\n").await;
        // Past KEEP_BUFFERS_IDLE: the connection gave its buffers back.
        tokio::time::sleep(KEEP_BUFFERS_IDLE * 3).await;
        client.write_all(b"GET /b HTTP/1.1\r\nHost: x.test\r\n\r\n").await.expect("write");
        read_until(&mut client, &mut got, b"moved to https://x.test/b\n").await;
        let text = String::from_utf8_lossy(&got);
        assert_eq!(text.matches("HTTP/1.1 308 ").count(), 2, "{text}");
        drop(client);
        timeout(Duration::from_secs(1), conn).await.expect("closed at the client's close").expect("no panic");
    }

    /// The idle timeout counts from the last answer, whatever wakes the
    /// connection meanwhile without a request (here a stream that always
    /// says it is readable, as a TLS socket does for a partial record).
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_closes_at_its_idle_timeout() {
        let (mut client, conn) = redirecting("5s");
        let mut got = Vec::new();
        client.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n").await.expect("write");
        read_until(&mut client, &mut got, b"moved to https://x.test/\n").await;
        let t = Instant::now();
        timeout(Duration::from_secs(60), read_to_end(&mut client, &mut got)).await.expect("closed");
        took_exactly(t, Duration::from_secs(5));
        conn.await.expect("no panic");
    }

    /// Reads until `end` is in what was read (or the stream ends).
    async fn read_until(s: &mut DuplexStream, got: &mut Vec<u8>, end: &[u8]) {
        let mut buf = [0u8; 4096];
        while !got.windows(end.len()).any(|w| w == end) {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }

    fn answer(e: Exchange) -> Answer {
        match e {
            Exchange::Answered(a) => a,
            _ => panic!("not answered"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_backend_times_out_at_response_timeout() {
        let (mut p, mut client, mut backend) = rig("response_timeout = \"7s\"");
        client.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let t = Instant::now();
        let (e, _) = p.exchange().await;
        assert!(matches!(e, Exchange::TimedOut));
        took_exactly(t, Duration::from_secs(7));
        let mut got = Vec::new();
        read_until(&mut backend, &mut got, b"\r\n\r\n").await;
        assert!(got.starts_with(b"GET /a HTTP/1.1\r\n"), "{:?}", String::from_utf8_lossy(&got));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_stalling_in_its_body_is_not_a_slow_backend() {
        let (mut p, mut client, mut backend) = rig("response_timeout = \"3s\"");
        client.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello").await.expect("write");
        let t = Instant::now();
        let (e, body) = p.exchange().await;
        assert!(matches!(e, Exchange::ClientStalled));
        took_exactly(t, Duration::from_secs(3));
        assert!(!body.is_done());
        let mut got = Vec::new();
        read_until(&mut backend, &mut got, b"hello").await;
        assert!(got.ends_with(b"\r\n\r\nhello"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_duplex_backend_gets_the_whole_body_and_the_connections_stay() {
        let (mut p, mut client, mut backend) = rig("");
        client.write_all(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello").await.expect("write");
        let echo = async {
            let mut got = Vec::new();
            read_until(&mut backend, &mut got, b"hello").await;
            backend.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello").await.expect("write");
            let mut rest = Vec::new();
            read_until(&mut backend, &mut rest, b"world").await;
            backend.write_all(&rest).await.expect("write");
        };
        let client_side = async {
            // The rest of the body only once the first half came back.
            let mut got = Vec::new();
            read_until(&mut client, &mut got, b"hello").await;
            client.write_all(b"world").await.expect("write");
            read_until(&mut client, &mut got, b"helloworld").await;
            got
        };
        let all = async { tokio::join!(p.exchange(), echo, client_side) };
        let ((e, body), (), got) = timeout(Duration::from_secs(60), all).await.expect("no hang");
        let a = answer(e);
        assert!(body.is_done());
        assert_eq!((a.status, a.complete, a.keep_client, a.reuse, a.uploaded), (200, true, true, true, 10));
        let text = String::from_utf8_lossy(&got);
        assert!(!text.contains("connection: close") && text.ends_with("helloworld"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_early_refusal_closes_both_connections() {
        let (mut p, mut client, mut backend) = rig("");
        client.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nxxxx").await.expect("write");
        let refuse = async {
            let mut got = Vec::new();
            read_until(&mut backend, &mut got, b"\r\n\r\n").await;
            backend.write_all(b"HTTP/1.1 413 Too Large\r\ncontent-length: 0\r\n\r\n").await.expect("write");
        };
        let ((e, body), ()) = tokio::join!(p.exchange(), refuse);
        let a = answer(e);
        assert!(!body.is_done());
        assert_eq!((a.status, a.complete, a.keep_client, a.reuse), (413, true, false, false));
        let mut got = Vec::new();
        read_until(&mut client, &mut got, b"\r\n\r\n").await;
        assert!(String::from_utf8_lossy(&got).contains("connection: close"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_2xx_that_ends_before_the_body_keeps_neither_connection() {
        /// The answer to a PUT of 10 bytes that `response` ends after 3, and
        /// the head the client got.
        async fn answered_early(response: &'static [u8]) -> (Answer, String) {
            let (mut p, mut client, mut backend) = rig("");
            client.write_all(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhel").await.expect("write");
            let answer_early = async {
                let mut got = Vec::new();
                read_until(&mut backend, &mut got, b"hel").await;
                backend.write_all(response).await.expect("write");
                backend
            };
            let ((e, body), _backend) = tokio::join!(p.exchange(), answer_early);
            assert!(!body.is_done());
            let mut got = Vec::new();
            read_until(&mut client, &mut got, b"\r\n\r\n").await;
            (answer(e), String::from_utf8_lossy(&got).into_owned())
        }
        // Bodiless: the client is told that the connection closes.
        let (a, head) = answered_early(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!((a.status, a.complete, a.keep_client, a.reuse), (204, true, false, false));
        assert!(head.contains("connection: close"));
        // With a short body: over before the upload, neither is kept.
        let (a, _) = answered_early(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        assert_eq!((a.status, a.complete, a.keep_client, a.reuse), (200, true, false, false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_with_length_and_chunked_goes_chunked_and_the_backend_is_not_reused() {
        let (mut p, mut client, mut backend) = rig("");
        client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        backend
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            )
            .await
            .expect("write");
        let (e, _) = p.exchange().await;
        let a = answer(e);
        assert_eq!((a.status, a.complete, a.keep_client, a.reuse), (200, true, true, false));
        let mut got = Vec::new();
        read_until(&mut client, &mut got, b"0\r\n\r\n").await;
        let text = String::from_utf8_lossy(&got).to_lowercase();
        assert!(text.contains("transfer-encoding: chunked") && !text.contains("content-length"), "{text}");
        assert!(text.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_gone_or_stalled_inside_its_body_ends_the_answer_incomplete() {
        // Closed after 3 of 10 bytes.
        let (mut p, mut client, mut backend) = rig("");
        client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let cut = async move {
            let mut got = Vec::new();
            read_until(&mut backend, &mut got, b"\r\n\r\n").await;
            backend.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel").await.expect("write");
        };
        let ((e, _), ()) = tokio::join!(p.exchange(), cut);
        let a = answer(e);
        assert_eq!((a.status, a.complete, a.keep_client, a.reuse, a.bytes), (200, false, false, false, 3));
        // Silent after 3 of 10 bytes: given up at response_timeout.
        let (mut p, mut client2, mut backend) = rig("response_timeout = \"4s\"");
        client2.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        backend.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel").await.expect("write");
        let t = Instant::now();
        let a = answer(p.exchange().await.0);
        assert_eq!((a.complete, a.reuse), (false, false));
        assert!(t.elapsed() >= Duration::from_secs(4) && t.elapsed() < Duration::from_millis(4_010));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn an_interim_answer_goes_before_the_final_one() {
        let (mut p, mut client, mut backend) = rig("");
        client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        backend
            .write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
            .await
            .expect("write");
        let a = answer(p.exchange().await.0);
        assert_eq!((a.status, a.complete, a.reuse), (204, true, true));
        let mut got = Vec::new();
        read_until(&mut client, &mut got, b"204 No Content\r\n").await;
        read_until(&mut client, &mut got, b"\r\n\r\n").await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 103 Early Hints\r\n"), "{text}");
    }
}
