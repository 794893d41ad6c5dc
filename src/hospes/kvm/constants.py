"""Numbers of the KVM userspace API (x86_64).

Values are carried over from include/uapi/linux/kvm.h and
arch/x86/include/uapi/asm/kvm.h (each group below names its header).  ioctl
numbers are computed from the structure sizes in :mod:`hospes.kvm.structs`,
the way the kernel's _IO/_IOR/_IOW/_IOWR macros compute them, so a layout
mistake there would also show up here; tests/test_kvm_structs.py pins both.
"""

from __future__ import annotations

import ctypes
from typing import Any

from hospes.kvm import structs as s

# --- include/uapi/asm-generic/ioctl.h: the ioctl number encoding -------------

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = 30
_IOC_SIZEMASK = (1 << 14) - 1
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _size(arg: Any) -> int:
    size = arg if isinstance(arg, int) else ctypes.sizeof(arg)
    if not 0 <= size <= _IOC_SIZEMASK:
        raise ValueError(f"ioctl argument size {size} does not fit in 14 bits")
    return size


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    return (
        (direction << _IOC_DIRSHIFT)
        | (size << _IOC_SIZESHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
    )


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, arg: Any) -> int:
    return _IOC(_IOC_READ, type_, nr, _size(arg))


def _IOW(type_: int, nr: int, arg: Any) -> int:
    return _IOC(_IOC_WRITE, type_, nr, _size(arg))


def _IOWR(type_: int, nr: int, arg: Any) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, _size(arg))


# --- include/uapi/linux/kvm.h: API version and ioctls ------------------------

KVM_API_VERSION = 12
KVMIO = 0xAE
_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64

# ioctls on /dev/kvm
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, s.KvmMsrList)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)  # also on VM fds
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, s.KvmCpuid2)
KVM_GET_EMULATED_CPUID = _IOWR(KVMIO, 0x09, s.KvmCpuid2)
KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(KVMIO, 0x0A, s.KvmMsrList)

# ioctls on VM fds
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, s.KvmDirtyLog)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, s.KvmUserspaceMemoryRegion)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, _u64)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_ENABLE_CAP = _IOW(KVMIO, 0xA3, s.KvmEnableCap)  # also on vCPU fds
KVM_GET_STATS_FD = _IO(KVMIO, 0xCE)

# ioctls on vCPU fds
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, s.KvmRegs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, s.KvmRegs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, s.KvmSregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, s.KvmSregs)
KVM_TRANSLATE = _IOWR(KVMIO, 0x85, s.KvmTranslation)
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, s.KvmMsrs)
KVM_SET_MSRS = _IOW(KVMIO, 0x89, s.KvmMsrs)
KVM_GET_FPU = _IOR(KVMIO, 0x8C, s.KvmFpu)
KVM_SET_FPU = _IOW(KVMIO, 0x8D, s.KvmFpu)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, s.KvmCpuid2)
KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, s.KvmCpuid2)
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, s.KvmMpState)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, s.KvmMpState)
KVM_SET_GUEST_DEBUG = _IOW(KVMIO, 0x9B, s.KvmGuestDebug)
KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9F, s.KvmVcpuEvents)
KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xA0, s.KvmVcpuEvents)
KVM_GET_DEBUGREGS = _IOR(KVMIO, 0xA1, s.KvmDebugregs)
KVM_SET_DEBUGREGS = _IOW(KVMIO, 0xA2, s.KvmDebugregs)
KVM_SET_TSC_KHZ = _IO(KVMIO, 0xA2)
KVM_SET_DEVICE_ATTR = _IOW(KVMIO, 0xE1, s.KvmDeviceAttr)
KVM_GET_DEVICE_ATTR = _IOW(KVMIO, 0xE2, s.KvmDeviceAttr)
KVM_VCPU_TSC_CTRL = 0      # vCPU attribute group (Linux 5.16+)
KVM_VCPU_TSC_OFFSET = 0
KVM_GET_TSC_KHZ = _IO(KVMIO, 0xA3)
KVM_GET_XSAVE = _IOR(KVMIO, 0xA4, s.KvmXsave)
KVM_SET_XSAVE = _IOW(KVMIO, 0xA5, s.KvmXsave)
KVM_GET_XCRS = _IOR(KVMIO, 0xA6, s.KvmXcrs)
KVM_SET_XCRS = _IOW(KVMIO, 0xA7, s.KvmXcrs)
KVM_KVMCLOCK_CTRL = _IO(KVMIO, 0xAD)

# --- include/uapi/linux/kvm.h: exit reasons (kvm_run.exit_reason) ------------

KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11
KVM_EXIT_TPR_ACCESS = 12
KVM_EXIT_S390_SIEIC = 13
KVM_EXIT_S390_RESET = 14
KVM_EXIT_DCR = 15
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_OSI = 18
KVM_EXIT_PAPR_HCALL = 19
KVM_EXIT_S390_UCONTROL = 20
KVM_EXIT_WATCHDOG = 21
KVM_EXIT_S390_TSCH = 22
KVM_EXIT_EPR = 23
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_S390_STSI = 25
KVM_EXIT_IOAPIC_EOI = 26
KVM_EXIT_HYPERV = 27
KVM_EXIT_ARM_NISV = 28
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30
KVM_EXIT_DIRTY_RING_FULL = 31
KVM_EXIT_AP_RESET_HOLD = 32
KVM_EXIT_X86_BUS_LOCK = 33
KVM_EXIT_XEN = 34
KVM_EXIT_RISCV_SBI = 35
KVM_EXIT_RISCV_CSR = 36
KVM_EXIT_NOTIFY = 37
KVM_EXIT_LOONGARCH_IOCSR = 38  # Linux 6.8+
KVM_EXIT_MEMORY_FAULT = 39  # Linux 6.8+

# kvm_run.io.direction
KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

# kvm_run.system_event.type
KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3
KVM_SYSTEM_EVENT_WAKEUP = 4
KVM_SYSTEM_EVENT_SUSPEND = 5
KVM_SYSTEM_EVENT_SEV_TERM = 6

# kvm_run.msr.reason
KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2

# --- include/uapi/linux/kvm.h: kvm_run.internal.suberror ---------------------

KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4
# kvm_run.emulation_failure.flags
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1 << 0

# --- include/uapi/linux/kvm.h: capabilities (KVM_CHECK_EXTENSION) ------------
# Generic and x86 ones only; other architectures' capabilities are left out.

KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_VAPIC = 6
KVM_CAP_EXT_CPUID = 7
KVM_CAP_CLOCKSOURCE = 8
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_PIT = 11
KVM_CAP_NOP_IO_DELAY = 12
KVM_CAP_PV_MMU = 13
KVM_CAP_MP_STATE = 14
KVM_CAP_COALESCED_MMIO = 15
KVM_CAP_SYNC_MMU = 16
KVM_CAP_USER_NMI = 22
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_REINJECT_CONTROL = 24
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQ_INJECT_STATUS = 26
KVM_CAP_MCE = 31
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_SET_BOOT_CPU_ID = 34
KVM_CAP_PIT_STATE2 = 35
KVM_CAP_IOEVENTFD = 36
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_XEN_HVM = 38
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_INTERNAL_ERROR_DATA = 40
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_HYPERV = 44
KVM_CAP_INTR_SHADOW = 49
KVM_CAP_DEBUGREGS = 50
KVM_CAP_X86_ROBUST_SINGLESTEP = 51
KVM_CAP_ENABLE_CAP = 54
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_ASYNC_PF = 59
KVM_CAP_TSC_CONTROL = 60
KVM_CAP_GET_TSC_KHZ = 61
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_ONE_REG = 70
KVM_CAP_TSC_DEADLINE_TIMER = 72
KVM_CAP_SYNC_REGS = 74
KVM_CAP_KVMCLOCK_CTRL = 76
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IRQFD_RESAMPLE = 82
KVM_CAP_DEVICE_CTRL = 89
KVM_CAP_EXT_EMUL_CPUID = 95
KVM_CAP_HYPERV_TIME = 96
KVM_CAP_IOAPIC_POLARITY_IGNORED = 97
KVM_CAP_ENABLE_CAP_VM = 98
KVM_CAP_IOEVENTFD_NO_LENGTH = 100
KVM_CAP_VM_ATTRIBUTES = 101
KVM_CAP_CHECK_EXTENSION_VM = 105
KVM_CAP_DISABLE_QUIRKS = 116
KVM_CAP_X86_SMM = 117
KVM_CAP_MULTI_ADDRESS_SPACE = 118
KVM_CAP_GUEST_DEBUG_HW_BPS = 119
KVM_CAP_GUEST_DEBUG_HW_WPS = 120
KVM_CAP_SPLIT_IRQCHIP = 121
KVM_CAP_IOEVENTFD_ANY_LENGTH = 122
KVM_CAP_VCPU_ATTRIBUTES = 127
KVM_CAP_MAX_VCPU_ID = 128
KVM_CAP_X2APIC_API = 129
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_X86_DISABLE_EXITS = 143
KVM_CAP_GET_MSR_FEATURES = 153
KVM_CAP_NESTED_STATE = 157
KVM_CAP_MSR_PLATFORM_INFO = 159
KVM_CAP_COALESCED_PIO = 162
KVM_CAP_EXCEPTION_PAYLOAD = 164
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
KVM_CAP_PMU_EVENT_FILTER = 173
KVM_CAP_HALT_POLL = 182
KVM_CAP_ASYNC_PF_INT = 183
KVM_CAP_LAST_CPU = 184
KVM_CAP_SMALLER_MAXPHYADDR = 185
KVM_CAP_STEAL_TIME = 187
KVM_CAP_X86_USER_SPACE_MSR = 188
KVM_CAP_X86_MSR_FILTER = 189
KVM_CAP_ENFORCE_PV_FEATURE_CPUID = 190
KVM_CAP_DIRTY_LOG_RING = 192
KVM_CAP_X86_BUS_LOCK_EXIT = 193
KVM_CAP_SET_GUEST_DEBUG2 = 195
KVM_CAP_SREGS2 = 200
KVM_CAP_EXIT_HYPERCALL = 201
KVM_CAP_BINARY_STATS_FD = 203
KVM_CAP_EXIT_ON_EMULATION_FAILURE = 204
KVM_CAP_VM_GPA_BITS = 207
KVM_CAP_XSAVE2 = 208
KVM_CAP_SYS_ATTRIBUTES = 209
KVM_CAP_PMU_CAPABILITY = 212
KVM_CAP_DISABLE_QUIRKS2 = 213
KVM_CAP_VM_TSC_CONTROL = 214
KVM_CAP_SYSTEM_EVENT_DATA = 215
KVM_CAP_X86_TRIPLE_FAULT_EVENT = 218
KVM_CAP_X86_NOTIFY_VMEXIT = 219
KVM_CAP_VM_DISABLE_NX_HUGE_PAGES = 220
KVM_CAP_DIRTY_LOG_RING_ACQ_REL = 223
# Linux 6.8+ (not in Debian 12's 6.1 headers)
KVM_CAP_USER_MEMORY2 = 231
KVM_CAP_MEMORY_FAULT_INFO = 232
KVM_CAP_MEMORY_ATTRIBUTES = 233
KVM_CAP_GUEST_MEMFD = 234
KVM_CAP_VM_TYPES = 235

# --- include/uapi/linux/kvm.h: memory slot flags -----------------------------

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2  # Linux 6.8+, needs KVM_SET_USER_MEMORY_REGION2

# --- include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h:
# --- KVM_SET_GUEST_DEBUG control bits ----------------------------------------

KVM_GUESTDBG_ENABLE = 0x00000001  # linux/kvm.h
KVM_GUESTDBG_SINGLESTEP = 0x00000002  # linux/kvm.h
KVM_GUESTDBG_USE_SW_BP = 0x00010000  # asm/kvm.h from here on
KVM_GUESTDBG_USE_HW_BP = 0x00020000
KVM_GUESTDBG_INJECT_DB = 0x00040000
KVM_GUESTDBG_INJECT_BP = 0x00080000
KVM_GUESTDBG_BLOCKIRQ = 0x00100000

# --- arch/x86/include/uapi/asm/kvm.h: sync regs (kvm_run.kvm_valid_regs and
# --- kvm_run.kvm_dirty_regs) -------------------------------------------------

KVM_SYNC_X86_REGS = 1 << 0
KVM_SYNC_X86_SREGS = 1 << 1
KVM_SYNC_X86_EVENTS = 1 << 2
KVM_SYNC_X86_VALID_FIELDS = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS

# --- arch/x86/include/uapi/asm/kvm.h: everything else ------------------------

KVM_PIO_PAGE_OFFSET = 1
KVM_COALESCED_MMIO_PAGE_OFFSET = 2
KVM_DIRTY_LOG_PAGE_OFFSET = 64

# kvm_run.flags
KVM_RUN_X86_SMM = 1 << 0
KVM_RUN_X86_BUS_LOCK = 1 << 1

# kvm_cpuid_entry2.flags
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0  # (sic) the kernel's spelling
KVM_CPUID_FLAG_STATEFUL_FUNC = 1 << 1
KVM_CPUID_FLAG_STATE_READ_NEXT = 1 << 2

# kvm_vcpu_events.flags
KVM_VCPUEVENT_VALID_NMI_PENDING = 0x00000001
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x00000002
KVM_VCPUEVENT_VALID_SHADOW = 0x00000004
KVM_VCPUEVENT_VALID_SMM = 0x00000008
KVM_VCPUEVENT_VALID_PAYLOAD = 0x00000010
KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x00000020

# kvm_vcpu_events.interrupt.shadow
KVM_X86_SHADOW_INT_MOV_SS = 0x01
KVM_X86_SHADOW_INT_STI = 0x02

# Exception vectors
DE_VECTOR = 0
DB_VECTOR = 1
BP_VECTOR = 3
OF_VECTOR = 4
BR_VECTOR = 5
UD_VECTOR = 6
NM_VECTOR = 7
DF_VECTOR = 8
TS_VECTOR = 10
NP_VECTOR = 11
SS_VECTOR = 12
GP_VECTOR = 13
PF_VECTOR = 14
MF_VECTOR = 16
AC_VECTOR = 17
MC_VECTOR = 18
XM_VECTOR = 19
VE_VECTOR = 20

KVM_NR_INTERRUPTS = s.KVM_NR_INTERRUPTS
KVM_MAX_XCRS = s.KVM_MAX_XCRS

# --- Derived tables ----------------------------------------------------------

#: Exit reason number -> name ("KVM_EXIT_IO"), for messages.
EXIT_REASON_NAMES: dict[int, str] = {
    value: name
    for name, value in list(globals().items())
    if name.startswith("KVM_EXIT_")
    and name not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT")
    and isinstance(value, int)
}


def exit_reason_name(reason: int) -> str:
    """``KVM_EXIT_IO`` for 2; ``exit reason 99`` for an unknown number."""
    return EXIT_REASON_NAMES.get(reason, f"exit reason {reason}")


__all__ = [name for name in globals() if name.isupper() and not name.startswith("_")]
__all__ += ["exit_reason_name"]
