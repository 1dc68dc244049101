//! HTTP/1.1 message heads and body framing (RFC 9112), pure: bytes in,
//! decisions and rewritten bytes out. A request head is parsed and written
//! out for the backend in one pass (hop-by-hop fields out, X-Forwarded-* in,
//! framing re-stated); a response head likewise for the client. Message
//! bodies are followed in `chunked`.

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::ops::Range;

/// Header fields per message; a request with more is answered 431.
pub const MAX_HEADERS: usize = 100;

/// What a client sends first on an HTTP/2 connection with prior knowledge.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Whether a connection's first bytes are HTTP/2's preface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preface {
    /// They are.
    H2,
    /// Too few bytes to tell.
    Maybe,
    /// They are not.
    No,
}

/// Looks at the first bytes a client sent.
pub fn preface(input: &[u8]) -> Preface {
    if input.starts_with(H2_PREFACE_START) {
        Preface::H2
    } else if H2_PREFACE_START.starts_with(input) {
        Preface::Maybe
    } else {
        Preface::No
    }
}

/// Distinct tokens a `Connection` field may name; more is malformed.
const MAX_CONNECTION_TOKENS: usize = 16;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// Why a head cannot be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not a well-formed HTTP/1.x head, or one whose framing is ambiguous.
    Malformed(&'static str),
    /// More than [`MAX_HEADERS`] fields.
    TooManyHeaders,
    /// A request body in a transfer coding other than chunked alone, which
    /// the proxy does not decode (RFC 9112 §6.1).
    UnknownCoding,
    /// An HTTP major version other than 1 (RFC 9110 §15.6.6).
    Version,
    /// A method this proxy does not serve (CONNECT: no tunnelling).
    Method,
}

impl HeadError {
    /// The status and reason phrase a client is answered with.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            HeadError::Malformed(_) => (400, "Bad Request"),
            HeadError::TooManyHeaders => (431, "Request Header Fields Too Large"),
            HeadError::UnknownCoding => (501, "Not Implemented"),
            HeadError::Version => (505, "HTTP Version Not Supported"),
            HeadError::Method => (405, "Method Not Allowed"),
        }
    }
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Malformed(why) => f.write_str(why),
            HeadError::TooManyHeaders => write!(f, "more than {MAX_HEADERS} header fields"),
            HeadError::UnknownCoding => f.write_str("request body in a transfer coding other than chunked"),
            HeadError::Version => f.write_str("unsupported HTTP major version"),
            HeadError::Method => f.write_str("CONNECT is not served"),
        }
    }
}

/// A client request, parsed; its rewritten head is in the output buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Length of the head in the input.
    pub head_len: usize,
    /// The method, as a range of the input (for the access log).
    pub method: Range<usize>,
    /// The request target as received, as a range of the input.
    pub target: Range<usize>,
    /// How its body is delimited (never `UntilClose`).
    pub framing: Framing,
    /// The client may send another request on this connection.
    pub keep_alive: bool,
    /// The client speaks HTTP/1.0.
    pub http10: bool,
    /// HEAD: the response has no body whatever its fields say.
    pub is_head: bool,
    /// Safe to send twice (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// Asks to switch protocols (WebSocket); the head sent upstream keeps
    /// `Connection: upgrade` and `Upgrade`.
    pub upgrade: bool,
    /// An HTTP/1.0 request named no host: the head sent upstream (as
    /// HTTP/1.1, which requires one) needs [`insert_host`].
    pub needs_host: bool,
    /// `X-Request-Id` fields the client sent (none: [`ensure_request_id`]
    /// need not look for them).
    pub client_request_ids: usize,
    /// Where the upstream head's `X-Request-Id` value is, once
    /// [`ensure_request_id`] made sure of one.
    pub request_id: Range<usize>,
}

/// How the client reached the proxy, for `X-Forwarded-Proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// Over TLS.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Parses a request head at the start of `input` and, if complete, writes
/// the head to send upstream into `out` (cleared first). `Ok(None)`: the
/// head is not complete yet.
pub fn parse_request(
    input: &[u8],
    client: IpAddr,
    scheme: Scheme,
    out: &mut Vec<u8>,
) -> Result<Option<Request>, HeadError> {
    match parse_request_as_given(input, client, scheme, out) {
        // A later HTTP/1.x is served as HTTP/1.1, the highest minor version
        // this proxy implements (RFC 9110 §2.5, §6.2). httparse knows only
        // 1.0 and 1.1, so it reads a copy with the version restated; the
        // copy keeps every offset.
        Err(HeadError::Version) => match as_http11(input)? {
            Some(copy) => parse_request_as_given(&copy, client, scheme, out).map_err(|e| match e {
                HeadError::Version => HeadError::Malformed("malformed request line"),
                e => e,
            }),
            None => Ok(None),
        },
        parsed => parsed,
    }
}

/// `input` with a request line ending in `HTTP/1.D` (D > 1) restated as
/// HTTP/1.1; `None` while the request line is incomplete.
fn as_http11(input: &[u8]) -> Result<Option<Vec<u8>>, HeadError> {
    // httparse takes a bare LF as a line end too.
    let Some(lf) = input.iter().position(|&b| b == b'\n') else { return Ok(None) };
    let line_end = if lf > 0 && input[lf - 1] == b'\r' { lf - 1 } else { lf };
    let line = &input[..line_end];
    if line.iter().filter(|&&b| b == b' ').count() != 2 {
        return Err(HeadError::Malformed("malformed request line"));
    }
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    match version {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9'] => {
            let mut copy = input.to_vec();
            copy[line_end - 1] = b'1';
            Ok(Some(copy))
        }
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
            Err(HeadError::Version)
        }
        _ => Err(HeadError::Malformed("malformed request line")),
    }
}

fn parse_request_as_given(
    input: &[u8],
    client: IpAddr,
    scheme: Scheme,
    out: &mut Vec<u8>,
) -> Result<Option<Request>, HeadError> {
    // Left uninitialised for httparse to fill: zeroing 100 fields was a
    // measurable part of every parse.
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let Some(head_len) = complete(req.parse_with_uninit_headers(input, &mut fields), "malformed request head")? else {
        return Ok(None);
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("malformed request line"));
    };
    // A proxy that does not tunnel answers CONNECT itself rather than pass
    // it to a backend that might (RFC 9110 §9.3.6).
    if method == "CONNECT" {
        return Err(HeadError::Method);
    }
    let http10 = minor == 0;
    let headers: &[httparse::Header<'_>] = req.headers;
    let mut f = Fields::new();
    f.scan(headers)?;
    let Fields { ref conn, content_length, codings, upgrade_to, host, hosts, has_xff, request_ids, ref kinds, .. } = f;
    // RFC 9112 §3.2: one Host, and a valid one.
    if hosts > 1 {
        return Err(HeadError::Malformed("more than one Host field"));
    }
    if host.is_some_and(|h| !is_valid_authority(h)) {
        return Err(HeadError::Malformed("invalid Host"));
    }

    // Body framing, RFC 9112 §6.3. Only what has one reading is accepted:
    // a backend that reads a field list differently from the proxy would
    // take the body for the next request.
    let framing = if codings.present {
        if content_length.is_some() {
            // Both fields at once is the classic smuggling request.
            return Err(HeadError::Malformed("both Content-Length and Transfer-Encoding"));
        }
        if http10 {
            return Err(HeadError::Malformed("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if let Some(why) = codings.broken {
            return Err(HeadError::Malformed(why));
        }
        // §6.3 rule 4: chunked not final leaves the length unknown: 400.
        if codings.chunked_seen && !codings.chunked_last {
            return Err(HeadError::Malformed("chunked is not the final transfer coding"));
        }
        // §6.1: a coding the proxy would have to decode to frame: 501.
        if codings.other {
            return Err(HeadError::UnknownCoding);
        }
        Framing::Chunked
    } else {
        match content_length {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    };

    // An absolute-form target names the host itself (RFC 9112 §3.2.2).
    let target_parts = split_target(target, method == "OPTIONS")?;
    let host = target_parts.authority.or(host);
    if host.is_none() && !http10 {
        return Err(HeadError::Malformed("HTTP/1.1 request without Host"));
    }
    // A body before the switch is not supported: such a request goes as a
    // plain one, the upgrade wish dropped.
    let upgrade = upgrade_to.is_some() && conn.upgrade && framing == Framing::Empty;

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target_parts.prefix);
    out.extend_from_slice(target_parts.path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(h) = host {
        put_field(out, b"host", h);
    }
    for (h, kind) in headers.iter().zip(kinds) {
        let name = h.name.as_bytes();
        // Host and Content-Length are written afresh, the X-Forwarded-*
        // fields by `put_forwarded`.
        let passes = match kind {
            Known::Other => !conn.names(name) && !looks_like_framing(name),
            Known::XRequestId | Known::Date => !conn.names(name),
            _ => false,
        };
        if passes {
            put_field(out, name, h.value);
        }
    }
    let prior = headers.iter().zip(kinds).filter(|(_, k)| has_xff && **k == Known::XForwardedFor);
    put_forwarded(out, prior.map(|(h, _)| h.value), client, scheme, host);
    match framing {
        Framing::Length(n) => put_length(out, n),
        // An explicit zero stays: some servers want a length on POST or PUT.
        Framing::Empty if content_length == Some(0) => out.extend_from_slice(b"content-length: 0\r\n"),
        // The proxy's own framing, never the client's field: the body is
        // re-chunked on its way (see [`Rechunker`]).
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::UntilClose => {}
    }
    if let (true, Some(to)) = (upgrade, upgrade_to) {
        out.extend_from_slice(b"connection: upgrade\r\n");
        put_field(out, b"upgrade", to);
    }
    out.extend_from_slice(b"\r\n");

    let start = input.as_ptr() as usize;
    let range = |s: &str| {
        let from = s.as_ptr() as usize - start;
        from..from + s.len()
    };
    Ok(Some(Request {
        head_len,
        method: range(method),
        target: range(target),
        framing,
        keep_alive: if http10 { conn.keep_alive } else { !conn.close },
        http10,
        is_head: method == "HEAD",
        idempotent: is_idempotent(method),
        upgrade,
        needs_host: host.is_none(),
        client_request_ids: request_ids,
        request_id: 0..0,
    }))
}

/// The fields the proxy sets on every request it sends up (the client's
/// own are not passed on, see [`is_forwarding`]): `X-Forwarded-For` with
/// every `prior` hop in order, then `client`; `X-Forwarded-Proto`; and
/// `X-Forwarded-Host` when the request names a host.
pub fn put_forwarded<'a>(
    out: &mut Vec<u8>,
    prior: impl Iterator<Item = &'a [u8]>,
    client: IpAddr,
    scheme: Scheme,
    host: Option<&[u8]>,
) {
    out.extend_from_slice(b"x-forwarded-for: ");
    for hop in prior {
        out.extend_from_slice(hop);
        out.extend_from_slice(b", ");
    }
    put_ip(out, client);
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(scheme.as_str().as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(h) = host {
        put_field(out, b"x-forwarded-host", h);
    }
}

/// A field [`put_forwarded`] writes itself.
pub fn is_forwarding(name: &[u8]) -> bool {
    matches!(Known::of(name), Known::XForwardedFor | Known::XForwardedProto | Known::XForwardedHost)
}

/// Adds a Host field to an upstream head that lacks one (see
/// [`Request::needs_host`]), right after its request line.
pub fn insert_host(head: &mut Vec<u8>, host: &str) {
    let at = head.windows(2).position(|w| w == b"\r\n").map_or(0, |i| i + 2);
    let field = format!("host: {host}\r\n");
    head.splice(at..at, field.bytes());
}

/// Longest `X-Request-Id` taken from a client.
const MAX_REQUEST_ID: usize = 128;

/// A request id a client may choose: 1 to 128 of letters, digits and
/// `-_.:+=/` (what common tracing ids and UUIDs use; nothing a log line or a
/// field could be split on).
pub fn is_valid_request_id(v: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&v.len()) && v.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:+=/".contains(b))
}

/// Gives an upstream head exactly one `X-Request-Id`: the client's if it
/// sent exactly one valid one, else `fresh` in hex (the client's fields are
/// dropped). `client_ids` is [`Request::client_request_ids`]: with none, the
/// head is not searched (the common case, on every request). Returns where
/// the id's value is in `head`.
pub fn ensure_request_id(head: &mut Vec<u8>, client_ids: usize, fresh: u64) -> std::ops::Range<usize> {
    const NAME: &[u8] = b"x-request-id:";
    // Field lines: (start, end without CRLF), after the request line.
    let mut ids = Vec::new();
    let mut at = if client_ids == 0 { head.len() } else { line_end(head, 0).map_or(head.len(), |i| i + 2) };
    while let Some(len) = line_end(head, at).map(|e| e - at) {
        if len == 0 {
            break;
        }
        let line = &head[at..at + len];
        if line.len() >= NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME) {
            ids.push((at, at + len));
        }
        at += len + 2;
    }
    if let [(start, end)] = ids[..] {
        let value_start = start + NAME.len() + head[start + NAME.len()..end].iter().take_while(|b| **b == b' ').count();
        if is_valid_request_id(&head[value_start..end]) {
            return value_start..end;
        }
    }
    for (start, end) in ids.into_iter().rev() {
        head.drain(start..end + 2);
    }
    debug_assert!(head.ends_with(b"\r\n\r\n"));
    // In place of the blank line that ends the head, which then follows
    // it (no allocation, no splice: this runs for every request).
    let end = head.len().saturating_sub(2);
    let mut field = *b"x-request-id: 0123456789abcdef\r\n\r\n";
    for (i, b) in field[14..30].iter_mut().enumerate() {
        *b = b"0123456789abcdef"[((fresh >> (60 - 4 * i)) & 0xf) as usize];
    }
    head.truncate(end);
    head.extend_from_slice(&field);
    let value = end + 14;
    value..value + 16
}

/// Where the line starting at `from` ends (its CR of CRLF).
fn line_end(head: &[u8], from: usize) -> Option<usize> {
    head.get(from..)?.windows(2).position(|w| w == b"\r\n").map(|i| from + i)
}

/// What the response head depends on besides its own bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseContext {
    /// The request was HEAD.
    pub is_head: bool,
    /// The client speaks HTTP/1.0 (no chunked coding, no interim answers).
    pub client_http10: bool,
    /// The client connection closes after this response (client's wish or
    /// shutdown).
    pub close_client: bool,
    /// The request body is still on its way when the answer comes.
    pub body_unfinished: bool,
    /// The request asked to switch protocols.
    pub upgrade: bool,
}

/// A backend response, parsed; its rewritten head is in the output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// Length of the head in the input.
    pub head_len: usize,
    /// Status code.
    pub status: u16,
    /// How its body is delimited on the backend connection.
    pub framing: Framing,
    /// 1xx other than 101: the final response follows.
    pub interim: bool,
    /// The backend keeps the connection open after the body.
    pub backend_keep_alive: bool,
    /// The client connection closes after the body.
    pub close_client: bool,
    /// A chunked body is decoded for an HTTP/1.0 client (and the
    /// connection closed after it), not passed through.
    pub dechunk: bool,
    /// A transfer coding other than chunked applies to the body (it can
    /// go on only to an HTTP/1.1 client, coded as it is).
    pub coded_beyond_chunked: bool,
    /// It has a `Date` (one without gets the proxy's, [`put_date`]).
    pub dated: bool,
}

/// A parsed response head, for whoever writes it on to the client.
struct ResponseHead<'h, 'a> {
    reason: &'a str,
    headers: &'h [httparse::Header<'a>],
    /// What `headers` say, read once (and referred to, not moved: with its
    /// arrays it is a few hundred bytes).
    fields: &'h Fields<'a>,
}

impl<'h, 'a> ResponseHead<'h, 'a> {
    /// The fields that go on as they came: not hop-by-hop nor named by
    /// Connection (RFC 9110 §7.6.1), and not Content-Length, which
    /// [`Self::length_for_client`] writes afresh.
    fn end_to_end(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + '_ {
        self.headers
            .iter()
            .zip(&self.fields.kinds)
            .filter(|(_, kind)| !kind.is_hop_by_hop() && **kind != Known::ContentLength)
            .map(|(h, _)| (h.name.as_bytes(), h.value))
            .filter(move |(name, _)| !self.fields.conn.names(name))
    }

    /// The value of the first Content-Length field, as received.
    fn stated_length(&self) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .zip(&self.fields.kinds)
            .find(|(_, kind)| **kind == Known::ContentLength)
            .map(|(h, _)| h.value)
    }

    /// The Content-Length the client is sent, as one number: the body's,
    /// or for a bodiless answer (HEAD, 304, a stated 0) the one the backend
    /// stated (RFC 9110 §8.6); none with a transfer coding, which wins
    /// over it, and none on 1xx and 204, which must not carry one.
    fn length_for_client(&self, r: &Response) -> Option<u64> {
        match r.framing {
            Framing::Length(n) => Some(n),
            Framing::Empty if !self.fields.codings.present && r.status >= 200 && r.status != 204 => {
                self.fields.content_length
            }
            _ => None,
        }
    }
}

/// Parses a backend's response head at the start of `input` and, if it is
/// complete, classifies it and hands it to `write`.
fn scan_response<'a>(
    input: &'a [u8],
    ctx: ResponseContext,
    write: impl FnOnce(&Response, &ResponseHead<'_, 'a>),
) -> Result<Option<Response>, HeadError> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, input, &mut fields);
    let Some(head_len) = complete(parsed, "malformed response head")? else { return Ok(None) };
    let (Some(minor), Some(status)) = (resp.version, resp.code) else {
        return Err(HeadError::Malformed("malformed status line"));
    };
    let reason = resp.reason.unwrap_or("");
    let headers: &[httparse::Header<'_>] = resp.headers;
    let mut f = Fields::new();
    f.scan(headers)?;
    let Fields { ref conn, content_length, codings, upgrade_to, dated, .. } = f;
    // Three digits, the first 1 to 5 (RFC 9110 §15): `099` is no status.
    if !(100..600).contains(&status) {
        return Err(HeadError::Malformed("invalid status code"));
    }
    if let Some(why) = codings.broken {
        return Err(HeadError::Malformed(why));
    }
    let interim = (100..200).contains(&status) && status != 101;
    if status == 101 && !(ctx.upgrade && upgrade_to.is_some()) {
        return Err(HeadError::Malformed("101 Switching Protocols without an upgrade"));
    }
    // RFC 9112 §6.3, in its order.
    let framing = if ctx.is_head || interim || status == 101 || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (codings.present, content_length) {
            (true, _) if codings.chunked_last => Framing::Chunked,
            (true, _) => Framing::UntilClose,
            (false, Some(0)) => Framing::Empty,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::UntilClose,
        }
    };
    // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty
    // framing, and §6.3: with Content-Length too it "ought to be handled as
    // an error": read as the coding says, then the connection closes.
    let backend_keep_alive = framing != Framing::UntilClose
        && !(codings.present && (minor == 0 || content_length.is_some()))
        && if minor == 0 { conn.keep_alive } else { !conn.close };
    let dechunk = framing == Framing::Chunked && ctx.client_http10;
    // An early answer beyond 2xx (413, 401, a redirect) says the backend
    // does not want the rest of the body: the client is told the connection
    // closes, so it can stop sending (RFC 9112 §9.6); so is one without a
    // body, which ends before the upload can. A 2xx with a body while the
    // request body still comes is a full-duplex exchange: the upload goes
    // on, and the client connection stays if it is done by the response's
    // end.
    let refused_body = ctx.body_unfinished && (status >= 300 || framing == Framing::Empty);
    let close_client = ctx.close_client || refused_body || framing == Framing::UntilClose || dechunk;
    let coded_beyond_chunked = codings.present && (codings.other || !codings.chunked_last);
    let r = Response {
        head_len,
        status,
        framing,
        interim,
        backend_keep_alive,
        close_client,
        dechunk,
        coded_beyond_chunked,
        dated,
    };
    let head = ResponseHead { reason, headers, fields: &f };
    write(&r, &head);
    Ok(Some(r))
}

/// Parses a backend's response head at the start of `input` and, if
/// complete, writes the head for the client into `out` (cleared first;
/// left empty for an interim answer an HTTP/1.0 client must not see).
pub fn parse_response(input: &[u8], ctx: ResponseContext, out: &mut Vec<u8>) -> Result<Option<Response>, HeadError> {
    out.clear();
    scan_response(input, ctx, |r, head| {
        if r.interim && ctx.client_http10 {
            return;
        }
        out.extend_from_slice(b"HTTP/1.1 ");
        put_decimal(out, r.status);
        out.push(b' ');
        out.extend_from_slice(head.reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in head.end_to_end() {
            put_field(out, name, value);
        }
        if let Some(n) = head.length_for_client(r) {
            put_length(out, n);
        }
        match r.framing {
            Framing::Chunked if !r.dechunk => put_codings(out, head.headers),
            // Codings without chunked: the body is delimited by close, coded.
            Framing::UntilClose if head.fields.codings.present => put_codings(out, head.headers),
            _ => {}
        }
        if r.status == 101 {
            out.extend_from_slice(b"connection: upgrade\r\n");
            if let Some(to) = head.fields.upgrade_to {
                put_field(out, b"upgrade", to);
            }
        } else if !r.interim {
            if r.close_client {
                out.extend_from_slice(b"connection: close\r\n");
            } else if ctx.client_http10 {
                out.extend_from_slice(b"connection: keep-alive\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
    })
}

/// Parses a backend's response head at the start of `input` for a client
/// of another protocol (HTTP/2), which frames bodies itself: `field` gets
/// each field that goes on, and `content-length` where the body has one.
/// Hop-by-hop fields, Transfer-Encoding among them, never reach it.
pub fn parse_response_fields(
    input: &[u8],
    ctx: ResponseContext,
    mut field: impl FnMut(&[u8], &[u8]),
) -> Result<Option<Response>, HeadError> {
    scan_response(input, ctx, |r, head| {
        for (name, value) in head.end_to_end() {
            field(name, value);
        }
        if let Some(n) = head.length_for_client(r) {
            let mut number = itoa::Buffer::new();
            let number = number.format(n).as_bytes();
            // The backend's own bytes when they are that number as written
            // here (the usual case): a caller may share them, not copy.
            field(b"content-length", head.stated_length().filter(|v| *v == number).unwrap_or(number));
        }
    })
}

/// The head's length once httparse has all of it.
fn complete(parsed: httparse::Result<usize>, malformed: &'static str) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => Err(HeadError::Version),
        Err(_) => Err(HeadError::Malformed(malformed)),
    }
}

/// What a head's fields say about framing, routing and forwarding.
struct Fields<'a> {
    conn: ConnectionField<'a>,
    content_length: Option<u64>,
    codings: Codings,
    upgrade_to: Option<&'a [u8]>,
    host: Option<&'a [u8]>,
    /// Host fields seen (a request may have one).
    hosts: usize,
    has_xff: bool,
    /// `X-Request-Id` fields seen.
    request_ids: usize,
    /// A `Date` field is present.
    dated: bool,
    /// What each field is, in order: the writers go by it rather than
    /// compare every name again.
    kinds: [Known; MAX_HEADERS],
}

impl<'a> Fields<'a> {
    fn new() -> Self {
        Fields {
            conn: ConnectionField::default(),
            content_length: None,
            codings: Codings::default(),
            upgrade_to: None,
            host: None,
            hosts: 0,
            has_xff: false,
            request_ids: 0,
            dated: false,
            kinds: [Known::Other; MAX_HEADERS],
        }
    }

    /// Reads `headers` into `self` (a fresh [`Fields::new`]). Filled in
    /// place: returned by value, the struct (a few hundred bytes with its
    /// arrays) was copied on each move, several times per message.
    fn scan(&mut self, headers: &[httparse::Header<'a>]) -> Result<(), HeadError> {
        let f = self;
        for (h, kind) in headers.iter().zip(&mut f.kinds) {
            *kind = Known::of(h.name.as_bytes());
            match kind {
                Known::Connection => f.conn.add(h.value)?,
                Known::ContentLength => f.content_length = Some(merge_content_length(f.content_length, h.value)?),
                Known::TransferEncoding => f.codings.add(h.value),
                Known::Host => {
                    f.host = Some(h.value);
                    f.hosts += 1;
                }
                Known::Upgrade => f.upgrade_to = Some(h.value),
                Known::XForwardedFor => f.has_xff = true,
                Known::XRequestId => f.request_ids += 1,
                Known::Date => f.dated = true,
                _ => {}
            }
        }
        Ok(())
    }
}

/// The field names the codec acts on; every other name is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Other,
    Connection,
    KeepAlive,
    Te,
    Trailer,
    TransferEncoding,
    Upgrade,
    /// `Proxy` or any `Proxy-*`.
    Proxy,
    ContentLength,
    Host,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    XRequestId,
    Date,
}

impl Known {
    /// Which one `name` is (case-insensitive). Every field of every
    /// message goes through here once: the length and one letter pick the
    /// single name it can be, so a name is compared at most once.
    fn of(name: &[u8]) -> Known {
        let Some(&first) = name.first() else { return Known::Other };
        let first = first.to_ascii_lowercase();
        if first == b'p' && name.len() >= 6 && name[..6].eq_ignore_ascii_case(b"proxy-") {
            return Known::Proxy;
        }
        let (candidate, kind): (&[u8], Known) = match (name.len(), first) {
            (2, b't') => (b"te", Known::Te),
            (4, b'h') => (b"host", Known::Host),
            (4, b'd') => (b"date", Known::Date),
            (5, b'p') => (b"proxy", Known::Proxy),
            (7, b'u') => (b"upgrade", Known::Upgrade),
            (7, b't') => (b"trailer", Known::Trailer),
            (10, b'c') => (b"connection", Known::Connection),
            (10, b'k') => (b"keep-alive", Known::KeepAlive),
            (12, b'x') => (b"x-request-id", Known::XRequestId),
            (14, b'c') => (b"content-length", Known::ContentLength),
            (15, b'x') => (b"x-forwarded-for", Known::XForwardedFor),
            (16, b'x') => (b"x-forwarded-host", Known::XForwardedHost),
            (17, b't') => (b"transfer-encoding", Known::TransferEncoding),
            (17, b'x') => (b"x-forwarded-proto", Known::XForwardedProto),
            _ => return Known::Other,
        };
        if eq_lowercase(name, candidate) {
            kind
        } else {
            Known::Other
        }
    }

    /// Describes one hop (see [`is_hop_by_hop`]).
    fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Known::Connection
                | Known::KeepAlive
                | Known::Te
                | Known::Trailer
                | Known::TransferEncoding
                | Known::Upgrade
                | Known::Proxy
        )
    }
}

/// A short answer made by the proxy itself, written into `out`; dated
/// with `date` (RFC 9110 §6.6.1: the proxy is its origin).
pub fn local_response(status: u16, reason: &str, body: &str, close: bool, date: Option<&[u8]>, out: &mut Vec<u8>) {
    out.clear();
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n", body.len());
    if let Some(d) = date {
        put_field(out, b"date", d);
    }
    if status == 405 {
        let _ = write!(out, "allow: {ALLOWED_METHODS}\r\n");
    }
    let _ = write!(out, "{}\r\n{body}", if close { "connection: close\r\n" } else { "" });
}

/// What a 405 of the proxy's own (CONNECT, the one method it refuses)
/// lists in `Allow`, as RFC 9110 §15.5.6 requires of a 405: the methods it
/// forwards (every other one, but these are the ones RFC 9110 and 5789 define).
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH";

/// Where a redirect to HTTPS sends a request for `host` (a Host value,
/// already validated) and `path` (origin-form): the same host without its
/// port, `port` unless 443, the same path and query.
pub fn https_location(host: &[u8], path: &[u8], port: u16) -> String {
    // An IPv6 literal keeps its brackets; a port follows the last colon
    // after them.
    let name_end = match host.iter().rposition(|&b| b == b':') {
        Some(i) if !host[i..].contains(&b']') => i,
        _ => host.len(),
    };
    let name = String::from_utf8_lossy(&host[..name_end]);
    let path = String::from_utf8_lossy(if path.is_empty() { b"/" } else { path });
    if port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{port}{path}")
    }
}

/// The host and origin-form target of an upstream head of ours (what
/// [`parse_request`] wrote: request line, then `host` first).
pub fn upstream_host_and_target(head: &[u8]) -> Option<(&[u8], &[u8])> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let mut words = head[..line_end].split(|&b| b == b' ');
    let target = words.nth(1)?;
    let rest = &head[line_end + 2..];
    let host_end = rest.windows(2).position(|w| w == b"\r\n")?;
    let host = rest[..host_end].strip_prefix(b"host: ")?;
    Some((host, target))
}

/// A 308 to `location`, with a short body saying where; dated with `date`.
pub fn redirect_response(location: &str, close: bool, date: Option<&[u8]>, out: &mut Vec<u8>) {
    out.clear();
    let body = format!("moved to {location}\n");
    let _ = write!(
        out,
        "HTTP/1.1 308 Permanent Redirect\r\nlocation: {location}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n",
        body.len(),
    );
    if let Some(d) = date {
        put_field(out, b"date", d);
    }
    let _ = write!(out, "{}\r\n{body}", if close { "connection: close\r\n" } else { "" });
}

/// Adds `date` as the `Date` of a response head that has none (RFC 9110
/// §6.6.1: a proxy with a clock dates what it forwards undated), before
/// the blank line that ends `head`.
pub fn put_date(head: &mut Vec<u8>, date: &[u8]) {
    debug_assert!(head.ends_with(b"\r\n\r\n"));
    head.truncate(head.len().saturating_sub(2));
    put_field(head, b"date", date);
    head.extend_from_slice(b"\r\n");
}

/// The message's transfer codings as one `Transfer-Encoding` field of the
/// proxy's own writing, whatever the spacing and field count they came in.
fn put_codings(out: &mut Vec<u8>, headers: &[httparse::Header<'_>]) {
    out.extend_from_slice(b"transfer-encoding: ");
    let items = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(trim)
        .filter(|t| !t.is_empty());
    for (n, item) in items.enumerate() {
        if n > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(item);
    }
    out.extend_from_slice(b"\r\n");
}

/// `name` equals `lower`, which holds only lowercase letters and `-`,
/// ignoring ASCII case; eight bytes at a time. OR-ing 0x20 into the
/// bytes where `lower` has a letter maps an uppercase letter to its
/// lowercase and nothing else onto a lowercase letter; where it has `-`
/// the byte must be `-` itself.
fn eq_lowercase(name: &[u8], lower: &[u8]) -> bool {
    if name.len() != lower.len() {
        return false;
    }
    if name.len() < 8 {
        return name.eq_ignore_ascii_case(lower);
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or_default());
    let same = |at: usize| {
        let want = word(lower, at);
        // 0x40 is set in every lowercase letter and not in `-`.
        word(name, at) | ((want & 0x4040_4040_4040_4040) >> 1) == want
    };
    let last = name.len() - 8;
    (0..last).step_by(8).all(same) && same(last)
}

/// Appends `n` in decimal. The head writers' numbers and the client's
/// address go in by hand, not through `write!`: its formatting machinery
/// was a per-request cost of its own in the profile.
fn put_decimal(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A `Content-Length` field of `n`.
pub fn put_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    put_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends `ip` as text, as its `Display` writes it (IPv6 through it).
fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Into a buffer of its own, then one copy (a copy per octet
            // and dot was most of its cost).
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    text[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    text[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + octet % 10;
                n += 1;
            }
            out.extend_from_slice(&text[..n]);
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

pub fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A field name that some backends (CGI, WSGI: `Content_Length` and
/// `Content-Length` both become `CONTENT_LENGTH`) would read as a framing
/// or routing field: dropped, as nginx does with underscores by default.
pub fn looks_like_framing(name: &[u8]) -> bool {
    const READ_AS: [&[u8]; 8] = [
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"connection",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    ];
    name.contains(&b'_')
        && READ_AS.iter().any(|f| {
            f.len() == name.len()
                && f.iter().zip(name).all(|(a, b)| a.eq_ignore_ascii_case(&if *b == b'_' { b'-' } else { *b }))
        })
}

/// Fields that describe one hop, never forwarded (RFC 9110 §7.6.1); besides
/// these, whatever `Connection` names and every `Proxy-*` field. `Proxy`
/// itself is no standard field: CGI backends would read it as their proxy
/// setting ("httpoxy").
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    Known::of(name).is_hop_by_hop()
}

/// What the `Connection` fields of a message say.
#[derive(Default)]
struct ConnectionField<'a> {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    named: [&'a [u8]; MAX_CONNECTION_TOKENS],
    count: usize,
}

impl<'a> ConnectionField<'a> {
    /// Takes in one `Connection` field's value (a message may have several).
    fn add(&mut self, value: &'a [u8]) -> Result<(), HeadError> {
        // Nearly always a single option: no list to take apart.
        if eq_lowercase(value, b"keep-alive") {
            self.keep_alive = true;
            return Ok(());
        }
        if eq_lowercase(value, b"close") {
            self.close = true;
            return Ok(());
        }
        for token in value.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                let slot = self.named.get_mut(self.count).ok_or(HeadError::Malformed("too many Connection options"))?;
                *slot = token;
                self.count += 1;
            }
        }
        Ok(())
    }

    /// Whether `name` is a field the sender marked as hop-by-hop.
    fn names(&self, name: &[u8]) -> bool {
        self.named[..self.count].iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// What a message's `Transfer-Encoding` fields say, all of them read as
/// one list in order (RFC 9110 §5.3, RFC 9112 §6.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Codings {
    /// Some Transfer-Encoding field is present.
    present: bool,
    /// chunked is the final coding.
    chunked_last: bool,
    /// chunked is in the list.
    chunked_seen: bool,
    /// A coding other than chunked is in the list.
    other: bool,
    /// Why the list has no single reading: an empty element (which some
    /// parsers skip and others take for the end), or chunked twice (§6.1
    /// forbids it; a backend may match only an exact `chunked`).
    broken: Option<&'static str>,
}

impl Codings {
    fn add(&mut self, value: &[u8]) {
        self.present = true;
        for item in value.split(|&b| b == b',').map(trim) {
            if item.is_empty() {
                self.broken.get_or_insert("empty element in Transfer-Encoding");
            } else if item.eq_ignore_ascii_case(b"chunked") {
                if self.chunked_seen {
                    self.broken.get_or_insert("chunked applied more than once");
                }
                self.chunked_seen = true;
                self.chunked_last = true;
            } else {
                self.other = true;
                self.chunked_last = false;
            }
        }
    }
}

/// Content-Length may repeat (as fields or a list) only with one value.
fn merge_content_length(prior: Option<u64>, value: &[u8]) -> Result<u64, HeadError> {
    let digits = |item: &[u8]| (1..=19).contains(&item.len()) && item.iter().all(u8::is_ascii_digit);
    let number = |item: &[u8]| item.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    // The usual field: one number, the first of its kind.
    if prior.is_none() && digits(value) {
        return Ok(number(value));
    }
    let mut merged = prior;
    for item in value.split(|&b| b == b',').map(trim) {
        if !digits(item) {
            return Err(HeadError::Malformed("invalid Content-Length"));
        }
        let n = number(item);
        if merged.is_some_and(|m| m != n) {
            return Err(HeadError::Malformed("conflicting Content-Length values"));
        }
        merged = Some(n);
    }
    merged.ok_or(HeadError::Malformed("invalid Content-Length"))
}

/// A request target as it goes upstream: origin form, `prefix` then `path`.
struct Target<'a> {
    prefix: &'static [u8],
    path: &'a [u8],
    /// The authority of an absolute-form target.
    authority: Option<&'a [u8]>,
}

/// Splits a request target into the origin-form target to send upstream
/// and, for absolute form, the authority (RFC 9112 §3.2).
fn split_target(target: &str, options: bool) -> Result<Target<'_>, HeadError> {
    let t = target.as_bytes();
    if t.first() == Some(&b'/') || t == b"*" {
        return Ok(Target { prefix: b"", path: t, authority: None });
    }
    let scheme_end =
        t.windows(3).position(|w| w == b"://").ok_or(HeadError::Malformed("unsupported request target"))?;
    if !t[..scheme_end].eq_ignore_ascii_case(b"http") {
        return Err(HeadError::Malformed("unsupported request target"));
    }
    let rest = &t[scheme_end + 3..];
    let authority_end = rest.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    if !is_valid_authority(authority) {
        return Err(HeadError::Malformed("invalid authority in request target"));
    }
    // An empty path is "/" (§3.2.1), and "*" for OPTIONS without a query
    // (§3.2.4); a query alone keeps its "/" before it.
    let (prefix, path): (&'static [u8], &[u8]) = match path {
        [] if options => (b"*", path),
        [] | [b'?', ..] => (b"/", path),
        _ => (b"", path),
    };
    Ok(Target { prefix, path, authority: Some(authority) })
}

/// `uri-host [ ":" port ]` as Host and absolute-form targets carry it
/// (RFC 9110 §7.2, RFC 3986 §3.2.2): an IP literal in brackets or a
/// name of letters, digits, `-._~` and %-escapes. The sub-delimiters RFC
/// 3986 also allows in a name (`,;=!$&'()*+`) are refused: no DNS name has
/// them, and backends split lists at them.
pub fn is_valid_authority(a: &[u8]) -> bool {
    let (host_ok, port) = if let Some(literal) = a.strip_prefix(b"[") {
        let Some(end) = literal.iter().position(|&b| b == b']') else { return false };
        let ip = &literal[..end];
        let ok = !ip.is_empty() && ip.iter().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
        match &literal[end + 1..] {
            [] => (ok, None),
            [b':', port @ ..] => (ok, Some(port)),
            _ => return false,
        }
    } else {
        let (host, port) = match a.iter().rposition(|&b| b == b':') {
            Some(i) => (&a[..i], Some(&a[i + 1..])),
            None => (a, None),
        };
        let mut ok = !host.is_empty();
        let mut i = 0;
        while ok && i < host.len() {
            let b = host[i];
            if NAME_CHAR[usize::from(b)] {
                i += 1;
            } else if b == b'%' {
                ok = host.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
                i += 3;
            } else {
                ok = false;
            }
        }
        (ok, port)
    };
    // A port is digits, at most 65535 (an empty one is allowed, RFC 3986).
    let port_ok = |p: &[u8]| {
        p.len() <= 5
            && p.iter().all(u8::is_ascii_digit)
            && p.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65535
    };
    host_ok && port.is_none_or(port_ok)
}

/// The bytes a host name in an authority has besides %-escapes: letters,
/// digits and `-._~` (one lookup per byte: every request's Host goes
/// through here).
static NAME_CHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        b += 1;
    }
    t
};

/// Safe to send twice (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
}

/// A character of a token (RFC 9110 §5.6.2).
pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `s` without optional whitespace (SP, HTAB) at either end (RFC 9110 §5.6.3).
pub fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::codec::chunked::ChunkedScanner;

    #[test]
    fn field_names_are_known_in_any_case_and_near_misses_are_not() {
        let known = [
            ("connection", Known::Connection),
            ("keep-alive", Known::KeepAlive),
            ("te", Known::Te),
            ("trailer", Known::Trailer),
            ("transfer-encoding", Known::TransferEncoding),
            ("upgrade", Known::Upgrade),
            ("proxy", Known::Proxy),
            ("proxy-", Known::Proxy),
            ("proxy-authorization", Known::Proxy),
            ("content-length", Known::ContentLength),
            ("host", Known::Host),
            ("x-forwarded-for", Known::XForwardedFor),
            ("x-forwarded-proto", Known::XForwardedProto),
            ("x-forwarded-host", Known::XForwardedHost),
            ("x-request-id", Known::XRequestId),
        ];
        for (name, kind) in known {
            assert_eq!(Known::of(name.as_bytes()), kind, "{name}");
            assert_eq!(Known::of(name.to_ascii_uppercase().as_bytes()), kind, "{name} in capitals");
            // One letter off, anywhere: another field.
            for i in 0..name.len() {
                let mut other = name.as_bytes().to_vec();
                other[i] = if other[i] == b'q' { b'w' } else { b'q' };
                let expect = if name.starts_with("proxy-") && i >= 6 { Known::Proxy } else { Known::Other };
                assert_eq!(Known::of(&other), expect, "{}", String::from_utf8_lossy(&other));
            }
        }
        for other in ["", "t", "hosts", "content-type", "x-request-ids", "connectio", "proxy_x", "teh"] {
            assert_eq!(Known::of(other.as_bytes()), Known::Other, "{other}");
        }
        // Bytes that fold onto `-` or a letter when 0x20 is OR-ed in
        // everywhere (CR, `@`, `^`): no match.
        for near in ["x\rforwarded-for", "x-forwarded\rfor", "x-request\rid", "transfer\rencoding"] {
            assert_eq!(Known::of(near.as_bytes()), Known::Other, "{near:?}");
        }
        assert_eq!(Known::of(b"CONTENT-LENGTH"), Known::ContentLength);
        assert_eq!(Known::of(b"content-lengt\x48"), Known::ContentLength, "H");
        assert_eq!(Known::of(b"content-lengt\x08"), Known::Other, "H ^ 0x40");
        assert_eq!(Known::of(b"conten\x34-length"), Known::Other, "t ^ 0x40");
        assert_eq!(Known::of(b"content\x0dlength"), Known::Other, "CR | 0x20 is -");
        assert!(is_hop_by_hop(b"Keep-Alive") && is_hop_by_hop(b"PROXY-Connection") && !is_hop_by_hop(b"host"));
        assert!(is_forwarding(b"X-Forwarded-Host") && !is_forwarding(b"x-forwarded-by"));
    }

    #[test]
    fn a_request_gets_one_request_id_the_clients_if_valid() {
        let head =
            |fields: &str| format!("GET / HTTP/1.1\r\nhost: a\r\n{fields}x-forwarded-proto: http\r\n\r\n").into_bytes();
        // None sent: ours, in hex, before the blank line.
        let mut h = head("");
        let r = ensure_request_id(&mut h, 0, 0xabc);
        assert_eq!(&h[r], b"0000000000000abc");
        assert!(h.ends_with(b"x-forwarded-proto: http\r\nx-request-id: 0000000000000abc\r\n\r\n"));
        // One valid: kept, in place.
        let mut h = head("X-Request-Id: 7f3e-11ee:b/9=\r\n");
        let before = h.clone();
        let r = ensure_request_id(&mut h, 1, 1);
        assert_eq!((&h[r], h == before), (b"7f3e-11ee:b/9=".as_slice(), true));
        // Invalid (a space, too long) or two: dropped, ours instead.
        for fields in [
            "x-request-id: a b\r\n".to_string(),
            format!("x-request-id: {}\r\n", "a".repeat(129)),
            "x-request-id: a\r\nX-REQUEST-ID: b\r\n".to_string(),
        ] {
            let mut h = head(&fields);
            let r = ensure_request_id(&mut h, fields.matches("\r\n").count(), 2);
            assert_eq!(&h[r], b"0000000000000002", "{fields}");
            let text = String::from_utf8(h).expect("utf8");
            assert_eq!(text.to_ascii_lowercase().matches("x-request-id").count(), 1, "{text}");
            assert!(text.starts_with("GET / HTTP/1.1\r\nhost: a\r\nx-forwarded-proto: http\r\n"), "{text}");
        }
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

    fn req(head: &str) -> Result<Option<(Request, String)>, HeadError> {
        let mut out = Vec::new();
        parse_request(head.as_bytes(), CLIENT, Scheme::Http, &mut out)
            .map(|r| r.map(|r| (r, String::from_utf8(out).expect("utf8"))))
    }

    fn ok(head: &str) -> (Request, String) {
        req(head).expect("parses").expect("complete")
    }

    fn ctx() -> ResponseContext {
        ResponseContext {
            is_head: false,
            client_http10: false,
            close_client: false,
            body_unfinished: false,
            upgrade: false,
        }
    }

    fn resp(head: &str, ctx: ResponseContext) -> Result<Option<(Response, String)>, HeadError> {
        let mut out = Vec::new();
        parse_response(head.as_bytes(), ctx, &mut out).map(|r| r.map(|r| (r, String::from_utf8(out).expect("utf8"))))
    }

    #[test]
    fn plain_get_is_rewritten_with_forwarded_fields() {
        let input = "GET /a?b=1 HTTP/1.1\r\nHost: shop.test\r\nAccept: */*\r\n\r\nGET /next";
        let (r, out) = ok(input);
        assert_eq!(r.head_len, input.len() - "GET /next".len());
        assert_eq!(&input[r.method.clone()], "GET");
        assert_eq!(&input[r.target.clone()], "/a?b=1");
        assert_eq!(r.framing, Framing::Empty);
        assert!(r.keep_alive && r.idempotent && !r.http10 && !r.is_head && !r.upgrade);
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nhost: shop.test\r\nAccept: */*\r\nx-forwarded-for: 198.51.100.7\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: shop.test\r\n\r\n"
        );
    }

    #[test]
    fn http2_preface_is_told_apart() {
        assert_eq!(preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Preface::H2);
        assert_eq!(preface(b"PRI * HTTP/2"), Preface::Maybe);
        assert_eq!(preface(b""), Preface::Maybe);
        assert_eq!(preface(b"POST / HTTP/1.1\r\n"), Preface::No);
    }

    #[test]
    fn partial_head_waits_for_more() {
        assert_eq!(req("GET / HTTP/1.1\r\nHost: a\r\n").expect("ok"), None);
        assert_eq!(req("GE").expect("ok"), None);
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_removed() {
        let (r, out) = ok("POST /x HTTP/1.1\r\nHost: a\r\nConnection: close, X-Trace\r\nConnection: x-other\r\n\
             Keep-Alive: timeout=5\r\nProxy-Authorization: Basic x\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
             Trailer: x-sum\r\nUpgrade: h2c\r\nX-Trace: 1\r\nX-Other: 2\r\nX-Forwarded-Proto: https\r\n\
             X-Forwarded-Host: evil\r\nContent-Length: 3\r\nAccept: */*\r\n\r\nabc");
        assert!(!r.keep_alive && !r.upgrade && !r.idempotent);
        assert_eq!(r.framing, Framing::Length(3));
        assert_eq!(
            out,
            "POST /x HTTP/1.1\r\nhost: a\r\nAccept: */*\r\nx-forwarded-for: 198.51.100.7\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: a\r\ncontent-length: 3\r\n\r\n"
        );
    }

    #[test]
    fn prior_forwarded_for_hops_are_kept_in_order() {
        let (_, out) =
            ok("GET / HTTP/1.1\r\nX-Forwarded-For: 203.0.113.1\r\nhost: a\r\nx-forwarded-for: 203.0.113.2\r\n\r\n");
        assert!(out.contains("x-forwarded-for: 203.0.113.1, 203.0.113.2, 198.51.100.7\r\n"), "{out}");
    }

    #[test]
    fn absolute_form_becomes_origin_form_and_names_the_host() {
        let (_, out) = ok("GET http://api.test:8080/v1?q HTTP/1.1\r\nHost: other\r\n\r\n");
        assert!(out.starts_with("GET /v1?q HTTP/1.1\r\nhost: api.test:8080\r\n"), "{out}");
        assert!(out.contains("x-forwarded-host: api.test:8080\r\n") && !out.contains("other"), "{out}");
        // RFC 9112 §3.2.4: OPTIONS to a bare authority asks about the server.
        let (_, out) = ok("OPTIONS http://api.test HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("OPTIONS * HTTP/1.1\r\nhost: api.test\r\n"), "{out}");
        let (_, out) = ok("OPTIONS http://api.test?x HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("OPTIONS /?x HTTP/1.1\r\n"), "{out}");
        // §3.2.1: an empty path before a query is "/".
        let (_, out) = ok("GET http://x.test?q=1 HTTP/1.1\r\nHost: x.test\r\n\r\n");
        assert!(out.starts_with("GET /?q=1 HTTP/1.1\r\nhost: x.test\r\n"), "{out}");
        let (_, out) = ok("GET http://x.test HTTP/1.1\r\nHost: x.test\r\n\r\n");
        assert!(out.starts_with("GET / HTTP/1.1\r\n"), "{out}");
        assert!(matches!(req("GET https://api.test/ HTTP/1.1\r\nHost: a\r\n\r\n"), Err(HeadError::Malformed(_))));
    }

    #[test]
    fn connect_is_answered_not_forwarded() {
        for head in
            ["CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n", "CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n"]
        {
            let e = req(head).expect_err("refused");
            assert_eq!((e, e.status().0), (HeadError::Method, 405));
        }
    }

    #[test]
    fn later_http1_minor_versions_are_served_as_http11() {
        // RFC 9110 §2.5: HTTP/1.2 is understood as the HTTP/1.1 we speak.
        let input = "GET /v HTTP/1.2\r\nHost: a\r\n\r\nrest";
        let (r, out) = ok(input);
        assert!(!r.http10 && r.keep_alive);
        assert_eq!((&input[r.target.clone()], r.head_len), ("/v", input.len() - 4));
        assert!(out.starts_with("GET /v HTTP/1.1\r\nhost: a\r\n"), "{out}");
        assert_eq!(req("GET /v HTTP/1.9\r\nHost: a\r\n").expect("ok"), None);
        let (r, out) = ok("GET /lf HTTP/1.3\nHost: a\n\n");
        assert!(!r.http10 && out.starts_with("GET /lf HTTP/1.1\r\n"), "{out}");
        for v in ["HTTP/2.0", "HTTP/3.0", "HTTP/0.9"] {
            let e = req(&format!("GET / {v}\r\nHost: a\r\n\r\n")).expect_err("refused");
            assert_eq!((e, e.status().0), (HeadError::Version, 505), "{v}");
        }
        assert!(matches!(req("GET / HTTP/1.10\r\nHost: a\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert!(matches!(req("GET / FTP/1.1\r\nHost: a\r\n\r\n"), Err(HeadError::Malformed(_))));
    }

    #[test]
    fn host_and_authority_must_be_a_host_and_port() {
        // RFC 9112 §3.2: an invalid Host is a 400.
        for good in
            ["shop.test", "shop.test:8080", "192.0.2.1:80", "[2001:db8::1]:443", "[::1]", "a_b-c~d.test", "x%41y"]
        {
            let (_, out) = ok(&format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n"));
            assert!(out.contains(&format!("host: {good}\r\n")), "{good}: {out}");
        }
        for bad in [
            "a b/c@d",
            "x.test,evil:1",
            "x.test#frag",
            "x.test/p",
            "user@x.test",
            "x.test:80a",
            "x.test:123456",
            "",
            "[2001:db8::1",
            "[x]",
            "[::1]x",
            ":80",
            "x%4",
            "x;y",
            "x\\y",
            "x.test:65536",
            "x.test:99999",
        ] {
            let head = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert!(matches!(req(&head), Err(HeadError::Malformed(_))), "Host {bad:?}");
            if bad == "x.test/p" {
                continue; // an authority and a path there
            }
            let head = format!("GET http://{bad}/ HTTP/1.1\r\nHost: a\r\n\r\n");
            assert!(matches!(req(&head), Err(HeadError::Malformed(_))), "authority {bad:?}");
        }
        // HTTP/1.0 names a host rarely, but a bad one is as bad.
        assert!(req("GET / HTTP/1.0\r\nHost: a b\r\n\r\n").is_err());
    }

    #[test]
    fn framing_of_requests() {
        // An explicit zero length is kept; none stays none.
        let (r, out) = ok("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.framing, Framing::Empty);
        assert!(out.ends_with("content-length: 0\r\n\r\n"), "{out}");
        assert!(!ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n").1.contains("content-length"));
        // Names a CGI or WSGI backend would read as framing or routing: dropped.
        let (_, out) = ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent_Length: 99\r\n\
             Transfer_Encoding: chunked\r\nHOST_: x\r\nX_Other: 1\r\n\r\n");
        assert!(!out.contains("99") && !out.contains("Transfer_") && out.contains("X_Other: 1"), "{out}");
        let (_, out) = ok("GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_Proto: https\r\nx_forwarded_host: evil\r\n\r\n");
        assert!(!out.contains("https") && !out.contains("evil"), "{out}");
        // httpoxy: a `Proxy` field never reaches the backend.
        assert!(!ok("GET / HTTP/1.1\r\nHost: a\r\nProxy: http://evil\r\n\r\n").1.contains("evil"));
        // Repeated equal lengths are one length.
        let (r, _) = ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(r.framing, Framing::Length(5));
        for bad in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(req(bad), Err(HeadError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn transfer_encoding_has_one_reading_or_is_refused() {
        // Accepted: chunked alone, once, in any case and spacing; sent on
        // as the proxy's own field.
        for good in ["chunked", "Chunked", " chunked \t", "CHUNKED"] {
            let (r, out) = ok(&format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {good}\r\n\r\n"));
            assert_eq!(r.framing, Framing::Chunked, "{good:?}");
            assert!(out.ends_with("x-forwarded-host: a\r\ntransfer-encoding: chunked\r\n\r\n"), "{good:?}: {out}");
            assert_eq!(out.matches("transfer-encoding").count(), 1);
        }
        // What a backend matching an exact "chunked" would read as no body.
        let te = |v: &[&str]| {
            let fields: String = v.iter().map(|v| format!("Transfer-Encoding: {v}\r\n")).collect();
            req(&format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n"))
        };
        let malformed = |v: &[&str]| matches!(te(v), Err(HeadError::Malformed(_)));
        // Empty elements and chunked twice: 400.
        for bad in
            [&["chunked,"][..], &[", chunked"], &["chunked , chunked"], &["chunked", "chunked"], &[""], &["chunked,,"]]
        {
            assert!(malformed(bad), "{bad:?}");
        }
        // chunked not final: 400 (RFC 9112 §6.3 rule 4).
        for bad in [&["chunked, gzip"][..], &["chunked", "gzip"]] {
            assert!(malformed(bad), "{bad:?}");
        }
        // Any other coding: 501 (§6.1), the proxy does not decode it.
        for other in [&["gzip, chunked"][..], &["identity, chunked"], &["gzip", "chunked"], &["gzip"], &["chunked;x=1"]]
        {
            let e = te(other).expect_err("refused");
            assert_eq!((e, e.status().0), (HeadError::UnknownCoding, 501), "{other:?}");
        }
    }

    #[test]
    fn malformed_and_oversized_heads_are_refused() {
        for bad in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
        ] {
            assert!(matches!(req(bad), Err(HeadError::Malformed(_))), "{bad:?}");
        }
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", "X-A: 1\r\n".repeat(MAX_HEADERS));
        assert_eq!(req(&many), Err(HeadError::TooManyHeaders));
    }

    #[test]
    fn http10_keep_alive_only_when_asked() {
        let (r, out) = ok("GET / HTTP/1.0\r\n\r\n");
        assert!(r.http10 && !r.keep_alive && r.needs_host);
        assert!(!out.contains("host:") && !out.contains("x-forwarded-host"), "{out}");
        let mut head = out.into_bytes();
        insert_host(&mut head, "192.0.2.10:8080");
        assert!(
            String::from_utf8_lossy(&head).starts_with("GET / HTTP/1.1\r\nhost: 192.0.2.10:8080\r\nx-forwarded-for")
        );
        assert!(ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").0.keep_alive);
    }

    #[test]
    fn upgrade_is_kept_for_the_backend() {
        let (r, out) = ok("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: k\r\n\r\n");
        assert!(r.upgrade);
        assert!(out.ends_with("connection: upgrade\r\nupgrade: websocket\r\n\r\n"), "{out}");
        assert!(out.contains("Sec-WebSocket-Key: k\r\n"));
        // With a body, it goes as a plain request.
        let (r, out) = ok("POST /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
             Content-Length: 2\r\n\r\n");
        assert!(!r.upgrade && !out.contains("upgrade"), "{out}");
        // Upgrade without the Connection option is just a field to drop.
        let (r, out) = ok("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
        assert!(!r.upgrade && !out.to_lowercase().contains("upgrade"), "{out}");
    }

    #[test]
    fn response_with_length_passes_through() {
        let input =
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nKeep-Alive: timeout=5\r\n\r\nhello\n";
        let (r, out) = resp(input, ctx()).expect("ok").expect("complete");
        assert_eq!(r.head_len, input.len() - 6);
        assert_eq!((r.status, r.framing, r.backend_keep_alive, r.close_client), (200, Framing::Length(6), true, false));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 6\r\n\r\n");
    }

    #[test]
    fn response_framing() {
        let f = |head: &str, c: ResponseContext| resp(head, c).expect("ok").expect("complete").0;
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n";
        let r = f(chunked, ctx());
        assert_eq!((r.framing, r.dechunk, r.close_client), (Framing::Chunked, false, false));
        let (_, out) = resp(chunked, ctx()).expect("ok").expect("complete");
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        // An HTTP/1.0 client gets the data plainly, delimited by close.
        let old = ResponseContext { client_http10: true, ..ctx() };
        let (r, out) = resp(chunked, old).expect("ok").expect("complete");
        assert!(r.dechunk && r.close_client);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
        // A coding without chunked: until close, labelled, no length.
        let (r, out) = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 9\r\n\r\n", ctx())
            .expect("ok")
            .expect("complete");
        assert_eq!((r.framing, r.close_client), (Framing::UntilClose, true));
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\nconnection: close\r\n\r\n");
        // No length at all: until close, and the client connection closes too.
        let r = f("HTTP/1.1 200 OK\r\n\r\n", ctx());
        assert_eq!((r.framing, r.backend_keep_alive, r.close_client), (Framing::UntilClose, false, true));
        // HEAD, 204 and 304 have no body whatever they say; the length stays
        // (written afresh).
        let head = ResponseContext { is_head: true, ..ctx() };
        let (r, out) = resp("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", head).expect("ok").expect("complete");
        assert_eq!(r.framing, Framing::Empty);
        assert!(out.contains("content-length: 100\r\n"), "{out}");
        assert_eq!(f("HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n", ctx()).framing, Framing::Empty);
        assert_eq!(f("HTTP/1.1 204 No Content\r\n\r\n", ctx()).framing, Framing::Empty);
        // HTTP/1.0 backends close unless they say keep-alive.
        assert!(!f("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", ctx()).backend_keep_alive);
        assert!(f("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", ctx()).backend_keep_alive);
        assert!(!f("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", ctx()).backend_keep_alive);
        assert!(resp("HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", ctx()).is_err());
        assert!(resp("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", ctx()).is_err());
        assert!(resp("HTTP/1.1 2000 OK\r\n\r\n", ctx()).is_err());
    }

    #[test]
    fn response_codings_are_restated_and_checked() {
        // Two fields, odd spacing: one field of the proxy's own writing.
        let (r, out) =
            resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip \r\nTransfer-Encoding:  chunked\r\n\r\n", ctx())
                .expect("ok")
                .expect("complete");
        assert_eq!(r.framing, Framing::Chunked);
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        // No single reading: a broken backend (502), not relayed as is.
        for bad in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n",
        ] {
            assert!(matches!(resp(bad, ctx()), Err(HeadError::Malformed(_))), "{bad:?}");
        }
        // RFC 9112 §6.1: HTTP/1.0 with Transfer-Encoding: read, then close.
        let (r, _) = resp("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n", ctx())
            .expect("ok")
            .expect("complete");
        assert_eq!((r.framing, r.backend_keep_alive), (Framing::Chunked, false));
        // RFC 9112 §6.3: both framings: chunked wins, the connection is not reused.
        let (r, out) = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", ctx())
            .expect("ok")
            .expect("complete");
        assert_eq!((r.framing, r.backend_keep_alive), (Framing::Chunked, false));
        assert!(!out.to_ascii_lowercase().contains("content-length"), "{out}");
    }

    #[test]
    fn status_codes_below_100_are_malformed() {
        for bad in ["099", "000", "042"] {
            let head = format!("HTTP/1.1 {bad} Odd\r\nContent-Length: 0\r\n\r\n");
            assert!(matches!(resp(&head, ctx()), Err(HeadError::Malformed(_))), "{bad}");
        }
        assert!(resp("HTTP/1.1 100 Continue\r\n\r\n", ctx()).is_ok());
        assert!(resp("HTTP/1.1 599 Odd\r\nContent-Length: 0\r\n\r\n", ctx()).is_ok());
        assert!(resp("HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n", ctx()).is_err());
    }

    #[test]
    fn client_connection_header_follows_the_decision() {
        let closing = ResponseContext { close_client: true, ..ctx() };
        let (r, out) = resp("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", closing).expect("ok").expect("complete");
        assert!(r.close_client && r.backend_keep_alive);
        assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");
        let old = ResponseContext { client_http10: true, ..ctx() };
        let (_, out) = resp("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", old).expect("ok").expect("complete");
        assert!(out.ends_with("connection: keep-alive\r\n\r\n"), "{out}");
    }

    #[test]
    fn a_bodiless_answer_states_its_length_once_and_204_none() {
        let head = ResponseContext { is_head: true, ..ctx() };
        let (_, out) = resp("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", head).expect("ok").expect("complete");
        assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n");
        let (_, out) =
            resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", ctx()).expect("ok").expect("complete");
        assert_eq!(out, "HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n");
        let (_, out) =
            resp("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", ctx()).expect("ok").expect("complete");
        assert_eq!(out, "HTTP/1.1 204 No Content\r\n\r\n");
        // The same for an HTTP/2 client's fields.
        let mut fields = Vec::new();
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 0, 0\r\nX-A: 1\r\n\r\n";
        let r = parse_response_fields(input, ctx(), |n, v| fields.push((n.to_vec(), v.to_vec())));
        assert!(matches!(r, Ok(Some(_))));
        assert_eq!(fields, vec![(b"X-A".to_vec(), b"1".to_vec()), (b"content-length".to_vec(), b"0".to_vec())]);
    }

    #[test]
    fn an_http2_clients_length_is_the_backends_bytes_only_when_they_are_the_number() {
        // Where the value lies: in the input (shareable) or not.
        let length = |input: &[u8]| {
            let mut got = None;
            let r = parse_response_fields(input, ctx(), |n, v| {
                if n == b"content-length" {
                    let inside = input.as_ptr_range().contains(&v.as_ptr());
                    got = Some((v.to_vec(), inside));
                }
            });
            assert!(matches!(r, Ok(Some(_))), "{r:?}");
            got
        };
        let body = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n";
        assert_eq!(length(body), Some((b"12".to_vec(), true)));
        // A list or a second field is sent as the one number it means.
        let list = b"HTTP/1.1 200 OK\r\nContent-Length: 12, 12\r\n\r\n";
        assert_eq!(length(list), Some((b"12".to_vec(), false)));
        let twice = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\ncontent-length: 12\r\n\r\n";
        assert_eq!(length(twice), Some((b"12".to_vec(), true)));
    }

    #[test]
    fn an_early_refusal_closes_the_client_and_a_2xx_does_not() {
        let unfinished = ResponseContext { body_unfinished: true, ..ctx() };
        let (r, out) =
            resp("HTTP/1.1 413 Too Big\r\nContent-Length: 0\r\n\r\n", unfinished).expect("ok").expect("complete");
        assert!(r.close_client && out.ends_with("connection: close\r\n\r\n"), "{out}");
        // A 2xx while the body comes: full duplex, no promise to close.
        let (r, out) = resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", unfinished).expect("ok").expect("complete");
        assert!(!r.close_client && !out.contains("connection: close"), "{out}");
    }

    #[test]
    fn interim_and_switching_responses() {
        let (r, out) = resp("HTTP/1.1 100 Continue\r\n\r\n", ctx()).expect("ok").expect("complete");
        assert!(r.interim);
        assert_eq!(out, "HTTP/1.1 100 Continue\r\n\r\n");
        let old = ResponseContext { client_http10: true, ..ctx() };
        let (_, out) = resp("HTTP/1.1 100 Continue\r\n\r\n", old).expect("ok").expect("complete");
        assert!(out.is_empty());
        let up = ResponseContext { upgrade: true, ..ctx() };
        let (r, out) = resp(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\r\n",
            up,
        )
        .expect("ok")
        .expect("complete");
        assert_eq!((r.status, r.framing, r.interim), (101, Framing::Empty, false));
        assert_eq!(
            out,
            "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
        );
        // A 101 nobody asked for is a broken backend.
        assert!(resp("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", ctx()).is_err());
    }

    #[test]
    fn local_response_is_complete() {
        let mut out = Vec::new();
        local_response(503, "Service Unavailable", "no healthy backend\n", false, None, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 19\r\n\r\nno healthy backend\n"
        );
        let mut out = Vec::new();
        local_response(502, "Bad Gateway", "x\n", true, Some(b"Sun, 06 Nov 1994 08:49:37 GMT"), &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\
             date: Sun, 06 Nov 1994 08:49:37 GMT\r\nconnection: close\r\n\r\nx\n"
        );
    }

    /// RFC 9110 §6.6.1: an answer forwarded without a Date gets one; one
    /// with a Date keeps it, whatever its case.
    #[test]
    fn undated_answers_are_marked_and_dated_once() {
        for (date_field, dated) in
            [("", false), ("Date: Mon, 07 Nov 1994 08:49:37 GMT\r\n", true), ("DATE: x\r\n", true)]
        {
            let input = format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{date_field}\r\nok");
            let mut out = Vec::new();
            let r = parse_response(input.as_bytes(), ctx(), &mut out).expect("valid").expect("complete");
            assert_eq!(r.dated, dated, "{input:?}");
            if !r.dated {
                put_date(&mut out, b"Sun, 06 Nov 1994 08:49:37 GMT");
            }
            let text = String::from_utf8(out).expect("utf8");
            assert_eq!(
                text.matches("date: ").count() + text.matches("Date: ").count() + text.matches("DATE: ").count(),
                1,
                "{text}"
            );
            assert!(text.ends_with("\r\n\r\n") && text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            if !dated {
                assert!(text.contains("\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"), "{text}");
            }
        }
    }

    #[test]
    fn a_single_connection_option_reads_as_the_same_option_in_a_list() {
        for (value, close, keep_alive) in [
            ("close", true, false),
            ("CLOSE", true, false),
            ("Keep-Alive", false, true),
            ("keep-alive", false, true),
            ("keep-alive, close", true, true),
            ("x, Close", true, false),
        ] {
            let mut conn = ConnectionField::default();
            conn.add(value.as_bytes()).expect("valid");
            assert_eq!(
                (conn.close, conn.keep_alive, conn.count),
                (close, keep_alive, usize::from(value.contains('x')))
            );
            let mut listed = ConnectionField::default();
            let list = format!("{value},");
            listed.add(list.as_bytes()).expect("valid");
            assert_eq!((listed.close, listed.keep_alive), (close, keep_alive), "{value}");
        }
        let mut conn = ConnectionField::default();
        conn.add(b"keep-alivex").expect("valid");
        assert!(!conn.keep_alive && conn.names(b"Keep-AliveX"));
    }

    #[test]
    fn numbers_and_addresses_written_by_hand_read_as_display_writes_them() {
        let ips = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.20.3",
            "198.51.100.7",
            "1.99.100.109",
            "2001:db8::1",
            "::ffff:192.0.2.1",
        ];
        for ip in ips {
            let ip: IpAddr = ip.parse().expect("ip");
            let mut out = Vec::new();
            put_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().as_bytes());
        }
        for n in [0, 9, 10, 65_535, u64::MAX] {
            let mut out = Vec::new();
            put_length(&mut out, n);
            assert_eq!(out, format!("content-length: {n}\r\n").as_bytes());
        }
    }

    /// RFC 9110 §15.5.6: a 405 lists what is allowed.
    #[test]
    fn a_405_says_which_methods_are_allowed() {
        let mut out = Vec::new();
        local_response(405, "Method Not Allowed", "method not allowed\n", true, None, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "HTTP/1.1 405 Method Not Allowed\r\ncontent-type: text/plain\r\ncontent-length: 19\r\n\
             allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH\r\nconnection: close\r\n\r\nmethod not allowed\n"
        );
    }

    /// A request head built from arbitrary field names and values.
    fn arbitrary_head(fields: &[(String, String)], tail: &[u8]) -> Vec<u8> {
        let mut head = b"POST /p HTTP/1.1\r\n".to_vec();
        for (k, v) in fields {
            head.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(tail);
        head
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut out = Vec::new();
            let _ = parse_request(&bytes, CLIENT, Scheme::Http, &mut out);
            for ctx in [ctx(), ResponseContext { is_head: true, client_http10: true, close_client: true, body_unfinished: true, upgrade: true }] {
                let _ = parse_response(&bytes, ctx, &mut out);
            }
            let _ = ChunkedScanner::default().scan(&bytes, |_| {});
        }

        /// Whatever the client sends, the head for the backend parses again,
        /// states the same framing and carries no hop-by-hop field.
        #[test]
        fn rewritten_heads_are_clean(
            fields in proptest::collection::vec(
                ("(?i)(host|connection|content-length|transfer-encoding|upgrade|te|x-a|proxy-b|keep-alive)",
                 "[ -~]{0,12}"),
                0..8),
        ) {
            let head = arbitrary_head(&fields, b"");
            let mut out = Vec::new();
            if let Ok(Some(r)) = parse_request(&head, CLIENT, Scheme::Http, &mut out) {
                let mut again = Vec::new();
                let r2 = parse_request(&out, CLIENT, Scheme::Http, &mut again).expect("rewritten head parses").expect("complete");
                proptest::prop_assert_eq!(r2.framing, r.framing);
                proptest::prop_assert_eq!(r2.head_len, out.len());
                let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
                for hop in ["\r\nte:", "\r\nkeep-alive:", "\r\nproxy-b:"] {
                    proptest::prop_assert!(!text.contains(hop), "{} in {}", hop, text);
                }
                proptest::prop_assert_eq!(text.matches("\r\nhost:").count(), 1);
            }
        }
    }

    #[test]
    fn https_redirects_keep_host_path_and_query_and_drop_the_port() {
        assert_eq!(https_location(b"shop.test", b"/a?b=1", 443), "https://shop.test/a?b=1");
        assert_eq!(https_location(b"shop.test:80", b"/", 443), "https://shop.test/");
        assert_eq!(https_location(b"shop.test:8080", b"/x", 8443), "https://shop.test:8443/x");
        assert_eq!(https_location(b"[2001:db8::1]:80", b"/", 443), "https://[2001:db8::1]/");
        assert_eq!(https_location(b"[2001:db8::1]", b"/", 443), "https://[2001:db8::1]/");
        assert_eq!(https_location(b"192.0.2.10", b"", 443), "https://192.0.2.10/");
        // What parse_request wrote is what the redirect reads.
        let mut up = Vec::new();
        let input = b"GET http://shop.test:80/p?q HTTP/1.1\r\nHost: shop.test:80\r\n\r\n";
        parse_request(input, CLIENT, Scheme::Http, &mut up).expect("valid").expect("complete");
        assert_eq!(upstream_host_and_target(&up), Some((&b"shop.test:80"[..], &b"/p?q"[..])));
        let mut out = Vec::new();
        redirect_response("https://shop.test/p?q", false, None, &mut out);
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 308 Permanent Redirect\r\nlocation: https://shop.test/p?q\r\n"), "{text}");
        assert!(!text.contains("connection: close"));
        // Dated as its origin, the head still ending before the body.
        let mut out = Vec::new();
        redirect_response("https://shop.test/", true, Some(b"Sun, 06 Nov 1994 08:49:37 GMT"), &mut out);
        let text = String::from_utf8(out).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert!(head.contains("\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"), "{head}");
        assert!(head.ends_with("connection: close") && body == "moved to https://shop.test/\n", "{text}");
    }
}
