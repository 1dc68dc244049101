//! The TOML configuration: serde schema, defaults and validation into a typed
//! [`Config`]. Every error names the key, the value and `file:line:col`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use crate::location::Location;
pub use crate::net::addr::VirtualIp;
pub use crate::proxy::params::{
    Alpn, BackendConfig, BackendTlsConfig, CertificateFiles, HealthConfig, HttpConfig, RedirectHttps, TlsConfig,
    TlsVersion,
};

use crate::announce::AnnounceSpec;
use crate::net::addr::Vmac;
use crate::proxy::balance::Algorithm;
use crate::vrrp::notify::Hooks;
use crate::vrrp::packet::{Centiseconds, ChecksumForm, Family, Version};
use crate::vrrp::router::{is_link_local, InstanceSpec};
use crate::vrrp::sync::GroupSpec;
use crate::vrrp::track::{ScriptSpec, TrackerSpec, Watched};

/// A config file that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not parse or a value is out of range.
    #[error("{path}:{line}:{col}: {message}", line = at.line, col = at.col)]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where in it.
        at: Location,
        /// What is wrong, naming the key and the value.
        message: String,
    },
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Status/metrics endpoint.
    pub control: ControlConfig,
    /// VRRP instances.
    pub vrrp: Vec<VrrpConfig>,
    /// HTTP load-balancing listeners.
    pub http: Vec<HttpConfig>,
    /// Check scripts that trackers name: `[[track_script]]` and those
    /// defined inline in a `track_scripts` entry.
    pub scripts: Vec<ScriptSpec>,
    /// Instances that move together.
    pub sync_groups: Vec<GroupSpec>,
    /// Active-active announcements (`[[announce]]`).
    pub announce: Vec<AnnounceSpec>,
}

/// `[control]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// Where `/status`, `/metrics` and `/` are served.
    pub listen: SocketAddr,
    /// The Unix socket for the operator's commands (mode 0600).
    pub socket: PathBuf,
}

/// Where the operator's commands go unless `[control] socket` says.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/vipd/control.sock";

/// One `[[vrrp]]` instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpConfig {
    /// What the router runs: name, VRID, priority, timing, peers.
    pub spec: InstanceSpec,
    /// Interface the instance runs on.
    pub interface: String,
    /// Where `interface` was written, for errors found at run time.
    pub interface_at: Location,
    /// Addresses claimed as master, with their prefixes.
    pub virtual_ips: Vec<VirtualIp>,
    /// What lowers the priority (or means Fault) while it fails.
    pub trackers: Vec<TrackerSpec>,
    /// Commands run on state changes.
    pub notify: Hooks,
    /// The macvlan with the virtual router MAC that holds the VIPs
    /// (`use_vmac`), if any.
    pub vmac: Option<Vmac>,
}

const DEFAULT_CONTROL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    control: Option<RawControl>,
    #[serde(default)]
    vrrp: Vec<RawVrrp>,
    #[serde(default)]
    http: Vec<RawHttp>,
    #[serde(default)]
    track_script: Vec<Spanned<RawScript>>,
    #[serde(default)]
    sync_group: Vec<RawSyncGroup>,
    #[serde(default)]
    announce: Vec<RawAnnounce>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnnounce {
    name: Spanned<String>,
    virtual_ips: Spanned<Vec<Spanned<String>>>,
    interface: Option<Spanned<String>>,
    #[serde(default)]
    track_http: Vec<Spanned<RawTrackHttp>>,
    #[serde(default)]
    track_interfaces: Vec<Spanned<RawTrackInterface>>,
    #[serde(default)]
    track_scripts: Vec<Spanned<RawScript>>,
    withdraw_delay: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSyncGroup {
    name: Spanned<String>,
    instances: Spanned<Vec<Spanned<String>>>,
    notify: Option<Spanned<Vec<String>>>,
    notify_master: Option<Spanned<Vec<String>>>,
    notify_backup: Option<Spanned<Vec<String>>>,
    notify_fault: Option<Spanned<Vec<String>>>,
    notify_stop: Option<Spanned<Vec<String>>>,
    notify_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScript {
    name: String,
    command: Option<Vec<String>>,
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<i64>,
    fall: Option<i64>,
    /// Only in a `track_scripts` entry.
    weight: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrackHttp {
    listener: String,
    min_healthy: Option<i64>,
    weight: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrackInterface {
    name: String,
    weight: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    name: Spanned<String>,
    listen: Spanned<String>,
    balance: Option<Spanned<String>>,
    backends: Spanned<Vec<Spanned<RawBackend>>>,
    connect_timeout: Option<Spanned<String>>,
    response_timeout: Option<Spanned<String>>,
    client_header_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    tunnel_timeout: Option<Spanned<String>>,
    drain_timeout: Option<Spanned<String>>,
    max_header_size: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    max_conns: Option<Spanned<i64>>,
    queue_timeout: Option<Spanned<String>>,
    h2_max_concurrent_streams: Option<Spanned<i64>>,
    retries: Option<Spanned<i64>>,
    access_log: Option<bool>,
    health: Option<RawHealth>,
    tls: Option<Vec<Spanned<RawTlsCert>>>,
    tls_min_version: Option<Spanned<String>>,
    alpn: Option<Spanned<Vec<Spanned<String>>>>,
    sni_strict: Option<Spanned<bool>>,
    redirect_https: Option<Spanned<bool>>,
    redirect_https_port: Option<Spanned<i64>>,
    redirect_https_except: Option<Spanned<Vec<Spanned<String>>>>,
    backend_tls: Option<Spanned<RawBackendTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackendTls {
    ca: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    verify: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTlsCert {
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawBackend {
    Address(String),
    Weighted { address: String, weight: Option<i64> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    eject_after: Option<Spanned<i64>>,
    eject_cooldown: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    listen: Option<Spanned<String>>,
    socket: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVrrp {
    name: Spanned<String>,
    interface: Spanned<String>,
    vrid: Spanned<i64>,
    priority: Spanned<i64>,
    advert_interval: Option<Spanned<String>>,
    version: Option<Spanned<i64>>,
    preempt: Option<bool>,
    preempt_delay: Option<Spanned<String>>,
    virtual_ips: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    unicast_peers: Vec<Spanned<String>>,
    unicast_source: Option<Spanned<String>>,
    link_local_vip: Option<Spanned<String>>,
    na_router_flag: Option<bool>,
    handover_relay: Option<bool>,
    use_vmac: Option<bool>,
    vmac_interface: Option<Spanned<String>>,
    garp_count: Option<Spanned<i64>>,
    garp_interval: Option<Spanned<String>>,
    garp_repeat_delay: Option<Spanned<String>>,
    garp_refresh: Option<Spanned<String>>,
    v3_checksum_pseudo_header: Option<bool>,
    release_timeout: Option<Spanned<String>>,
    #[serde(default)]
    track_http: Vec<Spanned<RawTrackHttp>>,
    #[serde(default)]
    track_interfaces: Vec<Spanned<RawTrackInterface>>,
    #[serde(default)]
    track_scripts: Vec<Spanned<RawScript>>,
    notify: Option<Spanned<Vec<String>>>,
    notify_master: Option<Spanned<Vec<String>>>,
    notify_backup: Option<Spanned<Vec<String>>>,
    notify_fault: Option<Spanned<Vec<String>>>,
    notify_stop: Option<Spanned<Vec<String>>>,
    notify_timeout: Option<Spanned<String>>,
}

/// Why a running daemon cannot take `new` in place of `old` without a
/// restart, if it cannot: what a reload applies today is the `[[http]]`
/// listeners (any change: added, removed, moved, backends, settings),
/// `[[vrrp]]` instances added or removed (with their trackers; a new check
/// script changes `[[track_script]]`, which is refused), and each
/// remaining instance's own settings (priority, preempt, timing, VIPs,
/// gratuitous ARP, unicast peers, notify hooks). Instances are known by
/// name. `None`: it can.
pub fn reload_refusal(old: &Config, new: &Config) -> Option<String> {
    if old.control != new.control {
        return Some("[control] changed".into());
    }
    if old.announce != new.announce {
        return Some("[[announce]] changed (restart vipd, or `vipd upgrade`, to apply it)".into());
    }
    if old.sync_groups != new.sync_groups || old.scripts != new.scripts {
        return Some("[[sync_group]] or [[track_script]] changed".into());
    }
    // A removed instance holds its VRID until its successor speaks: another
    // one cannot take the VRID on that interface in the same reload.
    for n in new.vrrp.iter().filter(|n| !old.vrrp.iter().any(|o| o.spec.name == n.spec.name)) {
        let same = |o: &&VrrpConfig| {
            o.interface == n.interface && o.spec.vrid == n.spec.vrid && o.spec.family() == n.spec.family()
        };
        if let Some(o) = old.vrrp.iter().filter(|o| !new.vrrp.iter().any(|x| x.spec.name == o.spec.name)).find(same) {
            return Some(format!(
                "vrrp instance {:?} would take VRID {} on {:?} from {:?} in one reload: remove {:?} in one reload, add {:?} in the next",
                n.spec.name, n.spec.vrid, n.interface, o.spec.name, o.spec.name, n.spec.name
            ));
        }
    }
    for n in &new.vrrp {
        let Some(o) = old.vrrp.iter().find(|o| o.spec.name == n.spec.name) else { continue };
        let what = if o.interface != n.interface {
            "interface"
        } else if o.spec.vrid != n.spec.vrid {
            "vrid"
        } else if o.spec.version != n.spec.version {
            "version"
        } else if o.spec.family() != n.spec.family() {
            "the address family of virtual_ips"
        } else if o.vmac != n.vmac {
            "use_vmac or vmac_interface"
        } else if o.trackers != n.trackers {
            "track_http, track_interfaces or track_scripts"
        } else if o.notify.is_empty() != n.notify.is_empty() || o.notify.timeout != n.notify.timeout {
            "notify hooks, from none or to none, or notify_timeout"
        } else if o.vmac.is_some() && o.spec.unicast_peers.is_empty() != n.spec.unicast_peers.is_empty() {
            "unicast_peers, from none or to none, with use_vmac (it decides where adverts are received)"
        } else if o.spec.priority != n.spec.priority && (o.spec.priority == 255 || n.spec.priority == 255) {
            "priority to or from 255 (the address owner)"
        } else if o.spec.priority != n.spec.priority && !n.trackers.is_empty() {
            "priority of an instance with trackers"
        } else {
            continue;
        };
        return Some(format!("vrrp instance {:?}: {what} changed", n.spec.name));
    }
    None
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse(&text, path)
}

/// Validates config text; `path` is only used in messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let invalid = |span: Range<usize>, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        at: locate(text, span.start),
        message,
    };
    let raw: RawConfig =
        toml::from_str(text).map_err(|e| invalid(e.span().unwrap_or(0..0), e.message().trim().to_string()))?;
    let (listen, socket) = match raw.control {
        Some(c) => (c.listen, c.socket),
        None => (None, None),
    };
    let socket = match socket {
        None => PathBuf::from(DEFAULT_CONTROL_SOCKET),
        Some(s) if s.get_ref().starts_with('/') && s.get_ref().len() < 100 => PathBuf::from(s.get_ref()),
        Some(s) => {
            return Err(invalid(
                s.span(),
                format!("control.socket = {:?}: expected an absolute path of under 100 bytes", s.get_ref()),
            ))
        }
    };
    let listen = match listen {
        None => DEFAULT_CONTROL,
        Some(l) => l
            .get_ref()
            .parse()
            .map_err(|_| invalid(l.span(), format!("control.listen = {:?}: expected ADDRESS:PORT", l.get_ref())))?,
    };
    let mut scripts = Vec::new();
    for s in &raw.track_script {
        let spec = script(s.get_ref(), s.span(), "track_script", &invalid)?;
        if s.get_ref().weight.is_some() {
            return Err(invalid(
                s.span(),
                format!("track_script {:?}: weight belongs in each track_scripts entry", spec.name),
            ));
        }
        if scripts.iter().any(|o: &ScriptSpec| o.name == spec.name) {
            return Err(invalid(s.span(), format!("track_script {:?} is defined twice", spec.name)));
        }
        scripts.push(spec);
    }
    let mut vrrp = Vec::new();
    let mut listener_refs = Vec::new();
    let mut seen: HashMap<(String, Family, u8), String> = HashMap::new();
    for r in raw.vrrp {
        listener_refs.extend(r.track_http.iter().map(|t| (t.get_ref().listener.clone(), t.span())));
        let v = validate_vrrp(r, &invalid, text, &mut scripts)?;
        if let Some((other, vip)) = vrrp.iter().filter(|o: &&VrrpConfig| o.interface == v.interface).find_map(|o| {
            v.virtual_ips
                .iter()
                .find(|a| o.virtual_ips.iter().any(|b| b.addr == a.addr))
                .map(|a| (o.spec.name.clone(), *a))
        }) {
            // Each would undo the other: the master puts it back, the backup removes it.
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                at: v.interface_at,
                message: format!(
                    "vrrp.virtual_ips: {vip} of instance {:?} is also a VIP of instance {other:?} on interface {:?}",
                    v.spec.name, v.interface
                ),
            });
        }
        // A VRID names one virtual router per interface and family (IPv4
        // and IPv6 adverts are apart on the wire, RFC 9568 §7.3).
        if let Some(other) = seen.insert((v.interface.clone(), v.spec.family(), v.spec.vrid), v.spec.name.clone()) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                at: v.interface_at,
                message: format!(
                    "vrrp.vrid = {}: instance {:?} uses the same VRID and family on interface {:?} as instance {other:?}",
                    v.spec.vrid, v.spec.name, v.interface
                ),
            });
        }
        if let Some(m) = &v.vmac {
            let taken =
                vrrp.iter().find(|o| o.interface == m.name || o.vmac.as_ref().is_some_and(|x| x.name == m.name));
            if let Some(o) = taken {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    at: v.interface_at,
                    message: format!(
                        "vrrp.use_vmac: instance {:?}'s interface {:?} is also used by instance {:?} (set vmac_interface)",
                        v.spec.name, m.name, o.spec.name
                    ),
                });
            }
        }
        vrrp.push(v);
    }
    let mut http: Vec<HttpConfig> = Vec::new();
    for r in raw.http {
        let span = r.listen.span();
        let h = validate_http(r, &invalid, text, path)?;
        if let Some(other) = http.iter().find(|o| o.listen == h.listen) {
            return Err(invalid(
                span,
                format!("http.listen = \"{}\": already used by [[http]] {:?}", h.listen, other.name),
            ));
        }
        http.push(h);
    }
    for (listener, span) in listener_refs {
        if !http.iter().any(|h| h.name == listener) {
            return Err(invalid(
                span,
                format!("vrrp.track_http: listener {listener:?} is not the name of an [[http]] section"),
            ));
        }
    }
    let mut sync_groups: Vec<GroupSpec> = Vec::new();
    for g in &raw.sync_group {
        let name = g.name.get_ref().clone();
        if name.is_empty() || sync_groups.iter().any(|o| o.name == name) {
            return Err(invalid(g.name.span(), format!("sync_group.name = {name:?}: empty or used twice")));
        }
        let mut instances: Vec<String> = Vec::new();
        for i in g.instances.get_ref() {
            let member = i.get_ref();
            if !vrrp.iter().any(|v| v.spec.name == *member) {
                return Err(invalid(
                    i.span(),
                    format!("sync_group.instances: {member:?} is not the name of a [[vrrp]] instance"),
                ));
            }
            if vrrp.iter().any(|v| v.spec.name == *member && v.spec.priority == 255) {
                return Err(invalid(
                    i.span(),
                    format!(
                        "sync_group.instances: {member:?} has priority 255: an address owner cannot follow a group"
                    ),
                ));
            }
            if instances.contains(member) || sync_groups.iter().any(|o| o.instances.contains(member)) {
                return Err(invalid(i.span(), format!("sync_group.instances: {member:?} is in a sync group already")));
            }
            instances.push(member.clone());
        }
        if instances.len() < 2 {
            return Err(invalid(
                g.instances.span(),
                "sync_group.instances: a group needs two instances or more".into(),
            ));
        }
        let notify = hooks(
            [&g.notify, &g.notify_master, &g.notify_backup, &g.notify_fault, &g.notify_stop],
            &g.notify_timeout,
            "sync_group",
            &invalid,
        )?;
        sync_groups.push(GroupSpec { name, instances, notify });
    }
    let mut announce: Vec<AnnounceSpec> = Vec::new();
    for r in &raw.announce {
        let a = validate_announce(r, &vrrp, &announce, &invalid, &mut scripts)?;
        for t in &r.track_http {
            if !http.iter().any(|h| h.name == t.get_ref().listener) {
                return Err(invalid(
                    t.span(),
                    format!(
                        "announce.track_http: listener {:?} is not the name of an [[http]] section",
                        t.get_ref().listener
                    ),
                ));
            }
        }
        announce.push(a);
    }
    Ok(Config { control: ControlConfig { listen, socket }, vrrp, http, scripts, sync_groups, announce })
}

/// Default exported interface of an `[[announce]]`.
const ANNOUNCE_INTERFACE: &str = "vip0";

/// Longest `withdraw_delay`.
const WITHDRAW_DELAY_MAX: Duration = Duration::from_secs(300);

fn validate_announce(
    r: &RawAnnounce,
    vrrp: &[VrrpConfig],
    earlier: &[AnnounceSpec],
    invalid: &impl Fn(Range<usize>, String) -> ConfigError,
    scripts: &mut Vec<ScriptSpec>,
) -> Result<AnnounceSpec, ConfigError> {
    let name = r.name.get_ref().clone();
    if name.is_empty() || earlier.iter().any(|o| o.name == name) {
        return Err(invalid(r.name.span(), format!("announce.name = {name:?}: empty or used twice")));
    }
    let mut virtual_ips: Vec<VirtualIp> = Vec::new();
    for s in r.virtual_ips.get_ref() {
        let vip = virtual_ip(s.get_ref())
            .map_err(|why| invalid(s.span(), format!("announce.virtual_ips: {:?}: {why}", s.get_ref())))?;
        if virtual_ips.iter().any(|v| v.addr == vip.addr) {
            return Err(invalid(s.span(), format!("announce.virtual_ips: {:?} is listed twice", s.get_ref())));
        }
        if let Some(v) = vrrp.iter().find(|v| v.virtual_ips.iter().any(|x| x.addr == vip.addr)) {
            return Err(invalid(
                s.span(),
                format!("announce.virtual_ips: {} is also a VIP of [[vrrp]] {:?}", vip.addr, v.spec.name),
            ));
        }
        if let Some(o) = earlier.iter().find(|o| o.virtual_ips.iter().any(|x| x.addr == vip.addr)) {
            return Err(invalid(
                s.span(),
                format!("announce.virtual_ips: {} is also announced by {:?}", vip.addr, o.name),
            ));
        }
        virtual_ips.push(vip);
    }
    if virtual_ips.is_empty() {
        return Err(invalid(r.virtual_ips.span(), "announce.virtual_ips must list at least one address".into()));
    }
    let interface = match &r.interface {
        None => ANNOUNCE_INTERFACE.to_string(),
        Some(s) => {
            let n = s.get_ref();
            if n.is_empty() || n.len() > 15 || n.contains(['/', ' ', ':']) || n == "lo" {
                return Err(invalid(s.span(), format!("announce.interface = {n:?}: not a usable interface name")));
            }
            let vrrp_there = vrrp.iter().find(|v| v.interface == *n || v.vmac.as_ref().is_some_and(|m| m.name == *n));
            if let Some(v) = vrrp_there {
                return Err(invalid(
                    s.span(),
                    format!(
                        "announce.interface = {n:?}: [[vrrp]] {:?} runs there; use an interface of its own",
                        v.spec.name
                    ),
                ));
            }
            n.clone()
        }
    };
    let trackers = trackers(
        "announce",
        &interface,
        false,
        &r.track_http,
        &r.track_interfaces,
        &r.track_scripts,
        invalid,
        scripts,
    )?;
    let withdraw_delay = match &r.withdraw_delay {
        None => Duration::from_secs(3),
        Some(s) => {
            let d = duration(s, "announce.withdraw_delay", invalid)?;
            if d > WITHDRAW_DELAY_MAX {
                return Err(invalid(s.span(), format!("announce.withdraw_delay = {:?}: at most 300s", s.get_ref())));
            }
            d
        }
    };
    Ok(AnnounceSpec { name, virtual_ips, interface, trackers, withdraw_delay })
}

fn validate_vrrp(
    r: RawVrrp,
    invalid: &impl Fn(Range<usize>, String) -> ConfigError,
    text: &str,
    scripts: &mut Vec<ScriptSpec>,
) -> Result<VrrpConfig, ConfigError> {
    let name = r.name.get_ref().clone();
    if name.is_empty() {
        return Err(invalid(r.name.span(), "vrrp.name must not be empty".to_string()));
    }
    let iface = r.interface.get_ref();
    if iface.is_empty() || iface.len() > 15 || iface.contains(['/', ' ']) {
        return Err(invalid(r.interface.span(), format!("vrrp.interface = {iface:?}: not a valid interface name")));
    }
    // Both ranges fit a u8.
    let vrid = int_in(&r.vrid, "vrrp.vrid", 1, 255, invalid)? as u8;
    let priority = int_in(&r.priority, "vrrp.priority", 1, 255, invalid)? as u8;
    let version = match &r.version {
        None => Version::V3,
        Some(v) => match v.get_ref() {
            2 => Version::V2,
            3 => Version::V3,
            n => return Err(invalid(v.span(), format!("vrrp.version = {n}: must be 2 or 3"))),
        },
    };
    let advert_interval = match &r.advert_interval {
        None => Centiseconds::new(100).ok_or_else(|| invalid(0..0, "internal: default interval".into()))?,
        Some(s) => {
            let d = duration(s, "vrrp.advert_interval", invalid)?;
            interval_for(version, d)
                .map_err(|why| invalid(s.span(), format!("vrrp.advert_interval = {:?}: {why}", s.get_ref())))?
        }
    };
    let preempt_delay = match &r.preempt_delay {
        None => Duration::ZERO,
        Some(s) => duration(s, "vrrp.preempt_delay", invalid)?,
    };
    let garp_repeat_delay = match &r.garp_repeat_delay {
        None => Some(Duration::from_secs(5)),
        Some(s) => Some(duration(s, "vrrp.garp_repeat_delay", invalid)?).filter(|d| !d.is_zero()),
    };
    let garp_refresh = match &r.garp_refresh {
        None => None,
        Some(s) => Some(duration(s, "vrrp.garp_refresh", invalid)?).filter(|d| !d.is_zero()),
    };
    let garp_count = match &r.garp_count {
        None => 5,
        Some(n) => int_in(n, "vrrp.garp_count", 1, 100, invalid)? as u32,
    };
    let release_timeout = match &r.release_timeout {
        None => None,
        Some(s) => Some(duration(s, "vrrp.release_timeout", invalid)?),
    };
    let garp_interval = match &r.garp_interval {
        None => Duration::ZERO,
        Some(s) => duration(s, "vrrp.garp_interval", invalid)?,
    };
    if garp_interval > Duration::from_secs(1) {
        let s = r.garp_interval.as_ref().map_or(0..0, |s| s.span());
        return Err(invalid(s, "vrrp.garp_interval: at most 1s".into()));
    }
    let mut virtual_ips = Vec::new();
    for s in r.virtual_ips.get_ref() {
        let vip = virtual_ip(s.get_ref())
            .map_err(|why| invalid(s.span(), format!("vrrp.virtual_ips: {:?}: {why}", s.get_ref())))?;
        if virtual_ips.iter().any(|v: &VirtualIp| v.addr == vip.addr) {
            return Err(invalid(s.span(), format!("vrrp.virtual_ips: {:?} is listed twice", s.get_ref())));
        }
        virtual_ips.push(vip);
    }
    if virtual_ips.is_empty() {
        return Err(invalid(r.virtual_ips.span(), "vrrp.virtual_ips must list at least one address".into()));
    }
    let v6 = virtual_ips[0].addr.is_ipv6();
    if virtual_ips.iter().any(|v| v.addr.is_ipv6() != v6) {
        return Err(invalid(
            r.virtual_ips.span(),
            "vrrp.virtual_ips: IPv4 and IPv6 addresses in one instance; use one instance per family (they may share the VRID)".into(),
        ));
    }
    if v6 && version == Version::V2 {
        return Err(invalid(
            r.virtual_ips.span(),
            "vrrp.virtual_ips: IPv6 needs version = 3 (VRRPv2 is IPv4 only)".into(),
        ));
    }
    if let Some(s) = &r.link_local_vip {
        let ll = virtual_ip(s.get_ref()).ok().filter(|v| is_link_local(v.addr)).ok_or_else(|| {
            invalid(s.span(), format!("vrrp.link_local_vip = {:?}: not an fe80::/10 address", s.get_ref()))
        })?;
        if !v6 {
            return Err(invalid(s.span(), "vrrp.link_local_vip: only for an IPv6 instance".into()));
        }
        if virtual_ips.iter().any(|v| is_link_local(v.addr) && v.addr != ll.addr) {
            return Err(invalid(s.span(), "vrrp.link_local_vip: virtual_ips lists another link-local address".into()));
        }
        virtual_ips.retain(|v| v.addr != ll.addr);
        virtual_ips.insert(0, VirtualIp { addr: ll.addr, prefix_len: 64 });
    }
    if v6 {
        // RFC 9568 §5.2.9: the first address of an IPv6 advert is a
        // link-local one. Listed one goes first; none listed: the one the
        // virtual MAC 00-00-5E-00-02-{VRID} would give (RFC 4291 EUI-64).
        match virtual_ips.iter().position(|v| is_link_local(v.addr)) {
            Some(i) => {
                let ll = virtual_ips.remove(i);
                virtual_ips.insert(0, ll);
            }
            None => {
                let ll = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x0200, 0x5eff, 0xfe00, 0x0200 | u16::from(vrid));
                virtual_ips.insert(0, VirtualIp { addr: IpAddr::V6(ll), prefix_len: 64 });
            }
        }
    }
    // The count field is 8 bits and the message must fit one frame.
    if virtual_ips.len() > 64 {
        return Err(invalid(r.virtual_ips.span(), "vrrp.virtual_ips: at most 64 addresses".into()));
    }
    let unicast = |s: &Spanned<String>, key: &str| -> Result<IpAddr, ConfigError> {
        let a = s.get_ref();
        let addr: IpAddr = a.parse().map_err(|_| invalid(s.span(), format!("{key}: {a:?}: not an IP address")))?;
        if addr.is_ipv6() != v6 {
            let want = if v6 { "IPv6" } else { "IPv4" };
            return Err(invalid(s.span(), format!("{key}: {a:?}: the instance's virtual_ips are {want}")));
        }
        if !usable_unicast(addr) {
            return Err(invalid(s.span(), format!("{key}: {a:?}: not a usable unicast address")));
        }
        if virtual_ips.iter().any(|v| v.addr == addr) {
            return Err(invalid(s.span(), format!("{key}: {a:?} is one of the instance's virtual_ips")));
        }
        Ok(addr)
    };
    let mut unicast_peers = Vec::new();
    for s in &r.unicast_peers {
        let addr = unicast(s, "vrrp.unicast_peers")?;
        if unicast_peers.contains(&addr) {
            return Err(invalid(s.span(), format!("vrrp.unicast_peers: {:?} is listed twice", s.get_ref())));
        }
        unicast_peers.push(addr);
    }
    let unicast_source = r.unicast_source.as_ref().map(|s| unicast(s, "vrrp.unicast_source")).transpose()?;
    // IPv6 adverts go from the link-local address unless unicast_source
    // says otherwise: a peer listed by another address would never
    // recognise them.
    if v6 && unicast_source.is_none() {
        if let Some(s) = r.unicast_peers.iter().find(|s| s.get_ref().parse().is_ok_and(|a| !is_link_local(a))) {
            return Err(invalid(
                s.span(),
                format!("vrrp.unicast_peers: {:?}: an IPv6 peer that is not link-local (fe80::/10) needs unicast_source (adverts go from the link-local address otherwise)", s.get_ref()),
            ));
        }
    }
    if let (Some(source), Some(s)) = (unicast_source, &r.unicast_source) {
        if unicast_peers.is_empty() {
            return Err(invalid(s.span(), "vrrp.unicast_source: only with unicast_peers".into()));
        }
        if unicast_peers.contains(&source) {
            return Err(invalid(s.span(), format!("vrrp.unicast_source: {source} is also a peer")));
        }
    }
    let trackers =
        trackers("vrrp", iface, true, &r.track_http, &r.track_interfaces, &r.track_scripts, invalid, scripts)?;
    if priority == 255 && !trackers.is_empty() {
        return Err(invalid(
            r.priority.span(),
            "vrrp.priority = 255: the address owner is never lowered; remove its trackers or lower its priority".into(),
        ));
    }
    let notify = hooks(
        [&r.notify, &r.notify_master, &r.notify_backup, &r.notify_fault, &r.notify_stop],
        &r.notify_timeout,
        "vrrp",
        invalid,
    )?;
    let vmac = match (r.use_vmac.unwrap_or(false), &r.vmac_interface) {
        (false, Some(s)) => return Err(invalid(s.span(), "vrrp.vmac_interface: only with use_vmac = true".into())),
        (false, None) => None,
        (true, _) if v6 && !unicast_peers.is_empty() => {
            return Err(invalid(
                r.virtual_ips.span(),
                "vrrp.use_vmac: not with unicast_peers for IPv6 (adverts go from the macvlan's random link-local address, which no peer could list)".into(),
            ))
        }
        (true, name) => {
            let name = match name {
                Some(s) => {
                    let n = s.get_ref();
                    if n.is_empty() || n.len() > 15 || n.contains(['/', ' ', ':']) || n == iface {
                        return Err(invalid(
                            s.span(),
                            format!("vrrp.vmac_interface = {n:?}: not a usable interface name"),
                        ));
                    }
                    n.clone()
                }
                None if v6 => format!("vrrp6.{vrid}"),
                None => format!("vrrp.{vrid}"),
            };
            // RFC 9568 §7.3: 00-00-5E-00-01-{VRID} for IPv4, 00-00-5E-00-02-{VRID} for IPv6.
            let family_byte = if v6 { 0x02 } else { 0x01 };
            Some(Vmac { name, mac: [0x00, 0x00, 0x5e, 0x00, family_byte, vrid], ipv6: v6 })
        }
    };
    let spec = InstanceSpec {
        name,
        vrid,
        version,
        priority,
        advert_interval,
        preempt: r.preempt.unwrap_or(true),
        preempt_delay,
        virtual_ips: virtual_ips.iter().map(|v| v.addr).collect(),
        checksum: if r.v3_checksum_pseudo_header.unwrap_or(true) {
            ChecksumForm::PseudoHeader
        } else {
            ChecksumForm::MessageOnly
        },
        garp_count,
        garp_interval,
        garp_repeat_delay,
        garp_refresh,
        release_timeout,
        unicast_peers,
        unicast_source,
        na_router_flag: r.na_router_flag.unwrap_or(false),
        handover_relay: r.handover_relay.unwrap_or(true),
    };
    Ok(VrrpConfig {
        spec,
        interface: iface.clone(),
        interface_at: locate(text, r.interface.span().start),
        virtual_ips,
        trackers,
        notify,
        vmac,
    })
}

fn validate_http(
    r: RawHttp,
    invalid: &impl Fn(Range<usize>, String) -> ConfigError,
    text: &str,
    path: &Path,
) -> Result<HttpConfig, ConfigError> {
    let name = r.name.get_ref().clone();
    if name.is_empty() {
        return Err(invalid(r.name.span(), "http.name must not be empty".to_string()));
    }
    let listen: SocketAddr = r.listen.get_ref().parse().map_err(|_| {
        invalid(r.listen.span(), format!("http.listen = {:?}: expected ADDRESS:PORT", r.listen.get_ref()))
    })?;
    let balance = match &r.balance {
        None => Algorithm::RoundRobin,
        Some(b) => {
            b.get_ref().parse().map_err(|e| invalid(b.span(), format!("http.balance = {:?}: {e}", b.get_ref())))?
        }
    };
    let mut backends: Vec<BackendConfig> = Vec::new();
    for b in r.backends.get_ref() {
        let (address, weight) = match b.get_ref() {
            RawBackend::Address(a) => (a, 1),
            RawBackend::Weighted { address, weight } => (address, weight.unwrap_or(1)),
        };
        let address: SocketAddr =
            address.parse().map_err(|_| invalid(b.span(), format!("http.backends: {address:?}: expected IP:PORT")))?;
        let weight = u32::try_from(weight)
            .ok()
            .filter(|w| (1..=1000).contains(w))
            .ok_or_else(|| invalid(b.span(), format!("http.backends: weight {weight}: must be 1..=1000")))?;
        if backends.iter().any(|o| o.address == address) {
            return Err(invalid(b.span(), format!("http.backends: {address} is listed twice")));
        }
        backends.push(BackendConfig { address, weight });
    }
    if backends.is_empty() {
        return Err(invalid(r.backends.span(), "http.backends must list at least one backend".into()));
    }
    // Every HTTP timeout must be more than zero.
    let dur = |v: &Option<Spanned<String>>, key: &str, default: Duration| -> Result<Duration, ConfigError> {
        let Some(s) = v else { return Ok(default) };
        let d = duration(s, key, invalid)?;
        if d.is_zero() {
            return Err(invalid(s.span(), format!("{key} = {:?}: must be more than 0", s.get_ref())));
        }
        Ok(d)
    };
    // All ranges here are non-negative.
    let int = |v: &Option<Spanned<i64>>, key: &str, default: u64, lo: i64, hi: i64| -> Result<u64, ConfigError> {
        v.as_ref().map_or(Ok(default), |n| int_in(n, key, lo, hi, invalid).map(|n| n as u64))
    };
    let health = match &r.health {
        None => None,
        Some(h) => {
            let path = h.path.as_ref().map_or_else(|| "/".to_string(), |p| p.get_ref().clone());
            if !path.starts_with('/') {
                let span = h.path.as_ref().map_or(0..0, |p| p.span());
                return Err(invalid(span, format!("http.health.path = {path:?}: must start with /")));
            }
            Some(HealthConfig {
                path,
                interval: dur(&h.interval, "http.health.interval", Duration::from_secs(2))?,
                timeout: dur(&h.timeout, "http.health.timeout", Duration::from_secs(1))?,
                rise: int(&h.rise, "http.health.rise", 2, 1, 100)? as u32,
                fall: int(&h.fall, "http.health.fall", 3, 1, 100)? as u32,
            })
        }
    };
    let (eject_after, eject_cooldown) = match &r.health {
        None => (5, Duration::from_secs(10)),
        Some(h) => (
            int(&h.eject_after, "http.health.eject_after", 5, 0, 1000)? as u32,
            dur(&h.eject_cooldown, "http.health.eject_cooldown", Duration::from_secs(10))?,
        ),
    };
    Ok(HttpConfig {
        name,
        listen,
        balance,
        backends,
        connect_timeout: dur(&r.connect_timeout, "http.connect_timeout", Duration::from_secs(1))?,
        response_timeout: dur(&r.response_timeout, "http.response_timeout", Duration::from_secs(30))?,
        client_header_timeout: dur(&r.client_header_timeout, "http.client_header_timeout", Duration::from_secs(10))?,
        idle_timeout: dur(&r.idle_timeout, "http.idle_timeout", Duration::from_secs(10))?,
        tunnel_timeout: dur(&r.tunnel_timeout, "http.tunnel_timeout", Duration::from_secs(3600))?,
        drain_timeout: dur(&r.drain_timeout, "http.drain_timeout", Duration::from_secs(10))?,
        max_header_size: int(&r.max_header_size, "http.max_header_size", 16384, 1024, 1 << 20)? as usize,
        max_connections: int(&r.max_connections, "http.max_connections", 10_000, 1, 1_000_000)? as usize,
        max_conns: int(&r.max_conns, "http.max_conns", 1000, 0, 1_000_000)? as usize,
        queue_timeout: dur(&r.queue_timeout, "http.queue_timeout", Duration::from_secs(5))?,
        h2_max_concurrent_streams: int(&r.h2_max_concurrent_streams, "http.h2_max_concurrent_streams", 100, 1, 1000)?
            as u32,
        retries: int(&r.retries, "http.retries", 2, 0, 10)? as u32,
        access_log: r.access_log.unwrap_or(true),
        health,
        eject_after,
        eject_cooldown,
        tls: validate_tls(&r, invalid, text, path)?,
        redirect_https: validate_redirect(&r, invalid)?,
        backend_tls: validate_backend_tls(&r, invalid, path)?,
    })
}

/// `backend_tls`: `ca` is required while `verify` (the default) is on.
fn validate_backend_tls(
    r: &RawHttp,
    invalid: &impl Fn(Range<usize>, String) -> ConfigError,
    path: &Path,
) -> Result<Option<BackendTlsConfig>, ConfigError> {
    let Some(b) = &r.backend_tls else { return Ok(None) };
    let raw = b.get_ref();
    let verify = raw.verify.unwrap_or(true);
    if verify && raw.ca.is_none() {
        return Err(invalid(b.span(), "http.backend_tls: ca is required unless verify = false is set".into()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Some(n) = &raw.server_name {
        if rustls::pki_types::ServerName::try_from(n.get_ref().as_str()).is_err() {
            return Err(invalid(
                n.span(),
                format!("http.backend_tls.server_name = {:?}: not a DNS name or IP address", n.get_ref()),
            ));
        }
    }
    Ok(Some(BackendTlsConfig {
        ca: raw.ca.as_ref().map(|c| dir.join(c.get_ref())),
        server_name: raw.server_name.as_ref().map(|n| n.get_ref().clone()),
        verify,
    }))
}

/// `redirect_https`, `redirect_https_port` and `redirect_https_except`.
fn validate_redirect(
    r: &RawHttp,
    invalid: &impl Fn(Range<usize>, String) -> ConfigError,
) -> Result<Option<RedirectHttps>, ConfigError> {
    let on = r.redirect_https.as_ref().is_some_and(|v| *v.get_ref());
    if !on {
        let stray = [
            r.redirect_https_port.as_ref().map(|v| ("redirect_https_port", v.span())),
            r.redirect_https_except.as_ref().map(|v| ("redirect_https_except", v.span())),
        ];
        if let Some((key, span)) = stray.into_iter().flatten().next() {
            return Err(invalid(span, format!("http.{key} needs redirect_https = true")));
        }
        return Ok(None);
    }
    if let (Some(v), Some(_)) = (&r.redirect_https, &r.tls) {
        return Err(invalid(v.span(), "http.redirect_https is for a plain listener, not one with [[http.tls]]".into()));
    }
    let port = match &r.redirect_https_port {
        None => 443,
        Some(p) => int_in(p, "http.redirect_https_port", 1, 65535, invalid)? as u16,
    };
    let mut except = Vec::new();
    for p in r.redirect_https_except.iter().flat_map(|l| l.get_ref()) {
        if !p.get_ref().starts_with('/') {
            return Err(invalid(p.span(), format!("http.redirect_https_except: {:?} must start with /", p.get_ref())));
        }
        except.push(p.get_ref().clone());
    }
    Ok(Some(RedirectHttps { port, except }))
}

/// `[[http.tls]]` and the keys that go with it. Relative file names are
/// taken from the config file's directory. The files are read by `vipd
/// check` and at start and reload (`proxy::tls`), not here.
fn validate_tls(
    r: &RawHttp,
    invalid: &impl Fn(Range<usize>, String) -> ConfigError,
    text: &str,
    path: &Path,
) -> Result<Option<TlsConfig>, ConfigError> {
    let Some(tables) = r.tls.as_ref().filter(|t| !t.is_empty()) else {
        let stray = [
            r.tls_min_version.as_ref().map(|v| ("tls_min_version", v.span())),
            r.alpn.as_ref().map(|v| ("alpn", v.span())),
            r.sni_strict.as_ref().map(|v| ("sni_strict", v.span())),
        ];
        if let Some((key, span)) = stray.into_iter().flatten().next() {
            return Err(invalid(span, format!("http.{key} needs at least one [[http.tls]] certificate")));
        }
        return Ok(None);
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let file = |s: &Spanned<String>, key: &str| -> Result<PathBuf, ConfigError> {
        if s.get_ref().is_empty() {
            return Err(invalid(s.span(), format!("http.tls.{key} must not be empty")));
        }
        Ok(dir.join(s.get_ref()))
    };
    let mut certificates = Vec::new();
    for t in tables {
        let c = t.get_ref();
        certificates.push(CertificateFiles {
            cert: file(&c.cert, "cert")?,
            key: file(&c.key, "key")?,
            at: locate(text, t.span().start),
        });
    }
    let min_version = match &r.tls_min_version {
        None => TlsVersion::V1_2,
        Some(v) => match v.get_ref().as_str() {
            "1.2" => TlsVersion::V1_2,
            "1.3" => TlsVersion::V1_3,
            other => {
                return Err(invalid(v.span(), format!("http.tls_min_version = {other:?}: expected \"1.2\" or \"1.3\"")))
            }
        },
    };
    let alpn = match &r.alpn {
        None => vec![Alpn::H2, Alpn::Http11],
        Some(list) => {
            let mut out = Vec::new();
            for p in list.get_ref() {
                let a = match p.get_ref().as_str() {
                    "h2" => Alpn::H2,
                    "http/1.1" => Alpn::Http11,
                    other => {
                        return Err(invalid(p.span(), format!("http.alpn: {other:?}: expected \"h2\" or \"http/1.1\"")))
                    }
                };
                if out.contains(&a) {
                    return Err(invalid(p.span(), format!("http.alpn: {:?} is listed twice", p.get_ref())));
                }
                out.push(a);
            }
            if out.is_empty() {
                return Err(invalid(list.span(), "http.alpn must name at least one protocol".into()));
            }
            out
        }
    };
    Ok(Some(TlsConfig {
        certificates,
        min_version,
        alpn,
        sni_strict: r.sni_strict.as_ref().is_some_and(|s| *s.get_ref()),
    }))
}

/// The notify hooks of an instance or a sync group (`section` names it in
/// messages): `notify`, `notify_master`, `_backup`, `_fault`, `_stop` and
/// `notify_timeout`.
fn hooks(
    [any, master, backup, fault, stop]: [&Option<Spanned<Vec<String>>>; 5],
    timeout: &Option<Spanned<String>>,
    section: &str,
    invalid: &impl Fn(Range<usize>, String) -> ConfigError,
) -> Result<Hooks, ConfigError> {
    let hook = |h: &Option<Spanned<Vec<String>>>, key: &str| -> Result<Option<Vec<String>>, ConfigError> {
        h.as_ref().map(|c| command(c.get_ref(), c.span(), &format!("{section}.{key}"), invalid)).transpose()
    };
    Ok(Hooks {
        any: hook(any, "notify")?,
        master: hook(master, "notify_master")?,
        backup: hook(backup, "notify_backup")?,
        fault: hook(fault, "notify_fault")?,
        stop: hook(stop, "notify_stop")?,
        timeout: match timeout {
            None => Duration::from_secs(10),
            Some(s) => Some(duration(s, &format!("{section}.notify_timeout"), invalid)?)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| invalid(s.span(), format!("{section}.notify_timeout = \"0s\": must be more than 0")))?,
        },
    })
}

/// A check script's definition (`[[track_script]]` or inline).
fn script(
    raw: &RawScript,
    span: Range<usize>,
    key: &str,
    invalid: &impl Fn(Range<usize>, String) -> ConfigError,
) -> Result<ScriptSpec, ConfigError> {
    if raw.name.is_empty() {
        return Err(invalid(span, format!("{key}: name must not be empty")));
    }
    let Some(cmd) = &raw.command else {
        return Err(invalid(span, format!("{key} {:?}: command is missing", raw.name)));
    };
    let time = |v: &Option<String>, what: &str, default: Duration| -> Result<Duration, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        parse_duration(v).ok().filter(|d| !d.is_zero()).ok_or_else(|| {
            invalid(span.clone(), format!("{key} {:?}: {what} = {v:?}: expected a duration above 0", raw.name))
        })
    };
    let count = |v: Option<i64>, what: &str, default: i64| -> Result<u32, ConfigError> {
        let n = v.unwrap_or(default);
        if (1..=100).contains(&n) {
            Ok(n as u32)
        } else {
            Err(invalid(span.clone(), format!("{key} {:?}: {what} = {n}: must be 1..=100", raw.name)))
        }
    };
    Ok(ScriptSpec {
        name: raw.name.clone(),
        command: command(cmd, span.clone(), key, invalid)?,
        interval: time(&raw.interval, "interval", Duration::from_secs(2))?,
        timeout: time(&raw.timeout, "timeout", Duration::from_secs(1))?,
        rise: count(raw.rise, "rise", 2)?,
        fall: count(raw.fall, "fall", 3)?,
    })
}

/// A command as an argument list, run without a shell: its program must
/// exist now (a path, or a name found in PATH).
fn command(
    cmd: &[String],
    span: Range<usize>,
    key: &str,
    invalid: &impl Fn(Range<usize>, String) -> ConfigError,
) -> Result<Vec<String>, ConfigError> {
    let Some(program) = cmd.first().filter(|p| !p.is_empty()) else {
        return Err(invalid(span, format!("{key}: the command is empty")));
    };
    let found = if program.contains('/') {
        Path::new(program).is_file()
    } else {
        std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
    };
    if !found {
        return Err(invalid(span, format!("{key}: program {program:?} not found")));
    }
    Ok(cmd.to_vec())
}

/// A duration value; `key` is the full key for the message.
fn duration(
    s: &Spanned<String>,
    key: &str,
    invalid: &impl Fn(Range<usize>, String) -> ConfigError,
) -> Result<Duration, ConfigError> {
    parse_duration(s.get_ref()).map_err(|why| invalid(s.span(), format!("{key} = {:?}: {why}", s.get_ref())))
}

/// An integer in `lo..=hi`; `key` is the full key for the message.
fn int_in(
    v: &Spanned<i64>,
    key: &str,
    lo: i64,
    hi: i64,
    invalid: &impl Fn(Range<usize>, String) -> ConfigError,
) -> Result<i64, ConfigError> {
    let n = *v.get_ref();
    if (lo..=hi).contains(&n) {
        Ok(n)
    } else {
        Err(invalid(v.span(), format!("{key} = {n}: must be {lo}..={hi}")))
    }
}

/// v2 carries whole seconds in 8 bits; v3 centiseconds in 12 bits.
fn interval_for(version: Version, d: Duration) -> Result<Centiseconds, String> {
    let ms = d.as_millis();
    match version {
        Version::V2 if ms % 1000 != 0 || ms == 0 || ms > 255_000 => {
            Err("VRRPv2 needs whole seconds from 1s to 255s".into())
        }
        Version::V3 if ms % 10 != 0 || d.subsec_nanos() % 1_000_000 != 0 => {
            Err("VRRPv3 needs a multiple of 10ms".into())
        }
        _ => {
            u16::try_from(ms / 10).ok().and_then(Centiseconds::new).ok_or_else(|| "must be from 10ms to 40.95s".into())
        }
    }
}

/// Parses "100ms", "1s", "1.5s", "2m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let scale_ms = match unit.trim() {
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        _ => return Err("expected a duration like \"1s\" or \"100ms\"".into()),
    };
    let n: f64 = num.parse().map_err(|_| "expected a duration like \"1s\" or \"100ms\"".to_string())?;
    let micros = (n * scale_ms * 1000.0).round();
    if !(0.0..=86_400e6).contains(&micros) {
        return Err("duration out of range".into());
    }
    Ok(Duration::from_micros(micros as u64))
}

/// The trackers of a `[[vrrp]]` instance or an `[[announce]]` (`section`)
/// on `own_iface`. Scripts defined inline join `scripts`. With `weighted`
/// false, a weight is refused: every failing tracker counts in full.
#[allow(clippy::too_many_arguments)]
fn trackers(
    section: &str,
    own_iface: &str,
    weighted: bool,
    track_http: &[Spanned<RawTrackHttp>],
    track_interfaces: &[Spanned<RawTrackInterface>],
    track_scripts: &[Spanned<RawScript>],
    invalid: &impl Fn(Range<usize>, String) -> ConfigError,
    scripts: &mut Vec<ScriptSpec>,
) -> Result<Vec<TrackerSpec>, ConfigError> {
    let weight = |w: Option<i64>, span: Range<usize>, key: &str| -> Result<u8, ConfigError> {
        if !weighted && w.is_some() {
            return Err(invalid(
                span,
                format!("{key}: weight: a failing tracker withdraws the announcement here; weights are for [[vrrp]]"),
            ));
        }
        let w = w.unwrap_or(0);
        u8::try_from(w)
            .ok()
            .filter(|w| *w <= 253)
            .ok_or_else(|| invalid(span, format!("{key}: weight {w}: must be 0..=253 (0 = fault while it fails)")))
    };
    let mut trackers = Vec::new();
    for t in track_http {
        let raw = t.get_ref();
        let min_healthy = raw.min_healthy.unwrap_or(1);
        if !(1..=1000).contains(&min_healthy) {
            return Err(invalid(
                t.span(),
                format!("{section}.track_http: min_healthy {min_healthy}: must be 1..=1000"),
            ));
        }
        trackers.push(TrackerSpec {
            watched: Watched::Http { listener: raw.listener.clone(), min_healthy: min_healthy as usize },
            weight: weight(raw.weight, t.span(), &format!("{section}.track_http"))?,
        });
    }
    for t in track_interfaces {
        let raw = t.get_ref();
        if raw.name.is_empty() || raw.name.len() > 15 || raw.name.contains(['/', ' ']) {
            return Err(invalid(
                t.span(),
                format!("{section}.track_interfaces: {:?}: not a valid interface name", raw.name),
            ));
        }
        if raw.name == own_iface {
            return Err(invalid(
                t.span(),
                format!(
                    "{section}.track_interfaces: {:?} is the instance's own interface (down is fault already)",
                    raw.name
                ),
            ));
        }
        trackers.push(TrackerSpec {
            watched: Watched::Interface { name: raw.name.clone() },
            weight: weight(raw.weight, t.span(), &format!("{section}.track_interfaces"))?,
        });
    }
    for t in track_scripts {
        let raw = t.get_ref();
        if raw.command.is_some() {
            // Defined here: shared with whoever else names it.
            let spec = script(raw, t.span(), &format!("{section}.track_scripts"), invalid)?;
            match scripts.iter().find(|o| o.name == spec.name) {
                Some(o) if *o != spec => {
                    return Err(invalid(
                        t.span(),
                        format!("{section}.track_scripts: script {:?} is defined differently elsewhere", spec.name),
                    ))
                }
                Some(_) => {}
                None => scripts.push(spec),
            }
        } else if raw.interval.is_some() || raw.timeout.is_some() || raw.rise.is_some() || raw.fall.is_some() {
            return Err(invalid(
                t.span(),
                format!("{section}.track_scripts: {:?}: interval, timeout, rise and fall go with a command", raw.name),
            ));
        } else if !scripts.iter().any(|o| o.name == raw.name) {
            return Err(invalid(
                t.span(),
                format!(
                    "{section}.track_scripts: {:?}: no command and no [[track_script]] of that name (define it above)",
                    raw.name
                ),
            ));
        }
        trackers.push(TrackerSpec {
            watched: Watched::Script { name: raw.name.clone() },
            weight: weight(raw.weight, t.span(), &format!("{section}.track_scripts"))?,
        });
    }
    Ok(trackers)
}

fn virtual_ip(s: &str) -> Result<VirtualIp, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| "not an IP address".to_string())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len: u8 = match prefix {
        None => max,
        Some(p) => p.parse().ok().filter(|p| *p <= max).ok_or(format!("prefix length must be 0..={max}"))?,
    };
    if !usable_unicast(addr) {
        return Err("not a usable unicast address".into());
    }
    Ok(VirtualIp { addr, prefix_len })
}

/// Not unspecified, multicast, broadcast or loopback.
fn usable_unicast(addr: IpAddr) -> bool {
    let broadcast = matches!(addr, IpAddr::V4(a) if a.is_broadcast());
    !(addr.is_unspecified() || addr.is_multicast() || broadcast || addr.is_loopback())
}

fn locate(text: &str, offset: usize) -> Location {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Location { line, col }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_exemptions_match_whole_segments_and_never_dot_segments() {
        let r = RedirectHttps { port: 443, except: vec!["/healthz".into(), "/.well-known/acme-challenge/".into()] };
        assert!(!r.applies_to(b"/healthz"));
        assert!(!r.applies_to(b"/healthz?full=1"));
        assert!(!r.applies_to(b"/healthz/deep"));
        assert!(r.applies_to(b"/healthzfoo"));
        assert!(!r.applies_to(b"/.well-known/acme-challenge/token"));
        assert!(r.applies_to(b"/.well-known/acme-challenge/../admin"));
        assert!(r.applies_to(b"/.well-known/acme-challenge/%2e%2e/admin"));
        assert!(r.applies_to(b"/healthz/..%2Fadmin"));
        assert!(r.applies_to(b"/shop"));
    }

    const GOOD: &str = r#"
[control]
listen = "127.0.0.1:9191"

[[vrrp]]
name = "web"
interface = "eth0"
vrid = 51
priority = 150
advert_interval = "100ms"
virtual_ips = ["192.0.2.10/24", "192.0.2.20"]
"#;

    fn err(text: &str) -> String {
        parse(text, Path::new("t.toml")).expect_err("must be rejected").to_string()
    }

    fn with(line: &str) -> String {
        GOOD.replace("priority = 150", &format!("priority = 150\n{line}"))
    }

    #[test]
    fn good_config_and_defaults() {
        let c = parse(GOOD, Path::new("t.toml")).expect("valid");
        assert_eq!(c.control.listen.to_string(), "127.0.0.1:9191");
        let v = &c.vrrp[0];
        let s = &v.spec;
        assert_eq!((s.vrid, s.priority, s.version), (51, 150, Version::V3));
        assert_eq!(s.advert_interval.get(), 10);
        assert!(s.preempt);
        assert_eq!(v.virtual_ips[1], VirtualIp { addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 20)), prefix_len: 32 });
        assert_eq!(s.virtual_ips, [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 20))]);
        assert_eq!(s.garp_count, 5);
        assert_eq!(s.garp_interval, Duration::ZERO);
        assert_eq!(s.garp_repeat_delay, Some(Duration::from_secs(5)));
        assert_eq!(s.checksum, ChecksumForm::PseudoHeader);
        assert!(s.unicast_peers.is_empty());
        assert_eq!(v.interface_at, Location { line: 7, col: 13 });
    }

    #[test]
    fn out_of_range_values_name_key_value_and_line() {
        assert_eq!(err(&GOOD.replace("vrid = 51", "vrid = 0")), "t.toml:8:8: vrrp.vrid = 0: must be 1..=255");
        assert_eq!(
            err(&GOOD.replace("priority = 150", "priority = 256")),
            "t.toml:9:12: vrrp.priority = 256: must be 1..=255"
        );
        assert!(err(&with("version = 4")).contains("vrrp.version = 4: must be 2 or 3"));
        assert!(err(&with("version = 2")).contains("VRRPv2 needs whole seconds"));
        assert!(err(&GOOD.replace("100ms", "105ms")).contains("multiple of 10ms"));
        assert!(err(&GOOD.replace("100ms", "41s")).contains("from 10ms to 40.95s"));
        assert!(err(&GOOD.replace("100ms", "fast")).contains("expected a duration"));
        assert!(err(&GOOD.replace("192.0.2.20", "192.0.2.300")).contains("not an IP address"));
        assert!(err(&GOOD.replace("192.0.2.20", "192.0.2.10")).contains("listed twice"));
        assert!(err(&with("garp_count = 0")).contains("garp_count = 0"));
        assert!(err(&with("garp_interval = \"2s\"")).contains("garp_interval: at most 1s"));
    }

    #[test]
    fn unicast_peers_and_source() {
        let c = parse(
            &with("unicast_peers = [\"192.0.2.12\", \"192.0.2.13\"]\nunicast_source = \"192.0.2.11\""),
            Path::new("t"),
        )
        .expect("valid");
        let s = &c.vrrp[0].spec;
        assert_eq!(
            s.unicast_peers,
            [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 12)), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 13))]
        );
        assert_eq!(s.unicast_source, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11))));
        assert_eq!(
            err(&with("unicast_peers = [\"224.0.0.18\"]")),
            "t.toml:10:18: vrrp.unicast_peers: \"224.0.0.18\": not a usable unicast address"
        );
        assert!(err(&with("unicast_peers = [\"peer\"]")).contains("\"peer\": not an IP address"));
        assert!(err(&with("unicast_peers = [\"2001:db8::12\"]")).contains("the instance's virtual_ips are IPv4"));
        assert!(err(&with("unicast_peers = [\"192.0.2.10\"]")).contains("is one of the instance's virtual_ips"));
        assert!(err(&with("unicast_peers = [\"192.0.2.12\", \"192.0.2.12\"]")).contains("listed twice"));
        assert!(err(&with("unicast_source = \"192.0.2.11\"")).contains("only with unicast_peers"));
        assert!(
            err(&with("unicast_peers = [\"192.0.2.12\"]\nunicast_source = \"192.0.2.12\"")).contains("is also a peer")
        );
    }

    #[test]
    fn ipv6_instances_lead_with_a_link_local_vip() {
        let v6 = |extra: &str| GOOD.replace("\"192.0.2.10/24\", \"192.0.2.20\"", "\"2001:db8::10/64\"") + extra;
        let c = parse(&v6(""), Path::new("t")).expect("valid");
        let v = &c.vrrp[0];
        let addrs: Vec<String> = v.virtual_ips.iter().map(|v| v.to_string()).collect();
        // None listed: the one of the virtual MAC 00-00-5E-00-02-33 (VRID 51).
        assert_eq!(addrs, ["fe80::200:5eff:fe00:233/64", "2001:db8::10/64"]);
        assert_eq!(v.spec.virtual_ips.len(), 2);
        assert_eq!(v.spec.family(), crate::vrrp::packet::Family::V6);
        // Listed anywhere: it goes first; or named by link_local_vip.
        let listed = GOOD.replace("\"192.0.2.10/24\", \"192.0.2.20\"", "\"2001:db8::10/64\", \"fe80::10/64\"");
        let c = parse(&listed, Path::new("t")).expect("valid");
        assert_eq!(c.vrrp[0].virtual_ips[0].to_string(), "fe80::10/64");
        let named = parse(&v6("link_local_vip = \"fe80::77\"\n"), Path::new("t")).expect("valid");
        assert_eq!(named.vrrp[0].virtual_ips[0].to_string(), "fe80::77/64");
        assert_eq!(named.vrrp[0].virtual_ips.len(), 2);
        assert!(err(&v6("link_local_vip = \"2001:db8::1\"\n")).contains("not an fe80::/10 address"));
        assert!(err(&with("link_local_vip = \"fe80::1\"")).contains("only for an IPv6 instance"));
        let mixed = GOOD.replace("\"192.0.2.20\"", "\"2001:db8::20\"");
        assert!(err(&mixed).contains("IPv4 and IPv6 addresses in one instance"));
        assert!(err(&v6("").replace("advert_interval = \"100ms\"", "advert_interval = \"1s\"\nversion = 2"))
            .contains("IPv6 needs version = 3"));
        assert!(err(&GOOD.replace("192.0.2.20", "2001:db8::20/129")).contains("prefix length must be 0..=128"));
    }

    #[test]
    fn ipv6_unicast_peers() {
        let v6 = GOOD.replace("\"192.0.2.10/24\", \"192.0.2.20\"", "\"2001:db8::10/64\"");
        let with6 = |line: &str| v6.replace("priority = 150", &format!("priority = 150\n{line}"));
        assert!(parse(&with6("unicast_peers = [\"fe80::12\"]"), Path::new("t")).is_ok());
        assert!(err(&with6("unicast_peers = [\"2001:db8::12\"]")).contains("needs unicast_source"));
        assert!(parse(&with6("unicast_peers = [\"2001:db8::12\"]\nunicast_source = \"2001:db8::11\""), Path::new("t"))
            .is_ok());
        assert!(err(&with6("unicast_peers = [\"fe80::12\"]\nuse_vmac = true")).contains("not with unicast_peers"));
    }

    #[test]
    fn virtual_mac() {
        let c = parse(&with("use_vmac = true"), Path::new("t")).expect("valid");
        assert_eq!(c.vrrp[0].vmac, Some(Vmac { name: "vrrp.51".into(), mac: [0, 0, 0x5e, 0, 1, 51], ipv6: false }));
        assert_eq!(parse(GOOD, Path::new("t")).expect("valid").vrrp[0].vmac, None);
        let named = parse(&with("use_vmac = true\nvmac_interface = \"vip51\""), Path::new("t")).expect("valid");
        assert_eq!(named.vrrp[0].vmac.as_ref().map(|v| v.name.as_str()), Some("vip51"));
        assert!(err(&with("vmac_interface = \"vip51\"")).contains("only with use_vmac = true"));
        assert!(err(&with("use_vmac = true\nvmac_interface = \"eth0\"")).contains("not a usable interface name"));
        let v6 = GOOD.replace("\"192.0.2.10/24\", \"192.0.2.20\"", "\"2001:db8::10/64\"");
        let c = parse(&v6.replace("priority = 150", "priority = 150\nuse_vmac = true"), Path::new("t")).expect("valid");
        assert_eq!(c.vrrp[0].vmac, Some(Vmac { name: "vrrp6.51".into(), mac: [0, 0, 0x5e, 0, 2, 51], ipv6: true }));
    }

    #[test]
    fn reload_takes_instance_settings_and_refuses_the_rest() {
        let old = parse(GOOD, Path::new("t")).expect("valid");
        let same = parse(GOOD, Path::new("t")).expect("valid");
        assert_eq!(reload_refusal(&old, &same), None);
        let settings = parse(
            &GOOD
                .replace("priority = 150", "priority = 140\npreempt = false")
                .replace("\"192.0.2.20\"", "\"192.0.2.30\""),
            Path::new("t"),
        )
        .expect("valid");
        assert_eq!(reload_refusal(&old, &settings), None);
        let http = "[[http]]\nname = \"site\"\nlisten = \"127.0.0.1:8080\"\nbackends = [\"192.0.2.21:80\"]\n";
        let with_http = parse(&format!("{GOOD}\n{http}"), Path::new("t")).expect("valid");
        assert_eq!(reload_refusal(&old, &with_http), None, "a listener added");
        assert_eq!(reload_refusal(&with_http, &old), None, "a listener removed");
        let refused = |text: &str| {
            let new = parse(text, Path::new("t")).expect("valid");
            reload_refusal(&old, &new).expect("refused")
        };
        assert!(refused(&GOOD.replace("vrid = 51", "vrid = 52")).contains("vrid changed"));
        assert!(refused(&GOOD.replace("interface = \"eth0\"", "interface = \"eth1\"")).contains("interface changed"));
        // Instances are known by name: a rename is a removal and an addition,
        // in two reloads when the VRID stays on the interface.
        let renamed = parse(&GOOD.replace("name = \"web\"", "name = \"www\""), Path::new("t")).expect("valid");
        assert!(reload_refusal(&old, &renamed).expect("refused").contains("would take VRID 51"));
        let moved =
            parse(&GOOD.replace("name = \"web\"", "name = \"www\"").replace("vrid = 51", "vrid = 52"), Path::new("t"))
                .expect("valid");
        assert_eq!(reload_refusal(&old, &moved), None);
        let second = GOOD[GOOD.find("[[vrrp]]").unwrap_or(0)..]
            .replace("\"web\"", "\"api\"")
            .replace("51", "52")
            .replace("192.0.2.10/24\", \"192.0.2.20", "192.0.2.30/24");
        let two = parse(&format!("{GOOD}\n{second}"), Path::new("t")).expect("valid");
        assert_eq!(reload_refusal(&old, &two), None, "an instance added");
        assert_eq!(reload_refusal(&two, &old), None, "an instance removed");
        let tracked = with("track_interfaces = [{ name = \"eth1\" }]")
            .replace("\"web\"", "\"www\"")
            .replace("vrid = 51", "vrid = 53");
        let tracked = parse(&tracked, Path::new("t")).expect("valid");
        assert_eq!(reload_refusal(&old, &tracked), None, "an instance with trackers added (and one removed)");
        assert!(refused(&with("use_vmac = true")).contains("use_vmac"));
        assert!(refused(&GOOD.replace("9191", "9192")).contains("[control]"));
        assert!(refused(&GOOD.replace("priority = 150", "priority = 255")).contains("address owner"));
    }

    #[test]
    fn v2_accepts_whole_seconds() {
        let c = parse(&with("version = 2").replace("100ms", "2s"), Path::new("t")).expect("valid");
        assert_eq!(c.vrrp[0].spec.advert_interval.get(), 200);
    }

    #[test]
    fn unknown_keys_and_syntax_errors_have_a_line() {
        let e = err(&with("prority = 3"));
        assert!(e.starts_with("t.toml:10:1:"), "{e}");
        assert!(e.contains("prority"), "{e}");
        let e = err("[[vrrp]]\nname = \n");
        assert!(e.starts_with("t.toml:2:"), "{e}");
    }

    #[test]
    fn duplicate_vrid_on_one_interface_is_rejected() {
        let second = GOOD[GOOD.find("[[vrrp]]").unwrap_or(0)..].replace("web", "api");
        let twice = format!("{GOOD}\n{}", second.replace("192.0.2.10/24\", \"192.0.2.20", "192.0.2.30/24"));
        let e = err(&twice);
        assert!(e.contains("same VRID"), "{e}");
        assert!(e.starts_with("t.toml:15:13:"), "{e}");
        // Another VRID, but a VIP of the first instance: each would undo the other.
        let e = err(&format!("{GOOD}\n{}", second.replace("vrid = 51", "vrid = 52")));
        assert!(e.starts_with("t.toml:15:13:") && e.contains("is also a VIP of instance \"web\""), "{e}");
    }

    const HTTP: &str = r#"
[[http]]
name = "web"
listen = "0.0.0.0:8080"
balance = "least_conn"
backends = ["192.0.2.21:8080", { address = "192.0.2.22:8080", weight = 3 }]

[http.health]
path = "/healthz"
rise = 3
"#;

    #[test]
    fn announce_sections() {
        let text = format!(
            "{GOOD}{HTTP}\n[[announce]]\nname = \"anycast\"\nvirtual_ips = [\"198.51.100.10/32\"]\ntrack_http = [{{ listener = \"web\", min_healthy = 2 }}]\n"
        );
        let c = parse(&text, Path::new("t.toml")).expect("valid");
        let a = &c.announce[0];
        assert_eq!((a.name.as_str(), a.interface.as_str()), ("anycast", "vip0"));
        assert_eq!(a.withdraw_delay, Duration::from_secs(3));
        assert_eq!(a.virtual_ips[0].to_string(), "198.51.100.10/32");
        assert_eq!(
            a.trackers,
            vec![TrackerSpec { watched: Watched::Http { listener: "web".into(), min_healthy: 2 }, weight: 0 }]
        );
        let bad = |extra: &str| err(&format!("{GOOD}{HTTP}\n[[announce]]\nname = \"a\"\n{extra}\n"));
        let e = bad("virtual_ips = [\"192.0.2.10/32\"]");
        assert!(e.contains("also a VIP of [[vrrp]] \"web\""), "{e}");
        let e = bad("virtual_ips = [\"198.51.100.10/32\"]\ninterface = \"eth0\"");
        assert!(e.contains("[[vrrp]] \"web\" runs there"), "{e}");
        let e = bad("virtual_ips = [\"198.51.100.10/32\"]\ntrack_http = [{ listener = \"web\", weight = 10 }]");
        assert!(e.contains("announce.track_http: weight"), "{e}");
        let e = bad("virtual_ips = [\"198.51.100.10/32\"]\ntrack_http = [{ listener = \"nope\" }]");
        assert!(e.contains("announce.track_http: listener \"nope\""), "{e}");
        let e = bad("virtual_ips = [\"198.51.100.10/32\"]\ninterface = \"lo\"");
        assert!(e.contains("not a usable interface name"), "{e}");
        let e = bad("virtual_ips = [\"198.51.100.10/32\"]\nwithdraw_delay = \"301s\"");
        assert!(e.contains("at most 300s"), "{e}");
        let e = bad("virtual_ips = []");
        assert!(e.contains("at least one address"), "{e}");
        // A reload does not change announcements.
        let mut other = c.clone();
        other.announce[0].withdraw_delay = Duration::from_secs(5);
        assert!(reload_refusal(&c, &other).is_some_and(|r| r.contains("[[announce]] changed")));
    }

    #[test]
    fn http_section_and_defaults() {
        let c = parse(HTTP, Path::new("t.toml")).expect("valid");
        assert!(c.vrrp.is_empty());
        let h = &c.http[0];
        assert_eq!(h.balance, Algorithm::LeastConn);
        assert_eq!(h.backends[1].weight, 3);
        assert_eq!(h.backends[0].weight, 1);
        let health = h.health.as_ref().expect("health");
        assert_eq!((health.path.as_str(), health.rise, health.fall), ("/healthz", 3, 3));
        assert_eq!(h.connect_timeout, Duration::from_secs(1));
        assert_eq!(h.retries, 2);
        assert!(h.access_log);
    }

    #[test]
    fn http_errors_name_key_and_line() {
        let e = err(&HTTP.replace("least_conn", "fastest"));
        assert!(e.starts_with("t.toml:5:11: http.balance = \"fastest\""), "{e}");
        let e = err(&HTTP.replace("weight = 3", "weight = 0"));
        assert!(e.contains("weight 0: must be 1..=1000"), "{e}");
        let e = err(&HTTP.replace("192.0.2.21:8080", "192.0.2.21"));
        assert!(e.starts_with("t.toml:6:"), "{e}");
        let e = err(&HTTP.replace("rise = 3", "rise = 0"));
        assert!(e.contains("http.health.rise = 0: must be 1..=100"), "{e}");
        let e = err(&HTTP.replace("/healthz", "healthz"));
        assert!(e.contains("must start with /"), "{e}");
        let e = err(&format!(
            "{HTTP}\n{}",
            HTTP.replace("web", "api").replace("[http.health]\npath = \"/healthz\"\nrise = 3\n", "")
        ));
        assert!(e.contains("already used by [[http]] \"web\""), "{e}");
        // Nothing configured is valid (the packaged file): vipd then only
        // serves its control endpoint until a reload brings something.
        let empty = parse("", Path::new("t.toml")).expect("valid");
        assert!(empty.vrrp.is_empty() && empty.http.is_empty());
    }

    #[test]
    fn trackers_and_hooks() {
        let text = format!(
            "{}{HTTP}\n[[track_script]]\nname = \"db\"\ncommand = [\"/bin/true\"]\ninterval = \"1s\"\n",
            with(
                "track_http = [{ listener = \"web\", min_healthy = 2, weight = 60 }]\n\
                 track_interfaces = [{ name = \"eth1\", weight = 50 }]\n\
                 track_scripts = [{ name = \"db\", weight = 30 }, { name = \"up\", command = [\"true\", \"x\"] }]\n\
                 notify = [\"/bin/true\"]\nnotify_master = [\"/bin/true\", \"m\"]\nnotify_timeout = \"3s\""
            )
        );
        let c = parse(&text, Path::new("t.toml")).expect("valid");
        let v = &c.vrrp[0];
        assert_eq!(v.trackers.len(), 4);
        assert_eq!(
            v.trackers[0],
            TrackerSpec { watched: Watched::Http { listener: "web".into(), min_healthy: 2 }, weight: 60 }
        );
        assert_eq!(v.trackers[3], TrackerSpec { watched: Watched::Script { name: "up".into() }, weight: 0 });
        assert_eq!(c.scripts.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["db", "up"]);
        assert_eq!((c.scripts[0].interval, c.scripts[0].rise, c.scripts[0].fall), (Duration::from_secs(1), 2, 3));
        assert_eq!(v.notify.master, Some(vec!["/bin/true".to_string(), "m".into()]));
        assert_eq!(v.notify.timeout, Duration::from_secs(3));
        assert!(v.notify.backup.is_none());
    }

    #[test]
    fn tracker_errors_name_key_and_line() {
        let e = err(&with("track_http = [{ listener = \"nope\" }]"));
        assert!(e.starts_with("t.toml:10:") && e.contains("listener \"nope\" is not the name"), "{e}");
        let e = err(&GOOD.replace("priority = 150", "priority = 255\ntrack_interfaces = [{ name = \"eth1\" }]"));
        assert!(e.starts_with("t.toml:9:12:") && e.contains("owner is never lowered"), "{e}");
        let e = err(&with("track_scripts = [{ name = \"x\", command = [\"/no/such/check\"] }]"));
        assert!(e.starts_with("t.toml:10:") && e.contains("program \"/no/such/check\" not found"), "{e}");
        let e = err(&with("track_scripts = [{ name = \"db\", weight = 30 }]"));
        assert!(e.contains("no command and no [[track_script]]"), "{e}");
        let e = err(&with("track_interfaces = [{ name = \"eth1\", weight = 254 }]"));
        assert!(e.contains("weight 254: must be 0..=253"), "{e}");
        let e = err(&with("track_interfaces = [{ name = \"eth0\" }]"));
        assert!(e.contains("own interface"), "{e}");
        let e = err(&with("notify = []"));
        assert!(e.contains("vrrp.notify: the command is empty"), "{e}");
        let e = err(&with("track_scripts = [{ name = \"x\", command = [\"true\"], timeout = \"0s\" }]"));
        assert!(e.contains("timeout = \"0s\""), "{e}");
    }

    #[test]
    fn sync_groups_name_real_instances_once() {
        let two = format!(
            "{GOOD}\n{}",
            GOOD[GOOD.find("[[vrrp]]").unwrap_or(0)..]
                .replace("web", "lan")
                .replace("eth0", "eth1")
                .replace("192.0.2.10/24\", \"192.0.2.20", "198.51.100.10/24")
        );
        let c =
            parse(&format!("{two}\n[[sync_group]]\nname = \"edge\"\ninstances = [\"web\", \"lan\"]\n"), Path::new("t"))
                .expect("valid");
        assert_eq!(c.sync_groups[0].instances, ["web", "lan"]);
        let e = err(&format!("{two}\n[[sync_group]]\nname = \"edge\"\ninstances = [\"web\", \"wan\"]\n"));
        assert!(e.contains("\"wan\" is not the name of a [[vrrp]] instance"), "{e}");
        let e = err(&format!("{two}\n[[sync_group]]\nname = \"edge\"\ninstances = [\"web\"]\n"));
        assert!(e.contains("needs two instances"), "{e}");
        let e = err(&format!(
            "{two}\n[[sync_group]]\nname = \"a\"\ninstances = [\"web\", \"lan\"]\n[[sync_group]]\nname = \"b\"\ninstances = [\"lan\", \"web\"]\n"
        ));
        assert!(e.contains("in a sync group already"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }
}
