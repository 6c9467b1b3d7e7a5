#!/usr/bin/env bash
# `just bench`: Vigil side by side with DBOS Transact on the same machine and
# the same PostgreSQL, in one invocation. Writes bench/results/<stamp>/ (every
# raw JSON + results.json) and rewrites BENCHMARKS.md from it.
#
#   1. throughput: 5 trivial steps, N runs, 1 and 3 pods, concurrency 1 and 16,
#      SQLite and PostgreSQL; DBOS (anchor `throughput --mode start`) at 1 and
#      16 on the same PostgreSQL; the commit limit (`vigil bench commits`:
#      one-row INSERT + commit per second) of both stores at 1 and 16 clients;
#      repetitions interleaved, medians reported; statements and commits per
#      run from pg_stat_statements.
#   2. recovery: K SIGKILLs and K SIGTERMs of the owner of a streaming run per
#      store; DBOS anchor `recovery` (kill, restart the same executor) R times.
#   3. console: criterion render bench (10,000 runs) and store queries/s of the
#      refresh loop; 4. memory: pods' peak RSS under load (from 1.), the
#      console's peak RSS on a real terminal (tmux) over a 10,000-run store.
#
# Knobs (env): VIGIL_BENCH_REPS=3 VIGIL_BENCH_RUNS=1000 VIGIL_BENCH_KILLS=20
# VIGIL_BENCH_DBOS_RECOVERIES=5, VIGIL_BENCH_QUICK=1 (tiny numbers: a smoke
# run of the whole pipeline), DBOS_ANCHOR (path of dbos_anchor.py).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '==> %s\n' "$*" >&2; }

if [ "${1:-}" != "--inner" ]; then
    log "building vigil (release)"
    cargo build --release --quiet
    VENV=target/bench-venv
    if ! "$VENV/bin/python" -c 'import dbos' 2>/dev/null; then
        log "installing DBOS Transact into $VENV (PyPI: dbos>=3,<4)"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet 'dbos>=3,<4'
    fi
    command -v tmux >/dev/null || {
        log "tmux not found: installing it from Debian's packages"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux >/dev/null
    }
    # A PostgreSQL with its default durability (fsync on), unlike the tests'.
    # pg_stat_statements: statements and commits per run (see `vigil bench throughput`).
    VIGIL_PG_DURABLE=1 VIGIL_PG_EXTRA_OPTS="-c shared_preload_libraries=pg_stat_statements" \
        exec ./scripts/with-pg.sh "$0" --inner
fi

: "${VIGIL_TEST_PG_URL:?run through scripts/with-pg.sh}"
PG="$VIGIL_TEST_PG_URL"
VIGIL="$PWD/target/release/vigil"
PY="$PWD/target/bench-venv/bin/python"
ANCHOR="${DBOS_ANCHOR:-../shared/anchors/dbos_anchor.py}"
[ -f "$ANCHOR" ] || { log "DBOS anchor script not found at $ANCHOR (set DBOS_ANCHOR)"; exit 2; }
ANCHOR="$(realpath "$ANCHOR")"
REPS="${VIGIL_BENCH_REPS:-3}"
RUNS="${VIGIL_BENCH_RUNS:-1000}"
KILLS="${VIGIL_BENCH_KILLS:-20}"
DBOS_REC="${VIGIL_BENCH_DBOS_RECOVERIES:-5}"
if [ "${VIGIL_BENCH_QUICK:-0}" = 1 ]; then REPS=1 RUNS=60 KILLS=2 DBOS_REC=1; fi

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="bench/results/$STAMP"
mkdir -p "$OUT/raw"
export VIGIL_LOG=warn
ADMIN_DB="$(printf '%s' "$PG" | sed 's#/postgres$#/dbos_anchor#')"
psql "$PG" -qc "CREATE DATABASE dbos_anchor" >/dev/null
psql "$PG" -Atc "SELECT version()" > "$OUT/raw/postgres-version.txt"

{
    echo "nproc: $(nproc)"
    grep -m1 'model name' /proc/cpuinfo || true
    free -g | sed -n 2p
    uname -srm
    "$PY" --version
    "$PY" -c 'import importlib.metadata as m; print("dbos", m.version("dbos"))'
    cat "$OUT/raw/postgres-version.txt"
    rustc --version
    git rev-parse HEAD
} > "$OUT/raw/machine.txt" 2>&1

dbos_tp() { # conc rep
    (cd "$OUT/raw" && "$PY" "$ANCHOR" --db-url "$ADMIN_DB" throughput \
        --workflows "$RUNS" --steps 5 --concurrency "$1" --warmup 50) \
        > "$OUT/raw/tp-dbos-postgres-p1-c$1-r$2.json"
}
commit_limit() { # store-label store conc rep
    "$VIGIL" bench commits --store "$2" --concurrency "$3" --seconds 5 \
        --out "$OUT/raw/commits-$1-c$3-r$4.json"
}
vigil_tp() { # store-label store pods conc rep
    "$VIGIL" bench throughput --store "$2" --pods "$3" --concurrency "$4" \
        --runs "$RUNS" --warmup 50 --out "$OUT/raw/tp-vigil-$1-p$3-c$4-r$5.json"
}

log "throughput: $REPS repetitions of $RUNS runs per configuration, interleaved"
for rep in $(seq 1 "$REPS"); do
    for c in 1 16; do
        log "rep $rep, concurrency $c: commit limits, DBOS, then Vigil (postgres p1/p3, sqlite p1/p3)"
        commit_limit postgres "$PG" "$c" "$rep"
        commit_limit sqlite sqlite "$c" "$rep"
        dbos_tp "$c" "$rep"
        vigil_tp postgres "$PG" 1 "$c" "$rep"
        vigil_tp postgres "$PG" 3 "$c" "$rep"
        vigil_tp sqlite sqlite 1 "$c" "$rep"
        vigil_tp sqlite sqlite 3 "$c" "$rep"
    done
done

log "recovery: $KILLS kills per store and signal; DBOS recovery x$DBOS_REC"
for sig in kill term; do
    "$VIGIL" bench recovery --store "$PG" --signal "$sig" --kills "$KILLS" \
        --out "$OUT/raw/rec-vigil-postgres-$sig.json"
    "$VIGIL" bench recovery --store sqlite --signal "$sig" --kills "$KILLS" \
        --out "$OUT/raw/rec-vigil-sqlite-$sig.json"
done
for i in $(seq 1 "$DBOS_REC"); do
    (cd "$OUT/raw" && "$PY" "$ANCHOR" --db-url "$ADMIN_DB" recovery --workdir "$PWD") \
        > "$OUT/raw/rec-dbos-postgres-kill-$i.json"
done
rm -f "$OUT"/raw/recovery_*.log

log "console: criterion render bench, refresh queries, peak RSS on a real terminal"
cargo bench --quiet --bench console_render -- --noplot 2>&1 | tee "$OUT/raw/console-render.txt" >&2
for f in target/criterion/runs_view_*/new/estimates.json; do
    name="$(basename "$(dirname "$(dirname "$f")")")"
    cp "$f" "$OUT/raw/criterion-$name.json"
done
VIGIL_BENCH_OUT="$OUT/raw/console-refresh.json" cargo bench --quiet --bench console >&2
SEED="$(mktemp -d)"
"$VIGIL" bench seed --store "$SEED/console.db" --runs 10000
tmux kill-session -t vigil-bench 2>/dev/null || true
tmux new-session -d -s vigil-bench -x 200 -y 50 \
    "exec $VIGIL console --store $SEED/console.db --read-only"
sleep 3
for k in j j j j G g g / s e e d Enter Escape; do tmux send-keys -t vigil-bench "$k"; sleep 0.2; done
sleep 3
CPID="$(tmux list-panes -t vigil-bench -F '#{pane_pid}')"
grep VmHWM "/proc/$CPID/status" | awk '{print $2}' > "$OUT/raw/console-rss-kib.txt"
tmux capture-pane -t vigil-bench -p > "$OUT/raw/console-screen.txt"
tmux send-keys -t vigil-bench q
sleep 1
tmux kill-session -t vigil-bench 2>/dev/null || true
rm -rf "$SEED"

log "report"
python3 scripts/bench_report.py "$OUT" --markdown BENCHMARKS.md
log "results: $OUT/results.json and BENCHMARKS.md"
