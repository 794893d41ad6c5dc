#!/usr/bin/env python3
"""Reproduce every Hospes benchmark figure with one command.

    .venv/bin/python bench/run.py                 # full run (~11 min on 2 cores), results in bench/results/
    .venv/bin/python bench/run.py --quick         # fewer repetitions, for development
    .venv/bin/python bench/run.py --update-docs   # also rewrite the table in docs/benchmarks.md

Needs root, /dev/kvm, gcc, the project's venv; installs QEMU (apt) and
matplotlib (pip) when missing unless --no-install. See docs/benchmarks.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hospesbench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
