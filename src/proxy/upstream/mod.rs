//! The backend side, one for every client protocol and for health checks:
//! an HTTP/1.1 connection to a backend (the socket, TLS or not, and its
//! read buffer), how an attempt gets one (pooled or new, backends blamed as
//! the attempt rules say), and each worker's pool of idle ones (`idle`).
//! The client connection's task writes requests and reads responses on it
//! directly; between requests it waits in the pool, undriven.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::warn;

use super::attempt::{AccessLog, Attempts, LocalAnswer, Outcome, Then, QUEUE_TIMEOUT};
use super::backends::{Backend, InFlight, NotAdmitted, Pool};
use super::codec::buf::ReadBuf as Buffer;
use idle::IdleConns;

pub mod idle;
use crate::proxy::tls::BackendTls;

/// A backend connection.
#[derive(Debug)]
pub struct Upstream {
    /// The connection.
    pub stream: UpstreamStream,
    /// Bytes read from the backend and not yet used.
    pub buf: Buffer,
    /// It came from the pool (served a request before): a backend may have
    /// closed it just as it was sent, which is not the backend's fault.
    pub reused: bool,
}

/// A TCP connection to a backend within `timeout`, Nagle off; the error
/// says which of the two failed.
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err(format!("connect: timed out after {timeout:?}")),
    }
}

impl Upstream {
    /// Gives the connection, its exchange done, to `idle` for the next
    /// request to `addr` (`done`: when it finished, where its idle time
    /// counts from).
    pub fn pool_again(mut self, idle: &IdleConns<Upstream>, addr: SocketAddr, done: Instant) {
        self.reused = true;
        self.buf.shrink();
        idle.put(addr, self, done);
    }

    /// Opens a connection, within `timeout`, over TLS if `tls` says.
    pub async fn connect(addr: SocketAddr, timeout: Duration, tls: Option<&BackendTls>) -> Result<Self, String> {
        let stream = connect_stream(addr, timeout, tls).await?;
        Ok(Upstream { stream, buf: Buffer::default(), reused: false })
    }

    /// An idle connection is still usable: the backend has not closed it
    /// and sent nothing unasked.
    pub fn is_usable(&self) -> bool {
        self.stream.is_quiet()
    }
}

/// A backend connection's bytes: plain TCP, or TLS over it (`backend_tls`).
#[derive(Debug)]
pub enum UpstreamStream {
    /// Plain HTTP.
    Plain(TcpStream),
    /// HTTPS to the backend.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// An in-memory backend, for the connection logic's unit tests.
    #[cfg(test)]
    Memory(tokio::io::DuplexStream),
}

/// The reading side of an [`UpstreamStream`], used at once with the writing one.
pub enum UpstreamRead<'a> {
    /// Of a TCP socket.
    Plain(tokio::net::tcp::ReadHalf<'a>),
    /// Of TLS (one state for both directions: the halves share it).
    Tls(tokio::io::ReadHalf<&'a mut tokio_rustls::client::TlsStream<TcpStream>>),
    /// Of an in-memory stream (tests).
    #[cfg(test)]
    Memory(tokio::io::ReadHalf<&'a mut tokio::io::DuplexStream>),
}

/// The writing side of an [`UpstreamStream`].
pub enum UpstreamWrite<'a> {
    /// Of a TCP socket.
    Plain(tokio::net::tcp::WriteHalf<'a>),
    /// Of TLS.
    Tls(tokio::io::WriteHalf<&'a mut tokio_rustls::client::TlsStream<TcpStream>>),
    /// Of an in-memory stream (tests).
    #[cfg(test)]
    Memory(tokio::io::WriteHalf<&'a mut tokio::io::DuplexStream>),
}

impl UpstreamStream {
    /// Both sides, to read and write at once.
    pub fn split(&mut self) -> (UpstreamRead<'_>, UpstreamWrite<'_>) {
        match self {
            UpstreamStream::Plain(s) => {
                let (r, w) = s.split();
                (UpstreamRead::Plain(r), UpstreamWrite::Plain(w))
            }
            UpstreamStream::Tls(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (UpstreamRead::Tls(r), UpstreamWrite::Tls(w))
            }
            #[cfg(test)]
            UpstreamStream::Memory(s) => {
                let (r, w) = tokio::io::split(s);
                (UpstreamRead::Memory(r), UpstreamWrite::Memory(w))
            }
        }
    }

    /// The backend has not closed the connection nor sent anything unasked
    /// (a TLS alert counts): nothing is waiting to be read. Plain TCP costs
    /// no system call unless the socket became readable since it was last
    /// read dry (a byte read means the connection is dropped anyway); TLS
    /// looks without taking (MSG_PEEK), so records stay for the TLS layer.
    pub fn is_quiet(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut probe = [0u8; 1];
        match self {
            UpstreamStream::Plain(s) => {
                matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            UpstreamStream::Tls(s) => {
                let (tcp, session) = s.get_ref();
                // Plaintext or a close_notify rustls already read counts too.
                let flags = nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
                session.wants_read()
                    && matches!(
                        nix::sys::socket::recv(tcp.as_raw_fd(), &mut probe, flags),
                        Err(nix::errno::Errno::EAGAIN)
                    )
            }
            #[cfg(test)]
            UpstreamStream::Memory(_) => true,
        }
    }
}

macro_rules! delegate_io {
    ($t:ty, $($variant:ident),+) => {
        impl AsyncRead for $t {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($t:ty, $($variant:ident),+) => {
        impl AsyncWrite for $t {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

#[cfg(not(test))]
mod delegated {
    use super::*;
    delegate_io!(UpstreamStream, Plain, Tls);
    delegate_write!(UpstreamStream, Plain, Tls);
    delegate_io!(UpstreamRead<'_>, Plain, Tls);
    delegate_write!(UpstreamWrite<'_>, Plain, Tls);
}
#[cfg(test)]
mod delegated {
    use super::*;
    delegate_io!(UpstreamStream, Plain, Tls, Memory);
    delegate_write!(UpstreamStream, Plain, Tls, Memory);
    delegate_io!(UpstreamRead<'_>, Plain, Tls, Memory);
    delegate_write!(UpstreamWrite<'_>, Plain, Tls, Memory);
}

/// A connection to the backend at `addr` within `timeout`, over TLS when
/// `tls` says (the handshake within the same time).
pub async fn connect_stream(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&BackendTls>,
) -> Result<UpstreamStream, String> {
    let started = tokio::time::Instant::now();
    let tcp = connect_tcp(addr, timeout).await?;
    let Some(t) = tls else { return Ok(UpstreamStream::Plain(tcp)) };
    // The handshake has what is left of the same time.
    match tokio::time::timeout_at(started + timeout, t.connect(addr, tcp)).await {
        Ok(r) => r.map(|s| UpstreamStream::Tls(Box::new(s))),
        Err(_) => Err(format!("connect: TLS handshake not done within {timeout:?}")),
    }
}

/// The backend and connection an attempt goes out on.
#[derive(Debug)]
pub struct Acquired {
    /// The backend's index in the pool.
    pub index: usize,
    /// The backend.
    pub backend: Arc<Backend>,
    /// Its in-flight count and connection slot, held for the attempt.
    pub in_flight: InFlight,
    /// The connection.
    pub up: Upstream,
}

/// The connection for a request's next attempt, for either client
/// protocol: a backend the pool admits that the request has not tried, a
/// pooled connection to it where the attempt rules allow (never with
/// `fresh`: an upgrade's connection is its own), else a new one. Backends
/// that cannot be reached are blamed and others tried as the rules say.
/// `Err`: the answer when no attempt can be made. `now` is the time if the
/// caller has just read it (a clock read is a measurable part of a
/// request); it is not used past anything that waited.
pub async fn acquire(
    pool: &Pool,
    idle: &IdleConns<Upstream>,
    attempts: &mut Attempts,
    fresh: bool,
    mut log: Option<&mut AccessLog>,
    mut now: Option<Instant>,
) -> Result<Acquired, LocalAnswer> {
    let cfg = &pool.config;
    loop {
        if !attempts.may_start() {
            return Err(attempts.exhausted());
        }
        let admitted = match pool.admit_now(attempts.tried()) {
            Some(admitted) => admitted,
            None => {
                now = None;
                pool.admit(attempts.tried()).await
            }
        };
        let (index, in_flight) = match admitted {
            Ok(admitted) => admitted,
            Err(NotAdmitted::NoBackend) => return Err(attempts.exhausted()),
            Err(NotAdmitted::QueueTimeout(i)) => {
                let backend = pool.backends().get(i).map(|b| b.address);
                warn!(?backend, timeout = ?cfg.queue_timeout, "backend at max_conns for the whole queue timeout");
                return Err(QUEUE_TIMEOUT);
            }
        };
        let Some(backend) = pool.backends().get(index).map(Arc::clone) else { return Err(attempts.exhausted()) };
        let addr = backend.address;
        if attempts.start(index) {
            pool.meter().retries.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(l) = log.as_deref_mut() {
            l.backend = Some(addr);
        }
        let pooled = if fresh || !attempts.may_reuse() {
            None
        } else {
            idle.take(addr, now.take().unwrap_or_else(Instant::now), Upstream::is_usable)
        };
        if let Some(up) = pooled {
            return Ok(Acquired { index, backend, in_flight, up });
        }
        // A connection is opened: what `now` said is past. Boxed: the
        // connect (with its TLS handshake) is the largest part of this
        // future and rare with pooling, and every request's future (an
        // HTTP/2 stream's is allocated and moved whole) would carry it.
        now = None;
        match Box::pin(Upstream::connect(addr, cfg.connect_timeout, pool.backend_tls().as_deref())).await {
            Ok(up) => return Ok(Acquired { index, backend, in_flight, up }),
            Err(e) => {
                warn!(backend = %addr, error = %e, "backend unreachable; trying another");
                if let Some(answer) = conclude(pool, attempts, index, Outcome::Unreachable) {
                    return Err(answer);
                }
            }
        }
    }
}

/// Counts a response head a backend gave (`head_after` the request was
/// sent, where it is a response time) and applies what it says of it.
pub fn answered(
    pool: &Pool,
    attempts: &mut Attempts,
    index: usize,
    backend: &Backend,
    status: u16,
    head_after: Option<Duration>,
) {
    backend.meter().responses.count(status);
    if let Some(t) = head_after {
        backend.meter().response_time.observe(t);
    }
    pool.meter().responses.count(status);
    let (blame, _) = attempts.end(Outcome::Answered { status });
    pool.blame(index, blame);
}

/// Applies the attempt rules to an attempt on backend `index` that ended
/// without a response for the client: blames the backend as they say, and
/// returns the answer to give, or `None` to try again.
pub fn conclude(pool: &Pool, attempts: &mut Attempts, index: usize, outcome: Outcome) -> Option<LocalAnswer> {
    let (blame, then) = attempts.end(outcome);
    pool.blame(index, blame);
    match then {
        Then::Retry => None,
        Then::Answer(a) => Some(a),
        Then::Done => Some(attempts.exhausted()),
    }
}
