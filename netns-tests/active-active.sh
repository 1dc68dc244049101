#!/usr/bin/env bash
# active-active.sh: three vipd nodes serve 198.51.100.10 behind a router
# doing ECMP; each node's routing daemon announces the address while vipd
# keeps it on vip0 ([[announce]], track_http): FRR (zebra + bgpd + bfdd) on
# lb1 and lb2, BIRD 2 on lb3, to show both. The router runs
# FRR with maximum-paths, BFD 300 ms x 3 and an L4 hash; a client behind it
# opens new connections. Checks:
#   spread    3000 connections: each node within +-15 % of a third;
#   backends  lb2's backends all fail (a prohibit route to them): its
#             route goes within health fall + BGP update, no request fails
#             after that; back when they return;
#   stop      SIGTERM to lb3 under the client loop: 0 failed requests;
#   added     lb3 started again: it gets new connections once announced;
#   crash     lb1 dies as a host does (its link goes silent first, then its
#             vipd and FRR are killed -9, so no FIN or NOTIFICATION tells
#             the router): its share moves within the BFD detection time;
#             the requests lost meanwhile are reported.
# A request in flight while the router's next hops change may be rehashed
# to another node and reset there (hash-threshold ECMP: when one of three
# next hops goes, a quarter of the survivors' flows move too): such
# failures are told apart by the route change times (ip monitor on the
# router), reported, and not counted as the node's.
NT_DIR0=$(cd "$(dirname "$0")" && pwd)
source "$NT_DIR0/lib.sh"
source "$NT_DIR0/lib-http.sh"
source "$NT_DIR0/lib-bgp.sh"
need_root
need_vipd
ensure_pkg_nosvc nginx nginx
ensure_pkg curl curl
ensure_pkg jq jq
ensure_pkg "$FRR_DIR/bgpd" frr
ensure_pkg bird bird2

URL="http://$SERVICE_IP:$APP_PORT/"
PERIOD_MS=20
SPREAD_N=${SPREAD_N:-3000}
RESULT=()

# aa_conf HOST PRIO -> config path: [[http]] web over app1/app2 (health
# every 200 ms, fall 3), [[announce]] of SERVICE_IP tracking it, and beside
# it a [[vrrp]] instance (VIP 192.0.2.10, priority PRIO) in the same process.
aa_conf() {
    local h=$1 f="$WORK/$1.toml"
    cat >"$f" <<EOF
[control]
listen = "$CONTROL"
socket = "$WORK/$h.sock"

[[vrrp]]
name = "lan"
interface = "eth0"
vrid = $VRID
priority = $2
advert_interval = "100ms"
virtual_ips = ["$VIP_CIDR"]
EOF
    vipd_http_section web "0.0.0.0:$APP_PORT" round_robin 200ms 5s \
        "${HOST_IP[app1]}:$APP_PORT" "${HOST_IP[app2]}:$APP_PORT" >>"$f"
    cat >>"$f" <<EOF

[[announce]]
name = "web-anycast"
virtual_ips = ["$SERVICE_IP/32"]
interface = "vip0"
track_http = [{ listener = "web", min_healthy = 1 }]
withdraw_delay = "2s"
EOF
    echo "$f"
}

announced() { [[ $(vipd_json "$1" | jq -r '.announce[0].state' 2>/dev/null) == announced ]]; }

declare -A LB_PRIO=([lb1]=150 [lb2]=100 [lb3]=50)
start_lb() {
    start_vipd "$1" "$(aa_conf "$1" "${LB_PRIO[$1]}")" "$WORK/$1.log"
    wait_for 10000 announced "$1" || fail "$1: not announced after 10 s: $(vipd_json "$1" | jq -c '.announce' 2>/dev/null)"
}

# Route changes at the router, epoch ms, one per line, in $WORK/routes.ms.
start_route_monitor() {
    ip -n "$(ns router)" -ts monitor route nexthop >"$WORK/routes.raw" 2>&1 &
    EXTRA_PIDS+=("$!")
}
route_change_times() {
    python3 - "$WORK/routes.raw" >"$WORK/routes.ms" <<'PY'
import datetime, re, sys
for line in open(sys.argv[1]):
    m = re.match(r"\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)\]", line)
    if m:
        t = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc)
        print(int(t.timestamp() * 1000))
PY
}

# split_failures OUT FROM_MS: "real=N rehash=N total=N" for the loop's
# requests started at or after FROM_MS; a failure is a rehash when a route
# change at the router fell within its [start - 5, end + 5] ms.
split_failures() {
    route_change_times
    awk -v from="$2" 'NR == FNR { t[++n] = $1; next }
        $2 >= from {
            total++
            if ($4 == "200") next
            hit = 0
            for (i = 1; i <= n; i++) if (t[i] >= $2 - 5 && t[i] <= $3 + 5) { hit = 1; break }
            if (hit) rehash++; else real++
        }
        END { printf "real=%d rehash=%d total=%d\n", real, rehash, total }' "$WORK/routes.ms" "$1"
}

# spread N TAG: N new connections from the client; sets SPREAD_BAD (those
# not answered 200) and SPREAD_COUNTS, "lb1=n lb2=n ..." from the app
# servers' logs (the peer of each request is the node that proxied it).
spread() {
    local n=$1 tag=$2 py="$WORK/spread.py" h counts=""
    cat >"$py" <<'PY'
import socket, sys
n, addr, port, tag = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
bad = 0
for i in range(n):
    try:
        with socket.create_connection((addr, port), timeout=1) as s:
            s.settimeout(1)
            s.sendall(b"GET /?t=%s&s=%d HTTP/1.0\r\nHost: %s\r\n\r\n" % (tag.encode(), i, addr.encode()))
            data = b""
            while len(data) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        if b" 200 " not in data.split(b"\r\n", 1)[0]:
            bad += 1
    except OSError:
        bad += 1
print(bad)
PY
    SPREAD_BAD=$(ip netns exec "$(ns client)" timeout $((n / 100 + 60)) python3 "$py" "$n" "$SERVICE_IP" "$APP_PORT" "$tag")
    sleep 0.3
    for h in "${BGP_LBS[@]}"; do
        counts+="$h=$(cat "$WORK/app1.access" "$WORK/app2.access" 2>/dev/null | grep -F "t=$tag&" | awk -v ip="${HOST_IP[$h]}" '$2 == ip' | wc -l) "
    done
    SPREAD_COUNTS=${counts% }
}

share_of() { tr ' ' '\n' <<<"$1" | awk -F= -v h="$2" '$1 == h { print $2 }'; }

# ---------------------------------------------------------------- setup
bgp_topo_up 3
start_app_servers
start_router_frr
for h in "${BGP_LBS[@]}"; do
    start_lb "$h"
    if [[ $h == lb3 ]]; then start_node_bird "$h"; else start_node_frr "$h"; fi
done
wait_bgp_up 30000
wait_router_paths "$SERVICE_IP" 3 15000 || fail "router has $(router_paths "$SERVICE_IP") paths to $SERVICE_IP, want 3"
start_route_monitor
log "router: 3 paths to $SERVICE_IP via $(router_nexthops "$SERVICE_IP")"
# The [[vrrp]] instance beside the announcements: lb1 master, the others backup.
wait_for 5000 state_is lb1 master || fail "vrrp beside announce: lb1 is $(node_state lb1), want master"
for h in lb2 lb3; do state_is "$h" backup || fail "vrrp beside announce: $h is $(node_state "$h"), want backup"; done

# ---------------------------------------------------------------- spread
spread "$SPREAD_N" spread
counts=$SPREAD_COUNTS
log "spread over $SPREAD_N connections: $counts ($SPREAD_BAD failed)"
((SPREAD_BAD == 0)) || fail "spread: $SPREAD_BAD of $SPREAD_N requests failed"
lo=$((SPREAD_N * 85 / 300)) hi=$((SPREAD_N * 115 / 300))
for h in "${BGP_LBS[@]}"; do
    c=$(share_of "$counts" "$h")
    ((c >= lo && c <= hi)) || fail "spread: $h got $c of $SPREAD_N, want $lo..$hi (a third +-15 %): $counts"
done
RESULT+=("spread of $SPREAD_N: $counts (a [[vrrp]] instance beside: lb1 master)")

# ---------------------------------------------------------------- backends
out="$WORK/backends.client"
start_client_loop client "$URL" backends 6000 "$PERIOD_MS" 1 "$out"
cpid=$CLIENT_PID
sleep 1
t_ev=$(now_ms)
for a in app1 app2; do ip -n "$(ns lb2)" route add prohibit "${HOST_IP[$a]}/32"; done
wait_router_paths "$SERVICE_IP" 2 5000 || fail "backends: lb2's route still there 5 s after its backends failed"
t_gone=$(now_ms)
withdraw_ms=$((t_gone - t_ev))
nh=$(router_nexthops "$SERVICE_IP")
[[ $nh != *"${HOST_IP[lb2]}"* ]] || fail "backends: the router still has lb2 (${HOST_IP[lb2]}) among $nh"
# What lb2 says about it: /status and /metrics.
st=$(vipd_json lb2 | jq -c '.announce[0] | {state, announced, reason}')
[[ $st == *'"state":"withdrawn"'* && $st == *'0/2 healthy'* ]] || fail "backends: lb2's /status says $st"
ns_exec lb2 curl -s -m 1 "http://$CONTROL/metrics" | grep -cx 'vipd_announce_announced{announce="web-anycast"} 0' ||
    fail "backends: lb2's /metrics lacks vipd_announce_announced 0: $(ns_exec lb2 curl -s -m 1 "http://$CONTROL/metrics" | grep announce)"
sleep 2
for a in app1 app2; do ip -n "$(ns lb2)" route del prohibit "${HOST_IP[$a]}/32"; done
wait_router_paths "$SERVICE_IP" 3 5000 || fail "backends: lb2 not announced again 5 s after its backends came back"
back_ms=$(($(now_ms) - t_gone - 2000))
wait_client_loop "$cpid" 6000 1
eval "$(split_failures "$out" $((t_gone + 100)))"
log "backends: withdrawn ${withdraw_ms} ms after they failed, back ${back_ms} ms after they returned; after the withdrawal: $real failed, $rehash rehashed by the router, of $total"
((real == 0)) || fail "backends: $real requests failed after lb2's route was withdrawn (see $out)"
before=$(awk -v a="$t_ev" -v b="$t_gone" '$2 >= a && $2 < b && $4 != "200"' "$out" | wc -l)
RESULT+=("backends down on lb2: route withdrawn in ${withdraw_ms} ms (health fall 3 x 200 ms + BGP), ${before} failed before that, 0 after ($rehash rehashed), back in ${back_ms} ms")

# ---------------------------------------------------------------- planned stop
out="$WORK/stop.client"
start_client_loop client "$URL" stop 6000 "$PERIOD_MS" 1 "$out"
cpid=$CLIENT_PID
sleep 1
t_ev=$(now_ms)
kill -TERM "${NODE_PID[lb3]}"
wait_router_paths "$SERVICE_IP" 2 5000 || fail "stop: lb3's route still there 5 s after SIGTERM"
stop_withdraw_ms=$(($(now_ms) - t_ev))
reap_node lb3 10000 || fail "stop: lb3's vipd did not exit 0"
wait_client_loop "$cpid" 6000 1
eval "$(split_failures "$out" 0)"
log "stop: route gone ${stop_withdraw_ms} ms after SIGTERM; $real failed, $rehash rehashed by the router, of $total"
((real == 0)) || fail "stop: $real of $total requests failed around lb3's planned stop (see $out)"
RESULT+=("planned stop of lb3: 0/$total failed ($rehash rehashed by the router), route withdrawn ${stop_withdraw_ms} ms after SIGTERM")

# ---------------------------------------------------------------- added
t_ev=$(now_ms)
start_lb lb3
wait_router_paths "$SERVICE_IP" 3 10000 || fail "added: the router did not take lb3 back"
add_ms=$(($(now_ms) - t_ev))
spread 600 added
counts=$SPREAD_COUNTS
c=$(share_of "$counts" lb3)
((SPREAD_BAD == 0 && c >= 600 * 85 / 300)) || fail "added: lb3 got $c of 600 new connections ($counts, $SPREAD_BAD failed)"
RESULT+=("lb3 started again: announced and in the router's paths ${add_ms} ms later, then $c of 600 connections")

# ---------------------------------------------------------------- crash
# Keep-alive connections open across the crash: those on lb1 are lost with
# it; those on the survivors that break were moved by the router's rehash.
HELD_N=${HELD_N:-90}
ip netns exec "$(ns client)" python3 "$NT_DIR0/held-many.py" "$SERVICE_IP" "$APP_PORT" "$HELD_N" "$WORK" \
    >"$WORK/held.out" 2>&1 </dev/null &
hpid=$!
EXTRA_PIDS+=("$hpid")
wait_for 15000 grep -q ready "$WORK/held.state" || fail "crash: the keep-alive connections did not open: $(cat "$WORK/held.out")"
out="$WORK/crash.client"
start_client_loop client "$URL" crash 5000 "$PERIOD_MS" 1 "$out"
cpid=$CLIENT_PID
sleep 1
t_ev=$(now_ms)
ip -n "$(ns lb1)" link set eth0 down
kill -KILL "${NODE_PID[lb1]}"
kill_node_frr lb1 KILL
wait_router_paths "$SERVICE_IP" 2 5000 || fail "crash: lb1's route still there 5 s after the crash"
crash_ms=$(($(now_ms) - t_ev))
touch "$WORK/held.go"
reap_node lb1 2000 || true
wait_for 15000 pid_gone "$hpid" || fail "crash: the keep-alive client did not finish: $(cat "$WORK/held.out")"
# Which node proxied each held connection's first request (the peer the
# app servers saw), and how its second one went.
held=$(cat "$WORK/app1.access" "$WORK/app2.access" | awk -v dead="${HOST_IP[lb1]}" '
    NR == FNR { ok[$1] = ($2 == "ok"); next }
    match($3, /t=held&c=[0-9]+&k=1/) {
        c = substr($3, RSTART + 9, RLENGTH - 13)
        if ($2 == dead) { d++; if (!ok[c]) df++ } else { s++; if (!ok[c]) sf++ }
    }
    END { printf "dead=%d dead_failed=%d survivors=%d survivors_broken=%d\n", d, df, s, sf }' "$WORK/held.result" -)
eval "$held"
log "crash: $HELD_N keep-alive connections: $dead on lb1 ($dead_failed failed), $survivors on lb2/lb3 ($survivors_broken broken by the router's rehash)"
((dead + survivors == HELD_N)) || fail "crash: the app servers' logs place $((dead + survivors)) of the $HELD_N held connections"
((survivors_broken < survivors)) || fail "crash: every held connection on a surviving node broke ($held)"
wait_client_loop "$cpid" 5000 1
eval "$(split_failures "$out" 0)"
crash_failed=$(awk -v a="$t_ev" '$2 >= a - 1000 && $4 != "200"' "$out" | wc -l)
after=$(awk -v a=$((t_ev + crash_ms + 100)) '$2 >= a && $4 != "200"' "$out" | wc -l)
log "crash: route gone ${crash_ms} ms after lb1 went silent (BFD $BFD_MULT x ${BFD_INTERVAL_MS} ms); $crash_failed failed in all, $rehash of them in flight at a route change, $after after the route went"
((crash_ms <= BFD_MULT * BFD_INTERVAL_MS + 600)) || fail "crash: lb1's route went ${crash_ms} ms after the crash, want within BFD detection (+600 ms)"
((after == 0)) || fail "crash: $after requests failed after lb1's route had gone (see $out)"
RESULT+=("crash of lb1 (link silent, vipd + FRR kill -9): route gone in ${crash_ms} ms (BFD $BFD_MULT x ${BFD_INTERVAL_MS} ms), ${crash_failed} requests failed meanwhile (${rehash} of them in flight at the route change), 0 after; of $HELD_N keep-alive connections, $dead were on lb1 ($dead_failed lost) and $survivors_broken of the $survivors on lb2/lb3 broke (ECMP rehash)")

pass "$(printf '%s | ' "${RESULT[@]}" | sed 's/ | $//')"
