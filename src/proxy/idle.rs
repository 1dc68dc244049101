//! Idle backend connections, kept per worker thread and listener. A socket
//! stays on the runtime that opened it: its readiness comes from that
//! runtime's reactor, so handing it to another worker would tie that
//! worker's requests to this one's load (and break them when this one
//! stops first).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
/// newest at the back.
pub struct IdleConns<T> {
    backends: Vec<Mutex<VecDeque<Parked<T>>>>,
}

impl<T> std::fmt::Debug for IdleConns<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConns").field("backends", &self.backends.len()).finish_non_exhaustive()
    }
}

impl<T> IdleConns<T> {
    /// Room for `backends` backends.
    pub fn new(backends: usize) -> Self {
        IdleConns { backends: (0..backends).map(|_| Mutex::new(VecDeque::new())).collect() }
    }

    /// The newest connection to backend `i` that is young enough and still
    /// `usable`; the others met on the way are closed.
    pub fn take(&self, i: usize, now: Instant, usable: impl Fn(&T) -> bool) -> Option<T> {
        let mut idle = self.backends.get(i)?.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(p) = idle.pop_back() {
            if now.saturating_duration_since(p.since) <= MAX_IDLE_AGE && usable(&p.conn) {
                return Some(p.conn);
            }
        }
        None
    }

    /// Parks a connection to backend `i`; closes the ones too old to use.
    pub fn put(&self, i: usize, conn: T, now: Instant) {
        let Some(slot) = self.backends.get(i) else { return };
        let mut idle = slot.lock().unwrap_or_else(|p| p.into_inner());
        drop_expired(&mut idle, now);
        if idle.len() >= MAX_PER_BACKEND {
            idle.pop_front();
        }
        idle.push_back(Parked { conn, since: now });
    }

    /// Closes every connection too old to use (run now and then, so a quiet
    /// backend's connections do not stay open, half-closed, until traffic
    /// returns).
    pub fn sweep(&self, now: Instant) {
        for b in &self.backends {
            drop_expired(&mut b.lock().unwrap_or_else(|p| p.into_inner()), now);
        }
    }

    /// Closes them all.
    pub fn clear(&self) {
        for b in &self.backends {
            b.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
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

    #[test]
    fn newest_first_old_and_unusable_ones_closed() {
        let t0 = Instant::now();
        let idle = IdleConns::new(2);
        idle.put(0, 1, t0);
        idle.put(0, 2, t0 + Duration::from_secs(1));
        idle.put(0, 3, t0 + Duration::from_secs(2));
        assert_eq!(idle.take(0, t0 + Duration::from_secs(2), |_| true), Some(3));
        // 2 is not usable and is closed on the way to 1.
        assert_eq!(idle.take(0, t0 + Duration::from_secs(2), |c| *c != 2), Some(1));
        assert_eq!(idle.take(0, t0, |_| true), None);
        // Too old: not handed out, and swept when another is parked.
        idle.put(1, 7, t0);
        assert_eq!(idle.take(1, t0 + MAX_IDLE_AGE + Duration::from_millis(1), |_| true), None);
        idle.put(1, 8, t0);
        idle.put(1, 9, t0 + MAX_IDLE_AGE + Duration::from_secs(1));
        assert_eq!(idle.backends[1].lock().expect("lock").len(), 1);
        idle.sweep(t0 + 2 * MAX_IDLE_AGE + Duration::from_secs(2));
        assert!(idle.backends[1].lock().expect("lock").is_empty());
        assert_eq!(idle.take(5, t0, |_| true), None, "no such backend");
    }

    #[test]
    fn at_most_so_many_per_backend() {
        let t0 = Instant::now();
        let idle = IdleConns::new(1);
        for n in 0..MAX_PER_BACKEND + 10 {
            idle.put(0, n, t0);
        }
        assert_eq!(idle.backends[0].lock().expect("lock").len(), MAX_PER_BACKEND);
        assert_eq!(idle.take(0, t0, |_| true), Some(MAX_PER_BACKEND + 9));
    }
}
