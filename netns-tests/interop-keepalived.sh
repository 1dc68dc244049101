#!/usr/bin/env bash
# interop-keepalived.sh: vipd and keepalived 2.2.7 in one VRRP group, for
# VRRPv3 (100 ms) and VRRPv2 (1 s, v2 intervals are whole seconds), each
# implementation once as the high-priority node (lb1, 150) and once as the
# low one (lb2, 100). Per case:
#   1. election: lb1 master with the VIP, lb2 backup;
#   2. crash of lb1: lb2 holds the VIP within Master_Down_Interval + margin;
#   3. lb1 restarted (preempt): takes the VIP back, lb2 backup again;
#   4. SIGTERM of lb1: lb2 holds the VIP within Skew_Time + margin (it honours
#      the other implementation's priority-0 advert).
# VIPD_SIDE=keepalived puts keepalived in vipd's place (checks the script).
source "$(dirname "$0")/lib.sh"
need_root
VIPD_SIDE=${VIPD_SIDE:-vipd}
[[ $VIPD_SIDE == vipd ]] && need_vipd
ensure_pkg keepalived keepalived
MARGIN_MS=${MARGIN_MS:-250}
IMPL=""                         # mixed; node_state asks each node's own kind

summary=()
run_case() {
    local ver=$1 hi=$2 lo=$3 intv ms mdi skew lim t0 crash back grace peers=""
    intv=$([[ $ver == 3 ]] && echo 100ms || echo 1s)
    ms=$(interval_ms "$intv")
    SCENARIO="interop-keepalived v$ver lb1=$hi lb2=$lo"
    topo_up lb1 lb2 client
    start_node "$hi" lb1 150 "$intv" "$ver" true
    start_node "$lo" lb2 100 "$intv" "$ver" true
    wait_pair_settled lb1 lb2 $((10 * ms + 3000))
    sleep "$(awk -v m="$ms" 'BEGIN{print 3*m/1000}')"
    pair_settled lb1 lb2 || fail "election did not hold: lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on: $(vip_holder)"
    # What vipd saw of its keepalived peer (adverts and which checksum form).
    for h in lb1 lb2; do
        [[ ${NODE_KIND[$h]} == vipd ]] && peers=$(vipd_field "$h" '.peers // [] | map("\(.address):\(.adverts)") | join(",")' 2>/dev/null || echo "?")
    done

    mdi=$(mdi_ms 100 "$intv"); skew=$(skew_ms 100 "$intv")
    lim=$(awk -v m="$mdi" -v g="$MARGIN_MS" 'BEGIN{printf "%d", m+g}')
    t0=$(now_ms)
    crash_node lb1
    wait_for $((lim + 3000)) has_vip lb2 || fail "lb2 ($lo) never took the VIP after lb1 ($hi) crashed"
    crash=$(($(now_ms) - t0))
    ((crash <= lim)) || fail "crash takeover $crash ms > MDI $mdi + $MARGIN_MS ms"
    wait_for 1000 state_is lb2 master || fail "lb2 holds the VIP but state is $(node_state lb2)"

    t0=$(now_ms)
    start_node "$hi" lb1 150 "$intv" "$ver" true
    wait_for $((10 * ms + 3000)) pair_settled lb1 lb2 ||
        fail "restarted lb1 ($hi) did not take back: lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on: $(vip_holder)"
    back=$(($(now_ms) - t0))
    sleep "$(awk -v m="$ms" 'BEGIN{print 2*m/1000}')"

    lim=$(awk -v s="$skew" -v g="$MARGIN_MS" 'BEGIN{printf "%d", s+g}')
    t0=$(now_ms)
    kill -TERM "${NODE_PID[lb1]}"
    wait_for $((lim + 3000)) has_vip lb2 || fail "lb2 ($lo) never took the VIP after lb1 ($hi) stopped"
    grace=$(($(now_ms) - t0))
    reap_node lb1 || fail "lb1 ($hi) exited non-zero on SIGTERM"
    ((grace <= lim)) || fail "graceful takeover $grace ms > Skew_Time $skew + $MARGIN_MS ms"
    has_vip lb1 && fail "lb1 ($hi) kept the VIP after SIGTERM"

    summary+=("v$ver $intv lb1=$hi(150) lb2=$lo(100): crash ${crash} ms (MDI $mdi), retake ${back} ms, graceful ${grace} ms (skew $skew)${peers:+, vipd peers $peers}")
    topo_down
}

for ver in 3 2; do
    run_case "$ver" "$VIPD_SIDE" keepalived
    run_case "$ver" keepalived "$VIPD_SIDE"
done
SCENARIO=interop-keepalived
for s in "${summary[@]}"; do echo "  $s"; done
pass "4 cases: election, crash, preempt and graceful takeover each way"
