"""grant_table_op (#20): the grant-table frames a frontend needs (pv-abi.md §11.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING
import struct

from hospes.pv import layout as L
from hospes.pv.abi import DOMID_SELF, Hypercall
from hospes.pv.errors import Errno

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu

GNTTABOP_setup_table = 2
GNTTABOP_query_size = 6
GNTTABOP_set_version = 8
GNTTABOP_get_version = 10
GNTST_okay = 0
GNTST_bad_domain = -2
GNTST_general_error = -1


def grant_table_op(vcpu: PvVcpu, cmd: int, uop: int, count: int, *_: int) -> int:
    cmd &= 0xFFFFFFFF
    dom = vcpu.domain
    if cmd == GNTTABOP_setup_table:
        if count != 1:
            return -Errno.EINVAL
        domid, nr_frames, _status, frame_list = struct.unpack("<H2xIh6xQ", vcpu.read(uop, 24))
        if domid not in (DOMID_SELF, dom.domid):
            vcpu.write(uop + 8, struct.pack("<h", GNTST_bad_domain))
            return 0
        if nr_frames > L.MAX_GRANT_FRAMES:
            vcpu.write(uop + 8, struct.pack("<h", GNTST_general_error))
            return 0
        frames = [dom.layout.grant_frame_gpa(i) >> 12 for i in range(nr_frames)]
        if frames:
            vcpu.write(frame_list, struct.pack(f"<{nr_frames}Q", *frames))
        dom.grant_frames = max(dom.grant_frames, nr_frames)
        vcpu.write(uop + 8, struct.pack("<h", GNTST_okay))
        return 0
    if cmd == GNTTABOP_query_size:
        if count != 1:
            return -Errno.EINVAL
        vcpu.write(uop + 4, struct.pack("<IIh", dom.grant_frames, L.MAX_GRANT_FRAMES, GNTST_okay))
        return 0
    if cmd == GNTTABOP_set_version:
        (version,) = struct.unpack("<I", vcpu.read(uop, 4))
        if version != 1:
            return -Errno.EINVAL
        return 0
    if cmd == GNTTABOP_get_version:
        vcpu.write(uop + 4, struct.pack("<I", 1))
        return 0
    return -Errno.ENOSYS


HANDLERS = {Hypercall.grant_table_op: grant_table_op}
