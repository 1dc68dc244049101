#!/usr/bin/env bash
# The vipd demo, as root: builds vipd, starts two VRRP nodes (lb1 priority 150,
# lb2 priority 100) and a client in network namespaces on a private bridge,
# shows who is master, crashes it (kill -9), and shows the takeover with its
# time and the pings the client lost; then lb1 comes back and preempts.
# Everything runs in namespaces this script creates and removes on exit.
# INTERVAL=1s ./demo.sh for keepalived's default rhythm (default 100ms).
set -euo pipefail
cd "$(dirname "$0")"
[[ $(id -u) -eq 0 ]] || { echo "demo.sh: run as root (it creates network namespaces)" >&2; exit 2; }

echo "== building vipd"
cargo build --quiet
# shellcheck source=netns-tests/lib.sh
source netns-tests/lib.sh
ensure_pkg ping iputils-ping
ensure_pkg jq jq
ensure_pkg curl curl
INTERVAL=${INTERVAL:-100ms}

say() { printf '\n== %s\n' "$*"; }
status_both() {
    local h
    for h in lb1 lb2; do
        printf -- '-- %s (%s)\n' "$h" "${HOST_IP[$h]}"
        ns_exec "$h" "$VIPD" status --control "$CONTROL" || true
    done
}

say "topology: bridge in namespace $SW; lb1 ${HOST_IP[lb1]}, lb2 ${HOST_IP[lb2]}, client ${HOST_IP[client]}; VIP $VIP_CIDR"
topo_up lb1 lb2 client
start_node vipd lb2 100 "$INTERVAL" 3 true
start_node vipd lb1 150 "$INTERVAL" 3 true
wait_pair_settled lb1 lb2 15000
say "lb1 is master and holds the VIP (VIP on: $(vip_holder))"
status_both

say "client pings the VIP every 20 ms for 5 s"
ns_exec client ping -n -i 0.02 -W 1 -w 5 "$VIP" >"$WORK/ping.log" 2>&1 &
EXTRA_PIDS+=("$!")
PING_PID=$!
wait_for 3000 neigh_is "${HOST_MAC[lb1]}" || fail "client cannot reach the VIP on lb1"
echo "client's neighbour entry for $VIP: $(client_neigh_mac) (lb1)"
sleep 1

say "kill -9 of lb1 (a crash: no priority-0 advert)"
crash_node lb1
wait_for 10000 state_is lb2 master || fail "lb2 did not take over"
took=$WAITED_MS
wait_for 3000 neigh_is "${HOST_MAC[lb2]}" || fail "client's neighbour entry did not move to lb2"
echo "lb2 became master ${took} ms after the kill (RFC bound: Master_Down_Interval = $(mdi_ms 100 "$INTERVAL") ms after lb1's last advert)"
echo "client's neighbour entry for $VIP now: $(client_neigh_mac) (lb2)"
wait_for 8000 eval '! pid_alive "$PING_PID"' || true
echo "ping: $(grep -E 'packets transmitted' "$WORK/ping.log" || echo "no summary")"
status_both

say "lb1 comes back (it removes the VIP its crash left behind) and preempts"
start_node vipd lb1 150 "$INTERVAL" 3 true
wait_pair_settled lb1 lb2 15000
echo "lb1 is master again; VIP on: $(vip_holder); client's entry: $(client_neigh_mac)"
status_both

say "graceful stop of lb1 (SIGTERM: priority 0, VIP released)"
t0=$(now_ms)
kill -TERM "${NODE_PID[lb1]}"
wait_for 5000 state_is lb2 master || fail "lb2 did not take over"
echo "lb2 master ${WAITED_MS} ms after SIGTERM (Skew_Time: $(skew_ms 100 "$INTERVAL") ms)"
reap_node lb1 || true
echo "VIP on: $(vip_holder)"
say "done; namespaces are removed on exit"
