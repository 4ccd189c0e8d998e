#!/usr/bin/env bash
# Builds (release) and starts the service on 127.0.0.1:8080 with models kept in ./data.
# Installs what is missing first (libopenblas-dev via apt). Extra arguments go to `gradserve serve`
# (e.g. --host 0.0.0.0 --port 9000 --api-key KEY); see `gradserve serve --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_swift
ensure_openblas

log "building gradserve (release; the first build takes a few minutes)"
swift build -c release --product gradserve 2>&1 | grep -E 'error|warning: unre|Compiling gradserve|Build complete' || true
[ -x .build/release/gradserve ] || { echo "build failed" >&2; exit 1; }

log "serving on http://127.0.0.1:8080 (Ctrl-C stops it)"
exec .build/release/gradserve serve "$@"
