"""The machine-to-phys table (M2P): for each machine frame, the guest frame it holds.

A PV guest keeps its own phys-to-machine list (p2m) and Xen keeps the reverse,
one 8-byte entry per machine frame, readable by the guest at the address
``XENMEM_machphys_mapping`` reports (pv-abi.md §5.2). Linux converts every
entry it reads from a page table through it (``mfn_to_pfn``), and checks the
round trip against its p2m, so the table must say what the guest told us.

Hospes builds a domain's machine frames identity-mapped (frame *n* of RAM is
pfn *n*); the frames above RAM that the guest maps but does not own
(shared_info, grant frames) start as ``INVALID_M2P_ENTRY``. The guest may
change any entry of a frame it owns with ``MMU_MACHPHYS_UPDATE`` -- Linux
does when it remaps RAM out of e820 holes, PV GRUB when it moves the
console and store frames to the end of the new kernel's pfn space -- and
``XENMEM_populate_physmap`` records the pfn a repopulated frame was asked
for. Xen takes any value there (the guest's own business); it only checks
that the frame belongs to the domain.

Where the table lives
    In hypervisor frames (``Trampoline`` allocates and maps them read-only at
    ``M2P_VIRT_START``, L4 slot 257): Linux reads it at native speed. Xen's
    ABI fixes ``MACH2PHYS_VIRT_START`` = 0xFFFF800000000000 (slot 256) for
    kernels that read it without asking; slot 256 cannot be mapped on this
    KVM, so loads there fault and :mod:`hospes.pv.emulate` answers them from
    :meth:`MachToPhys.read`.

Saved state
    Only the entries that differ from the built table (:class:`M2PState`),
    so the record is empty for nearly every guest. Machine frames keep their
    numbers across save, restore and migration (guest memory is copied frame
    for frame), so the entries need no translation.
"""

from __future__ import annotations

import threading
from array import array
from dataclasses import dataclass
from typing import ClassVar

from hospes.machine.memory import PAGE_SIZE, GuestMemory
from hospes.state import StateError, check_version

INVALID_M2P_ENTRY = (1 << 64) - 1
ENTRY_BYTES = 8


@dataclass(frozen=True, slots=True)
class M2PState:
    """The entries the guest changed, as sorted ``(machine frame, value)`` pairs."""

    VERSION: ClassVar[int] = 1
    changed: tuple[tuple[int, int], ...] = ()
    version: int = VERSION


class MachToPhys:
    """One domain's M2P, in the hypervisor frames at ``table_gpa``."""

    def __init__(self, mem: GuestMemory, table_gpa: int, ram_pages: int, frames: int) -> None:
        self.mem = mem
        self.table_gpa = table_gpa
        self.ram_pages = ram_pages
        self.frames = frames        # entries the table has: RAM and the frames above it
        self.size = -(-frames * ENTRY_BYTES // PAGE_SIZE) * PAGE_SIZE   # bytes mapped, whole pages
        self._base = table_gpa // ENTRY_BYTES
        self.changed: dict[int, int] = {}
        self.lock = threading.Lock()

    def built(self, mfn: int) -> int:
        """The entry a new domain starts with."""
        return mfn if mfn < self.ram_pages else INVALID_M2P_ENTRY

    def fill(self) -> None:
        """Write the table a new domain starts with (and forget every change)."""
        q = self.mem.q
        base, ram = self._base, self.ram_pages
        q[base:base + ram] = array("Q", range(ram))
        for mfn in range(ram, self.frames):
            q[base + mfn] = INVALID_M2P_ENTRY
        self.changed.clear()

    def get(self, mfn: int) -> int:
        if not 0 <= mfn < self.frames:
            raise IndexError(f"machine frame {mfn:#x} is not in the M2P of {self.frames:#x} frames")
        return int(self.mem.q[self._base + mfn])

    def set(self, mfn: int, pfn: int) -> None:
        """Record that machine frame ``mfn`` holds guest frame ``pfn`` (any 64-bit value)."""
        if not 0 <= mfn < self.frames:
            raise IndexError(f"machine frame {mfn:#x} is not in the M2P of {self.frames:#x} frames")
        pfn &= INVALID_M2P_ENTRY
        with self.lock:
            self.mem.q[self._base + mfn] = pfn
            if pfn == self.built(mfn):
                self.changed.pop(mfn, None)
            else:
                self.changed[mfn] = pfn

    def read(self, offset: int, size: int) -> bytes | None:
        """``size`` bytes of the table from byte ``offset`` (a guest load), or None past the
        pages it occupies (where the mapping at ``M2P_VIRT_START`` ends too)."""
        if offset < 0 or size <= 0 or offset + size > self.size:
            return None
        return self.mem.read(self.table_gpa + offset, size)

    # --- saved state ------------------------------------------------------------

    def save(self) -> M2PState:
        with self.lock:
            return M2PState(changed=tuple(sorted(self.changed.items())))

    def restore(self, state: M2PState) -> None:
        """Apply a saved table's changes to a freshly filled table."""
        check_version(state, "machine-to-phys table")
        for mfn, pfn in state.changed:
            if not 0 <= mfn < self.frames or not 0 <= pfn <= INVALID_M2P_ENTRY:
                raise StateError(f"The saved M2P sets frame {mfn:#x} to {pfn:#x}; this domain's table has "
                                 f"{self.frames:#x} frames. The record does not belong to this domain.")
            self.set(mfn, pfn)


__all__ = ["ENTRY_BYTES", "INVALID_M2P_ENTRY", "M2PState", "MachToPhys"]
