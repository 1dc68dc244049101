#!/usr/bin/env bash
# v2-address-list.sh (issue 8 §5): VRRPv2, RFC 3768 §7.1: an advert whose
# address list differs from ours, from anyone but the address owner, is
# dropped. An attacker sends valid v2 adverts of priority 254 for the VRID
# but naming another address: lb1 (150) must stay master and count them as
# `address_list`; then the same with our address list (calibration): lb1
# backs down, proving the first ones reached it.
source "$(dirname "$0")/lib.sh"
need_root
need_vipd
ensure_pkg python3 python3

INTERVAL=1s
INJECT="$NT_DIR/inject.py"
topo_up lb1 lb2 client attacker
start_node vipd lb1 150 $INTERVAL 2 true
start_node vipd lb2 100 $INTERVAL 2 true
wait_pair_settled lb1 lb2 8000
tr1=$(node_transitions lb1)

inject() {
    ns_exec attacker timeout 20 python3 "$INJECT" --iface eth0 --src "${HOST_IP[attacker]}" --vrid "$VRID" \
        --version 2 --interval 1 --prio 254 --kinds valid --rate 10 --duration 2 "$@"
}
sent=$(inject --vip 192.0.2.99 --vip2 192.0.2.98) || fail "injector failed"
log "injector: $sent"
sleep 0.3
pair_settled lb1 lb2 || fail "adverts with another address list moved lb1: lb1=$(node_state lb1) lb2=$(node_state lb2)"
[[ $(node_transitions lb1) == "$tr1" ]] || fail "lb1 changed state under adverts with another address list"
dropped=$(vipd_field lb1 .rx.dropped.address_list)
((dropped >= 10)) || fail "lb1 counted ${dropped:-no} address_list drops, want about 20"

# Calibration: the same adverts with our address list are accepted.
inject --vip "$VIP" --vip2 192.0.2.20 >/dev/null || fail "injector failed"
wait_for 2000 state_is lb1 backup || fail "a valid priority-254 v2 advert did not make lb1 back down: $(node_state lb1)"
pass "v2: $dropped adverts naming other addresses dropped as address_list, lb1 stayed master; with our list, lb1 backed down"
