"""Booting a guest from its own disk, as Xen's ``bootloader = "pygrub"`` does.

:func:`~hospes.bootloader.pygrub.choose` reads a raw disk image (whole-disk ext
filesystem, or MBR/GPT partitions) without mounting it and returns the kernel,
initrd and command line its GRUB configuration (or its ``/vmlinuz`` links)
selects; :func:`~hospes.bootloader.pygrub.extract` keeps them in memory files
for the domain builder. The toolstack runs it at every boot of a domain, so a
kernel updated inside the guest is the one its next boot loads.
"""

from hospes.bootloader.pygrub import NAMES, BootChoice, BootloaderError, PygrubArgs, choose, extract

__all__ = ["NAMES", "BootChoice", "BootloaderError", "PygrubArgs", "choose", "extract"]
