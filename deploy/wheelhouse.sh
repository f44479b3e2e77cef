#!/usr/bin/env bash
# Fill a folder with everything an offline install needs: the edge_agent wheel built from this
# checkout and the locked dependencies' wheels (hash-checked against deploy/requirements.lock).
#
#   deploy/wheelhouse.sh DIR                      for this machine's platform
#   deploy/wheelhouse.sh DIR --platform aarch64   for a Raspberry Pi OS / Debian 12 arm64
#                                                 gateway, from any machine
#
# Then copy DIR and the checkout to the gateway and run: sudo deploy/install.sh --wheelhouse DIR
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:?usage: wheelhouse.sh DIR [--platform TAG]}"; shift
platform=()
if [ "${1:-}" = "--platform" ]; then
    arch="${2:?--platform needs an architecture: aarch64 or x86_64}"
    # Every manylinux level a Debian 12 (glibc 2.36) gateway runs, newest first.
    for level in 2_34 2_28 2_17; do platform+=(--platform "manylinux_${level}_${arch}"); done
    platform+=(--platform "manylinux2014_${arch}" --python-version 3.11 --implementation cp)
fi
mkdir -p "$out"
# A throw-away virtual environment: the system Python may have no pip (Debian's python3).
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/pip" wheel -q --no-deps -w "$out" "$src"
"$tools/bin/pip" download -q --only-binary=:all: --require-hashes -d "$out" "${platform[@]}" \
    -r "$src/deploy/requirements.lock"
echo "wheelhouse ready: $out ($(ls "$out" | wc -l) files)"
