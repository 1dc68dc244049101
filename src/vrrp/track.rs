//! Trackers and the effective priority they give an instance. Pure: the
//! shell (`probe`) feeds each tracker's latest observation; this module
//! says whether it fails, what the priority becomes, and why.
//!
//! Effective priority = configured priority - the weights of the failing
//! trackers, kept within 1..=254; a failing tracker of weight 0 puts the
//! instance in Fault instead (keepalived's weightless tracking).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// What one tracker watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    /// This process's own `[[http]]` listener: fails below `min_healthy`
    /// healthy backends (or with its workers gone).
    Http {
        /// The listener's name.
        listener: String,
        /// Fewest healthy backends that still pass.
        min_healthy: usize,
    },
    /// Another interface: fails while it is down or without carrier.
    Interface {
        /// Its name.
        name: String,
    },
    /// A check command run every so often (see [`ScriptSpec`]).
    Script {
        /// The script definition's name.
        name: String,
    },
}

/// One tracker of an instance, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerSpec {
    /// What it watches.
    pub watched: Watched,
    /// Priority taken off while it fails; 0 = Fault while it fails.
    pub weight: u8,
}

/// A check command: run without a shell every `interval`, killed after
/// `timeout` (a failure); exit status 0 passes. `rise` passes in a row
/// make it pass, `fall` failures in a row make it fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptSpec {
    /// Name trackers refer to it by.
    pub name: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Time between runs.
    pub interval: Duration,
    /// Longest a run may take.
    pub timeout: Duration,
    /// Passes in a row to pass.
    pub rise: u32,
    /// Failures in a row to fail.
    pub fall: u32,
}

/// The latest observation of one tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Nothing heard yet: counts as passing, so a start is no failover.
    Unknown,
    /// Healthy backends of `total`.
    Backends { healthy: usize, total: usize },
    /// Interface usable.
    Link(bool),
    /// The script's verdict after its rise/fall.
    Script(bool),
}

/// An instance's trackers and what was last observed of each.
#[derive(Debug, Clone)]
pub struct Trackers {
    base: u8,
    items: Vec<(TrackerSpec, Observed)>,
}

/// What the trackers make of the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// Priority to advertise and compare with.
    pub priority: u8,
    /// A weight-0 tracker fails: the instance belongs in Fault.
    pub fault: bool,
    /// `150 - 60 (http web: 0/2 healthy)`, or the configured priority alone.
    pub explanation: String,
}

/// One tracker in `/status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TrackerStatus {
    /// "http", "interface" or "script".
    pub kind: &'static str,
    /// Listener, interface or script name.
    pub name: String,
    /// Its weight (0: fault while failing).
    pub weight: u8,
    /// Failing now.
    pub failing: bool,
    /// What was observed, e.g. "1/2 healthy", "down", "failing".
    pub detail: String,
}

impl Watched {
    fn kind(&self) -> &'static str {
        match self {
            Watched::Http { .. } => "http",
            Watched::Interface { .. } => "interface",
            Watched::Script { .. } => "script",
        }
    }

    fn name(&self) -> &str {
        match self {
            Watched::Http { listener: n, .. } | Watched::Interface { name: n } | Watched::Script { name: n } => n,
        }
    }
}

fn failing(spec: &TrackerSpec, seen: Observed) -> bool {
    match (&spec.watched, seen) {
        (Watched::Http { min_healthy, .. }, Observed::Backends { healthy, .. }) => healthy < *min_healthy,
        (_, Observed::Link(up) | Observed::Script(up)) => !up,
        _ => false,
    }
}

fn detail(seen: Observed) -> String {
    match seen {
        Observed::Unknown => "not observed yet".to_string(),
        Observed::Backends { healthy, total } => format!("{healthy}/{total} healthy"),
        Observed::Link(up) => (if up { "up" } else { "down" }).to_string(),
        Observed::Script(ok) => (if ok { "passing" } else { "failing" }).to_string(),
    }
}

impl Trackers {
    /// The trackers of an instance whose configured priority is `base`.
    pub fn new(base: u8, specs: Vec<TrackerSpec>) -> Self {
        Trackers { base, items: specs.into_iter().map(|s| (s, Observed::Unknown)).collect() }
    }

    /// The trackers, in configuration order.
    pub fn specs(&self) -> impl Iterator<Item = &TrackerSpec> {
        self.items.iter().map(|(s, _)| s)
    }

    /// Records what tracker `i` observed; true if its verdict changed.
    pub fn observe(&mut self, i: usize, seen: Observed) -> bool {
        let Some((spec, last)) = self.items.get_mut(i) else { return false };
        let before = failing(spec, *last);
        *last = seen;
        before != failing(spec, seen)
    }

    /// Whether every tracker has been observed at least once.
    pub fn all_observed(&self) -> bool {
        self.items.iter().all(|(_, seen)| *seen != Observed::Unknown)
    }

    /// The effective priority alone, without building its explanation
    /// (asked on every pass of the VRRP loop in a sync group).
    pub fn priority(&self) -> u8 {
        let failing_weights = self.items.iter().filter(|(s, o)| failing(s, *o)).map(|(s, _)| u32::from(s.weight));
        let lowered = u32::from(self.base).saturating_sub(failing_weights.sum());
        // An owner (255) has no trackers: the config refuses them.
        if self.items.is_empty() {
            self.base
        } else {
            lowered.clamp(1, 254) as u8
        }
    }

    /// The effective priority and its explanation.
    pub fn effective(&self) -> Effective {
        let mut explanation = self.base.to_string();
        let mut fault = false;
        for (spec, seen) in self.items.iter().filter(|(s, o)| failing(s, *o)) {
            let what = format!("{} {}: {}", spec.watched.kind(), spec.watched.name(), detail(*seen));
            if spec.weight == 0 {
                fault = true;
                let _ = write!(explanation, " fault ({what})");
            } else {
                let _ = write!(explanation, " - {} ({what})", spec.weight);
            }
        }
        Effective { priority: self.priority(), fault, explanation }
    }

    /// Every tracker for `/status`.
    pub fn status(&self) -> Vec<TrackerStatus> {
        self.items
            .iter()
            .map(|(spec, seen)| TrackerStatus {
                kind: spec.watched.kind(),
                name: spec.watched.name().to_string(),
                weight: spec.weight,
                failing: failing(spec, *seen),
                detail: detail(*seen),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(weight: u8) -> TrackerSpec {
        TrackerSpec { watched: Watched::Http { listener: "web".into(), min_healthy: 1 }, weight }
    }

    fn iface(weight: u8) -> TrackerSpec {
        TrackerSpec { watched: Watched::Interface { name: "eth1".into() }, weight }
    }

    fn script(weight: u8) -> TrackerSpec {
        TrackerSpec { watched: Watched::Script { name: "db".into() }, weight }
    }

    #[test]
    fn failing_weights_lower_the_priority_with_an_explanation() {
        let mut t = Trackers::new(150, vec![http(60), iface(50), script(30)]);
        assert_eq!(t.effective(), Effective { priority: 150, fault: false, explanation: "150".into() });
        // Unknown passes; healthy enough passes.
        assert!(!t.observe(0, Observed::Backends { healthy: 1, total: 2 }));
        assert_eq!(t.effective().priority, 150);
        assert!(t.observe(0, Observed::Backends { healthy: 0, total: 2 }));
        assert_eq!(
            t.effective(),
            Effective { priority: 90, fault: false, explanation: "150 - 60 (http web: 0/2 healthy)".into() }
        );
        assert!(t.observe(2, Observed::Script(false)));
        assert_eq!(t.effective().priority, 60);
        assert_eq!(t.effective().explanation, "150 - 60 (http web: 0/2 healthy) - 30 (script db: failing)");
        // Never below 1.
        assert!(t.observe(1, Observed::Link(false)));
        assert_eq!(t.effective().priority, 10);
        let mut low = Trackers::new(20, vec![http(60)]);
        low.observe(0, Observed::Backends { healthy: 0, total: 1 });
        assert_eq!(low.effective().priority, 1);
        // A repeat of the same verdict is no change.
        assert!(!t.observe(1, Observed::Link(false)));
        assert!(t.observe(1, Observed::Link(true)));
    }

    #[test]
    fn a_failing_weightless_tracker_means_fault() {
        let mut t = Trackers::new(100, vec![iface(0), http(20)]);
        t.observe(0, Observed::Link(false));
        let e = t.effective();
        assert!(e.fault);
        assert_eq!(e.explanation, "100 fault (interface eth1: down)");
        t.observe(0, Observed::Link(true));
        assert!(!t.effective().fault);
    }

    #[test]
    fn status_lists_every_tracker() {
        let mut t = Trackers::new(150, vec![http(60), script(0)]);
        t.observe(0, Observed::Backends { healthy: 2, total: 2 });
        let s = t.status();
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].kind, s[0].name.as_str(), s[0].failing, s[0].detail.as_str()),
            ("http", "web", false, "2/2 healthy")
        );
        assert_eq!((s[1].kind, s[1].weight, s[1].detail.as_str()), ("script", 0, "not observed yet"));
    }
}
