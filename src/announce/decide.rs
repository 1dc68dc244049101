//! When an announcement's addresses are exported. Pure: verdicts, a stop
//! and time in; what to do with the addresses out.
//!
//! The addresses are announced by being on the exported interface, whose
//! connected routes the host's routing daemon announces. Besides, a local
//! route that nothing exports holds them for as long as vipd runs, so
//! withdrawing the route never refuses a connection that is still routed
//! here; only a stop's end releases them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the trackers say now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not every tracker has been observed yet.
    Unknown,
    /// Every tracker passes.
    Passing,
    /// Some fail; how.
    Failing(String),
}

/// Where the addresses are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// On the exported interface (and held): announced.
    Announced,
    /// Held only: not announced, still served.
    Withdrawn,
    /// Gone from both: the stop is over.
    Released,
}

impl Place {
    /// The word `/status` shows.
    pub fn word(self) -> &'static str {
        match self {
            Place::Announced => "announced",
            Place::Withdrawn => "withdrawn",
            Place::Released => "released",
        }
    }
}

/// What the driver is to do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Add the addresses to the exported interface.
    Announce,
    /// Remove them from the exported interface.
    Withdraw,
    /// Remove their local route too: they are no longer this host's.
    Release,
}

/// One announcement's state.
#[derive(Debug)]
pub struct Announcement {
    place: Place,
    reason: String,
    since: Instant,
    changes: u64,
    /// A stop began: the addresses are released then.
    release_at: Option<Instant>,
    outputs: VecDeque<Output>,
}

impl Announcement {
    /// At start. With `exported`, the addresses are on the exported
    /// interface already (the process this one replaced put them there, or
    /// one that crashed): they stay until the first verdict, so that an
    /// upgrade does not withdraw the route.
    pub fn new(now: Instant, exported: bool) -> Self {
        let (place, reason) = match exported {
            true => (Place::Announced, "found announced; kept until the first health verdict"),
            false => (Place::Withdrawn, "waiting for the first health verdict"),
        };
        Announcement {
            place,
            reason: reason.into(),
            since: now,
            changes: 0,
            release_at: None,
            outputs: VecDeque::new(),
        }
    }

    /// The trackers' verdict now. Ignored once a stop began.
    pub fn verdict(&mut self, now: Instant, verdict: &Verdict) {
        if self.release_at.is_some() || self.place == Place::Released {
            return;
        }
        match verdict {
            Verdict::Unknown => {}
            Verdict::Passing => self.move_to(now, Place::Announced, "every tracker passes".into()),
            Verdict::Failing(why) => self.move_to(now, Place::Withdrawn, format!("failing: {why}")),
        }
    }

    /// The planned stop: withdraw now, keep serving for `delay` (routers
    /// move their traffic elsewhere meanwhile), then release.
    pub fn stop(&mut self, now: Instant, delay: Duration) {
        if self.release_at.is_some() || self.place == Place::Released {
            return;
        }
        self.move_to(now, Place::Withdrawn, format!("stopping: withdrawn, still served for {delay:?}"));
        self.release_at = Some(now + delay);
        self.handle_timeout(now);
    }

    /// When [`Announcement::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.release_at.filter(|_| self.place != Place::Released)
    }

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.release_at.is_some_and(|t| t <= now) && self.place != Place::Released {
            self.place = Place::Released;
            self.reason = "stopped".into();
            self.since = now;
            self.changes += 1;
            self.outputs.push_back(Output::Release);
        }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// A stop began.
    pub fn is_stopping(&self) -> bool {
        self.release_at.is_some()
    }

    /// Released, with nothing left to do.
    pub fn is_done(&self) -> bool {
        self.place == Place::Released && self.outputs.is_empty()
    }

    /// Where the addresses are meant to be.
    pub fn place(&self) -> Place {
        self.place
    }

    /// Why they are there.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Since when.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Moves between places so far.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    fn move_to(&mut self, now: Instant, place: Place, reason: String) {
        self.reason = reason;
        if place == self.place {
            return;
        }
        self.place = place;
        self.since = now;
        self.changes += 1;
        self.outputs.push_back(match place {
            Place::Announced => Output::Announce,
            Place::Withdrawn => Output::Withdraw,
            Place::Released => Output::Release,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn outputs(a: &mut Announcement) -> Vec<Output> {
        std::iter::from_fn(|| a.poll_output()).collect()
    }

    #[test]
    fn announced_while_every_tracker_passes() {
        let t0 = Instant::now();
        let mut a = Announcement::new(t0, false);
        assert_eq!((a.place(), a.reason()), (Place::Withdrawn, "waiting for the first health verdict"));
        a.verdict(t0 + MS, &Verdict::Unknown);
        assert_eq!(outputs(&mut a), vec![]);
        a.verdict(t0 + 2 * MS, &Verdict::Passing);
        assert_eq!(outputs(&mut a), vec![Output::Announce]);
        assert_eq!((a.place(), a.since(), a.changes()), (Place::Announced, t0 + 2 * MS, 1));
        // The same verdict again changes nothing.
        a.verdict(t0 + 3 * MS, &Verdict::Passing);
        assert_eq!(outputs(&mut a), vec![]);
        a.verdict(t0 + 4 * MS, &Verdict::Failing("http web: 0/2 healthy".into()));
        assert_eq!(outputs(&mut a), vec![Output::Withdraw]);
        assert_eq!(a.reason(), "failing: http web: 0/2 healthy");
        // A new explanation while still failing: no move, the reason follows.
        a.verdict(t0 + 5 * MS, &Verdict::Failing("http web: 1/3 healthy".into()));
        assert_eq!((outputs(&mut a), a.since()), (vec![], t0 + 4 * MS));
        assert_eq!(a.reason(), "failing: http web: 1/3 healthy");
        a.verdict(t0 + 6 * MS, &Verdict::Passing);
        assert_eq!(outputs(&mut a), vec![Output::Announce]);
        assert_eq!(a.changes(), 3);
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn found_announced_it_stays_until_the_first_verdict() {
        let t0 = Instant::now();
        let mut a = Announcement::new(t0, true);
        a.verdict(t0, &Verdict::Unknown);
        assert_eq!((a.place(), outputs(&mut a)), (Place::Announced, vec![]));
        a.verdict(t0 + MS, &Verdict::Failing("interface eth1: down".into()));
        assert_eq!(outputs(&mut a), vec![Output::Withdraw]);
    }

    #[test]
    fn a_stop_withdraws_first_and_releases_after_the_delay() {
        let t0 = Instant::now();
        let mut a = Announcement::new(t0, false);
        a.verdict(t0, &Verdict::Passing);
        outputs(&mut a);
        a.stop(t0 + 10 * MS, 3000 * MS);
        assert_eq!(outputs(&mut a), vec![Output::Withdraw]);
        assert_eq!(a.poll_timeout(), Some(t0 + 3010 * MS));
        // Health no longer moves it, and a second stop does not restart the wait.
        a.verdict(t0 + 20 * MS, &Verdict::Passing);
        a.stop(t0 + 30 * MS, 3000 * MS);
        assert_eq!((outputs(&mut a), a.poll_timeout()), (vec![], Some(t0 + 3010 * MS)));
        a.handle_timeout(t0 + 3009 * MS);
        assert!(!a.is_done());
        a.handle_timeout(t0 + 3010 * MS);
        assert_eq!(outputs(&mut a), vec![Output::Release]);
        assert!(a.is_done());
        assert_eq!((a.place(), a.poll_timeout()), (Place::Released, None));

        // Withdrawn already (failing) with no delay: released at once.
        let mut b = Announcement::new(t0, false);
        b.stop(t0, Duration::ZERO);
        assert_eq!(outputs(&mut b), vec![Output::Release]);
        assert!(b.is_done());
    }
}
