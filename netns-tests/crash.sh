#!/usr/bin/env bash
# crash.sh: kill -9 of the master (lb1). lb2 must become master and hold the
# VIP within Master_Down_Interval + margin (nobody tells it: it has to time
# out), announce itself with gratuitous ARP so the client's neighbour entry for
# the VIP moves to lb2's MAC, and the client must reach the VIP.
# Then lb1 is restarted (preempt off, as a systemd restart would): it must
# drop the VIP the crash left on its interface and stay backup.
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

# The client talks to the VIP, so it has a neighbour entry pointing at lb1.
ns_exec client ping -c 1 -W 1 "$VIP" >/dev/null || fail "client cannot ping the VIP on lb1"
neigh_is "${HOST_MAC[lb1]}" || fail "client neighbour entry for VIP is $(client_neigh_mac), want lb1 ${HOST_MAC[lb1]}"

mdi=$(mdi_ms 100 $INTERVAL)
limit=$(awk -v m="$mdi" -v g="$MARGIN_MS" 'BEGIN{printf "%d", m+g}')
t0=$(now_ms)
crash_node lb1
wait_for "$((limit + 2000))" has_vip lb2 || fail "lb2 never took the VIP after the crash"
takeover=$(($(now_ms) - t0))
((takeover <= limit)) || fail "takeover took $takeover ms > MDI $mdi + $MARGIN_MS ms"
wait_for 1000 state_is lb2 master || fail "lb2 holds the VIP but state is $(node_state lb2)"

# Gratuitous ARP goes out on becoming master: the client's entry must follow
# without the client asking (checked before any ping can re-resolve it).
wait_for 1000 neigh_is "${HOST_MAC[lb2]}" ||
    fail "client neighbour entry for VIP still $(client_neigh_mac) 1 s after takeover (no gratuitous ARP from lb2?)"
garp=$(($(now_ms) - t0))
ns_exec client ping -c 1 -W 1 "$VIP" >/dev/null || fail "client cannot ping the VIP after takeover"
neigh_is "${HOST_MAC[lb2]}" || fail "after ping the client's entry is $(client_neigh_mac), want lb2"

# Restart lb1 without preemption: it must clear the VIP its crash left behind.
start_node "$IMPL" lb1 150 $INTERVAL 3 false
wait_for 3000 pair_settled lb2 lb1 ||
    fail "after restart of lb1 (preempt off): lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on: $(vip_holder) (want lb2 only)"
sleep 0.5
pair_settled lb2 lb1 || fail "restarted lb1 did not stay backup: lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on: $(vip_holder)"

pass "takeover ${takeover} ms (MDI ${mdi} ms, limit ${limit} ms); client neighbour -> lb2 at ${garp} ms; ping ok; restarted lb1 backup, VIP on $(vip_holder)"
