//! What an `[[http]]` listener runs with: its backends, timeouts, limits,
//! health checks and TLS, as typed values. `config` reads them from the TOML
//! file; the proxy's modules take them from here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::location::Location;
use crate::proxy::balance::Algorithm;

/// One `[[http]]` listener and its backend pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Name used in logs and status.
    pub name: String,
    /// Address to listen on (wildcard, or a VIP: bound with IP_FREEBIND).
    pub listen: SocketAddr,
    /// Selection algorithm.
    pub balance: Algorithm,
    /// The app servers.
    pub backends: Vec<BackendConfig>,
    /// Time to establish an upstream connection before trying another backend.
    pub connect_timeout: Duration,
    /// Time for the backend's response head; past it the client gets a 504.
    pub response_timeout: Duration,
    /// Time a client has to send a complete request head, counted from the
    /// connection's start or from the request's first byte.
    pub client_header_timeout: Duration,
    /// Time an open connection may wait for the next request, and a client
    /// may take to read what it is sent.
    pub idle_timeout: Duration,
    /// Longest silence (both ways) on an upgraded connection (WebSocket).
    pub tunnel_timeout: Duration,
    /// In-flight requests get this long to finish on shutdown.
    pub drain_timeout: Duration,
    /// Largest accepted request head, in bytes (431 past it).
    pub max_header_size: usize,
    /// Concurrent client connections; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Concurrent connections in use to each backend (HAProxy's `maxconn`);
    /// 0 = no limit. Requests past it wait for a free one.
    pub max_conns: usize,
    /// How long a request waits for a backend connection slot; past it, 503.
    pub queue_timeout: Duration,
    /// Streams an HTTP/2 client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub h2_max_concurrent_streams: u32,
    /// Extra attempts on other backends for a request that failed to be sent.
    pub retries: u32,
    /// One `access` log line per request.
    pub access_log: bool,
    /// Active checks; `None` = backends are healthy unless passively ejected.
    pub health: Option<HealthConfig>,
    /// Consecutive failures (connect errors or 5xx) that eject a backend; 0 = never.
    pub eject_after: u32,
    /// How long an ejected backend stays out before it may return.
    pub eject_cooldown: Duration,
    /// TLS termination (`[[http.tls]]`); `None` = plain HTTP.
    pub tls: Option<TlsConfig>,
    /// A plain listener that sends clients to HTTPS instead (`redirect_https`).
    pub redirect_https: Option<RedirectHttps>,
    /// Backends reached over TLS (`backend_tls`).
    pub backend_tls: Option<BackendTlsConfig>,
}

/// `backend_tls = { ca = "...", server_name = "...", verify = true }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTlsConfig {
    /// The CA (PEM, one or more certificates) that signs the backends' certificates.
    pub ca: Option<PathBuf>,
    /// The name their certificates must carry; `None`: each backend's IP address.
    pub server_name: Option<String>,
    /// Check the backends' certificates (`false` must be spelled out).
    pub verify: bool,
}

/// `redirect_https = true` and the keys that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectHttps {
    /// The HTTPS port in the `Location` (443 is left out of it).
    pub port: u16,
    /// Paths (prefixes) that are proxied as usual, e.g. health checks and
    /// ACME http-01 challenges.
    pub except: Vec<String>,
}

impl RedirectHttps {
    /// Whether a request for `path` (origin-form) is redirected. An
    /// exempt prefix matches whole segments (`/healthz` is not
    /// `/healthzfoo`), and a path with a dot-segment or an encoded dot or
    /// slash is never exempt: a backend that normalises it could serve
    /// something else over plain HTTP.
    pub fn applies_to(&self, path: &[u8]) -> bool {
        let path = &path[..path.iter().position(|&b| b == b'?').unwrap_or(path.len())];
        let lower = path.to_ascii_lowercase();
        let tricky = path.split(|&b| b == b'/').any(|s| s == b"." || s == b"..")
            || lower.windows(3).any(|w| w == b"%2e" || w == b"%2f" || w == b"%5c");
        if tricky {
            return true;
        }
        let exempt = |p: &String| {
            let p = p.as_bytes();
            path.starts_with(p) && (p.ends_with(b"/") || path.len() == p.len() || path[p.len()] == b'/')
        };
        !self.except.iter().any(exempt)
    }
}

/// A listener's TLS: its certificates and handshake settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// One per `[[http.tls]]`, in file order; the first is the default.
    pub certificates: Vec<CertificateFiles>,
    /// The oldest protocol version offered.
    pub min_version: TlsVersion,
    /// ALPN protocols offered, in the server's order of preference.
    pub alpn: Vec<Alpn>,
    /// Refuse a handshake whose SNI names no certificate (instead of
    /// answering with the first).
    pub sni_strict: bool,
}

/// One `[[http.tls]]`: a certificate chain and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Where the table is in the config file, for messages.
    pub at: Location,
}

/// `tls_min_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

/// One `alpn` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `h2`: HTTP/2 over TLS.
    H2,
    /// `http/1.1`.
    Http11,
}

impl Alpn {
    /// The protocol id on the wire.
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http11 => b"http/1.1",
        }
    }
}

/// One backend of an `[[http]]` pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendConfig {
    /// Where it listens.
    pub address: SocketAddr,
    /// Relative share of requests, 1..=1000.
    pub weight: u32,
}

/// `[http.health]`: active HTTP checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Path requested with GET; a 2xx or 3xx answer is healthy.
    pub path: String,
    /// Time between checks of one backend.
    pub interval: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Consecutive passes to become healthy.
    pub rise: u32,
    /// Consecutive failures to become unhealthy.
    pub fall: u32,
}
