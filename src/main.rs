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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(config),
        Command::Check { config } => match vipd::config::load(&config) {
            Ok(c) => {
                println!("{}: ok ({} vrrp instance(s))", config.display(), c.vrrp.len());
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        Command::Status { control, json } => status(control, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vipd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = vipd::config::load(&path)?;
    vipd::daemon::run(config, &path)
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
    Ok(())
}
