"""Where the filesystems of a raw disk image are: the whole image, or MBR/GPT partitions.

A guest's disk is either one filesystem from its first byte (what ``hospes image
--rootfs`` makes) or a partitioned disk (what installers and cloud images make).
This finds the ext2/3/4 filesystems in it by their superblock magic and reads
files from them, read-only and without mounting, with the ``ext4`` package.
Symbolic links are followed inside the filesystem (``/vmlinuz -> boot/vmlinuz-6.1...``),
never out of it.

Layouts (facts from the UEFI spec and the MBR format): MBR signature 0x55AA at
byte 510, four 16-byte entries from byte 446 (type at +4, first LBA at +8, sector
count at +12), extended partitions 0x05/0x0F/0x85 chain EBRs; type 0xEE is GPT's
protective MBR, whose header at LBA 1 starts ``EFI PART`` and gives the entry
array's LBA (+72), count (+80) and entry size (+84); an entry has its type GUID
at +0 (zero = unused) and first/last LBA at +32/+40. An ext superblock sits 1024
bytes into its filesystem with the magic 0xEF53 at +56.
"""

from __future__ import annotations

import os
import posixpath
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from hospes.errors import HospesError
from hospes.files import open_host

SECTOR = 512
EXT_MAGIC = 0xEF53
EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
GPT_PROTECTIVE = 0xEE
MAX_SYMLINKS = 40          # as Linux's path walk allows
MAX_FILE = 1 << 30         # no kernel or initrd is bigger; stops a corrupt size early


class DiskImageError(HospesError):
    """The disk image has no readable filesystem, or a file is missing or unreadable in it."""


@dataclass(frozen=True)
class Region:
    """A filesystem's place on the disk: ``offset``/``size`` in bytes; ``name`` for messages."""

    offset: int
    size: int
    name: str


def find_filesystems(image: BinaryIO, where: str) -> list[Region]:
    """The ext filesystems of ``image`` (an open raw disk image), in disk order.

    Raises DiskImageError when there is none, or when the image is shorter than
    what its partition table or superblock says (a truncated copy)."""
    length = image.seek(0, os.SEEK_END)
    if length < 2 * 1024:
        raise DiskImageError(f"{where} is {length} bytes: too small to hold a partition table or a filesystem.")
    head = _read(image, 0, 2 * 1024)
    if _is_ext(head[1024:]):
        region = Region(0, length, f"{where} (whole disk)")
        _check_size(image, region, length, where)
        return [region]
    regions = _partitions(image, head, length, where)
    found = []
    for region in regions:
        if region.offset + region.size > length:
            raise DiskImageError(f"{where} is truncated: {region.name} ends at byte {region.offset + region.size} "
                                 f"but the image has {length} bytes.")
        if _is_ext(_read(image, region.offset + 1024, 1024)):
            _check_size(image, region, length, where)
            found.append(region)
    if not found:
        what = (f"none of its {len(regions)} partitions holds one" if regions
                else "it has no MBR or GPT partition table either")
        raise DiskImageError(f"{where} has no ext2/3/4 filesystem: no superblock at byte 1024 of the image, and "
                             f"{what}. pygrub boots images whose root (or /boot) is ext2/3/4.")
    return found


class Filesystem:
    """Files of one ext filesystem in a disk image, by path, with symlinks followed."""

    def __init__(self, image: BinaryIO, region: Region) -> None:
        import ext4

        self.region = region
        try:
            self.volume: Any = ext4.Volume(image, offset=region.offset)
        except Exception as e:  # the library has no common error base
            raise DiskImageError(f"Cannot read the filesystem in {region.name}: {_why(e)}") from e

    def resolve(self, path: str) -> str:
        """``path`` with every symlink on the way replaced by its target (in this filesystem)."""
        return self._walk(path)[0]

    def exists(self, path: str) -> bool:
        try:
            self._walk(path)
        except FileNotFoundError:
            return False
        return True

    def stat(self, path: str) -> tuple[int, int, int] | None:
        """(st_mode, size, mtime) of ``path`` with symlinks followed, or None if it does not exist."""
        try:
            inode = self._walk(path)[1]
        except FileNotFoundError:
            return None
        return int(inode.i_mode), int(inode.i_size), int(inode.i_mtime)

    def read(self, path: str, what: str) -> bytes:
        """The contents of the regular file ``path``; ``what`` names it in errors ("kernel")."""
        try:
            real, inode = self._walk(path)
        except FileNotFoundError as e:
            raise DiskImageError(f"The {what} {path} does not exist in {self.region.name} ({e}).") from None
        if not stat.S_ISREG(int(inode.i_mode)):
            raise DiskImageError(f"The {what} {path} in {self.region.name} is not a regular file.")
        size = int(inode.i_size)
        if size > MAX_FILE:
            raise DiskImageError(f"The {what} {path} in {self.region.name} claims {size} bytes; that is no "
                                 "kernel or initrd (a damaged filesystem?).")
        try:
            data = bytes(inode.open().read())
        except Exception as e:
            raise DiskImageError(f"Cannot read the {what} {real} in {self.region.name}: {_why(e)}") from e
        if len(data) != size:
            raise DiskImageError(f"The {what} {real} in {self.region.name} has {len(data)} of its {size} "
                                 "bytes: the image is truncated or damaged.")
        return data

    def _walk(self, path: str) -> tuple[str, Any]:
        """(real path, inode) of ``path``; FileNotFoundError names the missing part."""
        pending = [p for p in path.split("/") if p not in ("", ".")]
        done: list[str] = []
        hops = 0
        inode = self._inode("/")
        while pending:
            name = pending.pop(0)
            if name == "..":
                if done:
                    done.pop()
                inode = self._inode("/" + "/".join(done))
                continue
            current = "/" + "/".join(done + [name])
            inode = self._inode(current)
            if stat.S_ISLNK(int(inode.i_mode)):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise DiskImageError(f"Too many symbolic links resolving {path} in {self.region.name}.")
                target = self._readlink(inode, current)
                if target.startswith("/"):
                    done = []
                pending = [p for p in target.split("/") if p not in ("", ".")] + pending
                inode = self._inode("/" + "/".join(done))
                continue
            done.append(name)
        return posixpath.join("/", *done), inode

    def _inode(self, path: str) -> Any:
        try:
            return self.volume.inode_at(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"no {path}") from None
        except Exception as e:
            raise DiskImageError(f"Cannot read {path} in {self.region.name}: {_why(e)}") from e

    def _readlink(self, inode: Any, path: str) -> str:
        try:
            return bytes(inode.readlink()).decode("utf-8", "surrogateescape")
        except Exception as e:
            raise DiskImageError(f"Cannot read the symbolic link {path} in {self.region.name}: {_why(e)}") from e


def open_image(path: Path) -> BinaryIO:
    """``path`` opened for reading, with errors that name it."""
    try:
        if path.is_dir():
            raise DiskImageError(f"The disk image {path} is a directory.")
        return os.fdopen(open_host(path, os.O_RDONLY | os.O_CLOEXEC), "rb")
    except FileNotFoundError:
        raise DiskImageError(f"The disk image {path} does not exist.") from None
    except OSError as e:
        raise DiskImageError(f"Cannot open the disk image {path}: {e.strerror}.") from None


# --- partition tables ----------------------------------------------------------------------


def _partitions(image: BinaryIO, head: bytes, length: int, where: str) -> list[Region]:
    if head[510:512] != b"\x55\xaa":
        return []
    entries = [struct.unpack_from("<4xB3xII", head, 446 + 16 * i) for i in range(4)]
    if any(kind == GPT_PROTECTIVE for kind, _, _ in entries):
        return _gpt(image, length, where)
    regions: list[Region] = []
    for number, (kind, first, count) in enumerate(entries, 1):
        if kind == 0 or count == 0:
            continue
        if kind in EXTENDED_TYPES:
            regions.extend(_logical(image, first, length, where))
        else:
            regions.append(Region(first * SECTOR, count * SECTOR, f"partition {number} of {where}"))
    return regions


def _logical(image: BinaryIO, extended: int, length: int, where: str) -> list[Region]:
    """Logical partitions: a chain of EBRs, each link relative to the extended partition."""
    regions: list[Region] = []
    ebr = extended
    seen: set[int] = set()
    while ebr not in seen and len(regions) < 128 and (ebr + 1) * SECTOR <= length:
        seen.add(ebr)
        sector = _read(image, ebr * SECTOR, SECTOR)
        if sector[510:512] != b"\x55\xaa":
            break
        kind, first, count = struct.unpack_from("<4xB3xII", sector, 446)
        if kind and count:
            regions.append(Region((ebr + first) * SECTOR, count * SECTOR,
                                  f"partition {5 + len(regions)} of {where}"))
        _, next_first, _ = struct.unpack_from("<4xB3xII", sector, 462)
        if not next_first:
            break
        ebr = extended + next_first
    return regions


def _gpt(image: BinaryIO, length: int, where: str) -> list[Region]:
    header = _read(image, SECTOR, 92)
    if header[:8] != b"EFI PART":
        raise DiskImageError(f"{where} has a protective MBR but no GPT header at byte {SECTOR}.")
    entries_lba, count, size = struct.unpack_from("<QII", header, 72)
    if not 128 <= size <= 4096 or count > 1024:
        raise DiskImageError(f"{where}: the GPT header is damaged ({count} entries of {size} bytes).")
    if (entries_lba * SECTOR) + count * size > length:
        raise DiskImageError(f"{where} is truncated: its GPT entries end past its {length} bytes.")
    table = _read(image, entries_lba * SECTOR, count * size)
    regions = []
    for i in range(count):
        entry = table[i * size:(i + 1) * size]
        if entry[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        if last >= first:
            regions.append(Region(first * SECTOR, (last - first + 1) * SECTOR, f"partition {i + 1} of {where}"))
    return regions


# --- ext superblocks -------------------------------------------------------------------------


def _is_ext(superblock: bytes) -> bool:
    return len(superblock) >= 58 and struct.unpack_from("<H", superblock, 56)[0] == EXT_MAGIC


def _check_size(image: BinaryIO, region: Region, length: int, where: str) -> None:
    """A filesystem must fit in the image: a truncated copy fails here, with its sizes."""
    sb = _read(image, region.offset + 1024, 1024)
    blocks_lo, = struct.unpack_from("<I", sb, 4)
    log_block, = struct.unpack_from("<I", sb, 24)
    incompat, = struct.unpack_from("<I", sb, 96)
    blocks_hi = struct.unpack_from("<I", sb, 336)[0] if incompat & 0x80 else 0   # INCOMPAT_64BIT
    if log_block > 6:
        raise DiskImageError(f"The superblock in {region.name} is damaged (block size 2^{10 + log_block}).")
    need = ((blocks_hi << 32) | blocks_lo) * (1024 << log_block)
    if region.offset + need > length:
        raise DiskImageError(f"{where} is truncated: the filesystem in {region.name} has {need} bytes but only "
                             f"{length - region.offset} are in the image.")


def _read(image: BinaryIO, offset: int, size: int) -> bytes:
    image.seek(offset)
    return image.read(size)


def _why(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if text.endswith(".") else text + "."


__all__ = ["DiskImageError", "Filesystem", "Region", "find_filesystems", "open_image"]
