//! The I/O shell of one announcement: creates its interface, holds the
//! addresses by local routes, feeds the trackers' verdicts and the stop to
//! [`Announcement`], and moves the addresses through netlink as it says.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::decide::{Announcement, Output, Place, Verdict};
use super::AnnounceSpec;
use crate::net::addr::{Netlink, NetlinkError};
use crate::vrrp::probe::TrackShared;
use crate::vrrp::stats::unix_seconds;
use crate::vrrp::track::TrackerStatus;

/// What the daemon tells an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAnnounce {
    /// Keep following the trackers.
    Run,
    /// The planned stop: withdraw, serve `withdraw_delay` more, release.
    Withdraw,
    /// `vipd upgrade`: stop at once and leave the addresses where they
    /// are, for the successor process.
    Leave,
}

/// Where an announcement stands, shared with `/status` and `/metrics`.
#[derive(Debug)]
pub struct AnnounceShared {
    spec: AnnounceSpec,
    tracking: Option<Arc<TrackShared>>,
    live: Mutex<Live>,
    netlink_errors: AtomicU64,
}

#[derive(Debug, Clone)]
struct Live {
    place: Place,
    reason: String,
    since: SystemTime,
    changes: u64,
}

/// One announcement in `/status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AnnounceSnapshot {
    /// Its name.
    pub name: String,
    /// "announced", "withdrawn" or "released".
    pub state: &'static str,
    /// On the exported interface now.
    pub announced: bool,
    /// Why it stands so.
    pub reason: String,
    /// Since when (seconds since the Unix epoch).
    pub since: f64,
    /// Moves between states so far.
    pub changes: u64,
    /// The exported interface.
    pub interface: String,
    /// The service addresses.
    pub virtual_ips: Vec<String>,
    /// Address changes the kernel refused.
    pub netlink_errors: u64,
    /// Its trackers.
    pub trackers: Vec<TrackerStatus>,
}

impl AnnounceShared {
    /// An announcement of `spec`, withdrawn, not yet started.
    pub fn new(spec: AnnounceSpec, tracking: Option<Arc<TrackShared>>) -> Arc<Self> {
        let live = Live { place: Place::Withdrawn, reason: "starting".into(), since: SystemTime::now(), changes: 0 };
        Arc::new(AnnounceShared { spec, tracking, live: Mutex::new(live), netlink_errors: AtomicU64::new(0) })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its trackers, if it has any.
    pub fn tracking(&self) -> Option<Arc<TrackShared>> {
        self.tracking.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        // Written whole: a panic cannot leave it torn.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, a: &Announcement, started: (Instant, SystemTime)) {
        let since = started.1 + a.since().saturating_duration_since(started.0);
        *self.lock() = Live { place: a.place(), reason: a.reason().to_string(), since, changes: a.changes() };
    }

    /// It could not start (its interface or local routes could not be set
    /// up): `/status` says why.
    pub fn failed(&self, why: &str) {
        self.lock().reason = format!("could not start: {why}");
    }

    /// A consistent view for `/status`.
    pub fn snapshot(&self) -> AnnounceSnapshot {
        let live = self.lock().clone();
        AnnounceSnapshot {
            name: self.spec.name.clone(),
            state: live.place.word(),
            announced: live.place == Place::Announced,
            reason: live.reason,
            since: unix_seconds(live.since),
            changes: live.changes,
            interface: self.spec.interface.clone(),
            virtual_ips: self.spec.virtual_ips.iter().map(|v| v.to_string()).collect(),
            netlink_errors: self.netlink_errors.load(Ordering::Relaxed),
            trackers: self.tracking.as_ref().map(|t| t.status()).unwrap_or_default(),
        }
    }

    /// What the trackers say now: every one observed and passing, or how
    /// they fail.
    fn verdict(&self) -> Verdict {
        let Some(t) = &self.tracking else { return Verdict::Passing };
        let failing: Vec<String> = t
            .status()
            .into_iter()
            .filter(|s| s.failing)
            .map(|s| format!("{} {}: {}", s.kind, s.name, s.detail))
            .collect();
        match (failing.is_empty(), t.all_observed()) {
            (false, _) => Verdict::Failing(failing.join(", ")),
            (true, false) => Verdict::Unknown,
            (true, true) => Verdict::Passing,
        }
    }
}

/// Runs one announcement until a [`StopAnnounce::Withdraw`] has run its
/// course (addresses released) or a [`StopAnnounce::Leave`] (addresses
/// left). Fails only when its interfaces cannot be set up.
pub async fn run(
    shared: Arc<AnnounceShared>,
    netlink: Netlink,
    mut stop: watch::Receiver<StopAnnounce>,
) -> Result<(), NetlinkError> {
    let spec = &shared.spec;
    let exported = netlink.ensure_sink(&spec.interface).await?;
    let present = netlink.addresses_on(exported).await?;
    let found = spec.virtual_ips.iter().all(|v| present.iter().any(|(a, _)| *a == v.addr));
    // Local from now on, whatever the routers hear.
    for vip in &spec.virtual_ips {
        netlink.set_local_route(vip.addr, true).await?;
    }
    let started = (Instant::now(), SystemTime::now());
    let mut a = Announcement::new(started.0, found);
    info!(announce = %spec.name, interface = %spec.interface, found_announced = found, "announcement ready");
    loop {
        a.verdict(Instant::now(), &shared.verdict());
        apply(&shared, &netlink, &mut a, exported).await;
        shared.publish(&a, started);
        if a.is_done() {
            return Ok(());
        }
        let deadline = a.poll_timeout();
        let tracking = shared.tracking.clone();
        tokio::select! {
            changed = stop.changed() => {
                let asked = if changed.is_ok() { *stop.borrow_and_update() } else { StopAnnounce::Withdraw };
                match asked {
                    StopAnnounce::Run => {}
                    StopAnnounce::Withdraw => {
                        info!(announce = %spec.name, delay = ?spec.withdraw_delay, "stopping: withdrawing the route, still serving until the delay ends");
                        a.stop(Instant::now(), spec.withdraw_delay);
                    }
                    StopAnnounce::Leave => {
                        info!(announce = %spec.name, "left as it is for the process that takes over");
                        return Ok(());
                    }
                }
            }
            _ = async move {
                match tracking {
                    Some(t) => t.changed().await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = sleep_until(deadline) => a.handle_timeout(Instant::now()),
            // Health is looked at again now and then even without a
            // change (a tracker first observed wakes nobody).
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// How often the verdict is looked at without a wake-up.
const RECHECK: Duration = Duration::from_millis(500);

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Carries out what the announcement says, in order.
async fn apply(shared: &AnnounceShared, netlink: &Netlink, a: &mut Announcement, exported: u32) {
    let spec = &shared.spec;
    while let Some(out) = a.poll_output() {
        for vip in &spec.virtual_ips {
            let result = match out {
                Output::Announce => netlink.add(exported, vip, true).await,
                Output::Withdraw => netlink.del(exported, vip).await,
                Output::Release => netlink.set_local_route(vip.addr, false).await,
            };
            if let Err(e) = result {
                shared.netlink_errors.fetch_add(1, Ordering::Relaxed);
                error!(announce = %spec.name, %vip, error = %e, "could not move the address");
            }
        }
        match out {
            Output::Announce => {
                info!(announce = %spec.name, reason = %a.reason(), "announced: the addresses are on {}", spec.interface)
            }
            Output::Withdraw if a.is_stopping() => {
                info!(announce = %spec.name, reason = %a.reason(), "withdrawn: the addresses left {} (still served here)", spec.interface)
            }
            Output::Withdraw => {
                warn!(announce = %spec.name, reason = %a.reason(), "withdrawn: the addresses left {} (still served here)", spec.interface)
            }
            Output::Release => info!(announce = %spec.name, "released: the addresses are gone from this host"),
        }
    }
}
