#!/usr/bin/env bash
# notify-hooks.sh (issue 9 §2): notify hooks on lb1, as keepalived calls them.
#
#   notify = [notify.sh]        logs "INSTANCE web STATE PRIO" (and sleeps a
#                               little, so hooks of quick changes overlap)
#   notify_backup = [hang.sh]   never returns: killed at notify_timeout (500 ms)
#   notify_master = [mark.sh, master]
#
# Checks: keepalived's arguments; the hooks of a quick series of changes
# (eth0 flapped three times) run in the order of the changes, one at a time,
# a hanging hook killed at its timeout without holding up the ones after it
# for longer; counted in vipd_notify_runs_total; STOP runs at a planned stop.
source "$(dirname "$0")/lib.sh"
need_root
need_vipd

INTERVAL=100ms
topo_up lb1 lb2 client
cat >"$WORK/notify.sh" <<EOF
#!/bin/sh
echo "\$*" >>"$WORK/notify.log"
sleep 0.05
EOF
cat >"$WORK/hang.sh" <<EOF
#!/bin/sh
echo \$\$ >>"$WORK/hang.pids"
exec sleep 30
EOF
cat >"$WORK/mark.sh" <<EOF
#!/bin/sh
echo "mark \$1" >>"$WORK/notify.log"
EOF
chmod 755 "$WORK/notify.sh" "$WORK/hang.sh" "$WORK/mark.sh"
conf=$(vipd_conf lb1 150 $INTERVAL 3 true)
cat >>"$conf" <<EOF
notify = ["$WORK/notify.sh"]
notify_backup = ["$WORK/hang.sh"]
notify_master = ["$WORK/mark.sh", "master"]
notify_timeout = "500ms"
EOF
start_vipd lb1 "$conf" "$WORK/lb1.log"
start_node vipd lb2 100 $INTERVAL 3 true
wait_pair_settled lb1 lb2 5000
sleep 1.5

# A quick series of changes: eth0 down and up three times.
for ((i = 0; i < 3; i++)); do
    ip -n "$(ns lb1)" link set eth0 down
    sleep 0.15
    ip -n "$(ns lb1)" link set eth0 up
    sleep 0.15
done
wait_for 5000 pair_settled lb1 lb2 || fail "after the flaps: lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on $(vip_holder)"
# Every queued hook has run once notify.log has a line per change so far.
changes() { grep 'state change from=' "$WORK/lb1.log" | grep -vc ' to=init '; }
calls() { grep -c '^INSTANCE' "$WORK/notify.log" 2>/dev/null || echo 0; }
all_called() { [[ $(calls) == "$(changes)" ]]; }
wait_for 8000 all_called || fail "$(calls) notify calls for $(changes) state changes"
timeouts=$(ns_exec lb1 curl -s -m 1 "http://$CONTROL/metrics" |
    awk '/^vipd_notify_runs_total\{instance="web",state="BACKUP",result="timeout"\}/ { print $2 }')
[[ $timeouts == $(grep -c 'INSTANCE web BACKUP' "$WORK/notify.log") ]] ||
    fail "vipd_notify_runs_total has ${timeouts:-no} BACKUP timeouts for $(grep -c 'INSTANCE web BACKUP' "$WORK/notify.log") BACKUP changes"
term_node lb1 || fail "lb1 did not stop cleanly"

# What vipd says changed, in order, as hook words (the Init of a restart
# runs no hook; Init at the stop is STOP).
want=$(grep -o 'state change from=[a-z]* to=[a-z]* reason=[a-z]*' "$WORK/lb1.log" |
    awk '{ split($4, t, "="); split($5, r, "="); s = toupper(t[2]);
           if (s == "INIT") { if (r[2] ~ /^shutdown/) print "STOP" } else print s }' | tr '\n' ' ')
got=$(grep '^INSTANCE' "$WORK/notify.log" | awk '{ print $3 }' | tr '\n' ' ')
[[ -n $want && $got == "$want" ]] || fail "hooks ran for \"$got\", the state changes were \"$want\""
first=$(grep -m1 '^INSTANCE' "$WORK/notify.log")
[[ $first == "INSTANCE web BACKUP 150" ]] || fail "first notify call was \"$first\", want keepalived's \"INSTANCE web BACKUP 150\""
# The state's own hook runs before notify.
grep -B0 -A1 '^mark master' "$WORK/notify.log" | grep -q '^INSTANCE web MASTER 150' ||
    fail "notify_master did not run just before notify for MASTER: $(tr '\n' '|' <"$WORK/notify.log")"
backups=$(grep -c 'INSTANCE web BACKUP' "$WORK/notify.log")
hung=$(wc -l <"$WORK/hang.pids")
((hung == backups)) || fail "notify_backup ran $hung times for $backups BACKUP changes"
left=0
while read -r pid; do
    if pid_alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == sleep ]]; then left=$((left + 1)); fi
done <"$WORK/hang.pids"
((left == 0)) || fail "$left hanging notify_backup run(s) outlived their timeout"
grep -q 'notify hook killed at its timeout' "$WORK/lb1.log" || fail "lb1 did not log the killed hook"
pass "hooks for \"$got\" in order with keepalived's arguments; $hung hanging notify_backup runs killed at 500 ms; STOP ran at the planned stop"
