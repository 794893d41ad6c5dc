"""Descriptor tables: Xen's checks on a guest descriptor, and loading a GDT (pv-abi.md §3.2).

Shared by set_gdt and VCPUOP_initialise, which both hand Hospes GDT frames.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING

from hospes.pv.errors import Errno, XenError
from hospes.pv.mmu import SEGDESC

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu

DESC_P = 1 << 47
DESC_S = 1 << 44
DESC_DPL3 = 3 << 45


def check_descriptor(desc: int) -> int:
    """Xen's check_descriptor for a 64-bit guest: raise DPL to 3, refuse system types."""
    if not desc & DESC_P:
        return desc
    if desc & DESC_S:
        return desc | DESC_DPL3
    if (desc >> 40) & 0xF == 0:
        return desc
    raise XenError(Errno.EINVAL)


def load_gdt_frames(vcpu: "PvVcpu", frames: list[int], entries: int) -> int:
    """Validate descriptor frames, type them as descriptor pages and load them."""
    mem = vcpu.mem
    mmu = vcpu.domain.mmu
    with mmu.lock:
        fixed = []
        for f in frames:
            if f >= vcpu.domain.layout.ram_pages:
                return -Errno.EINVAL
            fixed.append([check_descriptor(d) for d in mem.q[f << 9:(f << 9) + 512].tolist()])
        taken = []
        try:
            for f in frames:
                mmu.get_type(f, SEGDESC, vcpu.writes)
                taken.append(f)
        except XenError:
            for f in taken:
                mmu.put_type(f, vcpu.writes)
            raise
        for f in vcpu.gdt_frames:
            mmu.put_type(f, vcpu.writes)
        for f, descs in zip(frames, fixed, strict=False):
            mem.q[f << 9:(f << 9) + 512] = array("Q", descs)
            mem.mark(f << 12, 4096)
        vcpu.load_gdt(frames, entries)
    return 0
