"""The CPUID a PV guest sees, on both paths (pv-abi.md §7.3).

The guest kernel asks through the forced-emulation prefix (``ud2; "xen";
cpuid``), which Hospes answers from this table; user space runs ``cpuid``
natively, which KVM answers from the same table (``KVM_SET_CPUID2``). Features
a deprivileged kernel cannot use are hidden, and Xen's leaves replace KVM's
at 0x40000000 so Linux detects Xen and nothing else.

What is shown follows Xen's default PV policy
(``xen/include/public/arch-x86/cpufeatureset.h``: 'A' bits are shown when the
host has them; 'S', 'H' and unmarked ones are not), except where Hospes
cannot give a feature its meaning (XSAVE and so the AVX family; PAT-less PSE
and 1 GiB pages, which PV cannot map anyway). MCE and MCA are shown: the
machine-check MSRs answer as Xen's vMCE (``pv/msr.py``). FSGSBASE is shown
when the host kernel has enabled it, because the guest can then use the
instructions whatever CPUID says (a PVM guest runs with the host's CR4):
Hospes reads the bases back from the CPU (``PvVcpu.bases_from_cpu``) and
never overwrites what the guest wrote.
"""

from __future__ import annotations

import ctypes

from hospes.kvm.structs import KvmCpuidEntry2
from hospes.pv import abi
from hospes.pv.msr import guest_mcg_cap

KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1


def _bits(*positions: int) -> int:
    v = 0
    for p in positions:
        v |= 1 << p
    return v


# (leaf, register) -> bits to clear. XSAVE is hidden, so every AVX-family bit
# goes too; so do features a CPL-3 kernel cannot use (SMEP/SMAP/UMIP/PKU/CET),
# page sizes PV cannot map (PSE, 1 GiB), MSR families we do not emulate, and
# the HVM-only ('S'/'H') bits of Xen's policy (e.g. PSFD).
HIDE = {
    (1, "edx"): _bits(1, 3, 12, 13, 17, 21, 28, 29, 31),
    (1, "ecx"): _bits(2, 3, 4, 5, 6, 7, 8, 12, 14, 15, 17, 18, 21, 24, 26, 27, 28, 29),
    (7, "eax"): 0xFFFFFFFF,
    (7, "ebx"): _bits(0, 1, 2, 5, 7, 10, 12, 14, 15, 16, 17, 20, 21, 25, 26, 27, 28, 30, 31),
    (7, "ecx"): _bits(1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 16, 22, 23, 29, 30, 31),
    (7, "edx"): _bits(2, 3, 5, 8, 15, 18, 19, 20, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31),
    (0x80000001, "edx"): _bits(26, 27),
    (0x80000001, "ecx"): _bits(2, 3, 4, 9, 10, 11, 12, 13, 15, 16, 19, 22, 23, 24, 27, 28, 29),
    (0x80000007, "ebx"): 0xFFFFFFFF,   # RAS (SMCA, SUCCOR, overflow recovery): not in Xen's policy
    (0x80000007, "edx"): _bits(8),
    (0x80000008, "ebx"): _bits(12, 14, 15, 16, 17, 18, 19, 24, 25, 28),
}
FSGSBASE = 1 << 0       # leaf 7 ebx
AT_HWCAP2 = 26
HWCAP2_FSGSBASE = 1 << 1


def host_fsgsbase() -> bool:
    """Whether the host kernel runs with CR4.FSGSBASE (and so a PVM guest can use the instructions)."""
    libc = ctypes.CDLL(None, use_errno=True)   # the process's own libc: find_library would run ldconfig
    getauxval = libc.getauxval
    getauxval.restype = ctypes.c_ulong
    getauxval.argtypes = [ctypes.c_ulong]
    return bool(getauxval(AT_HWCAP2) & HWCAP2_FSGSBASE)
DROP_LEAVES = {0x5, 0x6, 0xA, 0xD, 0x14, 0x1F}  # MWAIT, power, PMU, XSAVE (hidden), PT, v2 topology


def xen_leaves(base: int = 0x40000000) -> list[tuple[int, int, int, int, int, int]]:
    """(leaf, index, eax, ebx, ecx, edx) of Xen's hypervisor leaves."""
    return [
        (base, 0, base + 5, 0x566E6558, 0x65584D4D, 0x4D4D566E),
        (base + 1, 0, (abi.XEN_MAJOR << 16) | abi.XEN_MINOR, 0, 0, 0),
        (base + 2, 0, 1, 0x40000000, 1, 0),
        (base + 3, 0, 0, 0, 0, 0),
        (base + 4, 0, 0, 0, 0, 0),
        (base + 5, 0, 0, 40, 0, 0),
    ]


class CpuidPolicy:
    """A filtered CPUID table, answering lookups and feeding KVM_SET_CPUID2."""

    def __init__(self, host: list[KvmCpuidEntry2], fsgsbase: bool | None = None) -> None:
        if fsgsbase is None:
            fsgsbase = host_fsgsbase()
        self.entries: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        self.flags: dict[tuple[int, int], int] = {}
        for e in host:
            if 0x40000000 <= e.function < 0x50000000 or e.function in DROP_LEAVES:
                continue
            regs = {"eax": e.eax, "ebx": e.ebx, "ecx": e.ecx, "edx": e.edx}
            for (leaf, reg), mask in HIDE.items():
                if e.function == leaf and (leaf != 7 or e.index == 0):
                    regs[reg] &= ~mask
            if e.function == 7 and e.index != 0:
                continue
            if e.function == 7 and fsgsbase:
                # KVM does not list it (PVM has no CR4 of its own), but the CPU runs
                # the instructions for the guest; Xen shows it to PV guests ('A').
                regs["ebx"] |= FSGSBASE
            if e.function == 1:
                regs["ecx"] |= 1 << 31             # hypervisor present
                regs["ebx"] &= 0x0000FFFF          # initial APIC ID 0, no HTT count
            self.entries[(e.function, e.index)] = (regs["eax"], regs["ebx"], regs["ecx"], regs["edx"])
            self.flags[(e.function, e.index)] = e.flags
        for leaf, index, a, b, c, d in xen_leaves():
            self.entries[(leaf, index)] = (a, b, c, d)
            self.flags[(leaf, index)] = 0
        self.max_basic = self.entries.get((0, 0), (0, 0, 0, 0))[0]
        self.max_ext = self.entries.get((0x80000000, 0), (0x80000000, 0, 0, 0))[0]
        self.mcg_cap = guest_mcg_cap(self.entries.get((0, 0), (0, 0, 0, 0))[1])

    def lookup(self, leaf: int, index: int) -> tuple[int, int, int, int]:
        if (leaf, index) in self.entries:
            return self.entries[(leaf, index)]
        if (leaf, 0) in self.entries and not self.flags.get((leaf, 0), 0) & KVM_CPUID_FLAG_SIGNIFCANT_INDEX:
            return self.entries[(leaf, 0)]
        if 0x40000000 <= leaf < 0x50000000:
            return (0, 0, 0, 0)
        if leaf < 0x80000000 and leaf > self.max_basic:
            return self.entries.get((self.max_basic, index), (0, 0, 0, 0))
        return (0, 0, 0, 0)

    def kvm_entries(self) -> list[KvmCpuidEntry2]:
        out = []
        for (leaf, index), (a, b, c, d) in sorted(self.entries.items()):
            e = KvmCpuidEntry2()
            e.function = leaf
            e.index = index
            e.flags = self.flags.get((leaf, index), 0)
            e.eax, e.ebx, e.ecx, e.edx = a, b, c, d
            out.append(e)
        return out
