#!/usr/bin/env bash
# http-failover.sh: HTTP traffic through the VIP while the master fails over.
#
#   lb1 (vipd, prio 150)  lb2 (vipd, prio 100): [[vrrp]] at 100 ms plus
#       [[http]] on 0.0.0.0:8080 -> app1 192.0.2.21:8080, app2 192.0.2.22:8080
#   app1, app2: nginx answering its own name at /, "ok" at /healthz, logging
#       every other request with the peer address (so we see which LB sent it)
#   client: one GET to http://VIP:8080/ every PERIOD_MS, a new connection
#       each time (curl -m REQ_TIMEOUT), every result recorded with timestamps
#
# Phase crash (own topology): kill -9 of lb1 while the client runs. Some
# requests fail (lb1's kernel still holds the VIP and refuses connections
# until lb2 takes over after Master_Down_Interval and announces itself). The
# checks: nothing fails before the crash; traffic recovers within MDI + 1 s;
# nothing fails after that; both app servers get traffic through lb2.
# Phase graceful (fresh topology): SIGTERM of lb1 while the client runs. NO
# request may fail; lb1 exits 0; both app servers get traffic through lb2.
# Prints one PASS line with the numbers of both phases.
#
# Env: IMPL=keepalived runs the classic pair instead of vipd on each LB
#      (keepalived for VRRP + HAProxy on 0.0.0.0:8080): a baseline, and a check
#      of this script while vipd's HTTP side is missing. On a graceful stop
#      keepalived is stopped first, then HAProxy soft-stops (SIGUSR1).
#      VIPD (default ../target/debug/vipd), PERIOD_MS (20), REQ_TIMEOUT (1,
#      curl -m seconds), PRE_MS (1500: traffic before the failover),
#      POST_MS (4000: traffic after it), PHASES ("crash graceful"),
#      SELFTEST=1: no vipd at all; checks the app servers, the client loop and
#      the accounting by pointing the client at app1 directly and stopping /
#      restarting app1's nginx mid-run.
NT_DIR0=$(cd "$(dirname "$0")" && pwd)
source "$NT_DIR0/lib.sh"
source "$NT_DIR0/lib-http.sh"
need_root
SELFTEST=${SELFTEST:-0}
[[ $SELFTEST == 1 ]] && IMPL=""
# nft: vipd's hand-over relay (handover_relay, on by default).
[[ $IMPL == vipd ]] && { need_vipd; ensure_pkg nft nftables; }
[[ $IMPL == keepalived ]] && { ensure_pkg keepalived keepalived; ensure_pkg_nosvc haproxy haproxy; }
ensure_pkg_nosvc nginx nginx
ensure_pkg curl curl
ensure_pkg jq jq

INTERVAL=100ms
PERIOD_MS=${PERIOD_MS:-20}
REQ_TIMEOUT=${REQ_TIMEOUT:-1}
PRE_MS=${PRE_MS:-1500}
POST_MS=${POST_MS:-4000}
PHASES=${PHASES:-crash graceful}
LOOP_MS=$((PRE_MS + POST_MS))
MDI=$(mdi_ms 100 $INTERVAL)                            # lb2 is the backup
RECOVER_LIMIT=$(awk -v m="$MDI" 'BEGIN{printf "%d", m + 1000}')
URL="http://$VIP_URL:$APP_PORT/"
APPS=(app1 app2)
APP_LOGS=("$WORK/app1.access" "$WORK/app2.access")

((PERIOD_MS >= 5 && PERIOD_MS <= 1000)) || fail "PERIOD_MS=$PERIOD_MS out of range 5..1000"
((LOOP_MS >= 1000 && LOOP_MS <= 120000)) || fail "PRE_MS + POST_MS = $LOOP_MS out of range 1000..120000"


declare -A APP_PID=()
start_apps() {
    local a
    for a in "${APPS[@]}"; do
        app_server "$a"
        APP_PID[$a]=$STARTED_PID
        nginx_ready "$a" "$STARTED_PID" "http://${HOST_IP[$a]}:$APP_PORT/healthz" 5000 || fail "$a: $WHY"
        [[ $(ns_exec client curl -s -m 1 "http://${HOST_IP[$a]}:$APP_PORT/") == "$a" ]] ||
            fail "client does not get \"$a\" from $a directly"
    done
}

# start_lbs: vipd (VRRP + HTTP) on lb1/lb2, or keepalived + HAProxy.
declare -A LB_PROXY_PID=()
start_lbs() {
    local h
    if [[ $IMPL == vipd ]]; then
        start_vipd lb1 "$(vipd_lb_conf lb1 150 $INTERVAL)" "$WORK/lb1.log"
        start_vipd lb2 "$(vipd_lb_conf lb2 100 $INTERVAL)" "$WORK/lb2.log"
        return
    fi
    start_node keepalived lb1 150 $INTERVAL 3 true
    start_node keepalived lb2 100 $INTERVAL 3 true
    for h in lb1 lb2; do
        start_haproxy "$h" "haproxy-$h" "$(HAPROXY_CHECK_INTER=500ms haproxy_conf "haproxy-$h" \
            "$ANY_ADDR:$APP_PORT" "${HOST_IP[app1]}:$APP_PORT" "${HOST_IP[app2]}:$APP_PORT")"
        LB_PROXY_PID[$h]=$STARTED_PID
    done
}

# lb_serves_both HOST: the LB's proxy, asked locally, hands out both apps.
lb_serves_both() {
    local i b seen=""
    for ((i = 0; i < 4; i++)); do
        b=$(ns_exec "$1" curl -s -m 1 "http://127.0.0.1:$APP_PORT/") || return 1
        seen+=" $b"
    done
    [[ $seen == *app1* && $seen == *app2* ]]
}

# setup: fresh topology, apps, lb1 master / lb2 backup, both with both
# backends healthy, client served through the VIP by both apps.
setup() {
    local h i body seen=""
    topo_up lb1 lb2 app1 app2 client
    start_apps
    start_lbs
    wait_pair_settled lb1 lb2 5000
    for h in lb1 lb2; do
        if [[ $IMPL == vipd ]]; then
            wait_for 10000 vipd_backends_healthy "$h" ||
                fail "$h: backends not all healthy after 10 s: $(vipd_json "$h" | jq -c '.http' 2>/dev/null || echo 'no status')"
        fi
        wait_for 5000 lb_serves_both "$h" || fail "$h: its proxy does not hand out both app1 and app2"
    done
    for ((i = 0; i < 4; i++)); do
        body=$(ns_exec client curl -s -m 1 "$URL") || true
        [[ $body == app1 || $body == app2 ]] || fail "client through the VIP got \"$body\", want app1 or app2"
        seen+=" $body"
    done
    [[ $seen == *app1* && $seen == *app2* ]] || fail "4 requests through the VIP all went to one app:$seen (round_robin)"
}

# check_apps PHASE OUT FROM_MS LB: both apps served requests of this loop
# started at/after FROM_MS through LB. Sets SERVED (served_by's summary).
SERVED=""
check_apps() {
    local phase=$1 out=$2 from=$3 lb=$4 a
    SERVED=$(served_by "$phase" "$out" "$from" "" "${APP_LOGS[@]}")
    for a in "${APPS[@]}"; do
        (($(served_count "$SERVED" "$a" "${HOST_IP[$lb]}") > 0)) ||
            fail "$phase: $a got no traffic through $lb (${HOST_IP[$lb]}) after the failover; served: ${SERVED:-nothing}"
    done
}

# ---------------------------------------------------------------- selftest

if [[ $SELFTEST == 1 ]]; then
    SCENARIO=http-failover-selftest
    topo_up app1 app2 client
    start_apps
    out="$WORK/selftest.client"
    start_client_loop client "http://${HOST_IP[app1]}:$APP_PORT/" selftest 3000 "$PERIOD_MS" "$REQ_TIMEOUT" "$out"
    cpid=$CLIENT_PID
    sleep 1
    t_ev=$(now_ms)
    pid=${APP_PID[app1]}
    [[ $(cat "$WORK/app1/nginx.pid") == "$pid" ]] || fail "app1's pid file says $(cat "$WORK/app1/nginx.pid"), we started $pid"
    stop_daemon "$pid"
    log "stopped app1 (nginx pid $pid)"
    sleep 0.5
    app_server app1
    nginx_ready app1 "$STARTED_PID" "http://${HOST_IP[app1]}:$APP_PORT/healthz" 5000 || fail "app1 restart: $WHY"
    t_up=$(now_ms)
    wait_client_loop "$cpid" 3000 "$REQ_TIMEOUT"
    eval "$(loop_stats "$out" "$t_ev")"
    s=$(served_by selftest "$out" 0 "" "${APP_LOGS[@]}")
    log "selftest: $(loop_stats "$out" "$t_ev"); app1 back after $((t_up - t_ev)) ms; served: $s"
    ((total >= 3000 / PERIOD_MS * 8 / 10)) || fail "only $total requests in 3 s at one per $PERIOD_MS ms"
    ((pre_fail == 0)) || fail "$pre_fail requests failed before app1 was stopped"
    ((failed > 0)) || fail "no request failed while app1 was down"
    ((recover_ms >= 0 && recover_ms <= t_up - t_ev + 200)) || fail "recovery at $recover_ms ms, app1 was back at $((t_up - t_ev)) ms"
    ((post_fail == 0)) || fail "$post_fail failures after recovery"
    ok_n=$(awk '$4 == 200' "$out" | wc -l)
    logged=$(served_count "$s" app1 "${HOST_IP[client]}")
    ((logged == ok_n)) || fail "app1 logged $logged requests from the client, the client saw $ok_n answered"
    pass "selftest: $total requests, $failed failed while app1 was down (window ${window_ms} ms, recovered ${recover_ms} ms after the stop, app1 back at $((t_up - t_ev)) ms), 0 after; app1 logged all $logged OK requests; max latency ${max_lat_ms} ms"
    exit 0
fi

# ---------------------------------------------------------------- phases

RESULT=()

phase_crash() {
    local out="$WORK/crash.client" cpid t_ev takeover
    SCENARIO=http-failover-crash
    setup
    start_client_loop client "$URL" crash "$LOOP_MS" "$PERIOD_MS" "$REQ_TIMEOUT" "$out"
    cpid=$CLIENT_PID
    sleep "$(awk -v m="$PRE_MS" 'BEGIN{print m / 1000}')"
    t_ev=$(now_ms)
    if [[ $IMPL == keepalived ]]; then
        stop_pid "${LB_PROXY_PID[lb1]}" KILL 2000 || true   # HAProxy dies with the node
        untrack_pid "${LB_PROXY_PID[lb1]}"
    fi
    crash_node lb1
    wait_for $((RECOVER_LIMIT + 2000)) has_vip lb2 || fail "lb2 never took the VIP after lb1 crashed"
    takeover=$WAITED_MS
    wait_client_loop "$cpid" "$LOOP_MS" "$REQ_TIMEOUT"
    eval "$(loop_stats "$out" "$t_ev")"
    log "crash: $(loop_stats "$out" "$t_ev"); lb2 had the VIP ${takeover} ms after the kill; lb2 backends: $(vipd_backend_requests lb2)"
    ((total >= LOOP_MS / PERIOD_MS / 3)) || fail "crash: only $total requests in $LOOP_MS ms"
    ((pre_fail == 0)) || fail "crash: $pre_fail of the requests before the crash failed (see $out)"
    ((recover_ms >= 0)) || fail "crash: no request succeeded after lb1 was killed ($failed of $total failed)"
    ((recover_ms <= RECOVER_LIMIT)) ||
        fail "crash: traffic recovered ${recover_ms} ms after the kill > MDI ${MDI} + 1000 ms"
    ((post_fail == 0)) || fail "crash: $post_fail requests failed after traffic had recovered (see $out)"
    check_apps crash "$out" "$t_ev" lb2
    RESULT+=("crash: $failed/$total requests failed (window ${window_ms} ms), recovered ${recover_ms} ms after kill -9 (MDI ${MDI} ms, limit ${RECOVER_LIMIT}), VIP on lb2 at ${takeover} ms; after: $SERVED")
    topo_down
}

phase_graceful() {
    local out="$WORK/graceful.client" cpid t_ev takeover rc=0 lat
    SCENARIO=http-failover-graceful
    setup
    # The client's side of the switch, for a failure's post-mortem.
    start_capture client "$WORK/graceful.pcap" "tcp port $APP_PORT or arp"
    start_client_loop client "$URL" graceful "$LOOP_MS" "$PERIOD_MS" "$REQ_TIMEOUT" "$out"
    cpid=$CLIENT_PID
    sleep "$(awk -v m="$PRE_MS" 'BEGIN{print m / 1000}')"
    # A connection opened to lb1 before the switch that sends its request
    # once the client has heard lb2's gratuitous ARP.
    local held="$WORK/held.out" hpid held_answer
    : >"$held"
    ip netns exec "$(ns client)" python3 "$NT_DIR0/held-conn.py" "$VIP" "$APP_PORT" "${HOST_MAC[lb2]}" "$held" </dev/null &
    hpid=$!
    EXTRA_PIDS+=("$hpid")
    wait_for 3000 grep -q connected "$held" || fail "graceful: the held connection did not connect: $(cat "$held")"
    t_ev=$(now_ms)
    kill -TERM "${NODE_PID[lb1]}"
    wait_for $((RECOVER_LIMIT + 2000)) has_vip lb2 || fail "lb2 never took the VIP after lb1's SIGTERM"
    takeover=$WAITED_MS
    reap_node lb1 8000 || rc=$?
    if [[ $IMPL == keepalived ]]; then
        kill -USR1 "${LB_PROXY_PID[lb1]}"           # HAProxy soft stop: finish, then exit
        wait_for 5000 pid_gone "${LB_PROXY_PID[lb1]}" || log "haproxy on lb1 still running 5 s after SIGUSR1"
        stop_daemon "${LB_PROXY_PID[lb1]}"
    fi
    wait_client_loop "$cpid" "$LOOP_MS" "$REQ_TIMEOUT"
    wait_for 5000 pid_gone "$hpid" || stop_pid "$hpid" TERM 1000 >/dev/null 2>&1 || true
    held_answer=$(sed -n 2p "$held")
    log "graceful: the connection opened before the switch and used after it got: ${held_answer:-nothing}"
    eval "$(loop_stats "$out" "$t_ev")"
    log "graceful: $(loop_stats "$out" "$t_ev"); lb1 exit $rc; lb2 had the VIP ${takeover} ms after SIGTERM; lb2 backends: $(vipd_backend_requests lb2)"
    ((total >= LOOP_MS / PERIOD_MS / 3)) || fail "graceful: only $total requests in $LOOP_MS ms"
    ((failed == 0)) || fail "graceful: $failed of $total requests failed, from $first_fail_ms to $last_fail_ms ms after SIGTERM: $(awk '$4 != 200' "$out" | head -n 5 | tr '\n' ';') (SEQ START END CODE CURL_RC)"
    ((rc == 0)) || fail "graceful: lb1 exited with status $rc after SIGTERM (want 0)"
    has_vip lb1 && fail "graceful: lb1 still has the VIP"
    if [[ $IMPL == vipd ]]; then
        [[ $held_answer == "HTTP/1.1 200"* ]] ||
            fail "graceful: a connection opened to lb1 before the switch, used after it, got \"${held_answer:-nothing}\" (want 200: lb2 relays it to lb1)"
        # lb2 relayed lb1's connections, and the relay is gone again.
        grep -q "relaying the connections the old master still holds" "$WORK/lb2.log" ||
            fail "graceful: lb2 did not set up the hand-over relay: $(grep -i relay "$WORK/lb2.log" | tail -n 3)"
        wait_for 3000 no_relay_table lb2 || fail "graceful: lb2's relay table is still there: $(ns_exec lb2 nft list tables)"
    fi
    check_apps graceful "$out" "$t_ev" lb2
    # Requests around the switch: the slowest one tells how close it came.
    lat=$(awk -v ev="$t_ev" '$2 >= ev - 200 && $2 < ev + 1000 { d = $3 - $2; if (d > m) m = d } END { print m + 0 }' "$out")
    RESULT+=("graceful: 0/$total requests failed, a connection caught in mid-switch got \"${held_answer:-nothing}\", $slow slower than ${SLOW_MS:-500} ms, slowest around the switch ${lat} ms (overall ${max_lat_ms} ms), VIP on lb2 at ${takeover} ms, lb1 exit 0; after: $SERVED")
    topo_down
}

for ph in $PHASES; do
    case $ph in
        crash) phase_crash ;;
        graceful) phase_graceful ;;
        *) fail "unknown phase $ph" ;;
    esac
done
SCENARIO=http-failover
pass "$(printf '%s | ' "${RESULT[@]}" | sed 's/ | $//')"
