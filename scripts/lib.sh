# Shared set-up steps for scripts/serve.sh and scripts/test.sh (sourced, not run).
# Each step installs only what is missing, so a second run costs nothing.

GRADSERVE_VENV="${GRADSERVE_VENV:-$HOME/.cache/gradserve/venv}"

# Each step says how long the script has run so far (bash's SECONDS), so a slow step shows.
log() { printf '\033[1m==> [%dm%02ds] %s\033[0m\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }

apt_install() {
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
    if [ -z "${APT_UPDATED:-}" ]; then
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# OpenBLAS headers and pkg-config entry (the COpenBLAS system-library target needs both).
ensure_openblas() {
    if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openblas; then return; fi
    log "installing libopenblas-dev and pkg-config (apt)"
    apt_install libopenblas-dev pkg-config
}

# curl (the contract test polls /healthz with it).
ensure_curl() {
    command -v curl >/dev/null 2>&1 || { log "installing curl (apt)"; apt_install curl ca-certificates; }
}

# The Swift toolchain must already be on PATH (swift.org install or the swift Docker image).
ensure_swift() {
    if ! command -v swift >/dev/null 2>&1; then
        echo "swift is not on PATH: install Swift 6.1 or later (https://www.swift.org/install/)" >&2
        exit 1
    fi
}

# A cached virtual environment outside the repo with PyTorch (CPU use) for reference checks.
ensure_venv() {
    if [ -x "$GRADSERVE_VENV/bin/python" ] && "$GRADSERVE_VENV/bin/python" -c 'import torch, numpy, pytest, requests, schemathesis, openapi_spec_validator, nbclient, nbformat, ipykernel, matplotlib, tesseract_core, tesseract_jax, umbridge, kubernetes_validate, yaml, flow_matching, torchdiffeq, tqdm' 2>/dev/null; then
        return
    fi
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        log "installing python3-venv (apt)"
        apt_install python3 python3-venv python3-pip
    fi
    log "setting up $GRADSERVE_VENV: numpy, torch, pytest, requests, schemathesis, openapi-spec-validator, nbclient, matplotlib, kubernetes-validate, flow-matching (once; PyTorch is large)"
    mkdir -p "$(dirname "$GRADSERVE_VENV")"
    [ -x "$GRADSERVE_VENV/bin/python" ] || python3 -m venv "$GRADSERVE_VENV"
    "$GRADSERVE_VENV/bin/pip" install -q --upgrade pip
    "$GRADSERVE_VENV/bin/pip" install -q numpy torch pytest requests schemathesis openapi-spec-validator nbclient nbformat ipykernel matplotlib 'tesseract-core[runtime]' tesseract-jax umbridge kubernetes-validate pyyaml flow-matching torchdiffeq tqdm
}

# The multi-replica and container tests (e2e/cluster, e2e/container): nginx (run by the tests in the
# foreground on loopback, never as a service), debootstrap (a bookworm root for the runtime stage),
# iproute2 (loopback in a private network namespace), util-linux (unshare, mount).
ensure_cluster_tools() {
    local missing=()
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
    command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || missing+=(iproute2)
    command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]} (apt)"
        # nginx's package would start the system service where an init system runs: keep it from doing so
        if [ "$(id -u)" = 0 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
            apt_install "${missing[@]}"
            rm -f /usr/sbin/policy-rc.d
        else
            apt_install "${missing[@]}"
        fi
    fi
}
