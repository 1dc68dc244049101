//! The backend set of one `[[http]]` listener: each backend's identity, its
//! live state (health, ejection, in-flight and counters as atomics, shared by
//! every worker thread), its idle upstream connections, and the selector.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::balance::Selector;
use super::h1;
pub use super::upstream::Upstream;
use crate::config::HttpConfig;

/// Idle upstream connections kept per backend; more are closed.
const MAX_IDLE_PER_BACKEND: usize = 512;

/// One app server.
#[derive(Debug)]
pub struct Backend {
    /// Where it listens.
    pub address: SocketAddr,
    /// Active checks say it is up (true until checks say otherwise).
    active_healthy: AtomicBool,
    /// Passively ejected after consecutive failures.
    ejected: AtomicBool,
    /// When it was ejected, in ms since the pool's epoch.
    ejected_at_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    in_flight: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Idle connections for HTTP/2 clients' requests (hyper's client).
    idle: Idle<Upstream>,
    /// Idle connections for HTTP/1 clients' requests.
    idle_h1: Idle<h1::Upstream>,
}

/// Idle connections of one kind to one backend, newest last.
#[derive(Debug)]
struct Idle<T>(Mutex<Vec<T>>);

impl<T> Idle<T> {
    fn new() -> Self {
        Idle(Mutex::new(Vec::new()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest (warmest) connection that is still `usable`.
    fn take(&self, usable: impl Fn(&T) -> bool) -> Option<T> {
        let mut idle = self.lock();
        while let Some(c) = idle.pop() {
            if usable(&c) {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, conn: T) {
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push(conn);
        }
    }
}

/// `/status` view of one backend.
#[derive(Debug, Clone, Serialize)]
pub struct BackendSnapshot {
    /// Where it listens.
    pub address: SocketAddr,
    /// Eligible for new requests.
    pub healthy: bool,
    /// Out because of consecutive failures (a part of `healthy`).
    pub ejected: bool,
    /// Requests being served now.
    pub in_flight: u64,
    /// Requests sent to it.
    pub requests: u64,
    /// Connect errors, broken connections, timeouts and 5xx answers.
    pub failures: u64,
}

/// `/status` view of one listener.
#[derive(Debug, Clone, Serialize)]
pub struct PoolSnapshot {
    /// Listener name.
    pub name: String,
    /// Listen address.
    pub listen: SocketAddr,
    /// Selection algorithm.
    pub balance: &'static str,
    /// Its backends.
    pub backends: Vec<BackendSnapshot>,
}

/// A listener's backends and how to choose among them.
#[derive(Debug)]
pub struct Pool {
    /// The listener's configuration.
    pub config: HttpConfig,
    backends: Vec<Backend>,
    selector: Selector,
    epoch: Instant,
}

impl Pool {
    /// Builds the set from the config; every backend starts healthy.
    pub fn new(config: HttpConfig) -> Arc<Self> {
        let weights: Vec<u32> = config.backends.iter().map(|b| b.weight).collect();
        let backends = config
            .backends
            .iter()
            .map(|b| Backend {
                address: b.address,
                active_healthy: AtomicBool::new(true),
                ejected: AtomicBool::new(false),
                ejected_at_ms: AtomicU64::new(0),
                consecutive_failures: AtomicU32::new(0),
                in_flight: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                idle: Idle::new(),
                idle_h1: Idle::new(),
            })
            .collect();
        Arc::new(Pool { selector: Selector::new(config.balance, &weights), config, backends, epoch: Instant::now() })
    }

    /// The backends, in config order.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn cooldown_over(&self, b: &Backend) -> bool {
        self.now_ms() >= b.ejected_at_ms.load(Ordering::Relaxed) + self.config.eject_cooldown.as_millis() as u64
    }

    /// Whether backend `i` may get new requests. Without active checks an
    /// ejected backend comes back on its own after the cool-down; with
    /// them, it needs a passing check too (see [`Pool::check_passed`]).
    pub fn is_available(&self, i: usize) -> bool {
        let Some(b) = self.backends.get(i) else { return false };
        if !b.active_healthy.load(Ordering::Relaxed) {
            return false;
        }
        if !b.ejected.load(Ordering::Relaxed) {
            return true;
        }
        if self.config.health.is_none() && self.cooldown_over(b) {
            b.ejected.store(false, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Picks an available backend not in `tried`.
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        self.selector.select(
            |i| !tried.contains(&i) && self.is_available(i),
            |i| self.backends.get(i).map_or(u64::MAX, |b| b.in_flight.load(Ordering::Relaxed)),
            &mut |n| fastrand::usize(..n.max(1)),
        )
    }

    /// Counts a request to `i` as in flight until the guard drops.
    pub fn start(self: &Arc<Self>, i: usize) -> InFlight {
        if let Some(b) = self.backends.get(i) {
            b.in_flight.fetch_add(1, Ordering::Relaxed);
            b.requests.fetch_add(1, Ordering::Relaxed);
        }
        InFlight { pool: Arc::clone(self), index: i }
    }

    /// A request to `i` got an answer that was not a 5xx.
    pub fn succeeded(&self, i: usize) {
        if let Some(b) = self.backends.get(i) {
            if b.consecutive_failures.load(Ordering::Relaxed) != 0 {
                b.consecutive_failures.store(0, Ordering::Relaxed);
            }
        }
    }

    /// A request to `i` failed (connect error, broken connection, timeout,
    /// 5xx). Returns true when this failure ejected the backend.
    pub fn failed(&self, i: usize) -> bool {
        let Some(b) = self.backends.get(i) else { return false };
        b.failures.fetch_add(1, Ordering::Relaxed);
        let streak = b.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let limit = self.config.eject_after;
        if limit != 0 && streak >= limit && !b.ejected.swap(true, Ordering::Relaxed) {
            b.ejected_at_ms.store(self.now_ms(), Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Records an active check's verdict change for `i`.
    pub fn set_active_healthy(&self, i: usize, healthy: bool) {
        if let Some(b) = self.backends.get(i) {
            b.active_healthy.store(healthy, Ordering::Relaxed);
        }
    }

    /// A check of `i` passed: an ejected backend whose cool-down is over
    /// returns. Returns true if it did.
    pub fn check_passed(&self, i: usize) -> bool {
        let Some(b) = self.backends.get(i) else { return false };
        if b.ejected.load(Ordering::Relaxed) && self.cooldown_over(b) {
            b.consecutive_failures.store(0, Ordering::Relaxed);
            b.ejected.store(false, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// An idle connection to `i` for an HTTP/2 client's request.
    pub fn take_idle(&self, i: usize) -> Option<Upstream> {
        self.backends.get(i)?.idle.take(|c| !c.is_closed())
    }

    /// Returns a connection whose response has been read to the end.
    pub fn put_idle(&self, i: usize, conn: Upstream) {
        if let (false, Some(b)) = (conn.is_closed(), self.backends.get(i)) {
            b.idle.put(conn);
        }
    }

    /// An idle connection to `i` for an HTTP/1 client's request.
    pub fn take_idle_h1(&self, i: usize) -> Option<h1::Upstream> {
        self.backends.get(i)?.idle_h1.take(h1::Upstream::is_usable)
    }

    /// Returns an HTTP/1 connection whose exchange finished cleanly.
    pub fn put_idle_h1(&self, i: usize, conn: h1::Upstream) {
        if let Some(b) = self.backends.get(i) {
            b.idle_h1.put(conn);
        }
    }

    /// Requests being served by any backend of this pool.
    pub fn in_flight(&self) -> u64 {
        self.backends.iter().map(|b| b.in_flight.load(Ordering::Relaxed)).sum()
    }

    /// Drops every idle connection (on shutdown).
    pub fn close_idle(&self) {
        for b in &self.backends {
            b.idle.lock().clear();
            b.idle_h1.lock().clear();
        }
    }

    /// For `/status`.
    pub fn snapshot(&self) -> PoolSnapshot {
        PoolSnapshot {
            name: self.config.name.clone(),
            listen: self.config.listen,
            balance: self.config.balance.name(),
            backends: self
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| BackendSnapshot {
                    address: b.address,
                    healthy: self.is_available(i),
                    ejected: b.ejected.load(Ordering::Relaxed),
                    in_flight: b.in_flight.load(Ordering::Relaxed),
                    requests: b.requests.load(Ordering::Relaxed),
                    failures: b.failures.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }

    /// The cool-down, for log messages.
    pub fn eject_cooldown(&self) -> Duration {
        self.config.eject_cooldown
    }
}

/// Keeps a backend's in-flight count up while a request (and its response
/// body) is being served.
#[derive(Debug)]
pub struct InFlight {
    pool: Arc<Pool>,
    index: usize,
}

impl InFlight {
    /// The backend this request went to.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The pool it belongs to.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(b) = self.pool.backends.get(self.index) {
            b.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
