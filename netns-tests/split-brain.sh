#!/usr/bin/env bash
# split-brain.sh: the LBs lose sight of each other (bridge ports isolated:
# isolated ports only talk to non-isolated ones, so both still reach the
# client). Both must become master, and the client follows lb2's gratuitous
# ARP. When the link comes back: exactly one master (lb1) within two advert
# intervals + margin, VIP on lb1 only, and the client's neighbour entry for
# the VIP back on lb1's MAC, because lb1, as master, re-announces the VIP when
# it sees the lower-priority master's advert.
#
# The heal: if the link simply comes back (HEAL=natural, the default for
# vipd), whichever advert crosses first decides. When lb1's does, a plain RFC
# router in lb2's place steps down silently, lb1 never sees a lower-priority
# master and has no reason to re-announce: the client keeps lb2's MAC until
# its own ARP entry times out (seconds). vipd's lb2 sends a priority-0 advert
# when it steps down, and lb1 re-announces on it, so the client must come
# back either way. For keepalived (IMPL=keepalived, a baseline) the default is
# HEAL=staged: multicast towards lb2 is stopped for a moment (bridge port flag
# mcast_flood off) so lb1 surely sees lb2's advert first.
source "$(dirname "$0")/lib.sh"
need_root
[[ $IMPL == vipd ]] && need_vipd

INTERVAL=100ms
MARGIN_MS=${MARGIN_MS:-250}
if [[ $IMPL == vipd ]]; then HEAL=${HEAL:-natural}; else HEAL=${HEAL:-staged}; fi
GARP_REPEAT=5s                  # the default; the waits below depend on it
topo_up lb1 lb2 client
start_node "$IMPL" lb1 150 $INTERVAL 3 true
start_node "$IMPL" lb2 100 $INTERVAL 3 true
wait_pair_settled lb1 lb2 5000
t_lb1=$(now_ms)
ns_exec client ping -c 1 -W 1 "$VIP" >/dev/null || fail "client cannot ping the VIP on lb1"

# lb1's second GARP burst comes garp_repeat_delay (5 s) after it became
# master: let it pass, or it would point the client back at lb1 during the split.
sleep "$(awk -v t="$((t_lb1 + 6000 - $(now_ms)))" 'BEGIN{print (t > 0 ? t/1000 : 0)}')"

port() { bridge -n "$SW" link set dev "$1" "${@:2}"; }
port lb1 isolated on; port lb2 isolated on
log "LB ports isolated"
both_master() { state_is lb1 master && state_is lb2 master && holder_is "lb1 lb2"; }
wait_for 3000 both_master || fail "split: want both master, got lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on: $(vip_holder)"
t_lb2=$(now_ms)
wait_for 1000 neigh_is "${HOST_MAC[lb2]}" ||
    fail "split: client's entry for VIP is $(client_neigh_mac), want lb2's (no gratuitous ARP from lb2?)"
ns_exec client ping -c 1 -W 1 "$VIP" >/dev/null || fail "split: client cannot ping the VIP (on lb2)"
sleep 0.5

limit=$((2 * $(interval_ms $INTERVAL) + MARGIN_MS))
start_capture client "$WORK/heal.pcap"
cap=$CAPTURE_PID
note=""
if [[ $HEAL == staged ]]; then
    # Stage 1: lb2 is deaf to multicast, lb1 hears lb2's lower-priority adverts.
    port lb2 mcast_flood off
    port lb1 isolated off; port lb2 isolated off
    t0=$(now_ms)
    wait_for "$((limit + 3000))" neigh_is "${HOST_MAC[lb1]}" ||
        fail "heal: lb1 hears lb2's lower-priority adverts but the client's entry stays $(client_neigh_mac) (no re-announce by lb1)"
    reannounce=$(($(now_ms) - t0))
    ((reannounce <= limit)) || fail "heal: lb1 re-announced after $reannounce ms > $limit ms"
    holder_is "lb1 lb2" || fail "heal stage 1: VIP on $(vip_holder), want both (lb2 cannot hear lb1 yet)"
    note="client back on lb1 ${reannounce} ms after the link returned (lb1 re-announced); "
    # Stage 2: lb2 hears lb1 again.
    port lb2 mcast_flood on
else
    port lb1 isolated off; port lb2 isolated off
fi
t0=$(now_ms)
wait_for "$((limit + 3000))" pair_settled lb1 lb2 ||
    fail "heal: lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on: $(vip_holder) (want lb1 master alone)"
heal=$(($(now_ms) - t0))
((heal <= limit)) || fail "heal took $heal ms > 2 intervals + $MARGIN_MS ms = $limit ms"
if [[ $HEAL == staged ]]; then
    neigh_is "${HOST_MAC[lb1]}" || fail "heal: client's entry went back to $(client_neigh_mac)"
    ns_exec client ping -c 1 -W 1 "$VIP" >/dev/null || fail "heal: client cannot ping the VIP"
elif [[ $IMPL == vipd ]]; then
    wait_for "$limit" neigh_is "${HOST_MAC[lb1]}" ||
        fail "natural heal: the client's entry stays $(client_neigh_mac): nobody re-announced"
    ns_exec client ping -c 1 -W 1 "$VIP" >/dev/null || fail "heal: client cannot ping the VIP"
    note="(natural heal: client entry back on lb1 after ${WAITED_MS} ms); "
else
    # Informational for keepalived: when lb1's advert crossed first, the
    # client stays on lb2's MAC until its ARP entry is re-resolved.
    if wait_for "$limit" neigh_is "${HOST_MAC[lb1]}"; then
        note="(natural heal: client entry back on lb1); "
    else
        note="(natural heal: client entry STUCK on $(client_neigh_mac), nobody re-announced); "
    fi
fi
stop_capture "$cap"

# lb2's own second GARP burst was due 5 s after it became master: as a backup
# now it must not send it (that would steal the VIP's traffic from lb1).
sleep "$(awk -v t="$((t_lb2 + 6000 - $(now_ms)))" 'BEGIN{print (t > 0 ? t/1000 : 0)}')"
pair_settled lb1 lb2 || fail "after heal: lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on: $(vip_holder)"
[[ $HEAL == natural && $IMPL != vipd ]] || neigh_is "${HOST_MAC[lb1]}" ||
    fail "after heal the client's entry moved to $(client_neigh_mac): a backup sent gratuitous ARP for the VIP"

tail="client -> lb1, still so 6 s after lb2's takeover (no stray GARP from the backup)"
[[ $HEAL == natural ]] && tail="lb1 alone holds the VIP 6 s after lb2's takeover"
pass "split: both master, client -> lb2; ${note}one master (lb1) ${heal} ms after the heal (limit ${limit} ms); $tail"
