#!/usr/bin/env python3
"""Send malformed (and, for calibration, valid) VRRP adverts to 224.0.0.18.

Raw socket with IP_HDRINCL: we build the IPv4 header ourselves so the TTL can
be wrong. Every packet is "otherwise valid" (correct VRRP checksum, VRRPv3
with the IPv4 pseudo-header as keepalived computes it) except for the one
defect its kind names, so a receiver should count each kind under exactly
one drop reason.

Kinds:
  valid      a correct advert (calibration only: a receiver must accept it)
  ttl        IP TTL 64 instead of 255                       -> drop "ttl"
  checksum   wrong VRRP checksum                            -> drop "checksum"
  highprio   priority 254, wrong checksum                   -> drop "checksum"
  version    VRRP version 4                                 -> drop "version"
  type       VRRP type 2                                    -> drop "type"
  vrid       VRID = --vrid + 1, otherwise valid             -> drop "vrid"
  truncated  only the first 6 bytes of the VRRP header      -> drop "truncated"
  length     count says 1 address but 2 are carried        -> drop "length"
  auth       (v2) auth type 1                               -> drop "auth"
  interval   (v2) advert interval differs                   -> drop "interval"

Every kind except `checksum` carries priority 254 by default, so a receiver
that wrongly accepts one would visibly give up mastership.

Bounded: sends --rate packets per second of each kind for --duration seconds
(at most 100000 packets in all), then exits.
"""
import argparse
import socket
import struct
import sys
import time

VRRP_PROTO = 112
MCAST = "224.0.0.18"


def csum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def vrrp_msg(version, vtype, vrid, prio, addrs, interval, count=None,
             auth_type=0, src=None, dst=MCAST):
    """Build a VRRP message with a correct checksum.

    v3 (RFC 5798 §5.1): ver/type, vrid, prio, count, rsvd(4)+max_adver_int(12) in
    centiseconds, checksum over the IPv4 pseudo-header + message.
    v2 (RFC 3768 §5.1): ver/type, vrid, prio, count, auth type, adver int (s),
    checksum over the message only, addresses, 8 bytes of auth data.
    Any other version is laid out like v3 (checksum with pseudo-header).
    """
    count = len(addrs) if count is None else count
    body = b"".join(socket.inet_aton(a) for a in addrs)
    if version == 2:
        hdr = struct.pack("!BBBBBBH", (version << 4) | vtype, vrid, prio, count,
                          auth_type, interval, 0)
        msg = hdr + body + b"\0" * 8
        c = csum(msg)
    else:
        hdr = struct.pack("!BBBBHH", (version << 4) | vtype, vrid, prio, count,
                          interval & 0x0FFF, 0)
        msg = hdr + body
        pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(
            "!BBH", 0, VRRP_PROTO, len(msg))
        c = csum(pseudo + msg)
    return msg[:6] + struct.pack("!H", c) + msg[8:]


def ip_packet(src, dst, ttl, payload, ident):
    """IPv4 header (TOS 0xc0 like keepalived, DF clear) + payload."""
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(payload), ident & 0xFFFF,
                      0, ttl, VRRP_PROTO, 0, socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def build(kind, a):
    """(ttl, vrrp payload) for one kind."""
    v, iv = a.version, a.interval
    vip = a.vip
    prio = 100 if kind == "checksum" else a.prio
    ttl = 64 if kind == "ttl" else 255

    def mk(**kw):
        args = dict(version=v, vtype=1, vrid=a.vrid, prio=prio, addrs=[vip],
                    interval=iv, src=a.src, dst=a.dst)
        args.update(kw)
        return vrrp_msg(**args)

    if kind in ("valid", "ttl"):
        p = mk()
    elif kind in ("checksum", "highprio"):
        p = mk()
        p = p[:6] + struct.pack("!H", struct.unpack("!H", p[6:8])[0] ^ 0x5A5A) + p[8:]
    elif kind == "version":
        p = mk(version=4)
    elif kind == "type":
        p = mk(vtype=2)
    elif kind == "vrid":
        p = mk(vrid=(a.vrid % 255) + 1)
    elif kind == "truncated":
        p = mk()[:6]
    elif kind == "length":
        p = mk(addrs=[vip, a.vip2], count=1)
    elif kind == "auth":
        p = mk(auth_type=1)
    elif kind == "interval":
        p = mk(interval=iv + 1)
    else:
        raise SystemExit("unknown kind %r" % kind)
    return ttl, p


KINDS = ["valid", "ttl", "checksum", "highprio", "version", "type", "vrid",
         "truncated", "length", "auth", "interval"]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iface", default="eth0")
    ap.add_argument("--src", default="192.0.2.66")
    ap.add_argument("--vrid", type=int, default=51)
    ap.add_argument("--prio", type=int, default=254)
    ap.add_argument("--version", type=int, default=3, choices=[2, 3])
    ap.add_argument("--interval", type=int, default=None,
                    help="advert interval field: centiseconds (v3, default 10) or seconds (v2, default 1)")
    ap.add_argument("--dst", default=MCAST, help="destination: 224.0.0.18, or a node's address (unicast)")
    ap.add_argument("--vip", default="192.0.2.10")
    ap.add_argument("--vip2", default="192.0.2.20")
    ap.add_argument("--kinds", default="ttl,checksum,highprio,version,type,vrid,truncated,length",
                    help="comma-separated, from: " + ",".join(KINDS))
    ap.add_argument("--rate", type=float, default=10.0, help="packets/s of each kind")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds")
    ap.add_argument("--dump", action="store_true", help="print each kind's IPv4 packet as hex and exit")
    a = ap.parse_args()
    if a.interval is None:
        a.interval = 10 if a.version == 3 else 1
    kinds = [k for k in a.kinds.split(",") if k]
    pkts = {k: build(k, a) for k in kinds}

    if a.dump:
        for i, k in enumerate(kinds):
            ttl, p = pkts[k]
            print(k, ip_packet(a.src, a.dst, ttl, p, i + 1).hex())
        return 0

    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # implies IP_HDRINCL
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, a.iface.encode())

    rounds = min(int(a.rate * a.duration), 100000 // max(1, len(kinds)))
    period = 1.0 / a.rate
    sent = {k: 0 for k in kinds}
    ident = 1
    t0 = time.monotonic()
    for r in range(rounds):
        for k in kinds:
            ttl, p = pkts[k]
            s.sendto(ip_packet(a.src, a.dst, ttl, p, ident), (a.dst, 0))
            ident += 1
            sent[k] += 1
        # Pace by absolute schedule so the rate holds even if a send is slow.
        delay = t0 + (r + 1) * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print("sent " + " ".join("%s=%d" % (k, n) for k, n in sent.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
