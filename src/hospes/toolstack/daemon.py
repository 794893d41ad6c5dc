"""hospesd: the node daemon. The registry of domains, one process per domain, the HTTP API.

Run it as ``hospesd`` / ``hospes daemon start`` (or let the CLI start it on
demand). One daemon per runtime directory, enforced with a flock. It owns no
domain state of its own (see :mod:`.registry`): stop it, start it again, and the
domains that kept running in their own processes are all still there.

:class:`Daemon` implements the operations; each raises :class:`.api_error.ApiError`
with an HTTP status and a message for people. :mod:`.api` maps HTTP onto it.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import secrets
import signal
import ssl
import stat
import subprocess
import sys
import time
import uuid as uuidlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from hospes.version import __version__
from hospes.domain import MIN_MEMORY_MIB, ShutdownReason
from hospes.errors import HospesError
from hospes.files import MAX_TOKEN_BYTES, FileReadError, read_regular
from hospes.migrate.savefile import peek_config
from hospes.migrate.stream import StreamError
from hospes.toolstack.loopback import is_loopback
from hospes.toolstack import control
from hospes.toolstack.admission import DEFAULT_OVERCOMMIT, AdmissionError, admit, valid_overcommit, write_settings
from hospes.toolstack.addresses import listen_address, migration_destination
from hospes.toolstack.api_error import ApiError
from hospes.toolstack.boot_files import check_boot_files
from hospes.toolstack.console_run import ABANDON_READ, MarkerRun
from hospes.cgroup import CgroupError, SchedParams, apply_sched
from hospes.toolstack.domain_jail import hand_file, hand_socket, hand_ssh
from hospes.toolstack.domain_process import valid_name
from hospes.toolstack.hostinfo import host_info
from hospes.toolstack.lifecycle import DomainState, ShutdownRequest, WaitOutcome
from hospes.toolstack.record import DomainRecord, write_record
from hospes.toolstack.registry import DomainView, Registry, exit_text
from hospes.toolstack.rundir import RunDir, rotate_log
from hospes.toolstack.saved_spec import restored_spec
from hospes.toolstack.spec import DEFAULT_IMAGE, DomainSpec, load_spec

log = logging.getLogger("hospesd")

BUILD_TIMEOUT_S = 600.0        # first use may build the default images
DESTROY_GRACE_S = 10.0
MIN_MEMORY_TARGET_KIB = MIN_MEMORY_MIB * 1024   # mem-set's floor: the smallest domain Hospes builds
SAVE_TIMEOUT_S = 600.0         # writing a big guest's memory takes a while
GONE_GRACE_S = 30.0            # for a saved or migrated domain's process to exit
MIB = 1024 * 1024


def _reap(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Wait for a helper process (ssh) that should end with its connection; kill it if not."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def request_spec(body: dict[str, Any]) -> DomainSpec:
    """The typed spec of a create request (ApiError 400 if it is invalid)."""
    try:
        if "spec" in body:
            return DomainSpec.from_dict(body["spec"])
        if "config_path" in body:
            if not os.path.isabs(body["config_path"]):
                raise ApiError(400, "The config_path must be an absolute path on the daemon's host.")
            return load_spec(Path(body["config_path"]), list(body.get("overrides") or []))
        raise ApiError(400, "Give either `spec` or `config_path` in the request body.")
    except ApiError:
        raise
    except (HospesError, ValueError, TypeError, KeyError, OSError) as e:
        raise ApiError(400, f"Invalid domain configuration: {e}") from e


def absolute_file_path(path: str, what: str, must_exist: bool = True) -> str:
    """``path`` if it is absolute and its directory exists on this host (ApiError 400 if not)."""
    if not os.path.isabs(path):
        raise ApiError(400, f"The {what} path must be absolute on the daemon's host, not {path!r}.")
    if "\0" in path:
        raise ApiError(400, f"The {what} path may not contain a NUL byte.")
    if os.path.isdir(path):
        raise ApiError(400, f"The {what} {path} is a directory; give a file name.")
    if not must_exist and not os.path.isdir(os.path.dirname(path)):
        raise ApiError(400, f"The directory of the {what} {path} does not exist on the daemon's host.")
    return os.path.normpath(path)


def check_paths(spec: DomainSpec) -> None:
    """The kernel, ramdisk and disks are files the domain can use (ApiError 400 naming the file if not)."""
    try:
        check_boot_files(spec)
    except FileReadError as e:
        raise ApiError(400, str(e)) from None


def peek_save_file(path: str) -> tuple[dict[str, Any], int]:
    """The saved spec and memory size at the head of the save file ``path`` (a regular file:
    opened without blocking, so a FIFO is refused instead of waiting for a writer)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileReadError(f"The save file {path} is not a regular file; give the file `hospes save` wrote.",
                                "not a regular file")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return peek_config(f)
    finally:
        os.close(fd)


def _kib_text(kib: int) -> str:
    return f"{kib // 1024} MiB" if kib % 1024 == 0 else f"{kib} KiB"


class Daemon:
    """The operations behind the API, over one runtime directory."""

    def __init__(self, run: RunDir, overcommit: float = DEFAULT_OVERCOMMIT, jail: bool = True) -> None:
        self.run = run.ensure()
        self.overcommit = overcommit
        self.registry = Registry(run, jail=jail)
        self._run_locks: dict[int, asyncio.Lock] = {}
        self._create_lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        self._busy: dict[int, str] = {}                    # domid -> "saved" | "migrated"
        self._migrations: dict[int, asyncio.Task[dict[str, Any]]] = {}
        self._incoming: dict[int, asyncio.Task[None]] = {}
        self._incoming_failed: dict[int, str] = {}         # domid -> why its stream failed

    # --- lifecycle of the daemon -------------------------------------------------------

    async def start(self) -> None:
        write_settings(self.run, self.overcommit)
        adopted = [v for v in await self.registry.views() if v.alive]
        if adopted:
            log.info("adopted %d running domain(s): %s", len(adopted),
                     ", ".join(f"{v.domid}:{v.record.name}" for v in adopted))
        self._reaper = asyncio.create_task(self._reap_forever())

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for task in (*self._incoming.values(), *self._migrations.values()):
            task.cancel()

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.registry.reap()

    # --- lookups -----------------------------------------------------------------------

    def record(self, ident: str) -> DomainRecord:
        rec = self.registry.find(ident)
        if rec is None:
            raise ApiError(404, f"Domain {ident!r} does not exist; `hospes list` shows the domains.")
        return rec

    async def view(self, ident: str) -> DomainView:
        rec = self.record(ident)
        v = await self.registry.view(rec.domid)
        if v is None:
            raise ApiError(404, f"Domain {ident!r} does not exist any more.")
        return v

    async def live(self, ident: str, action: str) -> DomainView:
        v = await self.view(ident)
        if not v.alive or v.state in (DomainState.SHUTDOWN, DomainState.CRASHED, DomainState.DYING):
            raise ApiError(409, f"Domain {v.record.name} ({v.domid}) is {v.state}; it cannot {action}. "
                                "`hospes destroy` removes it.")
        if v.state is DomainState.INCOMING:
            raise ApiError(409, f"Domain {v.record.name} ({v.domid}) is incoming: it exists once the migration "
                                f"stream has arrived, and cannot {action} before.")
        return v

    async def running(self, ident: str, action: str) -> DomainView:
        """A domain that exists and runs (or is paused), not one still being built or received."""
        v = await self.live(ident, action)
        if v.state not in (DomainState.RUNNING, DomainState.PAUSED):
            raise ApiError(409, f"Domain {v.record.name} ({v.domid}) is {v.state}; it cannot {action} yet.")
        if v.domid in self._busy:
            raise ApiError(409, f"Domain {v.record.name} ({v.domid}) is being {self._busy[v.domid]}; it cannot "
                                f"{action} until that ends.")
        return v

    async def _request(self, v: DomainView, op: str, **args: Any) -> dict[str, Any]:
        try:
            return await control.request(self.run.control_socket(v.domid), op, **args)
        except control.ControlError as e:
            raise ApiError(409, str(e)) from e

    # --- operations ------------------------------------------------------------------

    async def domains(self) -> list[dict[str, Any]]:
        return [v.to_api() for v in await self.registry.views()]

    async def host(self) -> dict[str, Any]:
        views = await self.registry.views()
        return host_info(v.to_api()["memory_mib"] for v in views)

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        # Reading a config file and checking the images open user-named files: in a thread,
        # so a slow mount cannot stop the event loop (FIFOs and devices are refused unread).
        spec = await asyncio.to_thread(request_spec, body)
        for w in spec.warnings:
            log.info("config warning: %s", w)
        await asyncio.to_thread(check_paths, spec)
        domid = await self._start(spec, spec.memory, bool(body.get("paused")), "be built")
        return await self._built_view(domid, spec.name)

    async def restore(self, body: dict[str, Any]) -> dict[str, Any]:
        """Start a domain from a save file (``xl restore``): its spec comes from the file."""
        path = absolute_file_path(body["path"], "save file")
        try:
            saved, memory_bytes = await asyncio.to_thread(peek_save_file, path)
            spec = restored_spec(DomainSpec.from_dict(saved), list(body.get("overrides") or []))
        except FileReadError as e:
            raise ApiError(400, str(e)) from None
        except FileNotFoundError:
            raise ApiError(400, f"The save file {path} does not exist on the daemon's host.") from None
        except OSError as e:
            raise ApiError(400, f"Cannot read the save file {path}: {e.strerror or e}.") from None
        except StreamError as e:
            raise ApiError(400, f"The file {path} is not a usable save file: {e}") from None
        except (HospesError, ValueError, TypeError, AttributeError) as e:
            raise ApiError(400, f"The configuration in the save file {path} is not usable: {e}") from None
        # No check_paths: the kernel is in the saved memory, its file is not read again.
        memory = max(spec.memory, -(-memory_bytes // MIB))
        domid = await self._start(spec, memory, bool(body.get("paused")), "be restored", restore_path=path)
        return await self._built_view(domid, spec.name)

    async def incoming(self, body: dict[str, Any]) -> dict[str, Any]:
        """A domain process that listens for one migration stream; answers once it listens."""
        try:
            listen = listen_address(body["listen"])
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        if listen.startswith("unix:") and not os.path.isdir(os.path.dirname(listen[len("unix:"):])):
            raise ApiError(400, f"The directory of the socket {listen} does not exist on the daemon's host.")

        def placeholder(domid: int) -> DomainSpec:
            # Replaced by the spec in the stream; until then the domain has only a name.
            return DomainSpec(name=body.get("name") or f"incoming-{domid}", kernel=DEFAULT_IMAGE)

        domid = await self._start(placeholder, None, bool(body.get("paused")), f"listen at {listen}",
                                  ready=(DomainState.INCOMING, DomainState.RUNNING, DomainState.PAUSED),
                                  incoming=listen)
        self._incoming[domid] = asyncio.create_task(self._watch_incoming(domid))
        return {"domid": domid, "listen": listen}

    async def _start(self, spec: DomainSpec | Callable[[int], DomainSpec], memory: int | None, paused: bool,
                     what: str, ready: tuple[DomainState, ...] = (DomainState.RUNNING, DomainState.PAUSED),
                     **how: Any) -> int:
        """Write the record of a new domain, start its process and wait until it is ``ready``.

        ``spec`` may depend on the domid (an incoming domain's placeholder name);
        ``memory`` (MiB) is checked against what the host has free, None skips
        that; ``how`` are the record's fields saying how the process makes the
        domain (``restore_path``, ``incoming``). ``what`` completes "Domain X
        could not ..." in failures.
        """
        if not callable(spec):
            self._valid_name(spec.name)
        async with self._create_lock:
            domid = self.run.allocate_domid() if callable(spec) else 0
            typed = spec(domid) if callable(spec) else spec
            name = self._valid_name(typed.name)
            if name in self.registry.names():
                raise ApiError(409, f"A domain named {name!r} already exists; pick another name (name=...).")
            if memory is not None:
                try:
                    await asyncio.to_thread(admit, self.run, name, memory, self.overcommit)
                except AdmissionError as e:
                    raise ApiError(409, str(e)) from None
            domid = domid or self.run.allocate_domid()
            uuid = typed.uuid or str(uuidlib.uuid4())
            typed = replace(typed, uuid=uuid)
            record = DomainRecord(domid=domid, name=name, uuid=uuid, spec=typed, start_paused=paused,
                                  console_log=str(self.run.console_log(domid)), **how)
            # A new domain instance gets a fresh console log; a reused domid's old one becomes .1.
            rotate_log(Path(record.console_log or self.run.console_log(domid)))
            write_record(self.run.state_file(domid), record)
            proc = self.registry.spawn(domid)
        log.info("domain %d (%s): process %d to %s", domid, name, proc.pid, what)
        await self._await_ready(domid, proc, name, what, ready)
        return domid

    @staticmethod
    def _valid_name(name: str) -> str:
        try:
            return valid_name(name)
        except HospesError as e:
            raise ApiError(400, str(e)) from e

    async def _await_ready(self, domid: int, proc: subprocess.Popen[bytes], name: str, what: str,
                           ready: tuple[DomainState, ...]) -> None:
        """Wait until the new domain's record is in a ``ready`` state; clean up and raise if it fails.

        A process that exits first failed (exit 2: the request was at fault, 400)
        unless it exited 0 and left its record: it ran and stopped already.
        """
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while time.monotonic() < deadline:
            rc = proc.poll()
            rec = self.registry.record(domid)
            if rc is not None:
                self.registry.reap()
                if rc == 0 and rec is None:
                    raise ApiError(500, f"Domain {name} started and stopped at once; see its console log "
                                        f"{self.run.console_log(domid)}.")
                if rc == 0:
                    return   # it ran and stopped already, preserved (build failures exit 1 or 2)
                message = (rec.message if rec and rec.message else self._stderr_tail(domid)) or f"exit status {rc}"
                self.registry.forget(domid)
                status = 400 if rc == 2 else 500
                raise ApiError(status, f"Domain {name} could not {what}: {message}")
            if rec is not None and rec.state in ready:
                return   # "shutdown" here means the build failed and the process is exiting
            await asyncio.sleep(0.1)
        rec = self.registry.record(domid)
        if rec is not None:
            self.registry.kill(rec)
        self.registry.forget(domid)
        raise ApiError(500, f"Domain {name} could not {what} within {BUILD_TIMEOUT_S:.0f} s; it was destroyed.")

    async def _built_view(self, domid: int, name: str) -> dict[str, Any]:
        v = await self.registry.view(domid)
        if v is None:
            raise ApiError(500, f"Domain {name} stopped right after it was built; see its console log.")
        return v.to_api()

    # --- save, restore, migration ------------------------------------------------------

    async def save(self, ident: str, body: dict[str, Any]) -> dict[str, Any]:
        """Save a domain to a file on the daemon's host (``xl save [-c]``)."""
        path = absolute_file_path(body["path"], "save file", must_exist=False)
        checkpoint = bool(body.get("checkpoint"))
        v = await self.running(ident, "be saved")
        self._busy[v.domid] = "saved"
        # hospesd opens the file and hands it over: a jailed domain process opens no path itself.
        tmp = Path(path).with_name(f".{Path(path).name}.partial")
        try:
            try:
                handed = await asyncio.to_thread(hand_file, self.run, v.domid, path, tmp)
                reply = await control.request(self.run.control_socket(v.domid), "save", timeout=SAVE_TIMEOUT_S,
                                              path=path, checkpoint=checkpoint, compress=bool(body.get("compress")))
                if handed:
                    os.replace(tmp, path)
            except (control.ControlError, OSError, HospesError) as e:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise ApiError(409, f"Domain {v.record.name} ({v.domid}) was not saved: {e}") from e
            if not checkpoint:
                await self._wait_gone(v.record)
        finally:
            self._busy.pop(v.domid, None)
        log.info("saved domain %d (%s) to %s%s", v.domid, v.record.name, path, " (checkpoint)" if checkpoint else "")
        return {"domid": v.domid, "path": str(reply.get("path", path)), "bytes": int(reply.get("bytes", 0)),
                "pages": int(reply.get("pages", 0)), "seconds": float(reply.get("seconds", 0.0)),
                "checkpoint": checkpoint}

    async def migration(self, ident: str, body: dict[str, Any]) -> tuple[DomainView, dict[str, Any]]:
        """Check a migrate request: the domain and the control arguments (ApiError if refused)."""
        try:
            dest = migration_destination(body["dest"])
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        v = await self.running(ident, "be migrated")
        args = {"dest": dest, "live": bool(body.get("live", True)), "verify": bool(body.get("verify")),
                "compress": bool(body.get("compress")), "max_rounds": body.get("max_rounds"),
                "max_bandwidth": body.get("max_bandwidth")}
        return v, args

    async def migrate(self, v: DomainView, args: dict[str, Any],
                      on_event: control.EventHandler | None = None) -> dict[str, Any]:
        """Run a checked migration; its result once the source domain is gone. Cancelling the
        caller cancels the migration (the control connection closes; the domain keeps running)."""
        if v.domid in self._busy:
            raise ApiError(409, f"Domain {v.record.name} ({v.domid}) is being {self._busy[v.domid]} already.")
        self._busy[v.domid] = "migrated"
        task = asyncio.current_task()
        if task is not None:
            self._migrations[v.domid] = task
        log.info("migrating domain %d (%s) to %s", v.domid, v.record.name, args["dest"])
        ssh: subprocess.Popen[bytes] | None = None
        try:
            try:
                dest = str(args["dest"])
                if dest.startswith("unix:"):   # a jailed process cannot reach the path, nor run ssh
                    await asyncio.to_thread(hand_socket, self.run, v.domid, dest)
                elif not dest.startswith("tcp://"):
                    ssh = await asyncio.to_thread(hand_ssh, self.run, v.domid, dest)
                reply = await control.request_stream(self.run.control_socket(v.domid), "migrate",
                                                     on_event or (lambda event: None), None, **args)
            except (control.ControlError, HospesError) as e:
                raise ApiError(409, f"Domain {v.record.name} ({v.domid}) was not migrated: {e}") from e
            except asyncio.CancelledError:
                log.info("migration of domain %d cancelled; it keeps running here", v.domid)
                raise
            await self._wait_gone(v.record)
        finally:
            self._busy.pop(v.domid, None)
            self._migrations.pop(v.domid, None)
            if ssh is not None:
                await asyncio.to_thread(_reap, ssh)
        result = dict(reply.get("result") or {})
        log.info("migrated domain %d (%s) to %s: %s", v.domid, v.record.name, args["dest"], result)
        return {"domid": v.domid, "dest": args["dest"], **result}

    async def cancel_migration(self, ident: str) -> dict[str, Any]:
        v = await self.view(ident)
        task = self._migrations.get(v.domid)
        try:
            await control.request(self.run.control_socket(v.domid), "migrate_cancel", timeout=5)
        except control.ControlError as e:
            if task is None:
                raise ApiError(409, f"Domain {v.record.name} ({v.domid}) is not being migrated: {e}") from e
        if task is not None:
            task.cancel()
        return {"domid": v.domid}

    async def wait_incoming(self, ident: str, timeout: float) -> dict[str, Any]:
        """The domain once its migration stream has arrived and it runs; 409 with the reason if
        the stream failed (the domain is gone then), 504 if it is still incoming after ``timeout``."""
        failed = self._incoming_failed.get(int(ident)) if ident.isdigit() else None
        if failed is not None:
            raise ApiError(409, failed)
        deadline = time.monotonic() + timeout
        while True:
            rec = self.registry.find(ident)
            if rec is None:
                domid = int(ident) if ident.isdigit() else None
                failed = self._incoming_failed.get(domid) if domid is not None else None
                if failed is None and domid in self._incoming and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)   # gone a moment ago: its watcher is about to say why
                    continue
                raise ApiError(409 if failed else 404, failed or f"Domain {ident!r} does not exist; "
                                                                  "`hospes list` shows the domains.")
            if rec.state not in (DomainState.BUILDING, DomainState.INCOMING) and rec.incoming is None:
                v = await self.view(ident)
                if v.state in (DomainState.RUNNING, DomainState.PAUSED):
                    return v.to_api()
                raise ApiError(409, f"Domain {v.record.name} ({v.domid}) is {v.state} after its migration: "
                                    f"{v.message or 'see its console log'}")
            if time.monotonic() >= deadline:
                raise ApiError(504, f"Domain {rec.name} ({rec.domid}) is still waiting for its migration stream "
                                    f"after {timeout:.0f} s; `hospes destroy` gives up on it.")
            await asyncio.sleep(0.1)

    async def _watch_incoming(self, domid: int) -> None:
        """Until an incoming domain runs: if its process exits without it, keep the reason
        (``wait_incoming`` reports it) and clear what the process left behind."""
        try:
            while True:
                await asyncio.sleep(0.2)
                rec = self.registry.record(domid)
                if rec is not None and rec.incoming is None and rec.state in (DomainState.RUNNING,
                                                                              DomainState.PAUSED):
                    return
                if rec is not None and self.registry.is_alive(rec):
                    continue
                child = self.registry.children.get(domid)
                if child is not None and child.poll() is None:
                    continue
                self.registry.reap()
                if rec is None or rec.incoming is not None:
                    # It failed, or died (killed) before its guest ran: no half domain stays.
                    rc = self.registry.exit_codes.get(domid)
                    died = f"its process died ({exit_text(rc) if rc is not None else 'how is unknown'})" \
                        if rec is not None else ""
                    reason = died or self._stderr_tail(domid) or f"exit status {rc}"
                    self._incoming_failed[domid] = f"The migration into domain {domid} failed: {reason}"
                    while len(self._incoming_failed) > 64:
                        self._incoming_failed.pop(next(iter(self._incoming_failed)))
                    self.registry.forget(domid)
                    log.info("incoming domain %d failed: %s", domid, reason)
                return
        finally:
            self._incoming.pop(domid, None)

    async def _wait_gone(self, rec: DomainRecord) -> None:
        """After a save or migration the domain process destroys its domain and exits; wait
        for that (killing it if it lingers) and forget the domain, as destroy does."""
        self.registry.dying.add(rec.domid)
        try:
            if not await self._wait_dead(rec, GONE_GRACE_S):
                log.warning("domain %d did not exit after it was handed over; killing it", rec.domid)
                self.registry.kill(rec)
                await self._wait_dead(rec, 5.0)
            self.registry.reap()
            self.registry.forget(rec.domid)
        finally:
            self.registry.dying.discard(rec.domid)

    def _stderr_tail(self, domid: int) -> str:
        """The last line of the domain process's stderr (read from its last 64 KiB only)."""
        try:
            with open(self.run.stderr_file(domid), "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
                lines = f.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    async def destroy(self, ident: str) -> dict[str, Any]:
        rec = self.record(ident)
        domid = rec.domid
        self.registry.dying.add(domid)
        try:
            if self.registry.is_alive(rec):
                try:
                    await control.request(self.run.control_socket(domid), "destroy", timeout=5)
                except control.ControlError:
                    pass
                if not await self._wait_dead(rec, DESTROY_GRACE_S):
                    log.warning("domain %d did not stop; killing process group %s", domid, rec.pid)
                    self.registry.kill(rec)
                    await self._wait_dead(rec, 5.0)
            self.registry.reap()
            self.registry.forget(domid)
        finally:
            self.registry.dying.discard(domid)
        log.info("destroyed domain %d (%s)", domid, rec.name)
        return {"domid": domid}

    async def _wait_dead(self, rec: DomainRecord, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fresh = self.registry.record(rec.domid) or rec
            if not self.registry.is_alive(fresh):
                return True
            await asyncio.sleep(0.05)
        return False

    async def pause(self, ident: str) -> dict[str, Any]:
        v = await self.live(ident, "be paused")
        await self._request(v, "pause")
        return {"domid": v.domid}

    async def unpause(self, ident: str) -> dict[str, Any]:
        v = await self.live(ident, "be unpaused")
        await self._request(v, "unpause")
        return {"domid": v.domid}

    async def shutdown(self, ident: str, reason: ShutdownRequest, body: dict[str, Any]) -> dict[str, Any]:
        v = await self.live(ident, "shut down" if reason is ShutdownRequest.POWEROFF else "reboot")
        boots = int((v.status or {}).get("boots", v.record.boots))
        await self._request(v, "shutdown", reason=str(reason))
        if not body.get("wait"):
            return {"domid": v.domid, "outcome": str(WaitOutcome.REQUESTED), "shutdown_reason": None}
        timeout = float(body.get("timeout") or 300.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            rec = self.registry.record(v.domid)
            if rec is None:
                return {"domid": v.domid, "outcome": str(WaitOutcome.DESTROYED), "shutdown_reason": str(reason)}
            if rec.boots != boots:
                return {"domid": v.domid, "outcome": str(WaitOutcome.RESTARTED), "shutdown_reason": str(reason)}
            if not self.registry.is_alive(rec):
                crashed = rec.state != DomainState.SHUTDOWN or rec.shutdown_reason is ShutdownReason.CRASH
                outcome = WaitOutcome.CRASHED if crashed else WaitOutcome.SHUTDOWN
                return {"domid": v.domid, "outcome": str(outcome),
                        "shutdown_reason": str(rec.shutdown_reason or ShutdownReason.CRASH)}
        raise ApiError(504, f"Domain {v.record.name} ({v.domid}) is still running after {timeout:.0f} s; "
                            "`hospes destroy` stops it at once.")

    async def rename(self, ident: str, new: str) -> dict[str, Any]:
        try:
            new = valid_name(new)
        except HospesError as e:
            raise ApiError(400, str(e)) from e
        v = await self.view(ident)
        async with self._create_lock:
            owner = self.registry.names().get(new)
            if owner is not None and owner != v.domid:
                raise ApiError(409, f"A domain named {new!r} already exists; pick another name.")
            if v.alive:
                await self._request(v, "rename", name=new)
            else:
                rec = v.record
                rec.name = new
                rec.spec = replace(rec.spec, name=new)
                write_record(self.run.state_file(rec.domid), rec)
        return {"domid": v.domid}

    async def sched(self, ident: str, weight: int | None = None, cap: int | None = None) -> dict[str, Any]:
        """The credit scheduler's weight and cap of a domain; set whichever of them is given."""
        if weight is None and cap is None:
            v = await self.view(ident)
            live = (v.status or {}).get("sched") if v.alive else None
            return {"domid": v.domid, "name": v.to_api()["name"], **(live or {**v.to_api()["sched"],
                                                                             "cgroup": None, "throttled": {}})}
        v = await self.live(ident, "change its scheduling parameters")
        args = {k: x for k, x in (("weight", weight), ("cap", cap)) if x is not None}
        old = v.record.sched_in_force()
        reply = await self._request(v, "sched", **args)
        reply.pop("ok", None)
        # A jailed domain process cannot write its cgroup: the daemon applies what it was asked.
        try:
            apply_sched(v.record.cgroup, SchedParams(weight=old["weight"] if weight is None else weight,
                                                     cap=old["cap"] if cap is None else cap))
        except CgroupError as e:
            raise ApiError(409, f"Domain {v.record.name} ({v.domid}): {e}") from e
        return {"domid": v.domid, "name": v.to_api()["name"], **reply}

    async def set_vcpus(self, ident: str, count: int) -> dict[str, Any]:
        """``xl vcpu-set``: how many of its vCPUs (up to maxvcpus) the guest should run."""
        v = await self.running(ident, "change its vCPUs")
        maxvcpus = v.record.spec.maxvcpus
        if not 1 <= count <= maxvcpus:
            raise ApiError(400, f"Domain {v.record.name} ({v.domid}) can run between 1 and {maxvcpus} vCPUs "
                                f"(its maxvcpus); {count} were asked for.")
        reply = await self._request(v, "vcpu_set", vcpus=count)
        reply.pop("ok", None)
        return {"domid": v.domid, "name": v.to_api()["name"], **reply}

    async def set_memory(self, ident: str, target_kib: int) -> dict[str, Any]:
        """``xl mem-set``: the memory the guest's balloon driver should hold, in KiB."""
        v = await self.running(ident, "change its memory")
        spec = v.record.spec
        maxmem_kib = max(spec.memory, spec.maxmem or 0) * 1024
        if not MIN_MEMORY_TARGET_KIB <= target_kib <= maxmem_kib:
            raise ApiError(400, f"Domain {v.record.name} ({v.domid}) can be set to between "
                                f"{MIN_MEMORY_TARGET_KIB // 1024} MiB and its maxmem ({maxmem_kib // 1024} MiB); "
                                f"{_kib_text(target_kib)} was asked for.")
        reply = await self._request(v, "mem_set", target_kib=target_kib)
        reply.pop("ok", None)
        return {"domid": v.domid, "name": v.to_api()["name"], **reply}

    async def vcpus(self, ident: str) -> dict[str, Any]:
        v = await self.view(ident)
        st = v.status or {}
        vcpus = st.get("vcpus")
        if not vcpus:
            n = v.record.spec.vcpus
            vcpus = [{"vcpu": i, "online": False, "running": False, "blocked": False, "cpu": -1, "time": 0.0}
                     for i in range(n)]
        return {"domid": v.domid, "name": v.to_api()["name"], "vcpus": vcpus}

    def console_log(self, ident: str, offset: int | None, tail: int | None) -> bytes:
        rec = self.record(ident)
        path = Path(rec.console_log or self.run.console_log(rec.domid))
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                start = 0
                if offset is not None:
                    start = min(offset, size)
                if tail is not None:
                    start = max(start, size - tail)
                f.seek(start)
                return f.read()
        except FileNotFoundError:
            return b""

    async def run_command(self, ident: str, command: str, timeout: float) -> dict[str, Any]:
        v = await self.live(ident, "run commands")
        try:
            marker = MarkerRun(command)
        except ValueError as e:
            raise ApiError(400, str(e)) from e
        lock = self._run_locks.setdefault(v.domid, asyncio.Lock())
        async with lock:
            try:
                reader, writer = await control.open_console(self.run.control_socket(v.domid))
            except control.ControlError as e:
                raise ApiError(409, str(e)) from e
            try:
                await asyncio.wait_for(self._drive(marker, reader, writer), timeout)
            except asyncio.TimeoutError:
                if marker.reading:       # the shell waits for blocks that will not come: free it
                    writer.write(ABANDON_READ)
                    try:
                        await asyncio.wait_for(writer.drain(), 5.0)
                    except (asyncio.TimeoutError, ConnectionError):
                        pass
                what = "finish" if marker.ready else "get a shell prompt on the console"
                raise ApiError(504, f"The command did not {what} within {timeout:.0f} s.") from None
            except ValueError as e:
                raise ApiError(400, str(e)) from e
            finally:
                writer.close()
        return {"exit_status": marker.exit_status, "output": marker.output}

    @staticmethod
    async def _drive(marker: MarkerRun, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not marker.done:
            # A newline, a login name, probes, then the command (a long one block by block).
            typed = marker.to_type(time.monotonic())
            if typed:
                writer.write(typed)
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(65536), 0.5)
            except asyncio.TimeoutError:
                continue
            if not data:
                raise ApiError(409, "The domain stopped before the command finished.")
            marker.feed(data)


# --- process entry point ----------------------------------------------------------------


class SingleInstance:
    """The daemon's flock on hospesd.lock plus its pid file."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.fd = -1

    def acquire(self) -> bool:
        self.fd = os.open(self.run.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = -1
            return False
        self.run.pid_file.write_text(f"{os.getpid()}\n")
        return True

    def release(self) -> None:
        if self.fd >= 0:
            try:
                if self.run.pid_file.read_text().strip() == str(os.getpid()):
                    self.run.pid_file.unlink()
            except OSError:
                pass
            os.close(self.fd)
            self.fd = -1


def read_token(token_file: Path | None) -> str | None:
    if token_file is not None:
        return read_regular(token_file, "token file", MAX_TOKEN_BYTES).decode(errors="replace").strip() or None
    return os.environ.get("HOSPES_API_TOKEN") or None


def tcp_endpoint(tcp: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT``; an empty host is 127.0.0.1) as (host, port); ValueError if malformed."""
    host, sep, port = tcp.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--tcp wants HOST:PORT, not {tcp!r}.")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "127.0.0.1", int(port)


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for the TCP API (TLS 1.2 or newer); HospesError if the files are unusable."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise HospesError(f"Cannot use the TLS certificate {cert} and key {key}: {e}") from None
    return ctx


async def serve(run: RunDir, tcp: str | None = None, token: str | None = None,
                ready: "asyncio.Event | None" = None, tls: ssl.SSLContext | None = None,
                overcommit: float = DEFAULT_OVERCOMMIT, jail: bool = True) -> None:
    """Serve the API until SIGTERM/SIGINT; domains keep running afterwards."""
    from aiohttp import web

    from hospes.toolstack.api import make_app

    daemon = Daemon(run, overcommit, jail)
    await daemon.start()
    runner = web.AppRunner(make_app(daemon, token=token), access_log=None, handle_signals=False)
    await runner.setup()
    sock = run.api_socket
    try:
        sock.unlink()
    except FileNotFoundError:
        pass
    old_umask = os.umask(0o177)
    try:
        await web.UnixSite(runner, str(sock)).start()
    finally:
        os.umask(old_umask)
    if tcp:
        host, port = tcp_endpoint(tcp)
        await web.TCPSite(runner, host, port, ssl_context=tls).start()
        log.info("listening on %s %s (bearer token required)", "https" if tls else "tcp", tcp)
    log.info("hospesd %s serving %s", __version__, sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("stopping (domains keep running)")
        await daemon.stop()
        await runner.cleanup()
        try:
            sock.unlink()
        except FileNotFoundError:
            pass


def main(argv: list[str] | None = None) -> int:
    """``hospesd [--run-dir DIR] [--tcp HOST:PORT --token-file FILE [--tls-cert F --tls-key F]]``: serve
    in the foreground."""
    parser = argparse.ArgumentParser(prog="hospesd", description="The Hospes node daemon (HTTP API on a Unix socket).")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="runtime directory (default $HOSPES_RUN_DIR or /run/hospes)")
    parser.add_argument("--tcp", default=None, metavar="HOST:PORT",
                        help="also listen on TCP (needs a token; a non-loopback address needs TLS too)")
    parser.add_argument("--token-file", type=Path, default=None, help="bearer token for TCP (else $HOSPES_API_TOKEN)")
    parser.add_argument("--new-token", action="store_true", help="with --tcp: make a random token, print it")
    parser.add_argument("--tls-cert", type=Path, default=None, help="with --tcp: serve HTTPS with this PEM certificate")
    parser.add_argument("--tls-key", type=Path, default=None, help="the PEM private key of --tls-cert")
    parser.add_argument("--overcommit", type=float, default=DEFAULT_OVERCOMMIT, metavar="RATIO",
                        help="admit domains while their memory (with overheads) stays within RATIO x the host's "
                             "memory (default 1.0)")
    parser.add_argument("--no-jail", action="store_true",
                        help="run domain processes as root with the host's files and every system call "
                             "(debugging; see docs/security.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s hospesd[%(process)d]: %(message)s", stream=sys.stderr)
    run = RunDir(args.run_dir.absolute()) if args.run_dir else RunDir.default()
    tls = None
    try:
        overcommit = valid_overcommit(args.overcommit)
        run.ensure()
        token = read_token(args.token_file)
        if (args.tls_cert is None) != (args.tls_key is None):
            raise HospesError("--tls-cert and --tls-key go together.")
        if args.tls_cert is not None:
            if not args.tcp:
                raise HospesError("--tls-cert/--tls-key are for the TCP listener: give --tcp HOST:PORT too.")
            tls = tls_context(args.tls_cert, args.tls_key)
        if args.tcp:
            host, _ = tcp_endpoint(args.tcp)
            if tls is None and not is_loopback(host):
                raise HospesError(f"--tcp {args.tcp} is not a loopback address: the bearer token would cross the "
                                  "network in clear text; give --tls-cert and --tls-key (or listen on 127.0.0.1).")
    except (HospesError, OSError, ValueError) as e:
        print(f"hospesd: {e}", file=sys.stderr)
        return 2
    if args.tcp and args.new_token:
        token = secrets.token_urlsafe(24)
        print(f"hospesd: TCP token: {token}", file=sys.stderr)
    if args.tcp and not token:
        print("hospesd: --tcp needs a token: --token-file FILE, $HOSPES_API_TOKEN or --new-token", file=sys.stderr)
        return 2
    os.chdir("/")  # pin no directory; every path the daemon uses is absolute
    lock = SingleInstance(run)
    if not lock.acquire():
        print(f"hospesd: another hospesd is running on {run.root}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(run, args.tcp, token, tls=tls, overcommit=overcommit, jail=not args.no_jail))
    finally:
        lock.release()
    return 0


if __name__ == "__main__":
    # Run the imported module, not __main__, so its classes are the ones other modules see.
    from hospes.toolstack import daemon as _module

    sys.exit(_module.main())
