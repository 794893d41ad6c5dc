"""xl's text formats, as pure functions of the API's JSON (so they test without a daemon).

The printf formats are xl's (tools/xl/xl_info.c, xl_vcpu.c), so scripts written
for xl parse our output:

* ``list``: header ``Name ID Mem VCPUs<TAB>State<TAB>Time(s)``, rows
  ``%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f``. Like xl, the first row is
  Domain-0, here the host itself: its memory is what the guests do not hold, its
  VCPUs the host's CPUs, its time the host's busy CPU time.
* ``vcpu-list``: ``%-32s %5s %5s %5s %5s %9s %s`` header; Domain-0 has a row per
  host CPU. There is no pinning yet, so affinity is ``all / all``.
* ``info``: ``%-23s: %s`` lines in xl's order, with the fields that have meaning here.
* ``uptime``: ``%-33s %4s %s`` (``-s``: `` HH:MM:SS up ..., NAME (ID)``).
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Mapping, Sequence

LIST_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"
DOM0_NAME = "Domain-0"


def _row(name: str, domid: int, mem: int, vcpus: int, flags: str, cpu_time: float) -> str:
    return f"{name:<40} {domid:5d} {mem:5d} {vcpus:5d}     {flags}  {cpu_time:8.1f}"


def format_list(host: Mapping[str, Any], domains: Sequence[Mapping[str, Any]], dom0: bool = True) -> str:
    """``xl list``: Domain-0 (the host) first, then the domains by domid."""
    lines = [LIST_HEADER]
    if dom0:
        d0 = host["dom0"]
        lines.append(_row(DOM0_NAME, 0, int(d0["memory_mib"]), int(d0["vcpus"]), "r-----", float(d0["cpu_time"])))
    for d in sorted(domains, key=lambda d: d["domid"]):
        lines.append(_row(d["name"], d["domid"], d["memory_mib"], d["vcpus"], d["flags"], d["cpu_time"]))
    return "\n".join(lines) + "\n"


def list_long(domains: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``xl list -l``: ``[{"domid": N, "config": {...}}]`` with libxl's config sections
    (c_info, b_info, disks, nics, on_*), plus Hospes' live state under ``"hospes"``."""
    out = []
    for d in sorted(domains, key=lambda d: d["domid"]):
        spec = d.get("config") or {}
        memkb = int(spec.get("memory") or d["memory_mib"]) * 1024
        out.append({
            "domid": d["domid"],
            "config": {
                "c_info": {"type": spec.get("type") or "pv", "name": d["name"], "uuid": d["uuid"]},
                "b_info": {
                    "max_vcpus": d["max_vcpus"],
                    "max_memkb": int(spec.get("maxmem") or spec.get("memory") or d["memory_mib"]) * 1024,
                    "target_memkb": memkb,
                    "type.pv": {"kernel": spec.get("kernel"), "ramdisk": spec.get("ramdisk"),
                                "cmdline": spec.get("cmdline")},
                },
                "disks": list(spec.get("disks") or []),
                "nics": list(spec.get("vifs") or []),
                "on_poweroff": spec.get("on_poweroff", "destroy"),
                "on_reboot": spec.get("on_reboot", "restart"),
                "on_crash": spec.get("on_crash", "destroy"),
            },
            "hospes": {k: d[k] for k in ("state", "flags", "cpu_time", "started", "boots", "shutdown_reason",
                                          "message", "pid", "console_log") if k in d},
        })
    return out


def format_bitmap_all(nr: int) -> str:
    return "all" if nr > 0 else "none"


def format_vcpu_list(host: Mapping[str, Any], vcpu_lists: Iterable[Mapping[str, Any]], dom0: bool = True) -> str:
    """``xl vcpu-list``; ``vcpu_lists`` are the API's VcpuList objects."""
    nr = int(host["nr_cpus"])
    aff = f"{format_bitmap_all(nr)} / {format_bitmap_all(nr)}"
    lines = [f"{'Name':<32} {'ID':>5} {'VCPU':>5} {'CPU':>5} {'State':>5} {'Time(s)':>9} Affinity (Hard / Soft)"]

    def row(name: str, domid: int, v: Mapping[str, Any]) -> str:
        head = f"{name:<32} {domid:5d} {v['vcpu']:5d}"
        if not v["online"]:
            mid = f"{'-':>5} {'-':>3}-p "
        else:
            cpu = v["cpu"] if v["cpu"] >= 0 else 0
            mid = f"{cpu:5d} {'r' if v['running'] else '-':>3}{'b' if v['blocked'] else '-'}- "
        return f"{head}{mid}{float(v['time']):9.1f}  {aff}"

    if dom0:
        for i, t in enumerate(host["dom0"]["vcpu_times"]):
            lines.append(row(DOM0_NAME, 0, {"vcpu": i, "online": True, "running": True, "blocked": False,
                                            "cpu": i, "time": t}))
    for vl in sorted(vcpu_lists, key=lambda x: x["domid"]):
        for v in vl["vcpus"]:
            lines.append(row(vl["name"], vl["domid"], v))
    return "\n".join(lines) + "\n"


POOL_LINE = "Cpupool Pool-0: sched=linux"   # as xl prints an RTDS pool: no credit tslice to show


def format_sched_credit(rows: Iterable[Mapping[str, Any]], pool: bool = True, dom0: bool = True) -> str:
    """``xl sched-credit``; ``rows`` have name, domid, weight and cap. Domain-0 (the host) is unconfined."""
    lines = [POOL_LINE] if pool else []
    lines.append(f"{'Name':<33} {'ID':>4} {'Weight':>6} {'Cap':>4}")
    if dom0:
        lines.append(f"{DOM0_NAME:<33} {0:4d} {256:6d} {0:4d}")
    for r in sorted(rows, key=lambda x: x["domid"]):
        lines.append(f"{r['name']:<33} {r['domid']:4d} {r['weight']:6d} {r['cap']:4d}")
    return "\n".join(lines) + "\n"


INFO_LAYOUT: tuple[tuple[str, str], ...] = (
    ("host", "{host}"),
    ("release", "{release}"),
    ("version", "{version}"),
    ("machine", "{machine}"),
    ("nr_cpus", "{nr_cpus}"),
    ("max_cpu_id", "{max_cpu_id}"),
    ("nr_nodes", "{nr_nodes}"),
    ("cores_per_socket", "{cores_per_socket}"),
    ("threads_per_core", "{threads_per_core}"),
    ("cpu_mhz", "{cpu_mhz}"),
    ("virt_caps", "{virt_caps}"),
    ("total_memory", "{total_memory}"),
    ("free_memory", "{free_memory}"),
    ("sharing_freed_memory", "0"),
    ("sharing_used_memory", "0"),
    ("outstanding_claims", "0"),
    ("free_cpus", "{free_cpus}"),
    ("xen_major", "{xen_major}"),
    ("xen_minor", "{xen_minor}"),
    ("xen_extra", "{xen_extra}"),
    ("xen_version", "{xen_version}"),
    ("xen_caps", "{xen_caps}"),
    ("xen_scheduler", "{xen_scheduler}"),
    ("xen_pagesize", "{xen_pagesize}"),
    ("platform_params", "virt_start=0x{virt_start_hex}"),
    ("xen_changeset", "{xen_changeset}"),
    ("xen_commandline", "{xen_commandline}"),
    ("cc_compiler", "{cc_compiler}"),
    ("cc_compile_by", "{cc_compile_by}"),
    ("cc_compile_domain", "{cc_compile_domain}"),
    ("cc_compile_date", "{cc_compile_date}"),
    ("build_id", "{build_id}"),
    ("xend_config_format", "4"),
)


def format_info(host: Mapping[str, Any], only: str | None = None) -> str:
    """``xl info [NAME]``: all lines, or (like xl) just the value of lines starting with ``only``."""
    khz = int(host.get("cpu_khz", 0))
    values = {**host, "cpu_mhz": f"{khz // 1000}.{khz % 1000:03d}", "virt_start_hex": f"{int(host['virt_start']):x}"}
    out = []
    for key, template in INFO_LAYOUT:
        value = template.format(**values)
        if only is None:
            out.append(f"{key:<23}: {value}\n")
        elif key.startswith(only):
            out.append(f"{value}\n")
    return "".join(out)


def uptime_string(seconds: float, short: bool) -> str:
    """xl's uptime_to_string()."""
    up = int(seconds)
    day, up = divmod(up, 86400)
    hour, up = divmod(up, 3600)
    minute, sec = divmod(up, 60)
    days = f"{day} days, " if day > 1 else (f"{day} day, " if day == 1 else "")
    return f"{days}{hour:2d}:{minute:02d}" + ("" if short else f":{sec:02d}")


def format_uptime(host: Mapping[str, Any], domains: Sequence[Mapping[str, Any]], short: bool = False,
                  dom0: bool = True, now: float | None = None) -> str:
    """``xl uptime [-s]``."""
    now = time.time() if now is None else now
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    rows: list[tuple[str, int, float]] = []
    if dom0:
        rows.append((DOM0_NAME, 0, float(host["dom0"]["uptime"])))
    for d in sorted(domains, key=lambda d: d["domid"]):
        rows.append((d["name"], d["domid"], max(0.0, now - float(d["started"]))))
    out = [] if short else [f"{'Name':<33} {'ID':>4} Uptime"]
    for name, domid, up in rows:
        if short:
            out.append(f" {clock} up {uptime_string(up, True)}, {name} ({domid})")
        else:
            out.append(f"{name:<33} {domid:4d} {uptime_string(up, False)}")
    return "\n".join(out) + "\n"
