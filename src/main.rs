//! vipd command line: parse arguments, load the config, call the library.

use std::io::{IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "vipd", version, about = "VRRP virtual IP failover (keepalived-compatible) in one daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = "/etc/vipd/vipd.toml")]
        config: PathBuf,
        /// Log lines as text for people, or one JSON object per line for a
        /// log pipeline. Under systemd (JOURNAL_STREAM set) text carries
        /// no timestamp of its own: the journal adds one.
        #[arg(long, value_parser = ["text", "json"], default_value = "text")]
        log_format: String,
    },
    /// Validate a configuration file; exit 1 with `file:line:col: message` on error.
    Check {
        /// Configuration file.
        #[arg(long, short, default_value = "/etc/vipd/vipd.toml")]
        config: PathBuf,
    },
    /// Show the instances of a running daemon.
    Status {
        /// Control address of the daemon.
        #[arg(long, default_value = "127.0.0.1:9090")]
        control: SocketAddr,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a running VRRP instance, over the daemon's control socket.
    Vrrp {
        #[command(subcommand)]
        action: VrrpAction,
        /// The daemon's control socket (`[control] socket`).
        #[arg(long, global = true, default_value = vipd::config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Make the running daemon read its configuration file again and apply
    /// what a reload can change (refused, with the reason, otherwise).
    Reload {
        /// The daemon's control socket (`[control] socket`).
        #[arg(long, default_value = vipd::config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Replace the running daemon by a new process of the installed binary
    /// without a failover: it takes over the listening sockets and each VRRP
    /// instance's state; the old one drains and exits. Refused, with the
    /// reason, when the new process does not become ready (the old one
    /// carries on).
    Upgrade {
        /// The daemon's control socket (`[control] socket`).
        #[arg(long, default_value = vipd::config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Print a manual page in roff: `vipd` (vipd(8)) or `vipd.toml`
    /// (vipd.toml(5)), for packaging.
    #[command(hide = true)]
    Manpage {
        /// Which page.
        #[arg(value_parser = ["vipd", "vipd.toml"])]
        page: String,
    },
    /// Take a backend out of rotation or put it back, over the control socket.
    Backend {
        /// drain: no new requests, those in flight finish; disable: the same,
        /// and counted as down by track_http; enable: back in rotation.
        #[arg(value_parser = ["drain", "disable", "enable"])]
        action: String,
        /// The [[http]] listener's name.
        listener: String,
        /// The backend's address as configured (IP:PORT).
        address: String,
        /// The daemon's control socket (`[control] socket`).
        #[arg(long, default_value = vipd::config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(Subcommand)]
enum VrrpAction {
    /// Hand the VIPs over now (priority 0, kept until the new master
    /// advertises); then stay backup without preemption until `resume`.
    StepDown {
        /// Instance name.
        name: String,
    },
    /// Preempt again as configured after a step-down.
    Resume {
        /// Instance name.
        name: String,
    },
    /// Advertise this priority (1..254) until `reset`, whatever the trackers say.
    Priority {
        /// Instance name.
        name: String,
        /// 1..254, or `reset`.
        priority: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, log_format } => run(config, &log_format),
        Command::Check { config } => match vipd::config::load(&config) {
            Ok(c) if !check_certificates(&config, &c) => return ExitCode::FAILURE,
            Ok(c) if c.vrrp.is_empty() && c.http.is_empty() => {
                println!(
                    "{}: ok, but nothing is configured yet: vipd would only serve its control endpoint (add a [[vrrp]] or [[http]] section)",
                    config.display()
                );
                Ok(())
            }
            Ok(c) => {
                println!(
                    "{}: ok ({} vrrp instance(s), {} http listener(s))",
                    config.display(),
                    c.vrrp.len(),
                    c.http.len()
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        Command::Status { control, json } => status(control, json),
        Command::Vrrp { action, socket } => {
            let line = match action {
                VrrpAction::StepDown { name } => format!("vrrp step-down {name}"),
                VrrpAction::Resume { name } => format!("vrrp resume {name}"),
                VrrpAction::Priority { name, priority } => format!("vrrp priority {name} {priority}"),
            };
            command(&socket, &line)
        }
        Command::Reload { socket } => command(&socket, "reload"),
        Command::Upgrade { socket } => command(&socket, "upgrade"),
        Command::Manpage { page } => manpage(&page),
        Command::Backend { action, listener, address, socket } => {
            command(&socket, &format!("backend {action} {listener} {address}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vipd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: PathBuf, log_format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    match (log_format, journal) {
        ("json", _) => logs.json().flatten_event(true).init(),
        (_, true) => logs.without_time().with_ansi(false).init(),
        _ => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    let config = vipd::config::load(&path)?;
    vipd::daemon::run(config, &path)
}

/// `vipd check` of the TLS listeners' certificates (each read and checked
/// as at start, and refused outside its validity period) and of the
/// backends' CA files; prints the names each certificate covers and what
/// to act on. False (after saying why) if one cannot be used.
fn check_certificates(path: &std::path::Path, config: &vipd::config::Config) -> bool {
    let now = std::time::SystemTime::now();
    for h in &config.http {
        if let Some(b) = &h.backend_tls {
            if let Err(e) = vipd::proxy::tls::BackendTls::new(b) {
                eprintln!("{}: http {:?}: backend_tls: {e}", path.display(), h.name);
                return false;
            }
        }
        let Some(settings) = &h.tls else { continue };
        let loaded = match vipd::proxy::tls::load(settings, now, vipd::proxy::tls::Validity::Enforce) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{}:{e}", path.display());
                return false;
            }
        };
        for r in loaded.report(now) {
            let names = if r.names.is_empty() { "no names".to_string() } else { r.names.join(", ") };
            println!("http {:?}: {}: {names}", h.name, r.cert.display());
            if let Some(w) = r.warning {
                println!("warning: http {:?}: {}: {w}", h.name, r.cert.display());
            }
        }
    }
    true
}

/// Writes manual page `page` to stdout.
fn manpage(page: &str) -> anyhow::Result<()> {
    let mut out = Vec::new();
    if page == "vipd" {
        use clap::CommandFactory;
        clap_mangen::Man::new(Cli::command().name("vipd")).section("8").render(&mut out)?;
    } else {
        out = vipd::manpage::vipd_toml_5(include_str!("../README.md"), env!("CARGO_PKG_VERSION")).into_bytes();
    }
    std::io::stdout().write_all(&out)?;
    Ok(())
}

/// Sends one command line to the daemon's control socket and prints the
/// answer; an `error:` answer is an error.
fn command(socket: &std::path::Path, line: &str) -> anyhow::Result<()> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {} (is vipd running, and are you root?)", socket.display()))?;
    // An upgrade waits up to 30 s for the new process.
    stream.set_read_timeout(Some(Duration::from_secs(45)))?;
    writeln!(stream, "{line}")?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).context("reading the answer")?;
    let answer = answer.trim_end();
    match answer.strip_prefix("error: ") {
        Some(why) => bail!("{why}"),
        None => {
            println!("{}", answer.strip_prefix("ok: ").unwrap_or(answer));
            Ok(())
        }
    }
}

fn status(control: SocketAddr, json: bool) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(3);
    let mut stream =
        TcpStream::connect_timeout(&control, timeout).with_context(|| format!("connecting to {control}"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET /status HTTP/1.1\r\nHost: {control}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response).context("reading /status")?;
    let Some((head, body)) = response.split_once("\r\n\r\n") else { bail!("malformed answer from {control}") };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{control} answered: {}", head.lines().next().unwrap_or_default());
    }
    if json {
        print!("{body}");
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(body).context("parsing /status")?;
    let row = |cols: [&str; 9]| {
        println!(
            "{:<12} {:<10} {:>5} {:<7} {:>4} {:>4} {:<16} {:>6}  {}",
            cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7], cols[8]
        )
    };
    row(["NAME", "IFACE", "VRID", "STATE", "PRIO", "EFF", "MASTER", "TRANS", "LAST REASON"]);
    let instances = v["vrrp"].as_array().map_or(&[][..], |a| a.as_slice());
    for i in instances {
        let text = |k: &str| i[k].as_str().unwrap_or("-").to_string();
        let num = |k: &str| i[k].as_u64().map_or_else(|| "-".to_string(), |n| n.to_string());
        row([
            &text("name"),
            &text("interface"),
            &num("vrid"),
            &text("state"),
            &num("priority"),
            &num("effective_priority"),
            &text("master_ip"),
            &num("transitions"),
            &text("last_reason"),
        ]);
    }
    // How the trackers made each effective priority.
    for i in instances.iter().filter(|i| i["trackers"].as_array().is_some_and(|t| !t.is_empty())) {
        println!(
            "  {}: priority {}",
            i["name"].as_str().unwrap_or("-"),
            i["priority_explanation"].as_str().unwrap_or("-")
        );
    }
    let listeners = v["http"].as_array().map_or(&[][..], |a| a.as_slice());
    if !listeners.is_empty() {
        println!();
        println!(
            "{:<12} {:<22} {:<22} {:<8} {:>8} {:>10} {:>9}",
            "LISTENER", "LISTEN", "BACKEND", "HEALTHY", "INFLIGHT", "REQUESTS", "FAILURES"
        );
    }
    for l in listeners {
        for b in l["backends"].as_array().into_iter().flatten() {
            let num = |k: &str| b[k].as_u64().map_or_else(|| "-".to_string(), |n| n.to_string());
            let health = match (b["healthy"].as_bool(), b["ejected"].as_bool()) {
                (_, Some(true)) => "ejected",
                (Some(true), _) => "yes",
                _ => "no",
            };
            println!(
                "{:<12} {:<22} {:<22} {:<8} {:>8} {:>10} {:>9}",
                l["name"].as_str().unwrap_or("-"),
                l["listen"].as_str().unwrap_or("-"),
                b["address"].as_str().unwrap_or("-"),
                health,
                num("in_flight"),
                num("requests"),
                num("failures"),
            );
        }
    }
    let announcements = v["announce"].as_array().map_or(&[][..], |a| a.as_slice());
    if !announcements.is_empty() {
        println!();
        println!("{:<14} {:<10} {:<10} {:<24} REASON", "ANNOUNCE", "STATE", "IFACE", "ADDRESSES");
    }
    for a in announcements {
        let addresses: Vec<&str> =
            a["virtual_ips"].as_array().into_iter().flatten().filter_map(|x| x.as_str()).collect();
        println!(
            "{:<14} {:<10} {:<10} {:<24} {}",
            a["name"].as_str().unwrap_or("-"),
            a["state"].as_str().unwrap_or("-"),
            a["interface"].as_str().unwrap_or("-"),
            addresses.join(","),
            a["reason"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}
