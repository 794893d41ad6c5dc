#!/usr/bin/env bash
# Set everything up (packages, venv, default guest images), then run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/hospes image
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
