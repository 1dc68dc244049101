//! vipd under systemd's eyes: started with `NOTIFY_SOCKET` and
//! `WATCHDOG_USEC` as systemd sets them (`Type=notify`, `WatchdogSec=`),
//! it says READY=1 with a STATUS line once it serves, pings the watchdog
//! regularly, and says STOPPING=1 on SIGTERM before it exits 0. An HTTP-only
//! configuration on loopback, so no privilege is needed.

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
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

#[test]
fn ready_status_watchdog_and_stopping_reach_systemd() {
    let dir = std::env::temp_dir().join(format!("vipd-systemd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let notify = dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify);
    let sock = UnixDatagram::bind(&notify).expect("notify socket");
    let config = dir.join("vipd.toml");
    let (control, http) = (free_port(), free_port());
    std::fs::write(
        &config,
        format!(
            "[control]\nlisten = \"127.0.0.1:{control}\"\nsocket = \"{}\"\n\n[[http]]\nname = \"web\"\nlisten = \"127.0.0.1:{http}\"\nbackends = [\"127.0.0.1:9\"]\n",
            dir.join("control.sock").display()
        ),
    )
    .expect("config");
    // systemd names the process the watchdog is for: the shell's PID is
    // vipd's once it execs.
    let mut child = Command::new("/bin/sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" run --config \"$1\"", env!("CARGO_BIN_EXE_vipd")])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("vipd starts");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));

    let start = collect(&sock, Duration::from_secs(10), |m| m.contains("READY=1"));
    let ready = start.iter().find(|m| m.contains("READY=1")).cloned();
    let Some(ready) = ready else {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        panic!("no READY=1 within 10 s: {start:?}");
    };
    assert!(ready.contains("STATUS=http web 0/1 healthy") || ready.contains("STATUS=http web 1/1 healthy"), "{ready}");

    // Pings every WATCHDOG_USEC / 2 = 200 ms.
    let during = collect(&sock, Duration::from_millis(1100), |_| false);
    let pings = during.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 3, "{pings} watchdog pings in 1.1 s: {during:?}");

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let end = collect(&sock, Duration::from_secs(10), |m| m.contains("STOPPING=1"));
    assert!(end.iter().any(|m| m.contains("STOPPING=1")), "{end:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "vipd did not exit within 15 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
