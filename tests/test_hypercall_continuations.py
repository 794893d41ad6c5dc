"""Preemptible hypercalls (Xen's continuations), without KVM.

mmu_update, mmuext_op and multicall stop after a bounded amount of work and
re-arm themselves: the guest's RIP goes back to its SYSCALL and the argument
registers carry what is left, as xen/arch/x86/mm.c (count |
MMU_UPDATE_PREEMPTED, the request pointer advanced, the work done in *pdone)
and xen/common/multicall.c (the list advanced, a preempted entry's new
arguments written back into it) do. :func:`complete` plays the guest
re-executing the SYSCALL, and the writer emptying the queued stores between
chunks, until the call answers.
"""

from __future__ import annotations

import struct
import tracemalloc
from typing import Iterator

import pytest

import hospes.pv.vcpu as vcpu_module
from hospes.pv import abi
from hospes.pv.abi import DOMID_SELF, PTE_P, PTE_RW, PTE_US, Hypercall
from hospes.pv.errors import Errno
from hospes.pv.runstate import RunEvent
from pv_fakes import ARG_VA, BUF_VA, KVA, L1_FRAME, L3_FRAME, FakePvDomain, FakeVcpu, u32

MMU_UPDATE_PREEMPTED = 1 << 31
MMUEXT_TLB_FLUSH_LOCAL = 6
MMUEXT_UNPIN_TABLE = 4
RETURN_RIP = KVA + 0x5002           # the instruction after the guest's SYSCALL
REQ_VA = KVA + 30 * 4096            # 16 pages of mmu_update requests (frames 30-45)
DONE_VA = BUF_VA + 0xF00
FIRST_FREE_SLOT = 100               # kernel L1 slots from here on map nothing
FREE_FRAME = 64


def signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


class Chunks:
    """What each return to the guest of one preempted call looked like."""

    def __init__(self) -> None:
        self.args: list[tuple[int, int, int, int, int]] = []   # the re-armed argument registers
        self.queued: list[int] = []                            # stores the writer got per return

    def __len__(self) -> int:
        return len(self.queued)


def complete(vcpu: FakeVcpu, nr: int, *args: int) -> tuple[int, Chunks]:
    """Issue hypercall ``nr`` and re-execute it as a guest would until it answers."""
    chunks = Chunks()
    regs = vcpu.regs
    vcpu.t_rip = RETURN_RIP
    vcpu.hypercall(nr, *args)
    while True:
        chunks.queued.append(len(vcpu.writes))
        vcpu.writes.clear()                      # the writer applies them on the way back
        if vcpu.t_rip != RETURN_RIP - 2:
            return signed(regs.rax), chunks
        assert regs.rax == nr                    # the SYSCALL re-executes the same hypercall
        chunks.args.append((regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8))
        assert len(chunks) < 100_000
        vcpu.t_rip = RETURN_RIP
        vcpu._hypercall()


@pytest.fixture
def every(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every n-th preempt_check says stop (n = every[0]): a deterministic slice."""
    n = [3]
    seen = [0]

    def check(self: FakeVcpu) -> bool:
        seen[0] += 1
        return seen[0] % n[0] == 0

    monkeypatch.setattr(vcpu_module.PvVcpu, "preempt_check", check)
    yield n


def l1_slot(index: int) -> int:
    return (L1_FRAME << 12) + 8 * index


def put_requests(vcpu: FakeVcpu, va: int, requests: list[tuple[int, int]]) -> None:
    vcpu.put(va, b"".join(struct.pack("<QQ", p, v) for p, v in requests))


def new_mappings(n: int) -> list[tuple[int, int]]:
    return [(l1_slot(FIRST_FREE_SLOT + k), ((FREE_FRAME + k) << 12) | PTE_P | PTE_RW) for k in range(n)]


def identity_updates(dom: FakePvDomain, n: int) -> list[tuple[int, int]]:
    """``n`` updates that write each kernel L1 entry back as it is (a 4096-long batch wraps around)."""
    q = dom.mem.q
    return [(l1_slot(k % 512), q[(L1_FRAME << 9) + k % 512]) for k in range(n)]


# --- mmu_update ------------------------------------------------------------------------------


def test_a_preempted_mmu_update_is_re_armed_with_the_rest_of_its_batch(
        dom: FakePvDomain, vcpu: FakeVcpu, every: list[int]) -> None:
    requests = new_mappings(10)
    put_requests(vcpu, REQ_VA, requests)
    vcpu.put(DONE_VA, struct.pack("<I", 0xDEAD))
    vcpu.t_rip = RETURN_RIP
    vcpu.hypercall(Hypercall.mmu_update, REQ_VA, 10, DONE_VA, DOMID_SELF)
    # The third check (before the fourth request; none runs before the first)
    # stops it: the SYSCALL again, the pointer at the fourth, the count left marked, pdone = 3.
    # Its argument registers carry the rest, so the return path must keep them.
    assert not vcpu.returned_normally
    regs = vcpu.regs
    assert vcpu.t_rip == RETURN_RIP - 2 and regs.rax == Hypercall.mmu_update
    assert (regs.rdi, regs.rsi, regs.rdx, regs.r10) == (REQ_VA + 48, 7 | MMU_UPDATE_PREEMPTED, DONE_VA, DOMID_SELF)
    assert u32(vcpu.get(DONE_VA, 4)) == 3
    assert [dom.l1_entry(FIRST_FREE_SLOT + k) != 0 for k in range(5)] == [True, True, True, False, False]
    vcpu.t_rip = RETURN_RIP
    vcpu._hypercall()
    assert (regs.rdi, regs.rsi) == (REQ_VA + 6 * 16, 4 | MMU_UPDATE_PREEMPTED)
    assert u32(vcpu.get(DONE_VA, 4)) == 6


def test_a_preempted_mmu_update_completes_every_request_and_counts_them_all(
        dom: FakePvDomain, vcpu: FakeVcpu, every: list[int]) -> None:
    requests = new_mappings(40)
    put_requests(vcpu, REQ_VA, requests)
    rc, chunks = complete(vcpu, Hypercall.mmu_update, REQ_VA, 40, DONE_VA, DOMID_SELF)
    assert rc == 0 and len(chunks) > 10
    assert u32(vcpu.get(DONE_VA, 4)) == 40
    for k, (_, value) in enumerate(requests):
        assert dom.l1_entry(FIRST_FREE_SLOT + k) == value | PTE_US
    left = [a[1] & ~MMU_UPDATE_PREEMPTED for a in chunks.args]
    assert all(a > b for a, b in zip(left, left[1:], strict=False)) and all(a[1] & MMU_UPDATE_PREEMPTED for a in chunks.args)


def test_an_error_after_a_continuation_counts_the_earlier_chunks_in_pdone(
        dom: FakePvDomain, vcpu: FakeVcpu, every: list[int]) -> None:
    requests = new_mappings(12)
    requests[9] = (l1_slot(FIRST_FREE_SLOT + 9), (L3_FRAME << 12) | PTE_P | PTE_RW)   # a writable page table
    put_requests(vcpu, REQ_VA, requests)
    rc, chunks = complete(vcpu, Hypercall.mmu_update, REQ_VA, 12, DONE_VA, DOMID_SELF)
    assert rc < 0 and len(chunks) > 1
    assert u32(vcpu.get(DONE_VA, 4)) == 9
    assert dom.l1_entry(FIRST_FREE_SLOT + 10) == 0


def test_a_continuation_without_pdone_still_completes(dom: FakePvDomain, vcpu: FakeVcpu, every: list[int]) -> None:
    put_requests(vcpu, REQ_VA, new_mappings(7))
    rc, chunks = complete(vcpu, Hypercall.mmu_update, REQ_VA, 7, 0, DOMID_SELF)
    assert rc == 0 and len(chunks) > 1 and dom.l1_entry(FIRST_FREE_SLOT + 6) != 0


def test_an_mmu_update_longer_than_4096_requests_is_served(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    # Xen has no limit on the count: the batch is preemptible instead.
    vcpu.slice_ns = vcpu_module.HYPERCALL_SLICE_NS
    put_requests(vcpu, REQ_VA, identity_updates(dom, 5000))
    rc, _ = complete(vcpu, Hypercall.mmu_update, REQ_VA, 5000, DONE_VA, DOMID_SELF)
    assert rc == 0 and u32(vcpu.get(DONE_VA, 4)) == 5000


def test_a_huge_count_over_unreadable_requests_is_efault_with_nothing_read_ahead(vcpu: FakeVcpu) -> None:
    # 2^31 - 1 requests: only a window is read (no 32 GiB allocation); the first
    # unmapped page ends the call with what was done.
    rc = vcpu.hypercall(Hypercall.mmu_update, KVA + 0x100000, 0x7FFF_FFFF, DONE_VA, DOMID_SELF)
    assert rc == -Errno.EFAULT and u32(vcpu.get(DONE_VA, 4)) == 0


# --- mmuext_op -------------------------------------------------------------------------------


def test_a_preempted_mmuext_op_continues_and_counts_every_op(vcpu: FakeVcpu, every: list[int]) -> None:
    ops = b"".join(struct.pack("<I4xQQ", MMUEXT_TLB_FLUSH_LOCAL, 0, 0) for _ in range(20))
    vcpu.put(REQ_VA, ops)
    rc, chunks = complete(vcpu, Hypercall.mmuext_op, REQ_VA, 20, DONE_VA, DOMID_SELF)
    assert rc == 0 and len(chunks) > 5
    assert u32(vcpu.get(DONE_VA, 4)) == 20
    first = chunks.args[0]
    assert (first[0], first[1]) == (REQ_VA + 3 * 24, 17 | MMU_UPDATE_PREEMPTED)


def test_a_failing_op_after_a_continuation_answers_its_error_with_the_total_done(
        vcpu: FakeVcpu, every: list[int]) -> None:
    ops = [struct.pack("<I4xQQ", MMUEXT_TLB_FLUSH_LOCAL, 0, 0)] * 8
    ops[6] = struct.pack("<I4xQQ", MMUEXT_UNPIN_TABLE, FREE_FRAME, 0)   # not pinned: -EINVAL
    vcpu.put(REQ_VA, b"".join(ops))
    rc, chunks = complete(vcpu, Hypercall.mmuext_op, REQ_VA, 8, DONE_VA, DOMID_SELF)
    assert rc == -Errno.EINVAL and len(chunks) > 1
    assert u32(vcpu.get(DONE_VA, 4)) == 6


# --- multicall -------------------------------------------------------------------------------


def multicall_list(entries: list[tuple[int, ...]]) -> bytes:
    out = b""
    for op, *args in entries:
        out += struct.pack("<8Q", op, 0xAAAA, *(list(args) + [0] * (6 - len(args))))
    return out


def test_a_multicall_continues_inside_a_preempted_entry_and_then_with_the_next(
        dom: FakePvDomain, vcpu: FakeVcpu, every: list[int]) -> None:
    # Three mmu_updates of 5 new mappings each, with their own pdone words.
    entries = []
    for e in range(3):
        put_requests(vcpu, REQ_VA + e * 4096, new_mappings(15)[5 * e:5 * e + 5])
        entries.append((Hypercall.mmu_update, REQ_VA + e * 4096, 5, DONE_VA + 4 * e, DOMID_SELF))
    vcpu.put(ARG_VA, multicall_list(entries))
    vcpu.t_rip = RETURN_RIP
    vcpu.hypercall(Hypercall.multicall, ARG_VA, 3)
    # The first entry stopped inside: its args now carry its continuation and the
    # multicall continues from it.
    regs = vcpu.regs
    assert vcpu.t_rip == RETURN_RIP - 2 and (regs.rax, regs.rdi, regs.rsi) == (Hypercall.multicall, ARG_VA, 3)
    entry = struct.unpack("<8Q", vcpu.get(ARG_VA, 64))
    assert entry[2:6] == (REQ_VA + 48, 2 | MMU_UPDATE_PREEMPTED, DONE_VA, DOMID_SELF)
    vcpu.t_rip = RETURN_RIP
    rc, chunks = complete(vcpu, Hypercall.multicall, regs.rdi, regs.rsi)
    assert rc == 0
    assert any(a[0] == ARG_VA + 64 for a in chunks.args)   # moved on to the second entry at some point
    results = [struct.unpack_from("<Q", vcpu.get(ARG_VA + 64 * e + 8, 8))[0] for e in range(3)]
    assert results == [0, 0, 0]
    assert [u32(vcpu.get(DONE_VA + 4 * e, 4)) for e in range(3)] == [5, 5, 5]
    for k in range(15):
        assert dom.l1_entry(FIRST_FREE_SLOT + k) != 0


def test_a_multicall_preempted_between_entries_advances_its_list(vcpu: FakeVcpu, every: list[int]) -> None:
    every[0] = 1   # every check preempts
    vcpu.put(ARG_VA, multicall_list([(Hypercall.xen_version, 0)] * 4))
    vcpu.t_rip = RETURN_RIP
    vcpu.hypercall(Hypercall.multicall, ARG_VA, 4)
    regs = vcpu.regs
    assert (regs.rdi, regs.rsi) == (ARG_VA + 64, 3)
    assert struct.unpack_from("<Q", vcpu.get(ARG_VA + 8, 8))[0] != 0xAAAA   # the first result is written
    assert struct.unpack_from("<Q", vcpu.get(ARG_VA + 72, 8))[0] == 0xAAAA  # the second not yet run
    rc, chunks = complete(vcpu, Hypercall.multicall, regs.rdi, regs.rsi)
    assert rc == 0 and len(chunks) == 3


def test_a_multicall_of_4096_long_mmu_updates_completes_in_slices_with_bounded_memory(
        dom: FakePvDomain, vcpu: FakeVcpu, monkeypatch: pytest.MonkeyPatch) -> None:
    # The shape, scaled to 16 entries of the same 4096 updates, each of
    # which changes its entry (256 slots, flipped between two frames each pass),
    # so every one is a store for the writer. A fake clock ticks 50 µs per look.
    ticks = [0]

    def clock() -> int:
        ticks[0] += 50_000
        return ticks[0]

    monkeypatch.setattr(vcpu_module, "_monotonic_ns", clock)
    vcpu.slice_ns = vcpu_module.HYPERCALL_SLICE_NS
    put_requests(vcpu, REQ_VA, [(l1_slot(FIRST_FREE_SLOT + i % 256), ((FREE_FRAME + (i // 256) % 2) << 12) | PTE_P)
                                for i in range(4096)])
    n = 16
    vcpu.put(ARG_VA, multicall_list([(Hypercall.mmu_update, REQ_VA, 4096, DONE_VA + 4 * e, DOMID_SELF)
                                     for e in range(n)]))
    tracemalloc.start()
    try:
        rc, chunks = complete(vcpu, Hypercall.multicall, ARG_VA, n)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rc == 0
    assert [u32(vcpu.get(DONE_VA + 4 * e, 4)) for e in range(n)] == [4096] * n
    assert [struct.unpack_from("<Q", vcpu.get(ARG_VA + 64 * e + 8, 8))[0] for e in range(n)] == [0] * n
    assert len(chunks) > n * 4096 // 40
    assert max(chunks.queued) <= vcpu_module.HYPERCALL_SLICE_WRITES   # a chunk's stores for the writer stay few
    assert peak < 2 << 20                      # and so does Python memory (65536 updates queued: ~8 MiB)


# --- what ends a slice early -----------------------------------------------------------------


def test_a_pending_upcall_preempts_a_batch_after_its_first_element(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    put_requests(vcpu, REQ_VA, new_mappings(4))
    vcpu.callbacks[abi.CALLBACKTYPE_event] = (KVA + 0x1000, 0)
    vcpu.mem.buf[vcpu.vcpu_info_gpa] = 1       # evtchn_upcall_pending
    vcpu.mem.buf[vcpu.vcpu_info_gpa + 1] = 0   # not masked
    vcpu.t_rip = RETURN_RIP
    vcpu.hypercall(Hypercall.mmu_update, REQ_VA, 4, DONE_VA, DOMID_SELF)
    assert vcpu.t_rip == RETURN_RIP - 2 and u32(vcpu.get(DONE_VA, 4)) == 1


def test_a_masked_pending_event_does_not_preempt(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    put_requests(vcpu, REQ_VA, new_mappings(4))
    vcpu.callbacks[abi.CALLBACKTYPE_event] = (KVA + 0x1000, 0)
    vcpu.mem.buf[vcpu.vcpu_info_gpa] = 1
    vcpu.mem.buf[vcpu.vcpu_info_gpa + 1] = 1
    vcpu.t_rip = RETURN_RIP
    assert vcpu.hypercall(Hypercall.mmu_update, REQ_VA, 4, DONE_VA, DOMID_SELF) == 0
    assert vcpu.t_rip == RETURN_RIP and u32(vcpu.get(DONE_VA, 4)) == 4


def test_a_pause_request_preempts_a_batch(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    put_requests(vcpu, REQ_VA, new_mappings(4))
    vcpu.run_state.fire(RunEvent.PAUSE)
    vcpu.t_rip = RETURN_RIP
    vcpu.hypercall(Hypercall.mmu_update, REQ_VA, 4, DONE_VA, DOMID_SELF)
    assert vcpu.t_rip == RETURN_RIP - 2 and u32(vcpu.get(DONE_VA, 4)) == 1


def test_an_entry_written_back_as_it_is_leaves_nothing_for_the_writer(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    # Each store the writer makes is a CPL-0 instruction the host emulates: an
    # update that changes nothing (mapped, unmapped, in a pinned table) needs none.
    put_requests(vcpu, REQ_VA, identity_updates(dom, 600))
    rc, chunks = complete(vcpu, Hypercall.mmu_update, REQ_VA, 600, DONE_VA, DOMID_SELF)
    assert rc == 0 and u32(vcpu.get(DONE_VA, 4)) == 600 and sum(chunks.queued) == 0
    put_requests(vcpu, REQ_VA, new_mappings(1))
    rc, chunks = complete(vcpu, Hypercall.mmu_update, REQ_VA, 1, DONE_VA, DOMID_SELF)
    assert rc == 0 and chunks.queued == [0]     # a new mapping: in place, no shadow to drop
    slot, value = new_mappings(1)[0]
    put_requests(vcpu, REQ_VA, [(slot, value | 0x2000)])   # the same entry, changed (PAT bit)
    rc, chunks = complete(vcpu, Hypercall.mmu_update, REQ_VA, 1, DONE_VA, DOMID_SELF)
    assert rc == 0 and chunks.queued == [1]


# --- memory_op's reservation ops ----------------------------------------------------------------


def test_a_preempted_decrease_reservation_continues_at_the_next_extent(
        dom: FakePvDomain, vcpu: FakeVcpu, every: list[int]) -> None:
    from hospes.pv.hypercalls import memory as M

    frames = [FREE_FRAME + k for k in range(10)]
    vcpu.put(BUF_VA, b"".join(struct.pack("<Q", f) for f in frames))
    vcpu.put(ARG_VA, M.RESERVATION.pack(BUF_VA, 10, 0, 0, DOMID_SELF))
    before = dom.reservation.current_pages
    vcpu.t_rip = RETURN_RIP
    vcpu.hypercall(Hypercall.memory_op, M.XENMEM_decrease_reservation, ARG_VA)
    # Xen's continuation: the same op with the extent to resume at in cmd >> MEMOP_EXTENT_SHIFT.
    regs = vcpu.regs
    assert vcpu.t_rip == RETURN_RIP - 2
    assert (regs.rdi, regs.rsi) == (M.XENMEM_decrease_reservation | 3 << M.MEMOP_EXTENT_SHIFT, ARG_VA)
    assert dom.reservation.current_pages == before - 3
    rc, chunks = complete(vcpu, Hypercall.memory_op, regs.rdi, regs.rsi)
    assert rc == 10 and len(chunks) > 1          # extents done, counted from the first
    assert dom.reservation.current_pages == before - 10
