"""Trap, callback and segment hypercalls, and HYPERVISOR_iret (pv-abi.md §4.3, §5.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING
import struct

from hospes.pv import abi, debugregs
from hospes.pv.abi import Hypercall
from hospes.pv.errors import Errno, XenError
from hospes.pv.guestvirt import canonical
from hospes.pv.emulate import VMASST_ARCHITECTURAL_IOPL
from hospes.pv.vcpu import NO_RETURN, RFLAGS_IF, DomainCrash

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu

MAX_TRAPS = 256


def set_trap_table(vcpu: PvVcpu, table_va: int, *_: int) -> int:
    if table_va == 0:
        vcpu.trap_table.clear()
        return 0
    for i in range(MAX_TRAPS + 1):
        vector, flags, _cs, address = struct.unpack("<BBHxxxxQ", vcpu.read(table_va + 16 * i, 16))
        if address == 0:
            return 0
        if not canonical(address):
            raise XenError(Errno.EINVAL)
        vcpu.trap_table[vector] = (flags, address)
    return -Errno.EINVAL


CALLBACKOP_register = 0
CALLBACKOP_unregister = 1
_KNOWN_CALLBACKS = {abi.CALLBACKTYPE_event, abi.CALLBACKTYPE_failsafe, abi.CALLBACKTYPE_syscall,
                    abi.CALLBACKTYPE_sysenter, abi.CALLBACKTYPE_syscall32, abi.CALLBACKTYPE_nmi}


def callback_op(vcpu: PvVcpu, cmd: int, arg: int, *_: int) -> int:
    cmd &= 0xFFFFFFFF
    if cmd == CALLBACKOP_register:
        type_, flags, address = struct.unpack("<HHxxxxQ", vcpu.read(arg, 16))
        if type_ not in _KNOWN_CALLBACKS:
            return -Errno.ENOSYS
        if not canonical(address):
            raise XenError(Errno.EINVAL)
        if type_ == abi.CALLBACKTYPE_event:
            flags |= abi.CALLBACKF_mask_events
        vcpu.callbacks[type_] = (address, flags)
        return 0
    if cmd == CALLBACKOP_unregister:
        (type_,) = struct.unpack("<H", vcpu.read(arg, 2))
        if type_ not in _KNOWN_CALLBACKS:
            return -Errno.ENOSYS
        if type_ != abi.CALLBACKTYPE_nmi:
            return -Errno.EINVAL  # Xen refuses to unregister the callbacks a PV kernel needs
        vcpu.callbacks.pop(type_, None)
        return 0
    return -Errno.ENOSYS


def set_callbacks(vcpu: PvVcpu, event: int, failsafe: int, syscall: int, *_: int) -> int:
    for a in (event, failsafe, syscall):
        if not canonical(a):
            raise XenError(Errno.EINVAL)
    vcpu.callbacks[abi.CALLBACKTYPE_event] = (event, abi.CALLBACKF_mask_events)
    vcpu.callbacks[abi.CALLBACKTYPE_failsafe] = (failsafe, 0)
    vcpu.callbacks[abi.CALLBACKTYPE_syscall] = (syscall, abi.CALLBACKF_mask_events)
    return 0


def stack_switch(vcpu: PvVcpu, ss: int, sp: int, *_: int) -> int:
    vcpu.kernel_ss = ss     # RPL 3 when read (Xen's fixup_guest_stack_selector): PvVcpu.kernel_ss
    vcpu.kernel_sp = sp
    return 0


def fpu_taskswitch(vcpu: PvVcpu, set_: int, *_: int) -> int:
    vcpu.cr0_ts = bool(set_ & 0xFFFFFFFF)
    return 0


SEGBASE_FS = 0
SEGBASE_GS_USER = 1
SEGBASE_GS_KERNEL = 2
SEGBASE_GS_USER_SEL = 3


def set_segment_base(vcpu: PvVcpu, which: int, base: int, *_: int) -> int:
    which &= 0xFFFFFFFF
    vcpu.bases_from_cpu()
    vcpu.bases_dirty = True
    if which == SEGBASE_GS_USER_SEL:
        sel = base & 0xFFFF
        if sel & 3 != 3 and sel > 3:
            sel |= 3
        vcpu.gs_sel = sel
        vcpu.gs_base_user = vcpu.domain.descriptor_base(vcpu, sel)
        return 0
    if not canonical(base):
        return -Errno.EINVAL
    if which == SEGBASE_FS:
        vcpu.fs_base = base
    elif which == SEGBASE_GS_USER:
        vcpu.gs_base_user = base
    elif which == SEGBASE_GS_KERNEL:
        vcpu.gs_base_kernel = base
    else:
        return -Errno.EINVAL
    return 0


def set_debugreg(vcpu: PvVcpu, reg: int, value: int, *_: int) -> int:
    rc = debugregs.set_debugreg(vcpu, reg & 0xFFFFFFFF, value)
    if rc == 0:
        debugregs.load(vcpu)
    return rc


def get_debugreg(vcpu: PvVcpu, reg: int, *_: int) -> int:
    value = debugregs.read_debugreg(vcpu, reg & 0xFFFFFFFF)
    return -Errno.ENODEV if value is None else value


def iret(vcpu: PvVcpu, *_: int) -> object:
    regs = vcpu.regs
    try:
        rax, r11, rcx, flags, rip, cs, rflags, rsp, ss = struct.unpack("<9Q", vcpu.read(regs.rsp, 72))
    except Exception as e:  # noqa: BLE001 - Xen crashes the domain on a bad frame
        raise DomainCrash(f"HYPERVISOR_iret with an unreadable frame at {regs.rsp:#x}: {e}") from e
    if cs & 3 == 3:
        if vcpu.user_cr3 == 0:
            raise DomainCrash("HYPERVISOR_iret to user mode without a user page table")
        vcpu.bases_from_cpu()
        vcpu.kernel_mode = False
        vcpu.bases_dirty = True
    # Xen's do_iret copies RSP as it is: a non-canonical one faults (#SS) only
    # when the guest uses it. RIP is still checked: Hospes cannot enter the VM there.
    if not canonical(rip):
        raise DomainCrash(f"HYPERVISOR_iret to a non-canonical address {rip:#x}")
    if VMASST_ARCHITECTURAL_IOPL in vcpu.domain.vm_assist:
        vcpu.iopl = (rflags >> 12) & 3     # do_iret: the frame's IOPL is the new virtual IOPL
    vcpu.t_rip = rip
    vcpu.t_cs = (cs & 0xFFFF) | 3
    vcpu.t_rflags = rflags
    vcpu.t_rsp = rsp
    vcpu.t_ss = (ss & 0xFFFF) | 3
    if not flags & abi.VGCF_in_syscall:
        regs.r11 = r11
        regs.rcx = rcx
    vcpu.upcall_mask = 0 if rflags & RFLAGS_IF else 1
    regs.rax = rax
    return NO_RETURN


HANDLERS = {
    Hypercall.set_trap_table: set_trap_table,
    Hypercall.callback_op: callback_op,
    Hypercall.set_callbacks: set_callbacks,
    Hypercall.stack_switch: stack_switch,
    Hypercall.fpu_taskswitch: fpu_taskswitch,
    Hypercall.set_segment_base: set_segment_base,
    Hypercall.set_debugreg: set_debugreg,
    Hypercall.get_debugreg: get_debugreg,
    Hypercall.iret: iret,
}
