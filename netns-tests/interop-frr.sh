#!/usr/bin/env bash
# interop-frr.sh: vipd and FRR's vrrpd (Debian 12's frr 8.4: zebra + vrrpd)
# in one VRRP group, a second independent implementation beside keepalived.
# FRR keeps its VIP on a macvlan with the virtual MAC (vrrp4-2-51, bridge
# mode, set up as FRR's documentation says) and holds it in protodown while
# backup. VRRPv3 at 100 ms and VRRPv2 at 1 s, FRR once as the high-priority
# node and once as the low one: election, crash, preempt and graceful
# hand-over each time (failover_case in lib.sh).
source "$(dirname "$0")/lib.sh"
need_root
need_vipd
ensure_pkg "$FRR_DIR/vrrpd" frr
ensure_pkg jq jq
IMPL=""                         # mixed; node_state asks each node's own kind

CASE_NAME=interop-frr
for ver in 3 2; do
    failover_case "$ver" vipd frr
    failover_case "$ver" frr vipd
done
SCENARIO=interop-frr
for s in "${CASE_SUMMARY[@]}"; do echo "  $s"; done
pass "4 cases with FRR vrrpd: election, crash, preempt and graceful takeover each way, v3 and v2"
