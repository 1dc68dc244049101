//! The control endpoint: `/status` (JSON), `/metrics` (Prometheus text) and
//! `/` (a small HTML page), served with hyper on the control address; and
//! the operator's commands on a Unix socket (mode 0600), so that no network
//! client can change anything.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tracing::{debug, info, warn};

use crate::announce::driver::{AnnounceShared, AnnounceSnapshot};
use crate::proxy::backends::{Admin, HttpListeners, PoolSnapshot};
use crate::vrrp::operator::{Ask, Operator};
use crate::vrrp::stats::{unix_seconds, Snapshot, StatsList};
use crate::vrrp::sync::{GroupShared, GroupSnapshot};

/// Everything the control endpoint reports on.
#[derive(Debug, Clone)]
pub struct Sources {
    /// One per VRRP instance, in config order.
    pub vrrp: Arc<StatsList>,
    /// The HTTP listeners, in config order (a reload may change them).
    pub http: Arc<HttpListeners>,
    /// One per sync group, in config order.
    pub groups: Vec<Arc<GroupShared>>,
    /// One per `[[announce]]`, in config order.
    pub announce: Vec<Arc<AnnounceShared>>,
    /// The configuration file and its reloads.
    pub config: Arc<ConfigState>,
}

/// The configuration file in use and how its reloads went.
#[derive(Debug)]
pub struct ConfigState {
    path: String,
    inner: std::sync::Mutex<ConfigInner>,
}

#[derive(Debug)]
struct ConfigInner {
    loaded_at: SystemTime,
    generation: u64,
    last_reload: Option<LastReload>,
}

/// How the last reload went.
#[derive(Debug, Clone, Serialize)]
pub struct LastReload {
    /// Taken.
    pub ok: bool,
    /// Why not (the file's first error, or what a reload cannot change).
    pub error: Option<String>,
    /// When, seconds since the Unix epoch.
    pub at: f64,
}

/// The `config` part of `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigSnapshot {
    /// The file.
    pub path: String,
    /// When the running configuration was loaded, seconds since the Unix epoch.
    pub loaded_at: f64,
    /// 1 at start, one more per reload taken.
    pub generation: u64,
    /// The last reload asked for, if any.
    pub last_reload: Option<LastReload>,
}

impl ConfigState {
    /// The file `path`, loaded now.
    pub fn new(path: &std::path::Path) -> Arc<Self> {
        Arc::new(ConfigState {
            path: path.display().to_string(),
            inner: std::sync::Mutex::new(ConfigInner {
                loaded_at: SystemTime::now(),
                generation: 1,
                last_reload: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConfigInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A reload was taken.
    pub fn reloaded(&self) {
        let mut c = self.lock();
        let now = SystemTime::now();
        c.loaded_at = now;
        c.generation += 1;
        c.last_reload = Some(LastReload { ok: true, error: None, at: unix_seconds(now) });
    }

    /// A reload was refused; the running configuration stays.
    pub fn refused(&self, why: &str) {
        let at = unix_seconds(SystemTime::now());
        self.lock().last_reload = Some(LastReload { ok: false, error: Some(why.to_string()), at });
    }

    /// For `/status`.
    pub fn snapshot(&self) -> ConfigSnapshot {
        let c = self.lock();
        ConfigSnapshot {
            path: self.path.clone(),
            loaded_at: unix_seconds(c.loaded_at),
            generation: c.generation,
            last_reload: c.last_reload.clone(),
        }
    }
}

/// The `/status` document.
#[derive(Debug, Serialize)]
pub struct Status {
    /// When this was taken, seconds since the Unix epoch: the clock that
    /// `since` and the transitions' `at` are on.
    pub now: f64,
    /// VRRP instances.
    pub vrrp: Vec<Snapshot>,
    /// HTTP listeners and their backends.
    pub http: Vec<PoolSnapshot>,
    /// Sync groups.
    pub sync_groups: Vec<GroupSnapshot>,
    /// Active-active announcements.
    pub announce: Vec<AnnounceSnapshot>,
    /// The configuration file and its reloads.
    pub config: ConfigSnapshot,
}

impl Sources {
    /// A consistent view of every instance.
    pub fn status(&self) -> Status {
        Status {
            now: unix_seconds(SystemTime::now()),
            vrrp: self.vrrp.list().iter().map(|s| s.snapshot()).collect(),
            http: self.http.list().iter().map(|p| p.snapshot()).collect(),
            sync_groups: self.groups.iter().map(|g| g.snapshot()).collect(),
            announce: self.announce.iter().map(|a| a.snapshot()).collect(),
            config: self.config.snapshot(),
        }
    }
}

/// Serves the control endpoint on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, sources: Sources) {
    let sources = Arc::new(sources);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "control accept failed");
                // Out of descriptors and the like: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let sources = Arc::clone(&sources);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let sources = Arc::clone(&sources);
                async move { Ok::<_, Infallible>(respond(&req, &sources)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "control connection ended with an error");
            }
        });
    }
}

fn respond(req: &Request<Incoming>, sources: &Sources) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into());
    }
    match req.uri().path() {
        "/status" => match serde_json::to_string_pretty(&sources.status()) {
            Ok(mut json) => {
                json.push('\n');
                reply(StatusCode::OK, "application/json", json)
            }
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
        },
        "/metrics" => reply(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            crate::metrics::render(sources.status(), sources.http.list()),
        ),
        "/" => {
            let mut r = reply(StatusCode::OK, "text/html; charset=utf-8", page(&sources.status()));
            // Its own script and style only; it talks to this endpoint alone.
            r.headers_mut().insert(
                CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
                ),
            );
            r
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /status, /metrics or /\n".into()),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Every answer is the state of now: never from a cache.
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The status page: static markup and a script that renders `/status`
/// and fetches it again every second. The document of now goes in with
/// it, so the first paint needs no second request.
const STATUS_PAGE: &str = include_str!("status_page.html");

fn page(status: &Status) -> String {
    STATUS_PAGE.replacen("{{STATUS}}", &script_json(status), 1)
}

/// `value` as JSON that can stand inside a `<script>` block: there only
/// "</script" could end the block early, and JSON may write "<" and ">"
/// as escapes, so none is left.
fn script_json(value: &impl Serialize) -> String {
    let json = serde_json::to_string(value).unwrap_or_else(|_| "null".to_string());
    json.replace('<', "\\u003c").replace('>', "\\u003e")
}

/// An operator's command as the control socket reads it: one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlCommand {
    /// `vrrp step-down|resume NAME`, `vrrp priority NAME N|reset`.
    Vrrp {
        /// Instance name.
        name: String,
        /// What to change.
        ask: Ask,
    },
    /// `reload` or `upgrade`: asked of the daemon itself.
    Daemon(DaemonAsk),
    /// `backend drain|disable|enable LISTENER ADDRESS`.
    Backend {
        /// Listener name.
        listener: String,
        /// The backend's address as configured.
        address: SocketAddr,
        /// Its new state.
        admin: Admin,
    },
}

/// What only the daemon's main loop can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonAsk {
    /// Read the configuration file again and apply what changed.
    Reload,
    /// Hand over to a new process of the installed binary (`vipd upgrade`).
    Upgrade,
}

/// What the control socket understands, for error answers.
const USAGE: &str = "commands: vrrp step-down NAME | vrrp resume NAME | vrrp priority NAME 1..254|reset | \
     backend drain|disable|enable LISTENER ADDRESS | reload | upgrade";

/// Asks the daemon's main loop; the answer says what happened.
pub type DaemonAsks = tokio::sync::mpsc::Sender<(DaemonAsk, tokio::sync::oneshot::Sender<Result<String, String>>)>;

/// Reads one command line.
pub fn parse_command(line: &str) -> Result<ControlCommand, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let vrrp = |name: &str, ask| Ok(ControlCommand::Vrrp { name: name.to_string(), ask });
    match words.as_slice() {
        ["vrrp", "step-down", name] => vrrp(name, Ask::StepDown),
        ["vrrp", "resume", name] => vrrp(name, Ask::Resume),
        ["vrrp", "priority", name, "reset"] => vrrp(name, Ask::Priority(None)),
        ["vrrp", "priority", name, n] => match n.parse::<u8>() {
            Ok(p) if (1..=254).contains(&p) => vrrp(name, Ask::Priority(Some(p))),
            _ => Err(format!("priority {n:?}: must be 1..=254 (255 is the address owner's) or reset")),
        },
        ["backend", verb, listener, address] => {
            let admin = match *verb {
                "drain" => Admin::Draining,
                "disable" => Admin::Disabled,
                "enable" => Admin::Enabled,
                _ => return Err(format!("backend {verb:?}: {USAGE}")),
            };
            let address = address.parse().map_err(|_| format!("backend address {address:?}: expected IP:PORT"))?;
            Ok(ControlCommand::Backend { listener: listener.to_string(), address, admin })
        }
        ["reload"] => Ok(ControlCommand::Daemon(DaemonAsk::Reload)),
        ["upgrade"] => Ok(ControlCommand::Daemon(DaemonAsk::Upgrade)),
        _ => Err(USAGE.to_string()),
    }
}

/// Longest command line read.
const MAX_COMMAND: u64 = 1024;

/// Serves the operator's commands on `listener` until the task is dropped:
/// one line in, one line out (`ok: ...` or `error: ...`), each logged with
/// the peer's credentials.
pub async fn serve_commands(listener: UnixListener, operator: Operator, pools: Arc<HttpListeners>, daemon: DaemonAsks) {
    let targets = Arc::new(Targets { operator, pools, daemon });
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let targets = Arc::clone(&targets);
        tokio::spawn(async move { answer_command(stream, &targets).await });
    }
}

/// Who carries the commands out.
struct Targets {
    operator: Operator,
    pools: Arc<HttpListeners>,
    daemon: DaemonAsks,
}

async fn answer_command(stream: UnixStream, targets: &Targets) {
    let who = match stream.peer_cred() {
        Ok(c) => format!("uid {} pid {}", c.uid(), c.pid().map_or_else(|| "?".to_string(), |p| p.to_string())),
        Err(_) => "an unknown peer".to_string(),
    };
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_COMMAND));
    let answer = match tokio::time::timeout(std::time::Duration::from_secs(5), reader.read_line(&mut line)).await {
        Ok(Ok(_)) => match parse_command(line.trim()) {
            Ok(command) => run_command(command, targets).await,
            Err(e) => Err(e),
        },
        Ok(Err(e)) => Err(format!("reading the command: {e}")),
        Err(_) => Err("no command within 5 s".to_string()),
    };
    match &answer {
        Ok(what) => info!(peer = %who, command = line.trim(), "control command: {what}"),
        Err(why) => warn!(peer = %who, command = line.trim(), "control command refused: {why}"),
    }
    let text = match answer {
        Ok(s) => format!("ok: {s}\n"),
        Err(e) => format!("error: {e}\n"),
    };
    let _ = write.write_all(text.as_bytes()).await;
}

async fn run_command(command: ControlCommand, targets: &Targets) -> Result<String, String> {
    match command {
        ControlCommand::Vrrp { name, ask } => targets.operator.ask(&name, ask).await,
        ControlCommand::Backend { listener, address, admin } => {
            let pool = targets.pools.find(&listener).ok_or_else(|| format!("no listener {listener:?}"))?;
            pool.set_admin(address, admin)
        }
        ControlCommand::Daemon(ask) => {
            let (reply, answer) = tokio::sync::oneshot::channel();
            targets.daemon.send((ask, reply)).await.map_err(|_| "the daemon is stopping".to_string())?;
            answer.await.map_err(|_| "the daemon did not answer".to_string())?
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_in_the_page_cannot_end_its_script_block() {
        let v = serde_json::json!({"name": "</script><img src=x>", "n": 1});
        let out = script_json(&v);
        assert!(!out.contains('<') && !out.contains('>'), "{out}");
        let back: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
        assert_eq!(back, v);
        assert_eq!(STATUS_PAGE.matches("{{STATUS}}").count(), 1);
    }

    #[test]
    fn commands_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_command("vrrp step-down web"),
            Ok(ControlCommand::Vrrp { name: "web".into(), ask: Ask::StepDown })
        );
        assert_eq!(
            parse_command(" vrrp  resume web "),
            Ok(ControlCommand::Vrrp { name: "web".into(), ask: Ask::Resume })
        );
        assert_eq!(
            parse_command("vrrp priority web 90"),
            Ok(ControlCommand::Vrrp { name: "web".into(), ask: Ask::Priority(Some(90)) })
        );
        assert_eq!(
            parse_command("vrrp priority web reset"),
            Ok(ControlCommand::Vrrp { name: "web".into(), ask: Ask::Priority(None) })
        );
        assert!(parse_command("vrrp priority web 255").unwrap_err().contains("1..=254"));
        assert!(parse_command("vrrp priority web 0").is_err());
        assert_eq!(
            parse_command("backend drain web 192.0.2.21:8080"),
            Ok(ControlCommand::Backend {
                listener: "web".into(),
                address: "192.0.2.21:8080".parse().expect("addr"),
                admin: Admin::Draining
            })
        );
        assert!(parse_command("backend pause web 192.0.2.21:8080").unwrap_err().contains("commands:"));
        assert!(parse_command("backend drain web app1").unwrap_err().contains("IP:PORT"));
        assert_eq!(parse_command("reload"), Ok(ControlCommand::Daemon(DaemonAsk::Reload)));
        assert_eq!(parse_command("upgrade"), Ok(ControlCommand::Daemon(DaemonAsk::Upgrade)));
        assert!(parse_command("").unwrap_err().contains("commands:"));
    }
}
