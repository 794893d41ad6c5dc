"""MSR emulation for a PV guest kernel (pv-abi.md §7.4).

A PV kernel's ``rdmsr``/``wrmsr`` trap (#GP at CPL 3) and land here. Reads
return Xen's values for the MSRs Linux asks about; unknown MSRs raise #GP
(the guest's *_safe accessors expect that), except before the guest has a #GP
handler, when Xen fakes a read of 0.

Machine check: CPUID shows MCE and MCA as Xen does for PV guests, so the MSRs
answer as Xen's vMCE (``xen/arch/x86/cpu/mcheck/vmce.c``): two banks, MCG_CAP
as Xen sets it per vendor, MCi_CTL all ones (writes ignored), MCi_STATUS,
ADDR and MISC zero (a non-zero write is #GP), MCG_STATUS kept per vCPU.
Hospes never injects a machine check, so nothing else ever changes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from hospes.pv.guestvirt import canonical

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu

MSR_FS_BASE = 0xC0000100
MSR_GS_BASE = 0xC0000101
MSR_SHADOW_GS_BASE = 0xC0000102
MSR_EFER = 0xC0000080
MSR_PAT = 0x277
PAT_VALUE = 0x0000050100070406

_FIXED_READS = {
    0x8B: 0,              # UCODE_REV / PATCH_LEVEL
    0x17: 0,              # PLATFORM_ID
    0x3A: 1,              # FEATURE_CONTROL: locked, nothing enabled
    0xCE: 0,              # PLATFORM_INFO
    0x140: 0,             # MISC_FEATURES_ENABLES
    0x198: 0, 0x199: 0, 0x19C: 0,
    MSR_EFER: 0xD01,
    MSR_PAT: PAT_VALUE,
    0x1A0: (1 << 11) | (1 << 12) | (1 << 23),  # MISC_ENABLE: BTS/PEBS unavailable, xTPR disabled
    0xC0010015: 0,        # AMD HWCR
    0xC001001F: 0,        # AMD NB_CFG
    0xC0010058: 0,        # AMD MMIO_CONF_BASE
}
MSR_MCG_CAP = 0x179
MSR_MCG_STATUS = 0x17A
MSR_MCG_CTL = 0x17B
MSR_MC0_CTL = 0x400
MSR_MC0_CTL2 = 0x280
GUEST_MC_BANKS = 2
MCG_CTL_P = 1 << 8
MCG_CMCI_P = 1 << 10
MCG_TES_P = 1 << 11
MCG_SER_P = 1 << 24
INTEL_GUEST_MCG_CAP = MCG_SER_P | MCG_TES_P | MCG_CMCI_P | GUEST_MC_BANKS
AMD_GUEST_MCG_CAP = GUEST_MC_BANKS


def guest_mcg_cap(vendor_ebx: int) -> int:
    """Xen's vmce_init_vcpu: Intel's capabilities on Intel, the bank count alone otherwise."""
    return INTEL_GUEST_MCG_CAP if vendor_ebx == 0x756E6547 else AMD_GUEST_MCG_CAP  # "Genu"


def _mce_read(vcpu: "PvVcpu", index: int) -> Optional[int]:
    """vmce_rdmsr: None when ``index`` is not a machine-check MSR."""
    cap = vcpu.domain.cpuid.mcg_cap
    if index == MSR_MCG_CAP:
        return cap
    if index == MSR_MCG_STATUS:
        return vcpu.mcg_status
    if index == MSR_MCG_CTL:
        return 0xFFFF_FFFF_FFFF_FFFF if cap & MCG_CTL_P else 0
    banks = cap & 0xFF
    if MSR_MC0_CTL <= index < MSR_MC0_CTL + 4 * banks:
        return 0xFFFF_FFFF_FFFF_FFFF if (index - MSR_MC0_CTL) % 4 == 0 else 0
    if MSR_MC0_CTL2 <= index < MSR_MC0_CTL2 + banks:
        return 0
    return None


def _mce_write(vcpu: "PvVcpu", index: int, value: int) -> Optional[bool]:
    """vmce_wrmsr: None when ``index`` is not a machine-check MSR, else whether it is taken."""
    cap = vcpu.domain.cpuid.mcg_cap
    if index in (MSR_MCG_CAP, MSR_MCG_CTL):
        return True           # read-only / fixed: the write changes nothing
    if index == MSR_MCG_STATUS:
        vcpu.mcg_status = value
        return True
    banks = cap & 0xFF
    if MSR_MC0_CTL <= index < MSR_MC0_CTL + 4 * banks:
        return (index - MSR_MC0_CTL) % 4 == 0 or value == 0
    if MSR_MC0_CTL2 <= index < MSR_MC0_CTL2 + banks:
        return True
    return None


_IGNORED_WRITES = {0x8B, 0x1A0, 0xC0010015, 0x19A, 0x1B0, 0xE7, 0xE8}


class MsrEmulator:
    def read(self, vcpu: "PvVcpu", index: int) -> Optional[int]:
        if index in _FIXED_READS:
            return _FIXED_READS[index]
        if index == 0x1B:  # APIC_BASE
            return 0xFEE00000 | 0x800 | (0x100 if vcpu.id == 0 else 0)
        if index == 0x10:
            return vcpu.domain.clock.guest_tsc()
        if index in (MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE):
            vcpu.bases_from_cpu()
        if index == MSR_FS_BASE:
            return vcpu.fs_base
        if index == MSR_GS_BASE:
            return vcpu.gs_base_kernel if vcpu.kernel_mode else vcpu.gs_base_user
        if index == MSR_SHADOW_GS_BASE:
            return vcpu.gs_base_user if vcpu.kernel_mode else vcpu.gs_base_kernel
        if 0x179 <= index <= 0x4FF or 0x280 <= index <= 0x29F:
            mce = _mce_read(vcpu, index)
            if mce is not None:
                return mce
        if 0xC0010064 <= index <= 0xC001006B or 0xC0010000 <= index <= 0xC0010007:
            return 0      # AMD P-state and perf counters
        entry = vcpu.trap_table.get(13)
        if entry is None or entry[1] == 0:
            return 0      # Xen fakes reads until the guest can take a #GP
        return None

    def write(self, vcpu: "PvVcpu", index: int, value: int) -> bool:
        if index in (MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE):
            if not canonical(value):
                return False
            vcpu.bases_from_cpu()
            vcpu.bases_dirty = True
            if index == MSR_FS_BASE:
                vcpu.fs_base = value
            elif (index == MSR_GS_BASE) == vcpu.kernel_mode:
                vcpu.gs_base_kernel = value
            else:
                vcpu.gs_base_user = value
            return True
        if 0x179 <= index <= 0x4FF or 0x280 <= index <= 0x29F:
            taken = _mce_write(vcpu, index, value)
            if taken is not None:
                return taken
        if index == MSR_EFER:
            return value == 0xD01
        if index == MSR_PAT:
            return value == PAT_VALUE
        if index in _IGNORED_WRITES:
            return True
        return False
