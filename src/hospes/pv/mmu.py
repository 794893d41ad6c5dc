"""The PV MMU: validating the guest's page tables (pv-abi.md §8).

The hardware walks the guest's own tables (machine frame == guest-physical
frame), so Hospes' job is to keep them safe and runnable:

* every present entry gets ``_PAGE_USER`` (the guest kernel runs at CPL 3),
  and L4 entries ``_PAGE_ACCESSED``, as Xen's adjust_guest_l*e does;
* entries may only name frames of this domain: RAM at every level, plus the
  hypervisor-owned frames the guest may map (shared_info, grant frames) in L1s;
  no superpages;
* L4 slots 256-271 belong to the hypervisor: guest writes there are refused and
  every L4 validated gets Hospes' own entries;
* writable mappings of pinned page tables are refused.

A frame's validated level is remembered so a table shared by many L4s (the
kernel half) is walked once. Every change is queued on the vCPU and applied by
the in-VM writer, because this KVM ignores page-table stores made by the VMM.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from hospes.pv import layout as L
from hospes.pv.abi import PTE_A, PTE_ADDR_MASK, PTE_P, PTE_PSE, PTE_RW, PTE_US
from hospes.pv.errors import Errno, XenError

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu

FIRST_XEN_SLOT = 256
LAST_XEN_SLOT = 271


class PvMmu:
    """Page-table types and validation for one domain."""

    def __init__(self, mem, ram_pages: int, guest_frames: int, hv_l4_entries: dict[int, int]) -> None:
        self.mem = mem
        self.q = mem.q
        self.ram_pages = ram_pages
        self.guest_frames = guest_frames
        self.hv_l4 = {slot: hv_l4_entries.get(slot, 0) for slot in range(FIRST_XEN_SLOT, LAST_XEN_SLOT + 1)}
        self.level: dict[int, int] = {}
        self.pinned: set[int] = set()
        self.lock = threading.RLock()

    # --- entries -------------------------------------------------------------------

    def adjust(self, level: int, entry: int) -> int:
        """Validate one entry for a table of ``level``; return it adjusted."""
        if not entry & PTE_P:
            return entry
        frame = (entry & PTE_ADDR_MASK) >> 12
        if level == 1:
            if frame >= self.guest_frames:
                raise XenError(Errno.EINVAL)
            if entry & PTE_RW and frame in self.pinned:
                raise XenError(Errno.EINVAL)
            return entry | PTE_US
        if frame >= self.ram_pages or entry & PTE_PSE:
            raise XenError(Errno.EINVAL)
        return entry | PTE_US | (PTE_A if level == 4 else 0)

    def note_writable(self, level: int, entry: int) -> None:
        """A frame mapped writable stops being a page table (Xen: type change)."""
        if level == 1 and entry & (PTE_P | PTE_RW) == (PTE_P | PTE_RW):
            frame = (entry & PTE_ADDR_MASK) >> 12
            if frame in self.level and frame not in self.pinned:
                del self.level[frame]

    def validate_table(self, frame: int, level: int, writes: list[tuple[int, int]]) -> None:
        """Validate a whole table (and what it references), queueing fix-ups."""
        if frame >= self.ram_pages:
            raise XenError(Errno.EINVAL)
        if self.level.get(frame) == level:
            return
        base = frame << 9  # index of the table's first qword
        q = self.q
        entries = q[base:base + 512].tolist()
        for i, entry in enumerate(entries):
            if level == 4 and FIRST_XEN_SLOT <= i <= LAST_XEN_SLOT:
                want = self.hv_l4[i]
                if entry != want:
                    writes.append(((frame << 12) + i * 8, want))
                continue
            if not entry & PTE_P:
                continue
            new = self.adjust(level, entry)
            if level > 1:
                self.validate_table((new & PTE_ADDR_MASK) >> 12, level - 1, writes)
            else:
                self.note_writable(1, new)
            if new != entry:
                writes.append(((frame << 12) + i * 8, new))
        self.level[frame] = level

    # --- operations the hypercalls use ----------------------------------------------

    def update_entry(self, vcpu: "PvVcpu", pte_gpa: int, value: int, preserve_ad: bool = False) -> None:
        """mmu_update: a checked write of one entry at machine address ``pte_gpa``."""
        frame = pte_gpa >> 12
        if frame >= self.ram_pages:
            raise XenError(Errno.EINVAL)
        level = self.level.get(frame)
        if preserve_ad:
            value |= self.q[pte_gpa >> 3] & 0x60
        if level is None:
            vcpu.writes.append((pte_gpa, value))
            return
        index = (pte_gpa & 0xFFF) >> 3
        if level == 4 and FIRST_XEN_SLOT <= index <= LAST_XEN_SLOT:
            raise XenError(Errno.EPERM)
        new = self.adjust(level, value)
        if level > 1 and new & PTE_P:
            self.validate_table((new & PTE_ADDR_MASK) >> 12, level - 1, vcpu.writes)
        self.note_writable(level, new)
        vcpu.writes.append((pte_gpa, new))

    def pin(self, vcpu: "PvVcpu", frame: int, level: int) -> None:
        if frame in self.pinned:
            raise XenError(Errno.EINVAL)
        self.validate_table(frame, level, vcpu.writes)
        self.pinned.add(frame)

    def unpin(self, frame: int) -> None:
        if frame not in self.pinned:
            raise XenError(Errno.EINVAL)
        self.pinned.discard(frame)
        if self.level.get(frame) == 1:
            del self.level[frame]

    def l1_entry_gpa(self, cr3: int, va: int) -> int:
        """GPA of the L1 entry mapping ``va`` under ``cr3`` (-EINVAL if none)."""
        table = cr3 & PTE_ADDR_MASK
        for shift in (39, 30, 21):
            if table >= self.ram_pages << 12:
                raise XenError(Errno.EINVAL)
            entry = self.q[(table >> 3) + ((va >> shift) & 511)]
            if not entry & PTE_P or entry & PTE_PSE:
                raise XenError(Errno.EINVAL)
            table = entry & PTE_ADDR_MASK
        if table >= self.ram_pages << 12:
            raise XenError(Errno.EINVAL)
        return table + ((va >> 12) & 511) * 8

    def is_page_table(self, frame: int) -> bool:
        return frame in self.level


def hv_slot_entries(trampoline_entries: dict[int, int]) -> dict[int, int]:
    """The values Hospes writes into slots 256-271 of every guest L4."""
    return {slot: trampoline_entries.get(slot, 0) for slot in range(FIRST_XEN_SLOT, LAST_XEN_SLOT + 1)}


__all__ = ["PvMmu", "hv_slot_entries", "L"]
