//! The chunked transfer coding (RFC 9112 §7.1), pure: a scanner that
//! follows a chunked body across any split of its bytes, the rechunker that
//! carries one on in the proxy's own framing, and what is left of a body
//! of any framing.

use std::io::Write as _;

use super::head::{is_hop_by_hop, is_tchar, Framing};

/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 16384;

/// Where the chunked-coding scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In the hex size; `digits` read so far.
    Size { digits: u8 },
    /// In whitespace after the size, before `;` or CR.
    SizeSpace,
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

/// What the chunked scanner finds in a body, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Chunk data.
    Data(&'a [u8]),
    /// The last chunk (size 0) was read; trailer fields may follow.
    LastChunk,
    /// Bytes of a trailer field line, without its CRLF; one line may come
    /// in several pieces.
    Trailer(&'a [u8]),
    /// A trailer field line ended.
    TrailerEnd,
    /// The body ended (its final CRLF).
    End,
}

/// Follows a chunked body (RFC 9112 §7.1) byte by byte to find where it
/// ends, handing out what it carries. Holds no buffer: input may be cut
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

/// A control character other than HTAB: never in a field value or a chunk
/// extension (RFC 9110 §5.5).
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

impl ChunkedScanner {
    /// The terminating chunk and trailers have been seen.
    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Scans `input`, handing each [`Piece`] to `found`. Returns the bytes
    /// that belong to the body: all of `input` unless it ended inside.
    pub fn scan(&mut self, input: &[u8], mut found: impl FnMut(Piece<'_>)) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                Chunk::Done => return Ok(i),
                Chunk::Data => {
                    let n = (input.len() - i).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    found(Piece::Data(&input[i..i + n]));
                    self.remaining -= n as u64;
                    i += n;
                    if self.remaining == 0 {
                        self.state = Chunk::DataCr;
                    }
                    continue;
                }
                // chunk-size [ chunk-ext ] CRLF, chunk-ext = *( BWS ";" ... ):
                // after the digits only whitespace, then `;` or the CR. A
                // size line like `0 /x HTTP/1.1` is refused, not read as a
                // size and an extension.
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
                    } else {
                        self.after_size(b)?;
                    }
                }
                Chunk::SizeSpace => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(ChunkError("chunk size line too long"));
                    }
                    self.after_size(b)?;
                }
                Chunk::Extension => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(ChunkError("chunk extension too long"));
                    }
                    match b {
                        b'\r' => self.state = Chunk::SizeLf,
                        b'\n' => return Err(ChunkError("bare LF in chunk extension")),
                        _ if is_ctl(b) => return Err(ChunkError("control character in chunk extension")),
                        _ => {}
                    }
                }
                Chunk::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF after chunk size"));
                    }
                    self.line = 0;
                    self.state = if self.remaining == 0 {
                        found(Piece::LastChunk);
                        Chunk::TrailerStart
                    } else {
                        Chunk::Data
                    };
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
                        found(Piece::Trailer(&input[i..=i]));
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
                    found(Piece::Trailer(&input[i..=i]));
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
                        _ if is_ctl(b) => return Err(ChunkError("control character in trailer")),
                        _ => found(Piece::Trailer(&input[i..=i])),
                    }
                }
                Chunk::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF after trailer"));
                    }
                    self.state = Chunk::TrailerStart;
                    found(Piece::TrailerEnd);
                }
                Chunk::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF at end of body"));
                    }
                    self.state = Chunk::Done;
                    found(Piece::End);
                }
            }
            i += 1;
        }
        Ok(i)
    }

    /// A byte after the chunk size's digits.
    fn after_size(&mut self, b: u8) -> Result<(), ChunkError> {
        self.state = match b {
            b'\r' => Chunk::SizeLf,
            b';' => Chunk::Extension,
            b' ' | b'\t' => Chunk::SizeSpace,
            _ => return Err(ChunkError("bad chunk size")),
        };
        Ok(())
    }
}

/// Carries a chunked body to the next hop in a framing of the proxy's own
/// (RFC 9112 §7.1): the data in chunks with fresh size lines, extensions
/// dropped, and only the trailer fields a recipient may act on after the
/// content. Nothing of the sender's framing passes as it was sent, so no
/// quirk of it can be read one way here and another way by the receiver.
#[derive(Debug, Clone, Default)]
pub struct Rechunker {
    scanner: ChunkedScanner,
    /// The trailer line being read (empty, not allocated, without trailers).
    line: Vec<u8>,
}

impl Rechunker {
    /// The whole body has been read.
    pub fn is_done(&self) -> bool {
        self.scanner.is_done()
    }

    /// Reads body bytes from `input` and appends them, re-framed, to `out`.
    /// Returns the bytes of `input` that belong to the body.
    pub fn reframe(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let line = &mut self.line;
        self.scanner.scan(input, |piece| match piece {
            Piece::Data(d) => put_chunk(out, d),
            Piece::LastChunk => out.extend_from_slice(b"0\r\n"),
            Piece::Trailer(bytes) => line.extend_from_slice(bytes),
            Piece::TrailerEnd => {
                if trailer_may_pass(line) {
                    out.extend_from_slice(line);
                    out.extend_from_slice(b"\r\n");
                }
                line.clear();
            }
            Piece::End => out.extend_from_slice(b"\r\n"),
        })
    }

    /// Reads body bytes from `input` and appends only their data to `out`
    /// (for a recipient that does not take the chunked coding).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        self.scanner.scan(input, |piece| {
            if let Piece::Data(d) = piece {
                out.extend_from_slice(d);
            }
        })
    }
}

/// The part of a message body still to be copied.
#[derive(Debug)]
pub enum Remaining {
    /// Nothing more.
    Done,
    /// So many bytes.
    Length(u64),
    /// Chunks, read by the rechunker.
    Chunked(Rechunker),
    /// Until the sender closes.
    UntilClose,
}

impl Remaining {
    /// The whole body of a message framed as `framing` says.
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => Remaining::Done,
            Framing::Length(n) => Remaining::Length(n),
            Framing::Chunked => Remaining::Chunked(Rechunker::default()),
            Framing::UntilClose => Remaining::UntilClose,
        }
    }

    /// Nothing is left.
    pub fn is_done(&self) -> bool {
        matches!(self, Remaining::Done)
    }

    /// Takes the body bytes at the front of `avail` and appends them to
    /// `out` as the next hop gets them: a chunked body re-framed, or with
    /// `decode` its data alone. Returns how many bytes of `avail` it took.
    pub fn relay(&mut self, avail: &[u8], out: &mut Vec<u8>, decode: bool) -> Result<usize, ChunkError> {
        let n = match self {
            Remaining::Done => 0,
            Remaining::Length(left) => {
                let n = avail.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                out.extend_from_slice(&avail[..n]);
                *left -= n as u64;
                if *left == 0 {
                    *self = Remaining::Done;
                }
                n
            }
            Remaining::Chunked(chunks) => {
                let n = if decode { chunks.decode(avail, out)? } else { chunks.reframe(avail, out)? };
                if chunks.is_done() {
                    *self = Remaining::Done;
                }
                n
            }
            Remaining::UntilClose => {
                out.extend_from_slice(avail);
                avail.len()
            }
        };
        Ok(n)
    }

    /// The sender closed: the end of a body delimited that way.
    pub fn end_of_stream(&mut self) -> bool {
        let ended = matches!(self, Remaining::UntilClose);
        if ended {
            *self = Remaining::Done;
        }
        ended
    }
}

/// Appends `data` as one chunk of the proxy's own framing: a bare size
/// line, no extensions (RFC 9112 §7.1). `data` is not empty (an empty
/// chunk is the last one).
pub fn put_chunk(out: &mut Vec<u8>, data: &[u8]) {
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Whether a trailer field line goes on to the next hop ([`trailer_name_may_pass`]).
fn trailer_may_pass(line: &[u8]) -> bool {
    trailer_name_may_pass(line.split(|&b| b == b':').next().unwrap_or_default())
}

/// Whether a trailer field of this name goes on to the next hop. Held back: what a
/// recipient must know before the content to act on it rightly (RFC 9110
/// §6.5.1: framing, routing, authentication, request modifiers, response
/// control, content format), hop-by-hop fields, and what the proxy itself
/// states (X-Forwarded-*).
pub fn trailer_name_may_pass(name: &[u8]) -> bool {
    const HELD: [&[u8]; 24] = [
        b"content-length",
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"content-location",
        b"host",
        b"authorization",
        b"www-authenticate",
        b"cookie",
        b"set-cookie",
        b"expect",
        b"max-forwards",
        b"range",
        b"cache-control",
        b"pragma",
        b"age",
        b"expires",
        b"vary",
        b"location",
        b"retry-after",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    ];
    let conditional = name.len() >= 3 && name[..3].eq_ignore_ascii_case(b"if-");
    !(is_hop_by_hop(name) || conditional || HELD.iter().any(|h| name.eq_ignore_ascii_case(h)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut s = ChunkedScanner::default();
        let mut data = Vec::new();
        let mut used = 0;
        for p in pieces {
            used += s.scan(p, |piece| {
                if let Piece::Data(d) = piece {
                    data.extend_from_slice(d);
                }
            })?;
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
            // RFC 9112 §7.1.1: after the size only BWS, then `;` or CRLF.
            b"5 junk\r\nhello\r\n",
            b"000 /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n",
            b"5\x0b\r\nhello\r\n",
            b"5 5\r\nhello\r\n",
            b"5;a\x00b\r\nhello\r\n",
            b"0\r\nX-A: a\x00b\r\n\r\n",
        ] {
            assert!(scan_all(&[bad]).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"1;".as_slice(), &[b'e'; MAX_CHUNK_LINE + 1]].concat();
        assert!(scan_all(&[&long]).is_err());
        let spaces = [b"1".as_slice(), &[b' '; MAX_CHUNK_LINE + 1]].concat();
        assert!(scan_all(&[&spaces]).is_err());
        // Whitespace before an extension or the CRLF is BWS: fine.
        for good in [&b"5 \r\nhello\r\n0\r\n\r\n"[..], b"5 \t;x=\"a b\"\r\nhello\r\n0\r\n\r\n"] {
            let (data, _, done) = scan_all(&[good]).expect("valid");
            assert_eq!((data.as_slice(), done), (&b"hello"[..], true));
        }
        let (_, used, done) = scan_all(&[b"3\r\nab"]).expect("valid so far");
        assert_eq!((used, done), (5, false));
    }

    fn reframe_all(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut r = Rechunker::default();
        let mut out = Vec::new();
        let mut used = 0;
        for p in pieces {
            used += r.reframe(p, &mut out)?;
        }
        Ok((out, used, r.is_done()))
    }

    #[test]
    fn chunked_bodies_go_on_in_the_proxys_own_framing() {
        // Extensions dropped, sizes restated, fields that frame, route or
        // authenticate held back from the trailer section.
        let body: &[u8] = b"05;name=\"v\"\r\nhello\r\n000\r\nContent-Length: 40\r\nX-Sum: 12\r\nHost: evil\r\n\
            Transfer-Encoding: chunked\r\nCookie: s=1\r\nIf-Match: x\r\nGrpc-Status: 0\r\n\r\nNEXT";
        let (out, used, done) = reframe_all(&[body]).expect("valid");
        assert_eq!((used, done), (body.len() - 4, true));
        assert_eq!(String::from_utf8_lossy(&out), "5\r\nhello\r\n0\r\nX-Sum: 12\r\nGrpc-Status: 0\r\n\r\n");
        // However the input is cut, the output carries the same data and
        // trailers and is itself a clean chunked body.
        for cut in 0..body.len() {
            let (out, used, done) = reframe_all(&[&body[..cut], &body[cut..]]).expect("valid");
            assert_eq!((used, done), (body.len() - 4, true), "cut at {cut}");
            let (data, again, done) = scan_all(&[&out]).expect("reframed body scans");
            assert_eq!((data.as_slice(), again, done), (&b"hello"[..], out.len(), true), "cut at {cut}");
            assert!(String::from_utf8_lossy(&out).ends_with("0\r\nX-Sum: 12\r\nGrpc-Status: 0\r\n\r\n"));
        }
        // Decoding hands on the data alone.
        let mut r = Rechunker::default();
        let mut plain = Vec::new();
        assert_eq!(r.decode(body, &mut plain), Ok(body.len() - 4));
        assert_eq!((plain.as_slice(), r.is_done()), (&b"hello"[..], true));
    }

    proptest::proptest! {
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
