"""pygrub: pick the kernel, initrd and command line a disk image boots, from inside the image.

Xen's ``bootloader = "pygrub"`` lets a guest boot the kernel installed in its own
disk, so a kernel update in the guest takes effect at its next boot. This does
the same, read-only and without mounting (:mod:`.diskimage`), in this order:

1. ``--kernel=PATH`` given (xl.cfg's ``kernel`` with a bootloader, or
   ``bootloader_args``): that file, with ``--ramdisk=PATH`` if given;
2. GRUB's configuration, the first of :data:`GRUB_CONFIGS` found on the image's
   filesystems (whole disk, or MBR/GPT partitions in order): its default entry,
   or the one ``--entry=`` names (:mod:`.grubcfg`);
3. the ``/vmlinuz`` and ``/initrd.img`` links Debian's kernel packages maintain
   (also under ``/boot``), with ``root=`` the device of that filesystem.

``--args=TEXT`` (xl.cfg's ``cmdline``/``root``/``extra``) is appended to the
entry's command line, as pygrub does; ``BOOT_IMAGE=`` the entry's kernel path comes
first, as GRUB puts it there (the guest sees in /proc/cmdline which file booted).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hospes.bootloader.diskimage import DiskImageError, Filesystem, Region, find_filesystems, open_image
from hospes.bootloader.grubcfg import GrubConfigError, parse, parse_grubenv
from hospes.errors import HospesError

#: Where GRUB keeps its configuration: on the root filesystem, or on a /boot of its own.
GRUB_CONFIGS = ("/boot/grub/grub.cfg", "/grub/grub.cfg", "/boot/grub2/grub.cfg", "/grub2/grub.cfg")
#: Kernel/initrd links when there is no GRUB configuration (Debian's kernel postinst makes them).
LINKS = (("/vmlinuz", "/initrd.img"), ("/boot/vmlinuz", "/boot/initrd.img"))
#: What the fallback adds after root=: read-only root until fsck, console on Xen's.
FALLBACK_ARGS = "ro console=hvc0"
#: The largest grub.cfg read (Debian's with ten kernels has ~40 KiB): running a bigger one
#: would hold up the toolstack for seconds.
MAX_GRUB_CFG = 1 << 20
#: Names that select this bootloader in xl.cfg (xl takes a name or a path to pygrub).
NAMES = frozenset({"pygrub"})


class BootloaderError(HospesError):
    """The bootloader found nothing to boot; the message says what it looked for."""


@dataclass(frozen=True)
class PygrubArgs:
    """pygrub's options that choose what boots (``bootloader_args`` and xl.cfg's keys)."""

    entry: str | None = None
    kernel: str | None = None
    ramdisk: str | None = None
    args: str | None = None

    @classmethod
    def parse(cls, argv: Sequence[str]) -> "PygrubArgs":
        """``--entry=N``, ``--kernel=PATH``, ``--ramdisk=PATH``, ``--args=TEXT`` (also as two words);
        ``-q``/``--quiet``/``--not-really`` are accepted and mean nothing here."""
        values: dict[str, str] = {}
        items = list(argv)
        while items:
            item = items.pop(0)
            if item in ("-q", "--quiet", "--not-really", "-n"):
                continue
            name, eq, value = item.partition("=")
            key = name.removeprefix("--")
            if not name.startswith("--") or key not in ("entry", "kernel", "ramdisk", "args"):
                raise BootloaderError(f"Unknown pygrub argument {item!r}: Hospes' pygrub takes --entry=N|TITLE, "
                                      "--kernel=PATH, --ramdisk=PATH and --args=TEXT.")
            if not eq:
                if not items:
                    raise BootloaderError(f"pygrub argument {name} needs a value.")
                value = items.pop(0)
            values[key] = value
        return cls(**values)

    def merged(self, other: "PygrubArgs") -> "PygrubArgs":
        """These arguments with ``other``'s where it gives some."""
        return PygrubArgs(entry=other.entry or self.entry, kernel=other.kernel or self.kernel,
                          ramdisk=other.ramdisk or self.ramdisk, args=other.args or self.args)


@dataclass(frozen=True)
class BootChoice:
    """What to boot, read out of the image."""

    kernel: bytes
    ramdisk: bytes | None
    cmdline: str
    kernel_path: str           # as found in the image, symlinks resolved
    ramdisk_path: str | None
    source: str                # e.g. "entry 0 'Debian GNU/Linux' of /boot/grub/grub.cfg in partition 1 of x.img"


def choose(image: Path, args: PygrubArgs | None = None) -> BootChoice:
    """Read ``image`` and return what it boots; BootloaderError says what is missing."""
    args = args or PygrubArgs()
    try:
        with open_image(image) as f:
            filesystems = [Filesystem(f, region) for region in find_filesystems(f, str(image))]
            if args.kernel:
                return _explicit(filesystems, args)
            for fs in filesystems:
                for config in GRUB_CONFIGS:
                    if fs.exists(config):
                        return _from_grub(fs, config, args)
            for fs in filesystems:
                for kernel, initrd in LINKS:
                    if fs.exists(kernel):
                        return _load(fs, kernel, initrd if fs.exists(initrd) else None,
                                     _join(f"root={_root_device(fs.region)} {FALLBACK_ARGS}",
                                           args.args), f"the {kernel} link in {fs.region.name}")
    except DiskImageError as e:
        raise BootloaderError(str(e)) from e
    places = ", ".join(fs.region.name for fs in filesystems)
    looked = ", ".join(GRUB_CONFIGS + tuple(k for k, _ in LINKS))
    raise BootloaderError(f"No kernel to boot in {image}: none of {looked} is on {places}. Install a kernel in "
                          "the image (e.g. linux-image-cloud-amd64) or give one with bootloader_args = "
                          "[\"--kernel=/boot/vmlinuz-...\"].")


def _explicit(filesystems: list[Filesystem], args: PygrubArgs) -> BootChoice:
    assert args.kernel is not None
    fs = next((fs for fs in filesystems if fs.exists(args.kernel)), filesystems[0])
    return _load(fs, args.kernel, args.ramdisk, args.args or "", f"--kernel={args.kernel}")


def _from_grub(fs: Filesystem, config: str, args: PygrubArgs) -> BootChoice:
    where = f"{config} in {fs.region.name}"
    found = fs.stat(config)
    if found is not None and found[1] > MAX_GRUB_CFG:
        raise BootloaderError(f"{where} has {found[1]} bytes; a GRUB configuration has a few KiB (at most "
                              f"{MAX_GRUB_CFG >> 20} MiB are read).")
    text = fs.read(config, "GRUB configuration").decode("utf-8", "replace")
    env_path = posixpath.join(posixpath.dirname(config), "grubenv")
    env = parse_grubenv(fs.read(env_path, "grubenv").decode("utf-8", "replace")) if fs.exists(env_path) else {}
    try:
        entry = parse(text, env, fs.stat, posixpath.dirname(config)).select(args.entry)
    except GrubConfigError as e:
        raise BootloaderError(f"{where}: {e}") from e
    if not entry.kernel:
        raise BootloaderError(f"{where}: entry {entry.index} {entry.title!r} has no kernel path on its linux line.")
    for path, what in [(entry.kernel, "kernel")] + [(p, "initrd") for p in entry.initrds]:
        if not fs.exists(path):
            raise BootloaderError(f"{where}: entry {entry.index} {entry.title!r} loads the {what} {path}, which "
                                  f"does not exist in {fs.region.name}.")
    ramdisk_path = entry.initrds[0] if len(entry.initrds) == 1 else None
    # GRUB tells the kernel which file it loaded, first on the command line.
    choice = _load(fs, entry.kernel, ramdisk_path, _join(f"BOOT_IMAGE={entry.kernel}", entry.args, args.args),
                   f"entry {entry.index} {entry.title!r} of {where}")
    if len(entry.initrds) > 1:   # GRUB concatenates several initrds (microcode first)
        data = b"".join(fs.read(p, "initrd") for p in entry.initrds)
        choice = BootChoice(choice.kernel, data, choice.cmdline, choice.kernel_path, " + ".join(entry.initrds),
                            choice.source)
    return choice


def _load(fs: Filesystem, kernel: str, ramdisk: str | None, cmdline: str, source: str) -> BootChoice:
    kernel_data = fs.read(kernel, "kernel")
    ramdisk_data = fs.read(ramdisk, "initrd") if ramdisk else None
    return BootChoice(kernel_data, ramdisk_data, cmdline.strip(), fs.resolve(kernel),
                      fs.resolve(ramdisk) if ramdisk else None, source)


def _root_device(region: Region) -> str:
    """The guest's name of the filesystem's device: xvda for a whole disk, xvdaN for partition N."""
    name = region.name
    if name.startswith("partition "):
        return f"/dev/xvda{name.split()[1]}"
    return "/dev/xvda"


def _join(*parts: str | None) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


# --- handing the files to the domain builder ---------------------------------------------------


class ExtractedFiles:
    """The chosen kernel and initrd as memory files, named ``/proc/self/fd/N`` for the builder.

    They live in memory only (memfd), so nothing is left on disk whatever becomes of
    the process; :meth:`close` (or the next :func:`extract` for the same key) frees them.
    """

    def __init__(self, choice: BootChoice) -> None:
        self.fds: list[int] = []
        self.kernel = self._file("pygrub-kernel", choice.kernel)
        self.ramdisk = self._file("pygrub-initrd", choice.ramdisk) if choice.ramdisk is not None else None
        self.cmdline = choice.cmdline
        self.choice = choice

    def _file(self, name: str, data: bytes) -> Path:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self.fds.append(fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        return Path(f"/proc/{os.getpid()}/fd/{fd}")

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


_current: dict[object, ExtractedFiles] = {}


def extract(image: Path, args: PygrubArgs, key: object) -> ExtractedFiles:
    """Choose what ``image`` boots and keep it in memory files until the next call with ``key``
    (a domain's id: each boot of it replaces the files of the one before)."""
    files = ExtractedFiles(choose(image, args))
    old = _current.pop(key, None)
    if old is not None:
        old.close()
    _current[key] = files
    return files


__all__ = ["BootChoice", "BootloaderError", "ExtractedFiles", "GRUB_CONFIGS", "NAMES", "PygrubArgs", "choose",
           "extract"]
