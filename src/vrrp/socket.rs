//! The raw IPPROTO_VRRP socket of one interface and address family: bound
//! to the interface, joined to 224.0.0.18 or ff02::12 there only, TTL (hop
//! limit) 255 on send, no multicast loopback; each advert names its source
//! address. Thin: it moves bytes, the codec in `packet` and the router judge
//! them.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6,
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::packet::{Family, IPPROTO_VRRP, MULTICAST_V4, MULTICAST_V6, REQUIRED_TTL};

/// IP TOS / IPv6 traffic class of adverts: precedence "internetwork
/// control", as routers send them.
const TOS_INTERNETWORK_CONTROL: u32 = 0xc0;

/// What one receive gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// A whole IPv4 packet of this length (raw IPv4 sockets deliver the header).
    Ipv4Packet(usize),
    /// A VRRP message over IPv6 (the header is not delivered; what it said
    /// comes in control messages).
    Ipv6Message {
        /// Message length.
        len: usize,
        /// The sender.
        source: Ipv6Addr,
        /// ff02::12, or ours for a unicast advert.
        destination: Ipv6Addr,
        /// Hop limit it arrived with (0 if the kernel did not say).
        hop_limit: u8,
    },
}

/// A non-blocking raw VRRP socket registered with tokio.
#[derive(Debug)]
pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
    /// Where adverts leave: the interface, or its macvlan with the virtual MAC.
    ifindex: u32,
    family: Family,
}

impl VrrpSocket {
    /// Opens the `family` socket on `ifname` (index `ifindex`).
    pub fn open(ifname: &str, ifindex: u32, family: Family) -> io::Result<Self> {
        let domain = match family {
            Family::V4 => Domain::IPV4,
            Family::V6 => Domain::IPV6,
        };
        let s = Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(IPPROTO_VRRP))))?;
        // Only this interface's packets, and only the groups this socket joined.
        s.bind_device(Some(ifname.as_bytes()))?;
        // Not bind(): a bound raw socket only receives packets addressed to
        // the bound address, and adverts go to the group (or to us, from
        // unicast peers). Each send names its source instead.
        match family {
            Family::V4 => {
                s.set_multicast_all_v4(false)?;
                s.join_multicast_v4_n(&MULTICAST_V4, &InterfaceIndexOrAddress::Index(ifindex))?;
                s.set_multicast_loop_v4(false)?;
                s.set_multicast_ttl_v4(u32::from(REQUIRED_TTL))?;
                s.set_ttl_v4(u32::from(REQUIRED_TTL))?;
                s.set_tos_v4(TOS_INTERNETWORK_CONTROL)?;
            }
            Family::V6 => {
                s.set_multicast_all_v6(false)?;
                s.join_multicast_v6(&MULTICAST_V6, ifindex)?;
                s.set_multicast_loop_v6(false)?;
                s.set_multicast_hops_v6(u32::from(REQUIRED_TTL))?;
                s.set_unicast_hops_v6(u32::from(REQUIRED_TTL))?;
                s.set_tclass_v6(TOS_INTERNETWORK_CONTROL)?;
                // The header is not delivered: ask for what the checks need.
                setsockopt(&s, sockopt::Ipv6RecvHopLimit, &true).map_err(io::Error::from)?;
                setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true).map_err(io::Error::from)?;
            }
        }
        s.set_nonblocking(true)?;
        // SAFETY: the AsyncFd owns the socket from here on; the descriptor is
        // closed only when the AsyncFd (and with it the registration) drops.
        let fd = unsafe { AsyncFd::register(s) }.map_err(|e| e.into_parts().1)?;
        Ok(VrrpSocket { fd, ifindex, family })
    }

    /// Adverts leave through interface `ifindex` (a macvlan of the one the
    /// socket is bound to, for the virtual MAC) while it receives on its own.
    pub fn send_via(&mut self, ifindex: u32) {
        self.ifindex = ifindex;
    }

    /// A packet already queued on the socket, without waiting: `None` when
    /// there is none.
    pub fn try_recv(&self, buf: &mut [u8]) -> Option<Recv> {
        self.recv_now(buf).ok()
    }

    /// Receives one packet.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Recv> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|_| self.recv_now(buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    fn recv_now(&self, buf: &mut [u8]) -> io::Result<Recv> {
        if self.family == Family::V4 {
            // SAFETY: a &mut [u8] is a valid &mut [MaybeUninit<u8>]; recv only writes.
            let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
            return self.fd.get_ref().recv(uninit).map(Recv::Ipv4Packet);
        }
        let mut space = nix::cmsg_space!(nix::libc::in6_pktinfo, nix::libc::c_int);
        let mut iov = [IoSliceMut::new(buf)];
        let fd = self.fd.get_ref().as_raw_fd();
        let msg = recvmsg::<SockaddrIn6>(fd, &mut iov, Some(&mut space), MsgFlags::empty()).map_err(io::Error::from)?;
        let source = msg.address.map_or(Ipv6Addr::UNSPECIFIED, |a| a.ip());
        let (mut destination, mut hop_limit) = (Ipv6Addr::UNSPECIFIED, 0u8);
        for c in msg.cmsgs().map_err(io::Error::from)? {
            match c {
                ControlMessageOwned::Ipv6HopLimit(h) => hop_limit = u8::try_from(h).unwrap_or(0),
                ControlMessageOwned::Ipv6PacketInfo(info) => destination = Ipv6Addr::from(info.ipi6_addr.s6_addr),
                _ => {}
            }
        }
        Ok(Recv::Ipv6Message { len: msg.bytes, source, destination, hop_limit })
    }

    /// Sends one VRRP message from `source` (the kernel refuses an address
    /// the host no longer has) out of our interface; the kernel adds the IP
    /// header.
    pub fn send(&self, msg: &[u8], source: IpAddr, destination: IpAddr) -> io::Result<()> {
        let fd = self.fd.get_ref().as_raw_fd();
        let iov = [IoSlice::new(msg)];
        let ifindex = i32::try_from(self.ifindex).unwrap_or_default();
        let n = match (source, destination) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let info = nix::libc::in_pktinfo {
                    ipi_ifindex: ifindex,
                    ipi_spec_dst: nix::libc::in_addr { s_addr: u32::from(s).to_be() },
                    ipi_addr: nix::libc::in_addr { s_addr: u32::from(Ipv4Addr::UNSPECIFIED) },
                };
                let to = SockaddrIn::from(SocketAddrV4::new(d, 0));
                sendmsg(fd, &iov, &[ControlMessage::Ipv4PacketInfo(&info)], MsgFlags::empty(), Some(&to))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let info = nix::libc::in6_pktinfo {
                    ipi6_addr: nix::libc::in6_addr { s6_addr: s.octets() },
                    ipi6_ifindex: self.ifindex,
                };
                let to = SockaddrIn6::from(SocketAddrV6::new(d, 0, 0, self.ifindex));
                sendmsg(fd, &iov, &[ControlMessage::Ipv6PacketInfo(&info)], MsgFlags::empty(), Some(&to))
            }
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "source and destination of two families")),
        }
        .map_err(io::Error::from)?;
        if n == msg.len() {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::WriteZero, "short send of a VRRP advert"))
        }
    }
}
