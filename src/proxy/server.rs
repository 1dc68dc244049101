//! Listeners and client connections. One worker thread per core the process
//! may use, each with its own single-threaded runtime and its own
//! SO_REUSEPORT socket per listener (the kernel spreads connections; no
//! work crosses threads). HTTP/1.x is served by the proxy's own path
//! (`h1`), HTTP/2 on the h2 crate (`serve_h2`); shutdown stops accepting and
//! drains connections.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::{Context, Poll};

use crate::systemd::Heartbeat;
use futures_util::future::FutureExt as _;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use hyper::body::Bytes;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc as tokio_mpsc, watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

use crate::proxy::params::HttpConfig;

use super::backends::{HttpListeners, ListenerPool, Serving};
use super::codec::head::Scheme;
use super::h1::{self, Ended};
use super::tls::{self, Failure, TlsServer};
use super::upstream::idle::{IdleConns, MAX_IDLE_AGE};
use super::upstream::Upstream;
use super::{h2, health};

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

/// What one worker serves for one listener: the listener, its socket,
/// the listener-wide connection limit, and when to stop.
struct Job {
    pool: Arc<ListenerPool>,
    socket: StdTcpListener,
    limit: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
    /// Counted from before the job is sent, so trackers never see a
    /// started listener without workers; uncounted when its serving ends.
    serving: Serving,
    /// This job also runs the listener's health checks (one job each).
    checks: bool,
}

/// A listener's pool and its per-worker sockets.
#[derive(Debug)]
pub struct Listener {
    /// Backends and config.
    pub pool: Arc<ListenerPool>,
    /// One socket per worker, from [`bind`].
    pub sockets: Vec<StdTcpListener>,
}

/// A listener being served, as the proxy keeps it to change it later.
#[derive(Debug)]
struct Running {
    pool: Arc<ListenerPool>,
    /// Copies of the workers' sockets, to pass on (`vipd upgrade`).
    sockets: Vec<StdTcpListener>,
    /// Stops its sockets' accept loops (they then drain).
    stop: watch::Sender<bool>,
    /// `max_connections` slots, resized by a reload.
    limit: Arc<Semaphore>,
}

/// The running proxy.
#[derive(Debug)]
pub struct Proxy {
    /// Each worker's inbox of listeners to serve.
    workers: Vec<tokio_mpsc::UnboundedSender<Job>>,
    done: mpsc::Receiver<()>,
    heartbeats: Vec<Arc<Heartbeat>>,
    running: std::sync::Mutex<Vec<Running>>,
    listeners: Arc<HttpListeners>,
}

/// How often each worker shows it still runs its tasks.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

impl Proxy {
    /// Starts `workers` workers serving `listeners` (whose sockets come from
    /// [`bind`] with as many workers). A listener's health checks run on
    /// the worker of its first socket.
    pub fn start(workers: usize, listeners: Vec<Listener>) -> io::Result<Proxy> {
        let workers = workers.max(1);
        let (done_tx, done) = mpsc::channel();
        let mut inboxes = Vec::new();
        let mut heartbeats = Vec::new();
        for w in 0..workers {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let heartbeat = Arc::new(Heartbeat::default());
            heartbeat.beat();
            heartbeats.push(Arc::clone(&heartbeat));
            let (inbox, jobs) = tokio_mpsc::unbounded_channel();
            inboxes.push(inbox);
            let done_tx = done_tx.clone();
            std::thread::Builder::new().name(format!("proxy-{w}")).spawn(move || {
                rt.block_on(run_worker(jobs, heartbeat));
                let _ = done_tx.send(());
            })?;
        }
        let proxy = Proxy {
            workers: inboxes,
            done,
            heartbeats,
            running: std::sync::Mutex::new(Vec::new()),
            listeners: Arc::default(),
        };
        proxy.serve(listeners);
        Ok(proxy)
    }

    /// Starts serving `listeners` besides those served already (a process
    /// started by `vipd upgrade` holds its inherited ones back until it
    /// takes over).
    pub fn serve(&self, listeners: Vec<Listener>) {
        let mut running = self.running();
        for l in listeners {
            let limit = Arc::new(Semaphore::new(l.pool.current().config.max_connections));
            running.push(self.launch(l, limit));
        }
        self.listeners.set(running.iter().map(|r| Arc::clone(&r.pool)).collect());
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a listener's sockets to the workers, in turn (one each when
    /// there are as many; a successor of `vipd upgrade` may have another
    /// number of workers than the sockets it inherited, and every socket
    /// must be served: connections queued on one nobody accepts from would
    /// wait forever).
    fn launch(&self, l: Listener, limit: Arc<Semaphore>) -> Running {
        let (stop, stop_rx) = watch::channel(false);
        let listen = l.pool.current().config.listen;
        let copies = l.sockets.iter().filter_map(|s| s.try_clone().ok()).collect();
        for (n, (socket, inbox)) in l.sockets.into_iter().zip(self.workers.iter().cycle()).enumerate() {
            let job = Job {
                pool: Arc::clone(&l.pool),
                socket,
                limit: Arc::clone(&limit),
                stop: stop_rx.clone(),
                serving: l.pool.serving(),
                checks: n == 0,
            };
            if inbox.send(job).is_err() {
                warn!(listener = %l.pool.name(), "a proxy worker is gone; its share of the listener is not served");
            }
        }
        info!(listener = %l.pool.name(), %listen, "HTTP listener up");
        Running { pool: l.pool, sockets: copies, stop, limit }
    }

    /// The listeners being served, by name.
    pub fn listeners(&self) -> Arc<HttpListeners> {
        Arc::clone(&self.listeners)
    }

    /// Makes `configs` the listeners (a reload). Each listener whose
    /// address stays keeps its sockets and swaps its backends and settings
    /// in place ([`ListenerPool::replace`]); one whose address changed
    /// binds the new one and drains the old; a new one binds; one no
    /// longer named stops accepting and drains. Every new address is bound
    /// before anything changes, so one that cannot be bound refuses the
    /// whole reload. Says what changed.
    pub fn apply(&self, configs: &[HttpConfig]) -> Result<Vec<String>, String> {
        let mut running = self.running();
        // Certificates are read again on every reload (a renewed file is
        // taken); one that cannot be used refuses the reload, so the old
        // one stays.
        let now = std::time::SystemTime::now();
        let mut prepared = configs.iter().map(|c| tls::prepare(c, now)).collect::<Result<Vec<_>, _>>()?;
        let mut bound = Vec::new();
        for c in configs {
            let moved = running
                .iter()
                .find(|r| r.pool.name() == c.name)
                .is_none_or(|r| r.pool.current().config.listen != c.listen);
            if moved {
                let sockets = bind(c.listen, self.workers.len())
                    .map_err(|e| format!("http {:?}: listen = {}: cannot listen: {e}", c.name, c.listen))?;
                bound.push((c.name.clone(), sockets));
            }
        }
        let mut said = Vec::new();
        let mut kept = Vec::new();
        for r in running.drain(..) {
            if configs.iter().any(|c| c.name == r.pool.name()) {
                kept.push(r);
            } else {
                let _ = r.stop.send(true);
                said.push(format!("http {:?}: removed; its connections drain", r.pool.name()));
            }
        }
        for (c, loaded) in configs.iter().zip(prepared.iter_mut()) {
            let sockets = bound.iter().position(|(name, _)| *name == c.name).map(|i| bound.swap_remove(i).1);
            let next = match kept.iter().position(|r| r.pool.name() == c.name) {
                Some(i) => {
                    let r = kept.swap_remove(i);
                    resize(&r.limit, r.pool.current().config.max_connections, c.max_connections);
                    if let Some(l) = loaded.certificates.as_ref() {
                        said.push(format!("http {:?}: {} TLS certificate(s) read", c.name, l.len()));
                    }
                    if let Err(e) = r.pool.set_tls(std::mem::take(loaded)) {
                        said.push(format!("http {:?}: TLS not changed: {e}", c.name));
                    }
                    said.extend(r.pool.replace(c.clone()));
                    match sockets {
                        Some(sockets) => {
                            let _ = r.stop.send(true);
                            self.launch(Listener { pool: r.pool, sockets }, r.limit)
                        }
                        None => r,
                    }
                }
                None => {
                    let pool = ListenerPool::new(c.clone());
                    if let Err(e) = pool.set_tls(std::mem::take(loaded)) {
                        said.push(format!("http {:?}: not added: {e}", c.name));
                        continue;
                    }
                    said.push(format!("http {:?}: added on {}", c.name, c.listen));
                    let limit = Arc::new(Semaphore::new(c.max_connections));
                    self.launch(Listener { pool, sockets: sockets.unwrap_or_default() }, limit)
                }
            };
            running.push(next);
        }
        self.listeners.set(running.iter().map(|r| Arc::clone(&r.pool)).collect());
        Ok(said)
    }

    /// Every listener's sockets (new descriptors of them), to pass to the
    /// successor process of `vipd upgrade`.
    pub fn sockets_to_pass(&self) -> io::Result<Vec<(String, SocketAddr, Vec<std::os::fd::OwnedFd>)>> {
        self.running()
            .iter()
            .map(|r| {
                let fds = r.sockets.iter().map(|s| s.try_clone().map(Into::into)).collect::<io::Result<Vec<_>>>()?;
                Ok((r.pool.name().to_string(), r.pool.current().config.listen, fds))
            })
            .collect()
    }

    /// Each worker's sign of life, renewed every [`HEARTBEAT_EVERY`] by a
    /// task on its runtime (the systemd watchdog pings only while all are fresh).
    pub fn heartbeats(&self) -> Vec<Arc<Heartbeat>> {
        self.heartbeats.clone()
    }

    /// Stops accepting, lets in-flight requests finish up to the drain
    /// timeout, and waits for the workers.
    pub fn shutdown(self) {
        let running = std::mem::take(&mut *self.running());
        let drain = running.iter().map(|r| r.pool.current().config.drain_timeout).max().unwrap_or_default();
        for r in &running {
            let _ = r.stop.send(true);
        }
        // The copies go too: once the workers close theirs, a connection
        // attempt is refused rather than left in a queue nobody serves.
        drop(running);
        let Proxy { workers, done, .. } = self;
        // With no more jobs to come, each worker ends once its listeners have.
        let count = workers.len();
        drop(workers);
        let deadline = drain + Duration::from_secs(1);
        for _ in 0..count {
            if done.recv_timeout(deadline).is_err() {
                warn!("proxy workers did not stop within {deadline:?}");
                return;
            }
        }
    }
}

/// Changes a listener's `max_connections` from `old` to `new`. Fewer: the
/// free slots go at once, busy ones as their connections end.
fn resize(limit: &Arc<Semaphore>, old: usize, new: usize) {
    if new > old {
        limit.add_permits(new - old);
    } else if old > new {
        let rest = (old - new).saturating_sub(limit.forget_permits(old - new));
        if rest > 0 {
            if let (Ok(rt), Ok(n)) = (tokio::runtime::Handle::try_current(), u32::try_from(rest)) {
                let limit = Arc::clone(limit);
                rt.spawn(async move {
                    if let Ok(held) = limit.acquire_many_owned(n).await {
                        held.forget();
                    }
                });
            }
        }
    }
}

/// One worker: serves each listener it is handed until that listener
/// stops, and ends when no more can come and all have ended.
async fn run_worker(mut jobs: tokio_mpsc::UnboundedReceiver<Job>, heartbeat: Arc<Heartbeat>) {
    tokio::spawn(async move {
        loop {
            heartbeat.beat();
            tokio::time::sleep(HEARTBEAT_EVERY).await;
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some(job) = job else { break };
                if job.checks {
                    tasks.spawn(health::supervise(Arc::clone(&job.pool), job.stop.clone()));
                }
                match tokio::net::TcpListener::from_std(job.socket) {
                    Ok(l) => {
                        tasks.spawn(serve(l, job.pool, job.limit, job.stop, job.serving));
                    }
                    Err(e) => warn!(error = %e, "listener could not join the runtime"),
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Accepts and serves one listener on this worker until `stop`, then
/// waits up to the drain timeout for its connections to finish.
async fn serve(
    listener: tokio::net::TcpListener,
    pool: Arc<ListenerPool>,
    limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    _serving: Serving,
) {
    // Every connection task holds a sender; all dropped = all finished.
    let (alive, mut all_done) = tokio_mpsc::channel::<()>(1);
    // This worker's idle backend connections, for HTTP/1 and HTTP/2 clients.
    let idle = Arc::new(IdleConns::default());
    let sweeper = {
        let idle = Arc::clone(&idle);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(MAX_IDLE_AGE);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let now = std::time::Instant::now();
                idle.sweep(now);
            }
        })
    };
    let local = listener.local_addr().ok();
    debug!(listener = %pool.name(), listen = ?local, "HTTP listener up on this worker");
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
        let mut stop = stop.clone();
        let alive = alive.clone();
        let idle = Arc::clone(&idle);
        let open = pool.meter().connection();
        // Dropped in this order at the end: the gauge, the drain sender, then
        // the slot (no new connection is let in while this one still counts).
        let held = (open, alive, permit);
        let accepted = Instant::now();
        // One task type per kind of listener: a task is as large as its
        // largest state, and an idle TLS connection should not carry room
        // for a plain connection's (it keeps its own states boxed).
        match pool.tls() {
            Some(tls) => tokio::spawn(async move {
                let _held = held;
                serve_tls(stream, peer, accepted, &tls, pool, idle, stop).await;
            }),
            None => tokio::spawn(async move {
                let _held = held;
                if let Ended::H2(stream, read) = h1::serve(stream, peer, &pool, &idle, &mut stop).await {
                    let io = Prefixed { read, pos: 0, stream };
                    // Boxed: an HTTP/1 connection's task has no room for it.
                    Box::pin(serve_h2(io, peer, Scheme::Http, accepted, pool, idle, stop)).await;
                }
            }),
        };
    }
    drop(listener);
    drop(alive);
    let drain = pool.current().config.drain_timeout;
    if tokio::time::timeout(drain, all_done.recv()).await.is_err() {
        warn!(listener = %pool.name(), listen = ?local, timeout = ?drain, "connections still open after the drain timeout");
    }
    sweeper.abort();
    idle.clear();
}

/// A client of a TLS listener: the handshake, within
/// `client_header_timeout`, then HTTP/2 if ALPN chose `h2`, else HTTP/1.x
/// (which also serves HTTP/2 with prior knowledge, as on plain HTTP).
///
/// Each phase's state is boxed while it runs, and the session (over a
/// kilobyte) is never borrowed here nor kept across an await, only moved
/// on: the task itself stays small, and an idle TLS connection costs its
/// session and what its current phase needs.
#[allow(clippy::too_many_arguments)]
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    tls: &TlsServer,
    pool: Arc<ListenerPool>,
    idle: Arc<IdleConns<Upstream>>,
    mut stop: watch::Receiver<bool>,
) {
    let limit = pool.current().config.client_header_timeout;
    let Some((stream, alpn_h2)) = Box::pin(handshake(stream, peer, tls, limit)).await else {
        return;
    };
    if alpn_h2 {
        Box::pin(serve_h2(stream, peer, Scheme::Https, accepted, pool, idle, stop)).await;
        return;
    }
    let ended = Box::pin(h1::serve(stream, peer, &pool, &idle, &mut stop)).await;
    // (`ended` goes whole into a call: taken apart here, it would keep its
    // room in the task while HTTP/2 runs.)
    if let Some(h2) = h2_by_prior_knowledge(ended, peer, accepted, pool, idle, stop) {
        h2.await;
    }
}

/// HTTP/2 with prior knowledge after an HTTP/1 start over TLS, where
/// `alpn` offers h2 at all.
fn h2_by_prior_knowledge(
    ended: Ended<TlsStream<TcpStream>>,
    peer: SocketAddr,
    accepted: Instant,
    pool: Arc<ListenerPool>,
    idle: Arc<IdleConns<Upstream>>,
    stop: watch::Receiver<bool>,
) -> Option<Pin<Box<impl Future<Output = ()>>>> {
    let Ended::H2(stream, read) = ended else {
        return None;
    };
    let h2 = pool.current().config.tls.as_ref().is_none_or(|t| t.alpn.contains(&crate::proxy::params::Alpn::H2));
    if !h2 {
        debug!(%peer, "HTTP/2 preface over TLS, but alpn does not offer h2; closing");
        return None;
    }
    let io = Prefixed { read, pos: 0, stream };
    Some(Box::pin(serve_h2(io, peer, Scheme::Https, accepted, pool, idle, stop)))
}

/// The TLS handshake within `limit`, counted; the session and whether ALPN
/// chose `h2`.
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    tls: &TlsServer,
    limit: Duration,
) -> Option<(TlsStream<TcpStream>, bool)> {
    match tokio::time::timeout(limit, tls.acceptor().accept(stream)).await {
        Ok(Ok(s)) => {
            let (_, session) = s.get_ref();
            tls.meter().handshake(session.handshake_kind());
            let h2 = session.alpn_protocol() == Some(b"h2");
            Some((s, h2))
        }
        Ok(Err(e)) => {
            let why = Failure::of(&e);
            tls.meter().failed(why);
            debug!(%peer, error = %e, reason = why.name(), "TLS handshake failed");
            None
        }
        Err(_) => {
            tls.meter().failed(Failure::Timeout);
            debug!(%peer, timeout = ?limit, "no TLS handshake in time");
            None
        }
    }
}

/// How long an HTTP/2 connection told to go away (GOAWAY) gets to close
/// by itself once it has no stream open, before it is dropped.
const H2_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How often an HTTP/2 client with streams open is sent a PING, and how
/// long it has to answer (hyper's keep-alive, which vipd served with before).
const H2_PING_EVERY: Duration = Duration::from_secs(20);

/// Stream and connection flow-control windows (hyper's server default).
const H2_WINDOW: u32 = 1024 * 1024;

/// An HTTP/2 client (prior knowledge or ALPN), served on the h2 crate until
/// it closes, it idles out, or the proxy stops (then it is told to finish
/// what it has in flight). Its streams run in this task, not a task each.
/// Idle means no stream open (RFC 9113 §10.5: an idle connection holds a
/// `max_connections` slot for nothing): the preface and the first request
/// must come within `client_header_timeout` of the accept, later requests
/// within `idle_timeout` of the last stream's end. PINGs and SETTINGS do
/// not count as activity; a client that does not answer our PING within
/// [`H2_PING_EVERY`] while streams are open is gone.
async fn serve_h2<I>(
    io: I,
    peer: SocketAddr,
    scheme: Scheme,
    accepted: Instant,
    listener: Arc<ListenerPool>,
    idle: Arc<IdleConns<Upstream>>,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let streams = Arc::new(Streams::new(accepted));
    let cfg = listener.current().config.clone();
    let (header_timeout, idle_timeout) = (cfg.client_header_timeout, cfg.idle_timeout);
    let mut builder = ::h2::server::Builder::new();
    // hyper's server settings, which vipd served with before.
    builder
        .initial_window_size(H2_WINDOW)
        .initial_connection_window_size(H2_WINDOW)
        .max_frame_size(16 * 1024)
        .max_header_list_size(16 * 1024)
        .max_send_buffer_size(400 * 1024)
        .max_local_error_reset_streams(Some(1024))
        .max_concurrent_streams(cfg.h2_max_concurrent_streams);
    let handshake = builder.handshake::<_, Bytes>(io);
    let mut conn = match tokio::time::timeout_at((accepted + header_timeout).into(), handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "no HTTP/2 preface in time");
            return;
        }
    };
    let mut pings = conn.ping_pong();
    let mut pong_awaited = false;
    let mut running = FuturesUnordered::new();
    // Set once GOAWAY went for idleness: the connection is dropped then if
    // it has not closed and no stream is open.
    let mut drop_at: Option<Instant> = None;
    let mut stopping = false;
    // Two timers, moved only when their deadline does (this loop turns
    // for every stream).
    let mut idle_timer_at = accepted + header_timeout;
    let idle_timer = tokio::time::sleep_until(idle_timer_at.into());
    let ping_timer = tokio::time::sleep(H2_PING_EVERY);
    tokio::pin!(idle_timer, ping_timer);
    loop {
        let idle_at = drop_at.or_else(|| streams.idle_deadline(header_timeout, idle_timeout));
        if let Some(t) = idle_at.filter(|t| *t != idle_timer_at) {
            idle_timer.as_mut().reset(t.into());
            idle_timer_at = t;
        }
        // Every stream that can move does, then the connection once: the
        // frames they queued go out in one write, and new streams start.
        // Once a stream began or ended, the loop turns (the idle deadline
        // moves), after the connection's write.
        let drive = std::future::poll_fn(|cx| {
            let mut changed = false;
            loop {
                while let Poll::Ready(Some(())) = running.poll_next_unpin(cx) {
                    changed = true;
                }
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        let open = Streams::open(&streams);
                        // Each stream on the generation current when it opens.
                        let (pool, idle) = (listener.current(), Arc::clone(&idle));
                        // The guard goes with the stream's end (mapped: an
                        // async block would hold the future twice).
                        let stream = h2::serve_stream(pool, idle, peer, scheme, req, respond);
                        running.push(Box::pin(stream.map(move |()| drop(open))));
                        changed = true;
                    }
                    Poll::Ready(closed) => return Poll::Ready(Some(closed.map(|r| r.map(drop)))),
                    Poll::Pending if changed => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
            }
        });
        tokio::select! {
            biased;
            driven = drive => match driven {
                // Streams began or ended: look at the deadlines again.
                None => {}
                Some(closed) => {
                    if let Some(Err(e)) = closed {
                        debug!(%peer, error = %e, "HTTP/2 client connection ended with an error");
                    }
                    // Closed (after GOAWAY, once its streams are done), or broken.
                    return;
                }
            },
            pong = std::future::poll_fn(|cx| pings.as_mut().map_or(Poll::Pending, |p| p.poll_pong(cx))), if pong_awaited => {
                pong_awaited = false;
                if pong.is_err() {
                    return;
                }
            }
            _ = ping_timer.as_mut() => {
                ping_timer.as_mut().reset((Instant::now() + H2_PING_EVERY).into());
                if pong_awaited {
                    debug!(%peer, "HTTP/2 client does not answer PING; closing");
                    return;
                }
                if streams.open.load(Ordering::Relaxed) > 0 {
                    if let Some(p) = pings.as_mut() {
                        pong_awaited = p.send_ping(::h2::Ping::opaque()).is_ok();
                    }
                }
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.graceful_shutdown();
            }
            _ = idle_timer.as_mut(), if idle_at.is_some() => {
                let open = streams.open.load(Ordering::Relaxed) > 0;
                match drop_at {
                    // A stream that opened just before the GOAWAY finishes.
                    Some(_) if open => drop_at = Some(Instant::now() + H2_CLOSE_GRACE),
                    Some(_) => return,
                    None if open => {}
                    None => {
                        debug!(%peer, served = streams.served.load(Ordering::Relaxed), "HTTP/2 client idle; closing");
                        conn.graceful_shutdown();
                        // With none open, the client gets a moment to close.
                        drop_at = Some(Instant::now() + H2_CLOSE_GRACE);
                    }
                }
            }
        }
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

/// A connection with bytes already read from it in front: what the HTTP/1
/// reader took before it saw the HTTP/2 preface.
struct Prefixed<S> {
    read: Vec<u8>,
    pos: usize,
    stream: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
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

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
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
