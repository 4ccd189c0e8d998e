#!/usr/bin/env bash
# The Python client's checks, against live release servers:
#   1. the client test suite (pytest, checked against PyTorch computed in the tests)
#   2. examples/seed_walkthrough.ipynb and examples/cnf_likelihood.ipynb executed (nbclient), each against
#      a server it starts, GRADSERVE_URL set for the notebook; any error or failed assertion fails the run
# Python: the venv at $GRADSERVE_VENV (default ~/.cache/gradserve/venv, created when missing); missing
# packages are installed into it, and this client as an editable install.
# Server: $GRADSERVE_BIN, else a private copy of <repo>/.build/release/gradserve (build it first:
# swift build -c release --product gradserve). Extra arguments go to pytest (e.g. -k vjp, -x).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${GRADSERVE_VENV:-$HOME/.cache/gradserve/venv}"
PY="$VENV/bin/python"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ ! -x "$PY" ]; then
    log "creating $VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
fi

# module:package pairs; only the missing ones are installed
missing=()
for pair in numpy:numpy requests:requests torch:torch pytest:pytest nbclient:nbclient nbformat:nbformat \
            ipykernel:ipykernel matplotlib:matplotlib hatchling:hatchling \
            torchdiffeq:torchdiffeq tqdm:tqdm flow_matching:flow-matching; do
    "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing into $VENV: ${missing[*]}"
    "$PY" -m pip install -q "${missing[@]}"
fi

# the client itself, editable (skipped when this checkout is already the installed one)
if ! "$PY" -c "import gradserve, pathlib, sys; sys.exit(pathlib.Path(gradserve.__file__).resolve().parent != pathlib.Path('$HERE/gradserve').resolve())" 2>/dev/null; then
    log "installing the client (pip install -e clients/python)"
    "$PY" -m pip install -q --no-build-isolation -e "$HERE" || "$PY" -m pip install -q "$HERE"
fi

if [ -z "${GRADSERVE_BIN:-}" ] && [ ! -x "$REPO/.build/release/gradserve" ]; then
    echo "no server binary: build it (swift build -c release --product gradserve) or set GRADSERVE_BIN" >&2
    exit 1
fi

# this checkout's client, whatever else the venv holds
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"

log "1/2 client tests (pytest against live servers, checked against PyTorch)"
cd "$HERE"
"$PY" -m pytest tests -q -p no:cacheprovider "$@"

log "2/2 the notebooks against a live server: examples/seed_walkthrough.ipynb, examples/cnf_likelihood.ipynb"
"$PY" "$HERE/tests/run_notebook.py" "$REPO/examples/seed_walkthrough.ipynb"
"$PY" "$HERE/tests/run_notebook.py" "$REPO/examples/cnf_likelihood.ipynb"
