//! A one-shot timer with microsecond precision (Linux timerfd) for the
//! protocol's deadlines. tokio's timer wheel rounds a deadline up to the next
//! millisecond and wakes later still: takeovers came ~1.5 ms after
//! Master_Down_Interval, later than keepalived's. Thin: it only waits.

use std::future::pending;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

/// tokio registers what is `AsRawFd`; nix's TimerFd is only `AsFd`.
#[derive(Debug)]
struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// A timerfd registered with tokio.
#[derive(Debug)]
pub struct PreciseTimer {
    fd: AsyncFd<Fd>,
}

impl PreciseTimer {
    /// A disarmed timer on CLOCK_MONOTONIC, the clock of `std::time::Instant`.
    pub fn new() -> io::Result<Self> {
        let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)?;
        // SAFETY: the AsyncFd owns the timer from here on; its descriptor is
        // closed only when the AsyncFd (and the registration) drops.
        let fd = unsafe { AsyncFd::register(Fd(timer)) }.map_err(|e| e.into_parts().1)?;
        Ok(PreciseTimer { fd })
    }

    /// Completes at `deadline` (at once if it has passed); `None` never
    /// completes. Dropping the future early is fine: the next call re-arms,
    /// which also clears an expiry nobody waited for.
    pub async fn sleep_until(&self, deadline: Option<Instant>) {
        let Some(deadline) = deadline else { return pending().await };
        // A zero expiry would disarm the timer.
        let delay = deadline.saturating_duration_since(Instant::now()).max(Duration::from_micros(1));
        let armed =
            self.fd.get_ref().0.set(Expiration::OneShot(TimeSpec::from_duration(delay)), TimerSetTimeFlags::empty());
        if armed.is_err() {
            return tokio::time::sleep_until(deadline.into()).await;
        }
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                return tokio::time::sleep_until(deadline.into()).await;
            };
            // EAGAIN (readiness left over from an earlier expiry) clears the
            // readiness and waits again.
            if let Ok(result) = ready.try_io(|fd| fd.get_ref().0.wait().map_err(io::Error::from)) {
                if result.is_err() {
                    tokio::time::sleep_until(deadline.into()).await;
                }
                return;
            }
        }
    }
}
