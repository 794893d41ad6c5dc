"""Debug registers as Xen virtualizes them for a PV guest, without KVM.

Expected answers are Xen's (xen/arch/x86/pv/misc-hypercalls.c set_debugreg,
x86emul_read_dr, x86_adj_dr6_rsvd/x86_adj_dr7_rsvd/x86_merge_dr6): what the
guest reads, and what Hospes loads into the vCPU (KVM_SET_DEBUGREGS).
"""

from __future__ import annotations

from hospes.pv import debugregs, emulate
from hospes.pv.abi import Hypercall
from hospes.pv.errors import Errno
from pv_fakes import CODE_VA, FakePvDomain, FakeVcpu

GP, UD = 13, 6
HANDLER = 0xFFFF_FFFF_8100_0000


def loaded(vcpu: FakeVcpu) -> tuple[list[int], int, int]:
    dr = vcpu.kvm.debugregs  # type: ignore[attr-defined]
    return list(dr.db), int(dr.dr6), int(dr.dr7)


def test_set_debugreg_loads_the_vcpu_and_keeps_io_breakpoints_out_of_it(dom: FakePvDomain) -> None:
    vcpu = dom.vcpus[0]
    assert vcpu.hypercall(Hypercall.set_debugreg, 0, 0x40_1000) == 0
    assert vcpu.hypercall(Hypercall.set_debugreg, 7, 1 | (1 << 16) | (3 << 18)) == 0
    assert loaded(vcpu) == ([0x40_1000, 0, 0, 0], debugregs.DR6_DEFAULT, 0x400 | 1 | (1 << 16) | (3 << 18))
    io = 1 << 2 | (2 << 20)                                      # DR1 enabled as an I/O breakpoint
    assert vcpu.hypercall(Hypercall.set_debugreg, 7, io) == -Errno.EPERM   # not without CR4.DE
    vcpu.cr4 |= debugregs.CR4_DE
    assert vcpu.hypercall(Hypercall.set_debugreg, 7, io) == 0
    assert vcpu.hypercall(Hypercall.get_debugreg, 7) == 0x400 | io        # a read shows it
    assert loaded(vcpu)[2] == 0x400 | (2 << 20)                 # the CPU never gets its enable
    assert vcpu.hypercall(Hypercall.get_debugreg, 5) == -Errno.ENODEV     # DR5 is #UD with CR4.DE


def test_reserved_bits_and_refusals_are_xens(dom: FakePvDomain) -> None:
    vcpu = dom.vcpus[0]
    rtm = bool(dom.cpuid.lookup(7, 0)[1] & (1 << 11))   # the fake host shows RTM: DR6.RTM reads 0, DR7.RTM stays
    assert vcpu.hypercall(Hypercall.set_debugreg, 6, 0) == 0
    assert vcpu.hypercall(Hypercall.get_debugreg, 6) == (0xFFFE_0FF0 if rtm else 0xFFFF_0FF0)
    assert vcpu.hypercall(Hypercall.set_debugreg, 7, 0xD800) == 0
    assert vcpu.hypercall(Hypercall.get_debugreg, 7) == (0xC00 if rtm else 0x400)
    assert vcpu.hypercall(Hypercall.set_debugreg, 6, 1 << 32) == -Errno.EINVAL
    assert vcpu.hypercall(Hypercall.set_debugreg, 2, 0x0000_8000_0000_0000) == -Errno.EPERM
    assert vcpu.hypercall(Hypercall.set_debugreg, 2, 0xFFFF_87FF_FFFF_FFFF) == -Errno.EPERM
    assert vcpu.hypercall(Hypercall.set_debugreg, 2, 0xFFFF_8800_0000_0000) == 0


def test_dr6_merges_as_x86_merge_dr6(dom: FakePvDomain) -> None:
    vcpu = dom.vcpus[0]
    debugregs.merge_dr6(vcpu, 0xFFFF_4FF1)                       # BS and B0
    assert vcpu.debugreg[6] == 0xFFFF_4FF1
    debugregs.merge_dr6(vcpu, 0xFFFF_0FF2)                       # B1: B0-B3 replaced, BS sticks
    assert vcpu.debugreg[6] == 0xFFFF_4FF2


def at(vcpu: FakeVcpu, code: bytes) -> None:
    vcpu.put(CODE_VA, code)
    vcpu.t_rip = CODE_VA


def test_mov_to_and_from_debug_registers_is_emulated_in_the_kernel_only(dom: FakePvDomain) -> None:
    vcpu = dom.vcpus[0]
    vcpu.trap_table[UD] = (0, HANDLER)
    at(vcpu, b"\x0f\x23\xc8")                                    # mov %rax, %dr1
    vcpu.regs.rax = 0x7000
    assert emulate.handle_exception(vcpu, GP, 0) and vcpu.t_rip == CODE_VA + 3
    assert vcpu.debugreg[1] == 0x7000 and loaded(vcpu)[0][1] == 0x7000
    at(vcpu, b"\x41\x0f\x21\xcb")                                # mov %dr1, %r11
    assert emulate.handle_exception(vcpu, GP, 0) and vcpu.regs.r11 == 0x7000 and vcpu.t_rip == CODE_VA + 4
    at(vcpu, b"\x0f\x23\xf8")                                    # mov %rax, %dr7 with GD: #GP(0)
    vcpu.regs.rax = 1 << 13
    assert not emulate.handle_exception(vcpu, GP, 0) and vcpu.t_rip == CODE_VA
    at(vcpu, b"\x44\x0f\x21\xc0")                                # mov %dr8, %rax: #UD
    assert emulate.handle_exception(vcpu, GP, 0) and vcpu.t_rip == HANDLER
    vcpu.kernel_mode = False
    vcpu.user_cr3 = vcpu.kernel_cr3
    at(vcpu, b"\x0f\x21\xc8")                                    # user mode: #GP(0), as the CPU
    assert not emulate.handle_exception(vcpu, GP, 0)
