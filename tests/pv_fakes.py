"""A PV domain and its vCPUs without KVM, for unit tests of the hypercalls and the emulator.

Everything a hypercall or :mod:`hospes.pv.emulate` touches is the real thing:

* :class:`~hospes.machine.memory.GuestMemory` laid out as a domain's is (RAM,
  the Xen frames, the hypervisor region), with the real
  :class:`~hospes.pv.trampoline.Trampoline` built in it;
* the real :class:`~hospes.pv.pvdomain.PvDomain` constructor, so the
  :class:`~hospes.pv.mmu.PvMmu`, :class:`~hospes.pv.evtchn.EventChannels` over
  the shared_info page, :class:`~hospes.pv.guestvirt.GuestVirt`, the MSR and
  CPUID emulation and the hypercall table are the production objects;
* guest page tables built in guest RAM and validated by the real MMU (the boot
  L4 is pinned as the builder's is), so ``vcpu.read(va)`` is a real page walk and
  every mmu_update/mmuext_op/update_va_mapping is checked for real;
* vCPUs whose state and methods are :class:`~hospes.pv.vcpu.PvVcpu`'s own
  (read/write, the hypercall dispatch, bounce frames, flush requests, GDT
  loading, segment lookups), over real ``KvmRegs``/``KvmSregs`` structures.

Only what needs KVM or a thread is replaced, by small recorders: the KVM vCPU
(:class:`FakeKvmVcpu`: sync registers, no ioctls), the clock
(:class:`FakeClock`: time moves only when a test says so), the timers
(:class:`RecordingTimers`), sleeping (block, poll, yield and re-kicks are
recorded, never slept), kicks (recorded, then the real run-state kick), and
the domain's hooks (console output, shutdown and crash are recorded).

Guest virtual layout (the kernel's mapping, like Linux's ``__START_KERNEL_map``)::

    KVA + f * 4096 -> RAM frame f, for f < MAPPED_FRAMES
                      read-only for the page tables (frames 0-4), writable above
    SHARED_INFO_VA -> the shared_info page (writable)

Frames from :data:`FREE_FRAME` up are mapped nowhere: tests build new page
tables and descriptor pages there.
"""

from __future__ import annotations

import ctypes
import struct
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

from hospes.kvm.structs import KvmCpuidEntry2, KvmDebugregs, KvmRun
from hospes.machine.memory import PAGE_SIZE, GuestMemory
from hospes.pv import layout as L
from hospes.pv.abi import PTE_A, PTE_ADDR_MASK, PTE_D, PTE_P, PTE_RW, PTE_US
from hospes.pv.cpuid import CpuidPolicy
from hospes.pv.pvdomain import DomainIdentity, PvDomain, PvHooks
from hospes.pv.runstate import RunEvent
from hospes.pv.trampoline import Trampoline
from hospes.pv.vcpu import PvVcpu

RAM_PAGES = 128
NR_VCPUS = 2
DOMID = 5
UUID = uuidlib.UUID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
CMDLINE = "console=hvc0 root=/dev/xvda1"
TSC_KHZ = 2_000_000

# The kernel's page tables: one path L4 -> L3 -> L2 -> L1 for KVA.
L4_FRAME, L3_FRAME, L2_FRAME, L1_FRAME = 1, 2, 3, 4
KVA = 0xFFFF_FFFF_8000_0000          # L4 slot 511, L3 slot 510, L2 slot 0
MAPPED_FRAMES = 64                   # KVA maps frames [0, 64)
FIRST_WRITABLE = 5                   # frames 0-4 (the tables among them) are read-only
SHARED_INFO_VA = KVA + MAPPED_FRAMES * PAGE_SIZE

# Writable frames with a fixed use in the tests.
STACK_FRAMES = range(8, 12)          # the boot vCPU's kernel stack
STACK_TOP = KVA + 12 * PAGE_SIZE
ARG_FRAME = 16                       # hypercall argument structures
BUF_FRAME = 20                       # buffers hypercalls write into
CODE_FRAME = 24                      # instructions for the emulator
FREE_FRAME = MAPPED_FRAMES           # first RAM frame no page table maps

ARG_VA = KVA + ARG_FRAME * PAGE_SIZE
BUF_VA = KVA + BUF_FRAME * PAGE_SIZE
CODE_VA = KVA + CODE_FRAME * PAGE_SIZE


def kva(frame: int, offset: int = 0) -> int:
    """The kernel virtual address of a mapped RAM frame."""
    assert 0 <= frame < MAPPED_FRAMES
    return KVA + frame * PAGE_SIZE + offset


def host_cpuid() -> list[KvmCpuidEntry2]:
    """A small host CPUID table for CpuidPolicy (leaves 0, 1, 7 and 0x80000000)."""
    rows = [
        (0, 0, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69),             # "GenuineIntel"
        (1, 0, 0x000906EA, 0x00100800, 0x7FFAFBFF, 0xBFEBFBFF),
        (7, 0, 0, 0x029C6FBF, 0, 0),
        (0x80000000, 0, 0x80000008, 0, 0, 0),
    ]
    return cpuid_entries(*rows)


def cpuid_entries(*rows: tuple[int, int, int, int, int, int]) -> list[KvmCpuidEntry2]:
    """KVM CPUID entries from (leaf, index, eax, ebx, ecx, edx) rows."""
    out = []
    for leaf, index, a, b, c, d in rows:
        e = KvmCpuidEntry2()
        e.function, e.index, e.eax, e.ebx, e.ecx, e.edx = leaf, index, a, b, c, d
        out.append(e)
    return out


# --- what stands in for KVM -----------------------------------------------------------


class FakeKvmVcpu:
    """A KVM vCPU's sync-register area and nothing else: no file descriptor, no ioctls."""

    def __init__(self, vcpu_id: int) -> None:
        self.id = vcpu_id
        self.run_struct = KvmRun()
        self.sync = self.run_struct.s.regs        # real KvmRegs / KvmSregs / KvmVcpuEvents
        self.immediate_exit = False
        self.dirty: list[tuple[bool, bool]] = []
        self.closed = False
        self.debugregs = KvmDebugregs()           # what KVM_SET_DEBUGREGS last loaded

    def mark_dirty(self, regs: bool = False, sregs: bool = False, events: bool = False) -> None:
        self.dirty.append((regs, sregs))

    def get_tsc_offset(self) -> int | None:
        return None            # as a KVM without KVM_VCPU_TSC_OFFSET

    def set_tsc_offset(self, offset: int) -> None:
        raise AssertionError("no TSC offset to set on a fake vCPU")

    def get_tsc_khz(self) -> int:
        return TSC_KHZ

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        return {i: 0 for i in indices}

    def get_debugregs(self) -> KvmDebugregs:
        dr = KvmDebugregs()
        ctypes.memmove(ctypes.addressof(dr), ctypes.addressof(self.debugregs), ctypes.sizeof(dr))
        return dr

    def set_debugregs(self, dr: KvmDebugregs) -> None:
        ctypes.memmove(ctypes.addressof(self.debugregs), ctypes.addressof(dr), ctypes.sizeof(dr))

    def close(self) -> None:
        self.closed = True


class FakeVm:
    def __init__(self) -> None:
        self.kvm_vcpus: list[FakeKvmVcpu] = []

    def create_vcpu(self, vcpu_id: int) -> FakeKvmVcpu:
        v = FakeKvmVcpu(vcpu_id)
        self.kvm_vcpus.append(v)
        return v


class FakeClock:
    """System time that moves only when a test sets it."""

    def __init__(self, now_ns: int = 5_000_000_000) -> None:
        self.now_ns = now_ns
        self.tsc0 = 0

    def now(self) -> int:
        return self.now_ns

    def guest_tsc(self) -> int:
        return self.now_ns * TSC_KHZ // 1_000_000

    def publish(self, buf: Any, gpa: int) -> None:
        pass

    def record(self, version: int) -> bytes:
        return version.to_bytes(4, "little") + bytes(range(1, 29))   # recognisable, not a real record


@dataclass
class RecordingTimers:
    """What the vCPUs asked of their timers, in order."""

    singleshot: list[tuple[int, int, bool]] = field(default_factory=list)   # (vcpu, deadline, force)
    periodic: list[tuple[int, int]] = field(default_factory=list)           # (vcpu, period)
    later: list[int] = field(default_factory=list)                          # delays of call_later

    def set_singleshot(self, vcpu: int, deadline: int, force: bool = False) -> None:
        self.singleshot.append((vcpu, deadline, force))

    def set_periodic(self, vcpu: int, period: int) -> None:
        self.periodic.append((vcpu, period))

    def call_later(self, delay_ns: int, fn: Any) -> None:
        self.later.append(delay_ns)

    def start(self) -> None:
        raise AssertionError("unit tests run no timer thread")

    def stop(self) -> None:
        pass


@dataclass
class HookRecord:
    """What the PV layer told the domain that assembled it."""

    console: list[bytes] = field(default_factory=list)
    shutdowns: list[int] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)

    def hooks(self) -> PvHooks:
        return PvHooks(console_io=self.console.append, shutdown=self.shutdowns.append,
                       crash=self.crashes.append)


# --- the vCPU and the domain ---------------------------------------------------------------


class FakeVcpu(PvVcpu):
    """A :class:`PvVcpu` over a :class:`FakeKvmVcpu`: its own state and methods, no thread.

    Kicks are recorded (and still wake the run state, as a real kick does).
    :meth:`hypercall` issues a hypercall as the SYSCALL exit would: arguments in
    the registers, through the real dispatch (``PvVcpu._hypercall``), and
    returns RAX as a signed value.
    """

    kicks: int

    def __init__(self, domain: PvDomain, vcpu_id: int, kvm_vcpu: FakeKvmVcpu, area: Any) -> None:
        super().__init__(domain, vcpu_id, kvm_vcpu, area)  # type: ignore[arg-type]
        self.kicks = 0
        self.returned_normally = False   # what the last hypercall() told the return path
        # A hypercall runs to its end however slow the shared machine is; the
        # continuation tests ask for the real slice (or a fake clock) themselves.
        self.slice_ns = 1 << 62

    def kick(self) -> None:
        self.kicks += 1
        super().kick()

    def hypercall(self, nr: int, a1: int = 0, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
        regs = self.regs
        regs.rax, regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8 = (
            int(nr), a1 & 0xFFFF_FFFF_FFFF_FFFF, a2 & 0xFFFF_FFFF_FFFF_FFFF, a3 & 0xFFFF_FFFF_FFFF_FFFF,
            a4 & 0xFFFF_FFFF_FFFF_FFFF, a5 & 0xFFFF_FFFF_FFFF_FFFF)
        self.returned_normally = self._hypercall()
        rax = int(regs.rax)
        return rax - (1 << 64) if rax >> 63 else rax

    # Guest-memory conveniences for tests (through the real page walk).
    def put(self, va: int, data: bytes) -> int:
        self.write(va, data)
        return va

    def get(self, va: int, size: int) -> bytes:
        return self.read(va, size)


class FakePvDomain(PvDomain):
    """The real PvDomain over fake KVM, with recorders for sleeping, time and hooks."""

    vcpus: list[FakeVcpu]  # type: ignore[assignment]
    clock: FakeClock  # type: ignore[assignment]
    timers: RecordingTimers  # type: ignore[assignment]

    def __init__(self, nr_vcpus: int = NR_VCPUS, ram_pages: int = RAM_PAGES) -> None:
        lay = L.Layout(ram_pages=ram_pages, nr_vcpus=nr_vcpus)
        mem = GuestMemory([("ram", lay.ram_bytes), ("xen", L.XEN_FRAMES * PAGE_SIZE),
                           ("hv", lay.hv_pages * PAGE_SIZE)], name="hospes-unit-test")
        self.record = HookRecord()
        self.vm = FakeVm()
        super().__init__(mem, lay, Trampoline(mem, lay), self.vm,  # type: ignore[arg-type]
                         CpuidPolicy(host_cpuid()), DomainIdentity(DOMID, UUID, CMDLINE), self.record.hooks())
        # The same vCPUs, as FakeVcpus (the event channels look them up by index).
        self.vcpus[:] = [FakeVcpu(self, v, self.vm.kvm_vcpus[v], self.trampoline.vcpus[v])  # type: ignore[misc]
                         for v in range(nr_vcpus)]
        self.clock = FakeClock()
        self.timers = RecordingTimers()
        self.blocked: list[int] = []
        self.polled: list[tuple[int, tuple[int, ...], int]] = []
        self.yields: list[int] = []
        self.rekicks: list[int] = []
        self._build_kernel_tables()
        bsp = self.vcpus[0]
        # What boot() does for the boot vCPU, minus programming KVM.
        self.mmu.pin_boot_l4(L4_FRAME, [])
        bsp.kernel_cr3 = L4_FRAME << 12
        bsp.cpu_cr3 = bsp.kernel_cr3
        bsp.kernel_sp = STACK_TOP
        bsp.t_rsp = STACK_TOP
        bsp.initialised = True
        bsp.run_state.fire(RunEvent.UP)

    def _build_kernel_tables(self) -> None:
        q = self.mem.q
        table = PTE_P | PTE_RW | PTE_A
        q[(L4_FRAME << 9) + 511] = (L3_FRAME << 12) | table
        q[(L3_FRAME << 9) + 510] = (L2_FRAME << 12) | table
        q[(L2_FRAME << 9) + 0] = (L1_FRAME << 12) | table
        for f in range(MAPPED_FRAMES):
            q[(L1_FRAME << 9) + f] = (f << 12) | PTE_P | PTE_A | PTE_D | (PTE_RW if f >= FIRST_WRITABLE else 0)
        q[(L1_FRAME << 9) + MAPPED_FRAMES] = self.layout.shared_info_gpa | PTE_P | PTE_RW | PTE_A | PTE_D

    # --- what would sleep: recorded ----------------------------------------------------------

    def block(self, vcpu: PvVcpu) -> None:
        self.blocked.append(vcpu.id)

    def poll(self, vcpu: PvVcpu, ports: Any, timeout: int) -> None:
        self.polled.append((vcpu.id, tuple(ports), timeout))

    def yield_(self, vcpu: PvVcpu) -> None:
        self.yields.append(vcpu.id)

    def rekick(self, vcpu: PvVcpu) -> None:
        self.rekicks.append(vcpu.id)

    def start(self) -> None:
        raise AssertionError("unit tests run no vCPU threads")

    # --- inspection helpers --------------------------------------------------------------------

    def l1_entry(self, frame: int) -> int:
        """The kernel L1's entry for KVA page ``frame``."""
        return int(self.mem.q[(L1_FRAME << 9) + frame])

    def entry_gpa(self, table_frame: int, index: int) -> int:
        return (table_frame << 12) + index * 8

    def frame_of(self, entry: int) -> int:
        return (entry & PTE_ADDR_MASK) >> 12

    def close_memory(self) -> None:
        self.mem.close()


def u32(data: bytes, offset: int = 0) -> int:
    return int(struct.unpack_from("<I", data, offset)[0])


def u64(data: bytes, offset: int = 0) -> int:
    return int(struct.unpack_from("<Q", data, offset)[0])


__all__ = [
    "ARG_VA", "BUF_VA", "CODE_VA", "FakeClock", "FakeKvmVcpu", "FakePvDomain", "FakeVcpu", "FREE_FRAME",
    "KVA", "L1_FRAME", "L2_FRAME", "L3_FRAME", "L4_FRAME", "PTE_US", "RecordingTimers", "SHARED_INFO_VA",
    "STACK_TOP", "kva", "u32", "u64",
]
