#!/usr/bin/env bash
# Runs every test: installs what is missing (libopenblas-dev via apt, a cached Python venv with
# PyTorch outside the repo), then
#   1. static checks: swift format lint (documentation rule on), imports match Package.swift
#      (scripts/check_imports.py, and SwiftPM's import check), no dead link in any Markdown file
#      (scripts/check_links.py)
#   2. the committed PyTorch fixtures regenerate from PyTorch (scripts/make_fixtures.py --check: inputs and
#      models byte for byte, computed values within 1e-12 / 1e-6 norm-relative, since PyTorch's last bits
#      depend on the CPU)
#   3. swift test (core against the fixtures and the derivative identities, codecs, server routes and live server)
#   4. the Python end-to-end and fuzz suites (e2e/api) against a live release server, checked against PyTorch
#   5. the OpenAPI contract: openapi-spec-validator, then schemathesis against the live server
#   6. the Python client (clients/python) against a live server, and the walkthrough notebook
#   7. the official Tesseract (SDK, tesseract-jax) and UM-Bridge clients against the adapters
#   8. deployment: docs/capacity.md reproduced from bench/ (scripts/capacity.py --check), the Kubernetes
#      manifests (deploy/kubernetes) against the schemas and each other, three replicas behind nginx and
#      then behind the client's own URL list, one SIGKILLed and restarted under load (e2e/cluster)
#   9. the container's runtime stage without an engine: the Dockerfile's build script, a debootstrapped
#      bookworm root set up by its runtime script, its ENTRYPOINT as its USER, read-only but /data
#      (e2e/container; needs root; the first static build takes 10-15 minutes, then it is cached)
#  10. SIGTERM under load: admitted requests finish, new ones get 503, the process exits (e2e/cluster)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_swift
ensure_openblas
ensure_curl
ensure_cluster_tools
ensure_venv
PY="$GRADSERVE_VENV/bin/python"

log "1/10 static checks: swift format lint, imports, links"
swift format lint --strict -r Sources Tests
python3 scripts/check_imports.py
python3 scripts/check_links.py

log "2/10 fixtures regenerate from PyTorch (computed values within 1e-12 f64 / 1e-6 f32)"
"$PY" scripts/make_fixtures.py --check

log "3/10 swift test"
status=0
swift test --explicit-target-dependency-import-check error > .build-test.log 2>&1 || status=$?
grep -E '✘|^ *↳|Fatal error|Precondition failed|error:' .build-test.log | grep -v '↳ ◇' | grep -v 'Testing Library Version\|Target Platform' | head -200 || true
grep -E 'Test run with' .build-test.log || true
if [ "$status" != 0 ] || ! grep -qE 'Test run with [0-9]+ tests? in [0-9]+ suites? passed' .build-test.log; then
    echo "swift test failed (full log: .build-test.log)" >&2
    exit 1
fi

log "4/10 Python end-to-end and fuzz suites (release server vs PyTorch)"
swift build -c release --product gradserve 2>&1 | grep -E 'error|Build complete' || true
[ -x .build/release/gradserve ] || { echo "release build failed" >&2; exit 1; }
BIN="$PWD/.build/release/gradserve"
GRADSERVE_BIN="$BIN" "$PY" -m pytest e2e/api -q -p no:cacheprovider

log "5/10 OpenAPI contract (openapi-spec-validator + schemathesis)"
GRADSERVE_BIN="$BIN" GRADSERVE_VENV="$GRADSERVE_VENV" e2e/contract/run_contract.sh

log "6/10 Python client and the walkthrough notebook"
GRADSERVE_BIN="$BIN" GRADSERVE_VENV="$GRADSERVE_VENV" clients/python/run_tests.sh

log "7/10 Tesseract and UM-Bridge clients against the adapters"
GRADSERVE_BIN="$BIN" GRADSERVE_VENV="$GRADSERVE_VENV" e2e/adapters/run_tests.sh

log "8/10 deployment: capacity table, Kubernetes manifests, replicas behind nginx and behind the client"
python3 scripts/capacity.py --check
GRADSERVE_BIN="$BIN" timeout 900 "$PY" -m pytest e2e/cluster/test_manifests.py e2e/cluster/test_replicas.py -q -p no:cacheprovider

log "9/10 the container's runtime stage in a debootstrapped root (static build cached in ~/.cache/gradserve)"
GRADSERVE_VENV="$GRADSERVE_VENV" e2e/container/run_tests.sh

log "10/10 SIGTERM under load"
GRADSERVE_BIN="$BIN" timeout 300 "$PY" -m pytest e2e/cluster/test_sigterm.py -q -p no:cacheprovider
log "all 10 steps passed"
