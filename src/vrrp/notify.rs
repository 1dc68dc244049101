//! Notify hooks: commands run on an instance's state changes, called as
//! keepalived calls its notify scripts so existing ones work unchanged.
//! Which commands a change runs is decided purely ([`Hooks::commands`]);
//! [`HookQueue`] runs them one after another, off the VRRP thread, each
//! bounded by `notify_timeout`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::command::{self, RunError};
use super::fsm::{Reason, State};

/// The commands of one instance (`notify_*`), each an argument list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hooks {
    /// `notify`: every change, called with `INSTANCE <name> <STATE> <priority>`.
    pub any: Option<Vec<String>>,
    /// `notify_master`, run as configured.
    pub master: Option<Vec<String>>,
    /// `notify_backup`.
    pub backup: Option<Vec<String>>,
    /// `notify_fault`.
    pub fault: Option<Vec<String>>,
    /// `notify_stop`: the instance stopped.
    pub stop: Option<Vec<String>>,
    /// A hook still running after this is killed.
    pub timeout: Duration,
}

/// keepalived's word for a state a hook is told about; `None` for the
/// passing Initialize of a restart (Fault -> Init -> Backup).
pub fn state_word(to: State, reason: Reason) -> Option<&'static str> {
    match (to, reason) {
        // Nothing changed for the world: the process did (`vipd upgrade`).
        (_, Reason::Inherited) => None,
        (State::Master, _) => Some("MASTER"),
        (State::Backup, _) => Some("BACKUP"),
        (State::Fault, _) => Some("FAULT"),
        (State::Initialize, Reason::Shutdown | Reason::HandedOver { .. }) => Some("STOP"),
        (State::Initialize, _) => None,
    }
}

impl Hooks {
    /// No hook at all.
    pub fn is_empty(&self) -> bool {
        [&self.any, &self.master, &self.backup, &self.fault, &self.stop].iter().all(|h| h.is_none())
    }

    /// The commands a change to `word` runs, in order: the state's own
    /// hook, then `notify` with keepalived's arguments: `INSTANCE <name>
    /// <STATE> <priority>` (`kind` "INSTANCE"), or `GROUP <name> <STATE>`.
    pub fn commands(&self, kind: &str, name: &str, word: &str, priority: Option<u8>) -> Vec<Vec<String>> {
        let own = match word {
            "MASTER" => &self.master,
            "BACKUP" => &self.backup,
            "FAULT" => &self.fault,
            "STOP" => &self.stop,
            _ => &None,
        };
        let mut out: Vec<Vec<String>> = own.iter().cloned().collect();
        if let Some(any) = &self.any {
            let mut cmd = any.clone();
            cmd.extend([kind.to_string(), name.to_string(), word.to_string()]);
            cmd.extend(priority.map(|p| p.to_string()));
            out.push(cmd);
        }
        out
    }
}

/// How hook runs ended, by state word and result, for `/metrics`.
#[derive(Debug, Default)]
pub struct HookRuns {
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl HookRuns {
    fn count(&self, word: &'static str, result: &'static str) {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()).entry((word, result)).or_default() += 1;
    }

    /// `((state, result), runs)` for every pair seen.
    pub fn snapshot(&self) -> Vec<((&'static str, &'static str), u64)> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (*k, *v)).collect()
    }
}

struct Job {
    word: &'static str,
    commands: Vec<Vec<String>>,
}

/// Runs one instance's hooks in order, never two at once, on the runtime
/// it was made on; the VRRP loop only queues them.
#[derive(Debug, Clone)]
pub struct HookQueue {
    jobs: mpsc::UnboundedSender<Job>,
    /// Jobs queued or running.
    pending: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("word", &self.word).finish_non_exhaustive()
    }
}

impl HookQueue {
    /// Starts the runner of `instance`'s hooks on `runtime`.
    pub fn start(runtime: &tokio::runtime::Handle, instance: String, timeout: Duration, runs: Arc<HookRuns>) -> Self {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        let pending = Arc::new(AtomicUsize::new(0));
        let done = Arc::clone(&pending);
        runtime.spawn(async move {
            while let Some(job) = queue.recv().await {
                for cmd in job.commands {
                    let result = run(&cmd, timeout, &instance, job.word).await;
                    runs.count(job.word, result);
                }
                done.fetch_sub(1, Ordering::Relaxed);
            }
        });
        HookQueue { jobs, pending }
    }

    /// Queues the hooks of one state change.
    pub fn push(&self, word: &'static str, commands: Vec<Vec<String>>) {
        if commands.is_empty() {
            return;
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        if self.jobs.send(Job { word, commands }).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            warn!(state = word, "notify hooks not run: their runner is gone");
        }
    }

    /// Waits (at most `max`) until every queued hook has run: at shutdown,
    /// so the STOP hooks are not cut off.
    pub fn wait_idle(&self, max: Duration) {
        let until = Instant::now() + max;
        while self.pending.load(Ordering::Relaxed) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Runs one hook; returns "ok", "failed", "timeout" or "error" (it could
/// not start).
async fn run(cmd: &[String], timeout: Duration, instance: &str, word: &str) -> &'static str {
    let program = cmd.first().map_or("", String::as_str);
    let started = Instant::now();
    match command::run(cmd, timeout).await {
        Ok((status, out)) => {
            let took = started.elapsed();
            debug!(instance, state = word, program, output = %out, "notify hook output");
            if status.success() {
                info!(instance, state = word, program, ?took, "notify hook done");
                "ok"
            } else {
                warn!(instance, state = word, program, %status, ?took, "notify hook failed");
                "failed"
            }
        }
        Err(e @ RunError::Timeout(_)) => {
            warn!(instance, state = word, program, error = %e, "notify hook killed at its timeout");
            "timeout"
        }
        Err(e) => {
            warn!(instance, state = word, program, error = %e, "notify hook did not run");
            "error"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Option<Vec<String>> {
        Some(s.split(' ').map(str::to_string).collect())
    }

    #[test]
    fn keepalived_arguments_after_the_states_own_hook() {
        let h = Hooks {
            any: cmd("/etc/vipd/notify.sh"),
            master: cmd("/bin/master-hook --now"),
            timeout: Duration::from_secs(10),
            ..Hooks::default()
        };
        assert_eq!(
            h.commands("INSTANCE", "web", "MASTER", Some(150)),
            vec![
                vec!["/bin/master-hook".to_string(), "--now".into()],
                vec!["/etc/vipd/notify.sh".to_string(), "INSTANCE".into(), "web".into(), "MASTER".into(), "150".into()],
            ]
        );
        assert_eq!(h.commands("INSTANCE", "web", "BACKUP", Some(150)).len(), 1);
        assert!(Hooks::default().commands("INSTANCE", "web", "FAULT", Some(1)).is_empty());
        assert_eq!(
            h.commands("GROUP", "edge", "BACKUP", None),
            vec![vec!["/etc/vipd/notify.sh".to_string(), "GROUP".into(), "edge".into(), "BACKUP".into()]]
        );
        assert!(Hooks::default().is_empty() && !h.is_empty());
    }

    #[test]
    fn hooks_are_told_the_states_keepalived_names() {
        assert_eq!(state_word(State::Master, Reason::MasterDownTimerExpired), Some("MASTER"));
        assert_eq!(state_word(State::Fault, Reason::LinkDown), Some("FAULT"));
        assert_eq!(state_word(State::Initialize, Reason::Shutdown), Some("STOP"));
        assert_eq!(state_word(State::Initialize, Reason::LinkUp), None);
    }
}
