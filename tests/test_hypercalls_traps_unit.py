"""Trap, callback, segment and descriptor hypercalls and HYPERVISOR_iret, without KVM.

Expected answers are Xen's for a 64-bit PV guest (xen/include/public/xen.h,
callback.h, arch-x86/xen-x86_64.h; xen/arch/x86/pv/callback.c, iret.c,
descriptor-tables.c, traps.c): addresses must be canonical, selectors get RPL
3, descriptors get DPL 3 and system descriptors are refused, iret takes its
frame from the guest stack and does not return.
"""

from __future__ import annotations

import struct

import pytest

from hospes.pv import abi
from hospes.pv.abi import Hypercall
from hospes.pv.errors import Errno
from hospes.pv.hypercalls import traps
from hospes.pv.mmu import SEGDESC
from hospes.pv.vcpu import NO_RETURN, DomainCrash
from pv_fakes import ARG_VA, FREE_FRAME, L1_FRAME, STACK_TOP, FakePvDomain, FakeVcpu

NON_CANONICAL = 0x0000_8000_0000_0000
HANDLER = 0xFFFF_FFFF_8100_0000
GDT_FRAME = FREE_FRAME + 20

# Descriptors (Intel SDM vol. 3, 3.4.5).
FLAT_DATA_DPL0 = 0x00CF_9200_0000_FFFF
DPL3 = 3 << 45
TSS_DESCRIPTOR = 0x0000_8900_0000_0067          # present system descriptor, type 9
NOT_PRESENT_SYSTEM = 0x0000_0900_0000_0067


def data_descriptor(base: int) -> int:
    """A present, writable, DPL-3 data descriptor with a 4 GiB limit."""
    return 0xFFFF | ((base & 0xFFFFFF) << 16) | (0xF3 << 40) | (0xCF << 48) | ((base >> 24) << 56)


# --- set_trap_table ------------------------------------------------------------------------------


def trap_table(*entries: tuple[int, int, int]) -> bytes:
    """trap_info entries (vector, flags, address) and the zero terminator."""
    out = b"".join(struct.pack("<BBH4xQ", v, f, abi.FLAT_KERNEL_CS, a) for v, f, a in entries)
    return out + bytes(16)


def test_set_trap_table_records_each_vector_until_the_null_entry(vcpu: FakeVcpu) -> None:
    vcpu.put(ARG_VA, trap_table((14, 0, HANDLER), (0x80, 3 | 4, HANDLER + 0x40)) + trap_table((3, 3, HANDLER + 8)))
    assert vcpu.hypercall(Hypercall.set_trap_table, ARG_VA) == 0
    assert vcpu.trap_table == {14: (0, HANDLER), 0x80: (3 | 4, HANDLER + 0x40)}


def test_set_trap_table_with_a_null_pointer_clears_the_table(vcpu: FakeVcpu) -> None:
    vcpu.trap_table[13] = (0, HANDLER)
    assert vcpu.hypercall(Hypercall.set_trap_table, 0) == 0
    assert vcpu.trap_table == {}


def test_set_trap_table_refuses_a_non_canonical_handler(vcpu: FakeVcpu) -> None:
    vcpu.put(ARG_VA, trap_table((13, 0, HANDLER), (14, 0, NON_CANONICAL)))
    assert vcpu.hypercall(Hypercall.set_trap_table, ARG_VA) == -Errno.EINVAL
    assert 14 not in vcpu.trap_table


def test_set_trap_table_from_an_unmapped_address_is_efault(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.set_trap_table, 0x1000) == -Errno.EFAULT


# --- callbacks ---------------------------------------------------------------------------------------


def test_set_callbacks_registers_event_failsafe_and_syscall(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.set_callbacks, HANDLER, HANDLER + 0x10, HANDLER + 0x20) == 0
    assert vcpu.callbacks == {
        abi.CALLBACKTYPE_event: (HANDLER, abi.CALLBACKF_mask_events),
        abi.CALLBACKTYPE_failsafe: (HANDLER + 0x10, 0),
        abi.CALLBACKTYPE_syscall: (HANDLER + 0x20, abi.CALLBACKF_mask_events),
    }


def test_set_callbacks_refuses_a_non_canonical_address(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.set_callbacks, HANDLER, NON_CANONICAL, HANDLER) == -Errno.EINVAL
    assert vcpu.callbacks == {}


def register(vcpu: FakeVcpu, type_: int, address: int, flags: int = 0) -> int:
    vcpu.put(ARG_VA, struct.pack("<HH4xQ", type_, flags, address))
    return vcpu.hypercall(Hypercall.callback_op, traps.CALLBACKOP_register, ARG_VA)


def unregister(vcpu: FakeVcpu, type_: int) -> int:
    vcpu.put(ARG_VA, struct.pack("<H6x", type_))
    return vcpu.hypercall(Hypercall.callback_op, traps.CALLBACKOP_unregister, ARG_VA)


def test_callback_op_registers_each_type_with_its_flags(vcpu: FakeVcpu) -> None:
    assert register(vcpu, abi.CALLBACKTYPE_syscall, HANDLER, flags=0) == 0
    assert register(vcpu, abi.CALLBACKTYPE_failsafe, HANDLER + 8, flags=abi.CALLBACKF_mask_events) == 0
    assert register(vcpu, abi.CALLBACKTYPE_event, HANDLER + 16, flags=0) == 0
    assert vcpu.callbacks[abi.CALLBACKTYPE_syscall] == (HANDLER, 0)
    assert vcpu.callbacks[abi.CALLBACKTYPE_failsafe] == (HANDLER + 8, abi.CALLBACKF_mask_events)
    # The event upcall always runs with events masked.
    assert vcpu.callbacks[abi.CALLBACKTYPE_event][1] & abi.CALLBACKF_mask_events


def test_callback_op_refuses_an_unknown_type_and_a_non_canonical_address(vcpu: FakeVcpu) -> None:
    assert register(vcpu, 6, HANDLER) == -Errno.ENOSYS
    assert register(vcpu, abi.CALLBACKTYPE_syscall, NON_CANONICAL) == -Errno.EINVAL
    assert vcpu.callbacks == {}


def test_callback_op_unregister_allows_only_the_nmi_callback(vcpu: FakeVcpu) -> None:
    assert register(vcpu, abi.CALLBACKTYPE_nmi, HANDLER) == 0
    assert unregister(vcpu, abi.CALLBACKTYPE_event) == -Errno.EINVAL
    assert unregister(vcpu, abi.CALLBACKTYPE_nmi) == 0
    assert abi.CALLBACKTYPE_nmi not in vcpu.callbacks


def test_callback_op_unregister_of_an_unknown_type_is_enosys(vcpu: FakeVcpu) -> None:
    assert unregister(vcpu, 6) == -Errno.ENOSYS


def test_callback_op_with_an_unknown_command_is_enosys(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.callback_op, 7, ARG_VA) == -Errno.ENOSYS


# --- stack, segments, FPU, debug registers -------------------------------------------------------------


def test_stack_switch_sets_the_kernel_stack_with_an_rpl3_selector(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.stack_switch, abi.FLAT_KERNEL_SS & ~3, STACK_TOP - 0x100) == 0
    assert vcpu.kernel_ss == abi.FLAT_KERNEL_SS
    assert vcpu.kernel_sp == STACK_TOP - 0x100


@pytest.mark.parametrize(("which", "attr"), [
    (traps.SEGBASE_FS, "fs_base"),
    (traps.SEGBASE_GS_USER, "gs_base_user"),
    (traps.SEGBASE_GS_KERNEL, "gs_base_kernel"),
])
def test_set_segment_base_sets_each_base(vcpu: FakeVcpu, which: int, attr: str) -> None:
    assert vcpu.hypercall(Hypercall.set_segment_base, which, 0x7F00_1234_5000) == 0
    assert getattr(vcpu, attr) == 0x7F00_1234_5000


def test_set_segment_base_refuses_non_canonical_bases_and_unknown_registers(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.set_segment_base, traps.SEGBASE_FS, NON_CANONICAL) == -Errno.EINVAL
    assert vcpu.hypercall(Hypercall.set_segment_base, 4, 0x1000) == -Errno.EINVAL
    assert vcpu.fs_base == 0


def test_set_segment_base_gs_user_sel_loads_the_base_of_the_guest_descriptor(
        dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    dom.mem.write_u64((GDT_FRAME << 12) + 4 * 8, data_descriptor(0x1234_5000))
    vcpu.put(ARG_VA, struct.pack("<Q", GDT_FRAME))
    assert vcpu.hypercall(Hypercall.set_gdt, ARG_VA, 16) == 0
    assert vcpu.hypercall(Hypercall.set_segment_base, traps.SEGBASE_GS_USER_SEL, 4 << 3) == 0
    assert vcpu.gs_sel == (4 << 3) | 3
    assert vcpu.gs_base_user == 0x1234_5000
    assert vcpu.hypercall(Hypercall.set_segment_base, traps.SEGBASE_GS_USER_SEL, 0) == 0  # null selector
    assert vcpu.gs_base_user == 0


def test_fpu_taskswitch_sets_and_clears_cr0_ts(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.fpu_taskswitch, 1) == 0
    assert vcpu.cr0_ts
    assert vcpu.hypercall(Hypercall.fpu_taskswitch, 0) == 0
    assert not vcpu.cr0_ts


def test_debug_registers_round_trip_and_refuse_what_xen_refuses(vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.set_debugreg, 0, 0x7FFF_0000) == 0
    assert vcpu.hypercall(Hypercall.get_debugreg, 0) == 0x7FFF_0000
    assert vcpu.hypercall(Hypercall.set_debugreg, 1, abi.HYPERVISOR_VIRT_START) == -Errno.EPERM
    assert vcpu.hypercall(Hypercall.set_debugreg, 7, 1 << 13) == -Errno.EPERM        # DR7.GD
    assert vcpu.hypercall(Hypercall.set_debugreg, 8, 0) == -Errno.ENODEV
    assert vcpu.hypercall(Hypercall.get_debugreg, 8) == -Errno.ENODEV


# --- iret --------------------------------------------------------------------------------------------


def push_iret_frame(vcpu: FakeVcpu, *, rip: int, cs: int, rflags: int, rsp: int, ss: int,
                    rax: int = 0x1111, r11: int = 0x2222, rcx: int = 0x3333, flags: int = 0) -> None:
    frame_va = STACK_TOP - 0x200
    vcpu.put(frame_va, struct.pack("<9Q", rax, r11, rcx, flags, rip, cs, rflags, rsp, ss))
    vcpu.regs.rsp = frame_va


def test_iret_to_the_kernel_loads_the_frame_from_the_guest_stack(vcpu: FakeVcpu) -> None:
    vcpu.upcall_mask = 1
    push_iret_frame(vcpu, rip=HANDLER + 0x99, cs=abi.FLAT_KERNEL_CS & ~3, rflags=0x246,
                    rsp=STACK_TOP - 0x40, ss=abi.FLAT_KERNEL_SS & ~3)
    assert vcpu.hypercall(Hypercall.iret) == 0x1111              # RAX comes from the frame
    assert (vcpu.t_rip, vcpu.t_cs, vcpu.t_rflags, vcpu.t_rsp, vcpu.t_ss) == (
        HANDLER + 0x99, abi.FLAT_KERNEL_CS, 0x246, STACK_TOP - 0x40, abi.FLAT_KERNEL_SS)
    assert (vcpu.regs.r11, vcpu.regs.rcx) == (0x2222, 0x3333)
    assert vcpu.kernel_mode
    assert vcpu.upcall_mask == 0                                   # IF set in the frame: events on


def test_iret_returns_no_return_and_masks_events_when_if_is_clear(vcpu: FakeVcpu) -> None:
    vcpu.upcall_mask = 0
    push_iret_frame(vcpu, rip=HANDLER, cs=abi.FLAT_KERNEL_CS & ~3, rflags=0x2, rsp=STACK_TOP, ss=0)
    assert traps.iret(vcpu) is NO_RETURN
    assert vcpu.upcall_mask == 1


def test_iret_to_user_mode_switches_mode_and_keeps_rcx_r11_after_a_syscall(vcpu: FakeVcpu) -> None:
    vcpu.user_cr3 = (FREE_FRAME + 1) << 12
    vcpu.regs.rcx, vcpu.regs.r11 = 0xAAAA, 0xBBBB
    push_iret_frame(vcpu, rip=0x40_1000, cs=abi.FLAT_USER_CS, rflags=0x202, rsp=0x7FFF_F000,
                    ss=abi.FLAT_USER_SS, flags=abi.VGCF_in_syscall)
    vcpu.hypercall(Hypercall.iret)
    assert not vcpu.kernel_mode
    assert (vcpu.t_rip, vcpu.t_cs, vcpu.t_rsp) == (0x40_1000, abi.FLAT_USER_CS, 0x7FFF_F000)
    assert (vcpu.regs.rcx, vcpu.regs.r11) == (0xAAAA, 0xBBBB)


def test_iret_takes_the_virtual_iopl_from_the_frame_only_under_architectural_iopl(vcpu: FakeVcpu) -> None:
    vcpu.iopl = 1
    push_iret_frame(vcpu, rip=HANDLER, cs=abi.FLAT_KERNEL_CS & ~3, rflags=0x3202, rsp=STACK_TOP, ss=0)
    traps.iret(vcpu)
    assert vcpu.iopl == 1                                          # do_iret ignores it by default
    assert vcpu.hypercall(Hypercall.vm_assist, 0, 4) == 0          # VMASST_TYPE_architectural_iopl
    push_iret_frame(vcpu, rip=HANDLER, cs=abi.FLAT_KERNEL_CS & ~3, rflags=0x3202, rsp=STACK_TOP, ss=0)
    traps.iret(vcpu)
    assert vcpu.iopl == 3
    push_iret_frame(vcpu, rip=HANDLER, cs=abi.FLAT_KERNEL_CS & ~3, rflags=0x0202, rsp=STACK_TOP, ss=0)
    traps.iret(vcpu)
    assert vcpu.iopl == 0


def test_a_bounce_frame_shows_the_virtual_iopl_only_under_architectural_iopl(vcpu: FakeVcpu) -> None:
    vcpu.iopl = 2
    vcpu.t_rsp, vcpu.t_rflags = STACK_TOP - 0x100, 0x202
    vcpu.bounce(HANDLER, None, mask_events=False)
    rflags = struct.unpack("<Q", vcpu.get(vcpu.t_rsp + 4 * 8, 8))[0]
    assert rflags & 0x3000 == 0
    vcpu.domain.vm_assist.add(4)
    vcpu.t_rsp = STACK_TOP - 0x100
    vcpu.bounce(HANDLER, None, mask_events=False)
    rflags = struct.unpack("<Q", vcpu.get(vcpu.t_rsp + 4 * 8, 8))[0]
    assert rflags & 0x3000 == 0x2000


def test_iret_to_user_mode_without_a_user_page_table_crashes_the_domain(vcpu: FakeVcpu) -> None:
    push_iret_frame(vcpu, rip=0x40_1000, cs=abi.FLAT_USER_CS, rflags=0x202, rsp=0x7FFF_F000, ss=abi.FLAT_USER_SS)
    with pytest.raises(DomainCrash):
        vcpu.hypercall(Hypercall.iret)
    assert vcpu.kernel_mode


def test_iret_with_an_unreadable_frame_or_non_canonical_target_crashes_the_domain(vcpu: FakeVcpu) -> None:
    vcpu.regs.rsp = 0x1000
    with pytest.raises(DomainCrash):
        vcpu.hypercall(Hypercall.iret)
    push_iret_frame(vcpu, rip=NON_CANONICAL, cs=abi.FLAT_KERNEL_CS & ~3, rflags=0x202, rsp=STACK_TOP, ss=0)
    with pytest.raises(DomainCrash):
        vcpu.hypercall(Hypercall.iret)


# --- set_gdt and update_descriptor ----------------------------------------------------------------------


def set_gdt(vcpu: FakeVcpu, frames: list[int], entries: int) -> int:
    vcpu.put(ARG_VA, struct.pack(f"<{len(frames)}Q", *frames))
    return vcpu.hypercall(Hypercall.set_gdt, ARG_VA, entries)


def test_set_gdt_types_the_frame_raises_dpl_and_maps_it_into_the_gdt_window(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    dom.mem.write_u64((GDT_FRAME << 12) + 8, FLAT_DATA_DPL0)
    assert set_gdt(vcpu, [GDT_FRAME], 32) == 0
    assert dom.mmu.type[GDT_FRAME] == SEGDESC
    assert (vcpu.gdt_frames, vcpu.gdt_ents) == ([GDT_FRAME], 32)
    assert dom.mem.read_u64((GDT_FRAME << 12) + 8) == FLAT_DATA_DPL0 | DPL3
    window_pte = dict(vcpu.writes)[vcpu.area.gdt_pte_gpa]
    assert window_pte >> 12 & 0xFFFFFFFFFF == GDT_FRAME
    assert vcpu.flush_pending


def test_set_gdt_refuses_too_many_entries(vcpu: FakeVcpu) -> None:
    assert set_gdt(vcpu, [GDT_FRAME] * 15, abi.FIRST_RESERVED_GDT_ENTRY + 1) == -Errno.EINVAL
    assert vcpu.gdt_frames == []


def test_set_gdt_refuses_a_frame_holding_a_system_descriptor(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    dom.mem.write_u64((GDT_FRAME << 12) + 16, TSS_DESCRIPTOR)
    assert set_gdt(vcpu, [GDT_FRAME], 16) == -Errno.EINVAL
    assert GDT_FRAME not in dom.mmu.count and vcpu.gdt_frames == []


def test_set_gdt_refuses_a_frame_mapped_writable_or_a_page_table(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert set_gdt(vcpu, [30], 16) == -Errno.EINVAL            # the guest maps frame 30 writable
    assert set_gdt(vcpu, [L1_FRAME], 16) == -Errno.EINVAL
    assert vcpu.gdt_frames == []


def test_a_new_gdt_releases_the_old_frames(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert set_gdt(vcpu, [GDT_FRAME], 16) == 0
    assert set_gdt(vcpu, [GDT_FRAME + 1], 16) == 0
    assert GDT_FRAME not in dom.mmu.count and dom.mmu.type[GDT_FRAME + 1] == SEGDESC


def test_update_descriptor_writes_a_checked_descriptor(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert set_gdt(vcpu, [GDT_FRAME], 16) == 0
    maddr = (GDT_FRAME << 12) + 5 * 8
    assert vcpu.hypercall(Hypercall.update_descriptor, maddr, FLAT_DATA_DPL0) == 0
    assert dom.mem.read_u64(maddr) == FLAT_DATA_DPL0 | DPL3
    assert vcpu.hypercall(Hypercall.update_descriptor, maddr, NOT_PRESENT_SYSTEM) == 0  # not present: harmless
    assert dom.mem.read_u64(maddr) == NOT_PRESENT_SYSTEM


def test_update_descriptor_refuses_system_descriptors_misaligned_addresses_and_page_tables(
        dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    maddr = (GDT_FRAME << 12) + 5 * 8
    assert vcpu.hypercall(Hypercall.update_descriptor, maddr, TSS_DESCRIPTOR) == -Errno.EINVAL
    assert vcpu.hypercall(Hypercall.update_descriptor, maddr + 4, FLAT_DATA_DPL0) == -Errno.EINVAL
    assert vcpu.hypercall(Hypercall.update_descriptor, (L1_FRAME << 12) + 8, FLAT_DATA_DPL0) == -Errno.EINVAL
    assert vcpu.hypercall(Hypercall.update_descriptor, dom.layout.ram_bytes, FLAT_DATA_DPL0) == -Errno.EINVAL
    assert dom.mem.read_u64(maddr) == 0
    assert dom.frame_of(dom.l1_entry(1)) == 1                   # the page table kept its entry


# --- the frame a hypercall leaves behind ------------------------------------------------------------


def test_an_upcall_that_interrupts_a_hypercall_shows_flat_kernel_cs64(vcpu: FakeVcpu) -> None:
    """Xen's SYSCALL entry records FLAT_KERNEL_CS64 whatever CS the guest kernel ran
    with; an event upcall delivered on the hypercall's return shows it (RPL cleared)."""
    regs = vcpu.regs
    vcpu.sregs.cs.selector, vcpu.sregs.cs.dpl = 0x1003, 3      # a CS from the guest's own GDT
    vcpu.sregs.ss.selector = 0x100B
    vcpu.callbacks[abi.CALLBACKTYPE_event] = (HANDLER, abi.CALLBACKF_mask_events)
    b = vcpu.mem.buf
    b[vcpu.vcpu_info_gpa] = 1          # upcall pending
    b[vcpu.vcpu_info_gpa + 1] = 0      # not masked
    regs.rip, regs.rcx, regs.r11, regs.rsp = vcpu.area.syscall_out_va, HANDLER + 0x40, 0x202, STACK_TOP - 0x80
    regs.rax = int(Hypercall.xen_version)
    regs.rdi = regs.rsi = 0
    vcpu._on_syscall()
    assert vcpu.t_rip == HANDLER                                # the upcall was bounced
    rcx, r11, rip, cs, rflags, rsp, ss = struct.unpack("<7Q", vcpu.read(vcpu.t_rsp, 56))
    assert (rip, cs & 0xFFFF, ss) == (HANDLER + 0x40, abi.FLAT_KERNEL_CS & ~3, abi.FLAT_KERNEL_SS)


def test_a_fault_in_the_syscall_stub_serves_the_hypercall_the_plain_way(vcpu: FakeVcpu) -> None:
    """A guest root without the kernel-data slot (an older Hospes' save) makes the
    SYSCALL stub's read of its page a #PF at the stub: the hypercall is then served
    as if the stub had gone out through its port, from the SYSCALL's registers."""
    from hospes.pv.trampoline import RSP0_FROM_TOP

    area, regs = vcpu.area, vcpu.regs
    rsp = area.stack_top - RSP0_FROM_TOP - 7 * 8            # the #PF stub pushed (vector, error) below the frame
    vcpu.mem.write(area.gpa_of(rsp), struct.pack(
        "<7Q", 14, 0, area.syscall_stub_va + 0x4D, abi.FLAT_KERNEL_CS, 0x202, STACK_TOP - 0x80, abi.FLAT_KERNEL_SS))
    regs.rsp = rsp
    vcpu.sregs.cs.selector, vcpu.sregs.cs.dpl = abi.HYPERVISOR_CS, 0     # in the ring-0 #PF stub
    regs.rax, regs.rdi, regs.rsi = int(Hypercall.stack_switch), 0x18, 0xFFFF_8880_0123_4000
    regs.rcx, regs.r11 = HANDLER + 0x40, 0x202
    vcpu._on_exception()
    assert vcpu.stats.get("stub_fault") == 1 and vcpu.kernel_sp == 0xFFFF_8880_0123_4000
    assert regs.rax == 0 and (vcpu.t_rip, vcpu.t_rsp) == (HANDLER + 0x40, STACK_TOP - 0x80)
    # back in the guest kernel after its SYSCALL, as from the stub's port
    assert regs.rip == HANDLER + 0x40 and vcpu.sregs.cs.selector == abi.FLAT_KERNEL_CS


def test_a_fault_in_the_syscall_stub_from_user_space_is_its_own_page_fault(vcpu: FakeVcpu) -> None:
    """User space may jump into the stub (its page is user-executable) and fault on
    the kernel-data store: that is a #PF for the guest kernel, never a hypercall."""
    from hospes.pv.trampoline import RSP0_FROM_TOP

    area, regs = vcpu.area, vcpu.regs
    vcpu.kernel_mode = False
    vcpu.kernel_sp = STACK_TOP
    vcpu.trap_table[14] = (0, HANDLER)
    rsp = area.stack_top - RSP0_FROM_TOP - 7 * 8
    fault_rip = area.syscall_stub_va + 0x53
    vcpu.mem.write(area.gpa_of(rsp), struct.pack(
        "<7Q", 14, 7, fault_rip, abi.FLAT_USER_CS, 0x202, 0x7FFF_0000_1000, abi.FLAT_USER_SS))
    regs.rsp = rsp
    vcpu.sregs.cs.selector, vcpu.sregs.cs.dpl = abi.HYPERVISOR_CS, 0
    regs.rax, regs.rdi, regs.rsi = int(Hypercall.stack_switch), 0x18, 0x1234
    vcpu._on_exception()
    assert "stub_fault" not in vcpu.stats and vcpu.stats.get("trap:14") == 1
    assert vcpu.kernel_sp == STACK_TOP and vcpu.kernel_mode       # no stack_switch; bounced to the kernel
    assert vcpu.t_rip == HANDLER
