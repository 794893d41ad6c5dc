"""memory_op (#12): the memory map and where the M2P lives (pv-abi.md §5.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING
import struct

from hospes.pv import layout as L
from hospes.pv.abi import Hypercall
from hospes.pv.errors import Errno, XenError

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu

XENMEM_maximum_ram_page = 2
XENMEM_current_reservation = 3
XENMEM_maximum_reservation = 4
XENMEM_memory_map = 9
XENMEM_machphys_mapping = 12
E820_RAM = 1


def memory_op(vcpu: PvVcpu, cmd: int, arg: int, *_: int) -> int:
    cmd &= 0xFFFF  # upper bits carry continuation state in Xen
    lay = vcpu.domain.layout
    if cmd == XENMEM_machphys_mapping:
        end = L.M2P_VIRT_START + lay.m2p_pages * 4096
        vcpu.write(arg, struct.pack("<QQQ", L.M2P_VIRT_START, end, lay.guest_frames - 1))
        return 0
    if cmd == XENMEM_memory_map:
        capacity, buffer = struct.unpack("<I4xQ", vcpu.read(arg, 16))
        if capacity:  # Xen copies min(room, entries) entries; room for none gets none
            vcpu.write(buffer, struct.pack("<QQI", 0, lay.ram_bytes, E820_RAM))
        vcpu.write(arg, struct.pack("<I", min(capacity, 1)))
        return 0
    if cmd == XENMEM_maximum_ram_page:
        return lay.guest_frames - 1
    if cmd in (XENMEM_current_reservation, XENMEM_maximum_reservation):
        (domid,) = struct.unpack("<H", vcpu.read(arg, 2))
        if domid not in (0x7FF0, vcpu.domain.domid):
            raise XenError(Errno.ESRCH)
        return lay.ram_pages
    return -Errno.ENOSYS


HANDLERS = {Hypercall.memory_op: memory_op}
