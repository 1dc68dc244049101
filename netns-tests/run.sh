#!/usr/bin/env bash
# run.sh: run every namespace scenario in order (or the ones named on the
# command line), print a summary, exit non-zero if any failed. CI runs it as
# root after `cargo test`. Each scenario is a separate process with its own
# namespaces and cleanup, bounded by a timeout.
set -euo pipefail
cd "$(dirname "$0")"
[[ $(id -u) -eq 0 ]] || { echo "run.sh: must run as root" >&2; exit 2; }

export VIPD=${VIPD:-$PWD/../target/debug/vipd}
if [[ ! -x $VIPD ]]; then
    echo "run.sh: $VIPD missing, building it" >&2
    (cd .. && cargo build)
fi
[[ -x $VIPD ]] || { echo "run.sh: no vipd binary at $VIPD" >&2; exit 2; }

SCENARIOS=(election crash graceful preempt split-brain bad-packets interop-keepalived http-failover smuggling tls-scan down-at-start vip-deleted primary-lost stalled-backup track-http track-iface-script notify-hooks sync-group v2-address-list unicast ipv6 http-failover-v6 unicast-v6 vmac vmac-v6 interop-frr active-active operator status-page reload upgrade package unit)
(($#)) && SCENARIOS=("$@")
OUT=$(mktemp -d /tmp/vipd-netns-run.XXXXXX)
declare -a results=()
failed=0
for s in "${SCENARIOS[@]}"; do
    [[ -x ./$s.sh ]] || { echo "run.sh: no scenario $s" >&2; exit 2; }
    echo "=== $s"
    t0=$(date +%s)
    rc=0
    # package.sh builds the release binary and may install cargo-deb first.
    limit=300
    [[ $s == package ]] && limit=1200
    # Both may install a large Debian package first (testssl.sh, chromium).
    [[ $s == tls-scan || $s == status-page ]] && limit=900
    timeout --kill-after=10 "$limit" "./$s.sh" >"$OUT/$s.log" 2>&1 </dev/null || rc=$?
    dt=$(($(date +%s) - t0))
    if ((rc == 0)); then
        grep -E '^(PASS|  )' "$OUT/$s.log" || true
        results+=("PASS  $s (${dt}s)")
    else
        failed=$((failed + 1))
        echo "--- $s failed (exit $rc); last lines of $OUT/$s.log:"
        tail -n 60 "$OUT/$s.log"
        results+=("FAIL  $s (${dt}s, exit $rc, log $OUT/$s.log)")
    fi
done

echo
echo "=== netns summary (vipd: $VIPD)"
printf '  %s\n' "${results[@]}"
if ((failed)); then
    echo "$failed of ${#SCENARIOS[@]} scenarios FAILED (logs in $OUT)"
    exit 1
fi
rm -rf "$OUT"
echo "all ${#SCENARIOS[@]} scenarios passed"
