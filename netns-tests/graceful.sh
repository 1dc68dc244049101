#!/usr/bin/env bash
# graceful.sh: SIGTERM the master (lb1). It must send a priority-0 advert,
# remove the VIP and exit 0; lb2 takes over within Skew_Time + margin (the
# priority-0 advert cuts its wait from Master_Down_Interval to Skew_Time) and
# the client's neighbour entry for the VIP follows to lb2.
source "$(dirname "$0")/lib.sh"
need_root
[[ $IMPL == vipd ]] && need_vipd

INTERVAL=100ms
MARGIN_MS=${MARGIN_MS:-250}
topo_up lb1 lb2 client
start_node "$IMPL" lb1 150 $INTERVAL 3 true
start_node "$IMPL" lb2 100 $INTERVAL 3 true
wait_pair_settled lb1 lb2 5000
sleep 0.5
ns_exec client ping -c 1 -W 1 "$VIP" >/dev/null || fail "client cannot ping the VIP on lb1"

start_capture client "$WORK/graceful.pcap"
cap=$CAPTURE_PID
skew=$(skew_ms 100 $INTERVAL)
limit=$(awk -v s="$skew" -v g="$MARGIN_MS" 'BEGIN{printf "%d", s+g}')
t0=$(now_ms)
kill -TERM "${NODE_PID[lb1]}"
wait_for "$((limit + 2000))" has_vip lb2 || fail "lb2 never took the VIP after lb1's SIGTERM"
takeover=$(($(now_ms) - t0))
rc=0
reap_node lb1 || rc=$?
((rc == 0)) || fail "lb1 exited with status $rc after SIGTERM (want 0)"
((takeover <= limit)) || fail "takeover took $takeover ms > Skew_Time $skew + $MARGIN_MS ms"
has_vip lb1 && fail "lb1 still has the VIP after its graceful stop"
wait_for 1000 state_is lb2 master || fail "lb2 holds the VIP but state is $(node_state lb2)"
wait_for 1000 neigh_is "${HOST_MAC[lb2]}" ||
    fail "client neighbour entry for VIP still $(client_neigh_mac) 1 s after takeover"
stop_capture "$cap"

prio0=$(read_capture "$WORK/graceful.pcap" | grep -c "192.0.2.11 > 224.0.0.18: VRRPv3, Advertisement, vrid $VRID, prio 0," || true)
((prio0 >= 1)) || fail "no priority-0 advert from lb1 seen on the segment"
ns_exec client ping -c 1 -W 1 "$VIP" >/dev/null || fail "client cannot ping the VIP after takeover"

pass "takeover ${takeover} ms (Skew_Time ${skew} ms, limit ${limit} ms); lb1 exit 0, sent $prio0 priority-0 advert(s); VIP on $(vip_holder)"
