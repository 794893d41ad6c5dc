"""Guest-virtual memory access for hypercall arguments and bounce frames.

Hypercall arguments are guest-kernel virtual addresses. Hospes walks the
guest's 4-level page tables in software (4 KiB leaves only: PV guests never get
PSE), page by page, so a buffer may straddle pages and a bad pointer becomes
``GuestFault`` (the hypercall returns -EFAULT) instead of a host error. Only
guest RAM and the hypervisor-owned frames the guest may map are reachable:
the walk refuses table or leaf frames outside them.
"""

from __future__ import annotations

import struct

from hospes.machine.memory import PAGE_SIZE, GuestFault, GuestMemory
from hospes.pv.abi import HYPERVISOR_VIRT_END, PTE_ADDR_MASK, PTE_P, PTE_PSE, PTE_RW

_CANONICAL_HI = 0xFFFF_8000_0000_0000


def canonical(va: int) -> bool:
    return va < 0x0000_8000_0000_0000 or _CANONICAL_HI <= va <= 0xFFFF_FFFF_FFFF_FFFF


def guest_handle_ok(va: int) -> bool:
    """Xen's check of an address a guest registers for later writes: it must not start
    in the hypervisor's part of the address space (only the start is checked, as Xen's
    access_ok does; the writes themselves go through the guest's page tables)."""
    return va < 0x0000_8000_0000_0000 or HYPERVISOR_VIRT_END <= va <= 0xFFFF_FFFF_FFFF_FFFF


class GuestVirt:
    """Translate and access guest-virtual memory through a given L4."""

    def __init__(self, mem: GuestMemory, frame_limit: int) -> None:
        self.mem = mem
        self.frame_limit = frame_limit  # frames [0, limit) are the guest's to reach
        self.q = mem.q
        # (cr3, page) -> (frame address, writable). Valid because every table
        # reachable from a CR3 is typed and changes only through the PV MMU,
        # which clears this on every store over a present entry.
        self.cache: dict[tuple[int, int], tuple[int, bool]] = {}

    def translate(self, cr3: int, va: int, write: bool = False) -> int:
        """Guest-physical address of ``va`` under page table ``cr3``."""
        hit = self.cache.get((cr3, va >> 12))
        if hit is not None and (hit[1] or not write):
            return hit[0] | (va & 0xFFF)
        gpa = self._walk(cr3, va, write)
        if len(self.cache) > 4096:
            self.cache.clear()
        return gpa

    def _walk(self, cr3: int, va: int, write: bool) -> int:
        if not canonical(va):
            raise GuestFault(va, "not canonical")
        table = cr3 & PTE_ADDR_MASK
        q = self.q
        limit = self.frame_limit << 12
        writable = True
        for shift in (39, 30, 21, 12):
            if table >= limit:
                raise GuestFault(va, "page table outside the domain")
            entry = q[(table >> 3) + ((va >> shift) & 511)]
            if not entry & PTE_P:
                raise GuestFault(va, "not mapped")
            if not entry & PTE_RW:
                if write:
                    raise GuestFault(va, "read-only")
                writable = False
            if shift != 12 and shift != 39 and entry & PTE_PSE:
                raise GuestFault(va, "superpage")
            table = entry & PTE_ADDR_MASK
        if table >= limit:
            raise GuestFault(va, "maps a frame outside the domain")
        self.cache[(cr3, va >> 12)] = (table, writable)
        return table | (va & 0xFFF)

    def read(self, cr3: int, va: int, size: int) -> bytes:
        out = bytearray()
        while size:
            n = min(size, PAGE_SIZE - (va & 0xFFF))
            gpa = self.translate(cr3, va)
            out += self.mem.buf[gpa:gpa + n]
            va = (va + n) & 0xFFFF_FFFF_FFFF_FFFF
            size -= n
        return bytes(out)

    def write(self, cr3: int, va: int, data: bytes | bytearray) -> None:
        # Translate every page first so a fault leaves guest memory untouched.
        pieces = []
        off = 0
        size = len(data)
        while off < size:
            n = min(size - off, PAGE_SIZE - (va & 0xFFF))
            pieces.append((self.translate(cr3, va, write=True), off, n))
            va = (va + n) & 0xFFFF_FFFF_FFFF_FFFF
            off += n
        mem = self.mem
        for gpa, o, n in pieces:
            mem.buf[gpa:gpa + n] = data[o:o + n]
            if mem.dirty is not None:
                mem.mark(gpa, n)

    def read_u64(self, cr3: int, va: int) -> int:
        if va & 7 == 0:
            return int(self.q[self.translate(cr3, va) >> 3])
        return int(struct.unpack("<Q", self.read(cr3, va, 8))[0])

    def write_u64(self, cr3: int, va: int, value: int) -> None:
        if va & 7 == 0:
            gpa = self.translate(cr3, va, write=True)
            self.q[gpa >> 3] = value
            if self.mem.dirty is not None:
                self.mem.dirty.add(gpa >> 12)
        else:
            self.write(cr3, va, struct.pack("<Q", value))

    def read_cstring(self, cr3: int, va: int, limit: int) -> bytes:
        data = self.read(cr3, va, min(limit, PAGE_SIZE - (va & 0xFFF)))
        nul = data.find(b"\0")
        return data if nul < 0 else data[:nul]
