//! The raw IPPROTO_VRRP socket of one interface: bound to it, joined to
//! 224.0.0.18 there only, TTL 255 on send, no multicast loopback; each
//! advert names its source address. Thin: it moves bytes, the codec in
//! `packet` and the router judge them.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrIn};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::packet::{IPPROTO_VRRP, MULTICAST_V4, REQUIRED_TTL};

/// IP TOS of adverts: precedence "internetwork control", as routers send them.
const TOS_INTERNETWORK_CONTROL: u32 = 0xc0;

/// A non-blocking raw VRRP socket registered with tokio.
#[derive(Debug)]
pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
    ifindex: u32,
}

impl VrrpSocket {
    /// Opens the socket on `ifname` (index `ifindex`).
    pub fn open(ifname: &str, ifindex: u32) -> io::Result<Self> {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(i32::from(IPPROTO_VRRP))))?;
        // Only this interface's packets, and only the groups this socket joined.
        s.bind_device(Some(ifname.as_bytes()))?;
        s.set_multicast_all_v4(false)?;
        s.join_multicast_v4_n(&MULTICAST_V4, &InterfaceIndexOrAddress::Index(ifindex))?;
        // Not bind(): a bound raw socket only receives packets addressed to
        // the bound address, and adverts go to 224.0.0.18 (or to us, from
        // unicast peers). Each send names its source instead.
        s.set_multicast_loop_v4(false)?;
        s.set_multicast_ttl_v4(u32::from(REQUIRED_TTL))?;
        s.set_ttl_v4(u32::from(REQUIRED_TTL))?;
        s.set_tos_v4(TOS_INTERNETWORK_CONTROL)?;
        s.set_nonblocking(true)?;
        // SAFETY: the AsyncFd owns the socket from here on; the descriptor is
        // closed only when the AsyncFd (and with it the registration) drops.
        let fd = unsafe { AsyncFd::register(s) }.map_err(|e| e.into_parts().1)?;
        Ok(VrrpSocket { fd, ifindex })
    }

    /// A packet already queued on the socket, without waiting: `None` when
    /// there is none.
    pub fn try_recv(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: as in `recv`.
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
        self.fd.get_ref().recv(uninit).ok()
    }

    /// Receives one whole IPv4 packet (raw IPv4 sockets deliver the header).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            // SAFETY: a &mut [u8] is a valid &mut [MaybeUninit<u8>]; recv only writes.
            let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
            match guard.try_io(|fd| fd.get_ref().recv(uninit)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one VRRP message from `source` (IP_PKTINFO: the kernel refuses
    /// an address the host no longer has) out of our interface; the kernel
    /// adds the IP header.
    pub fn send(&self, msg: &[u8], source: Ipv4Addr, destination: Ipv4Addr) -> io::Result<()> {
        let info = nix::libc::in_pktinfo {
            ipi_ifindex: i32::try_from(self.ifindex).unwrap_or_default(),
            ipi_spec_dst: nix::libc::in_addr { s_addr: u32::from(source).to_be() },
            ipi_addr: nix::libc::in_addr { s_addr: 0 },
        };
        let to = SockaddrIn::from(SocketAddrV4::new(destination, 0));
        let n = sendmsg(
            self.fd.get_ref().as_raw_fd(),
            &[IoSlice::new(msg)],
            &[ControlMessage::Ipv4PacketInfo(&info)],
            MsgFlags::empty(),
            Some(&to),
        )
        .map_err(io::Error::from)?;
        if n == msg.len() {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::WriteZero, "short send of a VRRP advert"))
        }
    }
}
