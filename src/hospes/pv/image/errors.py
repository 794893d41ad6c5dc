"""The one exception the kernel-image loader raises on purpose."""

from hospes.errors import HospesError


class ImageError(HospesError):
    """A kernel image cannot be loaded.

    The message names the file, says what is wrong with it and what to do, so the
    CLI can print it as it is.
    """
