//! VRRP advertisement wire format: VRRPv3 (RFC 9568) over IPv4 and IPv6,
//! and VRRPv2 (RFC 3768, IPv4 only). Pure: bytes in, values out; the checks
//! here are the wire's, and whether a packet is for one of our instances is
//! the router's question.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |(rsvd) |     Max Adver Int     |          Checksum             |   v3
//! |  Auth Type    |   Adver Int   |          Checksum             |   v2
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       IPvX Address(es)                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |            Authentication Data (v2 only, 8 bytes)             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// The IPv4 multicast group adverts are sent to (RFC 5798 §5.1.1.2).
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The IPv6 multicast group adverts are sent to (RFC 9568 §5.1.2.2).
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// TTL (hop limit) every advert must carry (RFC 9568 §5.1.1.3, §5.1.2.3).
pub const REQUIRED_TTL: u8 = 255;
/// Fixed VRRP header length, before the address list.
pub const HEADER_LEN: usize = 8;
/// VRRPv2 authentication data trailer length (RFC 3768 §5.3.10).
const V2_AUTH_DATA_LEN: usize = 8;
/// The only packet type defined: ADVERTISEMENT.
const TYPE_ADVERTISEMENT: u8 = 1;

/// Address family: an instance, a router and a socket have one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of `a`.
    pub fn of(a: IpAddr) -> Family {
        match a {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Where multicast adverts go.
    pub fn group(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(MULTICAST_V4),
            Family::V6 => IpAddr::V6(MULTICAST_V6),
        }
    }
}

/// One received VRRP message and what its IP header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// IP source.
    pub source: IpAddr,
    /// IP destination.
    pub destination: IpAddr,
    /// TTL or hop limit.
    pub ttl: u8,
    /// The VRRP message (the IP payload).
    pub message: &'a [u8],
}

/// VRRP protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Version {
    /// RFC 3768.
    V2,
    /// RFC 5798 / RFC 9568.
    V3,
}

impl Version {
    /// Value of the 4-bit version field.
    pub fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

/// An advertisement interval in centiseconds, the unit of the v3 12-bit field.
/// v2 intervals (whole seconds) are held as multiples of 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Centiseconds(u16);

impl Centiseconds {
    /// Largest value the 12-bit v3 field can carry (40.95 s).
    pub const MAX: u16 = 0x0fff;

    /// `None` for zero or for more than [`Self::MAX`].
    pub fn new(cs: u16) -> Option<Self> {
        (1..=Self::MAX).contains(&cs).then_some(Centiseconds(cs))
    }

    /// The raw count of centiseconds.
    pub fn get(self) -> u16 {
        self.0
    }

    /// Converted once, here, so nothing else multiplies by 10.
    pub fn as_duration(self) -> Duration {
        Duration::from_millis(u64::from(self.0) * 10)
    }
}

/// Which bytes the checksum of a VRRPv3-over-IPv4 message covers. RFC 9568
/// (and Cisco/Juniper) cover the message only; keepalived and FRR prepend the
/// IPv4 pseudo-header, as RFC 5798 §5.2.8 reads for IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumForm {
    /// Pseudo-header (src, dst, zero, protocol 112, length) + message.
    PseudoHeader,
    /// VRRP message only (always the case for VRRPv2).
    MessageOnly,
}

/// Why a received packet was dropped. Each variant maps to a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DropReason {
    /// IP TTL other than 255 (RFC 5798 §7.1): it crossed a router.
    #[error("ttl is not 255")]
    Ttl,
    /// Shorter than the fixed VRRP header or than its own IP header says.
    #[error("truncated packet")]
    Truncated,
    /// Not an IPv4 packet carrying protocol 112.
    #[error("not a VRRP/IPv4 packet")]
    NotVrrp,
    /// Version field is neither 2 nor 3, or not the instance's.
    #[error("wrong version")]
    Version,
    /// Type field is not ADVERTISEMENT.
    #[error("wrong type")]
    Type,
    /// Address count disagrees with the packet length.
    #[error("address count disagrees with length")]
    Length,
    /// Checksum does not verify in any accepted form.
    #[error("bad checksum")]
    Checksum,
    /// VRID is not this instance's.
    #[error("vrid is not ours")]
    Vrid,
    /// VRRPv2 authentication type other than 0 (RFC 3768 §5.3.6 deprecated it).
    #[error("unsupported v2 authentication type")]
    Auth,
    /// VRRPv2 advert interval differs from ours (RFC 3768 §7.1).
    #[error("v2 advert interval differs from ours")]
    Interval,
    /// Zero advert interval, which would make timers spin.
    #[error("zero advert interval")]
    ZeroInterval,
    /// VRRPv2 advert from a non-owner whose address list differs from ours
    /// (RFC 3768 §7.1: MUST be dropped).
    #[error("v2 advert's address list differs from ours")]
    AddressList,
    /// From an address that is not one of the instance's unicast peers.
    #[error("not from a unicast peer")]
    NotAPeer,
}

impl DropReason {
    /// Every reason, in the order counters are shown.
    pub const ALL: [DropReason; 13] = [
        DropReason::Ttl,
        DropReason::Truncated,
        DropReason::NotVrrp,
        DropReason::Version,
        DropReason::Type,
        DropReason::Length,
        DropReason::Checksum,
        DropReason::Vrid,
        DropReason::Auth,
        DropReason::Interval,
        DropReason::ZeroInterval,
        DropReason::AddressList,
        DropReason::NotAPeer,
    ];

    /// Counter name used in `/status` and `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Ttl => "ttl",
            DropReason::Truncated => "truncated",
            DropReason::NotVrrp => "not_vrrp",
            DropReason::Version => "version",
            DropReason::Type => "type",
            DropReason::Length => "length",
            DropReason::Checksum => "checksum",
            DropReason::Vrid => "vrid",
            DropReason::Auth => "auth",
            DropReason::Interval => "interval",
            DropReason::ZeroInterval => "zero_interval",
            DropReason::AddressList => "address_list",
            DropReason::NotAPeer => "not_a_peer",
        }
    }

    /// Index into a counter array laid out like [`Self::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// A validated advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// Protocol version.
    pub version: Version,
    /// Virtual router id, 1..=255.
    pub vrid: u8,
    /// Sender priority; 0 = the master is leaving, 255 = address owner.
    pub priority: u8,
    /// Max Advertise Interval (v3) or Adver Int (v2, whole seconds).
    pub interval: Centiseconds,
    /// Virtual addresses the sender protects, all of the packet's family.
    pub addresses: Vec<IpAddr>,
}

/// A received advertisement together with what the IP header said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The advert itself.
    pub advert: Advert,
    /// IP source: the sender's primary address, used for the tie-break.
    pub source: IpAddr,
    /// IP destination: 224.0.0.18 or ff02::12, or ours for a unicast advert.
    pub destination: IpAddr,
    /// Which checksum form verified.
    pub checksum_form: ChecksumForm,
}

/// Parses a whole IPv4 packet as delivered by a raw socket and validates
/// what the wire alone can tell; whether it is for one of our instances is
/// the router's question.
pub fn parse_ipv4(packet: &[u8]) -> Result<Received, DropReason> {
    parse_datagram(&ipv4_datagram(packet)?)
}

/// Validates a datagram's message with what its IP header said.
pub fn parse_datagram(d: &Datagram<'_>) -> Result<Received, DropReason> {
    parse(d.message, d.ttl, d.source, d.destination)
}

/// The VRRP message in a whole IPv4 packet, and its header's fields.
pub fn ipv4_datagram(packet: &[u8]) -> Result<Datagram<'_>, DropReason> {
    if packet.len() < 20 {
        return Err(DropReason::Truncated);
    }
    if packet[0] >> 4 != 4 || packet[9] != IPPROTO_VRRP {
        return Err(DropReason::NotVrrp);
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if ihl < 20 || total_len < ihl || packet.len() < total_len {
        return Err(DropReason::Truncated);
    }
    let ttl = packet[8];
    let source = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let destination = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    Ok(Datagram { source: source.into(), destination: destination.into(), ttl, message: &packet[ihl..total_len] })
}

/// The VRID an IPv4 VRRP packet claims, read without validating anything:
/// enough to tell another local instance's traffic from a stranger's.
pub fn claimed_vrid_ipv4(packet: &[u8]) -> Option<u8> {
    let ihl = usize::from(*packet.first()? & 0x0f) * 4;
    packet.get(ihl + 1).copied()
}

/// Validates a VRRP message (the IP payload) in the order of RFC 9568 §7.1,
/// as far as the wire goes: TTL or hop limit, version, type, length,
/// checksum, v2 authentication type, a usable interval. The family is the
/// source's.
pub fn parse(msg: &[u8], ttl: u8, source: IpAddr, destination: IpAddr) -> Result<Received, DropReason> {
    if ttl != REQUIRED_TTL {
        return Err(DropReason::Ttl);
    }
    if msg.len() < HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    let version = match msg[0] >> 4 {
        2 if source.is_ipv4() => Version::V2,
        3 => Version::V3,
        _ => return Err(DropReason::Version),
    };
    if msg[0] & 0x0f != TYPE_ADVERTISEMENT {
        return Err(DropReason::Type);
    }
    let count = usize::from(msg[3]);
    let trailer = match version {
        Version::V2 => V2_AUTH_DATA_LEN,
        Version::V3 => 0,
    };
    let size = address_len(source);
    let expected_len = HEADER_LEN + size * count + trailer;
    // A count of 0 announces nothing to protect (RFC 5798 §5.2.5).
    if msg.len() != expected_len || count == 0 {
        return Err(DropReason::Length);
    }
    let checksum_form = verify_checksum(msg, version, source, destination)?;
    let interval = match version {
        Version::V3 => u16::from_be_bytes([msg[4], msg[5]]) & Centiseconds::MAX,
        Version::V2 => {
            if msg[4] != 0 {
                return Err(DropReason::Auth);
            }
            u16::from(msg[5]) * 100
        }
    };
    let interval = Centiseconds::new(interval).ok_or(DropReason::ZeroInterval)?;
    let addresses = msg[HEADER_LEN..HEADER_LEN + size * count]
        .chunks_exact(size)
        .filter_map(|a| match size {
            4 => <[u8; 4]>::try_from(a).ok().map(IpAddr::from),
            _ => <[u8; 16]>::try_from(a).ok().map(IpAddr::from),
        })
        .collect();
    Ok(Received {
        advert: Advert { version, vrid: msg[1], priority: msg[2], interval, addresses },
        source,
        destination,
        checksum_form,
    })
}

/// Bytes of one address of `a`'s family in the address list.
fn address_len(a: IpAddr) -> usize {
    match a {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 16,
    }
}

/// v2 covers the message; v3 over IPv4 is accepted in either form, and a
/// unicast v3 advert also with 224.0.0.18 in the pseudo-header (older
/// senders); over IPv6 the pseudo-header is required (RFC 9568 §5.2.8).
fn verify_checksum(
    msg: &[u8],
    version: Version,
    source: IpAddr,
    destination: IpAddr,
) -> Result<ChecksumForm, DropReason> {
    let len = msg.len() as u16;
    match (source, destination) {
        (IpAddr::V6(s), IpAddr::V6(d)) if internet_checksum(&[&pseudo_header_v6(s, d, len), msg]) == 0 => {
            return Ok(ChecksumForm::PseudoHeader);
        }
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            if internet_checksum(&[msg]) == 0 {
                return Ok(ChecksumForm::MessageOnly);
            }
            if version == Version::V3 {
                for dst in [d, MULTICAST_V4] {
                    if internet_checksum(&[&pseudo_header(s, dst, len), msg]) == 0 {
                        return Ok(ChecksumForm::PseudoHeader);
                    }
                }
            }
        }
        _ => {}
    }
    Err(DropReason::Checksum)
}

impl Advert {
    /// Length of the emitted VRRP message.
    pub fn buffer_len(&self) -> usize {
        let trailer = match self.version {
            Version::V2 => V2_AUTH_DATA_LEN,
            Version::V3 => 0,
        };
        HEADER_LEN + self.addresses.iter().map(|a| address_len(*a)).sum::<usize>() + trailer
    }

    /// Builds the VRRP message (the IP payload) with its checksum. `source`
    /// and `destination` only matter for the v3 pseudo-header form.
    /// Over IPv6 the checksum always covers the pseudo-header.
    pub fn emit(&self, form: ChecksumForm, source: IpAddr, destination: IpAddr) -> Vec<u8> {
        let mut msg = Vec::with_capacity(self.buffer_len());
        msg.push(self.version.number() << 4 | TYPE_ADVERTISEMENT);
        msg.push(self.vrid);
        msg.push(self.priority);
        // Config validation bounds the list far below 255 entries.
        msg.push(self.addresses.len().min(255) as u8);
        match self.version {
            Version::V3 => msg.extend_from_slice(&(self.interval.get() & Centiseconds::MAX).to_be_bytes()),
            Version::V2 => {
                msg.push(0); // auth type 0
                msg.push((self.interval.get() / 100).min(255) as u8);
            }
        }
        msg.extend_from_slice(&[0, 0]);
        for a in self.addresses.iter().take(255) {
            match a {
                IpAddr::V4(a) => msg.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => msg.extend_from_slice(&a.octets()),
            }
        }
        if self.version == Version::V2 {
            msg.extend_from_slice(&[0; V2_AUTH_DATA_LEN]);
        }
        let len = msg.len() as u16;
        let checksum = match (source, destination) {
            (IpAddr::V6(s), IpAddr::V6(d)) => internet_checksum(&[&pseudo_header_v6(s, d, len), &msg]),
            (IpAddr::V4(s), IpAddr::V4(d)) if self.version == Version::V3 && form == ChecksumForm::PseudoHeader => {
                internet_checksum(&[&pseudo_header(s, d, len), &msg])
            }
            _ => internet_checksum(&[&msg]),
        };
        msg[6..8].copy_from_slice(&checksum.to_be_bytes());
        msg
    }
}

/// The IPv4 pseudo-header of RFC 768/RFC 5798 §5.2.8.
fn pseudo_header(source: Ipv4Addr, destination: Ipv4Addr, len: u16) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..4].copy_from_slice(&source.octets());
    p[4..8].copy_from_slice(&destination.octets());
    p[9] = IPPROTO_VRRP;
    p[10..12].copy_from_slice(&len.to_be_bytes());
    p
}

/// The IPv6 pseudo-header of RFC 8200 §8.1, for next header `VRRP`.
fn pseudo_header_v6(source: Ipv6Addr, destination: Ipv6Addr, len: u16) -> [u8; 40] {
    upper_layer_pseudo_header_v6(source, destination, u32::from(len), IPPROTO_VRRP)
}

/// The IPv6 pseudo-header for any upper-layer protocol (VRRP, ICMPv6).
pub fn upper_layer_pseudo_header_v6(source: Ipv6Addr, destination: Ipv6Addr, len: u32, next: u8) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0..16].copy_from_slice(&source.octets());
    p[16..32].copy_from_slice(&destination.octets());
    p[32..36].copy_from_slice(&len.to_be_bytes());
    p[39] = next;
    p
}

/// RFC 1071 one's complement sum over the concatenation of `parts`, each of
/// even length except possibly the last. Verifying data that includes its
/// checksum yields 0.
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(u16::from_be_bytes([*last, 0]));
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    fn field<'a>(line: &'a str, key: &str) -> &'a str {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .unwrap_or_else(|| panic!("{key} missing in {line}"))
    }

    /// One keepalived packet from tests/vectors: the IPv4 packet and its decoded fields.
    struct Vector {
        name: String,
        ipv4: Vec<u8>,
        vrrp: Vec<u8>,
        decoded: String,
    }

    fn vectors(text: &str) -> Vec<Vector> {
        let mut out = Vec::new();
        let mut name = String::new();
        let mut ipv4 = None;
        let mut vrrp = None;
        for line in text.lines() {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix('[') {
                name = rest.split(']').next().unwrap_or_default().to_string();
            } else if let Some(h) = t.strip_prefix("ipv4_hex=") {
                ipv4 = Some(hex(h));
            } else if let Some(h) = t.strip_prefix("vrrp_hex=") {
                vrrp = Some(hex(h));
            } else if t.starts_with("vrrp version=") {
                out.push(Vector {
                    name: name.clone(),
                    ipv4: ipv4.take().expect("ipv4_hex before decode"),
                    vrrp: vrrp.take().expect("vrrp_hex before decode"),
                    decoded: t.to_string(),
                });
            }
        }
        out
    }

    fn all_v4_vectors() -> Vec<Vector> {
        let mut v = vectors(include_str!("../../tests/vectors/vectors.txt"));
        v.extend(vectors(include_str!("../../tests/vectors/vectors-unicast.txt")));
        v
    }

    /// The interval a vector's decoded fields give.
    fn interval_of(v: &Vector) -> Centiseconds {
        let cs = if field(&v.decoded, "version") == "2" {
            field(&v.decoded, "adver_int_s").parse::<u16>().expect("int") * 100
        } else {
            field(&v.decoded, "max_adver_int_cs").parse().expect("int")
        };
        Centiseconds::new(cs).expect("interval")
    }

    #[test]
    fn keepalived_vectors_parse_to_their_decoded_fields() {
        let vs = all_v4_vectors();
        assert!(vs.len() >= 20, "vectors found: {}", vs.len());
        for v in &vs {
            let rx = parse_ipv4(&v.ipv4).unwrap_or_else(|e| panic!("{}: {e}", v.name));
            let a = &rx.advert;
            assert_eq!(a.priority.to_string(), field(&v.decoded, "priority"), "{}", v.name);
            assert_eq!(a.addresses.len().to_string(), field(&v.decoded, "count_ip"), "{}", v.name);
            let addrs: Vec<String> = a.addresses.iter().map(|x| x.to_string()).collect();
            assert_eq!(addrs.join(","), field(&v.decoded, "addrs"), "{}", v.name);
            assert_eq!(a.interval, interval_of(v), "{}", v.name);
            assert_eq!(a.vrid.to_string(), field(&v.decoded, "vrid"), "{}", v.name);
            let want = match a.version {
                Version::V2 => ChecksumForm::MessageOnly,
                Version::V3 => ChecksumForm::PseudoHeader,
            };
            assert_eq!(rx.checksum_form, want, "{}", v.name);
        }
    }

    /// keepalived's IPv6 adverts: (name, whole IPv6 packet, decoded line).
    fn v6_vectors() -> Vec<(String, Vec<u8>, String)> {
        let text = include_str!("../../tests/vectors/vectors-v6.txt");
        let mut out = Vec::new();
        let (mut name, mut packet) = (String::new(), None);
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix('[') {
                name = rest.split(']').next().unwrap_or_default().to_string();
            } else if let Some(h) = line.strip_prefix("ipv6_hex=") {
                packet = Some(hex(h));
            } else if line.starts_with("vrrp version=") {
                out.push((name.clone(), packet.take().expect("ipv6_hex first"), line.to_string()));
            }
        }
        out
    }

    #[test]
    fn keepalived_ipv6_vectors_parse_and_emit_byte_identical() {
        let vs = v6_vectors();
        assert!(vs.len() >= 8, "IPv6 vectors: {}", vs.len());
        for (name, p, decoded) in &vs {
            let addr = |at: usize| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&p[at..at + 16]).expect("16")));
            let d = Datagram { source: addr(8), destination: addr(24), ttl: p[7], message: &p[40..] };
            let rx = parse_datagram(&d).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(rx.checksum_form, ChecksumForm::PseudoHeader, "{name}");
            assert_eq!(rx.advert.priority.to_string(), field(decoded, "priority"), "{name}");
            let addrs: Vec<String> = rx.advert.addresses.iter().map(|a| a.to_string()).collect();
            assert_eq!(addrs.join(","), field(decoded, "addrs"), "{name}");
            // The pseudo-header form is the only one for IPv6, whatever was asked.
            for form in [ChecksumForm::PseudoHeader, ChecksumForm::MessageOnly] {
                assert_eq!(rx.advert.emit(form, d.source, d.destination), d.message, "{name}");
            }
            // A hop limit below 255 crossed a router; v2 does not exist for IPv6.
            assert_eq!(parse_datagram(&Datagram { ttl: 254, ..d }), Err(DropReason::Ttl));
            let mut v2 = d.message.to_vec();
            v2[0] = 0x21;
            assert_eq!(parse_datagram(&Datagram { message: &v2, ..d }), Err(DropReason::Version));
            let mut bad = d.message.to_vec();
            bad[2] ^= 1;
            assert_eq!(parse_datagram(&Datagram { message: &bad, ..d }), Err(DropReason::Checksum));
        }
    }

    #[test]
    fn emit_is_byte_identical_to_keepalived() {
        for v in all_v4_vectors() {
            let rx = parse_ipv4(&v.ipv4).expect("parses");
            let dst = IpAddr::V4(Ipv4Addr::new(v.ipv4[16], v.ipv4[17], v.ipv4[18], v.ipv4[19]));
            let ours = rx.advert.emit(ChecksumForm::PseudoHeader, rx.source, dst);
            assert_eq!(ours, v.vrrp, "{}", v.name);
            assert_eq!(ours.len(), rx.advert.buffer_len());
        }
    }

    #[test]
    fn message_only_form_matches_rfc9568_checksum_and_is_accepted() {
        let text = include_str!("../../tests/vectors/vectors.txt");
        let v = vectors(text).into_iter().find(|v| v.name == "v3-adverts").expect("v3 vector");
        let rx = parse_ipv4(&v.ipv4).expect("parses");
        let plain = rx.advert.emit(ChecksumForm::MessageOnly, rx.source, G4);
        // The vector file gives this value as checksum_v2_style.
        assert_eq!(u16::from_be_bytes([plain[6], plain[7]]), 0x76b6);
        let back = parse(&plain, 255, rx.source, G4).expect("accepted");
        assert_eq!(back.checksum_form, ChecksumForm::MessageOnly);
        assert_eq!(back.advert, rx.advert);
    }

    #[test]
    fn unicast_with_multicast_pseudo_header_is_accepted() {
        let text = include_str!("../../tests/vectors/vectors-unicast.txt");
        let v = vectors(text).into_iter().find(|v| v.name == "unicast-v3-adverts").expect("unicast vector");
        let rx = parse_ipv4(&v.ipv4).expect("parses");
        let old_style = rx.advert.emit(ChecksumForm::PseudoHeader, rx.source, G4);
        assert_eq!(u16::from_be_bytes([old_style[6], old_style[7]]), 0xd3c1);
        let unicast_dst = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 12));
        let back = parse(&old_style, 255, rx.source, unicast_dst).expect("accepted");
        assert_eq!(back.checksum_form, ChecksumForm::PseudoHeader);
    }

    fn good_v3() -> Vec<u8> {
        hex("31339601000ad41bc000020a")
    }

    const SRC4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
    const SRC: IpAddr = IpAddr::V4(SRC4);
    const G4: IpAddr = IpAddr::V4(MULTICAST_V4);

    fn reason(msg: &[u8], ttl: u8) -> DropReason {
        parse(msg, ttl, SRC, G4).expect_err("must be dropped")
    }

    /// Re-checksums a tampered message so that only the tampering is wrong.
    fn fix_checksum(mut msg: Vec<u8>) -> Vec<u8> {
        msg[6] = 0;
        msg[7] = 0;
        let c = internet_checksum(&[&pseudo_header(SRC4, MULTICAST_V4, msg.len() as u16), &msg]);
        msg[6..8].copy_from_slice(&c.to_be_bytes());
        msg
    }

    #[test]
    fn each_drop_reason_is_named() {
        assert!(parse(&good_v3(), 255, SRC, G4).is_ok());
        assert_eq!(reason(&good_v3(), 64), DropReason::Ttl);
        assert_eq!(reason(&good_v3()[..6], 255), DropReason::Truncated);
        assert_eq!(reason(&good_v3()[..10], 255), DropReason::Length);
        let mut m = good_v3();
        m[0] = 0x41;
        assert_eq!(reason(&fix_checksum(m), 255), DropReason::Version);
        // v2 framing (8 bytes of authentication data) is not there.
        let mut m = good_v3();
        m[0] = 0x21;
        assert_eq!(reason(&fix_checksum(m), 255), DropReason::Length);
        let mut m = good_v3();
        m[0] = 0x32;
        assert_eq!(reason(&fix_checksum(m), 255), DropReason::Type);
        let mut m = good_v3();
        m[3] = 2;
        m.extend_from_slice(&[0; 8]); // two addresses' room plus 4 stray bytes
        assert_eq!(reason(&fix_checksum(m), 255), DropReason::Length);
        let mut m = good_v3();
        m[3] = 0;
        assert_eq!(reason(&fix_checksum(m), 255), DropReason::Length);
        let mut m = good_v3();
        m[7] ^= 0xff;
        assert_eq!(reason(&m, 255), DropReason::Checksum);
        // Whose VRID it is, is not the wire's question.
        let mut m = good_v3();
        m[1] = 52;
        assert_eq!(parse(&fix_checksum(m), 255, SRC, G4).map(|r| r.advert.vrid), Ok(52));
        let mut m = good_v3();
        m[4] = 0;
        m[5] = 0;
        assert_eq!(reason(&fix_checksum(m), 255), DropReason::ZeroInterval);
    }

    #[test]
    fn v2_auth_is_checked() {
        let msg = hex("21339601000186bfc000020a0000000000000000");
        assert!(parse(&msg, 255, SRC, G4).is_ok());
        let mut m = msg.clone();
        m[4] = 1;
        m[6] = 0;
        m[7] = 0;
        let c = internet_checksum(&[&m]);
        m[6..8].copy_from_slice(&c.to_be_bytes());
        assert_eq!(parse(&m, 255, SRC, G4), Err(DropReason::Auth));
    }

    #[test]
    fn ip_header_is_checked() {
        let v = &all_v4_vectors()[0];
        let mut p = v.ipv4.clone();
        p[9] = 17;
        assert_eq!(parse_ipv4(&p), Err(DropReason::NotVrrp));
        assert_eq!(parse_ipv4(&v.ipv4[..25]), Err(DropReason::Truncated));
        let mut p = v.ipv4.clone();
        p[8] = 1;
        assert_eq!(parse_ipv4(&p), Err(DropReason::Ttl));
    }

    #[test]
    fn centiseconds_bounds() {
        assert_eq!(Centiseconds::new(0), None);
        assert_eq!(Centiseconds::new(4096), None);
        assert_eq!(Centiseconds::new(4095).map(|c| c.as_duration()), Some(Duration::from_millis(40950)));
    }

    #[test]
    fn claimed_vrid_is_read_past_any_ip_header() {
        let mut p = vec![0x45u8; 20];
        p.extend_from_slice(&[0x31, 51, 100, 1]);
        assert_eq!(claimed_vrid_ipv4(&p), Some(51));
        let mut opts = vec![0x46u8; 24];
        opts.extend_from_slice(&[0x31, 7]);
        assert_eq!(claimed_vrid_ipv4(&opts), Some(7));
        assert_eq!(claimed_vrid_ipv4(&[0x45; 20]), None);
        assert_eq!(claimed_vrid_ipv4(&[]), None);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128), ttl in 0u8..=255) {
            let _ = parse(&bytes, ttl, SRC, G4);
            let _ = parse_ipv4(&bytes);
        }

        #[test]
        fn emit_then_parse_round_trips(prio in 0u8..=255, cs in 1u16..=4095, n in 1usize..16, pseudo in proptest::prelude::any::<bool>()) {
            let advert = Advert {
                version: Version::V3, vrid: 51, priority: prio,
                interval: Centiseconds::new(cs).expect("cs"),
                addresses: (0..n).map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i as u8))).collect(),
            };
            let form = if pseudo { ChecksumForm::PseudoHeader } else { ChecksumForm::MessageOnly };
            let msg = advert.emit(form, SRC, G4);
            let rx = parse(&msg, 255, SRC, G4).expect("own packet parses");
            proptest::prop_assert_eq!(rx.advert, advert);
        }
    }
}
