#!/usr/bin/env bash
# Install what Hospes needs on a fresh Debian machine (run as root): the C
# toolchain for the test guests, Python's venv, mmdebstrap, e2fsprogs and ssh for
# `hospes image --rootfs`, libseccomp's Python module and strace for the jail
# (docs/security.md), and the project itself.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg in gcc binutils libc6-dev python3-venv dpkg apt-utils ca-certificates mmdebstrap e2fsprogs openssh-client \
           python3-seccomp strace; do
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
# An editable install leaves Hospes' bytecode to be written on first import, which
# never happens where PYTHONDONTWRITEBYTECODE is set (as on the CI machines): every
# `hospes` would then compile its ~130 modules again, ~0.15 s of each start. Python
# still checks each file's timestamp, so a source edited later is never run stale.
.venv/bin/python -m compileall -q src/hospes
# The jail's seccomp filter goes through libseccomp's own Python module. Debian builds it
# for its python3.11; a venv on another CPython 3.11 has the same ABI, so link it in.
seccomp_so=$(dpkg -L python3-seccomp | grep -E '/seccomp\.cpython-311-[^/]*\.so$' | head -n 1 || true)
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
if [ -n "$seccomp_so" ] && .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    ln -sf "$seccomp_so" "$site/"
else
    echo "setup: no libseccomp module for this Python; domains need --no-jail (docs/security.md)" >&2
fi
