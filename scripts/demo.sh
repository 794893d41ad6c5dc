#!/usr/bin/env bash
# Set everything up, then boot Debian's stock cloud kernel as a Xen PV guest
# and run `uname -a` inside it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/hospes image
exec .venv/bin/hospes run --stats -- uname -a
