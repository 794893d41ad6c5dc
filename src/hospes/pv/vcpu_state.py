"""A PV vCPU's saved state: what KVM holds for it, and what Xen's ``struct pv_vcpu`` holds.

A vCPU is saved only while its thread is parked (paused or down, waiting in
``VcpuRun.wait_runnable``) or not started: then every exit has been handled,
the next entry is fully described by KVM's registers (a return into the
in-VM writer included: its pending stores and final frame are in guest
memory, which travels on its own), and nothing is half-done in Python.
A vCPU asleep inside SCHEDOP_block is not parked; the domain wakes it first
(a block may always return early).

KVM state: ``regs``, ``sregs`` and ``events`` live in the sync-regs area
while the vCPU runs. After an exit KVM's copy and the area agree; once the
exit path has edited the area for the next entry (``kvm_dirty_regs`` set),
the area is the truth. So each of the three is taken from the area when it is
dirty and from KVM otherwise. The TSC is not here: the domain's ``Clock``
owns guest time and re-anchors it on restore. The MSRs here are the ones
Hospes programs; a guest cannot write MSRs itself (rdmsr/wrmsr are emulated).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import ClassVar

from hospes.kvm import constants as kc
from hospes.kvm import Vcpu
from hospes.kvm.structs import KvmDebugregs, KvmRegs, KvmSregs, KvmVcpuEvents, KvmXcrs, KvmXsave
from hospes.state import StateError, check_version

# STAR, LSTAR, CSTAR, SFMASK, PAT, KERNEL_GS_BASE: set by setup_cpu, saved as they are.
SAVED_MSRS = (0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084, 0x277, 0xC0000102)
SFMASK = 0xC0000084


@dataclass(frozen=True)
class CpuState:
    """KVM's register state of one vCPU, as the kernel's own structs (x86-64 KVM ABI)."""

    VERSION: ClassVar[int] = 1
    regs: bytes
    sregs: bytes
    events: bytes
    xsave: bytes
    xcrs: bytes
    debugregs: bytes
    msrs: tuple[tuple[int, int], ...]
    version: int = VERSION


@dataclass(frozen=True)
class StartContext:
    """A VCPUOP_initialise context not yet loaded (the vCPU has not run since)."""

    VERSION: ClassVar[int] = 1
    gprs: tuple[tuple[str, int], ...]
    frame: tuple[int, int, int, int, int]   # rip, cs, rflags, rsp, ss
    version: int = VERSION


@dataclass(frozen=True)
class PvVcpuState:
    """Everything Hospes knows about one vCPU beyond guest memory."""

    VERSION: ClassVar[int] = 1
    vcpu_id: int
    online: bool
    initialised: bool
    kernel_mode: bool
    kernel_cr3: int
    user_cr3: int
    cpu_cr3: int
    gs_base_kernel: int
    gs_base_user: int
    fs_base: int
    gs_sel: int
    trap_table: tuple[tuple[int, int, int], ...]      # (vector, flags, address)
    callbacks: tuple[tuple[int, int, int], ...]       # (type, address, flags)
    kernel_ss: int
    kernel_sp: int
    iopl: int
    cr0_ts: bool
    cr4: int
    debugreg: tuple[int, ...]
    vcpu_info_gpa: int
    vcpu_info_registered: bool
    runstate_va: int
    gdt_frames: tuple[int, ...]
    gdt_ents: int
    ldt_base: int
    ldt_ents: int
    writes: tuple[tuple[int, int], ...]               # page-table stores the writer has still to make
    flush_pending: bool
    invlpg_va: int
    start_context: StartContext | None
    cpu: CpuState
    time_area_va: int = 0                             # 0: none registered (and saves from before it)
    mcg_status: int = 0                               # MCG_STATUS of Xen's vMCE
    dr7_emul: int = 0                                 # DR7's I/O-breakpoint enables (never in the CPU)
    version: int = VERSION


def _raw(struct: ctypes.Structure) -> bytes:
    return bytes(ctypes.string_at(ctypes.addressof(struct), ctypes.sizeof(struct)))


def _load(cls: type[ctypes.Structure], data: bytes, what: str) -> ctypes.Structure:
    if len(data) != ctypes.sizeof(cls):
        raise StateError(f"The saved vCPU {what} is {len(data)} bytes; KVM's struct is {ctypes.sizeof(cls)}.")
    return cls.from_buffer_copy(data)


def capture_cpu(kvm: Vcpu) -> CpuState:
    """KVM's state of a vCPU whose thread is parked (see the module docstring)."""
    dirty = kvm.run_struct.kvm_dirty_regs
    sync = kvm.sync
    regs = sync.regs if dirty & kc.KVM_SYNC_X86_REGS else kvm.get_regs()
    sregs = sync.sregs if dirty & kc.KVM_SYNC_X86_SREGS else kvm.get_sregs()
    events = sync.events if dirty & kc.KVM_SYNC_X86_EVENTS else kvm.get_vcpu_events()
    msrs = kvm.get_msrs(SAVED_MSRS)
    return CpuState(
        regs=_raw(regs), sregs=_raw(sregs), events=_raw(events), xsave=_raw(kvm.get_xsave()),
        xcrs=_raw(kvm.get_xcrs()), debugregs=_raw(kvm.get_debugregs()),
        msrs=tuple((i, msrs[i]) for i in SAVED_MSRS),
    )


def load_cpu(kvm: Vcpu, state: CpuState) -> None:
    """Give KVM the saved state (after setup_cpu, before the vCPU's first entry)."""
    check_version(state, "vCPU registers")
    regs = _load(KvmRegs, state.regs, "general registers")
    sregs = _load(KvmSregs, state.sregs, "segment registers")
    events = _load(KvmVcpuEvents, state.events, "pending events")
    xsave = _load(KvmXsave, state.xsave, "FPU/XSAVE area")
    xcrs = _load(KvmXcrs, state.xcrs, "XCRs")
    debugregs = _load(KvmDebugregs, state.debugregs, "debug registers")
    unknown = [i for i, _ in state.msrs if i not in SAVED_MSRS]
    if unknown:
        raise StateError(f"The saved vCPU registers hold MSRs Hospes does not restore: {unknown}.")
    assert isinstance(regs, KvmRegs) and isinstance(sregs, KvmSregs) and isinstance(events, KvmVcpuEvents)
    assert isinstance(xsave, KvmXsave) and isinstance(xcrs, KvmXcrs) and isinstance(debugregs, KvmDebugregs)
    kvm.set_sregs(sregs)
    kvm.set_regs(regs)
    kvm.set_xcrs(xcrs)
    kvm.set_xsave(xsave)
    kvm.set_debugregs(debugregs)
    kvm.set_vcpu_events(events)
    # SFMASK stays as setup_cpu set it: it belongs to Hospes' SYSCALL stub, not
    # the guest, and saves from before the stub's fast path masked IF.
    kvm.set_msrs({i: v for i, v in state.msrs if i != SFMASK})
    # Nothing in the sync area is newer than what KVM now holds.
    kvm.run_struct.kvm_dirty_regs = 0


__all__ = ["CpuState", "PvVcpuState", "SAVED_MSRS", "StartContext", "capture_cpu", "load_cpu"]
