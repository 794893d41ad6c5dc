"""The files a spec names, checked before a domain process or ``hospes run`` reads them.

The kernel and the ramdisk must be regular files within
:data:`hospes.files.MAX_IMAGE_BYTES` each, and together no larger than the
guest's memory (they are loaded into it); a disk must be a regular file or a
block device (a FIFO or a character device would hang or never end the block
backend). Reading them for real goes through :func:`hospes.files.read_regular`
as well, so a file swapped for a FIFO after this check still cannot block.
``hospesd`` runs this in a thread: opening and fstat-ing a file on a slow or
hung mount must not hold its event loop.
"""

from __future__ import annotations

import os
import stat

from hospes.files import MAX_IMAGE_BYTES, MIB, FileReadError, check_regular
from hospes.toolstack.spec import DEFAULT_IMAGE, DomainSpec


def check_boot_files(spec: DomainSpec) -> None:
    """Raise :class:`~hospes.files.FileReadError` naming the first unusable file of ``spec``."""
    total = 0
    # With a bootloader, kernel and ramdisk are paths inside the guest's disk (pygrub reads them there).
    images = () if spec.bootloader is not None else (("kernel", spec.kernel), ("ramdisk", spec.ramdisk))
    for what, value in images:
        if value and value != DEFAULT_IMAGE:
            total += check_regular(value, what, MAX_IMAGE_BYTES)
    if total > spec.memory * MIB:
        raise FileReadError(f"The kernel and ramdisk ({total // MIB} MiB) do not fit in the guest's "
                            f"{spec.memory} MiB of memory; give more memory or a smaller image.",
                            "larger than the guest's memory")
    for disk in spec.disks:
        if not disk.target or disk.devtype == "cdrom" and disk.format == "empty":
            continue
        try:
            mode = os.stat(disk.target).st_mode
        except FileNotFoundError:
            continue   # the backend says so with its own message (and may create nothing)
        except OSError as e:
            reason = str(e.strerror or e)
            raise FileReadError(f"Cannot use the disk {disk.target}: {reason}.", reason) from None
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise FileReadError(f"The disk {disk.target} ({disk.vdev}) is neither a regular file nor a block "
                                "device; give a disk image or a block device.", "not a file or block device")


__all__ = ["check_boot_files"]
