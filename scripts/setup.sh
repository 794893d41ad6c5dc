#!/usr/bin/env bash
# Install what Hospes needs on a fresh Debian machine (run as root): the C
# toolchain for the test guests, Python's venv, mmdebstrap, e2fsprogs and ssh for
# `hospes image --rootfs`, and the project itself.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg in gcc binutils libc6-dev python3-venv dpkg apt-utils ca-certificates mmdebstrap e2fsprogs openssh-client; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
