# shellcheck shell=bash
# lib-bgp.sh: active-active helpers on top of lib.sh: several L7 load
# balancers each announce a service address over BGP to a router that
# spreads a client's connections over them by ECMP. Source it AFTER lib.sh
# (it uses lib.sh's topo_up, ns/ns_exec, WORK, EXTRA_PIDS, NODE_LOG,
# CLEANUP_HOOKS, stop_pid, pid_alive, wait_for, ensure_pkg, log, fail and the
# FRR helpers frr_dir / frr_space / frr_cleanup / FRR_SPACES); lib-http.sh
# may be sourced before or after it.
#
#   192.0.2.0/24 (br0 in the switch namespace, lib.sh's segment):
#       router 192.0.2.1, lb1..lbN 192.0.2.11.., app1 .21, app2 .22
#   203.0.113.0/24 (a veth pair of its own, router eth1 <-> client eth0):
#       router 203.0.113.1, client 203.0.113.100 (default route via router)
#   service address SERVICE_IP (198.51.100.10/32) on each LB's dummy vip0
#
# BGP (FRR from Debian's frr: zebra + bgpd + bfdd per namespace, each node
# under a pathspace of its own, -N, as lib.sh's start_frr does): eBGP,
# router AS 64512, lbK in private AS 64600+K. eBGP because every LB then is
# an ordinary external peer: next hop = the LB itself with no next-hop-self
# or route-reflector rules, no IGP needed to resolve next hops, and
# ECMP over the LBs needs only `maximum-paths 8` plus
# `bgp bestpath as-path multipath-relax` (the paths' AS_PATHs differ: one AS
# per LB, so the router's table says which node a path is from). The router
# sends the LBs nothing (they reach the client net by a static route set up
# in bgp_topo_up, so their answers never depend on BGP), takes from them
# only /32s inside SERVICE_NET; each LB exports only the connected /32s of
# its vip0. Explicit in/out policies on every session, so FRR's default
# `bgp ebgp-requires-policy` (RFC 8212) stays on. BFD on every session
# (BFD_INTERVAL_MS 300 both ways, multiplier BFD_MULT 3: a silent node is
# dropped within 0.9 s), `timers bgp 3 9`, advertisement-interval 0 (a
# withdrawal goes out at once), connect retry 1 s, graceful restart off on
# the router (a dead LB's routes must go now, not be kept as stale).
#
# Env knobs: BFD_INTERVAL_MS (300), BFD_MULT (3), BGP_KEEPALIVE (3),
#   BGP_HOLD (9), SERVICE_IP (198.51.100.10), SERVICE_NET (198.51.100.0/24).

ROUTER_AS=64512
SERVICE_IP=${SERVICE_IP:-198.51.100.10}
SERVICE_NET=${SERVICE_NET:-198.51.100.0/24}
CLIENT_NET=203.0.113.0/24
ROUTER_CLIENT_IP=203.0.113.1
BGP_CLIENT_IP=203.0.113.100
BFD_INTERVAL_MS=${BFD_INTERVAL_MS:-300}
BFD_MULT=${BFD_MULT:-3}
BGP_KEEPALIVE=${BGP_KEEPALIVE:-3}
BGP_HOLD=${BGP_HOLD:-9}
BGP_LBS=()                     # lb1..lbN of the current topology

# The router and the extra LBs on the segment; app1/app2 as lib-http.sh has
# them (set here too, only where not set yet, so the order of sourcing
# doesn't matter). lb1/lb2 keep lib.sh's 192.0.2.11/12.
HOST_IP[router]=192.0.2.1
for _k in 3 4 5 6 7 8; do HOST_IP[lb$_k]=${HOST_IP[lb$_k]:-192.0.2.$((10 + _k))}; done
unset _k
HOST_IP[app1]=${HOST_IP[app1]:-192.0.2.21}
HOST_IP[app2]=${HOST_IP[app2]:-192.0.2.22}

declare -A FRR_PIDS=()          # host -> "zebra bfdd bgpd" PIDs (also in EXTRA_PIDS)

# bgp_forget_pid PID: drop a PID we stopped ourselves from EXTRA_PIDS, so the
# EXIT trap never signals a (possibly recycled) PID a second time.
bgp_forget_pid() {
    local p keep=()
    for p in "${EXTRA_PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    EXTRA_PIDS=("${keep[@]}")
}

# ---------------------------------------------------------------- topology

# bgp_topo_up N [HOST...]: lib.sh's segment with router, lb1..lbN, app1, app2
# (and the extra HOSTs), plus the client namespace on its own veth pair to
# the router (eth1 there). Router: forwarding on, L4 ECMP hash
# (fib_multipath_hash_policy=1). Each LB: a static route to CLIENT_NET via
# the router. Sets BGP_LBS and HOST_IP[client] (203.0.113.100 in this
# topology; other scenarios don't source this file).
bgp_topo_up() {
    local n=$1 k r c
    shift
    [[ $n =~ ^[1-8]$ ]] || fail "bgp_topo_up: 1..8 LB nodes (maximum-paths 8), not '$n'"
    BGP_LBS=()
    for ((k = 1; k <= n; k++)); do BGP_LBS+=("lb$k"); done
    topo_up router "${BGP_LBS[@]}" app1 app2 "$@"
    r=$(ns router)
    ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1

    c=$(ns client)
    ip netns add "$c"; NAMESPACES+=("$c")
    ip -n "$c" link set lo up
    ip netns exec "$c" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip -n "$r" link add eth1 type veth peer name eth0 netns "$c"
    ip -n "$r" addr add "$ROUTER_CLIENT_IP/24" dev eth1
    ip -n "$r" link set eth1 up
    ip -n "$c" addr add "$BGP_CLIENT_IP/24" dev eth0
    ip -n "$c" link set eth0 up
    ip -n "$c" route add default via "$ROUTER_CLIENT_IP"
    HOST_IP[client]=$BGP_CLIENT_IP

    for k in "${BGP_LBS[@]}"; do
        ip -n "$(ns "$k")" route add "$CLIENT_NET" via "${HOST_IP[router]}"
    done
    log "bgp topology: router, ${BGP_LBS[*]}, app1, app2${*:+, $*}; client behind the router"
}

# ---------------------------------------------------------------- FRR configs

# bgp_node_as HOST: lbK -> 64600+K (one private AS per LB).
bgp_node_as() {
    [[ $1 =~ ^lb([1-8])$ ]] || fail "bgp_node_as: not an LB: $1"
    echo $((64600 + BASH_REMATCH[1]))
}

# bfdd_conf HOST -> prints the path of bfdd's config: the profile "fast"
# (BFD_INTERVAL_MS both ways, BFD_MULT) that the BGP sessions refer to.
bfdd_conf() {
    local f
    f="$(frr_dir "$1")/bfdd.conf"
    cat >"$f" <<EOF
hostname $1
bfd
 profile fast
  detect-multiplier $BFD_MULT
  receive-interval $BFD_INTERVAL_MS
  transmit-interval $BFD_INTERVAL_MS
 exit
exit
EOF
    chown frr:frr "$f"
    echo "$f"
}

# bgp_router_conf -> prints the path of the router's bgpd config: AS 64512,
# one eBGP neighbour per LB in BGP_LBS (peer-group LB: BFD profile fast,
# fast timers), ECMP over up to 8 paths, accepts /32s in SERVICE_NET only,
# announces nothing.
bgp_router_conf() {
    local f h nbrs=""
    f="$(frr_dir router)/bgpd.conf"
    for h in "${BGP_LBS[@]}"; do
        nbrs+=" neighbor ${HOST_IP[$h]} remote-as $(bgp_node_as "$h")"$'\n'
        nbrs+=" neighbor ${HOST_IP[$h]} peer-group LB"$'\n'
        nbrs+=" neighbor ${HOST_IP[$h]} description $h"$'\n'
    done
    cat >"$f" <<EOF
hostname router
ip prefix-list SERVICE seq 5 permit $SERVICE_NET ge 32
route-map LB-IN permit 10
 match ip address prefix-list SERVICE
exit
route-map NOTHING deny 10
exit
router bgp $ROUTER_AS
 bgp router-id ${HOST_IP[router]}
 bgp log-neighbor-changes
 bgp bestpath as-path multipath-relax
 bgp graceful-restart-disable
 timers bgp $BGP_KEEPALIVE $BGP_HOLD
 neighbor LB peer-group
 neighbor LB timers connect 1
 neighbor LB advertisement-interval 0
 neighbor LB bfd
 neighbor LB bfd profile fast
$nbrs address-family ipv4 unicast
  maximum-paths 8
  neighbor LB route-map LB-IN in
  neighbor LB route-map NOTHING out
 exit-address-family
exit
EOF
    chown frr:frr "$f"
    echo "$f"
}

# bgp_node_conf HOST -> prints the path of an LB's bgpd config: its own AS,
# the router as its only neighbour (BFD profile fast, fast timers), exporting
# only the connected /32s of vip0, taking nothing.
bgp_node_conf() {
    local h=$1 f
    f="$(frr_dir "$h")/bgpd.conf"
    cat >"$f" <<EOF
hostname $h
ip prefix-list HOST32 seq 5 permit 0.0.0.0/0 ge 32
route-map VIP0 permit 10
 match interface vip0
 match ip address prefix-list HOST32
exit
route-map NOTHING deny 10
exit
router bgp $(bgp_node_as "$h")
 bgp router-id ${HOST_IP[$h]}
 bgp log-neighbor-changes
 timers bgp $BGP_KEEPALIVE $BGP_HOLD
 neighbor ${HOST_IP[router]} remote-as $ROUTER_AS
 neighbor ${HOST_IP[router]} timers connect 1
 neighbor ${HOST_IP[router]} advertisement-interval 0
 neighbor ${HOST_IP[router]} bfd
 neighbor ${HOST_IP[router]} bfd profile fast
 address-family ipv4 unicast
  redistribute connected route-map VIP0
  neighbor ${HOST_IP[router]} route-map HOST32-OUT out
  neighbor ${HOST_IP[router]} route-map NOTHING in
 exit-address-family
exit
route-map HOST32-OUT permit 10
 match ip address prefix-list HOST32
exit
EOF
    chown frr:frr "$f"
    echo "$f"
}

# ---------------------------------------------------------------- FRR daemons

# start_bgp_frr HOST BGPD_CONF: zebra, then bfdd, then bgpd in HOST's
# namespace (foreground, pathspace frr_space HOST, no vty TCP ports, logs in
# frr_dir HOST). PIDs in FRR_PIDS[HOST] and EXTRA_PIDS (the EXIT trap stops
# them); bgpd's log in NODE_LOG[HOST-bgpd] (fail shows its tail).
start_bgp_frr() {
    local h=$1 conf=$2 n sp d i bfdc pids=""
    ensure_pkg "$FRR_DIR/bgpd" frr
    n=$(ns "$h"); sp=$(frr_space "$h"); d=$(frr_dir "$h")
    bfdc=$(bfdd_conf "$h") || fail "$h: no bfdd config"
    [[ -z ${FRR_PIDS[$h]:-} ]] || fail "FRR already running on $h"
    if [[ ! -d /var/run/frr/$sp ]]; then
        install -d -o frr -g frr "/var/run/frr/$sp"
        FRR_SPACES+=("/var/run/frr/$sp")
        ((${#FRR_SPACES[@]} > 1)) || CLEANUP_HOOKS+=(frr_cleanup)
    fi
    rm -f "/var/run/frr/$sp/"*.vty "/var/run/frr/$sp/zserv.api"
    install -o frr -g frr /dev/null "$d/zebra.conf"
    ip netns exec "$n" "$FRR_DIR/zebra" -N "$sp" -P 0 -f "$d/zebra.conf" -i "$d/zebra.pid" \
        --log "file:$d/zebra.log" >>"$d/daemons.out" 2>&1 &
    pids+="$! "; EXTRA_PIDS+=("$!")
    FRR_PIDS[$h]=$pids
    for ((i = 0; i < 250; i++)); do [[ -S /var/run/frr/$sp/zserv.api ]] && break; sleep 0.02; done
    [[ -S /var/run/frr/$sp/zserv.api ]] || fail "$h: zebra did not open its socket (see $d/daemons.out, $d/zebra.log)"
    ip netns exec "$n" "$FRR_DIR/bfdd" -N "$sp" -P 0 -f "$bfdc" -i "$d/bfdd.pid" \
        --log "file:$d/bfdd.log" >>"$d/daemons.out" 2>&1 &
    pids+="$! "; EXTRA_PIDS+=("$!")
    FRR_PIDS[$h]=$pids
    ip netns exec "$n" "$FRR_DIR/bgpd" -N "$sp" -P 0 -f "$conf" -i "$d/bgpd.pid" \
        --log "file:$d/bgpd.log" >>"$d/daemons.out" 2>&1 &
    pids+="$!"; EXTRA_PIDS+=("$!")
    FRR_PIDS[$h]=$pids
    NODE_LOG[$h-bgpd]="$d/bgpd.log"
    for ((i = 0; i < 250; i++)); do
        [[ -S /var/run/frr/$sp/bgpd.vty && -S /var/run/frr/$sp/bfdd.vty ]] && break
        sleep 0.02
    done
    [[ -S /var/run/frr/$sp/bgpd.vty && -S /var/run/frr/$sp/bfdd.vty ]] ||
        fail "$h: bgpd/bfdd did not open their vty sockets (see $d/daemons.out)"
    log "started FRR on $h (zebra bfdd bgpd: $pids)"
}

# start_router_frr: the router's zebra + bfdd + bgpd (bgp_router_conf).
start_router_frr() {
    local c
    ensure_pkg "$FRR_DIR/bgpd" frr
    c=$(bgp_router_conf) || fail "router: no bgpd config"
    start_bgp_frr router "$c"
}

# start_node_frr HOST: an LB's zebra + bfdd + bgpd (bgp_node_conf HOST).
start_node_frr() {
    local c
    ensure_pkg "$FRR_DIR/bgpd" frr
    c=$(bgp_node_conf "$1") || fail "$1: no bgpd config"
    start_bgp_frr "$1" "$c"
}

# kill_node_frr HOST [SIG]: signal HOST's zebra, bfdd and bgpd (by their
# recorded PIDs, default SIGKILL: a crash, no NOTIFICATION, no BFD
# AdminDown), reap them, forget them.
kill_node_frr() {
    local h=$1 sig=${2:-KILL} p
    # shellcheck disable=SC2086 # a list of PIDs
    for p in ${FRR_PIDS[$h]:-}; do kill "-$sig" "$p" 2>/dev/null || true; done
    for p in ${FRR_PIDS[$h]:-}; do
        stop_pid "$p" "$sig" 2000 >/dev/null 2>&1 || true
        bgp_forget_pid "$p"
    done
    unset "FRR_PIDS[$h]"
}

# frr_vtysh HOST CMD: one vtysh command against HOST's daemons.
frr_vtysh() { vtysh -N "$(frr_space "$1")" -c "$2" 2>/dev/null; }

# bgp_state HOST NEIGHBOR_IP: the session's state as HOST's bgpd sees it
# (Established, Active, Connect, ...; "none" if bgpd doesn't answer).
bgp_state() {
    local s
    s=$(frr_vtysh "$1" "show bgp neighbors $2 json" | jq -r --arg n "$2" '.[$n].bgpState // empty' 2>/dev/null) || s=
    echo "${s:-none}"
}

# bfd_state HOST PEER_IP: the BFD session's status at HOST (up, down, init,
# ...; "none" without one).
bfd_state() {
    local s
    s=$(frr_vtysh "$1" "show bfd peers json" | jq -r --arg p "$2" '[.[] | select(.peer == $p) | .status][0] // empty' 2>/dev/null) || s=
    echo "${s:-none}"
}

# bgp_all_up: every LB's session Established and its BFD up, at the router.
bgp_all_up() {
    local h
    for h in "${BGP_LBS[@]}"; do
        [[ $(bgp_state router "${HOST_IP[$h]}") == Established ]] || return 1
        [[ $(bfd_state router "${HOST_IP[$h]}") == up ]] || return 1
    done
}

# wait_bgp_up TIMEOUT_MS: bgp_all_up, or fail with each session's state.
wait_bgp_up() {
    local h st=""
    wait_for "$1" bgp_all_up && return 0
    for h in "${BGP_LBS[@]}"; do
        st+=" $h=$(bgp_state router "${HOST_IP[$h]}")/bfd:$(bfd_state router "${HOST_IP[$h]}")"
    done
    fail "BGP/BFD sessions not all up after $1 ms:$st"
}

# ---------------------------------------------------------------- observations

# router_paths PREFIX: how many next hops the router's kernel has for PREFIX
# (0 without a route). Reads `ip route show` (with nexthop objects, zebra's
# default, the route also lists them as "nexthop via" lines; if a kernel
# showed only "nhid N", the group is read from `ip nexthop`).
router_paths() {
    local out id grp
    out=$(ip -n "$(ns router)" route show "$1" 2>/dev/null) || { echo 0; return 0; }
    if [[ -z $out ]]; then
        echo 0
    elif grep -q 'nexthop via' <<<"$out"; then
        grep -c 'nexthop via' <<<"$out"
    elif grep -q ' via ' <<<"$out"; then
        echo 1
    elif id=$(grep -oE 'nhid [0-9]+' <<<"$out" | head -n 1 | awk '{print $2}') && [[ -n $id ]]; then
        grp=$(ip -n "$(ns router)" nexthop show id "$id" 2>/dev/null | grep -oE 'group [0-9/,]+' | awk '{print $2}') || grp=
        if [[ -n $grp ]]; then tr '/' '\n' <<<"$grp" | grep -c . ; else echo 1; fi
    else
        echo 1
    fi
}

# router_paths_is PREFIX N: the router's kernel has exactly N next hops for PREFIX.
router_paths_is() { [[ $(router_paths "$1") == "$2" ]]; }

# wait_router_paths PREFIX N TIMEOUT_MS: until the router has N next hops for
# PREFIX; WAITED_MS as wait_for sets it. Returns 1 on timeout.
wait_router_paths() { wait_for "$3" router_paths_is "$1" "$2"; }

# router_nexthops PREFIX: the router's next hops for PREFIX, space-separated.
router_nexthops() {
    ip -n "$(ns router)" route show "$1" 2>/dev/null | grep -oE 'via [0-9.]+' | awk '{print $2}' | tr '\n' ' ' | sed 's/ $//'
}

# ---------------------------------------------------------------- BIRD

# bird_node_conf HOST -> prints the path of a BIRD 2 config for an LB, the
# same policy as bgp_node_conf: its own AS, the router as its only
# neighbour with BFD (BFD_INTERVAL_MS x BFD_MULT), exporting only the /32s
# that `protocol direct` sees on vip0, importing nothing.
bird_node_conf() {
    local h=$1 f
    f="$WORK/bird-$h.conf"
    cat >"$f" <<EOF
router id ${HOST_IP[$h]};
log "$WORK/bird-$h.log" all;
protocol device { scan time 1; }
protocol direct vipd { ipv4; interface "vip0"; }
protocol bfd {
    interface "eth0" {
        min rx interval $BFD_INTERVAL_MS ms;
        min tx interval $BFD_INTERVAL_MS ms;
        multiplier $BFD_MULT;
    };
}
protocol bgp uplink {
    local ${HOST_IP[$h]} as $(bgp_node_as "$h");
    neighbor ${HOST_IP[router]} as $ROUTER_AS;
    hold time $BGP_HOLD;
    keepalive time $BGP_KEEPALIVE;
    connect retry time 1;
    # BIRD takes the BFD session's first Down (before the router's bfdd
    # answered) as an error and would wait 60 s before trying again.
    error wait time 1, 5;
    bfd on;
    ipv4 {
        import none;
        # Origin incomplete, as FRR's redistributed connected routes have:
        # with origin IGP this node's path would win over theirs instead of
        # sharing the load with them (multipath needs equal attributes).
        export filter {
            if proto = "vipd" && net.len = 32 then { bgp_origin = ORIGIN_INCOMPLETE; accept; }
            reject;
        };
    };
}
EOF
    echo "$f"
}

# start_node_bird HOST: BIRD 2 (Debian's bird2) on an LB instead of FRR, in
# the foreground, its control socket in WORK. PID in FRR_PIDS[HOST] (so
# kill_node_frr stops it too) and EXTRA_PIDS.
start_node_bird() {
    local h=$1 c i
    ensure_pkg bird bird2
    c=$(bird_node_conf "$h")
    [[ -z ${FRR_PIDS[$h]:-} ]] || fail "a routing daemon already runs on $h"
    ip netns exec "$(ns "$h")" bird -f -c "$c" -s "$WORK/bird-$h.ctl" -P "$WORK/bird-$h.pid" \
        >>"$WORK/bird-$h.out" 2>&1 &
    FRR_PIDS[$h]=$!
    EXTRA_PIDS+=("$!")
    for ((i = 0; i < 250; i++)); do [[ -S $WORK/bird-$h.ctl ]] && break; sleep 0.02; done
    [[ -S $WORK/bird-$h.ctl ]] || fail "$h: BIRD did not open its control socket (see $WORK/bird-$h.out)"
    log "started BIRD on $h (pid ${FRR_PIDS[$h]})"
}
