#!/usr/bin/env bash
# smuggling.sh: request smuggling through Transfer-Encoding lists and chunk
# framing, against a real lenient backend: gunicorn 20.1.0 (from PyPI, which
# frames a request as chunked only for a Transfer-Encoding of exactly
# "chunked"), behind vipd, and for comparison behind HAProxy and nginx fed
# the same bytes.
#
#   lb1:    vipd on 192.0.2.11:8080 (one worker: pinned to one CPU, so the
#           attacker and the victim share its pool of backend connections),
#           HAProxy on :8081, nginx on :8082, all in front of app1
#   app1:   gunicorn 20.1.0 (gthread, keep-alive) answering each request with
#           its request line and Cookie, and logging each request line
#   client: for each attack, the attacker's request on one connection, then a
#           victim's GET /victim with its own Cookie on another
#
# The attack (issue 7 §1.1): a list the proxy reads as chunked but gunicorn
# reads as no body; the body is then a request of its own, `000 /smuggled`,
# whose Content-Length swallows the next request on the pooled connection.
# Checks, for vipd only: every attack is refused (400 or 501) before it
# reaches the backend, every victim gets its own answer, gunicorn never sees
# /smuggled through vipd. HAProxy's and nginx's answers are printed beside.
NT_DIR0=$(cd "$(dirname "$0")" && pwd)
source "$NT_DIR0/lib.sh"
source "$NT_DIR0/lib-http.sh"
need_root
need_vipd
ensure_pkg curl curl
ensure_pkg python3 python3

GUNICORN_VERSION=20.1.0
PYDIR=${GUNICORN_DIR:-/var/cache/vipd-tests/gunicorn-$GUNICORN_VERSION}
if ! PYTHONPATH=$PYDIR python3 -c 'import gunicorn' 2>/dev/null; then
    log "installing gunicorn $GUNICORN_VERSION into $PYDIR"
    mkdir -p "$PYDIR"
    python3 -m pip install -q --disable-pip-version-check --target "$PYDIR" "gunicorn==$GUNICORN_VERSION" >&2 ||
        { echo "$SCENARIO: cannot install gunicorn" >&2; exit 2; }
fi

topo_up lb1 app1 client
APP=${HOST_IP[app1]}:$APP_PORT
LB=${HOST_IP[lb1]}

cat >"$WORK/app.py" <<EOF
def app(environ, start_response):
    line = "%s %s" % (environ["REQUEST_METHOD"], environ.get("RAW_URI", environ["PATH_INFO"]))
    with open("$WORK/app1.requests", "a") as f:
        f.write(line + "\n")
    body = ("%s cookie=%s" % (line, environ.get("HTTP_COOKIE", ""))).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
EOF
: >"$WORK/app1.requests"
ip netns exec "$(ns app1)" env PYTHONPATH="$PYDIR:$WORK" python3 -m gunicorn --chdir "$WORK" \
    --bind "$APP" --workers 1 --worker-class gthread --threads 4 --keep-alive 30 app:app \
    >>"$WORK/app1.log" 2>&1 &
EXTRA_PIDS+=("$!")
NODE_LOG[app1]=$WORK/app1.log
# Python starts slowly: the proxies come up once gunicorn answers, or they
# would find it refusing and mark it down.
wait_for 20000 http_ok client "http://$APP/" || fail "gunicorn does not answer on $APP"

cat >"$WORK/vipd.toml" <<EOF
[control]
listen = "127.0.0.1:9090"
socket = "$WORK/vipd.sock"

[[http]]
name = "web"
listen = "$LB:8080"
backends = ["$APP"]
retries = 0
access_log = false
EOF
ip netns exec "$(ns lb1)" taskset -c 0 "$VIPD" run --config "$WORK/vipd.toml" >>"$WORK/vipd.log" 2>&1 &
NODE_PID[lb1]=$!; NODE_KIND[lb1]=vipd; NODE_LOG[lb1]=$WORK/vipd.log

HAPROXY_CHECK_INTER=10s
start_haproxy lb1 haproxy "$(haproxy_conf haproxy "$LB:8081" "$APP")"
nginx=$(nginx_conf nginx "    upstream app { server $APP; keepalive 8; }
    server {
        listen $LB:8082;
        location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    }")
start_nginx lb1 nginx "$nginx"
nginx_pid=$STARTED_PID

for port in 8080 8081 8082; do
    wait_for 10000 http_ok client "http://$LB:$port/" || fail "nothing answers on $LB:$port"
done
nginx_ready client "$nginx_pid" "http://$LB:8082/" 5000 || fail "$WHY"

cat >"$WORK/attack.py" <<'EOF'
import socket, sys

host, port = sys.argv[1], int(sys.argv[2])
SMUGGLED = b"000 /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\n"
ATTACKS = [
    ("te-trailing-comma", b"Transfer-Encoding: chunked,\r\n"),
    ("te-gzip-chunked", b"Transfer-Encoding: gzip, chunked\r\n"),
    ("te-identity-chunked", b"Transfer-Encoding: identity, chunked\r\n"),
    ("te-leading-comma", b"Transfer-Encoding: , chunked\r\n"),
    ("te-chunked-twice", b"Transfer-Encoding: chunked , chunked\r\n"),
    ("te-two-fields", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
    ("te-exact-size-line", b"Transfer-Encoding: chunked\r\n"),
]

def exchange(data, timeout=3.0):
    s = socket.create_connection((host, port), timeout=timeout)
    s.sendall(data)
    got = b""
    rest = []
    try:
        while b"\r\n\r\n" not in got:
            piece = s.recv(65536)
            if not piece:
                break
            got += piece
        head, _, body = got.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v.strip())
        while len(body) < length:
            piece = s.recv(65536)
            if not piece:
                break
            body += piece
            rest.append(piece)
    except socket.timeout:
        pass
    s.close()
    status = got.split(b" ", 2)[1].decode() if got.startswith(b"HTTP/") else "none"
    # The body as read: the head may have come alone, the body after it.
    body = got.partition(b"\r\n\r\n")[2]
    for extra in rest:
        body += extra
    return status, body.decode(errors="replace"), got

for name, te in ATTACKS:
    status, _, _ = exchange(b"POST / HTTP/1.1\r\nHost: x\r\n" + te + b"\r\n" + SMUGGLED)
    vstatus, vbody, vraw = exchange(b"GET /victim HTTP/1.1\r\nHost: x\r\nCookie: secret=victim\r\n\r\n")
    mine = vstatus == "200" and vbody == "GET /victim cookie=secret=victim"
    print(f"{name} {status} {'own' if mine else 'MIXED:' + vstatus + ':' + repr(vraw)[:300].replace(' ', '_')}")
EOF

declare -A OUTCOME=()
for pair in vipd:8080 haproxy:8081 nginx:8082; do
    name=${pair%%:*} port=${pair#*:}
    before=$(grep -c smuggled "$WORK/app1.requests" || true)
    ns_exec client timeout 60 python3 "$WORK/attack.py" "$LB" "$port" >"$WORK/$name.out" ||
        fail "attack client against $name failed"
    after=$(grep -c smuggled "$WORK/app1.requests" || true)
    OUTCOME[$name]=$((after - before))
done

printf '  %-22s %-14s %-14s %-14s\n' attack vipd haproxy nginx
while read -r attack status victim; do
    row=("$attack")
    for name in vipd haproxy nginx; do
        row+=("$(awk -v a="$attack" '$1 == a { print $2 "/" ($3 == "own" ? "own" : "MIXED") }' "$WORK/$name.out")")
    done
    printf '  %-22s %-14s %-14s %-14s\n' "${row[@]}"
done <"$WORK/vipd.out"
echo "  (answer to the attack / whether the next client got its own answer)"
echo "  smuggled requests gunicorn read: vipd ${OUTCOME[vipd]}, haproxy ${OUTCOME[haproxy]}, nginx ${OUTCOME[nginx]}"

while read -r attack status victim; do
    [[ $status == 400 || $status == 501 ]] || fail "vipd answered $attack with $status, not 400/501"
    [[ $victim == own ]] || fail "vipd: after $attack the victim got someone else's answer: $victim"
done <"$WORK/vipd.out"
((OUTCOME[vipd] == 0)) || fail "gunicorn read ${OUTCOME[vipd]} smuggled request(s) through vipd"
pass "vipd refused all $(wc -l <"$WORK/vipd.out") Transfer-Encoding attacks; no victim mixed up; gunicorn read no smuggled request"
