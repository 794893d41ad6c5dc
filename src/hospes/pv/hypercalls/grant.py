"""grant_table_op (#20): the grant-table frames a frontend needs (pv-abi.md §11.2).

The frames themselves and how many are set up belong to the domain's
:class:`hospes.pv.grant.GrantTable` (``vcpu.domain.grants``); this module only
moves the guest's arguments and results.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

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
        grants = dom.grants
        if nr_frames > grants.max_frames:
            vcpu.write(uop + 8, struct.pack("<h", GNTST_general_error))
            return 0
        # The frame list is written before the table grows: a fault on it leaves the table as it was.
        frames = [grants.frame_gfn(i) for i in range(nr_frames)]
        if frames:
            vcpu.write(frame_list, struct.pack(f"<{nr_frames}Q", *frames))
        grants.setup(nr_frames)
        vcpu.write(uop + 8, struct.pack("<h", GNTST_okay))
        return 0
    if cmd == GNTTABOP_query_size:
        if count != 1:
            return -Errno.EINVAL
        (domid,) = struct.unpack("<H", vcpu.read(uop, 2))
        if domid not in (DOMID_SELF, dom.domid):  # no other domain is visible from here
            vcpu.write(uop + 12, struct.pack("<h", GNTST_bad_domain))
            return 0
        grants = dom.grants
        vcpu.write(uop + 4, struct.pack("<IIh", grants.nr_frames, grants.max_frames, GNTST_okay))
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
