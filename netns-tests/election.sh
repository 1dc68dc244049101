#!/usr/bin/env bash
# election.sh: lb1 (priority 150) and lb2 (priority 100) start together as
# backups. lb1 must win: master, VIP on lb1 only; lb2 backup and silent
# (a backup never advertises); and the pair stays that way (no flapping).
source "$(dirname "$0")/lib.sh"
need_root
[[ $IMPL == vipd ]] && need_vipd

INTERVAL=100ms
topo_up lb1 lb2 client
start_capture client "$WORK/election.pcap"
cap=$CAPTURE_PID
t0=$(now_ms)
start_node "$IMPL" lb1 150 $INTERVAL 3 true
start_node "$IMPL" lb2 100 $INTERVAL 3 true

# Both start as backup and wait Master_Down_Interval (~0.36 s); 5 s is generous.
wait_pair_settled lb1 lb2 5000
elected_ms=$(($(now_ms) - t0))

# Stable for 2 s: the same roles, no further transitions.
tr1=$(node_transitions lb1); tr2=$(node_transitions lb2)
sleep 2
pair_settled lb1 lb2 || fail "pair did not stay settled: lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on: $(vip_holder)"
[[ $(node_transitions lb1) == "$tr1" && $(node_transitions lb2) == "$tr2" ]] ||
    fail "transitions changed while idle: lb1 $tr1 -> $(node_transitions lb1), lb2 $tr2 -> $(node_transitions lb2)"

if [[ $IMPL == vipd ]]; then
    # What the backup knows about the master, and the configured fields.
    [[ $(vipd_field lb2 .master_ip) == "${HOST_IP[lb1]}" ]] ||
        fail "lb2 master_ip is $(vipd_field lb2 .master_ip), want ${HOST_IP[lb1]}"
    [[ $(vipd_field lb1 .priority) == 150 && $(vipd_field lb2 .priority) == 100 ]] ||
        fail "priorities in status: lb1 $(vipd_field lb1 .priority) lb2 $(vipd_field lb2 .priority)"
    [[ $(vipd_field lb1 .vrid) == "$VRID" ]] || fail "vrid in status: $(vipd_field lb1 .vrid)"
fi

stop_capture "$cap"
cap_txt=$(read_capture "$WORK/election.pcap")
from_lb1=$(grep -c "192.0.2.11 > 224.0.0.18: VRRPv3, Advertisement, vrid $VRID, prio 150, intvl 10cs" <<<"$cap_txt" || true)
from_lb2=$(grep -c "192.0.2.12 > 224.0.0.18: VRRP" <<<"$cap_txt" || true)
# lb2 may have advertised only if it had briefly been master: it must not.
((from_lb2 == 0)) || fail "backup lb2 sent $from_lb2 adverts"
# ~2 s of mastership at 10/s: expect at least 15 well-formed adverts from lb1.
((from_lb1 >= 15)) || fail "only $from_lb1 well-formed adverts (prio 150, vrid $VRID, 10cs) from lb1; capture: $(head -n 5 <<<"$cap_txt")"

pass "lb1 master after ${elected_ms} ms (MDI $(mdi_ms 150 $INTERVAL) ms); lb2 backup; VIP on $(vip_holder); lb1 adverts seen=$from_lb1, lb2=0"
