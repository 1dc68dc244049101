//! What vipd tells systemd (`Type=notify`): ready, reloading, stopping, a
//! one-line status, and the watchdog's pings. Without `NOTIFY_SOCKET`
//! (not under systemd) every call does nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::debug;

/// Sends `states`; a failure is logged at debug level only (systemd's
/// socket gone is not ours to fix, and nothing else depends on it).
fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        debug!(error = %e, "could not notify systemd");
    }
}

/// Listeners bound, VRRP started, control endpoint up.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins; [`ready`] ends it.
pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

/// The planned stop begins.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// The service's main process is now `pid` (the successor of `vipd
/// upgrade`; sent by the old main process, which then exits).
pub fn main_pid(pid: u32) {
    send(&[NotifyState::MainPid(pid)]);
}

/// The one-line summary `systemctl status` shows.
pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// How often systemd wants a ping (half of `WatchdogSec=`), if it wants any.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    // Never a zero period (a tokio interval panics on it).
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Pings the watchdog every `every` for as long as the task runs and
/// `alive` says the other parts answer: a stuck loop of the runtime this
/// runs on (the VRRP thread's), or a stuck proxy worker, stops the pings
/// and systemd restarts vipd.
pub async fn watchdog(every: Duration, alive: Arc<dyn Fn() -> bool + Send + Sync>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if alive() {
            send(&[NotifyState::Watchdog]);
        } else {
            debug!("a proxy worker did not answer: no watchdog ping");
        }
    }
}

/// A worker's sign of life: a timestamp it renews, that [`Heartbeat::fresh`]
/// judges.
#[derive(Debug)]
pub struct Heartbeat {
    epoch: Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat { epoch: Instant::now(), last_ms: std::sync::atomic::AtomicU64::new(0) }
    }
}

impl Heartbeat {
    /// The worker is alive now.
    pub fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// It beat within `within`.
    pub fn fresh(&self, within: Duration) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        now.saturating_sub(self.last_ms.load(std::sync::atomic::Ordering::Relaxed)) <= within.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_goes_stale() {
        let h = Heartbeat::default();
        h.beat();
        assert!(h.fresh(Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!h.fresh(Duration::from_millis(10)));
    }
}
