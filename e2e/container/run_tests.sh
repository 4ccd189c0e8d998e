#!/usr/bin/env bash
# The container's runtime stage, tested without a container engine (issue 13, item 5):
#   1. the release binary built as the Dockerfile's build stage builds it: deploy/container/build.sh (the one
#      place for its flags: --static-swift-stdlib, with the resource bundle), scratch build cached in
#      $GRADSERVE_STATIC_BUILD (default ~/.cache/gradserve/static-build; the first build takes 10-15 minutes)
#   2. a minimal Debian bookworm root with exactly what the runtime stage installs (deploy/container/
#      runtime-setup.sh, run inside it), cached as a tarball under ~/.cache/gradserve/container (rootfs.sh)
#   3. the binary copied where the Dockerfile copies it (/usr/local/bin), then e2e/container/test_container.py
#      runs the Dockerfile's ENTRYPOINT there as its USER, with a read-only root except /data (and a tmpfs
#      /tmp, as the Kubernetes Deployment gives it), in a private network namespace (so the image's fixed
#      port 8080 is free): /healthz, the HEALTHCHECK command, a VJP checked against PyTorch, a registered model
#      surviving a restart.
# Needs root (debootstrap, chroot, mount and network namespaces). Environment: GRADSERVE_VENV (Python with
# PyTorch, pytest), GRADSERVE_STATIC_BIN (a directory holding a gradserve built by build.sh: skips step 1).
# Extra arguments go to pytest.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${GRADSERVE_VENV:-$HOME/.cache/gradserve/venv}"
PY="$VENV/bin/python"
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
    echo "e2e/container needs root (debootstrap, chroot, mount and network namespaces)" >&2
    exit 1
fi
for tool in unshare chroot mount ip; do
    command -v "$tool" >/dev/null || { echo "missing $tool (util-linux, coreutils, iproute2)" >&2; exit 1; }
done

WORK="$(mktemp -d /tmp/gs-container-XXXXXX)"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

if [ -n "${GRADSERVE_STATIC_BIN:-}" ]; then
    OUT="$GRADSERVE_STATIC_BIN"
else
    OUT="$WORK/out"
    log "1/3 release build as the Dockerfile's build stage (deploy/container/build.sh; the first takes 10-15 min)"
    (cd "$REPO" && timeout 2400 deploy/container/build.sh "$OUT" \
        --scratch-path "${GRADSERVE_STATIC_BUILD:-$HOME/.cache/gradserve/static-build}" 2>&1 | grep -E 'error|warning: unre|Compiling gradserve|Build complete' || true)
fi
[ -x "$OUT/gradserve" ] && [ -d "$OUT/gradserve_GradServer.resources" ] || { echo "no static build in $OUT" >&2; exit 1; }

log "2/3 the runtime root (debootstrap bookworm + deploy/container/runtime-setup.sh, cached)"
TAR="$(timeout 1800 "$REPO/e2e/container/rootfs.sh")"
ROOT="$WORK/root"
mkdir -p "$ROOT"
tar -C "$ROOT" --numeric-owner -xzf "$TAR"
# COPY --from=build /out/ /usr/local/bin/
cp -R "$OUT/gradserve" "$OUT/gradserve_GradServer.resources" "$ROOT/usr/local/bin/"

log "3/3 the image's ENTRYPOINT in the root, as its USER, read-only but /data (e2e/container/test_container.py)"
export GRADSERVE_CONTAINER_ROOT="$ROOT" PYTHONPATH="$REPO/clients/python${PYTHONPATH:+:$PYTHONPATH}"
# a private network namespace with only loopback, for the test and the server it starts
timeout 600 unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh \
    "$PY" -m pytest "$REPO/e2e/container/test_container.py" -q -p no:cacheprovider "$@"
