"""Debian's PV GRUB (pvgrub2): GRUB built as a Xen PV kernel, fetched and cached.

Where pygrub reads a disk image on the host, PV GRUB runs *inside* the
domain: it is the domain's kernel, reads the guest's disk through its own
blkfront, shows the image's ``grub.cfg`` menu on the console and loads the
chosen kernel with its Xen loader, which builds a new start of day for it
(its own page tables, p2m and start_info, the console and store frames moved
to the end of the new kernel's pfn space and the M2P told so). Booting it is
a test of much of the PV ABI at once.

Debian ships it in ``grub-xen-host`` as ``/usr/lib/grub-xen/grub-x86_64-xen.bin``.
The package is downloaded with ``apt-get download`` (never installed, so the
host's own GRUB is untouched) and the one file unpacked to::

    <cache>/pvgrub/<version>/grub-x86_64-xen.bin

GRUB 2.06's Xen loader reads ELF kernels, plain or gzip/xz-compressed, but not
the LZ4 payload of Debian 12's bzImage ("not xen image"): give it a
decompressed ``vmlinux`` (see :func:`write_vmlinux`).
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path

from hospes.images.cache import BUILD_PREFIX, ImagesError, atomic_directory, cache_lock, default_cache_dir
from hospes.images.debian import Log, apt_show, download, unpack

PACKAGE = "grub-xen-host"
BINARY = "grub-x86_64-xen.bin"
IN_PACKAGE = Path("usr/lib/grub-xen") / BINARY


def ensure_pvgrub(cache_dir: Path | None = None, log: Log = print) -> Path:
    """The path of Debian's 64-bit PV GRUB, downloading it if apt's version is not cached."""
    root = (cache_dir or default_cache_dir()) / "pvgrub"
    root.mkdir(parents=True, exist_ok=True)
    fields = apt_show(PACKAGE).get(PACKAGE)
    if fields is None:
        cached = sorted(root.glob(f"*/{BINARY}"))
        if cached:
            return cached[-1]
        raise ImagesError(f"apt knows no package {PACKAGE}; run 'apt-get update' (Debian 12 or later).")
    version = fields["Version"].replace(":", "%3a")
    target = root / version / BINARY
    if target.is_file():
        return target
    with cache_lock(root, log):
        if target.is_file():
            return target
        deb = download(fields, root / "debs", log)
        with tempfile.TemporaryDirectory(prefix=BUILD_PREFIX, dir=root) as tmp:
            unpack(deb, Path(tmp))
            found = Path(tmp) / IN_PACKAGE
            if not found.is_file():
                raise ImagesError(f"{deb.name} has no {IN_PACKAGE}; the package layout changed.")
            with atomic_directory(root / version) as out:
                shutil.copyfile(found, out / BINARY)
        deb.unlink(missing_ok=True)
    return target


def write_vmlinux(kernel: bytes, dest: Path) -> None:
    """``kernel`` (an ELF, as Hospes' loader extracts it from a bzImage) gzip-compressed
    at ``dest``: what PV GRUB's Xen loader reads, at a fifth of the size."""
    if kernel[:4] != b"\x7fELF":
        raise ImagesError("PV GRUB needs the kernel as an ELF file (a vmlinux), not a bzImage.")
    with gzip.open(dest, "wb", compresslevel=6) as f:
        f.write(kernel)


__all__ = ["BINARY", "ensure_pvgrub", "write_vmlinux"]
