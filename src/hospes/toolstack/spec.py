"""What an xl domain configuration means: ``DomainSpec``, ``DiskSpec``, ``VifSpec``.

Contract: ``load_spec(path)`` = ``xlcfg.parse`` + ``DomainSpec.from_config``. A
spec is validated, immutable, and round-trips through JSON (``to_dict`` /
``from_dict``) for the toolstack's state files. Configuration only: nothing here
opens an image, a device or /dev/kvm.

Keys Hospes implements, with xl's defaults (xl.cfg(5), xl_parse.c, libxl)::

    name                 mandatory
    uuid                 None = the toolstack picks one when it creates the domain
    type / builder       "pv" (default; builder="generic" is the old spelling);
                         "pvh" and "hvm" are refused as not supported yet
    memory, maxmem       MiB; xl's default is 32 for both; either one alone sets
                         the other; maxmem >= memory
    vcpus, maxvcpus      1; maxvcpus defaults to vcpus and may not be below it
    cpus                 a CPULIST string ("all", "0-3,^1", "nodes:0") or a list
                         of them, one per vCPU; checked, kept as text
    cpu_weight           256, from 1 to 65535
    cap                  0 = no cap, in % of one CPU, up to 65535
    kernel, ramdisk      paths, relative ones taken from the config file's
                         directory; "@default" = the image `hospes image` builds;
                         with a bootloader, optional paths inside the guest's disk
    bootloader           "pygrub" (or a path ending in /pygrub): the kernel, initrd
                         and command line come from the first disk at each boot
                         (hospes.bootloader); cmdline/root/extra are appended
    bootloader_args      a list of strings (or one, split at spaces): --entry=,
                         --kernel=, --ramdisk=, --args=
    cmdline              or root= and extra=, combined as xl does:
                         "root=<root> <extra>"; cmdline wins over both
    disk = [...]         DiskSpec strings (xl-disk-configuration(5))
    vif = [...]          VifSpec strings (xl-network-configuration(5)); '' is a vif
    on_poweroff destroy, on_reboot restart, on_crash destroy, on_watchdog destroy,
    on_soft_reset soft-reset: destroy|restart|rename-restart|preserve|
                  coredump-destroy|coredump-restart|soft-reset

Every other key is kept in ``extra_keys`` with a warning: "not supported yet"
for keys xl knows, "unknown key" for the rest (xl itself ignores those silently).

Deviations from xl, chosen for clearer failures:

* a value of the wrong type or out of range is an error (xl warns and then
  ignores the setting, keeping the default);
* a vif parameter with a bad value, or one xl does not know, is an error (xl
  prints a message and goes on); a list item that is itself a list is an error
  (xl stops reading the list there);
* ``type`` must be spelt out (xl accepts any prefix: ``type="p"``);
* relative kernel/ramdisk paths are taken from the config file's directory, not
  from the current directory;
* MAC addresses must be six hex pairs separated by ":" or "-"; an MTU is 68-65535;
  a disk's vdev may not be empty.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from hospes.errors import HospesError
from hospes.files import MAX_CONFIG_BYTES, FileReadError, read_regular
from hospes.toolstack.xlcfg import (
    ConfigError, List, Location, Value, as_int, as_str, as_str_list, from_plain,
    parse, parse_overrides, to_plain,
)

#: kernel/ramdisk marker: the default images `hospes image` builds (Debian's cloud
#: kernel and Hospes' busybox initramfs). Kept as is in the spec; the toolstack
#: replaces it with the paths when it builds the domain.
DEFAULT_IMAGE = "@default"
#: The command line the default initramfs gets when the configuration gives none:
#: its console on hvc0, a quiet kernel so the guest's output is the command's,
#: and ``noreplace-smp``: a Linux that finds one CPU at boot otherwise rewrites
#: every lock prefix of its text (~8,600 in Debian's 6.1) with one text_poke
#: each, which on a PV guest is 2 mmu_updates and 2 CR3 switches, about 35,000
#: exits, a third of the default guest's boot (docs/benchmarks.md). The cost of
#: keeping the prefixes on one CPU is a few cycles per atomic instruction.
DEFAULT_IMAGE_CMDLINE = "console=hvc0 quiet noreplace-smp"
#: Version of the to_dict() layout.
SPEC_FORMAT = 1

DEFAULT_MEMORY_MIB = 32        # libxl: max_memkb = 32 * 1024 when nothing is given
DEFAULT_CPU_WEIGHT = 256
MAX_SCHED_PARAM = 65535        # weight and cap are uint16_t in Xen's credit domctl
LONG_MIB = (2**63 - 1) // 1024  # the most MiB whose KiB count (what xl computes) fits a long

Warn = Callable[[str], None]


class Action(StrEnum):
    """What xl does when a guest stops (the ``on_*`` keys)."""

    DESTROY = "destroy"
    RESTART = "restart"
    RENAME_RESTART = "rename-restart"
    PRESERVE = "preserve"
    COREDUMP_DESTROY = "coredump-destroy"
    COREDUMP_RESTART = "coredump-restart"
    SOFT_RESET = "soft-reset"


DEFAULT_ACTIONS = {"on_poweroff": Action.DESTROY, "on_reboot": Action.RESTART,
                   "on_crash": Action.DESTROY, "on_watchdog": Action.DESTROY,
                   "on_soft_reset": Action.SOFT_RESET}

IMPLEMENTED_KEYS = frozenset({
    "name", "uuid", "type", "builder", "memory", "maxmem", "vcpus", "maxvcpus", "cpus",
    "cpu_weight", "cap", "kernel", "ramdisk", "cmdline", "root", "extra", "disk", "vif",
    "bootloader", "bootloader_args", *DEFAULT_ACTIONS,
})

#: Keys xl reads (xl.cfg(5), xl_parse.c) that Hospes does not implement yet.
XL_KEYS = frozenset("""
    pool cpus_soft period slice latency extratime vnuma vuart seclabel init_seclabel
    max_grant_frames max_maptrack_frames max_grant_version nomigrate driver_domain
    device_tree passthrough xend_suspend_evtchn_compat vmtrace_buf_kb vpmu firmware
    pvshim pvshim_path pvshim_cmdline pvshim_extra
    bootloader_restrict bootloader_user e820_host vtpm p9 pvcalls vfb channel rdm usbctrl
    usbdev pci pci_permissive pci_msitranslate pci_seize pci_power_mgmt gfx_passthru
    rdm_mem_boundary dtdev ioports iomem irqs max_event_channels vdispl dm_restrict
    device_model_user vsnd vkb virtio tee boot hdtype hap oos shadow_memory bios
    bios_path_override firmware_override pae acpi acpi_s3 acpi_s4 acpi_laptop_slate apic nx
    hpet altp2m altp2mhvm nestedhvm cpuid acpi_firmware smbios_firmware smbios ms_vm_genid
    tsc_mode localtime rtc_timeoffset vpt_align timer_mode mmio_hole xen_platform_pci
    viridian hvm_pirq videoram stdvga vga vnc vnclisten vncdisplay vncunused vncpasswd
    vncviewer keymap sdl opengl nographic display xauthority spice spicehost spiceport
    spicetls_port spicedisable_ticketing spicepasswd spiceagent_mouse spicevdagent
    spice_clipboard_sharing spiceusbredirection spice_image_compression
    spice_streaming_video serial soundhw vkb_device usb usbversion usbdevice vendor_device
    device_model_version device_model_override stubdomain_kernel stubdomain_cmdline
    stubdomain_ramdisk stubdomain_memory device_model_stubdomain_override
    device_model_stubdomain_seclabel device_model_args device_model_args_pv
    device_model_args_hvm gic_version sve mca_caps msr_relaxed vif2
""".split())

Frozen = str | int | tuple  # to_plain() output with lists made tuples


def _freeze(obj: Any) -> Frozen:
    return tuple(_freeze(v) for v in obj) if isinstance(obj, (list, tuple)) else obj


def _thaw(obj: Frozen) -> Any:
    return [_thaw(v) for v in obj] if isinstance(obj, tuple) else obj


# =========================================================================== disks

_DISK_FORMATS = {"": "raw", "raw": "raw", "qcow": "qcow", "qcow2": "qcow2", "vhd": "vhd",
                 "empty": "empty", "qed": "qed"}
_DISK_CHOICES = {"backendtype": ("phy", "tap", "qdisk", "standalone"),
                 "specification": ("xen", "virtio")}
#: Actions that save a string parameter of the same name (each may be given once).
_DISK_STRINGS = frozenset({"target", "backend", "vdev", "script", "colo_host", "colo_export",
                           "active_disk", "hidden_disk"})
_ACCESS = {"r": False, "ro": False, "rw": True, "w": True, "": True}

# The scanner rules of libxlu_disk_l.l, in order: (pattern, trailing context, action).
# Like flex, the longest match wins (trailing context counts), the first rule on a tie.
# Trailing context "line" is flex's "/.*", "nonalnum" its "/([^a-z0-9].*)?", "ws" its
# "/([^ \t\n].*)?": they make a prefix rule win over the positional rule.
_DISK_RULES: list[tuple[re.Pattern[str], str | None, str]] = [
    (re.compile(p), t, a) for p, t, a in [
        (r"[ \t\n]+", "ws", "skip"),
        (r"format=[^,]*,?", None, "format"),
        (r"cdrom,?", None, "cdrom"),
        (r"devtype=cdrom,?", None, "cdrom"),
        (r"devtype=disk,?", None, "disk"),
        (r"devtype=[^,]*,?", None, "bad_devtype"),
        (r"access=[^,]*,?", None, "access"),
        (r"backend=[^,]*,?", None, "backend"),
        (r"backendtype=[^,]*,?", None, "backendtype"),
        (r"specification=[^,]*,?", None, "specification"),
        (r"vdev=[^,]*,?", None, "vdev"),
        (r"script=[^,]*,?", None, "script"),
        (r"direct-io-safe,?", None, "direct_io_safe"),
        (r"discard,?", None, "discard"),
        (r"no-discard,?", None, "no_discard"),
        (r"colo,?", None, "colo"),
        (r"no-colo,?", None, "no_colo"),
        (r"colo-host=[^,]*,?", None, "colo_host"),
        (r"colo-port=[^,]*,?", None, "colo_port"),
        (r"colo-export=[^,]*,?", None, "colo_export"),
        (r"active-disk=[^,]*,?", None, "active_disk"),
        (r"hidden-disk=[^,]*,?", None, "hidden_disk"),
        (r"trusted,?", None, "trusted"),
        (r"untrusted,?", None, "untrusted"),
        (r"grant_usage=1,?", None, "grant_usage_1"),
        (r"grant_usage=0,?", None, "grant_usage_0"),
        (r"target=.*", None, "target"),
        (r"[a-z][-a-z0-9]*=[^,],?", None, "unknown_parameter"),
        (r"(?:raw|qcow2?|vhd):", "line", "format_prefix"),
        (r"(?:iscsi|e?nbd|drbd):", "line", "script_prefix"),
        (r"(?:tapdisk|tap2?|aio|ioemu|file|phy):", "line", "ignored_prefix"),
        (r"[a-z][a-z0-9]*:", "nonalnum", "unknown_prefix"),
        (r"[^=,]*,|[^=,]+", None, "positional"),
        (r".", None, "bad_syntax"),
    ]
]
_REST_OF_LINE = re.compile(r"[^\n]*")
#: Flag actions: (what they set, to what).
_DISK_FLAGS = {"cdrom": ("cdrom", True), "disk": ("cdrom", False),
               "direct_io_safe": ("direct_io_safe", True), "discard": ("discard", True),
               "no_discard": ("discard", False), "colo": ("colo", True), "no_colo": ("colo", False),
               "trusted": ("trusted", True), "untrusted": ("trusted", False),
               "grant_usage_1": ("grant_usage", True), "grant_usage_0": ("grant_usage", False)}


def _trailing_length(text: str, end: int, kind: str | None) -> int:
    if kind is None:
        return 0
    if kind == "line":
        return _REST_OF_LINE.match(text, end).end() - end  # type: ignore[union-attr]
    if end >= len(text):
        return 0
    if kind == "nonalnum" and re.match(r"[a-z0-9]", text[end]):
        return 0
    return _REST_OF_LINE.match(text, end + 1).end() - end  # type: ignore[union-attr]


@dataclass(frozen=True, kw_only=True)
class DiskSpec:
    """One ``disk=[...]`` entry (xl-disk-configuration(5)).

    ``target`` is None when none was given (only an empty cdrom drive may do that)
    and "" when given empty. ``access`` is "rw" or "ro" (a cdrom is always "ro");
    ``devtype`` is "disk" or "cdrom"; ``format`` one of raw qcow qcow2 vhd qed
    empty (default raw; "empty" for a cdrom drive without media). The tri-state
    flags are None when not given (the backend's default applies).
    """

    target: str | None
    vdev: str
    format: str = "raw"
    access: str = "rw"
    devtype: str = "disk"
    backendtype: str | None = None      # phy tap qdisk standalone; None = automatic
    backend: str | None = None          # backend domain; None = the toolstack's domain
    script: str | None = None           # e.g. block-iscsi
    specification: str | None = None    # xen virtio
    direct_io_safe: bool = False
    discard: bool | None = None
    trusted: bool | None = None
    grant_usage: bool | None = None
    colo: bool | None = None
    colo_host: str | None = None
    colo_port: int | None = None
    colo_export: str | None = None
    active_disk: str | None = None
    hidden_disk: str | None = None

    @property
    def readwrite(self) -> bool:
        return self.access == "rw"

    @property
    def removable(self) -> bool:
        return self.devtype == "cdrom"

    @classmethod
    def parse(cls, spec: str | Sequence[str], location: Location | None = None) -> "DiskSpec":
        """Parse a disk spec, or several read in turn into one disk (``xl block-attach``)."""
        parser = _DiskParser(location)
        for text in [spec] if isinstance(spec, str) else spec:
            parser.scan(text)
        return parser.finish()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DiskSpec":
        return cls(**_known_fields(cls, data))


class _DiskParser:
    """The state of xl's disk scanner (libxlu_disk_l.l) while it reads specs."""

    def __init__(self, location: Location | None) -> None:
        self.location = location
        self.spec = ""
        self.values: dict[str, Any] = {}
        self.format: str | None = None
        self.readwrite = True
        self.access_set = False
        self.cdrom = False
        self.had_deprecated_prefix = False

    def fail(self, message: str, near: str | None = None) -> ConfigError:
        where = f" near {near!r}" if near is not None and near != self.spec else ""
        return ConfigError(f"Bad disk specification {self.spec!r}: {message}{where}", self.location)

    def scan(self, text: str) -> None:
        self.spec, pos = text, 0
        while pos < len(text):
            best: tuple[int, int, re.Match[str]] | None = None
            for index, (pattern, trailing, _) in enumerate(_DISK_RULES):
                m = pattern.match(text, pos)
                if m is None:
                    continue
                total = m.end() - pos + _trailing_length(text, m.end(), trailing)
                if best is None or total > best[0]:
                    best = (total, index, m)
            assert best is not None
            _, index, m = best
            self.act(_DISK_RULES[index][2], m.group(), text[pos:])
            pos = m.end()

    def act(self, action: str, token: str, rest: str) -> None:
        value = token[:-1] if token.endswith(",") else token      # xl's STRIP(',')
        name, _, arg = value.partition("=")
        if action == "skip":
            pass
        elif action in _DISK_FLAGS:
            attr, flag = _DISK_FLAGS[action]
            if attr == "cdrom":
                self.cdrom = flag
            else:
                self.values[attr] = flag
        elif action in _DISK_STRINGS:
            self.save_string(action, arg)
        elif action == "format":
            self.set_format(arg)
        elif action == "access":
            self.set_access(arg)
        elif action in _DISK_CHOICES:
            if arg not in _DISK_CHOICES[action]:
                raise self.fail(f"unknown {action} {arg!r}; it is one of "
                                f"{', '.join(_DISK_CHOICES[action])}", value)
            self.set_once(action, arg)
        elif action == "colo_port":
            m = re.match(r"\s*([+-]?\d+)", arg)                 # atoi
            if not m or not int(m.group(1)):
                raise self.fail(f"unknown value for colo-port {arg!r}", value)
            self.values["colo_port"] = int(m.group(1))
        elif action.endswith("_prefix") and action != "unknown_prefix":
            self.had_deprecated_prefix = True
            if action == "format_prefix":
                self.set_format(value[:-1])
            elif action == "script_prefix":
                self.save_string("script", "block-" + value[:-1])
        elif action == "positional":
            self.positional(value)
        elif action == "bad_devtype":
            raise self.fail(f"unknown devtype {arg!r}; it is disk or cdrom", value)
        elif action == "unknown_parameter":
            raise self.fail(f"unknown parameter {name!r}; the parameters are target, format, "
                            "vdev, access, devtype, backend, backendtype, script, specification "
                            "and the flags cdrom, discard, no-discard, trusted, untrusted, "
                            "direct-io-safe")
        elif action == "unknown_prefix":
            raise self.fail("unknown deprecated disk prefix; use format=, script= or target=",
                            value)
        else:
            raise self.fail("bad disk syntax", rest)

    # -- positional parameters: target, format, vdev, access
    def positional(self, value: str) -> None:
        if "target" not in self.values:
            self.save_string("target", value)
        elif not self.had_deprecated_prefix and self.format is None:
            if self.values["target"] == "" and self.vdev_and_devtype(value):
                self.format = "empty"
            else:
                self.set_format(value)
        elif "vdev" not in self.values:
            if not self.vdev_and_devtype(value):
                self.save_string("vdev", value)
        elif not self.access_set:
            self.set_access(value)
        else:
            raise self.fail("too many positional parameters: they are target, format, vdev, "
                            "access", value)

    def vdev_and_devtype(self, value: str) -> bool:
        """The deprecated ``vdev:devtype`` form; False when ``value`` has no colon."""
        vdev, colon, devtype = value.rpartition(":")
        if not colon:
            return False
        self.save_string("vdev", vdev)
        if devtype not in ("cdrom", "disk"):
            raise self.fail(f"unknown deprecated type {devtype!r}; it is disk or cdrom", value)
        self.cdrom = devtype == "cdrom"
        return True

    # -- helpers
    def set_format(self, text: str) -> None:
        fmt = _DISK_FORMATS.get(text)
        if fmt is None:
            raise self.fail(f"unknown format {text!r}; it is one of raw, qcow, qcow2, vhd, qed, "
                            "empty")
        if self.format is not None and self.format != fmt:
            raise self.fail(f"format given twice ({self.format} and {fmt})")
        self.format = fmt

    def set_access(self, text: str) -> None:
        if text not in _ACCESS:
            raise self.fail(f"unknown access {text!r}; it is rw (or w) or ro (or r)")
        self.access_set = True
        self.readwrite = _ACCESS[text]

    def set_once(self, name: str, text: str) -> None:
        old = self.values.get(name)
        if old is not None and old != text:
            raise self.fail(f"{name} given twice ({old} and {text})")
        self.values[name] = text

    def save_string(self, name: str, text: str) -> None:
        if self.values.get(name):              # an empty value may be replaced
            raise self.fail(f"{name.replace('_', '-')} given twice", text)
        self.values[name] = text

    def finish(self) -> DiskSpec:
        fmt = self.format or "raw"
        target = self.values.pop("target", None)
        readwrite = self.readwrite
        if self.cdrom:
            readwrite = False
            if not target:
                fmt = "empty"
        if not self.values.get("vdev"):
            raise self.fail("no vdev given: name the guest's device, e.g. vdev=xvda")
        if target is None and not self.cdrom:
            raise self.fail("no target given: give the image or device, e.g. target=/srv/disk.img")
        return DiskSpec(target=target, format=fmt, access="rw" if readwrite else "ro",
                        devtype="cdrom" if self.cdrom else "disk", **self.values)


# =========================================================================== vifs

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
_RATE_RE = re.compile(r"([0-9]+)([GMK]?)([Bb])/s")
_INTERVAL_RE = re.compile(r"([0-9]+)([mu]?)s?")
_MAC_RE = re.compile(r"[0-9a-fA-F]{1,2}(?:[:-][0-9a-fA-F]{1,2}){5}")
_VIF_UNSUPPORTED = ("forwarddev", "accel")  # and every colo_* key


def _strtoull_digits(digits: str) -> int:
    """Decimal digits as strtoull(base 0) reads them: a leading 0 means octal."""
    if len(digits) > 1 and digits.startswith("0"):
        if not re.fullmatch(r"[0-7]+", digits):
            raise ValueError(f"{digits!r} starts with 0, so it is octal, but has an 8 or a 9")
        return int(digits, 8)
    return int(digits)


@dataclass(frozen=True)
class VifRate:
    """A vif's rate limit: ``bytes_per_sec`` replenished every ``interval_usecs``.

    Parsed from ``RATE[@INTERVAL]`` as libxlu does: RATE is ``N[GMK](B|b)/s``
    (decimal multipliers; ``b`` = bits), INTERVAL is ``N[s|ms|us]`` (no unit =
    seconds), default 50 ms.
    """

    bytes_per_sec: int
    interval_usecs: int = 50_000

    @property
    def bytes_per_interval(self) -> int:
        return self.bytes_per_sec * self.interval_usecs // 1_000_000

    @property
    def credit_bytes(self) -> int:
        """The backend's credit per interval: never 0 (which would mean no limit at all)."""
        return max(1, self.bytes_per_interval)

    @classmethod
    def parse(cls, text: str) -> "VifRate":
        """Raises ValueError with xl's reason (invalid rate, rate overflow, ...)."""
        rate, at, interval = text.partition("@")
        if not rate:
            raise ValueError("no rate given, e.g. rate=10Mb/s@50ms")
        m = _RATE_RE.fullmatch(rate)
        if not m:
            raise ValueError(f"invalid rate {rate!r}: write N[G|M|K]B/s (bytes) or N[G|M|K]b/s "
                             "(bits), e.g. 10Mb/s")
        n = _strtoull_digits(m.group(1))
        if n == 0 or n > UINT32_MAX:
            raise ValueError(f"rate {rate!r} is out of range")
        n *= {"G": 10**9, "M": 10**6, "K": 10**3, "": 1}[m.group(2)]
        if m.group(3) == "b":
            n //= 8
        usecs = 50_000
        if at:
            m = _INTERVAL_RE.fullmatch(interval)
            if not m:
                raise ValueError(f"invalid replenishment interval {interval!r}: write "
                                 "N[s|ms|us], e.g. 50ms")
            t = _strtoull_digits(m.group(1))
            if t == 0 or t > UINT32_MAX:
                raise ValueError(f"replenishment interval {interval!r} is out of range")
            usecs = t * {"": 10**6, "m": 10**3, "u": 1}[m.group(2)]
            if usecs > UINT32_MAX:
                raise ValueError(f"replenishment interval {interval!r} is out of range")
        if n > UINT64_MAX // usecs:
            raise ValueError(f"rate {text!r} overflows")
        return cls(n, usecs)


@dataclass(frozen=True, kw_only=True)
class VifSpec:
    """One ``vif=[...]`` entry (xl-network-configuration(5)); ``''`` gives all defaults.

    None means "not given": libxl's defaults then apply (a random 00:16:3e MAC,
    bridge xenbr0, script vif-bridge, type vif for PV guests, MTU 1500).
    ``devid`` is the entry's index in the list unless ``devid=`` says otherwise;
    ``mac`` is normalised to lower-case ``xx:xx:xx:xx:xx:xx``.
    """

    devid: int = 0
    mac: str | None = None
    bridge: str | None = None
    ip: str | None = None
    rate: VifRate | None = None
    type: str | None = None             # vif ioemu
    model: str | None = None
    vifname: str | None = None
    script: str | None = None
    backend: str | None = None
    gatewaydev: str | None = None
    mtu: int | None = None
    trusted: bool | None = None

    @classmethod
    def parse(cls, spec: str, *, devid: int = 0, location: Location | None = None,
              warn: Warn | None = None) -> "VifSpec":
        """Parse ``key=value,...``; ``warn`` receives notes on keys Hospes ignores."""
        def fail(message: str) -> ConfigError:
            return ConfigError(f"Bad vif specification {spec!r}: {message}", location)

        def note(message: str) -> None:
            if warn is not None:
                warn(f"{location}: {message}" if location is not None else message)

        values: dict[str, Any] = {"devid": devid}
        for token in spec.split(","):
            token = token.lstrip(" ")
            if not token:
                continue
            if token in ("trusted", "untrusted"):
                values["trusted"] = token == "trusted"
                continue
            key, equals, arg = token.partition("=")
            if not equals:
                raise fail(f"unknown parameter {token!r}: parameters are key=value")
            if key in ("bridge", "ip", "script", "backend", "vifname", "model", "gatewaydev"):
                values[key] = arg
            elif key == "netdev":
                note("vif parameter 'netdev' is deprecated: use gatewaydev")
                values["gatewaydev"] = arg
            elif key == "type":
                if arg not in ("vif", "ioemu"):
                    raise fail(f"unknown type {arg!r}; it is vif or ioemu")
                values["type"] = arg
            elif key == "mac":
                if not _MAC_RE.fullmatch(arg):
                    raise fail(f"invalid mac {arg!r}: give six hex pairs, e.g. 00:16:3e:12:34:56")
                values["mac"] = ":".join(f"{int(b, 16):02x}" for b in re.split("[:-]", arg))
            elif key == "rate":
                try:
                    values["rate"] = VifRate.parse(arg)
                except ValueError as e:
                    raise fail(str(e)) from None
            elif key in ("devid", "mtu"):
                if not re.fullmatch(r"[0-9]+", arg):
                    raise fail(f"{key} must be a decimal number, not {arg!r}")
                n = int(arg)
                if key == "mtu" and not 68 <= n <= 65535:
                    raise fail(f"mtu {n} is out of range: it is between 68 and 65535")
                if key == "devid" and n > UINT32_MAX:
                    raise fail(f"devid {n} is out of range")
                values[key] = n
            elif key in _VIF_UNSUPPORTED or key.startswith("colo_"):
                note(f"vif parameter '{key}' is not supported yet; it is ignored")
            else:
                raise fail(f"unknown parameter {key!r}: it is not one of mac, bridge, ip, rate, "
                           "type, model, vifname, script, backend, gatewaydev, mtu, devid or the "
                           "flags trusted, untrusted")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VifSpec":
        known = _known_fields(cls, data)
        if known.get("rate") is not None:
            known["rate"] = VifRate(**known["rate"])
        return cls(**known)


def _known_fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


# =========================================================================== the domain

_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_CPU_ITEM_RE = re.compile(r"(\^?)(?:nodes?:)?(?:(all)|([0-9]+)(?:-([0-9]+))?)")


def _check_cpulist(text: str, location: Location) -> None:
    """A CPULIST as xl's parse_cpurange reads it: items split at ",", empty ones skipped."""
    for item in filter(None, text.split(",")):
        m = _CPU_ITEM_RE.fullmatch(item)
        if (m is None or (m.group(1) and m.group(2))
                or (m.group(4) is not None and int(m.group(4)) < int(m.group(3)))):
            within = f" in {text!r}" if item != text else ""
            raise ConfigError(f"Invalid CPU list item {item!r}{within}: write e.g. \"all\", "
                              "\"0-3,^1\" or \"nodes:0\"", location)


@dataclass(frozen=True, kw_only=True)
class DomainSpec:
    """A validated xl domain configuration; see the module docstring for keys and defaults.

    ``kernel``/``ramdisk`` are joined to the config file's directory when they are
    relative and it is known, else as written; or ``DEFAULT_IMAGE``. ``extra_keys`` holds the keys Hospes
    does not implement, as plain values (lists as tuples), in source order.
    ``warnings`` are ``location: message`` lines for people; they take no part in
    equality.
    """

    name: str
    kernel: str
    uuid: str | None = None
    type: str = "pv"
    memory: int = DEFAULT_MEMORY_MIB
    maxmem: int = DEFAULT_MEMORY_MIB
    vcpus: int = 1
    maxvcpus: int = 1
    cpus: str | tuple[str, ...] | None = None
    cpu_weight: int = DEFAULT_CPU_WEIGHT
    cap: int = 0
    ramdisk: str | None = None
    cmdline: str | None = None
    disks: tuple[DiskSpec, ...] = ()
    vifs: tuple[VifSpec, ...] = ()
    bootloader: str | None = None
    bootloader_args: tuple[str, ...] = ()
    on_poweroff: Action = Action.DESTROY
    on_reboot: Action = Action.RESTART
    on_crash: Action = Action.DESTROY
    on_watchdog: Action = Action.DESTROY
    on_soft_reset: Action = Action.SOFT_RESET
    extra_keys: tuple[tuple[str, Frozen], ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or isinstance(value, bool)):
                problems.append(f"{f.name} is {value!r}, not an integer")
            elif ((f.type == "str" and not isinstance(value, str))
                  or (f.type == "str | None" and not isinstance(value, (str, type(None))))):
                problems.append(f"{f.name} is {value!r}, not text")
        if problems:
            raise ConfigError(f"Invalid domain spec: {'; '.join(problems)}")
        if self.type != "pv":
            problems.append(f"type {self.type!r} is not supported")
        if not self.name:
            problems.append("the name is empty")
        if not self.kernel and self.bootloader is None:
            problems.append("there is no kernel")
        if self.bootloader is not None and not self.disks:
            problems.append("the bootloader has no disk to read")
        if not 1 <= self.memory <= self.maxmem:
            problems.append(f"memory {self.memory} / maxmem {self.maxmem} MiB are inconsistent")
        if not 1 <= self.vcpus <= self.maxvcpus:
            problems.append(f"vcpus {self.vcpus} / maxvcpus {self.maxvcpus} are inconsistent")
        if not 1 <= self.cpu_weight <= MAX_SCHED_PARAM or not 0 <= self.cap <= MAX_SCHED_PARAM:
            problems.append("cpu_weight or cap is out of range")
        if problems:
            raise ConfigError(f"Invalid domain spec for {self.name!r}: {'; '.join(problems)}")

    @property
    def uses_default_kernel(self) -> bool:
        return self.kernel == DEFAULT_IMAGE

    @property
    def uses_default_ramdisk(self) -> bool:
        return self.ramdisk == DEFAULT_IMAGE

    @classmethod
    def from_config(cls, values: Mapping[str, Any], overrides: Sequence[str] = (),
                    base_dir: Path | None = None, *, source: str = "<config>") -> "DomainSpec":
        """Validate parsed settings (``xlcfg.parse`` output, or plain str/int/list values).

        ``overrides`` are ``xl create``'s trailing ``KEY=VALUE`` arguments, applied
        after ``values``. Relative kernel/ramdisk paths are joined to ``base_dir``
        when it is given. ``source`` names the file in errors that have no better
        location (a missing key). Raises :class:`ConfigError`.
        """
        vals = {k: from_plain(v, Location(source)) for k, v in values.items()}
        if overrides:
            vals = parse_overrides(overrides, vals)
        return _Reader(vals, base_dir, source).spec()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_dict(to_dict())`` gives an equal spec."""
        d: dict[str, Any] = {"format": SPEC_FORMAT}
        for f in fields(self):
            d[f.name] = getattr(self, f.name)
        d["cpus"] = list(self.cpus) if isinstance(self.cpus, tuple) else self.cpus
        d["disks"] = [disk.to_dict() for disk in self.disks]
        d["vifs"] = [vif.to_dict() for vif in self.vifs]
        for key in DEFAULT_ACTIONS:
            d[key] = str(d[key])
        d["extra_keys"] = {k: _thaw(v) for k, v in self.extra_keys}
        d["warnings"] = list(self.warnings)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DomainSpec":
        """Rebuild a spec from ``to_dict()`` output; unknown fields are ignored.

        Fields left out (or null) take their defaults, and as in a config file a
        missing ``maxmem``/``memory`` follows the other and ``maxvcpus`` follows
        ``vcpus``. Raises :class:`ConfigError` for anything inconsistent.
        """
        if data.get("format") != SPEC_FORMAT:
            raise ConfigError(f"Unsupported domain spec format {data.get('format')!r}: this "
                              f"Hospes reads format {SPEC_FORMAT}")
        known = {k: v for k, v in _known_fields(cls, data).items() if v is not None}
        for key, other in (("maxmem", "memory"), ("memory", "maxmem"), ("maxvcpus", "vcpus")):
            if key not in known and other in known:
                known[key] = known[other]
        try:
            if isinstance(known.get("cpus"), list):
                known["cpus"] = tuple(known["cpus"])
            known["disks"] = tuple(DiskSpec.from_dict(d) for d in known.get("disks", ()))
            known["vifs"] = tuple(VifSpec.from_dict(v) for v in known.get("vifs", ()))
            known["bootloader_args"] = tuple(str(a) for a in known.get("bootloader_args", ()))
            for key in DEFAULT_ACTIONS:
                if key in known:
                    known[key] = Action(known[key])
            known["extra_keys"] = tuple((k, _freeze(v))
                                        for k, v in dict(known.get("extra_keys", {})).items())
            known["warnings"] = tuple(known.get("warnings", ()))
            return cls(**known)
        except (TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"Corrupt domain spec: {e}") from None


class _Reader:
    """Reads one configuration into a DomainSpec, collecting warnings."""

    def __init__(self, values: dict[str, Value], base_dir: Path | None, source: str) -> None:
        self.values = values
        self.base_dir = base_dir
        self.source = source
        self.warnings: list[str] = []

    def get(self, key: str) -> Value | None:
        return self.values.get(key)

    def string(self, key: str) -> str | None:
        v = self.get(key)
        return None if v is None else as_str(v, key)

    def number(self, key: str, minimum: int | None = None,
               maximum: int | None = None) -> int | None:
        v = self.get(key)
        return None if v is None else as_int(v, key, minimum, maximum)

    def where(self, key: str) -> Location:
        v = self.get(key)
        return v.location if v is not None else Location(self.source)

    def spec(self) -> DomainSpec:
        kw: dict[str, Any] = {"type": self.domain_type()}
        name = self.string("name")
        if name is None:
            raise ConfigError("Domain name must be specified: add name = \"...\"",
                              Location(self.source))
        if not name or any(ord(c) < 32 or c == "\x7f" for c in name):
            raise ConfigError("The domain name must be non-empty text without control characters",
                              self.where("name"))
        kw["name"] = name
        uuid = self.string("uuid")
        if uuid is not None:
            if not _UUID_RE.fullmatch(uuid):
                raise ConfigError(f"Failed to parse UUID {uuid!r}: write "
                                  "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", self.where("uuid"))
            kw["uuid"] = uuid.lower()
        kw.update(self.memory())
        kw.update(self.vcpus())
        kw["cpu_weight"] = self.number("cpu_weight", 1, MAX_SCHED_PARAM) or DEFAULT_CPU_WEIGHT
        kw["cap"] = self.number("cap", 0, MAX_SCHED_PARAM) or 0
        kw["bootloader"], kw["bootloader_args"] = self.bootloader()
        if kw["bootloader"] is not None:   # kernel and ramdisk are paths inside the guest's disk
            kw["kernel"], kw["ramdisk"] = self.string("kernel") or "", self.string("ramdisk")
        else:
            kw["kernel"], kw["ramdisk"] = self.image("kernel"), self.image("ramdisk")
        if kw["kernel"] is None:
            raise ConfigError("No kernel given: add kernel = \"/path/to/vmlinuz\", "
                              f"kernel = \"{DEFAULT_IMAGE}\" for the image `hospes image` "
                              "builds, or bootloader = \"pygrub\" to boot the kernel installed "
                              "in the first disk", Location(self.source))
        kw["cmdline"] = self.cmdline()
        kw["disks"] = self.disks()
        if kw["bootloader"] is not None and not kw["disks"]:
            raise ConfigError("bootloader = \"pygrub\" reads the kernel from the first disk, and "
                              "there is none: add disk = [\"/path/to/disk.img,raw,xvda,rw\"]",
                              self.where("bootloader"))
        kw["vifs"] = self.vifs()
        for key, default in DEFAULT_ACTIONS.items():
            kw[key] = self.action(key, default)
        kw["extra_keys"] = self.extra_keys()
        kw["warnings"] = tuple(self.warnings)
        return DomainSpec(**kw)

    def domain_type(self) -> str:
        kind = self.string("type")
        builder = self.string("builder")
        if builder is not None:
            old = {"generic": "pv", "hvm": "hvm"}.get(builder)
            if old is None:
                raise ConfigError(f"Invalid builder {builder!r}: it is \"generic\" or \"hvm\" "
                                  "(deprecated; use type = \"pv\")", self.where("builder"))
            if kind is not None and kind != old:
                raise ConfigError("Contradicting \"builder\" and \"type\" options: remove builder",
                                  self.where("builder"))
            kind = old
        kind = "pv" if kind is None else kind
        if kind in ("pvh", "hvm"):
            key = "type" if "type" in self.values else "builder"
            raise ConfigError(f"Domain type {kind!r} is not supported yet: Hospes runs PV "
                              "guests; use type = \"pv\"", self.where(key))
        if kind != "pv":
            raise ConfigError(f"Invalid domain type {kind!r}: xl knows pv, pvh and hvm, and "
                              "Hospes runs pv", self.where("type"))
        return kind

    def memory(self) -> dict[str, int]:
        memory = self.number("memory", 1, LONG_MIB)
        maxmem = self.number("maxmem", 1, LONG_MIB)
        if memory is None and maxmem is None:
            memory = maxmem = DEFAULT_MEMORY_MIB
        memory = maxmem if memory is None else memory
        maxmem = memory if maxmem is None else maxmem
        assert memory is not None and maxmem is not None
        if maxmem < memory:
            raise ConfigError(f"maxmem ({maxmem} MiB) must be equal to or greater than memory "
                              f"({memory} MiB)", self.where("maxmem"))
        return {"memory": memory, "maxmem": maxmem}

    def vcpus(self) -> dict[str, Any]:
        vcpus = self.number("vcpus", 1) or 1
        maxvcpus = self.number("maxvcpus", 1)
        maxvcpus = vcpus if maxvcpus is None else maxvcpus
        if maxvcpus < vcpus:
            raise ConfigError(f"maxvcpus ({maxvcpus}) is less than vcpus ({vcpus}): raise "
                              "maxvcpus or lower vcpus", self.where("maxvcpus"))
        cpus: str | tuple[str, ...] | None = None
        v = self.get("cpus")
        if isinstance(v, List):
            items = as_str_list(v, "cpus")
            for text, location in items:
                _check_cpulist(text, location)
            cpus = tuple(text for text, _ in items)
        elif v is not None:
            cpus = as_str(v, "cpus")
            _check_cpulist(cpus, v.location)
        return {"vcpus": vcpus, "maxvcpus": maxvcpus, "cpus": cpus}

    def image(self, key: str) -> str | None:
        path = self.string(key)
        if path is None or path == DEFAULT_IMAGE:
            return path
        if not path:
            raise ConfigError(f"'{key}' is empty: give a path", self.where(key))
        if path.startswith("@"):
            raise ConfigError(f"Unknown image marker {path!r}: the only one is \"{DEFAULT_IMAGE}\" "
                              "(the image `hospes image` builds)", self.where(key))
        if self.base_dir is not None and not Path(path).is_absolute():
            return str(self.base_dir / path)
        return path

    def bootloader(self) -> tuple[str | None, tuple[str, ...]]:
        name = self.string("bootloader")
        args: tuple[str, ...] = ()
        v = self.get("bootloader_args")
        if isinstance(v, List):
            args = tuple(text for text, _ in as_str_list(v, "bootloader_args"))
        elif v is not None:
            args = tuple(as_str(v, "bootloader_args").split())
        if name is None:
            if args:
                self.warnings.append(f"{self.where('bootloader_args')}: bootloader_args without "
                                     "bootloader is ignored")
            return None, ()
        if Path(name).name != "pygrub":
            raise ConfigError(f"Bootloader {name!r} is not supported: Hospes has pygrub built in; "
                              "write bootloader = \"pygrub\"", self.where("bootloader"))
        from hospes.bootloader.pygrub import PygrubArgs   # checks the arguments now, not at boot
        from hospes.errors import HospesError
        try:
            PygrubArgs.parse(args)
        except HospesError as e:
            raise ConfigError(str(e), self.where("bootloader_args")) from None
        return "pygrub", args

    def cmdline(self) -> str | None:
        cmdline, root, extra = self.string("cmdline"), self.string("root"), self.string("extra")
        if cmdline is not None:
            if root is not None or extra is not None:
                self.warnings.append(f"{self.where('cmdline')}: root= and extra= are ignored in "
                                     "favour of cmdline=")
            return cmdline
        if root is not None and extra is not None:
            return f"root={root} {extra}"
        if root is not None:
            return f"root={root}"
        return extra

    def disks(self) -> tuple[DiskSpec, ...]:
        v = self.get("disk")
        if v is None:
            return ()
        return tuple(DiskSpec.parse(text, location) for text, location in as_str_list(v, "disk"))

    def vifs(self) -> tuple[VifSpec, ...]:
        v = self.get("vif")
        if v is None:
            return ()
        vifs: list[VifSpec] = []
        seen: dict[int, Location | None] = {}
        for index, (text, location) in enumerate(as_str_list(v, "vif")):
            vif = VifSpec.parse(text, devid=index, location=location, warn=self.warnings.append)
            if vif.devid in seen:
                raise ConfigError(f"vif devid {vif.devid} is used twice (also at "
                                  f"{seen[vif.devid]})", location)
            seen[vif.devid] = location
            vifs.append(vif)
        return tuple(vifs)

    def action(self, key: str, default: Action) -> Action:
        name = self.string(key)
        if name is None:
            return default
        try:
            return Action(name)
        except ValueError:
            raise ConfigError(f"Unknown {key} action {name!r}: it is one of "
                              f"{', '.join(a.value for a in Action)}", self.where(key)) from None

    def extra_keys(self) -> tuple[tuple[str, Frozen], ...]:
        out = []
        for key, value in self.values.items():
            if key in IMPLEMENTED_KEYS:
                continue
            if key in XL_KEYS:
                self.warnings.append(f"{value.location}: '{key}' is not supported yet; it is "
                                     "ignored")
            else:
                close = difflib.get_close_matches(key, IMPLEMENTED_KEYS | XL_KEYS, n=1, cutoff=0.75)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.warnings.append(f"{value.location}: unknown key '{key}' is ignored{hint}")
            out.append((key, _freeze(to_plain(value))))
        return tuple(out)


def load_spec(path: Path | str, overrides: Sequence[str] = ()) -> DomainSpec:
    """Read, parse and validate the xl config file at ``path`` (plus ``xl create`` overrides).

    Relative kernel/ramdisk paths are taken from the file's directory.
    """
    path = Path(path)
    try:
        text = read_regular(path, "config file", MAX_CONFIG_BYTES).decode("utf-8")
    except FileReadError as e:
        raise ConfigError(str(e)) from None
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist: check the path") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {path} is not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"Cannot read config file {path}: {e.strerror}") from None
    values = parse(text, str(path))
    return DomainSpec.from_config(values, overrides, base_dir=path.absolute().parent,
                                  source=str(path))


_MEM_SHIFT = {"t": 30, "g": 20, "m": 10, "": 10, "k": 0}


def parse_mem_size_kb(text: str) -> int:
    """A size in xl's syntax (``xl mem-set``'s parse_mem_size_kb), in KiB: a decimal
    number with an optional suffix b, k, m, g or t (either case); no suffix means MiB."""
    t = text.strip()
    digits = t.rstrip("bBkKmMgGtT")
    suffix = t[len(digits):].lower()
    if not digits.isdecimal() or not digits.isascii() or len(suffix) > 1:
        raise HospesError(f"invalid memory size: {text!r} (give a number with an optional b, k, m, g or t "
                          "suffix; no suffix means MiB)")
    n = int(digits)
    return n >> 10 if suffix == "b" else n << _MEM_SHIFT[suffix]


__all__ = [
    "parse_mem_size_kb",
    "Action", "DEFAULT_ACTIONS", "DEFAULT_IMAGE", "DEFAULT_IMAGE_CMDLINE", "DEFAULT_MEMORY_MIB", "DiskSpec",
    "DomainSpec",
    "IMPLEMENTED_KEYS", "SPEC_FORMAT", "VifRate", "VifSpec", "XL_KEYS", "load_spec",
]
