//! Body types of the proxy. Bodies stream frame by frame, never buffered
//! whole. The response body carries the request's bookkeeping (in-flight
//! count, the upstream connection to pool again, the access-log line) and
//! settles it when the body ends or is dropped, not when headers go out.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use tracing::info;

use super::backends::InFlight;
use super::idle::IdleConns;
use super::upstream::Upstream;

/// What is sent upstream: the client's streaming body, or nothing (health
/// checks, and a bodiless idempotent request sent again after a broken
/// connection).
#[derive(Debug)]
pub enum UpstreamBody {
    /// The client's request body, streamed.
    Client(Incoming),
    /// No body.
    Empty,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut *self {
            UpstreamBody::Client(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Client(b) => b.is_end_stream(),
            UpstreamBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Client(b) => b.size_hint(),
            UpstreamBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Facts for the access-log line, collected only when it is enabled.
#[derive(Debug)]
pub struct AccessLog {
    /// Client address.
    pub client: SocketAddr,
    /// Request method.
    pub method: String,
    /// Request path and query.
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Backend that answered, if any.
    pub backend: Option<SocketAddr>,
    /// When the request arrived.
    pub started: Instant,
    /// Its `X-Request-Id`, as the backend got it.
    pub request_id: String,
}

impl AccessLog {
    /// Writes the line: `bytes` of response body sent, `complete` if all.
    pub fn emit(&self, bytes: u64, complete: bool) {
        info!(
            target: "access",
            client = %self.client,
            method = %self.method,
            path = %self.path,
            status = self.status,
            backend = %self.backend.map_or_else(|| "-".to_string(), |b| b.to_string()),
            bytes,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            complete,
            request_id = %self.request_id,
        );
    }
}

/// Bookkeeping settled when the response body is done.
#[derive(Debug, Default)]
pub struct Completion {
    /// The backend's in-flight count, held until the body ends.
    pub in_flight: Option<InFlight>,
    /// Where the upstream connection waits for its next request.
    pub idle: Option<Arc<IdleConns<Upstream>>>,
    /// The access-log line, if enabled.
    pub log: Option<Box<AccessLog>>,
}

impl Completion {
    /// `upstream` goes back to the pool if the body was read to its end.
    fn finish(&mut self, complete: bool, bytes: u64, upstream: Option<Upstream>) {
        if let (true, Some(conn), Some(guard), Some(idle)) = (complete, upstream, &self.in_flight, &self.idle) {
            if !conn.is_closed() {
                idle.put(guard.address(), conn, Instant::now());
            }
        }
        self.in_flight = None;
        if let Some(l) = self.log.take() {
            l.emit(bytes, complete);
        }
    }
}

/// The response body sent to the client.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    bytes: u64,
    done: Option<Completion>,
}

#[derive(Debug)]
enum Inner {
    /// A backend's body, and the connection that must be driven for it to
    /// arrive (`None` when a task of its own drives it).
    Upstream(Incoming, Option<Upstream>),
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// Streams a backend's response body, driving `conn` as it goes.
    pub fn upstream(body: Incoming, conn: Option<Upstream>, done: Completion) -> Self {
        ProxyBody { inner: Inner::Upstream(body, conn), bytes: 0, done: Some(done) }
    }

    /// A short body made here (errors, 503s).
    pub fn full(text: impl Into<Bytes>, done: Completion) -> Self {
        ProxyBody { inner: Inner::Full(Some(text.into())), bytes: 0, done: Some(done) }
    }

    fn settle(&mut self, complete: bool) {
        if let Some(mut d) = self.done.take() {
            let conn = match &mut self.inner {
                Inner::Upstream(_, conn) => conn.take(),
                Inner::Full(_) => None,
            };
            d.finish(complete, self.bytes, conn);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Upstream(b, conn) => {
                if let Some(c) = conn {
                    c.poll_drive(cx);
                }
                Pin::new(b).poll_frame(cx)
            }
            Inner::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => this.settle(true),
            Poll::Ready(Some(Err(_))) => this.settle(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b, _) => b.is_end_stream(),
            Inner::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b, _) => b.size_hint(),
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // A body that is empty by nature (HEAD, 204, 304) may never be polled.
        let complete = self.is_end_stream();
        self.settle(complete);
    }
}
