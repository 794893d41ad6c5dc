"""set_gdt (#2) and update_descriptor (#10): descriptor tables (pv-abi.md §3.2)."""

from __future__ import annotations

import struct
from array import array

from hospes.pv import abi
from hospes.pv.abi import Hypercall
from hospes.pv.errors import Errno, XenError
from hospes.pv.mmu import SEGDESC

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


def set_gdt(vcpu, frame_list: int, entries: int, *_: int) -> int:
    entries &= 0xFFFFFFFF
    if entries > abi.FIRST_RESERVED_GDT_ENTRY:
        return -Errno.EINVAL
    nframes = (entries + 511) // 512
    frames = list(struct.unpack(f"<{nframes}Q", vcpu.read(frame_list, 8 * nframes))) if nframes else []
    return load_gdt_frames(vcpu, frames, entries)


def load_gdt_frames(vcpu, frames: list[int], entries: int) -> int:
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
        for f, descs in zip(frames, fixed):
            mem.q[f << 9:(f << 9) + 512] = array("Q", descs)
        vcpu.load_gdt(frames, entries)
    return 0


def update_descriptor(vcpu, maddr: int, desc: int, *_: int) -> int:
    if maddr & 7 or (maddr >> 12) >= vcpu.domain.layout.ram_pages:
        return -Errno.EINVAL
    if vcpu.domain.mmu.is_page_table(maddr >> 12):
        return -Errno.EINVAL  # a descriptor page or an ordinary one, never a page table
    vcpu.mem.write_u64(maddr, check_descriptor(desc))
    return 0


HANDLERS = {Hypercall.set_gdt: set_gdt, Hypercall.update_descriptor: update_descriptor}
