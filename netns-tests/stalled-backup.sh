#!/usr/bin/env bash
# stalled-backup.sh (issue 8 §0.4): the backup's process is stopped for longer
# than Master_Down_Interval while the master keeps advertising (a VM pause, a
# starved CPU). On resume it must read the adverts already queued before it
# acts on its expired timer: no transition at all, five times over.
source "$(dirname "$0")/lib.sh"
need_root
[[ $IMPL == vipd ]] && need_vipd

INTERVAL=100ms
STALLS=${STALLS:-5}
topo_up lb1 lb2 client
start_pair $INTERVAL
tr1=$(node_transitions lb1) tr2=$(node_transitions lb2)
pid=${NODE_PID[lb2]}
[[ ${NODE_KIND[lb2]} == keepalived ]] && pid=$(keepalived_child lb2)
for ((i = 0; i < STALLS; i++)); do
    kill -STOP "$pid"
    sleep 1
    kill -CONT "$pid"
    sleep 0.5
done
pair_settled lb1 lb2 || fail "after the stalls: lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on $(vip_holder)"
d1=$(($(node_transitions lb1) - tr1)) d2=$(($(node_transitions lb2) - tr2))
((d1 == 0 && d2 == 0)) || fail "$STALLS stalls of lb2 gave transitions: lb1 +$d1, lb2 +$d2 (want 0)"
pass "$STALLS stalls of the backup (1 s each, MDI $(mdi_ms 100 $INTERVAL) ms): no transition"
