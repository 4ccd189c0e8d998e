#!/bin/sh
# The release build of the container image, in one place: the Dockerfile's build stage RUNs it and
# the container test (e2e/container/run_tests.sh) runs it, so both ship the same binary.
#   deploy/container/build.sh OUT_DIR [extra swift build arguments, e.g. --scratch-path DIR]
# Builds gradserve with the Swift runtime linked in (--static-swift-stdlib: the runtime image has no
# Swift toolchain; OpenBLAS stays a shared library from the runtime packages) and copies the binary
# and its resource bundle into OUT_DIR.
set -eu
OUT="${1:?usage: build.sh OUT_DIR [swift build arguments]}"
shift
set -- -c release --product gradserve --static-swift-stdlib "$@"
swift build "$@"
BIN_DIR="$(swift build "$@" --show-bin-path)"
mkdir -p "$OUT"
cp "$BIN_DIR/gradserve" "$OUT/"
rm -rf "$OUT/gradserve_GradServer.resources"
cp -R "$BIN_DIR/gradserve_GradServer.resources" "$OUT/"
