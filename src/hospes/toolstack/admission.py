"""Admission control: a new domain's memory must fit the host next to the running ones.

The rule, applied by hospesd to a create and a restore and by the domain
process to an incoming migration (once the stream says how big the guest is)::

    sum over live domains of (memory + overhead)  +  (new memory + overhead)
        <=  MemTotal x overcommit  -  HOST_RESERVE_MIB

``overhead`` is what a domain costs the host beyond its guest RAM. Measured
on a domain process under hospesd after boot to a shell: a 256 MiB guest's
process holds 44 MiB anonymous + 15 MiB file-backed RSS besides guest memory
(interpreter, capstone, threads, the control server), a 2048 MiB guest's 120 +
15 MiB: ~43 KiB more per MiB of guest. Add the frames above the guest's RAM (M2P,
hypervisor page tables) and KVM's own structures, which RSS does not show,
and the estimate is ``DOMAIN_OVERHEAD_MIB + memory / 16`` (80 MiB for 256 MiB,
192 MiB for 2 GiB). Live domains are those whose record
is building, incoming, running or paused (a record without a process yet
counts too: its process is starting). ``overcommit`` is hospesd's
``--overcommit RATIO`` (default 1.0: no overcommit), kept in the runtime
directory's ``hospesd.json`` so domain processes apply the same ratio. With a
ratio of 1.0 or less the host's MemAvailable must also hold the new domain
(other programs use memory too); above 1.0 only the sum counts, since guest
memory is allocated when the guest touches it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from hospes.errors import HospesError
from hospes.toolstack.lifecycle import LIVE_STATES
from hospes.toolstack.record import process_alive, read_record
from hospes.toolstack.rundir import RunDir

DOMAIN_OVERHEAD_MIB = 64
OVERHEAD_DIVISOR = 16          # 1 MiB of overhead per 16 MiB of guest memory
HOST_RESERVE_MIB = 256
DEFAULT_OVERCOMMIT = 1.0
MAX_OVERCOMMIT = 16.0


class AdmissionError(HospesError):
    """A domain that does not fit the host."""


def overhead_mib(memory_mib: int) -> int:
    """The host memory a domain of ``memory_mib`` MiB costs besides its RAM (see the module docstring)."""
    return DOMAIN_OVERHEAD_MIB + math.ceil(memory_mib / OVERHEAD_DIVISOR)


def _meminfo_mib(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def host_total_mib() -> int:
    """The host's MemTotal in MiB (0 if /proc/meminfo cannot tell)."""
    return _meminfo_mib("MemTotal") or 0


def host_available_mib() -> int | None:
    return _meminfo_mib("MemAvailable")


def valid_overcommit(ratio: float) -> float:
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0.1 <= ratio <= MAX_OVERCOMMIT):
        raise AdmissionError(f"The overcommit ratio must be between 0.1 and {MAX_OVERCOMMIT:g}, not {ratio!r}.")
    return float(ratio)


def write_settings(run: RunDir, overcommit: float) -> None:
    """Record hospesd's admission settings where its domain processes read them."""
    tmp = run.settings_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"overcommit": overcommit}) + "\n")
    tmp.replace(run.settings_file)


def read_overcommit(run: RunDir) -> float:
    try:
        return valid_overcommit(float(json.loads(run.settings_file.read_text())["overcommit"]))
    except (OSError, ValueError, KeyError, TypeError, AdmissionError):
        return DEFAULT_OVERCOMMIT


@dataclass(frozen=True)
class Committed:
    """Live domains' memory: the sum with overheads, and how many domains."""

    mib: int
    domains: int


def committed(run: RunDir, exclude: int | None = None) -> Committed:
    """The memory (with overheads) of the live domains in ``run``, leaving out domid ``exclude``."""
    total = count = 0
    for domid in run.domids():
        if domid == exclude:
            continue
        rec = read_record(run.state_file(domid))
        if rec is None or rec.state not in LIVE_STATES:
            continue
        if rec.pid is not None and not process_alive(rec.pid, rec.pid_start):
            continue
        total += rec.spec.memory + overhead_mib(rec.spec.memory)
        count += 1
    return Committed(total, count)


def admit(run: RunDir, name: str, memory_mib: int, overcommit: float | None = None,
          exclude: int | None = None) -> None:
    """Raise :class:`AdmissionError` (with the numbers) unless ``memory_mib`` more fits the host."""
    ratio = read_overcommit(run) if overcommit is None else overcommit
    need = memory_mib + overhead_mib(memory_mib)
    used = committed(run, exclude)
    total = host_total_mib()
    if total <= 0:
        return   # no /proc/meminfo: nothing to judge by
    limit = int(total * ratio) - HOST_RESERVE_MIB
    if used.mib + need > limit:
        raise AdmissionError(
            f"Not enough host memory for {name}: it needs {need} MiB ({memory_mib} MiB + {need - memory_mib} MiB "
            f"overhead), {used.domains} running domain(s) hold {used.mib} MiB, and the host allows "
            f"{max(limit, 0)} MiB ({total} MiB x overcommit {ratio:g} - {HOST_RESERVE_MIB} MiB reserve); "
            "destroy a domain or ask for less (memory=...).")
    available = host_available_mib()
    if ratio <= 1.0 and available is not None and need > available - HOST_RESERVE_MIB:
        raise AdmissionError(
            f"Not enough free memory for {name}: it needs {need} MiB ({memory_mib} MiB + {need - memory_mib} MiB "
            f"overhead), the host has {max(available - HOST_RESERVE_MIB, 0)} MiB available "
            f"(MemAvailable {available} MiB - {HOST_RESERVE_MIB} MiB reserve); destroy a domain or ask for less.")


__all__ = ["AdmissionError", "DEFAULT_OVERCOMMIT", "DOMAIN_OVERHEAD_MIB", "HOST_RESERVE_MIB", "admit",
           "committed", "host_total_mib", "overhead_mib", "read_overcommit", "valid_overcommit",
           "write_settings"]
