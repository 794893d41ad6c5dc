#!/usr/bin/env python3
"""Measure the system calls jailed domain processes make, and write the seccomp list from them.

Usage (as root, from the repository)::

    PYTHONPATH=src .venv/bin/python scripts/measure_jail_syscalls.py [TEST ...]

runs the given test files (default: the scenarios below) and writes the names
of the system calls their jailed domain processes made into
``src/hospes/toolstack/jail_syscalls.txt`` (with counts as comments and the
command at the top). Two ways to see them:

* ``--method strace`` (default): ``HOSPES_JAIL_SECCOMP=trace:DIR``, every jailed
  process runs without a filter and its supervisor attaches ``strace -f -c`` right
  after the drop (exact counts; slow: every KVM exit stops in ptrace, so use it
  on a short scenario such as tests/test_toolstack_ops.py);
* ``--method log``: ``HOSPES_JAIL_SECCOMP=log``, the filter of the list as it is,
  with calls off the list allowed and logged by the kernel (audit type 1326,
  read from ``dmesg``): full speed, so for every other scenario, with ``--merge``.

``--merge`` keeps the names already on the list.
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
    parser.add_argument("--method", choices=("strace", "log"), default="strace")
    parser.add_argument("--traces", type=Path, default=None,
                        help="strace: keep the summaries here (or, with --no-run, read them from here)")
    parser.add_argument("--no-run", action="store_true",
                        help="only merge: the summaries in --traces (strace), the kernel log since --since (log)")
    parser.add_argument("--since", type=float, default=None, help="log, --no-run: the run's start (epoch seconds)")
    args = parser.parse_args()
    traces = args.traces or Path(tempfile.mkdtemp(prefix="hospes-syscalls-"))
    mode = f"trace:{traces}" if args.method == "strace" else "log"
    env = {**os.environ, "HOSPES_JAIL_SECCOMP": mode}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.tests]
    started = args.since if args.since is not None else time.time()
    if not args.no_run:
        print("running:", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, env=env, check=False)
    counts: dict[str, int] = {}
    if args.method == "strace":
        files = sorted(traces.glob("*.txt"))
        for f in files:
            for name, n in parse(f).items():
                counts[name] = counts.get(name, 0) + n
        how = f"{len(files)} domain processes traced (strace -f -c after the drop)"
    else:
        counts = logged_since(started)
        how = "calls off the list logged by the kernel (HOSPES_JAIL_SECCOMP=log)"
    previous = read_list() if args.merge else {}
    if not counts and not previous:
        print("nothing was measured; nothing changed", file=sys.stderr)
        return 1
    names = set(counts) | set(ALWAYS) | set(previous)
    header = [line for line in LIST.read_text().splitlines() if line.startswith("#   ")] if args.merge else []
    lines = [
        "# The system calls a jailed domain process may make (src/hospes/toolstack/jail_syscalls.py).",
        "# Measured, not written by hand (docs/security.md); made by these runs, as root:",
        *header,
        f"#   PYTHONPATH=src .venv/bin/python scripts/measure_jail_syscalls.py --method {args.method}"
        f"{' --merge' if args.merge else ''} " + " ".join(args.tests) + f"   ({time.strftime('%Y-%m-%d')}: {how})",
        "# The note is the calls counted (strace), 'logged' (log), or 'always' (every process makes it;",
        "# strace -c does not count calls that do not return).",
    ]
    for name in sorted(names):
        if name in counts:
            note = str(counts[name]) if args.method == "strace" else "logged"
        else:
            note = previous.get(name) or "always"
        lines.append(f"{name:<24}# {note}")
    LIST.write_text("\n".join(lines) + "\n")
    print(f"{len(names)} system calls ({len(counts)} seen in this run) -> {LIST}")
    return 0


def read_list() -> dict[str, str]:
    """The list as it is: name -> its note."""
    out = {}
    for line in LIST.read_text().splitlines():
        name, _, note = line.partition("#")
        if name.strip():
            out[name.strip()] = note.strip()
    return out


def logged_since(started: float) -> dict[str, int]:
    """System calls the kernel logged for jailed processes (SECCOMP_RET_LOG) since ``started``."""
    import re

    import seccomp

    sys.path.insert(0, str(REPO / "src"))
    from hospes.toolstack.jail import JAIL_ID_BASE, JAIL_ID_LAST

    text = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    out: dict[str, int] = {}
    pattern = re.compile(r"type=1326 audit\((\d+)\.\d+:\d+\): .*? uid=(\d+) .*? syscall=(\d+) .*?code=0x7ffc0000")
    for m in pattern.finditer(text):
        if int(m.group(1)) + 1 < started or not JAIL_ID_BASE < int(m.group(2)) <= JAIL_ID_LAST:
            continue
        name = seccomp.resolve_syscall(seccomp.Arch.NATIVE, int(m.group(3)))
        name = name.decode() if isinstance(name, bytes) else str(name)
        out[name] = out.get(name, 0) + 1
    return out


if __name__ == "__main__":
    sys.exit(main())
