"""The CPUID policy, the machine-check MSRs and the FS/GS bases, without KVM.

Expected answers are Xen's for a PV guest: the default PV policy of
xen/include/public/arch-x86/cpufeatureset.h ('A' bits shown when the host has
them, 'S'/'H' bits never), Xen's vMCE (xen/arch/x86/cpu/mcheck/vmce.c: two
banks, MCG_CAP per vendor, MCi_CTL all ones, a non-zero MCi_STATUS/ADDR/MISC
write is #GP), and bases the guest wrote itself (wrfsbase) read back from the CPU.
"""

from __future__ import annotations

import pytest

from hospes.kvm.structs import KvmCpuidEntry2
from hospes.pv import emulate
from hospes.pv.cpuid import CpuidPolicy
from hospes.pv.msr import AMD_GUEST_MCG_CAP, INTEL_GUEST_MCG_CAP, MSR_FS_BASE, MSR_GS_BASE
from pv_fakes import CODE_VA, FakePvDomain, FakeVcpu, cpuid_entries

GP = 13
AMD = (0x68747541, 0x444D4163, 0x69746E65)   # "AuthenticAMD" in ebx, ecx, edx


entries = cpuid_entries


def amd_host(ebx7: int = 0) -> list[KvmCpuidEntry2]:
    """An AMD host that has every bit in leaves 1 and 0x8000000x (and leaf 7 ebx as given)."""
    return entries(
        (0, 0, 0xD, AMD[0], AMD[1], AMD[2]),
        (1, 0, 0x00A10F11, 0x00020800, 0xFFFFFFFF, 0xFFFFFFFF),
        (7, 0, 0, ebx7, 0, 0),
        (0x80000000, 0, 0x80000008, 0, 0, 0),
        (0x80000001, 0, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF),
        (0x80000007, 0, 0, 0xFFFFFFFF, 0, 0xFFFFFFFF),
        (0x80000008, 0, 0x3030, 0xFFFFFFFF, 0, 0),
    )


def test_mce_and_mca_are_shown_as_xen_shows_them_to_pv_guests() -> None:
    edx = CpuidPolicy(amd_host(), fsgsbase=False).lookup(1, 0)[3]
    assert edx & (1 << 7) and edx & (1 << 14)
    # HVM-only ('S') bits stay hidden: VME, PSE, MTRR, PGE, PSE36.
    assert not edx & ((1 << 1) | (1 << 3) | (1 << 12) | (1 << 13) | (1 << 17))


def test_amd_bits_follow_xens_pv_policy() -> None:
    p = CpuidPolicy(amd_host(), fsgsbase=False)
    ecx = p.lookup(0x80000001, 0)[2]
    assert ecx & (1 << 26) and ecx & (1 << 21)           # DBEXT, TBM: 'A'
    assert not ecx & ((1 << 2) | (1 << 22) | (1 << 23))  # SVM 'S', TOPOEXT and PERFCTR_CORE unmarked
    ebx8 = p.lookup(0x80000008, 0)[1]
    assert ebx8 & (1 << 26) and ebx8 & 1                 # SSB_NO, CLZERO: 'A'
    assert not ebx8 & ((1 << 14) | (1 << 19) | (1 << 24) | (1 << 28))  # IBRS, IBRS_SAME_MODE, SSBD, PSFD: 'S'
    assert p.lookup(0x80000007, 0)[1] == 0               # no SMCA: Linux would read MSRs Xen has not


def test_fsgsbase_is_shown_when_the_cpu_runs_the_instructions_for_the_guest() -> None:
    assert CpuidPolicy(amd_host(), fsgsbase=True).lookup(7, 0)[1] & 1
    assert not CpuidPolicy(amd_host(), fsgsbase=False).lookup(7, 0)[1] & 1


def test_mcg_cap_is_xens_per_vendor() -> None:
    assert CpuidPolicy(amd_host(), fsgsbase=False).mcg_cap == AMD_GUEST_MCG_CAP == 2
    intel = entries((0, 0, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69))
    assert CpuidPolicy(intel, fsgsbase=False).mcg_cap == INTEL_GUEST_MCG_CAP == 0x1000C02


@pytest.fixture
def vcpu(dom: FakePvDomain) -> FakeVcpu:
    v = dom.vcpus[0]
    v.trap_table[GP] = (0, 0xFFFF_FFFF_8100_0000)
    return v


def rdmsr(vcpu: FakeVcpu, index: int) -> int | None:
    vcpu.put(CODE_VA, b"\x0f\x32")
    vcpu.t_rip = CODE_VA
    vcpu.regs.rcx = index
    if not emulate.handle_exception(vcpu, GP, 0):
        return None
    return (vcpu.regs.rdx << 32) | vcpu.regs.rax


def wrmsr(vcpu: FakeVcpu, index: int, value: int) -> bool:
    vcpu.put(CODE_VA, b"\x0f\x30")
    vcpu.t_rip = CODE_VA
    vcpu.regs.rcx, vcpu.regs.rdx, vcpu.regs.rax = index, value >> 32, value & 0xFFFFFFFF
    return emulate.handle_exception(vcpu, GP, 0)


def test_machine_check_msrs_answer_as_xens_vmce(vcpu: FakeVcpu) -> None:
    cap = vcpu.domain.cpuid.mcg_cap
    assert rdmsr(vcpu, 0x179) == cap and cap & 0xFF == 2
    assert rdmsr(vcpu, 0x17A) == 0 and rdmsr(vcpu, 0x17B) == 0
    assert rdmsr(vcpu, 0x400) == rdmsr(vcpu, 0x404) == 0xFFFF_FFFF_FFFF_FFFF
    assert [rdmsr(vcpu, i) for i in (0x401, 0x402, 0x403, 0x405, 0x406, 0x407)] == [0] * 6
    assert rdmsr(vcpu, 0x408) is None                     # a third bank: #GP
    assert wrmsr(vcpu, 0x17A, 4) and rdmsr(vcpu, 0x17A) == 4 and vcpu.mcg_status == 4
    assert wrmsr(vcpu, 0x179, 0) and rdmsr(vcpu, 0x179) == cap
    assert wrmsr(vcpu, 0x404, 0) and rdmsr(vcpu, 0x404) == 0xFFFF_FFFF_FFFF_FFFF
    assert wrmsr(vcpu, 0x405, 0)
    assert not wrmsr(vcpu, 0x405, 1) and not wrmsr(vcpu, 0x406, 0x1000) and not wrmsr(vcpu, 0x407, 1)


def test_bases_the_guest_wrote_itself_are_read_back_and_kept(vcpu: FakeVcpu) -> None:
    vcpu.exit_kind = "syscall"
    vcpu._resume()                                        # Hospes' bases are in the CPU now
    assert not vcpu.bases_dirty
    vcpu.sregs.fs.base = 0x7F00_0000_1000                 # wrfsbase / wrgsbase in the guest
    vcpu.sregs.gs.base = 0xFFFF_8880_0000_2000
    assert rdmsr(vcpu, MSR_FS_BASE) == 0x7F00_0000_1000
    assert rdmsr(vcpu, MSR_GS_BASE) == 0xFFFF_8880_0000_2000
    vcpu._resume()
    assert vcpu.sregs.fs.base == 0x7F00_0000_1000 and vcpu.sregs.gs.base == 0xFFFF_8880_0000_2000
    # A base Hospes changes reaches the CPU at the next entry.
    assert wrmsr(vcpu, MSR_FS_BASE, 0x5000) and vcpu.bases_dirty
    vcpu._resume()
    assert vcpu.sregs.fs.base == 0x5000 and vcpu.sregs.gs.base == 0xFFFF_8880_0000_2000
    vcpu.bases_from_cpu()
    assert vcpu.gs_base_kernel == 0xFFFF_8880_0000_2000
