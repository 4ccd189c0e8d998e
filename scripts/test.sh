#!/usr/bin/env bash
# Runs every test: installs what is missing (libopenblas-dev via apt, a cached PyTorch venv),
# checks formatting, checks the committed fixtures are what PyTorch produces, runs swift test.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_swift
ensure_openblas
ensure_venv

log "swift format lint"
swift format lint --strict -r Sources Tests

log "fixtures regenerate byte for byte from PyTorch"
"$GRADSERVE_VENV/bin/python" scripts/make_fixtures.py --check

log "swift test"
swift test > .build-test.log 2>&1 || true
grep -E '✘|^ *↳|Fatal error|Precondition failed|error:' .build-test.log | grep -v '↳ ◇' | head -200 || true
if ! grep -qE 'Test run with [0-9]+ tests? in [0-9]+ suites? passed' .build-test.log; then
    echo "swift test failed" >&2
    exit 1
fi
grep -E 'Test run with' .build-test.log
