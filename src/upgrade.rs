//! `vipd upgrade` (and SIGUSR2): the running process starts the installed
//! binary as its successor and hands it what it must not lose.
//!
//! The sequence, over a socket pair that becomes the successor's fd 3
//! (`VIPD_UPGRADE_FD`), one message each way at a time:
//!
//! 1. old → new: the listening sockets (every HTTP listener's, the control
//!    address's, the command socket's), by SCM_RIGHTS, with what each is.
//!    The new process serves them as they are: nothing is bound again, so
//!    no connection is refused, and the two accept from the same queues.
//! 2. The new process reads its file, starts its proxy on those sockets and
//!    prepares its VRRP instances without starting them (it keeps the VIPs
//!    it finds: they are the running master's). Then new → old: ready.
//! 3. The old process stops its VRRP drivers at once and silently (no
//!    advert, no priority 0, the VIPs and virtual MAC interfaces stay) and
//!    sends old → new: where each instance stood (master, or backup under
//!    which master). The new one goes on from there at once: a master
//!    advertises straight away, so the group sees one interval at most
//!    between the two processes' adverts, and no transition.
//! 4. The old process stops accepting, lets its requests finish (up to
//!    `drain_timeout`) and exits, leaving the command socket's file to its
//!    successor. Under systemd it first names the successor the main PID.
//!
//! If the new process exits, or is not ready within [`READY_TIMEOUT`], the
//! old one stops it and carries on as if nothing happened, saying why.

use std::ffi::OsString;
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, TcpListener as StdTcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

use crate::vrrp::driver::HandedOver;
use crate::vrrp::fsm::Inherited;

/// Names the successor's end of the socket pair.
pub const FD_ENV: &str = "VIPD_UPGRADE_FD";

/// Where the successor finds its end.
const CHILD_FD: RawFd = 3;

/// How long the new process gets to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the new process waits for the old one's VRRP state once ready.
const GO_TIMEOUT: Duration = Duration::from_secs(10);

/// Most descriptors passed (the kernel's limit per message is 253).
const MAX_FDS: usize = 250;

/// Largest message.
const MAX_MESSAGE: usize = 64 * 1024;

/// One message of the hand-over.
#[derive(Debug, Serialize, Deserialize)]
enum Message {
    /// The sockets that come with this message, in this order.
    Sockets { listeners: Vec<(String, SocketAddr, usize)>, control: Option<SocketAddr>, command: Option<PathBuf> },
    /// The successor is ready to take over.
    Ready { pid: u32 },
    /// The old process's VRRP stopped; where each instance stood.
    Go { instances: Vec<Carried> },
}

/// One instance's state on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct Carried {
    name: String,
    vrid: u8,
    master: bool,
    followed: Option<IpAddr>,
    master_adver_us: u64,
}

impl From<&HandedOver> for Carried {
    fn from(h: &HandedOver) -> Self {
        let (master, followed, adver) = match h.state {
            Inherited::Master => (true, None, Duration::ZERO),
            Inherited::Backup { master, master_adver } => (false, master, master_adver),
        };
        Carried {
            name: h.name.clone(),
            vrid: h.vrid,
            master,
            followed,
            master_adver_us: u64::try_from(adver.as_micros()).unwrap_or(u64::MAX),
        }
    }
}

impl From<Carried> for HandedOver {
    fn from(c: Carried) -> Self {
        let state = match c.master {
            true => Inherited::Master,
            false => Inherited::Backup { master: c.followed, master_adver: Duration::from_micros(c.master_adver_us) },
        };
        HandedOver { name: c.name, vrid: c.vrid, state }
    }
}

/// Listening sockets handed from one process to the next.
#[derive(Debug, Default)]
pub struct Sockets {
    /// Each HTTP listener's: name, address, one socket per worker.
    pub listeners: Vec<(String, SocketAddr, Vec<OwnedFd>)>,
    /// The control address's.
    pub control: Option<(SocketAddr, OwnedFd)>,
    /// The command socket's.
    pub command: Option<(PathBuf, OwnedFd)>,
}

impl Sockets {
    /// The sockets of listener `name` if they were passed for `listen`.
    pub fn take_listener(&mut self, name: &str, listen: SocketAddr) -> Option<Vec<StdTcpListener>> {
        let i = self.listeners.iter().position(|(n, a, _)| n == name && *a == listen)?;
        Some(self.listeners.swap_remove(i).2.into_iter().map(StdTcpListener::from).collect())
    }

    /// The control address's socket if it was passed for `listen`.
    pub fn take_control(&mut self, listen: SocketAddr) -> Option<StdTcpListener> {
        match self.control.take() {
            Some((a, fd)) if a == listen => Some(StdTcpListener::from(fd)),
            other => {
                self.control = other;
                None
            }
        }
    }

    /// The command socket's if it was passed for `path`.
    pub fn take_command(&mut self, path: &Path) -> Option<StdUnixListener> {
        match self.command.take() {
            Some((p, fd)) if p == path => Some(StdUnixListener::from(fd)),
            other => {
                self.command = other;
                None
            }
        }
    }
}

fn send(chan: &OwnedFd, message: &Message, fds: &[RawFd]) -> Result<(), String> {
    let bytes = serde_json::to_vec(message).map_err(|e| format!("encoding: {e}"))?;
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(chan.as_raw_fd(), &[IoSlice::new(&bytes)], cmsgs, MsgFlags::empty(), None)
        .map_err(|e| format!("sending: {e}"))?;
    Ok(())
}

/// The next message and the descriptors that came with it; `Ok(None)` when
/// nothing came within the socket's read timeout.
fn receive(chan: &OwnedFd) -> Result<Option<(Message, Vec<OwnedFd>)>, String> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    // A signal (a hook's SIGCHLD) interrupts a receive with a timeout even
    // under SA_RESTART: that is not the timeout, so again.
    let msg = loop {
        match recvmsg::<()>(chan.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => break m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(format!("receiving: {e}")),
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(|e| format!("receiving: {e}"))? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // The kernel made these descriptors for us; nothing else owns them.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let truncated = msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    let len = msg.bytes;
    if len == 0 {
        return Err("the other process closed the hand-over channel".into());
    }
    if truncated {
        return Err("a hand-over message was too large".into());
    }
    let message = serde_json::from_slice(buf.get(..len).unwrap_or_default()).map_err(|e| format!("decoding: {e}"))?;
    Ok(Some((message, fds)))
}

fn set_read_timeout(chan: &OwnedFd, timeout: Duration) -> Result<(), String> {
    socket2::SockRef::from(chan)
        .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
        .map_err(|e| e.to_string())
}

fn exited(status: &std::process::ExitStatus) -> String {
    format!("the new process exited before it was ready ({status})")
}

/// The new process, as the old one sees it.
#[derive(Debug)]
pub struct Successor {
    child: Child,
    chan: OwnedFd,
}

impl Successor {
    /// Starts `exe` with `args` and sends it `sockets`.
    pub fn spawn(exe: &Path, args: &[OsString], sockets: &Sockets) -> Result<Successor, String> {
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| format!("socketpair: {e}"))?;
        let their_fd = theirs.as_raw_fd();
        let mut command = Command::new(exe);
        command.args(args).env(FD_ENV, CHILD_FD.to_string());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Our end of the pair becomes fd 3, without close-on-exec.
                let r = if their_fd == CHILD_FD {
                    nix::libc::fcntl(CHILD_FD, nix::libc::F_SETFD, 0)
                } else {
                    nix::libc::dup2(their_fd, CHILD_FD)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| format!("starting {}: {e}", exe.display()))?;
        drop(theirs);
        let mut successor = Successor { child, chan: ours };
        let mut fds: Vec<RawFd> = Vec::new();
        let listeners = sockets
            .listeners
            .iter()
            .map(|(name, listen, socks)| {
                fds.extend(socks.iter().map(|s| s.as_raw_fd()));
                (name.clone(), *listen, socks.len())
            })
            .collect();
        fds.extend(sockets.control.iter().map(|(_, s)| s.as_raw_fd()));
        fds.extend(sockets.command.iter().map(|(_, s)| s.as_raw_fd()));
        let message = Message::Sockets {
            listeners,
            control: sockets.control.as_ref().map(|(a, _)| *a),
            command: sockets.command.as_ref().map(|(p, _)| p.clone()),
        };
        let sent = if fds.len() > MAX_FDS {
            Err(format!("{} listening sockets: more than the {MAX_FDS} one hand-over can pass", fds.len()))
        } else {
            send(&successor.chan, &message, &fds)
        };
        if let Err(e) = sent {
            // Most likely it exited already (a bad file): say so.
            let why = successor.exit_status(Duration::from_secs(1)).map_or(e, |status| exited(&status));
            successor.abandon();
            return Err(why);
        }
        Ok(successor)
    }

    /// Its exit status if it exits within `within`.
    fn exit_status(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until it says it is ready (blocking); `Err` when it exits, says
    /// something else, or takes longer than `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        set_read_timeout(&self.chan, Duration::from_millis(200))?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(exited(&status));
            }
            match receive(&self.chan) {
                Ok(None) => {}
                Ok(Some((Message::Ready { .. }, _))) => return Ok(()),
                Ok(Some((other, _))) => return Err(format!("the new process said {other:?} instead of ready")),
                // Most likely it exited: say so, with its status.
                Err(e) => return Err(self.exit_status(Duration::from_secs(1)).map_or(e, |status| exited(&status))),
            }
        }
        Err(format!("the new process was not ready within {timeout:?}"))
    }

    /// Tells it where each VRRP instance stood: it takes over from here.
    pub fn go(&self, handed: &[HandedOver]) -> Result<(), String> {
        send(&self.chan, &Message::Go { instances: handed.iter().map(Carried::from).collect() }, &[])
    }

    /// Stops it (the upgrade failed) and reaps it.
    pub fn abandon(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The old process, as the new one sees it.
#[derive(Debug)]
pub struct Predecessor {
    chan: OwnedFd,
}

impl Predecessor {
    /// The hand-over channel if this process was started by `vipd upgrade`.
    /// Call it before any thread starts: it edits the environment (so that
    /// hooks do not inherit the variable, and so that systemd's watchdog
    /// variables name this process).
    pub fn from_env() -> Option<Predecessor> {
        let fd: RawFd = std::env::var(FD_ENV).ok()?.parse().ok()?;
        std::env::remove_var(FD_ENV);
        if std::env::var_os("WATCHDOG_USEC").is_some() {
            std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        }
        // fd 3 was set up for us by the old process just before exec.
        let chan = unsafe { OwnedFd::from_raw_fd(fd) };
        // Not for our own children.
        let _ = nix::fcntl::fcntl(&chan, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
        Some(Predecessor { chan })
    }

    /// The listening sockets the old process passes.
    pub fn receive_sockets(&self) -> Result<Sockets, String> {
        set_read_timeout(&self.chan, GO_TIMEOUT)?;
        let Some((message, fds)) = receive(&self.chan)? else {
            return Err("no sockets from the old process".into());
        };
        let Message::Sockets { listeners, control, command } = message else {
            return Err(format!("the old process sent {message:?} instead of its sockets"));
        };
        let mut fds = fds.into_iter();
        let mut sockets = Sockets::default();
        for (name, listen, count) in listeners {
            let socks: Vec<OwnedFd> = fds.by_ref().take(count).collect();
            if socks.len() != count {
                return Err("fewer sockets than the old process announced".into());
            }
            sockets.listeners.push((name, listen, socks));
        }
        if let Some(a) = control {
            sockets.control = Some((a, fds.next().ok_or("the control socket is missing")?));
        }
        if let Some(p) = command {
            sockets.command = Some((p, fds.next().ok_or("the command socket is missing")?));
        }
        Ok(sockets)
    }

    /// Says this process is ready and waits for where each VRRP instance
    /// stood in the old one (whose VRRP has stopped by then).
    pub fn ready_and_wait(&self) -> Result<Vec<HandedOver>, String> {
        send(&self.chan, &Message::Ready { pid: std::process::id() }, &[])?;
        set_read_timeout(&self.chan, GO_TIMEOUT)?;
        match receive(&self.chan)? {
            Some((Message::Go { instances }, _)) => Ok(instances.into_iter().map(HandedOver::from).collect()),
            Some((other, _)) => Err(format!("the old process sent {other:?} instead of its VRRP state")),
            None => Err(format!("no VRRP state from the old process within {GO_TIMEOUT:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_and_state_cross_the_channel() {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).expect("pair");
        let web = StdTcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = web.local_addr().expect("addr");
        let message = Message::Sockets { listeners: vec![("web".into(), addr, 1)], control: None, command: None };
        send(&a, &message, &[web.as_raw_fd()]).expect("sent");
        let old = Predecessor { chan: b };
        let mut got = old.receive_sockets().expect("received");
        assert!(got.take_listener("web", "127.0.0.1:1".parse().expect("addr")).is_none(), "another address");
        let socks = got.take_listener("web", addr).expect("web's sockets");
        // The same socket: a connection to it is accepted on the copy.
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        socks[0].set_nonblocking(false).expect("blocking");
        assert!(socks[0].accept().is_ok());
        let handed = vec![
            HandedOver { name: "web".into(), vrid: 51, state: Inherited::Master },
            HandedOver {
                name: "api".into(),
                vrid: 52,
                state: Inherited::Backup {
                    master: Some("192.0.2.12".parse().expect("ip")),
                    master_adver: Duration::from_millis(100),
                },
            },
        ];
        let instances = handed.iter().map(Carried::from).collect();
        send(&a, &Message::Go { instances }, &[]).expect("sent");
        set_read_timeout(&old.chan, Duration::from_secs(1)).expect("timeout");
        let Some((Message::Go { instances }, _)) = receive(&old.chan).expect("received") else { panic!("not go") };
        assert_eq!(instances.into_iter().map(HandedOver::from).collect::<Vec<_>>(), handed);
    }
}
