#!/usr/bin/env bash
# bad-packets.sh: an attacker on the segment sends, for ~3 s, 10 packets/s of
# each kind of invalid VRRP advert (inject.py: wrong TTL, bad checksum,
# version 4, type 2, VRID 52, truncated, count/length mismatch, priority 254
# with a bad checksum; the "otherwise valid" ones carry priority 254, so
# accepting one would dethrone lb1). Checks:
#   - no state change: lb1 master, lb2 backup, VIP on lb1 only, transitions
#     unchanged on both;
#   - lb1's adverts keep their rhythm (largest gap <= 1.5 x interval, from a
#     capture on the client);
#   - vipd counted each reason: rx.dropped.{ttl,checksum,version,type,vrid,
#     truncated,length} > 0 on lb1;
#   - calibration: a VALID priority-254 advert from the attacker does make lb1
#     back down, proving the bad packets reached it and only their defect
#     saved it.
source "$(dirname "$0")/lib.sh"
need_root
[[ $IMPL == vipd ]] && need_vipd
ensure_pkg python3 python3

INTERVAL=100ms
INJECT="$NT_DIR/inject.py"
topo_up lb1 lb2 client attacker
start_node "$IMPL" lb1 150 $INTERVAL 3 true
start_node "$IMPL" lb2 100 $INTERVAL 3 true
wait_pair_settled lb1 lb2 5000
sleep 0.5
tr1=$(node_transitions lb1); tr2=$(node_transitions lb2)

start_capture client "$WORK/adverts.pcap" "ip proto 112 and src ${HOST_IP[lb1]}"
cap=$CAPTURE_PID
sent=$(ns_exec attacker timeout 20 python3 "$INJECT" --iface eth0 --src "${HOST_IP[attacker]}" \
    --vrid "$VRID" --rate 10 --duration 3) || fail "injector failed"
log "injector: $sent"
stop_capture "$cap"

pair_settled lb1 lb2 || fail "under attack: lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on: $(vip_holder)"
[[ $(node_transitions lb1) == "$tr1" && $(node_transitions lb2) == "$tr2" ]] ||
    fail "transitions changed under attack: lb1 $tr1 -> $(node_transitions lb1), lb2 $tr2 -> $(node_transitions lb2)"

# Largest gap between consecutive lb1 adverts during the injection.
read -r n maxgap < <(read_capture "$WORK/adverts.pcap" |
    awk '{t=$1*1000; if (n++) { g=t-p; if (g>m) m=g }; p=t} END{printf "%d %.1f\n", n, m}')
limit=$(awk -v i="$(interval_ms $INTERVAL)" 'BEGIN{print 1.5*i}')
((n >= 20)) || fail "only $n adverts from lb1 captured in ~3 s"
awk -v g="$maxgap" -v l="$limit" 'BEGIN{exit !(g <= l)}' ||
    fail "lb1's adverts lost their rhythm: gap of $maxgap ms > $limit ms"

counts=""
if [[ $IMPL == vipd ]]; then
    for side in lb1 lb2; do
        d=$(vipd_field "$side" .rx.dropped) || fail "no rx.dropped in $side's status"
        counts+=" $side:$(jq -r 'to_entries | map("\(.key)=\(.value)") | join(",")' <<<"$d")"
    done
    d=$(vipd_field lb1 .rx.dropped)
    missing=""
    for r in ttl checksum version type vrid truncated length; do
        v=$(jq -r ".$r // 0" <<<"$d")
        ((v > 0)) || missing+=" $r"
    done
    [[ -z $missing ]] || fail "lb1 counted no drops for:$missing (rx.dropped: $(jq -c . <<<"$d"))"
fi

# Calibration: the same injector, one valid advert kind at priority 254.
ns_exec attacker timeout 20 python3 "$INJECT" --iface eth0 --src "${HOST_IP[attacker]}" \
    --vrid "$VRID" --kinds valid --rate 10 --duration 1 >/dev/null || fail "injector failed (valid)"
wait_for 1000 state_is lb1 backup ||
    fail "calibration: lb1 ignored VALID priority-254 adverts (state $(node_state lb1)): the injector is not reaching it?"

pass "lb1 stayed master, no transitions; $n lb1 adverts, max gap ${maxgap} ms (limit ${limit} ms); $sent;${counts:+ dropped$counts;} valid prio-254 adverts do dethrone lb1"
