#!/usr/bin/env bash
# Contract test: the OpenAPI document is valid, and a running gradserve answers as it says.
#
#   1. validates Sources/GradServer/Resources/openapi.yaml with openapi-spec-validator;
#   2. starts a copy of the server binary on a port of its own (--port 0, read back from the process) with a
#      scratch data directory;
#   3. registers the model of the adapter examples (see below);
#   4. runs schemathesis against the server's own GET /openapi.yaml: no 5xx, every status, content
#      type, header and body as documented, 405 + Allow for undocumented methods, schema-invalid
#      requests refused, and every operation with valid examples answering 2xx at least once;
#   5. stops the server. Exits non-zero on any failure (including the server dying mid-run).
#
# The Tesseract (/tesseract/{id}/…) and UM-Bridge (/umbridge/{id}/…) routes answer 2xx only for a
# registered model id, which schemathesis cannot know. Model ids are content addresses (SHA-256 of the
# canonical model), so the document's example id is known in advance: step 3 POSTs the `tiny-t` example
# of POST /v1/models (read from the spec) and fails unless the server answers the id given as the example
# of components.parameters.AdapterModelId; schemathesis's examples phase then reaches the adapters' success
# paths with that id, while its generated ids exercise the unknown-id errors. A distinct model is used, not
# the `tiny` one, because the example of DELETE /v1/models/{id} deletes `tiny` during the run.
#
# Environment:
#   GRADSERVE_BIN            server binary (default .build/release/gradserve); copied first, with its
#                            resource bundle, so a rebuild during the run does not disturb it
#   GRADSERVE_VENV           Python venv (default ~/.cache/gradserve/venv); openapi-spec-validator and
#                            schemathesis are pip-installed into it when missing
#   CONTRACT_MAX_EXAMPLES    schemathesis examples per operation (default 30)
#   CONTRACT_TIMEOUT         seconds allowed for the schemathesis run (default 900: a bound for a hang, not a
#                            speed claim; the run takes a fraction of it, more on a loaded 2-core machine)
#   CONTRACT_ALLOW_STALE=1   when the binary serves an older document than the source (not rebuilt
#                            since the spec changed), test the source document instead of failing
#   CONTRACT_REPORT_DIR      keep the JUnit report and server log there (default: a temp dir, removed)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SPEC=Sources/GradServer/Resources/openapi.yaml
VENV="${GRADSERVE_VENV:-$HOME/.cache/gradserve/venv}"
BIN="${GRADSERVE_BIN:-.build/release/gradserve}"
MAX_EXAMPLES="${CONTRACT_MAX_EXAMPLES:-30}"
RUN_TIMEOUT="${CONTRACT_TIMEOUT:-900}"
START_TIMEOUT=60  # seconds for the server to listen and answer /healthz
# The server's --deadline, and schemathesis's per-request timeout above it. A generated request that
# outlives the deadline is answered 504, which not_a_server_error counts as a failure: the deadline must
# be far above what any generated request takes on a slow machine, not merely on a fast one.
SERVER_DEADLINE=180
REQUEST_TIMEOUT=240

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
fail() { printf '\033[31mFAIL: %s\033[0m\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools
if ! [ -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import schemathesis, openapi_spec_validator' 2>/dev/null; then
    log "installing openapi-spec-validator and schemathesis into $VENV"
    "$VENV/bin/pip" install -q openapi-spec-validator schemathesis
fi

# ---------------------------------------------------------------- 1. the document
log "openapi-spec-validator $SPEC"
"$VENV/bin/openapi-spec-validator" "$SPEC"
[ "$(readlink -f openapi.yaml)" = "$(readlink -f "$SPEC")" ] || fail "openapi.yaml at the repo root must be a symlink to $SPEC"

# ---------------------------------------------------------------- 2. the server
[ -x "$BIN" ] || fail "no server binary at $BIN (build it with: swift build -c release, or set GRADSERVE_BIN)"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gradserve-contract.XXXXXX")
REPORT_DIR="${CONTRACT_REPORT_DIR:-$WORK/report}"
mkdir -p "$REPORT_DIR" "$WORK/bin" "$WORK/data"
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
    fi
    if [ -z "${CONTRACT_REPORT_DIR:-}" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# The binary finds openapi.yaml in the resource bundle next to it (else in the build folder).
cp "$BIN" "$WORK/bin/gradserve"
BUNDLE="$(dirname "$BIN")/gradserve_GradServer.resources"
[ -d "$BUNDLE" ] && cp -R "$BUNDLE" "$WORK/bin/"

SERVER_LOG="$REPORT_DIR/server.log"
log "starting $BIN (copy) on a port of its own, data dir $WORK/data"
# --port 0: the kernel picks the port when the server binds it, so no other process can take it between a
# probe and the bind; it is read back from this very process. A short --benchmark-max-seconds keeps
# generated benchmark requests from dominating the run time (the deadline is not such a bound: see above).
"$WORK/bin/gradserve" serve --host 127.0.0.1 --port 0 --data-dir "$WORK/data" \
    --workers 4 --deadline "$SERVER_DEADLINE" --benchmark-max-seconds 0.5 >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!

# The port the server process listens on: from its start-up line ("Server started and listening on
# 127.0.0.1:41234"), else from /proc (its own sockets in LISTEN state); empty until it listens. The reader is
# the shared test support's (e2e/support/gradserve_testing/ports.py).
listening_port() {
    PYTHONPATH="$ROOT/e2e/support" "$VENV/bin/python" - "$SERVER_PID" "$SERVER_LOG" <<'PY'
import sys
from pathlib import Path

from gradserve_testing.ports import port_from_log, port_from_proc

port = port_from_log(Path(sys.argv[2])) or port_from_proc(int(sys.argv[1]))
if port:
    print(port)
PY
}

PORT=
STARTED=$SECONDS
while :; do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$SERVER_LOG" >&2; fail "the server exited at start"; }
    [ -n "$PORT" ] || PORT=$(listening_port)
    if [ -n "$PORT" ] && curl -fsS --max-time 10 "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then break; fi
    if [ $((SECONDS - STARTED)) -ge "$START_TIMEOUT" ]; then
        cat "$SERVER_LOG" >&2
        if [ -n "$PORT" ]; then fail "the server did not answer /healthz on port $PORT within $START_TIMEOUT s"; fi
        fail "the server did not start listening within $START_TIMEOUT s"
    fi
    sleep 0.2
done
BASE="http://127.0.0.1:$PORT"
log "the server listens on port $PORT"

# ---------------------------------------------------------------- 3. the adapters' example model
log "registering the adapter examples' model (the tiny-t example of POST /v1/models)"
"$VENV/bin/python" - "$ROOT/$SPEC" "$BASE" <<'PY' || fail "could not register the adapter examples' model"
import json, sys, urllib.error, urllib.request
import yaml

spec_path, base = sys.argv[1], sys.argv[2]
with open(spec_path) as f:
    spec = yaml.safe_load(f)
body = spec["paths"]["/v1/models"]["post"]["requestBody"]["content"]["application/json"]["examples"]["tiny-t"]["value"]
expected = spec["components"]["parameters"]["AdapterModelId"]["example"]
request = urllib.request.Request(base + "/v1/models", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=120) as response:
        status, answer = response.status, json.load(response)
except urllib.error.HTTPError as e:
    sys.exit(f"POST /v1/models answered {e.code}: {e.read().decode(errors='replace')}")
if status not in (200, 201):
    sys.exit(f"POST /v1/models answered {status}")
if answer.get("id") != expected:
    sys.exit(
        f"the tiny-t model registered as {answer.get('id')}, but the document's adapter examples use {expected}: "
        "set components.parameters.AdapterModelId.example (and the tiny-t example's description) to the new id"
    )
print(f"registered tiny-t as {expected}", file=sys.stderr)
PY

# ---------------------------------------------------------------- 4. schemathesis
curl -fsS "$BASE/openapi.yaml" -o "$WORK/served.yaml" || fail "GET /openapi.yaml failed"
LOCATION="$BASE/openapi.yaml"
EXTRA=()
STALE=0
if ! cmp -s "$WORK/served.yaml" "$SPEC"; then
    STALE=1
    if [ "${CONTRACT_ALLOW_STALE:-0}" = 1 ]; then
        log "WARNING: the binary serves an older openapi.yaml than $SPEC (rebuild it); testing the source document"
        LOCATION="$ROOT/$SPEC"
        EXTRA=(--url "$BASE" --exclude-path /openapi.yaml)
    else
        log "the binary serves an older openapi.yaml than $SPEC; rebuild it (or CONTRACT_ALLOW_STALE=1 to test the source document)"
    fi
fi

CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
CHECKS+=,response_headers_conformance,negative_data_rejection,unsupported_method,allow_header_conformance
CHECKS+=,operations_reach_success
log "schemathesis ($MAX_EXAMPLES examples per operation, deterministic) against $LOCATION"
set +e
PYTHONPATH="$ROOT/e2e/contract${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=st_hooks \
    timeout --kill-after=10 "$RUN_TIMEOUT" "$VENV/bin/schemathesis" --no-color run "$LOCATION" "${EXTRA[@]}" \
    --checks "$CHECKS" \
    --max-examples "$MAX_EXAMPLES" \
    --generation-deterministic \
    --workers 2 \
    --request-timeout "$REQUEST_TIMEOUT" \
    --report junit --report-dir "$REPORT_DIR"
RC=$?
set -e

# ---------------------------------------------------------------- 5. verdict
STATUS=0
if [ "$RC" = 124 ] || [ "$RC" = 137 ]; then
    printf 'FAIL: schemathesis did not finish within %s s\n' "$RUN_TIMEOUT" >&2
    STATUS=1
elif [ "$RC" != 0 ]; then
    printf 'FAIL: schemathesis found failures (exit %s)\n' "$RC" >&2
    STATUS=1
fi
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    printf 'FAIL: the server died during the run; its log ends with:\n' >&2
    CRASH=$(grep -E 'crashed:|Fatal error|at /.*/Sources/' "$SERVER_LOG" | grep -v '/.build/checkouts/' | head -8 || true)
    if [ -n "$CRASH" ]; then printf '%s\n' "$CRASH" >&2; else tail -20 "$SERVER_LOG" >&2; fi
    STATUS=1
fi
if [ "$STALE" = 1 ] && [ "${CONTRACT_ALLOW_STALE:-0}" != 1 ]; then
    printf 'FAIL: GET /openapi.yaml is not %s (stale binary)\n' "$SPEC" >&2
    STATUS=1
fi
if [ "$STATUS" = 0 ]; then log "contract: OK"; else log "contract: FAILED (reports in ${CONTRACT_REPORT_DIR:-a temp dir; set CONTRACT_REPORT_DIR to keep them})"; fi
exit "$STATUS"
