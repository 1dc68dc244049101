//! vipd under systemd's eyes: started with `NOTIFY_SOCKET` and
//! `WATCHDOG_USEC` as systemd sets them (`Type=notify`, `WatchdogSec=`),
//! it says READY=1 with a STATUS line once it serves, pings the watchdog
//! regularly, and says STOPPING=1 on SIGTERM before it exits 0; `vipd
//! upgrade` names the new process the main PID, and that one goes on (its
//! watchdog pings too) while the listener never refuses a connection. An
//! HTTP-only configuration on loopback, so no privilege is needed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Every message that arrives within `window`, or until `stop` matches one.
fn collect(sock: &UnixDatagram, window: Duration, stop: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        sock.set_read_timeout(Some(left)).expect("timeout");
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                let done = stop(&msg);
                out.push(msg);
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    out
}

/// vipd as systemd starts it (`NOTIFY_SOCKET`, `WATCHDOG_USEC` of 400 ms
/// for its PID), HTTP only on loopback, in a directory of its own.
struct UnderSystemd {
    dir: std::path::PathBuf,
    /// Where vipd's notifications arrive.
    notify: UnixDatagram,
    child: std::process::Child,
    /// Its HTTP listener.
    http: SocketAddr,
    /// Its `[control] socket`.
    command_socket: std::path::PathBuf,
}

impl UnderSystemd {
    fn start(name: &str, extra: &str) -> UnderSystemd {
        let dir = std::env::temp_dir().join(format!("vipd-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let notify_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
        let config = dir.join("vipd.toml");
        let command_socket = dir.join("control.sock");
        let (control, http) = (free_port(), free_port());
        std::fs::write(
            &config,
            format!(
                "[control]\nlisten = \"127.0.0.1:{control}\"\nsocket = \"{}\"\n\n[[http]]\nname = \"web\"\nlisten = \"127.0.0.1:{http}\"\nbackends = [\"127.0.0.1:9\"]\n{extra}\n",
                command_socket.display()
            ),
        )
        .expect("config");
        // systemd names the process the watchdog is for: the shell's PID is
        // vipd's once it execs.
        let child = Command::new("/bin/sh")
            .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" run --config \"$1\"", env!("CARGO_BIN_EXE_vipd")])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "400000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("vipd starts");
        let http = format!("127.0.0.1:{http}").parse().expect("addr");
        UnderSystemd { dir, notify, child, http, command_socket }
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
    }

    /// Waits for READY=1 (killing vipd and failing without it).
    fn wait_ready(&mut self) -> String {
        let start = collect(&self.notify, Duration::from_secs(10), |m| m.contains("READY=1"));
        match start.iter().find(|m| m.contains("READY=1")) {
            Some(ready) => ready.clone(),
            None => {
                let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL);
                let _ = self.child.wait();
                panic!("no READY=1 within 10 s: {start:?}");
            }
        }
    }
}

#[test]
fn ready_status_watchdog_and_stopping_reach_systemd() {
    let mut vipd = UnderSystemd::start("systemd", "");
    let pid = vipd.pid();
    let ready = vipd.wait_ready();
    assert!(ready.contains("STATUS=http web 0/1 healthy") || ready.contains("STATUS=http web 1/1 healthy"), "{ready}");

    // Pings every WATCHDOG_USEC / 2 = 200 ms.
    let during = collect(&vipd.notify, Duration::from_millis(1100), |_| false);
    let pings = during.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 3, "{pings} watchdog pings in 1.1 s: {during:?}");

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let end = collect(&vipd.notify, Duration::from_secs(10), |m| m.contains("STOPPING=1"));
    assert!(end.iter().any(|m| m.contains("STOPPING=1")), "{end:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = vipd.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "vipd did not exit within 15 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&vipd.dir);
}

/// Whether `pid` runs (a zombie does not: nobody may reap it soon, since
/// the new process is not our child).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// One GET on a new connection: whether an HTTP answer came (any status).
fn answered(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out.starts_with(b"HTTP/1.1 ")
}

#[test]
fn an_upgrade_hands_the_service_to_a_new_main_pid_without_refusing_a_connection() {
    let mut vipd = UnderSystemd::start("upgrade", "drain_timeout = \"1s\"");
    let old = vipd.pid();
    vipd.wait_ready();
    let (addr, command_socket) = (vipd.http, vipd.command_socket.clone());
    // A client opening a new connection every 10 ms throughout.
    let (stop, tries, failures) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, tries, failures) = (stop.clone(), tries.clone(), failures.clone());
        std::thread::spawn(move || {
            for _ in 0..3000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tries.fetch_add(1, Ordering::Relaxed);
                if !answered(addr) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args(["upgrade", "--socket"])
        .arg(&command_socket)
        .output()
        .expect("vipd upgrade runs");
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{answer} {}", String::from_utf8_lossy(&out.stderr));
    let new: i32 = answer
        .strip_prefix("upgraded: pid ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {answer:?}"));
    let new = nix::unistd::Pid::from_raw(new);
    assert_ne!(new, old, "{answer}");
    let kill_new = || {
        let _ = nix::sys::signal::kill(new, nix::sys::signal::Signal::SIGKILL);
    };
    // systemd hears of the new main PID, then from it: READY=1 and pings.
    let after = collect(&vipd.notify, Duration::from_secs(5), |_| false);
    let main_pid = format!("MAINPID={new}");
    let said = |what: &str| after.iter().position(|m| m.contains(what));
    let (Some(named), Some(ready)) = (said(&main_pid), after.iter().rposition(|m| m.contains("READY=1"))) else {
        kill_new();
        panic!("no {main_pid} and READY=1 after the upgrade: {after:?}");
    };
    assert!(named < ready, "{after:?}");
    let pings = after.iter().skip(ready).filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 3, "the new process pings the watchdog: {after:?}");
    assert!(
        !after.iter().any(|m| m.contains("STOPPING=1")),
        "the old process must not say it stops the service: {after:?}"
    );
    // The old process drained and exited 0; the new one serves.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = vipd.child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() >= deadline {
            kill_new();
            panic!("the old process did not exit within 10 s of the upgrade");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let _ = client.join();
    let (tries, failures) = (tries.load(Ordering::Relaxed), failures.load(Ordering::Relaxed));
    assert!(answered(addr), "the new process serves the listener");
    nix::sys::signal::kill(new, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM to the new process");
    let end = collect(&vipd.notify, Duration::from_secs(10), |m| m.contains("STOPPING=1"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while running(new.as_raw()) {
        if Instant::now() >= deadline {
            kill_new();
            panic!("the new process did not exit within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(end.iter().any(|m| m.contains("STOPPING=1")), "{end:?}");
    assert_eq!(failures, 0, "{failures} of {tries} connections refused or unanswered during the upgrade");
    assert!(!command_socket.exists(), "the last process removes the command socket at its stop");
    let _ = std::fs::remove_dir_all(&vipd.dir);
}
