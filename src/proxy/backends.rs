//! The backend set of one `[[http]]` listener: each backend's identity, its
//! live state (health, ejection, in-flight and counters as atomics, shared by
//! every worker thread), and the selector. Idle connections are per worker
//! (`idle`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::balance::Selector;
use crate::config::HttpConfig;

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

    /// Requests being served by any backend of this pool.
    pub fn in_flight(&self) -> u64 {
        self.backends.iter().map(|b| b.in_flight.load(Ordering::Relaxed)).sum()
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
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(b) = self.pool.backends.get(self.index) {
            b.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
