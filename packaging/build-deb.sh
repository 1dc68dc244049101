#!/usr/bin/env bash
# build-deb.sh: the .deb of vipd, with cargo-deb (installed when missing):
# the release binary, the man pages generated from it (vipd(8) from the
# command line's definitions, vipd.toml(5) from the README's key tables),
# then `cargo deb --no-build`, then lintian on the result (installed when
# missing; run with LINTIAN=0 to skip). Prints the .deb's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-deb >/dev/null 2>&1 && ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb: installing cargo-deb" >&2
    cargo install --locked cargo-deb >&2
fi
cargo build --release >&2
mkdir -p target/man
target/release/vipd manpage vipd | gzip -9n >target/man/vipd.8.gz
target/release/vipd manpage vipd.toml | gzip -9n >target/man/vipd.toml.5.gz
deb=$(cargo deb --no-build --strip 2>&1 | tail -n 1)
[[ -f $deb ]] || { echo "build-deb: cargo deb did not say where the package is: $deb" >&2; exit 1; }
if [[ ${LINTIAN:-1} == 1 ]]; then
    if ! command -v lintian >/dev/null 2>&1; then
        echo "build-deb: installing lintian" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q lintian >&2
    fi
    # Errors fail the build; warnings are listed (the README says why each).
    lintian --fail-on error --no-tag-display-limit "$deb" >&2
fi
echo "$deb"
