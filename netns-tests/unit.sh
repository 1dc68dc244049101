#!/usr/bin/env bash
# unit.sh: the systemd unit (no namespaces needed). `systemd-analyze verify`
# is clean (on a copy whose commands point at the binary just built),
# and `systemd-analyze security` rates its sandbox at an exposure of 3.0 or
# less (Debian's keepalived, HAProxy and nginx units: 9.6 UNSAFE here).
source "$(dirname "$0")/lib.sh"
need_root
need_vipd
UNIT="$NT_DIR/../systemd/vipd.service"
command -v systemd-analyze >/dev/null || ensure_pkg systemd-analyze systemd
sed "s|/usr/sbin/vipd|$VIPD|g" "$UNIT" >"$WORK/vipd.service"
out=$(systemd-analyze verify "$WORK/vipd.service" 2>&1) || fail "verify failed: $out"
[[ -z $out ]] || fail "verify is not clean: $out"
exposure=$(systemd-analyze security --offline=true "$UNIT" 2>&1 | awk '/Overall exposure level/ { print $(NF-2) }')
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 3.0) }' || fail "exposure $exposure, want 3.0 or less"
pass "systemd-analyze verify clean; security exposure $exposure"
