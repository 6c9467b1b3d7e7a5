#!/usr/bin/env bash
# The whole test suite, on a fresh machine of this kind, in one command:
# under scripts/with-pg.sh (which installs PostgreSQL from Debian's packages
# if absent and starts a throwaway server on 127.0.0.1), runs fmt, clippy,
# every test with INSTA_UPDATE=no and CI=true (so a missing service, PostgreSQL,
# nftables or the Docker engine, is a failure, never a skip; nftables is
# installed from Debian's packages if absent; DBOS Transact for the
# target scenarios is installed first by scripts/install-dbos.sh), then schemathesis against
# live pods, a one-minute soak and a bounded run of every cargo-fuzz target.
# Extra arguments go to `cargo test` (e.g. a test-name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIGIL_TEST_PG_URL:-}" ]; then
    exec ./scripts/with-pg.sh "$0" "$@"
fi

log() { printf '==> %s\n' "$*" >&2; }
export INSTA_UPDATE=no
export CI="${CI:-true}"

# The chaos harness's packet faults (src/chaos/net/nft.rs) drive nftables;
# under CI=true their tests fail without it.
if ! command -v nft >/dev/null 2>&1 && [ ! -x /usr/sbin/nft ]; then
    log "nft not found: installing nftables from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq nftables >/dev/null
fi
# chaos::fuse (storage faults) mounts FUSE filesystems: /dev/fuse, and
# fusermount3 (Debian's fuse3) for unmounting when the mount syscall is refused.
if ! command -v fusermount3 >/dev/null 2>&1; then
    log "fusermount3 not found: installing fuse3 from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq fuse3 >/dev/null
fi
log "DBOS Transact for the target scenarios (scripts/install-dbos.sh: target/dbos-venv, pinned)"
./scripts/install-dbos.sh
log "cargo fmt --check"
cargo fmt --check
log "cargo clippy --all-targets (default features and fault-injection) -- -D warnings"
cargo clippy --all-targets -- -D warnings
cargo clippy --all-targets --features fault-injection -- -D warnings
log "cargo test --features fault-injection (SQLite + PostgreSQL suites, chaos scenarios and their teeth)"
TEST_LOG="$(mktemp /tmp/vigil-cargo-test.XXXXXX)"
trap 'rm -f "$TEST_LOG"' EXIT
# tests/docker.rs drives the machine's Docker engine (CI=true: no engine is a
# failure); whatever a failed Docker test left (its runner gone) is swept by
# label afterwards.
docker_clean() { cargo run --quiet --features fault-injection -- chaos clean >/dev/null 2>&1 || true; }
trap 'rm -f "$TEST_LOG"; docker_clean' EXIT
cargo test --no-fail-fast --lib --bins --tests --features fault-injection "$@" 2>&1 | tee "$TEST_LOG"
if [ $# -eq 0 ]; then
    log "schemathesis against a live pod (SQLite, then PostgreSQL)"
    FUZZ_DIR="$(mktemp -d /tmp/vigil-fuzz-store.XXXXXX)"
    ./scripts/api-fuzz.sh "$FUZZ_DIR/fuzz.db"
    rm -rf "$FUZZ_DIR"
    FUZZ_DB="vigil_fuzz_$$"
    psql "$VIGIL_TEST_PG_URL" -qc "CREATE DATABASE $FUZZ_DB" >/dev/null
    ./scripts/api-fuzz.sh "${VIGIL_TEST_PG_URL%/*}/$FUZZ_DB"
fi
if [ $# -eq 0 ]; then
    log "a short soak: random faults for one minute, every round checked"
    SOAK_DIR="$(mktemp -d /tmp/vigil-soak.XXXXXX)"
    ./target/debug/vigil chaos soak --minutes 1 --seed 20261123 --results "$SOAK_DIR"
    rm -rf "$SOAK_DIR"
fi
if [ $# -eq 0 ]; then
    # Like schemathesis and the soak, not counted in the line below: a crash
    # (or a hang) fails this script; the inputs kept from earlier finds run
    # as tests/fuzz_regressions.rs with the other tests. A dev build without
    # a sanitizer: a release build with AddressSanitizer takes ~12 minutes
    # on two cores; `just fuzz` is the long local run.
    log "cargo fuzz: every target for ${VIGIL_FUZZ_SECONDS:-30} s (scripts/fuzz.sh)"
    FUZZ_PROFILE="${FUZZ_PROFILE:-dev}" FUZZ_SANITIZER="${FUZZ_SANITIZER:-none}" \
        ./scripts/fuzz.sh "${VIGIL_FUZZ_SECONDS:-30}"
fi
# One plain closing line for whoever reads the end of this output.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$TEST_LOG"
