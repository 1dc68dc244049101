#!/usr/bin/env bash
# vmac.sh: use_vmac = true. Each LB holds the VIP on a macvlan vrrp.51 with
# the virtual router MAC 00:00:5e:00:01:33 (RFC 9568 §7.3), so the client's
# neighbour entry for the VIP is that MAC and never changes on a failover:
#   1. election: lb1 master; the client pings the VIP and fetches a page
#      from it (vipd's control endpoint, bound to 0.0.0.0 here); its entry
#      for the VIP is the virtual MAC; lb1's adverts and gratuitous ARPs
#      leave from the virtual MAC; lb1's own interface does not answer ARP
#      for the VIP (a fresh ARP from the client still learns the virtual MAC);
#   2. crash of lb1: lb2 answers ping and HTTP on the VIP within
#      Master_Down_Interval + margin, the client's entry still the virtual MAC;
#   3. lb1 back (preempt), then SIGTERM: the page comes from lb1, then lb2,
#      the entry never changed; lb1 removed its macvlan on the way out.
source "$(dirname "$0")/lib.sh"
need_root
need_vipd
ensure_pkg tcpdump tcpdump
CONTROL=$ANY_ADDR:9090          # the page the client fetches through the VIP
# With V6=1 (vmac-v6.sh): the IPv6 virtual MAC and macvlan name.
if [[ -n $V6 ]]; then
    VMAC_MAC=00:00:5e:00:02:33; VMAC_IF=vrrp6.51; PING=(ping -6)
else
    VMAC_MAC=00:00:5e:00:01:33; VMAC_IF=vrrp.51; PING=(ping)
fi
MARGIN_MS=${MARGIN_MS:-250}

vmac_conf() {
    local f
    f=$(vipd_conf "$1" "$2" 100ms 3 true)
    echo "use_vmac = true" >>"$f"
    echo "$f"
}
# The VIP lives on the macvlan, not eth0, in this scenario.
has_vip() { addr_on "$1" "$VMAC_IF" "$VIP"; }
# The master the page through the VIP names, and the one HOST names itself
# (its own source: for IPv6 the macvlan's random link-local address).
page_master() { ns_exec client curl -s -m 1 "http://$VIP_URL:9090/status" | jq -r '.vrrp[0].master_ip'; }
own_address() { vipd_field "$1" .master_ip; }
# page_names HOST: the page through the VIP names HOST as master (asked
# again for a while: one curl may meet the moment the switch relearns
# where the virtual MAC is, or time out on a loaded machine; 4 s, as two
# curls of 1 s each within 2 s once missed it right after a preempt).
page_names() { local p; p=$(page_master) && [[ -n $p && $p == "$(own_address "$1")" ]]; }
ping_vip() { ns_exec client "${PING[@]}" -c 1 -W 1 "$VIP" >/dev/null 2>&1; }

topo_up lb1 lb2 client
# TCP to the control endpoint too: the page checks go through it.
start_capture client "$WORK/vmac.pcap" "ip proto 112 or arp or ip6 proto 112 or icmp6 or tcp port 9090"
cap=$CAPTURE_PID
start_vipd lb1 "$(vmac_conf lb1 150)" "$WORK/lb1.log"
start_vipd lb2 "$(vmac_conf lb2 100)" "$WORK/lb2.log"
wait_pair_settled lb1 lb2 5000
[[ $(ip -n "$(ns lb2)" link show "$VMAC_IF" | awk '/link\/ether/ { print $2 }') == "$VMAC_MAC" ]] ||
    fail "lb2's $VMAC_IF does not carry $VMAC_MAC"
wait_for 2000 ping_vip || fail "the client cannot ping the VIP on lb1"
neigh_is "$VMAC_MAC" || fail "the client's entry for the VIP is $(client_neigh_mac), want the virtual MAC"
wait_for 4000 page_names lb1 || fail "the page through the VIP says master $(page_master), want lb1 ($(own_address lb1))"
# A fresh ARP: only the macvlan may answer, with the virtual MAC.
ip -n "$(ns client)" neigh flush dev eth0
ping_vip || fail "no answer after the client flushed its neighbours"
neigh_is "$VMAC_MAC" || fail "after a fresh ARP the entry is $(client_neigh_mac), want $VMAC_MAC (does eth0 answer for the VIP?)"

t0=$(now_ms)
crash_node lb1
lim=$(awk -v m="$(mdi_ms 100 100ms)" -v g="$MARGIN_MS" 'BEGIN{printf "%d", m+g}')
wait_for $((lim + 2000)) has_vip lb2 || fail "lb2 never took the VIP"
crash=$(($(now_ms) - t0))
((crash <= lim)) || fail "takeover $crash ms > MDI + $MARGIN_MS ms"
wait_for 2000 ping_vip || fail "the client cannot ping the VIP on lb2"
wait_for 4000 page_names lb2 || fail "the page through the VIP says master $(page_master), want lb2 ($(own_address lb2))"
neigh_is "$VMAC_MAC" || fail "the client's entry changed to $(client_neigh_mac) on the failover"

start_vipd lb1 "$(vmac_conf lb1 150)" "$WORK/lb1.log"
wait_for 5000 pair_settled lb1 lb2 || fail "restarted lb1 did not take back: lb1=$(node_state lb1) lb2=$(node_state lb2)"
wait_for 4000 ping_vip || fail "the client cannot ping the VIP on lb1 again"
wait_for 4000 page_names lb1 || fail "after the preempt the page says master $(page_master), want lb1 ($(own_address lb1))"
kill -TERM "${NODE_PID[lb1]}"
wait_for 3000 has_vip lb2 || fail "lb2 never took the VIP on lb1's planned stop"
reap_node lb1 || fail "lb1 exited non-zero on SIGTERM"
ip -n "$(ns lb1)" link show "$VMAC_IF" >/dev/null 2>&1 && fail "lb1 left $VMAC_IF behind"
wait_for 2000 ping_vip || fail "the client cannot ping the VIP on lb2 after the planned stop"
neigh_is "$VMAC_MAC" || fail "the client's entry changed to $(client_neigh_mac) on the planned stop"

stop_capture "$cap"
cap_txt=$(read_capture "$WORK/vmac.pcap")
if [[ -n $V6 ]]; then
    adverts=$(grep -c "^[0-9.]* $VMAC_MAC > 33:33:00:00:00:12.* > ff02::12: VRRPv3" <<<"$cap_txt" || true)
    own=$(grep -cE "^[0-9.]* (${HOST_MAC[lb1]}|${HOST_MAC[lb2]}) > 33:33:00:00:00:12" <<<"$cap_txt" || true)
    garps=$(grep -c "^[0-9.]* $VMAC_MAC > 33:33:00:00:00:01.*neighbor advertisement, tgt is $VIP," <<<"$cap_txt" || true)
else
    adverts=$(grep -c "^[0-9.]* $VMAC_MAC > 01:00:5e:00:00:12.* > 224.0.0.18: VRRPv3" <<<"$cap_txt" || true)
    own=$(grep -cE "^[0-9.]* (${HOST_MAC[lb1]}|${HOST_MAC[lb2]}) > 01:00:5e:00:00:12" <<<"$cap_txt" || true)
    garps=$(grep -c "^[0-9.]* $VMAC_MAC > ff:ff:ff:ff:ff:ff.*Request who-has $VIP ($VMAC_MAC) tell $VIP," <<<"$cap_txt" || true)
fi
((adverts > 10 && own == 0)) || fail "adverts: $adverts from the virtual MAC, $own from the interfaces' own MACs"
((garps >= 5)) || fail "$garps gratuitous ARPs (neighbour advertisements) from the virtual MAC"
pass "virtual MAC: the client's entry stayed $VMAC_MAC through crash (${crash} ms), preempt and planned stop; $adverts adverts and $garps announcements (gratuitous ARP or NA) from it, none from the own MACs; ping and HTTP through the VIP each time"
