//! Idle backend connections, kept per worker thread and listener, by
//! backend address (so they outlive a reload that keeps the backend). A socket
//! stays on the runtime that opened it: its readiness comes from that
//! runtime's reactor, so handing it to another worker would tie that
//! worker's requests to this one's load (and break them when this one
//! stops first).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

/// Idle connections kept per backend; more are closed.
const MAX_PER_BACKEND: usize = 512;

/// An idle connection older than this is closed rather than used: common
/// backend keep-alive timeouts are 5 s and up, and a connection the backend
/// closes just as a request goes out costs that request.
pub const MAX_IDLE_AGE: Duration = Duration::from_secs(4);

struct Parked<T> {
    conn: T,
    since: Instant,
}

/// One worker's idle connections to each backend of one listener, the
/// newest at the back. One lock for all: only its worker's tasks take it.
/// Looked up twice a request (take, put): FxHash, not SipHash, since the
/// keys are the configured backends, which no client chooses.
pub struct IdleConns<T> {
    backends: Mutex<FxHashMap<SocketAddr, VecDeque<Parked<T>>>>,
}

impl<T> std::fmt::Debug for IdleConns<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConns").finish_non_exhaustive()
    }
}

impl<T> Default for IdleConns<T> {
    fn default() -> Self {
        IdleConns { backends: Mutex::new(FxHashMap::default()) }
    }
}

impl<T> IdleConns<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<SocketAddr, VecDeque<Parked<T>>>> {
        self.backends.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest connection to the backend at `addr` that is young enough
    /// and still `usable`; the others met on the way are closed.
    pub fn take(&self, addr: SocketAddr, now: Instant, usable: impl Fn(&T) -> bool) -> Option<T> {
        let mut all = self.lock();
        let idle = all.get_mut(&addr)?;
        while let Some(p) = idle.pop_back() {
            if now.saturating_duration_since(p.since) <= MAX_IDLE_AGE && usable(&p.conn) {
                return Some(p.conn);
            }
        }
        None
    }

    /// Parks a connection to the backend at `addr`; closes the ones too
    /// old to use.
    pub fn put(&self, addr: SocketAddr, conn: T, now: Instant) {
        let mut all = self.lock();
        let idle = all.entry(addr).or_default();
        drop_expired(idle, now);
        if idle.len() >= MAX_PER_BACKEND {
            idle.pop_front();
        }
        idle.push_back(Parked { conn, since: now });
    }

    /// Closes every connection too old to use (run now and then, so a quiet
    /// backend's connections do not stay open, half-closed, until traffic
    /// returns). A backend left with none is forgotten: one a reload
    /// removed is gone once its connections are.
    pub fn sweep(&self, now: Instant) {
        self.lock().retain(|_, idle| {
            drop_expired(idle, now);
            !idle.is_empty()
        });
    }

    /// Closes them all.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// Drops the oldest entries while they are past [`MAX_IDLE_AGE`].
fn drop_expired<T>(idle: &mut VecDeque<Parked<T>>, now: Instant) {
    while idle.front().is_some_and(|p| now.saturating_duration_since(p.since) > MAX_IDLE_AGE) {
        idle.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(n: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 21], n))
    }

    fn parked(idle: &IdleConns<usize>, addr: SocketAddr) -> Option<usize> {
        idle.lock().get(&addr).map(VecDeque::len)
    }

    #[test]
    fn newest_first_old_and_unusable_ones_closed() {
        let t0 = Instant::now();
        let idle = IdleConns::default();
        idle.put(at(1), 1, t0);
        idle.put(at(1), 2, t0 + Duration::from_secs(1));
        idle.put(at(1), 3, t0 + Duration::from_secs(2));
        assert_eq!(idle.take(at(1), t0 + Duration::from_secs(2), |_| true), Some(3));
        // 2 is not usable and is closed on the way to 1.
        assert_eq!(idle.take(at(1), t0 + Duration::from_secs(2), |c| *c != 2), Some(1));
        assert_eq!(idle.take(at(1), t0, |_| true), None);
        // Too old: not handed out, and swept when another is parked.
        idle.put(at(2), 7, t0);
        assert_eq!(idle.take(at(2), t0 + MAX_IDLE_AGE + Duration::from_millis(1), |_| true), None);
        idle.put(at(2), 8, t0);
        idle.put(at(2), 9, t0 + MAX_IDLE_AGE + Duration::from_secs(1));
        assert_eq!(parked(&idle, at(2)), Some(1));
        // A sweep closes what aged and forgets backends left with none.
        idle.sweep(t0 + 2 * MAX_IDLE_AGE + Duration::from_secs(2));
        assert_eq!(parked(&idle, at(2)), None);
        assert_eq!(parked(&idle, at(1)), None);
        assert_eq!(idle.take(at(5), t0, |_| true), None, "no such backend");
    }

    #[test]
    fn at_most_so_many_per_backend() {
        let t0 = Instant::now();
        let idle = IdleConns::default();
        for n in 0..MAX_PER_BACKEND + 10 {
            idle.put(at(1), n, t0);
        }
        assert_eq!(parked(&idle, at(1)), Some(MAX_PER_BACKEND));
        assert_eq!(idle.take(at(1), t0, |_| true), Some(MAX_PER_BACKEND + 9));
    }
}
