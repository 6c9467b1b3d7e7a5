#!/usr/bin/env bash
# Install DBOS Transact 3.4.0 for the DBOS chaos target
# (fixtures/targets/dbos/app.py) into target/dbos-venv, from the pinned
# fixtures/targets/dbos/requirements.txt (dbos and every transitive
# dependency). Idempotent: when the venv already imports dbos 3.4.0 and
# requirements.txt is unchanged since the last install (its sha256 is kept
# in the venv), it does nothing. Prints one line saying what it did; fails
# (non-zero) if the venv or pip fails.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/dbos-venv
REQ=fixtures/targets/dbos/requirements.txt
STAMP="$VENV/.vigil-requirements.sha256"
WANT_VERSION=3.4.0

die() { printf 'install-dbos: %s\n' "$*" >&2; exit 1; }

[ -f "$REQ" ] || die "$REQ is missing"
command -v python3 >/dev/null || die "python3 not found (app.py needs Python >= 3.11)"
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' ||
    die "python3 is $(python3 -V 2>&1); app.py reads TOML with tomllib, which needs >= 3.11"

want_sha="$(sha256sum "$REQ" | cut -d' ' -f1)"

venv_ok() {
    [ -x "$VENV/bin/python" ] &&
        [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_sha" ] &&
        "$VENV/bin/python" - "$WANT_VERSION" <<'EOF' >/dev/null 2>&1
import sys, importlib.metadata as md
import dbos  # noqa: F401
sys.exit(0 if md.version("dbos") == sys.argv[1] else 1)
EOF
}

if venv_ok; then
    echo "install-dbos: $VENV already has dbos $WANT_VERSION (requirements unchanged): nothing to do"
    exit 0
fi

# Debian's python3 has no working `-m venv` (no ensurepip) until python3-venv
# is installed.
install_venv_pkg() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "install-dbos: python3 -m venv is unavailable: installing python3-venv" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq python3-venv >/dev/null 2>&1 || {
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        } || die "apt-get install python3-venv failed"
    else
        die "python3 -m venv is unavailable; install it (Debian: apt-get install python3-venv) and rerun"
    fi
}
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || install_venv_pkg

action="updated"
# A venv whose pip does not run (half-built, or its python is gone) is rebuilt.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    action="created"
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        install_venv_pkg
        python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
    fi
fi
rm -f "$STAMP"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ" ||
    die "pip install -r $REQ failed"
got="$("$VENV/bin/python" -c 'import dbos, importlib.metadata as md; print(md.version("dbos"))')" ||
    die "dbos does not import in $VENV after pip install"
[ "$got" = "$WANT_VERSION" ] || die "$VENV has dbos $got after install, expected $WANT_VERSION"
printf '%s\n' "$want_sha" >"$STAMP"
echo "install-dbos: $action $VENV with dbos $got from $REQ"
