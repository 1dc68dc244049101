#!/usr/bin/env bash
# reload.sh: live reload of VRRP settings under HTTP traffic through the VIP
# (a new connection every 20 ms; lb1 150 and lb2 100 at 100 ms adverts):
#   1. `vipd reload` on lb1 after its file changed the priority (150 -> 140,
#      not crossing lb2's) and added a VIP (192.0.2.20); SIGHUP on lb2
#      after the same VIP was added to its file: both taken (generation 2 in
#      /status), lb1 at 140 and master, the new VIP on lb1 and announced
#      (the client reaches it), no transition on either node, and lb1's
#      longest advert gap (from a capture) at most 1.5 intervals;
#   2. a bad file (priority = 300) is refused with its file:line:col, shown
#      in /status and /metrics, and nothing changes; so is a change a reload
#      cannot take (the VRID);
#   3. no request of the loop failed.
NT_DIR0=$(cd "$(dirname "$0")" && pwd)
source "$NT_DIR0/lib.sh"
source "$NT_DIR0/lib-http.sh"
need_lb_pair
ensure_pkg tcpdump tcpdump

INTERVAL=100ms
URL="http://$VIP_URL:$APP_PORT/"
VIP2=192.0.2.20
reload_ctl() { "$VIPD" reload --socket "$WORK/$1.sock"; }

start_lb_pair $INTERVAL
tr1=$(node_transitions lb1); tr2=$(node_transitions lb2)
start_capture client "$WORK/reload.pcap" "ip proto 112"
cap=$CAPTURE_PID
OUT="$WORK/reload.client"
start_client_loop client "$URL" reload 4000 20 1 "$OUT"
cpid=$CLIENT_PID
sleep 0.5

# 1. Priority and a VIP, by the control socket on lb1 and SIGHUP on lb2.
sed -i -e 's/^priority = 150$/priority = 140/' -e "s|^virtual_ips = \\[\"$VIP_CIDR\"\\]|virtual_ips = [\"$VIP_CIDR\", \"$VIP2/24\"]|" "$WORK/lb1.toml"
sed -i -e "s|^virtual_ips = \\[\"$VIP_CIDR\"\\]|virtual_ips = [\"$VIP_CIDR\", \"$VIP2/24\"]|" "$WORK/lb2.toml"
grep -q "$VIP2" "$WORK/lb1.toml" || fail "the test did not edit lb1's file"
answer=$(reload_ctl lb1) || fail "lb1's reload was refused: $answer"
log "lb1: $answer"
kill -HUP "${NODE_PID[lb2]}"
two() { [[ $(vipd_json "$1" | jq -r '.config.generation') == 2 ]]; }
wait_for 2000 two lb2 || fail "lb2 did not take its SIGHUP reload: $(vipd_json lb2 | jq -c .config)"
two lb1 || fail "lb1's generation is $(vipd_json lb1 | jq -r .config.generation)"
[[ $(vipd_field lb1 .effective_priority) == 140 && $(vipd_field lb1 .priority) == 140 ]] ||
    fail "lb1's priority: configured $(vipd_field lb1 .priority), effective $(vipd_field lb1 .effective_priority)"
wait_for 1000 addr_on lb1 eth0 "$VIP2" || fail "lb1 did not claim $VIP2"
addr_on lb2 eth0 "$VIP2" && fail "backup lb2 holds $VIP2"
wait_for 2000 bash -c "ip netns exec $(ns client) ping -c 1 -W 1 $VIP2 >/dev/null" || fail "the client cannot reach $VIP2"

# 2. Refusals change nothing.
cp "$WORK/lb1.toml" "$WORK/lb1.good"
sed -i 's/^priority = 140$/priority = 300/' "$WORK/lb1.toml"
if out=$(reload_ctl lb1 2>&1); then fail "a bad file was taken: $out"; fi
[[ $out == *"lb1.toml:"*":"*"vrrp.priority = 300"* ]] || fail "the refusal does not name the place: $out"
[[ $(vipd_json lb1 | jq -r '.config.last_reload.ok') == false ]] || fail "/status does not show the refused reload"
ns_exec lb1 curl -s -m 1 "http://$CONTROL/metrics" | grep -x 'vipd_config_last_reload_successful{} 0' >/dev/null ||
    fail "/metrics does not show the refused reload"
cp "$WORK/lb1.good" "$WORK/lb1.toml"
sed -i "s/^vrid = $VRID$/vrid = 52/" "$WORK/lb1.toml"
if out=$(reload_ctl lb1 2>&1); then fail "a VRID change was taken: $out"; fi
[[ $out == *"vrid changed"* ]] || fail "unclear refusal: $out"
[[ $(vipd_field lb1 .effective_priority) == 140 && $(vipd_field lb1 .vrid) == "$VRID" ]] || fail "a refused reload changed something"
cp "$WORK/lb1.good" "$WORK/lb1.toml"

wait_client_loop "$cpid" 4000 1
stop_capture "$cap"
eval "$(loop_stats "$OUT" 0)"
((failed == 0)) || fail "$failed of $total requests failed during the reloads (see $OUT)"
[[ $(node_transitions lb1) == "$tr1" && $(node_transitions lb2) == "$tr2" ]] ||
    fail "transitions: lb1 $tr1 -> $(node_transitions lb1), lb2 $tr2 -> $(node_transitions lb2)"
gap=$(read_capture "$WORK/reload.pcap" | awk -v a="${HOST_IP[lb1]}" 'index($0, " " a " > 224.0.0.18: VRRP") { t = $1 * 1000; if (p && t - p > g) g = t - p; p = t } END { printf "%.1f", g }')
awk -v g="$gap" 'BEGIN { exit !(g > 0 && g <= 150) }' || fail "lb1's longest advert gap was $gap ms (limit 150)"
pass "reload by the control socket and by SIGHUP: priority 150 -> 140 and a second VIP taken in place, 0 transitions, longest advert gap $gap ms; a bad file and a VRID change refused with the reason, nothing changed; 0/$total requests failed"
