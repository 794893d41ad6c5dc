"""Hospes' own writable type references (issue 13): the rules in the PV MMU, what the
hypercalls answer for a page Hospes writes, ptwr's refusals, and saved state.

Xen counts every writable mapping of a page -- the guest's, a backend's grant
map, its own of the console/store rings and vcpu_info -- as a PGT_writable_page
reference, and a page with one cannot become a page table or GDT page
(get_page_type fails: -EINVAL from pin, mmu_update, new_baseptr, set_gdt).
Backend refusals are in test_block_backend.py and test_net_backend.py.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest

from hospes.machine.memory import GuestMemory
from hospes.pv import emulate
from hospes.pv.abi import PTE_P, PTE_RW, Hypercall
from hospes.pv.errors import Errno, XenError
from hospes.pv.grant import GrantError, GrantTable
from hospes.pv.mmu import SEGDESC, WRITABLE, MmuState, PvMmu
from hospes.pv.ring import BackRing, RingError
from hospes.pv.vcpu import VI_CR2
from hospes.state import StateError
from pv_machine import Machine
from pv_fakes import ARG_VA, CODE_VA, FREE_FRAME, L1_FRAME, L2_FRAME, STACK_TOP, FakePvDomain, FakeVcpu, kva

RAM = 64
P_RW = PTE_P | PTE_RW
PF = 14


@pytest.fixture()
def mmu():
    mem = GuestMemory([("ram", RAM * 4096), ("xen", 4 * 4096), ("hv", 4 * 4096)])
    m = PvMmu(mem, RAM, RAM + 4, {})
    yield m
    mem.close()


def writes() -> list[tuple[int, int]]:
    return []


# --- the reference rules --------------------------------------------------------------------------


def test_a_held_page_cannot_become_a_table_or_descriptor_page_until_released(mmu) -> None:
    mmu.hold_writable((20,))
    assert (mmu.type[20], mmu.count[20], mmu.held[20]) == (WRITABLE, 1, 1)
    for kind in (1, 2, 3, 4, SEGDESC):
        with pytest.raises(XenError) as e:
            mmu.get_type(20, kind, writes())
        assert e.value.errno == Errno.EINVAL
    # Linked as a child table from an L2 (mmu_update): refused, the L2 keeps its old entry.
    mmu.get_type(30, 2, writes())
    v = type("V", (), {"writes": []})()
    with pytest.raises(XenError) as e:
        mmu.update_entry(v, 30 << 12, 20 << 12 | P_RW)
    assert e.value.errno == Errno.EINVAL and mmu.q[(30 << 9)] == 0
    mmu.release_writable((20,))
    assert 20 not in mmu.count and 20 not in mmu.held
    mmu.get_type(20, 1, writes())          # an ordinary page again
    assert mmu.table_level(20) == 1


def test_a_table_or_descriptor_page_is_never_held_and_a_batch_is_all_or_nothing(mmu) -> None:
    mmu.get_type(21, 1, writes())
    mmu.get_type(22, SEGDESC, writes())
    for bad in (21, 22, RAM, RAM + 2, -1):
        with pytest.raises(XenError) as e:
            mmu.hold_writable((20, bad))
        assert e.value.errno == Errno.EINVAL
        assert 20 not in mmu.count and not mmu.held   # the first frame was given back
    assert (mmu.type[21], mmu.count[21]) == (1, 1) and (mmu.type[22], mmu.count[22]) == (SEGDESC, 1)


def test_a_guest_mapping_and_hospes_share_the_writable_type(mmu) -> None:
    mmu.get_type(23, WRITABLE, writes())   # the guest maps it writable
    mmu.hold_writable((23, 23))            # two holders (two vCPUs' vcpu_info in one page)
    assert (mmu.count[23], mmu.held[23]) == (3, 2)
    mmu.put_type(23, writes())             # the guest unmaps it: Hospes' references stay
    assert (mmu.count[23], mmu.held[23]) == (2, 2)
    mmu.put_type(23, writes())             # a put the guest does not own changes nothing
    assert mmu.count[23] == 2
    with pytest.raises(XenError):
        mmu.get_type(23, 1, writes())
    mmu.release_writable((23,))
    mmu.release_writable((23,))
    mmu.release_writable((23,))            # more releases than holds: nothing more to drop
    assert 23 not in mmu.count and not mmu.held


def test_the_guests_last_mapping_going_while_held_still_owes_a_flush(mmu) -> None:
    flushes = []
    mmu.flush_all = lambda: flushes.append(1)
    mmu.get_type(24, WRITABLE, writes())
    mmu.hold_writable((24,))
    mmu.put_type(24, writes())             # a TLB may still map it writable
    mmu.release_writable((24,))
    mmu.get_type(24, 1, writes())
    assert flushes == [1]
    # A page only Hospes ever wrote owes none.
    mmu.hold_writable((25,))
    mmu.release_writable((25,))
    mmu.get_type(25, 1, writes())
    assert flushes == [1]


def test_saved_state_holds_only_the_guests_references_and_holders_take_theirs_again(mmu) -> None:
    mmu.get_type(26, WRITABLE, writes())
    mmu.hold_writable((26, 27))            # 26: guest + Hospes; 27: Hospes only
    state = mmu.save()
    assert state.runs == ((26, 1, WRITABLE, 1),)
    again = PvMmu.restore(state, mem=mmu.mem, ram_pages=RAM, guest_frames=RAM + 4, hv_l4_entries={})
    again.hold_writable((26, 27))          # the rings and vcpu_info, restored
    assert (again.type, again.count, again.held) == (mmu.type, mmu.count, mmu.held)
    assert again.save() == state and mmu.save() == state   # saving does not change the counts


def test_a_saved_state_without_hospes_references_is_what_an_unheld_mmu_saves(mmu) -> None:
    mmu.hold_writable((28,))
    assert mmu.save() == MmuState((), ())


# --- grants and rings -----------------------------------------------------------------------------


def test_grant_table_refuses_to_hold_a_page_table(mmu) -> None:
    grants = GrantTable(mmu.mem, base_gpa=RAM * 4096, max_frames=4, ram_frames=RAM, types=mmu)
    mmu.get_type(29, 1, writes())
    with pytest.raises(GrantError, match="L1"):
        grants.hold_writable((29,))
    grants.hold_writable((30,))
    assert mmu.held == {30: 1}
    grants.release_writable((30,))
    assert not mmu.held and 30 not in mmu.count


def test_a_ring_holds_its_page_until_released(mmu) -> None:
    ring = BackRing(mmu.mem, 31 << 12, holds=mmu, nr_slots=32, slot_size=112)
    with pytest.raises(XenError):
        mmu.get_type(31, 1, writes())
    ring.release()
    ring.release()                         # repeatable
    mmu.get_type(31, 1, writes())
    with pytest.raises(RingError, match="cannot be written"):
        BackRing(mmu.mem, 31 << 12, holds=mmu, nr_slots=32, slot_size=112)
    assert not mmu.held


# --- hypercalls on held pages (the real PvDomain over fake KVM) -----------------------------------


VCPUOP_register_vcpu_info = 10
MMUEXT_PIN_L1, MMUEXT_PIN_L2, MMUEXT_NEW_BASEPTR, MMUEXT_INVLPG_LOCAL = 0, 1, 5, 7
HELD = FREE_FRAME + 10                     # a page Hospes writes (say, a ring)


def mmuext(vcpu: FakeVcpu, cmd: int, arg1: int) -> int:
    vcpu.put(ARG_VA, struct.pack("<I4xQQ", cmd, arg1, 0))
    return vcpu.hypercall(Hypercall.mmuext_op, ARG_VA, 1, 0, 0x7FF0)


def test_pin_link_baseptr_and_set_gdt_of_a_held_page_are_einval(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    dom.mmu.hold_writable((HELD,))
    for cmd in (MMUEXT_PIN_L1, MMUEXT_PIN_L2, MMUEXT_NEW_BASEPTR):
        assert mmuext(vcpu, cmd, HELD) == -Errno.EINVAL
    # mmu_update hooking it under the kernel's L2 as an L1.
    vcpu.put(ARG_VA, struct.pack("<QQ", (L2_FRAME << 12) + 8 * 5, HELD << 12 | P_RW))
    assert vcpu.hypercall(Hypercall.mmu_update, ARG_VA, 1, 0, 0x7FF0) == -Errno.EINVAL
    assert dom.mem.read_u64((L2_FRAME << 12) + 8 * 5) == 0
    vcpu.put(ARG_VA, struct.pack("<Q", HELD))
    assert vcpu.hypercall(Hypercall.set_gdt, ARG_VA, 512) == -Errno.EINVAL
    assert dom.mmu.held == {HELD: 1} and dom.mmu.count[HELD] == 1
    dom.mmu.release_writable((HELD,))
    assert mmuext(vcpu, MMUEXT_PIN_L1, HELD) == 0


def register_vcpu_info(vcpu: FakeVcpu, frame: int, offset: int = 0) -> int:
    vcpu.put(ARG_VA, struct.pack("<QII", frame, offset, 0))
    return vcpu.hypercall(Hypercall.vcpu_op, VCPUOP_register_vcpu_info, 0, ARG_VA)


def test_vcpu_info_is_refused_in_a_page_table_and_its_page_cannot_become_one(dom: FakePvDomain,
                                                                              vcpu: FakeVcpu) -> None:
    table = FREE_FRAME + 11
    assert mmuext(vcpu, MMUEXT_PIN_L1, table) == 0
    assert register_vcpu_info(vcpu, table) == -Errno.EINVAL
    assert not vcpu.vcpu_info_registered and not dom.mmu.held
    page = FREE_FRAME + 12
    assert register_vcpu_info(vcpu, page, 64) == 0
    assert vcpu.vcpu_info_gpa == (page << 12) + 64 and dom.mmu.held == {page: 1}
    assert mmuext(vcpu, MMUEXT_PIN_L1, page) == -Errno.EINVAL


@pytest.mark.kvm
def test_a_restored_vcpu_takes_its_vcpu_info_reference_again() -> None:
    first = Machine()
    try:
        pv = first.pv.vcpus[1]
        pv.vcpu_info_gpa, pv.vcpu_info_registered = (0x30 << 12) + 64, True
        first.pv.mmu.hold_writable((0x30,))
        state = first.pv.save()
    finally:
        first.close()
    assert state.mmu.runs == ()            # Hospes' own reference is not in the record
    again = Machine(saved=state)
    try:
        assert again.pv.mmu.held == {0x30: 1}
        with pytest.raises(XenError):
            again.pv.mmu.get_type(0x30, 1, [])
    finally:
        again.close()
    # A record whose vcpu_info page is a page table is not ours: refused.
    forged = dataclasses.replace(state, mmu=MmuState(runs=((0x30, 1, 1, 1),), pinned=((0x30, 1),)))
    with pytest.raises(StateError, match="vcpu_info"):
        Machine(saved=forged)


def test_update_descriptor_never_writes_a_page_table(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    table = FREE_FRAME + 14
    assert mmuext(vcpu, MMUEXT_PIN_L1, table) == 0
    # A "descriptor" with P clear passes check_descriptor unchanged: it would be a PTE.
    pte = (FREE_FRAME + 15) << 12 | P_RW
    assert vcpu.hypercall(Hypercall.update_descriptor, table << 12, pte) == -Errno.EINVAL
    assert dom.mem.read_u64(table << 12) == 0
    dom.mmu.hold_writable((HELD,))         # a page Hospes writes is an ordinary one: allowed, as on Xen
    assert vcpu.hypercall(Hypercall.update_descriptor, HELD << 12, pte) == 0


def test_odd_mmu_arguments_get_xens_answers(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.update_va_mapping, 0x8000_0000_0000_0000, 0, 2) == -Errno.EINVAL
    assert mmuext(vcpu, MMUEXT_INVLPG_LOCAL, 0x8000_0000_0000_1000) == 0   # ignored, as Xen does
    assert vcpu.invlpg_va == 0 and not vcpu.writes
    assert mmuext(vcpu, MMUEXT_PIN_L1, 1 << 63) == -Errno.EINVAL
    assert mmuext(vcpu, 4, FREE_FRAME + 16) == -Errno.EINVAL           # unpin of a frame never pinned


# --- ptwr: only aligned stores of up to 8 bytes into an L1 ----------------------------------------


PTWR_INDEX = 100
PTWR_VA = kva(L1_FRAME, 8 * PTWR_INDEX)     # the kernel L1, mapped read-only
PTWR_GPA = (L1_FRAME << 12) + 8 * PTWR_INDEX
PF_HANDLER = 0xFFFF_FFFF_8100_0100


@pytest.fixture()
def kvcpu(dom: FakePvDomain) -> FakeVcpu:
    v = dom.vcpus[0]
    v.t_rsp, v.t_rflags = STACK_TOP - 0x400, 0x202
    v.upcall_mask = 0
    v.trap_table[PF] = (0, PF_HANDLER)
    return v


def fault_at(vcpu: FakeVcpu, code: bytes, cr2: int, **regs: int) -> None:
    vcpu.put(CODE_VA, code)
    vcpu.t_rip = CODE_VA
    for name, value in regs.items():
        setattr(vcpu.regs, name, value)
    vcpu.sregs.cr2 = cr2
    emulate.handle_exception(vcpu, PF, 7)


def bounced_error(vcpu: FakeVcpu) -> int:
    top = (STACK_TOP - 0x400) & ~0xF
    return int(struct.unpack_from("<Q", vcpu.get(top - 64, 64), 16)[0])


@pytest.mark.parametrize("code, offset, why", [
    (b"\x48\x89\x47\x03", 3, "movq %rax,3(%rdi): misaligned 8 bytes (was a ValueError ending the domain)"),
    (b"\x89\x47\x02", 2, "movl %eax,2(%rdi): misaligned 4 bytes"),
    (b"\x66\x0f\xd6\x07", 0, "movq %xmm0,(%rdi): a register we do not model (was a KeyError)"),
    (b"\x48\x01\x07", 0, "addq %rax,(%rdi): not a store we emulate"),
])
def test_a_store_xen_would_not_emulate_is_the_guests_page_fault(dom: FakePvDomain, kvcpu: FakeVcpu, code: bytes,
                                                                 offset: int, why: str) -> None:
    value = (FREE_FRAME + 5) << 12 | P_RW
    fault_at(kvcpu, code, PTWR_VA + offset, rdi=PTWR_VA, rax=value)
    assert kvcpu.t_rip == PF_HANDLER, why
    assert bounced_error(kvcpu) == 3                       # present | write, U clear: kernel mode
    assert dom.mem.read_u64(PTWR_GPA) == 0 and dom.mem.read_u64(PTWR_GPA + 8) == 0 and not kvcpu.writes
    assert "ptwr" not in kvcpu.stats


def test_a_store_reaching_the_l1_from_the_page_before_is_not_emulated(dom: FakePvDomain, kvcpu: FakeVcpu) -> None:
    # movq %rax,-4(%rdi) with rdi at the L1's first entry, faulting on the L1 page (CR2 = its
    # start): the store begins on the page before, so emulating it at CR2 would write a wrong entry.
    start = kva(L1_FRAME)
    fault_at(kvcpu, b"\x48\x89\x47\xfc", start, rdi=start, rax=(FREE_FRAME + 5) << 12 | P_RW)
    assert kvcpu.t_rip == PF_HANDLER and dom.mem.read_u64(L1_FRAME << 12) != (FREE_FRAME + 5) << 12 | P_RW


def test_an_aligned_sub_word_store_is_emulated(dom: FakePvDomain, kvcpu: FakeVcpu) -> None:
    frame = FREE_FRAME + 6
    fault_at(kvcpu, b"\x89\x07", PTWR_VA, rdi=PTWR_VA, rax=frame << 12 | PTE_P)   # movl %eax,(%rdi)
    assert kvcpu.t_rip == CODE_VA + 2 and dom.mem.read_u64(PTWR_GPA) & ~0x4 == frame << 12 | PTE_P


def test_a_store_into_an_l2_is_not_emulated(dom: FakePvDomain, kvcpu: FakeVcpu) -> None:
    va = kva(L2_FRAME, 8 * 7)
    fault_at(kvcpu, b"\x48\x89\x07", va, rdi=va, rax=0)
    assert kvcpu.t_rip == PF_HANDLER and dom.mem.read_u64(kvcpu.vcpu_info_gpa + VI_CR2) == va


# --- no guest-reachable exception in the MMU paths (issue 13 item 4) -------------------------------


@pytest.mark.parametrize("code", [
    b"\x48\x89\x04\x27",          # movq %rax,(%rdi,%riz,1): an index that is no register
    b"\x8c\x07",                  # movw %es,(%rdi): a segment register as the source
    b"\x67\x89\x44\x24\x08",      # movl %eax,8(%esp): 32-bit addressing through esp
])
def test_odd_stores_into_an_l1_never_raise(dom: FakePvDomain, kvcpu: FakeVcpu, code: bytes) -> None:
    fault_at(kvcpu, code, PTWR_VA, rdi=PTWR_VA, rax=(FREE_FRAME + 5) << 12 | P_RW)
    assert kvcpu.t_rip in (PF_HANDLER, CODE_VA + len(code))


def _value(rng) -> int:  # noqa: ANN001 - random.Random
    kind = rng.randrange(6)
    if kind == 0:
        return rng.getrandbits(64)
    if kind == 1:
        return rng.randrange(0, 200)
    if kind == 2:
        return (rng.randrange(0, 200) << 12) | rng.getrandbits(12)
    if kind == 3:
        return (rng.randrange(0, 200) << 12) | rng.choice([0x63, 0x67, 0x23, 0x1, 0x3, 0x83]) | rng.getrandbits(1) << 63
    if kind == 4:
        return kva(0) + rng.randrange(0, 80 << 12)
    return rng.choice([0, 1, 0x7FF0, 1 << 63, (1 << 64) - 1])


def test_random_mmu_hypercalls_and_page_table_stores_raise_nothing_unexpected() -> None:
    """A seeded run of mmu_update, mmuext_op, update_va_mapping, set_gdt, update_descriptor
    and ptwr faults with odd arguments: every one gets an errno, the guest's fault or a clean
    crash, never a Python exception (main had a ValueError and KeyErrors here)."""
    import random

    from hospes.machine.memory import GuestFault
    from hospes.pv.vcpu import DomainCrash

    rng = random.Random(13)
    calls = 0
    while calls < 15000:
        d = FakePvDomain()
        v = d.vcpus[0]
        v.trap_table[PF] = (0, PF_HANDLER)
        try:
            for _ in range(400):
                calls += 1
                kind = rng.randrange(5)
                n = rng.randrange(1, 6)
                if kind == 0:
                    v.put(ARG_VA, b"".join(struct.pack("<QQ", _value(rng), _value(rng)) for _ in range(n)))
                    v.hypercall(Hypercall.mmu_update, ARG_VA, n, rng.choice([0, ARG_VA + 0x800]), 0x7FF0)
                elif kind == 1:
                    v.put(ARG_VA, b"".join(struct.pack("<I4xQQ", rng.choice(range(20)), _value(rng), _value(rng))
                                           for _ in range(n)))
                    v.hypercall(Hypercall.mmuext_op, ARG_VA, n, rng.choice([0, ARG_VA + 0x800]), 0x7FF0)
                elif kind == 2:
                    v.hypercall(Hypercall.update_va_mapping, _value(rng), _value(rng), _value(rng))
                elif kind == 3:
                    v.put(ARG_VA, struct.pack("<4Q", *(_value(rng) for _ in range(4))))
                    v.hypercall(Hypercall.set_gdt, ARG_VA, _value(rng))
                    v.hypercall(Hypercall.update_descriptor, _value(rng), _value(rng))
                else:
                    v.put(CODE_VA, rng.randbytes(15))
                    v.t_rip = CODE_VA
                    for reg in ("rax", "rcx", "rdx", "rsi", "rdi"):
                        setattr(v.regs, reg, _value(rng))
                    v.sregs.cr2 = rng.choice([PTWR_VA + rng.randrange(-8, 4096), _value(rng)])
                    try:
                        emulate.handle_exception(v, PF, rng.choice([7, 3, 6, 2]))
                    except DomainCrash:
                        pass
        except GuestFault:
            pass   # a call unmapped the test's own buffers: go on with a fresh domain
        finally:
            d.close_memory()
