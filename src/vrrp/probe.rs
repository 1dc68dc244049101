//! Feeds the trackers ([`super::track`]) from what they watch: this
//! process's own HTTP listeners (their backends' health, the moment it
//! changes), other interfaces' link state, and check scripts run without a
//! shell. The probes run on a runtime of their own, never on the VRRP
//! thread; an instance hears of a changed verdict through its
//! [`TrackShared`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use super::command;
use super::track::{Effective, Observed, ScriptSpec, TrackerStatus, Trackers, Watched};
use crate::net::addr::Netlink;
use crate::proxy::backends::{HttpListeners, ListenerPool};
use crate::proxy::balance::Hysteresis;

/// How often a listener's health is looked at even without a change
/// (an ejected backend's cool-down ends without an event).
const HEALTH_REFRESH: Duration = Duration::from_secs(1);

/// One instance's trackers, shared between the probes that feed them and
/// the instance (and `/status`) that reads them.
#[derive(Debug)]
pub struct TrackShared {
    trackers: Mutex<Trackers>,
    changed: Notify,
    /// Set when a reload removed the instance: its probes stop.
    retired: watch::Sender<bool>,
}

impl TrackShared {
    /// Shares `trackers`.
    pub fn new(trackers: Trackers) -> Arc<Self> {
        Arc::new(TrackShared {
            trackers: Mutex::new(trackers),
            changed: Notify::new(),
            retired: watch::channel(false).0,
        })
    }

    /// The instance is gone (a reload removed it): its probes stop, and a
    /// script shared with other instances goes on for them only.
    pub fn retire(&self) {
        self.retired.send_replace(true);
    }

    fn is_retired(&self) -> bool {
        *self.retired.borrow()
    }

    /// Resolves once the instance is retired.
    async fn retirement(&self) {
        let mut rx = self.retired.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    fn lock(&self) -> MutexGuard<'_, Trackers> {
        // Every writer replaces whole values: a panic cannot leave it torn.
        self.trackers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what tracker `i` saw; wakes the instance if its verdict changed.
    pub fn observe(&self, i: usize, seen: Observed) {
        if self.lock().observe(i, seen) {
            self.changed.notify_one();
        }
    }

    /// Resolves once some verdict changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// What each tracker watches, in order.
    pub fn watched(&self) -> Vec<Watched> {
        self.lock().specs().map(|s| s.watched.clone()).collect()
    }

    /// Whether every tracker has been observed at least once.
    pub fn all_observed(&self) -> bool {
        self.lock().all_observed()
    }

    /// The effective priority now, without its explanation.
    pub fn priority(&self) -> u8 {
        self.lock().priority()
    }

    /// The effective priority now, and how the trackers made it.
    pub fn effective(&self) -> Effective {
        self.lock().effective()
    }

    /// Every tracker, for `/status`.
    pub fn status(&self) -> Vec<TrackerStatus> {
        self.lock().status()
    }
}

/// Where the probes look.
pub struct Sources<'a> {
    /// The HTTP listeners, by name.
    pub pools: &'a HttpListeners,
    /// Link state by interface name (see `net::addr::watch_links`).
    pub links: &'a HashMap<String, watch::Receiver<bool>>,
    /// Check scripts by name.
    pub scripts: &'a [ScriptSpec],
}

/// Starts on `runtime` the probes of every instance's trackers. One task
/// per script however many instances use it.
pub fn start(runtime: &tokio::runtime::Handle, instances: &[(String, Arc<TrackShared>)], sources: &Sources<'_>) {
    let mut script_users: HashMap<&str, Vec<(Arc<TrackShared>, usize)>> = HashMap::new();
    for (instance, shared) in instances {
        for (i, watched) in shared.watched().into_iter().enumerate() {
            let shared = Arc::clone(shared);
            match watched {
                Watched::Http { listener, .. } => match sources.pools.find(&listener) {
                    Some(pool) => {
                        runtime.spawn(follow_listener(pool, shared, i));
                    }
                    // The config checks names; an unknown one is 0 healthy.
                    None => shared.observe(i, Observed::Backends { healthy: 0, total: 0 }),
                },
                Watched::Interface { name } => match sources.links.get(&name) {
                    Some(rx) => {
                        runtime.spawn(follow_link(name, rx.clone(), shared, i, instance.clone()));
                    }
                    None => shared.observe(i, Observed::Link(false)),
                },
                Watched::Script { name } => {
                    if let Some(spec) = sources.scripts.iter().find(|s| s.name == name) {
                        script_users.entry(spec.name.as_str()).or_default().push((shared, i));
                    }
                }
            }
        }
    }
    for spec in sources.scripts {
        if let Some(users) = script_users.remove(spec.name.as_str()) {
            runtime.spawn(run_script(spec.clone(), users));
        }
    }
}

/// A listener's healthy backends, at every change and once a second.
async fn follow_listener(pool: Arc<ListenerPool>, shared: Arc<TrackShared>, i: usize) {
    let mut health = pool.watch_health();
    loop {
        let h = *health.borrow_and_update();
        shared.observe(i, Observed::Backends { healthy: h.healthy, total: h.total });
        tokio::select! {
            changed = health.changed() => if changed.is_err() {
                shared.observe(i, Observed::Backends { healthy: 0, total: h.total });
                return;
            },
            _ = tokio::time::sleep(HEALTH_REFRESH) => pool.publish_health(),
            _ = shared.retirement() => return,
        }
    }
}

/// An interface's link state: read once, then followed.
async fn follow_link(
    name: String,
    mut link: watch::Receiver<bool>,
    shared: Arc<TrackShared>,
    i: usize,
    instance: String,
) {
    let up = match Netlink::connect() {
        Ok(nl) => match nl.link_up(&name).await {
            Ok(up) => up,
            Err(e) => {
                warn!(instance, interface = name, error = %e, "tracked interface: counted as down");
                false
            }
        },
        Err(e) => {
            warn!(instance, interface = name, error = %e, "tracked interface not readable: counted as down");
            false
        }
    };
    shared.observe(i, Observed::Link(up));
    loop {
        tokio::select! {
            changed = link.changed() => if changed.is_err() { return },
            _ = shared.retirement() => return,
        }
        let up = *link.borrow_and_update();
        shared.observe(i, Observed::Link(up));
    }
}

/// Runs one check script every interval for all its users, until none is
/// left (a reload removed them).
async fn run_script(spec: ScriptSpec, mut users: Vec<(Arc<TrackShared>, usize)>) {
    let mut verdict = Hysteresis::new(spec.rise, spec.fall, true);
    let mut ticker = tokio::time::interval(spec.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        users.retain(|(shared, _)| !shared.is_retired());
        if users.is_empty() {
            return;
        }
        let ok = run_check(&spec).await;
        if let Some(now_ok) = verdict.observe(ok) {
            if now_ok {
                info!(script = spec.name, "check script passes again ({} passes)", spec.rise);
            } else {
                warn!(script = spec.name, "check script fails ({} failures)", spec.fall);
            }
            for (shared, i) in &users {
                shared.observe(*i, Observed::Script(now_ok));
            }
        }
    }
}

/// One run: exit status 0 within the timeout passes; a run still going at
/// the timeout is killed and fails.
async fn run_check(spec: &ScriptSpec) -> bool {
    match command::run(&spec.command, spec.timeout).await {
        Ok((status, out)) => {
            debug!(script = spec.name, %status, output = %out, "check script ran");
            status.success()
        }
        Err(e) => {
            debug!(script = spec.name, error = %e, "check script failed to run");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vrrp::track::TrackerSpec;

    fn tracked(name: &str) -> Arc<TrackShared> {
        let spec = TrackerSpec { watched: Watched::Script { name: name.into() }, weight: 10 };
        TrackShared::new(Trackers::new(100, vec![spec]))
    }

    #[tokio::test]
    async fn a_script_stops_once_every_user_is_retired() {
        let spec = ScriptSpec {
            name: "ok".into(),
            command: vec!["/bin/true".into()],
            interval: Duration::from_millis(10),
            timeout: Duration::from_secs(1),
            rise: 1,
            fall: 1,
        };
        let (a, b) = (tracked("ok"), tracked("ok"));
        let task = tokio::spawn(run_script(spec, vec![(Arc::clone(&a), 0), (Arc::clone(&b), 0)]));
        a.retire();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!task.is_finished(), "b still uses it");
        b.retire();
        tokio::time::timeout(Duration::from_secs(2), task).await.expect("stopped").expect("no panic");
    }
}
