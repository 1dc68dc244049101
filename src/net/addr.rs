//! Netlink (rtnetlink): look up the interface, list, add and delete the
//! virtual addresses. Adds use replace semantics so a repeat is harmless;
//! deleting an address that is not there counts as success.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::MacVlanMode;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteScope, RouteType};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{
    AddressMessageBuilder, Handle, LinkDummy, LinkIfb, LinkMacVlan, LinkUnspec, MulticastGroup, RouteMessageBuilder,
};
use tokio::sync::{broadcast, watch};
use tracing::warn;

/// A virtual address with the prefix it is added with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualIp {
    /// The address.
    pub addr: IpAddr,
    /// Its prefix length on the interface.
    pub prefix_len: u8,
}

impl std::fmt::Display for VirtualIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Errors from the kernel's address and link tables.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened.
    #[error("opening netlink socket: {0}")]
    Open(#[from] std::io::Error),
    /// A request failed.
    #[error("{what}: {source}")]
    Request {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// A kernel setting could not be written.
    #[error("writing {path}: {source}")]
    Sysctl {
        /// The /proc/sys file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// No interface of that name.
    #[error("interface {0:?} does not exist")]
    NoSuchLink(String),
    /// The interface has no hardware address to announce.
    #[error("interface {0:?} has no Ethernet address")]
    NoMac(String),
}

/// What the instance needs to know about its interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Its MAC address, the source of gratuitous ARPs.
    pub mac: [u8; 6],
    /// Administratively up and with carrier.
    pub up: bool,
}

/// A macvlan that carries the virtual router MAC (RFC 9568 §7.3), so that
/// clients' neighbour entries for the VIPs never change on a failover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vmac {
    /// Its interface name (keepalived's default: `vrrp.{VRID}`).
    pub name: String,
    /// 00-00-5E-00-01-{VRID} (IPv4) or 00-00-5E-00-02-{VRID} (IPv6).
    pub mac: [u8; 6],
    /// For an IPv6 instance: the macvlan keeps IPv6, with a random
    /// link-local address (adverts go from it; the one its MAC would give
    /// is the same on every node).
    pub ipv6: bool,
}

/// A netlink handle; its connection task runs on the caller's runtime.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

/// errno values the kernel returns for "that address is not there".
const EADDRNOTAVAIL: i32 = 99;
const ENOENT: i32 = 2;
const ENODEV: i32 = 19;
/// A route that is not there.
const ESRCH: i32 = 3;
/// "Unknown device type": the kernel lacks that link driver.
const EOPNOTSUPP: i32 = 95;

/// The local routing table.
const RT_TABLE_LOCAL: u32 = 255;

/// Metric of the local routes [`Netlink::set_local_route`] adds: the
/// kernel's own for an interface address has 0, so both can be there.
const HOLD_METRIC: u32 = 1;

/// Longest [`Netlink::add`] waits for a new IPv6 address to take traffic,
/// and how often it looks.
const LOCAL_ROUTE_WAIT: Duration = Duration::from_millis(100);
const LOCAL_ROUTE_POLL: Duration = Duration::from_millis(1);

/// "No route to that destination" (`ip route get` of an address no route covers).
const ENETUNREACH: i32 = 101;
const EHOSTUNREACH: i32 = 113;

fn is_unreachable(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.is_some_and(|c| [ENETUNREACH, EHOSTUNREACH].contains(&c.get().abs())))
}

fn is_absent(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.is_some_and(|c| [EADDRNOTAVAIL, ENOENT, ENODEV, ESRCH].contains(&c.get().abs())))
}

impl Netlink {
    /// Opens the netlink socket and spawns its connection on the current runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// Index, MAC and state of the interface `name`.
    pub async fn link(&self, name: &str) -> Result<Link, NetlinkError> {
        let msg = self.link_message(name).await?;
        let mac = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                _ => None,
            })
            .ok_or_else(|| NetlinkError::NoMac(name.to_string()))?;
        Ok(Link { index: msg.header.index, mac, up: is_usable(&msg) })
    }

    async fn link_message(&self, name: &str) -> Result<LinkMessage, NetlinkError> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => Err(NetlinkError::NoSuchLink(name.to_string())),
            Err(e) if is_absent(&e) => Err(NetlinkError::NoSuchLink(name.to_string())),
            Err(source) => Err(NetlinkError::Request { what: format!("looking up interface {name:?}"), source }),
        }
    }

    /// The interface's addresses, with whether each is secondary (IPv4).
    /// IPv6 addresses still under duplicate address detection, or that
    /// failed it, are left out: nothing can be sent from them.
    pub async fn addresses_on(&self, index: u32) -> Result<Vec<(IpAddr, bool)>, NetlinkError> {
        let mut stream = self.handle.address().get().set_link_index_filter(index).execute();
        let mut out = Vec::new();
        loop {
            match stream.try_next().await {
                Ok(Some(msg)) => {
                    if let Some(a) = usable_address(&msg) {
                        out.push((a, msg.header.flags.contains(AddressHeaderFlags::Secondary)));
                    }
                }
                Ok(None) => return Ok(out),
                Err(source) => {
                    return Err(NetlinkError::Request {
                        what: format!("listing addresses of interface {index}"),
                        source,
                    })
                }
            }
        }
    }

    /// Whether the interface `name` is up with carrier. Unlike
    /// [`Netlink::link`] it needs no hardware address (tun, WireGuard).
    pub async fn link_up(&self, name: &str) -> Result<bool, NetlinkError> {
        Ok(is_usable(&self.link_message(name).await?))
    }

    /// Creates `vmac` on the interface `parent` (index): a macvlan in
    /// private mode with the virtual MAC, up. One left by an earlier run is
    /// replaced. Before it comes up, for IPv4: no IPv6 on it (its
    /// link-local address would be the same on every node), and ARP that
    /// answers and asks for each interface's own addresses only, on it and
    /// on its parent, so that the parent never speaks for a VIP with its
    /// own MAC; for IPv6: a random link-local address (neighbour discovery
    /// answers for an address on the interface it belongs to only, so the
    /// parent needs nothing). Returns the macvlan's index.
    pub async fn create_vmac(&self, parent: &str, parent_index: u32, vmac: &Vmac) -> Result<u32, NetlinkError> {
        self.delete_link(&vmac.name).await?;
        let what = || format!("creating macvlan {:?} on {parent:?}", vmac.name);
        let msg = LinkMacVlan::new(&vmac.name, parent_index, MacVlanMode::Private).address(vmac.mac.to_vec()).build();
        self.handle.link().add(msg).execute().await.map_err(|source| NetlinkError::Request { what: what(), source })?;
        let index = self.link_message(&vmac.name).await?.header.index;
        // arp_ignore=1: answer ARP only for addresses of the interface it
        // came in on; arp_announce=2: ask with an address of the interface
        // it goes out of. rp_filter=0 on the macvlan: replies to what comes
        // in on it leave through the parent.
        let name = vmac.name.as_str();
        let ipv4_settings = [
            (name, "ipv6/conf/{}/disable_ipv6", "1"),
            (name, "ipv4/conf/{}/arp_ignore", "1"),
            (name, "ipv4/conf/{}/arp_announce", "2"),
            (name, "ipv4/conf/{}/rp_filter", "0"),
            (parent, "ipv4/conf/{}/arp_ignore", "1"),
            (parent, "ipv4/conf/{}/arp_announce", "2"),
        ];
        // addr_gen_mode 3: a random interface identifier.
        let ipv6_settings = [(name, "ipv6/conf/{}/addr_gen_mode", "3")];
        let settings: &[(&str, &str, &str)] = if vmac.ipv6 { &ipv6_settings } else { &ipv4_settings };
        for &(iface, key, value) in settings {
            let path = format!("/proc/sys/net/{}", key.replace("{}", iface));
            if let Err(e) = std::fs::write(&path, value) {
                // Without IPv6 in the kernel there is nothing to turn off.
                if vmac.ipv6 || !key.starts_with("ipv6") {
                    return Err(NetlinkError::Sysctl { path, source: e });
                }
            }
        }
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|source| NetlinkError::Request { what: format!("bringing {:?} up", vmac.name), source })?;
        Ok(index)
    }

    /// The index of `name`, an interface that only holds addresses: an
    /// existing one is used as it is; otherwise a dummy is created (an ifb,
    /// which behaves the same, on kernels built without dummy). Brought up.
    pub async fn ensure_sink(&self, name: &str) -> Result<u32, NetlinkError> {
        let index = match self.link_message(name).await {
            Ok(m) => m.header.index,
            Err(NetlinkError::NoSuchLink(_)) => {
                let what = || format!("creating interface {name:?}");
                let added = self.handle.link().add(LinkDummy::new(name).build()).execute().await;
                match added {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(m)) if m.code.is_some_and(|c| c.get().abs() == EOPNOTSUPP) => {
                        self.handle
                            .link()
                            .add(LinkIfb::new(name).build())
                            .execute()
                            .await
                            .map_err(|source| NetlinkError::Request { what: what(), source })?;
                    }
                    Err(source) => return Err(NetlinkError::Request { what: what(), source }),
                }
                self.link_message(name).await?.header.index
            }
            Err(e) => return Err(e),
        };
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|source| NetlinkError::Request { what: format!("bringing {name:?} up"), source })?;
        Ok(index)
    }

    /// Makes `addr` local to this host without an address on any
    /// interface (with `present`; a `local` route in the local table, via
    /// lo), or stops that. Routing daemons do not export it (it is no
    /// connected route), and it comes and goes independently of the same
    /// address on an interface. Removing one that is not there is no error.
    pub async fn set_local_route(&self, addr: IpAddr, present: bool) -> Result<(), NetlinkError> {
        let lo = self.link_message("lo").await?.header.index;
        let msg = match addr {
            IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .table_id(RT_TABLE_LOCAL)
                .kind(RouteType::Local)
                .scope(RouteScope::Host)
                .output_interface(lo)
                .priority(HOLD_METRIC)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .table_id(RT_TABLE_LOCAL)
                .kind(RouteType::Local)
                .output_interface(lo)
                .priority(HOLD_METRIC)
                .build(),
        };
        let what = || format!("{} the local route for {addr}", if present { "adding" } else { "removing" });
        let result = match present {
            true => self.handle.route().add(msg).replace().execute().await,
            false => match self.handle.route().del(msg).execute().await {
                Err(e) if is_absent(&e) => Ok(()),
                other => other,
            },
        };
        result.map_err(|source| NetlinkError::Request { what: what(), source })
    }

    /// Deletes the interface `name`; one that does not exist is not an error.
    pub async fn delete_link(&self, name: &str) -> Result<(), NetlinkError> {
        let index = match self.link_message(name).await {
            Ok(m) => m.header.index,
            Err(NetlinkError::NoSuchLink(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_absent(&e) => Ok(()),
            Err(source) => Err(NetlinkError::Request { what: format!("deleting interface {name:?}"), source }),
        }
    }

    /// Whether `vip` is on the interface.
    pub async fn has(&self, index: u32, vip: &VirtualIp) -> Result<bool, NetlinkError> {
        Ok(self.addresses_on(index).await?.iter().any(|(a, _)| *a == vip.addr))
    }

    /// Adds `vip`; replaces an identical one, so repeating is harmless. An
    /// IPv6 one skips duplicate address detection (`nodad`): the address
    /// is ours to take over, and DAD would hold it back for a second or
    /// more (and fail it while the old master still answers).
    ///
    /// Without `prefix_route` the kernel adds no route for the prefix (a
    /// VIP on a macvlan: the parent's route stays the way out, so the
    /// host's own traffic never leaves with the VIP's address).
    pub async fn add(&self, index: u32, vip: &VirtualIp, prefix_route: bool) -> Result<(), NetlinkError> {
        let mut request = self.handle.address().add(index, vip.addr, vip.prefix_len).replace();
        let mut flags = AddressFlags::empty();
        if vip.addr.is_ipv6() {
            flags |= AddressFlags::Nodad;
            request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        if !prefix_route {
            flags |= AddressFlags::Noprefixroute;
        }
        if !flags.is_empty() {
            request.message_mut().attributes.push(AddressAttribute::Flags(flags));
        }
        request.execute().await.map_err(|source| NetlinkError::Request { what: format!("adding {vip}"), source })?;
        if vip.addr.is_ipv6() {
            self.wait_until_local(vip.addr).await;
        }
        Ok(())
    }

    /// Waits (at most [`LOCAL_ROUTE_WAIT`]) until the kernel delivers
    /// packets for the just added IPv6 `addr` to this host. The kernel
    /// acknowledges the address before its `local` route exists (addrconf
    /// inserts that from a work queue, later still while other netlink
    /// requests hold the lock): a neighbour advertisement sent right after
    /// the acknowledgement brings clients whose packets are dropped (seen:
    /// a SYN lost during a planned hand-over, the client timing out).
    async fn wait_until_local(&self, addr: IpAddr) {
        let deadline = Instant::now() + LOCAL_ROUTE_WAIT;
        loop {
            match self.is_local(addr).await {
                Ok(true) => return,
                Ok(false) if Instant::now() < deadline => tokio::time::sleep(LOCAL_ROUTE_POLL).await,
                Ok(false) => {
                    warn!(%addr, waited = ?LOCAL_ROUTE_WAIT, "the kernel does not deliver to a new address yet; going on");
                    return;
                }
                Err(e) => {
                    warn!(%addr, error = %e, "could not tell whether a new address takes traffic; going on");
                    return;
                }
            }
        }
    }

    /// Whether the kernel's route for `addr` is a `local` one (packets for
    /// it are delivered here), as `ip route get` tells.
    pub async fn is_local(&self, addr: IpAddr) -> Result<bool, NetlinkError> {
        let msg = match addr {
            IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(a, 32).build(),
            IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(a, 128).build(),
        };
        let mut routes = self.handle.route().get(msg).execute();
        match routes.try_next().await {
            Ok(route) => Ok(route.is_some_and(|r| r.header.kind == RouteType::Local)),
            Err(e) if is_unreachable(&e) => Ok(false),
            Err(source) => Err(NetlinkError::Request { what: format!("looking up the route to {addr}"), source }),
        }
    }

    /// Deletes `vip`; an address that is not there is not an error.
    pub async fn del(&self, index: u32, vip: &VirtualIp) -> Result<(), NetlinkError> {
        let msg = match vip.addr {
            IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new().index(index).address(a, vip.prefix_len).build(),
            IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new().index(index).address(a, vip.prefix_len).build(),
        };
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_absent(&e) => Ok(()),
            Err(source) => Err(NetlinkError::Request { what: format!("deleting {vip}"), source }),
        }
    }
}

/// The address a message describes: IFA_LOCAL for IPv4 (IFA_ADDRESS is
/// the peer's on point-to-point links), IFA_ADDRESS for IPv6; `None` for an
/// IPv6 address that is tentative or failed duplicate address detection.
fn usable_address(msg: &AddressMessage) -> Option<IpAddr> {
    let unusable = AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed;
    msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(v4)) => Some(IpAddr::V4(*v4)),
        AddressAttribute::Address(IpAddr::V6(v6)) if !msg.header.flags.intersects(unusable) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

/// Administratively up and with carrier.
fn is_usable(msg: &LinkMessage) -> bool {
    msg.header.flags.contains(LinkFlags::Up) && msg.header.flags.contains(LinkFlags::LowerUp)
}

/// What a kernel event subscription delivers.
enum Heard {
    /// One event.
    Message(RouteNetlinkMessage),
    /// The socket's buffer overflowed: events were lost.
    Lost,
}

/// Subscribes to the kernel's events of `groups` and hands each to `each`,
/// on a task of its own, for as long as the socket lives.
fn watch_group(groups: &[MulticastGroup], mut each: impl FnMut(Heard) + Send + 'static) -> Result<(), NetlinkError> {
    let (connection, _handle, mut messages) = rtnetlink::new_multicast_connection(groups)?;
    tokio::spawn(connection);
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            match message.payload {
                NetlinkPayload::InnerMessage(m) => each(Heard::Message(m)),
                NetlinkPayload::Overrun(_) => each(Heard::Lost),
                _ => {}
            }
        }
    });
    Ok(())
}

/// Publishes every interface's "usable" state (up with carrier) on the
/// watch channel registered for its name, from the kernel's link events.
/// Subscribe before reading the initial state so no change falls between.
pub fn watch_links(senders: HashMap<String, watch::Sender<bool>>) -> Result<(), NetlinkError> {
    // Each link's sender and a count of the events heard for it, so a
    // re-read after lost events never overwrites a newer event.
    let senders: Links = Arc::new(Mutex::new(senders.into_iter().map(|(n, tx)| (n, (tx, 0))).collect()));
    watch_group(&[MulticastGroup::Link], move |heard| {
        let (msg, exists) = match heard {
            Heard::Message(RouteNetlinkMessage::NewLink(m)) => (m, true),
            Heard::Message(RouteNetlinkMessage::DelLink(m)) => (m, false),
            Heard::Message(_) => return,
            // Events were lost: read every watched link afresh.
            Heard::Lost => {
                tokio::spawn(reread_links(Arc::clone(&senders)));
                return;
            }
        };
        let name = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.as_str()),
            _ => None,
        });
        let mut senders = senders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((tx, heard)) = name.and_then(|n| senders.get_mut(n)) {
            let up = exists && is_usable(&msg);
            *heard += 1;
            // Every event is delivered, not only changes of the value held
            // here: each instance compares with what it read at start (a
            // link down at start must hear its first "up").
            tx.send_replace(up);
        }
    })
}

/// The watched links: name -> (its channel, events heard for it).
type Links = Arc<Mutex<HashMap<String, (watch::Sender<bool>, u64)>>>;

/// Reads the state of every watched link after events were lost; a link
/// with an event heard meanwhile keeps what that event said.
async fn reread_links(senders: Links) {
    let Ok(netlink) = Netlink::connect() else { return };
    let before: Vec<(String, u64)> =
        senders.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(n, (_, h))| (n.clone(), *h)).collect();
    for (name, heard) in before {
        let up = netlink.link_up(&name).await.unwrap_or(false);
        if let Some((tx, now_heard)) = senders.lock().unwrap_or_else(|p| p.into_inner()).get(&name) {
            if *now_heard == heard {
                tx.send_replace(up);
            }
        }
    }
}

/// A change of some interface's IPv4 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrEvent {
    /// An address added to or removed from an interface.
    Changed {
        /// Interface index.
        index: u32,
        /// The address.
        addr: IpAddr,
        /// Added (else removed).
        added: bool,
    },
    /// Events were lost (the kernel's buffer overflowed): every interface
    /// may have changed.
    Lost,
}

/// Publishes every IPv4 address change of every interface on `tx`, from
/// the kernel's address events (someone deleting a VIP, or the primary).
pub fn watch_addresses(tx: broadcast::Sender<AddrEvent>) -> Result<(), NetlinkError> {
    watch_group(&[MulticastGroup::Ipv4Ifaddr, MulticastGroup::Ipv6Ifaddr], move |heard| {
        let (msg, added) = match heard {
            Heard::Message(RouteNetlinkMessage::NewAddress(m)) => (m, true),
            Heard::Message(RouteNetlinkMessage::DelAddress(m)) => (m, false),
            Heard::Message(_) => return,
            Heard::Lost => {
                let _ = tx.send(AddrEvent::Lost);
                return;
            }
        };
        // Any change matters, also an IPv6 address leaving its tentative state.
        let addr = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(v4)) => Some(IpAddr::V4(*v4)),
            AddressAttribute::Address(IpAddr::V6(v6)) => Some(IpAddr::V6(*v6)),
            _ => None,
        });
        if let Some(addr) = addr {
            // No receiver (no instance yet or any more) is not an error.
            let _ = tx.send(AddrEvent::Changed { index: msg.header.index, addr, added });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root: it runs in a network namespace of its own (made for the
    /// thread it runs on, gone with it), where only `lo` exists.
    #[test]
    fn an_added_ipv6_address_takes_traffic_when_add_returns() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root for a network namespace of its own");
            return;
        }
        let run = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a new network namespace");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let netlink = Netlink::connect().expect("netlink");
                let lo = netlink.link_message("lo").await.expect("lo").header.index;
                let up = LinkUnspec::new_with_index(lo).up().build();
                netlink.handle.link().set(up).execute().await.expect("lo up");
                let nowhere = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
                assert!(
                    !netlink.is_local(nowhere).await.expect("route lookup"),
                    "{nowhere} is local before any address"
                );
                for i in 1..=64 {
                    let vip =
                        VirtualIp { addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i)), prefix_len: 64 };
                    netlink.add(lo, &vip, true).await.expect("add");
                    assert!(netlink.is_local(vip.addr).await.expect("route lookup"), "{vip} takes no traffic yet");
                }
            })
        });
        run.join().expect("the namespace's thread");
    }
}
