#!/usr/bin/env bash
# sync-group.sh (issue 9 §3): a sync group of two instances on two
# interfaces moves together.
#
#   segment A (br0, eth0): 192.0.2.0/24, VIP 192.0.2.10 (instance "web", vrid 51)
#   segment B (br1, eth1): 198.51.100.0/24, VIP 198.51.100.10 (instance "lan", vrid 52)
#   lb1: both at priority 150, "lan" tracks a script "gate" (weight 60);
#   lb2: both at 100. [[sync_group]] "edge" = [web, lan] on both, with a hook.
#
# Fault: lb1's eth1 down -> lan fault, and web goes to fault with it: both VIPs
# on lb2; eth1 up -> both back on lb1.
# Lost: gate fails (lb1's lan 150 - 60 = 90 < 100) -> lb2's lan takes over,
# lb1's web steps down with it: both VIPs on lb2; gate passes -> both back.
# Never the two VIPs on different nodes once settled; the group hook ran.
source "$(dirname "$0")/lib.sh"
need_root
need_vipd

INTERVAL=100ms
LAN_VIP=198.51.100.10
declare -A LAN_IP=([lb1]=198.51.100.11 [lb2]=198.51.100.12)
topo_up lb1 lb2 client
# Segment B: a second bridge in the switch namespace, eth1 on lb1 and lb2.
ip -n "$SW" link add br1 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
ip -n "$SW" link set br1 up
for h in lb1 lb2; do
    ip -n "$SW" link add "${h}b" type veth peer name eth1 netns "$(ns "$h")"
    ip -n "$(ns "$h")" addr add "${LAN_IP[$h]}/24" dev eth1
    ip -n "$(ns "$h")" link set eth1 up
    ip -n "$SW" link set "${h}b" master br1
    ip -n "$SW" link set "${h}b" up
done

cat >"$WORK/gate.sh" <<SCRIPT
#!/bin/sh
[ ! -e "$WORK/gate.fail" ]
SCRIPT
cat >"$WORK/group-hook.sh" <<SCRIPT
#!/bin/sh
echo "\$*" >>"$WORK/group.log"
SCRIPT
chmod 755 "$WORK/gate.sh" "$WORK/group-hook.sh"

# lb_conf HOST PRIO [TRACK]: both instances and the group.
lb_conf() {
    local h=$1 prio=$2 track=${3:-} f="$WORK/$1.toml"
    cat >"$f" <<CONF
[control]
listen = "$CONTROL"
socket = "$WORK/$h.sock"

[[vrrp]]
name = "web"
interface = "eth0"
vrid = 51
priority = $prio
advert_interval = "$INTERVAL"
virtual_ips = ["$VIP_CIDR"]

[[vrrp]]
name = "lan"
interface = "eth1"
vrid = 52
priority = $prio
advert_interval = "$INTERVAL"
virtual_ips = ["$LAN_VIP/24"]
$track

[[sync_group]]
name = "edge"
instances = ["web", "lan"]
notify = ["$WORK/group-hook.sh"]
CONF
    echo "$f"
}
start_vipd lb1 "$(lb_conf lb1 150 "track_scripts = [{ name = \"gate\", command = [\"$WORK/gate.sh\"], interval = \"200ms\", rise = 1, fall = 1, weight = 60 }]")" "$WORK/lb1.log"
start_vipd lb2 "$(lb_conf lb2 100)" "$WORK/lb2.log"

has_lan_vip() { addr_on "$1" eth1 "$LAN_VIP"; }
state_of() { ns_exec "$1" curl -s -m 1 "http://$CONTROL/status" | jq -r ".vrrp[] | select(.name == \"$2\") | .state"; }
# group_on HOST: both VIPs on HOST, neither on the other, both its instances master.
group_on() {
    local other=lb2
    [[ $1 == lb2 ]] && other=lb1
    has_vip "$1" && has_lan_vip "$1" && ! has_vip "$other" && ! has_lan_vip "$other" &&
        [[ $(state_of "$1" web) == master && $(state_of "$1" lan) == master ]]
}
where() { echo "lb1: web $(state_of lb1 web) lan $(state_of lb1 lan); lb2: web $(state_of lb2 web) lan $(state_of lb2 lan); VIPs: A $(vip_holder), B on$(has_lan_vip lb1 && echo ' lb1')$(has_lan_vip lb2 && echo ' lb2')"; }

wait_for 5000 group_on lb1 || fail "at start, the group is not on lb1: $(where)"

# ---- a fault of one member is the group's
t0=$(now_ms)
ip -n "$(ns lb1)" link set eth1 down
wait_for 3000 group_on lb2 || fail "lb1's eth1 down: the group did not move to lb2: $(where)"
fault_ms=$(($(now_ms) - t0))
[[ $(state_of lb1 web) == fault ]] || fail "lb1's web is $(state_of lb1 web), want fault with its group"
ns_exec lb1 curl -s -m 1 "http://$CONTROL/status" | jq -r '.vrrp[] | select(.name == "web") | .last_reason' |
    grep -q "sync group" || fail "lb1's web does not say the sync group put it in fault"
ip -n "$(ns lb1)" link set eth1 up
wait_for 5000 group_on lb1 || fail "lb1's eth1 up: the group did not come back to lb1: $(where)"

# ---- a member losing to a better master takes the group along
t1=$(now_ms)
touch "$WORK/gate.fail"
wait_for 3000 group_on lb2 || fail "lb1's lan at 90: the group did not move to lb2: $(where)"
lost_ms=$(($(now_ms) - t1))
sleep 1
group_on lb2 || fail "the group did not stay on lb2 while lb1's lan is at 90: $(where)"
rm -f "$WORK/gate.fail"
wait_for 5000 group_on lb1 || fail "lb1's lan back at 150: the group did not come back to lb1: $(where)"
sleep 0.5
group_on lb1 || fail "the group did not stay on lb1: $(where)"

grep -q '^GROUP edge MASTER$' "$WORK/group.log" || fail "the group hook never ran for MASTER: $(tr '\n' '|' <"$WORK/group.log")"
[[ $(ns_exec lb1 curl -s -m 1 "http://$CONTROL/status" | jq -r '.sync_groups[0].state') == MASTER ]] ||
    fail "lb1's /status does not show its sync group as MASTER"
ns_exec lb1 curl -s -m 1 "http://$CONTROL/metrics" | grep -c '^vipd_notify_runs_total{group="edge",state="MASTER",result="ok"}' ||
    fail "lb1's /metrics does not count the group's hook runs"
grep -q '^GROUP edge FAULT$' "$WORK/group.log" || fail "the group hook never ran for FAULT: $(tr '\n' '|' <"$WORK/group.log")"
pass "eth1 down on lb1: both VIPs on lb2 in ${fault_ms} ms, back after; lb1's lan lowered below lb2's: both on lb2 in ${lost_ms} ms, back after; group hooks ran"
