#!/usr/bin/env bash
# ipv6.sh: VRRPv3 over IPv6 (RFC 9568). Hosts have link-local addresses
# from their MACs and 2001:db8::/64 beside their IPv4; the VIPs are fe80::10
# (the link-local VIP the RFC wants first in every advert) and 2001:db8::10.
#   1. on the wire: lb1's adverts go from its link-local address to
#      ff02::12 with hop limit 255, the link-local VIP first; the client
#      reaches the VIP (ping) and its neighbour entry is lb1's MAC; after a
#      crash of lb1 the unsolicited neighbour advertisements of lb2 move the
#      client's entry to lb2's MAC (Override flag) and the VIP answers again;
#   2. IPv4 and IPv6 instances side by side on one interface (one VRID
#      each), both master on lb1, both move to lb2 on a crash;
#   3. election, crash, preempt and graceful hand-over (failover_case in
#      lib.sh) with vipd on both nodes and with keepalived 2.2.7 on either.
# Zero failed requests over IPv6 on a planned stop: http-failover-v6.sh.
export V6=1
source "$(dirname "$0")/lib.sh"
need_root
need_vipd
ensure_pkg keepalived keepalived
ensure_pkg tcpdump tcpdump

ll_of() { ip -n "$(ns "$1")" -6 addr show dev eth0 scope link | awk '/inet6/ { sub(/\/.*/, "", $2); print $2; exit }'; }
ping_vip() { ns_exec client ping -6 -c 1 -W 1 "$VIP" >/dev/null 2>&1; }

# 1. The wire and the client's neighbour cache.
SCENARIO="ipv6 wire"
topo_up lb1 lb2 client
ll1=$(ll_of lb1)                # before it holds the link-local VIP too
start_capture client "$WORK/v6.pcap" "ip6 proto 112 or icmp6"
cap=$CAPTURE_PID
start_node vipd lb1 150 100ms 3 true
start_node vipd lb2 100 100ms 3 true
wait_pair_settled lb1 lb2 5000
[[ $(vipd_field lb2 .master_ip) == "$ll1" ]] || fail "lb2 follows $(vipd_field lb2 .master_ip), want lb1's link-local $ll1"
wait_for 2000 ping_vip || fail "the client cannot ping $VIP on lb1"
neigh_is "${HOST_MAC[lb1]}" || fail "client's entry for $VIP is $(client_neigh_mac), want lb1's ${HOST_MAC[lb1]}"
t0=$(now_ms)
crash_node lb1
wait_for 3000 neigh_is "${HOST_MAC[lb2]}" ||
    fail "after lb1's crash the client's entry for $VIP stays $(client_neigh_mac) (no neighbour advertisement from lb2?)"
moved=$(($(now_ms) - t0))
wait_for 2000 ping_vip || fail "the client cannot ping $VIP on lb2"
stop_capture "$cap"
# One line per packet with -v: "IP6 (... hlim 255, ...) SRC > DST: ...".
cap_txt=$(tcpdump -r "$WORK/v6.pcap" -e -n -v 2>/dev/null)
adverts=$(grep "$ll1 > ff02::12: VRRPv3, Advertisement, vrid $VRID, prio 150" <<<"$cap_txt" || true)
[[ -n $adverts ]] || fail "no advert from lb1's link-local to ff02::12 in the capture"
grep -v "hlim 255" <<<"$adverts" | grep -q . && fail "an advert of lb1 without hop limit 255: $(grep -m1 -v 'hlim 255' <<<"$adverts")"
grep -v "addrs(2): $VIP_LL,$VIP" <<<"$adverts" | grep -q . &&
    fail "an advert of lb1 not leading with the link-local VIP $VIP_LL: $(grep -m1 -v "addrs(2): $VIP_LL," <<<"$adverts")"
na=$(grep "${HOST_MAC[lb2]} > 33:33:00:00:00:01" <<<"$cap_txt" | grep -c "hlim 255.*$VIP > ff02::1: .*neighbor advertisement, length 32, tgt is $VIP, Flags \[override\]" || true)
((na >= 5)) || fail "lb2 sent $na neighbour advertisements (hop limit 255, Override) for $VIP, want a burst of 5"
CASE_SUMMARY+=("adverts from $ll1 to ff02::12, hop limit 255, $VIP_LL first; client's neighbour entry on lb2 ${moved} ms after lb1's crash ($na NAs for $VIP)")
topo_down

# 2. IPv4 and IPv6 side by side on eth0.
SCENARIO="ipv6 beside ipv4"
dual_conf() {
    local f
    f=$(vipd_conf "$1" "$2" 100ms 3 true)
    cat >>"$f" <<EOF

[[vrrp]]
name = "web4"
interface = "eth0"
vrid = $VRID
priority = $2
advert_interval = "100ms"
virtual_ips = ["192.0.2.10/24"]
EOF
    echo "$f"
}
state4() { vipd_json "$1" | jq -r '.vrrp[] | select(.name == "web4") | .state'; }
has_vip4() { addr_on "$1" eth0 192.0.2.10; }
both_on() { state_is "$1" master && [[ $(state4 "$1") == master ]] && has_vip "$1" && has_vip4 "$1"; }
topo_up lb1 lb2 client
start_vipd lb1 "$(dual_conf lb1 150)" "$WORK/lb1.log"
start_vipd lb2 "$(dual_conf lb2 100)" "$WORK/lb2.log"
wait_for 5000 both_on lb1 || fail "lb1 is not master of both families: v6 $(node_state lb1), v4 $(state4 lb1)"
[[ $(state4 lb2) == backup && $(node_state lb2) == backup ]] || fail "lb2: v6 $(node_state lb2), v4 $(state4 lb2)"
for h in lb1 lb2; do
    d=$(vipd_json "$h" | jq '[.vrrp[].rx.dropped | to_entries[] | .value] | add')
    ((d == 0)) || fail "$h dropped $d packets: the families' adverts are not kept apart"
done
crash_node lb1
wait_for 3000 both_on lb2 || fail "lb2 did not take both families over: v6 $(node_state lb2), v4 $(state4 lb2)"
CASE_SUMMARY+=("IPv4 and IPv6 instances on one interface: both master on lb1, no drops, both to lb2 on a crash")
topo_down

# 3. Failover, vipd with vipd and with keepalived.
CASE_NAME=ipv6
failover_case 3 vipd vipd
failover_case 3 vipd keepalived
failover_case 3 keepalived vipd
SCENARIO=ipv6
for s in "${CASE_SUMMARY[@]}"; do echo "  $s"; done
pass "VRRPv3 over IPv6: link-local adverts, neighbour advertisements move the client, beside IPv4 on one interface, fails over both ways with vipd and keepalived"
