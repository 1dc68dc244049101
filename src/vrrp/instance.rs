//! Drives one VRRP instance: receives on its socket, feeds the state
//! machine, sleeps until its next deadline, and executes its actions
//! (adverts, addresses, gratuitous ARP). Publishes what it does in [`Stats`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::fsm::{skew_and_master_down, Action, Event, Fsm, Params, State, PRIORITY_OWNER};
use super::notify::{state_word, HookQueue, HookRuns};
use super::packet::{self, Advert, ChecksumForm, DropReason, Expect, Version, MULTICAST_V4};
use super::probe::TrackShared;
use super::socket::VrrpSocket;
use super::sync::{member_priority, GroupShared, MemberState, Others};
use super::timer::PreciseTimer;
use super::track::TrackerStatus;
use crate::config::VirtualIp;
use crate::config::VrrpConfig;
use crate::net::addr::{primary_of, AddrEvent, Netlink, NetlinkError};
use crate::net::announce::Announcer;
use crate::net::frames;

/// Why an instance could not start.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Netlink lookups failed (e.g. the interface does not exist).
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A socket could not be opened or configured.
    #[error("{what} on {iface:?}: {source}")]
    Socket {
        /// Which socket.
        what: &'static str,
        /// The interface.
        iface: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What a resigning master waits for before it removes its VIPs: work in
/// flight on them (the HTTP proxy's requests) finishing, for at most
/// `max_wait`. Removing the address under a request would drop its answer.
#[derive(Clone)]
pub struct DrainGate {
    /// True while something is still being served on the VIPs.
    pub busy: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Upper bound of the wait.
    pub max_wait: std::time::Duration,
}

impl std::fmt::Debug for DrainGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainGate").field("max_wait", &self.max_wait).finish_non_exhaustive()
    }
}

/// How long a master handing over keeps its VIPs, at the least, after its
/// successor's first advert (a SYN sent here just before the successor's
/// gratuitous ARP arrived would be dropped otherwise).
const HANDOVER_HOLD: std::time::Duration = std::time::Duration::from_millis(100);

/// How often a resigning master looks at the drain gate.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// How soon a failed look at the interface's addresses is tried again.
const ADDR_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// How often a second owner of the virtual router is logged.
const OWNER_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Most packets taken off the socket before acting on an expired timer.
const MAX_QUEUED_DRAIN: usize = 256;

/// Most distinct peer addresses remembered, so spoofed sources cannot grow memory.
const MAX_PEERS: usize = 32;

/// Counters and state of one instance, written by the instance and read by
/// the control server. Counters are atomics; the rest changes on
/// transitions only and sits behind a mutex that is never held across I/O.
#[derive(Debug)]
pub struct Stats {
    name: String,
    interface: String,
    vrid: u8,
    version: u8,
    priority: u8,
    advert_interval_ms: u64,
    virtual_ips: Vec<String>,
    rx_adverts: AtomicU64,
    rx_address_mismatch: AtomicU64,
    rx_owner_conflicts: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    tx_adverts: AtomicU64,
    tx_errors: AtomicU64,
    garps: AtomicU64,
    netlink_errors: AtomicU64,
    vips_restored: AtomicU64,
    /// How far a sync group member's trackers lower this instance.
    group_lowered: std::sync::atomic::AtomicU8,
    /// The instance's trackers, if it has any.
    tracking: Option<Arc<TrackShared>>,
    /// How its notify hooks ended.
    pub notify_runs: Arc<HookRuns>,
    dynamic: Mutex<Dynamic>,
}

#[derive(Debug)]
struct Dynamic {
    state: State,
    master_ip: Option<Ipv4Addr>,
    master_adver_interval_ms: u64,
    transitions: u64,
    since: SystemTime,
    last_reason: String,
    peers: BTreeMap<Ipv4Addr, PeerStats>,
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
    /// Notify hook runs by state and result ("ok", "failed", "timeout", "error").
    pub notify_runs: Vec<NotifyRuns>,
    /// The master as last seen (ourselves when master).
    pub master_ip: Option<Ipv4Addr>,
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
    pub address: Ipv4Addr,
    /// Its counters.
    #[serde(flatten)]
    pub stats: PeerStats,
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Stats {
    /// Empty counters for the instance `cfg`, whose trackers are `tracking`.
    pub fn new(cfg: &VrrpConfig, tracking: Option<Arc<TrackShared>>) -> Self {
        let interval_ms = cfg.advert_interval.as_duration().as_millis() as u64;
        Stats {
            name: cfg.name.clone(),
            interface: cfg.interface.clone(),
            vrid: cfg.vrid,
            version: cfg.version.number(),
            priority: cfg.priority,
            advert_interval_ms: interval_ms,
            virtual_ips: cfg.virtual_ips.iter().map(|v| v.to_string()).collect(),
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
            tracking,
            notify_runs: Arc::default(),
            dynamic: Mutex::new(Dynamic {
                state: State::Initialize,
                master_ip: None,
                master_adver_interval_ms: interval_ms,
                transitions: 0,
                since: SystemTime::now(),
                last_reason: String::new(),
                peers: BTreeMap::new(),
            }),
        }
    }

    fn dynamic(&self) -> MutexGuard<'_, Dynamic> {
        // A panic while holding this lock cannot leave it inconsistent:
        // every writer sets whole fields.
        self.dynamic.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A consistent copy for the control server.
    pub fn snapshot(&self) -> Snapshot {
        let (mut effective_priority, mut priority_explanation, trackers) = match &self.tracking {
            Some(t) => {
                let e = t.effective();
                (e.priority, e.explanation, t.status())
            }
            None => (self.priority, self.priority.to_string(), Vec::new()),
        };
        // Another sync group member's trackers lower this one further.
        let by_group = self.group_lowered.load(Ordering::Relaxed);
        let with_group = member_priority(self.priority, effective_priority, by_group);
        if with_group < effective_priority {
            effective_priority = with_group;
            priority_explanation = format!("{} - {by_group} (sync group)", self.priority);
        }
        let d = self.dynamic();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            name: self.name.clone(),
            interface: self.interface.clone(),
            vrid: self.vrid,
            version: self.version,
            state: d.state.name(),
            priority: self.priority,
            effective_priority,
            priority_explanation,
            trackers,
            notify_runs: NotifyRuns::list(&self.notify_runs),
            master_ip: d.master_ip,
            advert_interval_ms: self.advert_interval_ms,
            master_adver_interval_ms: d.master_adver_interval_ms,
            transitions: d.transitions,
            since: unix_seconds(d.since),
            last_reason: d.last_reason.clone(),
            virtual_ips: self.virtual_ips.clone(),
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

    fn count_drop(&self, reason: DropReason) {
        self.dropped[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn count_peer(&self, source: Ipv4Addr, form: ChecksumForm, priority: u8) {
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
    fn record_transition(&self, to: State, reason: String) {
        let mut d = self.dynamic();
        d.transitions += 1;
        d.since = SystemTime::now();
        d.state = to;
        d.last_reason = reason;
    }

    /// What changes without a transition: the master's address and interval.
    fn record(&self, fsm: &Fsm) {
        let mut d = self.dynamic();
        d.state = fsm.state();
        d.master_ip = fsm.master_ip();
        d.master_adver_interval_ms = fsm.master_adver_interval().as_millis() as u64;
    }
}

/// One running instance and everything it owns.
#[derive(Debug)]
pub struct Instance {
    cfg: VrrpConfig,
    ifindex: u32,
    mac: [u8; 6],
    primary: Ipv4Addr,
    expect: Expect,
    fsm: Fsm,
    socket: VrrpSocket,
    timer: PreciseTimer,
    announcer: Arc<Announcer>,
    /// The rest of a spaced gratuitous ARP burst, stopped if we stop being master.
    burst: Option<tokio::task::JoinHandle<()>>,
    netlink: Netlink,
    /// Interface usable (up with carrier), as the link watcher last said;
    /// `None` once the watcher is gone (the last state stays).
    link: Option<watch::Receiver<bool>>,
    link_up: bool,
    /// Address changes on every interface (ours filtered by index).
    addrs: Option<broadcast::Receiver<AddrEvent>>,
    /// Every VIP of this process's instances on the interface: never taken
    /// for the interface's own (primary) address.
    interface_vips: Vec<VirtualIp>,
    /// The interface has an address of its own to send adverts from.
    has_address: bool,
    /// Trackers, if any, and whether a weightless one fails.
    tracking: Option<Arc<TrackShared>>,
    tracker_fault: bool,
    /// Where state changes queue their notify hooks.
    hooks: Option<HookQueue>,
    /// The sync group and our place in it, if any; a member of it in fault;
    /// the most another member's trackers lower it.
    group: Option<(Arc<GroupShared>, usize)>,
    group_fault: bool,
    group_lowered: u8,
    /// When a second owner was last logged (at most every [`OWNER_WARNING_EVERY`]).
    last_owner_warning: Option<Instant>,
    /// A look at the interface's addresses failed: try again then (the
    /// events that asked for it were taken already).
    addr_retry: Option<Instant>,
    /// Set once shutdown began.
    stopping: bool,
    /// VRIDs of this process's other instances on the same interface.
    siblings: Vec<u8>,
    drain: Option<DrainGate>,
    stats: Arc<Stats>,
}

impl Instance {
    /// Names the VRIDs of this process's other instances on the same
    /// interface, whose adverts it sees too.
    pub fn set_siblings(&mut self, vrids: Vec<u8>) {
        self.siblings = vrids;
    }

    /// The trackers whose verdicts set the effective priority.
    pub fn set_tracking(&mut self, tracking: Arc<TrackShared>) {
        self.tracking = Some(tracking);
    }

    /// Where the notify hooks of state changes go.
    pub fn set_hooks(&mut self, hooks: HookQueue) {
        self.hooks = Some(hooks);
    }

    /// Makes the instance member `index` of a sync group.
    pub fn set_group(&mut self, group: Arc<GroupShared>, index: usize) {
        self.group = Some((group, index));
    }

    /// Link up, an address to send from, no weightless tracker failing, no
    /// sync group member in fault.
    fn usable(&self) -> bool {
        self.usable_alone() && !self.group_fault
    }

    /// Usable but for its sync group: what the group is told as `own_fault`.
    fn usable_alone(&self) -> bool {
        self.link_up && self.has_address && !self.tracker_fault
    }

    /// Tells the sync group what this member is now.
    fn publish_group(&self) {
        let Some((group, i)) = &self.group else { return };
        let word = match self.fsm.state() {
            State::Master => Some("MASTER"),
            State::Backup => Some("BACKUP"),
            State::Fault => Some("FAULT"),
            State::Initialize if self.stopping => Some("STOP"),
            State::Initialize => None,
        };
        let own_fault = !self.usable_alone();
        let lowered = self.cfg.priority.saturating_sub(self.own_priority());
        group.publish(*i, MemberState { own_fault, lost: self.fsm.follows_better_master(), lowered, word });
    }

    /// Another member's state changed: share its fault; while one is backup
    /// under a better master, hold preemption back and step down as master.
    fn follow_group(&mut self) {
        let Some((group, i)) = self.group.clone() else { return };
        let Others { fault, lost, lowered } = group.others(i);
        if lowered != self.group_lowered {
            self.group_lowered = lowered;
            self.stats.group_lowered.store(lowered, Ordering::Relaxed);
            self.apply_priority();
        }
        if fault != self.group_fault {
            info!(group = group.name(), fault, "sync group fault changed");
            let was = self.usable();
            self.group_fault = fault;
            self.condition_changed(was, Event::GroupFault, Event::GroupOk);
        }
        self.fsm.set_preempt_hold(lost);
        if lost {
            self.fsm.handle(Instant::now(), Event::GroupStepDown);
        }
    }

    /// After one of [`Instance::usable`]'s conditions changed: Fault with
    /// `down` when the instance just became unusable, out of it with `up`
    /// when it just became usable.
    fn condition_changed(&mut self, was_usable: bool, down: Event, up: Event) {
        match (was_usable, self.usable()) {
            (true, false) => self.fsm.handle(Instant::now(), down),
            (false, true) => self.fsm.handle(Instant::now(), up),
            _ => {}
        }
    }

    /// The priority this instance's own trackers give it.
    fn own_priority(&self) -> u8 {
        self.tracking.as_ref().map_or(self.cfg.priority, |t| t.priority())
    }

    /// Sets the effective priority: our trackers', lowered further as far
    /// as another sync group member's trackers lower that one (the group
    /// moves as one). An owner (255) is never lowered.
    fn apply_priority(&mut self) {
        let effective = member_priority(self.cfg.priority, self.own_priority(), self.group_lowered);
        let before = self.fsm.params().priority;
        if effective != before {
            let why =
                self.tracking.as_ref().map_or_else(|| self.cfg.priority.to_string(), |t| t.effective().explanation);
            info!(from = before, to = effective, explanation = %why, group_lowered = self.group_lowered, "effective priority changed");
            self.fsm.set_priority(Instant::now(), effective);
        }
    }

    /// A tracker's verdict changed: new effective priority, or Fault.
    fn follow_trackers(&mut self) {
        let Some(tracking) = &self.tracking else { return };
        let e = tracking.effective();
        self.apply_priority();
        if e.fault != self.tracker_fault {
            if e.fault {
                warn!(explanation = %e.explanation, "a weightless tracker fails");
            }
            let was = self.usable();
            self.tracker_fault = e.fault;
            self.condition_changed(was, Event::TrackerFault, Event::TrackersOk);
        }
    }

    /// Looks up the interface, removes VIPs a crashed run may have left,
    /// and opens the sockets. Fails with a message naming what is missing.
    pub async fn prepare(
        cfg: VrrpConfig,
        netlink: Netlink,
        link: watch::Receiver<bool>,
        addrs: broadcast::Receiver<AddrEvent>,
        interface_vips: Vec<VirtualIp>,
        stats: Arc<Stats>,
    ) -> Result<Self, InstanceError> {
        let iface = netlink.link(&cfg.interface).await?;
        // Without an address of its own yet, the instance starts in fault
        // and follows the address events until one is added.
        let found = netlink.primary_ipv4(iface.index, &interface_vips).await?;
        if found.is_none() {
            warn!(vrid = cfg.vrid, iface = %cfg.interface, "no IPv4 address of its own (other than VIPs) to send adverts from: starting in fault until one is added");
        }
        let primary = found.unwrap_or(Ipv4Addr::UNSPECIFIED);
        for vip in &cfg.virtual_ips {
            if netlink.has(iface.index, vip).await? {
                warn!(vrid = cfg.vrid, iface = %cfg.interface, %vip, "removing virtual IP left by an earlier run");
                netlink.del(iface.index, vip).await?;
            }
        }
        let socket_err = |what| {
            let iface = cfg.interface.clone();
            move |source| InstanceError::Socket { what, iface, source }
        };
        let socket = VrrpSocket::open(&cfg.interface, iface.index, primary).map_err(socket_err("raw VRRP socket"))?;
        let timer = PreciseTimer::new().map_err(socket_err("timerfd"))?;
        let announcer = Arc::new(Announcer::open(iface.index).map_err(socket_err("AF_PACKET socket"))?);
        let fsm = Fsm::new(Params {
            version: cfg.version,
            priority: cfg.priority,
            advert_interval: cfg.advert_interval,
            preempt: cfg.preempt,
            preempt_delay: cfg.preempt_delay,
            primary_ip: primary,
            garp_repeat_delay: cfg.garp_repeat_delay,
            garp_refresh: cfg.garp_refresh,
            release_timeout: cfg.release_timeout.unwrap_or_else(|| {
                skew_and_master_down(cfg.version, cfg.priority, cfg.advert_interval.as_duration()).1
            }),
        });
        let expect = Expect { version: cfg.version, vrid: cfg.vrid, interval: cfg.advert_interval };
        info!(vrid = cfg.vrid, iface = %cfg.interface, %primary, "instance {:?} ready", cfg.name);
        Ok(Instance {
            ifindex: iface.index,
            mac: iface.mac,
            primary,
            expect,
            fsm,
            socket,
            timer,
            announcer,
            burst: None,
            netlink,
            link: Some(link),
            link_up: iface.up,
            addrs: Some(addrs),
            interface_vips,
            has_address: found.is_some(),
            tracking: None,
            tracker_fault: false,
            hooks: None,
            group: None,
            group_fault: false,
            group_lowered: 0,
            last_owner_warning: None,
            addr_retry: None,
            stopping: false,
            siblings: Vec::new(),
            drain: None,
            stats,
            cfg,
        })
    }

    /// Runs until `shutdown` flips (or its sender goes), then resigns:
    /// priority 0 if master, VIPs removed.
    /// `drain` holds back the VIPs' removal at shutdown (see [`DrainGate`]).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>, drain: Option<DrainGate>) {
        self.drain = drain;
        let span = info_span!("vrrp", name = %self.cfg.name, vrid = self.cfg.vrid, iface = %self.cfg.interface);
        async move {
            self.fsm.handle(Instant::now(), Event::Startup);
            if !self.link_up {
                warn!("interface is down");
                self.fsm.handle(Instant::now(), Event::LinkDown);
            } else if !self.has_address {
                self.fsm.handle(Instant::now(), Event::NoAddress);
            }
            self.follow_trackers();
            self.follow_group();
            self.execute().await;
            self.publish_group();
            let mut buf = vec![0u8; 2048];
            let mut recv_errors = 0u32;
            loop {
                let deadline = self.fsm.poll_timeout();
                tokio::select! {
                    biased;
                    _ = shutdown.changed(), if !self.stopping => {
                        self.stopping = true;
                        self.fsm.handle(Instant::now(), Event::Shutdown);
                    }
                    changed = link_change(&mut self.link) => match changed {
                        Some(up) if up != self.link_up => {
                            let was = self.usable();
                            self.link_up = up;
                            self.condition_changed(was, Event::LinkDown, Event::LinkUp);
                        }
                        Some(_) => {}
                        None => {
                            // The watcher is gone: keep running on the last state.
                            warn!("the link watch ended; keeping the last link state");
                            self.link = None;
                        }
                    },
                    _ = tracker_change(&self.tracking) => self.follow_trackers(),
                    _ = group_change(&self.group) => self.follow_group(),
                    _ = self.timer.sleep_until(deadline) => {
                        // After a stall (a paused VM, a starved CPU) the
                        // timer and the master's queued adverts are due at
                        // once: the adverts first, or an expired
                        // Master_Down_Timer makes a backup flip to master
                        // and straight back.
                        for _ in 0..MAX_QUEUED_DRAIN {
                            let Some(n) = self.socket.try_recv(&mut buf) else { break };
                            self.receive(n, &buf);
                        }
                        self.fsm.handle_timeout(Instant::now());
                    }
                    _ = retry_at(self.addr_retry) => {
                        self.addr_retry = None;
                        self.follow_addresses().await;
                    }
                    wake = addr_change(&mut self.addrs, self.ifindex) => match wake {
                        AddrWake::Ours => self.follow_addresses().await,
                        AddrWake::Closed => {
                            warn!("the address watch ended; VIPs and the primary are no longer followed");
                            self.addrs = None;
                        }
                    },
                    r = self.socket.recv(&mut buf) => match r {
                        Ok(n) => {
                            recv_errors = 0;
                            self.receive(n, &buf);
                        }
                        Err(e) => {
                            recv_errors = recv_errors.saturating_add(1);
                            if recv_errors == 1 {
                                warn!(error = %e, "receiving VRRP packets failed");
                            }
                            // Keep a persistent error from spinning the loop.
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                    },
                }
                self.execute().await;
                self.publish_group();
                // A resigning master stays until its successor advertises
                // (or its release timer fires); everyone else is done.
                if self.stopping && self.fsm.state() != State::Master {
                    break;
                }
            }
            self.stop_burst();
        }
        .instrument(span)
        .await
    }

    fn receive(&mut self, n: usize, buf: &[u8]) {
        let packet = &buf[..n.min(buf.len())];
        let rx = match packet::parse_ipv4(packet, &self.expect) {
            Ok(rx) => rx,
            // Another instance of this process on the same interface: its
            // adverts are not bad packets.
            Err(DropReason::Vrid | DropReason::Version)
                if packet::claimed_vrid_ipv4(packet).is_some_and(|v| self.siblings.contains(&v)) =>
            {
                return;
            }
            Err(reason) => {
                self.stats.count_drop(reason);
                debug!(%reason, len = n, "dropped packet");
                return;
            }
        };
        if rx.source == self.primary {
            return;
        }
        let advert = &rx.advert;
        self.stats.count_peer(rx.source, rx.checksum_form, advert.priority);
        let same_list = self.cfg.virtual_ips.iter().map(|v| v.addr).eq(advert.addresses.iter().copied());
        if !same_list && self.cfg.version == Version::V2 && advert.priority != PRIORITY_OWNER {
            // RFC 3768 §7.1: from anyone but the owner, such a packet is dropped.
            self.stats.count_drop(DropReason::AddressList);
            debug!(from = %rx.source, "v2 advert's address list differs from ours: dropped (RFC 3768 §7.1)");
            return;
        }
        if advert.priority != 0 && !same_list {
            self.stats.rx_address_mismatch.fetch_add(1, Ordering::Relaxed);
            debug!(from = %rx.source, "advert's address list differs from ours (RFC 9568 §7.1: logged, not dropped)");
        }
        self.fsm.handle(
            Instant::now(),
            Event::Advert { source: rx.source, priority: advert.priority, interval: advert.interval },
        );
    }

    async fn execute(&mut self) {
        while let Some(action) = self.fsm.poll_action() {
            match action {
                Action::SendAdvert { priority } => self.send_advert(priority),
                Action::ClaimVips => {
                    for vip in &self.cfg.virtual_ips {
                        if let Err(e) = self.netlink.add(self.ifindex, vip).await {
                            self.stats.netlink_errors.fetch_add(1, Ordering::Relaxed);
                            error!(error = %e, "could not claim virtual IP");
                        }
                    }
                }
                Action::ReleaseVips => {
                    self.stop_burst();
                    // Handing over (a planned stop, or a higher priority
                    // taking over): the successor's gratuitous ARPs follow
                    // its first advert, and until clients have them their
                    // new connections still come here, so the VIPs stay a
                    // moment longer; then requests in flight on them finish.
                    // Not on a fault: the link or address is gone.
                    if self.stopping || self.fsm.state() == State::Backup {
                        // /status says the new state meanwhile.
                        self.stats.record(&self.fsm);
                        tokio::time::sleep(HANDOVER_HOLD).await;
                        self.wait_for_drain().await;
                    }
                    for vip in &self.cfg.virtual_ips {
                        if let Err(e) = self.netlink.del(self.ifindex, vip).await {
                            self.stats.netlink_errors.fetch_add(1, Ordering::Relaxed);
                            error!(error = %e, "could not release virtual IP");
                        }
                    }
                }
                Action::Announce => self.announce(),
                Action::OwnerConflict { from } => {
                    self.stats.rx_owner_conflicts.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    if self.last_owner_warning.is_none_or(|t| now >= t + OWNER_WARNING_EVERY) {
                        self.last_owner_warning = Some(now);
                        warn!(%from, "another router also owns the virtual addresses (both priority 255): a misconfiguration (RFC 9568 erratum 8298); the higher primary address wins");
                    }
                }
                Action::Reasserted { against, priority } => {
                    info!(%against, priority, "another router acted as master; advertising and announcing again");
                }
                Action::StateChanged { from, to, reason } => {
                    let master = self.fsm.master_ip().map_or_else(|| "-".to_string(), |a| a.to_string());
                    info!(%from, %to, %reason, %master, "state change");
                    self.stats.record_transition(to, reason.to_string());
                    if let (Some(hooks), Some(word)) = (&self.hooks, state_word(to, reason)) {
                        let priority = Some(self.fsm.params().priority);
                        hooks.push(word, self.cfg.notify.commands("INSTANCE", &self.cfg.name, word, priority));
                    }
                }
            }
        }
        // Master address and learnt interval change without a transition.
        self.stats.record(&self.fsm);
    }

    /// After an address change on the interface: follow the primary (the
    /// advert source), go to Fault without one and back when one returns;
    /// then make the VIPs match the state: a master puts back a VIP someone
    /// deleted (a network manager restart does), anyone else removes one
    /// someone added. Reads the interface rather than trusting the event,
    /// so events of our own changes, late or repeated, do nothing.
    async fn follow_addresses(&mut self) {
        // One dump serves the primary and every VIP.
        let addrs = match self.netlink.ipv4_on(self.ifindex).await {
            Ok(a) => a,
            Err(e) => {
                self.stats.netlink_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "could not read the interface's addresses; trying again shortly");
                self.addr_retry = Some(Instant::now() + ADDR_RETRY);
                return;
            }
        };
        let primary = primary_of(&addrs, &self.interface_vips);
        let state_before = self.fsm.state();
        match (primary, self.has_address) {
            (None, true) => {
                warn!(primary = %self.primary, "the interface's own address is gone; adverts cannot be sent");
                let was = self.usable();
                self.has_address = false;
                self.condition_changed(was, Event::NoAddress, Event::AddressBack);
            }
            (Some(p), had) => {
                if p != self.primary {
                    info!(from = %self.primary, to = %p, "primary address changed; sending adverts from it");
                    if let Err(e) = self.socket.set_source(p) {
                        warn!(error = %e, "could not send adverts from the new primary address");
                    }
                    self.primary = p;
                    self.fsm.set_primary_ip(p);
                }
                if !had {
                    let was = self.usable();
                    self.has_address = true;
                    self.condition_changed(was, Event::NoAddress, Event::AddressBack);
                }
            }
            (None, false) => {}
        }
        self.execute().await;
        // A resigning master keeps what it has until its successor speaks
        // (make-before-break): it neither puts back nor removes.
        if self.fsm.is_resigning() {
            return;
        }
        let master = self.fsm.state() == State::Master;
        // A state change just now (to fault, say) changed the VIPs: look again.
        let addrs = if self.fsm.state() == state_before {
            addrs
        } else {
            match self.netlink.ipv4_on(self.ifindex).await {
                Ok(a) => a,
                Err(_) => {
                    self.stats.netlink_errors.fetch_add(1, Ordering::Relaxed);
                    self.addr_retry = Some(Instant::now() + ADDR_RETRY);
                    return;
                }
            }
        };
        let mut restored = false;
        for vip in &self.cfg.virtual_ips {
            let present = addrs.iter().any(|(a, _)| *a == vip.addr);
            let change = match (master, present) {
                (true, false) => {
                    self.netlink.add(self.ifindex, vip).await.map(|()| "put back a virtual IP deleted under the master")
                }
                (false, true) => {
                    self.netlink.del(self.ifindex, vip).await.map(|()| "removed a virtual IP added while not master")
                }
                _ => continue,
            };
            match change {
                Ok(what) => {
                    warn!(%vip, state = %self.fsm.state(), "{what}");
                    if master {
                        self.stats.vips_restored.fetch_add(1, Ordering::Relaxed);
                        restored = true;
                    }
                }
                Err(e) => {
                    self.stats.netlink_errors.fetch_add(1, Ordering::Relaxed);
                    error!(error = %e, %vip, "could not correct a virtual IP");
                }
            }
        }
        if restored {
            self.announce();
        }
    }

    /// Bounded wait for in-flight work on the VIPs; nothing else needs this
    /// task meanwhile, since the instance is leaving.
    async fn wait_for_drain(&self) {
        let Some(gate) = &self.drain else { return };
        let started = Instant::now();
        let rounds = gate.max_wait.as_millis() / DRAIN_POLL.as_millis() + 1;
        for _ in 0..rounds {
            if !(gate.busy)() {
                break;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
        if (gate.busy)() {
            warn!(waited = ?started.elapsed(), "releasing virtual IPs with requests still in flight");
        } else {
            debug!(waited = ?started.elapsed(), "in-flight requests done; releasing virtual IPs");
        }
    }

    fn send_advert(&self, priority: u8) {
        let advert = Advert {
            version: self.cfg.version,
            vrid: self.cfg.vrid,
            priority,
            interval: self.cfg.advert_interval,
            addresses: self.cfg.virtual_ips.iter().map(|v| v.addr).collect(),
        };
        let msg = advert.emit(self.cfg.v3_checksum, self.primary, MULTICAST_V4);
        match self.socket.send(&msg, MULTICAST_V4) {
            Ok(()) => {
                self.stats.tx_adverts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.tx_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "sending advert failed");
            }
        }
    }

    /// Sends `garp_count` gratuitous ARPs per VIP. The first of each goes
    /// out now (a client must follow within a millisecond of our first
    /// advert); with a spacing configured, the rest follow from a task.
    fn announce(&mut self) {
        self.stop_burst();
        let frames: Vec<_> = self.cfg.virtual_ips.iter().map(|v| frames::gratuitous_arp(self.mac, v.addr)).collect();
        let spacing = self.cfg.garp_interval;
        let rounds = self.cfg.garp_count;
        if spacing.is_zero() {
            for _ in 0..rounds {
                send_frames(&self.announcer, &frames, &self.stats);
            }
            return;
        }
        send_frames(&self.announcer, &frames, &self.stats);
        let (announcer, stats) = (Arc::clone(&self.announcer), Arc::clone(&self.stats));
        self.burst = Some(tokio::spawn(
            async move {
                for _ in 1..rounds {
                    tokio::time::sleep(spacing).await;
                    send_frames(&announcer, &frames, &stats);
                }
            }
            .in_current_span(),
        ));
    }

    fn stop_burst(&mut self) {
        if let Some(task) = self.burst.take() {
            task.abort();
        }
    }
}

/// The link watch's next value; `None` once it is gone; never without one.
async fn link_change(link: &mut Option<watch::Receiver<bool>>) -> Option<bool> {
    let Some(rx) = link else { return std::future::pending().await };
    match rx.changed().await {
        Ok(()) => Some(*rx.borrow_and_update()),
        Err(_) => None,
    }
}

/// What woke an instance on the address watch.
enum AddrWake {
    /// Its interface's addresses may have changed.
    Ours,
    /// The watch is gone.
    Closed,
}

/// Waits for an address change of interface `ifindex` (or for lost
/// events), then takes whatever else is queued: one look at the interface
/// serves a burst. Never resolves without a watch.
async fn addr_change(addrs: &mut Option<broadcast::Receiver<AddrEvent>>, ifindex: u32) -> AddrWake {
    use broadcast::error::{RecvError, TryRecvError};
    let Some(rx) = addrs else { return std::future::pending().await };
    loop {
        match rx.recv().await {
            Ok(AddrEvent::Changed { index, .. }) if index != ifindex => continue,
            Ok(_) | Err(RecvError::Lagged(_)) => break,
            Err(RecvError::Closed) => return AddrWake::Closed,
        }
    }
    while let Ok(_) | Err(TryRecvError::Lagged(_)) = rx.try_recv() {}
    AddrWake::Ours
}

/// Resolves at `at`; never without one.
async fn retry_at(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Resolves when another sync group member changed; never without a group.
async fn group_change(group: &Option<(Arc<GroupShared>, usize)>) {
    match group {
        Some((g, i)) => g.changed(*i).await,
        None => std::future::pending().await,
    }
}

/// Resolves when a tracker's verdict changed; never without trackers.
async fn tracker_change(tracking: &Option<Arc<TrackShared>>) {
    match tracking {
        Some(t) => t.changed().await,
        None => std::future::pending().await,
    }
}

fn send_frames(announcer: &Announcer, frames: &[[u8; frames::GARP_LEN]], stats: &Stats) {
    for frame in frames {
        match announcer.send(frame) {
            Ok(()) => {
                stats.garps.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => warn!(error = %e, "sending gratuitous ARP failed"),
        }
    }
}
