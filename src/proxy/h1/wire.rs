//! HTTP/1.1 message heads and body framing (RFC 9112), pure: bytes in,
//! decisions and rewritten bytes out. A request head is parsed and written
//! out for the backend in one pass (hop-by-hop fields out, X-Forwarded-* in,
//! framing re-stated); a response head likewise for the client. Message
//! bodies are not touched here except by the chunked-coding scanner.

use std::io::Write as _;
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
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Malformed(why) => f.write_str(why),
            HeadError::TooManyHeaders => write!(f, "more than {MAX_HEADERS} header fields"),
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
}

/// Parses a request head at the start of `input` and, if complete, writes
/// the head to send upstream into `out` (cleared first). `Ok(None)`: the
/// head is not complete yet.
pub fn parse_request(input: &[u8], client: IpAddr, out: &mut Vec<u8>) -> Result<Option<Request>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let Some(head_len) = complete(req.parse(input), "malformed request head")? else { return Ok(None) };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("malformed request line"));
    };
    let http10 = minor == 0;
    let headers: &[httparse::Header<'_>] = req.headers;
    let Fields { conn, content_length, transfer_encoding, upgrade_to, host, hosts, has_xff } = Fields::scan(headers)?;
    if hosts > 1 {
        return Err(HeadError::Malformed("more than one Host field"));
    }

    // Body framing, RFC 9112 §6.3. Both fields at once is how requests are
    // smuggled past a proxy: refused rather than guessed at.
    let framing = match (transfer_encoding, content_length) {
        (TransferEncoding::None, None | Some(0)) => Framing::Empty,
        (TransferEncoding::None, Some(n)) => Framing::Length(n),
        (_, Some(_)) => return Err(HeadError::Malformed("both Content-Length and Transfer-Encoding")),
        (_, None) if http10 => return Err(HeadError::Malformed("Transfer-Encoding in an HTTP/1.0 request")),
        (TransferEncoding::Chunked, None) => Framing::Chunked,
        (TransferEncoding::Other, None) => return Err(HeadError::Malformed("request body coding is not chunked")),
    };

    // An absolute-form target names the host itself (RFC 9112 §3.2.2).
    let (path, authority) = split_target(target)?;
    let host = authority.or(host);
    if host.is_none() && !http10 {
        return Err(HeadError::Malformed("HTTP/1.1 request without Host"));
    }
    // A body before the switch is not supported: such a request goes as a
    // plain one, the upgrade wish dropped.
    let upgrade = upgrade_to.is_some() && conn.upgrade && framing == Framing::Empty;

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(h) = host {
        put_field(out, b"host", h);
    }
    for h in headers {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name)
            || conn.names(name)
            || name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"x-forwarded-for")
            || name.eq_ignore_ascii_case(b"x-forwarded-proto")
            || name.eq_ignore_ascii_case(b"x-forwarded-host")
        {
            continue;
        }
        put_field(out, name, h.value);
    }
    // X-Forwarded-For: every prior hop in order, then this client.
    out.extend_from_slice(b"x-forwarded-for: ");
    if has_xff {
        for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for")) {
            out.extend_from_slice(h.value);
            out.extend_from_slice(b", ");
        }
    }
    let _ = write!(out, "{client}\r\nx-forwarded-proto: http\r\n");
    if let Some(h) = host {
        put_field(out, b"x-forwarded-host", h);
    }
    match framing {
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        // An explicit zero stays: some servers want a length on POST or PUT.
        Framing::Empty if content_length == Some(0) => out.extend_from_slice(b"content-length: 0\r\n"),
        // The codings as sent (chunked last): the body passes through coded.
        Framing::Chunked => put_transfer_encoding(out, headers),
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
    }))
}

/// Adds a Host field to an upstream head that lacks one (see
/// [`Request::needs_host`]), right after its request line.
pub fn insert_host(head: &mut Vec<u8>, host: &str) {
    let at = head.windows(2).position(|w| w == b"\r\n").map_or(0, |i| i + 2);
    let field = format!("host: {host}\r\n");
    head.splice(at..at, field.bytes());
}

/// What the response head depends on besides its own bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseContext {
    /// The request was HEAD.
    pub is_head: bool,
    /// The client speaks HTTP/1.0 (no chunked coding, no interim answers).
    pub client_http10: bool,
    /// The client connection closes after this response (client's wish,
    /// shutdown, or a request body left unread).
    pub close_client: bool,
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
}

/// Parses a backend's response head at the start of `input` and, if
/// complete, writes the head for the client into `out` (cleared first;
/// left empty for an interim answer an HTTP/1.0 client must not see).
pub fn parse_response(input: &[u8], ctx: ResponseContext, out: &mut Vec<u8>) -> Result<Option<Response>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let Some(head_len) = complete(resp.parse(input), "malformed response head")? else { return Ok(None) };
    let (Some(minor), Some(status)) = (resp.version, resp.code) else {
        return Err(HeadError::Malformed("malformed status line"));
    };
    let reason = resp.reason.unwrap_or("");
    let headers: &[httparse::Header<'_>] = resp.headers;
    let Fields { conn, content_length, transfer_encoding, upgrade_to, .. } = Fields::scan(headers)?;
    let interim = (100..200).contains(&status) && status != 101;
    if status == 101 && !(ctx.upgrade && upgrade_to.is_some()) {
        return Err(HeadError::Malformed("101 Switching Protocols without an upgrade"));
    }
    // RFC 9112 §6.3, in its order.
    let framing = if ctx.is_head || interim || status == 101 || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (transfer_encoding, content_length) {
            (TransferEncoding::Chunked, _) => Framing::Chunked,
            (TransferEncoding::Other, _) => Framing::UntilClose,
            (TransferEncoding::None, Some(0)) => Framing::Empty,
            (TransferEncoding::None, Some(n)) => Framing::Length(n),
            (TransferEncoding::None, None) => Framing::UntilClose,
        }
    };
    let backend_keep_alive = framing != Framing::UntilClose && if minor == 0 { conn.keep_alive } else { !conn.close };
    let dechunk = framing == Framing::Chunked && ctx.client_http10;
    let close_client = ctx.close_client || framing == Framing::UntilClose || dechunk;

    out.clear();
    if interim && ctx.client_http10 {
        return Ok(Some(Response { head_len, status, framing, interim, backend_keep_alive, close_client, dechunk }));
    }
    let _ = write!(out, "HTTP/1.1 {status} ");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in headers {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name) || conn.names(name) {
            continue;
        }
        // A stated length goes with the body as the backend framed it;
        // with a transfer coding (which wins over it) it is dropped.
        if name.eq_ignore_ascii_case(b"content-length")
            && (matches!(framing, Framing::Length(_)) || transfer_encoding != TransferEncoding::None)
        {
            continue;
        }
        put_field(out, name, h.value);
    }
    match framing {
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked if !dechunk => put_transfer_encoding(out, headers),
        // Codings without chunked: the body is delimited by close, coded.
        Framing::UntilClose if transfer_encoding != TransferEncoding::None => put_transfer_encoding(out, headers),
        _ => {}
    }
    if status == 101 {
        out.extend_from_slice(b"connection: upgrade\r\n");
        if let Some(to) = upgrade_to {
            put_field(out, b"upgrade", to);
        }
    } else if !interim {
        if close_client {
            out.extend_from_slice(b"connection: close\r\n");
        } else if ctx.client_http10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Response { head_len, status, framing, interim, backend_keep_alive, close_client, dechunk }))
}

/// The head's length once httparse has all of it.
fn complete(parsed: httparse::Result<usize>, malformed: &'static str) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => Err(HeadError::Malformed("unsupported HTTP version")),
        Err(_) => Err(HeadError::Malformed(malformed)),
    }
}

/// What a head's fields say about framing, routing and forwarding.
struct Fields<'a> {
    conn: ConnectionField<'a>,
    content_length: Option<u64>,
    transfer_encoding: TransferEncoding,
    upgrade_to: Option<&'a [u8]>,
    host: Option<&'a [u8]>,
    /// Host fields seen (a request may have one).
    hosts: usize,
    has_xff: bool,
}

impl<'a> Fields<'a> {
    fn scan(headers: &[httparse::Header<'a>]) -> Result<Self, HeadError> {
        let mut f = Fields {
            conn: ConnectionField::scan(headers)?,
            content_length: None,
            transfer_encoding: TransferEncoding::None,
            upgrade_to: None,
            host: None,
            hosts: 0,
            has_xff: false,
        };
        for h in headers {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                f.content_length = Some(merge_content_length(f.content_length, h.value)?);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                f.transfer_encoding = f.transfer_encoding.add(h.value);
            } else if name.eq_ignore_ascii_case(b"host") {
                f.host = Some(h.value);
                f.hosts += 1;
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                f.upgrade_to = Some(h.value);
            } else if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                f.has_xff = true;
            }
        }
        Ok(f)
    }
}

/// A short answer made by the proxy itself, written into `out`.
pub fn local_response(status: u16, reason: &str, body: &str, close: bool, out: &mut Vec<u8>) {
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{body}",
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    );
}

/// The message's `Transfer-Encoding` fields, as received.
fn put_transfer_encoding(out: &mut Vec<u8>, headers: &[httparse::Header<'_>]) {
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding")) {
        put_field(out, b"transfer-encoding", h.value);
    }
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Fields that describe one hop, never forwarded (RFC 9110 §7.6.1); besides
/// these, whatever `Connection` names and every `Proxy-*` field. `Proxy`
/// itself is no standard field: CGI backends would read it as their proxy
/// setting ("httpoxy").
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 7] =
        [b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"proxy"];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) || (name.len() >= 6 && name[..6].eq_ignore_ascii_case(b"proxy-"))
}

/// What the `Connection` fields of a message say.
struct ConnectionField<'a> {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    named: [&'a [u8]; MAX_CONNECTION_TOKENS],
    count: usize,
}

impl<'a> ConnectionField<'a> {
    fn scan(headers: &[httparse::Header<'a>]) -> Result<Self, HeadError> {
        let mut c = ConnectionField { close: false, keep_alive: false, upgrade: false, named: [&[]; 16], count: 0 };
        for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")) {
            for token in h.value.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty()) {
                if token.eq_ignore_ascii_case(b"close") {
                    c.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    c.keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    c.upgrade = true;
                } else {
                    let slot = c.named.get_mut(c.count).ok_or(HeadError::Malformed("too many Connection options"))?;
                    *slot = token;
                    c.count += 1;
                }
            }
        }
        Ok(c)
    }

    /// Whether `name` is a field the sender marked as hop-by-hop.
    fn names(&self, name: &[u8]) -> bool {
        self.named[..self.count].iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// The `Transfer-Encoding` fields seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransferEncoding {
    None,
    /// The final coding is chunked.
    Chunked,
    /// Some coding, and the final one is not chunked.
    Other,
}

impl TransferEncoding {
    fn add(self, value: &[u8]) -> Self {
        match value.rsplit(|&b| b == b',').map(trim).find(|t| !t.is_empty()) {
            Some(last) if last.eq_ignore_ascii_case(b"chunked") => TransferEncoding::Chunked,
            _ => TransferEncoding::Other,
        }
    }
}

/// Content-Length may repeat (as fields or a list) only with one value.
fn merge_content_length(prior: Option<u64>, value: &[u8]) -> Result<u64, HeadError> {
    let mut merged = prior;
    for item in value.split(|&b| b == b',').map(trim) {
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::Malformed("invalid Content-Length"));
        }
        let n = item.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if merged.is_some_and(|m| m != n) {
            return Err(HeadError::Malformed("conflicting Content-Length values"));
        }
        merged = Some(n);
    }
    merged.ok_or(HeadError::Malformed("invalid Content-Length"))
}

/// Splits a request target into the origin-form path to send upstream and,
/// for absolute form, the authority.
fn split_target(target: &str) -> Result<(&[u8], Option<&[u8]>), HeadError> {
    let t = target.as_bytes();
    if t.first() == Some(&b'/') || t == b"*" {
        return Ok((t, None));
    }
    let scheme_end =
        t.windows(3).position(|w| w == b"://").ok_or(HeadError::Malformed("unsupported request target"))?;
    if !t[..scheme_end].eq_ignore_ascii_case(b"http") {
        return Err(HeadError::Malformed("unsupported request target"));
    }
    let rest = &t[scheme_end + 3..];
    let authority_end = rest.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    if authority.is_empty() || authority.contains(&b'@') {
        return Err(HeadError::Malformed("unsupported request target"));
    }
    Ok((if path.is_empty() { b"/" } else { path }, Some(authority)))
}

/// Safe to send twice (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
}

/// A character of a token (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 16384;

/// Where the chunked-coding scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In the hex size; `digits` read so far.
    Size { digits: u8 },
    /// In a chunk extension, up to CR.
    Extension,
    /// After the size line's CR.
    SizeLf,
    /// In chunk data.
    Data,
    /// After chunk data, expecting CR.
    DataCr,
    /// Expecting LF after the data's CR.
    DataLf,
    /// At the start of a trailer line, or the final CRLF.
    TrailerStart,
    /// In a trailer field's name, up to the colon.
    TrailerName,
    /// In a trailer field's value, up to CR.
    Trailer,
    /// After a trailer line's CR.
    TrailerLf,
    /// After the final CR.
    EndLf,
    /// The body has ended.
    Done,
}

/// Error in a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "chunked body: {}", self.0)
    }
}

/// Follows a chunked body (RFC 9112 §7.1) byte by byte to find where it
/// ends, handing out the data it carries. Holds no buffer: input may be cut
/// anywhere.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: Chunk,
    /// Chunk size being read, then data bytes left in the chunk.
    remaining: u64,
    /// Bytes in the current size or trailer line.
    line: usize,
    trailers: usize,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        ChunkedScanner { state: Chunk::Size { digits: 0 }, remaining: 0, line: 0, trailers: 0 }
    }
}

impl ChunkedScanner {
    /// The terminating chunk and trailers have been seen.
    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Scans `input`; calls `data` with each piece of chunk data. Returns the
    /// bytes that belong to the body: all of `input` unless it ended inside.
    pub fn scan(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                Chunk::Done => return Ok(i),
                Chunk::Data => {
                    let n = (input.len() - i).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    data(&input[i..i + n]);
                    self.remaining -= n as u64;
                    i += n;
                    if self.remaining == 0 {
                        self.state = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::Size { digits } => {
                    self.line += 1;
                    if let Some(d) = (b as char).to_digit(16) {
                        if digits >= 15 {
                            return Err(ChunkError("chunk size too large"));
                        }
                        self.remaining = self.remaining * 16 + u64::from(d);
                        self.state = Chunk::Size { digits: digits + 1 };
                    } else if digits == 0 {
                        return Err(ChunkError("expected a chunk size"));
                    } else if b == b'\r' {
                        self.state = Chunk::SizeLf;
                    } else if matches!(b, b';' | b' ' | b'\t') {
                        self.state = Chunk::Extension;
                    } else {
                        return Err(ChunkError("bad chunk size"));
                    }
                }
                Chunk::Extension => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(ChunkError("chunk extension too long"));
                    }
                    match b {
                        b'\r' => self.state = Chunk::SizeLf,
                        b'\n' => return Err(ChunkError("bare LF in chunk extension")),
                        _ => {}
                    }
                }
                Chunk::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF after chunk size"));
                    }
                    self.line = 0;
                    self.state = if self.remaining == 0 { Chunk::TrailerStart } else { Chunk::Data };
                }
                Chunk::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("expected CRLF after chunk data"));
                    }
                    self.state = Chunk::DataLf;
                }
                Chunk::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected CRLF after chunk data"));
                    }
                    self.state = Chunk::Size { digits: 0 };
                }
                // Trailer lines must be fields (a name of token characters,
                // a colon): whatever else a lenient backend might read as
                // the end of the body and the start of a request.
                Chunk::TrailerStart => {
                    if b == b'\r' {
                        self.state = Chunk::EndLf;
                    } else if is_tchar(b) {
                        self.line = 1;
                        self.trailers += 1;
                        self.state = Chunk::TrailerName;
                    } else {
                        return Err(ChunkError("malformed trailer field"));
                    }
                }
                Chunk::TrailerName => {
                    self.line += 1;
                    self.trailers += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(ChunkError("trailer section too long"));
                    }
                    if b == b':' {
                        self.state = Chunk::Trailer;
                    } else if !is_tchar(b) {
                        return Err(ChunkError("malformed trailer field"));
                    }
                }
                Chunk::Trailer => {
                    self.line += 1;
                    self.trailers += 1;
                    if self.line > MAX_CHUNK_LINE || self.trailers > MAX_TRAILERS {
                        return Err(ChunkError("trailer section too long"));
                    }
                    match b {
                        b'\r' => self.state = Chunk::TrailerLf,
                        b'\n' => return Err(ChunkError("bare LF in trailer")),
                        _ => {}
                    }
                }
                Chunk::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF after trailer"));
                    }
                    self.state = Chunk::TrailerStart;
                }
                Chunk::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF at end of body"));
                    }
                    self.state = Chunk::Done;
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

    fn req(head: &str) -> Result<Option<(Request, String)>, HeadError> {
        let mut out = Vec::new();
        parse_request(head.as_bytes(), CLIENT, &mut out).map(|r| r.map(|r| (r, String::from_utf8(out).expect("utf8"))))
    }

    fn ok(head: &str) -> (Request, String) {
        req(head).expect("parses").expect("complete")
    }

    fn ctx() -> ResponseContext {
        ResponseContext { is_head: false, client_http10: false, close_client: false, upgrade: false }
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
        let (_, out) = ok("OPTIONS http://api.test HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("OPTIONS / HTTP/1.1\r\nhost: api.test\r\n"), "{out}");
        assert!(req("CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n").is_err());
        assert!(req("GET https://api.test/ HTTP/1.1\r\nHost: a\r\n\r\n").is_err());
    }

    #[test]
    fn framing_of_requests() {
        // An explicit zero length is kept; none stays none.
        let (r, out) = ok("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.framing, Framing::Empty);
        assert!(out.ends_with("content-length: 0\r\n\r\n"), "{out}");
        assert!(!ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n").1.contains("content-length"));
        // The codings pass as sent: the body stays coded.
        let (r, out) = ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(r.framing, Framing::Chunked);
        assert!(out.ends_with("transfer-encoding: gzip, chunked\r\n\r\n"), "{out}");
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
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(req(bad), Err(HeadError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn malformed_and_oversized_heads_are_refused() {
        for bad in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/3.0\r\nHost: a\r\n\r\n",
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
        // HEAD, 204 and 304 have no body whatever they say; the length stays.
        let head = ResponseContext { is_head: true, ..ctx() };
        let (r, out) = resp("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", head).expect("ok").expect("complete");
        assert_eq!(r.framing, Framing::Empty);
        assert!(out.contains("Content-Length: 100\r\n"), "{out}");
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
        local_response(503, "Service Unavailable", "no healthy backend\n", false, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 19\r\n\r\nno healthy backend\n"
        );
    }

    fn scan_all(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut s = ChunkedScanner::default();
        let mut data = Vec::new();
        let mut used = 0;
        for p in pieces {
            used += s.scan(p, |d| data.extend_from_slice(d))?;
        }
        Ok((data, used, s.is_done()))
    }

    #[test]
    fn chunked_body_is_followed_across_any_split() {
        let body: &[u8] = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for cut in 0..body.len() {
            let (data, used, done) = scan_all(&[&body[..cut], &body[cut..]]).expect("valid");
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz");
            assert_eq!((used, done), (end, true), "cut at {cut}");
        }
        // Byte by byte too.
        let pieces: Vec<&[u8]> = body.chunks(1).collect();
        let (_, used, done) = scan_all(&pieces).expect("valid");
        assert_eq!((used, done), (end, true));
    }

    #[test]
    fn chunked_body_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"\r\n",
            b"1000000000000000\r\n",
            b"0\r\nX-A: 1\nX",
            // What a lenient backend could take for the end and a new request.
            b"0\r\n\nGET /admin HTTP/1.1\r\n\r\n",
            b"0\r\nGET /admin HTTP/1.1\r\n\r\n",
            b"0\r\n: x\r\n\r\n",
        ] {
            assert!(scan_all(&[bad]).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"1;".as_slice(), &[b'e'; MAX_CHUNK_LINE + 1]].concat();
        assert!(scan_all(&[&long]).is_err());
        let (_, used, done) = scan_all(&[b"3\r\nab"]).expect("valid so far");
        assert_eq!((used, done), (5, false));
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
            let _ = parse_request(&bytes, CLIENT, &mut out);
            for ctx in [ctx(), ResponseContext { is_head: true, client_http10: true, close_client: true, upgrade: true }] {
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
            if let Ok(Some(r)) = parse_request(&head, CLIENT, &mut out) {
                let mut again = Vec::new();
                let r2 = parse_request(&out, CLIENT, &mut again).expect("rewritten head parses").expect("complete");
                proptest::prop_assert_eq!(r2.framing, r.framing);
                proptest::prop_assert_eq!(r2.head_len, out.len());
                let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
                for hop in ["\r\nte:", "\r\nkeep-alive:", "\r\nproxy-b:"] {
                    proptest::prop_assert!(!text.contains(hop), "{} in {}", hop, text);
                }
                proptest::prop_assert_eq!(text.matches("\r\nhost:").count(), 1);
            }
        }

        /// The chunked scanner finds the same end and data however the
        /// input is cut.
        #[test]
        fn chunked_scan_is_split_invariant(
            sizes in proptest::collection::vec(0usize..40, 0..6),
            cut in 0usize..400,
        ) {
            let mut body = Vec::new();
            let mut want = Vec::new();
            for (i, n) in sizes.iter().enumerate().filter(|(_, n)| **n > 0) {
                body.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                let data = vec![b'a' + (i % 26) as u8; *n];
                body.extend_from_slice(&data);
                body.extend_from_slice(b"\r\n");
                want.extend_from_slice(&data);
            }
            body.extend_from_slice(b"0\r\n\r\nrest");
            let cut = cut.min(body.len());
            let (data, used, done) = scan_all(&[&body[..cut], &body[cut..]]).expect("valid");
            proptest::prop_assert!(done);
            proptest::prop_assert_eq!(used, body.len() - 4);
            proptest::prop_assert_eq!(data, want);
        }
    }
}
