#!/usr/bin/env bash
# Prints the path of a tarball holding the runtime stage's root file system, building it when missing:
# a minimal Debian bookworm (debootstrap --variant=minbase, what debian:bookworm-slim is made from) with
# the image's apt sources, then deploy/container/runtime-setup.sh run inside it (the runtime packages,
# the gradserve user, /data), exactly as the Dockerfile's runtime stage runs it.
# Cached outside the repository under $GRADSERVE_CACHE (default ~/.cache/gradserve/container), keyed by
# the set-up script and the package list, so an edit to either builds a fresh root.
# Needs root (debootstrap, chroot) and Debian's mirror; installs debootstrap when missing.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${GRADSERVE_CACHE:-$HOME/.cache/gradserve/container}"
MIRROR="${GRADSERVE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SETUP="$REPO/deploy/container"
KEY="$(cat "$SETUP/runtime-setup.sh" "$SETUP/runtime-packages.txt" "$0" | sha256sum | cut -c1-16)"
TAR="$CACHE/rootfs-bookworm-$KEY.tar.gz"
if [ -s "$TAR" ]; then echo "$TAR"; exit 0; fi

log() { printf '==> %s\n' "$*" >&2; }
if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap (apt)"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
fi
mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/build-XXXXXX")"
ROOT="$WORK/root"
cleanup() {
    for m in dev/pts dev proc; do mountpoint -q "$ROOT/$m" 2>/dev/null && umount -l "$ROOT/$m"; done
    rm -rf "$WORK"
}
trap cleanup EXIT
log "debootstrap --variant=minbase bookworm ($MIRROR), once"
timeout 900 debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -30 "$WORK/debootstrap.log" >&2; exit 1; }
# the apt sources of the debian:bookworm image
rm -f "$ROOT/etc/apt/sources.list"
cat >"$ROOT/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
mkdir -p "$ROOT/tmp/runtime-setup"
cp "$SETUP/runtime-setup.sh" "$SETUP/runtime-packages.txt" "$ROOT/tmp/runtime-setup/"
mount -t proc proc "$ROOT/proc"
mount --rbind /dev "$ROOT/dev"
log "deploy/container/runtime-setup.sh inside the root"
timeout 900 chroot "$ROOT" /bin/sh /tmp/runtime-setup/runtime-setup.sh >"$WORK/setup.log" 2>&1 || {
    tail -30 "$WORK/setup.log" >&2; exit 1; }
umount -l "$ROOT/dev"; umount "$ROOT/proc"
rm -rf "$ROOT/tmp/runtime-setup" "$ROOT/var/cache/apt/archives/"*.deb
: >"$ROOT/etc/resolv.conf"
tar -C "$ROOT" --numeric-owner -czf "$WORK/rootfs.tar.gz" .
mv "$WORK/rootfs.tar.gz" "$TAR"
echo "$TAR"
