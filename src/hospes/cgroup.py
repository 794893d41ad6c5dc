"""Resource control of a domain: Xen's credit-scheduler weight and cap on a CPU cgroup.

A domain is one host process (its vCPUs are threads), so its CPU share is that
process's. Each domain process moves itself into a cgroup of its own,
``<cpu hierarchy>/hospes/dom<domid>-<pid>``, and sets the CPU controller from
the two numbers xl users know (xl.cfg ``cpu_weight``/``cap``, ``xl
sched-credit``):

* **weight** (1-65535, default 256) is relative: under contention a domain of
  weight 512 gets twice the CPU of one of weight 256. cgroup v1 ``cpu.shares``
  = weight x 4 (256 -> the default 1024); v2 ``cpu.weight`` = weight x 100 / 256
  (256 -> the default 100), clamped to 1-10000.
* **cap** (percent of one host CPU, 0 = none) is absolute, enforced even on an
  idle host: CFS bandwidth control, quota = cap% of a 100 ms period (v1
  ``cpu.cfs_quota_us``, v2 ``cpu.max``). A cap above 100 lets an SMP guest use
  more than one CPU.

A jailed domain process (docs/security.md) also gets a **memory limit** in the
memory controller's hierarchy, ``<memory hierarchy>/hospes/dom<domid>-<pid>``:
v2 ``memory.max`` (v1 ``memory.limit_in_bytes``) = the guest's largest memory
(``maxmem``, else ``memory``) + :func:`memory_overhead` for the process itself
(Python, the vCPU threads, the KVM page tables the kernel charges to it, save
and migration buffers). A guest cannot make its process grow past that: the
kernel reclaims, then kills the process (only that domain).

Both cgroup v2 (the unified hierarchy with the ``cpu`` controller) and v1 (a
hierarchy mounted with ``cpu``) are handled. Where neither can be used (not
root, no controller), a domain with default parameters runs unconfined and a
domain that asks for a cap or weight is refused: a limit that is silently not
applied would be worse than an error.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from hospes.errors import HospesError

DEFAULT_WEIGHT = 256
MAX_WEIGHT = 65535
MAX_CAP = 65535
PERIOD_US = 100_000
BASE = "hospes"


class CgroupError(HospesError):
    """CPU resource control could not be set up or changed."""


@dataclass(frozen=True)
class SchedParams:
    weight: int = DEFAULT_WEIGHT
    cap: int = 0          # % of one host CPU; 0 = no cap

    def __post_init__(self) -> None:
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) \
                or not 1 <= self.weight <= MAX_WEIGHT:
            raise CgroupError(f"Weight {self.weight!r} is out of range: it is 1-{MAX_WEIGHT} (default "
                              f"{DEFAULT_WEIGHT}).")
        if isinstance(self.cap, bool) or not isinstance(self.cap, int) or not 0 <= self.cap <= MAX_CAP:
            raise CgroupError(f"Cap {self.cap!r} is out of range: it is 0 (no cap) to {MAX_CAP}, in percent "
                              "of one host CPU.")

    @property
    def is_default(self) -> bool:
        return self == SchedParams()

    def to_dict(self) -> dict[str, int]:
        return {"weight": self.weight, "cap": self.cap}

    # --- the controller's units ---------------------------------------------------------

    def v1_shares(self) -> int:
        return self.weight * 4

    def v1_quota_us(self) -> int:
        return self.cap * PERIOD_US // 100 if self.cap else -1

    def v2_weight(self) -> int:
        return max(1, min(10000, self.weight * 100 // DEFAULT_WEIGHT))

    def v2_max(self) -> str:
        return f"{self.cap * PERIOD_US // 100 if self.cap else 'max'} {PERIOD_US}"


@dataclass(frozen=True)
class Hierarchy:
    version: int        # 1 or 2
    root: Path          # where the hierarchy is mounted


def _mounts(path: str = "/proc/self/mounts") -> list[tuple[str, str, list[str]]]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4:
                    out.append((parts[2], parts[1].replace("\\040", " "), parts[3].split(",")))
    except OSError:
        pass
    return out


def find_hierarchy(mounts: str = "/proc/self/mounts", controller: str = "cpu") -> Hierarchy | None:
    """The hierarchy that has ``controller``: v1 if mounted with it, else v2 with it."""
    table = _mounts(mounts)
    for fstype, where, opts in table:
        if fstype == "cgroup" and controller in opts:
            return Hierarchy(1, Path(where))
    for fstype, where, _ in table:
        if fstype == "cgroup2":
            try:
                controllers = (Path(where) / "cgroup.controllers").read_text().split()
            except OSError:
                continue
            if controller in controllers:
                return Hierarchy(2, Path(where))
    return None


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        raise CgroupError(f"Cannot write {value!r} to {path}: {e.strerror}.") from e


def _own_cgroup(hier: Hierarchy, pid: int | str = "self", controller: str = "cpu") -> Path:
    """The cgroup ``pid`` is in now, in ``hier``."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError as e:
        raise CgroupError(f"Cannot read /proc/{pid}/cgroup: {e.strerror}.") from e
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (hier.version == 2 and controllers == "") or \
                (hier.version == 1 and controller in controllers.split(",")):
            return hier.root / path.lstrip("/")
    return hier.root


class DomainCgroup:
    """The cgroup one domain process lives in while it runs."""

    def __init__(self, hier: Hierarchy, name: str) -> None:
        self.hier = hier
        self.base = hier.root / BASE
        self.path = self.base / name
        self._home: Path | None = None      # where the process was before enter()
        self._stat_fd: int | None = None    # cpu.stat, opened at enter(): still readable once jailed

    @classmethod
    def create(cls, domid: int, hier: Hierarchy | None = None) -> "DomainCgroup":
        hier = hier or find_hierarchy()
        if hier is None:
            raise CgroupError("No cgroup hierarchy with the CPU controller is mounted, so cap and weight "
                              "cannot be applied.")
        cg = cls(hier, f"dom{domid}-{os.getpid()}")
        sweep_stale(hier)
        try:
            if hier.version == 2:
                _enable_cpu(hier.root)
                cg.base.mkdir(exist_ok=True)
                _enable_cpu(cg.base)
            else:
                cg.base.mkdir(exist_ok=True)
            cg.path.mkdir(exist_ok=True)
        except OSError as e:
            raise CgroupError(f"Cannot create the cgroup {cg.path}: {e.strerror}"
                              f"{' (needs root)' if e.errno in (errno.EACCES, errno.EPERM) else ''}.") from e
        return cg

    def apply(self, params: SchedParams) -> None:
        if self.hier.version == 2:
            _write(self.path / "cpu.weight", str(params.v2_weight()))
            _write(self.path / "cpu.max", params.v2_max())
        else:
            _write(self.path / "cpu.shares", str(params.v1_shares()))
            _write(self.path / "cpu.cfs_period_us", str(PERIOD_US))
            _write(self.path / "cpu.cfs_quota_us", str(params.v1_quota_us()))

    def controller_values(self) -> dict[str, str]:
        """The CPU controller files as the kernel reports them (for status and tests)."""
        names = ("cpu.weight", "cpu.max") if self.hier.version == 2 else \
            ("cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us")
        out = {}
        for n in names:
            try:
                out[n] = (self.path / n).read_text().strip()
            except OSError:
                pass
        return out

    def throttled(self) -> dict[str, int]:
        """``cpu.stat``: how often and for how long the cap held the domain back."""
        try:
            if self._stat_fd is None:
                self._stat_fd = os.open(self.path / "cpu.stat", os.O_RDONLY | os.O_CLOEXEC)
            text = os.pread(self._stat_fd, 1 << 16, 0).decode()
        except OSError:
            return {}
        stats = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        keys = ("nr_periods", "nr_throttled", "throttled_time", "throttled_usec")
        return {k: int(v) for k, v in stats.items() if k in keys}

    def enter(self) -> None:
        """Move this whole process (every thread) into the cgroup."""
        self._home = _own_cgroup(self.hier)
        _write(self.path / "cgroup.procs", str(os.getpid()))
        self.throttled()

    def remove(self) -> None:
        """Move the process back where it was and delete the cgroup (best effort)."""
        if self._stat_fd is not None:
            os.close(self._stat_fd)
            self._stat_fd = None
        home = self._home if self._home is not None and self._home.exists() else self.hier.root
        _leave_and_remove(self.path, home)


def _leave_and_remove(group: Path, home: Path) -> None:
    """Move this process to ``home`` and delete ``group`` (best effort: it may be gone already)."""
    try:
        (home / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        pass
    try:
        group.rmdir()
    except OSError:
        pass


def _enable_cpu(group: Path, controller: str = "cpu") -> None:
    """v2: let ``group``'s children use ``controller``."""
    control = group / "cgroup.subtree_control"
    if controller not in control.read_text().split():
        control.write_text(f"+{controller}")


def sweep_stale(hier: Hierarchy) -> None:
    """Remove the empty cgroups of domain processes that died without cleaning up (kill -9)."""
    try:
        entries = list((hier.root / BASE).iterdir())
    except OSError:
        return
    for entry in entries:
        pid = entry.name.rpartition("-")[2]
        if entry.is_dir() and entry.name.startswith("dom") and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            try:
                entry.rmdir()
            except OSError:
                pass


def confine(domid: int, params: SchedParams) -> DomainCgroup | None:
    """Put this process in a cgroup of its own with ``params`` applied.

    Returns None when no cgroup could be made and ``params`` are the defaults
    (nothing to enforce); raises CgroupError when a cap or weight was asked for
    and cannot be enforced.
    """
    cg: DomainCgroup | None = None
    try:
        cg = DomainCgroup.create(domid)
        cg.apply(params)
        cg.enter()
        return cg
    except CgroupError as e:
        if cg is not None:
            cg.remove()
        if params.is_default:
            return None
        raise CgroupError(f"{e} Cap and weight need root and a cgroup hierarchy with the cpu "
                          "controller; without them leave cap/weight at their defaults.") from e


def apply_sched(path: str | None, params: SchedParams) -> None:
    """Apply ``params`` to the CPU cgroup at ``path`` (hospesd, for a jailed domain process
    that cannot write it). Only a domain cgroup under a hierarchy's ``hospes/`` is touched."""
    hier = find_hierarchy()
    if not path or hier is None:
        return
    cg = Path(path)
    if cg.parent != hier.root / BASE or not cg.name.startswith("dom") or not cg.is_dir():
        raise CgroupError(f"{path} is not a domain's CPU cgroup.")
    group = DomainCgroup(hier, cg.name)
    group.apply(params)


MEMORY_OVERHEAD_MIB = 320      # the domain process itself: Python, threads, buffers
MEMORY_OVERHEAD_SHARE = 16     # plus 1/16 of the guest (KVM's page tables and the kernel's per-page costs)


def memory_overhead(guest_mib: int) -> int:
    """MiB a domain process may use beyond its guest's memory (see the module docstring)."""
    return MEMORY_OVERHEAD_MIB + guest_mib // MEMORY_OVERHEAD_SHARE


class MemoryLimit:
    """A domain process's cgroup in the memory controller, with its limit.

    Made, limited and joined by the process while it is still root (the jailed
    process cannot write cgroup files); removed by the jail's supervisor after
    the process ended (:meth:`remove_after`)."""

    def __init__(self, hier: Hierarchy, path: Path) -> None:
        self.hier = hier
        self.path = path

    @property
    def limit_file(self) -> Path:
        return self.path / ("memory.max" if self.hier.version == 2 else "memory.limit_in_bytes")

    @classmethod
    def create(cls, domid: int, hier: Hierarchy | None = None) -> "MemoryLimit":
        hier = hier or find_hierarchy(controller="memory")
        if hier is None:
            raise CgroupError("No cgroup hierarchy with the memory controller is mounted, so the domain's "
                              "memory cannot be limited.")
        base = hier.root / BASE
        cg = cls(hier, base / f"dom{domid}-{os.getpid()}")
        sweep_stale(hier)
        try:
            if hier.version == 2:
                _enable_cpu(hier.root, "memory")
                base.mkdir(exist_ok=True)
                _enable_cpu(base, "memory")
            else:
                base.mkdir(exist_ok=True)
            cg.path.mkdir(exist_ok=True)
        except OSError as e:
            raise CgroupError(f"Cannot create the cgroup {cg.path}: {e.strerror}.") from e
        return cg

    def set_limit(self, limit_bytes: int) -> None:
        _write(self.limit_file, str(limit_bytes))
        if self.hier.version == 2:
            try:
                (self.path / "memory.swap.max").write_text("0")   # the limit is of memory, not swap
            except OSError:
                pass

    def limit(self) -> int | None:
        """The limit in force, as the kernel reports it (None: no limit, or unreadable)."""
        try:
            text = self.limit_file.read_text().strip()
        except OSError:
            return None
        return None if text == "max" else int(text)

    def enter(self, pid: int | str = "self") -> None:
        _write(self.path / "cgroup.procs", str(os.getpid() if pid == "self" else pid))

    def remove_after(self) -> None:
        """Leave the cgroup (this process back to the hierarchy's root) and delete it (best effort)."""
        _leave_and_remove(self.path, self.hier.root)


def limit_memory(domid: int, guest_mib: int) -> MemoryLimit:
    """Put this process in a memory cgroup limited to ``guest_mib`` + :func:`memory_overhead`."""
    cg = MemoryLimit.create(domid)
    try:
        cg.set_limit((guest_mib + memory_overhead(guest_mib)) * 1024 * 1024)
        cg.enter()
    except CgroupError:
        cg.remove_after()
        raise
    return cg


class CpuControl:
    """The CPU cgroup of one domain process, from set-up through changes to removal.

    ``hospes run`` and the domain process both hold one. ``start(params)`` joins a
    cgroup before any vCPU thread exists; with ``eager`` False it makes none for
    the default weight and cap (nothing to enforce). ``change`` applies new
    parameters, making the cgroup if there is none yet. ``close`` (or leaving the
    ``with`` block) moves the process back and deletes the cgroup.
    """

    def __init__(self, domid: int) -> None:
        self.domid = domid
        self.cgroup: DomainCgroup | None = None

    @property
    def path(self) -> Path | None:
        return self.cgroup.path if self.cgroup is not None else None

    def start(self, params: SchedParams, *, eager: bool = True) -> None:
        """Raises CgroupError when ``params`` ask for a limit that cannot be enforced."""
        if eager or not params.is_default:
            self.cgroup = confine(self.domid, params)

    def change(self, params: SchedParams) -> None:
        if self.cgroup is not None:
            self.cgroup.apply(params)
        elif not params.is_default:
            self.cgroup = confine(self.domid, params)

    def throttled(self) -> dict[str, int]:
        return self.cgroup.throttled() if self.cgroup is not None else {}

    def close(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None

    def __enter__(self) -> "CpuControl":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
