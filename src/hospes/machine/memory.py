"""Guest memory: memfd-backed RAM and hypervisor pages, mapped into KVM slots.

One memfd holds every guest-physical byte of a domain, in regions that are
contiguous in guest-physical space and in the memfd. The VMM maps the memfd
once; every access from Python goes through :meth:`GuestMemory.view` or the
typed helpers, which check bounds against the region table, so nothing a guest
passes (a frame number, a length, an address) can make Hospes touch memory
that is not this domain's.

Why a memfd rather than anonymous memory: it gives a file descriptor that a
later save/restore or migration can hand to another process, and it lets the
RAM slot be registered with dirty logging independently of the hypervisor
pages.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from dataclasses import dataclass

from hospes.errors import HospesError

PAGE_SIZE = 4096
PAGE_SHIFT = 12
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.fallocate.restype = ctypes.c_int


class MemoryError_(HospesError):
    """A guest-physical access fell outside the domain's memory."""


class GuestFault(HospesError):
    """A guest-virtual access could not be translated (the guest sees -EFAULT)."""

    def __init__(self, va: int, reason: str) -> None:
        super().__init__(f"Guest address {va:#x} is not accessible: {reason}")
        self.va = va
        self.reason = reason


@dataclass(frozen=True)
class Region:
    """A named, page-aligned range of guest-physical memory."""

    name: str
    gpa: int
    size: int

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def contains(self, gpa: int, length: int = 1) -> bool:
        return self.gpa <= gpa and gpa + length <= self.end


class GuestMemory:
    """All guest-physical memory of one domain.

    Regions are laid out back to back from guest-physical 0 (RAM first), so a
    guest-physical address is also an offset into the memfd and into the
    host mapping; holes between regions are not allowed.
    """

    def __init__(self, regions: list[tuple[str, int]], name: str = "hospes-guest") -> None:
        gpa = 0
        self.regions: dict[str, Region] = {}
        for rname, size in regions:
            if size <= 0 or size % PAGE_SIZE:
                raise MemoryError_(f"Region {rname} size {size:#x} is not a positive multiple of 4 KiB")
            self.regions[rname] = Region(rname, gpa, size)
            gpa += size
        self.size = gpa
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.size)
            self.mm = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            os.close(self.fd)
            raise MemoryError_(f"Cannot allocate {self.size >> 20} MiB of guest memory: {e.strerror}") from e
        self.buf = memoryview(self.mm)
        # Word views: an item access is one aligned load or store, so a guest on
        # another CPU never sees half of it. struct.pack_into/unpack_from are not
        # usable on shared words: they go byte by byte, and pack_into zeroes the
        # field before writing it (a ring index read as 0 mid-update).
        self.q = self.buf.cast("Q")
        self.d = self.buf.cast("I")
        self.host_addr = ctypes.addressof(ctypes.c_char.from_buffer(self.mm))
        # Hospes' own writes, for a migration's copy rounds (KVM logs only the
        # guest's): None while no migration copies this memory. Writers add the
        # frame *after* the store, so a frame harvested and then copied already
        # holds every write whose mark the harvest removed.
        self.dirty: set[int] | None = None
        # Frames Hospes keeps writable views of for as long as the domain lives
        # (rings, registered vcpu_info): sent in every final copy instead of
        # being marked at each of their many small stores.
        self.held: set[int] = set()

    def region(self, name: str) -> Region:
        return self.regions[name]

    # --- bounds-checked access -------------------------------------------------

    def check(self, gpa: int, length: int) -> None:
        if gpa < 0 or length < 0 or gpa + length > self.size:
            raise MemoryError_(f"Guest-physical range {gpa:#x}+{length:#x} is outside the domain's memory")

    def view(self, gpa: int, length: int) -> memoryview:
        self.check(gpa, length)
        return self.buf[gpa:gpa + length]

    def mark(self, gpa: int, length: int = 1) -> None:
        """Record a store this process made to guest memory (a no-op unless a migration runs)."""
        dirty = self.dirty
        if dirty is not None and length > 0:
            first, last = gpa >> PAGE_SHIFT, (gpa + length - 1) >> PAGE_SHIFT
            if first == last:
                dirty.add(first)
            else:
                dirty.update(range(first, last + 1))

    def hold(self, gpa: int, length: int = PAGE_SIZE) -> None:
        """Say that Hospes keeps writing ``gpa``..+``length`` through a view of its own."""
        self.check(gpa, length)
        self.held.update(range(gpa >> PAGE_SHIFT, ((gpa + length - 1) >> PAGE_SHIFT) + 1))

    def start_dirty_log(self) -> None:
        self.dirty = set()

    def stop_dirty_log(self) -> None:
        self.dirty = None

    def harvest_dirty(self) -> set[int]:
        """The frames marked since the last harvest, unmarked (safe against concurrent marks:
        a mark removed here was made after its store, which the caller's copy will see)."""
        dirty = self.dirty
        if dirty is None:
            return set()
        taken = set(dirty)
        dirty.difference_update(taken)
        return taken

    def read(self, gpa: int, length: int) -> bytes:
        self.check(gpa, length)
        return self.mm[gpa:gpa + length]

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.check(gpa, len(data))
        self.buf[gpa:gpa + len(data)] = data
        if self.dirty is not None:
            self.mark(gpa, len(data))

    def read_u64(self, gpa: int) -> int:
        if gpa & 7 or gpa < 0 or gpa + 8 > self.size:
            self.check(gpa, 8)
            return int(struct.unpack_from("<Q", self.mm, gpa)[0])
        return int(self.q[gpa >> 3])

    def write_u64(self, gpa: int, value: int) -> None:
        if gpa & 7 or gpa < 0 or gpa + 8 > self.size:
            self.check(gpa, 8)
            self.buf[gpa:gpa + 8] = value.to_bytes(8, "little")
            self.mark(gpa, 8)
            return
        self.q[gpa >> 3] = value
        if self.dirty is not None:
            self.dirty.add(gpa >> PAGE_SHIFT)

    def read_u32(self, gpa: int) -> int:
        if gpa & 3 or gpa < 0 or gpa + 4 > self.size:
            self.check(gpa, 4)
            return int.from_bytes(self.mm[gpa:gpa + 4], "little")
        return int(self.d[gpa >> 2])

    def write_u32(self, gpa: int, value: int) -> None:
        if gpa & 3 or gpa < 0 or gpa + 4 > self.size:
            self.check(gpa, 4)
            self.buf[gpa:gpa + 4] = value.to_bytes(4, "little")
            self.mark(gpa, 4)
            return
        self.d[gpa >> 2] = value
        if self.dirty is not None:
            self.dirty.add(gpa >> PAGE_SHIFT)

    def addr(self, gpa: int, length: int = 1) -> int:
        """Host virtual address of a guest-physical byte (for atomics)."""
        self.check(gpa, length)
        return self.host_addr + gpa

    def zero(self, gpa: int, length: int) -> None:
        self.check(gpa, length)
        self.buf[gpa:gpa + length] = bytes(length)
        self.mark(gpa, length)

    def punch(self, gpa: int, length: int) -> None:
        """Give the host memory behind ``gpa``..+``length`` back (ballooning): the pages
        leave the memfd, every mapping of them (ours, KVM's) is dropped, and the
        range reads as zeros until written again. The memfd keeps its size."""
        self.check(gpa, length)
        if gpa % PAGE_SIZE or length % PAGE_SIZE:
            raise MemoryError_(f"Range {gpa:#x}+{length:#x} to give back is not whole pages")
        if length and _libc.fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                      ctypes.c_long(gpa), ctypes.c_long(length)) != 0:
            err = ctypes.get_errno()
            raise MemoryError_(f"Cannot give back guest memory {gpa:#x}+{length:#x}: {os.strerror(err)}")

    def discard(self) -> None:
        """Give every page back to the host now, for a domain that has ended.

        The mapping and the memfd go when the last view of them is collected
        (ring and backend objects keep views, in reference cycles), which can be
        several reboots later: until then each ended boot held a whole guest's
        memory, and a jailed domain rebooting in a row ran into its cgroup's
        memory limit. A stray access afterwards reads zeros."""
        self.punch(0, self.size)

    def close(self) -> None:
        try:
            self.q.release()
            self.d.release()
            self.buf.release()
            self.mm.close()
        except (BufferError, ValueError):
            pass  # a live export (ctypes view) keeps the mapping until process exit
        os.close(self.fd)
