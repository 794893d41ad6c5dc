"""A PV vCPU's debug registers, virtualized as Xen does (issue 11).

Xen keeps DR0-DR7 per vCPU (``set_debugreg`` in xen/arch/x86/pv/misc-hypercalls.c,
``x86emul_read_dr``, ``x86_adj_dr6_rsvd``/``x86_adj_dr7_rsvd``/``x86_merge_dr6``
in xen/lib/x86/) and loads them into the CPU while the vCPU runs. Hospes does
the same through KVM_SET_DEBUGREGS (the guest's own registers; the host
debugger's KVM_SET_GUEST_DEBUG is never used), from the vCPU's own thread.

* Breakpoint addresses must be guest addresses: below 2^47 or at/above
  HYPERVISOR_VIRT_END, so a breakpoint can never name Hospes' trampoline,
  whose pages are all in the hypervisor's L4 slots.
* DR7: reserved bits forced, GD refused (-EPERM), I/O breakpoints only with
  CR4.DE and then kept out of the CPU (Xen emulates them: ``dr7_emul``); a
  read shows them again.
* DR6: the guest reads the merged status Xen keeps, not the CPU's; each #DB
  replaces B0-B3 and accumulates BD/BS/BT. The CPU's DR6 is reset after
  every #DB so the next one reports only its own causes.
* A #DB that hits Hospes' own code (a breakpoint deferred by ``mov %ss`` into
  the SYSCALL entry) is noted and ignored, as Xen ignores "#DB in Xen context".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hospes.kvm.structs import KvmDebugregs
from hospes.pv.errors import Errno

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu

DR6_DEFAULT = 0xFFFF0FF0
DR6_ZEROS = 0x00001000
DR6_NON_STICKY = 0x0000000F      # B0-B3
DR6_STICKY = 0x0000E000          # BD, BS, BT
DR6_BS = 1 << 14
DR6_RTM = 1 << 16
DR6_BLD = 1 << 11
DR7_DEFAULT = 0x00000400
DR7_ZEROS = 0x0000D800
DR7_RTM = 1 << 11
DR7_GD = 1 << 13
DR7_ACTIVE = 0xFF                # L0-L3, G0-G3
DR_IO = 2                        # R/W field 10b: I/O breakpoint (only with CR4.DE)
CR4_DE = 1 << 3
HYPERVISOR_VIRT_START = 0xFFFF_8000_0000_0000   # Xen's (and Hospes') reserved range, L4 slots 256-271
HYPERVISOR_VIRT_END = 0xFFFF_8800_0000_0000
INITIAL = (0, 0, 0, 0, 0, 0, DR6_DEFAULT, DR7_DEFAULT)


def in_hypervisor_range(va: int) -> bool:
    return HYPERVISOR_VIRT_START <= va < HYPERVISOR_VIRT_END


def breakpoint_addr_ok(value: int) -> bool:
    return value < (1 << 47) or HYPERVISOR_VIRT_END <= value <= 0xFFFF_FFFF_FFFF_FFFF


def _policy_bits(vcpu: "PvVcpu") -> tuple[bool, bool]:
    """(RTM, BLD) as the guest's CPUID shows them."""
    ebx7, ecx7 = vcpu.domain.cpuid.lookup(7, 0)[1:3]
    return bool(ebx7 & (1 << 11)), bool(ecx7 & (1 << 24))


def adj_dr6(vcpu: "PvVcpu", dr6: int) -> int:
    rtm, bld = _policy_bits(vcpu)
    ones = DR6_DEFAULT & ~(DR6_RTM if rtm else 0) & ~(DR6_BLD if bld else 0)
    return (dr6 | ones) & ~DR6_ZEROS & 0xFFFFFFFF


def adj_dr7(vcpu: "PvVcpu", dr7: int) -> int:
    rtm, _ = _policy_bits(vcpu)
    zeros = DR7_ZEROS & ~(DR7_RTM if rtm else 0)
    return (dr7 & ~zeros) | DR7_DEFAULT


def set_debugreg(vcpu: "PvVcpu", reg: int, value: int) -> int:
    """Xen's set_debugreg: 0, or -ENODEV (#UD), -EINVAL or -EPERM (#GP)."""
    value &= 0xFFFF_FFFF_FFFF_FFFF
    dr = vcpu.debugreg
    if 0 <= reg <= 3:
        if not breakpoint_addr_ok(value):
            return -Errno.EPERM
        dr[reg] = value
    elif reg in (4, 6):
        if reg == 4 and vcpu.cr4 & CR4_DE:
            return -Errno.ENODEV
        if value >> 32:
            return -Errno.EINVAL
        dr[6] = adj_dr6(vcpu, value)
    elif reg in (5, 7):
        if reg == 5 and vcpu.cr4 & CR4_DE:
            return -Errno.ENODEV
        if value >> 32:
            return -Errno.EINVAL
        value = adj_dr7(vcpu, value)
        if value & DR7_GD:
            return -Errno.EPERM
        io_enable = 0
        if value & DR7_ACTIVE:
            for n in range(4):
                if (value >> (16 + 4 * n)) & 3 == DR_IO:
                    if not vcpu.cr4 & CR4_DE:
                        return -Errno.EPERM
                    io_enable |= value & (3 << (2 * n))
        vcpu.dr7_emul = io_enable
        dr[7] = value & ~io_enable
    else:
        return -Errno.ENODEV
    return 0


def read_debugreg(vcpu: "PvVcpu", reg: int) -> int | None:
    """Xen's x86emul_read_dr: the value, or None for #UD (-ENODEV from get_debugreg)."""
    if 0 <= reg <= 3:
        return vcpu.debugreg[reg]
    if reg in (4, 6):
        return None if reg == 4 and vcpu.cr4 & CR4_DE else vcpu.debugreg[6]
    if reg in (5, 7):
        return None if reg == 5 and vcpu.cr4 & CR4_DE else vcpu.debugreg[7] | vcpu.dr7_emul
    return None


def io_breakpoint_match(vcpu: "PvVcpu", port: int, size: int) -> int:
    """Xen's check_guest_io_breakpoint: the B0-B3 bits of the emulated I/O
    breakpoints an access of ``size`` bytes at ``port`` hits."""
    if not vcpu.dr7_emul or not vcpu.cr4 & CR4_DE:
        return 0
    match = 0
    for n in range(4):
        if not vcpu.dr7_emul & (3 << (2 * n)):
            continue
        start = vcpu.debugreg[n]
        width = {0x0: 1, 0x4: 2, 0xC: 4, 0x8: 8}[(vcpu.debugreg[7] >> (16 + 4 * n)) & 0xC]
        if start < port + size and start + width > port:
            match |= 1 << n
    return match


def deliver_io_breakpoint(vcpu: "PvVcpu", port: int, size: int) -> None:
    """After an emulated port access: the #DB (a trap) its I/O breakpoints raise."""
    match = io_breakpoint_match(vcpu, port, size)
    if match:
        merge_dr6(vcpu, DR6_DEFAULT | match)
        vcpu.bounce_exception(1, None)


def merge_dr6(vcpu: "PvVcpu", cpu_dr6: int) -> None:
    """Xen's x86_merge_dr6: fold one #DB's causes (the CPU's DR6) into the guest's DR6."""
    new = (cpu_dr6 ^ DR6_DEFAULT) & 0xFFFFFFFF
    dr6 = vcpu.debugreg[6] ^ DR6_DEFAULT
    dr6 |= new & DR6_STICKY
    dr6 = (dr6 & ~DR6_NON_STICKY) | (new & DR6_NON_STICKY)
    vcpu.debugreg[6] = adj_dr6(vcpu, dr6 ^ DR6_DEFAULT)


def load(vcpu: "PvVcpu") -> None:
    """Put DR0-DR3 and DR7 (without the emulated I/O breakpoints) into the vCPU,
    with a clean DR6. Runs on the vCPU's own thread (or before it starts)."""
    regs = KvmDebugregs()
    for n in range(4):
        regs.db[n] = vcpu.debugreg[n]
    regs.dr6 = DR6_DEFAULT
    regs.dr7 = vcpu.debugreg[7]
    vcpu.kvm.set_debugregs(regs)


def take_cpu_dr6(vcpu: "PvVcpu") -> int:
    """The CPU's DR6 after a #DB, which is then reset for the next one."""
    regs = vcpu.kvm.get_debugregs()
    dr6 = int(regs.dr6)
    regs.dr6 = DR6_DEFAULT
    vcpu.kvm.set_debugregs(regs)
    return dr6
