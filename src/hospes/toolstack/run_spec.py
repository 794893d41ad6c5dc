"""``hospes run``'s flags as an xl configuration: the same ``DomainSpec`` an xl.cfg file gives.

Each flag stands for an xl key and its value goes through
:meth:`DomainSpec.from_config`, the code that reads xl.cfg files, located at the
flag that gave it (``--disk #2``), so a bad flag gets the error a bad config
line gets::

    --kernel, --ramdisk, --cmdline   kernel, ramdisk, cmdline
    --memory, --vcpus                memory, vcpus
    --weight, --cap                  cpu_weight, cap
    --disk SPEC                      one entry of disk = [...] (xl-disk-configuration(5))
    --vif SPEC                       one entry of vif = [...] (xl-network-configuration(5))
    --on-reboot restart|exit         on_reboot = restart | destroy
    --bootloader pygrub              bootloader (then --kernel/--ramdisk are paths
                                     in the first disk, --cmdline is appended)
    --bootloader-arg ARG             one entry of bootloader_args = [...]

Aliases kept from ``hospes run``'s first grammar:

* ``--disk PATH``, ``--disk PATH,ro``, ``--disk PATH,rw``: the raw image PATH as
  xvda for the first --disk, xvdb for the second, ...; the same as
  ``vdev=xvdX,access=ro|rw,target=PATH``.
* ``--vif ...,tap=NAME,...``: ``vifname=NAME`` (``mac=``, ``bridge=``, ``mtu=`` and
  ``rate=`` are xl's own keys).

Where ``hospes run`` differs from an xl.cfg file without those keys: the name
is ``guest``, memory 256 MiB, the kernel ``@default``; a guest that has a ramdisk
(the default one included) and no --cmdline gets ``console=hvc0 quiet noreplace-smp``; a soft
reset ends the run (``on_soft_reset = destroy``). ``-- CMD ARGS`` is appended to
the command line for the default initramfs to run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hospes.toolstack.spec import DEFAULT_IMAGE, DEFAULT_IMAGE_CMDLINE, Action, DomainSpec
from hospes.toolstack.xlcfg import List, Location, Number, String, Value

RUN_NAME = "guest"
RUN_MEMORY_MIB = 256
ON_REBOOT = {"restart": Action.RESTART, "exit": Action.DESTROY}

_DISK_ALIAS = re.compile(r"(?P<path>[^,=]+)(?:,(?P<access>ro|rw))?")


@dataclass(frozen=True)
class RunFlags:
    """The flags of one ``hospes run`` invocation, as given (None: not given)."""

    kernel: Path | None = None
    ramdisk: Path | None = None
    cmdline: str | None = None
    memory: int = RUN_MEMORY_MIB
    vcpus: int = 1
    disks: tuple[str, ...] = ()
    vifs: tuple[str, ...] = ()
    on_reboot: str = "restart"
    weight: int = 256
    cap: int = 0
    command: tuple[str, ...] = ()
    bootloader: str | None = None
    bootloader_args: tuple[str, ...] = ()


def disk_alias(text: str, index: int) -> str:
    """xl's spelling of a ``--disk`` value: ``PATH[,ro|,rw]`` becomes a full spec, others stay."""
    m = _DISK_ALIAS.fullmatch(text)
    if m is None:
        return text
    vdev = "xvd" + chr(ord("a") + index)
    return f"vdev={vdev},access={m.group('access') or 'rw'},target={m.group('path')}"


def vif_alias(text: str) -> str:
    """xl's spelling of a ``--vif`` value: ``tap=NAME`` becomes ``vifname=NAME``."""
    return ",".join("vifname=" + token.lstrip(" ")[4:] if token.lstrip(" ").startswith("tap=") else token
                    for token in text.split(","))


def _where(flag: str, index: int, count: int) -> Location:
    return Location(f"{flag} #{index + 1}" if count > 1 else flag)


def _strings(flag: str, texts: list[str]) -> List:
    return List(tuple(String(t, _where(flag, i, len(texts))) for i, t in enumerate(texts)), Location(flag))


def run_values(flags: RunFlags) -> dict[str, Value]:
    """The xl settings ``flags`` stand for, each located at its flag."""
    def string(flag: str, text: str) -> String:
        return String(text, Location(flag))

    def number(flag: str, n: int) -> Number:
        return Number(str(n), Location(flag))

    booted = flags.bootloader is not None   # the kernel comes from the disk
    kernel = str(flags.kernel) if flags.kernel is not None else None if booted else DEFAULT_IMAGE
    ramdisk = str(flags.ramdisk) if flags.ramdisk is not None else None
    cmdline = flags.cmdline
    if cmdline is None and not booted and (ramdisk is not None or kernel == DEFAULT_IMAGE):
        cmdline = DEFAULT_IMAGE_CMDLINE
    if flags.command:
        from hospes.images import encode_command

        cmdline = f"{cmdline or ''} {encode_command(list(flags.command))}".strip()
    values: dict[str, Value] = {
        "name": string("hospes run", RUN_NAME),
        "memory": number("--memory", flags.memory),
        "vcpus": number("--vcpus", flags.vcpus),
        "cpu_weight": number("--weight", flags.weight),
        "cap": number("--cap", flags.cap),
        "on_reboot": string("--on-reboot", str(ON_REBOOT.get(flags.on_reboot, flags.on_reboot))),
        "on_soft_reset": string("hospes run", str(Action.DESTROY)),
    }
    if kernel is not None:
        values["kernel"] = string("--kernel", kernel)
    if flags.bootloader is not None:
        values["bootloader"] = string("--bootloader", flags.bootloader)
    if flags.bootloader_args:
        values["bootloader_args"] = _strings("--bootloader-arg", list(flags.bootloader_args))
    if ramdisk is not None:
        values["ramdisk"] = string("--ramdisk", ramdisk)
    if cmdline:
        values["cmdline"] = string("--cmdline", cmdline)
    if flags.disks:
        values["disk"] = _strings("--disk", [disk_alias(d, i) for i, d in enumerate(flags.disks)])
    if flags.vifs:
        values["vif"] = _strings("--vif", [vif_alias(v) for v in flags.vifs])
    return values


def run_spec(flags: RunFlags) -> DomainSpec:
    """The DomainSpec for ``hospes run`` with ``flags``; ConfigError (located at a flag) if bad."""
    return DomainSpec.from_config(run_values(flags), source="hospes run")


__all__ = ["RUN_MEMORY_MIB", "RUN_NAME", "RunFlags", "disk_alias", "run_spec", "run_values", "vif_alias"]
