#!/usr/bin/env bash
# tls-scan.sh: testssl.sh (Debian's) against a vipd TLS listener.
#
#   lb1: vipd with one [[http]] on 0.0.0.0:443 terminating TLS with an
#        ECDSA P-256 certificate for vipd.test (signed by a CA made here,
#        with CRL and OCSP locations as a public CA's would carry), in
#        front of app1 (nginx)
#   client: testssl.sh --add-ca CA --ip 192.0.2.11 https://vipd.test/,
#        no DNS, nothing beyond the test bridge
#
# Passes when testssl rates no finding MEDIUM or worse in what the TLS
# terminator decides: protocols, cipher suites and their order, forward
# secrecy, the server's defaults (certificate, tickets, resumption), known
# vulnerabilities, and which common clients connect. (Its HTTP header
# checks are left out: HSTS and the like are the application's answer;
# vipd passes them through.) The findings that are
# not OK (LOW and below) are printed; testssl's text and JSON output are
# kept in $ARTEFACTS (default target/netns-artefacts/).
NT_DIR0=$(cd "$(dirname "$0")" && pwd)
source "$NT_DIR0/lib.sh"
source "$NT_DIR0/lib-http.sh"
need_root
need_vipd
ensure_pkg_nosvc nginx nginx
ensure_pkg testssl testssl.sh
ensure_pkg openssl openssl

artefacts_dir
NAME=vipd.test

pki="$WORK/pki"
make_pki "$pki" "$NAME" ec

topo_up lb1 app1 client
app_server app1
nginx_ready app1 "$STARTED_PID" "http://${HOST_IP[app1]}:$APP_PORT/healthz" 5000 || fail "app1: $WHY"
conf="$WORK/lb1.toml"
cat >"$conf" <<EOF
[control]
listen = "$CONTROL"
socket = "$WORK/lb1.sock"

[[http]]
name = "tls"
listen = "0.0.0.0:443"
backends = ["${HOST_IP[app1]}:$APP_PORT"]
[[http.tls]]
cert = "$pki/leaf.pem"
key = "$pki/leaf.key"
EOF
"$VIPD" check --config "$conf" >"$WORK/check.out" 2>&1 || fail "vipd check refuses the config: $(cat "$WORK/check.out")"
grep -q "leaf.pem: $NAME" "$WORK/check.out" || fail "vipd check does not name $NAME: $(cat "$WORK/check.out")"
start_vipd lb1 "$conf" "$WORK/lb1.log"
wait_for 5000 vipd_backends_healthy lb1 || fail "lb1: backend not healthy"
code=$(ns_exec client curl -s -o /dev/null -w '%{http_code}' -m 2 --cacert "$pki/ca.pem" \
    --resolve "$NAME:443:${HOST_IP[lb1]}" "https://$NAME/") || true
[[ $code == 200 ]] || fail "curl over TLS got \"$code\", want 200"

json="$ARTEFACTS/testssl.json"
text="$ARTEFACTS/testssl.txt"
rm -f "$json" "$text"
log "running testssl.sh (a few minutes)"
t0=$(now_ms)
rc=0
ns_exec client timeout 600 testssl -p -s -f -P -S -U -c --quiet --color 0 --warnings off --nodns none --ip "${HOST_IP[lb1]}" \
    --add-ca "$pki/ca.pem" --connect-timeout 5 --openssl-timeout 5 --jsonfile "$json" \
    "https://$NAME/" >"$text" 2>&1 || rc=$?
dt=$(($(now_ms) - t0))
[[ -s $json ]] || fail "testssl wrote no JSON (exit $rc); its output: $(tail -n 20 "$text")"
# testssl exits with the number of findings of some kinds; the JSON decides.
bad=$(jq -r '[.[] | select(.severity == "MEDIUM" or .severity == "HIGH" or .severity == "CRITICAL")]
    | map("\(.severity) \(.id): \(.finding)") | .[]' "$json")
low=$(jq -r '[.[] | select(.severity == "LOW")] | map("\(.id): \(.finding)") | join("; ")' "$json")
total=$(jq 'length' "$json")
log "testssl: exit $rc after $((dt / 1000)) s, $total results; LOW: ${low:-none}"
[[ -z $bad ]] || fail "testssl rated findings MEDIUM or worse:
$bad
(full output: $text)"
protocols=$(jq -r '[.[] | select((.id | test("^(SSLv2|SSLv3|TLS1|TLS1_1|TLS1_2|TLS1_3)$")) and (.finding | test("^offered")))] | map(.id) | join(" ")' "$json")
[[ $protocols == "TLS1_2 TLS1_3" ]] || fail "protocols offered: \"$protocols\", want TLS1_2 TLS1_3"
pass "testssl.sh: no finding MEDIUM or worse in $total results (protocols offered: $protocols; LOW: ${low:-none}); $((dt / 1000)) s; output in $text and $json"
