//! Link-layer frames that move clients' neighbour caches to the new master:
//! gratuitous ARP (RFC 5227 §3 "ARP Announcement", as RFC 5798 §6.4.2
//! asks). Built with pnet_packet. Pure.

use std::net::Ipv4Addr;

use pnet_base::MacAddr;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, MutableEthernetPacket};

/// Ethernet header (14) + ARP for IPv4 over Ethernet (28).
pub const GARP_LEN: usize = 42;

/// An ARP request announcing `vip` at `mac`: sender = target = the VIP,
/// target hardware address broadcast, sent to the broadcast address. This is
/// the form keepalived sends and that every neighbour cache accepts.
pub fn gratuitous_arp(mac: [u8; 6], vip: Ipv4Addr) -> [u8; GARP_LEN] {
    let mut frame = [0u8; GARP_LEN];
    let mac = MacAddr::from(mac);
    {
        let Some(mut eth) = MutableEthernetPacket::new(&mut frame[..]) else {
            unreachable!("GARP_LEN holds an Ethernet header")
        };
        eth.set_destination(MacAddr::broadcast());
        eth.set_source(mac);
        eth.set_ethertype(EtherTypes::Arp);
    }
    let Some(mut arp) = MutableArpPacket::new(&mut frame[14..]) else { unreachable!("GARP_LEN holds an ARP packet") };
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(ArpOperations::Request);
    arp.set_sender_hw_addr(mac);
    arp.set_sender_proto_addr(vip);
    arp.set_target_hw_addr(MacAddr::broadcast());
    arp.set_target_proto_addr(vip);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_keepalived_garp() {
        // v3-garp in tests/vectors/vectors.txt: lb2 (02:00:5e:10:00:12) announcing 192.0.2.10.
        let text = include_str!("../../tests/vectors/vectors.txt");
        let arp_hex = text.lines().find_map(|l| l.trim().strip_prefix("arp_hex=")).expect("a GARP vector");
        let arp: Vec<u8> =
            (0..arp_hex.len()).step_by(2).map(|i| u8::from_str_radix(&arp_hex[i..i + 2], 16).expect("hex")).collect();
        let frame = gratuitous_arp([0x02, 0x00, 0x5e, 0x10, 0x00, 0x12], Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(&frame[0..6], &[0xff; 6]);
        assert_eq!(&frame[6..12], &[0x02, 0x00, 0x5e, 0x10, 0x00, 0x12]);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(&frame[14..], &arp[..]);
    }
}
