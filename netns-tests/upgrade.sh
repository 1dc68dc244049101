#!/usr/bin/env bash
# upgrade.sh: `vipd upgrade` of the master under HTTP traffic through the VIP
# (a new connection every 20 ms and a keep-alive client at 50 requests/s;
# lb1 150 and lb2 100 at 100 ms adverts):
#   1. an upgrade whose new process cannot start (its file was made invalid)
#      is refused with the reason, and the old process carries on: same
#      PID, still master, nothing lost;
#   2. `vipd upgrade` on lb1 (the same binary): a new PID answers /status,
#      lb1 stays master (its state taken over, not re-elected), the old PID
#      exits after its drain, SIGUSR2 on the new one upgrades again;
#   3. no request of either loop failed, no transition on lb2, lb1's longest
#      advert gap (from a capture) at most 1.5 intervals and no priority 0.
NT_DIR0=$(cd "$(dirname "$0")" && pwd)
source "$NT_DIR0/lib.sh"
source "$NT_DIR0/lib-http.sh"
need_lb_pair
ensure_pkg tcpdump tcpdump

INTERVAL=100ms
upgrade_ctl() { "$VIPD" upgrade --socket "$WORK/$1.sock"; }
# new_pid ANSWER: the successor's PID from upgrade's answer.
new_pid() { sed -n 's/^upgraded: pid \([0-9]*\) took over.*/\1/p' <<<"$1"; }

start_lb_pair $INTERVAL
tr2=$(node_transitions lb2)
start_vip_traffic upgrade 7000

# 1. The new process fails: the old one carries on.
old=${NODE_PID[lb1]}
cp "$WORK/lb1.toml" "$WORK/lb1.good"
sed -i 's/^priority = 150$/priority = 300/' "$WORK/lb1.toml"
if out=$(upgrade_ctl lb1 2>&1); then fail "an upgrade to a process that cannot start was taken: $out"; fi
[[ $out == *"exited before it was ready"* ]] || fail "unclear refusal: $out"
log "refused as it should be: $out"
cp "$WORK/lb1.good" "$WORK/lb1.toml"
pid_alive "$old" || fail "the old process died with the failed upgrade"
[[ $(vipd_state lb1) == master ]] || fail "lb1 is $(vipd_state lb1) after the failed upgrade"

# 2. The upgrade, by the control socket, then by SIGUSR2 on the new process.
answer=$(upgrade_ctl lb1) || fail "the upgrade was refused: $answer"
log "lb1: $answer"
new=$(new_pid "$answer")
[[ -n $new && $new != "$old" ]] || fail "no new PID in the answer: $answer"
NODE_PID[lb1]=$new
EXTRA_PIDS+=("$new")
wait_for 8000 pid_gone "$old" || fail "the old process $old still runs 8 s after the upgrade"
wait "$old" 2>/dev/null || true
pid_alive "$new" || fail "the new process $new is gone"
[[ $(vipd_state lb1) == master ]] || fail "lb1 is $(vipd_state lb1) after the upgrade"
reason=$(vipd_field lb1 .last_reason)
[[ $reason == *"taken over from the process"* ]] || fail "lb1's state was not taken over: $reason"
kill -USR2 "$new"
wait_for 8000 pid_gone "$new" || fail "SIGUSR2 did not upgrade pid $new"
third=$(sed -n 's/.*upgraded: pid \([0-9]*\) took over.*/\1/p' "$WORK/lb1.log" | tail -n 1)
[[ -n $third && $third != "$new" ]] && pid_alive "$third" || fail "no process took over from $new"
NODE_PID[lb1]=$third
EXTRA_PIDS+=("$third")
[[ $(vipd_state lb1) == master ]] || fail "lb1 is $(vipd_state lb1) after the second upgrade"

finish_vip_traffic upgrade 7000 "the upgrades"
[[ $(node_transitions lb2) == "$tr2" ]] || fail "lb2's transitions: $tr2 -> $(node_transitions lb2)"
log "lb1 log:"; grep -v " access: " "$WORK/lb1.log" | grep -E "upgrade|took over|handed|taking over|WARN|ERROR" | sed "s/^/    /" | head -40
pass "upgrade of the master twice (control socket, SIGUSR2) under traffic: pids $old -> $new -> $third, still master (state taken over), 0 transitions on lb2, longest advert gap $GAP ms, no priority 0; a new process that cannot start refused, the old one carried on; 0/$total new-connection and 0/$ka_total keep-alive requests failed ($ka_connects connections)"
