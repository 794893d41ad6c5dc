#!/usr/bin/env bash
# Set everything up (packages, venv, default guest images), then check types and lint and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/hospes image
# The rules a contributor can check: types (strict for pv/ and devices/) and lint, per pyproject.toml.
.venv/bin/python -m mypy
.venv/bin/ruff check
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
