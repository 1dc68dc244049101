//! One proxied request: rewrite it (hop-by-hop headers out, X-Forwarded-*
//! in), send it on a pooled upstream connection, retry where that is safe,
//! and turn the answer (or the failure) into the client's response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http_body::Body as _;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, HOST, LOCATION, UPGRADE};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use super::backends::{NotAdmitted, Pool, QUEUE_TIMEOUT};
use super::body::{AccessLog, Completion, ProxyBody, UpstreamBody};
use super::h1::wire::{https_location, Scheme};
use super::h1::wire::{is_hop_by_hop, is_idempotent, is_valid_authority, is_valid_request_id, looks_like_framing};
use super::idle::IdleConns;
use super::upstream::connect_for_upgrade;
use super::upstream::Upstream;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Removes hop-by-hop headers in place: the same rule as the HTTP/1
/// path's ([`is_hop_by_hop`]), and whatever `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass to see whether there is anything to do: there usually is
    // not, and each removal costs a hash and a probe.
    // Also names a CGI/WSGI backend would read as a framing or forwarding
    // field (`content_length`): dropped, as on the HTTP/1 path.
    let is_hop = |k: &HeaderName| is_hop_by_hop(k.as_str().as_bytes()) || looks_like_framing(k.as_str().as_bytes());
    if !headers.keys().any(is_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let hop: Vec<HeaderName> = headers.keys().filter(|k| is_hop(k)).cloned().collect();
    for name in named.into_iter().chain(hop) {
        headers.remove(name);
    }
}

/// The host an HTTP/2 request is for: its `:authority`, which wins over a
/// `Host` field (RFC 9113 §8.3.1), else `Host`; `None` when it names none
/// or an invalid one (answered 400, as HTTP/1.1 without Host is).
fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    let host = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok()?,
        None => req.headers().get(HOST)?.clone(),
    };
    is_valid_authority(host.as_bytes()).then_some(host)
}

/// Sets `Host` to the request's `host`, adds the client to
/// `X-Forwarded-For` and sets `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub fn add_forwarded(headers: &mut HeaderMap, client: SocketAddr, scheme: Scheme, host: HeaderValue) {
    let ip = client.ip().to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {ip}")),
        None => HeaderValue::from_str(&ip),
    };
    if let Ok(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme.as_str()));
    headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    headers.insert(HOST, host);
}

/// One `X-Request-Id`: the client's if it sent exactly one valid one, else
/// a fresh one (as on the HTTP/1 path, [`super::h1::wire::ensure_request_id`]).
/// Returns it.
fn ensure_request_id(headers: &mut HeaderMap) -> String {
    let mut sent = headers.get_all(&X_REQUEST_ID).iter();
    if let (Some(v), None) = (sent.next(), sent.next()) {
        if is_valid_request_id(v.as_bytes()) {
            return String::from_utf8_lossy(v.as_bytes()).into_owned();
        }
    }
    let id = format!("{:016x}", fastrand::u64(..));
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    id
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// The backends one request has tried, without allocating.
#[derive(Default)]
pub(crate) struct Tried {
    list: [usize; MAX_TRIED],
    len: usize,
}

/// 1 + the largest `retries`, plus the one stale-connection retry.
const MAX_TRIED: usize = 12;

impl Tried {
    pub(crate) fn push(&mut self, i: usize) {
        if let Some(slot) = self.list.get_mut(self.len) {
            *slot = i;
            self.len += 1;
        }
    }

    pub(crate) fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    pub(crate) fn as_slice(&self) -> &[usize] {
        &self.list[..self.len]
    }
}

fn idempotent(m: &Method) -> bool {
    is_idempotent(m.as_str())
}

/// A short answer made by the proxy itself.
fn local(status: StatusCode, text: &'static str, mut done: Completion) -> Response<ProxyBody> {
    if let Some(l) = done.log.as_mut() {
        l.status = status.as_u16();
    }
    let mut r = Response::new(ProxyBody::full(text, done));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// A ready connection to the backend at `addr`: a pooled one if any is
/// still good. With `fresh`, always a new one: for a request that cannot
/// be sent again.
async fn checkout(pool: &Pool, idle: &IdleConns<Upstream>, addr: SocketAddr, fresh: bool) -> Result<Upstream, String> {
    let timeout = pool.config.connect_timeout;
    if !fresh {
        while let Some(mut conn) = idle.take(addr, Instant::now(), |c| !c.is_closed()) {
            // Driving it here also finds out whether the backend closed it.
            if let Ok(true) = tokio::time::timeout(timeout, conn.ready()).await {
                return Ok(conn);
            }
        }
    }
    Upstream::connect(addr, timeout, pool.backend_tls().as_deref()).await
}

/// Serves one client request through the pool.
pub async fn handle(
    pool: Arc<Pool>,
    idle: Arc<IdleConns<Upstream>>,
    client: SocketAddr,
    scheme: Scheme,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let mut done = Completion::default();
    let started = Instant::now();
    let meter = Arc::clone(pool.meter());
    // The proxy's own answers are counted here, the backends' below.
    let local = |status: StatusCode, text: &'static str, done: Completion| {
        meter.responses.count(status.as_u16());
        meter.request_time.observe(started.elapsed());
        local(status, text, done)
    };
    if pool.config.access_log && tracing::enabled!(target: "access", tracing::Level::INFO) {
        done.log = Some(Box::new(AccessLog {
            client,
            method: req.method().to_string(),
            path: req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string(),
            status: 0,
            backend: None,
            started,
            request_id: String::new(),
        }));
    }
    let Some(host) = request_host(&req) else {
        return local(StatusCode::BAD_REQUEST, "bad request\n", done);
    };
    if let Some(redirect) = &pool.config.redirect_https {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if redirect.applies_to(path.as_bytes()) {
            let location = https_location(host.as_bytes(), path.as_bytes(), redirect.port);
            let mut resp = local(StatusCode::PERMANENT_REDIRECT, "moved to https\n", done);
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(LOCATION, v);
            }
            return resp;
        }
    }
    if is_upgrade(&req) {
        return upgrade(pool, client, scheme, req, host, done).await;
    }

    // Rewrite into an origin-form HTTP/1.1 request for the backend.
    let path = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path);
    *req.version_mut() = Version::HTTP_11;
    strip_hop_by_hop(req.headers_mut());
    add_forwarded(req.headers_mut(), client, scheme, host);
    let id = ensure_request_id(req.headers_mut());
    if let Some(l) = done.log.as_mut() {
        l.request_id = id;
    }
    let (parts, body) = req.into_parts();
    // A request can be sent again after its connection broke only if it is
    // idempotent and has no body to replay.
    let replay = (idempotent(&parts.method) && body.is_end_stream())
        .then(|| (parts.method.clone(), parts.uri.clone(), parts.headers.clone()));
    let mut req = Some(Request::from_parts(parts, UpstreamBody::Client(body)));

    // Backends tried so far; attempts are few (retries <= 10), so no heap.
    let mut tried = Tried::default();
    let mut replayed = false;
    let mut stale_retried = false;
    let max_attempts = 1 + pool.config.retries as usize;
    let mut attempts = 0;
    let mut last_failure = (StatusCode::SERVICE_UNAVAILABLE, "no healthy backend\n");
    while attempts < max_attempts {
        let (i, guard) = match pool.admit(tried.as_slice()).await {
            Ok(admitted) => admitted,
            Err(NotAdmitted::NoBackend) => break,
            Err(NotAdmitted::QueueTimeout(i)) => {
                let backend = pool.backends().get(i).map(|b| b.address);
                warn!(?backend, timeout = ?pool.config.queue_timeout, "backend at max_conns for the whole queue timeout");
                return local(StatusCode::SERVICE_UNAVAILABLE, QUEUE_TIMEOUT.2, done);
            }
        };
        let Some(backend) = pool.backends().get(i).map(Arc::clone) else { break };
        let addr = backend.address;
        attempts += 1;
        if attempts > 1 {
            meter.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        tried.push(i);
        if let Some(l) = done.log.as_mut() {
            l.backend = Some(addr);
        }
        let mut conn = match checkout(&pool, &idle, addr, replay.is_none()).await {
            Ok(c) => c,
            Err(e) => {
                warn!(backend = %addr, error = %e, "backend unreachable; trying another");
                if pool.failed(i) {
                    warn!(backend = %addr, cooldown = ?pool.eject_cooldown(), "backend ejected after consecutive failures");
                }
                last_failure = (StatusCode::BAD_GATEWAY, "no backend reachable\n");
                continue;
            }
        };
        let Some(request) = req.take() else { break };
        let sent_at = Instant::now();
        match tokio::time::timeout(pool.config.response_timeout, conn.send(request)).await {
            Ok(Ok(mut resp)) => {
                let status = resp.status().as_u16();
                backend.meter().responses.count(status);
                backend.meter().response_time.observe(sent_at.elapsed());
                meter.responses.count(status);
                meter.request_time.observe(started.elapsed());
                if resp.status().is_server_error() {
                    if pool.failed(i) {
                        warn!(backend = %addr, "backend ejected after consecutive failures");
                    }
                } else {
                    pool.succeeded(i);
                }
                strip_hop_by_hop(resp.headers_mut());
                if let Some(l) = done.log.as_mut() {
                    l.status = resp.status().as_u16();
                }
                done.in_flight = Some(guard);
                done.idle = Some(idle);
                return resp.map(|b| ProxyBody::upstream(b, Some(conn), done));
            }
            Ok(Err(mut e)) => {
                if let Some(unsent) = e.take_message() {
                    // A pooled connection the backend had just closed: the
                    // request was never written, so it may go anywhere, and
                    // the backend is not at fault. Once, it may try the same
                    // backend again on a new connection.
                    debug!(backend = %addr, error = %e.error(), "request not sent; sending it again");
                    req = Some(unsent);
                    if !stale_retried {
                        stale_retried = true;
                        attempts -= 1;
                        tried.pop();
                    }
                    continue;
                }
                pool.failed(i);
                warn!(backend = %addr, error = %e.error(), "backend connection failed before the response");
                last_failure = (StatusCode::BAD_GATEWAY, "backend connection failed\n");
                match (&replay, replayed) {
                    (Some((method, uri, headers)), false) => {
                        replayed = true;
                        let mut again = Request::new(UpstreamBody::Empty);
                        *again.method_mut() = method.clone();
                        *again.uri_mut() = uri.clone();
                        *again.headers_mut() = headers.clone();
                        req = Some(again);
                    }
                    _ => break,
                }
            }
            Err(_) => {
                pool.failed(i);
                warn!(backend = %addr, timeout = ?pool.config.response_timeout, "backend response timed out");
                return local(StatusCode::GATEWAY_TIMEOUT, "backend timed out\n", done);
            }
        }
    }
    local(last_failure.0, last_failure.1, done)
}

/// An HTTP/1.1 Upgrade (WebSocket): a fresh upstream connection, the 101
/// passed back, then bytes copied both ways until either side closes.
async fn upgrade(
    pool: Arc<Pool>,
    client: SocketAddr,
    scheme: Scheme,
    mut req: Request<Incoming>,
    host: HeaderValue,
    done: Completion,
) -> Response<ProxyBody> {
    let (i, guard) = match pool.admit(&[]).await {
        Ok(admitted) => admitted,
        Err(NotAdmitted::NoBackend) => return local(StatusCode::SERVICE_UNAVAILABLE, "no healthy backend\n", done),
        Err(NotAdmitted::QueueTimeout(_)) => return local(StatusCode::SERVICE_UNAVAILABLE, QUEUE_TIMEOUT.2, done),
    };
    let Some(addr) = pool.backends().get(i).map(|b| b.address) else {
        return local(StatusCode::SERVICE_UNAVAILABLE, "no healthy backend\n", done);
    };
    let client_side = hyper::upgrade::on(&mut req);
    let (mut parts, body) = req.into_parts();
    let upgrade_to = parts.headers.get(UPGRADE).cloned();
    parts.uri = Uri::from(parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    add_forwarded(&mut parts.headers, client, scheme, host);
    if let Some(u) = upgrade_to {
        parts.headers.insert(UPGRADE, u);
        parts.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let mut conn = match connect_for_upgrade(addr, pool.config.connect_timeout, pool.backend_tls().as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            pool.failed(i);
            warn!(backend = %addr, error = %e, "backend unreachable for upgrade");
            return local(StatusCode::BAD_GATEWAY, "no backend reachable\n", done);
        }
    };
    let sent = conn.send_request(Request::from_parts(parts, UpstreamBody::Client(body)));
    let mut resp = match tokio::time::timeout(pool.config.response_timeout, sent).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            pool.failed(i);
            warn!(backend = %addr, error = %e, "upgrade request failed");
            return local(StatusCode::BAD_GATEWAY, "backend connection failed\n", done);
        }
        Err(_) => {
            pool.failed(i);
            return local(StatusCode::GATEWAY_TIMEOUT, "backend timed out\n", done);
        }
    };
    pool.succeeded(i);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let backend_side = hyper::upgrade::on(&mut resp);
        let mut guard = guard;
        guard.release_slot();
        tokio::spawn(async move {
            let _in_flight = guard;
            match tokio::try_join!(client_side, backend_side) {
                Ok((c, b)) => {
                    let (mut c, mut b) = (TokioIo::new(c), TokioIo::new(b));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
                        debug!(error = %e, "upgraded connection ended");
                    }
                }
                Err(e) => debug!(error = %e, "upgrade did not complete"),
            }
        });
        let mut done = done;
        if let Some(l) = done.log.as_mut() {
            l.status = 101;
            l.backend = Some(addr);
        }
        return resp.map(|b| ProxyBody::upstream(b, None, done));
    }
    let mut done = done;
    done.in_flight = Some(guard);
    strip_hop_by_hop(resp.headers_mut());
    resp.map(|b| ProxyBody::upstream(b, None, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).expect("name"), HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = headers(&[
            ("connection", "close, x-trace"),
            ("connection", "X-Other"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-trace", "1"),
            ("x-other", "2"),
            ("host", "example.test"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["accept", "host"]);
    }

    #[test]
    fn forwarded_headers_are_appended_and_set() {
        let client: SocketAddr = "198.51.100.7:4242".parse().expect("addr");
        let mut h = headers(&[("host", "other.test"), ("x-forwarded-for", "203.0.113.1")]);
        add_forwarded(&mut h, client, Scheme::Http, HeaderValue::from_static("shop.test"));
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 198.51.100.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.test");
        assert_eq!(h["host"], "shop.test");

        let mut h = HeaderMap::new();
        add_forwarded(&mut h, client, Scheme::Https, HeaderValue::from_static("api.test:8080"));
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["host"], "api.test:8080");
        assert_eq!(h["x-forwarded-host"], "api.test:8080");
    }

    #[test]
    fn idempotent_methods() {
        assert!(idempotent(&Method::GET) && idempotent(&Method::PUT) && idempotent(&Method::DELETE));
        assert!(!idempotent(&Method::POST) && !idempotent(&Method::PATCH));
    }
}
