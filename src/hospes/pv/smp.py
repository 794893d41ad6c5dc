"""Bringing up secondary vCPUs: VCPUOP_initialise's vcpu_guest_context (pv-abi.md §12).

The boot vCPU hands over a whole register context; Hospes validates it as Xen's
arch_set_info_guest does (canonical addresses, RPL 3 selectors, descriptor
checks, a validated L4) and stores it on the target, whose own thread loads it
into KVM before its first entry (KVM vCPU state belongs to its thread).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from hospes.pv import abi
from hospes.pv.errors import Errno, XenError
from hospes.pv.guestvirt import canonical
from hospes.pv.vcpu_state import StartContext
from hospes.pv.descriptors import load_gdt_frames

if TYPE_CHECKING:
    from hospes.pv.mmu import PvMmu
    from hospes.pv.vcpu import PvVcpu

CONTEXT_SIZE = 5168
VGCF_in_kernel = 1 << 2
VGCF_failsafe_disables_events = 1 << 3
VGCF_syscall_disables_events = 1 << 4
_GPRS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
         "rax", "rcx", "rdx", "rsi", "rdi")
USER_REGS = 0x208
TRAP_CTXT = 0x2D0


def load_guest_context(mmu: "PvMmu", ram_pages: int, target: "PvVcpu", ctx: bytes) -> int:
    """Validate ``ctx`` and store it on ``target``; 0 or a negative Xen errno."""
    (flags,) = struct.unpack_from("<Q", ctx, 0x200)
    values = struct.unpack_from("<15Q", ctx, USER_REGS)
    gprs = dict(zip(_GPRS, values, strict=False))
    (rip,) = struct.unpack_from("<Q", ctx, USER_REGS + 0x80)
    (cs,) = struct.unpack_from("<H", ctx, USER_REGS + 0x88)
    rflags, rsp, ss = struct.unpack_from("<QQH", ctx, USER_REGS + 0x90)
    ldt_base, ldt_ents = struct.unpack_from("<QQ", ctx, 0x12D0)
    gdt_frames = list(struct.unpack_from("<16Q", ctx, 0x12E0))
    gdt_ents, kernel_ss, kernel_sp = struct.unpack_from("<QQQ", ctx, 0x1360)
    ctrlreg = struct.unpack_from("<8Q", ctx, 0x1378)
    event_cb, failsafe_cb, syscall_cb, _vm_assist, fs_base, gs_kernel, gs_user = struct.unpack_from("<7Q", ctx, 0x13F8)

    for a in (rip, rsp, kernel_sp, event_cb, failsafe_cb, syscall_cb, fs_base, gs_kernel, gs_user, ldt_base):
        if not canonical(a):
            return -Errno.EINVAL
    if ldt_base & 0xFFF or ldt_ents > 8192 or gdt_ents > 16 * 512:
        return -Errno.EINVAL
    traps = {}
    for v in range(256):
        vector, tflags, _tcs, address = struct.unpack_from("<BBHxxxxQ", ctx, TRAP_CTXT + 16 * v)
        if address:
            if not canonical(address):
                return -Errno.EINVAL
            traps[v] = (tflags, address)
    in_kernel = bool(flags & VGCF_in_kernel)
    if not in_kernel and ctrlreg[1] == 0:
        return -Errno.EINVAL

    ram = ram_pages
    nframes = (gdt_ents + 511) // 512
    frames = gdt_frames[:nframes]
    kernel_l4 = ctrlreg[3] >> 12
    user_l4 = ctrlreg[1] >> 12
    if kernel_l4 == 0 or kernel_l4 >= ram or user_l4 >= ram:
        return -Errno.EINVAL
    with mmu.lock:
        try:
            rc = load_gdt_frames(target, frames, gdt_ents)
            if rc:
                return rc
            target.kernel_cr3 = mmu.switch_l4(target.writes, target.kernel_cr3, kernel_l4)
            target.user_cr3 = mmu.switch_l4(target.writes, target.user_cr3, user_l4)
        except XenError as e:
            return -e.errno

    target.trap_table = traps
    target.callbacks = {abi.CALLBACKTYPE_event: (event_cb, abi.CALLBACKF_mask_events)}
    if failsafe_cb:
        target.callbacks[abi.CALLBACKTYPE_failsafe] = (
            failsafe_cb, abi.CALLBACKF_mask_events if flags & VGCF_failsafe_disables_events else 0)
    if syscall_cb:
        target.callbacks[abi.CALLBACKTYPE_syscall] = (
            syscall_cb, abi.CALLBACKF_mask_events if flags & VGCF_syscall_disables_events else 0)
    target.kernel_ss = kernel_ss     # RPL 3 when read: PvVcpu.kernel_ss
    target.kernel_sp = kernel_sp
    target.kernel_mode = in_kernel
    target.fs_base = fs_base
    target.gs_base_kernel = gs_kernel
    target.gs_base_user = gs_user
    target.iopl = (rflags >> 12) & 3
    target.ldt_base, target.ldt_ents = ldt_base, ldt_ents
    target.debugreg = [0, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0x400]
    target.start_context = StartContext(
        gprs=tuple(sorted(gprs.items())),
        frame=(rip, (cs & 0xFFFF) | 3, rflags & ~(3 << 12), rsp, (ss & 0xFFFF) | 3),
    )
    target.initialised = True
    return 0
