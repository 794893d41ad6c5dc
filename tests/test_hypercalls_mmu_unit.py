"""mmu_update, mmuext_op and update_va_mapping, without KVM.

The domain is :class:`pv_fakes.FakePvDomain`: real page tables in real guest
memory, validated by the real PV MMU, reached through the real hypercall
dispatch. Expected answers are Xen's (xen/include/public/xen.h and
xen/arch/x86/mm.c): a refused update leaves the table as it was, ``done``
counts the requests that succeeded, an unknown command is -ENOSYS.
"""

from __future__ import annotations

import struct

import pytest

from hospes.pv.abi import DOMID_SELF, PTE_A, PTE_D, PTE_P, PTE_RW, PTE_US, Hypercall
from hospes.pv.errors import Errno
from hospes.pv.layout import DIRECT_VIRT
from hospes.pv.m2p import INVALID_M2P_ENTRY, M2PState, MachToPhys
from hospes.pv.mmu import WRITABLE
from hospes.state import StateError, decode, encode
from pv_fakes import (
    ARG_VA, BUF_VA, DOMID, FREE_FRAME, KVA, L1_FRAME, L2_FRAME, L3_FRAME, L4_FRAME, FakePvDomain, FakeVcpu, u32,
)

P_RW = PTE_P | PTE_RW
DONE_VA = BUF_VA + 0xF00
UNMAPPED_INDEX = 100                      # KVA + 100 pages: not mapped by the kernel's L1
UNMAPPED_VA = KVA + UNMAPPED_INDEX * 4096

MMU_NORMAL_PT_UPDATE = 0
MMU_MACHPHYS_UPDATE = 1
MMU_PT_UPDATE_PRESERVE_AD = 2

MMUEXT_PIN_L1_TABLE = 0
MMUEXT_PIN_L4_TABLE = 3
MMUEXT_UNPIN_TABLE = 4
MMUEXT_NEW_BASEPTR = 5
MMUEXT_TLB_FLUSH_LOCAL = 6
MMUEXT_INVLPG_LOCAL = 7
MMUEXT_TLB_FLUSH_ALL = 10
MMUEXT_NEW_USER_BASEPTR = 15

UVMF_NONE = 0
UVMF_TLB_FLUSH = 1
UVMF_INVLPG = 2
UVMF_ALL = 4


def l1_slot(index: int) -> int:
    """Machine address of the kernel L1's entry ``index``."""
    return (L1_FRAME << 12) + 8 * index


def mmu_update(vcpu: FakeVcpu, *requests: tuple[int, int], foreigndom: int = DOMID_SELF) -> tuple[int, int]:
    """Issue mmu_update; return (rc, done)."""
    vcpu.put(ARG_VA, b"".join(struct.pack("<QQ", p, v) for p, v in requests))
    vcpu.put(DONE_VA, struct.pack("<I", 0xDEAD))
    rc = vcpu.hypercall(Hypercall.mmu_update, ARG_VA, len(requests), DONE_VA, foreigndom)
    return rc, u32(vcpu.get(DONE_VA, 4))


def mmuext(vcpu: FakeVcpu, *ops: tuple[int, int] | tuple[int, int, int]) -> tuple[int, int]:
    """Issue mmuext_op with (cmd, arg1[, arg2]) entries; return (rc, done)."""
    data = b"".join(struct.pack("<I4xQQ", op[0], op[1], op[2] if len(op) > 2 else 0) for op in ops)
    vcpu.put(ARG_VA, data)
    vcpu.put(DONE_VA, struct.pack("<I", 0xDEAD))
    rc = vcpu.hypercall(Hypercall.mmuext_op, ARG_VA, len(ops), DONE_VA, DOMID_SELF)
    return rc, u32(vcpu.get(DONE_VA, 4))


def build_l1(dom: FakePvDomain, frame: int, *entries: tuple[int, int]) -> None:
    for index, value in entries:
        dom.mem.q[(frame << 9) + index] = value


# --- mmu_update ------------------------------------------------------------------------------


def test_mmu_update_writes_a_valid_pte_and_the_guest_can_use_the_mapping(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    target = FREE_FRAME + 6
    dom.mem.write(target << 12, b"behind the new mapping")
    rc, done = mmu_update(vcpu, (l1_slot(UNMAPPED_INDEX), (target << 12) | P_RW))
    assert (rc, done) == (0, 1)
    stored = (target << 12) | P_RW | PTE_US                  # Xen forces _PAGE_USER on a 64-bit PV L1e
    assert dom.l1_entry(UNMAPPED_INDEX) == stored
    assert vcpu.writes == []         # it replaced a non-present entry: KVM has no shadow of it to drop
    assert dom.mmu.type[target] == WRITABLE
    assert vcpu.read(UNMAPPED_VA, 22) == b"behind the new mapping"


def test_replacing_a_present_entry_queues_it_for_the_in_vm_writer(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    first, second = FREE_FRAME + 6, FREE_FRAME + 7
    assert mmu_update(vcpu, (l1_slot(UNMAPPED_INDEX), (first << 12) | P_RW)) == (0, 1)
    assert vcpu.writes == []
    assert mmu_update(vcpu, (l1_slot(UNMAPPED_INDEX), (second << 12) | P_RW)) == (0, 1)
    stored = (second << 12) | P_RW | PTE_US
    assert dom.l1_entry(UNMAPPED_INDEX) == stored
    assert vcpu.writes == [(l1_slot(UNMAPPED_INDEX), stored)]   # KVM must drop its shadow of the first
    assert mmu_update(vcpu, (l1_slot(UNMAPPED_INDEX), 0)) == (0, 1)
    assert vcpu.writes == [(l1_slot(UNMAPPED_INDEX), stored), (l1_slot(UNMAPPED_INDEX), 0)]


def test_after_a_hypercall_the_writer_takes_the_entry_in_an_argument_register(dom: FakePvDomain,
                                                                            vcpu: FakeVcpu) -> None:
    """Xen's ABI lets a hypercall clobber its argument registers, so the one-entry
    writer finds the entry's address in RDI (2 CPL-0 instructions, not 5); any
    other return to the guest keeps every register and uses the plain writer."""
    tr = dom.trampoline
    assert mmu_update(vcpu, (l1_slot(UNMAPPED_INDEX), (FREE_FRAME + 6) << 12 | P_RW)) == (0, 1)
    assert mmu_update(vcpu, (l1_slot(UNMAPPED_INDEX), (FREE_FRAME + 7) << 12 | P_RW)) == (0, 1)
    assert vcpu.returned_normally          # _on_syscall hands this to _resume
    vcpu.exit_kind = "syscall"
    vcpu._resume(args_spent=True)
    assert vcpu.regs.rip == tr.writer1_rdi_va and vcpu.regs.rdi == DIRECT_VIRT + l1_slot(UNMAPPED_INDEX)
    assert vcpu.writes == []
    vcpu.regs.rdi = 0x1234
    vcpu.writes.append((l1_slot(UNMAPPED_INDEX), 0))   # as a trap's emulation queues one
    vcpu.exit_kind = "exception"
    vcpu._resume()
    assert vcpu.regs.rip == tr.writer1_va and vcpu.regs.rdi == 0x1234


def test_mmu_update_refuses_a_writable_mapping_of_a_page_table(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    rc, done = mmu_update(vcpu, (l1_slot(UNMAPPED_INDEX), (L2_FRAME << 12) | P_RW))
    assert rc < 0 and done == 0
    assert dom.l1_entry(UNMAPPED_INDEX) == 0 and vcpu.writes == []
    assert dom.mmu.table_level(L2_FRAME) == 2


def test_mmu_update_answers_ebusy_for_a_writable_mapping_of_a_page_table(vcpu: FakeVcpu) -> None:
    rc, _ = mmu_update(vcpu, (l1_slot(UNMAPPED_INDEX), (L2_FRAME << 12) | P_RW))
    assert rc == -Errno.EBUSY


def test_mmu_update_accepts_a_read_only_mapping_of_a_page_table(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    rc, done = mmu_update(vcpu, (l1_slot(UNMAPPED_INDEX), (L2_FRAME << 12) | PTE_P))
    assert (rc, done) == (0, 1)
    assert vcpu.read_u64(UNMAPPED_VA) == dom.mem.read_u64(L2_FRAME << 12)


def test_mmu_update_refuses_a_frame_outside_the_domain(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    hypervisor_frame = dom.layout.guest_frames + 1
    rc, done = mmu_update(vcpu, (l1_slot(UNMAPPED_INDEX), (hypervisor_frame << 12) | PTE_P))
    assert (rc, done) == (-Errno.EINVAL, 0)
    assert dom.l1_entry(UNMAPPED_INDEX) == 0


def test_mmu_update_for_a_foreign_domain_is_esrch(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    rc, _ = mmu_update(vcpu, (l1_slot(UNMAPPED_INDEX), ((FREE_FRAME + 1) << 12) | P_RW), foreigndom=DOMID + 1)
    assert rc == -Errno.ESRCH
    assert dom.l1_entry(UNMAPPED_INDEX) == 0
    # Its own domid names itself, as DOMID_SELF does.
    assert mmu_update(vcpu, (l1_slot(UNMAPPED_INDEX), ((FREE_FRAME + 1) << 12) | P_RW), foreigndom=DOMID) == (0, 1)


def test_mmu_update_with_a_ptr_beyond_ram_is_einval(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    beyond = dom.layout.ram_bytes + 8        # the shared_info frame: no page table of the guest's
    rc, done = mmu_update(vcpu, (beyond, (FREE_FRAME << 12) | P_RW))
    assert (rc, done) == (-Errno.EINVAL, 0)


def test_mmu_update_with_an_unknown_command_in_ptr_is_enosys(vcpu: FakeVcpu) -> None:
    rc, done = mmu_update(vcpu, (l1_slot(UNMAPPED_INDEX) | 3, 0))
    assert (rc, done) == (-Errno.ENOSYS, 0)


def test_mmu_update_with_an_unreadable_request_list_is_efault(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.mmu_update, UNMAPPED_VA, 1, 0, DOMID_SELF) == -Errno.EFAULT


def test_mmu_update_stops_at_the_first_bad_request_and_reports_how_many_were_done(
        dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    good = ((FREE_FRAME + 2) << 12) | P_RW
    rc, done = mmu_update(
        vcpu,
        (l1_slot(UNMAPPED_INDEX), good),
        (l1_slot(UNMAPPED_INDEX + 1), (L3_FRAME << 12) | P_RW),   # refused
        (l1_slot(UNMAPPED_INDEX + 2), good),                       # never reached
    )
    assert rc < 0 and done == 1
    assert dom.l1_entry(UNMAPPED_INDEX) == good | PTE_US
    assert dom.l1_entry(UNMAPPED_INDEX + 1) == 0 and dom.l1_entry(UNMAPPED_INDEX + 2) == 0


def test_mmu_update_preserve_ad_keeps_the_accessed_and_dirty_bits(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    frame = 30                                # mapped writable with A and D by the fake
    assert dom.l1_entry(frame) & (PTE_A | PTE_D) == PTE_A | PTE_D
    rc, _ = mmu_update(vcpu, (l1_slot(frame) | MMU_PT_UPDATE_PRESERVE_AD, (frame << 12) | PTE_P))
    assert rc == 0
    assert dom.l1_entry(frame) == (frame << 12) | PTE_P | PTE_US | PTE_A | PTE_D


def test_mmu_update_replacing_a_writable_mapping_releases_the_old_frame(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    old, new = 30, FREE_FRAME + 3
    assert dom.mmu.type[old] == WRITABLE
    assert mmu_update(vcpu, (l1_slot(old), (new << 12) | P_RW)) == (0, 1)
    assert old not in dom.mmu.count and dom.mmu.type[new] == WRITABLE


def test_machphys_update_takes_any_value_for_a_frame_the_domain_owns(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    frame = 30
    assert mmu_update(vcpu, ((frame << 12) | MMU_MACHPHYS_UPDATE, 0x12345)) == (0, 1)
    assert dom.m2p.get(frame) == 0x12345
    assert dom.m2p.save().changed == ((frame, 0x12345),)
    # The table the guest reads holds it too.
    assert dom.mem.read_u64(dom.trampoline.m2p_gpa + 8 * frame) == 0x12345
    # Back to the identity: nothing left to save.
    assert mmu_update(vcpu, ((frame << 12) | MMU_MACHPHYS_UPDATE, frame)) == (0, 1)
    assert dom.m2p.save().changed == ()
    # shared_info is the domain's too (Xen shares it with the guest).
    si = dom.layout.shared_info_gpa >> 12
    assert mmu_update(vcpu, ((si << 12) | MMU_MACHPHYS_UPDATE, 7)) == (0, 1)
    assert dom.m2p.get(si) == 7


def test_machphys_update_refuses_frames_the_domain_does_not_own(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    beyond = dom.layout.guest_frames          # the hypervisor's own frames start here
    assert mmu_update(vcpu, ((beyond << 12) | MMU_MACHPHYS_UPDATE, 1)) == (-Errno.EINVAL, 0)
    dom.reservation.release(FREE_FRAME, 1)    # given back: not the domain's any more
    assert mmu_update(vcpu, ((FREE_FRAME << 12) | MMU_MACHPHYS_UPDATE, 1)) == (-Errno.EINVAL, 0)
    assert dom.m2p.get(FREE_FRAME) == FREE_FRAME


# --- mmuext_op --------------------------------------------------------------------------------


def test_pin_validates_a_table_and_unpin_releases_it(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    table, data = FREE_FRAME + 10, FREE_FRAME + 11
    build_l1(dom, table, (0, (data << 12) | P_RW))
    assert mmuext(vcpu, (MMUEXT_PIN_L1_TABLE, table)) == (0, 1)
    assert dom.mmu.table_level(table) == 1 and table in dom.mmu.pinned
    assert dom.mmu.type[data] == WRITABLE
    assert dom.mem.read_u64(table << 12) == (data << 12) | P_RW | PTE_US
    assert mmuext(vcpu, (MMUEXT_UNPIN_TABLE, table)) == (0, 1)
    assert table not in dom.mmu.count and data not in dom.mmu.count


def test_pinning_twice_or_unpinning_an_unpinned_frame_is_einval(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    table = FREE_FRAME + 10
    assert mmuext(vcpu, (MMUEXT_PIN_L1_TABLE, table)) == (0, 1)
    assert mmuext(vcpu, (MMUEXT_PIN_L1_TABLE, table)) == (-Errno.EINVAL, 0)
    assert mmuext(vcpu, (MMUEXT_UNPIN_TABLE, table + 1)) == (-Errno.EINVAL, 0)


def test_a_frame_mapped_writable_cannot_be_pinned_as_a_page_table(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    writable = 30
    assert mmuext(vcpu, (MMUEXT_PIN_L1_TABLE, writable)) == (-Errno.EINVAL, 0)
    assert dom.mmu.type[writable] == WRITABLE and writable not in dom.mmu.pinned


def test_a_table_with_an_entry_outside_the_domain_cannot_be_pinned(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    table = FREE_FRAME + 10
    build_l1(dom, table, (3, ((dom.layout.guest_frames + 2) << 12) | PTE_P))
    assert mmuext(vcpu, (MMUEXT_PIN_L1_TABLE, table)) == (-Errno.EINVAL, 0)
    assert table not in dom.mmu.count


def test_new_baseptr_switches_the_kernel_page_table_to_a_validated_l4(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    new_l4 = FREE_FRAME + 12
    dom.mem.q[(new_l4 << 9) + 511] = dom.mem.q[(L4_FRAME << 9) + 511]   # the same kernel mapping
    assert mmuext(vcpu, (MMUEXT_NEW_BASEPTR, new_l4)) == (0, 1)
    assert vcpu.kernel_cr3 == new_l4 << 12
    assert dom.mmu.table_level(new_l4) == 4
    # Validation gave it the hypervisor's slots (empty before: no writer entry needed).
    hv_slot = min(dom.trampoline.l4_entries)
    assert dom.mem.read_u64((new_l4 << 12) + 8 * hv_slot) == dom.trampoline.l4_entries[hv_slot]
    assert all(gpa >> 12 != new_l4 for gpa, _ in vcpu.writes)
    assert vcpu.read(ARG_VA, 4) == struct.pack("<I", MMUEXT_NEW_BASEPTR)  # still readable through it
    assert dom.mmu.count[L4_FRAME] == 1                                   # only the pin holds the old one


def test_new_baseptr_to_a_table_that_fails_validation_keeps_the_old_cr3(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    bad_l4 = FREE_FRAME + 12
    dom.mem.q[(bad_l4 << 9) + 3] = (30 << 12) | P_RW       # frame 30 is mapped writable: no L3
    assert mmuext(vcpu, (MMUEXT_NEW_BASEPTR, bad_l4)) == (-Errno.EINVAL, 0)
    assert vcpu.kernel_cr3 == L4_FRAME << 12 and bad_l4 not in dom.mmu.count
    assert mmuext(vcpu, (MMUEXT_NEW_BASEPTR, dom.layout.ram_pages)) == (-Errno.EINVAL, 0)


def test_new_user_baseptr_sets_the_user_page_table(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    user_l4 = FREE_FRAME + 13
    assert mmuext(vcpu, (MMUEXT_NEW_USER_BASEPTR, user_l4)) == (0, 1)
    assert vcpu.user_cr3 == user_l4 << 12 and dom.mmu.table_level(user_l4) == 4


def test_local_tlb_flush_and_invlpg_are_requested_of_this_vcpu_only(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    other = dom.vcpus[1]
    assert mmuext(vcpu, (MMUEXT_INVLPG_LOCAL, ARG_VA)) == (0, 1)
    assert vcpu.invlpg_va == ARG_VA and not vcpu.flush_pending
    assert mmuext(vcpu, (MMUEXT_TLB_FLUSH_LOCAL, 0)) == (0, 1)
    assert vcpu.flush_pending
    assert not other.flush_pending and other.kicks == 0


def test_two_different_invlpgs_become_a_full_flush(vcpu: FakeVcpu) -> None:
    assert mmuext(vcpu, (MMUEXT_INVLPG_LOCAL, ARG_VA), (MMUEXT_INVLPG_LOCAL, BUF_VA)) == (0, 2)
    assert vcpu.flush_pending


def test_tlb_flush_all_flushes_and_kicks_every_online_vcpu(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    other = dom.vcpus[1]
    assert mmuext(vcpu, (MMUEXT_TLB_FLUSH_ALL, 0)) == (0, 1)
    assert vcpu.flush_pending
    assert not other.flush_pending and other.kicks == 0     # it is down: nothing to flush
    dom.start_vcpu(other)
    assert mmuext(vcpu, (MMUEXT_TLB_FLUSH_ALL, 0)) == (0, 1)
    assert other.flush_pending and other.kicks == 1


def test_an_unknown_mmuext_op_is_enosys_after_the_ops_before_it(vcpu: FakeVcpu) -> None:
    assert mmuext(vcpu, (MMUEXT_TLB_FLUSH_LOCAL, 0), (99, 0)) == (-Errno.ENOSYS, 1)
    assert vcpu.flush_pending


# --- update_va_mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "flush", "invlpg"), [
    (UVMF_NONE, False, False),
    (UVMF_TLB_FLUSH, True, False),
    (UVMF_INVLPG, False, True),
])
def test_update_va_mapping_flushes_only_as_the_flags_ask(
        dom: FakePvDomain, vcpu: FakeVcpu, flags: int, flush: bool, invlpg: bool) -> None:
    target = FREE_FRAME + 4
    assert vcpu.hypercall(Hypercall.update_va_mapping, UNMAPPED_VA, (target << 12) | P_RW, flags) == 0
    assert dom.l1_entry(UNMAPPED_INDEX) == (target << 12) | P_RW | PTE_US
    assert vcpu.flush_pending is flush
    assert vcpu.invlpg_va == (UNMAPPED_VA if invlpg else 0)
    assert dom.vcpus[1].kicks == 0


def test_update_va_mapping_with_uvmf_all_flushes_the_other_vcpus(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    other = dom.vcpus[1]
    dom.start_vcpu(other)
    rc = vcpu.hypercall(Hypercall.update_va_mapping, UNMAPPED_VA, ((FREE_FRAME + 4) << 12) | P_RW,
                        UVMF_INVLPG | UVMF_ALL)
    assert rc == 0
    assert vcpu.flush_pending and other.flush_pending and other.kicks == 1


def test_update_va_mapping_of_an_address_without_an_l1_is_einval(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.update_va_mapping, 0x40_0000, ((FREE_FRAME + 4) << 12) | P_RW, 0) \
        == -Errno.EINVAL


def test_update_va_mapping_cannot_map_a_page_table_writable(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    rc = vcpu.hypercall(Hypercall.update_va_mapping, UNMAPPED_VA, (L1_FRAME << 12) | P_RW, UVMF_INVLPG)
    assert rc < 0
    assert dom.l1_entry(UNMAPPED_INDEX) == 0 and vcpu.invlpg_va == 0 and vcpu.writes == []


# --- the M2P's saved state ------------------------------------------------------------------------


def test_m2p_changes_survive_encoding_and_restore_into_a_fresh_table(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert mmu_update(vcpu, ((30 << 12) | MMU_MACHPHYS_UPDATE, 0x4000), ((31 << 12) | MMU_MACHPHYS_UPDATE, 2)) \
        == (0, 2)
    saved = decode(M2PState, encode(dom.m2p.save()))
    assert saved.changed == ((30, 0x4000), (31, 2))
    fresh = MachToPhys(dom.mem, dom.trampoline.m2p_gpa, dom.layout.ram_pages, dom.layout.guest_frames)
    fresh.fill()
    assert fresh.get(30) == 30
    fresh.restore(saved)
    assert (fresh.get(30), fresh.get(31), fresh.get(32)) == (0x4000, 2, 32)
    assert fresh.get(dom.layout.ram_pages) == INVALID_M2P_ENTRY
    with pytest.raises(StateError):
        fresh.restore(M2PState(changed=((dom.layout.guest_frames, 1),)))


# --- the kernel-data slot ----------------------------------------------------------------------


def test_an_l4_user_space_runs_on_gets_the_read_only_kernel_data_slot(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    """Every validated L4 gets the kernel's variant of the kernel-data slot (the
    vCPUs' pages, user-writable); the first time user space runs on one, Hospes
    puts the read-only variant there and queues the entry for the writer, so KVM
    drops its shadow of the writable one. Validating the frame again (after it
    lost its type) brings the kernel's variant back."""
    from hospes.pv.layout import SLOT_KDATA

    mmu = dom.mmu
    kernel_entry = dom.trampoline.l4_entries[SLOT_KDATA]
    user_entry = mmu.kdata_user_entry
    assert user_entry and kernel_entry and user_entry != kernel_entry
    frame = FREE_FRAME + 9
    slot = (frame << 12) + SLOT_KDATA * 8
    writes: list[tuple[int, int]] = []
    with mmu.lock:
        mmu.get_type(frame, 4, writes)                    # an empty L4, validated
    assert dom.mem.q[slot >> 3] == kernel_entry
    writes.clear()
    mmu.user_root(frame, writes)
    assert dom.mem.q[slot >> 3] == user_entry and writes == [(slot, user_entry)]
    writes.clear()
    # Another vCPU's first return to user space on it: the entry is already the user
    # variant in memory, but its writer must still store it (KVM's shadow may be stale).
    mmu.user_root(frame, writes)
    assert writes == [(slot, user_entry)] and dom.mem.q[slot >> 3] == user_entry
    writes.clear()
    with mmu.lock:
        mmu.put_type(frame, writes)
        mmu.get_type(frame, 4, writes)
    assert dom.mem.q[slot >> 3] == kernel_entry and frame not in mmu.user_roots
    # a vCPU returning to user space converts a root once, and again after it was validated again
    vcpu.kernel_mode, vcpu.user_cr3 = False, frame << 12
    vcpu.writes.clear()
    vcpu._resume_to_target(False)
    assert dom.mem.q[slot >> 3] == user_entry and frame in vcpu.user_roots
    vcpu.writes.clear()
    vcpu._resume_to_target(False)
    assert vcpu.writes == []
    with mmu.lock:
        mmu.put_type(frame, writes)
        mmu.get_type(frame, 4, writes)
    vcpu._resume_to_target(False)
    assert dom.mem.q[slot >> 3] == user_entry
    # a frame that is no L4 in use is never written
    other = FREE_FRAME + 10
    mmu.user_root(other, writes)
    assert dom.mem.q[((other << 12) + SLOT_KDATA * 8) >> 3] == 0 and other not in mmu.user_roots


def test_the_context_switch_state_lives_in_the_kernel_data_page(vcpu: FakeVcpu) -> None:
    """stack_switch and set_segment_base(SEGBASE_GS_USER) land in the vCPU's
    kernel-data page, where the SYSCALL stub stores them too; what the guest
    kernel may have written there itself is read back as the hypercalls would
    have checked it."""
    from hospes.pv import layout as L

    q = vcpu.mem.q
    kd = vcpu.area.kdata_gpa >> 3
    assert q[kd + L.KD_MAGIC // 8] == L.KD_MAGIC_VALUE
    assert vcpu.hypercall(Hypercall.stack_switch, 0x18, 0xFFFF888000123000) == 0
    assert vcpu.hypercall(Hypercall.set_segment_base, 1, 0x7F0000001000) == 0
    assert q[kd + L.KD_KERNEL_SP // 8] == 0xFFFF888000123000 and vcpu.kernel_sp == 0xFFFF888000123000
    assert vcpu.kernel_ss == 0x1B                         # RPL 3, as Xen's fixup_guest_stack_selector
    assert q[kd + L.KD_GS_USER // 8] == 0x7F0000001000 and vcpu.gs_base_user == 0x7F0000001000
    q[kd + L.KD_GS_USER // 8] = 0x0000800000000000         # the guest kernel wrote a non-canonical base
    assert vcpu.gs_base_user == 0
    q[kd + L.KD_KERNEL_SS // 8] = 0xFFFF_FFFF_0010
    assert vcpu.kernel_ss == 0x13
