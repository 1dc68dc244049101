//! One HTTP/1.1 connection to a backend. It has no task of its own: whoever
//! uses it (the request, then the response body) drives it, so a proxied
//! request is served by the client connection's task alone, with no wake-up
//! crossing to another task. Idle connections wait in the pool undriven; the
//! next user finds out there whether the backend closed them.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, Connection, SendRequest};
use hyper::client::conn::TrySendError;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::body::UpstreamBody;
use super::h1::upstream::{connect_stream, UpstreamStream};
use super::tls::BackendTls;

/// hyper's state machine of one client connection.
type Driver = Pin<Box<Connection<TokioIo<UpstreamStream>, UpstreamBody>>>;

/// A pooled connection to a backend and the state machine that drives it.
pub struct Upstream {
    sender: SendRequest<UpstreamBody>,
    /// `None` once the connection finished. Dropping it then matters: only
    /// that fails a request still queued on it, instead of leaving it hang.
    conn: Option<Driver>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("closed", &self.conn.is_none()).finish_non_exhaustive()
    }
}

fn builder() -> Builder {
    let mut b = Builder::new();
    // One flat buffer per request: cheaper for the kernel than writev.
    b.writev(false);
    b
}

impl Upstream {
    /// Opens a new connection.
    pub async fn connect(addr: SocketAddr, timeout: Duration, tls: Option<&BackendTls>) -> Result<Self, String> {
        let stream = connect_stream(addr, timeout, tls).await?;
        let (sender, conn) = builder().handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
        Ok(Upstream { sender, conn: Some(Box::pin(conn)) })
    }

    /// Lets the connection make progress (write the request, read the
    /// response); returns false once it is closed.
    pub fn poll_drive(&mut self, cx: &mut Context<'_>) -> bool {
        drive(&mut self.conn, cx)
    }

    /// Closed by either side.
    pub fn is_closed(&self) -> bool {
        self.conn.is_none() || self.sender.is_closed()
    }

    /// Waits until a request can be sent; false if the connection is gone.
    pub async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            let alive = self.poll_drive(cx);
            match self.sender.poll_ready(cx) {
                Poll::Ready(r) => Poll::Ready(r.is_ok()),
                Poll::Pending if alive => Poll::Pending,
                Poll::Pending => Poll::Ready(false),
            }
        })
        .await
    }

    /// Sends a request and waits for the response head. A request the
    /// connection never wrote comes back inside the error.
    pub async fn send(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>> {
        let mut response = std::pin::pin!(self.sender.try_send_request(req));
        poll_fn(|cx| {
            drive(&mut self.conn, cx);
            response.as_mut().poll(cx)
        })
        .await
    }
}

/// Polls the connection; once it finishes, drops it. Returns whether it lives.
fn drive(conn: &mut Option<Driver>, cx: &mut Context<'_>) -> bool {
    let Some(c) = conn else { return false };
    if let Poll::Ready(result) = c.as_mut().poll(cx) {
        if let Err(e) = result {
            debug!(error = %e, "upstream connection ended");
        }
        *conn = None;
        return false;
    }
    true
}

/// A connection for an HTTP Upgrade: its own task (the upgraded stream
/// outlives the request), never pooled.
pub async fn connect_for_upgrade(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&BackendTls>,
) -> Result<SendRequest<UpstreamBody>, String> {
    let stream = connect_stream(addr, timeout, tls).await?;
    let (sender, conn) = builder().handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "upgraded upstream connection ended");
        }
    });
    Ok(sender)
}
