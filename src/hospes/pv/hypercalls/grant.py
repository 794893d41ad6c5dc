"""grant_table_op (#20): the grant table as Xen's xen/common/grant_table.c offers it.

The table, its mappings and every rule belong to the domain's
:class:`hospes.pv.grant.GrantTable` (``vcpu.domain.grants``); this module
moves the guest's arguments and results and decides which domain an op
names. Each op of a batch gets its own status, as in Xen, and is O(1); a
batch is bounded like mmu_update's (:data:`MAX_OPS`), since Hospes has no
hypercall continuations for it.

Which domain ids an op accepts follows Xen exactly: map_grant_ref looks the
domain up by its number only (``rcu_lock_domain_by_id``), so DOMID_SELF is
GNTST_bad_domain there; setup_table, query_size, get_status_frames,
get_version and copy take DOMID_SELF too (``rcu_lock_domain_by_any_id``); a
copy may name a frame directly only with DOMID_SELF. Any other domain is
one this domain's process cannot reach (see :mod:`hospes.pv.grant`).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from hospes.machine.memory import PAGE_SHIFT, PAGE_SIZE, GuestFault
from hospes.pv.abi import DOMID_SELF, Hypercall
from hospes.pv.errors import Errno, XenError
from hospes.pv.grant import (
    GNTST_bad_copy_arg, GNTST_bad_domain, GNTST_bad_virt_addr, GNTST_general_error, GNTST_okay,
    GNTST_permission_denied, GNTMAP_device_map, GNTMAP_host_map, Claim, GrantTable,
)

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu

GNTTABOP_map_grant_ref = 0
GNTTABOP_unmap_grant_ref = 1
GNTTABOP_setup_table = 2
GNTTABOP_dump_table = 3
GNTTABOP_copy = 5
GNTTABOP_query_size = 6
GNTTABOP_set_version = 8
GNTTABOP_get_status_frames = 9
GNTTABOP_get_version = 10
GNTTABOP_swap_grant_ref = 11

GNTCOPY_source_gref = 1 << 0
GNTCOPY_dest_gref = 1 << 1

#: Ops one call may carry (mmu_update's bound); more is -EINVAL.
MAX_OPS = 4096

MAP = struct.Struct("<QIIHhIQ")          # host_addr, flags, ref, dom, status, handle, dev_bus_addr
UNMAP = struct.Struct("<QQIh2x")         # host_addr, dev_bus_addr, handle, status
COPY = struct.Struct("<QHH4xQHH4xHHh2x")  # src u, domid, offset; dest u, domid, offset; len, flags, status
SWAP = struct.Struct("<IIh2x")           # ref_a, ref_b, status
STATUS_FRAMES = struct.Struct("<IHhQ")   # nr_frames, dom, status, frame_list

__all__ = ["GNTST_general_error", "HANDLERS", "grant_table_op"]


def map_grant_ref(vcpu: PvVcpu, uop: int, count: int) -> int:
    dom = vcpu.domain
    grants: GrantTable = dom.grants
    for i in range(count):
        va = uop + i * MAP.size
        host_addr, flags, ref, domid, _status, _handle, _bus = MAP.unpack(vcpu.read(va, MAP.size))
        if flags & (GNTMAP_device_map | GNTMAP_host_map) and domid != dom.domid:
            vcpu.write(va + 18, struct.pack("<h", GNTST_bad_domain))
            continue
        status, handle, frame = grants.map(ref, flags, host_addr, domid=dom.domid, cr3=vcpu.kernel_cr3,
                                           writes=vcpu.writes)
        if status == GNTST_okay:
            vcpu.write(va + 18, struct.pack("<hIQ", status, handle, frame << PAGE_SHIFT))
        else:
            vcpu.write(va + 18, struct.pack("<h", status))
    return 0


def unmap_grant_ref(vcpu: PvVcpu, uop: int, count: int) -> int:
    grants: GrantTable = vcpu.domain.grants
    flush = False
    try:
        for i in range(count):
            va = uop + i * UNMAP.size
            host_addr, bus, handle, _status = UNMAP.unpack(vcpu.read(va, UNMAP.size))
            status, host_gone = grants.unmap(handle, host_addr, bus, cr3=vcpu.kernel_cr3, writes=vcpu.writes)
            flush |= host_gone
            vcpu.write(va + 20, struct.pack("<h", status))
    finally:
        if flush:   # Xen's gnttab_flush_tlb: every vCPU of the domain, before the guest goes on
            vcpu.request_flush()
            vcpu.domain.flush_others(vcpu)
    return 0


def _copy_one(vcpu: PvVcpu, grants: GrantTable, op: tuple[int, ...]) -> int:
    src_u, src_dom, src_off, dst_u, dst_dom, dst_off, length, flags, _status = op
    if not length:
        return GNTST_okay       # Xen checks nothing else for an empty copy
    own = vcpu.domain.domid
    for domid, by_ref in ((src_dom, flags & GNTCOPY_source_gref), (dst_dom, flags & GNTCOPY_dest_gref)):
        if domid != DOMID_SELF and not by_ref:
            return GNTST_permission_denied     # only DOMID_SELF may name a frame
        if domid not in (DOMID_SELF, own):
            return GNTST_bad_domain
    claims: list[Claim] = []
    try:
        for u, by_ref, writable in ((src_u, flags & GNTCOPY_source_gref, False),
                                    (dst_u, flags & GNTCOPY_dest_gref, True)):
            ref = u & 0xFFFF_FFFF if by_ref else None
            status, claim = grants.claim_for_copy(ref, u, writable=writable, domid=own)
            if claim is None:
                return status
            claims.append(claim)
        src, dst = claims
        if src_off + length > PAGE_SIZE or dst_off + length > PAGE_SIZE:
            return GNTST_bad_copy_arg
        if not (src.start <= src_off and src_off + length <= src.start + src.length) or \
                not (dst.start <= dst_off and dst_off + length <= dst.start + dst.length):
            return GNTST_general_error     # outside the sub-page a v2 grant allows
        mem = vcpu.domain.mem
        mem.write((dst.frame << PAGE_SHIFT) + dst_off, mem.read((src.frame << PAGE_SHIFT) + src_off, length))
        return GNTST_okay
    finally:
        for claim in claims:
            grants.release_copy(claim)


def copy(vcpu: PvVcpu, uop: int, count: int) -> int:
    grants: GrantTable = vcpu.domain.grants
    for i in range(count):
        va = uop + i * COPY.size
        status = _copy_one(vcpu, grants, COPY.unpack(vcpu.read(va, COPY.size)))
        vcpu.write(va + 36, struct.pack("<h", status))
    return 0


def swap_grant_ref(vcpu: PvVcpu, uop: int, count: int) -> int:
    grants: GrantTable = vcpu.domain.grants
    for i in range(count):
        va = uop + i * SWAP.size
        ref_a, ref_b, _status = SWAP.unpack(vcpu.read(va, SWAP.size))
        vcpu.write(va + 8, struct.pack("<h", grants.swap(ref_a, ref_b)))
    return 0


def _own(vcpu: PvVcpu, domid: int) -> bool:
    return domid in (DOMID_SELF, vcpu.domain.domid)   # rcu_lock_domain_by_any_id, as far as we can see


def setup_table(vcpu: PvVcpu, uop: int, count: int) -> int:
    if count != 1:
        return -Errno.EINVAL
    domid, nr_frames, _status, frame_list = struct.unpack("<H2xIh6xQ", vcpu.read(uop, 24))
    if not _own(vcpu, domid):
        vcpu.write(uop + 8, struct.pack("<h", GNTST_bad_domain))
        return 0
    grants: GrantTable = vcpu.domain.grants
    if nr_frames > grants.max_frames:
        vcpu.write(uop + 8, struct.pack("<h", GNTST_general_error))
        return 0
    # The frame list is written before the table grows: a fault on it leaves the table as it was.
    frames = [grants.frame_gfn(i) for i in range(nr_frames)]
    if frames:
        vcpu.write(frame_list, struct.pack(f"<{nr_frames}Q", *frames))
    with grants.types.lock:
        grants.setup(nr_frames)
    vcpu.write(uop + 8, struct.pack("<h", GNTST_okay))
    return 0


def query_size(vcpu: PvVcpu, uop: int, count: int) -> int:
    if count != 1:
        return -Errno.EINVAL
    (domid,) = struct.unpack("<H", vcpu.read(uop, 2))
    if not _own(vcpu, domid):
        vcpu.write(uop + 12, struct.pack("<h", GNTST_bad_domain))
        return 0
    grants: GrantTable = vcpu.domain.grants
    vcpu.write(uop + 4, struct.pack("<IIh", grants.nr_frames, grants.max_frames, GNTST_okay))
    return 0


def dump_table(vcpu: PvVcpu, uop: int, count: int) -> int:
    if count != 1:
        return -Errno.EINVAL
    (domid,) = struct.unpack("<H", vcpu.read(uop, 2))
    vcpu.write(uop + 2, struct.pack("<h", GNTST_okay if _own(vcpu, domid) else GNTST_bad_domain))
    return 0


def set_version(vcpu: PvVcpu, uop: int, count: int) -> int:
    (version,) = struct.unpack("<I", vcpu.read(uop, 4))
    grants: GrantTable = vcpu.domain.grants
    rc = 0
    try:
        grants.set_version(version)
    except XenError as e:
        rc = -e.errno
    vcpu.write(uop, struct.pack("<I", grants.version))   # Xen writes the version in force back
    return rc


def get_status_frames(vcpu: PvVcpu, uop: int, count: int) -> int:
    if count != 1:
        return -Errno.EINVAL
    nr_frames, domid, _status, frame_list = STATUS_FRAMES.unpack(vcpu.read(uop, STATUS_FRAMES.size))
    grants: GrantTable = vcpu.domain.grants
    if not _own(vcpu, domid):
        status = GNTST_bad_domain
    elif nr_frames > grants.nr_status_frames:
        status = GNTST_general_error
    else:
        status = GNTST_okay
        for i in range(nr_frames):
            try:
                vcpu.write(frame_list + 8 * i, struct.pack("<Q", grants.status_frame_gfn(i)))
            except GuestFault:
                status = GNTST_bad_virt_addr
                break
    vcpu.write(uop + 6, struct.pack("<h", status))
    return 0


def get_version(vcpu: PvVcpu, uop: int, count: int) -> int:
    (domid,) = struct.unpack("<H", vcpu.read(uop, 2))
    if not _own(vcpu, domid):
        return -Errno.ESRCH
    vcpu.write(uop + 4, struct.pack("<I", vcpu.domain.grants.version))
    return 0


OPS = {
    GNTTABOP_map_grant_ref: map_grant_ref,
    GNTTABOP_unmap_grant_ref: unmap_grant_ref,
    GNTTABOP_setup_table: setup_table,
    GNTTABOP_dump_table: dump_table,
    GNTTABOP_copy: copy,
    GNTTABOP_query_size: query_size,
    GNTTABOP_set_version: set_version,
    GNTTABOP_get_status_frames: get_status_frames,
    GNTTABOP_get_version: get_version,
    GNTTABOP_swap_grant_ref: swap_grant_ref,
}


BATCHED = frozenset({GNTTABOP_map_grant_ref, GNTTABOP_unmap_grant_ref, GNTTABOP_copy, GNTTABOP_swap_grant_ref})

#: cmd's low bits are the op; Xen keeps a continuation's argument above them.
GNTTABOP_CMD_MASK = (1 << 12) - 1


def grant_table_op(vcpu: PvVcpu, cmd: int, uop: int, count: int, *_: int) -> int:
    cmd &= 0xFFFFFFFF
    count &= 0xFFFFFFFF
    if count >= 1 << 31 or cmd & ~GNTTABOP_CMD_MASK:
        return -Errno.EINVAL      # Xen: (int)count < 0, or a continuation argument the op cannot have
    op = OPS.get(cmd)
    if op is None:
        return -Errno.ENOSYS
    if count > MAX_OPS and cmd in BATCHED:
        return -Errno.EINVAL
    return op(vcpu, uop, count)


HANDLERS = {Hypercall.grant_table_op: grant_table_op}
