#!/usr/bin/env bash
# The vipd demo, as root: builds vipd, starts two LB nodes running vipd (VRRP
# + HTTP load balancer; lb1 priority 150, lb2 priority 100), two app servers
# (nginx) and a client in network namespaces on a private bridge. The client
# sends an HTTP request to the VIP every 20 ms. The demo crashes the master
# (kill -9), shows the takeover with its time and the requests lost; lb1
# comes back and preempts; then a planned stop (SIGTERM) that loses nothing.
# Everything runs in namespaces this script creates and removes on exit.
# INTERVAL=1s ./demo.sh for keepalived's default rhythm (default 100ms).
set -euo pipefail
cd "$(dirname "$0")"
[[ $(id -u) -eq 0 ]] || { echo "demo.sh: run as root (it creates network namespaces)" >&2; exit 2; }

echo "== building vipd"
cargo build --quiet
# shellcheck source=netns-tests/lib.sh
source netns-tests/lib.sh
# shellcheck source=netns-tests/lib-http.sh
source netns-tests/lib-http.sh
ensure_pkg jq jq
ensure_pkg curl curl
ensure_pkg_nosvc nginx nginx
INTERVAL=${INTERVAL:-100ms}
URL="http://$VIP:$APP_PORT/"

say() { printf '\n== %s\n' "$*"; }
status_both() {
    local h
    for h in lb1 lb2; do
        printf -- '-- %s (%s)\n' "$h" "${HOST_IP[$h]}"
        ns_exec "$h" "$VIPD" status --control "$CONTROL" || true
    done
}
# traffic TAG MS: the client's request loop for MS milliseconds, in the background.
traffic() {
    TRAFFIC_OUT="$WORK/$1.client"
    start_client_loop client "$URL" "$1" "$2" 20 1 "$TRAFFIC_OUT"
    TRAFFIC_PID=$CLIENT_PID
}
report() {
    wait_client_loop "$TRAFFIC_PID" "$1" 1
    eval "$(loop_stats "$TRAFFIC_OUT" "$2")"
    echo "client: $total requests, $failed failed$( ((failed > 0)) && echo " (between ${first_fail_ms} and ${last_fail_ms} ms after the event)"), slowest ${max_lat_ms} ms"
}

say "topology: bridge in namespace $SW; lb1 ${HOST_IP[lb1]}, lb2 ${HOST_IP[lb2]}, app1 ${HOST_IP[app1]}, app2 ${HOST_IP[app2]}, client ${HOST_IP[client]}; VIP $VIP_CIDR"
topo_up lb1 lb2 app1 app2 client
start_app_servers
start_vipd lb2 "$(vipd_lb_conf lb2 100 "$INTERVAL")" "$WORK/lb2.log"
start_vipd lb1 "$(vipd_lb_conf lb1 150 "$INTERVAL")" "$WORK/lb1.log"
wait_pair_settled lb1 lb2 15000
for h in lb1 lb2; do wait_for 10000 vipd_backends_healthy "$h" || fail "$h: backends not healthy"; done
say "lb1 is master and holds the VIP (VIP on: $(vip_holder)); both balance over app1 and app2"
status_both
printf 'four requests to %s: ' "$URL"
for _ in 1 2 3 4; do printf '%s ' "$(ns_exec client curl -s -m 1 "$URL")"; done
echo

say "the client sends a request every 20 ms (a new connection each); kill -9 of lb1 after 1.5 s"
traffic crash 5000
sleep 1.5
t_ev=$(now_ms)
crash_node lb1
wait_for 10000 state_is lb2 master || fail "lb2 did not take over"
echo "lb2 became master ${WAITED_MS} ms after the kill (RFC bound: Master_Down_Interval = $(mdi_ms 100 "$INTERVAL") ms after lb1's last advert)"
wait_for 3000 neigh_is "${HOST_MAC[lb2]}" || fail "client's neighbour entry did not move to lb2"
echo "client's neighbour entry for $VIP now: $(client_neigh_mac) (lb2's MAC)"
report 5000 "$t_ev"
status_both

say "lb1 comes back (it removes the VIP its crash left behind) and preempts"
start_vipd lb1 "$(vipd_lb_conf lb1 150 "$INTERVAL")" "$WORK/lb1.log"
wait_pair_settled lb1 lb2 15000
wait_for 10000 vipd_backends_healthy lb1 || fail "lb1: backends not healthy"
echo "lb1 is master again; VIP on: $(vip_holder); client's entry: $(client_neigh_mac)"

say "planned stop of lb1 (SIGTERM): priority 0, VIP kept until lb2 advertises, then drained"
traffic graceful 4000
sleep 1.5
t_ev=$(now_ms)
kill -TERM "${NODE_PID[lb1]}"
wait_for 5000 state_is lb2 master || fail "lb2 did not take over"
echo "lb2 master ${WAITED_MS} ms after SIGTERM (Skew_Time: $(skew_ms 100 "$INTERVAL") ms)"
reap_node lb1 || true
report 4000 "$t_ev"
echo "VIP on: $(vip_holder)"
grep -E "took over|releasing|draining|stopped" "$WORK/lb1.log" | tail -n 4 | sed 's/^/lb1 log: /'
say "done; namespaces are removed on exit"
