#!/usr/bin/env bash
# Property-based API test: schemathesis (PyPI) against /openapi.json of a
# live `vigil pod`, bounded in examples and time. Fails on any 5xx and on any
# response that breaks the documented schema.
#   usage: scripts/api-fuzz.sh STORE [MAX_EXAMPLES]
set -euo pipefail
cd "$(dirname "$0")/.."
STORE="${1:?usage: scripts/api-fuzz.sh STORE [MAX_EXAMPLES]}"
EXAMPLES="${2:-40}"
VENV="target/schemathesis-venv"
if [ ! -x "$VENV/bin/schemathesis" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'schemathesis>=4.30,<5'
fi
cargo build -q --bin vigil
WORK="$(mktemp -d /tmp/vigil-fuzz.XXXXXX)"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
./target/debug/vigil pod --store "$STORE" --listen "127.0.0.1:$PORT" --pod-id fuzz-pod \
    --max-runs 16 >"$WORK/pod.out" 2>"$WORK/pod.log" &
POD=$!
cleanup() { kill "$POD" 2>/dev/null || true; wait "$POD" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
# A real run, so the {id} operations reach past 404.
RUN_ID="$(./target/debug/vigil submit --pod "http://127.0.0.1:$PORT" flaky_sync 2>/dev/null)"
printf '[parameters]\nid = "%s"\n' "$RUN_ID" >"$WORK/schemathesis.toml"
set +e
timeout 600 "$VENV/bin/schemathesis" --config-file "$WORK/schemathesis.toml" run \
    "http://127.0.0.1:$PORT/openapi.json" \
    --checks not_a_server_error,response_schema_conformance \
    --phases examples,coverage,fuzzing --max-examples "$EXAMPLES" --request-timeout 15 \
    --seed 20261123 --no-color
rc=$?
set -e
if [ $rc -ne 0 ]; then
    echo "schemathesis failed ($rc); pod log:" >&2
    tail -n 50 "$WORK/pod.log" >&2
fi
exit $rc
