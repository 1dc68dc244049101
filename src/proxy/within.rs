//! A time limit on I/O that mostly needs none: most reads and writes of a
//! request finish at once (the socket has the bytes or the room), and only
//! one that waits reads the clock and arms a timer.

use std::future::Future;
use std::task::Poll;

use tokio::time::{error::Elapsed, timeout, Duration};

/// `io` with at most `limit` to finish; `waited` is set when it did not
/// finish at once.
pub async fn within<F: Future>(limit: Duration, io: F, waited: &mut bool) -> Result<F::Output, Elapsed> {
    let mut io = std::pin::pin!(io);
    if let Poll::Ready(r) = std::future::poll_fn(|cx| Poll::Ready(io.as_mut().poll(cx))).await {
        return Ok(r);
    }
    *waited = true;
    timeout(limit, io).await
}
