//! The VRRP I/O shell of one interface: its raw socket and timer, its link
//! and address watches, and each instance's side that is not protocol
//! (trackers, sync group, notify hooks, the drain gate). It feeds the
//! [`Router`] and carries out what the router says.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::fsm::{Inherited, State};
use super::notify::{state_word, HookQueue, Hooks};
use super::operator::{Ask, Command, ToDriver};
use super::packet::{Datagram, Family};
use super::probe::TrackShared;
use super::relay::{self, Nft, NftError, RelayRule, RelayWorker};
use super::router::{InstanceSpec, Output, Router, RELAY_FOR};
use super::socket::{Recv, VrrpSocket};
use super::stats::Stats;
use super::sync::{member_priority, GroupShared, MemberState, Others};
use super::timer::PreciseTimer;
use crate::net::addr::VirtualIp;
use crate::net::addr::{AddrEvent, Netlink, NetlinkError, Vmac};
use crate::net::announce::Announcer;

/// Why an interface's instances could not start.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
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
    pub max_wait: Duration,
}

impl std::fmt::Debug for DrainGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainGate").field("max_wait", &self.max_wait).finish_non_exhaustive()
    }
}

/// How often a hand-over looks at the drain gate.
const DRAIN_POLL: Duration = Duration::from_millis(2);

/// After a hand-over the VIPs stay at least this long, even with nothing
/// in flight: a client's SYN sent just before it learnt of the new master,
/// and the request right behind it, still reach this node and are answered
/// instead of being lost with the address (seen: one such request in 200
/// timed out when the VIPs went 5 ms after the new master's first advert).
const HANDOVER_GRACE: Duration = Duration::from_millis(150);

/// How soon a failed look at the interface's addresses is tried again.
const ADDR_RETRY: Duration = Duration::from_millis(200);

/// Longest a stopping driver waits for its relays to be removed.
const RELAY_FLUSH: Duration = Duration::from_secs(3);

/// Most packets taken off the socket before acting on an expired timer.
const MAX_QUEUED_DRAIN: usize = 256;

/// One instance as the driver is given it.
#[derive(Debug)]
pub struct InstanceSide {
    /// What the router runs.
    pub spec: InstanceSpec,
    /// Its VIPs with their prefixes, for netlink.
    pub vips: Vec<VirtualIp>,
    /// Its counters.
    pub stats: Arc<Stats>,
    /// Its trackers, if any.
    pub tracking: Option<Arc<TrackShared>>,
    /// Where its notify hooks go, if it has any, and what they are.
    pub hooks: Option<(HookQueue, Hooks)>,
    /// Its sync group and its place there, if any.
    pub group: Option<(Arc<GroupShared>, usize)>,
}

#[derive(Debug)]
struct Side {
    inst: InstanceSide,
    tracker_fault: bool,
    group_fault: bool,
    /// The most another sync group member's trackers lower it.
    group_lowered: u8,
    /// Set by `vipd vrrp priority`: replaces the tracked priority.
    priority_override: Option<u8>,
}

impl Side {
    fn vrid(&self) -> u8 {
        self.inst.spec.vrid
    }

    /// The priority its own trackers give it.
    fn own_priority(&self) -> u8 {
        self.inst.tracking.as_ref().map_or(self.inst.spec.priority, |t| t.priority())
    }
}

/// What the VRRP drivers are told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Keep running.
    Run,
    /// The planned stop: masters resign (priority 0, make-before-break).
    Resign,
    /// `vipd upgrade`: stop at once and silently (no advert, the VIPs and
    /// virtual MAC interfaces stay) and say where each instance stands, for
    /// the successor process that goes on from there.
    HandOver,
}

/// Where one instance stood when its driver handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedOver {
    /// The instance's name.
    pub name: String,
    /// Its VRID.
    pub vrid: u8,
    /// Its state.
    pub state: Inherited,
}

/// Every instance of one interface and address family, and what they run on.
#[derive(Debug)]
pub struct Driver {
    ifname: String,
    family: Family,
    /// Where the VIPs go: the interface, or the macvlan of `vmac`.
    vip_ifindex: u32,
    /// Whose addresses adverts go from: the interface, or for IPv6 the
    /// macvlan.
    source_ifindex: u32,
    vmac: Option<Vmac>,
    ifindex: u32,
    router: Router,
    socket: VrrpSocket,
    timer: PreciseTimer,
    announcer: Announcer,
    netlink: Netlink,
    /// Interface usable (up with carrier), as the link watcher last said;
    /// `None` once the watcher is gone (the last state stays).
    link: Option<watch::Receiver<bool>>,
    /// Address changes on every interface (ours filtered by index).
    addrs: Option<broadcast::Receiver<AddrEvent>>,
    /// A look at the interface's addresses failed: try again then.
    addr_retry: Option<Instant>,
    sides: Vec<Side>,
    drain: Option<DrainGate>,
    /// The operator's commands for these instances, and a reload's.
    commands: Option<mpsc::UnboundedReceiver<ToDriver>>,
    /// Hand-overs whose VIPs wait for the drain gate: (vrid, since when).
    draining: Vec<(u8, Instant)>,
    /// When the drain gate is looked at next (a deadline, so that busy
    /// sockets cannot keep pushing it back).
    next_drain_check: Option<Instant>,
    stopping: bool,
    /// Started by `vipd upgrade`: the VIPs found at start were kept.
    inheriting: bool,
    /// Writes the hand-over relays.
    relay: RelayWorker,
    /// Instances whose hand-over relay is in place.
    relaying: Vec<u8>,
}

impl Driver {
    /// Looks up `ifname`, removes VIPs a crashed run may have left, creates
    /// the macvlan of `vmac` if asked (its one instance's VIPs and adverts
    /// then go there), and opens the sockets for `instances`, all of one
    /// family. Fails with a message naming what is missing. With
    /// `inheriting` (`vipd upgrade`), the VIPs found are the running
    /// master's and stay, and an existing macvlan is used as it is.
    #[allow(clippy::too_many_arguments)]
    pub async fn prepare(
        ifname: &str,
        vmac: Option<Vmac>,
        instances: Vec<InstanceSide>,
        netlink: Netlink,
        link: watch::Receiver<bool>,
        addrs: broadcast::Receiver<AddrEvent>,
        drain: Option<DrainGate>,
        inheriting: bool,
    ) -> Result<Self, DriverError> {
        let iface = netlink.link(ifname).await?;
        let family = instances.first().map_or(Family::V4, |i| i.spec.family());
        let mut addresses = netlink.addresses_on(iface.index).await?;
        for vip in instances.iter().flat_map(|i| &i.vips).filter(|_| !inheriting) {
            if addresses.iter().any(|(a, _)| *a == vip.addr) {
                warn!(iface = %ifname, %vip, "removing virtual IP left by an earlier run");
                netlink.del(iface.index, vip).await?;
                addresses.retain(|(a, _)| *a != vip.addr);
            }
        }
        let socket_err = |what| {
            let iface = ifname.to_string();
            move |source| DriverError::Socket { what, iface, source }
        };
        let (vip_ifindex, mac) = match &vmac {
            Some(v) => {
                let kept = match inheriting {
                    true => netlink.link(&v.name).await.ok().map(|l| l.index),
                    false => None,
                };
                let index = match kept {
                    Some(index) => index,
                    None => netlink.create_vmac(ifname, iface.index, v).await?,
                };
                info!(iface = %ifname, vmac = %v.name, kept = kept.is_some(), "virtual MAC interface up");
                (index, v.mac)
            }
            None => (iface.index, iface.mac),
        };
        // Sent from the VIPs' interface. Received there too for multicast:
        // a multicast frame from another node's virtual MAC, which is ours
        // as well, goes to our macvlan only, not to its parent. Unicast
        // adverts come to the parent's own address.
        let unicast = instances.iter().any(|i| !i.spec.unicast_peers.is_empty());
        let (rx_name, rx_index) = match &vmac {
            Some(v) if !unicast => (v.name.as_str(), vip_ifindex),
            _ => (ifname, iface.index),
        };
        let mut socket = VrrpSocket::open(rx_name, rx_index, family).map_err(socket_err("raw VRRP socket"))?;
        socket.send_via(vip_ifindex);
        let timer = PreciseTimer::new().map_err(socket_err("timerfd"))?;
        let announcer = Announcer::open(vip_ifindex).map_err(socket_err("AF_PACKET socket"))?;
        // IPv6 adverts leave from a link-local address of the interface
        // they leave by: with a virtual MAC, the macvlan's own (random) one.
        let source_ifindex = if family == Family::V6 { vip_ifindex } else { iface.index };
        if source_ifindex != iface.index {
            addresses = netlink.addresses_on(source_ifindex).await?;
        }
        let specs = instances.iter().map(|i| (i.spec.clone(), Arc::clone(&i.stats))).collect();
        let router = Router::new(mac, iface.up, &addresses, specs);
        for i in &instances {
            let source = router.view(i.spec.vrid).and_then(|v| v.source);
            match source {
                Some(s) => info!(vrid = i.spec.vrid, iface = %ifname, source = %s, "instance {:?} ready", i.spec.name),
                None => {
                    let what = match (family, i.spec.unicast_source) {
                        (_, Some(s)) => format!("its unicast_source {s}"),
                        (Family::V4, None) => "an IPv4 address of its own (other than VIPs)".to_string(),
                        (Family::V6, None) => "a link-local IPv6 address (fe80::/10) of its own".to_string(),
                    };
                    warn!(vrid = i.spec.vrid, iface = %ifname, "instance {:?}: the interface lacks {what} to send adverts from: starting in fault until it has it", i.spec.name)
                }
            }
        }
        let mut nft = Nft::default();
        if instances.iter().any(|i| i.spec.handover_relay) {
            // A relay a crashed run left would pass packets on for good.
            let script: String =
                instances.iter().map(|i| relay::remove_script(family, vip_ifindex, i.spec.vrid)).collect();
            match nft.apply(&script).await {
                Ok(()) => {}
                Err(NftError::Missing) => {
                    warn!(iface = %ifname, "handover_relay: nft not found (install package nftables, or set handover_relay = false): a planned hand-over resets the connections caught in mid-switch")
                }
                Err(e) => warn!(iface = %ifname, error = %e, "handover_relay: could not clear earlier relays"),
            }
        }
        let sides = instances
            .into_iter()
            .map(|inst| Side {
                inst,
                tracker_fault: false,
                group_fault: false,
                group_lowered: 0,
                priority_override: None,
            })
            .collect();
        Ok(Driver {
            ifname: ifname.to_string(),
            family,
            vip_ifindex,
            source_ifindex,
            vmac,
            ifindex: iface.index,
            router,
            socket,
            timer,
            announcer,
            netlink,
            link: Some(link),
            addrs: Some(addrs),
            addr_retry: None,
            sides,
            drain,
            commands: None,
            draining: Vec::new(),
            next_drain_check: None,
            stopping: false,
            inheriting,
            relay: RelayWorker::spawn(nft),
            relaying: Vec::new(),
        })
    }

    /// The operator's commands for these instances come from `commands`.
    pub fn take_commands(&mut self, commands: mpsc::UnboundedReceiver<ToDriver>) {
        self.commands = Some(commands);
    }

    /// Runs until `shutdown` says [`Stop::Resign`] (or its sender goes),
    /// then resigns: priority 0 from each master, VIPs removed once its
    /// successor spoke. On [`Stop::HandOver`] it stops at once and returns
    /// where each instance stood. Instances listed in `inherited` start
    /// from there ([`Router::start_inheriting`]).
    pub async fn run(mut self, mut shutdown: watch::Receiver<Stop>, inherited: Vec<HandedOver>) -> Vec<HandedOver> {
        let family = match self.family {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        };
        let span = info_span!("vrrp", iface = %self.ifname, family);
        async move {
            let carried: Vec<(u8, Inherited)> = inherited
                .iter()
                .filter(|h| self.sides.iter().any(|s| s.inst.spec.name == h.name && s.vrid() == h.vrid))
                .map(|h| (h.vrid, h.state))
                .collect();
            self.router.start_inheriting(Instant::now(), &carried);
            for i in 0..self.sides.len() {
                self.follow_trackers(i);
                self.follow_group(i);
            }
            self.execute().await;
            self.publish_groups();
            // The VIPs kept at start are right for an instance that goes on
            // as master; any other (a backup, one that started afresh)
            // lets go of them now.
            if self.inheriting {
                self.follow_addresses().await;
            }
            let mut buf = vec![0u8; 2048];
            let mut recv_errors = 0u32;
            loop {
                let deadline = self.router.poll_timeout();
                tokio::select! {
                    biased;
                    changed = shutdown.changed(), if !self.stopping => {
                        let stop = if changed.is_ok() { *shutdown.borrow_and_update() } else { Stop::Resign };
                        match stop {
                            Stop::Run => {}
                            Stop::Resign => {
                                self.stopping = true;
                                self.router.shutdown(Instant::now());
                            }
                            Stop::HandOver => return self.hand_over(),
                        }
                    }
                    changed = link_change(&mut self.link) => match changed {
                        Some(up) => self.router.set_link(Instant::now(), up),
                        None => {
                            // The watcher is gone: keep running on the last state.
                            warn!("the link watch ended; keeping the last link state");
                            self.link = None;
                        }
                    },
                    _ = side_change(&self.sides) => {
                        for i in 0..self.sides.len() {
                            self.follow_trackers(i);
                            self.follow_group(i);
                        }
                    }
                    _ = self.timer.sleep_until(deadline) => {
                        // After a stall (a paused VM, a starved CPU) the
                        // timer and the master's queued adverts are due at
                        // once: the adverts first, or an expired
                        // Master_Down_Timer makes a backup flip to master
                        // and straight back.
                        for _ in 0..MAX_QUEUED_DRAIN {
                            let Some(r) = self.socket.try_recv(&mut buf) else { break };
                            self.receive(r, &buf);
                        }
                        self.router.handle_timeout(Instant::now());
                    }
                    _ = retry_at(self.next_drain_check), if !self.draining.is_empty() => self.check_drains().await,
                    command = next_command(&mut self.commands) => match command {
                        Some(ToDriver::Command(c)) => self.command(c).await,
                        Some(ToDriver::Add(side, reply)) => {
                            let _ = reply.send(self.add(*side));
                        }
                        None => self.commands = None,
                    },
                    _ = retry_at(self.addr_retry) => {
                        self.addr_retry = None;
                        self.follow_addresses().await;
                    }
                    wake = addr_change(&mut self.addrs, [self.ifindex, self.vip_ifindex]) => match wake {
                        AddrWake::Ours => self.follow_addresses().await,
                        AddrWake::Closed => {
                            warn!("the address watch ended; VIPs and the primary are no longer followed");
                            self.addrs = None;
                        }
                    },
                    r = self.socket.recv(&mut buf) => match r {
                        Ok(r) => {
                            recv_errors = 0;
                            self.receive(r, &buf);
                        }
                        Err(e) => {
                            recv_errors = recv_errors.saturating_add(1);
                            if recv_errors == 1 {
                                warn!(error = %e, "receiving VRRP packets failed");
                            }
                            // Keep a persistent error from spinning the loop.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    },
                }
                self.execute().await;
                self.publish_groups();
                // A reload removed the last instance here: nothing left to run.
                if self.drop_removed() && self.sides.is_empty() {
                    info!("no instance left on this interface; its driver stops");
                    break;
                }
                // A resigning master stays until its successor advertises
                // (or its release timer fires) and its VIPs are released.
                if self.stopping && self.router.is_done() && self.draining.is_empty() {
                    break;
                }
            }
            for vrid in self.relaying.clone() {
                self.end_relay(vrid);
            }
            self.relay.flush(RELAY_FLUSH).await;
            if let Some(v) = &self.vmac {
                if let Err(e) = self.netlink.delete_link(&v.name).await {
                    warn!(error = %e, vmac = %v.name, "could not remove the virtual MAC interface");
                }
            }
            Vec::new()
        }
        .instrument(span)
        .await
    }

    /// Where each instance stands, as it stops for `vipd upgrade`.
    fn hand_over(&self) -> Vec<HandedOver> {
        let states = self.router.inheritance();
        let handed: Vec<HandedOver> = self
            .sides
            .iter()
            .filter_map(|s| {
                let state = states.iter().find(|(vrid, _)| *vrid == s.vrid())?.1;
                Some(HandedOver { name: s.inst.spec.name.clone(), vrid: s.vrid(), state })
            })
            .collect();
        for h in &handed {
            info!(vrid = h.vrid, "instance {:?} handed over to the successor process as {:?}", h.name, h.state);
        }
        handed
    }

    /// Hands one received packet to the router.
    fn receive(&mut self, r: Recv, buf: &[u8]) {
        let now = Instant::now();
        match r {
            Recv::Ipv4Packet(n) => self.router.handle_ipv4_packet(now, &buf[..n.min(buf.len())]),
            Recv::Ipv6Message { len, source, destination, hop_limit } => {
                let d = Datagram {
                    source: source.into(),
                    destination: destination.into(),
                    ttl: hop_limit,
                    message: &buf[..len.min(buf.len())],
                };
                self.router.handle_datagram(now, d);
            }
        }
    }

    fn side(&self, vrid: u8) -> Option<&Side> {
        self.sides.iter().find(|s| s.vrid() == vrid)
    }

    /// Carries out the router's outputs in order. True when VIPs were
    /// added or removed.
    async fn execute(&mut self) -> bool {
        let mut touched = false;
        while let Some(output) = self.router.poll_output() {
            match output {
                Output::Send { vrid, source, destination, message } => {
                    let Some(side) = self.side(vrid) else { continue };
                    let stats = &side.inst.stats;
                    match self.socket.send(&message, source, destination) {
                        Ok(()) => {
                            stats.tx_adverts.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            stats.tx_errors.fetch_add(1, Ordering::Relaxed);
                            warn!(error = %e, vrid, %source, %destination, "sending advert failed");
                        }
                    }
                }
                Output::ClaimVips { vrid } => {
                    touched = true;
                    self.draining.retain(|(v, _)| *v != vrid);
                    self.change_vips(vrid, true).await;
                }
                Output::ReleaseVips { vrid, drain } => {
                    if drain && self.drain.is_some() {
                        let now = Instant::now();
                        self.draining.push((vrid, now));
                        self.next_drain_check.get_or_insert(now + DRAIN_POLL);
                    } else {
                        touched = true;
                        self.change_vips(vrid, false).await;
                    }
                }
                Output::Frames { vrid, frames } => {
                    if let Some(side) = self.side(vrid) {
                        send_frames(&self.announcer, &frames, &side.inst.stats);
                    }
                }
                Output::StateChanged { vrid, from, to, reason } => {
                    let Some(side) = self.side(vrid) else { continue };
                    let master = self.router.view(vrid).and_then(|v| v.master);
                    let master = master.map_or_else(|| "-".to_string(), |a| a.to_string());
                    let name = &side.inst.spec.name;
                    info!(%from, %to, %reason, %master, instance = %name, vrid, "state change");
                    side.inst.stats.record_transition(from, to, reason.to_string());
                    if let (Some((queue, hooks)), Some(word)) = (&side.inst.hooks, state_word(to, reason)) {
                        let priority = self.router.view(vrid).map(|v| v.priority);
                        queue.push(word, hooks.commands("INSTANCE", name, word, priority));
                    }
                }
                Output::RelayTo { vrid, peer } => self.start_relay(vrid, peer),
                Output::EndRelay { vrid } => self.end_relay(vrid),
                Output::SourceChanged { vrid, from, to } => match (from, to) {
                    (_, Some(to)) => info!(vrid, from = ?from, %to, "sending adverts from a new source address"),
                    (Some(from), None) => {
                        warn!(vrid, %from, "the address adverts went from is gone; adverts cannot be sent")
                    }
                    (None, None) => {}
                },
            }
        }
        touched
    }

    /// Has `vrid`'s hand-over relay to `peer` put in place.
    fn start_relay(&mut self, vrid: u8, peer: IpAddr) {
        let Some(side) = self.side(vrid) else { return };
        let vips = side.inst.spec.virtual_ips.clone();
        let rule = RelayRule {
            family: self.family,
            vip_ifindex: self.vip_ifindex,
            out_ifindex: self.ifindex,
            vrid,
            vips,
            peer,
        };
        debug!(vrid, %peer, "hand-over relay for {RELAY_FOR:?}");
        self.relay.start(rule);
        if !self.relaying.contains(&vrid) {
            self.relaying.push(vrid);
        }
    }

    /// Has `vrid`'s hand-over relay removed, if it has one.
    fn end_relay(&mut self, vrid: u8) {
        if self.relaying.contains(&vrid) {
            self.relaying.retain(|v| *v != vrid);
            self.relay.end(self.family, self.vip_ifindex, vrid);
        }
    }

    /// Adds (`claim`) or removes the VIPs of `vrid`.
    async fn change_vips(&self, vrid: u8, claim: bool) {
        let Some(side) = self.side(vrid) else { return };
        for vip in &side.inst.vips {
            let result = if claim {
                self.netlink.add(self.vip_ifindex, vip, self.vmac.is_none()).await
            } else {
                self.netlink.del(self.vip_ifindex, vip).await
            };
            if let Err(e) = result {
                side.inst.stats.netlink_errors.fetch_add(1, Ordering::Relaxed);
                let what = if claim { "claim" } else { "release" };
                error!(error = %e, vrid, %vip, "could not {what} virtual IP");
            }
        }
    }

    /// Hand-overs waiting on the drain gate: their VIPs go once nothing is
    /// in flight, or at the gate's longest wait.
    async fn check_drains(&mut self) {
        let Some(gate) = self.drain.clone() else {
            self.draining.clear();
            return;
        };
        let busy = (gate.busy)();
        let now = Instant::now();
        self.next_drain_check = Some(now + DRAIN_POLL);
        let grace = HANDOVER_GRACE.min(gate.max_wait);
        let (due, waiting): (Vec<_>, Vec<_>) = self.draining.drain(..).partition(|(_, since)| {
            let waited = now.duration_since(*since);
            (!busy && waited >= grace) || waited >= gate.max_wait
        });
        self.draining = waiting;
        if self.draining.is_empty() {
            self.next_drain_check = None;
        }
        for (vrid, since) in due {
            if busy {
                warn!(vrid, waited = ?now.duration_since(since), "releasing virtual IPs with requests still in flight");
            } else {
                debug!(vrid, waited = ?now.duration_since(since), "in-flight requests done; releasing virtual IPs");
            }
            self.change_vips(vrid, false).await;
        }
    }

    /// Carries out an operator's command and says how it went.
    async fn command(&mut self, c: Command) {
        let Some(i) = self.sides.iter().position(|s| s.vrid() == c.vrid) else {
            let _ = c.reply.send(Err("no such instance here".into()));
            return;
        };
        let name = self.sides[i].inst.spec.name.clone();
        let now = Instant::now();
        let answer = match c.ask {
            Ask::StepDown | Ask::Resume => {
                let resume = c.ask == Ask::Resume;
                let before = self.router.view(c.vrid).map(|v| v.state);
                self.router.operator_step_down(now, c.vrid, resume);
                Ok(match (resume, before) {
                    (true, _) => format!("{name}: resumed (preempts again as configured)"),
                    (false, Some(State::Master)) => format!("{name}: stepping down: priority 0 sent, the VIPs stay until the new master advertises; then backup without preemption until resume"),
                    (false, _) => format!("{name}: not master; held as backup without preemption until resume"),
                })
            }
            Ask::Priority(p) if self.sides[i].inst.spec.priority == 255 && p.is_some() => {
                Err(format!("{name}: priority 255 is the address owner's and is not overridden"))
            }
            Ask::Reconfigure(r) => Ok(self.reconfigure(i, *r).await),
            Ask::Remove => {
                let was = self.router.view(c.vrid).map(|v| v.state);
                self.router.remove(now, c.vrid);
                Ok(match was {
                    Some(State::Master) => {
                        format!("{name}: removed: priority 0 sent; its VIPs go once the new master advertises")
                    }
                    _ => format!("{name}: removed"),
                })
            }
            Ask::Priority(p) => {
                self.sides[i].priority_override = p;
                self.sides[i].inst.stats.priority_override.store(p.unwrap_or(0), Ordering::Relaxed);
                self.apply_priority(i);
                Ok(match p {
                    Some(p) => format!("{name}: priority {p} until reset"),
                    None => format!("{name}: priority back to the configured and tracked one"),
                })
            }
        };
        match &answer {
            Ok(what) => info!(instance = %name, "operator: {what}"),
            Err(why) => warn!(instance = %name, "operator command refused: {why}"),
        }
        let _ = c.reply.send(answer);
    }

    /// A reload adds `inst` to this interface: it starts at once.
    fn add(&mut self, inst: InstanceSide) -> Result<String, String> {
        let (vrid, name) = (inst.spec.vrid, inst.spec.name.clone());
        if self.side(vrid).is_some() {
            return Err(format!("vrrp instance {name:?}: VRID {vrid} is in use on {}", self.ifname));
        }
        self.router.add(Instant::now(), inst.spec.clone(), Arc::clone(&inst.stats));
        self.sides.push(Side {
            inst,
            tracker_fault: false,
            group_fault: false,
            group_lowered: 0,
            priority_override: None,
        });
        let i = self.sides.len() - 1;
        self.follow_trackers(i);
        self.follow_group(i);
        let state = self.router.view(vrid).map_or(State::Initialize, |v| v.state);
        info!(vrid, "instance {name:?} added by a reload ({state})");
        Ok(format!("{name}: added ({state})"))
    }

    /// Instances a reload removed leave once stopped and released (their
    /// VIPs waiting on the drain gate first). True if one left.
    fn drop_removed(&mut self) -> bool {
        let draining = &self.draining;
        let gone = self.router.take_removed(|v| !draining.iter().any(|(d, _)| *d == v));
        for vrid in &gone {
            if let Some(i) = self.sides.iter().position(|s| s.vrid() == *vrid) {
                let side = self.sides.remove(i);
                info!(vrid, "instance {:?} removed", side.inst.spec.name);
            }
        }
        !gone.is_empty()
    }

    /// A reload's settings for instance `i`: the router takes them in
    /// place; VIPs it dropped leave the interface if it held them; the
    /// priority follows (trackers and an override still apply).
    async fn reconfigure(&mut self, i: usize, r: super::operator::Reconfigured) -> String {
        let vrid = self.sides[i].vrid();
        // Held also while a hand-over waits on the drain gate.
        let held = self.router.holds_vips(vrid) || self.draining.iter().any(|(v, _)| *v == vrid);
        let side = &mut self.sides[i];
        // Whole entries: a VIP whose prefix changed goes with its old
        // prefix (the kernel deletes by address and prefix) and comes back.
        let dropped: Vec<VirtualIp> = side.inst.vips.iter().filter(|v| !r.vips.contains(v)).copied().collect();
        let reprefixed = dropped.iter().any(|d| r.vips.iter().any(|n| n.addr == d.addr));
        side.inst.stats.reconfigured(&r.spec, r.vips.iter().map(|v| v.to_string()).collect());
        side.inst.vips = r.vips;
        side.inst.spec = r.spec.clone();
        if let Some((_, hooks)) = &mut side.inst.hooks {
            *hooks = r.notify;
        }
        self.router.reconfigure(Instant::now(), r.spec);
        if held {
            for vip in &dropped {
                if let Err(e) = self.netlink.del(self.vip_ifindex, vip).await {
                    self.sides[i].inst.stats.netlink_errors.fetch_add(1, Ordering::Relaxed);
                    error!(error = %e, vrid, %vip, "could not remove a virtual IP the reload dropped");
                }
            }
            if reprefixed && self.router.view(vrid).is_some_and(|v| v.state == State::Master && !v.resigning) {
                self.change_vips(vrid, true).await;
            }
        }
        self.apply_priority(i);
        let side = &self.sides[i];
        format!(
            "{}: reloaded (priority {}, {} VIPs{})",
            side.inst.spec.name,
            side.inst.spec.priority,
            side.inst.vips.len(),
            if dropped.is_empty() { String::new() } else { format!(", {} dropped", dropped.len()) }
        )
    }

    /// A tracker's verdict changed: new effective priority, or Fault.
    fn follow_trackers(&mut self, i: usize) {
        let Some(tracking) = self.sides[i].inst.tracking.clone() else { return };
        let e = tracking.effective();
        self.apply_priority(i);
        let side = &mut self.sides[i];
        if e.fault != side.tracker_fault {
            if e.fault {
                warn!(vrid = side.vrid(), explanation = %e.explanation, "a weightless tracker fails");
            }
            side.tracker_fault = e.fault;
            self.router.set_tracker_fault(Instant::now(), side.vrid(), e.fault);
        }
    }

    /// Sets the effective priority: our trackers', lowered further as far
    /// as another sync group member's trackers lower that one (the group
    /// moves as one). An owner (255) is never lowered.
    fn apply_priority(&mut self, i: usize) {
        let side = &self.sides[i];
        let tracked = member_priority(side.inst.spec.priority, side.own_priority(), side.group_lowered);
        let effective = side.priority_override.unwrap_or(tracked);
        let Some(before) = self.router.view(side.vrid()).map(|v| v.priority) else { return };
        if effective != before {
            let why = side
                .inst
                .tracking
                .as_ref()
                .map_or_else(|| side.inst.spec.priority.to_string(), |t| t.effective().explanation);
            info!(vrid = side.vrid(), from = before, to = effective, explanation = %why, group_lowered = side.group_lowered, "effective priority changed");
            self.router.set_priority(Instant::now(), side.vrid(), effective);
        }
    }

    /// Another member's state changed: share its fault; while one is backup
    /// under a better master, hold preemption back and step down as master.
    fn follow_group(&mut self, i: usize) {
        let Some((group, index)) = self.sides[i].inst.group.clone() else { return };
        let Others { fault, lost, lowered } = group.others(index);
        let vrid = self.sides[i].vrid();
        if lowered != self.sides[i].group_lowered {
            self.sides[i].group_lowered = lowered;
            self.sides[i].inst.stats.group_lowered.store(lowered, Ordering::Relaxed);
            self.apply_priority(i);
        }
        if fault != self.sides[i].group_fault {
            info!(group = group.name(), vrid, fault, "sync group fault changed");
            self.sides[i].group_fault = fault;
            self.router.set_group_fault(Instant::now(), vrid, fault);
        }
        self.router.follow_group_loss(Instant::now(), vrid, lost);
    }

    /// Tells each sync group what its members here are now.
    fn publish_groups(&self) {
        for side in &self.sides {
            let Some((group, i)) = &side.inst.group else { continue };
            let Some(view) = self.router.view(side.vrid()) else { continue };
            let word = match view.state {
                State::Master => Some("MASTER"),
                State::Backup => Some("BACKUP"),
                State::Fault => Some("FAULT"),
                State::Initialize if view.stopping => Some("STOP"),
                State::Initialize => None,
            };
            let lowered = side.inst.spec.priority.saturating_sub(side.own_priority());
            let own_fault = !view.usable_alone;
            // A member the operator stepped down follows its successor,
            // whatever that one's priority: the group goes with it.
            let handed_over = view.stepped_down && view.state == State::Backup && view.master.is_some();
            let lost = view.follows_better_master || handed_over;
            group.publish(*i, MemberState { own_fault, lost, lowered, word });
        }
    }

    /// After an address change on the interface: the router follows each
    /// instance's source; then the VIPs are made to match the states: a
    /// master puts back a VIP someone deleted (a network manager restart
    /// does), anyone else removes one someone added. Reads the interface
    /// rather than trusting the event, so events of our own changes, late
    /// or repeated, do nothing.
    async fn follow_addresses(&mut self) {
        let Some(addrs) = self.read_addresses(self.source_ifindex).await else { return };
        self.router.set_addresses(Instant::now(), &addrs);
        // A state change just now (to fault, say) changed the VIPs: look
        // again; and a macvlan's VIPs are its own.
        let addrs = if self.execute().await || self.vip_ifindex != self.source_ifindex {
            match self.read_addresses(self.vip_ifindex).await {
                Some(a) => a,
                None => return,
            }
        } else {
            addrs
        };
        for i in 0..self.sides.len() {
            let vrid = self.sides[i].vrid();
            let Some(view) = self.router.view(vrid) else { continue };
            // A resigning master, or one handing over, keeps what it has
            // until its successor speaks (make-before-break).
            let master = view.state == State::Master && !view.resigning;
            let handing_over = self.router.holds_vips(vrid) || self.draining.iter().any(|(v, _)| *v == vrid);
            let mut restored = false;
            let side = &self.sides[i];
            for vip in &side.inst.vips {
                let present = addrs.iter().any(|(a, _)| *a == vip.addr);
                let change = match (master, present) {
                    (true, false) => self
                        .netlink
                        .add(self.vip_ifindex, vip, self.vmac.is_none())
                        .await
                        .map(|()| "put back a virtual IP deleted under the master"),
                    (false, true) if !handing_over => self
                        .netlink
                        .del(self.vip_ifindex, vip)
                        .await
                        .map(|()| "removed a virtual IP added while not master"),
                    _ => continue,
                };
                match change {
                    Ok(what) => {
                        warn!(vrid, %vip, state = %view.state, "{what}");
                        if master {
                            side.inst.stats.vips_restored.fetch_add(1, Ordering::Relaxed);
                            restored = true;
                        }
                    }
                    Err(e) => {
                        side.inst.stats.netlink_errors.fetch_add(1, Ordering::Relaxed);
                        error!(error = %e, vrid, %vip, "could not correct a virtual IP");
                    }
                }
            }
            if restored {
                self.router.announce(Instant::now(), vrid);
            }
        }
        self.execute().await;
    }

    async fn read_addresses(&mut self, index: u32) -> Option<Vec<(IpAddr, bool)>> {
        match self.netlink.addresses_on(index).await {
            Ok(a) => Some(a),
            Err(e) => {
                for side in &self.sides {
                    side.inst.stats.netlink_errors.fetch_add(1, Ordering::Relaxed);
                }
                warn!(error = %e, "could not read the interface's addresses; trying again shortly");
                self.addr_retry = Some(Instant::now() + ADDR_RETRY);
                None
            }
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

/// What woke the driver on the address watch.
enum AddrWake {
    /// Its interface's addresses may have changed.
    Ours,
    /// The watch is gone.
    Closed,
}

/// Waits for an address change of an interface of `ours` (or for lost
/// events), then takes whatever else is queued: one look at the interface
/// serves a burst. Never resolves without a watch.
async fn addr_change(addrs: &mut Option<broadcast::Receiver<AddrEvent>>, ours: [u32; 2]) -> AddrWake {
    use broadcast::error::{RecvError, TryRecvError};
    let Some(rx) = addrs else { return std::future::pending().await };
    loop {
        match rx.recv().await {
            Ok(AddrEvent::Changed { index, .. }) if !ours.contains(&index) => continue,
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

/// The next operator command; `None` once the sender is gone; never
/// without a channel.
async fn next_command(commands: &mut Option<mpsc::UnboundedReceiver<ToDriver>>) -> Option<ToDriver> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when any instance's trackers changed their verdict or another
/// member of its sync group changed; never without trackers or groups.
async fn side_change(sides: &[Side]) {
    let mut waits: Vec<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = Vec::new();
    for side in sides {
        if let Some(t) = &side.inst.tracking {
            waits.push(Box::pin(t.changed()));
        }
        if let Some((g, i)) = &side.inst.group {
            waits.push(Box::pin(g.changed(*i)));
        }
    }
    if waits.is_empty() {
        return std::future::pending().await;
    }
    futures_util::future::select_all(waits).await;
}

fn send_frames(announcer: &Announcer, frames: &[Vec<u8>], stats: &Stats) {
    for frame in frames {
        match announcer.send(frame) {
            Ok(()) => {
                stats.garps.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => warn!(error = %e, "sending gratuitous ARP / neighbour advertisement failed"),
        }
    }
}
