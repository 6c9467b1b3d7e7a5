#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL server:
#   - installs PostgreSQL from Debian's packages if it is absent,
#   - starts a cluster on 127.0.0.1 on a free port (data in a temp dir),
#   - exports VIGIL_TEST_PG_URL (a superuser URL), VIGIL_PG_BIN and VIGIL_PG_DIR,
#   - runs "$@", then stops the server and removes its data.
# Tests run it with fsync=off (speed); VIGIL_PG_DURABLE=1 keeps PostgreSQL's
# defaults (fsync on), as benchmarks must. VIGIL_PG_EXTRA_OPTS adds server
# options (`just bench` loads pg_stat_statements to count statements per run).
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
chmod 755 "$PGDIR"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cleanup() {
    as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PGDIR"
}
trap cleanup EXIT
as_pg "$PGBIN/initdb" -D "$PGDIR/data" -U postgres -A trust --no-sync >/dev/null
FSYNC="-c fsync=off"
[ "${VIGIL_PG_DURABLE:-0}" = 1 ] && FSYNC=""
as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 \
    -o "-p $PORT -k $PGDIR -c listen_addresses=127.0.0.1 -c max_connections=400 $FSYNC ${VIGIL_PG_EXTRA_OPTS:-}" \
    start >/dev/null
log "throwaway PostgreSQL on 127.0.0.1:$PORT (data in $PGDIR)"

export VIGIL_TEST_PG_URL="postgres://postgres@127.0.0.1:$PORT/postgres"
export VIGIL_PG_BIN="$PGBIN"
export VIGIL_PG_DIR="$PGDIR"
set +e
"$@"
rc=$?
set -e
exit $rc
