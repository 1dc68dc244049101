//! Sends gratuitous ARP frames on a send-only AF_PACKET socket (protocol 0,
//! so the kernel never copies received frames to us).

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::libc;
use nix::sys::socket::{sendto, socket, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, SockaddrLike};

/// A raw link-layer sender bound to one interface.
#[derive(Debug)]
pub struct Announcer {
    fd: OwnedFd,
    dest: LinkAddr,
}

impl Announcer {
    /// Opens the sender for interface index `ifindex`.
    pub fn open(ifindex: u32) -> io::Result<Self> {
        let fd = socket(AddressFamily::Packet, SockType::Raw, SockFlag::SOCK_CLOEXEC, None)?;
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = i32::try_from(ifindex).map_err(|_| io::Error::other("interface index out of range"))?;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: the pointer and length describe the sockaddr_ll above.
        let dest = unsafe { LinkAddr::from_raw(&sll as *const libc::sockaddr_ll as *const libc::sockaddr, Some(len)) }
            .ok_or_else(|| io::Error::other("could not build a link-layer address"))?;
        Ok(Announcer { fd, dest })
    }

    /// Sends one complete Ethernet frame; never blocks.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        sendto(self.fd.as_raw_fd(), frame, &self.dest, MsgFlags::MSG_DONTWAIT)?;
        Ok(())
    }
}
