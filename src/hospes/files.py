"""Reading a file a user named: regular files only, never more than a limit.

A path in a config, a request or on the command line can name anything:
``/dev/zero`` (reads forever), a FIFO (``open`` blocks until a writer comes),
a directory, a 50 GB file. :func:`read_regular` opens with ``O_NONBLOCK`` (so a
FIFO's open returns at once), checks with ``fstat`` on the open descriptor that
it is a regular file no larger than the limit, and reads at most ``limit + 1``
bytes (a file that grows meanwhile is still refused). :func:`check_regular`
does the same checks without reading, for a toolstack that refuses early and
leaves the read to the process that builds the domain.

A jailed domain process (docs/security.md) cannot open its disks and images by
path: they are opened before it drops root and handed over here
(:func:`hand_over`); :func:`open_host` then gives a copy of the handed
descriptor for that path, and opens by path only what was not handed over.

The limits below are documented in docs/toolstack.md and docs/security.md.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hospes.errors import HospesError

MIB = 1024 * 1024
MAX_CONFIG_BYTES = 1 * MIB       # an xl.cfg file: a few KiB in practice
MAX_IMAGE_BYTES = 512 * MIB      # a kernel or a ramdisk (Debian's vmlinuz ~10 MiB, initrd ~70 MiB)
MAX_TOKEN_BYTES = 64 * 1024      # a bearer token file


_handed: dict[str, int] = {}     # absolute path -> a descriptor opened before the jail's drop


def hand_over(path: Path | str, fd: int) -> None:
    """Make :func:`open_host` answer ``path`` with copies of ``fd`` (which this module now owns)."""
    _handed[os.path.abspath(path)] = fd


def open_host(path: Path | str, flags: int) -> int:
    """Open a host file a domain uses: a copy of the descriptor handed over for ``path``
    (rewound to its start), else ``os.open(path, flags)``. Copies share the file
    offset, so readers of a handed file use pread or read it from the start."""
    fd = _handed.get(os.path.abspath(path))
    if fd is None:
        return os.open(path, flags)
    copy = os.dup(fd)
    try:
        if stat.S_ISREG(os.fstat(copy).st_mode):
            os.lseek(copy, 0, os.SEEK_SET)
    except OSError:
        os.close(copy)
        raise
    return copy


class FileReadError(HospesError):
    """A user-named file that is not a readable regular file within its size limit.

    The message names the file; ``reason`` is the problem alone (for callers with a
    sentence of their own, e.g. "Cannot read kernel image PATH: <reason>")."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _open_checked(path: Path, what: str, limit: int) -> tuple[int, int]:
    """Open ``path`` without blocking, check it; return (fd, size). The caller closes fd."""
    try:
        fd = open_host(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise FileReadError(f"The {what} {path} does not exist; check the path.",
                            e.strerror or "No such file or directory") from None
    except OSError as e:
        raise FileReadError(f"Cannot open the {what} {path}: {e.strerror or e}.", str(e.strerror or e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _kind(st.st_mode)
            raise FileReadError(f"The {what} {path} is {kind}; give a regular file.", f"it is {kind}, not a file")
        if st.st_size > limit:
            size = f"{st.st_size} bytes, more than the limit of {limit} bytes" + \
                (f" ({limit // MIB} MiB)" if limit >= MIB else "")
            raise FileReadError(f"The {what} {path} is {size}.", f"it is {size}")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def check_regular(path: Path | str, what: str, limit: int) -> int:
    """Check that ``path`` is a regular file of at most ``limit`` bytes; return its size.

    Raises :class:`FileReadError` with a message naming ``what`` and the path.
    """
    fd, size = _open_checked(Path(path), what, limit)
    os.close(fd)
    return size


def read_regular(path: Path | str, what: str, limit: int) -> bytes:
    """The contents of the regular file ``path``, at most ``limit`` bytes (else :class:`FileReadError`)."""
    path = Path(path)
    fd, _ = _open_checked(path, what, limit)
    try:
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                chunk = os.read(fd, min(limit + 1 - total, 4 * MIB))
            except OSError as e:
                raise FileReadError(f"Cannot read the {what} {path}: {e.strerror or e}.",
                                    str(e.strerror or e)) from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise FileReadError(f"The {what} {path} grew past the limit of {limit} bytes while it was read.",
                                    f"it grew past the limit of {limit} bytes")
    finally:
        os.close(fd)
    return b"".join(chunks)


__all__ = ["FileReadError", "MAX_CONFIG_BYTES", "MAX_IMAGE_BYTES", "MAX_TOKEN_BYTES", "check_regular",
           "hand_over", "open_host", "read_regular"]
