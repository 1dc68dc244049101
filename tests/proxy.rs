//! The HTTP proxy on loopback: backends are small hyper servers in this
//! process, the proxy runs its real workers, clients speak raw HTTP/1.1.
//! No root needed; nothing leaves 127.0.0.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vipd::proxy::backends::ListenerPool;
use vipd::proxy::server::{bind, Listener, Proxy};

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> BoxBody {
    Full::new(s.into()).boxed()
}

/// A test backend. `name` answers every request; special paths:
/// `/slow?MS` (MS ms, default 3 s), `/headers` (echoes request headers), `/fail` (500),
/// `/big?N` (N MiB streamed), `/upload` (counts the body), `/ws` (101 then echo),
/// `/early` (413 without reading the body).
struct Backend {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Backend {
    /// Dies: stops listening and drops every open connection.
    fn kill(&self) {
        self.task.abort();
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
    }
}

async fn backend(name: &'static str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    let down = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicUsize::new(0));
    let (d, h) = (down.clone(), hits.clone());
    let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
    let open = conns.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (d, h) = (d.clone(), h.clone());
            let conn = tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (d, h) = (d.clone(), h.clone());
                    async move { Ok::<_, Infallible>(answer(name, req, &d, &h).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
            open.lock().expect("lock").push(conn.abort_handle());
        }
    });
    Backend { addr, down, hits, task, conns }
}

async fn answer(
    name: &'static str,
    mut req: Request<Incoming>,
    down: &AtomicBool,
    hits: &AtomicUsize,
) -> Response<BoxBody> {
    hits.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        let status = if down.load(Ordering::Relaxed) { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
        return Response::builder().status(status).body(full("ok")).expect("response");
    }
    match path.as_str() {
        "/slow" => {
            let ms = req.uri().query().and_then(|q| q.parse().ok()).unwrap_or(3000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full(name))
        }
        "/fail" => Response::builder().status(500).body(full("boom")).expect("response"),
        // `?N`: N bytes of a known pattern, with a Content-Length.
        "/bytes" => {
            let n: usize = req.uri().query().and_then(|q| q.parse().ok()).unwrap_or(0);
            Response::new(full(pattern(n)))
        }
        "/early" => Response::builder().status(413).body(full("too large")).expect("response"),
        "/headers" => {
            let mut lines: Vec<String> =
                req.headers().iter().map(|(k, v)| format!("{}: {}", k, v.to_str().unwrap_or("?"))).collect();
            lines.sort();
            Response::builder()
                .header("connection", "x-secret")
                .header("x-secret", "hop")
                .header("keep-alive", "timeout=5")
                .body(full(lines.join("\n")))
                .expect("response")
        }
        "/big" => {
            let mib: usize = req.uri().query().and_then(|q| q.parse().ok()).unwrap_or(1);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream =
                futures_util::stream::iter((0..mib * 16).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))));
            Response::new(StreamBody::new(stream).boxed())
        }
        "/upload" => {
            let mut n = 0usize;
            let mut body = req.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    n += d.len();
                }
            }
            Response::new(full(n.to_string()))
        }
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = upgrade.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .body(full(""))
                .expect("response")
        }
        _ => Response::new(full(name)),
    }
}

/// Starts a proxy over `backends` with extra config lines; returns its address.
fn proxy(backends: &[SocketAddr], extra: &str) -> (SocketAddr, Arc<ListenerPool>, Proxy) {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    let text = format!(
        "[[http]]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\nbackends = [{}]\naccess_log = false\n{extra}\n",
        list.join(", ")
    );
    let config = vipd::config::parse(&text, Path::new("t.toml")).expect("valid config");
    let h = config.http[0].clone();
    let sockets = bind(h.listen, 1).expect("bind proxy");
    let addr = sockets[0].local_addr().expect("addr");
    let pool = ListenerPool::new(h);
    let p = Proxy::start(1, vec![Listener { pool: pool.clone(), sockets }]).expect("start proxy");
    (addr, pool, p)
}

/// One HTTP/1.1 request on a new connection; returns (status, headers, body).
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect proxy");
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\n{extra}Connection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_lowercase(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_and_forwards_headers() {
    let (a, b) = (backend("a").await, backend("b").await);
    let (addr, pool, p) = proxy(&[a.addr, b.addr], "");
    let mut seen = std::collections::HashMap::new();
    for _ in 0..40 {
        let (status, _, body) = get(addr, "/", &[]).await;
        assert_eq!(status, 200);
        *seen.entry(body).or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&20), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&20), "{seen:?}");

    let (status, head, body) = get(
        addr,
        "/headers",
        &[("X-Forwarded-For", "203.0.113.9"), ("Proxy-Authorization", "x"), ("Keep-Alive", "1"), ("Te", "trailers")],
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("host: shop.test"), "{body}");
    assert!(body.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1"), "{body}");
    assert!(body.contains("x-forwarded-proto: http"), "{body}");
    assert!(body.contains("x-forwarded-host: shop.test"), "{body}");
    for hop in ["proxy-authorization", "keep-alive", "te:"] {
        assert!(!body.contains(hop), "{hop} forwarded: {body}");
    }
    // Hop-by-hop headers of the response stay with the backend, too.
    assert!(!head.contains("x-secret") && !head.contains("keep-alive"), "{head}");
    assert_eq!(pool.snapshot().backends.iter().map(|b| b.requests).sum::<u64>(), 41);
    p.shutdown();
    a.task.abort();
    b.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_gets_504_and_dead_pool_503() {
    let a = backend("a").await;
    let (addr, _, p) = proxy(&[a.addr], "response_timeout = \"300ms\"");
    let (status, _, body) = get(addr, "/slow", &[]).await;
    assert_eq!((status, body.as_str()), (504, "backend timed out\n"));
    p.shutdown();

    // Nothing listens on a closed port: connect refused on every attempt.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
    let (addr, _, p) = proxy(&[closed], "");
    let (status, _, body) = get(addr, "/", &[]).await;
    assert_eq!((status, body.as_str()), (502, "no backend reachable\n"));
    p.shutdown();
    a.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_backend_is_ejected_and_returns_after_cooldown_and_check() {
    let (a, b) = (backend("a").await, backend("b").await);
    let extra = "[http.health]\npath = \"/healthz\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\neject_after = 2\neject_cooldown = \"500ms\"";
    let (addr, pool, p) = proxy(&[a.addr, b.addr], extra);
    // a's health check fails: it goes out, everything lands on b.
    a.down.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!pool.snapshot().backends[0].healthy);
    for _ in 0..10 {
        assert_eq!(get(addr, "/", &[]).await.2, "b");
    }
    a.down.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(pool.snapshot().backends[0].healthy, "back after a passing check");

    // Passive: two 5xx in a row eject a backend for the cool-down.
    let before = a.hits.load(Ordering::Relaxed);
    let mut fails = 0;
    for _ in 0..4 {
        if get(addr, "/fail", &[]).await.0 == 500 {
            fails += 1;
        }
    }
    assert_eq!(fails, 4, "5xx answers are passed through");
    let snap = pool.snapshot();
    assert!(snap.backends.iter().all(|b| b.ejected), "{snap:?}");
    let (status, _, body) = get(addr, "/", &[]).await;
    assert_eq!((status, body.as_str()), (503, "no healthy backend\n"));
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(pool.snapshot().backends.iter().all(|b| b.healthy), "cool-down over and checks pass");
    assert_eq!(get(addr, "/", &[]).await.0, 200);
    assert!(a.hits.load(Ordering::Relaxed) > before);
    p.shutdown();
    a.task.abort();
    b.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_mid_run_fails_no_idempotent_request() {
    let (a, b) = (backend("a").await, backend("b").await);
    let (addr, _, p) = proxy(&[a.addr, b.addr], "");
    // Keep-alive client so pooled upstream connections are in play.
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let mut failed = 0;
    for i in 0..200 {
        if i == 50 {
            a.kill(); // pooled connections break, new ones are refused
        }
        let mut req = Some(
            Request::get("/").header("host", "shop.test").body(http_body_util::Empty::<Bytes>::new()).expect("req"),
        );
        // hyper's client marks its connection idle a moment after the body
        // ends; a request it hands back unsent never reached the proxy.
        let mut result = None;
        for _ in 0..100 {
            let Some(r) = req.take() else { break };
            if sender.ready().await.is_err() {
                panic!("the proxy closed the client's connection at request {i}");
            }
            match sender.try_send_request(r).await {
                Err(mut e) if e.message().is_some() => req = e.take_message(),
                other => result = Some(other.map_err(|e| e.into_error())),
            }
        }
        match result {
            Some(Ok(r)) if r.status() == 200 => {
                let _ = r.into_body().collect().await;
            }
            other => {
                eprintln!("request {i}: {:?}", other.map(|r| r.map(|r| r.status())));
                failed += 1
            }
        }
    }
    assert_eq!(failed, 0);
    p.shutdown();
    b.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_delay_others_and_is_dropped() {
    let a = backend("a").await;
    let (addr, _, p) = proxy(&[a.addr], "client_header_timeout = \"500ms\"");
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    let t = std::time::Instant::now();
    assert_eq!(get(addr, "/", &[]).await.0, 200);
    assert!(t.elapsed() < Duration::from_millis(400), "a normal client waited {:?}", t.elapsed());
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(3), slow.read_to_end(&mut buf)).await;
    assert!(n.is_ok(), "the slow client was dropped");
    p.shutdown();
    a.task.abort();
}

/// The head timeout holds for a keep-alive connection's later requests too,
/// counted from the request's first byte (the connection's timer was set to
/// a later deadline for the wait between requests, and is set earlier here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_second_head_gets_408_in_time() {
    let a = backend("a").await;
    let (addr, _, p) = proxy(&[a.addr], "client_header_timeout = \"400ms\"\nidle_timeout = \"10s\"");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut pending = Vec::new();
    assert_eq!(read_response(&mut s, &mut pending, false).await.0, 200);
    // Idle longer than the head timeout: that is the idle timeout's business.
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost").await.expect("write");
    let t = std::time::Instant::now();
    assert!(pending.is_empty());
    let (status, _, _) = read_response(&mut s, &mut pending, false).await;
    assert_eq!(status, 408);
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "408 after {took:?}");
    p.shutdown();
    a.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400() {
    let a = backend("a").await;
    let (addr, _, p) = proxy(&[a.addr], "");
    for bad in ["GARBAGE\r\n\r\n", "GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", "GET /\x01 HTTP/1.1\r\n\r\n"] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(bad.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "{bad:?} -> {text:?}");
    }
    let long = "a".repeat(40_000);
    let (status, _, _) = get(addr, "/", &[("x-long", &long)]).await;
    assert_eq!(status, 431);
    assert_eq!(get(addr, "/", &[]).await.0, 200, "still serving");
    p.shutdown();
    a.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_passed_through() {
    let a = backend("a").await;
    let (addr, _, p) = proxy(&[a.addr], "");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        s.read_exact(&mut byte).await.expect("read head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"\x81\x05hello"[..], b"\x81\x05world"] {
        s.write_all(msg).await.expect("write");
        let mut echo = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut echo)).await.expect("echo").expect("read");
        assert_eq!(echo, msg);
    }
    p.shutdown();
    a.task.abort();
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_stream_through_with_flat_memory() {
    let a = backend("a").await;
    let (addr, _, p) = proxy(&[a.addr], "");
    let before = rss_kib();
    // Download 100 MiB.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /big?100 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut total = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = s.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        total += n;
    }
    assert!(total > 100 * 1024 * 1024, "got {total} bytes");
    // Upload 100 MiB, chunked.
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let chunk = Bytes::from(vec![b'y'; 64 * 1024]);
    let body = StreamBody::new(futures_util::stream::iter(
        (0..1600).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
    ));
    let req = Request::post("/upload").header("host", "x").body(body).expect("req");
    let resp = sender.send_request(req).await.expect("upload");
    let got = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(got, (1600 * 64 * 1024).to_string());
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 40, "memory grew by {grown_mib} MiB while streaming 2 x 100 MiB");
    p.shutdown();
    a.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_is_served_and_forwarded_as_http11() {
    let a = backend("a").await;
    let (addr, _, p) = proxy(&[a.addr], "");
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("http://shop.test/headers").body(http_body_util::Empty::<Bytes>::new()).expect("req");
        let resp = sender.send_request(req).await.expect("h2 response");
        assert_eq!(resp.status(), 200);
        let body =
            String::from_utf8(resp.into_body().collect().await.expect("body").to_bytes().to_vec()).expect("utf8");
        // The :authority becomes Host for the HTTP/1.1 backend.
        assert!(body.contains("host: shop.test"), "{body}");
        assert!(body.contains("x-forwarded-host: shop.test"), "{body}");
    }
    // RFC 9113 §8.3.1: :authority wins over a Host field; Host alone is
    // used; neither (or an invalid one) is a 400, never a request without Host.
    let cases = [
        ("http://shop.test/headers", Some("evil.test"), 200, Some("host: shop.test")),
        ("/headers", Some("plain.test"), 200, Some("host: plain.test")),
        ("/headers", None, 400, None),
        ("/headers", Some("a b"), 400, None),
    ];
    for (uri, host, want, seen) in cases {
        let mut req = Request::get(uri);
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let resp = sender.send_request(req.body(http_body_util::Empty::<Bytes>::new()).expect("req")).await;
        let resp = resp.expect("h2 response");
        assert_eq!(resp.status(), want, "{uri} {host:?}");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let body = String::from_utf8_lossy(&body);
        if let Some(seen) = seen {
            assert!(body.contains(seen) && !body.contains("evil"), "{uri} {host:?}: {body}");
        }
    }
    p.shutdown();
    a.task.abort();
}

/// Issue 7 §2: HTTP/2 clients' requests go through the same backend
/// client as HTTP/1's: our codec writes the head (cookies joined, framing
/// our own), bodies of known and unknown length go up, a chunked response
/// comes back as DATA, and sequential streams reuse one pooled connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_use_the_one_backend_client_and_its_pool() {
    let a = backend("a").await;
    let (addr, _, p) = proxy(&[a.addr], "");
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    async fn text(resp: Response<Incoming>) -> (u16, String) {
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
    for _ in 0..5 {
        let req = Request::get("http://shop.test/").body(full(Bytes::new())).expect("req");
        assert_eq!(text(sender.send_request(req).await.expect("h2 response")).await, (200, "a".to_string()));
    }
    assert_eq!(a.conns.lock().expect("lock").len(), 1, "five sequential streams, one pooled backend connection");
    // Bodies that come with their head (taken with its copy) and longer
    // ones (relayed as they come), whole and in order, the connection
    // serving on after each.
    for n in [0, 1, 900, 1000, 1024, 1100, 5000, 100_000] {
        let req = Request::get(format!("http://shop.test/bytes?{n}")).body(full(Bytes::new())).expect("req");
        let resp = sender.send_request(req).await.expect("h2 response");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert!(body == pattern(n), "{n} bytes asked, {} came", body.len());
    }
    assert_eq!(a.conns.lock().expect("lock").len(), 1, "still the one pooled backend connection");

    // Two cookie fields (as HTTP/2 clients send them) are one for HTTP/1.1.
    let req = Request::get("http://shop.test/headers")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(full(Bytes::new()))
        .expect("req");
    let (status, seen) = text(sender.send_request(req).await.expect("h2 response")).await;
    assert_eq!(status, 200);
    assert!(seen.contains("cookie: a=1; b=2"), "{seen}");
    assert!(!seen.contains("transfer-encoding") && !seen.contains("content-length"), "{seen}");

    // A body with a stated length, and one without (chunked upstream).
    let req = Request::post("http://shop.test/upload")
        .header("content-length", "100000")
        .body(full(vec![b'x'; 100_000]))
        .expect("req");
    assert_eq!(text(sender.send_request(req).await.expect("h2 response")).await, (200, "100000".to_string()));
    let chunks =
        futures_util::stream::iter((0..10).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'y'; 7000])))));
    let req = Request::post("http://shop.test/upload").body(StreamBody::new(chunks).boxed()).expect("req");
    assert_eq!(text(sender.send_request(req).await.expect("h2 response")).await, (200, "70000".to_string()));

    // A streamed (chunked) response of 2 MiB arrives whole as DATA frames.
    let req = Request::get("http://shop.test/big?2").body(full(Bytes::new())).expect("req");
    let resp = sender.send_request(req).await.expect("h2 response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_body().collect().await.expect("body").to_bytes().len(), 2 << 20);

    // HEAD: no body, the backend's length kept.
    let req = Request::head("http://shop.test/").body(full(Bytes::new())).expect("req");
    let resp = sender.send_request(req).await.expect("h2 response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("content-length").map(|v| v.as_bytes()), Some(&b"1"[..]));
    assert!(resp.into_body().collect().await.expect("body").to_bytes().is_empty());

    // A dead backend: 503/502 with a short body, never a hang.
    a.kill();
    let req = Request::get("http://shop.test/").body(full(Bytes::new())).expect("req");
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.expect("in time");
    let (status, body) = text(resp.expect("h2 response")).await;
    assert!(status == 502 || status == 503, "{status} {body}");
    p.shutdown();
}

/// Issue 7 §1.2: an h2c connection must not hold a `max_connections` slot
/// for ever. A partial preface is closed after `client_header_timeout`; a
/// connection that answers PINGs but sends no request likewise; one whose
/// streams have all ended after `idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed() {
    let a = backend("a").await;
    let (addr, _, p) = proxy(&[a.addr], "max_connections = 2\nclient_header_timeout = \"1s\"\nidle_timeout = \"1s\"");
    let started = std::time::Instant::now();
    // 16 bytes of the preface, then nothing.
    let mut partial = TcpStream::connect(addr).await.expect("connect");
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    // A full handshake (hyper's client answers PINGs and SETTINGS), no request.
    let silent = TcpStream::connect(addr).await.expect("connect");
    let (_silent_sender, silent_conn) = hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(silent),
    )
    .await
    .expect("h2 handshake");
    let silent_conn = tokio::spawn(silent_conn);
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), partial.read_to_end(&mut rest)).await;
    assert!(n.is_ok(), "a partial preface held its connection for 5 s");
    assert!(tokio::time::timeout(Duration::from_secs(5), silent_conn).await.is_ok(), "a silent h2 connection stayed");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "closed before client_header_timeout: {waited:?}");
    // Both slots are free again: a new client is served.
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(5), get(addr, "/", &[])).await.expect("served");
    assert_eq!((status, body.as_str()), (200, "a"));

    // After a request, the connection lives while the answer streams and
    // goes idle_timeout after it.
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = Request::get("http://shop.test/slow").body(http_body_util::Empty::<Bytes>::new()).expect("req");
    let resp = sender.send_request(req).await.expect("a 3 s answer outlives the 1 s idle timeout");
    assert_eq!(resp.status(), 200);
    let answered = std::time::Instant::now();
    assert!(tokio::time::timeout(Duration::from_secs(5), conn).await.is_ok(), "an idle h2 connection stayed");
    assert!(answered.elapsed() >= Duration::from_millis(900), "closed before idle_timeout");
    p.shutdown();
    a.task.abort();
}

/// Issue 7 §1.3: an HTTP/2 client's streams each need a backend connection;
/// `max_conns` bounds them per backend, the rest queue, and past
/// `queue_timeout` get 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_share_max_conns_backend_connections() {
    async fn burst(addr: SocketAddr, streams: usize, path: &'static str) -> Vec<u16> {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let calls = (0..streams).map(|_| {
            let mut sender = sender.clone();
            async move {
                let req = Request::get(format!("http://shop.test{path}"))
                    .body(http_body_util::Empty::<Bytes>::new())
                    .expect("req");
                let resp = sender.send_request(req).await.expect("h2 response");
                let status = resp.status().as_u16();
                let _ = resp.into_body().collect().await;
                status
            }
        });
        futures_util::future::join_all(calls).await
    }
    let a = backend("a").await;
    let (addr, _, p) = proxy(&[a.addr], "max_conns = 2\nqueue_timeout = \"10s\"");
    let statuses = tokio::time::timeout(Duration::from_secs(10), burst(addr, 8, "/slow?200")).await.expect("in time");
    assert_eq!(statuses, vec![200; 8]);
    let opened = a.conns.lock().expect("lock").len();
    assert!(opened <= 2, "8 streams opened {opened} backend connections past max_conns = 2");
    p.shutdown();

    // A queue that does not move in time: 503, the others are served.
    let (addr, _, p) = proxy(&[a.addr], "max_conns = 1\nqueue_timeout = \"100ms\"");
    let mut statuses = burst(addr, 3, "/slow?600").await;
    statuses.sort();
    assert_eq!(statuses, vec![200, 503, 503]);
    p.shutdown();
    a.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_wait_for_a_free_slot() {
    let a = backend("a").await;
    let (addr, _, p) = proxy(&[a.addr], "max_connections = 1");
    // The first client holds the only slot with an idle keep-alive connection.
    let first = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(first)).await.expect("handshake");
    let held = tokio::spawn(conn);
    let req = Request::get("/").header("host", "x").body(http_body_util::Empty::<Bytes>::new()).expect("req");
    assert_eq!(sender.send_request(req).await.expect("first").status(), 200);
    // The second waits in the backlog: no answer while the slot is taken...
    let second = tokio::spawn(get(addr, "/", &[]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "served past max_connections");
    // ...and is served once it frees up.
    drop(sender);
    held.abort();
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(5), second).await.expect("served").expect("task");
    assert_eq!((status, body.as_str()), (200, "a"));
    p.shutdown();
    a.task.abort();
}

/// Reads one response from `s` (bytes past it stay in `pending`): status,
/// lower-cased head, body (de-chunked). `no_body` for answers to HEAD.
async fn read_response(s: &mut TcpStream, pending: &mut Vec<u8>, no_body: bool) -> (u16, String, Vec<u8>) {
    async fn fill(s: &mut TcpStream, pending: &mut Vec<u8>) {
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await.expect("in time").expect("read");
        assert!(n > 0, "connection closed early: {:?}", String::from_utf8_lossy(pending));
        pending.extend_from_slice(&chunk[..n]);
    }
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, pending).await;
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).to_lowercase();
    pending.drain(..head_end);
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let field =
        |name: &str| head.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(|v| v.trim().to_string()));
    let mut body = Vec::new();
    if no_body || status == 100 || status == 204 || status == 304 {
        return (status, head, body);
    }
    if let Some(n) = field("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while pending.len() < n {
            fill(s, pending).await;
        }
        body.extend(pending.drain(..n));
    } else if field("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(s, pending).await;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&pending[..line_end]).expect("size"), 16).expect("hex");
            pending.drain(..line_end + 2);
            while pending.len() < size + 2 {
                fill(s, pending).await;
            }
            body.extend(pending.drain(..size));
            pending.drain(..2);
            if size == 0 {
                break;
            }
        }
    } else {
        // Delimited by close.
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(pending)).await;
        body.append(pending);
    }
    (status, head, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_framing_cases_on_one_connection() {
    let a = backend("a").await;
    let (addr, _, p) = proxy(&[a.addr], "");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut pending = Vec::new();

    // Pipelined: both requests in one write, answered in order.
    s.write_all(b"GET /headers HTTP/1.1\r\nHost: one.test\r\n\r\nGET / HTTP/1.1\r\nHost: two.test\r\n\r\n")
        .await
        .expect("write");
    let (status, _, body) = read_response(&mut s, &mut pending, false).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("host: one.test"));
    assert_eq!(read_response(&mut s, &mut pending, false).await.2, b"a");

    // A chunked upload, sent in pieces.
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"6;note=x\r\n world\r\n0\r\n\r\n").await.expect("write");
    let (status, _, body) = read_response(&mut s, &mut pending, false).await;
    assert_eq!((status, body.as_slice()), (200, &b"11"[..]));

    // Expect: 100-continue: the interim answer comes through, then the body goes up.
    s.write_all(b"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        .await
        .expect("write");
    let (status, _, _) = read_response(&mut s, &mut pending, false).await;
    assert_eq!(status, 100);
    s.write_all(b"abcd").await.expect("write");
    let (status, _, body) = read_response(&mut s, &mut pending, false).await;
    assert_eq!((status, body.as_slice()), (200, &b"4"[..]));

    // HEAD: no body, and the connection goes on.
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let (status, head, _) = read_response(&mut s, &mut pending, true).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-length: 1"), "{head}");

    // A streamed (chunked) answer passes through chunked.
    s.write_all(b"GET /big?1 HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let (status, head, body) = read_response(&mut s, &mut pending, false).await;
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert_eq!((status, body.len()), (200, 1024 * 1024));

    // Ambiguous framing is refused, and the connection closed.
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await
    .expect("write");
    let (status, head, _) = read_response(&mut s, &mut pending, false).await;
    assert_eq!(status, 400);
    assert!(head.contains("connection: close"), "{head}");

    // An HTTP/1.0 client gets a streamed answer de-chunked, ended by close.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /big?1 HTTP/1.0\r\n\r\n").await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("in time").expect("read");
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200") && !head.to_lowercase().contains("chunked"), "{head}");
    assert_eq!(body.len(), 1024 * 1024);

    // Without Host, the backend hears the address the client connected to.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /headers HTTP/1.0\r\n\r\n").await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("in time").expect("read");
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains(&format!("host: {addr}")), "{text}");
    p.shutdown();
    a.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_an_upgrade_request_are_not_smuggled() {
    let a = backend("a").await;
    let (addr, _, p) = proxy(&[a.addr], "");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The backend does not switch for "/": the second request must go
    // through the proxy's parsing and rewriting, not raw to the backend.
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\
          GET /headers HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n",
    )
    .await
    .expect("write");
    let mut pending = Vec::new();
    let (status, _, body) = read_response(&mut s, &mut pending, false).await;
    assert_eq!((status, body.as_slice()), (200, &b"a"[..]));
    let (status, _, body) = read_response(&mut s, &mut pending, false).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("x-forwarded-for: 10.9.9.9, 127.0.0.1"), "{body:?}");
    p.shutdown();
    a.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_in_its_body_gets_408_and_the_backend_is_not_blamed() {
    let a = backend("a").await;
    let (addr, pool, p) = proxy(&[a.addr], "response_timeout = \"400ms\"");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789").await.expect("write");
    let mut pending = Vec::new();
    let (status, _, _) = read_response(&mut s, &mut pending, false).await;
    assert_eq!(status, 408);
    let snap = pool.snapshot();
    assert_eq!(snap.backends[0].failures, 0, "{snap:?}");
    p.shutdown();
    a.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_comes_through_an_unfinished_upload() {
    let a = backend("a").await;
    let (addr, _, p) = proxy(&[a.addr], "response_timeout = \"3s\"");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n").await.expect("write");
    // Keep sending while the answer is on its way.
    let chunk = vec![b'x'; 64 * 1024];
    let t = std::time::Instant::now();
    for _ in 0..16 {
        if s.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let mut pending = Vec::new();
    let (status, head, _) = read_response(&mut s, &mut pending, false).await;
    assert_eq!(status, 413);
    assert!(head.contains("connection: close"), "{head}");
    assert!(t.elapsed() < Duration::from_secs(2), "answer took {:?}", t.elapsed());
    p.shutdown();
    a.task.abort();
}

/// A backend for one request that answers a 12-byte body in `pieces`
/// (sent `gap` apart), then stays silent with the connection open.
async fn trickling_backend(pieces: &'static [&'static [u8]], gap: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n").await;
        for piece in pieces {
            tokio::time::sleep(gap).await;
            let _ = conn.write_all(piece).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    addr
}

/// `response_timeout` bounds each wait for the next piece of an HTTP/2
/// client's response body, not the whole body: a body trickling in
/// within it goes through; one that stops is ended with a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_response_body_may_trickle_but_not_stall() {
    async fn body_of(addr: SocketAddr) -> Result<Vec<u8>, h2::Error> {
        let mut client = h2_client(addr).await;
        let req = Request::get("http://x.test/").body(()).expect("req");
        let (response, _) = client.send_request(req, true).expect("send");
        let response = tokio::time::timeout(Duration::from_secs(3), response).await.expect("head in time")?;
        let mut body = response.into_body();
        let mut got = Vec::new();
        while let Some(data) = tokio::time::timeout(Duration::from_secs(5), body.data()).await.expect("no hang") {
            let data = data?;
            let _ = body.flow_control().release_capacity(data.len());
            got.extend_from_slice(&data);
        }
        Ok(got)
    }
    // Five gaps of 150 ms: more than the timeout in all, less in each.
    let backend = trickling_backend(&[b"he", b"ll", b"o ", b"wo", b"rl"], Duration::from_millis(150)).await;
    let (addr, _, p) = proxy(&[backend], "response_timeout = \"400ms\"");
    let started = tokio::time::Instant::now();
    let got = body_of(addr).await.expect_err("the last two bytes never come");
    assert!(got.is_reset() || got.is_io(), "{got:?}");
    // Given up once silent for the timeout after the last piece.
    assert!(started.elapsed() >= Duration::from_millis(750 + 400), "{:?}", started.elapsed());
    p.shutdown();

    let backend = trickling_backend(&[b"he", b"ll", b"o ", b"wo", b"rl", b"d!"], Duration::from_millis(150)).await;
    let (addr, _, p) = proxy(&[backend], "response_timeout = \"400ms\"");
    assert_eq!(body_of(addr).await.expect("whole body"), b"hello world!");
    p.shutdown();
}

/// An HTTP/2 client (prior knowledge, the h2 crate's) on a connection to
/// `addr`, ready for a request.
async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    client.ready().await.expect("ready")
}

/// A backend for one connection that records what it reads until `whole`
/// says the request is (then it answers `answer`), the proxy closes the
/// connection, or 5 s pass. Its task returns the text, and whether the
/// proxy closed the connection.
async fn recording_backend(
    whole: fn(&[u8]) -> bool,
    answer: &'static [u8],
) -> (SocketAddr, tokio::task::JoinHandle<(String, bool)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend = listener.local_addr().expect("addr");
    let recorder = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut closed = false;
        while let Ok(Ok(n)) = tokio::time::timeout_at(until, conn.read(&mut buf)).await {
            if n == 0 {
                closed = true;
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if whole(&got) {
                conn.write_all(answer).await.expect("write");
                break;
            }
        }
        (String::from_utf8_lossy(&got).into_owned(), closed)
    });
    (backend, recorder)
}

/// An HTTP/2 client that resets its stream with NO_ERROR inside its body
/// (which hyper reads as the body's end, RFC 9113 §8.1) does not have the
/// cut body sent up as a whole request: no chunked terminator follows it,
/// and the backend connection is closed, not kept for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_body_cut_by_a_no_error_reset_is_not_sent_as_complete() {
    // Until the proxy closes the connection (or 5 s: it kept it).
    let (backend, recorder) = recording_backend(|_| false, b"").await;
    let (addr, _, p) = proxy(&[backend], "");
    let mut client = h2_client(addr).await;
    let req = Request::post("http://shop.test/upload").body(()).expect("req");
    let (_response, mut body) = client.send_request(req, false).expect("send");
    body.send_data(Bytes::from_static(b"first part"), false).expect("data");
    tokio::time::sleep(Duration::from_millis(300)).await;
    body.send_reset(h2::Reason::NO_ERROR);
    let (text, closed) = recorder.await.expect("recorder");
    assert!(text.starts_with("POST /upload HTTP/1.1\r\n"), "{text}");
    assert!(text.contains("transfer-encoding: chunked") && text.contains("first part"), "{text}");
    assert!(!text.ends_with("0\r\n\r\n") && closed, "closed {closed}: {text:?}");
    p.shutdown();
}

/// An HTTP/2 client's request trailers go up in the chunked trailer
/// section, with the fields the HTTP/1 path holds back (framing, routing,
/// authentication, the proxy's own) left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_requests_trailers_go_up_as_the_http1_path_passes_them() {
    // Until the chunked body's end: its last chunk, then a blank line.
    let chunked_end = |got: &[u8]| got.windows(5).any(|w| w == b"\r\n0\r\n") && got.ends_with(b"\r\n\r\n");
    let (backend, recorder) = recording_backend(chunked_end, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let (addr, _, p) = proxy(&[backend], "retries = 0");
    let mut client = h2_client(addr).await;
    let req = Request::post("http://x.test/upload").body(()).expect("req");
    let (response, mut body) = client.send_request(req, false).expect("send");
    body.send_data(Bytes::from_static(b"abc"), false).expect("data");
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("x-checksum", "sha-1".parse().expect("value"));
    trailers.insert("host", "evil.test".parse().expect("value"));
    trailers.insert("authorization", "Basic eDp5".parse().expect("value"));
    trailers.insert("x-forwarded-for", "203.0.113.9".parse().expect("value"));
    body.send_trailers(trailers).expect("trailers");
    let response = tokio::time::timeout(Duration::from_secs(3), response).await.expect("in time").expect("response");
    assert_eq!(response.status(), 200);
    let (text, _) = recorder.await.expect("recorder");
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(text.ends_with("\r\n3\r\nabc\r\n0\r\nx-checksum: sha-1\r\n\r\n"), "{text:?}");
    assert!(!text.contains("evil.test") && !text.contains("eDp5") && !text.contains("203.0.113.9"), "{text:?}");
    p.shutdown();
}

/// A backend's interim answer (103 Early Hints) reaches an HTTP/2 client
/// before the final one, as it reaches an HTTP/1 client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_gets_the_backends_early_hints() {
    let answer = b"HTTP/1.1 103 Early Hints\r\nlink: </app.css>; rel=preload\r\n\r\n\
        HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (backend, _recorder) = recording_backend(|got| got.ends_with(b"\r\n\r\n"), answer).await;
    let (addr, _, p) = proxy(&[backend], "retries = 0");
    let mut client = h2_client(addr).await;
    let (mut response, _) =
        client.send_request(Request::get("http://x.test/").body(()).expect("req"), true).expect("send");
    let hint = tokio::time::timeout(Duration::from_secs(3), std::future::poll_fn(|cx| response.poll_informational(cx)))
        .await
        .expect("in time");
    let hint = hint.expect("an interim answer").expect("no error");
    assert_eq!(hint.status(), 103);
    assert_eq!(hint.headers().get("link").and_then(|v| v.to_str().ok()), Some("</app.css>; rel=preload"));
    let response = tokio::time::timeout(Duration::from_secs(3), response).await.expect("in time").expect("response");
    assert_eq!(response.status(), 200);
    // RFC 9110 §6.6.1: the backend's answer had no Date; the proxy's is added.
    let date = response.headers().get("date").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(httpdate::parse_http_date(date).is_ok(), "date {date:?}");
    p.shutdown();
}

/// A backend's own Date reaches an HTTP/2 client as it is, alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_answer_keeps_the_backends_date() {
    let answer = b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 2\r\n\r\nok";
    let (backend, _recorder) = recording_backend(|got| got.ends_with(b"\r\n\r\n"), answer).await;
    let (addr, _, p) = proxy(&[backend], "retries = 0");
    let mut client = h2_client(addr).await;
    let (response, _) = client.send_request(Request::get("http://x.test/").body(()).expect("req"), true).expect("send");
    let response = tokio::time::timeout(Duration::from_secs(3), response).await.expect("in time").expect("response");
    let dates: Vec<_> = response.headers().get_all("date").iter().collect();
    assert_eq!(dates, ["Sun, 06 Nov 1994 08:49:37 GMT"]);
    p.shutdown();
}

/// A backend head of far more field lines than a head may have (allowed
/// in size by a large `max_header_size`) is a 502 for an HTTP/2 client, in
/// time, not a failed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_gets_502_for_a_head_of_too_many_lines() {
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    for _ in 0..40_000 {
        head.extend_from_slice(b"a:1\r\n");
    }
    head.extend_from_slice(b"content-length: 0\r\n\r\n");
    let answer: &'static [u8] = Box::leak(head.into_boxed_slice());
    let (backend, _recorder) = recording_backend(|got| got.ends_with(b"\r\n\r\n"), answer).await;
    let (addr, _, p) = proxy(&[backend], "retries = 0\nmax_header_size = 1048576");
    let mut client = h2_client(addr).await;
    let (response, _) = client.send_request(Request::get("http://x.test/").body(()).expect("req"), true).expect("send");
    let response = tokio::time::timeout(Duration::from_secs(5), response).await.expect("in time").expect("response");
    assert_eq!(response.status(), 502);
    p.shutdown();
}

/// RFC 9110 §15.5.6: CONNECT from an HTTP/2 client is answered 405 with
/// the methods that are allowed, and nothing reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connect_is_refused_with_allow() {
    let (backend, seen, task) = lenient_backend().await;
    let (addr, _, p) = proxy(&[backend], "retries = 0");
    let mut client = h2_client(addr).await;
    let req = Request::builder().method(hyper::Method::CONNECT).uri("x.test:443").body(()).expect("req");
    let (response, _) = client.send_request(req, true).expect("send");
    let response = response.await.expect("response");
    assert_eq!(response.status(), 405);
    let allow = response.headers().get("allow").and_then(|v| v.to_str().ok());
    assert_eq!(allow, Some("GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH"));
    // RFC 9110 §6.6.1: vipd's own answers are dated.
    let date = response.headers().get("date").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(httpdate::parse_http_date(date).is_ok(), "date {date:?}");
    assert!(seen.lock().expect("lock").is_empty(), "CONNECT reached the backend");
    p.shutdown();
    task.abort();
}

/// RFC 9113 §8.2.1: an HTTP/2 field value that starts or ends with SP or
/// HTAB makes the request malformed: 400, and it does not reach the
/// backend; whitespace inside a value is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_field_value_with_whitespace_at_an_edge_is_malformed() {
    let (backend, seen, task) = lenient_backend().await;
    let (addr, _, p) = proxy(&[backend], "retries = 0");
    let mut client = h2_client(addr).await;
    for (value, want) in [(" v", 400), ("v ", 400), ("\tv", 400), ("v\t", 400), ("a b", 200)] {
        client = client.ready().await.expect("ready");
        let req = Request::get("http://x.test/").header("x-a", value).body(()).expect("req");
        let (response, _) = client.send_request(req, true).expect("send");
        assert_eq!(response.await.expect("response").status(), want, "{value:?}");
    }
    assert_eq!(seen.lock().expect("lock").len(), 1, "a malformed request reached the backend");
    p.shutdown();
    task.abort();
}

/// Reads from `conn` into `got` until a head has come; returns where it ends.
async fn read_head(conn: &mut TcpStream, got: &mut Vec<u8>) -> usize {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            return i + 4;
        }
        let n = conn.read(&mut buf).await.expect("read");
        assert!(n > 0, "proxy closed before the head");
        got.extend_from_slice(&buf[..n]);
    }
}

/// `n` bytes that show their order: byte `i` is `i % 251`.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A backend that answers a 10-byte upload at once and echoes the body as
/// it reads it (full duplex), then expects `GET /again` on the same
/// connection and answers 204. Its task returns the first request's head.
async fn full_duplex_echo() -> (SocketAddr, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend = listener.local_addr().expect("addr");
    let echo = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // The head first; then answer at once and echo the body as it comes.
        let head_end = read_head(&mut conn, &mut got).await;
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n").await.expect("write");
        let mut echoed = got.len() - head_end;
        conn.write_all(&got[head_end..]).await.expect("write");
        while echoed < 10 {
            let n = conn.read(&mut buf).await.expect("read");
            assert!(n > 0, "the rest of the body never came");
            conn.write_all(&buf[..n]).await.expect("write");
            echoed += n;
        }
        // A second request on the same connection: it was fit for reuse.
        let n = conn.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"GET /again "), "{:?}", String::from_utf8_lossy(&buf[..n]));
        conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.expect("write");
        String::from_utf8_lossy(&got[..head_end]).into_owned()
    });
    (backend, echo)
}

/// Issue 7 §2: a backend that answers while it still reads the body (an
/// echo, streaming as it reads) gets the rest of the body: the upload goes
/// on beside the response, and the connection is reused after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_duplex_exchange_keeps_sending_the_body() {
    let (backend, echo) = full_duplex_echo().await;
    let (addr, _, p) = proxy(&[backend], "response_timeout = \"3s\"");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello").await.expect("write");
    // The first half comes back before the second half is sent.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"hello") {
        let n =
            tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await.expect("echo in time").expect("read");
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    s.write_all(b"world").await.expect("write");
    while !got.ends_with(b"helloworld") {
        let n =
            tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await.expect("echo in time").expect("read");
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(text.starts_with("http/1.1 200") && !text.contains("connection: close"), "{text}");
    s.write_all(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut pending = Vec::new();
    let (status, _, _) = read_response(&mut s, &mut pending, true).await;
    assert_eq!(status, 204);
    tokio::time::timeout(Duration::from_secs(3), echo).await.expect("backend done").expect("backend ok");
    p.shutdown();
}

/// A 2xx that ends before the upload does (the backend answered at once and
/// reads the rest after) promised the client nothing about closing: the rest
/// of the body still goes up, and the client's connection serves its next
/// request (before, it was closed with no `Connection: close` in the head).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_ending_before_the_upload_keeps_the_client_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend = listener.local_addr().expect("addr");
    let served = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = read_head(&mut conn, &mut got).await;
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.expect("write");
        // The body's bytes, then the next request on the same connection
        // (the request was whole, so it is reusable): a read may join them.
        let mut rest = got.split_off(head_end);
        while rest.len() < 10 {
            let n = conn.read(&mut buf).await.expect("read");
            assert!(n > 0, "the rest of the body never came");
            rest.extend_from_slice(&buf[..n]);
        }
        let mut next = rest.split_off(10);
        assert_eq!(rest, b"helloworld");
        read_head(&mut conn, &mut next).await;
        assert!(next.starts_with(b"GET /again "), "{:?}", String::from_utf8_lossy(&next));
        conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.expect("write");
    });
    let (addr, _, p) = proxy(&[backend], "response_timeout = \"3s\"");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello").await.expect("write");
    let mut pending = Vec::new();
    let (status, head, body) = read_response(&mut s, &mut pending, false).await;
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    // The rest of the body after the whole answer, then the next request.
    s.write_all(b"world").await.expect("write");
    s.write_all(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let (status, head, _) = read_response(&mut s, &mut pending, true).await;
    assert_eq!(status, 204, "{head}");
    tokio::time::timeout(Duration::from_secs(3), served).await.expect("backend done").expect("backend ok");
    p.shutdown();
}

/// ...and a client that stops inside that body is closed once the upload
/// has not moved for `response_timeout`: the wait is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_in_its_body_after_the_answer_is_closed_in_time() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend = listener.local_addr().expect("addr");
    let served = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        let head_end = read_head(&mut conn, &mut got).await;
        while got.len() < head_end + 5 {
            let n = conn.read(&mut buf).await.expect("read");
            assert!(n > 0, "the body's first half never came");
            got.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.expect("write");
        // Waits for the rest; the proxy gives up and closes.
        while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let (addr, _, p) = proxy(&[backend], "response_timeout = \"1s\"");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello").await.expect("write");
    let mut pending = Vec::new();
    let (status, _, body) = read_response(&mut s, &mut pending, false).await;
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(4), s.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    tokio::time::timeout(Duration::from_secs(3), served).await.expect("backend done").expect("backend ok");
    p.shutdown();
}

/// The same over HTTP/2: a backend that answers while it still reads the
/// body gets the rest of it (the upload goes on beside the response body),
/// and the connection serves the next request after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_full_duplex_exchange_keeps_sending_the_body() {
    let (backend, echo) = full_duplex_echo().await;
    let (addr, _, p) = proxy(&[backend], "response_timeout = \"3s\"");
    let mut client = h2_client(addr).await;
    let req = Request::put("http://x.test/echo").header("content-length", "10").body(()).expect("req");
    let (response, mut upload) = client.send_request(req, false).expect("send");
    upload.send_data(Bytes::from_static(b"hello"), false).expect("data");
    let response = tokio::time::timeout(Duration::from_secs(3), response).await.expect("head in time").expect("head");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut got = Vec::new();
    // The first half comes back before the second half is sent.
    while got.len() < 5 {
        let data = tokio::time::timeout(Duration::from_secs(3), body.data()).await.expect("echo in time");
        let data = data.expect("more body").expect("data");
        let _ = body.flow_control().release_capacity(data.len());
        got.extend_from_slice(&data);
    }
    assert_eq!(got, b"hello");
    upload.send_data(Bytes::from_static(b"world"), true).expect("data");
    while let Some(data) = tokio::time::timeout(Duration::from_secs(3), body.data()).await.expect("echo in time") {
        let data = data.expect("data");
        let _ = body.flow_control().release_capacity(data.len());
        got.extend_from_slice(&data);
    }
    assert_eq!(got, b"helloworld");
    // The connection goes back to the pool once the response body is done
    // with (hyper drops it just after the stream's end).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut client = client.ready().await.expect("ready");
    let (response, _) =
        client.send_request(Request::get("http://x.test/again").body(()).expect("req"), true).expect("send");
    let response = tokio::time::timeout(Duration::from_secs(3), response).await.expect("in time").expect("response");
    assert_eq!(response.status(), 204);
    let head = tokio::time::timeout(Duration::from_secs(3), echo).await.expect("backend done").expect("backend ok");
    assert!(head.contains("content-length: 10\r\n"), "the h2 request's stated length goes up: {head}");
    p.shutdown();
}

/// A WebSocket upgrade to the echo backend through the proxy: the stream
/// and any echoed bytes read along with the 101.
async fn open_tunnel(addr: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .expect("write");
    let mut pending = Vec::new();
    let (status, _, _) = read_response(&mut s, &mut pending, true).await;
    assert_eq!(status, 101);
    (s, pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tunnel_is_closed_after_tunnel_timeout() {
    let a = backend("a").await;
    let (addr, _, p) = proxy(&[a.addr], "tunnel_timeout = \"300ms\"");
    let (mut s, _) = open_tunnel(addr).await;
    s.write_all(b"ping").await.expect("write");
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo).await.expect("echo");
    let t = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "still open after 3 s of silence");
    assert!(t.elapsed() >= Duration::from_millis(250), "closed too early: {:?}", t.elapsed());
    p.shutdown();
    a.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_carries_both_directions_at_once() {
    let a = backend("a").await;
    let (addr, _, p) = proxy(&[a.addr], "");
    let (s, pending) = open_tunnel(addr).await;
    // The backend echoes as it reads; far more than socket buffers hold goes
    // up before anything is read back, so a proxy relaying one direction at
    // a time would stall.
    const TOTAL: usize = 8 * 1024 * 1024;
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'z'; 64 * 1024];
        for _ in 0..TOTAL / chunk.len() {
            wr.write_all(&chunk).await.expect("write up");
        }
        wr
    });
    let mut got = pending.len();
    let mut buf = vec![0u8; 64 * 1024];
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while got < TOTAL {
            let n = rd.read(&mut buf).await.expect("read echo");
            assert!(n > 0, "closed after {got} bytes");
            got += n;
        }
    })
    .await;
    assert!(read.is_ok(), "echo stalled after {got} of {TOTAL} bytes");
    let _ = writer.await;
    p.shutdown();
    a.task.abort();
}

/// What a lenient backend read as one request.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    fields: Vec<String>,
    /// The body as it came on the wire (chunked framing included).
    raw_body: Vec<u8>,
}

/// A backend that frames requests as gunicorn 20.1 does: chunked only for
/// a Transfer-Encoding of exactly `chunked` (the last such field wins),
/// else Content-Length, else no body; chunk sizes read up to a `;`. Answers
/// each request with its request line and Cookie, on a kept-alive
/// connection. Returns its address and what it read.
async fn lenient_backend() -> (SocketAddr, Arc<std::sync::Mutex<Vec<Seen>>>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut r = tokio::io::BufReader::new(stream);
                for _ in 0..100 {
                    let Some(seen) = lenient_read(&mut r).await else { return };
                    let cookie = seen
                        .fields
                        .iter()
                        .find_map(|f| f.to_ascii_lowercase().strip_prefix("cookie: ").map(str::to_string))
                        .unwrap_or_default();
                    let body = format!("{} cookie={cookie}", seen.line);
                    log.lock().expect("lock").push(seen);
                    let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    if r.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen, task)
}

/// One line into `into`; `None` at the end of the stream or after 5 s.
async fn read_line(r: &mut tokio::io::BufReader<TcpStream>, into: &mut String) -> Option<()> {
    use tokio::io::AsyncBufReadExt;
    into.clear();
    let n = tokio::time::timeout(Duration::from_secs(5), r.read_line(into)).await.ok()?.ok()?;
    (n > 0).then_some(())
}

async fn lenient_read(r: &mut tokio::io::BufReader<TcpStream>) -> Option<Seen> {
    let mut line = String::new();
    read_line(r, &mut line).await?;
    let line = line.trim_end().to_string();
    let mut fields = Vec::new();
    let (mut chunked, mut length) = (false, 0usize);
    loop {
        let mut f = String::new();
        read_line(r, &mut f).await?;
        let f = f.trim_end().to_string();
        if f.is_empty() {
            break;
        }
        if let Some((name, value)) = f.split_once(':') {
            match name.trim().to_ascii_uppercase().as_str() {
                "TRANSFER-ENCODING" => chunked = value.trim().to_lowercase() == "chunked",
                "CONTENT-LENGTH" => length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
        fields.push(f);
    }
    let mut raw_body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            read_line(r, &mut size).await?;
            raw_body.extend_from_slice(size.as_bytes());
            let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).ok()?;
            if n == 0 {
                loop {
                    let mut t = String::new();
                    read_line(r, &mut t).await?;
                    raw_body.extend_from_slice(t.as_bytes());
                    if t.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut data = vec![0u8; n + 2];
            r.read_exact(&mut data).await.ok()?;
            raw_body.extend_from_slice(&data);
        }
    } else if length > 0 {
        let mut data = vec![0u8; length];
        r.read_exact(&mut data).await.ok()?;
        raw_body = data;
    }
    Some(Seen { line, fields, raw_body })
}

/// The request-smuggling attack of issue 7 §1.1: a Transfer-Encoding list
/// the proxy read as chunked but a backend matching an exact `chunked` read
/// as no body, so the body became a request the proxy never saw, whose
/// Content-Length swallowed the next client's request on the pooled
/// connection. Each variant must be refused before it reaches the backend,
/// and the next client must get its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_lists_cannot_smuggle_a_request_past_a_lenient_backend() {
    let (backend, seen, task) = lenient_backend().await;
    let (addr, _, p) = proxy(&[backend], "retries = 0");
    let smuggled = "000 /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\n";
    let variants: [(&str, u16); 9] = [
        ("Transfer-Encoding: chunked,\r\n", 400),
        ("Transfer-Encoding: gzip, chunked\r\n", 501),
        ("Transfer-Encoding: identity, chunked\r\n", 501),
        ("Transfer-Encoding: , chunked\r\n", 400),
        ("Transfer-Encoding: chunked , chunked\r\n", 400),
        ("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 400),
        ("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", 501),
        // An exact `chunked`, but a size line a lenient parser reads as a
        // request line: RFC 9112 §7.1.1 allows only `;` after the size.
        ("Transfer-Encoding: chunked\r\n", 400),
        ("Transfer-Encoding: Chunked\r\n", 400),
    ];
    for (te, want) in variants {
        let mut attacker = TcpStream::connect(addr).await.expect("connect");
        attacker
            .write_all(format!("POST / HTTP/1.1\r\nHost: x\r\n{te}\r\n{smuggled}").as_bytes())
            .await
            .expect("write");
        let mut pending = Vec::new();
        let (status, head, _) = read_response(&mut attacker, &mut pending, false).await;
        assert_eq!(status, want, "{te:?}: {head}");
        // The victim, on what would be the same pooled backend connection.
        let (status, _, body) = get(addr, "/victim", &[("Cookie", "secret=1")]).await;
        assert_eq!((status, body.as_str()), (200, "GET /victim HTTP/1.1 cookie=secret=1"), "{te:?}");
    }
    let lines: Vec<String> = seen.lock().expect("lock").iter().map(|s| s.line.clone()).collect();
    assert!(lines.iter().all(|l| l == "GET /victim HTTP/1.1"), "the backend read {lines:?}");
    p.shutdown();
    task.abort();
}

/// A chunked body reaches the backend in the proxy's own framing: one
/// `transfer-encoding: chunked`, fresh size lines, no extensions, and no
/// framing or routing fields in the trailer section.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_reach_the_backend_reframed() {
    let (backend, seen, task) = lenient_backend().await;
    let (addr, _, p) = proxy(&[backend], "retries = 0");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          005;a=b\r\nhello\r\n0;last\r\nContent-Length: 60\r\nHost: evil\r\nX-Sum: 5\r\n\r\n",
    )
    .await
    .expect("write");
    let mut pending = Vec::new();
    let (status, _, body) = read_response(&mut s, &mut pending, false).await;
    assert_eq!((status, body.as_slice()), (200, &b"POST /up HTTP/1.1 cookie="[..]));
    // The next request on the same connection is its own.
    s.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let (status, _, body) = read_response(&mut s, &mut pending, false).await;
    assert_eq!((status, body.as_slice()), (200, &b"GET /after HTTP/1.1 cookie="[..]));
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let te: Vec<&String> =
        seen[0].fields.iter().filter(|f| f.to_lowercase().starts_with("transfer-encoding")).collect();
    assert_eq!(te, ["transfer-encoding: chunked"]);
    assert_eq!(String::from_utf8_lossy(&seen[0].raw_body), "5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n");
    p.shutdown();
    task.abort();
}

/// A backend answering each request for `/N` with `answers[N]`, as raw
/// bytes, on a kept-alive connection; counts the connections it accepted.
async fn raw_backend(answers: &'static [&'static [u8]]) -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut r = tokio::io::BufReader::new(stream);
                for _ in 0..100 {
                    let Some(seen) = lenient_read(&mut r).await else { return };
                    let n: usize = seen.line.split(' ').nth(1).and_then(|p| p[1..].parse().ok()).unwrap_or(0);
                    let answer = answers.get(n).copied().unwrap_or(b"HTTP/1.1 404 No\r\nContent-Length: 0\r\n\r\n");
                    if r.get_mut().write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, task)
}

/// Issue 7 §1.4, the response side, raw bytes both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_backend_responses_are_refused_or_normalised() {
    const ANSWERS: &[&[u8]] = &[
        b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n02;ext=1\r\nok\r\n0\r\nSet-Cookie: a=1\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 000 Odd\r\nContent-Length: 0\r\n\r\n",
    ];
    let (backend, accepted, task) = raw_backend(ANSWERS).await;
    let (addr, _, p) = proxy(&[backend], "retries = 0");
    // Status below 100, and a response whose codings have no one reading: 502.
    for path in ["/0", "/4", "/1"] {
        let (status, _, _) = get(addr, path, &[]).await;
        assert_eq!(status, 502, "{path}");
    }
    // HTTP/1.0 with Transfer-Encoding: relayed, then that backend
    // connection is closed, not pooled (RFC 9112 §6.1).
    let before = accepted.load(Ordering::Relaxed);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut pending = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let (status, _, body) = read_response(&mut s, &mut pending, false).await;
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
    }
    assert_eq!(accepted.load(Ordering::Relaxed) - before, 2, "a faulty-framed backend connection was reused");
    // A chunked answer reaches the client re-framed: no extension, no
    // Set-Cookie smuggled into the trailers.
    s.write_all(b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut chunk = [0u8; 4096];
        while !raw.ends_with(b"X-T: 1\r\n\r\n") {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0);
            raw.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.ends_with("\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n"), "{text}");
    p.shutdown();
    task.abort();
}

/// Issue 7 §1.4, the request side: what goes up, or what is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lines_are_served_or_answered_by_their_rfc_rule() {
    let (backend, seen, task) = lenient_backend().await;
    let (addr, _, p) = proxy(&[backend], "retries = 0");
    let cases: [(&[u8], u16, Option<&str>); 6] = [
        (b"CONNECT x.test:443 HTTP/1.1\r\nHost: x.test:443\r\n\r\n", 405, None),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, None),
        (b"GET /v HTTP/1.2\r\nHost: x\r\n\r\n", 200, Some("GET /v HTTP/1.1")),
        (b"GET http://x.test?q=1 HTTP/1.1\r\nHost: x.test\r\n\r\n", 200, Some("GET /?q=1 HTTP/1.1")),
        (b"OPTIONS http://x.test HTTP/1.1\r\n\r\n", 200, Some("OPTIONS * HTTP/1.1")),
        (b"GET / HTTP/1.1\r\nHost: x.test,evil:1\r\n\r\n", 400, None),
    ];
    for (bytes, want, line) in cases {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(bytes).await.expect("write");
        let mut pending = Vec::new();
        let (status, head, _) = read_response(&mut s, &mut pending, false).await;
        assert_eq!(status, want, "{}", String::from_utf8_lossy(bytes));
        // RFC 9110 §15.5.6: a 405 says what is allowed.
        assert_eq!(want == 405, head.contains("\r\nallow: get, head, post"), "{head}");
        if let Some(line) = line {
            let last = seen.lock().expect("lock").last().map(|s| s.line.clone());
            assert_eq!(last.as_deref(), Some(line));
        }
    }
    assert_eq!(seen.lock().expect("lock").len(), 3, "a refused request reached the backend");
    p.shutdown();
    task.abort();
}

/// Issue 7 §2: what cannot be sent again (a POST, a body) never goes on a
/// pooled connection the backend may be closing: a fresh one; a bodiless
/// GET reuses the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_be_replayed_get_a_fresh_backend_connection() {
    const OK: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"];
    let (backend, accepted, task) = raw_backend(OK).await;
    let (addr, _, p) = proxy(&[backend], "retries = 0");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut pending = Vec::new();
    let mut send = async |req: &[u8]| {
        s.write_all(req).await.expect("write");
        read_response(&mut s, &mut pending, false).await.0
    };
    assert_eq!(send(b"GET /0 HTTP/1.1\r\nHost: x\r\n\r\n").await, 200);
    assert_eq!(send(b"GET /0 HTTP/1.1\r\nHost: x\r\n\r\n").await, 200);
    assert_eq!(accepted.load(Ordering::Relaxed), 1, "a GET reuses the pooled connection");
    assert_eq!(send(b"POST /0 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi").await, 200);
    assert_eq!(send(b"DELETE /0 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi").await, 200);
    assert_eq!(accepted.load(Ordering::Relaxed), 3, "a POST and a DELETE with a body each got a fresh connection");
    assert_eq!(send(b"GET /0 HTTP/1.1\r\nHost: x\r\n\r\n").await, 200);
    assert_eq!(accepted.load(Ordering::Relaxed), 3, "the GET after them reuses one");
    p.shutdown();
    task.abort();
}

/// `[[http]]` sections for a reload: (name, listen, backends, extra lines).
fn http_configs(listeners: &[(&str, SocketAddr, &[SocketAddr], &str)]) -> Vec<vipd::config::HttpConfig> {
    let text: String = listeners
        .iter()
        .map(|(name, listen, backends, extra)| {
            let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
            format!(
                "[[http]]\nname = \"{name}\"\nlisten = \"{listen}\"\nbackends = [{}]\naccess_log = false\n{extra}\n",
                list.join(", ")
            )
        })
        .collect();
    vipd::config::parse(&text, Path::new("t.toml")).expect("valid config").http
}

/// A loopback port nothing listens on now.
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_backends_in_place_and_adds_and_removes_listeners() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let health = "[http.health]\npath = \"/healthz\"\ninterval = \"100ms\"\nrise = 3\nfall = 1";
    // Started on a port of its own: a reload names the same address.
    let addr = free_port();
    let first = http_configs(&[("t", addr, &[a.addr, b.addr], health)]);
    let pool = ListenerPool::new(first[0].clone());
    let p =
        Proxy::start(1, vec![Listener { pool: pool.clone(), sockets: bind(addr, 1).expect("bind") }]).expect("start");
    b.down.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!pool.snapshot().backends[1].healthy, "b fails its checks");
    // A keep-alive client, and a request that will be in flight to a.
    let mut kept = TcpStream::connect(addr).await.expect("connect");
    let mut pending = Vec::new();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await.expect("write");
    assert_eq!(read_response(&mut kept, &mut pending, false).await.2, b"a");
    let slow = tokio::spawn(get(addr, "/slow?800", &[]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let requests_to_a = pool.snapshot().backends[0].requests;

    // c added, b reweighted: b keeps its verdict (down, no fresh start as
    // healthy), a keeps its counters.
    let said = p.apply(&http_configs(&[("t", addr, &[a.addr, b.addr, c.addr], health)])).expect("applied");
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains(&format!("+{}", c.addr)), "{said:?}");
    let snap = pool.snapshot();
    assert_eq!(snap.generation, 1);
    assert_eq!(snap.backends.iter().map(|b| b.healthy).collect::<Vec<_>>(), [true, false, true], "{snap:?}");
    assert_eq!(snap.backends[0].requests, requests_to_a);
    assert_eq!(snap.backends[0].in_flight, 1, "the slow request is still counted");

    // a removed while its request is in flight: that one finishes on a,
    // the keep-alive client's next request goes to c (b is still down).
    p.apply(&http_configs(&[("t", addr, &[b.addr, c.addr], health)])).expect("applied");
    for _ in 0..4 {
        kept.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await.expect("write");
        let (status, _, body) = read_response(&mut kept, &mut pending, false).await;
        assert_eq!((status, body.as_slice()), (200, b"c".as_slice()));
    }
    let (status, _, body) = slow.await.expect("slow request");
    assert_eq!((status, body.as_str()), (200, "a"), "the request in flight finished on the backend it started with");
    // b comes back after rise = 3 passes, not at once.
    b.down.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(pool.snapshot().backends[0].healthy, "b back after its checks");

    // A new listener binds and serves; removed, it stops accepting.
    let second = free_port();
    let both = [("t", addr, &[b.addr, c.addr][..], health), ("u", second, &[c.addr][..], "")];
    let said = p.apply(&http_configs(&both)).expect("applied");
    assert!(said.iter().any(|s| s.contains("\"u\": added")), "{said:?}");
    assert_eq!(get(second, "/", &[]).await.2, "c");
    assert_eq!(p.listeners().list().len(), 2);
    // A port that cannot be bound refuses the reload, and nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let third = taken.local_addr().expect("addr");
    let clash = [("t", addr, &[a.addr][..], ""), ("w", third, &[c.addr][..], "")];
    let refused = p.apply(&http_configs(&clash)).expect_err("refused");
    assert!(refused.contains("cannot listen"), "{refused}");
    assert_eq!(pool.snapshot().generation, 2, "nothing changed");
    assert_eq!(p.listeners().list().len(), 2);
    p.apply(&http_configs(&[("t", addr, &[b.addr, c.addr], health)])).expect("applied");
    assert_eq!(p.listeners().list().len(), 1);
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(second).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "a removed listener stops accepting");
    // The first listener moves to another port: the new one serves, the old
    // one stops.
    let moved = free_port();
    p.apply(&http_configs(&[("t", moved, &[b.addr, c.addr], health)])).expect("applied");
    let (status, _, _) = get(moved, "/", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(pool.snapshot().listen, moved);
    p.shutdown();
    for x in [a, b, c] {
        x.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_what_the_proxy_did() {
    let a = backend("a").await;
    let (addr, _pool, p) = proxy(&[a.addr], "retries = 0");
    for _ in 0..5 {
        assert_eq!(get(addr, "/", &[]).await.0, 200);
    }
    assert_eq!(get(addr, "/fail", &[]).await.0, 500);
    // One the proxy answers itself: a bad request head.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(out.starts_with(b"HTTP/1.1 400"), "{:?}", String::from_utf8_lossy(&out));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let sources = vipd::control::Sources {
        vrrp: Default::default(),
        http: p.listeners(),
        groups: Vec::new(),
        announce: Vec::new(),
        config: vipd::control::ConfigState::new(Path::new("t.toml")),
    };
    let text = vipd::metrics::render(sources.status(), sources.http.list());
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
    let value = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                other => panic!("{name}: {other:?}"),
            })
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };
    let backend = a.addr.to_string();
    let b = [("listener", "t"), ("backend", backend.as_str())];
    assert_eq!(value("vipd_http_backend_requests_total", &b), 6.0);
    assert_eq!(value("vipd_http_backend_responses_total", &[b[0], b[1], ("class", "2xx")]), 5.0);
    assert_eq!(value("vipd_http_backend_responses_total", &[b[0], b[1], ("class", "5xx")]), 1.0);
    assert_eq!(value("vipd_http_responses_total", &[("listener", "t"), ("class", "4xx")]), 1.0, "the proxy's own 400");
    assert_eq!(value("vipd_http_responses_total", &[("listener", "t"), ("class", "2xx")]), 5.0);
    assert_eq!(value("vipd_http_connections_accepted_total", &[("listener", "t")]), 7.0);
    assert!(value("vipd_http_sent_bytes_total", &[("listener", "t")]) >= 5.0);
    assert_eq!(value("vipd_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    assert_eq!(value("vipd_config_last_reload_successful", &[]), 1.0);
    let hist = scrape
        .samples
        .iter()
        .find(|s| s.metric == "vipd_http_backend_response_seconds" && s.labels.get("backend") == Some(backend.as_str()))
        .unwrap_or_else(|| panic!("no response-time histogram in\n{text}"));
    let prometheus_parse::Value::Histogram(buckets) = &hist.value else { panic!("{hist:?}") };
    assert!(text.contains("le=\"+Inf\""), "{text}");
    let inf = buckets.iter().find(|c| c.less_than.is_infinite()).map(|c| c.count);
    assert_eq!(inf, Some(6.0), "every backend answer timed: {buckets:?}");
    assert!(text.ends_with("# EOF\n"));
    p.shutdown();
    a.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_reaches_the_backend_with_one_request_id() {
    let a = backend("a").await;
    let (addr, _, p) = proxy(&[a.addr], "");
    let id_of = |body: &str| {
        let ids: Vec<String> =
            body.lines().filter_map(|l| l.strip_prefix("x-request-id: ")).map(str::to_string).collect();
        assert_eq!(ids.len(), 1, "{body}");
        ids[0].clone()
    };
    // None sent: one of ours, 16 hex digits, new each time.
    let (_, _, body) = get(addr, "/headers", &[]).await;
    let ours = id_of(&body);
    assert!(ours.len() == 16 && ours.bytes().all(|b| b.is_ascii_hexdigit()), "{ours}");
    assert_ne!(id_of(&get(addr, "/headers", &[]).await.2), ours);
    // A valid one is kept; an invalid one is replaced.
    assert_eq!(id_of(&get(addr, "/headers", &[("X-Request-Id", "trace-7f3e:1")]).await.2), "trace-7f3e:1");
    assert_ne!(id_of(&get(addr, "/headers", &[("X-Request-Id", "a\"b")]).await.2), "a\"b");
    p.shutdown();
    a.kill();
}

/// `redirect_https`: a 308 to the same host (without its port) and path,
/// kept alive when the request has no body; the exempt prefix is proxied;
/// a request with a body gets the answer and a closed connection, unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_https_answers_308_and_spares_the_exempt_paths() {
    let a = backend("a").await;
    let extra = "redirect_https = true\nredirect_https_except = [\"/healthz\", \"/.well-known/acme-challenge/\"]";
    let (addr, pool, p) = proxy(&[a.addr], extra);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /shop?item=1 HTTP/1.1\r\nHost: shop.test:80\r\n\r\nGET /.well-known/acme-challenge/t HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    assert!(
        text.starts_with("HTTP/1.1 308 Permanent Redirect\r\nlocation: https://shop.test/shop?item=1\r\n"),
        "{text}"
    );
    // The second request on the same connection went to the backend.
    assert!(text.ends_with("\r\n\r\na"), "{text}");
    assert_eq!(pool.snapshot().backends[0].requests, 1);

    let (status, head, _) = get(addr, "/healthz", &[]).await;
    assert_eq!(status, 200, "{head}");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /form HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\n\r\nab").await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    assert!(text.starts_with("HTTP/1.1 308") && text.contains("connection: close\r\n"), "{text}");
    assert_eq!(pool.snapshot().backends[0].requests, 2, "the POST never reached the backend");
    p.shutdown();
    a.task.abort();
}

/// RFC 9110 §6.6.1: an answer the backend sent without a Date reaches an
/// HTTP/1 client dated by the proxy; one with a Date keeps it, alone; and
/// the proxy's own answers are dated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_answers_without_a_date_get_the_proxys() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 4096];
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
            b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 2\r\n\r\nok",
        ] {
            let n = conn.read(&mut buf).await.expect("read");
            assert!(n > 0, "the proxy closed");
            conn.write_all(answer).await.expect("write");
        }
    });
    let (addr, _, p) = proxy(&[backend], "");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut pending = Vec::new();
    let mut dates = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let (status, head, body) = read_response(&mut s, &mut pending, false).await;
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]), "{head}");
        let found: Vec<String> = head.lines().filter_map(|l| l.strip_prefix("date: ")).map(str::to_string).collect();
        assert_eq!(found.len(), 1, "one Date: {head}");
        dates.push(found[0].clone());
    }
    // (read_response lowercases the head.)
    let now = std::time::SystemTime::now();
    let recent = (0..5).map(|s| httpdate::fmt_http_date(now - Duration::from_secs(s)).to_lowercase());
    assert!(recent.into_iter().any(|d| d == dates[0]), "the proxy's date is now: {:?}", dates[0]);
    assert_eq!(dates[1], "sun, 06 nov 1994 08:49:37 gmt", "the backend's date kept (head lowercased)");
    server.await.expect("backend");
    // The backend is gone: the proxy's own 502/503 is dated too.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let (status, head, _) = read_response(&mut s, &mut pending, false).await;
    assert!(status == 502 || status == 503, "{head}");
    assert!(head.lines().any(|l| l.starts_with("date: ")), "{head}");
    p.shutdown();
}
