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
