//! Active health checks: one task per backend sends `GET path` every
//! interval on a fresh connection; a 2xx or 3xx answer within the timeout
//! passes. The pure [`Hysteresis`] turns passes and failures into flips.
//! Checks run beside the traffic and never block a request.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use super::backends::Pool;
use super::balance::Hysteresis;
use crate::config::HealthConfig;

/// Starts the checks of every backend of `pool` on the current runtime.
pub fn spawn_checks(pool: &Arc<Pool>) {
    let Some(cfg) = pool.config.health.clone() else { return };
    for (i, b) in pool.backends().iter().enumerate() {
        tokio::spawn(check_loop(Arc::clone(pool), i, b.address, cfg.clone()));
    }
}

async fn check_loop(pool: Arc<Pool>, i: usize, addr: SocketAddr, cfg: HealthConfig) {
    let mut verdicts = Hysteresis::new(cfg.rise, cfg.fall, true);
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = check_once(addr, &cfg).await;
        if let Some(up) = verdicts.observe(result.is_ok()) {
            pool.set_active_healthy(i, up);
            match &result {
                Ok(()) => {
                    info!(listener = %pool.config.name, backend = %addr, "backend is healthy again ({} checks passed)", cfg.rise)
                }
                Err(why) => {
                    warn!(listener = %pool.config.name, backend = %addr, reason = %why, "backend is down ({} checks failed)", cfg.fall)
                }
            }
        }
        if result.is_ok() && pool.check_passed(i) {
            info!(listener = %pool.config.name, backend = %addr, "ejected backend back after its cool-down and a passing check");
        }
    }
}

/// One check: connect, `GET path`, judge the status.
pub async fn check_once(addr: SocketAddr, cfg: &HealthConfig) -> Result<(), String> {
    let attempt = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let req = Request::get(cfg.path.as_str())
            .header(HOST, addr.to_string())
            .header(USER_AGENT, "vipd-health-check")
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
        let status = resp.status();
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    };
    match tokio::time::timeout(cfg.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", cfg.timeout)),
    }
}
