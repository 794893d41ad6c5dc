"""Ballooning hypercalls without KVM: XENMEM_decrease_reservation,
XENMEM_populate_physmap, XENMEM_increase_reservation and the reservation
queries, over the real PV MMU and guest memory (tests/pv_fakes.py).

Expected answers are Xen's xen/common/memory.c for a PV domU: the result is
the number of extents done, a request refused as a whole is 0 extents (or
the continuation's start extent), the first failing extent ends the call,
populated frames are reported by MFN (= PFN here, identity-mapped).
"""

from __future__ import annotations

import os
import struct

import pytest

from hospes.machine.memory import PAGE_SIZE, GuestMemory
from hospes.pv.abi import DOMID_SELF, PTE_P, PTE_RW, Hypercall
from hospes.pv.errors import Errno
from hospes.pv.hypercalls import memory as M
from hospes.pv.reservation import ReservationState, runs
from hospes.state import StateError
from pv_fakes import ARG_VA, BUF_VA, DOMID, FREE_FRAME, L1_FRAME, L2_FRAME, FakePvDomain, FakeVcpu, u64

RAM = 128           # pv_fakes.RAM_PAGES
UNMAPPED_INDEX = 100


def reservation(vcpu: FakeVcpu, op: int, frames: list[int], *, order: int = 0, flags: int = 0,
                domid: int = DOMID_SELF, start: int = 0, nr: int | None = None, extents: int = BUF_VA) -> int:
    vcpu.put(BUF_VA, b"".join(struct.pack("<Q", f) for f in frames))
    vcpu.put(ARG_VA, M.RESERVATION.pack(extents, len(frames) if nr is None else nr, order, flags, domid))
    return vcpu.hypercall(Hypercall.memory_op, op | start << M.MEMOP_EXTENT_SHIFT, ARG_VA)


def query(vcpu: FakeVcpu, op: int, domid: int = DOMID_SELF) -> int:
    vcpu.put(ARG_VA + 0x100, struct.pack("<H", domid))
    return vcpu.hypercall(Hypercall.memory_op, op, ARG_VA + 0x100)


def current(vcpu: FakeVcpu) -> int:
    return query(vcpu, M.XENMEM_current_reservation)


def extent_list(vcpu: FakeVcpu, n: int) -> list[int]:
    data = vcpu.get(BUF_VA, 8 * n)
    return [u64(data, 8 * i) for i in range(n)]


def allocated_pages(mem: GuestMemory) -> int:
    return os.fstat(mem.fd).st_blocks * 512 // PAGE_SIZE


# --- decrease ------------------------------------------------------------------------------------


def test_decrease_gives_frames_back_and_the_accounting_drops(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    frames = [FREE_FRAME, FREE_FRAME + 1, FREE_FRAME + 7]
    for f in frames:
        dom.mem.write(f << 12, b"\xAA" * PAGE_SIZE)      # resident in the memfd
    vcpu.put(ARG_VA, bytes(0x400))                        # the argument pages, too
    vcpu.put(BUF_VA, bytes(0x400))
    before = allocated_pages(dom.mem)
    assert reservation(vcpu, M.XENMEM_decrease_reservation, frames) == 3
    assert current(vcpu) == RAM - 3
    assert query(vcpu, M.XENMEM_maximum_reservation) == RAM
    assert allocated_pages(dom.mem) == before - 3          # the host memory really went back
    assert dom.mem.read(FREE_FRAME << 12, 16) == bytes(16)
    assert dom.reservation.released == set(frames)


def test_decrease_with_order_gives_back_whole_extents(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert reservation(vcpu, M.XENMEM_decrease_reservation, [FREE_FRAME, FREE_FRAME + 8], order=2) == 2
    assert current(vcpu) == RAM - 8


@pytest.mark.parametrize("refused", [
    RAM,                      # beyond RAM: the shared_info frame
    RAM + 1000,               # nowhere
    L2_FRAME,                 # a page table
    FREE_FRAME - 1,           # mapped writable by the kernel's L1
])
def test_decrease_stops_at_the_first_frame_xen_would_refuse(dom: FakePvDomain, vcpu: FakeVcpu, refused: int) -> None:
    done = reservation(vcpu, M.XENMEM_decrease_reservation, [FREE_FRAME, refused, FREE_FRAME + 2])
    assert done == 1
    assert dom.reservation.released == {FREE_FRAME}
    assert current(vcpu) == RAM - 1


def test_decrease_refuses_a_frame_hospes_holds_and_one_already_released(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    dom.mem.hold((FREE_FRAME + 3) << 12)                # a ring, say
    assert reservation(vcpu, M.XENMEM_decrease_reservation, [FREE_FRAME + 3]) == 0
    assert reservation(vcpu, M.XENMEM_decrease_reservation, [FREE_FRAME, FREE_FRAME]) == 1
    assert current(vcpu) == RAM - 1


def test_a_partly_refused_extent_keeps_the_frames_before_the_refusal(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    """Xen's guest_remove_page loop: the extent fails, the pages it removed stay removed."""
    dom.mem.hold((FREE_FRAME + 2) << 12)
    assert reservation(vcpu, M.XENMEM_decrease_reservation, [FREE_FRAME], order=2) == 0
    assert dom.reservation.released == {FREE_FRAME, FREE_FRAME + 1}


@pytest.mark.parametrize("kw", [
    dict(domid=DOMID + 1),                       # another domain
    dict(order=M.DOMU_MAX_ORDER + 1),            # above the domU limit
    dict(flags=M.XENMEMF_vnode),                 # no vNUMA
    dict(flags=5 << 8),                          # node 4: offline
    dict(flags=12),                              # address_bits <= PAGE_SHIFT
    dict(nr=(M.UINT_MAX >> M.MEMOP_EXTENT_SHIFT) + 1),
])
def test_requests_refused_as_a_whole_do_nothing(dom: FakePvDomain, vcpu: FakeVcpu, kw: dict) -> None:
    assert reservation(vcpu, M.XENMEM_decrease_reservation, [FREE_FRAME], **kw) == 0
    assert current(vcpu) == RAM


def test_the_domains_own_id_works_like_domid_self(vcpu: FakeVcpu) -> None:
    assert reservation(vcpu, M.XENMEM_decrease_reservation, [FREE_FRAME], domid=DOMID) == 1


def test_an_unreadable_argument_or_list_does_nothing(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    unmapped = 0xFFFF_FFFF_8000_0000 + UNMAPPED_INDEX * PAGE_SIZE
    assert vcpu.hypercall(Hypercall.memory_op, M.XENMEM_decrease_reservation, unmapped) == 0
    assert reservation(vcpu, M.XENMEM_decrease_reservation, [FREE_FRAME], extents=unmapped) == 0
    assert current(vcpu) == RAM


def test_a_continuation_starts_at_its_extent(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    frames = [FREE_FRAME, FREE_FRAME + 1, FREE_FRAME + 2]
    assert reservation(vcpu, M.XENMEM_decrease_reservation, frames, start=1) == 3
    assert dom.reservation.released == {FREE_FRAME + 1, FREE_FRAME + 2}
    assert reservation(vcpu, M.XENMEM_decrease_reservation, frames, start=3) == 3   # nothing left: start back
    assert current(vcpu) == RAM - 2


# --- the MMU and released frames ------------------------------------------------------------------


def test_a_released_frame_cannot_be_mapped_pinned_or_written_through_mmu_update(
        dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    f = FREE_FRAME + 5
    assert reservation(vcpu, M.XENMEM_decrease_reservation, [f]) == 1
    for flags in (PTE_P | PTE_RW, PTE_P):
        vcpu.put(ARG_VA + 0x200, struct.pack("<QQ", (L1_FRAME << 12) + 8 * UNMAPPED_INDEX, (f << 12) | flags))
        assert vcpu.hypercall(Hypercall.mmu_update, ARG_VA + 0x200, 1, 0, DOMID_SELF) == -Errno.EINVAL
    vcpu.put(ARG_VA + 0x200, struct.pack("<I4xQQ", 0, f, 0))            # MMUEXT_PIN_L1_TABLE
    assert vcpu.hypercall(Hypercall.mmuext_op, ARG_VA + 0x200, 1, 0, DOMID_SELF) == -Errno.EINVAL
    vcpu.put(ARG_VA + 0x200, struct.pack("<QQ", (f << 12) + 8, 0x1234))  # an entry *in* the released frame
    assert vcpu.hypercall(Hypercall.mmu_update, ARG_VA + 0x200, 1, 0, DOMID_SELF) == -Errno.EINVAL
    assert dom.l1_entry(UNMAPPED_INDEX) == 0


def test_a_frame_mapped_again_after_populate_is_usable(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    f = FREE_FRAME + 5
    assert reservation(vcpu, M.XENMEM_decrease_reservation, [f]) == 1
    assert reservation(vcpu, M.XENMEM_populate_physmap, [f]) == 1
    vcpu.put(ARG_VA + 0x200, struct.pack("<QQ", (L1_FRAME << 12) + 8 * UNMAPPED_INDEX, (f << 12) | PTE_P | PTE_RW))
    assert vcpu.hypercall(Hypercall.mmu_update, ARG_VA + 0x200, 1, 0, DOMID_SELF) == 0


# --- populate and increase ---------------------------------------------------------------------------


def test_populate_takes_released_frames_back_and_reports_them_by_mfn(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    frames = [FREE_FRAME + 10, FREE_FRAME + 11, FREE_FRAME + 20]
    assert reservation(vcpu, M.XENMEM_decrease_reservation, frames) == 3
    assert reservation(vcpu, M.XENMEM_populate_physmap, frames) == 3
    assert extent_list(vcpu, 3) == frames                 # identity: MFN == PFN
    assert current(vcpu) == RAM
    assert dom.mem.read((FREE_FRAME + 10) << 12, PAGE_SIZE) == bytes(PAGE_SIZE)


def test_populate_refuses_a_frame_the_domain_still_holds_or_never_had(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert reservation(vcpu, M.XENMEM_decrease_reservation, [FREE_FRAME]) == 1
    assert reservation(vcpu, M.XENMEM_populate_physmap, [FREE_FRAME, FREE_FRAME + 1]) == 1
    assert reservation(vcpu, M.XENMEM_populate_physmap, [RAM + 3]) == 0
    assert current(vcpu) == RAM


def test_populate_refuses_above_the_maximum_and_below_address_bits(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert reservation(vcpu, M.XENMEM_decrease_reservation, [FREE_FRAME, FREE_FRAME + 1]) == 2
    dom.reservation.max_pages = RAM - 1                  # the domain may only hold one of them back
    assert query(vcpu, M.XENMEM_maximum_reservation) == RAM - 1
    assert reservation(vcpu, M.XENMEM_populate_physmap, [FREE_FRAME, FREE_FRAME + 1]) == 1
    assert current(vcpu) == RAM - 1
    dom.reservation.max_pages = RAM
    # address_bits 18: frames below 64 only; FREE_FRAME + 1 == 65
    assert reservation(vcpu, M.XENMEM_populate_physmap, [FREE_FRAME + 1], flags=18) == 0
    assert reservation(vcpu, M.XENMEM_populate_physmap, [FREE_FRAME + 1], flags=19) == 1


def test_populate_on_demand_on_oneself_is_refused(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert reservation(vcpu, M.XENMEM_decrease_reservation, [FREE_FRAME]) == 1
    assert reservation(vcpu, M.XENMEM_populate_physmap, [FREE_FRAME], flags=M.XENMEMF_populate_on_demand) == 0


def test_populate_of_a_pfn_whose_frames_are_busy_takes_free_ones_and_tells_the_m2p(
        dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert reservation(vcpu, M.XENMEM_decrease_reservation, [FREE_FRAME + 4], order=2) == 1
    # FREE_FRAME + 2's own frames are in use: Xen allocates others and records the PFNs.
    assert reservation(vcpu, M.XENMEM_populate_physmap, [FREE_FRAME + 2], order=2) == 1
    assert extent_list(vcpu, 1) == [FREE_FRAME + 4]
    assert [dom.m2p.get(FREE_FRAME + 4 + j) for j in range(4)] == [FREE_FRAME + 2 + j for j in range(4)]
    assert current(vcpu) == RAM
    # Nothing is free any more.
    assert reservation(vcpu, M.XENMEM_populate_physmap, [FREE_FRAME + 4], order=2) == 0


def test_populate_with_order_takes_only_a_whole_aligned_free_extent(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert reservation(vcpu, M.XENMEM_decrease_reservation, [FREE_FRAME + 5, FREE_FRAME + 6]) == 2
    assert reservation(vcpu, M.XENMEM_populate_physmap, [FREE_FRAME + 4], order=1) == 0   # 4-5: 4 is busy
    assert reservation(vcpu, M.XENMEM_populate_physmap, [FREE_FRAME + 5], order=0) == 1
    assert extent_list(vcpu, 1) == [FREE_FRAME + 5]


def test_increase_hands_out_the_lowest_released_frames(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert reservation(vcpu, M.XENMEM_decrease_reservation, [FREE_FRAME + 9, FREE_FRAME + 3]) == 2
    assert reservation(vcpu, M.XENMEM_increase_reservation, [0, 0, 0]) == 2    # only two to give
    assert extent_list(vcpu, 2) == [FREE_FRAME + 3, FREE_FRAME + 9]
    assert current(vcpu) == RAM


def test_increase_without_a_list_reports_nothing(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert reservation(vcpu, M.XENMEM_decrease_reservation, [FREE_FRAME + 1]) == 1
    assert reservation(vcpu, M.XENMEM_increase_reservation, [], nr=1, extents=0) == 1
    assert current(vcpu) == RAM


# --- queries and other ops -------------------------------------------------------------------------


def test_queries_refuse_another_domain_and_a_continuation(vcpu: FakeVcpu) -> None:
    assert query(vcpu, M.XENMEM_current_reservation, DOMID + 1) == -Errno.ESRCH
    vcpu.put(ARG_VA, struct.pack("<H", DOMID_SELF))
    op = M.XENMEM_current_reservation | 1 << M.MEMOP_EXTENT_SHIFT
    assert vcpu.hypercall(Hypercall.memory_op, op, ARG_VA) == -Errno.EINVAL


# --- saved state ---------------------------------------------------------------------------------------


def test_released_frames_are_saved_in_runs_and_punched_again_on_restore(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    frames = [FREE_FRAME, FREE_FRAME + 1, FREE_FRAME + 2, FREE_FRAME + 9]
    assert reservation(vcpu, M.XENMEM_decrease_reservation, frames) == 4
    state = dom.reservation.save()
    assert state.released == ((FREE_FRAME, 3), (FREE_FRAME + 9, 1))
    other = FakePvDomain()
    try:
        other.mem.write((FREE_FRAME + 9) << 12, b"\x55" * PAGE_SIZE)   # the copy's zeros, say
        before = allocated_pages(other.mem)
        other.reservation.restore_released(state)
        assert other.reservation.current_pages == RAM - 4
        assert allocated_pages(other.mem) == before - 1
        with pytest.raises(StateError):
            other.reservation.restore_released(ReservationState(released=((RAM - 1, 2),)))
    finally:
        other.close_memory()


def test_runs() -> None:
    assert runs({5, 1, 2, 3, 9, 10}) == ((1, 3), (5, 1), (9, 2))
    assert runs(set()) == ()


def test_released_frames_read_by_a_copy_are_given_back_again(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    frames = [FREE_FRAME + 1, FREE_FRAME + 2]
    vcpu.put(ARG_VA, bytes(0x400))
    vcpu.put(BUF_VA, bytes(0x400))
    assert reservation(vcpu, M.XENMEM_decrease_reservation, frames) == 2
    before = allocated_pages(dom.mem)
    for f in frames:                     # what a save's copy does: read (shmem gives the hole a page)
        assert dom.mem.read(f << 12, PAGE_SIZE) == bytes(PAGE_SIZE)
        dom.mem.write(f << 12, bytes(PAGE_SIZE))
    assert allocated_pages(dom.mem) == before + 2
    dom.reservation.punch_released()
    assert allocated_pages(dom.mem) == before
