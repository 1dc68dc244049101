//! Listeners and client connections. One worker thread per core the process
//! may use, each with its own single-threaded runtime and its own
//! SO_REUSEPORT socket per listener (the kernel spreads connections; no
//! work crosses threads). hyper serves HTTP/1.1 and h2c with prior
//! knowledge; shutdown stops accepting and drains connections.

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use super::backends::Pool;
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
}

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
        for (w, jobs) in per_worker.into_iter().enumerate() {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let stop_rx = stop_rx.clone();
            let done_tx = done_tx.clone();
            std::thread::Builder::new().name(format!("proxy-{w}")).spawn(move || {
                rt.block_on(async move {
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
        Ok(Proxy { stop, done, workers, drain })
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

/// Accepts and serves one listener on this worker until `stop`.
async fn serve(
    listener: tokio::net::TcpListener,
    pool: Arc<Pool>,
    limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let cfg = &pool.config;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.client_header_timeout)
        // One flat buffer per response: cheaper for the kernel than writev
        // of head and small body (measured with wrk on loopback).
        .writev(false)
        .max_buf_size(cfg.max_header_size.max(8192));
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
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
        let service = service_fn(move |req| {
            let pool = Arc::clone(&pool);
            async move { Ok::<_, Infallible>(forward::handle(pool, peer, req).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(cfg.drain_timeout, graceful.shutdown()).await.is_err() {
        warn!(listener = %cfg.name, timeout = ?cfg.drain_timeout, "connections still open after the drain timeout");
    }
    pool.close_idle();
}
