//! Load generator for `netns-tests/bench-tls.sh`: TLS handshakes against one
//! address, the same client (rustls) for every proxy under test, on one
//! thread. h2load and wrk reuse connections or cannot resume sessions;
//! this measures handshakes as such.
//!
//! ```text
//! tls_load ADDR SNI CA_PEM full|resumed CONCURRENCY SECONDS
//!     each task (a client of its own, with its own session store):
//!     connect, handshake, one GET with Connection: close, read to the
//!     end, again; `full` never resumes, `resumed` offers the session of
//!     the connection before. Prints
//!     "connections=N errors=E resumed=R p50_ms=X p99_ms=Y" (and, for
//!     `resumed`, how many connections had no ticket to offer).
//! tls_load ADDR SNI CA_PEM idle COUNT SECONDS
//!     opens COUNT connections (handshake and one keep-alive request
//!     each), holds them SECONDS, prints "open=N errors=E", then closes.
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

struct Target {
    addr: String,
    name: ServerName<'static>,
    host: String,
}

async fn connect(t: &Target, connector: &TlsConnector) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(&t.addr).await?;
    tcp.set_nodelay(true)?;
    connector.connect(t.name.clone(), tcp).await
}

/// One request; `close` asks the server to close after it and reads to the end.
async fn request(tls: &mut Tls, host: &str, close: bool) -> std::io::Result<()> {
    let conn = if close { "close" } else { "keep-alive" };
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: {conn}\r\n\r\n").as_bytes()).await?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut got = Vec::new();
    loop {
        let n = match tls.read(&mut buf).await {
            Ok(n) => n,
            // A server closing without close_notify after a complete answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !got.is_empty() => 0,
            Err(e) => return Err(e),
        };
        got.extend_from_slice(&buf[..n]);
        if n == 0 || (!close && complete(&got)) {
            break;
        }
    }
    if !got.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("answer: {:?}", String::from_utf8_lossy(&got[..got.len().min(40)]))));
    }
    Ok(())
}

/// A response with a Content-Length whose body has all come.
fn complete(got: &[u8]) -> bool {
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let len = head.lines().find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()));
    len.is_some_and(|n| got.len() >= end + 4 + n)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, sni, ca, mode, n, secs] = &args[..] else {
        eprintln!("usage: tls_load ADDR SNI CA_PEM full|resumed|idle N SECONDS");
        std::process::exit(2);
    };
    let n: usize = n.parse()?;
    let secs: f64 = secs.parse()?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let missed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Each task is a client of its own (a browser): its own session store.
    let connectors = {
        let missed = Arc::clone(&missed);
        let full = mode == "full";
        move || {
            let mut c = config.clone();
            c.resumption = if full {
                Resumption::disabled()
            } else {
                Resumption::store(Arc::new(CountingStore::new(Arc::clone(&missed))))
            };
            TlsConnector::from(Arc::new(c))
        }
    };
    let target = Arc::new(Target { addr: addr.clone(), name: ServerName::try_from(sni.clone())?, host: sni.clone() });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        match mode.as_str() {
            "full" | "resumed" => {
                handshakes(target, connectors, n, Duration::from_secs_f64(secs)).await;
                if mode == "resumed" {
                    println!("no_ticket_to_offer={}", missed.load(std::sync::atomic::Ordering::Relaxed));
                }
            }
            "idle" => idle(target, connectors(), n, Duration::from_secs_f64(secs)).await,
            other => {
                eprintln!("unknown mode {other}");
                std::process::exit(2);
            }
        }
    });
    Ok(())
}

/// The in-memory session store, counting the connections that found no
/// TLS 1.3 ticket to offer (a full handshake the server could not avoid).
#[derive(Debug)]
struct CountingStore {
    inner: rustls::client::ClientSessionMemoryCache,
    missed: Arc<std::sync::atomic::AtomicU64>,
}

impl CountingStore {
    fn new(missed: Arc<std::sync::atomic::AtomicU64>) -> Self {
        CountingStore { inner: rustls::client::ClientSessionMemoryCache::new(4), missed }
    }
}

impl rustls::client::ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(&self, name: ServerName<'static>, v: rustls::client::Tls12ClientSessionValue) {
        self.inner.set_tls12_session(name, v)
    }
    fn tls12_session(&self, name: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(&self, name: ServerName<'static>, v: rustls::client::Tls13ClientSessionValue) {
        self.inner.insert_tls13_ticket(name, v)
    }
    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<rustls::client::Tls13ClientSessionValue> {
        let t = self.inner.take_tls13_ticket(name);
        if t.is_none() {
            self.missed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        t
    }
}

async fn handshakes(target: Arc<Target>, connectors: impl Fn() -> TlsConnector, tasks: usize, run: Duration) {
    let deadline = Instant::now() + run;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (target, connector) = (Arc::clone(&target), connectors());
        set.spawn(async move {
            let (mut lat, mut errors, mut resumed) = (Vec::new(), 0u64, 0u64);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let done = async {
                    let mut tls = connect(&target, &connector).await?;
                    let kind = tls.get_ref().1.handshake_kind();
                    request(&mut tls, &target.host, true).await?;
                    Ok::<_, std::io::Error>(kind)
                };
                match tokio::time::timeout(Duration::from_secs(5), done).await {
                    Ok(Ok(kind)) => {
                        lat.push(t0.elapsed());
                        resumed += u64::from(kind == Some(HandshakeKind::Resumed));
                    }
                    Ok(Err(e)) => {
                        if errors == 0 {
                            eprintln!("first error: {e}");
                        }
                        errors += 1;
                    }
                    Err(_) => {
                        if errors == 0 {
                            eprintln!("first error: no answer within 5 s");
                        }
                        errors += 1;
                    }
                }
            }
            (lat, errors, resumed)
        });
    }
    let (mut lat, mut errors, mut resumed) = (Vec::new(), 0, 0);
    while let Some(Ok((l, e, r))) = set.join_next().await {
        lat.extend(l);
        errors += e;
        resumed += r;
    }
    lat.sort();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)));
    let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    println!(
        "connections={} errors={errors} resumed={resumed} p50_ms={:.3} p99_ms={:.3}",
        lat.len(),
        ms(pct(0.5)),
        ms(pct(0.99))
    );
}

async fn idle(target: Arc<Target>, connector: TlsConnector, count: usize, hold: Duration) {
    let mut open = Vec::with_capacity(count);
    let mut errors = 0;
    // In batches, so that the listen backlogs keep up.
    for chunk in (0..count).collect::<Vec<_>>().chunks(200) {
        let mut set = tokio::task::JoinSet::new();
        for _ in chunk {
            let (target, connector) = (Arc::clone(&target), connector.clone());
            set.spawn(async move {
                let mut tls = connect(&target, &connector).await?;
                request(&mut tls, &target.host, false).await?;
                Ok::<_, std::io::Error>(tls)
            });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(tls)) => open.push(tls),
                _ => errors += 1,
            }
        }
    }
    println!("open={} errors={errors}", open.len());
    tokio::time::sleep(hold).await;
    drop(open);
}
