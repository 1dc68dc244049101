#!/usr/bin/env bash
# bench-reload.sh (by hand, not CI): what a configuration change costs,
# vipd against keepalived + HAProxy, with the same clients, for the
# README's table.
#   vrrp: lb1 (150) and lb2 (100) at 100 ms adverts; lb1's priority goes to
#         140 (not crossing lb2's) by a reload: keepalived's (SIGHUP) or
#         vipd's (`vipd reload`); then a new binary on lb1: keepalived has
#         no upgrade but a restart (SIGTERM, start again), vipd `vipd
#         upgrade`. From a capture on the client: lb1's longest advert gap,
#         its priority-0 adverts, and lb2's transitions (a failover).
#   http: a proxy on lb1 over app1 and app2, RELOADS reloads 300 ms apart
#         (a backend weight changed each time), under LOOPS clients each
#         opening a new connection as fast as curl can, one keep-alive
#         client at 50 requests/s, and wrk (-c WRK_CONNS, a new connection
#         per request: Connection: close) for the heavy end: HAProxy's `-sf` reload (a new process
#         binds, the old one finishes and exits; Debian 12's 2.6, no
#         master-worker, no socket transfer) and vipd's. Failed requests of
#         each client kind (refused, reset, timed out or not 200).
# Env: VIPD (default ../target/release/vipd), RELOADS (10), LOOPS (4),
#      WRK_CONNS (32), PARTS ("vrrp http").
NT_DIR0=$(cd "$(dirname "$0")" && pwd)
export VIPD=${VIPD:-$NT_DIR0/../target/release/vipd}
source "$NT_DIR0/lib.sh"
source "$NT_DIR0/lib-http.sh"
need_root
RELOADS=${RELOADS:-10}
LOOPS=${LOOPS:-4}
WRK_CONNS=${WRK_CONNS:-32}
PARTS=${PARTS:-vrrp http}
if [[ ! -x $VIPD ]]; then
    log "$VIPD missing, building the release binary"
    (cd "$NT_DIR/.." && cargo build --release)
fi
need_lb_pair
ensure_pkg tcpdump tcpdump
ensure_pkg keepalived keepalived
ensure_pkg_nosvc haproxy haproxy
ensure_pkg wrk wrk

# vrrp_case KIND: one priority change by a reload, then a new binary;
# adds two table rows.
vrrp_case() {
    local kind=$1 conf adverts gap zeros t2 answer
    topo_up lb1 lb2 client
    start_node "$kind" lb1 150 100ms 3 true
    start_node "$kind" lb2 100 100ms 3 true
    wait_pair_settled lb1 lb2 5000
    sleep 1
    t2=$(node_transitions lb2)
    start_capture client "$WORK/$kind.pcap" "ip proto 112"
    sleep 1
    if [[ $kind == keepalived ]]; then
        conf="$WORK/lb1-keepalived.conf"
        sed -i 's/^    priority 150$/    priority 140/' "$conf"
        grep -q "priority 140" "$conf" || fail "keepalived's file was not edited"
        kill -HUP "${NODE_PID[lb1]}"
    else
        sed -i 's/^priority = 150$/priority = 140/' "$WORK/lb1.toml"
        "$VIPD" reload --socket "$WORK/lb1.sock" >/dev/null || fail "vipd's reload was refused"
    fi
    sleep 3
    stop_capture "$CAPTURE_PID"
    adverts=$(read_capture "$WORK/$kind.pcap" | grep -F " ${HOST_IP[lb1]} > 224.0.0.18: VRRP")
    grep -q "prio 140," <<<"$adverts" || fail "$kind: lb1 does not advertise 140 after its reload"
    vrrp_row "$kind" "priority 150 -> 140 by reload" "$adverts" "$(($(node_transitions lb2) - t2))"

    t2=$(node_transitions lb2)
    start_capture client "$WORK/$kind-upgrade.pcap" "ip proto 112"
    sleep 1
    if [[ $kind == keepalived ]]; then
        kill -TERM "${NODE_PID[lb1]}"
        reap_node lb1 >/dev/null || true
        start_keepalived lb1 "$conf" "$WORK/lb1.log"
        local what="new binary: restart"
    else
        answer=$("$VIPD" upgrade --socket "$WORK/lb1.sock") || fail "vipd upgrade was refused: $answer"
        NODE_PID[lb1]=$(sed -n 's/^upgraded: pid \([0-9]*\) took over.*/\1/p' <<<"$answer")
        EXTRA_PIDS+=("${NODE_PID[lb1]}")
        local what="new binary: vipd upgrade"
    fi
    sleep 4
    stop_capture "$CAPTURE_PID"
    adverts=$(read_capture "$WORK/$kind-upgrade.pcap" | grep -F " ${HOST_IP[lb1]} > 224.0.0.18: VRRP")
    vrrp_row "$kind" "$what" "$adverts" "$(($(node_transitions lb2) - t2))"
    topo_down
}

# vrrp_row KIND CHANGE ADVERTS LB2_TRANSITIONS: one row from lb1's adverts.
vrrp_row() {
    local zeros gap
    zeros=$(grep -c "prio 0," <<<"$3" || true)
    gap=$(awk '{ t = $1 * 1000; if (p && t - p > g) g = t - p; p = t } END { printf "%.0f", g }' <<<"$3")
    ROWS+=("$(printf '| %-10s | %s | %s ms | %s | %s |' "$1" "$2" "$gap" "$zeros" "$4")")
}

# http_case KIND: RELOADS reloads under load; prints a table row.
http_case() {
    local kind=$1 conf pid i w loops=() fails=0 all=0
    topo_up lb1 app1 app2 client
    start_app_servers
    local url="http://${HOST_IP[lb1]}:$APP_PORT/"
    if [[ $kind == haproxy ]]; then
        conf=$(haproxy_conf ha "${HOST_IP[lb1]}:$APP_PORT" "${HOST_IP[app1]}:$APP_PORT" "${HOST_IP[app2]}:$APP_PORT")
        start_haproxy lb1 ha "$conf"
        pid=$STARTED_PID
    else
        conf="$WORK/lb1.toml"
        printf '[control]\nlisten = "%s"\nsocket = "%s"\n' "$CONTROL" "$WORK/lb1.sock" >"$conf"
        vipd_http_section web "${HOST_IP[lb1]}:$APP_PORT" round_robin 500ms 5s \
            "${HOST_IP[app1]}:$APP_PORT" "${HOST_IP[app2]}:$APP_PORT" >>"$conf"
        start_vipd lb1 "$conf" "$WORK/lb1.log"
    fi
    wait_for 5000 http_ok client "$url" || fail "$kind does not serve"
    local dur=$((RELOADS * 300 + 2000))
    for ((i = 0; i < LOOPS; i++)); do
        start_client_loop client "$url" "$kind$i" "$dur" 1 2 "$WORK/$kind.loop$i"
        loops+=("$CLIENT_PID")
    done
    start_keepalive_loop client "$url" $((dur * 50 / 1000)) 50/s "$WORK/$kind.keepalive"
    local kpid=$CLIENT_PID
    ns_exec client timeout --kill-after=5 $((dur / 1000 + 30)) wrk -t1 -c"$WRK_CONNS" -d"$((dur / 1000))s" --timeout 2s \
        -H "Connection: close" "$url" >"$WORK/$kind.wrk" 2>&1 &
    local wpid=$!
    EXTRA_PIDS+=("$wpid")
    sleep 1
    for ((i = 1; i <= RELOADS; i++)); do
        w=$((i % 2 + 1))
        if [[ $kind == haproxy ]]; then
            sed -i "s/^\(    server s1 .*\) weight [0-9]*$/\1/; s/^\(    server s1 .*\)$/\1 weight $w/" "$conf"
            ip netns exec "$(ns lb1)" haproxy -f "$conf" -db -p "$WORK/ha/haproxy.pid" -sf "$pid" >>"$WORK/ha.log" 2>&1 &
            pid=$!
            EXTRA_PIDS+=("$pid")
        else
            sed -i "s|^backends = .*|backends = [{ address = \"${HOST_IP[app1]}:$APP_PORT\", weight = $w }, \"${HOST_IP[app2]}:$APP_PORT\"]|" "$conf"
            "$VIPD" reload --socket "$WORK/lb1.sock" >/dev/null || fail "vipd's reload $i was refused"
        fi
        sleep 0.3
    done
    for i in "${loops[@]}"; do wait_client_loop "$i" "$dur" 2; done
    wait_client_loop "$kpid" "$dur" 10
    wait_client_loop "$wpid" "$dur" 30
    local wrk_req wrk_err
    wrk_req=$(awk '/requests in/ { print $1 }' "$WORK/$kind.wrk")
    wrk_err=$(awk '/Socket errors:/ { gsub(/,/, ""); e += $4 + $6 + $8 + $10 } /Non-2xx or 3xx responses:/ { e += $NF } END { print e + 0 }' "$WORK/$kind.wrk")
    for ((i = 0; i < LOOPS; i++)); do
        eval "$(loop_stats "$WORK/$kind.loop$i" 0)"
        fails=$((fails + failed)); all=$((all + total))
    done
    eval "$(keepalive_stats "$WORK/$kind.keepalive")"
    ROWS+=("$(printf '| %-10s | %d reloads, 300 ms apart | %d / %d | %d / %d | %s / %s |' "$kind" "$RELOADS" "$fails" "$all" "$ka_failed" "$ka_total" "$wrk_err" "${wrk_req:-NA}")")
    topo_down
}

ROWS=()
if [[ " $PARTS " == *" vrrp "* ]]; then
    ROWS+=("| VRRP       | change | lb1's longest advert gap (100 ms adverts) | priority-0 adverts from lb1 | lb2 transitions |")
    for k in keepalived vipd; do vrrp_case "$k"; done
fi
if [[ " $PARTS " == *" http "* ]]; then
    ROWS+=("| HTTP       | change | failed / curl new connections ($LOOPS loops) | failed / keep-alive requests | wrk errors / requests (-c $WRK_CONNS, Connection: close) |")
    for k in haproxy vipd; do http_case "$k"; done
fi
printf '%s\n' "${ROWS[@]}"
