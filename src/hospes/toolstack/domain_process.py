"""The domain process: one Domain, run in this process's main thread.

Started by hospesd as ``python -m hospes.toolstack.domain_process --run-dir DIR
--domid N`` in its own session (so it outlives a daemon restart), after the
daemon wrote ``domains/N.json`` (see :mod:`.record`). Call order::

    start -> record pid -> control socket up -> [build -> run -> (restart: build ...)]
          -> destroy: delete record and socket, exit 0
          |  preserve: record state "shutdown", remove socket, exit 0
          |  build failure: record the message, exit 2 (user error) or 1

Threads: the main thread builds and runs the Domain (``Domain.run`` must own the
main thread: it installs the vCPU kick signal handler). A helper thread runs an
asyncio loop serving the control socket (:mod:`.control`). Pause, unpause,
destroy and the xenstore writes behind shutdown/rename are thread-safe on the
Domain (flags + kicks; the store has its own lock), so the control thread calls
them directly; console input is queued and handed to the guest by the main
loop's input poll.

Signals: SIGTERM or SIGHUP asks the guest to power off; a second one destroys it
(:class:`.runner.TerminationSignals`, as in ``hospes run``). The build and restart
loop is :class:`.runner.DomainRunner`, the configuration path
:func:`.domain_config.domain_config`, both shared with ``hospes run``.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import replace
import dataclasses
import os
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Awaitable, Callable

from hospes.cgroup import CgroupError, CpuControl, SchedParams
from hospes.domain import Domain, DomainShell, ShutdownReason, ShutdownResult
from hospes.migrate.precopy import MAX_ROUNDS, MigrateOptions, MigrationError, Progress, Sender
from hospes.migrate.receive import Receiver
from hospes.migrate.savefile import SavedDomain, read_domain, write_domain
from hospes.migrate.stream import RecordReader, StreamError
from hospes.migrate.transport import Channel, Listener, connect, parse_address
from hospes.toolstack.spec import DomainSpec
from hospes.errors import HospesError
from hospes.pv.runstate import RunState
from hospes.toolstack import control
from hospes.toolstack.domain_config import BootImages, domain_config
from hospes.toolstack.lifecycle import DomainState, Outcome, ShutdownRequest
from hospes.toolstack.record import process_start_time, read_record, remove_quietly, write_record
from hospes.toolstack.admission import admit
from hospes.toolstack.domain_jail import DomainJail, apply_devices, fds_socket, spec_for_build
from hospes.toolstack.jail import JailError, can_jail
from hospes.toolstack.jail_syscalls import SeccompError
from hospes.toolstack.runner import DomainRunner, RestartLimit, TerminationSignals
from hospes.toolstack.rundir import CONSOLE_ROTATE_BYTES, ERR_ROTATE_BYTES, RunDir, rotate_log

LOG_ROTATE_BYTES = CONSOLE_ROTATE_BYTES
INCOMING_TIMEOUT_S = 3600.0   # an incoming domain waits this long for its migration
CONSOLE_BACKLOG_BYTES = 1024 * 1024   # a console client further behind than this is dropped
NAME_MAX = 64


_err_file: Path | None = None     # domains/<id>.err, which fds 1 and 2 write to; set by main()
_err_reopen: Callable[[], int] | None = None    # jailed: the supervisor rotates the .err file
_log_pid = 0      # jailed: the host's pid of this process (getpid() is 1 in its PID namespace)


def log(msg: str) -> None:
    """One line on stderr (domains/<id>.err), timestamped; the file is kept under ERR_ROTATE_BYTES."""
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} hospes-domain[{_log_pid or os.getpid()}]: {msg}\n")
    sys.stderr.flush()
    _bound_stderr()


def _bound_stderr() -> None:
    """Past ERR_ROTATE_BYTES, move the .err file to .err.1 and point fds 1 and 2 at a new one
    (the daemon reads the last line of the current file; the previous part stays in .1)."""
    if _err_file is None:
        return
    try:
        if os.fstat(2).st_size <= ERR_ROTATE_BYTES:
            return
        if _err_reopen is not None:
            fd = _err_reopen()
        elif not rotate_log(_err_file):
            return
        else:
            fd = os.open(_err_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except (OSError, HospesError):
        return
    sys.stderr.flush()
    sys.stdout.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _hypervisor_log(line: bytes) -> None:
    """A guest's console_io line ("(d<domid>) ...") into this domain's log, as Xen's own console."""
    log(line.decode("utf-8", "replace").rstrip("\n"))


def valid_name(name: object) -> str:
    """Return ``name`` if it can name a domain, else raise HospesError saying why."""
    if not isinstance(name, str) or not name:
        raise HospesError("A domain name must be a non-empty string.")
    if len(name) > NAME_MAX:
        raise HospesError(f"The domain name is too long ({len(name)} characters); use at most {NAME_MAX}.")
    if name.isdigit():
        raise HospesError(f"The domain name {name!r} is all digits, which would read as a domid; pick another.")
    if any(c.isspace() or c in "/\\\"'" or not c.isprintable() for c in name):
        raise HospesError(f"The domain name {name!r} has whitespace, quotes or slashes; pick another.")
    if name == "Domain-0":
        raise HospesError("The name Domain-0 is the host's; pick another.")
    return name


def _stream_spec(config: Any) -> DomainSpec:
    """The DomainSpec a stream's CONFIG record carries."""
    try:
        return DomainSpec.from_dict(config)
    except (HospesError, ValueError, TypeError, KeyError) as e:
        raise StreamError(f"The stream's configuration is not one this Hospes reads: {e}") from e


def _positive(value: object, name: str) -> int | None:
    """An optional positive integer argument of a control request."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise HospesError(f"{name} must be a positive integer, not {value!r}.")
    return value


class ConsoleLog:
    """Append-only console log with one level of rotation (``.1``) past LOG_ROTATE_BYTES."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reopen: Callable[[], int] | None = None    # jailed: the supervisor rotates the file
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "ab", buffering=0)
        self._size = self._f.tell()

    def write(self, data: bytes) -> None:
        if self._size + len(data) > LOG_ROTATE_BYTES:
            self._f.close()
            if self.reopen is not None:
                self._f = open(self.reopen(), "ab", buffering=0)
            else:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                self._f = open(self.path, "ab", buffering=0)
            self._size = 0
        self._f.write(data)
        self._size += len(data)

    def close(self) -> None:
        self._f.close()


def _thread_cpu(thread: threading.Thread | None) -> tuple[float, int]:
    """(CPU seconds, last host CPU) of a live thread; (-1, -1) if unknown."""
    if thread is None or thread.ident is None or not thread.is_alive():
        return -1.0, -1
    try:
        seconds = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except (OSError, ProcessLookupError, AttributeError):
        seconds = -1.0
    cpu = -1
    try:
        stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
        cpu = int(stat[stat.rindex(")") + 2:].split()[36])
    except (OSError, ValueError, IndexError):
        pass
    return seconds, cpu


class ControlServer:
    """Serves the control socket from a helper thread with its own asyncio loop."""

    def __init__(self, proc: "DomainProcess", path: Path) -> None:
        self.proc = proc
        self.path = path
        self.sock: socket.socket | None = None        # bound before a jail's drop (bind())
        self.fds: socket.socket | None = None         # where hospesd hands over files it opened
        self.loop: asyncio.AbstractEventLoop | None = None
        self.consoles: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="control", daemon=True)
        self.handlers: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "status": self._status, "pause": self._pause, "unpause": self._unpause,
            "shutdown": self._shutdown, "destroy": self._destroy, "rename": self._rename, "log": self._log,
            "sched": self._sched, "save": self._save_op, "migrate_cancel": self._migrate_cancel,
            "vcpu_set": self._vcpu_set, "mem_set": self._mem_set,
        }

    def bind(self, fds_path: Path) -> None:
        """Bind the control socket and the file-handing socket now (as root, in the host's
        filesystem), for a process that serves them from its jail."""
        self.sock = _listen(self.path)
        self.fds = _listen(fds_path)

    def start(self) -> None:
        if self.fds is not None:
            threading.Thread(target=self._receive_files, name="fds", daemon=True).start()
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise HospesError(f"Cannot serve the control socket {self.path}: {self._error}")

    def stop(self) -> None:
        remove_quietly(self.path)
        loop = self.loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(5)

    def _main(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            if self.sock is not None:
                self.loop.run_until_complete(
                    asyncio.start_unix_server(self._handle, sock=self.sock, limit=control.MAX_LINE))
            else:
                remove_quietly(self.path)
                self.loop.run_until_complete(
                    asyncio.start_unix_server(self._handle, path=str(self.path), limit=control.MAX_LINE))
                os.chmod(self.path, 0o600)
        except BaseException as e:  # reported to start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def _receive_files(self) -> None:
        """hospesd hands over a file it opened for this domain (a save file): one message
        ``{"path": P}`` with the descriptor; a later ``save`` to P writes into it."""
        assert self.fds is not None
        while True:
            try:
                conn, _ = self.fds.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(5)
                    data, fds, _, _ = socket.recv_fds(conn, 4096, 1)
                except OSError:
                    continue
                try:
                    path = control.decode(data).get("path")
                except (HospesError, ValueError):
                    path = None
                if not fds:
                    continue
                if not isinstance(path, str):
                    os.close(fds[0])
                    continue
                self.proc.hand_file(path, fds[0])
                try:
                    conn.sendall(b"ok\n")
                except OSError:
                    pass

    # --- console fan-out (called from any thread) -----------------------------------

    def broadcast(self, data: bytes) -> None:
        loop = self.loop
        if loop is not None and self.consoles:
            try:
                loop.call_soon_threadsafe(self._fanout, data)
            except RuntimeError:  # loop closed at exit
                pass

    def _fanout(self, data: bytes) -> None:
        for w in list(self.consoles):
            if w.is_closing() or w.transport.get_write_buffer_size() > CONSOLE_BACKLOG_BYTES:
                self.consoles.discard(w)
                w.close()
                continue
            w.write(data)

    # --- requests ----------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await reader.readline()
                if not line:
                    return
                req = control.decode(line)
                op = req.get("op")
                if op == "console":
                    writer.write(control.encode({"ok": True}))
                    await writer.drain()
                    await self._console(reader, writer)
                    return
                if op == "migrate":
                    await self._migrate(req, reader, writer)
                    return
                handler = self.handlers.get(op) if isinstance(op, str) else None
                if handler is None:
                    raise HospesError(f"Unknown control operation {op!r}; use one of {', '.join(control.OPS)}.")
                reply = {"ok": True, **(await handler(req))}
            except (HospesError, ValueError) as e:
                reply = {"ok": False, "error": str(e)}
            except Exception as e:  # never let a request take the process down
                log(f"control request failed: {traceback.format_exc()}")
                reply = {"ok": False, "error": f"Internal error: {e}"}
            writer.write(control.encode(reply))
            await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            writer.close()
            self.proc.finish_moved()

    async def _console(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.consoles.add(writer)
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                self.proc.queue_input(data)
        except ConnectionError:
            pass   # the client went away
        finally:
            self.consoles.discard(writer)

    async def _status(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.proc.status()

    async def _pause(self, req: dict[str, Any]) -> dict[str, Any]:
        self.proc.pause()
        return {}

    async def _unpause(self, req: dict[str, Any]) -> dict[str, Any]:
        self.proc.unpause()
        return {}

    async def _shutdown(self, req: dict[str, Any]) -> dict[str, Any]:
        reason = req.get("reason", "poweroff")
        try:
            request = ShutdownRequest(reason)
        except ValueError:
            raise HospesError(f"Unknown shutdown reason {reason!r}; use poweroff or reboot.") from None
        self.proc.request_shutdown(request)
        return {}

    async def _destroy(self, req: dict[str, Any]) -> dict[str, Any]:
        self.proc.destroy()
        return {}

    async def _rename(self, req: dict[str, Any]) -> dict[str, Any]:
        self.proc.rename(valid_name(req.get("name")))
        return {}

    async def _log(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"path": str(self.proc.log.path)}

    async def _sched(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.proc.set_sched(req.get("weight"), req.get("cap"))

    async def _vcpu_set(self, req: dict[str, Any]) -> dict[str, Any]:
        count = req.get("vcpus")
        if not isinstance(count, int) or isinstance(count, bool):
            raise HospesError("vcpu_set needs a vCPU count.")
        return self.proc.set_vcpus(count)

    async def _mem_set(self, req: dict[str, Any]) -> dict[str, Any]:
        target = req.get("target_kib")
        if not isinstance(target, int) or isinstance(target, bool):
            raise HospesError("mem_set needs a memory target in KiB.")
        return self.proc.set_memory(target)

    async def _save_op(self, req: dict[str, Any]) -> dict[str, Any]:
        path = req.get("path")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise HospesError("save needs an absolute path.")
        return await asyncio.to_thread(self.proc.save, Path(path), bool(req.get("checkpoint")),
                                       bool(req.get("compress")))

    async def _migrate_cancel(self, req: dict[str, Any]) -> dict[str, Any]:
        self.proc.cancel_migration()
        return {}

    async def _migrate(self, req: dict[str, Any], reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        """Run a migration in a worker thread, passing its progress on; the client
        closing the connection before the end cancels it."""
        loop = asyncio.get_running_loop()
        cancel = threading.Event()

        def progress(event: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(writer.write, control.encode(event))

        async def watch_client() -> None:
            while await reader.read(4096):
                pass
            cancel.set()

        watcher = asyncio.create_task(watch_client())
        try:
            result = await asyncio.to_thread(self.proc.migrate, req, progress, cancel)
            reply: dict[str, Any] = {"ok": True, "result": result}
        except HospesError as e:
            reply = {"ok": False, "error": str(e)}
        except Exception as e:
            log(f"migration failed: {traceback.format_exc()}")
            reply = {"ok": False, "error": f"Internal error: {e}"}
        finally:
            watcher.cancel()
        try:
            writer.write(control.encode(reply))
            await writer.drain()
        except ConnectionError:
            pass   # the client left (a cancel): the outcome is in the log and the record
        self.proc.finish_moved()


def _listen(path: Path) -> socket.socket:
    remove_quietly(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


class DomainProcess:
    """Runs one domain described by its state record; see the module docstring."""

    def __init__(self, run: RunDir, domid: int) -> None:
        self.run = run
        self.domid = domid
        record = read_record(run.state_file(domid))
        if record is None:
            raise HospesError(f"No readable state record {run.state_file(domid)}; the daemon writes it first.")
        self.record = record
        self.record.pid = os.getpid()
        self.record.pid_start = process_start_time(os.getpid())
        self.record.console_log = self.record.console_log or str(run.console_log(domid))
        self._lock = threading.RLock()      # the runner's domain, self.record and record writes
        self.runner = DomainRunner(lambda: self.record.spec, self._build, lock=self._lock,
                                   restart_limit=RestartLimit(), on_built=self._built,
                                   on_stopped=self._stopped, on_restart=self._restarting)
        self._last_cpu: list[float] = []
        self._busy: str | None = None              # "being saved" / "migrating"
        self._cancel: threading.Event | None = None
        self._received: SavedDomain | None = None     # the first domain, as restore or a migration gave it
        self._receiver: Receiver | None = None
        self._handover_failed = ""
        self._verified: dict[str, int] | None = None   # the verification mode's result, for the source
        self._moved = False          # saved (not as a checkpoint) or migrated: destroy after the reply
        self.cpu = CpuControl(domid)
        self.log = ConsoleLog(Path(self.record.console_log))
        self.server = ControlServer(self, run.control_socket(domid))
        self.jail: DomainJail | None = None
        self._boot: BootImages | None = None    # jailed: the boot files resolved before the drop
        self._files: dict[str, int] = {}        # path -> a file hospesd opened for it (save)
        self._restore_fd: int | None = None
        self._confined = False
        self._listener: Listener | None = None    # jailed: an incoming unix: listener bound before the drop
        self._save()

    @property
    def dom(self) -> Domain | None:
        return self.runner.dom

    # --- record ------------------------------------------------------------------------

    def _save(self) -> None:
        with self._lock:
            link = self.jail.link if self.jail is not None else None
            if link is not None:
                link.call("record", record=self.record.to_dict())
            else:
                write_record(self.run.state_file(self.domid), self.record)

    # --- the jail ------------------------------------------------------------------------

    def enter_jail(self) -> None:
        """Privileged set-up, then into the jail (docs/security.md). In the parent this
        never returns: it becomes the jail's supervisor and exits with the child's status."""
        start = time.monotonic()
        self._confine()
        self._confined = True
        jail = DomainJail(self.run, self.domid, self.record, log)
        jail.at_end.append(self.cpu.close)
        jail.prepare()
        with self._lock:
            self.record.cgroup = str(self.cpu.path or "")
        if self.record.restore_path is not None:
            try:
                self._restore_fd = os.open(self.record.restore_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._restore_fd = None      # _restore_first reports it
        self.server.bind(fds_socket(self.run, self.domid))
        self._boot = jail.boot
        if self.record.incoming is not None:
            addr = parse_address(self.record.incoming, listen=True)
            if addr.kind == "unix":   # its path is outside the jail: bound now, accepted in there
                self._listener = Listener(addr)
                jail.remove_at_end.append(Path(addr.path))

        def parent_keeps_nothing() -> None:
            for sock in (self.server.sock, self.server.fds):
                if sock is not None:
                    sock.close()
            if self._listener is not None:
                self._listener._sock.close()
            self.log.close()

        jail.enter(parent_keeps_nothing)
        self.jail = jail
        global _err_reopen, _log_pid
        _log_pid = self.record.pid or 0
        link = jail.link
        assert link is not None
        self.log.reopen = lambda: link.call("rotate_console")[1][0]
        _err_reopen = lambda: link.call("rotate_err")[1][0]   # noqa: E731
        self._save()
        log(f"jailed as uid {jail.uid} in {(time.monotonic() - start) * 1000:.0f} ms (seccomp: {jail.mode})")

    def hand_file(self, path: str, fd: int) -> None:
        with self._lock:
            old = self._files.pop(path, None)
            self._files[path] = fd
        if old is not None:
            os.close(old)

    def _set_state(self, state: DomainState, **changes: Any) -> None:
        with self._lock:
            self.record.state = state
            for k, v in changes.items():
                setattr(self.record, k, v)
            self._save()

    # --- operations (any thread) ---------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            dom = self.dom
            rec = self.record
            vcpus = []
            if dom is not None:
                for pv in dom.vcpus:
                    seconds, cpu = _thread_cpu(getattr(pv, "thread", None))
                    state = pv.run_state.state
                    vcpus.append({"vcpu": pv.id, "online": pv.online, "blocked": state is RunState.BLOCKED,
                                  "running": state is RunState.RUNNING,
                                  "cpu": cpu, "time": max(seconds, 0.0)})
                self._last_cpu = [v["time"] for v in vcpus]
            return {
                "domid": self.domid, "name": rec.name, "uuid": rec.uuid, "state": str(rec.state),
                "shutdown_reason": None if rec.shutdown_reason is None else str(rec.shutdown_reason),
                "message": rec.message, "boots": rec.boots,
                "started": rec.started, "pid": rec.pid, "vcpus": vcpus,
                "cpu_time": sum(self._last_cpu), "sched": self.sched_status(),
                **(dom.memory_status() if dom is not None else {}),
            }

    # --- resource control ------------------------------------------------------------------

    def sched_params(self) -> SchedParams:
        return SchedParams(**self.record.sched_in_force())

    def sched_status(self) -> dict[str, Any]:
        path = self.cpu.path
        return {**self.sched_params().to_dict(), "cgroup": str(path) if path else None,
                "throttled": self.cpu.throttled()}

    def _confine(self) -> None:
        """Join a CPU cgroup with the domain's weight and cap (before any vCPU thread exists)."""
        self.cpu.start(self.sched_params())
        with self._lock:
            self.record.cgroup = str(self.cpu.path or "")
            self._save()

    def set_sched(self, weight: int | None = None, cap: int | None = None) -> dict[str, Any]:
        """``xl sched-credit -d DOM [-w W] [-c C]``: change the weight and/or cap of a running domain.
        A jailed process cannot write its cgroup: hospesd applies the new values first."""
        with self._lock:
            old = self.sched_params()
            new = SchedParams(weight=old.weight if weight is None else weight, cap=old.cap if cap is None else cap)
            if self.cpu.cgroup is None and new.is_default:
                return self.sched_status()
            if self.jail is None:
                self.cpu.change(new)    # raises if it cannot be enforced
            self.record.cgroup = str(self.cpu.path or "")
            self.record.sched = new.to_dict()
            self._save()
            return self.sched_status()

    def set_vcpus(self, count: int) -> dict[str, Any]:
        """``xl vcpu-set DOM N``: ask the guest to run ``count`` vCPUs; kept for its reboots too."""
        with self._lock:
            dom = self.dom
            if dom is None:
                raise HospesError(f"The domain is {self.record.state}; it has no vCPUs to set.")
            dom.set_vcpus(count)
            self.record.spec = replace(self.record.spec, vcpus=count)
            self._save()
            return {"vcpus": count, "maxvcpus": len(dom.vcpus)}

    def set_memory(self, target_kib: int) -> dict[str, Any]:
        """``xl mem-set DOM SIZE``: the guest's balloon driver moves toward ``target_kib``.
        Not kept for a reboot: a rebooted guest starts with its ``memory`` again."""
        with self._lock:
            dom = self.dom
            if dom is None:
                raise HospesError(f"The domain is {self.record.state}; it has no memory to set.")
            dom.set_memory_target(target_kib)
            return dom.memory_status()

    # --- save and migration ------------------------------------------------------------------

    def _begin(self, what: str) -> Domain:
        """Claim the domain for a save or migration (one at a time, only while it runs)."""
        with self._lock:
            if self._busy is not None:
                raise HospesError(f"The domain is {self._busy}; wait until that ends.")
            dom = self.dom
            if dom is None or self.record.state not in (DomainState.RUNNING, DomainState.PAUSED):
                raise HospesError(f"The domain is {self.record.state}; only a running or paused domain can be "
                                  f"{what}.")
            self._busy = "being saved" if what == "saved" else "migrating"
            return dom

    def _end(self) -> None:
        with self._lock:
            self._busy = None

    def _check_idle(self) -> None:
        if self._busy is not None:
            raise HospesError(f"The domain is {self._busy}; wait until that ends.")

    def save(self, path: Path, checkpoint: bool, compress: bool) -> dict[str, Any]:
        """``hospes save``: write the domain to ``path``; without ``checkpoint`` it is destroyed after."""
        with self._lock:
            handed = self._files.pop(str(path), None)
        if handed is None and self.jail is not None:
            raise HospesError(f"Cannot write {path}: a jailed domain process opens no files itself; save "
                              "through hospesd, which opens the file and hands it over.")
        try:
            dom = self._begin("saved")
        except BaseException:
            if handed is not None:
                os.close(handed)
            raise
        start = time.monotonic()
        was_paused = dom.paused
        tmp = path.with_name(f".{path.name}.partial")
        try:
            # A handed file is hospesd's own temporary file: it renames it once this replies.
            with (os.fdopen(handed, "wb") if handed is not None else open(tmp, "wb")) as f:
                writer = write_domain(dom, f, self.record.spec.to_dict(), compress=compress)
                f.flush()
                os.fsync(f.fileno())
            if handed is None:
                os.replace(tmp, path)
        except BaseException as e:
            if handed is None:
                remove_quietly(tmp)
            dom.thaw()
            if not was_paused:
                dom.unpause()
            self._end()
            if isinstance(e, OSError):
                raise HospesError(f"Cannot write {path}: {e.strerror or e}; the domain keeps running.") from e
            raise
        log(f"saved to {path} ({writer.bytes_written} bytes)")
        if checkpoint:
            dom.thaw()
            if not was_paused:
                dom.unpause()
            self._end()
        else:
            self._moved = True   # destroyed once the reply is out (finish_moved)
        return {"path": str(path), "bytes": writer.bytes_written, "pages": writer.pages_sent,
                "seconds": round(time.monotonic() - start, 3)}

    def migrate(self, req: dict[str, Any], progress: Progress, cancel: threading.Event) -> dict[str, Any]:
        """``hospes migrate``: send the domain to ``req["dest"]``; destroyed here once it runs there."""
        dest = req.get("dest")
        if not isinstance(dest, str):
            raise HospesError("migrate needs a destination (dest).")
        addr = parse_address(dest)
        options = MigrateOptions(
            live=bool(req.get("live", True)), verify=bool(req.get("verify")), compress=bool(req.get("compress")),
            max_rounds=_positive(req.get("max_rounds"), "max_rounds") or MAX_ROUNDS,
            max_bandwidth=_positive(req.get("max_bandwidth"), "max_bandwidth"))
        with self._lock:
            handed = self._files.pop(dest, None)
        if handed is None and self.jail is not None and addr.kind != "tcp":
            raise HospesError(f"A jailed domain process cannot reach {addr} itself: migrate through hospesd, "
                              "which connects (unix:) or runs ssh and hands the connection over; or over tcp://.")
        dom = self._begin("migrated")
        self._cancel = cancel
        try:
            log(f"migrating to {addr}")
            if handed is not None:   # hospesd connected to the unix: path and handed the socket over
                sock = socket.socket(fileno=handed)
                sock.setblocking(True)   # hospesd connected with a timeout: the shared file was non-blocking
                channel = Channel(sock.makefile("rb"), sock.makefile("wb", buffering=1 << 20),  # type: ignore[arg-type]
                                  sock=sock)
            else:
                channel = connect(addr)
            try:
                result = Sender(dom, self.record.spec.to_dict(), channel, options, progress, cancel).run()
            finally:
                channel.close()
        except MigrationError as e:
            log(f"migration to {addr} failed: {e}")
            self._end()
            if e.committed:   # kept paused for a person to decide; unpause and destroy work again
                self._set_state(DomainState.PAUSED)
            raise
        except BaseException:
            self._end()
            raise
        finally:
            self._cancel = None
        log(f"migrated to {addr}: downtime {result.downtime_ms} ms, {result.rounds} rounds, "
            f"{result.pages_sent} pages")
        self._moved = True
        return result.to_dict()

    def finish_moved(self) -> None:
        """After the reply to a save or migration that moved the domain away: destroy it here
        (the process exits, so the reply must be out first)."""
        if self._moved:
            self._moved = False
            self.runner.destroy()

    def cancel_migration(self) -> None:
        cancel = self._cancel
        if cancel is None:
            raise HospesError("No migration of this domain is in progress.")
        cancel.set()

    def pause(self) -> None:
        self._check_idle()
        with self._lock:
            if self.record.state == DomainState.SHUTDOWN:
                raise HospesError("The domain is shut down; it cannot be paused.")
            if self.dom is None:
                self.record.start_paused = True
                self._save()
                return
            self.dom.pause()
            self._set_state(DomainState.PAUSED)

    def unpause(self) -> None:
        self._check_idle()
        with self._lock:
            if self.dom is None:
                self.record.start_paused = False
                self._save()
                return
            self.dom.unpause()
            if self.record.state == DomainState.PAUSED:
                self._set_state(DomainState.RUNNING)

    def request_shutdown(self, reason: ShutdownRequest) -> None:
        self._check_idle()
        self.runner.request_shutdown(reason)

    def destroy(self) -> None:
        self.runner.destroy()

    def rename(self, name: str) -> None:
        self._check_idle()
        with self._lock:
            self.record.name = name
            self.record.spec = dataclasses.replace(self.record.spec, name=name)
            self._save()
            dom = self.dom
            if dom is not None:
                dom.store.write(f"/local/domain/{dom.domid}/name", name)
                dom.store.write(f"/vm/{dom.uuid}/name", name)

    def queue_input(self, data: bytes) -> None:
        self.runner.console_input(data)

    # --- main thread ---------------------------------------------------------------------

    def _console_out(self, data: bytes) -> None:
        self.log.write(data)
        self.server.broadcast(data)

    def _build(self) -> Domain:
        received, self._received = self._received, None
        if received is None:
            config = domain_config(spec_for_build(self.record.spec, self._boot), self.domid, log)
            return Domain(self._jailed_config(config), console_out=self._console_out,
                          hypervisor_log=_hypervisor_log)
        # The guest keeps the domid it was built with: its kernel and store hold it.
        self._hand_devices(received.state.pv.domid)
        config = self._jailed_config(domain_config(self.record.spec, received.state.pv.domid, log,
                                                   boot_from_images=False))
        if self._receiver is not None:   # arriving, maybe on the source's host: share its TAPs meanwhile
            config = dataclasses.replace(config, vifs=tuple(dataclasses.replace(v, attach=True)
                                                            for v in config.vifs))
        try:
            return Domain(config, console_out=self._console_out, saved=(received.state, received.shell),
                          hypervisor_log=_hypervisor_log)
        except BaseException:
            received.shell.close()
            raise

    def _jailed_config(self, config: Any) -> Any:
        """In the jail the TAPs are already on their bridges (made before the drop)."""
        if self.jail is None:
            return config
        return dataclasses.replace(config, vifs=tuple(dataclasses.replace(v, bridge=None) for v in config.vifs))

    def _hand_devices(self, guest_domid: int) -> None:
        """Jailed, before building a domain a stream brought: its supervisor opens the
        disks, boot files and TAPs of the stream's spec (once; no guest code has run yet)."""
        link = self.jail.link if self.jail is not None else None
        if link is None:
            return
        reply, fds = link.call("devices", spec=self.record.spec.to_dict(), domid=guest_domid)
        boot = apply_devices(reply, fds)
        if boot is not None:
            self._boot = boot

    # --- restore and incoming migration: the first domain from a stream -----------------------

    def _shell_for(self, config: Any, size: int) -> DomainShell:
        return self._shell(_stream_spec(config))

    def _shell(self, spec: DomainSpec) -> DomainShell:
        return DomainShell(domain_config(spec, self.domid, log, boot_from_images=False))

    def _restore_first(self) -> None:
        """``hospes restore``: read the save file the record names (the daemon set the spec)."""
        path = self.record.restore_path
        assert path is not None
        fd, self._restore_fd = self._restore_fd, None
        try:
            with (os.fdopen(fd, "rb") if fd is not None else open(path, "rb")) as f:
                self._received = read_domain(RecordReader(f), self._shell_for)
        except OSError as e:
            raise HospesError(f"Cannot read {path}: {e.strerror or e}.") from e
        log(f"restoring from {path}")

    def _receive_first(self) -> None:
        """``hospes migrate-receive``: listen, accept one stream, read it to its END."""
        addr = parse_address(self.record.incoming or "", listen=True)
        listener, self._listener = self._listener or Listener(addr), None
        try:
            self._set_state(DomainState.INCOMING)
            channel = listener.accept(INCOMING_TIMEOUT_S)
        finally:
            listener.close()
        receiver = Receiver(channel, self._incoming_shell)
        try:
            received = receiver.receive()
        except BaseException as e:
            receiver.refuse(str(e))
            channel.close()
            raise
        log(f"received domain {self.record.name} over {addr}")
        self._received, self._receiver, self._verified = received, receiver, received.verify

    def _incoming_shell(self, config: Any, size: int) -> DomainShell:
        """The stream's CONFIG arrived: record the domain it describes (listed with its
        name and memory while the pages come), then make its shell."""
        spec = _stream_spec(config)
        link = self.jail.link if self.jail is not None else None
        if link is not None:   # the other domains' records are outside the jail
            refused = link.call("admit", name=spec.name, memory=spec.memory,
                                maxmem=spec.maxmem or spec.memory)[0].get("refused")
            if refused:
                raise HospesError(str(refused))
        else:
            admit(self.run, spec.name, spec.memory, exclude=self.domid)   # AdmissionError: the sender is refused
        shell = self._shell(spec)
        with self._lock:
            placeholder = self.record.name == f"incoming-{self.domid}"
            name = spec.name if placeholder else self.record.name
            self.record.spec = dataclasses.replace(spec, name=name)
            self.record.name, self.record.uuid = name, spec.uuid or self.record.uuid
            self._save()
        return shell

    def _hand_over(self, dom: Domain, receiver: Receiver) -> None:
        """Tell the source the domain is built, wait for its COMMIT, run the guest.
        Before COMMIT the source still has the guest: any failure destroys this copy."""
        try:
            receiver.ready(self._verified)
            receiver.wait_commit()
        except BaseException as e:
            log(f"the migration failed before the handover: {e}")
            self._handover_failed = f"The source did not hand the guest over: {e}"
            receiver.channel.close()
            self.runner.destroy()
            return
        with self._lock:
            paused = self.record.start_paused
            if not paused:
                dom.unpause()
            self._set_state(DomainState.PAUSED if paused else DomainState.RUNNING, incoming=None,
                            started=time.time(), start_paused=False)
        try:
            receiver.running()
        except OSError as e:
            log(f"could not confirm to the source that the guest runs here: {e}")
        receiver.channel.close()
        dom.announce()
        log("the migrated guest runs here")

    def _built(self, dom: Domain) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            dom.pause()
            threading.Thread(target=self._hand_over, args=(dom, receiver), name="handover", daemon=True).start()
            return
        paused = self.record.start_paused
        if paused:
            dom.pause()
        self._set_state(DomainState.PAUSED if paused else DomainState.RUNNING, started=time.time(),
                        start_paused=False, shutdown_reason=None, message="", restore_path=None)

    def _stopped(self, result: ShutdownResult, outcome: Outcome) -> None:
        log(f"domain {self.domid} ({self.record.name}) stopped: {result.reason} {result.message[:200]}".rstrip())
        log(f"action for {result.reason}: {outcome}")

    def _restarting(self, result: ShutdownResult) -> None:
        self._set_state(DomainState.BUILDING, boots=self.record.boots + 1)

    def main(self) -> int:
        """Run the domain through its restarts; return the process exit status."""
        try:
            with TerminationSignals(self.runner):
                return self._main()
        finally:
            self.cpu.close()

    def _main(self) -> int:
        self.server.start()
        try:
            if not self._confined:
                self._confine()
        except CgroupError as e:
            log(f"resource control: {e}")
            self._set_state(DomainState.SHUTDOWN, shutdown_reason=ShutdownReason.CRASH, message=str(e))
            self.server.stop()
            return 2
        incoming = self.record.incoming is not None
        if incoming or self.record.restore_path is not None:
            try:
                if incoming:
                    self._receive_first()
                else:
                    self._restore_first()
            except Exception as e:
                return self._first_failed(e, incoming)
        try:
            ending = self.runner.run()
        except Exception as e:
            if self.runner.builds == 0 and (incoming or self.record.restore_path is not None):
                if self._receiver is not None:
                    self._receiver.refuse(f"The domain cannot be built here: {e}")
                    self._receiver.channel.close()
                return self._first_failed(e, incoming)
            user_error = isinstance(e, (HospesError, OSError))
            msg = str(e) if user_error else f"Internal error while building the domain: {e!r}"
            log(f"build failed: {traceback.format_exc()}")
            self._set_state(DomainState.SHUTDOWN, shutdown_reason=ShutdownReason.CRASH, message=msg)
            self.server.stop()
            return 2 if (self.runner.builds == 0 and user_error) else 1
        if ending.outcome is Outcome.PRESERVE:
            self._set_state(DomainState.SHUTDOWN, shutdown_reason=ending.result.reason,
                            message=ending.result.message[:4096])
            self.server.stop()
            return 0
        code = self._finish_destroyed()
        if self._handover_failed:
            log(self._handover_failed)   # the last line of the .err file: what the daemon reports
            return 1
        return code

    def _first_failed(self, e: Exception, incoming: bool) -> int:
        """A restore or an incoming migration that did not produce a domain: leave no
        record behind, and say why on the last line of stderr (the daemon reports it)."""
        user_error = isinstance(e, (HospesError, OSError))
        if not user_error:
            log(f"internal error: {traceback.format_exc()}")
        what = "The migration stream was refused" if incoming else "The domain could not be restored"
        log(f"{what}: {e}" if user_error else f"{what}: internal error {e!r}")
        self._finish_destroyed()
        return 2 if user_error else 1

    def _finish_destroyed(self) -> int:
        self.server.stop()
        with self._lock:
            link = self.jail.link if self.jail is not None else None
            if link is not None:
                link.call("remove")
            else:
                remove_quietly(self.run.state_file(self.domid))
        return 0


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hospes-domain", description="Run one Hospes domain (started by hospesd).")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--domid", required=True, type=int)
    parser.add_argument("--no-jail", action="store_true",
                        help="run as root with the host's filesystem and every system call (debugging)")
    args = parser.parse_args(argv)
    run = RunDir(args.run_dir)
    global _err_file
    err, err_stat = run.stderr_file(args.domid), _stat_or_none(run.stderr_file(args.domid))
    if err_stat is not None and os.path.samestat(os.fstat(2), err_stat):
        _err_file = err     # stderr is the daemon's .err file (not a terminal): keep it bounded
    try:
        proc = DomainProcess(run, args.domid)
    except HospesError as e:
        log(str(e))
        return 2
    if not args.no_jail and can_jail():
        try:
            proc.enter_jail()
        except (HospesError, OSError) as e:
            # A disk, TAP or bridge the config names is the user's to fix; the jail's own failures say so.
            own = isinstance(e, (JailError, SeccompError, CgroupError, OSError))
            msg = f"Cannot jail the domain process: {e}" if own else str(e)
            log(msg)
            proc.record.state, proc.record.shutdown_reason, proc.record.message = \
                DomainState.SHUTDOWN, ShutdownReason.CRASH, msg
            try:
                proc._save()
            except (HospesError, OSError):
                pass
            return 2
    try:
        return proc.main()
    finally:
        proc.log.close()


if __name__ == "__main__":
    # Run the imported module, not __main__, so its classes are the ones other modules see.
    from hospes.toolstack import domain_process as _module

    sys.exit(_module.main())
