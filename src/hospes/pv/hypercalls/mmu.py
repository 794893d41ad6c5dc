"""The PV MMU hypercalls: mmu_update (#1), update_va_mapping (#14), mmuext_op (#26).

Decoding only; the rules live in :mod:`hospes.pv.mmu`. Every change is queued
on the vCPU and applied by the in-VM writer when the hypercall returns. A batch
of any length is preemptible as in Xen: after each request but the first it
may stop (``PvVcpu.preempt_check``) and continue with the rest, its count
marked MMU_UPDATE_PREEMPTED and the work done so far in ``*pdone``. TLB
flushes follow Xen's contract: only when the guest asks for one (the UVMF_*
flags, MMUEXT_*FLUSH*/INVLPG*), or when Hospes needs one for safety (a frame
that was writable becomes a page table). Flushes of other vCPUs kick them and
wait until each has scheduled its flush.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
import struct

from hospes.pv.abi import Hypercall
from hospes.machine.memory import GuestFault
from hospes.pv.errors import Errno, XenError
from hospes.pv.guestvirt import canonical
from hospes.pv.vcpu import Continuation

if TYPE_CHECKING:
    from hospes.pv.mmu import PvMmu
    from hospes.pv.vcpu import PvVcpu

MMU_NORMAL_PT_UPDATE = 0
MMU_MACHPHYS_UPDATE = 1
MMU_PT_UPDATE_PRESERVE_AD = 2
MMU_UPDATE_PREEMPTED = 1 << 31   # in a batch's count: a continuation (xen.h), the work done is in *pdone
READ_WINDOW = 256                # requests read from the guest at once

MMUEXT_PIN = {0: 1, 1: 2, 2: 3, 3: 4}
MMUEXT_UNPIN_TABLE = 4
MMUEXT_NEW_BASEPTR = 5
MMUEXT_TLB_FLUSH_LOCAL = 6
MMUEXT_INVLPG_LOCAL = 7
MMUEXT_TLB_FLUSH_MULTI = 8
MMUEXT_INVLPG_MULTI = 9
MMUEXT_TLB_FLUSH_ALL = 10
MMUEXT_INVLPG_ALL = 11
MMUEXT_FLUSH_CACHE = 12
MMUEXT_SET_LDT = 13
MMUEXT_NEW_USER_BASEPTR = 15
MMUEXT_FLUSH_CACHE_GLOBAL = 18


def _done(vcpu: PvVcpu, done_va: int, n: int) -> None:
    if done_va:
        vcpu.write(done_va, struct.pack("<I", n & 0xFFFFFFFF))


def _resumed(vcpu: PvVcpu, count: int, done_va: int) -> tuple[int, int]:
    """(count, done so far) of a batch call: a continuation marks its count with
    MMU_UPDATE_PREEMPTED and the work done before sits in ``*pdone``, as in Xen
    (which ignores a pdone it cannot read, counting from 0)."""
    count &= 0xFFFFFFFF
    if not count & MMU_UPDATE_PREEMPTED:
        return count, 0
    done = 0
    if done_va:
        try:
            (done,) = struct.unpack("<I", vcpu.read(done_va, 4))
        except GuestFault:
            pass
    return count & ~MMU_UPDATE_PREEMPTED, done


def mmu_update(vcpu: PvVcpu, req_va: int, count: int, done_va: int, foreigndom: int,
               *_: int) -> int | Continuation:
    count, done = _resumed(vcpu, count, done_va)
    if foreigndom & 0xFFFF not in (0x7FF0, vcpu.domain.domid):
        return -Errno.ESRCH
    mmu = vcpu.domain.mmu
    i = 0
    with mmu.lock:
        try:
            while i < count:
                # A window of requests at a time: memory stays bounded whatever the count.
                n = min(READ_WINDOW, count - i)
                data = vcpu.read(req_va + 16 * i, 16 * n)
                for k in range(n):
                    if i and vcpu.preempt_check():
                        return Continuation(req_va + 16 * i, (count - i) | MMU_UPDATE_PREEMPTED, done_va,
                                            foreigndom)
                    ptr, val = struct.unpack_from("<QQ", data, 16 * k)
                    cmd = ptr & 7   # Xen: the low bits of an 8-byte entry address; 3-7 are no command
                    if cmd in (MMU_NORMAL_PT_UPDATE, MMU_PT_UPDATE_PRESERVE_AD):
                        mmu.update_entry(vcpu, ptr & ~7, val, preserve_ad=cmd == MMU_PT_UPDATE_PRESERVE_AD)
                    elif cmd == MMU_MACHPHYS_UPDATE:
                        machphys_update(vcpu, ptr >> 12, val)
                    else:
                        raise XenError(Errno.ENOSYS)
                    i += 1
        finally:
            _done(vcpu, done_va, done + i)
    return 0


def machphys_update(vcpu: PvVcpu, mfn: int, pfn: int) -> None:
    """Any value for a frame the domain owns (Xen's get_page_from_mfn): a RAM frame it
    has not given back, or one of the frames above RAM it is given (shared_info, grants)."""
    dom = vcpu.domain
    if mfn >= dom.layout.guest_frames or mfn in dom.mmu.released:
        raise XenError(Errno.EINVAL)
    dom.m2p.set(mfn, pfn)


UVMF_FLUSHTYPE_MASK = 3
UVMF_TLB_FLUSH = 1
UVMF_INVLPG = 2
UVMF_ALL = 4


def update_va_mapping(vcpu: PvVcpu, va: int, new_pte: int, flags: int, *_: int) -> int:
    if not canonical(va):
        return -Errno.EINVAL   # Xen's __addr_ok (the hypervisor's own range fails the walk below)
    mmu = vcpu.domain.mmu
    with mmu.lock:
        pte_gpa = mmu.l1_entry_gpa(vcpu.kernel_cr3, va)
        mmu.update_entry(vcpu, pte_gpa, new_pte)
    kind = flags & UVMF_FLUSHTYPE_MASK
    if kind and (flags & UVMF_ALL or flags & ~7):
        vcpu.domain.flush_others(vcpu)  # UVMF_ALL / a vCPU mask: everyone, synchronously
    elif kind == UVMF_TLB_FLUSH:
        vcpu.request_flush()
    elif kind == UVMF_INVLPG:
        vcpu.request_invlpg(va)
    return 0


def mmuext_op(vcpu: PvVcpu, ops_va: int, count: int, done_va: int, foreigndom: int,
              *_: int) -> int | Continuation:
    count, done = _resumed(vcpu, count, done_va)
    mmu = vcpu.domain.mmu
    i = 0
    rc = 0
    with mmu.lock:
        try:
            while i < count:
                n = min(READ_WINDOW, count - i)
                data = vcpu.read(ops_va + 24 * i, 24 * n)
                for k in range(n):
                    if i and vcpu.preempt_check():
                        return Continuation(ops_va + 24 * i, (count - i) | MMU_UPDATE_PREEMPTED, done_va,
                                            foreigndom)
                    cmd, arg1, arg2 = struct.unpack_from("<I4xQQ", data, 24 * k)
                    _mmuext(vcpu, mmu, cmd, arg1, arg2)
                    i += 1
        except XenError as e:
            rc = -e.errno
        finally:
            _done(vcpu, done_va, done + i)
    return rc


def _mmuext(vcpu: PvVcpu, mmu: PvMmu, cmd: int, arg1: int, arg2: int) -> None:
    ram = vcpu.domain.layout.ram_pages
    if cmd in MMUEXT_PIN:
        if arg1 >= ram:
            raise XenError(Errno.EINVAL)
        mmu.pin(vcpu, arg1, MMUEXT_PIN[cmd])
    elif cmd == MMUEXT_UNPIN_TABLE:
        mmu.unpin(vcpu, arg1)
    elif cmd == MMUEXT_NEW_BASEPTR:
        if arg1 == 0 or arg1 >= ram:
            raise XenError(Errno.EINVAL)
        vcpu.kernel_cr3 = mmu.switch_l4(vcpu.writes, vcpu.kernel_cr3, arg1)
    elif cmd == MMUEXT_NEW_USER_BASEPTR:
        if arg1 >= ram:
            raise XenError(Errno.EINVAL)
        vcpu.user_cr3 = mmu.switch_l4(vcpu.writes, vcpu.user_cr3, arg1)
    elif cmd == MMUEXT_TLB_FLUSH_LOCAL:
        vcpu.request_flush()
    elif cmd == MMUEXT_INVLPG_LOCAL:
        if canonical(arg1):   # Xen ignores any other address (invlpg of one would fault in the writer)
            vcpu.request_invlpg(arg1)
    elif cmd in (MMUEXT_TLB_FLUSH_MULTI, MMUEXT_INVLPG_MULTI, MMUEXT_TLB_FLUSH_ALL, MMUEXT_INVLPG_ALL):
        vcpu.request_flush()
        vcpu.domain.flush_others(vcpu)
    elif cmd in (MMUEXT_FLUSH_CACHE, MMUEXT_FLUSH_CACHE_GLOBAL):
        pass
    elif cmd == MMUEXT_SET_LDT:
        if arg1 & 0xFFF or arg2 > 8192:
            raise XenError(Errno.EINVAL)
        if arg2:
            raise XenError(Errno.ENOSYS)  # no LDTs yet; Linux itself only ever clears it
        vcpu.ldt_base, vcpu.ldt_ents = arg1, arg2
    else:
        raise XenError(Errno.ENOSYS)


HANDLERS = {
    Hypercall.mmu_update: mmu_update,
    Hypercall.update_va_mapping: update_va_mapping,
    Hypercall.mmuext_op: mmuext_op,
}
