//! The backend set of one `[[http]]` listener: each backend's identity, its
//! live state (health, ejection, in-flight and counters as atomics, shared by
//! every worker thread), and the selector. Idle connections are per worker
//! (`idle`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

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
    /// Connection slots (`max_conns`); `None` = no limit.
    slots: Option<Arc<Semaphore>>,
    /// What the operator set ([`Admin`] as u8).
    admin: AtomicU8,
}

/// A backend's administrative state (`vipd backend drain|disable|enable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    /// In rotation.
    Enabled = 0,
    /// No new requests; those in flight finish; still counted as up by
    /// `track_http` (it is meant to come back).
    Draining = 1,
    /// No new requests, and counted as down (maintenance).
    Disabled = 2,
}

impl Admin {
    fn from_u8(v: u8) -> Admin {
        match v {
            1 => Admin::Draining,
            2 => Admin::Disabled,
            _ => Admin::Enabled,
        }
    }

    /// The word in `/status`.
    pub fn name(self) -> &'static str {
        match self {
            Admin::Enabled => "enabled",
            Admin::Draining => "draining",
            Admin::Disabled => "disabled",
        }
    }
}

impl Backend {
    /// What the operator set.
    pub fn admin(&self) -> Admin {
        Admin::from_u8(self.admin.load(Ordering::Relaxed))
    }

    fn has_free_slot(&self) -> bool {
        self.slots.as_ref().is_none_or(|s| s.available_permits() > 0)
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
    /// "enabled", "draining" or "disabled" (`vipd backend ...`).
    pub admin: &'static str,
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
    /// Workers serving this listener now.
    serving: AtomicUsize,
    /// HTTP/1 requests begun (first byte read) and not yet answered.
    begun: AtomicUsize,
    /// What trackers of this listener see, published on every change.
    health: watch::Sender<Health>,
}

/// How many of a listener's backends can take requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Available: healthy by the checks and not ejected; 0 while no
    /// worker serves the listener.
    pub healthy: usize,
    /// Configured.
    pub total: usize,
}

/// Counts one HTTP/1 request as begun while it lives.
#[derive(Debug)]
pub struct Begun<'a>(&'a Pool);

impl Drop for Begun<'_> {
    fn drop(&mut self) {
        self.0.begun.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one worker as serving a pool's listener while it lives.
#[derive(Debug)]
pub struct Serving(Arc<Pool>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.serving.fetch_sub(1, Ordering::Relaxed);
        self.0.publish_health();
    }
}

impl Pool {
    /// Builds the set from the config; every backend starts healthy.
    pub fn new(config: HttpConfig) -> Arc<Self> {
        let weights: Vec<u32> = config.backends.iter().map(|b| b.weight).collect();
        let backends: Vec<Backend> = config
            .backends
            .iter()
            .map(|b| Backend {
                address: b.address,
                active_healthy: AtomicBool::new(true),
                ejected: AtomicBool::new(false),
                ejected_at_ms: AtomicU64::new(0),
                consecutive_failures: AtomicU32::new(0),
                in_flight: AtomicU64::new(0),
                slots: (config.max_conns > 0).then(|| Arc::new(Semaphore::new(config.max_conns))),
                requests: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                admin: AtomicU8::new(Admin::Enabled as u8),
            })
            .collect();
        let total = backends.len();
        Arc::new(Pool {
            selector: Selector::new(config.balance, &weights),
            config,
            backends,
            epoch: Instant::now(),
            serving: AtomicUsize::new(0),
            begun: AtomicUsize::new(0),
            health: watch::channel(Health { healthy: 0, total }).0,
        })
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
        if !b.active_healthy.load(Ordering::Relaxed) || b.admin() == Admin::Disabled {
            return false;
        }
        if !b.ejected.load(Ordering::Relaxed) {
            return true;
        }
        if self.config.health.is_none() && self.cooldown_over(b) {
            if b.ejected.swap(false, Ordering::Relaxed) {
                self.publish_health();
            }
            return true;
        }
        false
    }

    /// Picks an available backend not in `tried`.
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        self.pick_where(tried, |_| true)
    }

    fn pick_where(&self, tried: &[usize], also: impl Fn(&Backend) -> bool) -> Option<usize> {
        self.selector.select(
            |i| {
                !tried.contains(&i)
                    && self.is_available(i)
                    && self.backends.get(i).is_some_and(|b| b.admin() == Admin::Enabled && also(b))
            },
            |i| self.backends.get(i).map_or(u64::MAX, |b| b.in_flight.load(Ordering::Relaxed)),
            &mut |n| fastrand::usize(..n.max(1)),
        )
    }

    /// Chooses the backend for a request's next attempt (not one of
    /// `tried`) and holds one of its connection slots (`max_conns`) until
    /// the guard drops: a backend with a free slot if there is one; when
    /// every available backend is full, the balancer's choice, once a slot
    /// of it frees, waiting up to `queue_timeout` (HAProxy queues the same
    /// way). Bounds the backend connections in use whatever the clients do
    /// (an HTTP/2 client's streams each need one).
    pub async fn admit(self: &Arc<Self>, tried: &[usize]) -> Result<(usize, InFlight), NotAdmitted> {
        if let Some(i) = self.pick_where(tried, Backend::has_free_slot) {
            let slots = self.backends.get(i).and_then(|b| b.slots.as_ref());
            match slots.map(|s| Arc::clone(s).try_acquire_owned()) {
                None => return Ok((i, self.start(i, None))),
                Some(Ok(slot)) => return Ok((i, self.start(i, Some(slot)))),
                Some(Err(_)) => {} // taken meanwhile: queue below
            }
        }
        let i = self.pick(tried).ok_or(NotAdmitted::NoBackend)?;
        let Some(slots) = self.backends.get(i).and_then(|b| b.slots.clone()) else {
            return Ok((i, self.start(i, None)));
        };
        match tokio::time::timeout(self.config.queue_timeout, slots.acquire_owned()).await {
            Ok(Ok(slot)) => Ok((i, self.start(i, Some(slot)))),
            _ => Err(NotAdmitted::QueueTimeout(i)),
        }
    }

    /// Counts a request to `i` as in flight until the guard drops.
    fn start(self: &Arc<Self>, i: usize, slot: Option<OwnedSemaphorePermit>) -> InFlight {
        if let Some(b) = self.backends.get(i) {
            b.in_flight.fetch_add(1, Ordering::Relaxed);
            b.requests.fetch_add(1, Ordering::Relaxed);
        }
        InFlight { pool: Arc::clone(self), index: i, _slot: slot }
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
            self.publish_health();
            return true;
        }
        false
    }

    /// Records an active check's verdict change for `i`.
    pub fn set_active_healthy(&self, i: usize, healthy: bool) {
        if let Some(b) = self.backends.get(i) {
            b.active_healthy.store(healthy, Ordering::Relaxed);
        }
        self.publish_health();
    }

    /// A check of `i` passed: an ejected backend whose cool-down is over
    /// returns. Returns true if it did.
    pub fn check_passed(&self, i: usize) -> bool {
        let Some(b) = self.backends.get(i) else { return false };
        if b.ejected.load(Ordering::Relaxed) && self.cooldown_over(b) {
            b.consecutive_failures.store(0, Ordering::Relaxed);
            b.ejected.store(false, Ordering::Relaxed);
            self.publish_health();
            return true;
        }
        false
    }

    /// A worker starts serving this listener; it counts until the guard drops.
    pub fn serving(self: &Arc<Self>) -> Serving {
        self.serving.fetch_add(1, Ordering::Relaxed);
        self.publish_health();
        Serving(Arc::clone(self))
    }

    /// Backends that can take requests now; 0 with no worker serving.
    /// Changes nothing (an ejected backend past its cool-down counts as
    /// back without being taken back here).
    pub fn health(&self) -> Health {
        let total = self.backends.len();
        if self.serving.load(Ordering::Relaxed) == 0 {
            return Health { healthy: 0, total };
        }
        // A disabled backend is down for track_http too; a draining one is not.
        let available = |b: &Backend| {
            b.admin() != Admin::Disabled
                && b.active_healthy.load(Ordering::Relaxed)
                && (!b.ejected.load(Ordering::Relaxed) || (self.config.health.is_none() && self.cooldown_over(b)))
        };
        Health { healthy: self.backends.iter().filter(|b| available(b)).count(), total }
    }

    /// Follows [`Pool::health`]: every change is published at once.
    pub fn watch_health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    /// Publishes [`Pool::health`] if it changed. Also call it now and then:
    /// without active checks an ejected backend returns only when looked at.
    pub fn publish_health(&self) {
        // Computed under the channel's lock: two publishers cannot leave an
        // older value in place of a newer one.
        self.health.send_if_modified(|h| {
            let now = self.health();
            std::mem::replace(h, now) != now
        });
    }

    /// Requests being served by any backend of this pool.
    pub fn in_flight(&self) -> u64 {
        self.backends.iter().map(|b| b.in_flight.load(Ordering::Relaxed)).sum()
    }

    /// Counts an HTTP/1 request from its first byte until the guard drops
    /// (a borrow: no reference count touched per request).
    pub fn request_begun(&self) -> Begun<'_> {
        self.begun.fetch_add(1, Ordering::Relaxed);
        Begun(self)
    }

    /// Requests begun and not yet answered, or in flight to a backend: what
    /// a resigning master waits for before it removes its VIPs.
    pub fn busy(&self) -> bool {
        self.begun.load(Ordering::Relaxed) > 0 || self.in_flight() > 0
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
                    admin: b.admin().name(),
                })
                .collect(),
        }
    }

    /// Sets backend `address`'s administrative state; says what changed.
    pub fn set_admin(&self, address: SocketAddr, admin: Admin) -> Result<String, String> {
        let b = self
            .backends
            .iter()
            .find(|b| b.address == address)
            .ok_or_else(|| format!("listener {:?} has no backend {address}", self.config.name))?;
        let before = Admin::from_u8(b.admin.swap(admin as u8, Ordering::Relaxed));
        // Disabled counts as down for track_http.
        self.publish_health();
        let in_flight = b.in_flight.load(Ordering::Relaxed);
        Ok(format!("{} {address}: {} -> {} ({in_flight} in flight)", self.config.name, before.name(), admin.name()))
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The cool-down, for log messages.
    pub fn eject_cooldown(&self) -> Duration {
        self.config.eject_cooldown
    }
}

/// The answer when [`NotAdmitted::QueueTimeout`] ends a request.
pub const QUEUE_TIMEOUT: (u16, &str, &str) = (503, "Service Unavailable", "backends busy: queue timed out\n");

/// Why [`Pool::admit`] found no backend for an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAdmitted {
    /// None is available (all down, ejected, or tried).
    NoBackend,
    /// Backend `0` stayed at `max_conns` for the whole `queue_timeout`.
    QueueTimeout(usize),
}

/// Keeps a backend's in-flight count up, and one of its connection slots
/// held, while a request (and its response body) is being served.
#[derive(Debug)]
pub struct InFlight {
    pool: Arc<Pool>,
    index: usize,
    _slot: Option<OwnedSemaphorePermit>,
}

impl InFlight {
    /// Gives the backend connection slot back while the request still
    /// counts as in flight: an upgraded connection (WebSocket) may live for
    /// hours and must not hold `max_conns` from ordinary requests.
    pub fn release_slot(&mut self) {
        self._slot = None;
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(extra: &str) -> Arc<Pool> {
        let text = format!(
            "[[http]]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"192.0.2.21:80\", \"192.0.2.22:80\"]\n{extra}\n"
        );
        let config = crate::config::parse(&text, std::path::Path::new("t.toml")).expect("valid config");
        Pool::new(config.http[0].clone())
    }

    #[tokio::test(start_paused = true)]
    async fn admission_prefers_a_backend_with_a_free_slot_then_queues() {
        let p = pool("max_conns = 1\nqueue_timeout = \"2s\"\nbalance = \"round_robin\"");
        let (first, a) = p.admit(&[]).await.expect("admitted");
        // The other backend has room: taken whatever the rotation says.
        let (second, b) = p.admit(&[]).await.expect("admitted");
        assert_ne!(first, second);
        // Both full: the next waits for a slot, and gets it when one frees.
        let waiting = tokio::spawn({
            let p = Arc::clone(&p);
            async move { p.admit(&[]).await.map(|(i, _)| i) }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        drop(b);
        assert_eq!(waiting.await.expect("task"), Ok(second));
        // Nobody frees a slot: past queue_timeout, refused.
        let (_, c) = p.admit(&[]).await.expect("admitted");
        assert!(matches!(p.admit(&[]).await, Err(NotAdmitted::QueueTimeout(_))));
        assert_eq!(p.in_flight(), 2);
        drop((a, c));
        assert_eq!(p.in_flight(), 0);
        // A backend already tried is not offered again.
        assert_eq!(p.admit(&[0, 1]).await.map(|(i, _)| i), Err(NotAdmitted::NoBackend));
    }

    #[tokio::test(start_paused = true)]
    async fn max_conns_zero_is_no_limit() {
        let p = pool("max_conns = 0");
        let mut held = Vec::new();
        for _ in 0..5000 {
            held.push(p.admit(&[]).await.expect("admitted"));
        }
        assert_eq!(p.in_flight(), 5000);
    }
}
