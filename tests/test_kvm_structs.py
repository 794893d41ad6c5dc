"""The ctypes mirrors in hospes.kvm.structs have the x86_64 kernel layouts.

Every number here was checked against the kernel headers by compiling a C
program with gcc that printed sizeof/offsetof for each structure and the value
of each ioctl macro (Debian 12's linux-libc-dev 6.1 headers:
/usr/include/linux/kvm.h and /usr/include/x86_64-linux-gnu/asm/kvm.h).
"""

from __future__ import annotations

import ctypes
import inspect

import pytest

from hospes.kvm import constants as c
from hospes.kvm import structs as s

# structure -> (sizeof, {field path: offsetof}).  Paths may go through nested
# structures ("s.regs.sregs") and through the anonymous exit union ("io.port").
LAYOUTS: dict[type, tuple[int, dict[str, int]]] = {
    s.KvmRegs: (144, {"rax": 0, "rbx": 8, "rcx": 16, "rdx": 24, "rsi": 32, "rdi": 40,
                      "rsp": 48, "rbp": 56, "r8": 64, "r15": 120, "rip": 128, "rflags": 136}),
    s.KvmSegment: (24, {"base": 0, "limit": 8, "selector": 12, "type": 14, "present": 15,
                        "dpl": 16, "db": 17, "s": 18, "l": 19, "g": 20, "avl": 21,
                        "unusable": 22, "padding": 23}),
    s.KvmDtable: (16, {"base": 0, "limit": 8, "padding": 10}),
    s.KvmSregs: (312, {"cs": 0, "ds": 24, "es": 48, "fs": 72, "gs": 96, "ss": 120,
                       "tr": 144, "ldt": 168, "gdt": 192, "idt": 208, "cr0": 224,
                       "cr2": 232, "cr3": 240, "cr4": 248, "cr8": 256, "efer": 264,
                       "apic_base": 272, "interrupt_bitmap": 280, "idt.limit": 216}),
    s.KvmFpu: (416, {"fpr": 0, "fcw": 128, "fsw": 130, "ftwx": 132, "last_opcode": 134,
                     "last_ip": 136, "last_dp": 144, "xmm": 152, "mxcsr": 408, "pad2": 412}),
    s.KvmMsrEntry: (16, {"index": 0, "reserved": 4, "data": 8}),
    s.KvmMsrs: (8, {"nmsrs": 0, "pad": 4}),
    s.KvmMsrList: (4, {"nmsrs": 0}),
    s.KvmCpuidEntry2: (40, {"function": 0, "index": 4, "flags": 8, "eax": 12, "ebx": 16,
                            "ecx": 20, "edx": 24, "padding": 28}),
    s.KvmCpuid2: (8, {"nent": 0, "padding": 4}),
    s.KvmDebugExitArch: (32, {"exception": 0, "pad": 4, "pc": 8, "dr6": 16, "dr7": 24}),
    s.KvmGuestDebugArch: (64, {"debugreg": 0}),
    s._VcpuEventsException: (8, {"injected": 0, "nr": 1, "has_error_code": 2, "pending": 3,
                                 "error_code": 4}),
    s._VcpuEventsInterrupt: (4, {"injected": 0, "nr": 1, "soft": 2, "shadow": 3}),
    s._VcpuEventsNmi: (4, {"injected": 0, "pending": 1, "masked": 2, "pad": 3}),
    s._VcpuEventsSmi: (4, {"smm": 0, "pending": 1, "smm_inside_nmi": 2, "latched_init": 3}),
    s._VcpuEventsTripleFault: (1, {"pending": 0}),
    s.KvmVcpuEvents: (64, {"exception": 0, "exception.error_code": 4, "interrupt": 8,
                           "nmi": 12, "sipi_vector": 16, "flags": 20, "smi": 24,
                           "triple_fault": 28, "reserved": 29, "exception_has_payload": 55,
                           "exception_payload": 56}),
    s.KvmDebugregs: (128, {"db": 0, "dr6": 32, "dr7": 40, "flags": 48, "reserved": 56}),
    s.KvmXsave: (4096, {"region": 0}),
    s.KvmXcr: (16, {"xcr": 0, "reserved": 4, "value": 8}),
    s.KvmXcrs: (392, {"nr_xcrs": 0, "flags": 4, "xcrs": 8, "padding": 264}),
    s.KvmSyncRegs: (520, {"regs": 0, "sregs": 144, "events": 456}),
    s.KvmUserspaceMemoryRegion: (32, {"slot": 0, "flags": 4, "guest_phys_addr": 8,
                                      "memory_size": 16, "userspace_addr": 24}),
    s.KvmDirtyLog: (16, {"slot": 0, "padding1": 4, "dirty_bitmap": 8}),
    s.KvmGuestDebug: (72, {"control": 0, "pad": 4, "arch": 8}),
    s.KvmEnableCap: (104, {"cap": 0, "flags": 4, "args": 8, "pad": 40}),
    s.KvmDeviceAttr: (24, {"flags": 0, "group": 4, "attr": 8, "addr": 16}),
    s.KvmTranslation: (24, {"linear_address": 0, "physical_address": 8, "valid": 16,
                            "writeable": 17, "usermode": 18}),
    s.KvmMpState: (4, {"mp_state": 0}),
    # The members of kvm_run's exit union, at their offsets inside the union.
    s.KvmRunHw: (8, {"hardware_exit_reason": 0}),
    s.KvmRunFailEntry: (16, {"hardware_entry_failure_reason": 0, "cpu": 8}),
    s.KvmRunEx: (8, {"exception": 0, "error_code": 4}),
    s.KvmRunIo: (16, {"direction": 0, "size": 1, "port": 2, "count": 4, "data_offset": 8}),
    s.KvmRunDebug: (32, {"arch": 0}),
    s.KvmRunMmio: (24, {"phys_addr": 0, "data": 8, "len": 16, "is_write": 20}),
    s._HypercallFlags: (8, {"longmode": 0, "flags": 0}),
    s.KvmRunHypercall: (72, {"nr": 0, "args": 8, "ret": 56, "longmode": 64, "flags": 64}),
    s.KvmRunTprAccess: (16, {"rip": 0, "is_write": 8, "pad": 12}),
    s.KvmRunInternal: (136, {"suberror": 0, "ndata": 4, "data": 8}),
    s.KvmRunEmulationFailure: (32, {"suberror": 0, "ndata": 4, "flags": 8, "insn_size": 16,
                                    "insn_bytes": 17}),
    s._SystemEventData: (128, {"flags": 0, "data": 0}),
    s.KvmRunSystemEvent: (136, {"type": 0, "ndata": 4, "flags": 8, "data": 8}),
    s.KvmRunMsr: (24, {"error": 0, "pad": 1, "reason": 8, "index": 12, "data": 16}),
    s.KvmRunNotify: (4, {"flags": 0}),
    s.KvmRunMemoryFault: (24, {"flags": 0, "gpa": 8, "size": 16}),
    s.KvmRunExit: (256, {"hw": 0, "io": 0, "mmio": 0, "padding": 0}),
    s.KvmRunS: (2048, {"regs": 0, "padding": 0}),
    s.KvmRun: (2352, {
        "request_interrupt_window": 0, "immediate_exit": 1, "padding1": 2,
        "exit_reason": 8, "ready_for_interrupt_injection": 12, "if_flag": 13,
        "flags": 14, "cr8": 16, "apic_base": 24,
        "exit": 32, "hw.hardware_exit_reason": 32,
        "fail_entry.hardware_entry_failure_reason": 32, "fail_entry.cpu": 40,
        "ex.exception": 32, "ex.error_code": 36,
        "io.direction": 32, "io.size": 33, "io.port": 34, "io.count": 36, "io.data_offset": 40,
        "mmio.phys_addr": 32, "mmio.data": 40, "mmio.len": 48, "mmio.is_write": 52,
        "debug.arch.exception": 32, "debug.arch.pc": 40, "debug.arch.dr6": 48,
        "debug.arch.dr7": 56,
        "hypercall.nr": 32, "hypercall.args": 40, "hypercall.ret": 88,
        "hypercall.longmode": 96,
        "internal.suberror": 32, "internal.ndata": 36, "internal.data": 40,
        "emulation_failure.flags": 40, "emulation_failure.insn_size": 48,
        "emulation_failure.insn_bytes": 49,
        "system_event.type": 32, "system_event.ndata": 36, "system_event.data": 40,
        "msr.error": 32, "msr.reason": 40, "msr.index": 44, "msr.data": 48,
        "padding": 32,
        "kvm_valid_regs": 288, "kvm_dirty_regs": 296,
        "s": 304, "s.regs.regs.rip": 304 + 128, "s.regs.sregs": 448, "s.regs.events": 760,
    }),
}


def _offset(cls: type, path: str) -> int:
    """offsetof(cls, path) computed on a zeroed instance of ``cls``."""
    root = cls()
    parent = root
    *parents, last = path.split(".")
    for name in parents:
        parent = getattr(parent, name)
    field = getattr(type(parent), last)
    return ctypes.addressof(parent) - ctypes.addressof(root) + field.offset


def _all_structures() -> list[type]:
    return [
        obj
        for _, obj in inspect.getmembers(s, inspect.isclass)
        if issubclass(obj, (ctypes.Structure, ctypes.Union))
        and obj.__module__ == s.__name__
        and obj not in (s._Struct, s._Union)
    ]


def test_every_structure_has_a_layout_test() -> None:
    missing = [cls.__name__ for cls in _all_structures() if cls not in LAYOUTS]
    assert not missing, f"add sizes and offsets for {missing}"


@pytest.mark.parametrize("cls", list(LAYOUTS), ids=lambda cls: cls.__name__)
def test_size(cls: type) -> None:
    assert ctypes.sizeof(cls) == LAYOUTS[cls][0]


@pytest.mark.parametrize("cls", list(LAYOUTS), ids=lambda cls: cls.__name__)
def test_offsets(cls: type) -> None:
    offsets = LAYOUTS[cls][1]
    got = {path: _offset(cls, path) for path in offsets}
    assert got == offsets


def test_kvm_run_parts() -> None:
    assert s.KvmRun.exit.size == 256
    assert s.KvmRun.s.size == 2048
    assert s.KvmRun.s.offset + s.KvmRun.s.size == ctypes.sizeof(s.KvmRun)
    # The fixed part before the exit union.
    assert s.KvmRun.exit.offset == 32


def test_fixed_width_field_types() -> None:
    assert s.KvmRegs.rax.size == 8
    assert s.KvmSegment.selector.size == 2
    assert s.KvmSegment.type.size == 1
    assert s.KvmRunIo.port.size == 2
    assert s.KvmRunIo.data_offset.size == 8
    assert s.KvmSregs.interrupt_bitmap.size == 32


def test_views_share_memory() -> None:
    """Writing through a nested view lands at the kernel's byte offset."""
    run = s.KvmRun()
    run.s.regs.regs.rax = 0x1122334455667788
    raw = bytes(run)
    assert raw[304:312] == (0x1122334455667788).to_bytes(8, "little")
    run.io.port = 0x3F8
    assert bytes(run)[34:36] == b"\xf8\x03"


# ioctl numbers as the C macros expand them (printed by the same C program).
IOCTLS = {
    "KVM_GET_API_VERSION": 0xAE00,
    "KVM_CREATE_VM": 0xAE01,
    "KVM_GET_MSR_INDEX_LIST": 0xC004AE02,
    "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0xAE04,
    "KVM_GET_SUPPORTED_CPUID": 0xC008AE05,
    "KVM_GET_EMULATED_CPUID": 0xC008AE09,
    "KVM_GET_MSR_FEATURE_INDEX_LIST": 0xC004AE0A,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
    "KVM_CREATE_VCPU": 0xAE41,
    "KVM_GET_DIRTY_LOG": 0x4010AE42,
    "KVM_SET_TSS_ADDR": 0xAE47,
    "KVM_SET_IDENTITY_MAP_ADDR": 0x4008AE48,
    "KVM_CREATE_IRQCHIP": 0xAE60,
    "KVM_ENABLE_CAP": 0x4068AEA3,
    "KVM_GET_STATS_FD": 0xAECE,
    "KVM_RUN": 0xAE80,
    "KVM_GET_REGS": 0x8090AE81,
    "KVM_SET_REGS": 0x4090AE82,
    "KVM_GET_SREGS": 0x8138AE83,
    "KVM_SET_SREGS": 0x4138AE84,
    "KVM_TRANSLATE": 0xC018AE85,
    "KVM_GET_MSRS": 0xC008AE88,
    "KVM_SET_MSRS": 0x4008AE89,
    "KVM_GET_FPU": 0x81A0AE8C,
    "KVM_SET_FPU": 0x41A0AE8D,
    "KVM_SET_CPUID2": 0x4008AE90,
    "KVM_GET_CPUID2": 0xC008AE91,
    "KVM_GET_MP_STATE": 0x8004AE98,
    "KVM_SET_MP_STATE": 0x4004AE99,
    "KVM_SET_GUEST_DEBUG": 0x4048AE9B,
    "KVM_GET_VCPU_EVENTS": 0x8040AE9F,
    "KVM_SET_VCPU_EVENTS": 0x4040AEA0,
    "KVM_GET_DEBUGREGS": 0x8080AEA1,
    "KVM_SET_DEBUGREGS": 0x4080AEA2,
    "KVM_SET_TSC_KHZ": 0xAEA2,
    "KVM_GET_TSC_KHZ": 0xAEA3,
    "KVM_GET_XSAVE": 0x9000AEA4,
    "KVM_SET_XSAVE": 0x5000AEA5,
    "KVM_GET_XCRS": 0x8188AEA6,
    "KVM_SET_XCRS": 0x4188AEA7,
    "KVM_KVMCLOCK_CTRL": 0xAEAD,
}


@pytest.mark.parametrize("name", list(IOCTLS))
def test_ioctl_number(name: str) -> None:
    assert getattr(c, name) == IOCTLS[name], f"{name} = {getattr(c, name):#x}"


def test_selected_constants() -> None:
    assert (c.KVM_EXIT_IO, c.KVM_EXIT_HLT, c.KVM_EXIT_MMIO) == (2, 5, 6)
    assert (c.KVM_EXIT_INTR, c.KVM_EXIT_INTERNAL_ERROR, c.KVM_EXIT_SYSTEM_EVENT) == (10, 17, 24)
    assert (c.KVM_EXIT_X86_RDMSR, c.KVM_EXIT_X86_WRMSR, c.KVM_EXIT_NOTIFY) == (29, 30, 37)
    assert (c.KVM_CAP_SYNC_REGS, c.KVM_CAP_IMMEDIATE_EXIT, c.KVM_CAP_XSAVE2) == (74, 136, 208)
    assert (c.KVM_SYNC_X86_REGS, c.KVM_SYNC_X86_SREGS, c.KVM_SYNC_X86_EVENTS) == (1, 2, 4)
    assert (c.KVM_MEM_LOG_DIRTY_PAGES, c.KVM_MEM_READONLY) == (1, 2)
    assert (c.KVM_GUESTDBG_ENABLE, c.KVM_GUESTDBG_SINGLESTEP) == (1, 2)
    assert c.KVM_GUESTDBG_USE_SW_BP == 0x10000 and c.KVM_GUESTDBG_BLOCKIRQ == 0x100000
    assert c.KVM_INTERNAL_ERROR_EMULATION == 1
    assert c.exit_reason_name(2) == "KVM_EXIT_IO"
    assert c.exit_reason_name(999) == "exit reason 999"
