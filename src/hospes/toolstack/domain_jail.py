"""One domain process's jail: what it is handed before the drop, and what its supervisor does for it.

:mod:`.jail` has the mechanisms (namespaces, the root, the drop, the supervisor
loop); this module applies them to a domain described by its state record
(called from :mod:`.domain_process`):

* before the drop, as root: the memory cgroup, the disks, kernel and ramdisk
  opened and handed over (:func:`hospes.files.hand_over`), the TAPs made
  persistent and owned by the domain's uid, the files bound into the root;
* the supervisor's requests, each a fixed action on this domain's own files:
  ``record`` (write the state record, with the pid, console log and cgroup
  fields the supervisor knows, whatever the child sent), ``remove`` (the
  record), ``rotate_console``/``rotate_err`` (rotate a log, hand back the new
  file), ``admit`` (admission against the other domains' records, for an
  incoming migration), and ``devices``, once, before the first build, for a
  domain whose configuration arrives in a stream (restore, incoming
  migration): its disks, boot files and TAPs, as above;
* at the end, after the child is gone: TAPs released, sockets and cgroups
  removed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from hospes.cgroup import MemoryLimit, find_hierarchy, limit_memory, memory_overhead
from hospes.errors import HospesError
from hospes.devices.tap import close_handed_taps, hand_over_tap, take_handed_taps
from hospes.files import hand_over
from hospes.toolstack.domain_config import BootImages, boot_images, vif_config
from hospes.toolstack.jail import (JailError, Link, RootPlan, Supervisor, build_root, drop, host_pid, jail_ids,
                                   prepare_tap, python_paths, release_tap, split)
from hospes.toolstack.record import DomainRecord, process_start_time, remove_quietly, write_record
from hospes.toolstack.rundir import RunDir, rotate_log
from hospes.toolstack.spec import DomainSpec

Log = Callable[[str], None]
TRACE_ATTACH_S = 10.0


def seccomp_mode() -> str:
    """``HOSPES_JAIL_SECCOMP``: ``kill`` (default), ``log`` (allow and log what is not on the
    list), ``trace:DIR`` (no filter; strace -f -c into DIR, for measuring the list)."""
    return os.environ.get("HOSPES_JAIL_SECCOMP", "kill")


def fds_socket(run: RunDir, domid: int) -> Path:
    """Where hospesd hands a domain process the files it opened for it (a save file)."""
    return run.domains / f"{domid}.fds"


def jail_root(run: RunDir, domid: int) -> Path:
    return run.root / "jail" / str(domid)


class DomainJail:
    """Set-up before the drop (``prepare``), the split and the drop (``enter``), and
    the supervisor's side (``_handlers``, ``_cleanup``)."""

    def __init__(self, run: RunDir, domid: int, record: DomainRecord, log: Log) -> None:
        self.run = run
        self.domid = domid
        self.record = record
        self.log = log
        self.uid, self.gid = jail_ids(domid)
        self.spec = record.spec
        self.root_dir = jail_root(run, domid)
        self.mode = seccomp_mode()
        self.memory: MemoryLimit | None = None
        self.boot: BootImages | None = None
        self.taps: list[str] = []
        self.bound: list[Path] = []
        self.link: Link | None = None
        self.child = 0
        self.child_start: int | None = None
        self.remove_at_end: list[Path] = []   # files the child made outside its root (a unix: listener)
        self.at_end: list[Callable[[], None]] = []   # more clean-up for the supervisor (the CPU cgroup)
        self._devices_open = True      # the one-shot ``devices`` request is still allowed

    # --- before the drop (root) -------------------------------------------------------------------

    def prepare(self) -> None:
        """Cgroup memory limit, and the files and TAPs of a domain whose spec is known now."""
        rec = self.record
        if rec.incoming is None:
            self.memory = limit_memory(self.domid, rec.spec.maxmem or rec.spec.memory)
            self.open_devices(rec.spec, self.domid, disks=True, boot=True, taps=rec.restore_path is None)
        else:
            self.memory = limit_memory(self.domid, 0)    # raised when the stream says how big the guest is

    def open_devices(self, spec: DomainSpec, tap_domid: int, *, disks: bool, boot: bool, taps: bool,
                     attach: bool = False) -> None:
        if disks:
            for disk in spec.disks:
                if not disk.target:
                    continue
                flags = (os.O_RDWR if disk.readwrite else os.O_RDONLY) | os.O_CLOEXEC
                try:
                    hand_over(disk.target, os.open(disk.target, flags))
                except OSError:
                    continue    # the block backend says what is wrong, in the domain's own words
                self.bound.append(Path(os.path.abspath(disk.target)))
        if boot and spec.bootloader is None:
            try:
                self.boot = boot_images(spec, self.log)
            except HospesError as e:
                if self.record.restore_path is None:
                    raise
                self.log(f"the kernel or ramdisk of the restored domain is not usable: {e}")  # a reboot says so
                self.boot = None
                return
            for path in (self.boot.kernel, self.boot.ramdisk):
                if path is None:
                    continue
                try:
                    hand_over(path, os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
                except OSError:
                    continue
                self.bound.append(Path(os.path.abspath(path)))
        if taps:
            for vif in spec.vifs:
                cfg = vif_config(vif, tap_domid)
                name = cfg.tap or f"hospes{tap_domid}.{cfg.devid}"
                prepare_tap(name, cfg.mtu, cfg.bridge, self.uid, self.gid, attach=attach)
                self.taps.append(name)

    # --- the split and the drop ------------------------------------------------------------------

    def enter(self, keep: Callable[[], None]) -> None:
        """Fork into new namespaces. The parent becomes the supervisor and never returns;
        the child (this call returns in it) is jailed and dropped. ``keep`` runs in the
        parent first, to close what only the child uses."""
        def supervise(sock: socket.socket, child: int) -> int:
            self.child = child
            self.child_start = process_start_time(child)
            close_handed_taps()     # the child's: a queue held here would outlive the domain
            keep()
            return Supervisor(sock, child, self._handlers(), self._cleanup).run()

        from hospes.toolstack.jail_syscalls import load_binding

        load_binding()   # libseccomp's module is loaded while the host's files are still there
        sock = split(supervise)
        self.record.pid = host_pid()
        self.record.pid_start = process_start_time(self.record.pid)
        self.link = Link(sock)
        build_root(RootPlan(self.root_dir, self.uid, self.gid,
                            read_only=python_paths() + [p for p in self.bound if not self._writable(p)],
                            read_write=[p for p in self.bound if self._writable(p)]))
        if self.mode.startswith("trace:"):   # measuring: strace counts from right after the drop
            drop(self.uid, self.gid, "off")
            self.link.call("trace")
        else:
            drop(self.uid, self.gid, self.mode)

    def _writable(self, path: Path) -> bool:
        return any(d.readwrite and d.target and os.path.abspath(d.target) == str(path) for d in self.spec.disks)

    # --- the supervisor (root, outside the jail) ---------------------------------------------------

    def _handlers(self) -> dict[str, Callable[[dict[str, Any], list[int]], tuple[dict[str, Any], list[int]]]]:
        return {"record": self._record, "remove": self._remove, "rotate_console": self._rotate_console,
                "rotate_err": self._rotate_err, "admit": self._admit, "devices": self._devices,
                "trace": self._trace}

    def _record(self, msg: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        data = msg.get("record")
        if not isinstance(data, dict):
            raise JailError("record needs a record")
        rec = DomainRecord.from_dict(data)   # raises on anything that is not a record
        if rec.domid != self.domid:
            raise JailError("a record of another domain")
        # What the daemon acts on (which process to signal, which file to show, which
        # cgroup to change) is what the supervisor knows, never what the jailed child says.
        rec.pid, rec.pid_start = self.child, self.child_start
        rec.console_log, rec.cgroup = self.record.console_log, self.record.cgroup
        write_record(self.run.state_file(self.domid), rec)
        return {}, []

    def _remove(self, msg: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        remove_quietly(self.run.state_file(self.domid))
        return {}, []

    def _reopen(self, path: Path) -> tuple[dict[str, Any], list[int]]:
        rotate_log(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return {}, [fd]

    def _rotate_console(self, msg: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        return self._reopen(Path(self.record.console_log or self.run.console_log(self.domid)))

    def _rotate_err(self, msg: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        return self._reopen(self.run.stderr_file(self.domid))

    def _admit(self, msg: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        from hospes.toolstack.admission import admit

        name, memory = msg.get("name"), msg.get("memory")
        if not isinstance(name, str) or not isinstance(memory, int) or isinstance(memory, bool):
            raise JailError("admit needs a name and a memory size")
        try:
            admit(self.run, name, memory, exclude=self.domid)
        except HospesError as e:
            return {"refused": str(e)}, []
        maxmem = msg.get("maxmem")
        guest = max(memory, maxmem if isinstance(maxmem, int) and not isinstance(maxmem, bool) else 0)
        if self.record.incoming is not None and self.memory is not None and guest > 0:
            self.memory.set_limit((guest + memory_overhead(guest)) * 1024 * 1024)
        return {}, []

    def _devices(self, msg: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        """Once, before the first build: the files and TAPs of the spec a stream brought."""
        if not self._devices_open:
            raise JailError("the domain's devices were handed over already")
        self._devices_open = False
        data = msg.get("spec")
        if not isinstance(data, dict):
            raise JailError("devices needs a spec")
        spec = DomainSpec.from_dict(data)
        tap_domid = msg.get("domid")
        if not isinstance(tap_domid, int) or isinstance(tap_domid, bool) or not 0 < tap_domid < 0x7FF0:
            raise JailError("devices needs the guest's domid")
        incoming = self.record.incoming is not None
        self.boot = None
        before = len(self.taps)
        from hospes.files import _handed

        handed_before = dict(_handed)
        self.open_devices(spec, tap_domid, disks=incoming, boot=incoming, taps=True, attach=incoming)
        paths, out = [], []
        for path, fd in _handed.items():
            if handed_before.get(path) != fd:
                paths.append(path)
                out.append(os.dup(fd))
                os.close(fd)
        _handed.clear()
        _handed.update(handed_before)
        taps = take_handed_taps()     # the supervisor holds none of its own (closed at the split)
        out += taps.values()
        boot = self.boot
        reply: dict[str, Any] = {"paths": paths, "taps": self.taps[before:], "tap_fds": list(taps)}
        if boot is not None:
            reply["boot"] = {"kernel": str(boot.kernel), "ramdisk": str(boot.ramdisk) if boot.ramdisk else None,
                             "cmdline": boot.cmdline}
        return reply, out

    def _trace(self, msg: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        """Measuring the list: attach ``strace -f -c`` to the child right after its drop."""
        out_dir = Path(self.mode.partition(":")[2])
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / f"dom{self.domid}-{self.child}-{int(time.time())}.txt"
        subprocess.Popen(["strace", "-f", "-c", "-U", "name,calls,errors", "-o", str(out), "-p", str(self.child)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
        deadline = time.monotonic() + TRACE_ATTACH_S
        while time.monotonic() < deadline:
            try:
                status = Path(f"/proc/{self.child}/status").read_text()
            except OSError:
                break
            if any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in status.splitlines()):
                break
            time.sleep(0.05)
        return {}, []

    def _cleanup(self) -> None:
        for name in self.taps:
            release_tap(name, self.uid)
        remove_quietly(self.run.control_socket(self.domid), fds_socket(self.run, self.domid), *self.remove_at_end)
        if self.memory is not None:
            self.memory.remove_after()
        for step in self.at_end:
            step()
        try:
            self.root_dir.rmdir()
        except OSError:
            pass


class ForegroundJail(DomainJail):
    """``hospes run``'s jail: the same, with no run directory and no record. The jail's
    root is a directory of its own under /run (or $TMPDIR); the supervisor only waits."""

    def __init__(self, spec: DomainSpec, domid: int, log: Log, cleanup: Callable[[], None]) -> None:
        import tempfile

        record = DomainRecord(domid=domid, name=spec.name, uuid=spec.uuid or "", spec=spec)
        base = Path("/run") if os.access("/run", os.W_OK) else None
        super().__init__(RunDir(Path(tempfile.mkdtemp(prefix="hospes-run-", dir=base))), domid, record, log)
        self.root_dir = self.run.root / "root"
        self.at_end.append(cleanup)

    def prepare(self) -> None:
        if find_hierarchy(controller="memory") is None:
            # `ip netns exec` mounts a sysfs of its own, without the cgroup hierarchies: the
            # other layers still hold, and a foreground run says what it goes without.
            self.log("no cgroup hierarchy with the memory controller is mounted here: the jailed domain "
                     "runs without a memory limit")
        else:
            self.memory = limit_memory(self.domid, self.spec.maxmem or self.spec.memory)
        self.open_devices(self.spec, self.domid, disks=True, boot=False, taps=True)
        # Resolved by the caller (domain_config); with a bootloader they are files inside the disk.
        for path in (() if self.spec.bootloader else (self.spec.kernel, self.spec.ramdisk)):
            if path:
                try:
                    hand_over(path, os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
                    self.bound.append(Path(os.path.abspath(path)))
                except OSError:
                    pass

    def _handlers(self) -> dict[str, Callable[[dict[str, Any], list[int]], tuple[dict[str, Any], list[int]]]]:
        return {"trace": self._trace}

    def _cleanup(self) -> None:
        for name in self.taps:
            release_tap(name, self.uid)
        if self.memory is not None:
            self.memory.remove_after()
        for step in self.at_end:
            step()
        for path in (self.root_dir, self.run.root):
            try:
                path.rmdir()
            except OSError:
                pass


def apply_devices(reply: dict[str, Any], fds: list[int]) -> BootImages | None:
    """In the jailed child: take what a ``devices`` request handed over (the files'
    descriptors, then the TAPs')."""
    paths = reply.get("paths") or []
    for path, fd in zip(paths, fds, strict=False):
        hand_over(path, fd)
    for name, fd in zip(reply.get("tap_fds") or [], fds[len(paths):], strict=False):
        hand_over_tap(name, fd)
    boot = reply.get("boot")
    if not isinstance(boot, dict):
        return None
    return BootImages(Path(boot["kernel"]), Path(boot["ramdisk"]) if boot.get("ramdisk") else None,
                      str(boot.get("cmdline") or ""))


def spec_for_build(spec: DomainSpec, boot: BootImages | None) -> DomainSpec:
    """The spec with ``@default`` images already resolved (the jailed process cannot run apt)."""
    if boot is None or spec.bootloader is not None:
        return spec
    return replace(spec, kernel=str(boot.kernel), ramdisk=str(boot.ramdisk) if boot.ramdisk else None,
                   cmdline=boot.cmdline)


def _hand(run: RunDir, domid: int, key: str, fd: int, timeout: float) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(fds_socket(run, domid)))
        socket.send_fds(s, [json.dumps({"path": key}).encode() + b"\n"], [fd])
        if not s.recv(16).startswith(b"ok"):
            raise JailError(f"The domain process did not take {key}.")


def hand_socket(run: RunDir, domid: int, dest: str, timeout: float = 10.0) -> None:
    """hospesd's side of a migration to ``unix:PATH``: connect there and hand the connected
    socket to the domain process (a jailed one sees no PATH). Nothing for an unjailed one."""
    from hospes.migrate.transport import TransportError, parse_address

    if not fds_socket(run, domid).exists():
        return
    addr = parse_address(dest)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(addr.path)
        except OSError as e:
            raise TransportError(f"Cannot connect to {addr}: {e.strerror or e}; is `hospes migrate-receive "
                                 f"--listen {addr}` running there?") from e
        _hand(run, domid, dest, sock.fileno(), timeout)
    finally:
        sock.close()


def hand_ssh(run: RunDir, domid: int, dest: str, timeout: float = 10.0) -> "subprocess.Popen[bytes] | None":
    """hospesd's side of a migration over ssh (``[USER@]HOST``): run ``ssh HOST hospes
    migrate-receive`` (``$HOSPES_SSH`` replaces ``ssh``) on one end of a socket pair and
    hand the other end to the domain process (a jailed one cannot run a program).
    Returns the ssh process, for the caller to reap; None for an unjailed domain process."""
    import shlex

    if not fds_socket(run, domid).exists():
        return None
    command = shlex.split(os.environ.get("HOSPES_SSH", "ssh")) + [dest, "hospes", "migrate-receive"]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            proc = subprocess.Popen(command, stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=subprocess.DEVNULL,
                                    start_new_session=True)
        except OSError as e:
            raise JailError(f"Cannot run {command[0]}: {e.strerror}.") from e
        theirs.close()
        try:
            _hand(run, domid, dest, ours.fileno(), timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    finally:
        theirs.close()
        ours.close()
    return proc


def hand_file(run: RunDir, domid: int, path: str, tmp: Path, timeout: float = 10.0) -> bool:
    """hospesd's side of a save: create ``tmp`` (mode 0600) and hand it to the domain process
    for ``path``; the process writes the save into it, hospesd renames it to ``path`` after.
    A domain process started without the socket (an older one) gets nothing: it opens ``path``."""
    sock_path = fds_socket(run, domid)
    if not sock_path.exists():
        return False
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        _hand(run, domid, path, fd, timeout)
    finally:
        os.close(fd)
    return True


__all__ = ["DomainJail", "ForegroundJail", "apply_devices", "fds_socket", "hand_file", "hand_socket", "hand_ssh",
           "jail_root", "seccomp_mode", "spec_for_build"]
