# shellcheck shell=bash
# lib.sh: shared helpers for the vipd network-namespace scenarios.
#
# Sourced by every scenario. Builds a private L2 segment out of namespaces:
#   <prefix>sw        switch namespace holding bridge br0
#   <prefix><host>    one namespace per host; its eth0 is a veth whose peer is
#                     port <host> of br0 in the switch namespace
# Nothing is attached to the machine's own interfaces. Every namespace name
# carries a per-run prefix so two runs never collide, and an EXIT trap stops
# the processes we started (by recorded PID only) and deletes the namespaces.
#
# Env knobs:
#   VIPD      path of the vipd binary (default ../target/debug/vipd)
#   IMPL      vipd | keepalived: what runs on lb1/lb2 in the generic scenarios
#             (keepalived on both nodes is a baseline for checking the scripts)
#   KEEP=1    keep the work directory (configs, logs, captures) after the run
#   UNICAST=1 lb1 and lb2 advertise to each other by unicast (vipd's
#             unicast_peers, keepalived's unicast_peer) instead of multicast
#   V6=1      the VRRP instance is IPv6: hosts get IPv6 (link-local from
#             their MAC, 2001:db8::/64 beside their IPv4), the VIPs are
#             fe80::10 and 2001:db8::10, and VIP / has_vip / VIP_URL follow

set -euo pipefail

NT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VIPD=${VIPD:-$NT_DIR/../target/debug/vipd}
IMPL=${IMPL:-vipd}
SCENARIO=$(basename "$0" .sh)
P="vt$$-"                      # per-run namespace prefix
SW="${P}sw"                    # switch namespace
WORK=$(mktemp -d "/tmp/vipd-netns-$SCENARIO.XXXXXX")

V6=${V6:-}
declare -A HOST_IP6=([lb1]=2001:db8::11 [lb2]=2001:db8::12 [client]=2001:db8::100 [attacker]=2001:db8::66
    [app1]=2001:db8::21 [app2]=2001:db8::22)
if [[ -n $V6 ]]; then
    VIP=2001:db8::10
    VIP_CIDR=2001:db8::10/64
    VIP_LL=fe80::10             # the link-local VIP RFC 9568 wants first in adverts
    VIPS=("$VIP_LL/64" "$VIP_CIDR")
    VIP_URL="[$VIP]"
    ANY_ADDR="[::]"
else
    VIP=192.0.2.10
    VIP_CIDR=192.0.2.10/24
    VIPS=("$VIP_CIDR")
    VIP_URL=$VIP
    ANY_ADDR=0.0.0.0
fi
VRID=51
CONTROL=127.0.0.1:9090
declare -A HOST_IP=([lb1]=192.0.2.11 [lb2]=192.0.2.12 [client]=192.0.2.100 [attacker]=192.0.2.66)
declare -A HOST_MAC=([lb1]=02:00:5e:10:00:11 [lb2]=02:00:5e:10:00:12)

declare -a NAMESPACES=()       # namespaces we created, deleted on exit
declare -a EXTRA_PIDS=()       # helper processes (tcpdump, injector) to stop on exit
declare -A NODE_PID=()         # host -> PID of the daemon we started there
declare -A NODE_KIND=()        # host -> vipd | keepalived
declare -A NODE_LOG=()         # host -> its log file
declare -a CLEANUP_HOOKS=()    # functions the EXIT trap runs after topo_down

log() { printf '%s [%s] %s\n' "$(date +%T.%3N)" "$SCENARIO" "$*" >&2; }
now_ms() { date +%s%3N; }

# Print loudly, show the tail of every daemon log (that's what one needs to
# debug a failure), exit 1. The EXIT trap then cleans up.
fail() {
    {
        echo
        echo "!!!!!!!! FAIL [$SCENARIO]: $*"
        local h
        for h in "${!NODE_LOG[@]}"; do
            echo "---- last lines of $h log (${NODE_LOG[$h]}) ----"
            tail -n 25 "${NODE_LOG[$h]}" 2>/dev/null || true
        done
        echo "!!!!!!!! FAIL [$SCENARIO]: $*"
    } >&2
    exit 1
}

pass() { echo "PASS [$SCENARIO${IMPL:+ impl=$IMPL}] $*"; }

need_root() { [[ $(id -u) -eq 0 ]] || { echo "$SCENARIO: must run as root" >&2; exit 2; }; }

# ensure_pkg CMD PKG: install Debian package PKG if command CMD is missing.
ensure_pkg() {
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2 (for $1)"
    if [[ ($2 == keepalived || $2 == frr) && ! -e /usr/sbin/policy-rc.d ]]; then
        # Keep Debian from starting keepalived or FRR system-wide on install.
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >/dev/null ||
        { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >/dev/null; }
    command -v "$1" >/dev/null 2>&1 || { echo "$SCENARIO: cannot install $2" >&2; exit 2; }
}

# artefacts_dir: ARTEFACTS (default target/netns-artefacts/), created and
# made absolute: what a scenario keeps after its run (screenshots, scans).
artefacts_dir() {
    ARTEFACTS=${ARTEFACTS:-$NT_DIR/../target/netns-artefacts}
    mkdir -p "$ARTEFACTS"
    ARTEFACTS=$(cd "$ARTEFACTS" && pwd)
}

need_vipd() {
    [[ -x $VIPD ]] || { echo "$SCENARIO: vipd binary not found at $VIPD (build it or set VIPD)" >&2; exit 2; }
}

ns() { echo "${P}$1"; }
ns_exec() { local h=$1; shift; ip netns exec "$(ns "$h")" "$@"; }

# A process is alive if it exists and is not a zombie (kill -0 succeeds on zombies).
pid_alive() {
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st && $st != Z ]]
}

# stop_pid PID [SIG] [TIMEOUT_MS]: signal one recorded PID, wait (bounded) for it
# to exit, escalate to SIGKILL. Returns the process's exit status if it is our child.
stop_pid() {
    local pid=$1 sig=${2:-TERM} tmo=${3:-3000} t0 rc=0
    [[ -n $pid ]] || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    t0=$(now_ms)
    while pid_alive "$pid" && (($(now_ms) - t0 < tmo)); do sleep 0.02; done
    if pid_alive "$pid"; then
        log "pid $pid still alive ${tmo}ms after SIG$sig; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || rc=$?
    return "$rc"
}

cleanup() {
    local rc=$?
    set +e
    topo_down
    local hook
    for hook in "${CLEANUP_HOOKS[@]}"; do "$hook"; done
    if [[ ${KEEP:-0} == 1 || $rc -ne 0 ]]; then
        echo "[$SCENARIO] work files kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# topo_up HOST...: switch namespace with br0 plus one namespace per host.
topo_up() {
    local h n
    ensure_pkg bridge iproute2; ensure_pkg jq jq; ensure_pkg curl curl; ensure_pkg ping iputils-ping
    ip netns add "$SW"; NAMESPACES+=("$SW")
    ip -n "$SW" link set lo up
    # STP off (ports forward at once); no multicast snooping so 224.0.0.18 and
    # everything else is simply flooded like on a dumb switch.
    ip -n "$SW" link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
    ip -n "$SW" link set br0 up
    for h in "$@"; do
        n=$(ns "$h")
        ip netns add "$n"; NAMESPACES+=("$n")
        ip -n "$n" link set lo up
        # IPv6 only where asked (it keeps captures to what the tests are
        # about); then without duplicate address detection, so link-local
        # addresses are usable at once.
        if [[ -n $V6 ]]; then
            ip netns exec "$n" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
        else
            ip netns exec "$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
        fi
        ip -n "$SW" link add "$h" type veth peer name eth0 netns "$n"
        [[ -n ${HOST_MAC[$h]:-} ]] && ip -n "$n" link set eth0 address "${HOST_MAC[$h]}"
        ip -n "$n" addr add "${HOST_IP[$h]}/24" dev eth0
        [[ -n $V6 && -n ${HOST_IP6[$h]:-} ]] && ip -n "$n" addr add "${HOST_IP6[$h]}/64" dev eth0 nodad
        ip -n "$n" link set eth0 up
        ip -n "$SW" link set "$h" master br0
        ip -n "$SW" link set "$h" up
    done
}

# topo_down: stop every node and helper, delete the namespaces (for scripts
# that build several topologies in one run). The EXIT trap does the same.
topo_down() {
    local h pid
    for h in "${!NODE_PID[@]}"; do kill_node_hard "$h"; done
    for pid in "${EXTRA_PIDS[@]}"; do stop_pid "$pid" TERM 1000 >/dev/null 2>&1 || true; done
    for h in "${NAMESPACES[@]}"; do ip netns del "$h" 2>/dev/null || true; done
    NAMESPACES=(); EXTRA_PIDS=()
}

# ---------------------------------------------------------------- configs

# interval_s "100ms"|"1s" -> seconds as keepalived wants them ("0.1", "1")
interval_s() {
    case $1 in
        *ms) awk -v v="${1%ms}" 'BEGIN{printf "%g", v/1000}' ;;
        *s) echo "${1%s}" ;;
        *) fail "bad interval $1" ;;
    esac
}
interval_ms() { awk -v s="$(interval_s "$1")" 'BEGIN{printf "%d", s*1000}'; }

# RFC 5798 §6.1 timers in ms (float), for a backup of priority PRIO.
skew_ms() { awk -v p="$1" -v i="$(interval_ms "$2")" 'BEGIN{printf "%.1f", (256-p)*i/256}'; }
mdi_ms() { awk -v p="$1" -v i="$(interval_ms "$2")" 'BEGIN{printf "%.1f", 3*i + (256-p)*i/256}'; }

# vipd_conf HOST PRIO INTERVAL VERSION PREEMPT -> prints the config path.
# GARP_REPEAT (env, default "5s") sets garp_repeat_delay, HANDOVER_RELAY
# (env, default true) handover_relay.
vipd_conf() {
    local h=$1 prio=$2 intv=$3 ver=$4 pre=$5 f="$WORK/$1.toml"
    cat >"$f" <<EOF
[control]
listen = "$CONTROL"
socket = "$WORK/$h.sock"

[[vrrp]]
name = "web"
interface = "eth0"
vrid = $VRID
priority = $prio
advert_interval = "$intv"
version = $ver
preempt = $pre
preempt_delay = "0s"
virtual_ips = [$(printf '"%s", ' "${VIPS[@]}" | sed 's/, $//')]
garp_count = 5
garp_repeat_delay = "${GARP_REPEAT:-5s}"
v3_checksum_pseudo_header = true
handover_relay = ${HANDOVER_RELAY:-true}
EOF
    [[ -n ${UNICAST:-} ]] && echo "unicast_peers = [\"$(unicast_peer_of "$h")\"]" >>"$f"
    echo "$f"
}

# The other LB's address, for unicast.
# The other LB's address, for unicast: with V6 its link-local address
# (adverts go from there), from its MAC.
declare -A HOST_LL=([lb1]=fe80::5eff:fe10:11 [lb2]=fe80::5eff:fe10:12)
unicast_peer_of() {
    local other
    case $1 in
        lb1) other=lb2 ;;
        lb2) other=lb1 ;;
        *) fail "no unicast peer for $1" ;;
    esac
    if [[ -n $V6 ]]; then echo "${HOST_LL[$other]}"; else echo "${HOST_IP[$other]}"; fi
}

# keepalived_conf HOST PRIO INTERVAL VERSION PREEMPT -> prints the config path.
# Same shape as the reference vectors' config; vrrp_strict stays off.
keepalived_conf() {
    local h=$1 prio=$2 intv=$3 ver=$4 pre=$5 f="$WORK/$1-keepalived.conf" np="" uc=""
    [[ $pre == false ]] && np="nopreempt"
    local src=${HOST_IP[$h]}
    [[ -n $V6 ]] && src=${HOST_LL[$h]}
    [[ -n ${UNICAST:-} ]] && uc="unicast_src_ip $src
    unicast_ttl 255
    unicast_peer {
        $(unicast_peer_of "$h")
    }"
    cat >"$f" <<EOF
global_defs {
    router_id $h
    vrrp_version $ver
}
vrrp_instance VI_$VRID {
    state BACKUP
    interface eth0
    virtual_router_id $VRID
    priority $prio
    advert_int $(interval_s "$intv")
    $np
    $uc
    virtual_ipaddress {
$(printf '        %s dev eth0\n' "${VIPS[@]}")
    }
}
EOF
    echo "$f"
}

# ---------------------------------------------------------------- daemons

# start_vipd HOST CONF LOG: `ip netns exec` execs, so $! is vipd's own PID.
start_vipd() {
    local h=$1 conf=$2 logf=$3
    ip netns exec "$(ns "$h")" "$VIPD" run --config "$conf" >>"$logf" 2>&1 &
    NODE_PID[$h]=$!; NODE_KIND[$h]=vipd; NODE_LOG[$h]=$logf
    log "started vipd on $h (pid ${NODE_PID[$h]})"
}

# start_keepalived HOST CONF LOG: foreground, console logging, VRRP only,
# distinct pid files per node.
start_keepalived() {
    local h=$1 conf=$2 logf=$3
    ensure_pkg keepalived keepalived
    rm -f "$WORK/$h-ka.pid" "$WORK/$h-ka-vrrp.pid" "$WORK/$h-ka-chk.pid"
    ip netns exec "$(ns "$h")" keepalived -n -l -D -G -P -f "$conf" \
        -p "$WORK/$h-ka.pid" -r "$WORK/$h-ka-vrrp.pid" -c "$WORK/$h-ka-chk.pid" >>"$logf" 2>&1 &
    NODE_PID[$h]=$!; NODE_KIND[$h]=keepalived; NODE_LOG[$h]=$logf
    log "started keepalived on $h (pid ${NODE_PID[$h]})"
}

# start_node KIND HOST PRIO INTERVAL VERSION PREEMPT: write config, start daemon.
start_node() {
    local kind=$1 h=$2 conf
    shift 2
    case $kind in
        vipd) conf=$(vipd_conf "$h" "$@"); start_vipd "$h" "$conf" "$WORK/$h.log" ;;
        keepalived) conf=$(keepalived_conf "$h" "$@"); start_keepalived "$h" "$conf" "$WORK/$h.log" ;;
        frr) conf=$(frr_conf "$h" "$@"); start_frr "$h" "$conf" "$WORK/$h.log" ;;
        *) fail "unknown node kind $kind" ;;
    esac
}

# ---------------------------------------------------------------- FRR

# FRR's vrrpd (Debian's frr: zebra + vrrpd), IPv4. As FRR's documentation
# asks, the node gets a macvlan vrrp4-2-VRID in bridge mode with the virtual
# MAC and the VIP before vrrpd starts; vrrpd then holds it in protodown
# while backup. Each node's daemons run in its namespace under a pathspace
# of their own (-N), so their sockets never meet the system's.
FRR_DIR=/usr/lib/frr
declare -A FRR_ZEBRA=()         # host -> zebra's PID (vrrpd's is NODE_PID)
declare -a FRR_SPACES=()        # the daemons' run directories we made
frr_vmac() { echo "vrrp4-2-$VRID"; }
frr_cleanup() {
    local d
    for d in "${FRR_SPACES[@]}"; do rm -rf -- "$d"; done
}
frr_space() { echo "${P}$1"; }

# frr_dir HOST: the node's FRR files, in a directory the frr user (whose
# rights the daemons drop to) may use.
frr_dir() {
    local d="$WORK/frr-$1"
    if [[ ! -d $d ]]; then
        mkdir -p "$d"
        chown frr:frr "$d"
        chmod o+x "$WORK"
    fi
    echo "$d"
}

# frr_conf HOST PRIO INTERVAL VERSION PREEMPT -> prints the vrrpd config path.
frr_conf() {
    local h=$1 prio=$2 intv=$3 ver=$4 pre=$5 f np=""
    ensure_pkg "$FRR_DIR/vrrpd" frr
    f="$(frr_dir "$h")/vrrpd.conf"
    [[ $pre == false ]] && np=" no vrrp $VRID preempt"
    cat >"$f" <<EOF
hostname $h
interface eth0
 vrrp $VRID version $ver
 vrrp $VRID priority $prio
 vrrp $VRID advertisement-interval $(interval_ms "$intv")
$np
 vrrp $VRID ip $VIP
EOF
    chown frr:frr "$f"
    echo "$f"
}

# start_frr HOST CONF LOG: the macvlan, then zebra, then vrrpd (foreground,
# PIDs recorded; zebra goes with the node).
start_frr() {
    local h=$1 conf=$2 logf=$3 n sp i mac d
    n=$(ns "$h"); sp=$(frr_space "$h"); d=$(frr_dir "$h")
    ensure_pkg "$FRR_DIR/vrrpd" frr
    mac=$(printf '00:00:5e:00:01:%02x' "$VRID")
    if ! ip -n "$n" link show "$(frr_vmac)" >/dev/null 2>&1; then
        ip -n "$n" link add "$(frr_vmac)" link eth0 type macvlan mode bridge
        ip -n "$n" link set dev "$(frr_vmac)" address "$mac"
        ip -n "$n" addr add "$VIP_CIDR" dev "$(frr_vmac)"
        ip -n "$n" link set dev "$(frr_vmac)" up
    fi
    if [[ ! -d /var/run/frr/$sp ]]; then
        install -d -o frr -g frr "/var/run/frr/$sp"
        FRR_SPACES+=("/var/run/frr/$sp")
        ((${#FRR_SPACES[@]} > 1)) || CLEANUP_HOOKS+=(frr_cleanup)
    fi
    install -o frr -g frr /dev/null "$d/zebra.conf"
    ip netns exec "$n" "$FRR_DIR/zebra" -N "$sp" -P 0 -f "$d/zebra.conf" -i "$d/zebra.pid" \
        --log "file:$d/zebra.log" >>"$logf" 2>&1 &
    FRR_ZEBRA[$h]=$!
    EXTRA_PIDS+=("$!")
    for ((i = 0; i < 200; i++)); do [[ -S /var/run/frr/$sp/zserv.api ]] && break; sleep 0.02; done
    [[ -S /var/run/frr/$sp/zserv.api ]] || fail "$h: zebra did not open its socket (see $logf)"
    # vrrpd started before zebra knows eth0's address refuses to start and
    # tries again only 10 s later.
    for ((i = 0; i < 250; i++)); do
        vtysh -N "$sp" -c "show interface eth0" 2>/dev/null | grep -F "inet ${HOST_IP[$h]}/" >/dev/null && break
        sleep 0.02
    done
    ip netns exec "$n" "$FRR_DIR/vrrpd" -N "$sp" -P 0 -f "$conf" -i "$d/vrrpd.pid" \
        --log "file:$d/vrrpd.log" >>"$logf" 2>&1 &
    NODE_PID[$h]=$!; NODE_KIND[$h]=frr; NODE_LOG[$h]=$logf
    log "started FRR vrrpd on $h (pid ${NODE_PID[$h]}, zebra ${FRR_ZEBRA[$h]})"
}

# frr_state HOST: master, backup, init or unreachable, from vtysh.
frr_state() {
    local s
    s=$(vtysh -N "$(frr_space "$1")" -c "show vrrp $VRID json" 2>/dev/null | jq -r '.[0].v4.status // empty' 2>/dev/null)
    case $s in
        Master) echo master ;;
        Backup) echo backup ;;
        Initialize) echo init ;;
        *) echo unreachable ;;
    esac
}

# frr_holds HOST: the VIP is on the node's macvlan and the macvlan is not
# in protodown (what FRR does as backup).
frr_holds() {
    local out
    addr_on "$1" "$(frr_vmac)" "$VIP" || return 1
    out=$(ip -n "$(ns "$1")" -d link show dev "$(frr_vmac)") || return 1
    [[ $out != *"protodown on"* ]]
}

# keepalived's VRRP child PID (from its -r pid file), waited for briefly.
keepalived_child() {
    local f="$WORK/$1-ka-vrrp.pid" i
    for ((i = 0; i < 100; i++)); do
        [[ -s $f ]] && { cat "$f"; return 0; }
        sleep 0.02
    done
    return 1
}

forget_node() {
    if [[ -n ${FRR_ZEBRA[$1]:-} ]]; then
        stop_pid "${FRR_ZEBRA[$1]}" KILL 2000 >/dev/null 2>&1 || true
        unset "FRR_ZEBRA[$1]"
    fi
    unset "NODE_PID[$1]" "NODE_KIND[$1]"
}

# kill_node_hard HOST: SIGKILL the node's daemon by its recorded PID.
# keepalived's VRRP child has a parent-death signal and would resign
# gracefully (priority 0) if only the parent died, and the parent respawns a
# dead child: freeze the parent, kill the child, then kill the parent.
kill_node_hard() {
    local h=$1 pid=${NODE_PID[$1]} c
    if [[ ${NODE_KIND[$h]} == keepalived ]]; then
        kill -STOP "$pid" 2>/dev/null || true
        if c=$(keepalived_child "$h") && [[ $(cat "/proc/$c/comm" 2>/dev/null) == keepalived ]]; then
            kill -KILL "$c" 2>/dev/null || true
        fi
    fi
    stop_pid "$pid" KILL 2000 >/dev/null 2>&1 || true
    forget_node "$h"
}

# crash_node HOST: die without a word (no priority-0 advert, the VIP left
# behind on the dead node's interface, as when the daemon is killed).
crash_node() {
    [[ ${NODE_KIND[$1]} == keepalived ]] && { keepalived_child "$1" >/dev/null || fail "no keepalived VRRP child pid for $1"; }
    kill_node_hard "$1"
    log "crashed $1"
}

# reap_node HOST [TIMEOUT_MS]: wait (bounded) for a node already told to stop
# to exit, SIGKILL it past the timeout; returns its exit status.
reap_node() {
    local h=$1 pid=${NODE_PID[$1]} tmo=${2:-5000} t0 rc=0
    t0=$(now_ms)
    while pid_alive "$pid" && (($(now_ms) - t0 < tmo)); do sleep 0.02; done
    if pid_alive "$pid"; then
        log "$h (pid $pid) still running ${tmo} ms after SIGTERM; SIGKILL"
        kill_node_hard "$h"
        return 124
    fi
    wait "$pid" 2>/dev/null || rc=$?
    forget_node "$h"
    return "$rc"
}

# term_node HOST: graceful stop (SIGTERM, once); returns the daemon's exit status.
term_node() {
    local rc=0
    kill -TERM "${NODE_PID[$1]}" 2>/dev/null || true
    reap_node "$1" || rc=$?
    log "stopped $1 with SIGTERM (exit status $rc)"
    return "$rc"
}

# ---------------------------------------------------------------- observations

# addr_on HOST DEV ADDR: ADDR is on HOST's DEV. The listing is read whole
# first: under pipefail `ip ... | grep -q` fails whenever grep quits before
# ip has written everything (an IPv6 listing is long enough for that).
addr_on() {
    local out
    out=$(ip -n "$(ns "$1")" addr show dev "$2" 2>/dev/null) || return 1
    grep -qE "inet6? $3/" <<<"$out"
}
has_vip() {
    if [[ ${NODE_KIND[$1]:-} == frr ]]; then frr_holds "$1"; else addr_on "$1" eth0 "$VIP"; fi
}

# vip_holder: "lb1", "lb2", "lb1 lb2" or "none"
vip_holder() {
    local h out=()
    for h in lb1 lb2; do
        [[ " ${NAMESPACES[*]} " == *" $(ns "$h") "* ]] && has_vip "$h" && out+=("$h")
    done
    if ((${#out[@]})); then echo "${out[*]}"; else echo none; fi
}

vipd_json() { ns_exec "$1" curl -s -m 1 "http://$CONTROL/status"; }

# vipd_field HOST JQ-EXPR: one value from the first VRRP instance's status.
vipd_field() { vipd_json "$1" | jq -r ".vrrp[0]$2"; }
vipd_state() { vipd_field "$1" .state 2>/dev/null || echo unreachable; }

# node_state HOST: master/backup/... for either implementation. keepalived has
# no status API here, so its last "Entering X STATE" log line stands in.
node_state() {
    if [[ ${NODE_KIND[$1]:-} == keepalived ]]; then
        local s
        s=$(grep -o 'Entering [A-Z]* STATE' "${NODE_LOG[$1]}" | tail -n 1 | awk '{print tolower($2)}')
        echo "${s:-init}"
    elif [[ ${NODE_KIND[$1]:-} == vipd ]]; then
        vipd_state "$1"
    elif [[ ${NODE_KIND[$1]:-} == frr ]]; then
        frr_state "$1"
    else
        echo down
    fi
}

# node_transitions HOST: vipd's transition counter, or keepalived's count of
# state-entry log lines. Only ever compared with itself, before vs after.
node_transitions() {
    if [[ ${NODE_KIND[$1]} == keepalived ]]; then
        grep -c 'Entering [A-Z]* STATE' "${NODE_LOG[$1]}" || true
    else
        vipd_field "$1" .transitions
    fi
}

# client_neigh_mac: the client's neighbour entry (MAC) for the VIP, or "none".
client_neigh_mac() {
    local m
    m=$(ip -n "$(ns client)" neigh show "$VIP" dev eth0 | awk '{for (i=1;i<NF;i++) if ($i=="lladdr") print $(i+1)}')
    echo "${m:-none}"
}

# wait_for TIMEOUT_MS CMD...: poll CMD every 10 ms until it succeeds. Sets
# WAITED_MS (time from the call to success). Bounded in time and count.
WAITED_MS=0
# shellcheck disable=SC2034  # WAITED_MS is read by the scenarios
wait_for() {
    local tmo=$1 t0 i
    shift
    t0=$(now_ms)
    for ((i = 0; i < 100000; i++)); do
        if "$@" >/dev/null 2>&1; then WAITED_MS=$(($(now_ms) - t0)); return 0; fi
        (($(now_ms) - t0 >= tmo)) && break
        sleep 0.01
    done
    WAITED_MS=$(($(now_ms) - t0))
    return 1
}

state_is() { [[ $(node_state "$1") == "$2" ]]; }
holder_is() { [[ $(vip_holder) == "$1" ]]; }
neigh_is() { [[ $(client_neigh_mac) == "$1" ]]; }

# wait_pair_settled MASTER BACKUP TIMEOUT_MS: MASTER in master state holding
# the VIP alone, BACKUP in backup state.
pair_settled() { state_is "$1" master && state_is "$2" backup && holder_is "$1"; }
# start_pair INTERVAL: lb1 (priority 150) and lb2 (100), preempt on, settled
# with lb1 master, and a moment to breathe.
start_pair() {
    start_node "$IMPL" lb1 150 "$1" 3 true
    start_node "$IMPL" lb2 100 "$1" 3 true
    wait_pair_settled lb1 lb2 5000
    sleep 0.3
}
wait_pair_settled() {
    wait_for "$3" pair_settled "$1" "$2" ||
        fail "not settled after $3 ms: $1=$(node_state "$1") $2=$(node_state "$2") VIP on: $(vip_holder)"
}


# ---------------------------------------------------------------- failover case

# failover_case VERSION KIND_HI KIND_LO: a fresh topology with KIND_HI on lb1
# (priority 150) and KIND_LO on lb2 (100), VRRPv3 at 100 ms or v2 at 1 s:
#   1. election: lb1 master with the VIP, lb2 backup;
#   2. crash of lb1: lb2 holds the VIP within Master_Down_Interval + margin;
#   3. lb1 restarted (preempt): takes the VIP back, lb2 backup again;
#   4. SIGTERM of lb1: lb2 holds the VIP within Skew_Time + margin (it honours
#      the other side's priority-0 advert).
# Appends a line to CASE_SUMMARY. CASE_NAME names it in the log;
# CASE_TOPO_HOOK (a function) runs after the topology is up.
MARGIN_MS=${MARGIN_MS:-250}
CASE_NAME=$SCENARIO
CASE_TOPO_HOOK=""
declare -a CASE_SUMMARY=()
failover_case() {
    local ver=$1 hi=$2 lo=$3 intv ms mdi skew lim t0 crash back grace peers=""
    intv=$([[ $ver == 3 ]] && echo 100ms || echo 1s)
    ms=$(interval_ms "$intv")
    SCENARIO="$CASE_NAME v$ver lb1=$hi lb2=$lo"
    topo_up lb1 lb2 client
    if [[ -n $CASE_TOPO_HOOK ]]; then "$CASE_TOPO_HOOK"; fi
    start_node "$hi" lb1 150 "$intv" "$ver" true
    start_node "$lo" lb2 100 "$intv" "$ver" true
    wait_pair_settled lb1 lb2 $((10 * ms + 3000))
    sleep "$(awk -v m="$ms" 'BEGIN{print 3*m/1000}')"
    pair_settled lb1 lb2 || fail "election did not hold: lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on: $(vip_holder)"
    # What vipd saw of its keepalived peer (adverts and which checksum form).
    for h in lb1 lb2; do
        [[ ${NODE_KIND[$h]} == vipd ]] && peers=$(vipd_field "$h" '.peers // [] | map("\(.address):\(.adverts)") | join(",")' 2>/dev/null || echo "?")
    done

    mdi=$(mdi_ms 100 "$intv"); skew=$(skew_ms 100 "$intv")
    lim=$(awk -v m="$mdi" -v g="$MARGIN_MS" 'BEGIN{printf "%d", m+g}')
    t0=$(now_ms)
    crash_node lb1
    wait_for $((lim + 3000)) has_vip lb2 || fail "lb2 ($lo) never took the VIP after lb1 ($hi) crashed"
    crash=$(($(now_ms) - t0))
    ((crash <= lim)) || fail "crash takeover $crash ms > MDI $mdi + $MARGIN_MS ms"
    wait_for 1000 state_is lb2 master || fail "lb2 holds the VIP but state is $(node_state lb2)"

    t0=$(now_ms)
    start_node "$hi" lb1 150 "$intv" "$ver" true
    wait_for $((10 * ms + 3000)) pair_settled lb1 lb2 ||
        fail "restarted lb1 ($hi) did not take back: lb1=$(node_state lb1) lb2=$(node_state lb2) VIP on: $(vip_holder)"
    back=$(($(now_ms) - t0))
    sleep "$(awk -v m="$ms" 'BEGIN{print 2*m/1000}')"

    lim=$(awk -v s="$skew" -v g="$MARGIN_MS" 'BEGIN{printf "%d", s+g}')
    t0=$(now_ms)
    kill -TERM "${NODE_PID[lb1]}"
    wait_for $((lim + 3000)) has_vip lb2 || fail "lb2 ($lo) never took the VIP after lb1 ($hi) stopped"
    grace=$(($(now_ms) - t0))
    reap_node lb1 || fail "lb1 ($hi) exited non-zero on SIGTERM"
    ((grace <= lim)) || fail "graceful takeover $grace ms > Skew_Time $skew + $MARGIN_MS ms"
    has_vip lb1 && fail "lb1 ($hi) kept the VIP after SIGTERM"

    CASE_SUMMARY+=("v$ver $intv lb1=$hi(150) lb2=$lo(100): crash ${crash} ms (MDI $mdi), retake ${back} ms, graceful ${grace} ms (skew $skew)${peers:+, vipd peers $peers}")
    topo_down
}

# ---------------------------------------------------------------- capture

# start_capture HOST FILE [FILTER]: tcpdump on HOST's eth0 into a pcap file.
# Sets CAPTURE_PID. -U flushes each packet; -Z root because the work dir is root-only.
start_capture() {
    local h=$1 f=$2 filter=${3:-ip proto 112 or arp} i
    ensure_pkg tcpdump tcpdump
    ip netns exec "$(ns "$h")" tcpdump -i eth0 -n -U --immediate-mode -Z root -s 128 -w "$f" "$filter" >"$f.log" 2>&1 &
    CAPTURE_PID=$!
    EXTRA_PIDS+=("$CAPTURE_PID")
    # tcpdump says "listening on" once the socket is open.
    for ((i = 0; i < 200; i++)); do grep -q 'listening on' "$f.log" 2>/dev/null && return 0; sleep 0.01; done
    fail "tcpdump did not start: $(cat "$f.log")"
}

# Let the last packets reach the file before stopping tcpdump.
stop_capture() { sleep 0.2; stop_pid "$1" INT 2000 >/dev/null 2>&1 || true; }

# read_capture FILE: text with epoch timestamps and link-level headers.
read_capture() { tcpdump -r "$1" -tt -e -n 2>/dev/null; }
