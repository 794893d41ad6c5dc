"""Assemble the default initramfs: busybox, /init and the kernel's Xen frontend modules.

Debian's cloud kernel builds the Xen PV *core* in (event channels, xenbus, the hvc
console, the balloon), but the block and network frontends are modules, so a guest
that should see its disks and NICs needs them in the initramfs. The package ships no
``modules.dep`` (``depmod`` runs at install time, and we never install), so the
dependencies are read from each module's ``.modinfo`` ELF section, which is where
``depmod`` reads them too. Modules compressed by the package (``.ko.xz``/``.ko.zst``/
``.ko.gz``) are stored decompressed, because busybox ``insmod`` may lack the
decompressor. /init loads them from a list in dependency order
(``/etc/hospes/modules``); a generated ``modules.dep`` lets ``modprobe`` work too.

The /init contract -- including the ``hospes.cmd=<base64>`` token that
:func:`encode_command` produces -- is documented at the top of ``init.sh``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import lzma
import shlex
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import zstandard

from hospes.images.cache import ImagesError
from hospes.images.cpio import CpioArchive

#: Modules a Xen PV domU frontend cannot do without (error if neither module nor built-in).
REQUIRED_MODULES = ("xen-blkfront", "xen-netfront")
#: Helpful if the kernel has them as modules (/dev/xen/evtchn, /proc/xen); absence is fine.
OPTIONAL_MODULES = ("xen-evtchn", "xenfs")

MODULE_LIST = "etc/hospes/modules"

#: Applets /init runs before ``busybox --install -s`` links the rest.
BOOT_APPLETS = ("sh", "mount", "mkdir", "hostname", "insmod", "cat", "base64",
                "setsid", "cttyhack", "sync", "poweroff", "reboot")

#: Static nodes for the kernel's initial console and for a kernel without devtmpfs.
DEVICE_NODES = (("dev/console", "c", 5, 1, 0o600),
                ("dev/hvc0", "c", 229, 0, 0o600),
                ("dev/null", "c", 1, 3, 0o666))

DIRECTORIES = (("bin", 0o755), ("sbin", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755),
               ("dev", 0o755), ("dev/pts", 0o755), ("proc", 0o555), ("sys", 0o555),
               ("etc", 0o755), ("root", 0o700), ("tmp", 0o1777), ("run", 0o755),
               ("mnt", 0o755))

_DECOMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    ".ko": lambda data: data,
    ".ko.xz": lzma.decompress,
    ".ko.zst": lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data),
    ".ko.gz": gzip.decompress,
}

COMMAND_PARAM = "hospes.cmd"


def encode_command(argv: Sequence[str]) -> str:
    """Return the kernel command-line token that makes /init run ``argv``.

    Each argument is shell-quoted and the result base64-encoded, so the token has no
    spaces and survives the kernel's command-line splitting. Mind the length: Xen PV
    command lines hold at most 1023 bytes in total.
    """
    if not argv:
        raise ValueError("encode_command needs at least one argument")
    command = shlex.join(argv)
    return f"{COMMAND_PARAM}={base64.b64encode(command.encode()).decode('ascii')}"


def init_script() -> bytes:
    """Return the bytes of /init (``init.sh``, shipped as package data)."""
    return resources.files("hospes.images").joinpath("init.sh").read_bytes()


def init_script_digest() -> str:
    """SHA-256 of /init: part of the cache key, so editing init.sh rebuilds images."""
    return hashlib.sha256(init_script()).hexdigest()


@dataclass(frozen=True)
class Initramfs:
    data: bytes
    modules: tuple[str, ...]  # in load order


def build_initramfs(busybox: Path, modules_dir: Path, release: str) -> Initramfs:
    """Build the initramfs from a ``busybox-static`` binary and an unpacked module tree.

    ``modules_dir`` is the package's ``lib/modules/<release>``. Missing optional
    modules are skipped; missing required ones raise :class:`ImagesError`.
    """
    archive = CpioArchive()
    for name, mode in DIRECTORIES:
        archive.add_dir(name, mode)
    for name, kind, major, minor, mode in DEVICE_NODES:
        archive.add_device(name, kind, major, minor, mode)
    archive.add_file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in BOOT_APPLETS:
        archive.add_symlink(f"bin/{applet}", "busybox")
    archive.add_file("init", init_script(), 0o755)

    tree = ModuleTree(modules_dir)
    missing = [n for n in REQUIRED_MODULES if n not in tree and not tree.is_builtin(n)]
    if missing:
        raise ImagesError(f"Kernel {release} has neither a module nor a built-in driver for "
                          f"{', '.join(missing)}; it cannot run as a Hospes guest.")
    order = tree.load_order(n for n in REQUIRED_MODULES + OPTIONAL_MODULES if n in tree)

    base = f"lib/modules/{release}"
    dep_lines = []
    for name in order:
        archive.add_file(f"{base}/{tree.dest_path(name)}", tree.data(name))
        # modules.dep lists a module's dependencies in reverse load order.
        deps = [tree.dest_path(d) for d in reversed(tree.load_order([name])[:-1])]
        dep_lines.append(" ".join([f"{tree.dest_path(name)}:", *deps]) + "\n")
    archive.add_file(f"{base}/modules.dep", "".join(dep_lines).encode())
    archive.add_file(MODULE_LIST, "".join(f"/{base}/{tree.dest_path(n)}\n"
                                          for n in order).encode())
    return Initramfs(archive.to_bytes(), tuple(tree.display_name(n) for n in order))


class ModuleTree:
    """The modules of one unpacked kernel package (``lib/modules/<release>``).

    Names are accepted with ``-`` or ``_`` (the kernel treats them alike). Module
    contents and dependencies are read lazily: only the few modules the initramfs
    carries are ever opened.
    """

    def __init__(self, modules_dir: Path) -> None:
        self.dir = modules_dir
        self._files: dict[str, tuple[Path, str]] = {}  # name -> (file, compression suffix)
        for file in sorted((modules_dir / "kernel").rglob("*.ko*")):
            suffix = next((s for s in _DECOMPRESSORS if file.name.endswith(s)), None)
            if suffix is not None and file.is_file():
                self._files[_norm(file.name[: -len(suffix)])] = (file, suffix)
        self._builtin = _read_builtin(modules_dir)
        self._data: dict[str, bytes] = {}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _norm(name) in self._files

    def is_builtin(self, name: str) -> bool:
        return _norm(name) in self._builtin

    def display_name(self, name: str) -> str:
        """The module's file name without suffix, e.g. ``xen-blkfront``."""
        file, suffix = self._files[_norm(name)]
        return file.name[: -len(suffix)]

    def dest_path(self, name: str) -> str:
        """Path of the decompressed module relative to ``lib/modules/<release>``."""
        file, suffix = self._files[_norm(name)]
        rel = file.relative_to(self.dir).as_posix()
        return rel[: -len(suffix)] + ".ko"

    def data(self, name: str) -> bytes:
        """The module's bytes, decompressed."""
        key = _norm(name)
        if key not in self._data:
            file, suffix = self._files[key]
            self._data[key] = _DECOMPRESSORS[suffix](file.read_bytes())
        return self._data[key]

    def depends(self, name: str) -> tuple[str, ...]:
        value = modinfo(self.data(name)).get("depends", "")
        return tuple(_norm(d) for d in value.split(",") if d)

    def load_order(self, names: Iterable[str]) -> list[str]:
        """The modules ``names`` need (themselves included), dependencies first."""
        order: list[str] = []
        state: dict[str, str] = {}

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if state.get(name) == "done":
                return
            if state.get(name) == "active":
                raise ImagesError(f"Module dependency cycle: {' -> '.join(chain + (name,))}.")
            if name not in self._files:
                raise ImagesError(f"Module {chain[-1] if chain else name} needs {name}, "
                                  "which the kernel package does not ship.")
            state[name] = "active"
            for dep in self.depends(name):
                visit(dep, chain + (name,))
            state[name] = "done"
            order.append(name)

        for name in names:
            visit(_norm(name), ())
        return order


def modinfo(module: bytes) -> dict[str, str]:
    """Parse the ``.modinfo`` section of an ELF64 little-endian kernel module.

    The section is a sequence of NUL-terminated ``key=value`` strings; ``depends``
    is a comma-separated list of module names (what ``depmod`` reads).
    """
    if len(module) < 0x40 or module[:4] != b"\x7fELF" or module[4] != 2 or module[5] != 1:
        raise ImagesError("A kernel module is not an ELF64 little-endian file; "
                          "the package may be corrupt (try --rebuild).")
    shoff, = struct.unpack_from("<Q", module, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", module, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", module, shoff + index * shentsize)
        return name, offset, size

    _, str_offset, str_size = section(shstrndx)
    names = module[str_offset:str_offset + str_size]
    for i in range(shnum):
        name_off, offset, size = section(i)
        if names[name_off:names.find(b"\0", name_off)] == b".modinfo":
            info: dict[str, str] = {}
            for item in module[offset:offset + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, value)
            return info
    return {}


def _read_builtin(modules_dir: Path) -> set[str]:
    """Names of drivers compiled into the kernel (``modules.builtin``), normalised."""
    try:
        text = (modules_dir / "modules.builtin").read_text()
    except OSError:
        return set()
    return {_norm(Path(line.strip()).name.removesuffix(".ko")) for line in text.splitlines()
            if line.strip()}


def _norm(name: str) -> str:
    return name.replace("-", "_")
