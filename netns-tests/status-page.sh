#!/usr/bin/env bash
# status-page.sh: the control endpoint's `/` page, in a real browser.
#
#   lb1 (vipd, prio 150)  lb2 (vipd, prio 100): [[vrrp]] "web" at 100 ms and
#       [[http]] "web" -> app1, app2 (nginx); the control endpoint on
#       0.0.0.0:9090 of each, so the operator's browser reaches both
#   client: headless Chromium (Debian's chromium, installed when missing),
#       driven by browser.py over the DevTools pipe, one tab per node
#
# Checks, on the page's DOM (what an operator sees):
#   1. lb1's page shows web master with master 192.0.2.11; lb2's shows
#      backup with the same master; both list app1 and app2 healthy; lb1's
#      counts the requests the client sends through the VIP meanwhile and
#      shows a request rate.
#   2. kill -9 of lb1: lb2's page shows master within 2 s of lb2's own
#      backup -> master transition (its /status `at`), lists that
#      transition, and was never reloaded (a marker set in the window
#      survives); lb1's page says its node is not answering.
# Screenshots of both tabs before and after go to $ARTEFACTS
# (default target/netns-artefacts/), kept after the run.
NT_DIR0=$(cd "$(dirname "$0")" && pwd)
source "$NT_DIR0/lib.sh"
source "$NT_DIR0/lib-http.sh"
need_root
need_vipd
ensure_pkg_nosvc nginx nginx
ensure_pkg chromium chromium
ensure_pkg python3 python3

INTERVAL=100ms
PAGE_LAG_LIMIT_MS=2000
artefacts_dir
PAGE_PORT=9090

topo_up lb1 lb2 app1 app2 client
start_app_servers
for h in lb1 lb2; do
    prio=150
    [[ $h == lb2 ]] && prio=100
    conf=$(vipd_lb_conf "$h" "$prio" "$INTERVAL")
    # The [control] listener on every address, for the client's browser;
    # vipd_json still asks 127.0.0.1.
    grep -qx "listen = \"$CONTROL\"" "$conf" || fail "no [control] listen line in $conf"
    sed -i "s|^listen = \"$CONTROL\"\$|listen = \"0.0.0.0:$PAGE_PORT\"|" "$conf"
    start_vipd "$h" "$conf" "$WORK/$h.log"
done
wait_pair_settled lb1 lb2 5000
for h in lb1 lb2; do wait_for 10000 vipd_backends_healthy "$h" || fail "$h: backends not healthy"; done

# The client's traffic through the VIP, sent while the pages are open (so
# that a refresh sees a rate): curl fails the step on any error.
sent=20
traffic="for i in \$(seq $sent); do curl -fsS -m 1 -o /dev/null http://$VIP_URL:$APP_PORT/ || exit 1; done"

# DOM checks, as JavaScript expressions evaluated in a tab.
row='document.querySelector(`#vrrp tr[data-instance="web"]`)'
state_is() { echo "$row?.dataset.state === '$1'"; }
master_is() { echo "$row?.querySelector('td[data-master]')?.dataset.master === '$1'"; }
backends_up="['${HOST_IP[app1]}:$APP_PORT', '${HOST_IP[app2]}:$APP_PORT'].every(a => document.querySelector(\`#http tr[data-backend=\"\${a}\"]\`)?.dataset.health === 'up')"
backend_rows="[...document.querySelectorAll('#http tr[data-backend]')]"
requests_at_least="$backend_rows.reduce((s, r) => s + Number(r.cells[6].textContent), 0) >= $sent"
some_rate="$backend_rows.some(r => Number(r.cells[5].textContent) > 0)"
shown_master_transition="document.querySelector('#transitions tr[data-instance=\"web\"][data-to=\"master\"]') !== null"

lb1_url="http://${HOST_IP[lb1]}:$PAGE_PORT/"
lb2_url="http://${HOST_IP[lb2]}:$PAGE_PORT/"
out="$WORK/browser.out"
rc=0
ns_exec client python3 "$NT_DIR0/browser.py" "$(command -v chromium)" "$WORK" \
    "open:lb1:$lb1_url" "open:lb2:$lb2_url" \
    "wait:lb1:10000:$(state_is master) && $(master_is "${HOST_IP[lb1]}") && $backends_up" \
    "run:$traffic" "wait:lb1:5000:$requests_at_least && $some_rate" \
    "wait:lb2:10000:$(state_is backup) && $(master_is "${HOST_IP[lb1]}") && $backends_up" \
    "wait:lb2:1000:(window.vipdMarker = 'no reload') !== undefined" \
    "shot:lb1:$ARTEFACTS/status-page-lb1-master.png" "shot:lb2:$ARTEFACTS/status-page-lb2-backup.png" \
    "run:kill -KILL ${NODE_PID[lb1]}" \
    "wait:lb2:10000:$(state_is master) && $(master_is "${HOST_IP[lb2]}") && $backends_up && $shown_master_transition && window.vipdMarker === 'no reload'" \
    "wait:lb1:5000:document.body.dataset.stale === 'true'" \
    "shot:lb2:$ARTEFACTS/status-page-lb2-master.png" "shot:lb1:$ARTEFACTS/status-page-lb1-gone.png" \
    "text:lb2" >"$out" 2>&1 || rc=$?
cat "$out" >&2
reap_node lb1 2000 || true
((rc == 0)) || fail "the page did not show what it should (browser.py exit $rc; chromium log $WORK/chromium.log)"

# How long after lb2 became master its page showed it.
shown_at=$(awk '/^wait lb2 ok/ { n++; if (n == 3) { sub("at=", "", $4); print $4 } }' "$out")
after_kill_ms=$(awk '/^wait lb2 ok/ { n++; if (n == 3) { sub("after_run_ms=", "", $5); print $5 } }' "$out")
became_at=$(vipd_json lb2 | jq -r '[.vrrp[0].recent_transitions[] | select(.to == "master")] | last | .at')
[[ -n $shown_at && -n $became_at && $became_at != null ]] || fail "cannot tell when lb2 became master ($became_at) or its page showed it ($shown_at)"
lag_ms=$(awk -v s="$shown_at" -v b="$became_at" 'BEGIN { printf "%d", (s - b) * 1000 }')
((lag_ms <= PAGE_LAG_LIMIT_MS)) || fail "lb2's page showed master $lag_ms ms after lb2 became master (limit $PAGE_LAG_LIMIT_MS)"
for f in lb1-master lb2-backup lb2-master lb1-gone; do
    [[ -s $ARTEFACTS/status-page-$f.png ]] || fail "no screenshot $ARTEFACTS/status-page-$f.png"
done
pass "both pages showed master/backup, lb1 master, both backends up and lb1 the client's $sent requests and their rate; after kill -9 of lb1, lb2's page showed master $lag_ms ms after its transition (${after_kill_ms} ms after the kill, limit ${PAGE_LAG_LIMIT_MS} ms after the transition) without a reload, lb1's page went stale; screenshots in $ARTEFACTS/status-page-*.png"
