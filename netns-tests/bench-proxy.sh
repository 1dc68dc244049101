#!/usr/bin/env bash
# bench-proxy.sh (by hand, not CI): HTTP proxy throughput/latency/memory of
# vipd against HAProxy and nginx (as a reverse proxy), with the backend hit
# directly as the ceiling. Prints a table; nothing is pass/fail.
#
# Topology: everything on loopback inside ONE namespace this script creates
# (no bridge, no veths): the fewest moving parts and the least noise, and
# nothing leaves the namespace.
#   127.0.0.1:8081  backend: nginx, fixed body "hello\n" at /, "ok" at /healthz
#   127.0.0.1:8082  vipd     ([[http]] only, health checks on, control :9099)
#   127.0.0.1:8083  HAProxy  (nbthread 1, option http-keep-alive, http-reuse always)
#   127.0.0.1:8084  nginx    (worker_processes 1, upstream keepalive 128)
# CPU: the proxy under test on CPU 0; wrk and the backend on CPU 1.
#
# Each round starts every proxy afresh (so its VmHWM is that round's peak),
# warms it up for 1 s, then runs wrk -t1 -c64 and -c256 for DURATION with
# --latency. Targets alternate within a round (direct, vipd, haproxy, nginx;
# then again) so that drift of the machine hits all of them alike. The table
# shows the median over RUNS rounds of requests/s, p50, p99, peak RSS, the
# proxy's CPU use during the run (user + system, % of one core) and requests
# per CPU-second (req/s divided by that): when the load core is the limit,
# the last says which proxy does the work for less.
# RSS is the proxy's VmHWM: vipd and HAProxy are one process each; for nginx
# it is the worker (the master only parses the config and waits).
# A target whose binary is missing or that fails to start is skipped with the
# reason, and the others still run.
#
# CPU_QUOTA_PCT=40 caps the proxy under test at that share of one core with a
# cgroup cpu quota (cgroup v2 cpu.max, or v1 cpu.cfs_quota_us, whichever the
# machine has): the proxy, not wrk or the backend, is then the bottleneck on
# a 2-core machine, and req/s compares work per CPU-second directly. The
# quota is set from outside the namespace (`ip netns exec` remounts /sys),
# by moving the proxy's PIDs into the group once it serves.
#
# Env: VIPD (default ../target/release/vipd), VIPD_RUST_LOG (info,access=off),
#      VIPD_MAX_HEADER_SIZE (unset: vipd's default 16384),
#      RUNS (3), DURATION (10s), CPU_QUOTA_PCT (unset: no cap; 1..100),
#      CONNS ("64 256"), TARGETS ("direct vipd haproxy nginx"), WARMUP (1s),
#      KEEP=1 keeps the work dir (configs, logs, raw wrk output),
#      VIPD_B: a second vipd build, target `vipd-b` (e.g. TARGETS="vipd vipd-b
#      haproxy"), to compare two builds in one run, alternating like the rest.
NT_DIR0=$(cd "$(dirname "$0")" && pwd)
export VIPD=${VIPD:-$NT_DIR0/../target/release/vipd}
source "$NT_DIR0/lib.sh"
source "$NT_DIR0/lib-http.sh"
need_root

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64 256}
TARGETS=${TARGETS:-direct vipd haproxy nginx}
WARMUP=${WARMUP:-1s}
PROXY_CPU=0
LOAD_CPU=1
BACKEND=127.0.0.1:8081
VIPD_CONTROL=127.0.0.1:9099
declare -A PORT=([direct]=8081 [vipd]=8082 [haproxy]=8083 [nginx]=8084 [vipd-b]=8085)
VIPD_B=${VIPD_B:-}

((RUNS >= 1 && RUNS <= 50)) || fail "RUNS=$RUNS out of range 1..50"
dur_s=$(interval_s "$DURATION")
((${dur_s%.*} >= 1 && ${dur_s%.*} <= 600)) || fail "DURATION=$DURATION out of range 1s..600s"
(($(nproc) >= 2)) || log "warning: only $(nproc) CPU(s); pinning to CPU $LOAD_CPU will fail"

ensure_pkg_nosvc nginx nginx
ensure_pkg_nosvc haproxy haproxy
ensure_pkg wrk wrk
ensure_pkg curl curl
ensure_pkg jq jq

[[ -n ${CPU_QUOTA_PCT:-} ]] && quota_setup "$CPU_QUOTA_PCT"

H=bench
ip netns add "$(ns $H)"
NAMESPACES+=("$(ns $H)")
ip -n "$(ns $H)" link set lo up

# ---------------------------------------------------------------- backend

conf=$(nginx_conf backend "    server {
        listen $BACKEND backlog=4096;
        location = /healthz { return 200 \"ok\\n\"; }
        location / { return 200 \"hello\\n\"; }
    }")
start_nginx $H backend "$conf" $LOAD_CPU
BACKEND_PID=$STARTED_PID
nginx_ready $H "$BACKEND_PID" "http://$BACKEND/" 5000 || fail "backend: $WHY"

# ---------------------------------------------------------------- proxies

VIPD_CONF="$WORK/vipd.toml"
{
    printf '[control]\nlisten = "%s"\nsocket = "%s"\n' "$VIPD_CONTROL" "$WORK/vipd.sock"
    vipd_http_section bench "127.0.0.1:${PORT[vipd]}" round_robin 2s 2s "$BACKEND"
} >"$VIPD_CONF"
# VIPD_MAX_HEADER_SIZE=8192 measures the smaller per-connection read buffer
# (hyper sizes it to fit the largest accepted request head).
if [[ -n ${VIPD_MAX_HEADER_SIZE:-} ]]; then
    sed -i "s/^retries = .*/&\nmax_header_size = $VIPD_MAX_HEADER_SIZE/" "$VIPD_CONF"
fi
# vipd-b: the same config on its own ports and socket.
VIPD_B_CONF="$WORK/vipd-b.toml"
sed "s/127.0.0.1:${PORT[vipd]}/127.0.0.1:${PORT[vipd-b]}/; s/127.0.0.1:9099/127.0.0.1:9098/; s/vipd.sock/vipd-b.sock/" \
    "$VIPD_CONF" >"$VIPD_B_CONF"

HAPROXY_CONF=$(haproxy_conf haproxy "127.0.0.1:${PORT[haproxy]}" "$BACKEND")

NGINX_CONF=$(nginx_conf nginx-proxy "    upstream be {
        server $BACKEND;
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:${PORT[nginx]} backlog=4096;
        location / {
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }")

TARGET_PID=""        # the proxy process under test (its PIDs for VmHWM below)
TARGET_RSS_PIDS=()
declare -A SKIPPED=()

# ok_or_dead PID URL: URL answers 200, or PID has exited (stop waiting).
ok_or_dead() { ! pid_alive "$1" || http_ok $H "$2"; }

# start_target T: start proxy T pinned to PROXY_CPU and wait until it serves.
# On failure sets WHY and returns 1 (the process is stopped). Records PIDs, so
# never call it in a subshell.
start_target() {
    local t=$1 url="http://127.0.0.1:${PORT[$1]}/"
    WHY=""
    TARGET_PID=""; TARGET_RSS_PIDS=()
    case $t in
        direct) return 0 ;;
        vipd | vipd-b)
            local bin=$VIPD conf=$VIPD_CONF control=$VIPD_CONTROL
            [[ $t == vipd-b ]] && { bin=$VIPD_B conf=$VIPD_B_CONF control=127.0.0.1:9098; }
            [[ -x $bin ]] || { WHY="no vipd binary at '$bin'"; return 1; }
            # Access logging off, as for HAProxy and nginx (filtering the
            # "access" target out makes vipd skip building the line at all).
            ip netns exec "$(ns $H)" env RUST_LOG="${VIPD_RUST_LOG:-info,access=off}" \
                taskset -c $PROXY_CPU "$bin" run --config "$conf" >>"$WORK/$t.log" 2>&1 &
            TARGET_PID=$!
            EXTRA_PIDS+=("$TARGET_PID")
            NODE_LOG[$t]="$WORK/$t.log"
            # Backends may start unhealthy (rise 2 x 2 s): wait for a 200 and,
            # if the status page has it, the backend reported healthy.
            if ! wait_for 15000 ok_or_dead "$TARGET_PID" "$url" || ! pid_alive "$TARGET_PID"; then
                if pid_alive "$TARGET_PID"; then WHY="$t did not serve 200 at $url within 15 s"; else WHY="$t exited"; fi
                WHY+="; log: $(tail -n 3 "$WORK/$t.log" | tr '\n' ' ')"
                stop_daemon "$TARGET_PID" 5000
                return 1
            fi
            wait_for 10000 vipd_backends_healthy $H "$control" || log "$t status does not report the backend healthy (serving anyway)"
            TARGET_RSS_PIDS=("$TARGET_PID")
            ;;
        haproxy)
            start_haproxy $H haproxy "$HAPROXY_CONF" $PROXY_CPU
            TARGET_PID=$STARTED_PID
            if ! wait_for 5000 ok_or_dead "$TARGET_PID" "$url" || ! pid_alive "$TARGET_PID"; then
                WHY="haproxy did not serve 200 at $url; log: $(tail -n 3 "$WORK/haproxy.log" | tr '\n' ' ')"
                stop_daemon "$TARGET_PID"
                return 1
            fi
            TARGET_RSS_PIDS=("$TARGET_PID")
            ;;
        nginx)
            start_nginx $H nginx-proxy "$NGINX_CONF" $PROXY_CPU
            TARGET_PID=$STARTED_PID
            if ! nginx_ready $H "$TARGET_PID" "$url" 5000; then
                stop_daemon "$TARGET_PID"
                WHY="$WHY; log: $(tail -n 3 "$WORK/nginx-proxy/error.log" | tr '\n' ' ')"; return 1
            fi
            read -r -a TARGET_RSS_PIDS <<<"${DAEMON_KIDS[$TARGET_PID]}"
            ((${#TARGET_RSS_PIDS[@]} == 1)) || { stop_daemon "$TARGET_PID"; WHY="nginx has ${#TARGET_RSS_PIDS[@]} workers, want 1"; return 1; }
            ;;
        *) fail "unknown target $t" ;;
    esac
}

stop_target() {
    [[ -n $TARGET_PID ]] || return 0
    stop_daemon "$TARGET_PID" 5000
    TARGET_PID=""; TARGET_RSS_PIDS=()
}

# run_wrk CONNS DURATION URL OUTFILE: wrk on LOAD_CPU; bounded by timeout.
run_wrk() {
    local c=$1 d=$2 url=$3 out=$4 lim
    lim=$(awk -v s="$(interval_s "$d")" 'BEGIN{printf "%d", s + 30}')
    ns_exec $H taskset -c $LOAD_CPU timeout --kill-after=5 "$lim" \
        wrk -t1 -c"$c" -d"$d" --timeout 5s --latency "$url" >"$out" 2>&1
}

# parse_wrk FILE -> "RPS P50_MS P99_MS ERRORS" (NA when unparsable)
parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /m$/) return substr(v, 1, length(v) - 1) * 60000
            if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
            return "NA"
        }
        /^Requests\/sec:/ { rps = $2 }
        /Latency Distribution/ { dist = 1; next }
        dist && $1 == "50%" { p50 = ms($2) }
        dist && $1 == "99%" { p99 = ms($2); dist = 0 }
        /Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
        /Non-2xx or 3xx responses:/ { err += $NF }
        END {
            if (rps == "" || p50 == "" || p99 == "") { print "NA NA NA NA"; exit }
            printf "%.0f %.3f %.3f %d\n", rps, p50, p99, err
        }' "$1"
}

RESULTS="$WORK/results.txt"    # target conns round rps p50 p99 rss_kib errors cpu_pct

CLK_TCK=$(getconf CLK_TCK)
: >"$RESULTS"

BUSY_BEFORE=$(cpu_busy_pct)
((BUSY_BEFORE < 10)) ||
    log "warning: the CPUs are ${BUSY_BEFORE}% busy before the bench (a build? other tests?): numbers will be low and noisy"
log "backend pid $BACKEND_PID; targets: $TARGETS; conns: $CONNS; $RUNS round(s) of $DURATION"
for ((r = 1; r <= RUNS; r++)); do
    for t in $TARGETS; do
        [[ -n ${SKIPPED[$t]:-} ]] && continue
        if ! start_target "$t"; then
            SKIPPED[$t]=${WHY:-failed to start}
            echo "$t: skipped: ${SKIPPED[$t]}"
            continue
        fi
        url="http://127.0.0.1:${PORT[$t]}/"
        if [[ $t != direct ]]; then
            # The whole proxy (nginx: master and worker) under the quota.
            quota_add "$TARGET_PID" "${TARGET_RSS_PIDS[@]}"
            run_wrk 64 "$WARMUP" "$url" "$WORK/warmup-$t-$r.txt" || true
        fi
        for c in $CONNS; do
            out="$WORK/wrk-$t-c$c-r$r.txt"
            ticks0=NA
            [[ $t == direct ]] || ticks0=$(cpu_ticks "${TARGET_RSS_PIDS[@]}") || ticks0=NA
            run_wrk "$c" "$DURATION" "$url" "$out" || log "wrk exited non-zero for $t c$c round $r"
            read -r rps p50 p99 errs <<<"$(parse_wrk "$out")"
            # The proxy's CPU use over the run, in % of one core.
            cpu=NA
            if [[ $ticks0 != NA ]] && ticks1=$(cpu_ticks "${TARGET_RSS_PIDS[@]}"); then
                cpu=$(awk -v d="$((ticks1 - ticks0))" -v hz="$CLK_TCK" -v s="$dur_s" 'BEGIN { printf "%.1f", 100 * d / hz / s }')
            fi
            rss=NA
            if [[ $t != direct ]]; then
                if pid_alive "$TARGET_PID"; then
                    rss=$(vmhwm_kib "${TARGET_RSS_PIDS[@]}") || rss=NA
                else
                    log "$t died during the c$c run of round $r"
                    rps=NA
                fi
            fi
            echo "$t $c $r $rps $p50 $p99 $rss $errs $cpu" >>"$RESULTS"
            log "round $r $t c$c: $rps req/s p50 $p50 ms p99 $p99 ms rss ${rss} KiB errors $errs proxy CPU ${cpu}%"
        done
        stop_target
    done
done

# ---------------------------------------------------------------- report

# median COLUMN TARGET CONNS: median of that column over the rounds (NA ignored)
median() {
    awk -v col="$1" -v t="$2" -v c="$3" '$1 == t && $2 == c && $col != "NA" { print $col }' "$RESULTS" |
        sort -g | awk '{ v[NR] = $1 } END {
            if (!NR) { print "NA"; exit }
            print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
errsum() { awk -v t="$1" -v c="$2" '$1 == t && $2 == c && $8 != "NA" { s += $8 } END { print s + 0 }' "$RESULTS"; }
nruns() { awk -v t="$1" -v c="$2" '$1 == t && $2 == c && $4 != "NA" { n++ } END { print n + 0 }' "$RESULTS"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "NA" || b == "NA" || b == 0) print "NA"; else printf "%.2f", a / b }'; }
# paired A B CONNS: the median, over the rounds both ran, of A's requests
# per CPU-second over B's in the same round: drift of the machine between
# rounds cancels out of each pair (the ratio of medians mixes rounds).
paired() {
    awk -v a="$1" -v b="$2" -v c="$3" '
        $2 == c && $4 != "NA" && $9 != "NA" && $9 > 0 && ($1 == a || $1 == b) { eff[$1, $3] = $4 / $9; rounds[$3] = 1 }
        END { for (r in rounds) if ((a, r) in eff && (b, r) in eff) print eff[a, r] / eff[b, r] }' "$RESULTS" |
        sort -g | awk '{ v[NR] = $1 } END {
            if (!NR) { print "NA"; exit }
            printf "%.2f (%d pairs, %.2f-%.2f)", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2, NR, v[1], v[NR] }'
}

declare -A M=()
echo
echo "bench-proxy: wrk -t1, $DURATION, median of $RUNS round(s); proxy on CPU $PROXY_CPU${CPU_QUOTA_PCT:+ capped at ${CPU_QUOTA_PCT}% of it}, wrk + backend on CPU $LOAD_CPU; loopback in one namespace"
printf '%-8s %5s %10s %9s %9s %10s %7s %7s %10s %5s\n' target conns "req/s" "p50 ms" "p99 ms" "RSS MiB" errors "CPU %" "req/CPU-s" runs
for t in $TARGETS; do
    if [[ -n ${SKIPPED[$t]:-} ]]; then
        printf '%-8s skipped: %s\n' "$t" "${SKIPPED[$t]}"
        continue
    fi
    for c in $CONNS; do
        M[$t,$c,rps]=$(median 4 "$t" "$c")
        M[$t,$c,p50]=$(median 5 "$t" "$c")
        M[$t,$c,p99]=$(median 6 "$t" "$c")
        M[$t,$c,rss]=$(median 7 "$t" "$c")
        M[$t,$c,cpu]=$(median 9 "$t" "$c")
        # Requests per second of the proxy's own CPU time: what it costs,
        # whichever side (proxy core or load core) capped the req/s.
        M[$t,$c,eff]=$(awk -v r="${M[$t,$c,rps]}" -v p="${M[$t,$c,cpu]}" \
            'BEGIN { if (r == "NA" || p == "NA" || p == 0) print "NA"; else printf "%.0f", r / (p / 100) }')
        rss_mib=$(awk -v k="${M[$t,$c,rss]}" 'BEGIN { if (k == "NA") print "-"; else printf "%.1f", k / 1024 }')
        printf '%-8s %5s %10s %9s %9s %10s %7s %7s %10s %5s\n' "$t" "$c" "${M[$t,$c,rps]}" \
            "${M[$t,$c,p50]}" "${M[$t,$c,p99]}" "$rss_mib" "$(errsum "$t" "$c")" "${M[$t,$c,cpu]/NA/-}" \
            "${M[$t,$c,eff]/NA/-}" "$(nruns "$t" "$c")/$RUNS"
    done
done
if [[ " $TARGETS " == *" vipd "* && -z ${SKIPPED[vipd]:-} ]]; then
    echo
    for o in haproxy nginx vipd-b; do
        [[ " $TARGETS " == *" $o "* && -z ${SKIPPED[$o]:-} ]] || continue
        for c in $CONNS; do
            printf 'vipd/%-7s c%-4s rps %5s   p99 %5s   RSS %5s   req/CPU-s %5s   paired by round %s\n' "$o" "$c" \
                "$(ratio "${M[vipd,$c,rps]}" "${M[$o,$c,rps]}")" \
                "$(ratio "${M[vipd,$c,p99]}" "${M[$o,$c,p99]}")" \
                "$(ratio "${M[vipd,$c,rss]}" "${M[$o,$c,rss]}")" \
                "$(ratio "${M[vipd,$c,eff]}" "${M[$o,$c,eff]}")" \
                "$(paired vipd "$o" "$c")"
        done
    done
fi
echo "CPUs busy before the bench: ${BUSY_BEFORE}% (other load makes the numbers low and noisy)"
echo "(raw results: $RESULTS; KEEP=1 keeps them)"
