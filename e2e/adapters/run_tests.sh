#!/usr/bin/env bash
# Protocol-adapter tests (Tesseract, tesseract-jax, UM-Bridge) with the official clients from PyPI,
# against a live gradserve that the tests start themselves.
#
#   e2e/adapters/run_tests.sh [pytest args...]
#
# Environment:
#   GRADSERVE_VENV  the Python (3.11+) venv to use; missing packages are installed into it
#                   (default $HOME/.cache/gradserve/venv; created if absent with python3.11 where there
#                   is one, else python3, which must then be 3.11 or later)
#   GRADSERVE_BIN   the gradserve binary (default .build/release/gradserve); passed to pytest
#                   as an absolute path. The tests run a private copy of it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${GRADSERVE_VENV:-$HOME/.cache/gradserve/venv}"
PY="$VENV/bin/python"

if [[ ! -x "$PY" ]]; then
    echo "run_tests.sh: creating venv $VENV" >&2
    mkdir -p "$(dirname "$VENV")"
    if command -v python3.11 >/dev/null 2>&1; then python3.11 -m venv "$VENV"; else python3 -m venv "$VENV"; fi
    "$PY" -m pip install -q --upgrade pip
fi
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "run_tests.sh: $PY is $("$PY" -V 2>&1); tesseract-jax needs Python >= 3.11" >&2
    exit 2
fi

# module(s) to import -> pip requirement; only what does not import is installed.
missing=()
need() { "$PY" -c "import $1" >/dev/null 2>&1 || missing+=("$2"); }
need numpy numpy
need requests requests
need pytest pytest
need torch torch
need "tesseract_core, fastapi, uvicorn" "tesseract-core[runtime]"
need tesseract_jax tesseract-jax
need umbridge umbridge
need "jax, jaxlib" jax
if ((${#missing[@]})); then
    echo "run_tests.sh: installing into $VENV: ${missing[*]}" >&2
    "$PY" -m pip install -q --disable-pip-version-check "${missing[@]}"
fi

if [[ -n "${GRADSERVE_BIN:-}" ]]; then
    GRADSERVE_BIN="$(realpath "$GRADSERVE_BIN")"
    export GRADSERVE_BIN
fi
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"

cd "$REPO"
exec "$PY" -m pytest e2e/adapters -q -p no:cacheprovider "$@"
