#!/usr/bin/env bash
# operator.sh: the operator's commands over the control socket, under HTTP
# traffic through the VIP (one new connection every 20 ms, as in
# http-failover.sh; lb1 150 and lb2 100, both vipd with [[http]] over app1
# and app2):
#   1. `vipd vrrp step-down web` on lb1: lb2 takes over, 0 failed requests,
#      lb1 exits nothing and stays backup (no preemption) for 1.5 s; the
#      status says stepped_down; `vipd vrrp resume web`: lb1 preempts back;
#   2. `vipd vrrp priority web 90` on lb1: effective priority 90 in /status,
#      lb2 (100) preempts; `... reset`: lb1 back to 150 and master again;
#   3. `vipd backend drain web app1`: app1 gets no new request while the
#      traffic goes on (all of it to app2, none failed), /status says
#      draining; `enable`: app1 serves again;
#   4. a bad command is refused with a reason and changes nothing; the
#      socket is mode 0600.
NT_DIR0=$(cd "$(dirname "$0")" && pwd)
source "$NT_DIR0/lib.sh"
source "$NT_DIR0/lib-http.sh"
need_lb_pair

INTERVAL=100ms
PERIOD_MS=20
URL="http://$VIP_URL:$APP_PORT/"
ctl() { local h=$1; shift; "$VIPD" "$@" --socket "$WORK/$h.sock"; }
vrrp_ctl() { local h=$1; shift; "$VIPD" vrrp "$@" --socket "$WORK/$h.sock"; }
# run_loop TAG MS: the client loop for MS ms; sets OUT and CPID.
run_loop() {
    OUT="$WORK/$1.client"
    start_client_loop client "$URL" "$1" "$2" "$PERIOD_MS" 1 "$OUT"
    CPID=$CLIENT_PID
}
# finish_loop TAG MS: waits for it; fails on any failed request.
finish_loop() {
    wait_client_loop "$CPID" "$2" 1
    eval "$(loop_stats "$OUT" 0)"
    ((failed == 0)) || fail "$1: $failed of $total requests failed (see $OUT)"
    ((total >= $2 / PERIOD_MS / 3)) || fail "$1: only $total requests in $2 ms"
    echo "$total"
}

start_lb_pair $INTERVAL
[[ $(stat -c %a "$WORK/lb1.sock") == 600 ]] || fail "the control socket is mode $(stat -c %a "$WORK/lb1.sock"), want 600"

# 1. Step-down and resume.
run_loop stepdown 3500
sleep 0.5
answer=$(vrrp_ctl lb1 step-down web) || fail "step-down refused: $answer"
log "step-down: $answer"
wait_for 2000 pair_settled lb2 lb1 || fail "after the step-down: lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on $(vip_holder)"
sleep 1.5
pair_settled lb2 lb1 || fail "lb1 preempted while stepped down: lb1=$(node_state lb1) lb2=$(node_state lb2)"
[[ $(vipd_field lb1 .stepped_down) == true ]] || fail "lb1's /status does not say stepped_down"
n1=$(finish_loop step-down 3500)
run_loop resume 2000
vrrp_ctl lb1 resume web >/dev/null || fail "resume refused"
wait_for 2000 pair_settled lb1 lb2 || fail "after resume lb1 did not preempt: lb1=$(node_state lb1) lb2=$(node_state lb2)"
n2=$(finish_loop resume 2000)

# 2. Priority override.
vrrp_ctl lb1 priority web 90 >/dev/null || fail "priority override refused"
[[ $(vipd_field lb1 .effective_priority) == 90 && $(vipd_field lb1 .priority_override) == 90 ]] ||
    fail "lb1's status: effective $(vipd_field lb1 .effective_priority), override $(vipd_field lb1 .priority_override)"
wait_for 2000 pair_settled lb2 lb1 || fail "lb2 (100) did not preempt lb1 at 90"
vrrp_ctl lb1 priority web reset >/dev/null || fail "priority reset refused"
wait_for 2000 pair_settled lb1 lb2 || fail "lb1 did not take back after the reset"
[[ $(vipd_field lb1 .priority_override) == null ]] || fail "override still shown after reset"

# 3. Backend drain and enable.
app1_reqs() { awk -v ip="${HOST_IP[lb1]}" '$2 == ip' "$WORK/app1.access" 2>/dev/null | wc -l; }
run_loop drain 2500
sleep 0.3
ctl lb1 backend drain web "${HOST_IP[app1]}:$APP_PORT" >/dev/null || fail "drain refused"
sleep 0.2                       # requests already on app1 finish
before=$(app1_reqs)
[[ $(vipd_json lb1 | jq -r '.http[0].backends[0].admin') == draining ]] || fail "status does not say draining"
sleep 1.5
after=$(app1_reqs)
((after == before)) || fail "app1 got $((after - before)) new requests while drained"
ctl lb1 backend enable web "${HOST_IP[app1]}:$APP_PORT" >/dev/null || fail "enable refused"
n3=$(finish_loop drain 2500)
sleep 0.3
wait_for 2000 bash -c "(( \$(awk -v ip=${HOST_IP[lb1]} '\$2 == ip' $WORK/app1.access | wc -l) > $after ))" ||
    fail "app1 serves nothing after enable"

# 4. Refused commands.
if out=$(vrrp_ctl lb1 step-down nosuch 2>&1); then fail "a step-down of an unknown instance was accepted: $out"; fi
[[ $out == *'no vrrp instance "nosuch"'* ]] || fail "unclear refusal: $out"
if out=$(ctl lb1 backend drain web 192.0.2.99:1 2>&1); then fail "draining an unknown backend was accepted"; fi
pair_settled lb1 lb2 || fail "a refused command moved something"
grep -q "control command: .*stepping down" "$WORK/lb1.log" || fail "lb1 did not log the step-down with its peer"

pass "step-down: 0/$n1 failed, lb1 held backup until resume (0/$n2 failed); priority 90 moved the VIP to lb2 and reset back; drain: app1 got nothing new for 1.5 s, 0/$n3 failed; bad commands refused with a reason; socket mode 0600"
