# Vigil's recipes. `just` itself: `cargo install just` (crates.io).

# List the recipes.
default:
    @just --list

# The one-command tour on the embedded store.
demo:
    cargo run --release -- demo

# Format the code.
fmt:
    cargo fmt

# fmt check + clippy with warnings as errors.
lint:
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings

# Embedded-store tests only (PostgreSQL suites announce that they did not run).
test:
    cargo test

# Everything, as CI runs it: installs and starts a throwaway PostgreSQL.
test-all:
    ./scripts/test-all.sh

# Vigil beside DBOS on one PostgreSQL: throughput, recovery, console, memory -> BENCHMARKS.md.
bench:
    ./scripts/bench.sh

# Ten minutes of random faults against a 3-pod cluster, invariants checked every round.
soak minutes="10" seed="":
    cargo run --release -- chaos soak --minutes {{minutes}} {{ if seed != "" { "--seed " + seed } else { "" } }}

# Every cargo-fuzz target (scenario, workflow, pod_request) for `seconds` each;
# installs cargo-fuzz if missing, fails on a crash naming the saved input.
fuzz seconds="60":
    ./scripts/fuzz.sh {{seconds}}

# Every shipped chaos scenario, on SQLite and on a throwaway PostgreSQL.
chaos:
    cargo run -- chaos run scenarios/ --store sqlite
    cargo run -- chaos run scenarios/ --store postgres

# lint + the full suite.
verify: test-all
