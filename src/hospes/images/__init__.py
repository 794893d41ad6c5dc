"""Guest images: the default Debian kernel and a busybox initramfs, built and cached.

``ensure_default_images()`` is the one entry point the rest of Hospes needs: it
returns paths to a bootable kernel and initramfs, building them from Debian packages
on first use. ``encode_command()`` makes the kernel command-line token that tells the
initramfs's /init to run a command and power off (the contract is in ``init.sh``).
"""

from hospes.images.cache import ImagesError, default_cache_dir
from hospes.images.debian import DefaultImages, ensure_default_images
from hospes.images.initramfs import encode_command

__all__ = ["DefaultImages", "ImagesError", "default_cache_dir", "encode_command",
           "ensure_default_images"]
