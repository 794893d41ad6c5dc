"""Facts about the host for ``xl info`` (and the Domain-0 line of ``xl list``).

Names follow xl's. Hospes stands where Xen would: ``xen_major``/``xen_minor``/
``xen_extra``/``xen_version`` are Hospes' version; ``xen_caps`` and
``virt_start`` are the Xen ABI the guests see. ``xen_scheduler`` is ``linux``:
vCPUs are host threads scheduled by the host kernel. Domain-0 is the host
itself: its memory is what guests do not hold, its vCPUs are the host's CPUs.
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import Any, Iterable

from hospes.version import __version__
from hospes.pv import abi


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0])
    except OSError:
        pass
    return out


def _cpuinfo() -> list[dict[str, str]]:
    cpus: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return cpus
    for line in text.splitlines():
        if not line.strip():
            if cur:
                cpus.append(cur)
                cur = {}
            continue
        key, _, value = line.partition(":")
        cur[key.strip()] = value.strip()
    if cur:
        cpus.append(cur)
    return cpus


def cpu_times() -> tuple[float, list[float]]:
    """Busy seconds (all but idle and iowait) of the whole host and of each CPU, from /proc/stat."""
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    per: list[float] = []
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return 0.0, []
    for line in lines:
        if not line.startswith("cpu"):
            continue
        name, *vals = line.split()
        nums = [int(v) for v in vals[:8]] + [0] * (8 - len(vals[:8]))
        busy = (sum(nums) - nums[3] - nums[4]) / hz  # minus idle, iowait
        if name == "cpu":
            total = busy
        else:
            per.append(busy)
    return total, per


def host_uptime() -> float:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def _version_parts(version: str) -> tuple[int, int, str]:
    parts = version.split(".")
    major = int(parts[0]) if parts and parts[0].isdigit() else 0
    minor = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    extra = "".join("." + p for p in parts[2:])
    return major, minor, extra


def host_info(guest_memory_mib: Iterable[int] = ()) -> dict[str, Any]:
    """The HostInfo object of the API (see apispec.SCHEMAS)."""
    uname = os.uname()
    mem = _meminfo()
    cpus = _cpuinfo()
    nr_cpus = os.cpu_count() or 1
    first = cpus[0] if cpus else {}
    try:
        khz = int(float(first.get("cpu MHz", "0")) * 1000)
    except ValueError:
        khz = 0
    cores = int(first.get("cpu cores", "1") or 1)
    siblings = int(first.get("siblings", str(cores)) or cores)
    sockets = len({c.get("physical id", "0") for c in cpus}) or 1
    nodes = len(list(Path("/sys/devices/system/node").glob("node[0-9]*"))) or 1
    major, minor, extra = _version_parts(__version__)
    total_mib = mem.get("MemTotal", 0) // 1024
    free_mib = mem.get("MemAvailable", mem.get("MemFree", 0)) // 1024
    busy, per_cpu = cpu_times()
    return {
        "host": socket.gethostname(),
        "release": uname.release,
        "version": uname.version,
        "machine": uname.machine,
        "nr_cpus": nr_cpus,
        "max_cpu_id": nr_cpus - 1,
        "nr_nodes": nodes,
        "cores_per_socket": cores,
        "threads_per_core": max(1, siblings // max(cores, 1)),
        "sockets": sockets,
        "cpu_khz": khz,
        "virt_caps": "pv",
        "total_memory": total_mib,
        "free_memory": free_mib,
        "free_cpus": 0,
        "xen_major": major,
        "xen_minor": minor,
        "xen_extra": extra,
        "xen_version": f"{major}.{minor}{extra}",
        "xen_caps": abi.XEN_CAPABILITIES.strip(),
        "xen_scheduler": "linux",
        "xen_pagesize": 4096,
        "virt_start": abi.HYPERVISOR_VIRT_START,
        "xen_changeset": f"hospes {__version__}, Xen PV ABI {abi.XEN_MAJOR}.{abi.XEN_MINOR}{abi.XEN_EXTRAVERSION}",
        "xen_commandline": "",
        "cc_compiler": f"{platform.python_implementation()} {platform.python_version()}",
        "cc_compile_by": "hospes",
        "cc_compile_domain": "",
        "cc_compile_date": "",
        "build_id": "",
        "dom0": {
            "memory_mib": max(0, total_mib - sum(guest_memory_mib)),
            "vcpus": nr_cpus,
            "cpu_time": busy,
            "uptime": host_uptime(),
            "vcpu_times": per_cpu,
        },
    }


__all__ = ["cpu_times", "host_info", "host_uptime"]
