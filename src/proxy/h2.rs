//! HTTP/2 clients' requests, over the same pooled HTTP/1.1 backend
//! connections, codec and attempt rules as the HTTP/1 path. The h2 crate's
//! server is the client side ([`serve_stream`], in the connection's task);
//! here the stream's fields become an HTTP/1.1 request head, its body goes
//! up as the client sends it (alongside the wait for the answer), the
//! response head is parsed by `codec::head` and its body sent piece by
//! piece as it arrives and the client's window allows. The response body owns
//! the backend connection, sends on what is left of the request body (a
//! backend may answer while it reads), and puts the connection back in the
//! pool once both are done.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant as StdInstant;

use http_body::{Body, Frame, SizeHint};
use hyper::body::Bytes;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, DATE, HOST, LOCATION,
};
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, timeout_at, Duration, Instant, Sleep};
use tracing::{debug, warn};

use super::attempt::{AccessLog, Attempts, LocalAnswer, Outcome};
use super::backends::{InFlight, Pool};
use super::codec::buf::BODY_CHUNK;
use super::codec::chunked::{put_chunk, trailer_name_may_pass, Remaining};
use super::codec::head::{self as wire, https_location, Framing, ResponseContext, Scheme};
use super::codec::head::{is_hop_by_hop, is_idempotent, is_valid_authority, looks_like_framing};
use super::meter::ListenerMeter;
use super::upstream::idle::IdleConns;
use super::upstream::{acquire, answered, conclude, Acquired, Upstream, UpstreamStream};
use super::within::within;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Removes hop-by-hop headers in place: the same rule as the HTTP/1
/// path's ([`is_hop_by_hop`]), and whatever `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass to see whether there is anything to do: there usually is
    // not, and each removal costs a hash and a probe.
    // Also names a CGI/WSGI backend would read as a framing or forwarding
    // field (`content_length`): dropped, as on the HTTP/1 path.
    let is_hop = |k: &HeaderName| is_hop_by_hop(k.as_str().as_bytes()) || looks_like_framing(k.as_str().as_bytes());
    if !headers.keys().any(is_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let hop: Vec<HeaderName> = headers.keys().filter(|k| is_hop(k)).cloned().collect();
    for name in named.into_iter().chain(hop) {
        headers.remove(name);
    }
}

/// The host an HTTP/2 request is for: its `:authority`, which wins over a
/// `Host` field (RFC 9113 §8.3.1), else `Host`; `None` when it names none
/// or an invalid one (answered 400, as HTTP/1.1 without Host is).
fn request_host(req: &Request<RecvBody>) -> Option<&[u8]> {
    let host = match req.uri().authority() {
        Some(a) => a.as_str().as_bytes(),
        None => req.headers().get(HOST)?.as_bytes(),
    };
    is_valid_authority(host).then_some(host)
}

/// What the proxy says about the request in the head it sends up.
struct Hop<'a> {
    client: IpAddr,
    scheme: Scheme,
    /// The request's host ([`request_host`]).
    host: &'a [u8],
}

/// How the request body goes to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpFraming {
    /// No body.
    None,
    /// No body, and `Content-Length: 0` said: the method expects content
    /// (RFC 9110 §8.6), or the client stated the length.
    Zero,
    /// As many bytes as the client's Content-Length said (the h2 crate
    /// holds the stream to it, RFC 9113 §8.1.1).
    Length(u64),
    /// Chunked, re-framed from the client's DATA frames.
    Chunked,
}

/// A request HTTP/2 calls malformed, or one without a usable host.
const MALFORMED: LocalAnswer = LocalAnswer { status: 400, reason: "Bad Request", text: "bad request\n" };

/// Writes the HTTP/1.1 request head for the backend into `out`: origin
/// form, `Host` first, the client's fields but those the proxy sets itself,
/// Cookie fields joined into one (RFC 9113 §8.2.3), the forwarding fields
/// and the framing of our own, and one `X-Request-Id` (`fresh` in hex unless
/// the client sent exactly one valid one). Returns where the id is in `out`.
/// The fields go straight from the client's map into `out`: nothing of the
/// proxy's own is put in the map first (each value there is an allocation).
fn request_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    hop: &Hop<'_>,
    framing: UpFraming,
    fresh: u64,
    out: &mut Vec<u8>,
) -> Range<usize> {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    wire::put_field(out, b"host", hop.host);
    // Counted on the way (rather than looked up after, a hash each).
    let (mut cookies, mut forwarded_for, mut request_ids) = (0, false, 0);
    for (name, value) in headers {
        if name == COOKIE {
            cookies += 1;
            continue;
        }
        if name == HOST || name == CONTENT_LENGTH {
            continue;
        }
        if wire::is_forwarding(name.as_str().as_bytes()) {
            forwarded_for |= name == X_FORWARDED_FOR;
            continue;
        }
        request_ids += usize::from(name == X_REQUEST_ID);
        wire::put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if cookies > 0 {
        out.extend_from_slice(b"cookie: ");
        for (n, v) in headers.get_all(COOKIE).iter().enumerate() {
            if n > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    let prior = forwarded_for.then(|| headers.get_all(&X_FORWARDED_FOR)).into_iter().flatten().map(|v| v.as_bytes());
    wire::put_forwarded(out, prior, hop.client, hop.scheme, Some(hop.host));
    match framing {
        UpFraming::None => {}
        UpFraming::Zero => out.extend_from_slice(b"content-length: 0\r\n"),
        UpFraming::Length(n) => wire::put_length(out, n),
        UpFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    wire::ensure_request_id(out, request_ids, fresh)
}

/// The request body on its way up: the client's frames, framed for
/// HTTP/1.1, with what the backend has not taken yet.
#[derive(Debug)]
struct Upload {
    body: RecvBody,
    /// How the backend was told the body is framed.
    framing: UpFraming,
    /// Bytes to write, from `sent` on.
    pending: Vec<u8>,
    /// The client's trailer fields that go up, as field lines.
    trailers: Vec<u8>,
    sent: usize,
    /// The client's body has ended (its last chunk is in `pending`).
    ended: bool,
    /// Written to TLS, maybe not yet sent.
    unflushed: bool,
    tls: bool,
    /// Body bytes taken from the client.
    taken: u64,
}

/// What one step of an upload did.
enum Step {
    /// Moved bytes on (from the client, or to the backend).
    Moved,
    /// The client's body failed (the stream was reset).
    ClientFailed,
    /// The backend did not take it (it may have answered and closed).
    BackendFailed,
}

impl Upload {
    fn new(body: RecvBody, framing: UpFraming) -> Self {
        let ended = matches!(framing, UpFraming::None | UpFraming::Zero);
        Upload {
            body,
            framing,
            pending: Vec::new(),
            trailers: Vec::new(),
            sent: 0,
            ended,
            unflushed: false,
            tls: false,
            taken: 0,
        }
    }

    /// All of it is with the backend.
    fn is_done(&self) -> bool {
        self.ended && self.sent == self.pending.len() && !self.unflushed
    }

    /// One step: write some of what is pending, flush what TLS holds, or
    /// take the client's next frame. Cancel-safe: each has one wait, and
    /// its result is recorded at once.
    async fn step<W: AsyncWrite + Unpin>(&mut self, to: &mut W) -> Step {
        std::future::poll_fn(|cx| self.poll_step(cx, to)).await
    }

    /// [`Upload::step`] as a poll, for the response body that carries the
    /// upload on once the response head is out (a full-duplex exchange).
    fn poll_step<W: AsyncWrite + Unpin>(&mut self, cx: &mut Context<'_>, to: &mut W) -> Poll<Step> {
        if self.sent < self.pending.len() {
            return Poll::Ready(match ready!(Pin::new(to).poll_write(cx, &self.pending[self.sent..])) {
                Ok(n) if n > 0 => {
                    self.sent += n;
                    self.unflushed = self.tls;
                    if self.sent == self.pending.len() {
                        self.pending.clear();
                        self.sent = 0;
                    }
                    Step::Moved
                }
                _ => Step::BackendFailed,
            });
        }
        if self.unflushed {
            return Poll::Ready(match ready!(Pin::new(to).poll_flush(cx)) {
                Ok(()) => {
                    self.unflushed = false;
                    Step::Moved
                }
                Err(_) => Step::BackendFailed,
            });
        }
        if self.ended {
            // Done (callers stop at `is_done`): nothing more will come.
            return Poll::Pending;
        }
        Poll::Ready(match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
            None => {
                // Only END_STREAM, with all the bytes the backend was
                // promised, is the end of the body (a RST_STREAM is not,
                // whatever its code): a cut body must not go up as complete
                // (a chunked terminator, or a short length the next request
                // on the connection would fill).
                let promised = match self.framing {
                    UpFraming::Length(n) => n == self.taken,
                    _ => true,
                };
                let whole = self.body.is_end_stream() && promised;
                if !whole {
                    return Poll::Ready(Step::ClientFailed);
                }
                self.ended = true;
                if self.framing == UpFraming::Chunked {
                    self.pending.extend_from_slice(b"0\r\n");
                    self.pending.append(&mut self.trailers);
                    self.pending.extend_from_slice(b"\r\n");
                }
                Step::Moved
            }
            Some(Ok(frame)) => {
                match frame.into_data() {
                    Ok(data) => {
                        self.taken += data.len() as u64;
                        if self.framing == UpFraming::Chunked && !data.is_empty() {
                            put_chunk(&mut self.pending, &data);
                        } else {
                            self.pending.extend_from_slice(&data);
                        }
                    }
                    // Trailer fields go up in the chunked trailer section,
                    // held back by the HTTP/1 path's rule; a body of stated
                    // length has no room for them (RFC 9112 §7.1.2).
                    Err(frame) => {
                        if let (Ok(fields), UpFraming::Chunked) = (frame.into_trailers(), self.framing) {
                            for (name, value) in &fields {
                                if trailer_name_may_pass(name.as_str().as_bytes()) {
                                    wire::put_field(&mut self.trailers, name.as_str().as_bytes(), value.as_bytes());
                                }
                            }
                        }
                    }
                }
                Step::Moved
            }
            Some(Err(_)) => Step::ClientFailed,
        })
    }
}

/// An HTTP/2 client's request body as an [`http_body::Body`]: its DATA
/// (the flow-control window given back as each piece is taken), then its
/// trailers.
#[derive(Debug)]
pub struct RecvBody {
    stream: ::h2::RecvStream,
    /// The client's Content-Length, which the h2 crate holds the stream to
    /// (RFC 9113 §8.1.1).
    length: Option<u64>,
    data_done: bool,
    done: bool,
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = ::h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ::h2::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.data_done = true,
            }
        }
        let trailers = ready!(this.stream.poll_trailers(cx));
        this.done = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.length.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// Interim (1xx) answers a stream's backend sent, waiting to be passed on.
#[derive(Debug, Default)]
struct Interim(std::sync::Mutex<Vec<Response<()>>>);

impl Interim {
    fn push(&self, answer: Response<()>) {
        if let Ok(mut q) = self.0.lock() {
            q.push(answer);
        }
    }

    fn take(&self) -> Vec<Response<()>> {
        self.0.lock().map(|mut q| std::mem::take(&mut *q)).unwrap_or_default()
    }
}

/// Serves one HTTP/2 stream, in its connection's task: the request through
/// the pool, the response head, then its body as the client's flow control
/// lets it go. A reset from the client cancels it at any point (the
/// backend's connection is then not kept).
pub fn serve_stream(
    pool: Arc<Pool>,
    idle: Arc<IdleConns<Upstream>>,
    client: SocketAddr,
    scheme: Scheme,
    req: Request<::h2::RecvStream>,
    mut respond: ::h2::server::SendResponse<Bytes>,
) -> impl Future<Output = ()> + Send {
    let (parts, stream) = req.into_parts();
    let length = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let req = Request::from_parts(parts, RecvBody { stream, length, data_done: false, done: false });
    // A plain function around a block: the arguments are held once, not
    // again as the body's locals (a larger future, moved and allocated whole).
    async move {
        // In a block of its own: the request's future is gone (not kept in this
        // one's state) while the body goes out.
        let answered = {
            let interim = Interim::default();
            let handling = handle(pool, idle, client, scheme, req, &interim);
            tokio::pin!(handling);
            std::future::poll_fn(|cx| {
                if respond.poll_reset(cx).is_ready() {
                    return Poll::Ready(None);
                }
                let polled = handling.as_mut().poll(cx);
                for answer in interim.take() {
                    if let Err(e) = respond.send_informational(answer) {
                        debug!(%client, error = %e, "could not pass on an interim answer");
                    }
                }
                polled.map(Some)
            })
            .await
        };
        let Some(resp) = answered else { return };
        let (mut head, body) = resp.into_parts();
        let end = body.is_end_stream();
        if let (false, Some(n)) = (end, body.size_hint().exact()) {
            head.headers.entry(CONTENT_LENGTH).or_insert_with(|| HeaderValue::from(n));
        }
        match respond.send_response(Response::from_parts(head, ()), end) {
            Ok(send) if !end => send_body(body, send).await,
            Ok(_) => {}
            Err(e) => debug!(%client, error = %e, "could not send an HTTP/2 response head"),
        }
    }
}

/// Sends `body` on `send`, each piece once the client's window has room
/// for it; a reset by the client, or a failed body, ends the stream.
async fn send_body(mut body: ResponseBody, mut send: ::h2::SendStream<Bytes>) {
    loop {
        let frame = tokio::select! {
            f = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)) => f,
            _ = std::future::poll_fn(|cx| send.poll_reset(cx)) => return,
        };
        let mut data = match frame {
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Some(Err(_)) => {
                send.send_reset(::h2::Reason::INTERNAL_ERROR);
                return;
            }
        };
        let end = body.is_end_stream();
        if data.is_empty() {
            if end {
                let _ = send.send_data(data, true);
                return;
            }
            continue;
        }
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            let granted = std::future::poll_fn(|cx| {
                if send.poll_reset(cx).is_ready() {
                    return Poll::Ready(None);
                }
                send.poll_capacity(cx).map(|c| c.and_then(Result::ok))
            })
            .await;
            let Some(n) = granted else { return };
            if n == 0 {
                continue;
            }
            let piece = data.split_to(n.min(data.len()));
            let last = end && data.is_empty();
            if send.send_data(piece, last).is_err() || last {
                return;
            }
        }
    }
}

/// A response head from the backend, ready for the client.
struct Head {
    response: wire::Response,
    fields: HeaderMap,
    /// Writing the request body to the backend failed (it may have
    /// answered and closed): the connection serves no other request.
    upload_broken: bool,
    /// From the request sent to the response head.
    after: Duration,
    /// When the head came.
    at: Instant,
    /// The whole body, when it came with the head (taken from the buffer).
    body: Option<Bytes>,
}

/// Body bytes that came with a head are copied with it, up to this many:
/// a body that is all there then needs no copy (nor read) of its own. A
/// small bound, as the copy lives while any of its values does (HPACK's
/// table keeps some).
const BODY_WITH_HEAD: usize = 1024;

/// How one attempt came to an end before a response was passed on.
enum Failed {
    /// A backend outcome, for the attempt rules.
    Backend(Outcome),
    /// The client's side: answer this, blaming no backend.
    Client(LocalAnswer),
}

const CLIENT_BODY_FAILED: LocalAnswer =
    LocalAnswer { status: 400, reason: "Bad Request", text: "request body failed\n" };
const CLIENT_BODY_STALLED: LocalAnswer =
    LocalAnswer { status: 408, reason: "Request Timeout", text: "request body timed out\n" };

/// Sends the request head on `up`, then the body while waiting for the
/// response head, and reads that head.
async fn exchange(
    up: &mut Upstream,
    head: &[u8],
    upload: &mut Upload,
    pool: &Pool,
    is_head: bool,
    interim: &Interim,
) -> Result<Head, Failed> {
    let cfg = &pool.config;
    let reused = up.reused;
    let send = async {
        up.stream.write_all(head).await?;
        up.stream.flush().await
    };
    let mut waited = false;
    match within(cfg.response_timeout, send, &mut waited).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(Failed::Backend(Outcome::NoAnswer { reused })),
        Err(_) => return Err(Failed::Backend(Outcome::TimedOut)),
    }
    // Counted from the request sent, the response time as well.
    let sent = Instant::now();
    let mut deadline = sent + cfg.response_timeout;
    let mut upload_broken = false;
    let mut heard = false;
    let ctx =
        ResponseContext { is_head, client_http10: false, close_client: false, body_unfinished: false, upgrade: false };
    loop {
        if !up.buf.is_empty() {
            let filled = up.buf.filled();
            // One copy of a complete head that every value is a slice of
            // (instead of an allocation per value), with a small body that
            // came along.
            let head_end = memchr::memmem::find(filled, b"\r\n\r\n").map(|i| i + 4);
            let shared = head_end.map(|end| {
                let with_body = if filled.len() - end <= BODY_WITH_HEAD { filled.len() } else { end };
                Bytes::copy_from_slice(&filled[..with_body])
            });
            let base = filled.as_ptr() as usize;
            // Room for every field line at once (growing it rehashes).
            let lines = match (&shared, head_end) {
                (Some(copy), Some(end)) => field_lines(&copy[..end]),
                _ => 0,
            };
            let mut fields = HeaderMap::with_capacity(lines);
            let parsed = wire::parse_response_fields(filled, ctx, |name, value| {
                let at = (value.as_ptr() as usize).wrapping_sub(base);
                let value = match &shared {
                    Some(head) if at.checked_add(value.len()).is_some_and(|end| end <= head.len()) => {
                        HeaderValue::from_maybe_shared(head.slice(at..at + value.len()))
                    }
                    _ => HeaderValue::from_bytes(value),
                };
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), value) {
                    fields.append(n, v);
                }
            });
            match parsed {
                // 1xx (103 Early Hints, 100 Continue): passed on, as on the
                // HTTP/1 path; the final answer follows.
                Ok(Some(r)) if r.interim => {
                    up.buf.consume(r.head_len);
                    let mut answer = Response::new(());
                    *answer.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::CONTINUE);
                    *answer.headers_mut() = fields;
                    interim.push(answer);
                    continue;
                }
                Ok(Some(r)) if r.coded_beyond_chunked => {
                    warn!("backend sent a transfer coding HTTP/2 cannot carry");
                    return Err(Failed::Backend(Outcome::BadResponse));
                }
                Ok(Some(r)) => {
                    up.buf.consume(r.head_len);
                    // A body of stated length that is all in the copy (not
                    // while the upload goes on: the relay carries that).
                    let body = match (r.framing, &shared) {
                        (Framing::Length(n), Some(copy)) if upload_broken || upload.is_done() => usize::try_from(n)
                            .ok()
                            .and_then(|n| r.head_len.checked_add(n))
                            .filter(|&end| end <= copy.len())
                            .map(|end| copy.slice(r.head_len..end)),
                        _ => None,
                    };
                    if let Some(b) = &body {
                        up.buf.consume(b.len());
                    }
                    let at = Instant::now();
                    return Ok(Head { response: r, fields, upload_broken, after: at - sent, at, body });
                }
                Ok(None) if up.buf.len() >= cfg.max_header_size => {
                    warn!("backend's response head too large");
                    return Err(Failed::Backend(Outcome::BadResponse));
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(why = %e, "invalid response from backend");
                    return Err(Failed::Backend(Outcome::BadResponse));
                }
            }
        }
        let uploading = !upload_broken && !upload.is_done();
        let read = if uploading {
            let (mut from_backend, mut to_backend) = up.stream.split();
            tokio::select! {
                biased;
                r = up.buf.read_from(&mut from_backend, cfg.max_header_size) => r,
                step = upload.step(&mut to_backend) => {
                    match step {
                        Step::Moved => deadline = Instant::now() + cfg.response_timeout,
                        Step::ClientFailed => return Err(Failed::Client(CLIENT_BODY_FAILED)),
                        // The backend may have answered and closed: read on.
                        Step::BackendFailed => upload_broken = true,
                    }
                    continue;
                }
                _ = sleep_until(deadline) => {
                    // Waiting on the client's body is the client's delay.
                    let ours = upload.sent < upload.pending.len() || upload.unflushed;
                    return Err(if ours { Failed::Backend(Outcome::TimedOut) } else { Failed::Client(CLIENT_BODY_STALLED) });
                }
            }
        } else {
            match timeout_at(deadline, up.buf.read_from(&mut up.stream, cfg.max_header_size)).await {
                Ok(r) => r,
                Err(_) => return Err(Failed::Backend(Outcome::TimedOut)),
            }
        };
        match read {
            Ok(n) if n > 0 => heard = true,
            Ok(_) | Err(_) if !heard => return Err(Failed::Backend(Outcome::NoAnswer { reused })),
            _ => {
                warn!("backend closed the connection inside the response head");
                return Err(Failed::Backend(Outcome::BadResponse));
            }
        }
    }
}

/// How many field lines a complete response `head` has, at most
/// [`wire::MAX_HEADERS`]: the parse refuses more, and a header map asked
/// for room beyond its limit panics.
fn field_lines(head: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', head).count().saturating_sub(2).min(wire::MAX_HEADERS)
}

/// Answers one HTTP/2 stream's request through the pool. Not an `async
/// fn`, as `serve_stream` is not: its future would hold the arguments
/// twice (as arguments and as the body's locals).
#[allow(clippy::manual_async_fn)]
fn handle<'a>(
    pool: Arc<Pool>,
    idle: Arc<IdleConns<Upstream>>,
    client: SocketAddr,
    scheme: Scheme,
    mut req: Request<RecvBody>,
    interim: &'a Interim,
) -> impl Future<Output = Response<ResponseBody>> + Send + 'a {
    async move {
        let started = StdInstant::now();
        let meter = Arc::clone(pool.meter());
        // From its start to its response head, it keeps a resigning master's
        // VIPs (the drain gate), as an HTTP/1 request does.
        let _begun = pool.request_begun();
        let cfg = &pool.config;
        let mut log = (cfg.access_log && tracing::enabled!(target: "access", tracing::Level::INFO)).then(|| {
            Box::new(AccessLog {
                client,
                method: req.method().to_string(),
                path: req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string(),
                status: 0,
                backend: None,
                started,
                request_id: String::new(),
            })
        });
        // The proxy's own answers are counted here, the backends' below.
        let local = |answer: LocalAnswer, log: Option<Box<AccessLog>>| {
            meter.responses.count(answer.status);
            meter.request_time.observe(started.elapsed());
            local_response(answer, log)
        };
        // Extended CONNECT is not offered; plain CONNECT is not served (as on
        // the HTTP/1 path).
        if req.method() == Method::CONNECT {
            return local(LocalAnswer { status: 405, reason: "Method Not Allowed", text: "method not allowed\n" }, log);
        }
        // RFC 9113 §8.2.1: a field value neither starts nor ends with SP or
        // HTAB; one that does makes the request malformed, not something to
        // forward (an HTTP/1 backend would read it trimmed).
        if req.headers().values().any(|v| wire::trim(v.as_bytes()).len() != v.len()) {
            return local(MALFORMED, log);
        }
        // Hop-by-hop fields are not sent up; the client's length is not either
        // (`request_head` writes a framing of our own), only read here.
        strip_hop_by_hop(req.headers_mut());
        // Read with the request (the h2 crate refuses a stream whose
        // Content-Length does not parse): no second lookup.
        let stated_length = req.body().length.is_some();
        let Some(host) = request_host(&req) else {
            return local(MALFORMED, log);
        };
        // RFC 9113 §8.3.1: `:path` is present and an absolute path, or `*` for
        // OPTIONS; anything else (none, `?q`, `*` for another method) is a
        // malformed request, not something to guess a target for.
        let target = match req.uri().path_and_query().map(|p| p.as_str()) {
            Some(t) if t.starts_with('/') || (t == "*" && req.method() == Method::OPTIONS) => t,
            _ => return local(MALFORMED, log),
        };
        if let Some(redirect) = &cfg.redirect_https {
            if redirect.applies_to(target.as_bytes()) {
                let location = https_location(host, target.as_bytes(), redirect.port);
                let mut resp =
                    local(LocalAnswer { status: 308, reason: "Permanent Redirect", text: "moved to https\n" }, log);
                if let Ok(v) = HeaderValue::from_str(&location) {
                    resp.headers_mut().insert(LOCATION, v);
                }
                return resp;
            }
        }

        let method = req.method().clone();
        let body = req.body();
        let framing = match (body.is_end_stream(), body.size_hint().exact()) {
            (true, _) if stated_length || matches!(method, Method::POST | Method::PUT | Method::PATCH) => {
                UpFraming::Zero
            }
            (true, _) => UpFraming::None,
            (false, Some(n)) => UpFraming::Length(n),
            (false, None) => UpFraming::Chunked,
        };
        let mut head = Vec::with_capacity(1024);
        let hop = Hop { client: client.ip(), scheme, host };
        let id = request_head(&method, target, req.headers(), &hop, framing, fastrand::u64(..), &mut head);
        if let Some(l) = log.as_mut() {
            l.request_id = String::from_utf8_lossy(&head[id]).into_owned();
        }
        let is_head = method == Method::HEAD;
        let replayable = is_idempotent(method.as_str()) && matches!(framing, UpFraming::None | UpFraming::Zero);
        let (_, body) = req.into_parts();
        let mut upload = Upload::new(body, framing);

        let mut attempts = Attempts::new(cfg.retries, replayable);
        // The first attempt's pool lookup goes by `started` (a clock read less).
        let mut now = Some(started);
        let failure = loop {
            let Acquired { index: i, backend, in_flight, mut up } =
                match acquire(&pool, &idle, &mut attempts, false, log.as_deref_mut(), now.take()).await {
                    Ok(a) => a,
                    Err(answer) => break answer,
                };
            let addr = backend.address;
            // What TLS took is flushed before a wait that needs it sent.
            upload.tls = matches!(up.stream, UpstreamStream::Tls(_));
            let outcome = match exchange(&mut up, &head, &mut upload, &pool, is_head, interim).await {
                Ok(h) => {
                    let status = h.response.status;
                    answered(&pool, &mut attempts, i, &backend, status, Some(h.after));
                    meter.bytes_in.fetch_add(upload.taken, Ordering::Relaxed);
                    meter.request_time.observe(h.at.into_std().saturating_duration_since(started));
                    if let Some(l) = log.as_mut() {
                        l.status = status;
                    }
                    return relayed(h, up, upload, in_flight, idle, log, meter, cfg.response_timeout);
                }
                Err(Failed::Client(answer)) => {
                    debug!(%client, backend = %addr, status = answer.status, "client's request body failed");
                    return local(answer, log);
                }
                Err(Failed::Backend(outcome)) => outcome,
            };
            drop(in_flight);
            match outcome {
                Outcome::NoAnswer { reused: true } => {
                    debug!(backend = %addr, "pooled connection closed under the request")
                }
                Outcome::NoAnswer { reused: false } => {
                    warn!(backend = %addr, "backend connection failed before the response")
                }
                Outcome::TimedOut => {
                    warn!(backend = %addr, timeout = ?cfg.response_timeout, "backend response timed out")
                }
                _ => {}
            }
            if let Some(answer) = conclude(&pool, &mut attempts, i, outcome) {
                break answer;
            }
        };
        local(failure, log)
    }
}

/// The client's response for a backend's head: its body (the one that came
/// with it, or read from `up` as it comes), and what is left of the request
/// body sent on beside it.
#[allow(clippy::too_many_arguments)]
fn relayed(
    h: Head,
    up: Upstream,
    upload: Upload,
    in_flight: InFlight,
    idle: Arc<IdleConns<Upstream>>,
    log: Option<Box<AccessLog>>,
    meter: Arc<ListenerMeter>,
    silence: Duration,
) -> Response<ResponseBody> {
    let r = h.response;
    let reusable = r.backend_keep_alive && !h.upload_broken;
    let (inner, settle) = if let Some(body) = h.body {
        // All of it came with the head: the backend is done with this
        // request, and its connection serves the next one now.
        if reusable && up.buf.is_empty() {
            up.pool_again(&idle, in_flight.address(), h.at.into_std());
        }
        drop(in_flight);
        let settle = Settle { in_flight: None, idle: None, log, meter: Some(meter) };
        (Inner::Full((!body.is_empty()).then_some(body)), settle)
    } else {
        // A backend may answer before it has read the whole body and
        // still want the rest (full duplex: an echo, a stream that answers
        // as it reads): the upload goes on with the response body, as on
        // the HTTP/1 path.
        let upload = (!h.upload_broken && !upload.is_done()).then(|| Box::new(upload));
        let left = Remaining::new(r.framing);
        let answered_at = h.at.into_std();
        let relay = Relay { up, left, reusable, upload, late: 0, silence, timer: None, armed: false, answered_at };
        let settle = Settle { in_flight: Some(in_flight), idle: Some(idle), log, meter: Some(meter) };
        (Inner::Relay(Box::new(relay)), settle)
    };
    let mut resp = Response::new(ResponseBody { inner, bytes: 0, done: Some(settle) });
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
    *resp.headers_mut() = h.fields;
    // RFC 9110 §6.6.1: a proxy with a clock dates an answer that has none
    // (the parse said whether it has).
    if !r.dated {
        put_date(resp.headers_mut());
    }
    resp
}

/// Dates an answer with the proxy's clock.
fn put_date(headers: &mut HeaderMap) {
    if let Some(date) = super::date::now() {
        headers.insert(DATE, date);
    }
}

/// A short answer made by the proxy itself.
fn local_response(answer: LocalAnswer, mut log: Option<Box<AccessLog>>) -> Response<ResponseBody> {
    if let Some(l) = log.as_mut() {
        l.status = answer.status;
    }
    let settle = Settle { in_flight: None, idle: None, log, meter: None };
    let body = ResponseBody {
        inner: Inner::Full(Some(Bytes::from_static(answer.text.as_bytes()))),
        bytes: 0,
        done: Some(settle),
    };
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    put_date(r.headers_mut());
    if answer.status == 405 {
        r.headers_mut().insert(ALLOW, HeaderValue::from_static(wire::ALLOWED_METHODS));
    }
    r
}

/// Bookkeeping settled when the response body is done (or dropped).
#[derive(Debug)]
struct Settle {
    /// The backend's in-flight count, held until the body ends.
    in_flight: Option<InFlight>,
    /// Where the backend connection waits for its next request.
    idle: Option<Arc<IdleConns<Upstream>>>,
    /// The access-log line, if enabled.
    log: Option<Box<AccessLog>>,
    /// Where the body bytes are counted (a backend's body only).
    meter: Option<Arc<ListenerMeter>>,
}

/// A backend's response body on its way to the client.
#[derive(Debug)]
struct Relay {
    up: Upstream,
    left: Remaining,
    /// The backend keeps the connection, and no write to it failed.
    reusable: bool,
    /// The rest of the request body, while it goes on up.
    upload: Option<Box<Upload>>,
    /// Body bytes taken from the client after the response head.
    late: u64,
    /// Longest wait for the next piece (`response_timeout`).
    silence: Duration,
    /// Made at the first wait: most bodies come with their head, and never
    /// wait (nor read the clock, nor allocate a timer).
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer counts the current wait (set when it begins; a piece
    /// moved ends it).
    armed: bool,
    /// When the head came: the body's end too, if it never waited.
    answered_at: StdInstant,
}

impl Relay {
    /// Polls the wait's timer, setting it `silence` ahead when the wait
    /// has just begun. Ready: silent for that long.
    fn poll_silence(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.armed {
            self.armed = true;
            let at = Instant::now() + self.silence;
            match self.timer.as_mut() {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(sleep_until(at))),
            }
        }
        // Armed above: there is a timer.
        self.timer.as_mut().map_or(Poll::Pending, |t| t.as_mut().poll(cx))
    }

    /// Moves the rest of the request body on as far as it goes without
    /// waiting (a bounded number of steps, so the response keeps moving
    /// too); each step that moves bytes gives the backend its full
    /// `silence` again, as the wait for the head does.
    fn carry_upload(&mut self, cx: &mut Context<'_>) {
        const STEPS: usize = 16;
        for _ in 0..STEPS {
            let Some(upload) = self.upload.as_mut() else { return };
            let before = upload.taken;
            let step = upload.poll_step(cx, &mut self.up.stream);
            self.late += upload.taken - before;
            match step {
                Poll::Ready(Step::Moved) => {
                    self.armed = false;
                    if upload.is_done() {
                        // Whole now: the connection may serve again.
                        self.upload = None;
                    }
                }
                Poll::Ready(Step::ClientFailed | Step::BackendFailed) => {
                    // The backend cannot be told where the body ends: the
                    // connection is not reused; the answer still goes on.
                    self.reusable = false;
                    self.upload = None;
                }
                Poll::Pending => return,
            }
        }
        // More to move: come back after the response had its turn.
        cx.waker().wake_by_ref();
    }
}

#[derive(Debug)]
enum Inner {
    Relay(Box<Relay>),
    Full(Option<Bytes>),
}

/// The response body sent to an HTTP/2 client.
#[derive(Debug)]
pub struct ResponseBody {
    inner: Inner,
    /// Body bytes passed on.
    bytes: u64,
    done: Option<Settle>,
}

impl ResponseBody {
    fn settle(&mut self, complete: bool) {
        let Some(mut d) = self.done.take() else { return };
        if let Inner::Relay(relay) = std::mem::replace(&mut self.inner, Inner::Full(None)) {
            let relay = *relay;
            let up = relay.up;
            if let Some(m) = &d.meter {
                m.bytes_in.fetch_add(relay.late, Ordering::Relaxed);
            }
            // Only a connection that had the whole request can serve another.
            let reusable = relay.reusable && relay.upload.is_none();
            if let (true, true, Some(guard), Some(idle)) = (complete, reusable, &d.in_flight, &d.idle) {
                if up.buf.is_empty() {
                    // A body that came with its head ended when it did.
                    let done = if relay.timer.is_some() { StdInstant::now() } else { relay.answered_at };
                    up.pool_again(idle, guard.address(), done);
                }
            }
        }
        if let Some(m) = &d.meter {
            m.bytes_out.fetch_add(self.bytes, Ordering::Relaxed);
        }
        d.in_flight = None;
        if let Some(l) = d.log.take() {
            l.emit(self.bytes, complete);
        }
    }

    fn fail(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        warn!(why, "backend response body failed");
        self.settle(false);
        Poll::Ready(Some(Err(io::Error::other(why))))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            let relay = match &mut this.inner {
                Inner::Full(b) => {
                    let frame = b.take().map(|d| {
                        this.bytes += d.len() as u64;
                        Ok(Frame::data(d))
                    });
                    if frame.is_none() {
                        this.settle(true);
                    }
                    return Poll::Ready(frame);
                }
                Inner::Relay(r) => r,
            };
            relay.carry_upload(cx);
            if relay.left.is_done() {
                this.settle(true);
                return Poll::Ready(None);
            }
            if !relay.up.buf.is_empty() {
                // At most what is buffered: one allocation, handed on as is.
                let mut data = Vec::with_capacity(relay.up.buf.len());
                let taken = match relay.left.relay(relay.up.buf.filled(), &mut data, true) {
                    Ok(n) => n,
                    Err(_) => return this.fail("broken chunked body"),
                };
                relay.up.buf.consume(taken);
                if !data.is_empty() {
                    this.bytes += data.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))));
                }
                if taken > 0 {
                    continue;
                }
            }
            match relay.up.buf.poll_read_from(cx, &mut relay.up.stream, BODY_CHUNK) {
                Poll::Ready(Ok(n)) if n > 0 => relay.armed = false,
                Poll::Ready(Ok(_)) if relay.left.end_of_stream() => {}
                Poll::Ready(Ok(_)) => return this.fail("backend closed the connection inside the response body"),
                Poll::Ready(Err(_)) => return this.fail("backend connection failed inside the response body"),
                Poll::Pending => {
                    if relay.poll_silence(cx).is_ready() {
                        return this.fail("backend stalled inside the response body");
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Relay(r) => r.left.is_done(),
            Inner::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Relay(r) => match r.left {
                Remaining::Done => SizeHint::with_exact(0),
                Remaining::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body that is empty by nature (HEAD, 204, 304) may never be polled.
        let complete = self.is_end_stream();
        self.settle(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).expect("name"), HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn a_heads_field_lines_are_counted_up_to_what_a_head_may_have() {
        assert_eq!(field_lines(b"HTTP/1.1 200 OK\r\n\r\n"), 0);
        assert_eq!(field_lines(b"HTTP/1.1 200 OK\r\na: 1\r\nb: 2\r\n\r\n"), 2);
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        many.extend(b"a:1\r\n".repeat(40_000));
        many.extend_from_slice(b"\r\n");
        assert_eq!(field_lines(&many), wire::MAX_HEADERS);
        // What the map is then made with stays within its bounds.
        assert!(HeaderMap::<HeaderValue>::try_with_capacity(field_lines(&many)).is_ok());
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = headers(&[
            ("connection", "close, x-trace"),
            ("connection", "X-Other"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-trace", "1"),
            ("x-other", "2"),
            ("host", "example.test"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["accept", "host"]);
    }

    fn head(method: Method, target: &str, h: &HeaderMap, hop: &Hop<'_>, framing: UpFraming) -> String {
        let mut out = Vec::new();
        let id = request_head(&method, target, h, hop, framing, 0xabc, &mut out);
        assert_eq!(&out[id], b"0000000000000abc", "a fresh id where the client sent none");
        String::from_utf8(out).expect("utf-8")
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

    #[test]
    fn forwarding_fields_are_the_proxys_own_and_prior_hops_stay_in_order() {
        let h = headers(&[
            ("host", "other.test"),
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "evil.test"),
            ("x-forwarded-for", "203.0.113.2"),
        ]);
        let hop = Hop { client: CLIENT, scheme: Scheme::Http, host: b"shop.test" };
        assert_eq!(
            head(Method::GET, "/", &h, &hop, UpFraming::None),
            "GET / HTTP/1.1\r\nhost: shop.test\r\nx-forwarded-for: 203.0.113.1, 203.0.113.2, 198.51.100.7\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: shop.test\r\nx-request-id: 0000000000000abc\r\n\r\n"
        );
        let hop = Hop { client: CLIENT, scheme: Scheme::Https, host: b"api.test:8080" };
        assert_eq!(
            head(Method::GET, "/", &HeaderMap::new(), &hop, UpFraming::None),
            "GET / HTTP/1.1\r\nhost: api.test:8080\r\nx-forwarded-for: 198.51.100.7\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: api.test:8080\r\nx-request-id: 0000000000000abc\r\n\r\n"
        );
    }

    #[test]
    fn the_backend_gets_an_http11_head_with_our_framing_and_one_cookie_field() {
        let hop = Hop { client: CLIENT, scheme: Scheme::Http, host: b"shop.test" };
        let fwd = "x-forwarded-for: 198.51.100.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: shop.test\r\n";
        let id = "x-request-id: 0000000000000abc\r\n";
        let h = headers(&[("host", "shop.test"), ("cookie", "a=1"), ("accept", "*/*"), ("cookie", "b=2")]);
        assert_eq!(
            head(Method::POST, "/cart?x=1", &h, &hop, UpFraming::Chunked),
            format!("POST /cart?x=1 HTTP/1.1\r\nhost: shop.test\r\naccept: */*\r\ncookie: a=1; b=2\r\n{fwd}transfer-encoding: chunked\r\n{id}\r\n")
        );
        let none = HeaderMap::new();
        let start = "HTTP/1.1\r\nhost: shop.test\r\n";
        assert_eq!(
            head(Method::PUT, "/", &none, &hop, UpFraming::Length(5)),
            format!("PUT / {start}{fwd}content-length: 5\r\n{id}\r\n")
        );
        assert_eq!(
            head(Method::POST, "/", &none, &hop, UpFraming::Zero),
            format!("POST / {start}{fwd}content-length: 0\r\n{id}\r\n")
        );
        assert_eq!(head(Method::GET, "/", &none, &hop, UpFraming::None), format!("GET / {start}{fwd}{id}\r\n"));
    }

    #[test]
    fn a_clients_single_valid_request_id_is_kept() {
        let hop = Hop { client: CLIENT, scheme: Scheme::Http, host: b"a" };
        let mut out = Vec::new();
        let h = headers(&[("x-request-id", "trace-1")]);
        let id = request_head(&Method::GET, "/", &h, &hop, UpFraming::None, 1, &mut out);
        assert_eq!(&out[id], b"trace-1");
        let h = headers(&[("x-request-id", "a"), ("x-request-id", "b")]);
        let id = request_head(&Method::GET, "/", &h, &hop, UpFraming::None, 2, &mut out);
        assert_eq!(&out[id], b"0000000000000002");
        assert!(!String::from_utf8_lossy(&out).contains("x-request-id: a"));
    }
}
