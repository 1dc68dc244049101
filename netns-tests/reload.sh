#!/usr/bin/env bash
# reload.sh: live reload of VRRP and HTTP settings under HTTP traffic
# through the VIP (a new connection every 20 ms, and a keep-alive client at
# 50 requests/s; lb1 150 and lb2 100 at 100 ms adverts; backends app1 and
# app2, health checks every 500 ms):
#   1. `vipd reload` on lb1 after its file changed the priority (150 -> 140,
#      not crossing lb2's), added a VIP (192.0.2.20), and changed the
#      backends: app1 reweighted to 3, app2 removed, app3 added; SIGHUP on
#      lb2 after the same changes to its file: both taken (generation 2 in
#      /status), lb1 at 140 and master, the new VIP on lb1 and announced
#      (the client reaches it), app3 serving within one health interval of
#      the reload, app2 getting no new request, app1 and app3 sharing about
#      3:1, app1 keeping its request count;
#   2. a listener added on port 8081 serves at once; removed, it refuses;
#   3. an instance (VRID 52, on a virtual MAC: a driver of its own) added
#      on both nodes: lb1 master of it, lb2 backup; removed from lb1: lb1
#      resigns, lb2 takes its VIP over, then lb1's macvlan goes; removed
#      from lb2: its macvlan goes; one more (VRID 53, tracking web's
#      backends) added on lb1 only, beside web: master alone, its tracker
#      in /status, its VIP claimed, released on removal;
#   4. a bad file (priority = 300) is refused with its file:line:col, shown
#      in /status and /metrics, and nothing changes; so is a change a reload
#      cannot take (the VRID);
#   5. no request of either loop failed, the keep-alive client kept its
#      connection, no transition on either node, and lb1's longest advert
#      gap (from a capture) at most 1.5 intervals.
NT_DIR0=$(cd "$(dirname "$0")" && pwd)
source "$NT_DIR0/lib.sh"
source "$NT_DIR0/lib-http.sh"
LB_EXTRA_HOSTS=app3
need_lb_pair
ensure_pkg tcpdump tcpdump

INTERVAL=100ms
VIP2=192.0.2.20
VIP3=192.0.2.30
VIP4=192.0.2.31
reload_ctl() { "$VIPD" reload --socket "$WORK/$1.sock"; }

start_lb_pair $INTERVAL
app_server app3
nginx_ready app3 "$STARTED_PID" "http://${HOST_IP[app3]}:$APP_PORT/healthz" 5000 || fail "app3: $WHY"
tr1=$(node_transitions lb1); tr2=$(node_transitions lb2)
start_vip_traffic reload 10000

# 1. Priority, a VIP and the backends, by the control socket on lb1 and
#    SIGHUP on lb2.
app1="${HOST_IP[app1]}:$APP_PORT" app3="${HOST_IP[app3]}:$APP_PORT"
new_backends="backends = [{ address = \"$app1\", weight = 3 }, \"$app3\"]"
for h in lb1 lb2; do
    sed -i -e "s|^virtual_ips = \\[\"$VIP_CIDR\"\\]|virtual_ips = [\"$VIP_CIDR\", \"$VIP2/24\"]|" \
        -e "s|^backends = .*|$new_backends|" "$WORK/$h.toml"
done
sed -i -e 's/^priority = 150$/priority = 140/' "$WORK/lb1.toml"
grep -q "$VIP2" "$WORK/lb1.toml" && grep -qF "$app3" "$WORK/lb1.toml" || fail "the test did not edit lb1's file"
app1_before=$(vipd_json lb1 | jq -r --arg a "$app1" '.http[0].backends[] | select(.address == $a) | .requests')
t_reload=$(now_ms)
answer=$(reload_ctl lb1) || fail "lb1's reload was refused: $answer"
t_reloaded=$(now_ms)
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
backends=$(vipd_json lb1 | jq -c '[.http[0].backends[] | [.address, .weight, .healthy]]')
[[ $backends == "[[\"$app1\",3,true],[\"$app3\",1,true]]" ]] || fail "lb1's backends after the reload: $backends"
app1_after=$(vipd_json lb1 | jq -r --arg a "$app1" '.http[0].backends[] | select(.address == $a) | .requests')
((app1_after >= app1_before && app1_before > 0)) || fail "app1's request count went from $app1_before to $app1_after"
[[ $(vipd_json lb2 | jq -c '[.http[0].backends[].address]') == "[\"$app1\",\"$app3\"]" ]] || fail "lb2 did not take the backends"
# app3's first request, measured from when the reload was asked.
sleep 1
first3=$(awk -v lb="${HOST_IP[lb1]}" '$2 == lb { printf "%.0f", $1 * 1000; exit }' "$WORK/app3.access")
[[ -n $first3 ]] || fail "app3 got no request after the reload"
serving_ms=$((first3 - t_reload))
((serving_ms <= 500)) || fail "app3 served its first request $serving_ms ms after the reload (health interval 500 ms)"
late2=$(awk -v t="$((t_reloaded + 100))" '$1 * 1000 > t' "$WORK/app2.access" | wc -l)
((late2 == 0)) || fail "app2 got $late2 requests after it was removed"
share=$(awk -v t="$t_reloaded" '$1 * 1000 > t { n[FILENAME]++ } END { printf "%.2f", n[ARGV[1]] / (n[ARGV[2]] ? n[ARGV[2]] : 1) }' \
    "$WORK/app1.access" "$WORK/app3.access")
awk -v s="$share" 'BEGIN { exit !(s >= 2 && s <= 4.5) }' || fail "app1:app3 after the reweight is $share:1 (weights 3:1)"
log "app3 served $serving_ms ms after the reload; app1:app3 = $share:1; app2 got nothing new"

# 2. A listener added, then removed.
cp "$WORK/lb1.toml" "$WORK/lb1.one"
vipd_http_section api "$ANY_ADDR:8081" round_robin 500ms 1s "$app3" >>"$WORK/lb1.toml"
answer=$(reload_ctl lb1) || fail "adding a listener was refused: $answer"
log "lb1: $answer"
[[ $(http_code client "http://$VIP_URL:8081/") == 200 ]] || fail "the added listener does not serve"
cp "$WORK/lb1.one" "$WORK/lb1.toml"
answer=$(reload_ctl lb1) || fail "removing a listener was refused: $answer"
log "lb1: $answer"
wait_for 3000 bash -c "[[ \$(ip netns exec $(ns client) curl -s -m 1 -o /dev/null -w '%{http_code}' http://$VIP_URL:8081/) == 000 ]]" ||
    fail "the removed listener still answers"

# 3. An instance added on both nodes, then removed from lb1 (lb2 takes its
#    VIP over, make-before-break) and from lb2.
api_section() {
    printf '\n[[vrrp]]\nname = "api"\ninterface = "eth0"\nvrid = 52\npriority = %s\nadvert_interval = "100ms"\nvirtual_ips = ["%s/24"]\nuse_vmac = true\n' "$1" "$VIP3"
}
api_state() { vipd_json "$1" | jq -r '.vrrp[] | select(.name == "api") | .state'; }
api_is() { [[ $(api_state "$1") == "$2" ]]; }
for h in lb1 lb2; do cp "$WORK/$h.toml" "$WORK/$h.without-api"; done
api_section 150 >>"$WORK/lb1.toml"
# and one on lb1 only, beside web (the same driver), tracking web's
# backends: master alone.
printf '\n[[vrrp]]\nname = "cache"\ninterface = "eth0"\nvrid = 53\npriority = 120\nadvert_interval = "100ms"\nvirtual_ips = ["%s/24"]\ntrack_http = [{ listener = "web", weight = 20 }]\n' "$VIP4" >>"$WORK/lb1.toml"
api_section 100 >>"$WORK/lb2.toml"
for h in lb1 lb2; do
    answer=$(reload_ctl $h) || fail "$h: adding an instance was refused: $answer"
    log "$h: $answer"
done
wait_for 3000 api_is lb1 master || fail "the added instance on lb1 is $(api_state lb1)"
api_is lb2 backup || fail "the added instance on lb2 is $(api_state lb2)"
wait_for 1000 addr_on lb1 vrrp.52 "$VIP3" || fail "lb1 did not claim $VIP3 on its virtual MAC interface"
wait_for 2000 addr_on lb1 eth0 "$VIP4" || fail "lb1 did not claim $VIP4 for the added instance cache"
cache=$(vipd_json lb1 | jq -c '.vrrp[] | select(.name == "cache") | [.effective_priority, .trackers[0].kind, .trackers[0].failing]')
[[ $cache == '[120,"http",false]' ]] || fail "the added instance's tracker: $cache"
cp "$WORK/lb1.without-api" "$WORK/lb1.toml"
answer=$(reload_ctl lb1) || fail "removing an instance was refused: $answer"
log "lb1: $answer"
[[ $answer == *"api: removed: priority 0 sent"* ]] || fail "lb1 did not resign api: $answer"
wait_for 1000 api_is lb2 master || fail "lb2 did not take api over: $(api_state lb2)"
wait_for 1000 addr_on lb2 vrrp.52 "$VIP3" || fail "lb2 did not claim $VIP3"
# With its last instance gone, lb1's driver for the virtual MAC stops and
# removes the macvlan (and the VIP with it).
wait_for 2000 bash -c "! ip -n $(ns lb1) link show vrrp.52 >/dev/null 2>&1" || fail "lb1 kept vrrp.52"
wait_for 3000 bash -c "! ip -n $(ns lb1) -o addr show dev eth0 | grep -qF ' $VIP4/'" || fail "lb1 kept $VIP4 of the removed instance cache"
[[ $(vipd_json lb1 | jq -c '[.vrrp[].name]') == '["web"]' ]] || fail "lb1 still lists: $(vipd_json lb1 | jq -c '[.vrrp[].name]')"
cp "$WORK/lb2.without-api" "$WORK/lb2.toml"
answer=$(reload_ctl lb2) || fail "removing the instance from lb2 was refused: $answer"
wait_for 4000 bash -c "! ip -n $(ns lb2) link show vrrp.52 >/dev/null 2>&1" || fail "lb2 kept vrrp.52 after its instance was removed"

# 4. Refusals change nothing.
cp "$WORK/lb1.toml" "$WORK/lb1.good"
sed -i 's/^priority = 140$/priority = 300/' "$WORK/lb1.toml"
if out=$(reload_ctl lb1 2>&1); then fail "a bad file was taken: $out"; fi
[[ $out == *"lb1.toml:"*":"*"vrrp.priority = 300"* ]] || fail "the refusal does not name the place: $out"
[[ $(vipd_json lb1 | jq -r '.config.last_reload.ok') == false ]] || fail "/status does not show the refused reload"
ns_exec lb1 curl -s -m 1 "http://$CONTROL/metrics" | grep -x 'vipd_config_last_reload_successful 0' >/dev/null ||
    fail "/metrics does not show the refused reload"
cp "$WORK/lb1.good" "$WORK/lb1.toml"
sed -i "s/^vrid = $VRID$/vrid = 52/" "$WORK/lb1.toml"
if out=$(reload_ctl lb1 2>&1); then fail "a VRID change was taken: $out"; fi
[[ $out == *"vrid changed"* ]] || fail "unclear refusal: $out"
[[ $(vipd_field lb1 .effective_priority) == 140 && $(vipd_field lb1 .vrid) == "$VRID" ]] || fail "a refused reload changed something"
[[ $(vipd_json lb1 | jq -r '.http[0].generation') == 1 ]] || fail "a refused reload changed the backends"
cp "$WORK/lb1.good" "$WORK/lb1.toml"

finish_vip_traffic reload 10000 "the reloads"
((ka_connects <= 2)) || fail "the keep-alive client needed $ka_connects connections (the reloads closed its connection)"
[[ $(node_transitions lb1) == "$tr1" && $(node_transitions lb2) == "$tr2" ]] ||
    fail "transitions: lb1 $tr1 -> $(node_transitions lb1), lb2 $tr2 -> $(node_transitions lb2)"
pass "reload by the control socket and by SIGHUP: priority 150 -> 140, a second VIP, backends added/removed/reweighted (app3 serving after $serving_ms ms, app1:app3 $share:1) a listener added and removed, an instance added on both and removed, all in place: 0 transitions, longest advert gap $GAP ms, no priority 0; a bad file and a VRID change refused with the reason, nothing changed; 0/$total new-connection and 0/$ka_total keep-alive requests failed ($ka_connects connection)"
