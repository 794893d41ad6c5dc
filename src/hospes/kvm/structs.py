"""ctypes mirrors of the KVM structures, with the x86_64 kernel layouts.

Field names follow the kernel's.  Layouts come from include/uapi/linux/kvm.h
and arch/x86/include/uapi/asm/kvm.h; tests/test_kvm_structs.py pins the size
and key offsets of every structure here.  Variable-length kernel structures
(kvm_msrs, kvm_cpuid2, kvm_msr_list) are mirrored by their fixed header only;
the entries that follow are laid out by the caller (see system.py).
"""

from __future__ import annotations

import ctypes
from ctypes import c_uint8, c_uint16, c_uint32, c_uint64
from typing import Any


class _Struct(ctypes.Structure):
    """A Structure with a readable repr (for debugging and test failures)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_fields_repr(self)})"


class _Union(ctypes.Union):
    def __repr__(self) -> str:
        return f"{type(self).__name__}(...)"


def _fields_repr(obj: Any) -> str:
    parts = []
    for name, *_ in obj._fields_:
        if name.startswith("pad") or name == "reserved":
            continue
        value = getattr(obj, name)
        if isinstance(value, int):
            parts.append(f"{name}={value:#x}")
        elif isinstance(value, ctypes.Array):
            parts.append(f"{name}=[...]")
        else:
            parts.append(f"{name}={value!r}")
    return ", ".join(parts)


# --- arch/x86/include/uapi/asm/kvm.h -------------------------------------

class KvmRegs(_Struct):
    """struct kvm_regs (KVM_GET_REGS / KVM_SET_REGS), 144 bytes."""

    _fields_ = [
        (name, c_uint64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]


class KvmSegment(_Struct):
    """struct kvm_segment, 24 bytes."""

    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    ]


class KvmDtable(_Struct):
    """struct kvm_dtable (GDTR / IDTR), 16 bytes."""

    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint16),
        ("padding", c_uint16 * 3),
    ]


KVM_NR_INTERRUPTS = 256


class KvmSregs(_Struct):
    """struct kvm_sregs (KVM_GET_SREGS / KVM_SET_SREGS), 312 bytes."""

    _fields_ = [
        ("cs", KvmSegment),
        ("ds", KvmSegment),
        ("es", KvmSegment),
        ("fs", KvmSegment),
        ("gs", KvmSegment),
        ("ss", KvmSegment),
        ("tr", KvmSegment),
        ("ldt", KvmSegment),
        ("gdt", KvmDtable),
        ("idt", KvmDtable),
        ("cr0", c_uint64),
        ("cr2", c_uint64),
        ("cr3", c_uint64),
        ("cr4", c_uint64),
        ("cr8", c_uint64),
        ("efer", c_uint64),
        ("apic_base", c_uint64),
        ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class KvmFpu(_Struct):
    """struct kvm_fpu (KVM_GET_FPU / KVM_SET_FPU), 416 bytes."""

    _fields_ = [
        ("fpr", (c_uint8 * 16) * 8),
        ("fcw", c_uint16),
        ("fsw", c_uint16),
        ("ftwx", c_uint8),
        ("pad1", c_uint8),
        ("last_opcode", c_uint16),
        ("last_ip", c_uint64),
        ("last_dp", c_uint64),
        ("xmm", (c_uint8 * 16) * 16),
        ("mxcsr", c_uint32),
        ("pad2", c_uint32),
    ]


class KvmMsrEntry(_Struct):
    """struct kvm_msr_entry, 16 bytes."""

    _fields_ = [
        ("index", c_uint32),
        ("reserved", c_uint32),
        ("data", c_uint64),
    ]


class KvmMsrs(_Struct):
    """Header of struct kvm_msrs; ``nmsrs`` KvmMsrEntry follow at offset 8."""

    _fields_ = [
        ("nmsrs", c_uint32),
        ("pad", c_uint32),
    ]


class KvmMsrList(_Struct):
    """Header of struct kvm_msr_list; ``nmsrs`` u32 indices follow at offset 4."""

    _fields_ = [
        ("nmsrs", c_uint32),
    ]


class KvmCpuidEntry2(_Struct):
    """struct kvm_cpuid_entry2, 40 bytes."""

    _fields_ = [
        ("function", c_uint32),
        ("index", c_uint32),
        ("flags", c_uint32),
        ("eax", c_uint32),
        ("ebx", c_uint32),
        ("ecx", c_uint32),
        ("edx", c_uint32),
        ("padding", c_uint32 * 3),
    ]


CpuidEntry2 = KvmCpuidEntry2


class KvmCpuid2(_Struct):
    """Header of struct kvm_cpuid2; ``nent`` KvmCpuidEntry2 follow at offset 8."""

    _fields_ = [
        ("nent", c_uint32),
        ("padding", c_uint32),
    ]


class KvmDebugExitArch(_Struct):
    """struct kvm_debug_exit_arch (kvm_run.debug.arch), 32 bytes."""

    _fields_ = [
        ("exception", c_uint32),
        ("pad", c_uint32),
        ("pc", c_uint64),
        ("dr6", c_uint64),
        ("dr7", c_uint64),
    ]


class KvmGuestDebugArch(_Struct):
    """struct kvm_guest_debug_arch, 64 bytes."""

    _fields_ = [
        ("debugreg", c_uint64 * 8),
    ]


class _VcpuEventsException(_Struct):
    _fields_ = [
        ("injected", c_uint8),
        ("nr", c_uint8),
        ("has_error_code", c_uint8),
        ("pending", c_uint8),
        ("error_code", c_uint32),
    ]


class _VcpuEventsInterrupt(_Struct):
    _fields_ = [
        ("injected", c_uint8),
        ("nr", c_uint8),
        ("soft", c_uint8),
        ("shadow", c_uint8),
    ]


class _VcpuEventsNmi(_Struct):
    _fields_ = [
        ("injected", c_uint8),
        ("pending", c_uint8),
        ("masked", c_uint8),
        ("pad", c_uint8),
    ]


class _VcpuEventsSmi(_Struct):
    _fields_ = [
        ("smm", c_uint8),
        ("pending", c_uint8),
        ("smm_inside_nmi", c_uint8),
        ("latched_init", c_uint8),
    ]


class _VcpuEventsTripleFault(_Struct):
    _fields_ = [
        ("pending", c_uint8),
    ]


class KvmVcpuEvents(_Struct):
    """struct kvm_vcpu_events (KVM_GET/SET_VCPU_EVENTS), 64 bytes."""

    _fields_ = [
        ("exception", _VcpuEventsException),
        ("interrupt", _VcpuEventsInterrupt),
        ("nmi", _VcpuEventsNmi),
        ("sipi_vector", c_uint32),
        ("flags", c_uint32),
        ("smi", _VcpuEventsSmi),
        ("triple_fault", _VcpuEventsTripleFault),
        ("reserved", c_uint8 * 26),
        ("exception_has_payload", c_uint8),
        ("exception_payload", c_uint64),
    ]


class KvmDebugregs(_Struct):
    """struct kvm_debugregs (KVM_GET/SET_DEBUGREGS), 128 bytes."""

    _fields_ = [
        ("db", c_uint64 * 4),
        ("dr6", c_uint64),
        ("dr7", c_uint64),
        ("flags", c_uint64),
        ("reserved", c_uint64 * 9),
    ]


class KvmXsave(_Struct):
    """struct kvm_xsave (KVM_GET/SET_XSAVE), 4096 bytes (no extra area)."""

    _fields_ = [
        ("region", c_uint32 * 1024),
    ]


KVM_MAX_XCRS = 16


class KvmXcr(_Struct):
    """struct kvm_xcr, 16 bytes."""

    _fields_ = [
        ("xcr", c_uint32),
        ("reserved", c_uint32),
        ("value", c_uint64),
    ]


class KvmXcrs(_Struct):
    """struct kvm_xcrs (KVM_GET/SET_XCRS), 392 bytes."""

    _fields_ = [
        ("nr_xcrs", c_uint32),
        ("flags", c_uint32),
        ("xcrs", KvmXcr * KVM_MAX_XCRS),
        ("padding", c_uint64 * 16),
    ]


class KvmSyncRegs(_Struct):
    """struct kvm_sync_regs (kvm_run.s.regs), 520 bytes."""

    _fields_ = [
        ("regs", KvmRegs),
        ("sregs", KvmSregs),
        ("events", KvmVcpuEvents),
    ]


# --- include/uapi/linux/kvm.h ----------------------------------------------

class KvmUserspaceMemoryRegion(_Struct):
    """struct kvm_userspace_memory_region, 32 bytes."""

    _fields_ = [
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
    ]


class KvmDirtyLog(_Struct):
    """struct kvm_dirty_log, 16 bytes; ``dirty_bitmap`` is a user pointer."""

    _fields_ = [
        ("slot", c_uint32),
        ("padding1", c_uint32),
        ("dirty_bitmap", c_uint64),
    ]


class KvmGuestDebug(_Struct):
    """struct kvm_guest_debug (KVM_SET_GUEST_DEBUG), 72 bytes."""

    _fields_ = [
        ("control", c_uint32),
        ("pad", c_uint32),
        ("arch", KvmGuestDebugArch),
    ]


class KvmEnableCap(_Struct):
    """struct kvm_enable_cap (KVM_ENABLE_CAP), 104 bytes."""

    _fields_ = [
        ("cap", c_uint32),
        ("flags", c_uint32),
        ("args", c_uint64 * 4),
        ("pad", c_uint8 * 64),
    ]


class KvmDeviceAttr(_Struct):
    """struct kvm_device_attr (KVM_{GET,SET,HAS}_DEVICE_ATTR), 24 bytes."""

    _fields_ = [
        ("flags", c_uint32),
        ("group", c_uint32),
        ("attr", c_uint64),
        ("addr", c_uint64),
    ]


class KvmTranslation(_Struct):
    """struct kvm_translation (KVM_TRANSLATE), 24 bytes."""

    _fields_ = [
        ("linear_address", c_uint64),
        ("physical_address", c_uint64),
        ("valid", c_uint8),
        ("writeable", c_uint8),
        ("usermode", c_uint8),
        ("pad", c_uint8 * 5),
    ]


class KvmMpState(_Struct):
    """struct kvm_mp_state (KVM_GET/SET_MP_STATE), 4 bytes."""

    _fields_ = [
        ("mp_state", c_uint32),
    ]


# --- struct kvm_run and its exit union --------------------------------------

class KvmRunHw(_Struct):
    _fields_ = [("hardware_exit_reason", c_uint64)]


class KvmRunFailEntry(_Struct):
    _fields_ = [
        ("hardware_entry_failure_reason", c_uint64),
        ("cpu", c_uint32),
    ]


class KvmRunEx(_Struct):
    _fields_ = [
        ("exception", c_uint32),
        ("error_code", c_uint32),
    ]


class KvmRunIo(_Struct):
    """kvm_run.io: the data lives in the kvm_run page at ``data_offset``."""

    _fields_ = [
        ("direction", c_uint8),
        ("size", c_uint8),
        ("port", c_uint16),
        ("count", c_uint32),
        ("data_offset", c_uint64),
    ]


class KvmRunDebug(_Struct):
    _fields_ = [("arch", KvmDebugExitArch)]


class KvmRunMmio(_Struct):
    _fields_ = [
        ("phys_addr", c_uint64),
        ("data", c_uint8 * 8),
        ("len", c_uint32),
        ("is_write", c_uint8),
    ]


class _HypercallFlags(_Union):
    _fields_ = [
        ("longmode", c_uint32),
        ("flags", c_uint64),
    ]


class KvmRunHypercall(_Struct):
    _anonymous_ = ("u",)
    _fields_ = [
        ("nr", c_uint64),
        ("args", c_uint64 * 6),
        ("ret", c_uint64),
        ("u", _HypercallFlags),
    ]


class KvmRunTprAccess(_Struct):
    _fields_ = [
        ("rip", c_uint64),
        ("is_write", c_uint32),
        ("pad", c_uint32),
    ]


class KvmRunInternal(_Struct):
    _fields_ = [
        ("suberror", c_uint32),
        ("ndata", c_uint32),
        ("data", c_uint64 * 16),
    ]


class KvmRunEmulationFailure(_Struct):
    """Overlay of ``internal`` for KVM_INTERNAL_ERROR_EMULATION."""

    _fields_ = [
        ("suberror", c_uint32),
        ("ndata", c_uint32),
        ("flags", c_uint64),
        ("insn_size", c_uint8),
        ("insn_bytes", c_uint8 * 15),
    ]


class _SystemEventData(_Union):
    _fields_ = [
        ("flags", c_uint64),
        ("data", c_uint64 * 16),
    ]


class KvmRunSystemEvent(_Struct):
    _anonymous_ = ("u",)
    _fields_ = [
        ("type", c_uint32),
        ("ndata", c_uint32),
        ("u", _SystemEventData),
    ]


class KvmRunMsr(_Struct):
    """kvm_run.msr (KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR)."""

    _fields_ = [
        ("error", c_uint8),
        ("pad", c_uint8 * 7),
        ("reason", c_uint32),
        ("index", c_uint32),
        ("data", c_uint64),
    ]


class KvmRunNotify(_Struct):
    _fields_ = [("flags", c_uint32)]


class KvmRunMemoryFault(_Struct):
    """kvm_run.memory_fault (KVM_EXIT_MEMORY_FAULT, Linux 6.8+)."""

    _fields_ = [
        ("flags", c_uint64),
        ("gpa", c_uint64),
        ("size", c_uint64),
    ]


class KvmRunExit(_Union):
    """The anonymous exit-information union of struct kvm_run (256 bytes)."""

    _fields_ = [
        ("hw", KvmRunHw),
        ("fail_entry", KvmRunFailEntry),
        ("ex", KvmRunEx),
        ("io", KvmRunIo),
        ("debug", KvmRunDebug),
        ("mmio", KvmRunMmio),
        ("hypercall", KvmRunHypercall),
        ("tpr_access", KvmRunTprAccess),
        ("internal", KvmRunInternal),
        ("emulation_failure", KvmRunEmulationFailure),
        ("system_event", KvmRunSystemEvent),
        ("msr", KvmRunMsr),
        ("notify", KvmRunNotify),
        ("memory_fault", KvmRunMemoryFault),
        ("padding", c_uint8 * 256),
    ]


SYNC_REGS_SIZE_BYTES = 2048


class KvmRunS(_Union):
    """kvm_run.s: the architecture's sync regs, padded to 2048 bytes."""

    _fields_ = [
        ("regs", KvmSyncRegs),
        ("padding", c_uint8 * SYNC_REGS_SIZE_BYTES),
    ]


class KvmRun(_Struct):
    """struct kvm_run, the shared page mmap'd from a vCPU fd (2352 bytes).

    The exit union is anonymous in C; here it is the field ``exit`` and its
    members are also reachable directly (``run.io``, ``run.mmio``, ...).
    """

    _anonymous_ = ("exit",)
    _fields_ = [
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
        ("exit", KvmRunExit),
        ("kvm_valid_regs", c_uint64),
        ("kvm_dirty_regs", c_uint64),
        ("s", KvmRunS),
    ]


__all__ = [
    "KvmDeviceAttr",
    "CpuidEntry2",
    "KVM_MAX_XCRS",
    "KVM_NR_INTERRUPTS",
    "KvmCpuid2",
    "KvmCpuidEntry2",
    "KvmDebugExitArch",
    "KvmDebugregs",
    "KvmDirtyLog",
    "KvmDtable",
    "KvmEnableCap",
    "KvmFpu",
    "KvmGuestDebug",
    "KvmGuestDebugArch",
    "KvmMpState",
    "KvmMsrEntry",
    "KvmMsrList",
    "KvmMsrs",
    "KvmRegs",
    "KvmRun",
    "KvmRunDebug",
    "KvmRunEmulationFailure",
    "KvmRunEx",
    "KvmRunExit",
    "KvmRunFailEntry",
    "KvmRunHw",
    "KvmRunHypercall",
    "KvmRunInternal",
    "KvmRunIo",
    "KvmRunMemoryFault",
    "KvmRunMmio",
    "KvmRunMsr",
    "KvmRunNotify",
    "KvmRunS",
    "KvmRunSystemEvent",
    "KvmRunTprAccess",
    "KvmSegment",
    "KvmSregs",
    "KvmSyncRegs",
    "KvmTranslation",
    "KvmUserspaceMemoryRegion",
    "KvmVcpuEvents",
    "KvmXcr",
    "KvmXcrs",
    "KvmXsave",
    "SYNC_REGS_SIZE_BYTES",
]
