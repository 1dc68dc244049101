//! Netlink (rtnetlink): look up the interface, list, add and delete the
//! virtual addresses. Adds use replace semantics so a repeat is harmless;
//! deleting an address that is not there counts as success.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{AddressMessageBuilder, Handle, MulticastGroup};
use tokio::sync::{broadcast, watch};

use crate::config::VirtualIp;

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

/// A netlink handle; its connection task runs on the caller's runtime.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

/// errno values the kernel returns for "that address is not there".
const EADDRNOTAVAIL: i32 = 99;
const ENOENT: i32 = 2;
const ENODEV: i32 = 19;

fn is_absent(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.is_some_and(|c| [EADDRNOTAVAIL, ENOENT, ENODEV].contains(&c.get().abs())))
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
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        let msg = match links.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Err(NetlinkError::NoSuchLink(name.to_string())),
            Err(e) if is_absent(&e) => return Err(NetlinkError::NoSuchLink(name.to_string())),
            Err(source) => {
                return Err(NetlinkError::Request { what: format!("looking up interface {name:?}"), source })
            }
        };
        let mac = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                _ => None,
            })
            .ok_or_else(|| NetlinkError::NoMac(name.to_string()))?;
        let flags = msg.header.flags;
        Ok(Link {
            index: msg.header.index,
            mac,
            up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp),
        })
    }

    async fn ipv4_addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, AddressMessage)>, NetlinkError> {
        let mut stream = self.handle.address().get().set_link_index_filter(index).execute();
        let mut out = Vec::new();
        loop {
            match stream.try_next().await {
                Ok(Some(msg)) => {
                    let addr = msg.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Local(IpAddr::V4(v4)) => Some(*v4),
                        _ => None,
                    });
                    if let Some(addr) = addr {
                        out.push((addr, msg));
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

    /// The interface's primary IPv4 address that is not one of `vips`: the
    /// source of our adverts and our identity in the tie-break.
    pub async fn primary_ipv4(&self, index: u32, vips: &[VirtualIp]) -> Result<Option<Ipv4Addr>, NetlinkError> {
        let addrs = self.ipv4_addresses(index).await?;
        let candidates = addrs.iter().filter(|(a, _)| !vips.iter().any(|v| v.addr == *a));
        let primary = candidates
            .clone()
            .find(|(_, m)| !m.header.flags.contains(AddressHeaderFlags::Secondary))
            .or_else(|| candidates.clone().next());
        Ok(primary.map(|(a, _)| *a))
    }

    /// Whether `vip` is on the interface.
    pub async fn has(&self, index: u32, vip: &VirtualIp) -> Result<bool, NetlinkError> {
        Ok(self.ipv4_addresses(index).await?.iter().any(|(a, _)| *a == vip.addr))
    }

    /// Adds `vip`; replaces an identical one, so repeating is harmless.
    pub async fn add(&self, index: u32, vip: &VirtualIp) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(index, IpAddr::V4(vip.addr), vip.prefix_len)
            .replace()
            .execute()
            .await
            .map_err(|source| NetlinkError::Request { what: format!("adding {vip}"), source })
    }

    /// Deletes `vip`; an address that is not there is not an error.
    pub async fn del(&self, index: u32, vip: &VirtualIp) -> Result<(), NetlinkError> {
        let msg = AddressMessageBuilder::<Ipv4Addr>::new().index(index).address(vip.addr, vip.prefix_len).build();
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_absent(&e) => Ok(()),
            Err(source) => Err(NetlinkError::Request { what: format!("deleting {vip}"), source }),
        }
    }
}

/// Subscribes to the kernel's `group` events and hands each message to
/// `each`, on a task of its own, for as long as the socket lives.
fn watch_group(
    group: MulticastGroup,
    mut each: impl FnMut(RouteNetlinkMessage) + Send + 'static,
) -> Result<(), NetlinkError> {
    let (connection, _handle, mut messages) = rtnetlink::new_multicast_connection(&[group])?;
    tokio::spawn(connection);
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            if let NetlinkPayload::InnerMessage(m) = message.payload {
                each(m);
            }
        }
    });
    Ok(())
}

/// Publishes every interface's "usable" state (up with carrier) on the
/// watch channel registered for its name, from the kernel's link events.
/// Subscribe before reading the initial state so no change falls between.
pub fn watch_links(mut senders: HashMap<String, watch::Sender<bool>>) -> Result<(), NetlinkError> {
    watch_group(MulticastGroup::Link, move |message| {
        let (msg, exists) = match message {
            RouteNetlinkMessage::NewLink(m) => (m, true),
            RouteNetlinkMessage::DelLink(m) => (m, false),
            _ => return,
        };
        let name = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.as_str()),
            _ => None,
        });
        if let Some(tx) = name.and_then(|n| senders.get_mut(n)) {
            let up =
                exists && msg.header.flags.contains(LinkFlags::Up) && msg.header.flags.contains(LinkFlags::LowerUp);
            // Every event is delivered, not only changes of the value held
            // here: each instance compares with what it read at start (a
            // link down at start must hear its first "up").
            tx.send_replace(up);
        }
    })
}

/// An IPv4 address added to or removed from an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrEvent {
    /// Interface index.
    pub index: u32,
    /// The address.
    pub addr: Ipv4Addr,
    /// Added (else removed).
    pub added: bool,
}

/// Publishes every IPv4 address change of every interface on `tx`, from
/// the kernel's address events (someone deleting a VIP, or the primary).
pub fn watch_addresses(tx: broadcast::Sender<AddrEvent>) -> Result<(), NetlinkError> {
    watch_group(MulticastGroup::Ipv4Ifaddr, move |message| {
        let (msg, added) = match message {
            RouteNetlinkMessage::NewAddress(m) => (m, true),
            RouteNetlinkMessage::DelAddress(m) => (m, false),
            _ => return,
        };
        let addr = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(v4)) => Some(*v4),
            _ => None,
        });
        if let Some(addr) = addr {
            // No receiver (no instance yet or any more) is not an error.
            let _ = tx.send(AddrEvent { index: msg.header.index, addr, added });
        }
    })
}
