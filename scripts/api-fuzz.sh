#!/usr/bin/env bash
# Property-based API test: schemathesis (PyPI) against /openapi.json of a
# live `vigil pod`, bounded in examples and time. Fails on any 5xx and on any
# response that breaks the documented schema. First the document itself must
# pass openapi-spec-validator (PyPI), as any client generator would need, and
# /metrics must parse with prometheus_client's parsers (the reference
# implementation's), OpenMetrics and the 0.0.4 text format, counters typed.
#   usage: scripts/api-fuzz.sh STORE [MAX_EXAMPLES]
set -euo pipefail
cd "$(dirname "$0")/.."
STORE="${1:?usage: scripts/api-fuzz.sh STORE [MAX_EXAMPLES]}"
EXAMPLES="${2:-40}"
VENV="target/schemathesis-venv"
if [ ! -x "$VENV/bin/schemathesis" ] || [ ! -x "$VENV/bin/openapi-spec-validator" ] \
    || ! "$VENV/bin/python" -c 'import prometheus_client' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'schemathesis>=4.30,<5' 'openapi-spec-validator>=0.7,<0.8' \
        'prometheus_client>=0.20,<1'
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
curl -fsS "http://127.0.0.1:$PORT/openapi.json" >"$WORK/openapi.json"
"$VENV/bin/openapi-spec-validator" "$WORK/openapi.json"
curl -fsS "http://127.0.0.1:$PORT/metrics" >"$WORK/metrics.om"
curl -fsS -H 'Accept: text/plain; version=0.0.4' "http://127.0.0.1:$PORT/metrics" >"$WORK/metrics.txt"
"$VENV/bin/python" - "$WORK/metrics.om" "$WORK/metrics.txt" <<'PY'
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as text
for path, parse in ((sys.argv[1], openmetrics), (sys.argv[2], text)):
    families = {f.name: f for f in parse(open(path).read())}
    untyped = sorted(n for n, f in families.items() if f.type in ("unknown", "untyped"))
    assert not untyped, f"{path}: families without a type: {untyped}"
    for name in ("vigil_recovery_claims", "vigil_reaper_timeouts", "vigil_dispatch_claims"):
        assert families[name].type == "counter", (path, name, families[name].type)
        assert families[name].samples, f"{path}: {name} has no series before its first event"
    print(f"{path}: {len(families)} families parse, counters typed")
PY
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
