//! One HTTP/1.1 connection to a backend: the socket and its read buffer.
//! The client connection's task writes requests and reads responses on it
//! directly; between requests it waits in the pool, undriven.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::buf::ReadBuf as Buffer;
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
}

/// The reading side of an [`UpstreamStream`], used at once with the writing one.
pub enum UpstreamRead<'a> {
    /// Of a TCP socket.
    Plain(tokio::net::tcp::ReadHalf<'a>),
    /// Of TLS (one state for both directions: the halves share it).
    Tls(tokio::io::ReadHalf<&'a mut tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The writing side of an [`UpstreamStream`].
pub enum UpstreamWrite<'a> {
    /// Of a TCP socket.
    Plain(tokio::net::tcp::WriteHalf<'a>),
    /// Of TLS.
    Tls(tokio::io::WriteHalf<&'a mut tokio_rustls::client::TlsStream<TcpStream>>),
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

delegate_io!(UpstreamStream, Plain, Tls);
delegate_write!(UpstreamStream, Plain, Tls);
delegate_io!(UpstreamRead<'_>, Plain, Tls);
delegate_write!(UpstreamWrite<'_>, Plain, Tls);

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
