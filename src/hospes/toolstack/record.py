"""A domain's state record (``domains/<id>.json``) and the liveness of its process.

Who writes the record:

* the daemon writes the first version before it starts the domain process
  (state ``building``, no pid yet);
* from then on the domain process owns it: it records its pid, every state
  change, and deletes it (with its control socket) when the domain is destroyed;
* the daemon writes it again only when the process is gone (a rename of a dead
  domain) and deletes it when a dead domain is destroyed.

Every write is atomic (temporary file + rename), so a reader never sees half a
record.

Liveness: a pid alone is not proof, pids are reused. The record keeps the
process's start time (``/proc/<pid>/stat`` field 22), and a process counts as
alive only while a process with that pid *and* that start time exists and is not
a zombie.

Record states (the ``state`` field) and what the daemon reports::

    building  -> running <-> paused -> (shutdown | record deleted)
    building  -> incoming (listening for, then receiving, a migration) -> running | paused
              | record deleted (the stream failed: no half domain stays registered)
    any live state + process gone  => crashed (reported, kept until destroy)
    shutdown + process gone        => a preserved, shut-down domain (on_* = preserve)
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hospes.domain import ShutdownReason
from hospes.errors import HospesError
from hospes.toolstack.lifecycle import DomainState
from hospes.toolstack.spec import DomainSpec

RECORD_VERSION = 1


@dataclass
class DomainRecord:
    """What survives a daemon restart about one domain.

    The spec is typed here; it becomes a dict only in the JSON file, through
    ``DomainSpec.to_dict``/``from_dict``.
    """

    domid: int
    name: str
    uuid: str
    spec: DomainSpec
    created: float = field(default_factory=time.time)
    started: float = field(default_factory=time.time)   # start of the current boot
    state: DomainState = DomainState.BUILDING
    shutdown_reason: ShutdownReason | None = None   # once shut down
    message: str = ""                      # why it stopped or failed, for people
    pid: int | None = None
    pid_start: int | None = None           # /proc/<pid>/stat starttime, see module doc
    boots: int = 1
    start_paused: bool = False
    console_log: str = ""
    sched: dict[str, int] = field(default_factory=dict)   # weight, cap in force (empty: the spec's)
    cgroup: str = ""                       # the cgroup the process runs in, if any
    # How the domain process makes its first domain (cleared once it exists):
    restore_path: str | None = None        # from this save file (``hospes restore``)
    incoming: str | None = None            # from a migration stream accepted at this address
    version: int = RECORD_VERSION

    def sched_in_force(self) -> dict[str, int]:
        """Weight and cap in force: the last ``sched-credit`` change, else the config's cpu_weight/cap."""
        return {"weight": int(self.sched.get("weight", self.spec.cpu_weight)),
                "cap": int(self.sched.get("cap", self.spec.cap))}

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["spec"] = self.spec.to_dict()
        data["state"] = str(self.state)
        data["shutdown_reason"] = None if self.shutdown_reason is None else str(self.shutdown_reason)
        data["sched"] = dict(self.sched)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DomainRecord":
        """The record in ``data`` (unknown fields are ignored); ValueError or ConfigError if corrupt."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["spec"] = DomainSpec.from_dict(known["spec"])
        if "state" in known:
            known["state"] = DomainState(known["state"])
        if known.get("shutdown_reason") is not None:
            known["shutdown_reason"] = ShutdownReason(known["shutdown_reason"])
        return cls(**known)


def write_record(path: Path, record: DomainRecord) -> None:
    """Atomically replace ``path`` with ``record``."""
    atomic_write(path, json.dumps(record.to_dict(), indent=1, sort_keys=True).encode() + b"\n")


def read_record(path: Path) -> DomainRecord | None:
    """The record at ``path``, or None if it is missing or unreadable."""
    try:
        data = json.loads(path.read_bytes())
        return DomainRecord.from_dict(data)
    except (OSError, ValueError, TypeError, KeyError, HospesError):
        return None


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (clock ticks since boot), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def process_alive(pid: int | None, start: int | None) -> bool:
    """True while ``pid`` names a live (non-zombie) process that started at ``start``."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return False
    return start is None or int(fields[19]) == start


def remove_quietly(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
