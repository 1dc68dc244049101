//! The VRRP instances of one interface and address family, by VRID: fed the
//! interface's datagrams, its link and address changes and each instance's
//! tracker and sync group conditions, it says what to do through
//! [`Router::poll_output`]. The protocol rules of RFC 9568 §7.1 that need
//! an instance (its VRID, version, interval, peers, address list) live
//! here, beside the wire checks of [`packet`] and the state machine of
//! [`Fsm`]. Pure: no socket, no clock, no task; the driver passes the time.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::fsm::{skew_and_master_down, Action, Event, Fsm, Inherited, Params, Reason, State, PRIORITY_OWNER};
use super::packet::{self, Advert, Centiseconds, ChecksumForm, Datagram, DropReason, Family, Version};
use super::stats::Stats;
use crate::net::frames;

/// How long a master handing over keeps its VIPs, at the least, after its
/// successor's first advert (a SYN sent here just before the successor's
/// gratuitous ARP arrived would be dropped otherwise).
pub const HANDOVER_HOLD: Duration = Duration::from_millis(100);

/// How long a new master relays the old master's connections: past the
/// longest the old one keeps its VIPs (a vipd peer: 1 s for requests in
/// flight, after HANDOVER_HOLD).
pub const RELAY_FOR: Duration = Duration::from_secs(2);

/// How often a second owner of the virtual router is logged.
const OWNER_WARNING_EVERY: Duration = Duration::from_secs(10);

/// One instance as the router needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Name, for the log.
    pub name: String,
    /// Virtual router id, 1..=255.
    pub vrid: u8,
    /// Protocol version.
    pub version: Version,
    /// Configured priority, 1..=255.
    pub priority: u8,
    /// Advertisement_Interval.
    pub advert_interval: Centiseconds,
    /// Preempt a lower-priority master.
    pub preempt: bool,
    /// Hold preemption back this long after start.
    pub preempt_delay: Duration,
    /// Addresses claimed as master, in advert order, all of one family
    /// (for IPv6 a link-local one first, RFC 9568 §5.2.9).
    pub virtual_ips: Vec<IpAddr>,
    /// Checksum form sent for VRRPv3.
    pub checksum: ChecksumForm,
    /// Gratuitous ARPs per VIP in a burst.
    pub garp_count: u32,
    /// Spacing of a burst's rounds (zero: back to back).
    pub garp_interval: Duration,
    /// Second burst this long after becoming master.
    pub garp_repeat_delay: Option<Duration>,
    /// While master, a burst this often.
    pub garp_refresh: Option<Duration>,
    /// Longest a resigning master waits for its successor; `None` =
    /// Master_Down_Interval.
    pub release_timeout: Option<Duration>,
    /// Adverts go to these by unicast, and only theirs are accepted;
    /// empty = multicast to 224.0.0.18 or ff02::12.
    pub unicast_peers: Vec<IpAddr>,
    /// Send from this address rather than the interface's primary.
    pub unicast_source: Option<IpAddr>,
    /// The Router flag of unsolicited neighbour advertisements (IPv6).
    pub na_router_flag: bool,
    /// On taking over from a master that is still up, pass its TCP
    /// connections' packets on to it for [`RELAY_FOR`] ([`super::relay`]).
    pub handover_relay: bool,
}

impl InstanceSpec {
    /// The instance's address family: its VIPs'.
    pub fn family(&self) -> Family {
        self.virtual_ips.first().map_or(Family::V4, |a| Family::of(*a))
    }
}

/// What the driver is to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send one VRRP message (the kernel adds the IP header, TTL 255).
    Send {
        /// Whose.
        vrid: u8,
        /// Source address; the kernel refuses one that is not ours.
        source: IpAddr,
        /// The multicast group or a unicast peer.
        destination: IpAddr,
        /// The VRRP message.
        message: Vec<u8>,
    },
    /// Add the instance's VIPs to the interface.
    ClaimVips {
        /// Whose.
        vrid: u8,
    },
    /// Remove them: with `drain`, once work in flight on them finished (a
    /// hand-over, whose successor has spoken); otherwise now.
    ReleaseVips {
        /// Whose.
        vrid: u8,
        /// Wait for the drain gate first.
        drain: bool,
    },
    /// Send these link-layer frames (gratuitous ARPs, neighbour advertisements).
    Frames {
        /// Whose.
        vrid: u8,
        /// The frames.
        frames: Vec<Vec<u8>>,
    },
    /// The instance changed state.
    StateChanged {
        /// Whose.
        vrid: u8,
        /// From.
        from: State,
        /// To.
        to: State,
        /// Why.
        reason: Reason,
    },
    /// Pass packets of TCP connections that `peer`, the master this one
    /// took over from, still holds on to it (they would be reset here).
    /// Comes before the VIPs are claimed.
    RelayTo {
        /// Whose.
        vrid: u8,
        /// The old master.
        peer: IpAddr,
    },
    /// Stop relaying.
    EndRelay {
        /// Whose.
        vrid: u8,
    },
    /// The address the instance sends from changed (`None`: it has none).
    SourceChanged {
        /// Whose.
        vrid: u8,
        /// Before.
        from: Option<IpAddr>,
        /// Now.
        to: Option<IpAddr>,
    },
}

/// One instance as its sync group and the driver see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Its state.
    pub state: State,
    /// Shutdown began.
    pub stopping: bool,
    /// Usable but for its sync group: link up, a source, no weightless
    /// tracker failing.
    pub usable_alone: bool,
    /// Backup under a master of higher priority.
    pub follows_better_master: bool,
    /// A master that sent priority 0 and waits for its successor.
    pub resigning: bool,
    /// Its effective priority.
    pub priority: u8,
    /// The address it sends from, if it has one.
    pub source: Option<IpAddr>,
    /// The master as far as it knows (itself when master).
    pub master: Option<IpAddr>,
    /// Stepped down by the operator (no preemption until resumed).
    pub stepped_down: bool,
}

/// The rest of a spaced gratuitous ARP burst.
#[derive(Debug)]
struct Burst {
    next: Instant,
    rounds_left: u32,
}

#[derive(Debug)]
struct Member {
    spec: InstanceSpec,
    fsm: Fsm,
    stats: Arc<Stats>,
    /// Where adverts go from; `None` leaves the instance in Fault.
    source: Option<IpAddr>,
    tracker_fault: bool,
    group_fault: bool,
    stopping: bool,
    /// A reload removes it: it leaves once stopped.
    removing: bool,
    burst: Option<Burst>,
    /// A hand-over's VIPs go then ([`HANDOVER_HOLD`]).
    release_at: Option<Instant>,
    /// The old master's connections are relayed to it until then.
    relay: Option<(IpAddr, Instant)>,
    last_owner_warning: Option<Instant>,
}

impl Member {
    fn usable_alone(&self, link_up: bool) -> bool {
        link_up && self.source.is_some() && !self.tracker_fault
    }

    fn usable(&self, link_up: bool) -> bool {
        self.usable_alone(link_up) && !self.group_fault
    }

    /// `spec` on an interface holding `addresses`, where `all_vips` are
    /// every instance's VIPs (never a source).
    fn new(
        family: Family,
        spec: InstanceSpec,
        stats: Arc<Stats>,
        addresses: &[(IpAddr, bool)],
        all_vips: &[IpAddr],
    ) -> Member {
        let source = source_for(family, &spec, addresses, all_vips);
        let primary = source.unwrap_or(match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        });
        let fsm = Fsm::new(params_of(&spec, primary));
        Member {
            spec,
            fsm,
            stats,
            source,
            tracker_fault: false,
            group_fault: false,
            stopping: false,
            removing: false,
            burst: None,
            release_at: None,
            relay: None,
            last_owner_warning: None,
        }
    }

    /// Stopped and nothing left to release.
    fn is_stopped(&self) -> bool {
        self.stopping && self.fsm.state() != State::Master && self.release_at.is_none()
    }
}

/// The instances of one interface and address family.
#[derive(Debug)]
pub struct Router {
    family: Family,
    mac: [u8; 6],
    link_up: bool,
    /// The interface's addresses (address, secondary) as last told.
    addresses: Vec<(IpAddr, bool)>,
    members: Vec<Member>,
    outputs: VecDeque<Output>,
}

/// The interface's own address of `family` to send from, none of `vips`:
/// for IPv4 a primary (not secondary) one, else any; for IPv6 a link-local
/// one, as RFC 9568 §5.1.2.1 requires.
pub fn primary_of(family: Family, addrs: &[(IpAddr, bool)], vips: &[IpAddr]) -> Option<IpAddr> {
    let mut candidates = addrs.iter().filter(|(a, _)| Family::of(*a) == family && !vips.contains(a));
    match family {
        Family::V4 => {
            let first = candidates.clone().next().map(|(a, _)| *a);
            candidates.find(|(_, secondary)| !secondary).map(|(a, _)| *a).or(first)
        }
        Family::V6 => candidates.find(|(a, _)| is_link_local(*a)).map(|(a, _)| *a),
    }
}

/// fe80::/10.
pub fn is_link_local(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

impl Router {
    /// The router of an interface with link-layer address `mac`, usable or
    /// not (`link_up`), holding `addresses`, running `instances`, all of
    /// one family (nothing happens before [`Router::start`]).
    pub fn new(
        mac: [u8; 6],
        link_up: bool,
        addresses: &[(IpAddr, bool)],
        instances: Vec<(InstanceSpec, Arc<Stats>)>,
    ) -> Self {
        let family = instances.first().map_or(Family::V4, |(s, _)| s.family());
        let all_vips: Vec<IpAddr> = instances.iter().flat_map(|(s, _)| s.virtual_ips.iter().copied()).collect();
        let members =
            instances.into_iter().map(|(spec, stats)| Member::new(family, spec, stats, addresses, &all_vips)).collect();
        Router { family, mac, link_up, addresses: addresses.to_vec(), members, outputs: VecDeque::new() }
    }

    /// Starts every instance: backup (or master as owner), then fault at
    /// once where the link is down or there is no address to send from.
    pub fn start(&mut self, now: Instant) {
        self.start_inheriting(now, &[]);
    }

    /// [`Router::start`], but an instance listed in `inherited` (by VRID)
    /// goes on where the process this one replaces left it (`vipd
    /// upgrade`), if its link is up and it has an address to send from.
    pub fn start_inheriting(&mut self, now: Instant, inherited: &[(u8, Inherited)]) {
        for i in 0..self.members.len() {
            let vrid = self.members[i].spec.vrid;
            let carried = inherited.iter().find(|(v, _)| *v == vrid).map(|(_, s)| *s);
            self.start_member(now, i, carried);
        }
    }

    fn start_member(&mut self, now: Instant, i: usize, carried: Option<Inherited>) {
        let m = &mut self.members[i];
        match carried {
            Some(s) if self.link_up && m.source.is_some() => m.fsm.resume(now, s),
            _ => m.fsm.handle(now, Event::Startup),
        }
        if !self.link_up {
            m.fsm.handle(now, Event::LinkDown);
        } else if m.source.is_none() {
            m.fsm.handle(now, Event::NoAddress);
        }
        self.pump(now, i);
    }

    /// A reload adds instance `spec`: it starts at once, as at start (as
    /// backup, or master as the address owner, or in fault).
    pub fn add(&mut self, now: Instant, spec: InstanceSpec, stats: Arc<Stats>) {
        let mut all_vips: Vec<IpAddr> = self.members.iter().flat_map(|m| m.spec.virtual_ips.iter().copied()).collect();
        all_vips.extend(spec.virtual_ips.iter().copied());
        self.members.push(Member::new(self.family, spec, stats, &self.addresses, &all_vips));
        self.start_member(now, self.members.len() - 1, None);
    }

    /// A reload removes instance `vrid`: it stops as on a planned stop (a
    /// master sends priority 0 and keeps its VIPs until its successor
    /// speaks), then leaves ([`Router::take_removed`]). False if unknown.
    pub fn remove(&mut self, now: Instant, vrid: u8) -> bool {
        let Some(i) = self.index(vrid) else { return false };
        self.members[i].removing = true;
        self.members[i].stopping = true;
        self.members[i].fsm.handle(now, Event::Shutdown);
        self.pump(now, i);
        true
    }

    /// The removed instances whose stop is complete and that `may_leave`
    /// says may go (nothing of theirs left to do outside): they leave now.
    pub fn take_removed(&mut self, may_leave: impl Fn(u8) -> bool) -> Vec<u8> {
        let mut gone = Vec::new();
        self.members.retain(|m| {
            let leaves = m.removing && m.is_stopped() && may_leave(m.spec.vrid);
            if leaves {
                gone.push(m.spec.vrid);
            }
            !leaves
        });
        gone
    }

    /// Begins every instance's planned stop: a master sends priority 0 and
    /// keeps its VIPs until its successor speaks (make-before-break).
    pub fn shutdown(&mut self, now: Instant) {
        for i in 0..self.members.len() {
            self.members[i].stopping = true;
            self.members[i].fsm.handle(now, Event::Shutdown);
            self.pump(now, i);
        }
    }

    /// Every instance stopped and has nothing left to release.
    pub fn is_done(&self) -> bool {
        self.members.iter().all(Member::is_stopped)
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest deadline: an instance's timer, a burst's next round, a
    /// hand-over's release.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.members
            .iter()
            .flat_map(|m| [m.fsm.poll_timeout(), m.release_at, m.relay.map(|r| r.1), m.burst.as_ref().map(|b| b.next)])
            .flatten()
            .min()
    }

    /// Runs whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.members.len() {
            let m = &mut self.members[i];
            if m.release_at.is_some_and(|t| t <= now) {
                m.release_at = None;
                self.outputs.push_back(Output::ReleaseVips { vrid: m.spec.vrid, drain: true });
            }
            if m.relay.is_some_and(|r| r.1 <= now) {
                m.relay = None;
                self.outputs.push_back(Output::EndRelay { vrid: m.spec.vrid });
            }
            if m.burst.as_ref().is_some_and(|b| b.next <= now) {
                self.burst_round(now, i);
            }
            let m = &mut self.members[i];
            if m.fsm.poll_timeout().is_some_and(|t| t <= now) {
                m.fsm.handle_timeout(now);
                self.pump(now, i);
            }
        }
    }

    /// One IPv4 packet from the interface's raw socket, IP header included.
    pub fn handle_ipv4_packet(&mut self, now: Instant, packet: &[u8]) {
        match packet::ipv4_datagram(packet) {
            Ok(d) => self.handle_datagram(now, d),
            Err(reason) => self.count_drop(packet::claimed_vrid_ipv4(packet), reason),
        }
    }

    /// One VRRP message and what its IP header said. A packet that fails a
    /// check is counted (on the instance whose VRID it claims, or on every
    /// one when none is ours) and does nothing else.
    pub fn handle_datagram(&mut self, now: Instant, d: Datagram<'_>) {
        let rx = match packet::parse_datagram(&d) {
            Ok(rx) => rx,
            Err(reason) => return self.count_drop(d.message.get(1).copied(), reason),
        };
        // Our own adverts, should the kernel loop one back.
        if self.members.iter().any(|m| m.source == Some(rx.source)) {
            return;
        }
        let advert = &rx.advert;
        let Some(i) = self.index(advert.vrid) else {
            return self.count_drop(None, DropReason::Vrid);
        };
        let m = &self.members[i];
        let drop = if advert.version != m.spec.version {
            Some(DropReason::Version)
        } else if advert.version == Version::V2 && advert.interval != m.spec.advert_interval {
            // RFC 3768 §7.1: a v2 interval must match ours.
            Some(DropReason::Interval)
        } else if !m.spec.unicast_peers.is_empty() && !m.spec.unicast_peers.contains(&rx.source) {
            Some(DropReason::NotAPeer)
        } else {
            None
        };
        if let Some(reason) = drop {
            return self.count_drop(Some(advert.vrid), reason);
        }
        m.stats.count_peer(rx.source, rx.checksum_form, advert.priority);
        let same_list = m.spec.virtual_ips == advert.addresses;
        if !same_list && m.spec.version == Version::V2 && advert.priority != PRIORITY_OWNER {
            // RFC 3768 §7.1: from anyone but the owner, such a packet is dropped.
            debug!(from = %rx.source, vrid = advert.vrid, "v2 advert's address list differs from ours: dropped (RFC 3768 §7.1)");
            return self.count_drop(Some(advert.vrid), DropReason::AddressList);
        }
        if advert.priority != 0 && !same_list {
            m.stats.rx_address_mismatch.fetch_add(1, Ordering::Relaxed);
            debug!(from = %rx.source, vrid = advert.vrid, "advert's address list differs from ours (RFC 9568 §7.1: logged, not dropped)");
        }
        if advert.priority == 0 && m.fsm.state() == State::Backup && m.spec.handover_relay && m.relay.is_none() {
            // The master resigns: the relay goes in during Skew_Time, so
            // that taking over is not held up by it.
            self.members[i].relay = Some((rx.source, now + RELAY_FOR));
            self.outputs.push_back(Output::RelayTo { vrid: advert.vrid, peer: rx.source });
        }
        let event = Event::Advert { source: rx.source, priority: advert.priority, interval: advert.interval };
        self.members[i].fsm.handle(now, event);
        self.pump(now, i);
    }

    /// The interface became usable (up with carrier) or stopped being so.
    pub fn set_link(&mut self, now: Instant, up: bool) {
        if up == self.link_up {
            return;
        }
        for i in 0..self.members.len() {
            let was = self.members[i].usable(self.link_up);
            let is = self.members[i].usable(up);
            self.condition_changed(now, i, was, is, Event::LinkDown, Event::LinkUp);
        }
        self.link_up = up;
    }

    /// The interface's addresses now (address, secondary): each instance
    /// follows its source (the primary, or its `unicast_source`), goes to
    /// Fault without one and back when one returns.
    pub fn set_addresses(&mut self, now: Instant, addresses: &[(IpAddr, bool)]) {
        self.addresses = addresses.to_vec();
        let all_vips: Vec<IpAddr> = self.members.iter().flat_map(|m| m.spec.virtual_ips.iter().copied()).collect();
        for i in 0..self.members.len() {
            let m = &mut self.members[i];
            let source = source_for(self.family, &m.spec, addresses, &all_vips);
            if source == m.source {
                continue;
            }
            let was = m.usable(self.link_up);
            self.outputs.push_back(Output::SourceChanged { vrid: m.spec.vrid, from: m.source, to: source });
            m.source = source;
            if let Some(s) = source {
                m.fsm.set_primary_ip(s);
            }
            let is = m.usable(self.link_up);
            self.condition_changed(now, i, was, is, Event::NoAddress, Event::AddressBack);
            self.pump(now, i);
        }
    }

    /// A weightless tracker of `vrid` started or stopped failing.
    pub fn set_tracker_fault(&mut self, now: Instant, vrid: u8, fault: bool) {
        let Some(i) = self.index(vrid) else { return };
        self.change_member(now, i, |m| m.tracker_fault = fault, Event::TrackerFault, Event::TrackersOk);
    }

    /// A member of `vrid`'s sync group is in fault, or none is any more.
    pub fn set_group_fault(&mut self, now: Instant, vrid: u8, fault: bool) {
        let Some(i) = self.index(vrid) else { return };
        self.change_member(now, i, |m| m.group_fault = fault, Event::GroupFault, Event::GroupOk);
    }

    /// Applies `change` to member `i`, then tells its state machine `down`
    /// or `up` if that made it unusable or usable.
    fn change_member(&mut self, now: Instant, i: usize, change: impl FnOnce(&mut Member), down: Event, up: Event) {
        let was = self.members[i].usable(self.link_up);
        change(&mut self.members[i]);
        let is = self.members[i].usable(self.link_up);
        self.condition_changed(now, i, was, is, down, up);
    }

    /// The effective priority of `vrid` (trackers, sync group).
    pub fn set_priority(&mut self, now: Instant, vrid: u8, priority: u8) {
        let Some(i) = self.index(vrid) else { return };
        self.members[i].fsm.set_priority(now, priority);
        self.pump(now, i);
    }

    /// No preemption by `vrid` while another member of its sync group
    /// follows a better master; a master steps down.
    pub fn follow_group_loss(&mut self, now: Instant, vrid: u8, lost: bool) {
        let Some(i) = self.index(vrid) else { return };
        self.members[i].fsm.set_preempt_hold(lost);
        if lost {
            self.members[i].fsm.handle(now, Event::GroupStepDown);
        }
        self.pump(now, i);
    }

    /// The operator's step-down of `vrid` (`resume` = false) or its end.
    /// False when there is no such instance.
    pub fn operator_step_down(&mut self, now: Instant, vrid: u8, resume: bool) -> bool {
        let Some(i) = self.index(vrid) else { return false };
        let event = if resume { Event::OperatorResume } else { Event::OperatorStepDown };
        self.members[i].fsm.handle(now, event);
        self.members[i].stats.stepped_down.store(!resume, Ordering::Relaxed);
        self.pump(now, i);
        true
    }

    /// A reload's settings for instance `spec.vrid` (same VRID, version and
    /// family): they apply without a transition. A master that gained VIPs
    /// claims and announces them; dropping the ones it lost is the
    /// driver's (it knows their prefixes). The priority is the driver's to
    /// set (trackers and overrides make it). False when there is no such
    /// instance.
    pub fn reconfigure(&mut self, now: Instant, spec: InstanceSpec) -> bool {
        let Some(i) = self.index(spec.vrid) else { return false };
        let m = &mut self.members[i];
        let gained = spec.virtual_ips.iter().any(|a| !m.spec.virtual_ips.contains(a));
        m.fsm.reconfigure(now, params_of(&spec, m.fsm.params().primary_ip));
        m.spec = spec;
        let all_vips: Vec<IpAddr> = self.members.iter().flat_map(|m| m.spec.virtual_ips.iter().copied()).collect();
        let m = &mut self.members[i];
        // A source chosen among the interface's own addresses must not be a VIP now.
        let source = source_for(self.family, &m.spec, &self.addresses, &all_vips);
        if source != m.source {
            self.set_addresses(now, &self.addresses.clone());
        }
        let m = &self.members[i];
        if gained && m.fsm.state() == State::Master && !m.fsm.is_resigning() {
            self.outputs.push_back(Output::ClaimVips { vrid: m.spec.vrid });
            self.start_burst(now, i);
        }
        true
    }

    /// Starts a gratuitous ARP burst for `vrid`'s VIPs (one was put back).
    pub fn announce(&mut self, now: Instant, vrid: u8) {
        if let Some(i) = self.index(vrid) {
            self.start_burst(now, i);
        }
    }

    /// Where each instance stands, by VRID, for the process that takes
    /// over (`vipd upgrade`); instances in Initialize or Fault are left out.
    pub fn inheritance(&self) -> Vec<(u8, Inherited)> {
        self.members.iter().filter_map(|m| Some((m.spec.vrid, m.fsm.inheritance()?))).collect()
    }

    /// How `vrid` stands.
    pub fn view(&self, vrid: u8) -> Option<View> {
        let m = &self.members[self.index(vrid)?];
        Some(View {
            state: m.fsm.state(),
            stopping: m.stopping,
            usable_alone: m.usable_alone(self.link_up),
            follows_better_master: m.fsm.follows_better_master(),
            resigning: m.fsm.is_resigning(),
            priority: m.fsm.params().priority,
            source: m.source,
            master: m.fsm.master_ip(),
            stepped_down: m.fsm.is_stepped_down(),
        })
    }

    /// The VIPs whose removal the driver must not undo: a resigning
    /// master's, and a hand-over's until they are released.
    pub fn holds_vips(&self, vrid: u8) -> bool {
        self.index(vrid).is_some_and(|i| {
            let m = &self.members[i];
            m.fsm.state() == State::Master || m.fsm.is_resigning() || m.release_at.is_some()
        })
    }

    fn index(&self, vrid: u8) -> Option<usize> {
        self.members.iter().position(|m| m.spec.vrid == vrid)
    }

    fn count_drop(&self, vrid: Option<u8>, reason: DropReason) {
        match vrid.and_then(|v| self.index(v)) {
            Some(i) => self.members[i].stats.count_drop(reason),
            None => self.members.iter().for_each(|m| m.stats.count_drop(reason)),
        }
        debug!(%reason, ?vrid, "dropped packet");
    }

    fn condition_changed(&mut self, now: Instant, i: usize, was: bool, is: bool, down: Event, up: Event) {
        match (was, is) {
            (true, false) => self.members[i].fsm.handle(now, down),
            (false, true) => self.members[i].fsm.handle(now, up),
            _ => return,
        }
        self.pump(now, i);
    }

    /// Turns member `i`'s state machine actions into outputs.
    fn pump(&mut self, now: Instant, i: usize) {
        let actions: Vec<Action> = std::iter::from_fn(|| self.members[i].fsm.poll_action()).collect();
        // The relay is in place before the VIPs and the gratuitous ARPs
        // that bring the old master's clients here.
        for action in &actions {
            if let Action::StateChanged { from, to, reason } = action {
                self.follow_relay(now, i, *from, *to, reason);
            }
        }
        for action in actions {
            let m = &mut self.members[i];
            let vrid = m.spec.vrid;
            match action {
                Action::SendAdvert { priority } => self.send_advert(i, priority),
                Action::ClaimVips => {
                    m.release_at = None;
                    self.outputs.push_back(Output::ClaimVips { vrid });
                }
                Action::ReleaseVips => {
                    m.burst = None;
                    // Handing over (a planned stop, or a better master
                    // taking over): the successor's gratuitous ARPs follow
                    // its first advert, and until clients have them new
                    // connections still come here, so the VIPs stay a
                    // moment. Not on a fault: the link or address is gone.
                    if m.stopping || m.fsm.state() == State::Backup {
                        m.release_at = Some(now + HANDOVER_HOLD);
                    } else {
                        m.release_at = None;
                        self.outputs.push_back(Output::ReleaseVips { vrid, drain: false });
                    }
                }
                Action::Announce => self.start_burst(now, i),
                Action::StateChanged { from, to, reason } => {
                    self.outputs.push_back(Output::StateChanged { vrid, from, to, reason })
                }
                Action::StepDownAborted => {
                    m.stats.stepped_down.store(false, Ordering::Relaxed);
                    warn!(vrid, "step-down: no other router took over within the release timeout; staying master");
                }
                Action::Reasserted { against, priority } => {
                    info!(vrid, %against, priority, "another router acted as master; advertising and announcing again");
                }
                Action::OwnerConflict { from } => {
                    m.stats.rx_owner_conflicts.fetch_add(1, Ordering::Relaxed);
                    if m.last_owner_warning.is_none_or(|t| now >= t + OWNER_WARNING_EVERY) {
                        m.last_owner_warning = Some(now);
                        warn!(vrid, %from, "another router also owns the virtual addresses (both priority 255): a misconfiguration (RFC 9568 erratum 8298); the higher primary address wins");
                    }
                }
            }
        }
        // The master's address and learnt interval change without a transition.
        self.members[i].stats.record(&self.members[i].fsm);
    }

    /// Starts the relay on taking over from a live master (or keeps the
    /// one set up on its priority 0 for [`RELAY_FOR`] more), ends it on
    /// leaving Master.
    fn follow_relay(&mut self, now: Instant, i: usize, from: State, to: State, reason: &Reason) {
        let m = &mut self.members[i];
        let vrid = m.spec.vrid;
        if from == State::Master && m.relay.take().is_some() {
            self.outputs.push_back(Output::EndRelay { vrid });
        }
        let peer = match reason {
            Reason::PriorityZeroReceived { from } | Reason::Preempted { from, .. } => *from,
            _ => return,
        };
        if to == State::Master && m.spec.handover_relay {
            let in_place = m.relay.is_some_and(|(p, _)| p == peer);
            m.relay = Some((peer, now + RELAY_FOR));
            if !in_place {
                self.outputs.push_back(Output::RelayTo { vrid, peer });
            }
        }
    }

    fn send_advert(&mut self, i: usize, priority: u8) {
        let m = &self.members[i];
        let Some(source) = m.source else {
            // In fault for want of an address; a priority 0 on the way out
            // has nowhere to come from either.
            debug!(vrid = m.spec.vrid, "no address to send the advert from");
            return;
        };
        let advert = Advert {
            version: m.spec.version,
            vrid: m.spec.vrid,
            priority,
            interval: m.spec.advert_interval,
            addresses: m.spec.virtual_ips.clone(),
        };
        let group = [self.family.group()];
        let destinations: &[IpAddr] = if m.spec.unicast_peers.is_empty() { &group } else { &m.spec.unicast_peers };
        for &destination in destinations {
            // A unicast v3 checksum covers the real destination (what
            // keepalived 2.2 sends; receivers also take the 224.0.0.18 form).
            let message = advert.emit(m.spec.checksum, source, destination);
            self.outputs.push_back(Output::Send { vrid: m.spec.vrid, source, destination, message });
        }
    }

    /// The first round of gratuitous ARPs goes out now (a client must
    /// follow within a millisecond of our first advert); with a spacing,
    /// the rest follow as timers.
    fn start_burst(&mut self, now: Instant, i: usize) {
        let m = &mut self.members[i];
        m.burst = None;
        let rounds = m.spec.garp_count;
        if rounds == 0 {
            return;
        }
        let frames = self.garps(i);
        let m = &mut self.members[i];
        if m.spec.garp_interval.is_zero() {
            let all = frames.iter().cloned().cycle().take(frames.len() * rounds as usize).collect();
            self.outputs.push_back(Output::Frames { vrid: m.spec.vrid, frames: all });
            return;
        }
        if rounds > 1 {
            m.burst = Some(Burst { next: now + m.spec.garp_interval, rounds_left: rounds - 1 });
        }
        self.outputs.push_back(Output::Frames { vrid: m.spec.vrid, frames });
    }

    fn burst_round(&mut self, now: Instant, i: usize) {
        let frames = self.garps(i);
        let m = &mut self.members[i];
        if let Some(b) = &mut m.burst {
            b.rounds_left -= 1;
            b.next = now + m.spec.garp_interval;
            if b.rounds_left == 0 {
                m.burst = None;
            }
        }
        self.outputs.push_back(Output::Frames { vrid: m.spec.vrid, frames });
    }

    /// One gratuitous ARP or unsolicited neighbour advertisement per VIP.
    fn garps(&self, i: usize) -> Vec<Vec<u8>> {
        let spec = &self.members[i].spec;
        spec.virtual_ips.iter().map(|&a| frames::announcement(self.mac, a, spec.na_router_flag)).collect()
    }
}

/// The state machine's settings for `spec`, sending from `primary`.
fn params_of(spec: &InstanceSpec, primary: IpAddr) -> Params {
    Params {
        version: spec.version,
        priority: spec.priority,
        advert_interval: spec.advert_interval,
        preempt: spec.preempt,
        preempt_delay: spec.preempt_delay,
        primary_ip: primary,
        garp_repeat_delay: spec.garp_repeat_delay,
        garp_refresh: spec.garp_refresh,
        release_timeout: spec
            .release_timeout
            .unwrap_or_else(|| skew_and_master_down(spec.version, spec.priority, spec.advert_interval.as_duration()).1),
    }
}

/// Where an instance sends from: its `unicast_source` while the interface
/// has it, else the interface's primary.
fn source_for(
    family: Family,
    spec: &InstanceSpec,
    addresses: &[(IpAddr, bool)],
    all_vips: &[IpAddr],
) -> Option<IpAddr> {
    match spec.unicast_source {
        Some(s) => addresses.iter().any(|(a, _)| *a == s).then_some(s),
        None => primary_of(family, addresses, all_vips),
    }
}

#[cfg(test)]
mod tests {
    //! A simulated LAN: routers pass their real bytes to one another in
    //! virtual time, so codec, filters and state machine run together.
    use super::*;

    const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }
    const fn v6(last: u16) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, last))
    }

    const A: IpAddr = v4(192, 0, 2, 11);
    const B: IpAddr = v4(192, 0, 2, 12);
    const C: IpAddr = v4(192, 0, 2, 13);
    const VIP: IpAddr = v4(192, 0, 2, 10);
    const GROUP4: IpAddr = IpAddr::V4(packet::MULTICAST_V4);
    const MS: Duration = Duration::from_millis(1);

    fn spec(vrid: u8, priority: u8) -> InstanceSpec {
        InstanceSpec {
            name: format!("vr{vrid}"),
            vrid,
            version: Version::V3,
            priority,
            advert_interval: Centiseconds::new(10).expect("cs"),
            preempt: true,
            preempt_delay: Duration::ZERO,
            virtual_ips: vec![VIP],
            checksum: ChecksumForm::PseudoHeader,
            garp_count: 5,
            garp_interval: Duration::ZERO,
            garp_repeat_delay: None,
            garp_refresh: None,
            release_timeout: None,
            unicast_peers: Vec::new(),
            unicast_source: None,
            na_router_flag: false,
            handover_relay: true,
        }
    }

    /// An IPv4 packet around `msg` as a raw socket delivers it.
    fn ipv4(source: IpAddr, destination: IpAddr, ttl: u8, msg: &[u8]) -> Vec<u8> {
        let (IpAddr::V4(source), IpAddr::V4(destination)) = (source, destination) else { panic!("IPv4 only") };
        let total = (20 + msg.len()) as u16;
        let mut p = vec![0x45, 0xc0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, ttl, packet::IPPROTO_VRRP, 0, 0]);
        p.extend_from_slice(&source.octets());
        p.extend_from_slice(&destination.octets());
        p.extend_from_slice(msg);
        p
    }

    struct Node {
        addr: IpAddr,
        router: Router,
        stats: Vec<Arc<Stats>>,
        /// Cut off the LAN (crashed, or its cable pulled).
        cut: bool,
    }

    struct Lan {
        nodes: Vec<Node>,
        t0: Instant,
        now: Instant,
        /// The switch drops multicast (a cloud network).
        multicast_filtered: bool,
        /// Every output: (time since start, node, output).
        log: Vec<(Duration, usize, Output)>,
    }

    impl Lan {
        fn new(nodes: Vec<(IpAddr, Vec<InstanceSpec>)>) -> Lan {
            let nodes = nodes
                .into_iter()
                .map(|(addr, specs)| {
                    let stats: Vec<Arc<Stats>> =
                        specs.iter().map(|s| Arc::new(Stats::new(s, "eth0", Vec::new(), None))).collect();
                    let last = match addr {
                        IpAddr::V4(a) => a.octets()[3],
                        IpAddr::V6(a) => a.octets()[15],
                    };
                    let mac = [2, 0, 0x5e, 0x10, 0, last];
                    let instances = specs.into_iter().zip(stats.iter().cloned()).collect();
                    Node { addr, router: Router::new(mac, true, &[(addr, false)], instances), stats, cut: false }
                })
                .collect();
            let t0 = Instant::now();
            Lan { nodes, t0, now: t0, multicast_filtered: false, log: Vec::new() }
        }

        fn start(&mut self) {
            for n in &mut self.nodes {
                n.router.start(self.now);
            }
            self.flush();
        }

        fn at(&self, ms: u32) -> Instant {
            self.t0 + ms * MS
        }

        /// Delivers every output until none is left.
        fn flush(&mut self) {
            for _ in 0..10_000 {
                let mut sent = Vec::new();
                for (i, n) in self.nodes.iter_mut().enumerate() {
                    while let Some(o) = n.router.poll_output() {
                        if let Output::Send { source, destination, message, .. } = &o {
                            if !n.cut {
                                sent.push((i, *source, *destination, message.clone()));
                            }
                        }
                        self.log.push((self.now - self.t0, i, o));
                    }
                }
                if sent.is_empty() {
                    return;
                }
                for (from, source, destination, message) in sent {
                    let multicast = destination.is_multicast();
                    if multicast && self.multicast_filtered {
                        continue;
                    }
                    for (j, n) in self.nodes.iter_mut().enumerate() {
                        if j != from && !n.cut && (multicast || n.addr == destination) {
                            if source.is_ipv4() {
                                n.router.handle_ipv4_packet(self.now, &ipv4(source, destination, 255, &message));
                            } else {
                                let d = Datagram { source, destination, ttl: 255, message: &message };
                                n.router.handle_datagram(self.now, d);
                            }
                        }
                    }
                }
            }
            panic!("outputs never settle");
        }

        fn run_until(&mut self, until: Instant) {
            for _ in 0..1_000_000 {
                self.flush();
                let next = self.nodes.iter().filter_map(|n| n.router.poll_timeout()).min();
                match next {
                    Some(t) if t <= until => {
                        self.now = self.now.max(t);
                        for n in &mut self.nodes {
                            n.router.handle_timeout(self.now);
                        }
                    }
                    _ => {
                        self.now = until;
                        return;
                    }
                }
            }
            panic!("timers never settle");
        }

        fn state(&self, node: usize, vrid: u8) -> State {
            self.nodes[node].router.view(vrid).expect("instance").state
        }

        /// When `node` first went to `to` after `after`.
        fn became(&self, node: usize, to: State, after: Duration) -> Option<Duration> {
            self.log.iter().find_map(|(t, i, o)| match o {
                Output::StateChanged { to: s, .. } if *i == node && *s == to && *t >= after => Some(*t),
                _ => None,
            })
        }

        fn count(&self, node: usize, f: impl Fn(&Output) -> bool) -> usize {
            self.log.iter().filter(|(_, i, o)| *i == node && f(o)).count()
        }

        fn dropped(&self, node: usize, instance: usize, reason: DropReason) -> u64 {
            self.nodes[node].stats[instance].snapshot().rx.dropped[reason.name()]
        }
    }

    fn pair() -> Lan {
        Lan::new(vec![(A, vec![spec(51, 150)]), (B, vec![spec(51, 100)])])
    }

    #[test]
    fn the_higher_priority_wins_and_only_it_claims() {
        let mut lan = pair();
        lan.start();
        lan.run_until(lan.at(2000));
        assert_eq!((lan.state(0, 51), lan.state(1, 51)), (State::Master, State::Backup));
        assert_eq!(lan.count(0, |o| matches!(o, Output::ClaimVips { .. })), 1);
        assert_eq!(lan.count(1, |o| matches!(o, Output::ClaimVips { .. })), 0);
        // About one advert per 100 ms once master.
        let adverts = lan.count(0, |o| matches!(o, Output::Send { .. }));
        assert!((15..=21).contains(&adverts), "{adverts} adverts");
        assert_eq!(lan.dropped(1, 0, DropReason::Checksum), 0);
    }

    #[test]
    fn a_successor_process_goes_on_without_a_gap_or_a_transition() {
        let mut lan = pair();
        lan.start();
        lan.run_until(lan.at(1000));
        // Each node's router is replaced by one that inherits its state, as
        // `vipd upgrade` does: the master at 1030 ms, the backup at 1500 ms.
        let replace = |lan: &mut Lan, node: usize| {
            let inherited = lan.nodes[node].router.inheritance();
            let specs = vec![(spec(51, if node == 0 { 150 } else { 100 }), Arc::clone(&lan.nodes[node].stats[0]))];
            let addr = lan.nodes[node].addr;
            let mut next = Router::new([2, 0, 0x5e, 0x10, 0, node as u8], true, &[(addr, false)], specs);
            next.start_inheriting(lan.now, &inherited);
            lan.nodes[node].router = next;
        };
        lan.run_until(lan.at(1030));
        replace(&mut lan, 0);
        lan.run_until(lan.at(1500));
        replace(&mut lan, 1);
        lan.run_until(lan.at(3000));
        assert_eq!((lan.state(0, 51), lan.state(1, 51)), (State::Master, State::Backup));
        assert_eq!(lan.became(1, State::Master, Duration::ZERO), None, "the backup never took over");
        let changes = |node| {
            lan.count(node, |o| matches!(o, Output::StateChanged { reason, .. } if *reason != Reason::Inherited))
        };
        assert_eq!((changes(0), changes(1)), (2, 1), "only the first start's transitions");
        // The master's adverts: no gap over one interval, never priority 0.
        let sends: Vec<Duration> = lan
            .log
            .iter()
            .filter(|(t, i, o)| *i == 0 && *t >= 500 * MS && matches!(o, Output::Send { .. }))
            .map(|(t, _, _)| *t)
            .collect();
        let gap = sends.windows(2).map(|w| w[1] - w[0]).max().expect("adverts");
        assert!(gap <= 100 * MS, "longest gap {gap:?}");
        let zero =
            lan.log.iter().any(|(_, _, o)| matches!(o, Output::Send { message, .. } if message.get(2) == Some(&0)));
        assert!(!zero, "a priority 0 was sent");
    }

    #[test]
    fn a_reload_adds_an_instance_as_backup_and_removes_one_make_before_break() {
        let mut lan = pair();
        lan.start();
        lan.run_until(lan.at(1000));
        // VRID 52 added on both: the higher priority ends up master, and
        // VRID 51 is not disturbed.
        for (node, prio) in [(0, 150), (1, 100)] {
            let stats = Arc::new(Stats::new(&spec(52, prio), "eth0", Vec::new(), None));
            lan.nodes[node].router.add(lan.now, spec(52, prio), stats);
        }
        lan.flush();
        assert_eq!((lan.state(0, 52), lan.state(1, 52)), (State::Backup, State::Backup), "added as backup");
        lan.run_until(lan.at(2000));
        assert_eq!((lan.state(0, 52), lan.state(1, 52)), (State::Master, State::Backup));
        assert_eq!((lan.state(0, 51), lan.state(1, 51)), (State::Master, State::Backup));
        // Removed from A: priority 0, its VIPs kept until B advertises, then
        // it leaves the router; B took over after Skew_Time.
        assert!(lan.nodes[0].router.remove(lan.now, 52));
        assert!(lan.nodes[0].router.take_removed(|_| true).is_empty(), "still holding its VIPs");
        lan.run_until(lan.at(2500));
        let took = lan.became(1, State::Master, 2000 * MS).expect("B took over 52");
        assert!(took <= 2000 * MS + 61 * MS, "{took:?}");
        let released =
            lan.log.iter().any(|(t, i, o)| *i == 0 && *t >= took && matches!(o, Output::ReleaseVips { vrid: 52, .. }));
        assert!(released, "A released 52's VIPs after B's advert");
        assert!(!lan.nodes[0].router.take_removed(|v| v != 52).contains(&52), "not while its release waits");
        assert_eq!(lan.nodes[0].router.take_removed(|_| true), vec![52]);
        assert!(lan.nodes[0].router.view(52).is_none());
        assert_eq!(lan.state(0, 51), State::Master, "51 unaffected");
    }

    #[test]
    fn a_crashed_master_is_replaced_after_master_down_interval() {
        let mut lan = pair();
        lan.start();
        lan.run_until(lan.at(1000));
        lan.nodes[0].cut = true;
        lan.run_until(lan.at(2000));
        // Master_Down_Interval = 3 * 100 ms + (256 - 100) / 256 * 100 ms.
        let t = lan.became(1, State::Master, 1000 * MS).expect("B took over");
        assert!(t > 1000 * MS + 300 * MS && t <= 1000 * MS + 361 * MS, "took over at {t:?}");
    }

    #[test]
    fn a_planned_stop_hands_over_make_before_break() {
        let mut lan = pair();
        lan.start();
        lan.run_until(lan.at(1000));
        lan.nodes[0].router.shutdown(lan.now);
        lan.run_until(lan.at(1500));
        // B waits Skew_Time after the priority 0, not Master_Down_Interval.
        let took = lan.became(1, State::Master, 1000 * MS).expect("B took over");
        assert!(took <= 1000 * MS + 61 * MS, "{took:?}");
        // A keeps its VIPs HANDOVER_HOLD past B's first advert, then lets
        // them go once work in flight is done.
        let released = lan.log.iter().find_map(|(t, i, o)| match o {
            Output::ReleaseVips { drain, .. } if *i == 0 => Some((*t, *drain)),
            _ => None,
        });
        assert_eq!(released, Some((took + HANDOVER_HOLD, true)));
        assert!(lan.nodes[0].router.is_done());
    }

    /// B's relay outputs as (time, output), and whether the first came
    /// before B claimed the VIPs.
    fn relays(lan: &Lan) -> (Vec<(Duration, Output)>, bool) {
        let of_b = |o: &Output| matches!(o, Output::RelayTo { .. } | Output::EndRelay { .. });
        let list: Vec<(Duration, Output)> =
            lan.log.iter().filter(|(_, i, o)| *i == 1 && of_b(o)).map(|(t, _, o)| (*t, o.clone())).collect();
        let first_relay = lan.log.iter().position(|(_, i, o)| *i == 1 && of_b(o));
        let first_claim = lan.log.iter().position(|(_, i, o)| *i == 1 && matches!(o, Output::ClaimVips { .. }));
        (list, matches!((first_relay, first_claim), (Some(r), Some(c)) if r < c))
    }

    #[test]
    fn the_successor_relays_the_old_masters_connections_for_a_while() {
        // A planned stop: set up on A's priority 0, during Skew_Time, and
        // kept RELAY_FOR after B took over.
        let mut lan = pair();
        lan.start();
        lan.run_until(lan.at(1000));
        lan.nodes[0].router.shutdown(lan.now);
        lan.run_until(lan.at(5000));
        let took = lan.became(1, State::Master, 1000 * MS).expect("B took over");
        let (list, first) = relays(&lan);
        assert_eq!(
            list,
            vec![(1000 * MS, Output::RelayTo { vrid: 51, peer: A }), (took + RELAY_FOR, Output::EndRelay { vrid: 51 })]
        );
        assert!(took > 1000 * MS && first, "the relay comes before the VIPs");

        // A crash: nobody to relay to.
        let mut lan = pair();
        lan.start();
        lan.run_until(lan.at(1000));
        lan.nodes[0].cut = true;
        lan.run_until(lan.at(5000));
        assert_eq!(lan.state(1, 51), State::Master);
        assert_eq!(relays(&lan).0, vec![]);

        // Preemption: relayed; B leaving Master ends it early.
        let mut lan = pair();
        lan.start();
        lan.run_until(lan.at(1000));
        lan.nodes[1].router.set_priority(lan.now, 51, 200);
        lan.run_until(lan.at(1500));
        let took = lan.became(1, State::Master, 1000 * MS).expect("B preempted");
        lan.nodes[1].router.shutdown(lan.now);
        lan.run_until(lan.at(5000));
        let (list, first) = relays(&lan);
        assert!(first);
        assert_eq!(list.len(), 2, "{list:?}");
        assert_eq!(list[0], (took, Output::RelayTo { vrid: 51, peer: A }));
        assert!(list[1].0 < took + RELAY_FOR && list[1].1 == Output::EndRelay { vrid: 51 }, "{list:?}");

        // Turned off: none.
        let off = |prio| InstanceSpec { handover_relay: false, ..spec(51, prio) };
        let mut lan = Lan::new(vec![(A, vec![off(150)]), (B, vec![off(100)])]);
        lan.start();
        lan.run_until(lan.at(1000));
        lan.nodes[0].router.shutdown(lan.now);
        lan.run_until(lan.at(5000));
        assert_eq!(lan.state(1, 51), State::Master);
        assert_eq!(relays(&lan).0, vec![]);
    }

    #[test]
    fn a_better_master_preempts_and_the_old_one_hands_over() {
        let mut lan = Lan::new(vec![(A, vec![spec(51, 100)]), (B, vec![spec(51, 150)])]);
        lan.nodes[1].cut = true;
        lan.start();
        lan.run_until(lan.at(1000));
        assert_eq!(lan.state(0, 51), State::Master);
        lan.nodes[1].cut = false;
        lan.run_until(lan.at(2000));
        assert_eq!((lan.state(0, 51), lan.state(1, 51)), (State::Backup, State::Master));
        assert!(lan.count(0, |o| matches!(o, Output::ReleaseVips { drain: true, .. })) == 1);
    }

    #[test]
    fn unicast_keeps_one_master_where_multicast_is_filtered() {
        let unicast = |prio, peer| InstanceSpec { unicast_peers: vec![peer], ..spec(51, prio) };
        let mut lan = Lan::new(vec![(A, vec![unicast(150, B)]), (B, vec![unicast(100, A)])]);
        lan.multicast_filtered = true;
        lan.start();
        lan.run_until(lan.at(2000));
        assert_eq!((lan.state(0, 51), lan.state(1, 51)), (State::Master, State::Backup));
        // Multicast alone splits the brain on such a network.
        let mut multicast = pair();
        multicast.multicast_filtered = true;
        multicast.start();
        multicast.run_until(multicast.at(2000));
        assert_eq!((multicast.state(0, 51), multicast.state(1, 51)), (State::Master, State::Master));
        // And a unicast crash fails over as multicast does.
        lan.nodes[0].cut = true;
        lan.run_until(lan.at(3000));
        assert_eq!(lan.state(1, 51), State::Master);
    }

    #[test]
    fn unicast_adverts_go_to_each_peer_with_their_own_checksum() {
        let s = InstanceSpec { unicast_peers: vec![B, C], ..spec(51, 255) };
        let mut lan = Lan::new(vec![(A, vec![s])]);
        lan.start();
        let sends: Vec<_> = lan
            .log
            .iter()
            .filter_map(|(_, _, o)| match o {
                Output::Send { source, destination, message, .. } => Some((*source, *destination, message.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(sends.iter().map(|s| s.1).collect::<Vec<_>>(), vec![B, C]);
        for (source, destination, message) in sends {
            let rx = packet::parse(&message, 255, source, destination).expect("valid");
            assert_eq!(rx.checksum_form, ChecksumForm::PseudoHeader);
            assert_ne!(packet::internet_checksum(&[&message]), 0, "the checksum covers the pseudo-header");
        }
    }

    #[test]
    fn only_listed_peers_are_heard() {
        let s = InstanceSpec { unicast_peers: vec![B], ..spec(51, 100) };
        let mut lan = Lan::new(vec![(A, vec![s]), (C, vec![spec(51, 254)])]);
        lan.start();
        lan.run_until(lan.at(1000));
        // C's better adverts are not from a peer: A is master regardless.
        assert_eq!(lan.state(0, 51), State::Master);
        assert!(lan.dropped(0, 0, DropReason::NotAPeer) >= 5);
    }

    #[test]
    fn instances_on_one_interface_do_not_count_each_other() {
        let mut lan = Lan::new(vec![(A, vec![spec(51, 150), spec(52, 150)]), (B, vec![spec(51, 100), spec(52, 100)])]);
        lan.start();
        lan.run_until(lan.at(1000));
        for vrid in [51, 52] {
            assert_eq!((lan.state(0, vrid), lan.state(1, vrid)), (State::Master, State::Backup));
        }
        for node in 0..2 {
            for instance in 0..2 {
                assert_eq!(lan.dropped(node, instance, DropReason::Vrid), 0);
            }
        }
    }

    #[test]
    fn bad_packets_are_counted_where_they_belong_and_do_nothing() {
        let mut lan = Lan::new(vec![(B, vec![spec(51, 100), spec(52, 100)])]);
        lan.start();
        let advert = Advert {
            version: Version::V3,
            vrid: 51,
            priority: 254,
            interval: Centiseconds::new(10).expect("cs"),
            addresses: vec![VIP],
        };
        let msg = advert.emit(ChecksumForm::PseudoHeader, A, GROUP4);
        let r = &mut lan.nodes[0].router;
        r.handle_ipv4_packet(lan.now, &ipv4(A, GROUP4, 64, &msg));
        let other = Advert { vrid: 60, ..advert.clone() }.emit(ChecksumForm::PseudoHeader, A, GROUP4);
        r.handle_ipv4_packet(lan.now, &ipv4(A, GROUP4, 255, &other));
        let v2 = Advert { version: Version::V2, interval: Centiseconds::new(100).expect("cs"), ..advert.clone() }.emit(
            ChecksumForm::MessageOnly,
            A,
            GROUP4,
        );
        r.handle_ipv4_packet(lan.now, &ipv4(A, GROUP4, 255, &v2));
        // TTL and version on the instance whose VRID it claims; a stranger's VRID on both.
        assert_eq!(lan.dropped(0, 0, DropReason::Ttl), 1);
        assert_eq!(lan.dropped(0, 1, DropReason::Ttl), 0);
        assert_eq!(lan.dropped(0, 0, DropReason::Version), 1);
        assert_eq!((lan.dropped(0, 0, DropReason::Vrid), lan.dropped(0, 1, DropReason::Vrid)), (1, 1));
        // None of it is heard: no master was learnt.
        assert_eq!(lan.nodes[0].router.view(51).and_then(|v| v.master), None);
        // A good one is.
        lan.nodes[0].router.handle_ipv4_packet(lan.now, &ipv4(A, GROUP4, 255, &msg));
        assert_eq!(lan.nodes[0].router.view(51).and_then(|v| v.master), Some(A));
    }

    #[test]
    fn v2_checks_the_interval_and_the_address_list() {
        let v2 = |prio| InstanceSpec {
            version: Version::V2,
            advert_interval: Centiseconds::new(100).expect("cs"),
            checksum: ChecksumForm::MessageOnly,
            ..spec(51, prio)
        };
        let mut lan = Lan::new(vec![(B, vec![v2(100)])]);
        lan.start();
        let advert = Advert {
            version: Version::V2,
            vrid: 51,
            priority: 200,
            interval: Centiseconds::new(200).expect("cs"),
            addresses: vec![VIP],
        };
        let send = |lan: &mut Lan, a: &Advert| {
            let msg = a.emit(ChecksumForm::MessageOnly, A, GROUP4);
            lan.nodes[0].router.handle_ipv4_packet(lan.now, &ipv4(A, GROUP4, 255, &msg));
        };
        send(&mut lan, &advert);
        assert_eq!(lan.dropped(0, 0, DropReason::Interval), 1);
        let other_list = Advert { interval: Centiseconds::new(100).expect("cs"), addresses: vec![C], ..advert.clone() };
        send(&mut lan, &other_list);
        assert_eq!(lan.dropped(0, 0, DropReason::AddressList), 1);
        // From the owner it is heard.
        send(&mut lan, &Advert { priority: 255, ..other_list });
        assert_eq!(lan.nodes[0].router.view(51).and_then(|v| v.master), Some(A));
    }

    #[test]
    fn a_spaced_burst_runs_as_timers_and_stops_with_the_vips() {
        let s = InstanceSpec { garp_count: 3, garp_interval: 50 * MS, ..spec(51, 255) };
        let mut lan = Lan::new(vec![(A, vec![s])]);
        lan.start();
        lan.run_until(lan.at(500));
        let rounds: Vec<Duration> =
            lan.log.iter().filter_map(|(t, _, o)| matches!(o, Output::Frames { .. }).then_some(*t)).collect();
        assert_eq!(rounds, vec![Duration::ZERO, 50 * MS, 100 * MS]);
        // A fault in mid-burst ends it.
        lan.nodes[0].router.announce(lan.now, 51);
        lan.run_until(lan.at(520));
        lan.nodes[0].router.set_link(lan.now, false);
        lan.run_until(lan.at(1000));
        let later = lan.log.iter().filter(|(t, _, o)| *t > 520 * MS && matches!(o, Output::Frames { .. })).count();
        assert_eq!(later, 0);
        assert_eq!(lan.count(0, |o| matches!(o, Output::ReleaseVips { drain: false, .. })), 1);
    }

    #[test]
    fn the_source_follows_the_interface_and_its_loss_is_a_fault() {
        let mut lan = pair();
        lan.start();
        lan.run_until(lan.at(1000));
        let r = &mut lan.nodes[0].router;
        // Only the VIP left: no address of our own.
        r.set_addresses(lan.now, &[(VIP, false)]);
        assert_eq!(r.view(51).map(|v| v.state), Some(State::Fault));
        let other = v4(192, 0, 2, 21);
        r.set_addresses(lan.now, &[(VIP, false), (other, true)]);
        let v = r.view(51).expect("instance");
        assert_eq!((v.state, v.source), (State::Backup, Some(other)));
        // A primary is preferred to a secondary.
        r.set_addresses(lan.now, &[(other, true), (A, false)]);
        assert_eq!(r.view(51).and_then(|v| v.source), Some(A));
        // An instance with a unicast_source follows that one only.
        let s = InstanceSpec { unicast_peers: vec![B], unicast_source: Some(other), ..spec(52, 100) };
        let mut r =
            Router::new([0; 6], true, &[(A, false)], vec![(s.clone(), Arc::new(Stats::new(&s, "eth0", vec![], None)))]);
        r.start(lan.now);
        assert_eq!(r.view(52).map(|v| v.state), Some(State::Fault));
        r.set_addresses(lan.now, &[(A, false), (other, true)]);
        assert_eq!(r.view(52).map(|v| (v.state, v.source)), Some((State::Backup, Some(other))));
    }

    fn spec6(vrid: u8, priority: u8) -> InstanceSpec {
        let global = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10));
        InstanceSpec { virtual_ips: vec![v6(0x10), global], ..spec(vrid, priority) }
    }

    #[test]
    fn ipv6_elects_from_link_local_sources_and_announces_with_neighbour_advertisements() {
        let mut lan = Lan::new(vec![(v6(0x11), vec![spec6(51, 150)]), (v6(0x12), vec![spec6(51, 100)])]);
        lan.start();
        lan.run_until(lan.at(1000));
        assert_eq!((lan.state(0, 51), lan.state(1, 51)), (State::Master, State::Backup));
        for (_, i, o) in &lan.log {
            if let (0, Output::Send { source, destination, message, .. }) = (i, o) {
                assert_eq!((*source, *destination), (v6(0x11), IpAddr::V6(packet::MULTICAST_V6)));
                assert_eq!(message.len(), 8 + 2 * 16);
            }
        }
        let frames: Vec<&Vec<u8>> = lan
            .log
            .iter()
            .filter_map(|(_, i, o)| match o {
                Output::Frames { frames, .. } if *i == 0 => Some(frames),
                _ => None,
            })
            .flatten()
            .collect();
        // Five rounds of one advertisement per VIP.
        assert_eq!(frames.len(), 10);
        assert!(frames.iter().all(|f| f.len() == frames::NA_LEN && f[12..14] == [0x86, 0xdd]));
        lan.nodes[0].cut = true;
        lan.run_until(lan.at(2000));
        let t = lan.became(1, State::Master, 1000 * MS).expect("B took over");
        assert!(t <= 1000 * MS + 361 * MS, "{t:?}");
    }

    #[test]
    fn ipv6_sources_are_link_local_only() {
        let global = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11));
        assert_eq!(primary_of(Family::V6, &[(global, false)], &[]), None);
        assert_eq!(primary_of(Family::V6, &[(global, false), (v6(0x11), false)], &[]), Some(v6(0x11)));
        // Never one of our VIPs, nor an address of the other family.
        assert_eq!(primary_of(Family::V6, &[(v6(0x10), false), (A, false)], &[v6(0x10)]), None);
        assert_eq!(primary_of(Family::V4, &[(v6(0x11), false), (A, true)], &[]), Some(A));
    }

    #[test]
    fn a_reload_changes_a_master_in_place() {
        let mut lan = pair();
        lan.start();
        lan.run_until(lan.at(1000));
        let before = lan.log.len();
        let extra = v4(192, 0, 2, 30);
        let changed = InstanceSpec { virtual_ips: vec![VIP, extra], preempt: false, ..spec(51, 150) };
        assert!(lan.nodes[0].router.reconfigure(lan.now, changed));
        lan.run_until(lan.at(2000));
        let after: Vec<&Output> = lan.log[before..].iter().filter(|(_, i, _)| *i == 0).map(|(_, _, o)| o).collect();
        // No transition; the new VIP claimed and announced once; the adverts
        // go on every 100 ms and carry both addresses.
        assert!(!after.iter().any(|o| matches!(o, Output::StateChanged { .. })));
        assert_eq!(after.iter().filter(|o| matches!(o, Output::ClaimVips { .. })).count(), 1);
        assert_eq!(after.iter().filter(|o| matches!(o, Output::Frames { .. })).count(), 1);
        let times: Vec<Duration> = lan.log[before..]
            .iter()
            .filter(|(_, i, o)| *i == 0 && matches!(o, Output::Send { .. }))
            .map(|(t, _, _)| *t)
            .collect();
        assert!(times.windows(2).all(|w| w[1] - w[0] <= 100 * MS), "{times:?}");
        let Some((_, _, Output::Send { message, .. })) =
            lan.log.iter().rev().find(|(_, i, o)| *i == 0 && matches!(o, Output::Send { .. }))
        else {
            panic!("no advert")
        };
        assert_eq!(message[3], 2, "two addresses in the advert");
        assert_eq!((lan.state(0, 51), lan.state(1, 51)), (State::Master, State::Backup));
        assert!(!lan.nodes[0].router.reconfigure(lan.now, spec(52, 150)), "no such instance");
    }
}
