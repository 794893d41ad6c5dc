"""A writer of the "newc" cpio format, the format Linux unpacks as an initramfs.

The kernel's unpacker (``init/initramfs.c``) reads only newc (magic ``070701``): a
110-byte ASCII header of thirteen 8-digit hex fields, the NUL-terminated name padded
so the data starts on a 4-byte boundary, the data padded to 4 bytes again, and a final
entry named ``TRAILER!!!``. Entries are created in archive order, so a directory must
come before its contents; sorting by path components guarantees that.

The output is deterministic -- the same entries give the same bytes -- because the
cache compares builds and tests compare archives: inode numbers are assigned in
sorted order, and every mtime, uid and gid is 0. Only what an initramfs needs is
supported: directories, regular files, symlinks and device nodes (no hard links).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110


@dataclass(frozen=True)
class Entry:
    """One archive member. ``mode`` includes the file type bits (``S_IFDIR`` ...)."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


class CpioArchive:
    """Collects entries, then writes them as one sorted newc archive.

    Names are relative paths ("bin/busybox"); a leading "/" or "./" is stripped.
    Missing parent directories are added with mode 0755; adding such a directory
    explicitly afterwards sets its mode.
    """

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._implicit: set[str] = set()

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        self._add(Entry(_clean(name), stat.S_IFDIR | mode))

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(Entry(_clean(name), stat.S_IFREG | mode, data))

    def add_symlink(self, name: str, target: str) -> None:
        self._add(Entry(_clean(name), stat.S_IFLNK | 0o777, target.encode()))

    def add_device(self, name: str, kind: str, major: int, minor: int,
                   mode: int = 0o600) -> None:
        """Add a device node; ``kind`` is "c" (character) or "b" (block)."""
        types = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}
        if kind not in types:
            raise ValueError(f"device kind must be 'c' or 'b', not {kind!r}")
        self._add(Entry(_clean(name), types[kind] | mode, rdev=(major, minor)))

    def names(self) -> list[str]:
        return [entry.name for entry in self._sorted()]

    def to_bytes(self) -> bytes:
        chunks: list[bytes] = []
        for ino, entry in enumerate(self._sorted(), start=1):
            chunks.append(_member(entry, ino))
        chunks.append(_member(Entry(TRAILER, 0), 0))
        return b"".join(chunks)

    def write(self, stream: BinaryIO) -> None:
        stream.write(self.to_bytes())

    def _add(self, entry: Entry) -> None:
        if entry.name in self._entries:
            if not (entry.name in self._implicit and stat.S_ISDIR(entry.mode)):
                raise ValueError(f"duplicate cpio entry {entry.name!r}")
            self._implicit.discard(entry.name)  # an explicit mode wins
        parts = entry.name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            existing = self._entries.get(parent)
            if existing is None:
                self._entries[parent] = Entry(parent, stat.S_IFDIR | 0o755)
                self._implicit.add(parent)
            elif not stat.S_ISDIR(existing.mode):
                raise ValueError(f"{parent!r} is not a directory, cannot hold {entry.name!r}")
        self._entries[entry.name] = entry

    def _sorted(self) -> list[Entry]:
        return sorted(self._entries.values(), key=lambda e: e.name.split("/"))


def _clean(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    name = name.strip("/")
    if not name or name == "." or any(p in ("", ".", "..") for p in name.split("/")):
        raise ValueError(f"bad cpio entry name {name!r}")
    return name


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _member(entry: Entry, ino: int) -> bytes:
    name = entry.name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0,
              entry.rdev[0], entry.rdev[1], len(name), 0)
    header = MAGIC + b"".join(b"%08x" % value for value in fields)
    assert len(header) == HEADER_SIZE
    head = header + name
    return head + _pad4(len(head)) + entry.data + _pad4(len(entry.data))
