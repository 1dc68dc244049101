//! Wires the parts together: the control server on the main runtime, VRRP
//! on a thread and runtime of its own (so nothing else the process does can
//! delay an advert), signals, and the order of shutdown.

use std::collections::HashMap;
use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::announce::driver::{self as announce, AnnounceShared, StopAnnounce};
use crate::config::{Config, Location, VrrpConfig};
use crate::control::{self, ConfigState, Sources};
use crate::net::addr::{watch_addresses, watch_links, Netlink, Vmac};
use crate::proxy::backends::{HttpListeners, ListenerPool};
use crate::proxy::server::{self, Listener, Proxy, HEARTBEAT_EVERY};
use crate::systemd;
use crate::upgrade::{Predecessor, Sockets, Successor, READY_TIMEOUT};
use crate::vrrp::driver::{DrainGate, Driver, HandedOver, InstanceSide, Stop};
use crate::vrrp::fsm::skew_and_master_down;
use crate::vrrp::notify::{HookQueue, HookRuns};
use crate::vrrp::operator::{Ask, DriverInbox, Operator, Reconfigured, ToDriver};
use crate::vrrp::packet::Family;
use crate::vrrp::probe::{self, TrackShared};
use crate::vrrp::stats::{Stats, StatsList};
use crate::vrrp::sync::GroupShared;
use crate::vrrp::track::{ScriptSpec, Trackers, Watched};

/// Longest a resigning master keeps its VIPs for requests in flight.
const VIP_HOLD_MAX: Duration = Duration::from_secs(1);

/// Beyond the release timeout, how long the VRRP thread gets to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// After a successor's listeners start, how long its trackers get to see
/// them before its VRRP instances go on.
const TRACKERS_SETTLE: Duration = Duration::from_millis(5);

/// How long the old process keeps its runtime after answering `vipd
/// upgrade`, so that the answer gets out before it stops serving commands.
const ANSWER_GRACE: Duration = Duration::from_millis(200);

/// Runs the daemon in the foreground until SIGTERM or SIGINT (or until a
/// successor took over, `vipd upgrade`).
pub fn run(config: Config, config_path: &Path) -> anyhow::Result<()> {
    // Before any thread: it edits the environment.
    let predecessor = Predecessor::from_env();
    if config.vrrp.is_empty() && config.http.is_empty() {
        warn!("{}: nothing configured yet: serving the control endpoint only (add a [[vrrp]] or [[http]] section and reload)", config_path.display());
    }
    // The installed binary and how it was started, for `vipd upgrade` (a
    // package upgrade replaces the file; the path stays).
    let exe = std::env::current_exe().ok();
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut passed = match &predecessor {
        Some(p) => {
            let sockets = p.receive_sockets().map_err(|e| anyhow!("vipd upgrade: {e}"))?;
            info!("started by vipd upgrade: serving the listening sockets of the process being replaced");
            sockets
        }
        None => Sockets::default(),
    };
    // Signal handlers go in before anything starts: a SIGTERM during
    // start-up is kept and answered with the ordered shutdown below, not
    // with the default action (which would leave a claimed VIP behind).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the main runtime")?;
    let signals = {
        let _entered = rt.enter();
        StopSignals::install()?
    };

    // Bind the control address first: failing here must not leave a VIP behind.
    let control = match passed.take_control(config.control.listen) {
        Some(s) => s,
        None => StdTcpListener::bind(config.control.listen)
            .with_context(|| format!("control.listen = {}: cannot listen", config.control.listen))?,
    };
    control.set_nonblocking(true).context("control socket")?;
    let command_socket = match passed.take_command(&config.control.socket) {
        Some(s) => s,
        None => bind_command_socket(&config.control.socket)?,
    };
    command_socket.set_nonblocking(true).context("control.socket")?;
    // Copies to pass on at an upgrade.
    let control_copy = control.try_clone().context("control socket")?;
    let command_copy = command_socket.try_clone().context("control.socket")?;

    // Bind every HTTP listener before anything else runs, so a port in use
    // fails the start; serving starts before VRRP can claim a VIP.
    let workers = server::worker_count();
    let mut listeners = Vec::new();
    for h in &config.http {
        let sockets = match passed.take_listener(&h.name, h.listen) {
            Some(s) => s,
            None => server::bind(h.listen, workers)
                .with_context(|| format!("http {:?}: listen = {}: cannot listen", h.name, h.listen))?,
        };
        for s in &sockets {
            s.set_nonblocking(true).with_context(|| format!("http {:?}: an inherited socket", h.name))?;
        }
        let pool = ListenerPool::new(h.clone());
        let prepared = crate::proxy::tls::prepare(h, std::time::SystemTime::now()).map_err(anyhow::Error::msg)?;
        pool.set_tls(prepared).map_err(anyhow::Error::msg)?;
        listeners.push(Listener { pool, sockets });
    }
    // Passed sockets of listeners this file no longer has: closed now, so
    // that connections to them are refused rather than queued for nobody.
    drop(passed);
    // The workers run even with no listener yet: a reload may add one. A
    // process started by `vipd upgrade` accepts only once it has taken over:
    // if it fails before, it must not have taken connections with it.
    info!(workers, "starting HTTP proxy");
    let held = if predecessor.is_some() { std::mem::take(&mut listeners) } else { Vec::new() };
    let proxy = Proxy::start(workers, listeners).context("starting the HTTP proxy")?;
    let pools = proxy.listeners();
    if !held.is_empty() {
        // Known (to /status and the trackers) before they are served.
        pools.set(held.iter().map(|l| Arc::clone(&l.pool)).collect());
    }
    // A resigning master keeps its VIPs until requests in flight are done,
    // but not long: once the new master has announced itself, clients'
    // packets go there anyway, and two holders of the VIP both answer ARP.
    // (Long requests and WebSockets still finish their drain afterwards.)
    let drain_max = config.http.iter().map(|h| h.drain_timeout).max().unwrap_or(VIP_HOLD_MAX);
    let drain = Some({
        let watched = Arc::clone(&pools);
        DrainGate { busy: Arc::new(move || watched.busy()), max_wait: drain_max.min(VIP_HOLD_MAX) }
    });

    let tracking: Vec<Option<Arc<TrackShared>>> = config
        .vrrp
        .iter()
        .map(|c| (!c.trackers.is_empty()).then(|| TrackShared::new(Trackers::new(c.spec.priority, c.trackers.clone()))))
        .collect();
    let stats: Vec<Arc<Stats>> =
        config.vrrp.iter().zip(&tracking).map(|(c, t)| Arc::new(stats_for(c, t.clone()))).collect();
    // Check scripts and notify hooks run here, never on the VRRP thread.
    let probe_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("probe")
        .enable_all()
        .build()
        .context("starting the probe runtime")?;
    let hooks: Vec<Option<HookQueue>> = config
        .vrrp
        .iter()
        .zip(&stats)
        .map(|(c, st)| {
            (!c.notify.is_empty()).then(|| {
                HookQueue::start(probe_rt.handle(), c.spec.name.clone(), c.notify.timeout, Arc::clone(&st.notify_runs))
            })
        })
        .collect();
    // At shutdown the STOP hooks run, each within its timeout.
    // Sync groups: each member learns its group and its place in it.
    let mut group_hooks = Vec::new();
    let mut group_list = Vec::new();
    let mut groups: Vec<Option<(Arc<GroupShared>, usize)>> = vec![None; config.vrrp.len()];
    for g in &config.sync_groups {
        let runs: Arc<HookRuns> = Arc::default();
        let queue = (!g.notify.is_empty())
            .then(|| HookQueue::start(probe_rt.handle(), g.name.clone(), g.notify.timeout, Arc::clone(&runs)));
        group_hooks.extend(queue.clone());
        let hooks = queue.map(|q| (q, g.notify.clone()));
        let shared = GroupShared::new(g.name.clone(), g.instances.len(), hooks, runs);
        group_list.push(Arc::clone(&shared));
        for (index, member) in g.instances.iter().enumerate() {
            if let Some(slot) = config.vrrp.iter().position(|v| v.spec.name == *member) {
                groups[slot] = Some((Arc::clone(&shared), index));
            }
        }
    }
    let hooks_max = config
        .vrrp
        .iter()
        .map(|c| c.notify.timeout)
        .chain(config.sync_groups.iter().map(|g| g.notify.timeout))
        .max()
        .unwrap_or_default()
        * 2;
    // Announcements: their trackers are fed by the same probes; a failing
    // one withdraws (weight 0, so Trackers' base priority plays no part).
    let announcements: Vec<Arc<AnnounceShared>> = config
        .announce
        .iter()
        .map(|a| {
            let tracking = (!a.trackers.is_empty()).then(|| TrackShared::new(Trackers::new(1, a.trackers.clone())));
            AnnounceShared::new(a.clone(), tracking)
        })
        .collect();
    let announce_tracking = announcements.iter().filter_map(|a| Some((a.name().to_string(), a.tracking()?))).collect();
    let probes = Probes {
        runtime: probe_rt.handle().clone(),
        tracking,
        announce_tracking,
        groups,
        hooks: hooks.clone(),
        pools: Arc::clone(&pools),
        scripts: config.scripts.clone(),
    };
    // A resigning master may wait for its successor up to its release timeout.
    let (shutdown_tx, shutdown_rx) = watch::channel(Stop::Run);
    // The upgrade: where the old process's instances stood (to the VRRP
    // thread of this one), and where this one's stand (from its VRRP thread).
    let (gate_tx, gate_rx) = tokio::sync::oneshot::channel();
    let (handed_tx, mut handed_rx) = tokio::sync::mpsc::unbounded_channel();
    let succession = Succession {
        inheriting: predecessor.is_some(),
        gate: predecessor.is_some().then_some(gate_rx),
        handed: handed_tx,
    };
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<Operator>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let vrrp_config = config.vrrp.clone();
    let vrrp_stats = stats.clone();
    let (changes_tx, changes_rx) = tokio::sync::mpsc::unbounded_channel();
    let path = config_path.to_path_buf();
    // systemd's watchdog is pinged from the VRRP thread, while every proxy
    // worker answers too.
    let watchdog = systemd::watchdog_interval().map(|every| {
        let beats = proxy.heartbeats();
        let within = every + HEARTBEAT_EVERY;
        let alive: Arc<dyn Fn() -> bool + Send + Sync> = Arc::new(move || beats.iter().all(|b| b.fresh(within)));
        (every, alive)
    });
    let vrrp_thread = std::thread::Builder::new()
        .name("vrrp".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the VRRP runtime")
                .map(|rt| {
                    let ready = ready_tx.clone();
                    let ties = ProxyTies { drain, watchdog };
                    rt.block_on(run_vrrp(
                        vrrp_config,
                        vrrp_stats,
                        probes,
                        path,
                        shutdown_rx,
                        ready,
                        ties,
                        succession,
                        changes_rx,
                    ))
                });
            if let Err(e) = result {
                let _ = ready_tx.send(Err(e));
            }
            let _ = done_tx.send(());
        })
        .context("spawning the VRRP thread")?;
    let operator = match ready_rx.recv() {
        Ok(Ok(operator)) => operator,
        Ok(Err(e)) => {
            let _ = vrrp_thread.join();
            return Err(e);
        }
        Err(_) => return Err(anyhow!("the VRRP thread ended before it was ready")),
    };
    // Started by `vipd upgrade`: everything is ready; the old process now
    // stops its VRRP and says where each instance stood, and ours go on
    // from there.
    if let Some(p) = &predecessor {
        let handed = p.ready_and_wait().unwrap_or_else(|e| {
            warn!("vipd upgrade: {e}; the VRRP instances start afresh");
            Vec::new()
        });
        info!(instances = handed.len(), "vipd upgrade: taking over from the old process");
        // Listeners first: track_http must see them served when the
        // instances go on (a listener not served counts 0 healthy).
        proxy.serve(held);
        std::thread::sleep(TRACKERS_SETTLE);
        let _ = gate_tx.send(handed);
    }
    let upgrade_from = Upgrader {
        exe,
        args,
        control: (config.control.listen, control_copy),
        command: (config.control.socket.clone(), command_copy),
    };

    // Announcements start once the listeners are served and VRRP is up: a
    // route must never lead to a node that does not accept yet.
    let (announce_stop, announce_rx) = watch::channel(StopAnnounce::Run);
    let announce_tasks: Vec<_> = announcements
        .iter()
        .map(|a| {
            let (a, rx) = (Arc::clone(a), announce_rx.clone());
            probe_rt.spawn(async move {
                let result = match Netlink::connect() {
                    Ok(netlink) => announce::run(Arc::clone(&a), netlink, rx).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    a.failed(&e.to_string());
                    error!(announce = %a.name(), error = %e, "the announcement could not start: its addresses are not announced");
                }
            })
        })
        .collect();
    let config_state = ConfigState::new(config_path);
    let probe_handle = probe_rt.handle().clone();
    let signal_result = rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(control).context("control socket")?;
        info!(listen = %config.control.listen, "control endpoint up");
        let commands = tokio::net::UnixListener::from_std(command_socket).context("control.socket")?;
        info!(socket = %config.control.socket.display(), "control socket up");
        let (asks_tx, mut asks_rx) = tokio::sync::mpsc::channel(4);
        let commander = tokio::spawn(control::serve_commands(commands, operator.clone(), Arc::clone(&pools), asks_tx));
        let stats = Arc::new(StatsList::new(stats));
        let sources = Sources {
            vrrp: Arc::clone(&stats),
            http: pools,
            groups: group_list,
            announce: announcements.clone(),
            config: Arc::clone(&config_state),
        };
        let targets = ReloadTargets {
            operator: operator.clone(),
            proxy: &proxy,
            state: &config_state,
            instances: changes_tx,
            stats,
            hooks: probe_handle.clone(),
        };
        let sources_for_summary = Arc::new(sources.clone());
        let server = tokio::spawn(control::serve(listener, sources));
        let mut running = config.clone();
        let mut signals = signals;
        // systemd: ready now, and a one-line summary whenever it changes.
        let summary_of = {
            let sources = sources_for_summary.clone();
            move || summary(&sources.status())
        };
        systemd::ready(&summary_of());
        let summarizer = tokio::spawn({
            let summary_of = summary_of.clone();
            async move {
                let mut last = String::new();
                let mut every = tokio::time::interval(Duration::from_secs(2));
                loop {
                    every.tick().await;
                    let now = summary_of();
                    if now != last {
                        systemd::status(&now);
                        last = now;
                    }
                }
            }
        });
        let mut upgraded = false;
        let outcome = loop {
            tokio::select! {
                _ = signals.term.recv() => { info!("SIGTERM received"); break Ok(()); }
                _ = signals.int.recv() => { info!("SIGINT received"); break Ok(()); }
                _ = signals.hup.recv() => {
                    info!("SIGHUP: reloading {}", config_path.display());
                    systemd::reloading();
                    let _ = reload(config_path, &mut running, &targets).await;
                    systemd::ready(&summary_of());
                }
                _ = signals.usr2.recv() => {
                    info!("SIGUSR2: upgrading");
                    if upgrade_from.hand_over(&proxy, &shutdown_tx, &mut handed_rx, &running).await.is_ok() {
                        upgraded = true;
                        break Ok(());
                    }
                }
                Some((ask, reply)) = asks_rx.recv() => match ask {
                    control::DaemonAsk::Reload => {
                        info!("reload asked on the control socket");
                        systemd::reloading();
                        let _ = reply.send(reload(config_path, &mut running, &targets).await);
                        systemd::ready(&summary_of());
                    }
                    control::DaemonAsk::Upgrade => {
                        info!("upgrade asked on the control socket");
                        let result = upgrade_from.hand_over(&proxy, &shutdown_tx, &mut handed_rx, &running).await;
                        let done = result.is_ok();
                        let _ = reply.send(result);
                        if done {
                            tokio::time::sleep(ANSWER_GRACE).await;
                            upgraded = true;
                            break Ok(());
                        }
                    }
                },
            }
        };
        summarizer.abort();
        server.abort();
        commander.abort();
        // A reload may have changed what the stop waits for.
        Ok::<_, anyhow::Error>((outcome, vrrp_grace(&running), upgraded))
    });
    let (signal_result, vrrp_grace, upgraded) = match signal_result {
        Ok((outcome, grace, upgraded)) => (outcome, grace, upgraded),
        Err(e) => (Err(e), vrrp_grace(&config), false),
    };
    // Make before break: VRRP hands the VIP over first (a master keeps it
    // until its successor advertises), the proxy serves meanwhile, then
    // drains what is in flight. After an upgrade the VRRP drivers have
    // already stopped and the successor is systemd's main process.
    if upgraded {
        info!("the new process took over; draining HTTP connections and exiting");
    } else {
        info!("shutting down");
        systemd::stopping();
    }
    // Announcements withdraw their routes and keep serving for their
    // withdraw_delay, beside the VRRP hand-over; after an upgrade they stay
    // announced for the successor.
    let _ = announce_stop.send(if upgraded { StopAnnounce::Leave } else { StopAnnounce::Withdraw });
    let _ = shutdown_tx.send(Stop::Resign);
    match done_rx.recv_timeout(vrrp_grace) {
        Ok(()) => {
            let _ = vrrp_thread.join();
        }
        Err(_) => warn!("VRRP thread did not finish within {vrrp_grace:?}; exiting anyway"),
    }
    let withdraw_max = config.announce.iter().map(|a| a.withdraw_delay).max().unwrap_or_default() + SHUTDOWN_GRACE;
    let finished = rt.block_on(async {
        let all = async {
            for task in announce_tasks {
                let _ = task.await;
            }
        };
        tokio::time::timeout(withdraw_max, all).await
    });
    if finished.is_err() {
        warn!("announcements did not finish within {withdraw_max:?}; exiting anyway");
    }
    info!("draining HTTP connections");
    proxy.shutdown();
    for h in hooks.iter().flatten().chain(&group_hooks) {
        h.wait_idle(hooks_max);
    }
    probe_rt.shutdown_background();
    // After an upgrade the successor listens on that file.
    if !upgraded {
        let _ = std::fs::remove_file(&config.control.socket);
    }
    info!("stopped");
    signal_result
}

/// Empty counters for an instance.
fn stats_for(c: &VrrpConfig, tracking: Option<Arc<TrackShared>>) -> Stats {
    let vips = c.virtual_ips.iter().map(|v| v.to_string()).collect();
    Stats::new(&c.spec, &c.interface, vips, tracking)
}

/// How long the VRRP thread gets to finish its planned stop: a resigning
/// master may wait for its successor up to its release timeout.
fn vrrp_grace(config: &Config) -> Duration {
    config
        .vrrp
        .iter()
        .map(|c| {
            c.spec.release_timeout.unwrap_or_else(|| {
                skew_and_master_down(c.spec.version, c.spec.priority, c.spec.advert_interval.as_duration()).1
            })
        })
        .max()
        .unwrap_or_default()
        + SHUTDOWN_GRACE
        + VIP_HOLD_MAX
}

/// What the VRRP thread takes from the proxy: the gate a hand-over waits
/// on, and (under a systemd watchdog) how often to ping and whether every
/// proxy worker answers.
struct ProxyTies {
    drain: Option<DrainGate>,
    watchdog: Option<(Duration, Arc<dyn Fn() -> bool + Send + Sync>)>,
}

/// The one line `systemctl status` shows: each instance's state and
/// priority, each listener's healthy backends.
fn summary(status: &control::Status) -> String {
    let vrrp = status.vrrp.iter().map(|s| format!("{} {} {}", s.name, s.state, s.effective_priority));
    let announce = status.announce.iter().map(|a| format!("announce {} {}", a.name, a.state));
    let http = status.http.iter().map(|p| {
        let healthy = p.backends.iter().filter(|b| b.healthy).count();
        format!("http {} {healthy}/{} healthy", p.name, p.backends.len())
    });
    vrrp.chain(announce).chain(http).collect::<Vec<_>>().join("; ")
}

/// Binds the operator's command socket, mode 0600, creating its directory
/// if need be. A socket file nobody answers on is left from an earlier run
/// and replaced; one that answers belongs to a running vipd.
fn bind_command_socket(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let what = || format!("control.socket = {}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o750).create(dir).with_context(what)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{}: another vipd is listening there", what());
        }
        std::fs::remove_file(path).with_context(what)?;
    }
    // Created as 0600: no moment at the process umask's mode.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.with_context(what)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).with_context(what)?;
    listener.set_nonblocking(true).with_context(what)?;
    Ok(listener)
}

/// What the VRRP thread needs for `vipd upgrade`: whether this process
/// takes over from another (so VIPs found stay), where that one's
/// instances stood (once it stopped them), and where to say where this
/// one's stand when it hands over in turn.
struct Succession {
    inheriting: bool,
    gate: Option<tokio::sync::oneshot::Receiver<Vec<HandedOver>>>,
    handed: tokio::sync::mpsc::UnboundedSender<Vec<HandedOver>>,
}

/// What this process needs to start its successor (`vipd upgrade`).
struct Upgrader {
    exe: Option<PathBuf>,
    args: Vec<std::ffi::OsString>,
    control: (std::net::SocketAddr, StdTcpListener),
    command: (PathBuf, std::os::unix::net::UnixListener),
}

impl Upgrader {
    /// Starts the installed binary with the listening sockets; once it is
    /// ready, stops this process's VRRP drivers silently and hands it where
    /// each instance stood. `Ok`: the successor has taken over, this
    /// process is to drain and exit. `Err`: nothing changed here (the new
    /// process, if it started, was stopped).
    async fn hand_over(
        &self,
        proxy: &Proxy,
        stop: &watch::Sender<Stop>,
        handed: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<HandedOver>>,
        config: &Config,
    ) -> Result<String, String> {
        let result = async {
            let exe = self.exe.clone().ok_or("the path of this binary is unknown")?;
            let dup = |fd: std::io::Result<std::os::fd::OwnedFd>| fd.map_err(|e| format!("passing a socket: {e}"));
            let sockets = Sockets {
                listeners: proxy.sockets_to_pass().map_err(|e| format!("passing a socket: {e}"))?,
                control: Some((self.control.0, dup(self.control.1.try_clone().map(Into::into))?)),
                command: Some((self.command.0.clone(), dup(self.command.1.try_clone().map(Into::into))?)),
            };
            let args = self.args.clone();
            info!(exe = %exe.display(), "vipd upgrade: starting the new process");
            let successor = tokio::task::spawn_blocking(move || {
                let mut s = Successor::spawn(&exe, &args, &sockets)?;
                match s.wait_ready(READY_TIMEOUT) {
                    Ok(()) => Ok(s),
                    Err(e) => {
                        s.abandon();
                        Err(e)
                    }
                }
            })
            .await
            .map_err(|e| format!("the upgrade task failed: {e}"))??;
            let pid = successor.pid();
            systemd::main_pid(pid);
            // From here on there is no way back: this process's VRRP stops.
            let _ = stop.send(Stop::HandOver);
            let instances = match tokio::time::timeout(Duration::from_secs(3), handed.recv()).await {
                Ok(Some(h)) => h,
                _ => {
                    warn!("vipd upgrade: the VRRP thread did not say where its instances stood; the new process starts them afresh");
                    Vec::new()
                }
            };
            if let Err(e) = successor.go(&instances) {
                // It died between ready and now: nothing runs VRRP here
                // any more, so the VIPs go too and the peer takes over (a
                // failover rather than a VIP on two hosts).
                error!("vipd upgrade: the new process (pid {pid}) did not take the VRRP state: {e}; releasing the VIPs");
                release_vips(config).await;
                return Ok(format!("upgrade failed after the hand-over began ({e}): the VIPs were released and the peer takes over; pid {} exits", std::process::id()));
            }
            Ok(format!(
                "upgraded: pid {pid} took over the listeners and {} VRRP instance(s); pid {} drains and exits",
                instances.len(),
                std::process::id()
            ))
        }
        .await;
        match &result {
            Ok(what) => info!("{what}"),
            Err(why) => error!("vipd upgrade failed, carrying on as before: {why}"),
        }
        result
    }
}

/// Removes every instance's VIPs from its interface (or virtual MAC
/// interface), for when nothing runs VRRP here any more.
async fn release_vips(config: &Config) {
    let Ok(netlink) = Netlink::connect() else {
        error!("cannot reach netlink to release the VIPs");
        return;
    };
    for c in &config.vrrp {
        let iface = c.vmac.as_ref().map_or(c.interface.as_str(), |v| v.name.as_str());
        let Ok(link) = netlink.link(iface).await else { continue };
        for vip in &c.virtual_ips {
            if let Err(e) = netlink.del(link.index, vip).await {
                warn!(error = %e, %vip, iface, "could not release a virtual IP");
            }
        }
    }
}

/// What the VRRP side hands to the probe runtime: trackers to feed, where
/// they look, and the runtime that runs scripts and hooks.
struct Probes {
    runtime: tokio::runtime::Handle,
    /// Per instance, in config order.
    tracking: Vec<Option<Arc<TrackShared>>>,
    /// The announcements' trackers, by announcement name.
    announce_tracking: Vec<(String, Arc<TrackShared>)>,
    hooks: Vec<Option<HookQueue>>,
    /// Per instance: its sync group and its index there.
    groups: Vec<Option<(Arc<GroupShared>, usize)>>,
    pools: Arc<HttpListeners>,
    scripts: Vec<ScriptSpec>,
}

/// The signals that stop (or would reload) the daemon.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Needs a runtime context.
    fn install() -> anyhow::Result<Self> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
            usr2: signal(SignalKind::user_defined2()).context("installing SIGUSR2 handler")?,
        })
    }
}

/// Reads the file again and applies it in place where a reload can (see
/// [`crate::config::reload_refusal`]); otherwise, or when the file is bad,
/// the running configuration stays and the answer says why. Either way
/// `/status` and `/metrics` show the outcome.
/// Starts the probes of `instance`, added by a reload, on the probe runtime:
/// its tracked interfaces get link watches of their own.
fn start_probes(
    targets: &ReloadTargets<'_>,
    config: &Config,
    instance: &str,
    tracking: &Arc<TrackShared>,
) -> Result<(), String> {
    let mut senders = HashMap::new();
    let mut links = HashMap::new();
    for t in tracking.watched() {
        if let Watched::Interface { name } = t {
            let (tx, rx) = watch::channel(false);
            senders.insert(name.clone(), tx);
            links.insert(name, rx);
        }
    }
    if !senders.is_empty() {
        let _entered = targets.hooks.enter();
        watch_links(senders)
            .map_err(|e| format!("vrrp instance {instance:?}: following its tracked interfaces: {e}"))?;
    }
    let pools = targets.proxy.listeners();
    let sources = probe::Sources { pools: pools.as_ref(), links: &links, scripts: &config.scripts };
    probe::start(&targets.hooks, &[(instance.to_string(), Arc::clone(tracking))], &sources);
    Ok(())
}

/// What a reload changes.
struct ReloadTargets<'a> {
    operator: Operator,
    proxy: &'a Proxy,
    state: &'a ConfigState,
    /// Where new VRRP instances go (the VRRP thread places them).
    instances: tokio::sync::mpsc::UnboundedSender<NewInstance>,
    /// What `/status` lists.
    stats: Arc<StatsList>,
    /// Where new instances' notify hooks run.
    hooks: tokio::runtime::Handle,
}

async fn reload(path: &Path, running: &mut Config, targets: &ReloadTargets<'_>) -> Result<String, String> {
    let ReloadTargets { operator, proxy, state, .. } = targets;
    let result = async {
        let new = crate::config::load(path).map_err(|e| e.to_string())?;
        if let Some(why) = crate::config::reload_refusal(running, &new) {
            return Err(format!("{why}; the running configuration stays (restart vipd to apply it)"));
        }
        // HTTP first: binding a new listener is what most likely fails, and
        // it refuses the reload before anything changed.
        let mut changed = proxy.apply(&new.http)?;
        running.http = new.http.clone();
        // Removed instances resign first: a VIP moving from a removed
        // instance to an added one is let go before it is claimed again.
        let removed: Vec<String> = running
            .vrrp
            .iter()
            .filter(|o| !new.vrrp.iter().any(|n| n.spec.name == o.spec.name))
            .map(|o| o.spec.name.clone())
            .collect();
        for name in removed {
            changed.push(operator.ask(&name, Ask::Remove).await?);
            // Gone from the running configuration at once: a later failure
            // of this reload leaves it consistent with what was applied.
            operator.forget(&name);
            running.vrrp.retain(|o| o.spec.name != name);
            // Its probes stop (a script shared with others goes on for them).
            for st in targets.stats.list().iter().filter(|s| s.name() == name) {
                if let Some(t) = st.tracking() {
                    t.retire();
                }
            }
        }
        for n in &new.vrrp {
            let Some(old) = running.vrrp.iter_mut().find(|o| o.spec.name == n.spec.name) else { continue };
            if old.spec == n.spec && old.virtual_ips == n.virtual_ips && old.notify == n.notify {
                continue;
            }
            let settings = Reconfigured { spec: n.spec.clone(), vips: n.virtual_ips.clone(), notify: n.notify.clone() };
            changed.push(operator.ask(&n.spec.name, Ask::Reconfigure(Box::new(settings))).await?);
            *old = n.clone();
        }
        let mut stats = targets.stats.list();
        stats.retain(|s| new.vrrp.iter().any(|n| n.spec.name == s.name()));
        // `/status` in the file's order, also when an addition fails.
        let publish = |stats: &mut Vec<Arc<Stats>>| {
            stats.sort_by_key(|s| new.vrrp.iter().position(|n| n.spec.name == s.name()));
            targets.stats.set(stats.clone());
        };
        publish(&mut stats);
        let added: Vec<VrrpConfig> =
            new.vrrp.iter().filter(|n| !running.vrrp.iter().any(|o| o.spec.name == n.spec.name)).cloned().collect();
        for n in &added {
            let tracking =
                (!n.trackers.is_empty()).then(|| TrackShared::new(Trackers::new(n.spec.priority, n.trackers.clone())));
            if let Some(t) = &tracking {
                start_probes(targets, &new, &n.spec.name, t)?;
            }
            let st = Arc::new(stats_for(n, tracking.clone()));
            let hooks = (!n.notify.is_empty()).then(|| {
                let queue = HookQueue::start(
                    &targets.hooks,
                    n.spec.name.clone(),
                    n.notify.timeout,
                    Arc::clone(&st.notify_runs),
                );
                (queue, n.notify.clone())
            });
            let side = InstanceSide {
                spec: n.spec.clone(),
                vips: n.virtual_ips.clone(),
                stats: Arc::clone(&st),
                tracking,
                hooks,
                group: None,
            };
            let (reply, answer) = tokio::sync::oneshot::channel();
            let ask =
                NewInstance { side, interface: n.interface.clone(), at: n.interface_at, vmac: n.vmac.clone(), reply };
            targets.instances.send(ask).map_err(|_| "the VRRP thread is gone".to_string())?;
            let (what, inbox) = answer.await.map_err(|_| "the VRRP thread did not answer".to_string())??;
            operator.add(n.spec.name.clone(), n.spec.vrid, inbox);
            changed.push(what);
            stats.push(st);
            publish(&mut stats);
            running.vrrp.push(n.clone());
        }
        *running = new;
        Ok(if changed.is_empty() {
            "reloaded: nothing changed".to_string()
        } else {
            format!("reloaded: {}", changed.join("; "))
        })
    }
    .await;
    match &result {
        Ok(what) => {
            state.reloaded();
            info!("{what}");
        }
        Err(why) => {
            state.refused(why);
            error!(error = %why, "reload refused");
        }
    }
    result
}

/// Which driver an instance belongs to: interface, family, virtual MAC
/// (an instance with one has a driver of its own).
type DriverKey = (String, Family, Option<Vmac>);

/// A reload's new instance, for the VRRP thread to place: in the running
/// driver of its interface and family, or in a new one. The answer says
/// what happened, with the inbox its commands go to.
struct NewInstance {
    side: InstanceSide,
    interface: String,
    at: Location,
    vmac: Option<Vmac>,
    reply: tokio::sync::oneshot::Sender<Result<(String, DriverInbox), String>>,
}

async fn next_change(changes: &mut Option<tokio::sync::mpsc::UnboundedReceiver<NewInstance>>) -> Option<NewInstance> {
    match changes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What the VRRP thread needs to start a driver after the start.
struct Placing {
    netlink: Netlink,
    addr_events: tokio::sync::broadcast::Sender<crate::net::addr::AddrEvent>,
    drain: Option<DrainGate>,
    path: PathBuf,
    shutdown: watch::Receiver<Stop>,
}

impl Placing {
    async fn place(
        &self,
        n: NewInstance,
        inboxes: &mut Vec<(DriverKey, DriverInbox)>,
        tasks: &mut tokio::task::JoinSet<Vec<HandedOver>>,
    ) {
        let key: DriverKey = (n.interface.clone(), n.side.spec.family(), n.vmac.clone());
        let name = n.side.spec.name.clone();
        // A driver that stopped (a reload removed its last instance) is
        // replaced by a new one.
        inboxes.retain(|(_, inbox)| !inbox.is_closed());
        let mut n = n;
        if let Some((_, inbox)) = inboxes.iter().find(|(k, _)| *k == key && k.2.is_none()) {
            let (tx, rx) = tokio::sync::oneshot::channel();
            match inbox.send(ToDriver::Add(Box::new(n.side), tx)) {
                Ok(()) => {
                    let answer = rx.await.unwrap_or_else(|_| Err("the driver did not answer".into()));
                    let _ = n.reply.send(answer.map(|what| (what, inbox.clone())));
                    return;
                }
                // It stopped just now: the instance comes back and goes to a new one.
                Err(tokio::sync::mpsc::error::SendError(ToDriver::Add(side, _))) => n.side = *side,
                Err(_) => return,
            }
        }
        // A driver of its own: its link followed from now on.
        let (link_tx, link_rx) = watch::channel(true);
        if let Err(e) = watch_links(HashMap::from([(n.interface.clone(), link_tx)])) {
            let _ = n.reply.send(Err(format!("vrrp instance {name:?}: following {:?}: {e}", n.interface)));
            return;
        }
        let addrs = self.addr_events.subscribe();
        let prepared = Driver::prepare(
            &n.interface,
            n.vmac.clone(),
            vec![n.side],
            self.netlink.clone(),
            link_rx,
            addrs,
            self.drain.clone(),
            false,
        )
        .await;
        match prepared {
            Ok(mut d) => {
                let (commands, inbox) = tokio::sync::mpsc::unbounded_channel();
                d.take_commands(inbox);
                tasks.spawn(d.run(self.shutdown.clone(), Vec::new()));
                if key.2.is_none() {
                    inboxes.push((key, commands.clone()));
                }
                let _ = n.reply.send(Ok((format!("{name}: added on {:?} (backup)", n.interface), commands)));
            }
            Err(e) => {
                let (at, iface) = (n.at, &n.interface);
                let where_ = format!("{}:{}:{}", self.path.display(), at.line, at.col);
                let _ = n.reply.send(Err(format!("{where_}: vrrp instance {name:?}, interface = {iface:?}: {e}")));
            }
        }
    }
}

/// The VRRP thread: prepares every instance (reporting the first failure
/// through `ready`), then runs them until shutdown, placing the instances
/// a reload adds.
#[allow(clippy::too_many_arguments)]
async fn run_vrrp(
    configs: Vec<VrrpConfig>,
    stats: Vec<Arc<Stats>>,
    probes: Probes,
    path: PathBuf,
    shutdown: watch::Receiver<Stop>,
    ready: mpsc::Sender<anyhow::Result<Operator>>,
    ties: ProxyTies,
    succession: Succession,
    changes: tokio::sync::mpsc::UnboundedReceiver<NewInstance>,
) {
    let ProxyTies { drain, watchdog } = ties;
    let netlink = match Netlink::connect() {
        Ok(n) => n,
        Err(e) => {
            let _ = ready.send(Err(anyhow!(e)));
            return;
        }
    };
    // One watch channel per interface, subscribed before the instances read
    // the initial link state so no change can fall in between.
    let mut link_senders: HashMap<String, watch::Sender<bool>> = HashMap::new();
    // One driver per interface and address family, and one per instance
    // with a virtual MAC (as grouped below).
    let mut drivers_of: Vec<(String, Family, Option<Vmac>)> = Vec::new();
    for c in &configs {
        let key = (c.interface.clone(), c.spec.family(), c.vmac.clone());
        if c.vmac.is_some() || !drivers_of.contains(&key) {
            drivers_of.push(key);
        }
    }
    let link_receivers: Vec<_> = drivers_of
        .iter()
        .map(|(name, _, _)| link_senders.entry(name.clone()).or_insert_with(|| watch::channel(true).0).subscribe())
        .collect();
    // Tracked interfaces too; the probe reads each one's state itself.
    let announce_watched: Vec<Watched> = probes.announce_tracking.iter().flat_map(|(_, t)| t.watched()).collect();
    let tracked_links: HashMap<String, watch::Receiver<bool>> = configs
        .iter()
        .flat_map(|c| c.trackers.iter().map(|t| &t.watched))
        .chain(&announce_watched)
        .filter_map(|w| match w {
            Watched::Interface { name } => Some(name.clone()),
            _ => None,
        })
        .map(|name| {
            let rx = link_senders.entry(name.clone()).or_insert_with(|| watch::channel(false).0).subscribe();
            (name, rx)
        })
        .collect();
    if let Err(e) = watch_links(link_senders) {
        let _ = ready.send(Err(anyhow!(e).context("subscribing to link changes")));
        return;
    }
    // Address changes likewise: subscribed to before anything is read.
    let (addr_events, _) = tokio::sync::broadcast::channel(256);
    if let Err(e) = watch_addresses(addr_events.clone()) {
        let _ = ready.send(Err(anyhow!(e).context("subscribing to address changes")));
        return;
    }
    let tracked: Vec<(String, Arc<TrackShared>)> = configs
        .iter()
        .zip(&probes.tracking)
        .filter_map(|(c, t)| t.as_ref().map(|t| (c.spec.name.clone(), Arc::clone(t))))
        .chain(probes.announce_tracking.iter().cloned())
        .collect();
    probe::start(
        &probes.runtime,
        &tracked,
        &probe::Sources { pools: probes.pools.as_ref(), links: &tracked_links, scripts: &probes.scripts },
    );
    // One driver per interface, its instances in config order.
    let mut by_interface: Vec<(String, Location, Option<Vmac>, Vec<InstanceSide>)> = Vec::new();
    let mut keys: Vec<(String, Family, Option<Vmac>)> = Vec::new();
    let each = configs.into_iter().zip(stats).zip(probes.tracking).zip(probes.hooks).zip(probes.groups);
    for ((((cfg, stats), tracking), hooks), group) in each {
        let side = InstanceSide {
            spec: cfg.spec.clone(),
            vips: cfg.virtual_ips.clone(),
            stats,
            tracking,
            hooks: hooks.map(|q| (q, cfg.notify.clone())),
            group,
        };
        // An instance with a virtual MAC has a driver of its own.
        let key = (cfg.interface.clone(), cfg.spec.family(), cfg.vmac.clone());
        match keys.iter().position(|k| *k == key && k.2.is_none()) {
            Some(i) => by_interface[i].3.push(side),
            None => {
                keys.push(key);
                by_interface.push((cfg.interface.clone(), cfg.interface_at, cfg.vmac.clone(), vec![side]));
            }
        }
    }
    let mut drivers = Vec::new();
    let operator = Operator::default();
    // Where a reload's new instance joins a running driver.
    let mut inboxes: Vec<(DriverKey, DriverInbox)> = Vec::new();
    for (((iface, at, vmac, sides), link), key) in by_interface.into_iter().zip(link_receivers).zip(keys) {
        let names: Vec<String> = sides.iter().map(|s| s.spec.name.clone()).collect();
        let (commands, inbox) = tokio::sync::mpsc::unbounded_channel();
        for s in &sides {
            operator.add(s.spec.name.clone(), s.spec.vrid, commands.clone());
        }
        if key.2.is_none() {
            inboxes.push((key, commands.clone()));
        }
        let (addrs, drain) = (addr_events.subscribe(), drain.clone());
        let inheriting = succession.inheriting;
        match Driver::prepare(&iface, vmac, sides, netlink.clone(), link, addrs, drain, inheriting).await {
            Ok(mut d) => {
                d.take_commands(inbox);
                drivers.push(d);
            }
            Err(e) => {
                let _ = ready.send(Err(anyhow!(
                    "{}:{}:{}: vrrp instance {:?}, interface = {iface:?}: {e}",
                    path.display(),
                    at.line,
                    at.col,
                    names.join(", ")
                )));
                return;
            }
        }
    }
    let _ = ready.send(Ok(operator));
    // Taking over from an old process: its instances have stopped once it
    // answers; ours go on from where they stood.
    let inherited = match succession.gate {
        Some(gate) => gate.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for d in drivers {
        tasks.spawn(d.run(shutdown.clone(), inherited.clone()));
    }
    let pinger = watchdog.map(|(every, alive)| tokio::spawn(systemd::watchdog(every, alive)));
    let mut handed = Vec::new();
    let place = Placing { netlink, addr_events, drain, path, shutdown: shutdown.clone() };
    let mut changes = Some(changes);
    let mut watching = shutdown;
    let mut sender_gone = false;
    // Until every driver has stopped after the shutdown (with a watchdog,
    // or no instance at all, this thread lives until then too).
    let stop = loop {
        let stop = if sender_gone { Stop::Resign } else { *watching.borrow_and_update() };
        if stop != Stop::Run && tasks.is_empty() {
            break stop;
        }
        tokio::select! {
            joined = tasks.join_next(), if !tasks.is_empty() => match joined {
                Some(Ok(h)) => handed.extend(h),
                Some(Err(e)) => {
                    // Its instances are dead: no more watchdog pings, so that
                    // systemd restarts vipd rather than leave them so.
                    error!(error = %e, "VRRP driver task failed");
                    if let Some(p) = &pinger {
                        p.abort();
                    }
                }
                None => {}
            },
            new = next_change(&mut changes), if stop == Stop::Run => match new {
                Some(n) => place.place(n, &mut inboxes, &mut tasks).await,
                None => changes = None,
            },
            r = watching.changed(), if !sender_gone => sender_gone = r.is_err(),
        }
    };
    if stop == Stop::HandOver {
        let _ = succession.handed.send(handed);
    }
    if let Some(p) = pinger {
        p.abort();
    }
}
