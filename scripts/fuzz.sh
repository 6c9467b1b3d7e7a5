#!/usr/bin/env bash
# Run every cargo-fuzz target for a bounded time: scripts/fuzz.sh [SECONDS]
# (per target, default 60). Extra arguments name the targets to run
# (default: all of fuzz/fuzz_targets).
#
# Installs cargo-fuzz (crates.io, --locked) when it is missing. cargo-fuzz
# wants nightly flags (-Zsanitizer, ...); RUSTC_BOOTSTRAP=1 lets stable
# accept them. FUZZ_SANITIZER=address|none (default address; none is faster
# and enough for panics, which is what Rust code here can do).
# FUZZ_PROFILE=release|dev (default release: optimized, with overflow checks
# and debug assertions; dev builds much faster and fuzzes slower, for CI).
#
# Each target fuzzes into fuzz/.corpus/TARGET (kept between local runs,
# ignored by git) seeded from fuzz/corpus/TARGET (the committed seeds).
# A crash, a hang past FUZZ_TIMEOUT seconds (default 10) or running out of
# memory fails the script, naming the input libFuzzer saved under
# fuzz/artifacts/TARGET/. Keep it as a regression test:
# tests/fuzz_regressions/TARGET/NAME, then `cargo test --test fuzz_regressions`.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
log() { printf '==> %s\n' "$*" >&2; }

if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: scripts/fuzz.sh [SECONDS-PER-TARGET] [TARGET...]" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
sanitizer="${FUZZ_SANITIZER:-address}"
timeout="${FUZZ_TIMEOUT:-10}"
case "${FUZZ_PROFILE:-release}" in
    release) profile=(-O -a) ;;
    dev) profile=(--dev) ;;
    *) echo "FUZZ_PROFILE must be release or dev" >&2; exit 2 ;;
esac
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

log "building ${targets[*]} (${FUZZ_PROFILE:-release}, sanitizer $sanitizer)"
(cd fuzz && cargo fuzz build "${profile[@]}" --sanitizer "$sanitizer")

dict_for() {
    case "$1" in
        scenario | workflow) echo "fuzz/dict/toml.dict" ;;
        pod_request) echo "fuzz/dict/http.dict" ;;
    esac
}

failed=()
for t in "${targets[@]}"; do
    work="fuzz/.corpus/$t"
    mkdir -p "$work" "fuzz/artifacts/$t"
    marker="$(mktemp)"
    dict="$(dict_for "$t")"
    log "fuzzing $t for ${seconds}s"
    status=0
    # Paths are relative to fuzz/ once cargo fuzz runs there.
    (cd fuzz && cargo fuzz run "${profile[@]}" --sanitizer "$sanitizer" "$t" \
        "${work#fuzz/}" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb=4096 \
        -print_final_stats=1 ${dict:+-dict="${dict#fuzz/}"}) || status=$?
    found="$(find "fuzz/artifacts/$t" -type f -newer "$marker")"
    rm -f "$marker"
    if [ "$status" -ne 0 ] || [ -n "$found" ]; then
        failed+=("$t")
        log "$t FAILED (exit $status); the input is in fuzz/artifacts/$t/:"
        printf '    %s\n' $found >&2
        log "reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${profile[*]} --sanitizer $sanitizer $t artifacts/$t/NAME)"
    fi
done
# The pod target's SQLite stores (in /dev/shm or the temp dir) outlive
# their process: remove those whose process is gone.
for d in /dev/shm/vigil-fuzz-pod-* "${TMPDIR:-/tmp}"/vigil-fuzz-pod-*; do
    if [ -d "$d" ] && ! [ -d "/proc/${d##*-}" ]; then rm -rf "$d"; fi
done

if [ ${#failed[@]} -gt 0 ]; then
    log "fuzzing found crashes in: ${failed[*]}"
    exit 1
fi
log "fuzzing: ${#targets[@]} targets, ${seconds}s each, no crashes"
