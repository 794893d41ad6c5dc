"""``hospes image``: build (or find) the default guest kernel and initramfs.

Downloads happen here, ahead of time, so that booting a guest never waits on the
network; the command is safe to re-run and prints the cached paths when nothing
changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from hospes.images import ensure_default_images


@click.command("image")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache directory (default: $HOSPES_CACHE_DIR, $XDG_CACHE_HOME/hospes "
                   "or ~/.cache/hospes).")
@click.option("--rebuild", is_flag=True, help="Build again even if a current build is cached.")
@click.option("--print-json", is_flag=True, help="Print the result as one JSON object.")
def image(cache_dir: Path | None, rebuild: bool, print_json: bool) -> None:
    """Build and cache the default guest images (Debian cloud kernel + initramfs)."""
    images = ensure_default_images(cache_dir=cache_dir, rebuild=rebuild,
                                   log=lambda message: click.echo(message, err=True))
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


def register(group: click.Group) -> None:
    """Add the ``image`` command to the top-level ``hospes`` group."""
    group.add_command(image)
