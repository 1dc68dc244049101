#!/usr/bin/env bash
# vip-deleted.sh (issue 8 §0.2): `ip addr del` of the VIP on the master (a
# network manager restart does it) must not leave the VIP on no node: the
# master puts it back within a second, announces it, and counts it
# (vipd_vrrp_vip_restored_total); states do not change. A backup that finds
# the VIP added on its interface removes it.
source "$(dirname "$0")/lib.sh"
need_root
[[ $IMPL == vipd ]] && need_vipd

INTERVAL=100ms
topo_up lb1 lb2 client
start_pair $INTERVAL
tr1=$(node_transitions lb1) tr2=$(node_transitions lb2)

t0=$(now_ms)
ip -n "$(ns lb1)" addr del "$VIP_CIDR" dev eth0
wait_for 1500 has_vip lb1 || fail "the VIP deleted on the master lb1 was not put back within 1.5 s"
back=$(($(now_ms) - t0))
ns_exec client ping -c 1 -W 1 "$VIP" >/dev/null || fail "client cannot reach the VIP after it was put back"
if [[ $IMPL == vipd ]]; then
    restored=$(vipd_field lb1 .tx.vips_restored)
    [[ $restored == 1 ]] || fail "lb1 /status tx.vips_restored = $restored, want 1"
    ns_exec lb1 curl -s -m 1 "http://$CONTROL/metrics" | grep -c '^vipd_vrrp_vip_restored_total{.*} 1$' ||
        fail "/metrics has no vipd_vrrp_vip_restored_total 1"
fi

t1=$(now_ms)
ip -n "$(ns lb2)" addr add "$VIP_CIDR" dev eth0
wait_for 1500 bash -c "! ip -n $(ns lb2) -4 addr show dev eth0 | grep -q 'inet $VIP/'" ||
    fail "the VIP added on the backup lb2 is still there after 1.5 s"
removed=$(($(now_ms) - t1))
sleep 0.3
pair_settled lb1 lb2 || fail "after the address changes: lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on $(vip_holder)"
[[ $(node_transitions lb1) == "$tr1" && $(node_transitions lb2) == "$tr2" ]] ||
    fail "state changes happened: lb1 $tr1 -> $(node_transitions lb1), lb2 $tr2 -> $(node_transitions lb2)"
pass "master put its deleted VIP back in ${back} ms; backup removed a stray VIP in ${removed} ms; no state change"
