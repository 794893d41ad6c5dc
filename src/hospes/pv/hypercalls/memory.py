"""memory_op (#12): the memory map, where the M2P lives (pv-abi.md §5.2), and the
reservation ops a balloon driver uses (xen/include/public/memory.h).

The reservation ops answer as Xen's xen/common/memory.c does for a PV domU:
the result is the number of extents done, counting from the start extent a
continuation carries in ``cmd >> MEMOP_EXTENT_SHIFT``; anything wrong with the
request as a whole (an unreadable argument, another domain, an order above
the domU limit, bad flags) is 0 extents done, and the first extent that fails
ends the call. A long one is preemptible as in Xen: it stops after an extent
(``PvVcpu.preempt_check``) and continues with the same op, the next extent
in ``cmd``. Frames are identity-mapped, so the MFN of a populated PFN is
the PFN itself; :mod:`hospes.pv.reservation` keeps the books.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
import struct

from hospes.machine.memory import GuestFault
from hospes.pv import layout as L
from hospes.pv.abi import DOMID_SELF, Hypercall
from hospes.pv.errors import Errno, XenError
from hospes.pv.vcpu import Continuation

if TYPE_CHECKING:
    from hospes.pv.reservation import Reservation
    from hospes.pv.vcpu import PvVcpu

XENMEM_increase_reservation = 0
XENMEM_decrease_reservation = 1
XENMEM_maximum_ram_page = 2
XENMEM_current_reservation = 3
XENMEM_maximum_reservation = 4
XENMEM_populate_physmap = 6
XENMEM_memory_map = 9
XENMEM_machphys_mapping = 12
E820_RAM = 1

MEMOP_EXTENT_SHIFT = 6
MEMOP_CMD_MASK = (1 << MEMOP_EXTENT_SHIFT) - 1
DOMU_MAX_ORDER = 9                      # Xen's CONFIG_DOMU_MAX_ORDER: 2 MiB extents at most
XENMEMF_ADDRESS_BITS = 0xFF
XENMEMF_NODE = 0xFF << 8                # node + 1; 0 = any node
XENMEMF_populate_on_demand = 1 << 16
XENMEMF_exact_node_request = 1 << 17
XENMEMF_vnode = 1 << 18
RESERVATION = struct.Struct("<QQIIH6x")   # struct xen_memory_reservation (64-bit)
UINT_MAX = 0xFFFF_FFFF
PAGE_SHIFT = 12


class _Preempted(Exception):
    """A reservation op stopped at extent ``done`` to continue later."""

    def __init__(self, done: int) -> None:
        self.done = done


def memory_op(vcpu: PvVcpu, cmd: int, arg: int, *_: int) -> int | Continuation:
    start = cmd >> MEMOP_EXTENT_SHIFT   # where a continuation resumes (an extent index)
    op = cmd & MEMOP_CMD_MASK
    lay = vcpu.domain.layout
    if op in (XENMEM_increase_reservation, XENMEM_decrease_reservation, XENMEM_populate_physmap):
        try:
            return reservation_op(vcpu, op, start, arg)
        except _Preempted as p:
            # Xen's continuation: the same op, resuming at the extent it stopped at.
            return Continuation(op | (p.done << MEMOP_EXTENT_SHIFT), arg)
    if op == XENMEM_machphys_mapping:
        end = L.M2P_VIRT_START + lay.m2p_pages * 4096
        vcpu.write(arg, struct.pack("<QQQ", L.M2P_VIRT_START, end, lay.guest_frames - 1))
        return 0
    if op == XENMEM_memory_map:
        capacity, buffer = struct.unpack("<I4xQ", vcpu.read(arg, 16))
        if capacity:  # Xen copies min(room, entries) entries; room for none gets none
            vcpu.write(buffer, struct.pack("<QQI", 0, lay.ram_bytes, E820_RAM))
        vcpu.write(arg, struct.pack("<I", min(capacity, 1)))
        return 0
    if op == XENMEM_maximum_ram_page:
        if start:
            raise XenError(Errno.EINVAL)
        return lay.guest_frames - 1
    if op in (XENMEM_current_reservation, XENMEM_maximum_reservation):
        if start:
            raise XenError(Errno.EINVAL)
        (domid,) = struct.unpack("<H", vcpu.read(arg, 2))
        if domid not in (DOMID_SELF, vcpu.domain.domid):
            raise XenError(Errno.ESRCH)
        res = vcpu.domain.reservation
        return res.current_pages if op == XENMEM_current_reservation else res.max_pages
    return -Errno.ENOSYS


def reservation_op(vcpu: PvVcpu, op: int, start: int, arg: int) -> int:
    """increase_reservation, decrease_reservation, populate_physmap: extents done."""
    try:
        extent_start, nr_extents, order, flags, domid = RESERVATION.unpack(vcpu.read(arg, RESERVATION.size))
    except GuestFault:
        return start
    if nr_extents > UINT_MAX >> MEMOP_EXTENT_SHIFT or start >= nr_extents:
        return start
    if domid not in (DOMID_SELF, vcpu.domain.domid):
        return start          # another domain: not found, or not this domain's to change
    limit = _frame_limit(flags)
    if limit is None or order > DOMU_MAX_ORDER:
        return start
    if op == XENMEM_populate_physmap and flags & XENMEMF_populate_on_demand:
        return start          # populate-on-demand on oneself is refused
    if op == XENMEM_decrease_reservation:
        return _decrease(vcpu, extent_start, start, nr_extents, order)
    if op == XENMEM_populate_physmap:
        return _populate(vcpu, extent_start, start, nr_extents, order, limit)
    return _increase(vcpu, extent_start, start, nr_extents, order, limit)


def _frame_limit(flags: int) -> int | None:
    """The frames an allocation may use under ``mem_flags`` (a frame count), or None
    when the flags are refused (construct_memop_from_reservation's -EINVAL)."""
    if flags & XENMEMF_vnode:
        return None           # no virtual NUMA topology
    node = (flags & XENMEMF_NODE) >> 8
    if node > 1:
        return None           # only node 0 exists
    bits = flags & XENMEMF_ADDRESS_BITS
    if not bits:
        return 1 << 52
    if bits <= PAGE_SHIFT:
        return None
    return 1 << min(bits - PAGE_SHIFT, 52)


def _decrease(vcpu: PvVcpu, extents: int, start: int, nr: int, order: int) -> int:
    res = vcpu.domain.reservation
    size = 1 << order
    for i in range(start, nr):
        if i != start and vcpu.preempt_check():
            raise _Preempted(i)
        try:
            gmfn = vcpu.read_u64(extents + 8 * i)
        except GuestFault:
            return i
        if res.release(gmfn, size) != size:
            return i
    return nr


def _populate(vcpu: PvVcpu, extents: int, start: int, nr: int, order: int, limit: int) -> int:
    """Frames for the guest's PFNs: the M2P records each PFN, the list gets the MFNs."""
    dom = vcpu.domain
    size = 1 << order
    for i in range(start, nr):
        if i != start and vcpu.preempt_check():
            raise _Preempted(i)
        try:
            gpfn = vcpu.read_u64(extents + 8 * i)
        except GuestFault:
            return i
        mfn = _claim(dom.reservation, gpfn, size, limit)
        if mfn is None:
            return i
        for j in range(size):
            dom.m2p.set(mfn + j, gpfn + j)
        try:
            vcpu.write_u64(extents + 8 * i, mfn)
        except GuestFault:
            return i
    return nr


def _claim(res: Reservation, gpfn: int, size: int, limit: int) -> int | None:
    """Machine frames for a populate of ``gpfn``: the PFN's own frames when they are
    free (the identity a domain is built with), else the lowest free extent."""
    if gpfn + size <= limit and res.populate(gpfn, size):
        return gpfn
    for frame in res.free_extents(size, min(limit, res.ram_pages)):
        if res.populate(frame, size):
            return frame
    return None


def _increase(vcpu: PvVcpu, extents: int, start: int, nr: int, order: int, limit: int) -> int:
    """Frames with no PFN of the guest's choosing: the lowest released ones, reported
    by MFN when the guest gave a list (a null list gets none reported, as in Xen)."""
    res = vcpu.domain.reservation
    size = 1 << order
    candidates = res.free_extents(size, min(limit, res.ram_pages))
    for i in range(start, nr):
        if i != start and vcpu.preempt_check():
            raise _Preempted(i)
        frame = next(candidates, None)
        if frame is None or not res.populate(frame, size):
            return i
        if extents:
            try:
                vcpu.write_u64(extents + 8 * i, frame)
            except GuestFault:
                return i
    return nr


HANDLERS = {Hypercall.memory_op: memory_op}
