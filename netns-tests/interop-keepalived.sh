#!/usr/bin/env bash
# interop-keepalived.sh: vipd and keepalived 2.2.7 in one VRRP group, for
# VRRPv3 (100 ms) and VRRPv2 (1 s, v2 intervals are whole seconds), each
# implementation once as the high-priority node (lb1, 150) and once as the
# low one (lb2, 100). Per case:
#   1. election: lb1 master with the VIP, lb2 backup;
#   2. crash of lb1: lb2 holds the VIP within Master_Down_Interval + margin;
#   3. lb1 restarted (preempt): takes the VIP back, lb2 backup again;
#   4. SIGTERM of lb1: lb2 holds the VIP within Skew_Time + margin (it honours
#      the other implementation's priority-0 advert).
# VIPD_SIDE=keepalived puts keepalived in vipd's place (checks the script).
source "$(dirname "$0")/lib.sh"
need_root
VIPD_SIDE=${VIPD_SIDE:-vipd}
[[ $VIPD_SIDE == vipd ]] && need_vipd
ensure_pkg keepalived keepalived
IMPL=""                         # mixed; node_state asks each node's own kind

for ver in 3 2; do
    failover_case "$ver" "$VIPD_SIDE" keepalived
    failover_case "$ver" keepalived "$VIPD_SIDE"
done
SCENARIO=interop-keepalived
for s in "${CASE_SUMMARY[@]}"; do echo "  $s"; done
pass "4 cases: election, crash, preempt and graceful takeover each way"
