#!/usr/bin/env bash
# down-at-start.sh (issue 8 §0.1): vipd started while its interface is down
# must leave fault when the link comes up. Alone on the segment, it must then
# become master within Master_Down_Interval. Two ways down: administratively
# (ip link set eth0 down) and up without carrier (the switch port down).
# Also checks that /status counts each state change (§0.5): init -> backup ->
# fault at start, fault -> init -> backup -> master after: 5.
source "$(dirname "$0")/lib.sh"
need_root
[[ $IMPL == vipd ]] && need_vipd

INTERVAL=100ms
MARGIN_MS=${MARGIN_MS:-300}
mdi=$(mdi_ms 150 $INTERVAL)
limit=$(awk -v m="$mdi" -v g="$MARGIN_MS" 'BEGIN{printf "%d", m+g}')
topo_up lb1 client

link_down() { if [[ $1 == admin ]]; then ip -n "$(ns lb1)" link set eth0 down; else ip -n "$SW" link set lb1 down; fi; }
link_up() { if [[ $1 == admin ]]; then ip -n "$(ns lb1)" link set eth0 up; else ip -n "$SW" link set lb1 up; fi; }

results=()
for how in admin carrier; do
    link_down "$how"
    start_node "$IMPL" lb1 150 $INTERVAL 3 true
    wait_for 5000 state_is lb1 fault || fail "$how down at start: lb1 is $(node_state lb1), want fault"
    sleep 0.5
    state_is lb1 fault || fail "$how down: lb1 left fault while the link is down ($(node_state lb1))"
    has_vip lb1 && fail "$how down: lb1 holds the VIP while in fault"
    t0=$(now_ms)
    link_up "$how"
    wait_for "$((limit + 3000))" state_is lb1 master ||
        fail "$how: the link came up but lb1 stayed $(node_state lb1) (the first 'up' never arrived?)"
    took=$(($(now_ms) - t0))
    ((took <= limit)) || fail "$how: master $took ms after link up > MDI $mdi + $MARGIN_MS ms"
    wait_for 1000 has_vip lb1 || fail "$how: lb1 is master without the VIP"
    ns_exec client ping -c 1 -W 1 "$VIP" >/dev/null || fail "$how: client cannot ping the VIP"
    if [[ $IMPL == vipd ]]; then
        tr=$(vipd_field lb1 .transitions)
        [[ $tr == 5 ]] || fail "$how: /status transitions = $tr, want 5 (init>backup>fault, fault>init>backup>master)"
    fi
    results+=("$how: master ${took} ms after link up")
    kill_node_hard lb1
    ip -n "$(ns lb1)" addr del "$VIP_CIDR" dev eth0 2>/dev/null || true
done
pass "${results[*]} (MDI ${mdi} ms); transitions counted one per state change"
