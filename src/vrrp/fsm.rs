//! The VRRP state machine of RFC 5798 §6.4 (RFC 9568 §6.4), sans-IO.
//!
//! Events and `now` go in through [`Fsm::handle`] and [`Fsm::handle_timeout`];
//! actions come out of [`Fsm::poll_action`] and the next deadline out of
//! [`Fsm::poll_timeout`]. Nothing here reads a clock or touches a socket.

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::packet::{Centiseconds, Version};

/// Priority of the address owner (RFC 5798 §5.2.4).
pub const PRIORITY_OWNER: u8 = 255;
/// Priority a master sends when it stops (RFC 5798 §5.2.4).
pub const PRIORITY_RESIGN: u8 = 0;

/// Why an instance goes to Fault.
fn fault_reason(event: Event) -> Reason {
    match event {
        Event::NoAddress => Reason::NoAddress,
        Event::TrackerFault => Reason::TrackerFault,
        Event::GroupFault => Reason::GroupFault,
        _ => Reason::LinkDown,
    }
}

/// Protocol states, plus Fault for an interface that is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Waiting for Startup (or after Shutdown).
    Initialize,
    /// Listening for the master; takes over when Master_Down_Timer fires.
    Backup,
    /// Owns the virtual addresses and advertises.
    Master,
    /// The interface is down; nothing is sent or claimed.
    Fault,
}

impl State {
    /// Lower-case name used in logs and `/status`.
    pub fn name(self) -> &'static str {
        match self {
            State::Initialize => "init",
            State::Backup => "backup",
            State::Master => "master",
            State::Fault => "fault",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a transition happened; shown in logs and `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Startup with a priority below 255.
    Startup,
    /// Startup as the address owner (priority 255).
    AddressOwner,
    /// No advert within Master_Down_Interval.
    MasterDownTimerExpired,
    /// The master resigned; we waited Skew_Time.
    PriorityZeroReceived { from: IpAddr },
    /// We ignored a lower-priority master (preempt) until our timer fired.
    Preempted { priority: u8, from: IpAddr },
    /// A higher priority (or equal priority, higher address) master exists.
    HigherPriority { priority: u8, from: IpAddr },
    /// Operator stop.
    Shutdown,
    /// Operator stop, after the new master's first advert arrived.
    HandedOver { to: IpAddr },
    /// The interface went down.
    LinkDown,
    /// The interface came back.
    LinkUp,
    /// The interface has no address of its own left to send adverts from.
    NoAddress,
    /// An address to send adverts from is back.
    AddressBack,
    /// A tracker of weight 0 fails.
    TrackerFault,
    /// No tracker of weight 0 fails any more.
    TrackersOk,
    /// A member of our sync group is in fault.
    GroupFault,
    /// No member of our sync group is in fault any more.
    GroupOk,
    /// A member of our sync group lost to a better master: we follow.
    GroupStepDown,
    /// The operator asked for a hand-over; the successor took over.
    OperatorStepDown { to: IpAddr },
    /// Taken over from the vipd process this one replaced (`vipd upgrade`).
    Inherited,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Startup => f.write_str("startup"),
            Reason::AddressOwner => f.write_str("startup as address owner (priority 255)"),
            Reason::MasterDownTimerExpired => f.write_str("master down timer expired"),
            Reason::PriorityZeroReceived { from } => write!(f, "priority 0 received from {from}"),
            Reason::Preempted { priority, from } => {
                write!(f, "preempting lower priority {priority} from {from}")
            }
            Reason::HigherPriority { priority, from } => {
                write!(f, "higher priority {priority} from {from}")
            }
            Reason::Shutdown => f.write_str("shutdown"),
            Reason::HandedOver { to } => write!(f, "shutdown: new master {to} took over"),
            Reason::LinkDown => f.write_str("interface down"),
            Reason::LinkUp => f.write_str("interface up"),
            Reason::NoAddress => f.write_str("no address to send adverts from"),
            Reason::AddressBack => f.write_str("an address to send adverts from is back"),
            Reason::TrackerFault => f.write_str("a tracker of weight 0 fails"),
            Reason::TrackersOk => f.write_str("trackers pass again"),
            Reason::GroupFault => f.write_str("a member of the sync group is in fault"),
            Reason::GroupOk => f.write_str("no member of the sync group is in fault"),
            Reason::GroupStepDown => f.write_str("a member of the sync group is backup"),
            Reason::OperatorStepDown { to } => write!(f, "step-down asked by the operator: new master {to} took over"),
            Reason::Inherited => f.write_str("taken over from the process this one replaced (upgrade)"),
        }
    }
}

/// Inputs of the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The instance starts (RFC 5798 §6.4.1).
    Startup,
    /// The instance stops (sends priority 0 if master).
    Shutdown,
    /// A validated advert for our VRID from another router.
    Advert {
        /// IP source of the advert: the sender's primary address.
        source: IpAddr,
        /// Its priority.
        priority: u8,
        /// Its Max Advertise Interval.
        interval: Centiseconds,
    },
    /// The interface lost carrier or went down.
    LinkDown,
    /// The interface is usable again.
    LinkUp,
    /// The interface's last address of its own (not a VIP) went: adverts
    /// cannot be sent, so the instance cannot take part.
    NoAddress,
    /// The interface has an address of its own again (and is up).
    AddressBack,
    /// A weightless tracker fails (keepalived's weight-0 tracking).
    TrackerFault,
    /// Every weightless tracker passes again (and the interface is usable).
    TrackersOk,
    /// A member of the sync group is in fault (for its own reasons).
    GroupFault,
    /// No member of the sync group is in fault any more.
    GroupOk,
    /// A member of the sync group is backup under a better master: a master
    /// steps down too (priority 0, VIPs released), so the group moves whole.
    GroupStepDown,
    /// The operator asks for a planned hand-over (`vipd vrrp step-down`):
    /// a master sends priority 0 and keeps its VIPs until its successor
    /// advertises, as on a planned stop, then stays backup; no instance
    /// preempts until [`Event::OperatorResume`].
    OperatorStepDown,
    /// The operator lifts a step-down (`vipd vrrp resume`).
    OperatorResume,
}

/// Outputs of the state machine, executed in order by the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send one advert with this priority and our interval.
    SendAdvert { priority: u8 },
    /// Add the virtual addresses to the interface.
    ClaimVips,
    /// Remove the virtual addresses from the interface.
    ReleaseVips,
    /// Send a burst of gratuitous ARPs for the virtual addresses.
    Announce,
    /// The state changed.
    StateChanged { from: State, to: State, reason: Reason },
    /// Another router acted as master beside us (a split network healing,
    /// or it stepping down); we re-advertise and re-announce. For the log.
    Reasserted { against: IpAddr, priority: u8 },
    /// An operator's step-down found no successor within the release
    /// timeout: the instance stays master (and no longer held). For the log.
    StepDownAborted,
    /// We own the addresses (priority 255) and so does the sender: a
    /// misconfiguration (RFC 9568 erratum 8298); the higher primary address
    /// wins the tie as for any equal priority. For the log.
    OwnerConflict { from: IpAddr },
}

/// Configuration of one instance as the state machine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Protocol version; decides the Skew_Time formula.
    pub version: Version,
    /// Our priority, 1..=255.
    pub priority: u8,
    /// Our Advertisement_Interval.
    pub advert_interval: Centiseconds,
    /// Whether a higher priority backup takes over from a lower master.
    pub preempt: bool,
    /// After startup, how long preemption is held back.
    pub preempt_delay: Duration,
    /// Our primary address on the interface, for the tie-break.
    pub primary_ip: IpAddr,
    /// When to repeat the gratuitous ARP burst after becoming master.
    pub garp_repeat_delay: Option<Duration>,
    /// While master, gratuitous ARPs again this often (for switches that
    /// age their entries out); `None` = off.
    pub garp_refresh: Option<Duration>,
    /// On shutdown as master, the longest the VIPs are kept while waiting
    /// for the new master's first advert; zero releases at once (RFC).
    pub release_timeout: Duration,
}

/// Where an instance stood in the process it takes over from (`vipd
/// upgrade`), so that it goes on from there rather than start afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inherited {
    /// Master: it goes on advertising at once, its VIPs still in place.
    Master,
    /// Backup, following `master` (if one was heard) and its interval.
    Backup {
        /// The master it followed.
        master: Option<IpAddr>,
        /// That master's advertisement interval.
        master_adver: Duration,
    },
}

/// Skew_Time and Master_Down_Interval for a priority and the master's
/// interval: RFC 5798 §6.1 (v3) and RFC 3768 §6.1 (v2).
pub fn skew_and_master_down(version: Version, priority: u8, master_adver: Duration) -> (Duration, Duration) {
    let weight = 256 - u32::from(priority);
    let skew = match version {
        Version::V3 => master_adver * weight / 256,
        Version::V2 => Duration::from_secs(1) * weight / 256,
    };
    (skew, master_adver * 3 + skew)
}

/// One VRRP instance's protocol state.
#[derive(Debug)]
pub struct Fsm {
    params: Params,
    state: State,
    /// Learnt from the master's adverts (v3); our own interval otherwise.
    master_adver_interval: Duration,
    adver_timer: Option<Instant>,
    master_down_timer: Option<Instant>,
    garp_repeat_timer: Option<Instant>,
    garp_refresh_timer: Option<Instant>,
    /// Set while a resigning master waits for its successor.
    release_timer: Option<Instant>,
    /// What the Master_Down_Timer firing will mean, for the log.
    master_down_reason: Reason,
    started_at: Option<Instant>,
    /// Last time a lower-priority master made us re-assert ourselves.
    last_reassert: Option<Instant>,
    master_ip: Option<IpAddr>,
    /// The priority in the followed master's last advert.
    master_priority: Option<u8>,
    /// When we last became master.
    master_since: Option<Instant>,
    /// No preemption while set (a sync group member lost to a better master).
    preempt_hold: bool,
    /// The operator stepped this instance down: no preemption until resumed.
    operator_hold: bool,
    /// Where a resigning master goes once its successor speaks: Initialize
    /// on a planned stop, Backup on an operator's step-down.
    resign_to: State,
    actions: VecDeque<Action>,
}

impl Fsm {
    /// A state machine in Initialize; nothing happens before [`Event::Startup`].
    pub fn new(params: Params) -> Self {
        let master_adver_interval = params.advert_interval.as_duration();
        Fsm {
            params,
            state: State::Initialize,
            master_adver_interval,
            adver_timer: None,
            master_down_timer: None,
            garp_repeat_timer: None,
            garp_refresh_timer: None,
            release_timer: None,
            master_down_reason: Reason::MasterDownTimerExpired,
            started_at: None,
            last_reassert: None,
            master_ip: None,
            master_priority: None,
            master_since: None,
            preempt_hold: false,
            operator_hold: false,
            resign_to: State::Initialize,
            actions: VecDeque::new(),
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// A master that has sent priority 0 and keeps its VIPs until the new
    /// master advertises (make-before-break).
    pub fn is_resigning(&self) -> bool {
        self.release_timer.is_some()
    }

    /// The configuration this machine runs with.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Address of the current master as far as we know.
    pub fn master_ip(&self) -> Option<IpAddr> {
        self.master_ip
    }

    /// Master_Adver_Interval (RFC 5798 §6.1).
    pub fn master_adver_interval(&self) -> Duration {
        self.master_adver_interval
    }

    /// Skew_Time and Master_Down_Interval as they stand now.
    pub fn skew_and_master_down(&self) -> (Duration, Duration) {
        skew_and_master_down(self.params.version, self.params.priority, self.master_adver_interval)
    }

    /// The earliest pending deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.adver_timer, self.master_down_timer, self.garp_repeat_timer, self.garp_refresh_timer, self.release_timer]
            .into_iter()
            .flatten()
            .min()
    }

    /// Next action to execute, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Feeds one event.
    pub fn handle(&mut self, now: Instant, event: Event) {
        match (self.state, event) {
            (State::Initialize, Event::Startup) => self.startup(now),
            (State::Initialize | State::Fault, Event::Advert { .. }) => {}
            (State::Backup, Event::Advert { source, priority, interval }) => {
                self.backup_receives(now, source, priority, interval)
            }
            (State::Master, Event::Advert { source, priority, interval }) => {
                self.master_receives(now, source, priority, interval)
            }
            (State::Backup | State::Master, Event::Startup) => {}
            (State::Master, Event::Shutdown) => {
                // Also when a step-down is under way: this one ends the instance.
                self.resign_to = State::Initialize;
                self.master_resigns(now);
            }
            (State::Master, Event::OperatorStepDown) => {
                self.operator_hold = true;
                if !self.is_resigning() {
                    self.resign_to = State::Backup;
                    self.master_resigns(now);
                }
            }
            (_, Event::OperatorStepDown) => self.operator_hold = true,
            (_, Event::OperatorResume) => self.operator_hold = false,
            (State::Backup | State::Fault, Event::Shutdown) => {
                self.cancel_timers();
                self.transition(State::Initialize, Reason::Shutdown);
            }
            (State::Initialize, Event::Shutdown) => {}
            // Not right after becoming master (twice Master_Down_Interval):
            // the group's members settle at slightly different times.
            (State::Master, Event::GroupStepDown)
                if !self.is_resigning() && self.master_since.is_none_or(|t| now >= t + self.group_settle()) =>
            {
                self.step_down(now)
            }
            (_, Event::GroupStepDown) => {}
            (State::Master, Event::LinkDown | Event::NoAddress | Event::TrackerFault | Event::GroupFault) => {
                // Adverts cannot leave a dead link, so there is no priority 0
                // to send; the addresses go so no other interface answers.
                // A failing tracker leaves the link up: resign, so a backup
                // takes over after Skew_Time, not Master_Down_Interval.
                self.cancel_timers();
                self.master_ip = None;
                if matches!(event, Event::TrackerFault | Event::GroupFault) {
                    self.actions.push_back(Action::SendAdvert { priority: PRIORITY_RESIGN });
                }
                self.actions.push_back(Action::ReleaseVips);
                self.transition(State::Fault, fault_reason(event));
            }
            (
                State::Backup | State::Initialize,
                Event::LinkDown | Event::NoAddress | Event::TrackerFault | Event::GroupFault,
            ) => {
                self.cancel_timers();
                self.master_ip = None;
                self.transition(State::Fault, fault_reason(event));
            }
            (State::Fault, Event::LinkUp | Event::AddressBack | Event::TrackersOk | Event::GroupOk) => {
                let reason = match event {
                    Event::LinkUp => Reason::LinkUp,
                    Event::AddressBack => Reason::AddressBack,
                    Event::GroupOk => Reason::GroupOk,
                    _ => Reason::TrackersOk,
                };
                self.transition(State::Initialize, reason);
                self.startup(now);
            }
            (
                State::Fault,
                Event::LinkDown | Event::NoAddress | Event::TrackerFault | Event::GroupFault | Event::Startup,
            )
            | (
                State::Initialize | State::Backup | State::Master,
                Event::LinkUp | Event::AddressBack | Event::TrackersOk | Event::GroupOk,
            ) => {}
        }
    }

    /// Instead of [`Event::Startup`]: goes on in the state the process this
    /// one replaces had (`vipd upgrade`). A master advertises at once, so
    /// that the group sees no gap, and claims its VIPs (they are still
    /// there: nothing moves, so no gratuitous ARP); a backup keeps following
    /// its master with a fresh Master_Down_Timer. No preempt delay: this is
    /// not a boot. Only from Initialize.
    pub fn resume(&mut self, now: Instant, inherited: Inherited) {
        if self.state != State::Initialize {
            return;
        }
        self.started_at = Some(now.checked_sub(self.params.preempt_delay).unwrap_or(now));
        match inherited {
            Inherited::Master => {
                self.master_since = Some(now);
                self.master_ip = Some(self.params.primary_ip);
                self.master_adver_interval = self.params.advert_interval.as_duration();
                self.transition(State::Master, Reason::Inherited);
                self.send_advert(now);
                self.actions.push_back(Action::ClaimVips);
                self.garp_refresh_timer = self.params.garp_refresh.map(|d| now + d);
            }
            Inherited::Backup { master, master_adver } => {
                self.master_ip = master;
                self.master_adver_interval = master_adver;
                self.arm_master_down(now, Reason::MasterDownTimerExpired);
                self.transition(State::Backup, Reason::Inherited);
            }
        }
    }

    /// Where it stands, for the process that takes over from this one
    /// (`vipd upgrade`); `None` in Initialize and Fault, which the
    /// successor finds again by itself.
    pub fn inheritance(&self) -> Option<Inherited> {
        match self.state {
            State::Master => Some(Inherited::Master),
            State::Backup => {
                Some(Inherited::Backup { master: self.master_ip, master_adver: self.master_adver_interval })
            }
            State::Initialize | State::Fault => None,
        }
    }

    /// The interface's primary address changed: adverts go from it, and it
    /// is our side of the tie-break (RFC 9568 §6.4.3).
    pub fn set_primary_ip(&mut self, ip: IpAddr) {
        self.params.primary_ip = ip;
        if self.state == State::Master {
            self.master_ip = Some(ip);
        }
    }

    /// The effective priority changed (trackers). A master says so at once
    /// in an advert; a backup uses it from its next timer on (Skew_Time
    /// and Master_Down_Interval depend on it).
    pub fn set_priority(&mut self, now: Instant, priority: u8) {
        if priority == self.params.priority {
            return;
        }
        self.params.priority = priority;
        if self.state == State::Master && !self.is_resigning() {
            self.send_advert(now);
        }
    }

    /// Runs every timer whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.release_timer.is_some_and(|t| t <= now) {
            if self.resign_to == State::Backup {
                // A step-down nobody took over: giving the VIPs up would
                // leave them on no node. Stay master, and say so.
                self.release_timer = None;
                self.resign_to = State::Initialize;
                self.operator_hold = false;
                self.actions.push_back(Action::StepDownAborted);
                self.send_advert(now);
                self.garp_refresh_timer = self.params.garp_refresh.map(|every| now + every);
                return;
            }
            self.release(now, None);
            return;
        }
        if self.garp_repeat_timer.is_some_and(|t| t <= now) {
            self.garp_repeat_timer = None;
            if self.state == State::Master {
                self.actions.push_back(Action::Announce);
            }
        }
        if let (Some(due), Some(every)) = (self.garp_refresh_timer.filter(|t| *t <= now), self.params.garp_refresh) {
            self.garp_refresh_timer = None;
            if self.state == State::Master && !self.is_resigning() {
                self.actions.push_back(Action::Announce);
                self.garp_refresh_timer = Some(if due + every > now { due + every } else { now + every });
            }
        }
        match self.state {
            State::Backup if self.master_down_timer.is_some_and(|t| t <= now) => {
                let reason = self.master_down_reason;
                self.become_master(now, reason);
            }
            State::Master => {
                if let Some(due) = self.adver_timer.filter(|t| *t <= now) {
                    // Schedule from the deadline, not from when we woke, so a
                    // late wake-up does not stretch every later interval.
                    let interval = self.params.advert_interval.as_duration();
                    let next = if due + interval > now { due + interval } else { now + interval };
                    self.actions.push_back(Action::SendAdvert { priority: self.params.priority });
                    self.adver_timer = Some(next);
                }
            }
            _ => {}
        }
    }

    /// §6.4.1: the owner becomes master at once, everyone else backup.
    fn startup(&mut self, now: Instant) {
        self.started_at = Some(now);
        if self.params.priority == PRIORITY_OWNER {
            self.become_master(now, Reason::AddressOwner);
        } else {
            self.master_adver_interval = self.params.advert_interval.as_duration();
            self.master_ip = None;
            self.arm_master_down(now, Reason::MasterDownTimerExpired);
            self.transition(State::Backup, Reason::Startup);
        }
    }

    /// §6.4.2 "If the Master_Down_Timer fires": advertise, claim, announce.
    /// How long a new master ignores its sync group's step-down.
    fn group_settle(&self) -> Duration {
        self.skew_and_master_down().1 * 2
    }

    fn become_master(&mut self, now: Instant, reason: Reason) {
        self.master_since = Some(now);
        self.master_down_timer = None;
        self.master_ip = Some(self.params.primary_ip);
        self.master_adver_interval = self.params.advert_interval.as_duration();
        self.transition(State::Master, reason);
        self.send_advert(now);
        self.actions.push_back(Action::ClaimVips);
        self.actions.push_back(Action::Announce);
        self.garp_repeat_timer = self.params.garp_repeat_delay.map(|d| now + d);
        self.garp_refresh_timer = self.params.garp_refresh.map(|d| now + d);
    }

    fn send_advert(&mut self, now: Instant) {
        self.actions.push_back(Action::SendAdvert { priority: self.params.priority });
        self.adver_timer = Some(now + self.params.advert_interval.as_duration());
    }

    /// §6.4.3 "If a Shutdown event is received": priority 0 so a backup
    /// takes over after Skew_Time. Unlike the RFC, the VIPs stay until the
    /// new master's first advert (or `release_timeout`): clients keep being
    /// served during the Skew_Time gap instead of losing it.
    fn master_resigns(&mut self, now: Instant) {
        if self.is_resigning() {
            return;
        }
        self.cancel_timers();
        self.actions.push_back(Action::SendAdvert { priority: PRIORITY_RESIGN });
        if self.params.release_timeout.is_zero() {
            self.release(now, None);
        } else {
            self.release_timer = Some(now + self.params.release_timeout);
        }
    }

    /// A resigning master lets its VIPs go: its successor `to` spoke (or
    /// none did within the release timeout). After a planned stop it is
    /// done; after an operator's step-down it follows the successor.
    fn release(&mut self, now: Instant, to: Option<IpAddr>) {
        self.cancel_timers();
        self.actions.push_back(Action::ReleaseVips);
        if self.resign_to == State::Backup {
            self.resign_to = State::Initialize;
            self.master_ip = to;
            self.master_priority = None;
            self.arm_master_down(now, Reason::MasterDownTimerExpired);
            let reason = to.map_or(Reason::Shutdown, |to| Reason::OperatorStepDown { to });
            self.transition(State::Backup, reason);
            return;
        }
        let reason = to.map_or(Reason::Shutdown, |to| Reason::HandedOver { to });
        self.transition(State::Initialize, reason);
    }

    fn cancel_timers(&mut self) {
        self.release_timer = None;
        self.adver_timer = None;
        self.master_down_timer = None;
        self.garp_repeat_timer = None;
        self.garp_refresh_timer = None;
    }

    fn arm_master_down(&mut self, now: Instant, reason: Reason) {
        let (_, master_down) = self.skew_and_master_down();
        self.master_down_timer = Some(now + master_down);
        self.master_down_reason = reason;
    }

    fn preempt_allowed(&self, now: Instant) -> bool {
        self.params.preempt
            && !self.preempt_hold
            && !self.operator_hold
            && self.started_at.is_none_or(|t| now >= t + self.params.preempt_delay)
    }

    /// A reload changed the instance's settings (`params`; its priority and
    /// primary address stay, they change through [`Fsm::set_priority`] and
    /// [`Fsm::set_primary_ip`]): they apply from now on, without a
    /// transition and without touching a running timer, so a master's
    /// advert rhythm goes on (a new interval from its next advert).
    pub fn reconfigure(&mut self, now: Instant, params: Params) {
        let (priority, primary_ip) = (self.params.priority, self.params.primary_ip);
        self.params = Params { priority, primary_ip, ..params };
        // A master's refresh bursts follow the new setting from now on.
        self.garp_refresh_timer = match self.params.garp_refresh {
            Some(every) if self.state == State::Master && !self.is_resigning() => {
                Some(self.garp_refresh_timer.map_or(now + every, |t| t.min(now + every)))
            }
            _ => None,
        };
    }

    /// Whether the operator stepped this instance down (and has not resumed it).
    pub fn is_stepped_down(&self) -> bool {
        self.operator_hold
    }

    /// Holds preemption back (or lets it go): a sync group member is backup
    /// under a better master, and the group stays together.
    pub fn set_preempt_hold(&mut self, hold: bool) {
        self.preempt_hold = hold;
    }

    /// Backup under a master of a strictly higher priority: we lost and
    /// would not preempt it (what a sync group follows). A tie lost on the
    /// address does not count: with equal priorities the two segments'
    /// address orders may disagree, and the group would step down on both
    /// nodes in turn for ever.
    pub fn follows_better_master(&self) -> bool {
        self.state == State::Backup
            && self.master_ip.is_some()
            && self.master_priority.is_some_and(|p| p > self.params.priority)
    }

    /// Two owners of one virtual router (erratum 8298): said, then the
    /// ordinary rules go on.
    fn note_owner_conflict(&mut self, source: IpAddr, priority: u8) {
        if priority == PRIORITY_OWNER && self.params.priority == PRIORITY_OWNER {
            self.actions.push_back(Action::OwnerConflict { from: source });
        }
    }

    /// §6.4.2 "If an ADVERTISEMENT is received" in Backup.
    fn backup_receives(&mut self, now: Instant, source: IpAddr, priority: u8, interval: Centiseconds) {
        self.note_owner_conflict(source, priority);
        if priority == PRIORITY_RESIGN {
            // Only the master we follow can resign for us. A priority 0 from
            // another router (one stepping down after a split) leaves us be:
            // the RFC's rule would have every backup jump to Skew_Time.
            if self.master_ip.is_some_and(|m| m != source) {
                return;
            }
            // Only ever sooner: a takeover already due stays due.
            let (skew, _) = self.skew_and_master_down();
            if self.master_down_timer.is_none_or(|t| t > now + skew) {
                self.master_down_timer = Some(now + skew);
                self.master_down_reason = Reason::PriorityZeroReceived { from: source };
            }
            return;
        }
        if !self.preempt_allowed(now) || priority >= self.params.priority {
            if self.params.version == Version::V3 {
                self.master_adver_interval = interval.as_duration();
            }
            self.master_ip = Some(source);
            self.master_priority = Some(priority);
            self.arm_master_down(now, Reason::MasterDownTimerExpired);
        } else {
            // Discard: the timer keeps running and we take over when it fires.
            self.master_down_reason = Reason::Preempted { priority, from: source };
            if self.master_ip == Some(source) {
                self.master_priority = Some(priority);
            }
            // Not in the RFC: the master we followed is now below us (its
            // trackers lowered it, or ours rose). Waiting out its last
            // Master_Down_Interval serves no one: take over after
            // Skew_Time, as if it had resigned.
            if self.master_ip == Some(source) {
                let (skew, _) = self.skew_and_master_down();
                let soon = now + skew;
                if self.master_down_timer.is_none_or(|t| t > soon) {
                    self.master_down_timer = Some(soon);
                }
            }
        }
    }

    /// §6.4.3 "If an ADVERTISEMENT is received" in Master.
    fn master_receives_while_resigning(&mut self, now: Instant, source: IpAddr, priority: u8) {
        if priority != PRIORITY_RESIGN {
            self.release(now, Some(source));
        }
    }

    fn master_receives(&mut self, now: Instant, source: IpAddr, priority: u8, interval: Centiseconds) {
        if self.is_resigning() {
            self.master_receives_while_resigning(now, source, priority);
            return;
        }
        self.note_owner_conflict(source, priority);
        if priority == PRIORITY_RESIGN {
            // RFC 5798 §6.4.3: answer at once so backups do not take over.
            self.send_advert(now);
            if self.reassert_allowed(now) {
                self.reassert(source, priority);
            }
            return;
        }
        let theirs_wins =
            priority > self.params.priority || (priority == self.params.priority && source > self.params.primary_ip);
        if theirs_wins {
            self.adver_timer = None;
            self.garp_repeat_timer = None;
            self.garp_refresh_timer = None;
            if self.params.version == Version::V3 {
                self.master_adver_interval = interval.as_duration();
            }
            self.master_ip = Some(source);
            self.master_priority = Some(priority);
            // Not in the RFC: a priority 0 tells the winner that we were
            // master too (it may never have seen an advert of ours when a
            // split heals), so it re-announces and clients that followed
            // our gratuitous ARPs come back to it.
            self.actions.push_back(Action::SendAdvert { priority: PRIORITY_RESIGN });
            self.actions.push_back(Action::ReleaseVips);
            self.arm_master_down(now, Reason::MasterDownTimerExpired);
            self.transition(State::Backup, Reason::HigherPriority { priority, from: source });
        } else if self.reassert_allowed(now) {
            self.send_advert(now);
            self.reassert(source, priority);
        }
    }

    /// A sync group member lost to a better master: resign as on a planned
    /// stop (priority 0, so our backup takes over after Skew_Time), give
    /// the VIPs up and follow as a backup.
    fn step_down(&mut self, now: Instant) {
        self.adver_timer = None;
        self.garp_repeat_timer = None;
        self.garp_refresh_timer = None;
        self.master_ip = None;
        self.master_priority = None;
        self.actions.push_back(Action::SendAdvert { priority: PRIORITY_RESIGN });
        self.actions.push_back(Action::ReleaseVips);
        self.arm_master_down(now, Reason::MasterDownTimerExpired);
        self.transition(State::Backup, Reason::GroupStepDown);
    }

    /// Another router acted as master beside us: a lower-priority master
    /// (the network was split, or it just started), or one stepping down
    /// with priority 0. The RFC only discards (or answers) its advert; we
    /// also announce again, because clients may have followed its
    /// gratuitous ARPs. Our advert goes out just before, so a lower master
    /// steps down now, not at our next tick.
    fn reassert(&mut self, against: IpAddr, priority: u8) {
        self.actions.push_back(Action::Reasserted { against, priority });
        self.actions.push_back(Action::Announce);
    }

    /// At most one reassertion a second, so a misbehaving peer cannot make
    /// us flood the segment.
    fn reassert_allowed(&mut self, now: Instant) -> bool {
        let holdoff = self.params.advert_interval.as_duration().max(Duration::from_secs(1));
        if self.last_reassert.is_some_and(|t| now < t + holdoff) {
            return false;
        }
        self.last_reassert = Some(now);
        true
    }

    fn transition(&mut self, to: State, reason: Reason) {
        let from = self.state;
        self.state = to;
        self.actions.push_back(Action::StateChanged { from, to, reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    const ME: IpAddr = ip(192, 0, 2, 11);
    const PEER_LOW: IpAddr = ip(192, 0, 2, 5);
    const PEER_HIGH: IpAddr = ip(192, 0, 2, 20);

    fn cs(v: u16) -> Centiseconds {
        Centiseconds::new(v).expect("valid interval")
    }

    fn params(priority: u8) -> Params {
        Params {
            version: Version::V3,
            priority,
            advert_interval: cs(100),
            preempt: true,
            preempt_delay: Duration::ZERO,
            primary_ip: ME,
            garp_repeat_delay: Some(Duration::from_secs(5)),
            garp_refresh: None,
            release_timeout: Duration::from_secs(3),
        }
    }

    fn drain(fsm: &mut Fsm) -> Vec<Action> {
        std::iter::from_fn(|| fsm.poll_action()).collect()
    }

    fn advert(source: IpAddr, priority: u8) -> Event {
        Event::Advert { source, priority, interval: cs(100) }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn backup(priority: u8, t0: Instant) -> Fsm {
        let mut f = Fsm::new(params(priority));
        f.handle(t0, Event::Startup);
        drain(&mut f);
        f
    }

    fn master(priority: u8, t0: Instant) -> Fsm {
        let mut f = backup(priority, t0);
        let deadline = f.poll_timeout().expect("master down armed");
        f.handle_timeout(deadline);
        drain(&mut f);
        assert_eq!(f.state(), State::Master);
        f
    }

    #[test]
    fn rfc_timing_formulas() {
        // v3, 1 s, priority 100: Skew = 156/256 s, MDI = 3 s + Skew.
        let (skew, mdi) = skew_and_master_down(Version::V3, 100, ms(1000));
        assert_eq!(skew, Duration::from_micros(609_375));
        assert_eq!(mdi, Duration::from_micros(3_609_375));
        // v3 at 100 ms (keepalived measured 60.9 / 360.9 ms).
        let (skew, mdi) = skew_and_master_down(Version::V3, 100, ms(100));
        assert_eq!(skew, Duration::from_nanos(60_937_500));
        assert_eq!(mdi, Duration::from_nanos(360_937_500));
        // v2 uses seconds for the skew whatever the interval.
        let (skew, mdi) = skew_and_master_down(Version::V2, 100, ms(2000));
        assert_eq!(skew, Duration::from_micros(609_375));
        assert_eq!(mdi, Duration::from_micros(6_609_375));
        // Priority 255 has the smallest skew.
        let (skew, _) = skew_and_master_down(Version::V3, 255, ms(1000));
        assert_eq!(skew, Duration::from_micros(3906) + Duration::from_nanos(250));
    }

    #[test]
    fn startup_goes_backup_and_arms_master_down() {
        let t0 = Instant::now();
        let mut f = Fsm::new(params(100));
        f.handle(t0, Event::Startup);
        assert_eq!(
            drain(&mut f),
            vec![Action::StateChanged { from: State::Initialize, to: State::Backup, reason: Reason::Startup }]
        );
        assert_eq!(f.poll_timeout(), Some(t0 + Duration::from_micros(3_609_375)));
    }

    #[test]
    fn a_resumed_instance_goes_on_where_the_old_process_stood() {
        let t0 = Instant::now();
        // Master: an advert at once, the VIPs claimed, no announce burst;
        // then the normal rhythm.
        let mut f = Fsm::new(params(100));
        f.resume(t0, Inherited::Master);
        assert_eq!(
            drain(&mut f),
            vec![
                Action::StateChanged { from: State::Initialize, to: State::Master, reason: Reason::Inherited },
                Action::SendAdvert { priority: 100 },
                Action::ClaimVips,
            ]
        );
        assert_eq!(f.poll_timeout(), Some(t0 + ms(1000)));
        assert_eq!(f.inheritance(), Some(Inherited::Master));
        // Backup: follows the old master, its interval, a fresh timer.
        let mut b = Fsm::new(params(100));
        b.resume(t0, Inherited::Backup { master: Some(PEER_HIGH), master_adver: ms(500) });
        assert_eq!(
            drain(&mut b),
            vec![Action::StateChanged { from: State::Initialize, to: State::Backup, reason: Reason::Inherited }]
        );
        assert_eq!(b.master_ip(), Some(PEER_HIGH));
        let (_, down) = skew_and_master_down(Version::V3, 100, ms(500));
        assert_eq!(b.poll_timeout(), Some(t0 + down));
        assert_eq!(b.inheritance(), Some(Inherited::Backup { master: Some(PEER_HIGH), master_adver: ms(500) }));
        // Only from Initialize.
        b.resume(t0, Inherited::Master);
        assert_eq!(b.state(), State::Backup);
        assert_eq!(Fsm::new(params(100)).inheritance(), None);
    }

    #[test]
    fn owner_starts_as_master() {
        let t0 = Instant::now();
        let mut f = Fsm::new(params(255));
        f.handle(t0, Event::Startup);
        assert_eq!(
            drain(&mut f),
            vec![
                Action::StateChanged { from: State::Initialize, to: State::Master, reason: Reason::AddressOwner },
                Action::SendAdvert { priority: 255 },
                Action::ClaimVips,
                Action::Announce,
            ]
        );
        assert_eq!(f.poll_timeout(), Some(t0 + ms(1000)));
    }

    #[test]
    fn master_down_timer_makes_master() {
        let t0 = Instant::now();
        let mut f = backup(100, t0);
        f.handle_timeout(t0 + ms(3000));
        assert!(drain(&mut f).is_empty(), "not yet");
        f.handle_timeout(t0 + Duration::from_micros(3_609_375));
        assert_eq!(
            drain(&mut f),
            vec![
                Action::StateChanged { from: State::Backup, to: State::Master, reason: Reason::MasterDownTimerExpired },
                Action::SendAdvert { priority: 100 },
                Action::ClaimVips,
                Action::Announce,
            ]
        );
        assert_eq!(f.master_ip(), Some(ME));
    }

    #[test]
    fn backup_resets_timer_on_equal_or_higher_advert() {
        let t0 = Instant::now();
        let mut f = backup(100, t0);
        f.handle(t0 + ms(3000), advert(PEER_HIGH, 150));
        assert_eq!(f.poll_timeout(), Some(t0 + ms(3000) + Duration::from_micros(3_609_375)));
        f.handle(t0 + ms(4000), advert(PEER_LOW, 100));
        assert_eq!(f.poll_timeout(), Some(t0 + ms(4000) + Duration::from_micros(3_609_375)));
        assert_eq!(f.master_ip(), Some(PEER_LOW));
        assert!(drain(&mut f).is_empty());
    }

    #[test]
    fn backup_learns_master_adver_interval() {
        let t0 = Instant::now();
        let mut f = backup(100, t0);
        f.handle(t0, Event::Advert { source: PEER_HIGH, priority: 150, interval: cs(10) });
        assert_eq!(f.master_adver_interval(), ms(100));
        assert_eq!(f.poll_timeout(), Some(t0 + Duration::from_nanos(360_937_500)));
    }

    #[test]
    fn backup_with_preempt_ignores_lower_priority_master() {
        let t0 = Instant::now();
        let mut f = backup(150, t0);
        let deadline = f.poll_timeout().expect("armed");
        f.handle(t0 + ms(1000), advert(PEER_HIGH, 100));
        assert_eq!(f.poll_timeout(), Some(deadline), "timer not reset");
        f.handle_timeout(deadline);
        let actions = drain(&mut f);
        assert_eq!(
            actions[0],
            Action::StateChanged {
                from: State::Backup,
                to: State::Master,
                reason: Reason::Preempted { priority: 100, from: PEER_HIGH }
            }
        );
    }

    #[test]
    fn backup_without_preempt_follows_lower_priority_master() {
        let t0 = Instant::now();
        let mut f = Fsm::new(Params { preempt: false, ..params(150) });
        f.handle(t0, Event::Startup);
        drain(&mut f);
        f.handle(t0 + ms(3000), advert(PEER_HIGH, 100));
        assert_eq!(f.poll_timeout(), Some(t0 + ms(3000) + skew_and_master_down(Version::V3, 150, ms(1000)).1));
        assert_eq!(f.state(), State::Backup);
    }

    #[test]
    fn preempt_delay_holds_back_preemption_after_startup() {
        let t0 = Instant::now();
        let mut f = Fsm::new(Params { preempt_delay: ms(10_000), ..params(150) });
        f.handle(t0, Event::Startup);
        drain(&mut f);
        let mdi = skew_and_master_down(Version::V3, 150, ms(1000)).1;
        f.handle(t0 + ms(5000), advert(PEER_HIGH, 100));
        assert_eq!(f.poll_timeout(), Some(t0 + ms(5000) + mdi), "still following");
        f.handle(t0 + ms(10_000), advert(PEER_HIGH, 100));
        assert_eq!(f.poll_timeout(), Some(t0 + ms(5000) + mdi), "now preempting");
    }

    #[test]
    fn priority_zero_makes_backup_take_over_after_skew() {
        let t0 = Instant::now();
        let mut f = backup(100, t0);
        f.handle(t0 + ms(500), advert(PEER_HIGH, 150));
        f.handle(t0 + ms(1000), advert(PEER_HIGH, 0));
        let skew = Duration::from_micros(609_375);
        assert_eq!(f.poll_timeout(), Some(t0 + ms(1000) + skew));
        f.handle_timeout(t0 + ms(1000) + skew);
        assert_eq!(
            drain(&mut f)[0],
            Action::StateChanged {
                from: State::Backup,
                to: State::Master,
                reason: Reason::PriorityZeroReceived { from: PEER_HIGH }
            }
        );
    }

    #[test]
    fn priority_zero_from_a_router_we_do_not_follow_is_ignored() {
        let t0 = Instant::now();
        let mut f = backup(100, t0);
        f.handle(t0 + ms(500), advert(PEER_HIGH, 150));
        let deadline = f.poll_timeout();
        f.handle(t0 + ms(600), advert(PEER_LOW, 0));
        assert_eq!(f.poll_timeout(), deadline, "a loser stepping down is not our master resigning");
        // Before any master was seen, a priority 0 counts (RFC 5798 §6.4.2).
        let mut g = backup(100, t0);
        g.handle(t0 + ms(600), advert(PEER_LOW, 0));
        assert_eq!(g.poll_timeout(), Some(t0 + ms(600) + Duration::from_micros(609_375)));
    }

    #[test]
    fn master_advertises_every_interval() {
        let t0 = Instant::now();
        let mut f = master(100, t0);
        let next = f.poll_timeout().expect("adver timer");
        f.handle_timeout(next);
        assert_eq!(drain(&mut f), vec![Action::SendAdvert { priority: 100 }]);
        assert_eq!(f.poll_timeout(), Some(next + ms(1000)));
    }

    #[test]
    fn late_wakeups_do_not_stretch_the_advert_rhythm() {
        let t0 = Instant::now();
        let mut f = master(100, t0);
        let due = f.poll_timeout().expect("adver timer");
        f.handle_timeout(due + ms(3));
        assert_eq!(f.poll_timeout(), Some(due + ms(1000)));
        // Far behind (e.g. the host was suspended): restart from now.
        let late = due + ms(5000);
        f.handle_timeout(late);
        assert_eq!(f.poll_timeout(), Some(late + ms(1000)));
    }

    #[test]
    fn master_steps_down_for_higher_priority() {
        let t0 = Instant::now();
        let mut f = master(100, t0);
        let now = t0 + ms(10_000);
        f.handle(now, Event::Advert { source: PEER_LOW, priority: 200, interval: cs(50) });
        assert_eq!(
            drain(&mut f),
            vec![
                Action::SendAdvert { priority: 0 },
                Action::ReleaseVips,
                Action::StateChanged {
                    from: State::Master,
                    to: State::Backup,
                    reason: Reason::HigherPriority { priority: 200, from: PEER_LOW }
                },
            ]
        );
        assert_eq!(f.master_adver_interval(), ms(500));
        let mdi = skew_and_master_down(Version::V3, 100, ms(500)).1;
        assert_eq!(f.poll_timeout(), Some(now + mdi));
    }

    #[test]
    fn equal_priority_tie_breaks_on_primary_address() {
        let t0 = Instant::now();
        let mut f = master(100, t0);
        f.handle(t0 + ms(5000), advert(PEER_LOW, 100));
        assert_eq!(f.state(), State::Master, "lower address loses");
        drain(&mut f);
        f.handle(t0 + ms(7000), advert(PEER_HIGH, 100));
        assert_eq!(f.state(), State::Backup, "higher address wins");
    }

    #[test]
    fn master_answers_priority_zero_with_an_advert() {
        let t0 = Instant::now();
        let mut f = master(100, t0);
        let now = t0 + ms(4000);
        f.handle(now, advert(PEER_HIGH, 0));
        // Someone else was master and steps down: clients may point at it.
        assert_eq!(
            drain(&mut f),
            vec![
                Action::SendAdvert { priority: 100 },
                Action::Reasserted { against: PEER_HIGH, priority: 0 },
                Action::Announce
            ]
        );
        assert_eq!(f.poll_timeout(), Some(now + ms(1000)));
        f.handle(now + ms(100), advert(PEER_HIGH, 0));
        assert_eq!(drain(&mut f), vec![Action::SendAdvert { priority: 100 }], "the advert is never held off");
    }

    #[test]
    fn master_reasserts_against_lower_master_once_per_holdoff() {
        let t0 = Instant::now();
        let mut f = master(150, t0);
        let now = t0 + ms(8000);
        f.handle(now, advert(PEER_HIGH, 100));
        assert_eq!(
            drain(&mut f),
            vec![
                Action::SendAdvert { priority: 150 },
                Action::Reasserted { against: PEER_HIGH, priority: 100 },
                Action::Announce
            ]
        );
        f.handle(now + ms(300), advert(PEER_HIGH, 100));
        assert!(drain(&mut f).is_empty(), "held off");
        f.handle(now + ms(1000), advert(PEER_HIGH, 100));
        assert_eq!(drain(&mut f).len(), 3);
        assert_eq!(f.state(), State::Master);
    }

    #[test]
    fn shutdown_from_master_keeps_vips_until_the_new_master_advertises() {
        let t0 = Instant::now();
        let mut f = master(150, t0);
        let now = t0 + ms(9000);
        f.handle(now, Event::Shutdown);
        assert_eq!(drain(&mut f), vec![Action::SendAdvert { priority: 0 }]);
        assert!(f.is_resigning());
        assert_eq!(f.state(), State::Master);
        assert_eq!(f.poll_timeout(), Some(now + ms(3000)), "only the release timer");
        f.handle(now + ms(10), Event::Shutdown);
        f.handle(now + ms(20), advert(PEER_LOW, 0));
        assert!(drain(&mut f).is_empty(), "repeat and priority 0 change nothing");
        f.handle(now + ms(400), advert(PEER_LOW, 100));
        assert_eq!(
            drain(&mut f),
            vec![
                Action::ReleaseVips,
                Action::StateChanged {
                    from: State::Master,
                    to: State::Initialize,
                    reason: Reason::HandedOver { to: PEER_LOW }
                },
            ]
        );
        assert_eq!(f.poll_timeout(), None);
    }

    #[test]
    fn operator_step_down_hands_over_then_stays_backup_until_resumed() {
        let t0 = Instant::now();
        let mut f = master(150, t0);
        let now = t0 + ms(9000);
        f.handle(now, Event::OperatorStepDown);
        assert_eq!(drain(&mut f), vec![Action::SendAdvert { priority: 0 }], "VIPs kept until the successor speaks");
        assert!(f.is_resigning() && f.is_stepped_down());
        f.handle(now + ms(400), advert(PEER_LOW, 100));
        assert_eq!(
            drain(&mut f),
            vec![
                Action::ReleaseVips,
                Action::StateChanged {
                    from: State::Master,
                    to: State::Backup,
                    reason: Reason::OperatorStepDown { to: PEER_LOW }
                },
            ]
        );
        assert_eq!(f.master_ip(), Some(PEER_LOW));
        // A lower-priority master does not make it preempt...
        f.handle(now + ms(1400), advert(PEER_LOW, 100));
        assert_eq!(f.state(), State::Backup);
        let down = f.poll_timeout().expect("master down armed");
        assert!(down > now + ms(1400), "the advert was heard, not ignored for preemption");
        // ...but if the master dies it takes over, as any backup.
        f.handle_timeout(down);
        assert_eq!(f.state(), State::Master);
        drain(&mut f);
        // Resumed, a stepped-down backup preempts again.
        let mut g = master(150, t0);
        g.handle(now, Event::OperatorStepDown);
        g.handle(now + ms(300), advert(PEER_LOW, 100));
        drain(&mut g);
        g.handle(now + ms(500), Event::OperatorResume);
        assert!(!g.is_stepped_down());
        g.handle(now + ms(1300), advert(PEER_LOW, 100));
        let down = g.poll_timeout().expect("master down armed");
        g.handle_timeout(down);
        assert_eq!(g.state(), State::Master, "preempted after resume");
    }

    #[test]
    fn a_step_down_nobody_takes_over_stays_master() {
        let t0 = Instant::now();
        let mut f = master(150, t0);
        let now = t0 + ms(9000);
        f.handle(now, Event::OperatorStepDown);
        drain(&mut f);
        let deadline = f.poll_timeout().expect("release timer");
        f.handle_timeout(deadline);
        assert_eq!(drain(&mut f), vec![Action::StepDownAborted, Action::SendAdvert { priority: 150 }]);
        assert_eq!(f.state(), State::Master);
        assert!(!f.is_resigning() && !f.is_stepped_down());
        assert_eq!(f.poll_timeout(), Some(deadline + ms(1000)), "adverts go on");
    }

    #[test]
    fn shutdown_during_a_step_down_ends_the_instance() {
        let t0 = Instant::now();
        let mut f = master(150, t0);
        let now = t0 + ms(9000);
        f.handle(now, Event::OperatorStepDown);
        f.handle(now + ms(10), Event::Shutdown);
        drain(&mut f);
        f.handle(now + ms(300), advert(PEER_LOW, 100));
        let last = drain(&mut f).pop();
        assert!(matches!(last, Some(Action::StateChanged { to: State::Initialize, .. })), "{last:?}");
        // A backup stepped down only holds preemption.
        let mut b = backup(150, t0);
        b.handle(t0 + ms(10), Event::OperatorStepDown);
        assert!(drain(&mut b).is_empty());
        assert!(b.is_stepped_down());
    }

    #[test]
    fn resigning_master_without_successor_releases_at_timeout() {
        let t0 = Instant::now();
        let mut f = master(150, t0);
        let now = t0 + ms(9000);
        f.handle(now, Event::Shutdown);
        drain(&mut f);
        f.handle_timeout(now + ms(3000));
        assert_eq!(
            drain(&mut f),
            vec![
                Action::ReleaseVips,
                Action::StateChanged { from: State::Master, to: State::Initialize, reason: Reason::Shutdown },
            ]
        );
    }

    #[test]
    fn zero_release_timeout_releases_at_once_as_the_rfc_says() {
        let t0 = Instant::now();
        let mut f = Fsm::new(Params { release_timeout: Duration::ZERO, ..params(150) });
        f.handle(t0, Event::Startup);
        f.handle_timeout(f.poll_timeout().expect("armed"));
        drain(&mut f);
        f.handle(t0 + ms(9000), Event::Shutdown);
        assert_eq!(
            drain(&mut f),
            vec![
                Action::SendAdvert { priority: 0 },
                Action::ReleaseVips,
                Action::StateChanged { from: State::Master, to: State::Initialize, reason: Reason::Shutdown },
            ]
        );
    }

    #[test]
    fn shutdown_from_backup_cancels_timer() {
        let t0 = Instant::now();
        let mut f = backup(100, t0);
        f.handle(t0, Event::Shutdown);
        assert_eq!(f.state(), State::Initialize);
        assert_eq!(f.poll_timeout(), None);
    }

    #[test]
    fn garp_is_repeated_once_after_the_delay() {
        let t0 = Instant::now();
        let mut f = master(100, t0);
        let became = t0 + Duration::from_micros(3_609_375);
        for k in 1..=5u64 {
            f.handle_timeout(became + ms(1000 * k));
        }
        let announces = drain(&mut f).iter().filter(|a| **a == Action::Announce).count();
        assert_eq!(announces, 1);
    }

    #[test]
    fn garp_refresh_announces_while_master_only() {
        let t0 = Instant::now();
        let mut f = Fsm::new(Params { garp_refresh: Some(ms(60_000)), garp_repeat_delay: None, ..params(100) });
        f.handle(t0, Event::Startup);
        let became = f.poll_timeout().expect("master down armed");
        f.handle_timeout(became);
        drain(&mut f);
        let mut announces = 0;
        for k in 1..=180u64 {
            f.handle_timeout(became + ms(1000 * k));
            announces += drain(&mut f).iter().filter(|a| **a == Action::Announce).count();
        }
        assert_eq!(announces, 3, "one every 60 s over 180 s");
        f.handle(became + ms(181_000), advert(PEER_HIGH, 200));
        drain(&mut f);
        for k in 182..=400u64 {
            f.handle(became + ms(1000 * k - 500), advert(PEER_HIGH, 200));
            f.handle_timeout(became + ms(1000 * k));
            assert_eq!(f.state(), State::Backup);
            assert!(!drain(&mut f).contains(&Action::Announce), "a backup does not refresh");
        }
    }

    #[test]
    fn two_owners_are_reported_and_the_higher_address_wins() {
        let t0 = Instant::now();
        let mut f = Fsm::new(params(255));
        f.handle(t0, Event::Startup);
        assert_eq!(f.state(), State::Master);
        drain(&mut f);
        f.handle(t0 + ms(100), advert(PEER_LOW, 255));
        let actions = drain(&mut f);
        assert_eq!(actions[0], Action::OwnerConflict { from: PEER_LOW });
        assert_eq!(f.state(), State::Master, "our address is higher");
        f.handle(t0 + ms(200), advert(PEER_HIGH, 255));
        assert_eq!(drain(&mut f)[0], Action::OwnerConflict { from: PEER_HIGH });
        assert_eq!(f.state(), State::Backup, "its address is higher");
    }

    #[test]
    fn a_masters_new_priority_goes_out_at_once() {
        let t0 = Instant::now();
        let mut f = master(150, t0);
        f.set_priority(t0 + ms(5000), 90);
        assert_eq!(drain(&mut f), vec![Action::SendAdvert { priority: 90 }]);
        // The rhythm restarts from that advert.
        assert_eq!(f.poll_timeout(), Some(t0 + ms(5000) + ms(1000)));
        f.set_priority(t0 + ms(5100), 90);
        assert!(drain(&mut f).is_empty(), "no change, no advert");
    }

    #[test]
    fn a_followed_master_falling_below_us_is_preempted_after_skew_time() {
        let t0 = Instant::now();
        let mut f = backup(100, t0);
        // Following a 150 master...
        f.handle(t0 + ms(1000), advert(PEER_HIGH, 150));
        // ...whose trackers take it to 90: take over after Skew_Time
        // (256-100)/256 s, not its whole Master_Down_Interval.
        let at = t0 + ms(2000);
        f.handle(at, advert(PEER_HIGH, 90));
        let (skew, mdi) = f.skew_and_master_down();
        assert!(skew < mdi);
        assert_eq!(f.poll_timeout(), Some(at + skew));
        f.handle_timeout(at + skew);
        assert_eq!(f.state(), State::Master);
        // A lower master never followed (just started) waits the whole interval.
        let mut g = backup(100, t0);
        let armed = g.poll_timeout();
        g.handle(t0 + ms(100), advert(PEER_HIGH, 90));
        assert_eq!(g.poll_timeout(), armed);
        // Our own priority rising above the master's works the same way.
        let mut h = backup(100, t0);
        h.handle(t0 + ms(1000), advert(PEER_HIGH, 120));
        h.set_priority(t0 + ms(1500), 200);
        h.handle(t0 + ms(2000), advert(PEER_HIGH, 120));
        let (skew, _) = h.skew_and_master_down();
        assert_eq!(h.poll_timeout(), Some(t0 + ms(2000) + skew));
    }

    #[test]
    fn a_sync_group_member_steps_down_and_holds_preemption() {
        let t0 = Instant::now();
        let mut f = master(150, t0);
        // Just become master: the group's members are still settling.
        f.handle(t0 + ms(5000), Event::GroupStepDown);
        assert_eq!(f.state(), State::Master);
        f.handle(t0 + ms(12_000), Event::GroupStepDown);
        assert_eq!(f.state(), State::Backup);
        let actions = drain(&mut f);
        assert_eq!(actions[..2], [Action::SendAdvert { priority: 0 }, Action::ReleaseVips]);
        // Held: a lower master is followed, not preempted.
        f.set_preempt_hold(true);
        f.handle(t0 + ms(12_200), advert(PEER_HIGH, 100));
        assert_eq!((f.master_ip(), f.follows_better_master()), (Some(PEER_HIGH), false));
        let armed = f.poll_timeout().expect("master down armed");
        assert!(armed > t0 + ms(12_200) + ms(3000), "following, not preempting: {armed:?}");
        // Released: the next lower advert is preempted after Skew_Time.
        f.set_preempt_hold(false);
        f.handle(t0 + ms(13_200), advert(PEER_HIGH, 100));
        let (skew, _) = f.skew_and_master_down();
        assert_eq!(f.poll_timeout(), Some(t0 + ms(13_200) + skew));
        // Following a better master is what a group follows; a tie is not.
        let mut g = backup(100, t0);
        g.handle(t0 + ms(100), advert(PEER_HIGH, 150));
        assert!(g.follows_better_master());
        g.handle(t0 + ms(200), advert(PEER_HIGH, 100));
        assert!(!g.follows_better_master());
    }

    #[test]
    fn a_weightless_tracker_failing_is_a_fault() {
        let t0 = Instant::now();
        let mut f = master(150, t0);
        f.handle(t0 + ms(3000), Event::TrackerFault);
        assert_eq!(f.state(), State::Fault);
        let actions = drain(&mut f);
        assert_eq!(actions[..2], [Action::SendAdvert { priority: 0 }, Action::ReleaseVips]);
        f.handle(t0 + ms(4000), Event::TrackersOk);
        assert_eq!(f.state(), State::Backup);
    }

    #[test]
    fn losing_the_source_address_is_a_fault_until_one_is_back() {
        let t0 = Instant::now();
        let mut f = master(100, t0);
        drain(&mut f);
        f.handle(t0 + ms(5000), Event::NoAddress);
        assert_eq!(
            drain(&mut f),
            vec![
                Action::ReleaseVips,
                Action::StateChanged { from: State::Master, to: State::Fault, reason: Reason::NoAddress },
            ]
        );
        assert_eq!((f.poll_timeout(), f.master_ip()), (None, None));
        // Fault sends nothing and ignores adverts and timers.
        f.handle(t0 + ms(5500), advert(PEER_HIGH, 200));
        f.handle_timeout(t0 + ms(20_000));
        assert!(drain(&mut f).is_empty());
        f.handle(t0 + ms(21_000), Event::AddressBack);
        assert_eq!(
            drain(&mut f),
            vec![
                Action::StateChanged { from: State::Fault, to: State::Initialize, reason: Reason::AddressBack },
                Action::StateChanged { from: State::Initialize, to: State::Backup, reason: Reason::Startup },
            ]
        );
        // A new primary is our side of the tie-break from now on.
        let new = ip(192, 0, 2, 99);
        f.set_primary_ip(new);
        assert_eq!(f.params().primary_ip, new);
    }

    #[test]
    fn link_down_releases_and_link_up_restarts() {
        let t0 = Instant::now();
        let mut f = master(100, t0);
        f.handle(t0 + ms(5000), Event::LinkDown);
        assert_eq!(drain(&mut f)[0], Action::ReleaseVips);
        assert_eq!(f.state(), State::Fault);
        assert_eq!(f.poll_timeout(), None);
        f.handle(t0 + ms(6000), advert(PEER_HIGH, 200));
        assert!(drain(&mut f).is_empty(), "fault ignores adverts");
        f.handle(t0 + ms(7000), Event::LinkUp);
        assert_eq!(f.state(), State::Backup);
    }

    /// Two routers on a simulated LAN with virtual time: adverts are
    /// delivered instantly, time jumps to the next deadline.
    struct Lan {
        nodes: Vec<(Fsm, bool)>,
        now: Instant,
        log: Vec<(Duration, usize, Action)>,
        t0: Instant,
    }

    impl Lan {
        fn new(priorities: &[u8]) -> Self {
            let t0 = Instant::now();
            let nodes = priorities
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut f = Fsm::new(Params { primary_ip: ip(192, 0, 2, 11 + i as u8), ..params(*p) });
                    f.handle(t0, Event::Startup);
                    (f, true)
                })
                .collect();
            Lan { nodes, now: t0, log: Vec::new(), t0 }
        }

        fn deliver(&mut self) {
            for _ in 0..100 {
                let mut sent = Vec::new();
                for (i, (f, up)) in self.nodes.iter_mut().enumerate() {
                    while let Some(a) = f.poll_action() {
                        if let Action::SendAdvert { priority } = a {
                            if *up {
                                sent.push((i, f.params().primary_ip, priority));
                            }
                        }
                        self.log.push((self.now - self.t0, i, a));
                    }
                }
                if sent.is_empty() {
                    return;
                }
                for (from, source, priority) in sent {
                    for (j, (f, up)) in self.nodes.iter_mut().enumerate() {
                        if j != from && *up {
                            f.handle(self.now, Event::Advert { source, priority, interval: cs(100) });
                        }
                    }
                }
            }
        }

        fn run_until(&mut self, end: Duration) {
            self.deliver();
            for _ in 0..10_000 {
                let next = self.nodes.iter().filter(|(_, up)| *up).filter_map(|(f, _)| f.poll_timeout()).min();
                match next {
                    Some(t) if t <= self.t0 + end => {
                        self.now = t;
                        for (f, up) in self.nodes.iter_mut() {
                            if *up {
                                f.handle_timeout(t);
                            }
                        }
                        self.deliver();
                    }
                    _ => break,
                }
            }
            self.now = self.t0 + end;
        }

        fn masters(&self) -> Vec<usize> {
            (0..self.nodes.len()).filter(|i| self.nodes[*i].0.state() == State::Master).collect()
        }

        fn became_master_at(&self, node: usize) -> Option<Duration> {
            self.log.iter().rev().find_map(|(t, i, a)| match a {
                Action::StateChanged { to: State::Master, .. } if *i == node => Some(*t),
                _ => None,
            })
        }
    }

    #[test]
    fn simulated_lan_elects_highest_priority_and_fails_over() {
        let mut lan = Lan::new(&[150, 100]);
        lan.run_until(ms(20_000));
        assert_eq!(lan.masters(), vec![0]);
        // Crash of the master at t = 20 s: no priority 0, just silence.
        lan.nodes[0].1 = false;
        let last_advert = lan
            .log
            .iter()
            .rev()
            .find_map(|(t, i, a)| matches!(a, Action::SendAdvert { .. }).then_some(*t).filter(|_| *i == 0))
            .expect("master advertised");
        lan.run_until(ms(30_000));
        let took_over = lan.became_master_at(1).expect("backup took over");
        let mdi = skew_and_master_down(Version::V3, 100, ms(1000)).1;
        assert_eq!(took_over - last_advert, mdi);
        // The old master comes back and preempts at once.
        lan.nodes[0] = (Fsm::new(Params { primary_ip: ip(192, 0, 2, 11), ..params(150) }), true);
        lan.nodes[0].0.handle(lan.now, Event::Startup);
        lan.run_until(ms(40_000));
        assert_eq!(lan.masters(), vec![0]);
    }

    #[test]
    fn simulated_lan_graceful_takeover_after_skew() {
        let mut lan = Lan::new(&[150, 100]);
        lan.run_until(ms(10_000));
        lan.nodes[0].0.handle(lan.now, Event::Shutdown);
        let resigned = lan.now - lan.t0;
        lan.deliver();
        lan.nodes[0].1 = false;
        lan.run_until(ms(20_000));
        let took_over = lan.became_master_at(1).expect("took over");
        assert_eq!(took_over - resigned, Duration::from_micros(609_375));
    }

    #[test]
    fn simulated_lan_equal_priorities_settle_on_one_master() {
        let mut lan = Lan::new(&[100, 100, 100]);
        lan.run_until(ms(30_000));
        assert_eq!(lan.masters(), vec![2], "highest address wins the tie");
    }

    proptest::proptest! {
        /// Whatever adverts arrive, the machine never reports Master without
        /// an advert timer, nor Backup without a master-down timer.
        #[test]
        fn timers_match_state(events in proptest::collection::vec((0u64..5000, 0u8..=255, 0u8..4), 0..60)) {
            let t0 = Instant::now();
            let mut f = Fsm::new(params(100));
            f.handle(t0, Event::Startup);
            let mut now = t0;
            for (dt, prio, which) in events {
                now += ms(dt);
                f.handle_timeout(now);
                let src = if which % 2 == 0 { PEER_LOW } else { PEER_HIGH };
                f.handle(now, advert(src, prio));
                drain(&mut f);
                match f.state() {
                    State::Master => proptest::prop_assert!(f.adver_timer.is_some()),
                    State::Backup => proptest::prop_assert!(f.master_down_timer.is_some()),
                    _ => {}
                }
            }
        }
    }
}
