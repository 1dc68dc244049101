//! Sync groups (keepalived's `vrrp_sync_group`): instances that move
//! together, e.g. a router's VIP on each side. A member in fault for its
//! own reasons puts the others in fault; a member's failing trackers lower
//! every member's priority alike (as keepalived's group tracking does), so
//! the peer's members preempt all of them together; a member that is
//! backup under a better master makes a master member step down and holds
//! the others' preemption back, so the group's VIPs end up on one node.
//! Each member publishes what it is here and is woken when another
//! member's state changes.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::Notify;

use super::notify::{HookQueue, HookRuns, Hooks};
use super::stats::NotifyRuns;

/// One `[[sync_group]]`, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// Name in logs and hooks.
    pub name: String,
    /// Its members' instance names.
    pub instances: Vec<String>,
    /// Hooks run when the whole group is in one state.
    pub notify: Hooks,
}

/// What one member tells the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemberState {
    /// In fault for its own reasons (link, address, trackers), not the group's.
    pub own_fault: bool,
    /// Backup under a master at least as good as itself.
    pub lost: bool,
    /// How far its own trackers lower its priority.
    pub lowered: u8,
    /// Its state as hooks name it (`None` while initializing).
    pub word: Option<&'static str>,
}

/// The members' states, shared.
#[derive(Debug)]
pub struct GroupShared {
    name: String,
    members: Mutex<Vec<MemberState>>,
    /// One per member: woken when another member's state changes.
    wake: Vec<Notify>,
    hooks: Option<(HookQueue, Hooks)>,
    /// How the group's hooks ended.
    runs: Arc<HookRuns>,
    /// The state the whole group was last in, for its hooks.
    last_word: Mutex<Option<&'static str>>,
}

/// One sync group in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct GroupSnapshot {
    /// Its name.
    pub name: String,
    /// The state all its members are in ("MASTER", "BACKUP", "FAULT",
    /// "STOP"), or none while they differ.
    pub state: Option<&'static str>,
    /// Its notify hook runs by state and result.
    pub notify_runs: Vec<NotifyRuns>,
}

impl GroupShared {
    /// A group of `members` members; `hooks` run on whole-group changes
    /// and count their ends in `runs`.
    pub fn new(name: String, members: usize, hooks: Option<(HookQueue, Hooks)>, runs: Arc<HookRuns>) -> Arc<Self> {
        Arc::new(GroupShared {
            name,
            members: Mutex::new(vec![MemberState::default(); members]),
            wake: (0..members).map(|_| Notify::new()).collect(),
            hooks,
            runs,
            last_word: Mutex::new(None),
        })
    }

    /// For `/status`.
    pub fn snapshot(&self) -> GroupSnapshot {
        GroupSnapshot {
            name: self.name.clone(),
            state: *self.last_word.lock().unwrap_or_else(|p| p.into_inner()),
            notify_runs: NotifyRuns::list(&self.runs),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<MemberState>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Member `i` is now `state`; the others are woken if it changed, and
    /// the group's hooks run if the whole group is now in one new state.
    pub fn publish(&self, i: usize, state: MemberState) {
        let whole = {
            let mut members = self.lock();
            match members.get_mut(i) {
                Some(m) if *m != state => *m = state,
                _ => return,
            }
            let first = members.first().and_then(|m| m.word);
            first.filter(|w| members.iter().all(|m| m.word == Some(w)))
        };
        for (j, w) in self.wake.iter().enumerate() {
            if j != i {
                w.notify_one();
            }
        }
        let mut last = self.last_word.lock().unwrap_or_else(|p| p.into_inner());
        match whole {
            Some(word) if *last != Some(word) => {
                *last = Some(word);
                if let Some((queue, hooks)) = &self.hooks {
                    queue.push(word, hooks.commands("GROUP", &self.name, word, None));
                }
            }
            Some(_) => {}
            // Split: the next whole state is news, even the one before.
            None => *last = None,
        }
    }

    /// Resolves when another member's state changed since the last call.
    pub async fn changed(&self, i: usize) {
        if let Some(w) = self.wake.get(i) {
            w.notified().await;
        }
    }

    /// What the other members say: one is in fault, one lost to a better
    /// master, and the most any of them is lowered by its trackers.
    pub fn others(&self, i: usize) -> Others {
        let members = self.lock();
        let others = members.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, m)| m);
        others.fold(Others::default(), |o, m| Others {
            fault: o.fault || m.own_fault,
            lost: o.lost || m.lost,
            lowered: o.lowered.max(m.lowered),
        })
    }
}

/// A member's effective priority: `own` (its trackers'), lowered further
/// to `base - group_lowered` when another member's trackers lower that one
/// more; an owner (255) is never lowered.
pub fn member_priority(base: u8, own: u8, group_lowered: u8) -> u8 {
    if base == 255 {
        own
    } else {
        own.min(base.saturating_sub(group_lowered).clamp(1, 254))
    }
}

/// What a member hears from the others ([`GroupShared::others`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Others {
    /// One is in fault for its own reasons.
    pub fault: bool,
    /// One is backup under a better master.
    pub lost: bool,
    /// The most one of them is lowered by its trackers.
    pub lowered: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(own_fault: bool, lost: bool, word: &'static str) -> MemberState {
        MemberState { own_fault, lost, lowered: 0, word: Some(word) }
    }

    fn others(fault: bool, lost: bool, lowered: u8) -> Others {
        Others { fault, lost, lowered }
    }

    #[test]
    fn the_most_lowered_member_lowers_the_others() {
        assert_eq!(member_priority(150, 150, 60), 90);
        assert_eq!(member_priority(150, 80, 60), 80, "its own trackers lower it more");
        assert_eq!(member_priority(50, 50, 60), 1);
        assert_eq!(member_priority(255, 255, 60), 255);
    }

    #[test]
    fn members_hear_each_other() {
        let g = GroupShared::new("edge".into(), 3, None, Arc::default());
        g.publish(0, st(false, false, "MASTER"));
        g.publish(1, st(true, false, "FAULT"));
        g.publish(2, st(false, true, "BACKUP"));
        assert_eq!(g.others(0), others(true, true, 0));
        assert_eq!(g.others(1), others(false, true, 0));
        assert_eq!(g.others(2), others(true, false, 0));
        assert_eq!(g.snapshot().state, None, "the members differ");
        g.publish(1, MemberState { lowered: 60, ..st(false, false, "BACKUP") });
        assert_eq!(g.others(0), others(false, true, 60));
        assert_eq!(g.others(1), others(false, true, 0));
    }

    #[tokio::test]
    async fn a_change_wakes_the_others_only() {
        let g = GroupShared::new("edge".into(), 2, None, Arc::default());
        g.publish(0, st(false, false, "MASTER"));
        tokio::time::timeout(std::time::Duration::from_secs(1), g.changed(1)).await.expect("member 1 woken");
        let woken = tokio::time::timeout(std::time::Duration::from_millis(50), g.changed(0)).await;
        assert!(woken.is_err(), "a member is not woken by its own change");
    }
}
