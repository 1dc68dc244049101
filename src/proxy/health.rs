//! Active health checks: one task per backend sends `GET path` every
//! interval on a fresh connection (the request path's connector and codec); a 2xx or 3xx answer within the timeout
//! passes. The pure [`Hysteresis`] turns passes and failures into flips.
//! Checks run beside the traffic and never block a request. A reload keeps
//! the task of a backend that stays with the same check settings; others
//! start from the backend's current verdict (no fresh `rise` period).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use super::backends::{Backend, ListenerPool};
use super::balance::Hysteresis;
use super::codec::head::{self as wire, ResponseContext};
use super::tls::BackendTls;
use super::upstream::Upstream;
use crate::proxy::params::HealthConfig;

/// Runs the checks of `listener`'s backends on the current runtime, and
/// after each reload those of its new generation, until `stop`.
pub async fn supervise(listener: Arc<ListenerPool>, mut stop: watch::Receiver<bool>) {
    let mut generations = listener.watch_generation();
    let mut running: HashMap<SocketAddr, (Arc<Backend>, HealthConfig, AbortHandle)> = HashMap::new();
    loop {
        generations.borrow_and_update();
        let pool = listener.current();
        let wanted: Vec<(Arc<Backend>, HealthConfig)> = match &pool.config.health {
            Some(cfg) => pool.backends().iter().map(|b| (Arc::clone(b), cfg.clone())).collect(),
            None => Vec::new(),
        };
        running.retain(|addr, (b, cfg, task)| {
            let keep = wanted.iter().any(|(w, c)| Arc::ptr_eq(w, b) && c == cfg && w.address == *addr);
            if !keep {
                task.abort();
            }
            keep
        });
        for (b, cfg) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(b.address) {
                let task = tokio::spawn(check_loop(Arc::clone(&listener), Arc::clone(&b), cfg.clone()));
                slot.insert((b, cfg, task.abort_handle()));
            }
        }
        tokio::select! {
            changed = generations.changed() => if changed.is_err() { break },
            _ = stop.changed() => break,
        }
    }
    for (_, (_, _, task)) in running {
        task.abort();
    }
}

async fn check_loop(listener: Arc<ListenerPool>, backend: Arc<Backend>, cfg: HealthConfig) {
    let addr = backend.address;
    let mut verdicts = Hysteresis::new(cfg.rise, cfg.fall, backend.is_active_healthy());
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = check_once(addr, &cfg, listener.current().backend_tls().as_deref()).await;
        let meter = backend.meter();
        let counter = if result.is_ok() { &meter.checks_passed } else { &meter.checks_failed };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(up) = verdicts.observe(result.is_ok()) {
            listener.set_active_healthy(&backend, up);
            match &result {
                Ok(()) => {
                    info!(listener = %listener.name(), backend = %addr, "backend is healthy again ({} checks passed)", cfg.rise)
                }
                Err(why) => {
                    warn!(listener = %listener.name(), backend = %addr, reason = %why, "backend is down ({} checks failed)", cfg.fall)
                }
            }
        }
        if result.is_ok() && listener.check_passed(&backend) {
            info!(listener = %listener.name(), backend = %addr, "ejected backend back after its cool-down and a passing check");
        }
    }
}

/// Largest response head a check reads.
const MAX_CHECK_HEAD: usize = 64 * 1024;

/// One check: connect (the same connector as requests, TLS included),
/// `GET path`, judge the status of the response head.
pub async fn check_once(addr: SocketAddr, cfg: &HealthConfig, tls: Option<&BackendTls>) -> Result<(), String> {
    let attempt = async {
        let mut up = Upstream::connect(addr, cfg.timeout, tls).await?;
        let host = tls.and_then(BackendTls::server_name).map_or_else(|| addr.to_string(), str::to_string);
        let request = format!(
            "GET {} HTTP/1.1\r\nhost: {host}\r\nuser-agent: vipd-health-check\r\nconnection: close\r\n\r\n",
            cfg.path
        );
        up.stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        up.stream.flush().await.map_err(|e| format!("send: {e}"))?;
        let ctx = ResponseContext {
            is_head: false,
            client_http10: false,
            close_client: true,
            body_unfinished: false,
            upgrade: false,
        };
        let mut scratch = Vec::new();
        loop {
            match wire::parse_response(up.buf.filled(), ctx, &mut scratch) {
                Ok(Some(r)) if r.interim => up.buf.consume(r.head_len),
                Ok(Some(r)) if (200..400).contains(&r.status) => return Ok(()),
                Ok(Some(r)) => return Err(format!("answered {}", r.status)),
                Ok(None) => match up.buf.read_from(&mut up.stream, MAX_CHECK_HEAD).await {
                    Ok(n) if n > 0 => {}
                    Ok(_) => return Err("closed before a response".to_string()),
                    Err(e) => return Err(format!("receive: {e}")),
                },
                Err(e) => return Err(format!("invalid response: {e}")),
            }
        }
    };
    match tokio::time::timeout(cfg.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", cfg.timeout)),
    }
}
