#!/bin/sh
# The runtime stage's set-up, run as root inside a debian:bookworm-slim root: by the Dockerfile
# (RUN) and by the container test (e2e/container, in a debootstrapped bookworm root). One place for
# the runtime packages (runtime-packages.txt beside this script), the unprivileged user and /data.
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
PACKAGES="$(grep -v '^[[:space:]]*#' "$HERE/runtime-packages.txt" | tr -s '[:space:]' ' ')"
apt-get update
# shellcheck disable=SC2086  # one word per package
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PACKAGES
rm -rf /var/lib/apt/lists/*
# uid 10001: the Kubernetes manifests (deploy/kubernetes) run as this uid and group
getent group gradserve >/dev/null || groupadd --system --gid 10001 gradserve
getent passwd gradserve >/dev/null || useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin gradserve
mkdir -p /data /models
chown gradserve:gradserve /data
