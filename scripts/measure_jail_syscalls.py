#!/usr/bin/env python3
"""Measure the system calls jailed domain processes make, and write the seccomp list from them.

Usage (as root, from the repository)::

    PYTHONPATH=src .venv/bin/python scripts/measure_jail_syscalls.py [TEST ...]

runs the given test files (default: the scenarios below) with
``HOSPES_JAIL_SECCOMP=trace:DIR``: every jailed domain process runs without a
filter, and its supervisor attaches ``strace -f -c`` to it right after the
drop, so only what a jailed process does is counted. The names of every run
are merged into ``src/hospes/toolstack/jail_syscalls.txt`` (with the summed
call counts as comments and this command at the top). ``--merge`` keeps the
names already in the file (to add a scenario without re-running all).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIST = REPO / "src" / "hospes" / "toolstack" / "jail_syscalls.txt"
SCENARIOS = [   # boot, console, exec, reboot, save, restore, migrate send/receive, vcpu-set, mem-set, sched
    "tests/test_toolstack_ops.py", "tests/test_toolstack_run.py", "tests/test_toolstack_vcpu_set.py",
    "tests/test_toolstack_mem_set.py", "tests/test_toolstack_migrate_api.py", "tests/test_toolstack_migrate_cli.py",
    "tests/test_toolstack_reboot_throttle.py", "tests/test_migrate_e2e.py", "tests/test_jail.py",
]
# Calls strace -c does not count (they do not return) but every process makes.
ALWAYS = ("exit", "exit_group", "restart_syscall", "rt_sigreturn")


def parse(path: Path) -> dict[str, int]:
    """``strace -c -U name,calls`` output: name -> calls."""
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit() and not line.startswith(("-", "syscall", "total")):
            out[parts[0]] = out.get(parts[0], 0) + int(parts[1])
    return out


def existing() -> set[str]:
    names = set()
    for line in LIST.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.add(name)
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tests", nargs="*", default=SCENARIOS)
    parser.add_argument("--merge", action="store_true", help="keep the names already on the list")
    parser.add_argument("--traces", type=Path, default=None, help="keep the strace summaries here")
    args = parser.parse_args()
    traces = args.traces or Path(tempfile.mkdtemp(prefix="hospes-syscalls-"))
    env = {**os.environ, "HOSPES_JAIL_SECCOMP": f"trace:{traces}"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.tests]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=False)
    counts: dict[str, int] = {}
    files = sorted(traces.glob("*.txt"))
    for f in files:
        for name, n in parse(f).items():
            counts[name] = counts.get(name, 0) + n
    if not counts:
        print("no strace summaries were written; nothing changed", file=sys.stderr)
        return 1
    names = set(counts) | set(ALWAYS) | (existing() if args.merge else set())
    lines = [
        "# The system calls a jailed domain process may make (src/hospes/toolstack/jail_syscalls.py).",
        "# Measured, not written by hand: regenerate with (as root)",
        f"#   PYTHONPATH=src .venv/bin/python scripts/measure_jail_syscalls.py{' --merge' if args.merge else ''} "
        + " ".join(args.tests),
        f"# on {time.strftime('%Y-%m-%d')}: {len(files)} domain processes traced (strace -f -c after the drop).",
        "# The number is the calls counted over all of them; 'always' = made by every process, not counted.",
    ]
    for name in sorted(names):
        note = f"{counts[name]}" if name in counts else ("always" if name in ALWAYS else "kept (--merge)")
        lines.append(f"{name:<24}# {note}")
    LIST.write_text("\n".join(lines) + "\n")
    print(f"{len(names)} system calls from {len(files)} traces -> {LIST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
