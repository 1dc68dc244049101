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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn io_that_is_ready_arms_nothing_and_io_that_waits_is_bounded() {
        let mut waited = false;
        assert_eq!(within(Duration::from_secs(1), async { 7 }, &mut waited).await.ok(), Some(7));
        assert!(!waited, "ready at once");

        let t = tokio::time::Instant::now();
        let never = std::future::pending::<()>();
        assert!(within(Duration::from_secs(3), never, &mut waited).await.is_err());
        assert!(waited);
        assert_eq!(t.elapsed(), Duration::from_secs(3));

        let mut waited = false;
        let later = tokio::time::sleep(Duration::from_millis(10));
        assert!(within(Duration::from_secs(3), later, &mut waited).await.is_ok());
        assert!(waited, "it had to wait");
    }
}
