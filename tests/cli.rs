//! The command line as an operator meets it: `vipd check` on good and bad
//! files, `vipd status` against a daemon that is not there.

use std::path::PathBuf;
use std::process::Command;

fn vipd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vipd"))
}

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vipd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn check_accepts_the_shipped_examples() {
    for f in ["conf/vipd.toml", "conf/lb1.toml", "conf/lb2.toml"] {
        let out = vipd().args(["check", "--config", f]).output().expect("runs");
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    }
}

#[test]
fn check_names_key_value_and_line_and_exits_1() {
    let path = write(
        "bad.toml",
        "[[vrrp]]\nname = \"web\"\ninterface = \"eth0\"\nvrid = 51\npriority = 150\nadvert_interval = \"15ms\"\nvirtual_ips = [\"192.0.2.10/24\"]\n",
    );
    let out = vipd().args(["check", "--config"]).arg(&path).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:6:19: vrrp.advert_interval = \"15ms\": VRRPv3 needs a multiple of 10ms"), "{err}");
}

#[test]
fn check_reports_a_missing_file() {
    let out = vipd().args(["check", "--config", "/nonexistent/vipd.toml"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/vipd.toml"));
}

#[test]
fn status_without_a_daemon_fails_clearly() {
    let out = vipd().args(["status", "--control", "127.0.0.1:1"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to 127.0.0.1:1"));
}

#[test]
fn run_logs_one_json_object_per_line_with_request_ids_in_access_lines() {
    use std::io::{BufRead, BufReader, Read, Write};
    let port = |_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let (control, http) = (port(0), port(1));
    let dir = std::env::temp_dir().join(format!("vipd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = write(
        "json.toml",
        &format!(
            "[control]\nlisten = \"127.0.0.1:{control}\"\nsocket = \"{}\"\n\n[[http]]\nname = \"web\"\nlisten = \"127.0.0.1:{http}\"\nbackends = [\"127.0.0.1:9\"]\ndrain_timeout = \"1s\"\n",
            dir.join("json.sock").display()
        ),
    );
    let mut child = vipd()
        .args(["run", "--log-format", "json", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("vipd runs");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let next = |lines: &mut Vec<String>, until: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
                let done = l.contains(until);
                lines.push(l);
                if done {
                    return true;
                }
            }
        }
        false
    };
    let up = next(&mut lines, "control socket up");
    // A request (the backend is not there: 502), with a request id of its own.
    let answered = std::net::TcpStream::connect(("127.0.0.1", http)).and_then(|mut s| {
        s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\nX-Request-Id: abc-123\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    });
    let logged = next(&mut lines, "abc-123");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    assert!(up, "no start-up line: {lines:?}");
    assert!(answered.is_ok_and(|a| a.starts_with("HTTP/1.1 502")));
    assert!(logged, "no access line with the client's request id: {lines:?}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }
    let access = lines.iter().find(|l| l.contains("abc-123")).expect("access line");
    let v: serde_json::Value = serde_json::from_str(access).expect("json");
    assert_eq!(
        (v["request_id"].as_str(), v["status"].as_u64(), v["path"].as_str()),
        (Some("abc-123"), Some(502), Some("/x"))
    );
}
