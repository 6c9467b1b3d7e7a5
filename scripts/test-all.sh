#!/usr/bin/env bash
# The whole test suite, on a fresh machine of this kind, in one command:
#   - installs PostgreSQL from Debian's packages if it is absent,
#   - starts a throwaway cluster on 127.0.0.1 on a free port,
#   - exports its URL (VIGIL_TEST_PG_URL) and binaries (VIGIL_PG_BIN),
#   - runs fmt, clippy and every test with INSTA_UPDATE=no and CI=true,
#     so a missing service is a failure, never a skip.
# Extra arguments go to `cargo test` (e.g. a test-name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

find_pg_bin() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && printf '%s\n' "$d"
    done | sort -V | tail -n 1
}

PGBIN="${VIGIL_PG_BIN:-$(find_pg_bin)}"
if [ -z "$PGBIN" ]; then
    log "PostgreSQL not found: installing it from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
    PGBIN="$(find_pg_bin)"
    [ -n "$PGBIN" ] || { log "PostgreSQL install did not provide initdb"; exit 1; }
fi
log "PostgreSQL binaries: $PGBIN"

# initdb refuses to run as root: run the server as the postgres user then.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

PGDIR="$(mktemp -d /tmp/vigil-pg.XXXXXX)"
[ "$(id -u)" = 0 ] && chown postgres "$PGDIR"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cleanup() {
    as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PGDIR"
}
trap cleanup EXIT
as_pg "$PGBIN/initdb" -D "$PGDIR/data" -U postgres -A trust --no-sync >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 \
    -o "-p $PORT -k $PGDIR -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off" \
    start >/dev/null
log "throwaway PostgreSQL on 127.0.0.1:$PORT (data in $PGDIR)"

export VIGIL_TEST_PG_URL="postgres://postgres@127.0.0.1:$PORT/postgres"
export VIGIL_PG_BIN="$PGBIN"
export INSTA_UPDATE=no
export CI="${CI:-true}"

log "cargo fmt --check"
cargo fmt --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
log "cargo test (embedded SQLite + PostgreSQL suites)"
TEST_LOG="$PGDIR/cargo-test.log"
cargo test --all-targets "$@" 2>&1 | tee "$TEST_LOG"
if [ $# -eq 0 ]; then
    log "schemathesis against a live pod (SQLite, then PostgreSQL)"
    ./scripts/api-fuzz.sh "$PGDIR/fuzz.db"
    as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -qc 'CREATE DATABASE vigil_fuzz' >/dev/null
    ./scripts/api-fuzz.sh "postgres://postgres@127.0.0.1:$PORT/vigil_fuzz"
fi
# One plain closing line for whoever reads the end of this output.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$TEST_LOG"
