//! Listeners and client connections. One worker thread per core the process
//! may use, each with its own single-threaded runtime and its own
//! SO_REUSEPORT socket per listener (the kernel spreads connections; no
//! work crosses threads). HTTP/1.x is served by the proxy's own path
//! (`h1`), h2c with prior knowledge by hyper; shutdown stops accepting and
//! drains connections.

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::{Context, Poll};

use crate::systemd::Heartbeat;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Bytes;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc as tokio_mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

use super::backends::Pool;
use super::body::ProxyBody;
use super::h1::conn::{self, Ended};
use super::idle::{IdleConns, MAX_IDLE_AGE};
use super::upstream::Upstream;
use super::{forward, health};

/// Pending connections the kernel queues per listening socket.
const BACKLOG: i32 = 4096;

/// Worker threads: the cores this process may run on (its affinity mask,
/// so `taskset -c 0 vipd` gets one).
pub fn worker_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Binds `workers` sockets to `addr` with SO_REUSEPORT. A specific address
/// (a VIP) is bound with IP_FREEBIND so it works before the VIP is ours.
pub fn bind(addr: SocketAddr, workers: usize) -> io::Result<Vec<StdTcpListener>> {
    (0..workers.max(1))
        .map(|_| {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            if !addr.ip().is_unspecified() {
                match addr {
                    SocketAddr::V4(_) => s.set_freebind_v4(true)?,
                    SocketAddr::V6(_) => s.set_freebind_v6(true)?,
                }
            }
            s.set_tcp_nodelay(true)?;
            s.bind(&addr.into())?;
            s.listen(BACKLOG)?;
            s.set_nonblocking(true)?;
            Ok(s.into())
        })
        .collect()
}

/// What one worker serves for one listener: its pool, its socket, the
/// listener-wide connection limit.
type Job = (Arc<Pool>, StdTcpListener, Arc<Semaphore>);

/// A listener's pool and its per-worker sockets.
#[derive(Debug)]
pub struct Listener {
    /// Backends and config.
    pub pool: Arc<Pool>,
    /// One socket per worker, from [`bind`].
    pub sockets: Vec<StdTcpListener>,
}

/// The running proxy.
#[derive(Debug)]
pub struct Proxy {
    stop: watch::Sender<bool>,
    done: mpsc::Receiver<()>,
    workers: usize,
    drain: Duration,
    heartbeats: Vec<Arc<Heartbeat>>,
}

/// How often each worker shows it still runs its tasks.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

impl Proxy {
    /// Starts the workers. Health checks run on worker 0.
    pub fn start(listeners: Vec<Listener>) -> io::Result<Proxy> {
        let workers = listeners.iter().map(|l| l.sockets.len()).min().unwrap_or(1).max(1);
        let drain = listeners.iter().map(|l| l.pool.config.drain_timeout).max().unwrap_or_default();
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = mpsc::channel();
        let limits: Vec<Arc<Semaphore>> =
            listeners.iter().map(|l| Arc::new(Semaphore::new(l.pool.config.max_connections))).collect();
        let mut per_worker: Vec<Vec<Job>> = (0..workers).map(|_| Vec::new()).collect();
        for (l, limit) in listeners.into_iter().zip(limits) {
            for (w, socket) in l.sockets.into_iter().enumerate().take(workers) {
                per_worker[w].push((Arc::clone(&l.pool), socket, Arc::clone(&limit)));
            }
        }
        let mut heartbeats = Vec::new();
        for (w, jobs) in per_worker.into_iter().enumerate() {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let heartbeat = Arc::new(Heartbeat::default());
            heartbeat.beat();
            heartbeats.push(Arc::clone(&heartbeat));
            let stop_rx = stop_rx.clone();
            let done_tx = done_tx.clone();
            // Counted from here, so trackers never see a started listener
            // without workers; uncounted when the thread ends, however.
            let serving: Vec<_> = jobs.iter().map(|(pool, _, _)| pool.serving()).collect();
            std::thread::Builder::new().name(format!("proxy-{w}")).spawn(move || {
                let _serving = serving;
                rt.block_on(async move {
                    tokio::spawn(async move {
                        loop {
                            heartbeat.beat();
                            tokio::time::sleep(HEARTBEAT_EVERY).await;
                        }
                    });
                    let mut tasks = Vec::new();
                    for (pool, socket, limit) in jobs {
                        if w == 0 {
                            health::spawn_checks(&pool);
                        }
                        match tokio::net::TcpListener::from_std(socket) {
                            Ok(l) => tasks.push(tokio::spawn(serve(l, pool, limit, stop_rx.clone()))),
                            Err(e) => warn!(error = %e, "listener could not join the runtime"),
                        }
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                });
                let _ = done_tx.send(());
            })?;
        }
        Ok(Proxy { stop, done, workers, drain, heartbeats })
    }

    /// Each worker's sign of life, renewed every [`HEARTBEAT_EVERY`] by a
    /// task on its runtime (the systemd watchdog pings only while all are fresh).
    pub fn heartbeats(&self) -> Vec<Arc<Heartbeat>> {
        self.heartbeats.clone()
    }

    /// Stops accepting, lets in-flight requests finish up to the drain
    /// timeout, and waits for the workers.
    pub fn shutdown(self) {
        let _ = self.stop.send(true);
        let deadline = self.drain + Duration::from_secs(1);
        for _ in 0..self.workers {
            if self.done.recv_timeout(deadline).is_err() {
                warn!("proxy workers did not stop within {deadline:?}");
                return;
            }
        }
    }
}

/// Accepts and serves one listener on this worker until `stop`, then
/// waits up to the drain timeout for its connections to finish.
async fn serve(
    listener: tokio::net::TcpListener,
    pool: Arc<Pool>,
    limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let cfg = &pool.config;
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .max_concurrent_streams(cfg.h2_max_concurrent_streams);
    let h2 = Arc::new(h2);
    // Every connection task holds a sender; all dropped = all finished.
    let (alive, mut all_done) = tokio_mpsc::channel::<()>(1);
    // This worker's idle backend connections (HTTP/1 clients', HTTP/2's).
    let idle = Arc::new(IdleConns::new(pool.backends().len()));
    let idle_h2 = Arc::new(IdleConns::new(pool.backends().len()));
    let sweeper = {
        let (idle, idle_h2) = (Arc::clone(&idle), Arc::clone(&idle_h2));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(MAX_IDLE_AGE);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let now = std::time::Instant::now();
                idle.sweep(now);
                idle_h2.sweep(now);
            }
        })
    };
    info!(listener = %cfg.name, listen = %cfg.listen, "HTTP listener up");
    loop {
        // Past max_connections, connections wait in the kernel's backlog.
        let permit = tokio::select! {
            biased;
            _ = stop.changed() => break,
            p = Arc::clone(&limit).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    // Out of descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let pool = Arc::clone(&pool);
        let h2 = Arc::clone(&h2);
        let mut stop = stop.clone();
        let alive = alive.clone();
        let (idle, idle_h2) = (Arc::clone(&idle), Arc::clone(&idle_h2));
        tokio::spawn(async move {
            let _permit = permit;
            let _alive = alive;
            let accepted = Instant::now();
            if let Ended::H2(stream, read) = conn::serve(stream, peer, &pool, &idle, &mut stop).await {
                let io = Prefixed { read, pos: 0, stream };
                serve_h2(&h2, io, peer, accepted, pool, idle_h2, stop).await;
            }
        });
    }
    drop(listener);
    drop(alive);
    if tokio::time::timeout(cfg.drain_timeout, all_done.recv()).await.is_err() {
        warn!(listener = %cfg.name, timeout = ?cfg.drain_timeout, "connections still open after the drain timeout");
    }
    sweeper.abort();
    idle.clear();
    idle_h2.clear();
}

/// How long an HTTP/2 connection told to go away (GOAWAY) gets to close
/// by itself once it has no stream open, before it is dropped.
const H2_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// An HTTP/2 (prior knowledge) client, served by hyper until it closes, it
/// idles out, or the proxy stops (then it is told to finish what it has in
/// flight). Idle means no stream open (RFC 9113 §10.5: an idle connection
/// holds a `max_connections` slot for nothing): the preface and the first
/// request must come within `client_header_timeout` of the accept, later
/// requests within `idle_timeout` of the last stream's end. PINGs and
/// SETTINGS do not count as activity.
async fn serve_h2(
    builder: &http2::Builder<TokioExecutor>,
    io: Prefixed,
    peer: SocketAddr,
    accepted: Instant,
    pool: Arc<Pool>,
    idle: Arc<IdleConns<Upstream>>,
    mut stop: watch::Receiver<bool>,
) {
    let streams = Arc::new(Streams::new(accepted));
    let (header_timeout, idle_timeout) = (pool.config.client_header_timeout, pool.config.idle_timeout);
    let service = {
        let streams = Arc::clone(&streams);
        service_fn(move |req| {
            let open = Streams::open(&streams);
            let (pool, idle) = (Arc::clone(&pool), Arc::clone(&idle));
            async move {
                let resp = forward::handle(pool, idle, peer, req).await;
                Ok::<_, Infallible>(resp.map(|body| CountedBody { body, _open: open }))
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let result = loop {
        let wake = streams.idle_deadline(header_timeout, idle_timeout).unwrap_or_else(|| Instant::now() + idle_timeout);
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                break conn.await;
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                if streams.idle_deadline(header_timeout, idle_timeout).is_some_and(|d| d <= Instant::now()) {
                    debug!(%peer, served = streams.served.load(Ordering::Relaxed), "HTTP/2 client idle; closing");
                    conn.as_mut().graceful_shutdown();
                    // A stream that opened just before the GOAWAY finishes;
                    // with none open, the client gets a moment to close.
                    let closed = loop {
                        match tokio::time::timeout(H2_CLOSE_GRACE, conn.as_mut()).await {
                            Ok(r) => break Some(r),
                            Err(_) if streams.open.load(Ordering::Relaxed) > 0 => {}
                            Err(_) => break None,
                        }
                    };
                    match closed {
                        Some(r) => break r,
                        None => return,
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "HTTP/2 client connection ended with an error");
    }
}

/// The streams of one HTTP/2 connection: how many are open, and since when
/// none is.
#[derive(Debug)]
struct Streams {
    open: AtomicUsize,
    /// A request has come on this connection.
    served: AtomicBool,
    /// When the last stream closed (or the connection was accepted), in
    /// milliseconds after `epoch`.
    idle_since_ms: AtomicU64,
    epoch: Instant,
}

impl Streams {
    fn new(epoch: Instant) -> Self {
        Streams { open: AtomicUsize::new(0), served: AtomicBool::new(false), idle_since_ms: AtomicU64::new(0), epoch }
    }

    /// A stream opened; it counts as open until the guard drops (with the
    /// response body, or with the request if it is cancelled).
    fn open(this: &Arc<Streams>) -> StreamOpen {
        this.open.fetch_add(1, Ordering::Relaxed);
        this.served.store(true, Ordering::Relaxed);
        StreamOpen(Arc::clone(this))
    }

    /// When the connection counts as idle if nothing changes: `None` while
    /// a stream is open.
    fn idle_deadline(&self, before_first: Duration, between: Duration) -> Option<Instant> {
        if self.open.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = self.epoch + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        Some(since + if self.served.load(Ordering::Relaxed) { between } else { before_first })
    }
}

/// Counts one stream as open while it lives.
struct StreamOpen(Arc<Streams>);

impl Drop for StreamOpen {
    fn drop(&mut self) {
        let s = &self.0;
        if s.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            let ms = u64::try_from(s.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            s.idle_since_ms.store(ms, Ordering::Relaxed);
        }
    }
}

/// An HTTP/2 response body that keeps its stream counted as open until the
/// body ends or is dropped.
struct CountedBody {
    body: ProxyBody,
    _open: StreamOpen,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A socket with bytes already read from it in front: what the HTTP/1
/// reader took before it saw the HTTP/2 preface.
struct Prefixed {
    read: Vec<u8>,
    pos: usize,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.pos);
            buf.put_slice(&this.read[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
