//! The backends of `[[http]]` listeners. A [`Pool`] is one generation of a
//! listener's set: its configuration, its backends and the selector over
//! them, immutable once built. A [`ListenerPool`] is the listener across
//! reloads: it holds the current generation and swaps it whole, while each
//! [`Backend`] that stays (same address) is carried into the new generation
//! with its health, ejection, counters and operator state. Requests keep
//! the generation they started with. [`HttpListeners`] is the running set
//! of listeners that `/status`, the control socket and the trackers look
//! up by name. Idle connections are per worker (`idle`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use super::attempt::Blame;
use super::balance::Selector;
use super::meter::{BackendMeter, ListenerMeter};
use super::tls::{BackendTls, Prepared, TlsServer, TlsSnapshot};
use crate::proxy::params::HttpConfig;

/// One app server.
#[derive(Debug)]
pub struct Backend {
    /// Where it listens.
    pub address: SocketAddr,
    /// Active checks say it is up (true until checks say otherwise).
    active_healthy: AtomicBool,
    /// Passively ejected after consecutive failures.
    ejected: AtomicBool,
    /// When it was ejected, in ms since the listener's epoch.
    ejected_at_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    in_flight: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Connection slots (`max_conns`); `None` = no limit.
    slots: Option<Arc<Semaphore>>,
    /// What the `max_conns` of `slots` is (0 = none).
    max_conns: usize,
    /// What the operator set ([`Admin`] as u8).
    admin: AtomicU8,
    /// For `/metrics`.
    meter: Arc<BackendMeter>,
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
    fn new(address: SocketAddr, max_conns: usize) -> Backend {
        Backend {
            address,
            active_healthy: AtomicBool::new(true),
            ejected: AtomicBool::new(false),
            ejected_at_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            slots: (max_conns > 0).then(|| Arc::new(Semaphore::new(max_conns))),
            max_conns,
            admin: AtomicU8::new(Admin::Enabled as u8),
            meter: Arc::default(),
        }
    }

    /// The same backend with other connection slots (a reload changed
    /// `max_conns`): its health, ejection, counters and operator state go
    /// along; requests in flight keep counting on the old one.
    fn with_max_conns(&self, max_conns: usize) -> Backend {
        let copy = Backend::new(self.address, max_conns);
        let load32 = |a: &AtomicU32| AtomicU32::new(a.load(Ordering::Relaxed));
        let load64 = |a: &AtomicU64| AtomicU64::new(a.load(Ordering::Relaxed));
        Backend {
            active_healthy: AtomicBool::new(self.active_healthy.load(Ordering::Relaxed)),
            ejected: AtomicBool::new(self.ejected.load(Ordering::Relaxed)),
            ejected_at_ms: load64(&self.ejected_at_ms),
            consecutive_failures: load32(&self.consecutive_failures),
            requests: load64(&self.requests),
            failures: load64(&self.failures),
            admin: AtomicU8::new(self.admin.load(Ordering::Relaxed)),
            meter: Arc::clone(&self.meter),
            ..copy
        }
    }

    /// Its meters, for `/metrics`.
    pub fn meter(&self) -> &BackendMeter {
        &self.meter
    }

    /// What the operator set.
    pub fn admin(&self) -> Admin {
        Admin::from_u8(self.admin.load(Ordering::Relaxed))
    }

    /// What the active checks say now.
    pub fn is_active_healthy(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
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
    /// Its share (`weight`).
    pub weight: u32,
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
    /// Reloads that changed this listener since it started (0 = as started).
    pub generation: u64,
    /// Its backends.
    pub backends: Vec<BackendSnapshot>,
    /// Handshakes and certificates, on a TLS listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSnapshot>,
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

/// The current generation's backends and how their health is judged: what
/// [`Shared::health`] counts, whichever generation asks.
#[derive(Debug)]
struct Members {
    backends: Vec<Arc<Backend>>,
    active_checks: bool,
    eject_cooldown: Duration,
}

/// What one listener's generations share.
#[derive(Debug)]
struct Shared {
    epoch: Instant,
    /// Workers serving this listener now.
    serving: AtomicUsize,
    /// HTTP/1 requests begun (first byte read) and not yet answered.
    begun: AtomicUsize,
    /// What trackers of this listener see, published on every change.
    health: watch::Sender<Health>,
    members: RwLock<Members>,
    meter: Arc<ListenerMeter>,
    /// How backends are reached over TLS (`backend_tls`), if they are.
    backend_tls: RwLock<Option<Arc<BackendTls>>>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn cooldown_over(&self, b: &Backend, cooldown: Duration) -> bool {
        self.now_ms() >= b.ejected_at_ms.load(Ordering::Relaxed) + cooldown.as_millis() as u64
    }

    /// Backends of the current generation that can take requests now; 0
    /// with no worker serving. Changes nothing (an ejected backend past its
    /// cool-down counts as back without being taken back here).
    fn health(&self) -> Health {
        let m = self.members.read().unwrap_or_else(|p| p.into_inner());
        let total = m.backends.len();
        if self.serving.load(Ordering::Relaxed) == 0 {
            return Health { healthy: 0, total };
        }
        // A disabled backend is down for track_http too; a draining one is not.
        let available = |b: &Backend| {
            b.admin() != Admin::Disabled
                && b.active_healthy.load(Ordering::Relaxed)
                && (!b.ejected.load(Ordering::Relaxed) || (!m.active_checks && self.cooldown_over(b, m.eject_cooldown)))
        };
        Health { healthy: m.backends.iter().filter(|b| available(b)).count(), total }
    }

    /// Publishes [`Shared::health`] if it changed.
    fn publish_health(&self) {
        // Computed under the channel's lock: two publishers cannot leave an
        // older value in place of a newer one.
        self.health.send_if_modified(|h| {
            let now = self.health();
            std::mem::replace(h, now) != now
        });
    }
}

/// A listener's backends and how to choose among them: one generation.
#[derive(Debug)]
pub struct Pool {
    /// The listener's configuration.
    pub config: HttpConfig,
    backends: Vec<Arc<Backend>>,
    selector: Selector,
    /// Which reload built it (0 = the start).
    generation: u64,
    shared: Arc<Shared>,
}

/// Counts one HTTP/1 request as begun while it lives.
#[derive(Debug)]
pub struct Begun<'a>(&'a Shared);

impl Drop for Begun<'_> {
    fn drop(&mut self) {
        self.0.begun.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one worker as serving a listener while it lives.
#[derive(Debug)]
pub struct Serving(Arc<Shared>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.serving.fetch_sub(1, Ordering::Relaxed);
        self.0.publish_health();
    }
}

impl Pool {
    /// Builds a listener's first generation from its config; every backend
    /// starts healthy.
    pub fn new(config: HttpConfig) -> Arc<Self> {
        let backends: Vec<Arc<Backend>> =
            config.backends.iter().map(|b| Arc::new(Backend::new(b.address, config.max_conns))).collect();
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            serving: AtomicUsize::new(0),
            begun: AtomicUsize::new(0),
            health: watch::channel(Health { healthy: 0, total: backends.len() }).0,
            members: RwLock::new(Members {
                backends: backends.clone(),
                active_checks: config.health.is_some(),
                eject_cooldown: config.eject_cooldown,
            }),
            meter: Arc::default(),
            backend_tls: RwLock::new(None),
        });
        Arc::new(Pool::build(config, backends, 0, shared))
    }

    fn build(config: HttpConfig, backends: Vec<Arc<Backend>>, generation: u64, shared: Arc<Shared>) -> Pool {
        let weights: Vec<u32> = config.backends.iter().map(|b| b.weight).collect();
        Pool { selector: Selector::new(config.balance, &weights), config, backends, generation, shared }
    }

    /// The next generation from `config`: a backend whose address stays is
    /// carried over (the same one, or its state on new slots when
    /// `max_conns` changed); a new one starts healthy.
    fn succeed(&self, config: HttpConfig) -> Pool {
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|c| match self.backends.iter().find(|b| b.address == c.address) {
                Some(b) if b.max_conns == config.max_conns => Arc::clone(b),
                Some(b) => Arc::new(b.with_max_conns(config.max_conns)),
                None => Arc::new(Backend::new(c.address, config.max_conns)),
            })
            .collect();
        // Without active checks nothing would ever pass a check again: a
        // backend they had marked down is up again.
        if config.health.is_none() {
            for b in &backends {
                b.active_healthy.store(true, Ordering::Relaxed);
            }
        }
        Pool::build(config, backends, self.generation + 1, Arc::clone(&self.shared))
    }

    /// The backends, in config order.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// How its backends are reached over TLS, if they are.
    pub fn backend_tls(&self) -> Option<Arc<BackendTls>> {
        self.shared.backend_tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn cooldown_over(&self, b: &Backend) -> bool {
        self.shared.cooldown_over(b, self.config.eject_cooldown)
    }

    /// Whether backend `i` may get new requests. Without active checks an
    /// ejected backend comes back on its own after the cool-down; with
    /// them, it needs a passing check too (see [`ListenerPool::check_passed`]).
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
                self.shared.publish_health();
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
    pub async fn admit(&self, tried: &[usize]) -> Result<(usize, InFlight), NotAdmitted> {
        if let Some(admitted) = self.admit_now(tried) {
            return admitted;
        }
        let i = self.pick(tried).ok_or(NotAdmitted::NoBackend)?;
        let Some(slots) = self.backends.get(i).and_then(|b| b.slots.clone()) else {
            return self.start(i, None);
        };
        match tokio::time::timeout(self.config.queue_timeout, slots.acquire_owned()).await {
            Ok(Ok(slot)) => self.start(i, Some(slot)),
            _ => Err(NotAdmitted::QueueTimeout(i)),
        }
    }

    /// [`Self::admit`] where it needs no wait; `None` where it would queue.
    pub fn admit_now(&self, tried: &[usize]) -> Option<Result<(usize, InFlight), NotAdmitted>> {
        let i = self.pick_where(tried, Backend::has_free_slot)?;
        let slots = self.backends.get(i).and_then(|b| b.slots.as_ref());
        match slots.map(|s| Arc::clone(s).try_acquire_owned()) {
            None => Some(self.start(i, None)),
            Some(Ok(slot)) => Some(self.start(i, Some(slot))),
            Some(Err(_)) => None, // taken meanwhile: queue
        }
    }

    /// Counts a request to `i` as in flight until the guard drops.
    fn start(&self, i: usize, slot: Option<OwnedSemaphorePermit>) -> Result<(usize, InFlight), NotAdmitted> {
        let b = self.backends.get(i).ok_or(NotAdmitted::NoBackend)?;
        b.in_flight.fetch_add(1, Ordering::Relaxed);
        b.requests.fetch_add(1, Ordering::Relaxed);
        Ok((i, InFlight { backend: Arc::clone(b), _slot: slot }))
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
            b.ejected_at_ms.store(self.shared.now_ms(), Ordering::Relaxed);
            self.shared.publish_health();
            return true;
        }
        false
    }

    /// Requests being served by any backend of this generation.
    pub fn in_flight(&self) -> u64 {
        self.backends.iter().map(|b| b.in_flight.load(Ordering::Relaxed)).sum()
    }

    /// Counts an HTTP/1 request from its first byte until the guard drops
    /// (a borrow: no reference count touched per request).
    pub fn request_begun(&self) -> Begun<'_> {
        self.shared.begun.fetch_add(1, Ordering::Relaxed);
        Begun(&self.shared)
    }

    /// Applies what an attempt's outcome says of backend `i` to its eject
    /// streak, and says so when that ejects it.
    pub fn blame(&self, i: usize, blame: Blame) {
        match blame {
            Blame::Failed => {
                if self.failed(i) {
                    let backend = self.backends.get(i).map(|b| b.address);
                    warn!(?backend, cooldown = ?self.config.eject_cooldown, "backend ejected after consecutive failures");
                }
            }
            Blame::Succeeded => self.succeeded(i),
            Blame::Neither => {}
        }
    }

    /// The cool-down, for log messages.
    pub fn eject_cooldown(&self) -> Duration {
        self.config.eject_cooldown
    }

    /// The listener's meters, for `/metrics`.
    pub fn meter(&self) -> &Arc<ListenerMeter> {
        &self.shared.meter
    }
}

/// One listener across reloads: the current [`Pool`] generation, swapped
/// whole by [`ListenerPool::replace`].
#[derive(Debug)]
pub struct ListenerPool {
    name: String,
    current: RwLock<Arc<Pool>>,
    /// The current generation's number, read on every request to see
    /// whether the one held is still current (no lock on that path).
    generation: AtomicU64,
    /// Told each new generation (the health checks follow it).
    changed: watch::Sender<u64>,
    shared: Arc<Shared>,
    /// TLS termination, when configured; read at each accept.
    tls: RwLock<Option<Arc<TlsServer>>>,
}

impl ListenerPool {
    /// A listener as its config says, every backend healthy.
    pub fn new(config: HttpConfig) -> Arc<ListenerPool> {
        let first = Pool::new(config);
        Arc::new(ListenerPool {
            name: first.config.name.clone(),
            shared: Arc::clone(&first.shared),
            current: RwLock::new(first),
            generation: AtomicU64::new(0),
            changed: watch::channel(0).0,
            tls: RwLock::new(None),
        })
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The listener's meters, for `/metrics`.
    pub fn meter(&self) -> &Arc<ListenerMeter> {
        &self.shared.meter
    }

    /// The current generation.
    pub fn current(&self) -> Arc<Pool> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces `held` by the current generation if a reload made a newer
    /// one (one atomic load when none did).
    pub fn refresh(&self, held: &mut Arc<Pool>) {
        if held.generation != self.generation.load(Ordering::Acquire) {
            *held = self.current();
        }
    }

    /// Follows the generation number (see [`ListenerPool::replace`]).
    pub fn watch_generation(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Makes `config` the listener's settings: the backend set, weights,
    /// balance and health settings change at once for new requests, while
    /// requests in flight finish on the generation they started with.
    /// Backends that stay keep their state. Says what changed; `None` when
    /// nothing did.
    pub fn replace(&self, config: HttpConfig) -> Option<String> {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let what = describe_change(&current.config, &config)?;
        let next = Arc::new(current.succeed(config));
        {
            let mut m = self.shared.members.write().unwrap_or_else(|p| p.into_inner());
            *m = Members {
                backends: next.backends.clone(),
                active_checks: next.config.health.is_some(),
                eject_cooldown: next.config.eject_cooldown,
            };
        }
        let generation = next.generation;
        *current = next;
        drop(current);
        self.generation.store(generation, Ordering::Release);
        self.changed.send_replace(generation);
        self.shared.publish_health();
        Some(format!("http {:?}: {what}", self.name))
    }

    /// Serves TLS with the certificates `prepared` holds from the next
    /// connection on (keeping the session keys of the certificates it
    /// served before), or plain HTTP without; and reaches the backends
    /// over TLS from the next backend connection on if it says so.
    /// Connections already open go on as they are.
    pub fn set_tls(&self, prepared: Prepared) -> Result<(), String> {
        {
            let mut tls = self.tls.write().unwrap_or_else(|p| p.into_inner());
            match (prepared.certificates, tls.as_ref()) {
                (Some(l), Some(running)) => running.install(l)?,
                (Some(l), None) => *tls = Some(TlsServer::new(l)?),
                (None, _) => *tls = None,
            }
        }
        *self.shared.backend_tls.write().unwrap_or_else(|p| p.into_inner()) = prepared.backends;
        Ok(())
    }

    /// Its TLS, if it terminates TLS.
    pub fn tls(&self) -> Option<Arc<TlsServer>> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A worker starts serving this listener; it counts until the guard drops.
    pub fn serving(&self) -> Serving {
        self.shared.serving.fetch_add(1, Ordering::Relaxed);
        self.shared.publish_health();
        Serving(Arc::clone(&self.shared))
    }

    /// See [`Shared::health`].
    pub fn health(&self) -> Health {
        self.shared.health()
    }

    /// Follows [`ListenerPool::health`]: every change is published at once.
    pub fn watch_health(&self) -> watch::Receiver<Health> {
        self.shared.health.subscribe()
    }

    /// Publishes the health if it changed. Also call it now and then:
    /// without active checks an ejected backend returns only when looked at.
    pub fn publish_health(&self) {
        self.shared.publish_health();
    }

    /// Records an active check's verdict change for `backend`.
    pub fn set_active_healthy(&self, backend: &Backend, healthy: bool) {
        backend.active_healthy.store(healthy, Ordering::Relaxed);
        self.shared.publish_health();
    }

    /// A check of `backend` passed: ejected and past its cool-down, it
    /// returns. Returns true if it did.
    pub fn check_passed(&self, backend: &Backend) -> bool {
        let cooldown = self.shared.members.read().unwrap_or_else(|p| p.into_inner()).eject_cooldown;
        if backend.ejected.load(Ordering::Relaxed) && self.shared.cooldown_over(backend, cooldown) {
            backend.consecutive_failures.store(0, Ordering::Relaxed);
            backend.ejected.store(false, Ordering::Relaxed);
            self.shared.publish_health();
            return true;
        }
        false
    }

    /// Requests begun and not yet answered, or in flight to a backend of the
    /// current generation: what a resigning master waits for before it
    /// removes its VIPs.
    pub fn busy(&self) -> bool {
        self.shared.begun.load(Ordering::Relaxed) > 0 || self.current().in_flight() > 0
    }

    /// Sets backend `address`'s administrative state; says what changed.
    /// The state stays with the backend across reloads that keep it.
    pub fn set_admin(&self, address: SocketAddr, admin: Admin) -> Result<String, String> {
        let pool = self.current();
        let b = pool
            .backends
            .iter()
            .find(|b| b.address == address)
            .ok_or_else(|| format!("listener {:?} has no backend {address}", self.name))?;
        let before = Admin::from_u8(b.admin.swap(admin as u8, Ordering::Relaxed));
        // Disabled counts as down for track_http.
        self.shared.publish_health();
        let in_flight = b.in_flight.load(Ordering::Relaxed);
        Ok(format!("{} {address}: {} -> {} ({in_flight} in flight)", self.name, before.name(), admin.name()))
    }

    /// For `/status`.
    pub fn snapshot(&self) -> PoolSnapshot {
        let pool = self.current();
        PoolSnapshot {
            name: self.name.clone(),
            listen: pool.config.listen,
            balance: pool.config.balance.name(),
            generation: pool.generation,
            backends: pool
                .backends
                .iter()
                .zip(&pool.config.backends)
                .enumerate()
                .map(|(i, (b, c))| BackendSnapshot {
                    address: b.address,
                    weight: c.weight,
                    healthy: pool.is_available(i),
                    ejected: b.ejected.load(Ordering::Relaxed),
                    in_flight: b.in_flight.load(Ordering::Relaxed),
                    requests: b.requests.load(Ordering::Relaxed),
                    failures: b.failures.load(Ordering::Relaxed),
                    admin: b.admin().name(),
                })
                .collect(),
            tls: self.tls().map(|t| t.snapshot()),
        }
    }
}

/// What a reload changes in a listener, in words; `None` for nothing.
fn describe_change(old: &HttpConfig, new: &HttpConfig) -> Option<String> {
    if old == new {
        return None;
    }
    let mut parts = Vec::new();
    for b in &new.backends {
        match old.backends.iter().find(|o| o.address == b.address) {
            None => parts.push(format!("+{} (weight {})", b.address, b.weight)),
            Some(o) if o.weight != b.weight => parts.push(format!("{} weight {} -> {}", b.address, o.weight, b.weight)),
            Some(_) => {}
        }
    }
    for o in &old.backends {
        if !new.backends.iter().any(|b| b.address == o.address) {
            parts.push(format!("-{}", o.address));
        }
    }
    if old.balance != new.balance {
        parts.push(format!("balance {} -> {}", old.balance.name(), new.balance.name()));
    }
    if old.health != new.health {
        parts.push("health checks".into());
    }
    if old.listen != new.listen {
        parts.push(format!("listen {} -> {}", old.listen, new.listen));
    }
    match (&old.tls, &new.tls) {
        (None, Some(_)) => parts.push("TLS on".into()),
        (Some(_), None) => parts.push("TLS off".into()),
        (Some(a), Some(b)) if a != b => parts.push("TLS settings".into()),
        _ => {}
    }
    let same_apart_from_those = HttpConfig {
        backends: new.backends.clone(),
        balance: new.balance,
        health: new.health.clone(),
        listen: new.listen,
        tls: new.tls.clone(),
        ..old.clone()
    };
    if same_apart_from_those != *new || (parts.is_empty() && old.backends != new.backends) {
        parts.push("settings".into());
    }
    Some(parts.join(", "))
}

/// The running listeners, by name: where `/status`, the control socket,
/// the drain gate and the trackers find them, also after a reload added or
/// removed some.
#[derive(Debug, Default)]
pub struct HttpListeners(RwLock<Vec<Arc<ListenerPool>>>);

impl HttpListeners {
    /// All of them, in config order.
    pub fn list(&self) -> Vec<Arc<ListenerPool>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The one named `name`.
    pub fn find(&self, name: &str) -> Option<Arc<ListenerPool>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).iter().find(|l| l.name == name).cloned()
    }

    /// Replaces the set (a start or a reload).
    pub fn set(&self, listeners: Vec<Arc<ListenerPool>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = listeners;
    }

    /// Any request in flight on any listener (see [`ListenerPool::busy`]).
    pub fn busy(&self) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).iter().any(|l| l.busy())
    }
}

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
    backend: Arc<Backend>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl InFlight {
    /// Gives the backend connection slot back while the request still
    /// counts as in flight: an upgraded connection (WebSocket) may live for
    /// hours and must not hold `max_conns` from ordinary requests.
    pub fn release_slot(&mut self) {
        self._slot = None;
    }

    /// Where the backend this request went to listens.
    pub fn address(&self) -> SocketAddr {
        self.backend.address
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
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
    fn config(backends: &str, extra: &str) -> HttpConfig {
        let text = format!("[[http]]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\nbackends = [{backends}]\n{extra}\n");
        crate::config::parse(&text, std::path::Path::new("t.toml")).expect("valid config").http[0].clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_carries_backends_that_stay_and_leaves_requests_on_their_generation() {
        let both = "\"192.0.2.21:80\", \"192.0.2.22:80\"";
        let l = ListenerPool::new(config(both, "[http.health]\npath = \"/h\"\neject_after = 1"));
        let _serving = l.serving();
        let mut held = l.current();
        // .22 fails once (ejected), .21 is drained by the operator, and a
        // request to .21 is in flight on generation 0.
        let (i, in_flight) = held.admit(&[]).await.expect("admitted");
        let at = |p: &Pool, addr: &str| p.backends().iter().position(|b| b.address.to_string() == addr);
        let other = 1 - i;
        assert!(held.failed(other));
        l.set_admin(held.backends()[i].address, Admin::Draining).expect("drained");
        assert_eq!(l.health(), Health { healthy: 1, total: 2 });
        let kept = held.backends()[i].address.to_string();

        // .23 added with weight 3, the other one removed.
        let new = format!("\"{kept}\", \"192.0.2.23:80\" ");
        let new = new.replace("\"192.0.2.23:80\" ", "{ address = \"192.0.2.23:80\", weight = 3 }");
        let said = l.replace(config(&new, "[http.health]\npath = \"/h\"\neject_after = 1")).expect("changed");
        assert!(said.contains("+192.0.2.23:80 (weight 3)") && said.contains("-192.0.2."), "{said}");
        assert_eq!(
            l.replace(config(&new, "[http.health]\npath = \"/h\"\neject_after = 1")),
            None,
            "the same again changes nothing"
        );
        // The held generation is still the old one until refreshed.
        assert_eq!(held.generation, 0);
        l.refresh(&mut held);
        assert_eq!(held.generation, 1);
        let now = l.current();
        let stayed = &now.backends()[at(&now, &kept).expect("kept")];
        assert_eq!(stayed.admin(), Admin::Draining, "operator state stays with the backend");
        assert_eq!(stayed.requests.load(Ordering::Relaxed), 1, "counters too");
        assert_eq!(now.in_flight(), 1, "the request in flight still counts");
        assert_eq!(l.health(), Health { healthy: 2, total: 2 }, "published for the new set");
        // Draining .21 gets nothing new: every pick is .23.
        for _ in 0..5 {
            assert_eq!(now.pick(&[]), at(&now, "192.0.2.23:80"));
        }
        drop(in_flight);
        assert!(!l.busy());
        // max_conns changes: new slots, the state goes along.
        let limited =
            l.replace(config(&new, "max_conns = 1\n[http.health]\npath = \"/h\"\neject_after = 1")).expect("changed");
        assert!(limited.contains("settings"), "{limited}");
        let now = l.current();
        let stayed = &now.backends()[at(&now, &kept).expect("kept")];
        assert_eq!((stayed.admin(), stayed.requests.load(Ordering::Relaxed)), (Admin::Draining, 1));
        assert_eq!(l.snapshot().generation, 2);
    }
    #[test]
    fn health_checks_removed_by_a_reload_leave_no_backend_down() {
        let checked = config("\"192.0.2.21:80\"", "[http.health]\npath = \"/h\"");
        let l = ListenerPool::new(checked);
        let _serving = l.serving();
        l.set_active_healthy(&l.current().backends()[0], false);
        assert_eq!(l.health(), Health { healthy: 0, total: 1 });
        l.replace(config("\"192.0.2.21:80\"", "")).expect("changed");
        assert_eq!(l.health(), Health { healthy: 1, total: 1 }, "nothing would check it again");
    }
}
