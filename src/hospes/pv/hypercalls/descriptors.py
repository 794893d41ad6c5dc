"""set_gdt (#2) and update_descriptor (#10): descriptor tables (pv-abi.md §3.2)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from hospes.pv import abi
from hospes.pv.abi import Hypercall
from hospes.pv.descriptors import check_descriptor, load_gdt_frames
from hospes.pv.errors import Errno

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu


def set_gdt(vcpu: PvVcpu, frame_list: int, entries: int, *_: int) -> int:
    entries &= 0xFFFFFFFF
    if entries > abi.FIRST_RESERVED_GDT_ENTRY:
        return -Errno.EINVAL
    nframes = (entries + 511) // 512
    frames = list(struct.unpack(f"<{nframes}Q", vcpu.read(frame_list, 8 * nframes))) if nframes else []
    return load_gdt_frames(vcpu, frames, entries)


def update_descriptor(vcpu: PvVcpu, maddr: int, desc: int, *_: int) -> int:
    if maddr & 7 or (maddr >> 12) >= vcpu.domain.layout.ram_pages:
        return -Errno.EINVAL
    desc = check_descriptor(desc)
    mmu = vcpu.domain.mmu
    # Under the MMU's lock: another vCPU must not make the page a table between
    # the check and the store (the "descriptor" would be an unvalidated entry).
    with mmu.lock:
        if mmu.is_page_table(maddr >> 12):
            return -Errno.EINVAL  # a descriptor page or an ordinary one, never a page table
        vcpu.mem.write_u64(maddr, desc)
    return 0


HANDLERS = {Hypercall.set_gdt: set_gdt, Hypercall.update_descriptor: update_descriptor}
