//! One HTTP/1.1 connection to a backend: the socket and its read buffer.
//! The client connection's task writes requests and reads responses on it
//! directly; between requests it waits in the pool, undriven.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::buf::ReadBuf;

/// A backend connection.
#[derive(Debug)]
pub struct Upstream {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read from the backend and not yet used.
    pub buf: ReadBuf,
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
    /// Opens a connection, within `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, String> {
        let stream = connect_tcp(addr, timeout).await?;
        Ok(Upstream { stream, buf: ReadBuf::default(), reused: false })
    }

    /// An idle connection is still usable: the backend has not closed it
    /// and sent nothing unasked. Costs no system call unless the socket
    /// became readable since it was last read dry.
    pub fn is_usable(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}
