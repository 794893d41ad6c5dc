"""The jail a domain process runs in (as Firecracker's jailer does); see docs/security.md.

A domain process starts as root, does what needs privilege, then jails itself:

1. **Privileged set-up** (root, host namespaces): the CPU and memory cgroups,
   the TAPs (created persistent, owned by the domain's uid, on their bridge),
   the disks, kernel, ramdisk and save file opened and handed over
   (:func:`hospes.files.hand_over`), the control sockets bound.
2. **New namespaces**: ``unshare(mount, IPC, PID)`` and a fork. The parent stays
   outside as the :class:`Supervisor`: root, it only waits for the child and
   does for it the few things a jailed process cannot (write its record, rotate
   its logs, clean up). The child is pid 1 of its PID namespace.
3. **A minimal root** (:func:`build_root`): a small tmpfs under the run
   directory, holding read-only bind mounts of what Python needs (the
   interpreter's prefix, the venv, Hospes' source), the files the domain names
   (for their paths; the descriptors were handed over), ``/dev/kvm``,
   ``/dev/net/tun`` (device nodes owned by the domain's uid), ``/dev/null`` and
   the random devices, and a ``/proc`` of its own PID namespace; then
   ``pivot_root`` into it, the old root detached, the new one read-only.
4. **The drop** (:func:`drop`): no supplementary groups, gid and uid
   :func:`jail_ids` (``JAIL_ID_BASE + domid``, no passwd entry), resource limits,
   ``PR_SET_NO_NEW_PRIVS``, then the seccomp filter of :mod:`.jail_syscalls`.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import resource
import signal
import socket
import stat
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hospes.errors import HospesError

JAIL_ID_BASE = 1_900_000_000    # uid = gid = base + domid: above systemd's container range (to 1879048191)
JAIL_ID_LAST = JAIL_ID_BASE + 0x7FEF

RLIMIT_NOFILE = 4096            # vCPU, event and device descriptors; a few per vCPU and device
RLIMIT_NPROC = 1024             # threads count (per uid, and the uid is the domain's own)
JAIL_TMPFS = "size=4m,nr_inodes=4096,mode=0755"

# Linux's numbers (x86_64): clone(2)/unshare(2) flags, mount(2) flags, syscall numbers.
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
SYS_PIVOT_ROOT = 155
PR_SET_NO_NEW_PRIVS = 38
PR_SET_DUMPABLE = 4

# TUN ioctls (linux/if_tun.h) for the persistent, uid-owned TAPs.
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE

_libc = ctypes.CDLL(None, use_errno=True)


class JailError(HospesError):
    """The domain process could not be jailed."""


def jail_ids(domid: int) -> tuple[int, int]:
    """The uid and gid a domain's process runs as."""
    if not 0 < domid <= 0x7FEF:
        raise JailError(f"Domid {domid} has no jail uid (domids 1-32751 do).")
    return JAIL_ID_BASE + domid, JAIL_ID_BASE + domid


def can_jail() -> bool:
    """Jailing needs root (CAP_SYS_ADMIN for namespaces and mounts)."""
    return os.geteuid() == 0


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise JailError(f"{what}: {os.strerror(e)}")


def _mount(source: str | None, target: str | Path, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode() if source else None, str(target).encode(),
                       fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                       data.encode() if data else None), f"mount {target}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def _pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(ctypes.c_long(SYS_PIVOT_ROOT), new_root.encode(), put_old.encode()), "pivot_root")


def _umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


def _prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                       ctypes.c_ulong(0)), f"prctl {option}")


# --- what goes into the root ----------------------------------------------------------------

DEVICES = (("null", 1, 3, 0o666), ("zero", 1, 5, 0o666), ("random", 1, 8, 0o666), ("urandom", 1, 9, 0o666))
KVM_DEVICE = ("kvm", 10, 232)
TUN_DEVICE = ("net/tun", 10, 200)
HOST_FILES = ("/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/localtime")


def python_paths() -> list[Path]:
    """What this Python needs to import modules later: its prefixes, the directory
    holding the ``hospes`` package, and the shared libraries extension modules load."""
    paths = {Path(sys.base_prefix), Path(sys.prefix), Path(__file__).resolve().parents[2],   # src/
             Path("/usr/lib"), Path("/usr/lib64")}
    for entry in sys.path:   # site directories (.pth files may add more); never "/" or the cwd
        path = Path(entry).resolve() if entry else None
        if path is not None and path.is_dir() and path.name in ("site-packages", "dist-packages") \
                and not str(path).startswith("/usr/lib/python3/"):
            paths.add(path)
    return sorted(p for p in paths if p.exists() and len(p.parts) > 2)


@dataclass
class RootPlan:
    """The jail's root: where it is built and what it shows."""

    root: Path                            # an empty directory (a tmpfs is mounted on it)
    uid: int
    gid: int
    read_only: list[Path] = field(default_factory=list)    # bound read-only at the same path
    read_write: list[Path] = field(default_factory=list)   # bound writable at the same path (disks)


def _target(root: Path, path: Path) -> Path:
    return root / str(path).lstrip("/")


def _bind(root: Path, path: Path, read_only: bool) -> None:
    try:
        st = os.stat(path)
    except OSError:
        return        # a missing file: the domain says so itself, with its own message
    target = _target(root, path)
    if stat.S_ISDIR(st.st_mode):
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.touch()
    _mount(str(path), target, None, MS_BIND | MS_REC)
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (MS_RDONLY if read_only else 0)
    _mount(None, target, None, flags)


def build_root(plan: RootPlan) -> None:
    """In a new mount namespace, as root: make ``plan.root`` the root directory."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)   # nothing below propagates back to the host
    root = plan.root
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    _mount("hospes-jail", root, "tmpfs", MS_NOSUID, JAIL_TMPFS)
    dev = root / "dev"
    (dev / "net").mkdir(parents=True)
    for name, major, minor, mode in DEVICES:
        os.mknod(dev / name, stat.S_IFCHR | mode, os.makedev(major, minor))
        os.chmod(dev / name, mode)
    for name, major, minor in (KVM_DEVICE, TUN_DEVICE):
        os.mknod(dev / name, stat.S_IFCHR | 0o600, os.makedev(major, minor))
        os.chown(dev / name, plan.uid, plan.gid)
    for path in sorted(set(plan.read_only) | {Path(p) for p in HOST_FILES}, key=lambda p: len(p.parts)):
        _bind(root, path, read_only=True)
    for path in plan.read_write:
        _bind(root, path, read_only=False)
    (root / "proc").mkdir()
    _mount("proc", root / "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if not (root / "tmp").exists():   # (it does when a disk lives under /tmp: then it is read-only)
        (root / "tmp").mkdir(mode=0o700)
        os.chown(root / "tmp", plan.uid, plan.gid)
    old = root / ".old"
    old.mkdir()
    _pivot_root(str(root), str(old))
    os.chdir("/")
    _umount2("/.old", MNT_DETACH)
    os.rmdir("/.old")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)


# --- the drop ------------------------------------------------------------------------------------

def set_limits() -> None:
    """Resource limits of a jailed process (no core dumps: guest memory must not land on disk)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = RLIMIT_NOFILE if hard == resource.RLIM_INFINITY else min(RLIMIT_NOFILE, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    resource.setrlimit(resource.RLIMIT_NPROC, (RLIMIT_NPROC, RLIMIT_NPROC))


def drop(uid: int, gid: int, seccomp_mode: str = "kill") -> None:
    """Become ``uid``/``gid`` with no capabilities, limits set, no new privileges, and the
    system-call filter on (every thread this process has, too)."""
    from hospes.toolstack.jail_syscalls import apply_filter

    set_limits()
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise JailError("The domain process did not drop to its own uid and gid.")
    _prctl(PR_SET_DUMPABLE, 0)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    apply_filter(seccomp_mode)


# --- TAPs made before the drop --------------------------------------------------------------------

def prepare_tap(name: str, mtu: int, bridge: str | None, uid: int, gid: int, *, attach: bool = False) -> None:
    """Create TAP ``name`` as root: MTU, up, on ``bridge``; persistent and owned by ``uid``.

    Its descriptor is handed over (``devices.tap.hand_over_tap``): the jailed
    process opens copies of it at every boot, without CAP_NET_ADMIN, wherever the
    device has been moved meanwhile. Owner and persistence keep it the domain's
    between boots all the same."""
    from hospes.devices.tap import attach_to_bridge, hand_over_tap, open_tap

    fd = open_tap(name, mtu, attach=attach)
    try:
        if bridge is not None:
            attach_to_bridge(name, bridge, already=attach)
        fcntl.ioctl(fd, TUNSETOWNER, uid)
        fcntl.ioctl(fd, TUNSETGROUP, gid)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as e:
        os.close(fd)
        raise JailError(f"Cannot hand TAP {name} to the jailed domain: {e.strerror}.") from e
    except BaseException:
        os.close(fd)
        raise
    hand_over_tap(name, fd)


def release_tap(name: str, uid: int) -> None:
    """Make TAP ``name`` non-persistent again (it goes when its last user closes it), unless
    another domain took it over meanwhile (a migration on one host): then it is that one's."""
    try:
        owner = int(Path(f"/sys/class/net/{name}/owner").read_text())
    except (OSError, ValueError):
        return
    if owner != uid:
        return
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return
    try:
        from hospes.devices.tap import IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TAP, IFF_VNET_HDR

        flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
        for f in (flags | IFF_MULTI_QUEUE, flags):
            try:
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), f))
                break
            except OSError:
                continue
        fcntl.ioctl(fd, TUNSETPERSIST, 0)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- the supervisor and the link to it --------------------------------------------------------------

MAX_MESSAGE = 1 << 20


def _send(sock: socket.socket, msg: dict[str, Any], fds: Iterable[int] = ()) -> None:
    data = json.dumps(msg).encode()
    fds = list(fds)
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def _recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 64)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    try:
        msg = json.loads(data)
    except ValueError:
        msg = None
    if not isinstance(msg, dict):
        for fd in fds:
            os.close(fd)
        return {}, []
    return msg, list(fds)


class Link:
    """The jailed process's end of the socket to its supervisor (one request at a time)."""

    def __init__(self, sock: socket.socket) -> None:
        import threading

        self.sock = sock
        self._lock = threading.Lock()

    def call(self, op: str, **args: Any) -> tuple[dict[str, Any], list[int]]:
        with self._lock:
            _send(self.sock, {"op": op, **args})
            reply, fds = _recv(self.sock)
        if reply is None:
            raise JailError("The jail's supervisor is gone.")
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            raise JailError(str(reply.get("error", "the supervisor refused")))
        return reply, fds


Handler = Callable[[dict[str, Any], list[int]], tuple[dict[str, Any], list[int]]]


class Supervisor:
    """The parent outside the jail: serves the child's requests, waits for it, cleans up.

    Runs as root in the host's namespaces but does only what its handlers allow
    (each is a fixed action on this domain's own files, never a path the child names)."""

    def __init__(self, sock: socket.socket, child: int, handlers: dict[str, Handler],
                 cleanup: Callable[[], None]) -> None:
        self.sock = sock
        self.child = child
        self.handlers = handlers
        self.cleanup = cleanup

    def _forward(self, signum: int, frame: object) -> None:
        try:
            os.kill(self.child, signum)
        except ProcessLookupError:
            pass

    def run(self) -> int:
        """Serve until the child closes its end; return its wait status."""
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, self._forward)
        while True:
            try:
                msg, fds = _recv(self.sock)
            except InterruptedError:
                continue
            except OSError:
                break
            if msg is None:
                break
            handler = self.handlers.get(str(msg.get("op")))
            try:
                if handler is None:
                    raise JailError(f"unknown request {msg.get('op')!r}")
                reply, out = handler(msg, fds)
                reply = {"ok": True, **reply}
            except Exception as e:   # a bad request is refused; the supervisor goes on
                reply, out = {"ok": False, "error": str(e)}, []
            finally:
                for fd in fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            try:
                _send(self.sock, reply, out)
            except OSError:
                pass
            for fd in out:
                os.close(fd)
        while True:
            try:
                _, status = os.waitpid(self.child, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                status = 0
                break
        try:
            self.cleanup()
        except Exception:   # best effort: the child's status is what matters
            pass
        return status


def exit_like(status: int) -> None:
    """End this process as the child whose wait ``status`` this is ended (signal or exit code)."""
    try:
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig not in (signal.SIGKILL, signal.SIGSTOP):   # those have no handler to reset
                signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
    finally:
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def host_pid() -> int:
    """This process's pid as the host sees it (read before /proc is replaced by the jail's)."""
    return int(os.readlink("/proc/self"))


def split(on_parent: Callable[[socket.socket, int], int]) -> socket.socket:
    """Unshare mount, IPC and PID namespaces and fork. The parent runs ``on_parent(sock, child)``
    and exits with what it returns (a wait status); the child gets its end of the socket."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        unshare(CLONE_NEWPID)     # for the children only: the next one is pid 1 of a new namespace
        pid = os.fork()
        if pid:   # later children of the supervisor (strace, when measuring) are the host's again
            _check(_libc.setns(ctypes.c_int(own), ctypes.c_int(CLONE_NEWPID)), "setns")
    finally:
        os.close(own)
    if pid:   # the supervisor: never returns (a raise here would run the child's code as root)
        child_end.close()
        try:
            status = on_parent(parent_end, pid)
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            os._exit(1)
        exit_like(status)
        os._exit(1)
    parent_end.close()
    try:
        # The child's own mount and IPC namespaces (the supervisor stays in the host's).
        unshare(CLONE_NEWNS | CLONE_NEWIPC)
    except BaseException:
        os._exit(1)
    return child_end


__all__ = ["JAIL_ID_BASE", "JailError", "Link", "RootPlan", "Supervisor", "build_root", "can_jail", "drop",
           "exit_like", "host_pid", "jail_ids", "prepare_tap", "python_paths", "release_tap", "split"]
