#!/usr/bin/env bash
# bench-failover.sh (by hand, not CI): failover times of vipd and keepalived
# in the same topology, at advert_interval 1 s and 100 ms (lb1 150, lb2 100),
# measured on the wire from a capture in the client namespace:
#   crash:    dead master's last advert -> new master's first advert, and ->
#             its first gratuitous ARP                 (theory: Master_Down_Interval)
#   graceful: priority-0 advert -> new master's first advert (and first GARP)
#                                                      (theory: Skew_Time)
# plus the CPU time vipd (and keepalived) use idle as master at 100 ms.
# Env: VIPD (default ../target/release/vipd), REPS (5), IDLE_SECS (60),
#      INTERVALS ("1s 100ms"), IMPLS ("vipd keepalived"),
#      MODES ("multicast ipv6 unicast"): IPv4 multicast; IPv6 (lib.sh's V6,
#      NAs in place of GARPs); IPv4 unicast peers (captured on lb2, since
#      the client does not see unicast adverts). Each mode runs as its own
#      process (lib.sh reads V6/UNICAST when sourced).
NT_DIR0=$(cd "$(dirname "$0")" && pwd)
export VIPD=${VIPD:-$NT_DIR0/../target/release/vipd}
MODES=${MODES:-multicast ipv6 unicast}
if [[ -z ${MODE:-} ]]; then
    for m in $MODES; do MODE=$m "$0" "$@" || exit $?; done
    exit 0
fi
case $MODE in
    multicast) ;;
    ipv6) export V6=1 ;;
    unicast) export UNICAST=1 ;;
    *) echo "bench-failover: unknown MODE $MODE" >&2; exit 2 ;;
esac
source "$NT_DIR0/lib.sh"
need_root
REPS=${REPS:-5}
IDLE_SECS=${IDLE_SECS:-60}
INTERVALS=${INTERVALS:-1s 100ms}
IMPLS=${IMPLS:-vipd keepalived}
if [[ " $IMPLS " == *" vipd "* && ! -x $VIPD ]]; then
    log "$VIPD missing, building the release binary"
    (cd "$NT_DIR/.." && cargo build --release)
    need_vipd
fi
ensure_pkg tcpdump tcpdump
ensure_pkg keepalived keepalived

sleep_iv() { sleep "$(awk -v n="$1" -v m="$(interval_ms "$2")" 'BEGIN{print n*m/1000}')"; }

# What lb1's and lb2's adverts and lb2's announcements look like in
# tcpdump's text (ANNOUNCE is a regex: a GARP's target hardware address is
# broadcast from keepalived, the MAC itself from vipd, RFC 9568 erratum
# 7949), and where to capture them.
case $MODE in
    multicast)
        ADV1=" ${HOST_IP[lb1]} > 224.0.0.18: VRRP"; ADV2=" ${HOST_IP[lb2]} > 224.0.0.18: VRRP"
        ANNOUNCE="Request who-has $VIP \\([0-9a-f:]+\\) tell $VIP,"; CAP_HOST=client; FILTER="ip proto 112 or arp" ;;
    ipv6)
        ADV1=" fe80::5eff:fe10:11 > ff02::12: VRRP"; ADV2=" fe80::5eff:fe10:12 > ff02::12: VRRP"
        ANNOUNCE="neighbor advertisement, tgt is $VIP,"; CAP_HOST=client; FILTER="ip6 proto 112 or icmp6" ;;
    unicast)
        ADV1=" ${HOST_IP[lb1]} > ${HOST_IP[lb2]}: VRRP"; ADV2=" ${HOST_IP[lb2]} > ${HOST_IP[lb1]}: VRRP"
        ANNOUNCE="Request who-has $VIP \\([0-9a-f:]+\\) tell $VIP,"; CAP_HOST=lb2; FILTER="ip proto 112 or arp" ;;
esac

# measure FILE crash|graceful -> "ADVERT_MS GARP_MS" from one capture.
#   t_a: crash: lb1's last advert; graceful: lb1's priority-0 advert
#   t_b: lb2's first advert after t_a;  t_g: lb2's first GARP (NA) for the VIP after t_a
measure() {
    read_capture "$1" | awk -v kind="$2" -v a="$ADV1" -v b="$ADV2" -v bmac="${HOST_MAC[lb2]}" -v ann="$ANNOUNCE" '
        { t = $1 * 1000 }
        index($0, a) && !tb {
            if (kind == "crash" || index($0, ", prio 0,")) ta = t
        }
        index($0, b) && ta && !tb { tb = t }
        $2 == bmac && $0 ~ ann && ta && !tg { tg = t }
        END {
            if (!ta || !tb) { print "NA NA"; exit }
            printf "%.1f %s\n", tb - ta, (tg ? sprintf("%.1f", tg - ta) : "NA")
        }'
}

# stats V... -> "median min max n" (NA values ignored)
stats() {
    printf '%s\n' "$@" | grep -v NA | sort -n | awk '
        { v[NR] = $1 }
        END {
            if (!NR) { print "NA NA NA 0"; exit }
            med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%.1f %.1f %.1f %d\n", med, v[1], v[NR], NR
        }'
}

# cpu_ticks PID... -> utime+stime of those processes (all threads), in ticks.
cpu_ticks() {
    local p s=0 f
    for p in "$@"; do
        # Fields after the "(comm)" part: state is 1st, utime 12th, stime 13th.
        read -r -a f <<<"$(sed 's/.*) //' "/proc/$p/stat")"
        s=$((s + f[11] + f[12]))
    done
    echo "$s"
}

declare -A MED=()               # "impl interval metric" -> median
RESULTS="$WORK/results.txt"
: >"$RESULTS"
IDLE_LINES=()

bench_one() {
    local impl=$1 intv=$2 ms rep f r crash_adv=() crash_garp=() grace_adv=() grace_garp=() settle
    ms=$(interval_ms "$intv")
    settle=$((10 * ms + 3000))
    SCENARIO="bench $impl $intv"
    topo_up lb1 lb2 client
    start_node "$impl" lb2 100 "$intv" 3 true
    for ((rep = 1; rep <= REPS; rep++)); do
        for kind in crash graceful; do
            start_node "$impl" lb1 150 "$intv" 3 true
            wait_pair_settled lb1 lb2 "$settle"
            sleep_iv 3 "$intv"
            f="$WORK/$impl-$intv-$kind-$rep.pcap"
            start_capture "$CAP_HOST" "$f" "$FILTER"
            local cap=$CAPTURE_PID
            sleep_iv 2 "$intv"
            if [[ $kind == crash ]]; then
                crash_node lb1
            else
                kill -TERM "${NODE_PID[lb1]}"
            fi
            wait_for "$settle" has_vip lb2 || fail "lb2 did not take over ($kind, rep $rep)"
            [[ $kind == graceful ]] && { reap_node lb1 || log "lb1 exited non-zero after SIGTERM"; }
            sleep 0.3                       # let the first GARP burst land
            stop_capture "$cap"
            read -r -a r <<<"$(measure "$f" "$kind")"
            log "rep $rep $kind: advert ${r[0]} ms, garp ${r[1]} ms"
            if [[ $kind == crash ]]; then crash_adv+=("${r[0]}"); crash_garp+=("${r[1]}")
            else grace_adv+=("${r[0]}"); grace_garp+=("${r[1]}"); fi
        done
    done
    local name s
    for name in crash_adv crash_garp grace_adv grace_garp; do
        local -n arr=$name
        s=$(stats "${arr[@]}")
        MED["$impl $intv $name"]=${s%% *}
        printf '%-10s %-6s %-11s %s\n' "$impl" "$intv" "$name" "$s" >>"$RESULTS"
    done

    if [[ $intv == 100ms ]]; then
        # Idle cost: lb1 master at 100 ms, lb2 backup, nothing else happening.
        start_node "$impl" lb1 150 "$intv" 3 true
        wait_pair_settled lb1 lb2 "$settle"
        sleep 1
        local pids=("${NODE_PID[lb1]}") t0 t1 c0 c1 hz
        [[ $impl == keepalived ]] && pids+=("$(keepalived_child lb1)")
        hz=$(getconf CLK_TCK)
        c0=$(cpu_ticks "${pids[@]}"); t0=$(now_ms)
        log "idle CPU of $impl as master for ${IDLE_SECS}s"
        sleep "$IDLE_SECS"
        c1=$(cpu_ticks "${pids[@]}"); t1=$(now_ms)
        state_is lb1 master || log "warning: lb1 no longer master after the idle period"
        IDLE_LINES+=("$(awk -v i="$impl" -v c=$((c1 - c0)) -v hz="$hz" -v ms=$((t1 - t0)) \
            'BEGIN{printf "%-10s idle master at 100ms: %.2f s CPU in %.1f s = %.3f%% of one core", i, c/hz, ms/1000, 100*c/hz/(ms/1000)}')")
    fi
    topo_down
}

for intv in $INTERVALS; do
    for impl in $IMPLS; do bench_one "$impl" "$intv"; done
done

SCENARIO=bench-failover
echo
echo "Failover on the wire, $MODE, ms (lb1 prio 150 -> lb2 prio 100, $REPS reps; vipd = $VIPD)"
echo "  crash_*: dead master's last advert -> lb2's first advert / first GARP"
echo "  grace_*: priority-0 advert         -> lb2's first advert / first GARP"
printf '%-10s %-6s %-11s %8s %8s %8s %3s\n' impl intv metric median min max n
while read -r i v m med mn mx n; do
    printf '%-10s %-6s %-11s %8s %8s %8s %3s\n' "$i" "$v" "$m" "$med" "$mn" "$mx" "$n"
done <"$RESULTS"
echo
for intv in $INTERVALS; do
    printf 'theory %-6s Master_Down_Interval %s ms, Skew_Time %s ms (backup priority 100)\n' \
        "$intv" "$(mdi_ms 100 "$intv")" "$(skew_ms 100 "$intv")"
done
if [[ " $IMPLS " == *" vipd "* && " $IMPLS " == *" keepalived "* ]]; then
    echo
    for intv in $INTERVALS; do
        for m in crash_adv crash_garp grace_adv grace_garp; do
            awk -v a="${MED["vipd $intv $m"]}" -v b="${MED["keepalived $intv $m"]}" -v l="$intv $m" \
                'BEGIN{ if (a == "NA" || b == "NA" || b == 0) r = "NA"; else r = sprintf("%.2f", a/b);
                        printf "ratio vipd/keepalived %-6s %-11s %s\n", substr(l, 1, index(l, " ")-1), substr(l, index(l, " ")+1), r }'
        done
    done
fi
echo
printf '%s\n' "${IDLE_LINES[@]}"
