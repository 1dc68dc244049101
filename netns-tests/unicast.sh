#!/usr/bin/env bash
# unicast.sh: VRRP by unicast peers on a switch that drops multicast, as
# public clouds and many hypervisors do (every bridge port has mcast_flood
# off; broadcast, and so ARP, still floods).
#   0. control: a multicast pair splits its brain there (both master), so
#      the filter is real;
#   1. a unicast vipd pair keeps one master throughout (3 s, no transition),
#      and adverts of priority 254 sent by unicast to the master from an
#      address that is not a peer are dropped as not_a_peer and move nothing;
#   2. election, crash, preempt and graceful hand-over (failover_case in
#      lib.sh) for vipd with vipd, and with keepalived 2.2.7 (unicast_peer)
#      in both priority orders, v3 and v2.
source "$(dirname "$0")/lib.sh"
need_root
need_vipd
ensure_pkg keepalived keepalived
ensure_pkg python3 python3
INJECT="$NT_DIR/inject.py"

# Every port of the bridge floods no multicast. IPv6 neighbour discovery
# is multicast too: the LBs then know each other by static entries, as
# hosts on such networks are given them (or the network answers for them).
no_multicast() {
    local p h
    for p in $(ip -n "$SW" -o link show master br0 | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }'); do
        bridge -n "$SW" link set dev "$p" mcast_flood off
    done
    if [[ -n $V6 ]]; then
        for h in lb1 lb2; do
            local other=lb2
            [[ $h == lb2 ]] && other=lb1
            ip -n "$(ns "$h")" neigh replace "${HOST_LL[$other]}" lladdr "${HOST_MAC[$other]}" dev eth0 nud permanent
        done
    fi
}

# 0. Multicast cannot work here.
SCENARIO="unicast control (multicast)"
topo_up lb1 lb2 client
no_multicast
start_node vipd lb1 150 100ms 3 true
start_node vipd lb2 100 100ms 3 true
both_master() { state_is lb1 master && state_is lb2 master; }
wait_for 3000 both_master || fail "multicast through the filter? lb1=$(node_state lb1) lb2=$(node_state lb2)"
topo_down

# 1. One master throughout, and strangers are not heard.
export UNICAST=1
SCENARIO="unicast one master"
topo_up lb1 lb2 client attacker
no_multicast
start_node vipd lb1 150 100ms 3 true
start_node vipd lb2 100 100ms 3 true
wait_pair_settled lb1 lb2 5000
tr1=$(node_transitions lb1); tr2=$(node_transitions lb2)
bad=0
for ((i = 0; i < 30; i++)); do
    pair_settled lb1 lb2 || bad=$((bad + 1))
    sleep 0.1
done
((bad == 0)) || fail "$bad of 30 looks found the pair unsettled: lb1=$(node_state lb1) lb2=$(node_state lb2)"
strangers=0
if [[ -z $V6 ]]; then             # inject.py speaks IPv4
    sent=$(ns_exec attacker timeout 20 python3 "$INJECT" --iface eth0 --src "${HOST_IP[attacker]}" \
        --dst "${HOST_IP[lb1]}" --vrid "$VRID" --prio 254 --kinds valid --rate 10 --duration 2) || fail "injector failed"
    log "injector: $sent"
    sleep 0.3
    strangers=$(vipd_field lb1 .rx.dropped.not_a_peer)
    ((strangers >= 10)) || fail "lb1 counted ${strangers:-no} not_a_peer drops, want about 20"
fi
pair_settled lb1 lb2 || fail "a stranger's adverts moved the pair: lb1=$(node_state lb1) lb2=$(node_state lb2)"
[[ $(node_transitions lb1) == "$tr1" && $(node_transitions lb2) == "$tr2" ]] || fail "a state changed during the watch"
peer=$(vipd_field lb2 '.peers | map("\(.address):\(.adverts)") | join(",")')
[[ $peer == "$(unicast_peer_of lb2):"* ]] || fail "lb2 heard no unicast adverts from lb1: peers $peer"
CASE_SUMMARY+=("one master for 3 s, $strangers adverts from a stranger dropped as not_a_peer${V6:+ (none sent over IPv6)}; lb2 heard $peer")
topo_down

# 2. Failover, vipd with vipd and with keepalived.
CASE_NAME=unicast
CASE_TOPO_HOOK=no_multicast
failover_case 3 vipd vipd
versions="3 2"
[[ -n $V6 ]] && versions=3     # VRRPv2 is IPv4 only
for ver in $versions; do
    failover_case "$ver" vipd keepalived
    failover_case "$ver" keepalived vipd
done
SCENARIO=unicast
for s in "${CASE_SUMMARY[@]}"; do echo "  $s"; done
pass "unicast peers with multicast filtered: multicast splits, unicast keeps one master, fails over both ways with vipd and keepalived"
