//! Link-layer frames that move clients' neighbour caches to the new master:
//! gratuitous ARP (RFC 5227 §3 "ARP Announcement", as RFC 9568 §6.4.2
//! asks) and unsolicited neighbour advertisements (RFC 4861 §7.2.6, as
//! RFC 9568 §6.4.2 asks for IPv6). Built with pnet_packet. Pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pnet_base::MacAddr;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, MutableEthernetPacket};
use pnet_packet::icmpv6::ndp::{MutableNeighborAdvertPacket, NdpOption, NdpOptionTypes, NeighborAdvertFlags};
use pnet_packet::icmpv6::{self, Icmpv6Code, Icmpv6Packet, Icmpv6Types};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv6::MutableIpv6Packet;

/// Ethernet header (14) + ARP for IPv4 over Ethernet (28).
pub const GARP_LEN: usize = 42;

/// An ARP request announcing `vip` at `mac`, sent to the broadcast
/// address: sender = target = the VIP, and the target hardware address is
/// `mac` too, as RFC 9568 §6.4.1/§6.4.2 say with errata 7947 and 7949 (the
/// Virtual Router's IPv4 address, target link-layer address the Virtual
/// Router MAC). keepalived puts the broadcast address there; receivers
/// ignore the field in a request (RFC 5227 §3), and Linux takes an ARP
/// *reply* as gratuitous only when it equals the sender's, so this form
/// moves every neighbour cache the other one does.
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
    arp.set_target_hw_addr(mac);
    arp.set_target_proto_addr(vip);
    frame
}

/// Ethernet (14) + IPv6 (40) + neighbour advertisement (24) + target
/// link-layer address option (8).
pub const NA_LEN: usize = 86;

/// All-nodes multicast, where unsolicited advertisements go.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// An unsolicited neighbour advertisement of `vip` at `mac`: from the VIP
/// to all nodes, hop limit 255, Override set (so caches take the new
/// address), Solicited clear, Router as `router` says, with the target
/// link-layer address option.
pub fn unsolicited_na(mac: [u8; 6], vip: Ipv6Addr, router: bool) -> [u8; NA_LEN] {
    let mut frame = [0u8; NA_LEN];
    let mac = MacAddr::from(mac);
    {
        let Some(mut eth) = MutableEthernetPacket::new(&mut frame[..]) else {
            unreachable!("NA_LEN holds an Ethernet header")
        };
        // 33:33 + the low 32 bits of ff02::1 (RFC 2464 §7).
        eth.set_destination(MacAddr::new(0x33, 0x33, 0, 0, 0, 1));
        eth.set_source(mac);
        eth.set_ethertype(EtherTypes::Ipv6);
    }
    {
        let Some(mut ip) = MutableIpv6Packet::new(&mut frame[14..]) else { unreachable!("NA_LEN holds IPv6") };
        ip.set_version(6);
        ip.set_payload_length((NA_LEN - 54) as u16);
        ip.set_next_header(IpNextHeaderProtocols::Icmpv6);
        ip.set_hop_limit(255);
        ip.set_source(vip);
        ip.set_destination(ALL_NODES);
    }
    {
        let Some(mut na) = MutableNeighborAdvertPacket::new(&mut frame[54..]) else {
            unreachable!("NA_LEN holds the advertisement")
        };
        na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
        na.set_icmpv6_code(Icmpv6Code(0));
        let flags = NeighborAdvertFlags::Override | if router { NeighborAdvertFlags::Router } else { 0 };
        na.set_flags(flags);
        na.set_target_addr(vip);
        na.set_options(&[NdpOption {
            option_type: NdpOptionTypes::TargetLLAddr,
            length: 1,
            data: mac.octets().to_vec(),
        }]);
    }
    let checksum = match Icmpv6Packet::new(&frame[54..]) {
        Some(p) => icmpv6::checksum(&p, &vip, &ALL_NODES),
        None => unreachable!("NA_LEN holds the advertisement"),
    };
    frame[56..58].copy_from_slice(&checksum.to_be_bytes());
    frame
}

/// The frame that announces `vip` at `mac`: a gratuitous ARP for IPv4, an
/// unsolicited neighbour advertisement (Router flag `router`) for IPv6.
pub fn announcement(mac: [u8; 6], vip: IpAddr, router: bool) -> Vec<u8> {
    match vip {
        IpAddr::V4(a) => gratuitous_arp(mac, a).to_vec(),
        IpAddr::V6(a) => unsolicited_na(mac, a, router).to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    #[test]
    fn matches_keepalived_unsolicited_na() {
        // v6-na in tests/vectors/vectors-v6.txt: lb2 (02:00:5e:10:00:12)
        // announcing fe80::10 and 2001:db8::10, with R = 0.
        let text = include_str!("../../tests/vectors/vectors-v6.txt");
        let packets: Vec<Vec<u8>> = text
            .split("[v6-na]")
            .skip(1)
            .filter_map(|block| block.lines().find_map(|l| l.trim().strip_prefix("ipv6_hex=")).map(hex))
            .collect();
        assert!(packets.len() >= 2, "NA vectors: {}", packets.len());
        let mac = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x12];
        for want in &packets[..2] {
            let vip = Ipv6Addr::from(<[u8; 16]>::try_from(&want[8..24]).expect("src"));
            let frame = unsolicited_na(mac, vip, false);
            assert_eq!(&frame[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
            assert_eq!(&frame[6..12], &mac);
            assert_eq!(&frame[12..14], &[0x86, 0xdd]);
            assert_eq!(&frame[14..], &want[..], "NA for {vip}");
        }
        // The Router flag, when asked for, and a checksum that still verifies.
        let r = unsolicited_na(mac, "2001:db8::10".parse().expect("v6"), true);
        assert_eq!(r[58], 0xa0);
        let pseudo =
            crate::vrrp::packet::upper_layer_pseudo_header_v6("2001:db8::10".parse().expect("v6"), ALL_NODES, 32, 58);
        assert_eq!(crate::vrrp::packet::internet_checksum(&[&pseudo, &r[54..]]), 0);
    }

    #[test]
    fn matches_keepalived_garp_but_for_the_erratum_7949_target() {
        // v3-garp in tests/vectors/vectors.txt: lb2 (02:00:5e:10:00:12) announcing 192.0.2.10.
        // Byte for byte keepalived's, but for the target hardware address
        // (ARP bytes 18..24): the announced MAC, not broadcast.
        let text = include_str!("../../tests/vectors/vectors.txt");
        let arp_hex = text.lines().find_map(|l| l.trim().strip_prefix("arp_hex=")).expect("a GARP vector");
        let arp: Vec<u8> =
            (0..arp_hex.len()).step_by(2).map(|i| u8::from_str_radix(&arp_hex[i..i + 2], 16).expect("hex")).collect();
        let frame = gratuitous_arp([0x02, 0x00, 0x5e, 0x10, 0x00, 0x12], Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(&frame[0..6], &[0xff; 6]);
        assert_eq!(&frame[6..12], &[0x02, 0x00, 0x5e, 0x10, 0x00, 0x12]);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(&frame[14..14 + 18], &arp[..18]);
        assert_eq!(&arp[18..24], &[0xff; 6], "keepalived's target hardware address");
        assert_eq!(&frame[14 + 18..14 + 24], &[0x02, 0x00, 0x5e, 0x10, 0x00, 0x12], "erratum 7949");
        assert_eq!(&frame[14 + 24..], &arp[24..]);
    }
}
