//! The read buffer of one connection: bytes read and not yet used. It
//! starts small and grows only as far as a caller allows (a request head up
//! to `max_header_size`, a body copy to [`BODY_CHUNK`]): when it is full, or
//! when a read filled all the room there was (a large body is streaming,
//! so fewer, larger reads pay). It shrinks back between messages, so a
//! thousand idle keep-alive connections cost little.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncRead;

/// Size a buffer starts at, and returns to between messages: room for a
/// typical request or response head.
pub const BASE: usize = 4096;

/// Largest read while copying a body.
pub const BODY_CHUNK: usize = 64 * 1024;

/// `data[start..end]` holds bytes read and not yet used.
#[derive(Debug)]
pub struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read took all the room it had.
    filled_room: bool,
}

impl Default for ReadBuf {
    fn default() -> Self {
        ReadBuf { data: vec![0; BASE], start: 0, end: 0, filled_room: false }
    }
}

impl ReadBuf {
    /// The unused bytes.
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Number of unused bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// No unused bytes.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Marks the first `n` unused bytes as used (`usize::MAX`: all of them).
    pub fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Returns to [`BASE`] size once empty, after a large head or body.
    pub fn shrink(&mut self) {
        if self.is_empty() && self.data.len() > BASE {
            self.data = vec![0; BASE];
        }
        self.filled_room = false;
    }

    /// Gives its memory back while empty (an idle connection); the next
    /// read takes [`BASE`] again.
    pub fn release(&mut self) {
        if self.is_empty() {
            self.data = Vec::new();
            self.filled_room = false;
        }
    }

    /// One read from `r`, after making room: unused bytes move to the front
    /// and the buffer grows up to `limit`. `Ok(0)` is end of stream. With
    /// `limit` unused bytes already held, fails without reading.
    pub async fn read_from<R: AsyncRead + Unpin>(&mut self, r: &mut R, limit: usize) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_from(cx, &mut *r, limit)).await
    }

    /// [`ReadBuf::read_from`] for a caller that polls (a body).
    pub fn poll_read_from<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        limit: usize,
    ) -> Poll<io::Result<usize>> {
        if self.filled_room && self.is_empty() && self.data.len() < limit {
            let size = (self.data.len() * 2).min(limit);
            self.data.resize(size, 0);
            // Grown once for that read, not again each time it is polled.
            self.filled_room = false;
        }
        if self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.data.len() < limit {
                let size = (self.data.len() * 2).clamp(BASE, limit);
                self.data.resize(size, 0);
            } else {
                return Poll::Ready(Err(io::Error::other("read buffer full")));
            }
        }
        let room = self.data.len() - self.end;
        let mut window = tokio::io::ReadBuf::new(&mut self.data[self.end..]);
        ready!(Pin::new(r).poll_read(cx, &mut window))?;
        let n = window.filled().len();
        self.end += n;
        self.filled_room = n == room;
        Poll::Ready(Ok(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn grows_to_the_limit_then_refuses_and_shrinks_when_used() {
        let input = vec![7u8; 3 * BASE];
        let mut src: &[u8] = &input;
        let mut b = ReadBuf::default();
        let mut total = 0;
        while total < 2 * BASE {
            total += b.read_from(&mut src, 2 * BASE).await.expect("read");
        }
        assert_eq!(b.len(), 2 * BASE);
        assert!(b.read_from(&mut src, 2 * BASE).await.is_err());
        b.consume(BASE);
        assert_eq!(b.filled().len(), BASE);
        // Everything, from the middle: no overflow (a linger did this).
        let mut all = ReadBuf::default();
        let mut two: &[u8] = b"ab";
        all.read_from(&mut two, BASE).await.expect("read");
        all.consume(1);
        all.consume(usize::MAX);
        assert!(all.is_empty());
        // Room again: the rest moves to the front.
        assert!(b.read_from(&mut src, 2 * BASE).await.expect("read") > 0);
        b.consume(usize::MAX);
        assert!(b.is_empty());
        b.shrink();
        assert_eq!(b.data.len(), BASE);
        // Released while idle, it reads again at the base size.
        b.release();
        assert_eq!(b.data.capacity(), 0);
        let mut more: &[u8] = b"GET";
        assert_eq!(b.read_from(&mut more, 2 * BASE).await.expect("read"), 3);
        assert_eq!((b.filled(), b.data.len()), (&b"GET"[..], BASE));
    }

    #[tokio::test]
    async fn reads_that_fill_the_room_make_it_larger() {
        let input = vec![1u8; 1 << 20];
        let mut src: &[u8] = &input;
        let mut b = ReadBuf::default();
        let mut sizes = Vec::new();
        for _ in 0..6 {
            sizes.push(b.read_from(&mut src, BODY_CHUNK).await.expect("read"));
            b.consume(usize::MAX);
        }
        assert_eq!(sizes, [BASE, 2 * BASE, 4 * BASE, 8 * BASE, 16 * BASE, BODY_CHUNK]);
        // A short read stops the growth.
        let mut short: &[u8] = &input[..100];
        b.shrink();
        assert_eq!(b.read_from(&mut short, BODY_CHUNK).await.expect("read"), 100);
        b.consume(usize::MAX);
        assert_eq!(b.data.len(), BASE);
    }
}
