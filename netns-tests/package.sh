#!/usr/bin/env bash
# package.sh: the .deb, on this host: built by packaging/build-deb.sh
# (lintian: no errors), installed with dpkg -i, its files checked (binary,
# unit, conffile, examples, both man pages), `vipd check` run on the
# installed /etc/vipd/vipd.toml (valid, configuring nothing), the service
# enabled but not started, then `dpkg --purge`, which leaves nothing behind.
# Refuses to run where a vipd package is installed already.
NT_DIR0=$(cd "$(dirname "$0")" && pwd)
source "$NT_DIR0/lib.sh"
need_root

if dpkg-query -W -f='${Status}' vipd 2>/dev/null | grep -q "installed"; then
    fail "a vipd package is installed on this host already; this test would replace it"
fi
ensure_pkg dpkg-deb dpkg
FILES=(/usr/sbin/vipd /lib/systemd/system/vipd.service /etc/vipd/vipd.toml /etc/vipd
    /usr/share/doc/vipd/examples/lb1.toml /usr/share/doc/vipd/examples/lb2.toml /usr/share/doc/vipd/README.md
    /usr/share/doc/vipd/copyright /usr/share/man/man8/vipd.8.gz /usr/share/man/man5/vipd.toml.5.gz)
WANTS=/etc/systemd/system/multi-user.target.wants/vipd.service
for f in "${FILES[@]}" "$WANTS"; do
    [[ -e $f || -L $f ]] && fail "$f exists before the package is installed"
done
purge() { dpkg --purge vipd >/dev/null 2>&1 || true; }
CLEANUP_HOOKS+=(purge)

deb=$("$NT_DIR/../packaging/build-deb.sh" 2>"$WORK/build-deb.log" | tail -n 1) || {
    tail -n 40 "$WORK/build-deb.log"
    fail "build-deb.sh failed"
}
[[ -f $deb ]] || fail "no package: $deb"
warnings=$(grep -c "^W: " "$WORK/build-deb.log" || true)
log "built $deb; lintian: no errors, $warnings warning(s)"
grep "^W: " "$WORK/build-deb.log" | sed 's/^/    /' || true

dpkg -i "$deb" >"$WORK/dpkg-i.log" 2>&1 || { cat "$WORK/dpkg-i.log"; fail "dpkg -i failed"; }
for f in "${FILES[@]}"; do [[ -e $f ]] || fail "the package did not install $f"; done
[[ -x /usr/sbin/vipd ]] || fail "/usr/sbin/vipd is not executable"
dpkg-query -W -f='${Conffiles}' vipd | grep -q "/etc/vipd/vipd.toml" || fail "/etc/vipd/vipd.toml is not a conffile"
out=$(/usr/sbin/vipd check --config /etc/vipd/vipd.toml) || fail "vipd check refuses the installed file: $out"
[[ $out == *"nothing is configured yet"* ]] || fail "the installed file configures something: $out"
grep -q "^ExecStart=/usr/sbin/vipd run" /lib/systemd/system/vipd.service || fail "the unit does not start /usr/sbin/vipd"
[[ -L $WANTS ]] || fail "the service is not enabled"
[[ -e /run/vipd/control.sock ]] && fail "postinst started vipd (it must only enable it)"
for page in /usr/share/man/man8/vipd.8.gz /usr/share/man/man5/vipd.toml.5.gz; do
    zcat "$page" | head -n 5 | grep -q '^\.TH' || fail "$page is not a manual page"
done
zcat /usr/share/man/man5/vipd.toml.5.gz | grep -q 'advert_interval' || fail "vipd.toml(5) lacks the [[vrrp]] keys"
/usr/sbin/vipd --version >/dev/null || fail "the installed binary does not run"

dpkg --purge vipd >"$WORK/dpkg-purge.log" 2>&1 || { cat "$WORK/dpkg-purge.log"; fail "dpkg --purge failed"; }
for f in "${FILES[@]}" "$WANTS"; do
    [[ -e $f || -L $f ]] && fail "$f is left behind after dpkg --purge"
done
dpkg-query -W vipd >/dev/null 2>&1 && fail "dpkg still knows vipd after the purge"
pass "the .deb builds (lintian: no errors, $warnings warning(s)), installs its $(( ${#FILES[@]} )) files, enables without starting, its file passes vipd check, and purges without a trace"
