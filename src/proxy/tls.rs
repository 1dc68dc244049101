//! TLS termination for a listener: its certificates (read from files,
//! checked, picked by SNI), the rustls server configuration built over
//! them, and their reload. A reload swaps the certificates and settings
//! under the same session-ticket keys and session cache, so clients keep
//! resuming across it; handshakes in progress keep what they started with.
//! The handshakes themselves are done by the server (`server.rs`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{
    ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls::{HandshakeKind, ServerConfig};
use serde::Serialize;
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use tracing::warn;

// The crypto provider: aws-lc-rs, unless built with the `tls-ring` feature
// (only to compare the two: see "TLS" in the README).
#[cfg(not(feature = "tls-ring"))]
use rustls::crypto::aws_lc_rs as crypto;
#[cfg(feature = "tls-ring")]
use rustls::crypto::ring as crypto;

use crate::location::Location;
use crate::proxy::params::{BackendTlsConfig, HttpConfig, TlsConfig, TlsVersion};

/// A certificate expiring sooner than this is reported by `vipd check` and
/// logged at start and reload.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// TLS 1.2 sessions kept for resumption by session id (TLS 1.3 and
/// ticket-capable 1.2 clients resume by ticket and need no server state).
const SESSION_CACHE: usize = 20_000;

/// A certificate that cannot be used, and where it is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// The `[[http.tls]]` table in the config file.
    pub at: Location,
    /// The file at fault.
    pub file: PathBuf,
    /// What is wrong with it.
    pub why: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: [[http.tls]] {}: {}", self.at.line, self.at.col, self.file.display(), self.why)
    }
}

impl std::error::Error for TlsError {}

/// One loaded certificate chain and key.
#[derive(Debug)]
struct Certificate {
    /// Its DNS names (subjectAltName), lowercase; `*.` ones are wildcards.
    names: Vec<String>,
    key: Arc<CertifiedKey>,
    /// Validity of the leaf, seconds since the Unix epoch.
    not_before: i64,
    not_after: i64,
    file: PathBuf,
}

/// What `vipd check`, the logs and `/status` say about one certificate.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CertificateReport {
    /// The certificate file.
    pub cert: PathBuf,
    /// The names it covers.
    pub names: Vec<String>,
    /// When it expires, seconds since the Unix epoch.
    pub not_after: i64,
    /// Something to act on (expires soon, no names), if any.
    pub warning: Option<String>,
}

/// A listener's certificates, read and checked: what a reload installs.
#[derive(Debug)]
pub struct Loaded {
    certs: Vec<Certificate>,
    settings: TlsConfig,
}

impl Loaded {
    /// How many certificates.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// None (never: a TLS listener has at least one).
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// What each certificate covers, and what to warn about.
    pub fn report(&self, now: SystemTime) -> Vec<CertificateReport> {
        let now = unix(now);
        self.certs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let left = c.not_after - now;
                let warning = if left < 0 {
                    Some("expired: clients refuse it".to_string())
                } else if now < c.not_before {
                    Some("not valid yet: clients refuse it (or this host's clock is behind)".to_string())
                } else if left < EXPIRY_WARNING.as_secs() as i64 {
                    Some(format!("expires in {} days", left / 86_400))
                } else if c.names.is_empty() {
                    Some(if i == 0 {
                        "no DNS names (subjectAltName): served only as the default certificate".to_string()
                    } else {
                        "no DNS names (subjectAltName): never picked (only the first one is the default)".to_string()
                    })
                } else {
                    None
                };
                CertificateReport { cert: c.file.clone(), names: c.names.clone(), not_after: c.not_after, warning }
            })
            .collect()
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// The crypto provider every listener uses (see the README for why this
/// one), with its AEAD suites in the order the server picks from (its
/// order decides, not the client's): AES-128-GCM before AES-256-GCM (as
/// strong as needed here, and cheaper), ChaCha20-Poly1305 last.
fn provider() -> Arc<CryptoProvider> {
    use crypto::cipher_suite as suite;
    let mut provider = crypto::default_provider();
    provider.cipher_suites = vec![
        suite::TLS13_AES_128_GCM_SHA256,
        suite::TLS13_AES_256_GCM_SHA384,
        suite::TLS13_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// Whether [`load`] refuses a certificate outside its validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// `vipd check`: an expired or not-yet-valid certificate is an error.
    Enforce,
    /// Start and reload: it is served, with a warning (as HAProxy does), so
    /// that a forgotten renewal or a clock behind at boot does not keep
    /// VRRP and every other listener down, nor refuse unrelated reloads.
    Warn,
}

/// Reads and checks the certificates of `settings`: each file readable,
/// each chain PEM with its leaf first, each key usable and matching its
/// leaf, and (with [`Validity::Enforce`]) each leaf valid at `now`.
pub fn load(settings: &TlsConfig, now: SystemTime, validity: Validity) -> Result<Loaded, TlsError> {
    let provider = provider();
    let now = unix(now);
    let mut certs = Vec::new();
    for files in &settings.certificates {
        let fail = |file: &Path, why: String| TlsError { at: files.at, file: file.to_path_buf(), why };
        let read = |file: &Path| std::fs::read(file).map_err(|e| fail(file, format!("cannot read: {e}")));
        let pem = read(&files.cert)?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(&files.cert, format!("not a PEM certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(fail(&files.cert, "no certificate in the file".into()));
        }
        let key_pem = read(&files.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| fail(&files.key, format!("not a PEM private key: {e}")))?;
        let (names, ((not_before, from), (not_after, to))) =
            leaf_facts(&chain[0]).map_err(|why| fail(&files.cert, why))?;
        if validity == Validity::Enforce && now < not_before {
            return Err(fail(&files.cert, format!("not valid before {from}")));
        }
        if validity == Validity::Enforce && now > not_after {
            return Err(fail(&files.cert, format!("expired on {to}")));
        }
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                fail(&files.key, format!("does not match the certificate {}", files.cert.display()))
            }
            e => fail(&files.key, format!("cannot use the key: {e}")),
        })?;
        certs.push(Certificate { names, key: Arc::new(key), not_before, not_after, file: files.cert.clone() });
    }
    Ok(Loaded { certs, settings: settings.clone() })
}

/// A listener's TLS material, read from its files: what start and reload
/// install with [`ListenerPool::set_tls`](super::backends::ListenerPool::set_tls).
#[derive(Debug, Default)]
pub struct Prepared {
    /// Its certificates, if it terminates TLS.
    pub certificates: Option<Loaded>,
    /// How it reaches its backends over TLS, if it does.
    pub backends: Option<Arc<BackendTls>>,
}

/// Reads what listener `h` needs of TLS (its certificates, its backends'
/// CA), and logs what the operator should act on (a certificate expiring
/// soon or without names, backend certificates not verified).
pub fn prepare(h: &HttpConfig, now: SystemTime) -> Result<Prepared, String> {
    let certificates = match &h.tls {
        None => None,
        Some(settings) => {
            let loaded = load(settings, now, Validity::Warn).map_err(|e| format!("http {:?}: {e}", h.name))?;
            for r in loaded.report(now) {
                if let Some(w) = &r.warning {
                    warn!(listener = %h.name, cert = %r.cert.display(), "TLS certificate: {w}");
                }
            }
            Some(loaded)
        }
    };
    let backends = match &h.backend_tls {
        None => None,
        Some(b) => {
            if !b.verify {
                warn!(listener = %h.name, "backend_tls: verify = false: the backends' certificates are not checked");
            }
            Some(Arc::new(BackendTls::new(b).map_err(|e| format!("http {:?}: backend_tls: {e}", h.name))?))
        }
    };
    Ok(Prepared { certificates, backends })
}

/// How a listener reaches its backends over TLS (`backend_tls`).
pub struct BackendTls {
    connector: TlsConnector,
    /// The name their certificates must carry; `None`: each one's IP address.
    name: Option<ServerName<'static>>,
    /// The same, as configured.
    server_name: Option<String>,
}

impl fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendTls").field("name", &self.name).finish_non_exhaustive()
    }
}

impl BackendTls {
    /// A client that trusts the CA file of `settings` (or, with `verify =
    /// false`, any certificate) and offers HTTP/1.1 by ALPN.
    pub fn new(settings: &BackendTlsConfig) -> Result<BackendTls, String> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match (&settings.ca, settings.verify) {
            (_, false) => {
                builder.dangerous().with_custom_certificate_verifier(Arc::new(Unverified(Arc::clone(&provider))))
            }
            (Some(ca), true) => {
                let pem = std::fs::read(ca).map_err(|e| format!("ca {}: cannot read: {e}", ca.display()))?;
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&pem) {
                    let c = c.map_err(|e| format!("ca {}: not PEM: {e}", ca.display()))?;
                    roots.add(c).map_err(|e| format!("ca {}: {e}", ca.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("ca {}: no certificate in the file", ca.display()));
                }
                builder.with_root_certificates(roots)
            }
            (None, true) => return Err("ca is required unless verify = false".into()),
        };
        let mut config = builder.with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = match &settings.server_name {
            None => None,
            Some(n) => Some(ServerName::try_from(n.clone()).map_err(|e| format!("server_name {n:?}: {e}"))?),
        };
        Ok(BackendTls {
            connector: TlsConnector::from(Arc::new(config)),
            name,
            server_name: settings.server_name.clone(),
        })
    }

    /// The configured `server_name`, if any (health checks send it as Host).
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// TLS over `tcp` to the backend at `addr`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let name = self.name.clone().unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        self.connector.connect(name, tcp).await.map_err(|e| format!("TLS handshake with the backend: {e}"))
    }
}

/// `verify = false`: any certificate is taken; the handshake's signatures
/// are still checked (they prove nothing without trust, but keep the
/// handshake honest).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The leaf's DNS names and validity period (as Unix times and as text).
type Period = ((i64, String), (i64, String));

fn leaf_facts(der: &CertificateDer<'_>) -> Result<(Vec<String>, Period), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("the first certificate does not parse: {e}"))?;
    let validity = cert.validity();
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("bad subjectAltName: {e}")),
    };
    let (from, to) = (&validity.not_before, &validity.not_after);
    Ok((names, ((from.timestamp(), from.to_string()), (to.timestamp(), to.to_string()))))
}

/// Whether certificate name `pattern` covers `host` (both lowercase): the
/// same name, or a `*.` wildcard standing for exactly one leftmost label,
/// as browsers match (RFC 6125 §6.4.3; no partial-label wildcards).
pub fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == host,
    }
}

impl Loaded {
    /// The certificate for a client hello naming `sni`: an exact name
    /// before a wildcard, in file order; without a match the first, unless
    /// `sni_strict`.
    fn pick(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let found = sni.map(str::to_ascii_lowercase).and_then(|host| {
            let exact = self.certs.iter().find(|c| c.names.contains(&host));
            exact.or_else(|| {
                self.certs.iter().find(|c| c.names.iter().any(|n| n.starts_with("*.") && name_matches(n, &host)))
            })
        });
        match found {
            Some(c) => Some(&c.key),
            None if self.settings.sni_strict => None,
            None => self.certs.first().map(|c| &c.key),
        }
    }
}

/// Why handshakes failed, for `/status` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No handshake within `client_header_timeout`.
    Timeout,
    /// The SNI named no certificate and `sni_strict` is set.
    UnknownName,
    /// No protocol version, cipher suite, group or ALPN protocol in common.
    NoCommonParameters,
    /// The client sent an alert (e.g. it does not trust the certificate).
    ClientAlert,
    /// The client closed or reset the connection, or sent something else than TLS.
    Other,
}

impl Failure {
    /// Every reason, in `/status` order.
    pub const ALL: [Failure; 5] =
        [Failure::Timeout, Failure::UnknownName, Failure::NoCommonParameters, Failure::ClientAlert, Failure::Other];

    /// Its name in `/status` and `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::UnknownName => "unknown_name",
            Failure::NoCommonParameters => "no_common_parameters",
            Failure::ClientAlert => "client_alert",
            Failure::Other => "other",
        }
    }

    /// The reason for a failed accept.
    pub fn of(e: &std::io::Error) -> Failure {
        let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
            return Failure::Other;
        };
        match tls {
            rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => Failure::NoCommonParameters,
            rustls::Error::AlertReceived(_) => Failure::ClientAlert,
            rustls::Error::General(m) if m.contains("no server certificate") => Failure::UnknownName,
            _ => Failure::Other,
        }
    }
}

/// Handshake counters of one listener.
#[derive(Debug, Default)]
pub struct TlsMeter {
    full: AtomicU64,
    resumed: AtomicU64,
    failed: [AtomicU64; Failure::ALL.len()],
}

impl TlsMeter {
    /// A handshake that completed as `kind` says.
    pub fn handshake(&self, kind: Option<HandshakeKind>) {
        let c = if kind == Some(HandshakeKind::Resumed) { &self.resumed } else { &self.full };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A handshake that failed.
    pub fn failed(&self, why: Failure) {
        self.failed[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The TLS part of a listener's `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct TlsSnapshot {
    /// Full handshakes completed.
    pub handshakes_full: u64,
    /// Resumed handshakes completed (session ticket or id).
    pub handshakes_resumed: u64,
    /// Failed handshakes by reason.
    pub failures: std::collections::BTreeMap<&'static str, u64>,
    /// The certificates being served.
    pub certificates: Vec<CertificateReport>,
}

/// Picks the certificate of the current [`Loaded`] for each handshake.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<Loaded>>,
}

impl Resolver {
    fn current(&self) -> Arc<Loaded> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current().pick(hello.server_name()).cloned()
    }
}

/// A listener's TLS, across reloads.
pub struct TlsServer {
    resolver: Arc<Resolver>,
    acceptor: RwLock<TlsAcceptor>,
    /// Kept across reloads, so that tickets issued before one still resume.
    tickets: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
    meter: TlsMeter,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServer").field("resolver", &self.resolver).field("meter", &self.meter).finish()
    }
}

impl TlsServer {
    /// Serves `loaded`, with new session-ticket keys (rotated every 6
    /// hours, as rustls does) and an empty session cache.
    pub fn new(loaded: Loaded) -> Result<Arc<TlsServer>, String> {
        let tickets = crypto::Ticketer::new().map_err(|e| format!("session tickets: {e}"))?;
        let sessions: Arc<dyn StoresServerSessions> = ServerSessionMemoryCache::new(SESSION_CACHE);
        let settings = loaded.settings.clone();
        let resolver = Arc::new(Resolver { current: RwLock::new(Arc::new(loaded)) });
        let config = server_config(&settings, &resolver, &tickets, &sessions)?;
        Ok(Arc::new(TlsServer {
            resolver,
            acceptor: RwLock::new(TlsAcceptor::from(config)),
            tickets,
            sessions,
            meter: TlsMeter::default(),
        }))
    }

    /// Serves `loaded` from now on (a reload): new handshakes get its
    /// certificates and settings, with the same ticket keys and cache.
    pub fn install(&self, loaded: Loaded) -> Result<(), String> {
        let config = server_config(&loaded.settings, &self.resolver, &self.tickets, &self.sessions)?;
        *self.resolver.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = TlsAcceptor::from(config);
        Ok(())
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Its counters.
    pub fn meter(&self) -> &TlsMeter {
        &self.meter
    }

    /// For `/status` and `/metrics`.
    pub fn snapshot(&self) -> TlsSnapshot {
        let m = &self.meter;
        TlsSnapshot {
            handshakes_full: m.full.load(Ordering::Relaxed),
            handshakes_resumed: m.resumed.load(Ordering::Relaxed),
            failures: Failure::ALL.iter().map(|f| (f.name(), m.failed[*f as usize].load(Ordering::Relaxed))).collect(),
            certificates: self.resolver.current().report(SystemTime::now()),
        }
    }
}

/// rustls's configuration for `settings`: TLS 1.3 (and 1.2 unless
/// `tls_min_version = "1.3"`) with the provider's suites, all AEAD; the
/// server's order of suites; ALPN as configured; no 0-RTT data (it can be
/// replayed). rustls has no renegotiation and no compression at all.
fn server_config(
    settings: &TlsConfig,
    resolver: &Arc<Resolver>,
    tickets: &Arc<dyn ProducesTickets>,
    sessions: &Arc<dyn StoresServerSessions>,
) -> Result<Arc<ServerConfig>, String> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(resolver) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = settings.alpn.iter().map(|a| a.id().to_vec()).collect();
    config.ignore_client_order = true;
    config.ticketer = Arc::clone(tickets);
    config.session_storage = Arc::clone(sessions);
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_stand_for_one_label() {
        assert!(name_matches("example.org", "example.org"));
        assert!(name_matches("*.example.org", "www.example.org"));
        assert!(!name_matches("*.example.org", "example.org"));
        assert!(!name_matches("*.example.org", "a.b.example.org"));
        assert!(!name_matches("*.example.org", ".example.org"));
        assert!(!name_matches("*.example.org", "wwwexample.org"));
        assert!(!name_matches("www.example.org", "example.org"));
    }
}
