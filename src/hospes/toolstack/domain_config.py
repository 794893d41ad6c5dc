"""From a typed ``DomainSpec`` to the ``DomainConfig`` that :mod:`hospes.domain` builds.

The one place a configuration becomes a domain: the domain process (for xl.cfg
files and API requests) and ``hospes run`` (for its flags) both call
:func:`domain_config`. It is also the one place the ``@default`` image marker is
resolved to the images `hospes image` builds.

Hospes' backends take raw disk images (xvda..xvdp) and TAP-backed vifs; what
the spec can say beyond that is refused here with a message, not ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hospes.devices.block import BlockError, DiskConfig, vdev_number
from hospes.devices.net import VifConfig, default_mac
from hospes.domain import DomainConfig
from hospes.errors import HospesError
from hospes.toolstack.spec import DEFAULT_IMAGE, DEFAULT_IMAGE_CMDLINE, DiskSpec, DomainSpec, VifSpec

DEFAULT_MTU = 1500
DEFAULT_RATE_INTERVAL_US = 50_000

Log = Callable[[str], None]


@dataclass(frozen=True)
class BootImages:
    """What the guest boots: kernel, ramdisk and command line, with ``@default`` resolved."""

    kernel: Path
    ramdisk: Path | None
    cmdline: str


def boot_images(spec: DomainSpec, log: Log) -> BootImages:
    """Resolve ``@default`` (building the default images if needed; progress goes to ``log``).

    The default kernel brings the default initramfs unless a ramdisk is given,
    and the default initramfs brings :data:`.spec.DEFAULT_IMAGE_CMDLINE` unless a command
    line is given.
    """
    if spec.bootloader is not None:
        return _from_bootloader(spec, log)
    kernel: str | Path = spec.kernel
    ramdisk: str | Path | None = spec.ramdisk
    cmdline = spec.cmdline or ""
    if kernel == DEFAULT_IMAGE and ramdisk is None:
        ramdisk = DEFAULT_IMAGE
    if DEFAULT_IMAGE in (kernel, ramdisk):
        from hospes.images import ensure_default_images

        images = ensure_default_images(log=log)
        if kernel == DEFAULT_IMAGE:
            kernel = images.kernel
        if ramdisk == DEFAULT_IMAGE:
            ramdisk = images.initramfs
            cmdline = cmdline or DEFAULT_IMAGE_CMDLINE
    ramdisk_path = Path(ramdisk) if ramdisk is not None else None
    if ramdisk_path is not None and not ramdisk_path.exists():
        raise HospesError(f"Ramdisk {ramdisk_path} does not exist; check the path or run `hospes image`.")
    return BootImages(Path(kernel), ramdisk_path, cmdline)


def _from_bootloader(spec: DomainSpec, log: Log) -> BootImages:
    """Run the bootloader on the first disk, as xl does: the files it picks live in
    memory until this domain's next boot (hospes.bootloader.pygrub.extract)."""
    from hospes.bootloader import PygrubArgs, extract

    args = PygrubArgs(kernel=spec.kernel or None, ramdisk=spec.ramdisk, args=spec.cmdline)
    args = args.merged(PygrubArgs.parse(spec.bootloader_args))
    if not spec.disks[0].target:
        raise HospesError(f"The bootloader reads the first disk, {spec.disks[0].vdev}, and it is empty.")
    image = Path(spec.disks[0].target)
    files = extract(image, args, key=str(image))   # one domain per disk image
    log(f"pygrub: booting {files.choice.kernel_path} ({files.choice.source})")
    return BootImages(files.kernel, files.ramdisk, files.cmdline)


def disk_config(disk: DiskSpec) -> DiskConfig:
    """The block backend's view of one disk: a raw image file or device as an xvd."""
    if not disk.target:
        raise BlockError(f"Disk {disk.vdev}: an empty drive (no target) is not supported.")
    if disk.format != "raw" or disk.devtype != "disk":
        raise BlockError(f"Disk {disk.target}: only raw disk images are supported (format=raw, devtype=disk).")
    return DiskConfig(Path(disk.target), readonly=not disk.readwrite, vdev=vdev_number(disk.vdev))


def vif_config(vif: VifSpec, domid: int) -> VifConfig:
    """The network backend's view of one vif: a TAP named by ``vifname``, on ``bridge``,
    with ``rate`` as a credit per interval; the MAC defaults to one made from the domid."""
    return VifConfig(mac=vif.mac or default_mac(domid, vif.devid), tap=vif.vifname, bridge=vif.bridge or None,
                     devid=vif.devid, mtu=vif.mtu or DEFAULT_MTU,
                     rate_bytes=vif.rate.credit_bytes if vif.rate else 0,
                     rate_usecs=vif.rate.interval_usecs if vif.rate else DEFAULT_RATE_INTERVAL_US)


def domain_config(spec: DomainSpec, domid: int, log: Log, *, boot_from_images: bool = True) -> DomainConfig:
    """The DomainConfig for ``spec`` as domain ``domid``; raises HospesError for what Hospes cannot run.

    ``boot_from_images=False`` is for a domain restored from saved memory: its
    kernel is in that memory, so the kernel and ramdisk named are not looked at."""
    if boot_from_images:
        boot = boot_images(spec, log)
    else:
        boot = BootImages(Path(spec.kernel), None, spec.cmdline or "")
    return DomainConfig(kernel=boot.kernel, ramdisk=boot.ramdisk, cmdline=boot.cmdline,
                        memory_mib=spec.memory, max_memory_mib=spec.maxmem or 0,
                        vcpus=spec.vcpus, max_vcpus=spec.maxvcpus, name=spec.name, domid=domid,
                        disks=tuple(disk_config(d) for d in spec.disks),
                        vifs=tuple(vif_config(v, domid) for v in spec.vifs), uuid=spec.uuid)


__all__ = ["BootImages", "boot_images", "disk_config", "domain_config", "vif_config"]
