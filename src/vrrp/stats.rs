//! Counters and state of each VRRP instance, written by the VRRP driver
//! and router and read by the control server (`/status`, `/metrics`): the
//! types `control` sees, so that it never looks at the driver.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use serde::Serialize;

use super::fsm::{Fsm, State};
use super::notify::HookRuns;
use super::packet::{ChecksumForm, DropReason};
use super::probe::TrackShared;
use super::router::InstanceSpec;
use super::sync::member_priority;
use super::track::TrackerStatus;

/// Most distinct peer addresses remembered, so spoofed sources cannot grow memory.
const MAX_PEERS: usize = 32;

/// State changes kept for `/status` and the status page, newest last.
pub const RECENT_TRANSITIONS: usize = 10;

/// The running instances' counters, in config order; a reload adds and
/// removes instances, so `/status` looks them up each time.
#[derive(Debug, Default)]
pub struct StatsList(RwLock<Vec<Arc<Stats>>>);

impl StatsList {
    /// These, in this order.
    pub fn new(stats: Vec<Arc<Stats>>) -> Self {
        StatsList(RwLock::new(stats))
    }

    /// All of them.
    pub fn list(&self) -> Vec<Arc<Stats>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the list (after a reload).
    pub fn set(&self, stats: Vec<Arc<Stats>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = stats;
    }
}

/// Counters and state of one instance, written by the instance and read by
/// the control server. Counters are atomics; the rest changes on
/// transitions only and sits behind a mutex that is never held across I/O.
#[derive(Debug)]
pub struct Stats {
    name: String,
    interface: String,
    vrid: u8,
    version: u8,
    /// What a reload may change.
    configured: Mutex<Configured>,
    pub(super) rx_adverts: AtomicU64,
    pub(super) rx_address_mismatch: AtomicU64,
    pub(super) rx_owner_conflicts: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    pub(super) tx_adverts: AtomicU64,
    pub(super) tx_errors: AtomicU64,
    pub(super) garps: AtomicU64,
    pub(super) netlink_errors: AtomicU64,
    pub(super) vips_restored: AtomicU64,
    /// How far a sync group member's trackers lower this instance.
    pub(super) group_lowered: AtomicU8,
    /// Stepped down by the operator (no preemption until resumed).
    pub(super) stepped_down: AtomicBool,
    /// The operator's priority override; 0 = none.
    pub(super) priority_override: AtomicU8,
    /// The instance's trackers, if it has any.
    tracking: Option<Arc<TrackShared>>,
    /// How its notify hooks ended.
    pub notify_runs: Arc<HookRuns>,
    dynamic: Mutex<Dynamic>,
}

/// The settings `/status` shows that a reload may change.
#[derive(Debug, Clone)]
struct Configured {
    priority: u8,
    advert_interval_ms: u64,
    virtual_ips: Vec<String>,
}

#[derive(Debug)]
struct Dynamic {
    state: State,
    master_ip: Option<IpAddr>,
    master_adver_interval_ms: u64,
    transitions: u64,
    since: SystemTime,
    last_reason: String,
    recent: VecDeque<Transition>,
    peers: BTreeMap<IpAddr, PeerStats>,
}

/// One state change, as `/status` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    /// When, seconds since the Unix epoch.
    pub at: f64,
    /// The state left.
    pub from: &'static str,
    /// The state entered.
    pub to: &'static str,
    /// Why.
    pub reason: String,
}

/// What we have seen from one peer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerStats {
    /// Valid adverts received.
    pub adverts: u64,
    /// ...whose v3 checksum covered the IPv4 pseudo-header (keepalived, FRR).
    pub checksum_pseudo_header: u64,
    /// ...whose checksum covered the message only (RFC 9568, VRRPv2).
    pub checksum_plain: u64,
    /// Priority in its last advert.
    pub last_priority: u8,
}

/// A consistent copy of [`Stats`] for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Instance name.
    pub name: String,
    /// Interface.
    pub interface: String,
    /// VRID.
    pub vrid: u8,
    /// VRRP version.
    pub version: u8,
    /// "init", "backup", "master" or "fault".
    pub state: &'static str,
    /// Configured priority.
    pub priority: u8,
    /// Priority after tracking: what is advertised and compared.
    pub effective_priority: u8,
    /// How the trackers made it, e.g. `150 - 60 (http web: 0/2 healthy)`.
    pub priority_explanation: String,
    /// Every tracker and its state.
    pub trackers: Vec<TrackerStatus>,
    /// Stepped down by `vipd vrrp step-down` (no preemption until `resume`).
    pub stepped_down: bool,
    /// The priority `vipd vrrp priority` set, if any (it replaces the
    /// trackers' and the sync group's).
    pub priority_override: Option<u8>,
    /// Notify hook runs by state and result ("ok", "failed", "timeout", "error").
    pub notify_runs: Vec<NotifyRuns>,
    /// The master as last seen (ourselves when master).
    pub master_ip: Option<IpAddr>,
    /// Our Advertisement_Interval.
    pub advert_interval_ms: u64,
    /// Master_Adver_Interval as learnt from the master.
    pub master_adver_interval_ms: u64,
    /// State changes since start.
    pub transitions: u64,
    /// When the current state began, seconds since the Unix epoch.
    pub since: f64,
    /// Why the last state change happened.
    pub last_reason: String,
    /// The last state changes (at most [`RECENT_TRANSITIONS`]), oldest first.
    pub recent_transitions: Vec<Transition>,
    /// Configured virtual addresses.
    pub virtual_ips: Vec<String>,
    /// Received-side counters.
    pub rx: RxSnapshot,
    /// Sent-side counters.
    pub tx: TxSnapshot,
    /// Per-peer counters.
    pub peers: Vec<PeerSnapshot>,
}

/// How often notify hooks for one state ended one way.
#[derive(Debug, Clone, Serialize)]
pub struct NotifyRuns {
    /// MASTER, BACKUP, FAULT or STOP.
    pub state: &'static str,
    /// ok, failed, timeout or error.
    pub result: &'static str,
    /// Runs.
    pub runs: u64,
}

impl NotifyRuns {
    /// Every (state, result) pair seen in `runs`.
    pub fn list(runs: &HookRuns) -> Vec<NotifyRuns> {
        runs.snapshot().into_iter().map(|((state, result), runs)| NotifyRuns { state, result, runs }).collect()
    }
}

/// Received-side counters.
#[derive(Debug, Clone, Serialize)]
pub struct RxSnapshot {
    /// Valid adverts from other routers.
    pub adverts: u64,
    /// Valid v3 adverts whose address list differs from ours (logged, not
    /// dropped; v2 ones from a non-owner are dropped as `address_list`).
    pub address_mismatch: u64,
    /// Adverts with priority 255 while we own the addresses too.
    pub owner_conflicts: u64,
    /// Dropped packets by reason.
    pub dropped: BTreeMap<&'static str, u64>,
}

/// Sent-side counters.
#[derive(Debug, Clone, Serialize)]
pub struct TxSnapshot {
    /// Adverts sent.
    pub adverts: u64,
    /// Adverts that failed to send.
    pub errors: u64,
    /// Gratuitous ARP frames sent.
    pub garps: u64,
    /// Failed address changes.
    pub netlink_errors: u64,
    /// VIPs found missing while master (deleted by someone else) and put back.
    pub vips_restored: u64,
}

/// One peer in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerSnapshot {
    /// Its address.
    pub address: IpAddr,
    /// Its counters.
    #[serde(flatten)]
    pub stats: PeerStats,
}

/// `t` as seconds since the Unix epoch, the clock `/status` shows.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Stats {
    /// The instance's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its trackers, if it has any.
    pub fn tracking(&self) -> Option<&Arc<TrackShared>> {
        self.tracking.as_ref()
    }

    /// Empty counters for the instance `spec` on `interface`, whose VIPs
    /// read `virtual_ips` (with their prefixes) and whose trackers are `tracking`.
    pub fn new(
        spec: &InstanceSpec,
        interface: &str,
        virtual_ips: Vec<String>,
        tracking: Option<Arc<TrackShared>>,
    ) -> Self {
        let interval_ms = spec.advert_interval.as_duration().as_millis() as u64;
        Stats {
            name: spec.name.clone(),
            interface: interface.to_string(),
            vrid: spec.vrid,
            version: spec.version.number(),
            configured: Mutex::new(Configured {
                priority: spec.priority,
                advert_interval_ms: interval_ms,
                virtual_ips,
            }),
            rx_adverts: AtomicU64::new(0),
            rx_address_mismatch: AtomicU64::new(0),
            rx_owner_conflicts: AtomicU64::new(0),
            dropped: Default::default(),
            tx_adverts: AtomicU64::new(0),
            tx_errors: AtomicU64::new(0),
            garps: AtomicU64::new(0),
            netlink_errors: AtomicU64::new(0),
            vips_restored: AtomicU64::new(0),
            group_lowered: Default::default(),
            stepped_down: AtomicBool::new(false),
            priority_override: AtomicU8::new(0),
            tracking,
            notify_runs: Arc::default(),
            dynamic: Mutex::new(Dynamic {
                state: State::Initialize,
                master_ip: None,
                master_adver_interval_ms: interval_ms,
                transitions: 0,
                since: SystemTime::now(),
                last_reason: String::new(),
                recent: VecDeque::with_capacity(RECENT_TRANSITIONS),
                peers: BTreeMap::new(),
            }),
        }
    }

    fn configured(&self) -> Configured {
        self.configured.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A reload changed the instance's settings.
    pub(super) fn reconfigured(&self, spec: &InstanceSpec, virtual_ips: Vec<String>) {
        let mut c = self.configured.lock().unwrap_or_else(|p| p.into_inner());
        *c = Configured {
            priority: spec.priority,
            advert_interval_ms: spec.advert_interval.as_duration().as_millis() as u64,
            virtual_ips,
        };
    }

    fn dynamic(&self) -> MutexGuard<'_, Dynamic> {
        // A panic while holding this lock cannot leave it inconsistent:
        // every writer sets whole fields.
        self.dynamic.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A consistent copy for the control server.
    pub fn snapshot(&self) -> Snapshot {
        let Configured { priority, advert_interval_ms, virtual_ips } = self.configured();
        let (mut effective_priority, mut priority_explanation, trackers) = match &self.tracking {
            Some(t) => {
                let e = t.effective();
                (e.priority, e.explanation, t.status())
            }
            None => (priority, priority.to_string(), Vec::new()),
        };
        // Another sync group member's trackers lower this one further.
        let by_group = self.group_lowered.load(Ordering::Relaxed);
        let with_group = member_priority(priority, effective_priority, by_group);
        if with_group < effective_priority {
            effective_priority = with_group;
            priority_explanation = format!("{priority} - {by_group} (sync group)");
        }
        let priority_override = Some(self.priority_override.load(Ordering::Relaxed)).filter(|p| *p != 0);
        if let Some(p) = priority_override {
            effective_priority = p;
            priority_explanation = format!("{p} (set by vipd vrrp priority)");
        }
        let d = self.dynamic();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            name: self.name.clone(),
            interface: self.interface.clone(),
            vrid: self.vrid,
            version: self.version,
            state: d.state.name(),
            priority,
            effective_priority,
            priority_explanation,
            trackers,
            stepped_down: self.stepped_down.load(Ordering::Relaxed),
            priority_override,
            notify_runs: NotifyRuns::list(&self.notify_runs),
            master_ip: d.master_ip,
            advert_interval_ms,
            master_adver_interval_ms: d.master_adver_interval_ms,
            transitions: d.transitions,
            since: unix_seconds(d.since),
            last_reason: d.last_reason.clone(),
            recent_transitions: d.recent.iter().cloned().collect(),
            virtual_ips,
            rx: RxSnapshot {
                adverts: load(&self.rx_adverts),
                address_mismatch: load(&self.rx_address_mismatch),
                owner_conflicts: load(&self.rx_owner_conflicts),
                dropped: DropReason::ALL.iter().map(|r| (r.name(), load(&self.dropped[r.index()]))).collect(),
            },
            tx: TxSnapshot {
                adverts: load(&self.tx_adverts),
                errors: load(&self.tx_errors),
                garps: load(&self.garps),
                netlink_errors: load(&self.netlink_errors),
                vips_restored: load(&self.vips_restored),
            },
            peers: d.peers.iter().map(|(a, s)| PeerSnapshot { address: *a, stats: s.clone() }).collect(),
        }
    }

    pub(super) fn count_drop(&self, reason: DropReason) {
        self.dropped[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_peer(&self, source: IpAddr, form: ChecksumForm, priority: u8) {
        self.rx_adverts.fetch_add(1, Ordering::Relaxed);
        let mut d = self.dynamic();
        if d.peers.len() >= MAX_PEERS && !d.peers.contains_key(&source) {
            return;
        }
        let p = d.peers.entry(source).or_default();
        p.adverts += 1;
        p.last_priority = priority;
        match form {
            ChecksumForm::PseudoHeader => p.checksum_pseudo_header += 1,
            ChecksumForm::MessageOnly => p.checksum_plain += 1,
        }
    }

    /// One state change (a batch of actions may hold several: fault ->
    /// init -> backup is two).
    pub(super) fn record_transition(&self, from: State, to: State, reason: String) {
        let mut d = self.dynamic();
        let now = SystemTime::now();
        if d.recent.len() == RECENT_TRANSITIONS {
            d.recent.pop_front();
        }
        let change = Transition { at: unix_seconds(now), from: from.name(), to: to.name(), reason: reason.clone() };
        d.recent.push_back(change);
        d.transitions += 1;
        d.since = now;
        d.state = to;
        d.last_reason = reason;
    }

    /// What changes without a transition: the master's address and interval.
    pub(super) fn record(&self, fsm: &Fsm) {
        let mut d = self.dynamic();
        d.state = fsm.state();
        d.master_ip = fsm.master_ip();
        d.master_adver_interval_ms = fsm.master_adver_interval().as_millis() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_transitions_keep_the_last_ones_oldest_first() {
        let text = "[[vrrp]]\nname = \"web\"\ninterface = \"eth0\"\nvrid = 51\npriority = 150\nvirtual_ips = [\"192.0.2.10/24\"]\n";
        let config = crate::config::parse(text, std::path::Path::new("t.toml")).expect("valid");
        let stats = Stats::new(&config.vrrp[0].spec, "eth0", Vec::new(), None);
        stats.record_transition(State::Initialize, State::Backup, "started".into());
        let states = [State::Master, State::Backup];
        for i in 0..RECENT_TRANSITIONS + 1 {
            let (from, to) = (states[(i + 1) % 2], states[i % 2]);
            stats.record_transition(from, to, format!("change {i}"));
        }
        let s = stats.snapshot();
        assert_eq!(s.transitions, RECENT_TRANSITIONS as u64 + 2);
        assert_eq!(s.recent_transitions.len(), RECENT_TRANSITIONS);
        let first = &s.recent_transitions[0];
        assert_eq!((first.from, first.to, first.reason.as_str()), ("master", "backup", "change 1"));
        let last = &s.recent_transitions[RECENT_TRANSITIONS - 1];
        assert_eq!((last.to, last.reason.as_str()), ("master", "change 10"));
        assert!(s.recent_transitions.windows(2).all(|w| w[0].at <= w[1].at));
        assert_eq!(s.state, "master");
    }
}
