#!/usr/bin/env bash
# track-iface-script.sh (issue 9): interface and script trackers on lb1.
#
#   lb1 (prio 150): track_interfaces eth1 (a veth), weight 60;
#                   script "slow" (weight 10, timeout 200 ms), script "gate"
#                   (weight 0: fault while it fails)
#   lb2 (prio 100): no trackers
#
# Phases: eth1 down -> lb1 at 90, lb2 takes the VIP; eth1 up -> lb1 back.
# "slow" hangs: each run is killed at its timeout (no run left behind), lb1
# drops to 140 and stays master, and its adverts keep their rhythm (largest
# gap <= 1.5 x interval: the scripts never run on the VRRP thread).
# "gate" fails: lb1 to fault, lb2 master; passes again: lb1 master again.
source "$(dirname "$0")/lib.sh"
need_root
need_vipd

INTERVAL=100ms
MARGIN_MS=${MARGIN_MS:-400}
mdi=$(mdi_ms 100 $INTERVAL)
limit=$(awk -v m="$mdi" -v g="$MARGIN_MS" 'BEGIN{printf "%d", m+g}')
topo_up lb1 lb2 client
# A second interface of lb1's own: a veth pair with both ends inside it.
ip -n "$(ns lb1)" link add eth1 type veth peer name eth1peer
ip -n "$(ns lb1)" link set eth1peer up
ip -n "$(ns lb1)" link set eth1 up

cat >"$WORK/check.sh" <<EOF
#!/bin/sh
# check.sh NAME: hangs while $WORK/NAME.hang exists, fails while NAME.fail does.
echo \$\$ >>"$WORK/\$1.pids"
[ -e "$WORK/\$1.hang" ] && exec sleep 30
[ -e "$WORK/\$1.fail" ] && exit 1
exit 0
EOF
chmod 755 "$WORK/check.sh"
conf=$(vipd_conf lb1 150 $INTERVAL 3 true)
cat >>"$conf" <<EOF
track_interfaces = [{ name = "eth1", weight = 60 }]
track_scripts = [
    { name = "slow", command = ["$WORK/check.sh", "slow"], interval = "300ms", timeout = "200ms", rise = 1, fall = 1, weight = 10 },
    { name = "gate", command = ["$WORK/check.sh", "gate"], interval = "200ms", timeout = "1s", rise = 1, fall = 1, weight = 0 },
]
EOF
start_vipd lb1 "$conf" "$WORK/lb1.log"
start_node vipd lb2 100 $INTERVAL 3 true
wait_pair_settled lb1 lb2 5000
eff() { vipd_field lb1 .effective_priority; }
eff_is() { [[ $(eff) == "$1" ]]; }
wait_for 2000 eff_is 150 || fail "lb1 effective priority $(eff), want 150"

# ---- interface
t0=$(now_ms)
ip -n "$(ns lb1)" link set eth1 down
wait_for "$((limit + 2000))" holder_is lb2 || fail "eth1 down on lb1, but the VIP is on $(vip_holder)"
iface_ms=$(($(now_ms) - t0))
eff_is 90 || fail "eth1 down: lb1 at $(eff), want 90 ($(vipd_field lb1 .priority_explanation))"
ip -n "$(ns lb1)" link set eth1 up
wait_for 3000 pair_settled lb1 lb2 || fail "eth1 up: lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on $(vip_holder)"
eff_is 150 || fail "eth1 up: lb1 at $(eff), want 150"

# ---- a hanging script
start_capture client "$WORK/adverts.pcap" "ip proto 112 and src ${HOST_IP[lb1]}"
cap=$CAPTURE_PID
touch "$WORK/slow.hang"
wait_for 2000 eff_is 140 || fail "slow script hanging: lb1 at $(eff), want 140"
sleep 2
rm -f "$WORK/slow.hang"
stop_capture "$cap"
state_is lb1 master || fail "lb1 left master while a weight-10 script hung: $(node_state lb1)"
wait_for 2000 eff_is 150 || fail "slow script passing again: lb1 at $(eff), want 150"
sleep 0.5
left=0
while read -r pid; do
    if pid_alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == sleep ]]; then left=$((left + 1)); fi
done <"$WORK/slow.pids"
((left == 0)) || fail "$left hanging script run(s) were not killed at their timeout"
read -r n maxgap < <(read_capture "$WORK/adverts.pcap" |
    awk '{t=$1*1000; if (n++) { g=t-p; if (g>m) m=g }; p=t} END{printf "%d %.1f\n", n, m}')
((n >= 15)) || fail "only $n adverts from lb1 captured in 2 s"
awk -v g="$maxgap" 'BEGIN{exit !(g <= 150)}' || fail "lb1's adverts lost their rhythm while a script hung: gap $maxgap ms"

# ---- a failing weightless script
t1=$(now_ms)
touch "$WORK/gate.fail"
wait_for 2000 state_is lb1 fault || fail "gate failing: lb1 is $(node_state lb1), want fault"
wait_for "$((limit + 2000))" holder_is lb2 || fail "gate failing: VIP on $(vip_holder), want lb2"
gate_ms=$(($(now_ms) - t1))
rm -f "$WORK/gate.fail"
wait_for 5000 pair_settled lb1 lb2 || fail "gate passing: lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on $(vip_holder)"
pass "eth1 down: VIP on lb2 in ${iface_ms} ms; a hanging script: runs killed at 200 ms, lb1 at 140 and master, $n adverts, largest gap ${maxgap} ms; a failing weight-0 script: lb1 fault, VIP on lb2 in ${gate_ms} ms, back after"
