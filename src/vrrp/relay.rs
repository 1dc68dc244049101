//! The hand-over relay. When this node takes over from a master that is
//! still up (its priority 0, or our preemption), clients move here with the
//! gratuitous ARPs, but their TCP connections to the old master do not: a
//! connection whose handshake or upload straddles the switch would be reset
//! by this kernel, which has no socket for it. For a moment an nftables rule
//! passes such packets (to a VIP, not a SYN, matching only a wildcard
//! listener here) on to the old master, which still holds the VIPs for a
//! moment and answers from them (`dup` to it, then drop).
//!
//! The rule is one table per interface and VRID, written by the `nft` tool
//! (package nftables) in one atomic transaction. Without `nft`, planned
//! hand-overs work as before, and the log says once what is lost.

use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::command::{run, RunError};
use super::packet::Family;

/// How long `nft` may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a relay is and what it passes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayRule {
    /// The VIPs' address family.
    pub family: Family,
    /// Interface index the VIPs are reached by (the macvlan with a virtual MAC).
    pub vip_ifindex: u32,
    /// Interface index the old master is reached by.
    pub out_ifindex: u32,
    /// The instance.
    pub vrid: u8,
    /// Its VIPs.
    pub vips: Vec<IpAddr>,
    /// The old master.
    pub peer: IpAddr,
}

fn family_word(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// The table holding one instance's relay.
pub fn table_name(vip_ifindex: u32, vrid: u8) -> String {
    format!("vipd_relay_{vip_ifindex}_{vrid}")
}

/// An nft script that removes the table if it exists (creating an empty
/// one first makes the delete unconditional).
pub fn remove_script(family: Family, vip_ifindex: u32, vrid: u8) -> String {
    let (f, t) = (family_word(family), table_name(vip_ifindex, vrid));
    format!("table {f} {t} {{}}\ndelete table {f} {t}\n")
}

/// An nft script that (re)writes the relay of `rule`.
///
/// Established connections here are matched by their own socket, bound to
/// the VIP (`socket wildcard 0`), and stay here; a packet that finds only a
/// listener on the wildcard address is one this kernel would reset. SYNs
/// are new connections and ours. Connections to a listener bound to a VIP
/// itself cannot be told apart and are not relayed. Before conntrack
/// (priority -150 is mangle's), so none is needed.
pub fn install_script(rule: &RelayRule) -> String {
    let f = family_word(rule.family);
    let vips: Vec<String> = rule.vips.iter().map(|a| a.to_string()).collect();
    let mut s = remove_script(rule.family, rule.vip_ifindex, rule.vrid);
    s.push_str(&format!(
        "table {f} {t} {{\n\tchain prerouting {{\n\t\ttype filter hook prerouting priority -150; policy accept;\n\t\tmeta iif {iif} {f} daddr {{ {vips} }} tcp flags & syn == 0 socket wildcard 1 counter dup to {peer} device {out} drop\n\t}}\n}}\n",
        t = table_name(rule.vip_ifindex, rule.vrid),
        iif = rule.vip_ifindex,
        vips = vips.join(", "),
        peer = rule.peer,
        out = rule.out_ifindex,
    ));
    s
}

/// Why `nft` did not do it.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// No `nft` program.
    #[error("nft not found (package nftables)")]
    Missing,
    /// It ran and refused.
    #[error("nft failed ({status}): {output}")]
    Refused {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it said.
        output: String,
    },
    /// It could not be run.
    #[error("nft: {0}")]
    Run(RunError),
}

/// Runs nft scripts; notices once that there is no `nft`.
#[derive(Debug)]
pub struct Nft {
    program: String,
    missing: bool,
}

impl Default for Nft {
    fn default() -> Self {
        Nft { program: "nft".into(), missing: false }
    }
}

impl Nft {
    /// Applies `script` in one transaction. After [`NftError::Missing`]
    /// once, later calls fail the same way without looking again.
    pub async fn apply(&mut self, script: &str) -> Result<(), NftError> {
        if self.missing {
            return Err(NftError::Missing);
        }
        let cmd = [self.program.clone(), script.to_string()];
        match run(&cmd, NFT_TIMEOUT).await {
            Ok((status, _)) if status.success() => {
                debug!(script, "nft applied");
                Ok(())
            }
            Ok((status, output)) => Err(NftError::Refused { status, output }),
            Err(RunError::Spawn(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                self.missing = true;
                Err(NftError::Missing)
            }
            Err(e) => Err(NftError::Run(e)),
        }
    }

    /// Whether `nft` is known to be missing.
    pub fn is_missing(&self) -> bool {
        self.missing
    }
}

enum Job {
    Start(RelayRule),
    End { family: Family, vip_ifindex: u32, vrid: u8 },
    Flush(oneshot::Sender<()>),
}

/// Writes relays in order on a task of its own: the VRRP loop hands them
/// over and goes on (an `nft` run takes 5 to 20 ms, and a slow host could
/// make it take seconds: adverts must not wait for that).
#[derive(Debug)]
pub struct RelayWorker {
    jobs: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Start(rule) => write!(f, "start {rule:?}"),
            Job::End { vrid, .. } => write!(f, "end vrid {vrid}"),
            Job::Flush(_) => write!(f, "flush"),
        }
    }
}

impl RelayWorker {
    /// Starts the task (on the current runtime), running `nft`'s scripts.
    pub fn spawn(mut nft: Nft) -> Self {
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                match job {
                    Job::Start(rule) => match nft.apply(&install_script(&rule)).await {
                        Ok(()) => {
                            info!(vrid = rule.vrid, peer = %rule.peer, "relaying the connections the old master still holds to it")
                        }
                        // Said at start.
                        Err(NftError::Missing) => {}
                        Err(e) => {
                            warn!(vrid = rule.vrid, peer = %rule.peer, error = %e, "could not set up the hand-over relay")
                        }
                    },
                    Job::End { family, vip_ifindex, vrid } => {
                        match nft.apply(&remove_script(family, vip_ifindex, vrid)).await {
                            Ok(()) => debug!(vrid, "hand-over relay ended"),
                            Err(NftError::Missing) => {}
                            Err(e) => warn!(vrid, error = %e, "could not remove the hand-over relay"),
                        }
                    }
                    Job::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        RelayWorker { jobs }
    }

    /// Puts `rule` in place (replacing the instance's earlier one).
    pub fn start(&self, rule: RelayRule) {
        let _ = self.jobs.send(Job::Start(rule));
    }

    /// Removes an instance's relay.
    pub fn end(&self, family: Family, vip_ifindex: u32, vrid: u8) {
        let _ = self.jobs.send(Job::End { family, vip_ifindex, vrid });
    }

    /// Waits, at most `within`, for what was handed over so far.
    pub async fn flush(&self, within: Duration) {
        let (done, wait) = oneshot::channel();
        if self.jobs.send(Job::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(within, wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn the_rule_relays_non_syn_packets_that_find_only_a_listener() {
        let rule = RelayRule {
            family: Family::V4,
            vip_ifindex: 7,
            out_ifindex: 3,
            vrid: 51,
            vips: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9))],
            peer: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11)),
        };
        let s = install_script(&rule);
        assert!(
            s.starts_with("table ip vipd_relay_7_51 {}\ndelete table ip vipd_relay_7_51\ntable ip vipd_relay_7_51 {\n")
        );
        assert!(s.contains(
            "meta iif 7 ip daddr { 192.0.2.10, 192.0.2.9 } tcp flags & syn == 0 socket wildcard 1 counter dup to 192.0.2.11 device 3 drop"
        ));
        assert!(s.contains("hook prerouting priority -150;"));
        let v6 = RelayRule {
            family: Family::V6,
            vips: vec![IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10))],
            peer: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
            ..rule
        };
        assert!(install_script(&v6).contains(
            "ip6 daddr { 2001:db8::10 } tcp flags & syn == 0 socket wildcard 1 counter dup to fe80::1 device 3 drop"
        ));
        assert_eq!(
            remove_script(Family::V6, 7, 51),
            "table ip6 vipd_relay_7_51 {}\ndelete table ip6 vipd_relay_7_51\n"
        );
    }

    #[tokio::test]
    async fn a_missing_nft_is_noticed_once() {
        let mut nft = Nft { program: "/nonexistent/nft".into(), missing: false };
        assert!(matches!(nft.apply("list ruleset").await, Err(NftError::Missing)));
        assert!(nft.is_missing());
        assert!(matches!(nft.apply("list ruleset").await, Err(NftError::Missing)));
    }
}
