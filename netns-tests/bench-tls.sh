#!/usr/bin/env bash
# bench-tls.sh (by hand, not CI): TLS termination cost of vipd against
# HAProxy and nginx, with the same certificate, client and backend. Prints
# a table per certificate kind; nothing is pass/fail.
#
# Topology: loopback inside ONE namespace this script creates.
#   127.0.0.1:8081  backend: nginx, "hello\n" at /, plain HTTP
#   127.0.0.1:8443  vipd     ([[http]] with [[http.tls]])
#   127.0.0.1:8444  HAProxy  (nbthread 1, bind ... ssl crt ... alpn h2,http/1.1)
#   127.0.0.1:8445  nginx    (worker_processes 1, ssl http2, shared session cache)
# CPU: the proxy under test on CPU 0 (CPU_QUOTA_PCT caps it with a cgroup
# quota, as in bench-proxy.sh, so that the proxy is the bottleneck); the
# load and the backend on CPU 1.
#
# Per round, per target (started afresh, warmed up 1 s), in this order:
#   full     new connections, one request each, no resumption
#            (examples/tls_load, rustls client, CONC tasks, DURATION)
#   resumed  the same, each offering the session of the one before
#   h1       requests over kept-alive TLS connections: h2load --h1 -c 64
#   h2       the same over HTTP/2: h2load -c 16 -m 10
#   idle     IDLE connections opened (handshake + one request) and held:
#            the proxy's RSS growth per connection. IDLE is 8000 by
#            default: HAProxy wants two descriptors per connection below
#            the open files limit, whose hard limit is 20000 here.
# Each with the rate, p99 (idle: none), and the proxy's CPU seconds over
# the run, so "per CPU-second" says what each costs whatever capped the rate.
# Certificate kinds: KINDS ("ec rsa": ECDSA P-256, RSA 2048). The median
# over RUNS rounds is shown; targets alternate within a round.
#
# Env: VIPD (default ../target/release/vipd), TLS_LOAD (default
#      ../target/release/examples/tls_load; built if missing), RUNS (1),
#      DURATION (8s), CONC (32), IDLE (8000), KINDS ("ec rsa"),
#      TARGETS ("vipd haproxy nginx"; also vipd-ring, vipd-b with VIPD_B),
#      CPU_QUOTA_PCT (unset: no cap),
#      MODES ("full resumed h1 h2 idle": which measurements run),
#      PROFILE (a mode: perf record -g of each target during it, into
#      the work dir as perf-TARGET-KIND-ROUND.data; set KEEP=1 too),
#      KEEP=1 keeps the work dir.
NT_DIR0=$(cd "$(dirname "$0")" && pwd)
export VIPD=${VIPD:-$NT_DIR0/../target/release/vipd}
TLS_LOAD=${TLS_LOAD:-$NT_DIR0/../target/release/examples/tls_load}
source "$NT_DIR0/lib.sh"
source "$NT_DIR0/lib-http.sh"
need_root

RUNS=${RUNS:-1}
DURATION=${DURATION:-8s}
CONC=${CONC:-32}
IDLE=${IDLE:-8000}
KINDS=${KINDS:-ec rsa}
TARGETS=${TARGETS:-vipd haproxy nginx}
MODES=${MODES:-full resumed h1 h2 idle}
PROFILE=${PROFILE:-}
PROXY_CPU=0
LOAD_CPU=1
BACKEND=127.0.0.1:8081
NAME=vipd.test
declare -A PORT=([vipd]=8443 [haproxy]=8444 [nginx]=8445 [vipd-ring]=8446 [vipd-b]=8447)
# vipd-ring (in TARGETS): vipd built with the ring provider (VIPD_RING,
# default ../target/ring/release/vipd: cargo build --release --features
# tls-ring --target-dir target/ring), to compare with aws-lc-rs.
VIPD_RING=${VIPD_RING:-$NT_DIR0/../target/ring/release/vipd}
# vipd-b (in TARGETS): a second vipd build (VIPD_B=path), to compare two
# builds in the same run, as bench-proxy.sh does.
VIPD_B=${VIPD_B:-}

((RUNS >= 1 && RUNS <= 20)) || fail "RUNS=$RUNS out of range 1..20"
((IDLE >= 100 && IDLE <= 30000)) || fail "IDLE=$IDLE out of range 100..30000"
dur_s=$(interval_s "$DURATION")
((${dur_s%.*} >= 1 && ${dur_s%.*} <= 120)) || fail "DURATION=$DURATION out of range 1s..120s"
ensure_pkg_nosvc nginx nginx
ensure_pkg_nosvc haproxy haproxy
ensure_pkg h2load nghttp2-client
ensure_pkg jq jq
[[ -n $PROFILE ]] && ensure_pkg perf linux-perf
[[ -x $VIPD ]] || { log "building vipd (release)"; (cd "$NT_DIR0/.." && cargo build --release) >/dev/null 2>&1; }
[[ -x $TLS_LOAD ]] || { log "building tls_load"; (cd "$NT_DIR0/.." && cargo build --release --example tls_load) >/dev/null 2>&1; }
[[ -x $VIPD && -x $TLS_LOAD ]] || fail "no vipd ($VIPD) or tls_load ($TLS_LOAD) binary"
# IDLE connections on each side, and a few more (as far as the hard limit allows).
ulimit -n "$(ulimit -Hn)" || fail "cannot raise the open files limit"
(($(ulimit -n) >= IDLE + 1000)) || fail "open files limit $(ulimit -n) is too low for IDLE=$IDLE"
[[ -n ${CPU_QUOTA_PCT:-} ]] && quota_setup "$CPU_QUOTA_PCT"
CLK_TCK=$(getconf CLK_TCK)

H=bench
ip netns add "$(ns $H)"
NAMESPACES+=("$(ns $H)")
ip -n "$(ns $H)" link set lo up
ip netns exec "$(ns $H)" sysctl -qw net.ipv4.ip_local_port_range="1024 65000" net.core.somaxconn=8192

conf=$(nginx_conf backend "    server {
        listen $BACKEND backlog=4096;
        location / { return 200 \"hello\\n\"; }
    }")
start_nginx $H backend "$conf" $LOAD_CPU
BACKEND_PID=$STARTED_PID
nginx_ready $H "$BACKEND_PID" "http://$BACKEND/" 5000 || fail "backend: $WHY"

# write_configs PKI: each proxy's config over the certificate in PKI.
write_configs() {
    local pki=$1
    VIPD_CONF="$WORK/vipd.toml"
    VIPD_RING_CONF="$WORK/vipd-ring.toml"
    VIPD_B_CONF="$WORK/vipd-b.toml"
    cat >"$VIPD_CONF" <<EOF
[control]
listen = "127.0.0.1:9099"
socket = "$WORK/vipd.sock"

[[http]]
name = "bench"
listen = "127.0.0.1:${PORT[vipd]}"
backends = ["$BACKEND"]
access_log = false
max_connections = 30000
idle_timeout = "60s"
[[http.tls]]
cert = "$pki/leaf.pem"
key = "$pki/leaf.key"
EOF
    sed "s/127.0.0.1:${PORT[vipd]}/127.0.0.1:${PORT[vipd-ring]}/; s/127.0.0.1:9099/127.0.0.1:9098/; s/vipd.sock/vipd-ring.sock/" \
        "$VIPD_CONF" >"$VIPD_RING_CONF"
    sed "s/127.0.0.1:${PORT[vipd]}/127.0.0.1:${PORT[vipd-b]}/; s/127.0.0.1:9099/127.0.0.1:9097/; s/vipd.sock/vipd-b.sock/" \
        "$VIPD_CONF" >"$VIPD_B_CONF"
    # Two descriptors per connection must fit under the open files limit.
    HAPROXY_CONF=$(HAPROXY_MAXCONN=$((IDLE + 500)) HAPROXY_BIND_OPTS="ssl crt $pki/combined.pem alpn h2,http/1.1" \
        haproxy_conf haproxy "127.0.0.1:${PORT[haproxy]}" "$BACKEND")
    NGINX_CONF=$(nginx_conf nginx-proxy "    upstream be {
        server $BACKEND;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:${PORT[nginx]} ssl http2 backlog=4096;
        ssl_certificate $pki/leaf.pem;
        ssl_certificate_key $pki/leaf.key;
        ssl_session_cache shared:SSL:20m;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }")
    sed -i "s/worker_connections [0-9]*;/worker_connections $((IDLE + 1000));/; s/worker_rlimit_nofile [0-9]*;/worker_rlimit_nofile $(ulimit -n);/" "$NGINX_CONF"
}

TARGET_PID=""
TARGET_PIDS=()     # the processes whose CPU and memory count
# tls_ok PORT: the proxy answers 200 over TLS.
tls_ok() {
    [[ $(ns_exec $H curl -s -o /dev/null -w '%{http_code}' -m 1 --cacert "$PKI/ca.pem" \
        --resolve "$NAME:$1:127.0.0.1" "https://$NAME:$1/") == 200 ]]
}

start_target() {
    local t=$1
    WHY=""
    case $t in
        vipd | vipd-ring | vipd-b)
            local bin=$VIPD conf=$VIPD_CONF
            [[ $t == vipd-ring ]] && { bin=$VIPD_RING; conf=$VIPD_RING_CONF; }
            [[ $t == vipd-b ]] && { bin=$VIPD_B; conf=$VIPD_B_CONF; }
            [[ -x $bin ]] || { WHY="no binary $bin"; return 1; }
            ip netns exec "$(ns $H)" env RUST_LOG=info,access=off taskset -c $PROXY_CPU \
                "$bin" run --config "$conf" >>"$WORK/$t.log" 2>&1 &
            TARGET_PID=$!
            EXTRA_PIDS+=("$TARGET_PID")
            TARGET_PIDS=("$TARGET_PID")
            ;;
        haproxy)
            start_haproxy $H haproxy "$HAPROXY_CONF" $PROXY_CPU
            TARGET_PID=$STARTED_PID
            TARGET_PIDS=("$TARGET_PID")
            ;;
        nginx)
            start_nginx $H nginx-proxy "$NGINX_CONF" $PROXY_CPU
            TARGET_PID=$STARTED_PID
            ;;
    esac
    if ! wait_for 10000 tls_ok "${PORT[$t]}" || ! pid_alive "$TARGET_PID"; then
        WHY="$t does not answer over TLS on ${PORT[$t]}"
        stop_daemon "$TARGET_PID" 3000
        return 1
    fi
    if [[ $t == nginx ]]; then
        record_kids "$TARGET_PID"
        read -r -a TARGET_PIDS <<<"${DAEMON_KIDS[$TARGET_PID]}"
    fi
    quota_add "$TARGET_PID" "${TARGET_PIDS[@]}"
}

stop_target() {
    stop_daemon "$TARGET_PID" 5000
    TARGET_PID=""
    TARGET_PIDS=()
}

cpu_s_since() { awk -v a="$1" -v b="$(cpu_ticks "${TARGET_PIDS[@]}")" -v hz="$CLK_TCK" 'BEGIN { printf "%.3f", (b - a) / hz }'; }
rss_kib() {
    local p s=0 v
    for p in "${TARGET_PIDS[@]}"; do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null) || v=0
        s=$((s + ${v:-0}))
    done
    echo "$s"
}

# load_handshakes MODE PORT: tls_load MODE; prints "RATE P99_MS CPU_S RESUMED ERRORS".
load_handshakes() {
    local out="$WORK/load-$1.txt" t0
    t0=$(cpu_ticks "${TARGET_PIDS[@]}")
    ns_exec $H taskset -c $LOAD_CPU timeout 120 "$TLS_LOAD" "127.0.0.1:$2" "$NAME" "$PKI/ca.pem" "$1" "$CONC" "$dur_s" >"$out" 2>&1 || true
    local cpu
    cpu=$(cpu_s_since "$t0")
    sed -n 's/.*connections=\([0-9]*\) errors=\([0-9]*\) resumed=\([0-9]*\) p50_ms=[^ ]* p99_ms=\([^ ]*\).*/\1 \2 \3 \4/p' "$out" |
        awk -v d="$dur_s" -v cpu="$cpu" '{ printf "%.0f %s %s %s %s\n", $1 / d, $4, cpu, $3, $2 }' | grep . || echo "NA NA NA NA NA"
}

# load_h2load H1|H2 PORT: prints "RATE P99_MS CPU_S".
load_h2load() {
    local mode=$1 out="$WORK/h2load-$1.txt" lf="$WORK/h2load-$1.log" t0 args cpu
    if [[ $mode == h1 ]]; then args=(--h1 -c 64 -m 1); else args=(-c 16 -m 10); fi
    t0=$(cpu_ticks "${TARGET_PIDS[@]}")
    rm -f "$lf"
    ns_exec $H taskset -c $LOAD_CPU timeout 120 h2load -t 1 "${args[@]}" -D "${dur_s%.*}" --warm-up-time=1 \
        --log-file="$lf" "https://127.0.0.1:$2/" >"$out" 2>&1 || true
    cpu=$(cpu_s_since "$t0")
    local rate p99
    rate=$(awk '/^finished in/ { for (i = 1; i <= NF; i++) if ($i ~ /req\/s/) { v = $(i - 1); gsub(/,/, "", v); print v } }' "$out")
    # h2load's log: start time, status, time to answer (microseconds).
    p99=$(awk '{ print $3 }' "$lf" 2>/dev/null | sort -n |
        awk '{ v[NR] = $1 } END { n = int(NR * 0.99); if (n < 1) n = 1; if (NR) printf "%.3f", v[n] / 1000; else print "NA" }')
    echo "${rate:-NA} ${p99:-NA} $cpu"
}

# load_idle PORT: opens IDLE connections; prints "KIB_PER_CONN OPEN".
load_idle() {
    local out="$WORK/load-idle.txt" before after pid i
    before=$(rss_kib)
    ns_exec $H taskset -c $LOAD_CPU timeout 300 "$TLS_LOAD" "127.0.0.1:$1" "$NAME" "$PKI/ca.pem" idle "$IDLE" 6 >"$out" 2>&1 &
    pid=$!
    for ((i = 0; i < 2400; i++)); do
        grep -q '^open=' "$out" && break
        pid_alive "$pid" || break
        sleep 0.1
    done
    sleep 2
    after=$(rss_kib)
    wait "$pid" || true
    local open
    open=$(sed -n 's/^open=\([0-9]*\).*/\1/p' "$out")
    awk -v a="$after" -v b="$before" -v n="${open:-0}" 'BEGIN { if (n > 0) printf "%.1f %d\n", (a - b) / n, n; else print "NA 0" }'
}

# profile_start FILE / profile_stop: perf record -g of the target's processes.
PERF_PID=""
profile_start() {
    local pids
    pids=$(IFS=,; echo "${TARGET_PIDS[*]}")
    perf record -q -g -o "$1" -p "$pids" >/dev/null 2>&1 &
    PERF_PID=$!
    EXTRA_PIDS+=("$PERF_PID")
}
profile_stop() {
    [[ -n $PERF_PID ]] || return 0
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    PERF_PID=""
}

RESULTS="$WORK/results.txt"     # kind target round mode rate p99 cpu_s extra
: >"$RESULTS"
BUSY_BEFORE=$(cpu_busy_pct)
for kind in $KINDS; do
    PKI="$WORK/pki-$kind"
    make_pki "$PKI" "$NAME" "$kind"
    write_configs "$PKI"
    for ((r = 1; r <= RUNS; r++)); do
        for t in $TARGETS; do
            start_target "$t" || { log "$kind round $r: $t skipped: $WHY"; continue; }
            ns_exec $H taskset -c $LOAD_CPU timeout 30 "$TLS_LOAD" "127.0.0.1:${PORT[$t]}" "$NAME" "$PKI/ca.pem" full 8 1 >/dev/null 2>&1 || true
            for mode in $MODES; do
                [[ $mode == "$PROFILE" ]] && profile_start "$WORK/perf-$t-$kind-$r.data"
                case $mode in
                    full | resumed)
                        read -r rate p99 cpu res errs <<<"$(load_handshakes $mode "${PORT[$t]}")"
                        echo "$kind $t $r $mode $rate $p99 $cpu $res/$errs" >>"$RESULTS"
                        log "$kind round $r $t $mode: $rate/s p99 $p99 ms, proxy CPU $cpu s, resumed $res, errors $errs"
                        ;;
                    h1 | h2)
                        read -r rate p99 cpu <<<"$(load_h2load $mode "${PORT[$t]}")"
                        echo "$kind $t $r $mode $rate $p99 $cpu -" >>"$RESULTS"
                        log "$kind round $r $t $mode: $rate req/s p99 $p99 ms, proxy CPU $cpu s"
                        ;;
                    idle)
                        read -r per open <<<"$(load_idle "${PORT[$t]}")"
                        echo "$kind $t $r idle $per NA NA $open" >>"$RESULTS"
                        log "$kind round $r $t idle: $per KiB per connection over $open connections"
                        ;;
                    *) fail "unknown mode $mode in MODES" ;;
                esac
                [[ $mode == "$PROFILE" ]] && profile_stop
            done
            stop_target
        done
    done
done

# ---------------------------------------------------------------- report

# med KIND TARGET MODE COL: median of a column over the rounds.
med() {
    awk -v k="$1" -v t="$2" -v m="$3" -v c="$4" '$1 == k && $2 == t && $4 == m && $c != "NA" { print $c }' "$RESULTS" |
        sort -g | awk '{ v[NR] = $1 } END { if (!NR) { print "NA"; exit } print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# per_cpu KIND TARGET MODE: rate per proxy CPU-second (rate * duration / cpu seconds).
per_cpu() {
    awk -v r="$(med "$1" "$2" "$3" 5)" -v c="$(med "$1" "$2" "$3" 7)" -v d="$dur_s" \
        'BEGIN { if (r == "NA" || c == "NA" || c == 0) print "NA"; else printf "%.0f", r * d / c }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "NA" || b == "NA" || b == 0) print "NA"; else printf "%.2f", a / b }'; }

echo
echo "bench-tls: median of $RUNS round(s), $DURATION each; proxy on CPU $PROXY_CPU${CPU_QUOTA_PCT:+ capped at ${CPU_QUOTA_PCT}%}, load (tls_load: $CONC tasks; h2load) and backend on CPU $LOAD_CPU"
declare -A E=()
for kind in $KINDS; do
    echo
    echo "certificate: $([[ $kind == ec ]] && echo "ECDSA P-256" || echo "RSA 2048")"
    printf '%-8s | %9s %7s %9s | %9s %7s %9s | %9s %7s %9s | %9s %7s %9s | %8s\n' target \
        "full/s" p99 "/CPU-s" "resumed/s" p99 "/CPU-s" "h1 req/s" p99 "/CPU-s" "h2 req/s" p99 "/CPU-s" "KiB/idle"
    for t in $TARGETS; do
        row=$(printf '%-8s |' "$t")
        for mode in full resumed h1 h2; do
            E[$kind,$t,$mode]=$(per_cpu "$kind" "$t" "$mode")
            row+=$(printf ' %9s %7s %9s |' "$(med "$kind" "$t" "$mode" 5)" "$(med "$kind" "$t" "$mode" 6)" "${E[$kind,$t,$mode]}")
        done
        E[$kind,$t,idle]=$(med "$kind" "$t" idle 5)
        row+=$(printf ' %8s' "${E[$kind,$t,idle]}")
        echo "$row"
    done
    for o in haproxy nginx vipd-ring vipd-b; do
        [[ " $TARGETS " == *" vipd "* && " $TARGETS " == *" $o "* ]] || continue
        printf 'vipd/%-7s per CPU-second: full %s, resumed %s, h1 %s, h2 %s; KiB per idle connection %s\n' "$o" \
            "$(ratio "${E[$kind,vipd,full]}" "${E[$kind,$o,full]}")" "$(ratio "${E[$kind,vipd,resumed]}" "${E[$kind,$o,resumed]}")" \
            "$(ratio "${E[$kind,vipd,h1]}" "${E[$kind,$o,h1]}")" "$(ratio "${E[$kind,vipd,h2]}" "${E[$kind,$o,h2]}")" \
            "$(ratio "${E[$kind,vipd,idle]}" "${E[$kind,$o,idle]}")"
    done
done
echo
echo "CPUs busy before the bench: ${BUSY_BEFORE}%; raw results: $RESULTS (KEEP=1 keeps them)"
