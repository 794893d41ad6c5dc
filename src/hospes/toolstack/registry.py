"""The daemon's view of the domains: state records on disk + live answers from domain processes.

The registry keeps nothing that the runtime directory does not also hold, except
the ``Popen`` objects of the domain processes this daemon started (so it can reap
them and report how they died) and the last CPU time each domain reported. A
restarted daemon therefore "re-adopts" running domains just by constructing a
Registry over the same directory.

Each query re-reads the record and asks the live process (``status`` over its
control socket); see :mod:`.record` for how process liveness is decided and
:mod:`.lifecycle` for the reported states.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from hospes.domain import ShutdownReason
from hospes.toolstack import control
from hospes.toolstack.lifecycle import DomainState, xl_flags
from hospes.toolstack.record import DomainRecord, process_alive, read_record, remove_quietly
from hospes.toolstack.rundir import RunDir

STATUS_TIMEOUT = 3.0


def exit_text(rc: int) -> str:
    """How a process ended, from its Popen return code."""
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


@dataclass
class DomainView:
    """A record joined with the process's liveness and its live status (if it answered)."""

    record: DomainRecord
    alive: bool
    status: dict[str, Any] | None
    state: DomainState
    message: str
    cpu_time: float

    @property
    def domid(self) -> int:
        return self.record.domid

    def to_api(self) -> dict[str, Any]:
        rec = self.record
        st = self.status or {}
        vcpus = st.get("vcpus") or []
        online = sum(1 for v in vcpus if v.get("online"))
        blocked = bool(vcpus) and all(v.get("blocked") or not v.get("online") for v in vcpus)
        spec = rec.spec
        max_vcpus = spec.vcpus
        reason = rec.shutdown_reason if self.state in (DomainState.SHUTDOWN, DomainState.CRASHED) else None
        if self.state is DomainState.CRASHED and reason is None:
            reason = ShutdownReason.CRASH
        return {
            "domid": rec.domid,
            "name": st.get("name", rec.name),
            "uuid": rec.uuid,
            "state": str(self.state),
            "flags": xl_flags(self.state, reason, blocked),
            # An incoming domain holds no memory until the stream brings its configuration.
            # What it holds now (its balloon moves it: hospes mem-set), else what it was built with.
            "memory_mib": (int(st["memory_kib"]) // 1024 if "memory_kib" in st else spec.memory)
            if self.alive and rec.incoming is None else 0,
            "vcpus": online if self.alive and vcpus else (max_vcpus if self.alive else 0),
            "max_vcpus": max_vcpus,
            "cpu_time": round(self.cpu_time, 3),
            "created": rec.created,
            "started": st.get("started", rec.started),
            "uptime": max(0.0, time.time() - float(st.get("started", rec.started))),
            "boots": int(st.get("boots", rec.boots)),
            "shutdown_reason": None if reason is None else str(reason),
            "message": self.message,
            "pid": rec.pid if self.alive else None,
            "console_log": rec.console_log,
            "sched": rec.sched_in_force(),
            "config": spec.to_dict(),
        }


def _state(reported: object, recorded: DomainState) -> DomainState:
    """The state a domain process reported, else the recorded one (an older process may say less)."""
    try:
        return DomainState(reported) if isinstance(reported, str) else recorded
    except ValueError:
        return recorded


class Registry:
    """Domains under one runtime directory. All methods run on the daemon's event loop."""

    def __init__(self, run: RunDir, jail: bool = True) -> None:
        self.run = run
        self.jail = jail          # False: domain processes run unjailed (hospesd --no-jail)
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.exit_codes: dict[int, int] = {}
        self.dying: set[int] = set()
        self._cpu: dict[int, float] = {}

    # --- processes ---------------------------------------------------------------------

    def spawn(self, domid: int) -> subprocess.Popen[bytes]:
        """Start the domain process for an existing record, in its own session."""
        err = open(self.run.stderr_file(domid), "ab")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hospes.toolstack.domain_process",
                 "--run-dir", str(self.run.root), "--domid", str(domid), *([] if self.jail else ["--no-jail"])],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True, close_fds=True,
            )
        finally:
            err.close()
        self.children[domid] = proc
        return proc

    def reap(self) -> None:
        """Collect exit statuses of finished children (so none stays a zombie)."""
        for domid, proc in list(self.children.items()):
            rc = proc.poll()
            if rc is not None:
                self.exit_codes[domid] = rc
                del self.children[domid]

    def is_alive(self, rec: DomainRecord) -> bool:
        child = self.children.get(rec.domid)
        if child is not None and child.poll() is None and (rec.pid is None or rec.pid == child.pid):
            return True
        return process_alive(rec.pid, rec.pid_start)

    def kill(self, rec: DomainRecord) -> None:
        """SIGKILL the domain process's group (its own session), if it is still the same process."""
        child = self.children.get(rec.domid)
        pid = rec.pid or (child.pid if child else None)
        if not pid or not self.is_alive(rec):
            return
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def forget(self, domid: int) -> None:
        """Remove a dead domain's record, socket and stderr file (its console log stays)."""
        err = self.run.stderr_file(domid)
        remove_quietly(self.run.state_file(domid), self.run.control_socket(domid), err,
                       err.with_name(err.name + ".1"), self.run.domains / f"{domid}.fds")
        self._cpu.pop(domid, None)
        self.exit_codes.pop(domid, None)

    # --- queries -----------------------------------------------------------------------

    def record(self, domid: int) -> DomainRecord | None:
        return read_record(self.run.state_file(domid))

    def _death(self, rec: DomainRecord) -> str:
        rc = self.exit_codes.get(rec.domid)
        how = "" if rc is None else f" ({exit_text(rc)})"
        return f"The domain process {rec.pid} died unexpectedly{how}; `destroy` removes the domain."

    async def view(self, domid: int) -> DomainView | None:
        rec = self.record(domid)
        if rec is None:
            return None
        alive = self.is_alive(rec)
        status = None
        if alive and rec.state != DomainState.SHUTDOWN:
            try:
                status = await control.request(self.run.control_socket(domid), "status", timeout=STATUS_TIMEOUT)
            except control.ControlError:
                status = None
            fresh = self.record(domid)
            if fresh is None:
                return None
            rec = fresh
        message = rec.message
        stopped = DomainState.CRASHED if rec.shutdown_reason is ShutdownReason.CRASH else DomainState.SHUTDOWN
        state: DomainState
        if domid in self.dying:
            state = DomainState.DYING
        elif alive:
            state = _state((status or {}).get("state"), rec.state)
            if state == DomainState.SHUTDOWN:
                state = stopped
        elif rec.state == DomainState.SHUTDOWN:
            state = stopped
        else:
            state = DomainState.CRASHED
            message = self._death(rec)
        if status is not None:
            self._cpu[domid] = float(status.get("cpu_time", 0.0))
        return DomainView(rec, alive, status, state, message, self._cpu.get(domid, 0.0))

    async def views(self) -> list[DomainView]:
        found = await asyncio.gather(*(self.view(d) for d in self.run.domids()))
        return [v for v in found if v is not None]

    def find(self, ident: str) -> DomainRecord | None:
        """The record for a domid (all digits) or a name."""
        if ident.isdigit():
            return self.record(int(ident))
        for domid in self.run.domids():
            rec = self.record(domid)
            if rec is not None and rec.name == ident:
                return rec
        return None

    def names(self) -> dict[str, int]:
        out = {}
        for domid in self.run.domids():
            rec = self.record(domid)
            if rec is not None:
                out[rec.name] = domid
        return out
