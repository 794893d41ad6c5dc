"""``hospes image``: build (or find) the default guest kernel and initramfs, or a disk image.

Downloads happen here, ahead of time, so that booting a guest never waits on the
network; the command is safe to re-run and prints the cached paths when nothing
changed. ``--rootfs`` builds a whole Debian system on an ext4 disk image instead
(:mod:`hospes.images.rootfs`), which guests boot with ``bootloader = "pygrub"``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from hospes.images import ensure_default_images
from hospes.images.cache import ImagesError

_SIZE = re.compile(r"(\d+)([KMGT]?)i?B?", re.I)


def parse_size(text: str) -> int:
    """``4G``, ``2048M``, ``1T`` or bytes, in powers of 1024."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise click.BadParameter(f"{text!r} is not a size: write e.g. 2G or 4096M")
    return int(m.group(1)) << (10 * "KMGT".find(m.group(2).upper()) + 10 if m.group(2) else 0)


@click.command("image")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache directory (default: $HOSPES_CACHE_DIR, $XDG_CACHE_HOME/hospes "
                   "or ~/.cache/hospes).")
@click.option("--rebuild", is_flag=True, help="Build again even if a current build is cached.")
@click.option("--print-json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--suite", type=click.Choice(["bookworm", "trixie"]), default="bookworm", show_default=True,
              help="Debian release the kernel (and with --rootfs, the system) comes from.")
@click.option("--rootfs", is_flag=True,
              help="Build a bootable Debian disk image (ext4 on the whole disk, systemd, the cloud kernel, "
                   "openssh-server) for bootloader = \"pygrub\"; needs root, mmdebstrap and mkfs.ext4.")
@click.option("--size", default="2G", show_default=True, help="With --rootfs: the image's size (sparse).")
@click.option("--packages", default="", metavar="P,...", help="With --rootfs: more Debian packages to install.")
@click.option("--ssh-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="With --rootfs: a public key file root accepts over SSH (root has no password).")
@click.option("--address", default=None, metavar="CIDR",
              help="With --rootfs: the guest's fixed address on its vif, besides DHCP (default 169.254.99.2/16).")
@click.option("--pvgrub", is_flag=True,
              help="Fetch Debian's PV GRUB (grub-xen-host) and print the path of grub-x86_64-xen.bin, a PV "
                   "kernel that boots the kernel its disk's grub.cfg names, from inside the domain.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --rootfs: copy the image here (boot copies; the cached image is the template).")
def image(cache_dir: Path | None, rebuild: bool, print_json: bool, suite: str, rootfs: bool, size: str,
          packages: str, ssh_key: Path | None, address: str | None, pvgrub: bool, output: Path | None) -> None:
    """Build and cache the default guest images (Debian cloud kernel + initramfs), or with
    --rootfs a Debian disk image; prints the paths."""
    def log(message: str) -> None:
        click.echo(message, err=True)

    if pvgrub:
        if rootfs:
            raise click.UsageError("--pvgrub and --rootfs are separate images: ask for one at a time.")
        from hospes.images.pvgrub import ensure_pvgrub
        path = ensure_pvgrub(cache_dir=cache_dir, log=log)
        click.echo(json.dumps({"pvgrub": str(path)}, indent=2) if print_json else f"pvgrub: {path}")
        return
    if not rootfs:
        for name, value in (("--size", size != "2G"), ("--packages", packages), ("--ssh-key", ssh_key),
                            ("--address", address), ("--output", output)):
            if value:
                raise click.UsageError(f"{name} goes with --rootfs.")
        images = ensure_default_images(cache_dir=cache_dir, rebuild=rebuild, log=log, suite=suite)
        if print_json:
            click.echo(json.dumps({
                "kernel": str(images.kernel),
                "initramfs": str(images.initramfs),
                "kernel_version": images.kernel_version,
                "modules": list(images.modules),
            }, indent=2))
        else:
            click.echo(f"kernel: {images.kernel}")
            click.echo(f"initramfs: {images.initramfs}")
        return
    from hospes.images.rootfs import DEFAULT_ADDRESS, RootfsOptions, copy_image, ensure_rootfs

    try:
        key = ssh_key.read_text() if ssh_key is not None else ""
    except (OSError, UnicodeDecodeError) as e:
        raise ImagesError(f"Cannot read the SSH key {ssh_key}: {e}") from e
    options = RootfsOptions(suite=suite, size=parse_size(size),
                            packages=tuple(p.strip() for p in packages.split(",") if p.strip()),
                            ssh_key=key, address=address or DEFAULT_ADDRESS)
    built = ensure_rootfs(options, cache_dir=cache_dir, rebuild=rebuild, log=log)
    path = copy_image(built, output, log) if output is not None else built.path
    if print_json:
        click.echo(json.dumps({"image": str(path), "template": str(built.path), "suite": built.suite,
                               "kernel_version": built.kernel_version, "size": built.size}, indent=2))
    else:
        click.echo(f"image: {path}")


def register(group: click.Group) -> None:
    """Add the ``image`` command to the top-level ``hospes`` group."""
    group.add_command(image)
