"""One PV vCPU: its Xen-visible state and the exit loop that runs it.

The guest kernel runs at CPL 3 in a KVM VM; every transition that Xen would
handle in ring 0 leaves the VM and lands here:

* ``out $PORT_SYSCALL`` from the SYSCALL stub: a hypercall when the vCPU is in
  guest-kernel mode, a system call to bounce when it is in guest-user mode;
* ``out $PORT_EXCEPTION`` from an IDT stub: an exception to emulate
  (privileged instructions, page-table writes) or to bounce to the guest;
* ``KVM_EXIT_INTR`` after a kick: an event upcall may now be deliverable.

Each exit computes a *target* frame (rip, cs, rflags, rsp, ss) plus the
guest's mode, and :meth:`PvVcpu._resume` gets the CPU there by the cheapest
route: plain register writes when only RIP/RSP/RFLAGS change; the exception
stub's own ``iretq`` over an edited hardware frame; or the in-VM writer when
page-table stores or a CR3 switch are pending (platform.md: page-table changes
must be made from guest mode).
"""

from __future__ import annotations

import ctypes
import logging
import signal
import struct
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable, cast

from hospes import cputime
from hospes.cputime import ThreadCpu
from hospes.kvm import constants as kc
from hospes.kvm.structs import KvmSegment
from hospes.machine.memory import PAGE_SIZE, GuestFault
from hospes.pv import abi
from hospes.pv import layout as L
from hospes.pv.errors import Errno, XenError
from hospes.pv.guestvirt import canonical
from hospes.pv.runstate import RunState, VcpuRun
from hospes.pv.trampoline import GP_CLI_NOOP, GP_KERNEL_MODE, VcpuArea
from hospes.pv import debugregs, emulate
from hospes.pv.emulate import VMASST_ARCHITECTURAL_IOPL
from hospes.pv.vcpu_state import PvVcpuState, StartContext, capture_cpu, load_cpu
from hospes.state import StateError, check_version

if TYPE_CHECKING:
    from hospes.kvm import Vcpu
    from hospes.pv.pvdomain import PvDomain
    from hospes.kvm.structs import KvmCpuidEntry2, KvmRegs, KvmRun, KvmSregs, KvmVcpuEvents
    from hospes.machine.memory import GuestMemory
    from hospes.pv.guestvirt import GuestVirt

log = logging.getLogger(__name__)

RFLAGS_IF = 1 << 9
RFLAGS_IOPL = 3 << 12
RFLAGS_TF = 1 << 8
RFLAGS_DF = 1 << 10
RFLAGS_NT = 1 << 14
RFLAGS_RF = 1 << 16
RFLAGS_VM = 1 << 17
RFLAGS_AC = 1 << 18
RFLAGS_GUEST_MASK = 0x3F7FD5 & ~(RFLAGS_IOPL | RFLAGS_VM)  # arithmetic/control bits a guest may set

# vcpu_info offsets (pv-abi.md §2.6).
VI_PENDING = 0x00
VI_MASK = 0x01
VI_PENDING_SEL = 0x08
VI_CR2 = 0x10
VI_TIME = 0x20

NO_RETURN = object()  # a hypercall handler that set the whole guest state itself

# How long one hypercall may work before it stops and continues later (Xen's
# hypercall_preempt_check). A batch checks after each element but the first;
# 1 ms (some 700 mmu_update requests that change nothing) keeps the vCPU's
# timer, event and pause latency near a tick of a guest's timer.
HYPERCALL_SLICE_NS = 1_000_000
# Page-table stores a chunk may leave for the in-VM writer: each is a CPL-0
# instruction, which the PVM host emulates (~20 us measured), so they end a
# slice too (64 are about another millisecond).
HYPERCALL_SLICE_WRITES = 64
_monotonic_ns = time.monotonic_ns   # the slice's clock (a name of its own, for tests)


class Continuation:
    """A hypercall that stopped early (Xen's hypercall_create_continuation).

    Returned by a handler: the guest re-executes the same hypercall with these
    arguments (the ones a batch needs to carry on where it stopped), after
    Hospes has served its events, timers and pause requests. Inside a multicall
    the arguments go back into the entry instead, and the multicall continues
    from that entry.
    """

    __slots__ = ("args",)

    def __init__(self, *args: int) -> None:
        self.args = args

# The signal that interrupts a vCPU thread's KVM_RUN. Its handler is installed
# once per process and never removed (see PvVcpu.kick): a kick that arrives
# late, after a domain has stopped, must find a handler, not the default
# action, which would kill the process.
KICK_SIGNAL = signal.SIGUSR1
_kick_handler_installed = False


def install_kick_handler() -> None:
    """Give KICK_SIGNAL a no-op handler for the life of the process (main thread only)."""
    global _kick_handler_installed
    if not _kick_handler_installed:
        signal.signal(KICK_SIGNAL, lambda *_: None)
        _kick_handler_installed = True

CLOCK_CORRECT_NS = 5_000_000_000  # how often a vCPU corrects Hospes' estimate of the guest TSC

# Exit-count keys, built once: formatting a string on every exit shows up in profiles.
HYPERCALL_KEYS = [f"hypercall:{n}" for n in range(64)]
TRAP_KEYS = [f"trap:{v}" for v in range(256)]


class DomainCrash(Exception):
    """The guest did something Xen would crash the domain for."""


def raised_at(e: BaseException) -> str:
    """Where ``e`` was raised, as file:line:function, for a bug report in one line."""
    tb = e.__traceback__
    if tb is None:
        return "an unknown place"
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} ({code.co_name})"


def internal_error_message(what: str, e: BaseException, vcpus: Sequence[PvVcpu]) -> str:
    """Why a domain ended on a Hospes bug: what failed, the exception and where
    it was raised, and every vCPU's registers."""
    dumps = "\n".join(f"vCPU {pv.id}:\n{pv.register_dump()}" for pv in vcpus)
    return (f"{what}: Hospes internal error (a bug; please report it): {type(e).__name__}: {e} "
            f"at {raised_at(e)}\n{dumps}")


def _segment(seg: KvmSegment, selector: int, code: bool, dpl: int, long: bool) -> None:
    seg.base = 0
    seg.limit = 0xFFFFFFFF
    seg.selector = selector
    seg.type = 0xB if code else 0x3
    seg.present = 1
    seg.dpl = dpl
    seg.db = 0 if (code and long) else 1
    seg.s = 1
    seg.l = 1 if (code and long) else 0
    seg.g = 1
    seg.avl = 0
    seg.unusable = 0


def _prebuilt(selector: int, code: bool, dpl: int, long: bool) -> KvmSegment:
    seg = KvmSegment()
    _segment(seg, selector, code, dpl, long)
    return seg


RING0_CS = _prebuilt(abi.HYPERVISOR_CS, code=True, dpl=0, long=True)
RING0_SS = _prebuilt(abi.HYPERVISOR_DS, code=False, dpl=0, long=False)


class PvVcpu:
    """A vCPU of a PV domain, run by one host thread."""

    domain: "PvDomain"
    id: int
    kvm: "Vcpu"
    area: VcpuArea
    gp_flags_gpa: int
    _kd: int
    kvm_counters: dict[str, int]
    cpu: ThreadCpu | None
    gp_flags: int
    user_roots: set[int]
    mem: "GuestMemory"
    virt: "GuestVirt"
    thread: threading.Thread | None
    thread_ident: int | None
    kernel_mode: bool
    kernel_cr3: int
    user_cr3: int
    cpu_cr3: int
    gs_base_kernel: int
    fs_base: int
    gs_sel: int
    bases_dirty: bool
    mcg_status: int
    trap_table: dict[int, tuple[int, int]]
    callbacks: dict[int, tuple[int, int]]
    iopl: int
    cr0_ts: bool
    cr4: int
    debugreg: list[int]
    dr7_emul: int
    vcpu_info_gpa: int
    vcpu_info_registered: bool
    runstate_va: int
    time_area_va: int
    gdt_frames: list[int]
    gdt_ents: int
    ldt_base: int
    ldt_ents: int
    run_state: VcpuRun
    initialised: bool
    writes: list[tuple[int, int]]
    flush_pending: bool
    next_clock_correct: int
    invlpg_va: int
    flush_generation: int
    in_kvm_run: bool
    preempt_at: int
    slice_ns: int
    start_context: StartContext | None
    t_rip: int
    t_cs: int
    t_rflags: int
    t_rsp: int
    t_ss: int
    exit_kind: str
    stats: dict[str, int]
    run: "KvmRun"
    regs: KvmRegs
    sregs: KvmSregs
    events: KvmVcpuEvents
    hypercalls: dict[int, Callable[..., object]]

    def __init__(self, domain: "PvDomain", vcpu_id: int, kvm_vcpu: "Vcpu", area: VcpuArea) -> None:
        self.domain = domain
        self.id = vcpu_id
        self.kvm = kvm_vcpu
        self.area = area
        self.gp_flags_gpa = area.gpa_of(area.gp_flags_va)
        self._kd = area.kdata_gpa >> 3     # kernel_ss, kernel_sp and gs_base_user live there
        self.mem = domain.mem
        self.virt = domain.virt
        self.thread: threading.Thread | None = None
        self.thread_ident: int | None = None   # set while loop() runs; kicks signal only then
        self._thread_lock = threading.Lock()
        self._closed = False
        # Xen-visible state (struct pv_vcpu).
        self.kernel_mode = True
        self.kernel_cr3 = 0
        self.user_cr3 = 0
        self.cpu_cr3 = 0
        self.gs_base_kernel = 0
        self.gs_base_user = 0
        self.fs_base = 0
        self.gs_sel = 0
        # The FS base and the current mode's GS base live in the CPU while the
        # guest runs (it may write them itself: wrfsbase, a segment load), and in
        # the fields above once Hospes has changed one: then bases_dirty is set
        # and the next entry loads them.
        self.bases_dirty = True
        self.mcg_status = 0      # MCG_STATUS as the guest last wrote it (Xen's vMCE)
        self.trap_table: dict[int, tuple[int, int]] = {}  # vector -> (flags, address)
        self.callbacks: dict[int, tuple[int, int]] = {}   # type -> (address, flags)
        self.kernel_ss = abi.FLAT_KERNEL_SS
        self.kernel_sp = 0
        self.iopl = 0
        self.cr0_ts = False
        self.cr4 = emulate.PV_GUEST_CR4
        self.debugreg = list(debugregs.INITIAL)
        self.dr7_emul = 0        # DR7's enables of I/O breakpoints, which are never in the CPU (Xen)
        self.vcpu_info_gpa = domain.layout.shared_info_gpa + 64 * vcpu_id
        self.vcpu_info_registered = False
        self.runstate_va = 0
        self.time_area_va = 0    # VCPUOP_register_vcpu_time_memory_area's address
        self.gdt_frames: list[int] = []
        self.gdt_ents = 0
        self.ldt_base = 0
        self.ldt_ents = 0
        self.run_state = VcpuRun()
        self.initialised = False
        # Pending in-VM work and the target frame of the next entry.
        self.writes: list[tuple[int, int]] = []
        self.flush_pending = False
        self.next_clock_correct = 0
        self._segments: dict[tuple[int, int], KvmSegment] = {}
        self.invlpg_va = 0
        self.flush_generation = 0        # bumped whenever a TLB flush is scheduled before guest code
        self.in_kvm_run = False
        self.preempt_at = 0              # when the running hypercall's slice ends (0: not measured yet)
        self.slice_ns = HYPERCALL_SLICE_NS
        self.start_context: StartContext | None = None
        self.t_rip = 0
        self.t_cs = abi.FLAT_KERNEL_CS
        self.t_rflags = 0x202
        self.t_rsp = 0
        self.t_ss = abi.FLAT_KERNEL_SS
        self.exit_kind = "start"
        self.gp_flags = -1          # what the #GP fast path's flags byte says (-1: not yet written)
        self.user_roots: set[int] = set()   # L4s this vCPU made fit for user space (PvMmu.user_root)
        self.stats: dict[str, int] = {}
        self.kvm_counters: dict[str, int] = {}   # KVM's own, read when the loop ends (Vcpu.counters)
        self.cpu: ThreadCpu | None = None        # this thread's time by owner, read then too
        self.run = kvm_vcpu.run_struct
        self.regs = kvm_vcpu.sync.regs
        self.sregs = kvm_vcpu.sync.sregs
        self.events = kvm_vcpu.sync.events
        self.hypercalls: dict[int, Callable[..., object]] = domain.hypercall_table

    # --- helpers used by hypercalls -------------------------------------------

    def read(self, va: int, size: int) -> bytes:
        return self.virt.read(self.kernel_cr3, va, size)

    def write(self, va: int, data: bytes | bytearray) -> None:
        # Under the MMU's lock, like every store of Hospes' into a page it does not
        # hold: another vCPU must not make the page a table between walk and store.
        with self.domain.mmu.lock:
            self.virt.write(self.kernel_cr3, va, data)

    def read_u64(self, va: int) -> int:
        return self.virt.read_u64(self.kernel_cr3, va)

    def write_u64(self, va: int, value: int) -> None:
        with self.domain.mmu.lock:   # see write()
            self.virt.write_u64(self.kernel_cr3, va, value)

    # The state stack_switch and set_segment_base(SEGBASE_GS_USER) set lives in the
    # vCPU's kernel-data page, where the SYSCALL stub stores it without an exit. The
    # guest kernel may also write that page directly, so what is read is made valid
    # here, as the hypercalls would have checked it.
    @property
    def kernel_ss(self) -> int:
        return (self.mem.q[self._kd + (L.KD_KERNEL_SS >> 3)] & 0xFFFF) | 3

    @kernel_ss.setter
    def kernel_ss(self, value: int) -> None:
        self.mem.q[self._kd + (L.KD_KERNEL_SS >> 3)] = value & 0xFFFF

    @property
    def kernel_sp(self) -> int:
        return self.mem.q[self._kd + (L.KD_KERNEL_SP >> 3)]

    @kernel_sp.setter
    def kernel_sp(self, value: int) -> None:
        self.mem.q[self._kd + (L.KD_KERNEL_SP >> 3)] = value & 0xFFFF_FFFF_FFFF_FFFF

    @property
    def gs_base_user(self) -> int:
        base = self.mem.q[self._kd + (L.KD_GS_USER >> 3)]
        return base if canonical(base) else 0

    @gs_base_user.setter
    def gs_base_user(self, value: int) -> None:
        self.mem.q[self._kd + (L.KD_GS_USER >> 3)] = value & 0xFFFF_FFFF_FFFF_FFFF

    def bases_from_cpu(self) -> None:
        """Take the FS and current-mode GS bases from the CPU, where the guest may
        have changed them (call before reading or changing any of the three)."""
        if not self.bases_dirty:
            s = self.sregs
            self.fs_base = s.fs.base
            if self.kernel_mode:
                self.gs_base_kernel = s.gs.base
            else:
                self.gs_base_user = s.gs.base

    def count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    # vcpu_info fields (guest memory; single bytes are atomic enough for reads).
    @property
    def upcall_mask(self) -> int:
        return self.mem.buf[self.vcpu_info_gpa + VI_MASK]

    @upcall_mask.setter
    def upcall_mask(self, value: int) -> None:
        self.mem.buf[self.vcpu_info_gpa + VI_MASK] = value

    @property
    def online(self) -> bool:
        return self.run_state.online

    def upcall_deliverable(self) -> bool:
        """Xen's rule (EventChannels.upcall_deliverable) read the cheap way: on the exit
        path only this vCPU's thread changes the mask, so two byte reads cannot tear."""
        b = self.mem.buf
        g = self.vcpu_info_gpa
        return bool(b[g + VI_PENDING]) and not b[g + VI_MASK]

    # --- initial state ------------------------------------------------------------

    def setup_cpu(self, cpuid_entries: list[KvmCpuidEntry2]) -> None:
        """Program KVM state that never changes: CPUID, control registers, MSRs."""
        k = self.kvm
        k.set_cpuid2(cpuid_entries)
        sregs = k.get_sregs()
        sregs.cr0 = 0x80050033
        sregs.cr4 = 0x620
        sregs.efer = 0xD01
        sregs.cr3 = self.kernel_cr3
        sregs.gdt.base = self.area.gdt_va
        sregs.gdt.limit = abi.GDT_LIMIT
        sregs.idt.base = L.IDT_VA
        sregs.idt.limit = 0xFFF
        tr = sregs.tr
        tr.base = self.area.tss_va
        tr.limit = 0x68 + 8192
        tr.selector = abi.TSS_SELECTOR
        tr.type = 0xB
        tr.present = 1
        tr.dpl = 0
        tr.db = 0
        tr.s = 0
        tr.l = 0
        tr.g = 0
        tr.unusable = 0
        sregs.ldt.selector = 0
        sregs.ldt.unusable = 1
        sregs.ldt.present = 0
        _segment(sregs.cs, abi.FLAT_KERNEL_CS, code=True, dpl=3, long=True)
        _segment(sregs.ss, abi.FLAT_KERNEL_SS, code=False, dpl=3, long=False)
        for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs):
            _segment(seg, 0, code=False, dpl=3, long=False)
            seg.selector = 0
            seg.unusable = 1
            seg.present = 0
        sregs.fs.base = self.fs_base
        sregs.gs.base = self.gs_base_kernel if self.kernel_mode else self.gs_base_user
        k.set_sregs(sregs)
        self.cpu_cr3 = self.kernel_cr3
        k.set_msrs({
            0xC0000081: (abi.FLAT_RING3_CS32 << 48) | (abi.HYPERVISOR_CS << 32),  # STAR
            0xC0000082: self.area.syscall_stub_va,                                   # LSTAR
            0xC0000083: self.area.syscall_stub_va,                                   # CSTAR
            0xC0000084: 0x74500,     # SFMASK: TF DF NT RF VM AC; not IF (the stub's POPF could not set it back)
            0x277: 0x0000050100070406,                                               # PAT
            0xC0000102: 0,                                                           # KERNEL_GS_BASE
        })
        k.enable_sync_regs(regs=True, sregs=True, events=True)

    def set_entry_state(self, rip: int, rsp: int, rsi: int, cs: int = abi.FLAT_KERNEL_CS,
                        ss: int = abi.FLAT_KERNEL_SS, rflags: int = 0x202) -> None:
        regs = self.kvm.get_regs()
        ctypes.memset(ctypes.addressof(regs), 0, ctypes.sizeof(regs))
        regs.rip = rip
        regs.rsp = rsp
        regs.rsi = rsi
        regs.rflags = rflags
        self.kvm.set_regs(regs)

    # --- the loop --------------------------------------------------------------

    def loop(self) -> None:
        """Run the vCPU until the domain stops. Runs on this vCPU's thread."""
        with self._thread_lock:
            self.thread_ident = threading.get_ident()
            # A kick before this thread existed (a restored domain's timer that fell
            # due meanwhile) reached no one: look for deliverable events at once.
            self.kvm.immediate_exit = True
        try:
            self._loop()
        finally:
            with self._thread_lock:
                self.thread_ident = None

    def _loop(self) -> None:
        dom = self.domain
        run = self.kvm.run
        run_state = self.run_state
        running = RunState.RUNNING
        reason = -1
        # One try around the whole loop (free in CPython until something
        # raises): whatever goes wrong on this thread, in an exit handler, the
        # start context, the clock or the run-state wait, ends this domain with
        # a register dump, never the thread alone (a silently dead vCPU).
        try:
            # The lock-free check keeps the common case (running on) off the lock; a
            # change that lands just after it is followed by a kick, which ends KVM_RUN.
            while run_state.state is running or run_state.wait_runnable() is running:
                if self.start_context is not None:
                    self._apply_start_context()
                if time.monotonic_ns() >= self.next_clock_correct:
                    self._correct_clock()
                self.in_kvm_run = True
                reason = run()
                self.in_kvm_run = False
                if self.kvm.immediate_exit:
                    self.kvm.immediate_exit = False
                if reason == kc.KVM_EXIT_IO:
                    port = self.run.io.port
                    if port == L.PORT_SYSCALL:
                        self._on_syscall()
                    elif port == L.PORT_EXCEPTION:
                        self._on_exception()
                    elif port == L.PORT_WRITER_CHUNK:
                        self.exit_kind = "chunk"
                        self._resume()
                    else:
                        raise DomainCrash(f"unexpected port {port:#x} exit")
                elif reason == kc.KVM_EXIT_INTR:
                    self._on_kick()
                elif reason == kc.KVM_EXIT_SHUTDOWN:
                    raise DomainCrash("triple fault (KVM_EXIT_SHUTDOWN)")
                elif reason == kc.KVM_EXIT_INTERNAL_ERROR:
                    raise DomainCrash(f"KVM internal error, suberror {self.run.internal.suberror}")
                elif reason == kc.KVM_EXIT_FAIL_ENTRY:
                    raise DomainCrash(f"VM entry failed, reason {self.run.fail_entry.hardware_entry_failure_reason:#x}")
                else:
                    raise DomainCrash(f"unexpected KVM exit reason {reason}")
            self.kvm_counters = self.kvm.counters()
            self.cpu = cputime.this_thread()
        except DomainCrash as e:
            self.in_kvm_run = False
            dom.crash(self, str(e))
        except Exception as e:  # noqa: BLE001 - a guest must never take the host down
            # A Hospes bug: whatever the guest did to reach it ends its own domain only.
            self.in_kvm_run = False
            where = f"after KVM exit {reason}" if reason >= 0 else "before the first KVM exit"
            dom.internal_error(f"vCPU {self.id} {where}", e)

    # --- syscall exits -----------------------------------------------------------

    def _on_syscall(self) -> None:
        regs = self.regs
        out = self.area.syscall_out_va
        if regs.rip != out and regs.rip != out + 2:
            # The guest executed our port itself: as Xen would for a stray port access.
            self.exit_kind = "syscall"
            self.t_rip, self.t_cs, self.t_rflags = regs.rip, self.sregs.cs.selector, regs.rflags
            self.t_rsp, self.t_ss = regs.rsp, self.sregs.ss.selector
            self.bounce_exception(13, 0)
            self._resume()
            return
        self.exit_kind = "syscall"
        self.t_rip = regs.rcx
        self.t_rflags = regs.r11
        self.t_rsp = regs.rsp
        if self.kernel_mode:
            # Xen's SYSCALL entry records FLAT_KERNEL_CS64/FLAT_KERNEL_SS whatever
            # the guest ran with (and SYSRET returns with them): an upcall that
            # interrupts the hypercall shows them in its frame.
            self.t_cs = abi.FLAT_KERNEL_CS
            self.t_ss = abi.FLAT_KERNEL_SS
            self._resume(self._hypercall())
            return
        else:
            if self.sregs.cs.dpl == 3:
                self.t_cs = self.sregs.cs.selector
                self.t_ss = self.sregs.ss.selector
            else:  # VT-x/SVM: SYSCALL entered ring 0 with STAR's selectors
                self.t_cs = abi.FLAT_USER_CS
                self.t_ss = abi.FLAT_KERNEL_SS
            self.count("syscall")
            self.bounce_syscall()
        self._resume()

    def _hypercall(self) -> bool:
        """Run the hypercall the guest asked for; True when it returned to the guest
        normally, leaving its argument registers the hypervisor's to clobber (Xen's
        ABI, xen-x86_64.h), which the return path may use."""
        regs = self.regs
        nr = regs.rax
        key = HYPERCALL_KEYS[nr] if nr < 64 else f"hypercall:{nr}"
        self.stats[key] = self.stats.get(key, 0) + 1
        handler = self.hypercalls.get(nr)
        if handler is None:
            regs.rax = (-Errno.ENOSYS) & 0xFFFF_FFFF_FFFF_FFFF
            return True
        self.preempt_at = 0
        try:
            result = handler(self, regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8)
        except XenError as e:
            result = -e.errno
        except GuestFault:
            result = -Errno.EFAULT
        if result is NO_RETURN:
            return False
        if type(result) is Continuation:
            self._continue_hypercall(nr, result.args)
            return False
        regs.rax = int(result) & 0xFFFF_FFFF_FFFF_FFFF  # type: ignore[call-overload]
        return True

    def _continue_hypercall(self, nr: int, args: tuple[int, ...]) -> None:
        """Re-arm hypercall ``nr``: the guest resumes at its SYSCALL with the new arguments.

        The target RIP is the instruction after the SYSCALL (its RCX), so two
        bytes back is the SYSCALL itself, as Xen's continuation rewinds a PV
        guest. Between here and the re-execution the return path delivers any
        pending upcall (whose frame then points at the SYSCALL) and the exit
        loop sees a pause or stop: the call is interruptible, like any guest
        instruction boundary.
        """
        regs = self.regs
        regs.rax = nr
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8"), args, strict=False):
            setattr(regs, name, value & 0xFFFF_FFFF_FFFF_FFFF)
        self.t_rip = (self.t_rip - 2) & 0xFFFF_FFFF_FFFF_FFFF
        self.count("continuation")

    def preempt_check(self) -> bool:
        """Should a long hypercall stop here and continue later (Xen's hypercall_preempt_check)?

        Yes once the call has worked its slice or queued its share of stores
        for the writer, when an upcall waits to be delivered, or when the vCPU
        is asked to pause or stop. The slice starts at the first check (a
        batch's first element is always done, so every chunk makes progress).
        """
        now = _monotonic_ns()
        if not self.preempt_at:
            self.preempt_at = now + self.slice_ns
        elif now >= self.preempt_at:
            return True
        if len(self.writes) >= HYPERCALL_SLICE_WRITES or self.run_state.state is not RunState.RUNNING:
            return True
        return self.upcall_deliverable() and abi.CALLBACKTYPE_event in self.callbacks

    def call_hypercall(self, nr: int, args: tuple[int, ...]) -> int | Continuation:
        """Run one hypercall on behalf of a multicall entry (the multicall handles
        iret itself; a nested multicall is refused). A :class:`Continuation` is
        the entry's new arguments: the multicall stops and resumes at it."""
        handler = self.hypercalls.get(nr)
        if handler is None or nr in (abi.Hypercall.iret, abi.Hypercall.multicall):
            return -Errno.ENOSYS if handler is None else -Errno.EINVAL
        self.count(HYPERCALL_KEYS[nr] if nr < 64 else f"hypercall:{nr}")
        try:
            result = handler(self, *args)
        except XenError as e:
            return -e.errno
        except GuestFault:
            return -Errno.EFAULT
        assert result is not NO_RETURN
        if type(result) is Continuation:
            return result
        return cast(int, result)

    # --- exception exits -----------------------------------------------------------

    def _on_exception(self) -> None:
        self.exit_kind = "exception"
        rsp = self.regs.rsp
        gpa = self.area.gpa_of(rsp)
        vec, err, rip, cs, rflags, ersp, ss = struct.unpack_from("<7Q", self.mem.buf, gpa)
        tr = self.domain.trampoline
        if cs & 3 == 0 and rip == tr.gp_probe_va:
            # The #GP fast path could not read the faulting instruction (another
            # vCPU unmapped it meanwhile): drop this fault's frame and let the
            # #GP leave by the slow path, where emulation reads it (or bounces).
            self.count("gp_probe_fault")
            self.regs.rsp = ersp
            self.regs.rip = tr.gp_slow_va
            self.kvm.mark_dirty(regs=True)
            return
        area = self.area
        if vec == 14 and self.kernel_mode and area.syscall_stub_va <= rip < area.syscall_stub_end:
            # The SYSCALL stub could not read its kernel-data page (a root without the
            # slot, e.g. from an older Hospes' save): the hypercall goes the plain way,
            # its registers as the SYSCALL left them (the stub had only used RDX).
            # Only for the guest kernel: user space jumping into the stub's store gets
            # its #PF like any other, never a hypercall.
            regs = self.regs
            self.t_rip, self.t_cs, self.t_rflags = regs.rcx, abi.FLAT_KERNEL_CS, regs.r11
            self.t_rsp, self.t_ss = ersp, abi.FLAT_KERNEL_SS
            self.count("stub_fault")
            self._resume(self._hypercall())
            return
        if cs & 3 == 0 and vec in (11, 12, 13) and tr.is_iretq(rip):
            # Our own return to the guest faulted: the frame named a selector
            # that cannot be loaded. Xen delivers the failsafe callback.
            frame_gpa = self.area.gpa_of(ersp)
            self.t_rip, self.t_cs, self.t_rflags, self.t_rsp, self.t_ss = struct.unpack_from(
                "<5Q", self.mem.buf, frame_gpa)
            self.count("failsafe")
            self.bounce_failsafe()
            self._resume()
            return
        if vec == 1:
            cpu_dr6 = debugregs.take_cpu_dr6(self)
            if cs & 3 == 0 or debugregs.in_hypervisor_range(rip):
                # A guest breakpoint deferred into Hospes' own code (mov %ss before
                # SYSCALL): Xen notes a "#DB in Xen context" and carries on. The
                # stub's iretq resumes the interrupted code as it was.
                self.count("db_in_hospes")
                return
            debugregs.merge_dr6(self, cpu_dr6)
        if cs & 3 == 0:
            raise DomainCrash(
                f"exception {vec} (error {err:#x}) inside the hypervisor trampoline at rip {rip:#x}; "
                f"cr2 {self.sregs.cr2:#x}"
            )
        self.t_rip, self.t_cs, self.t_rflags, self.t_rsp, self.t_ss = rip, cs, rflags, ersp, ss
        self.count(TRAP_KEYS[vec & 255])
        if not emulate.handle_exception(self, vec, err):
            self.bounce_exception(vec, err if vec in abi.ERROR_CODE_VECTORS else None)
        elif rflags & RFLAGS_TF and self.t_rsp == ersp and self.t_rip != rip and vec in (6, 13):
            # An instruction Hospes emulated under TF: the single-step trap the
            # CPU would have raised after it (Xen: pv_inject_DB(DR_STEP)).
            debugregs.merge_dr6(self, debugregs.DR6_DEFAULT | debugregs.DR6_BS)
            self.bounce_exception(1, None)
        self._resume()

    # --- kicks ---------------------------------------------------------------------------

    def kick(self) -> None:
        """Make the vCPU notice new work: wake it if it sleeps, interrupt KVM_RUN if it runs.

        ``immediate_exit`` covers a vCPU between exits (its next KVM_RUN returns
        at once); the signal covers one inside KVM_RUN. The signal's handler is
        never removed (install_kick_handler), so a kick racing with the end of
        the domain is harmless.
        """
        self.run_state.kick()
        with self._thread_lock:  # the thread cannot end, nor its KVM state go away, meanwhile
            ident = self.thread_ident
            if ident is not None and ident != threading.get_ident() and not self._closed:
                self.kvm.immediate_exit = True
                signal.pthread_kill(ident, KICK_SIGNAL)

    def _on_kick(self) -> None:
        self.count("kick")
        if self.run_state.state is not RunState.RUNNING:
            return
        sregs = self.sregs
        ev = self.events
        in_guest = sregs.cs.dpl == 3 and not (ev.exception.injected or ev.exception.pending)
        area = self.area
        if area.syscall_stub_va <= self.regs.rip <= area.syscall_out_va + 2:
            in_guest = False  # in the SYSCALL stub: back in the guest or out through the port at once
        if not in_guest:
            # Inside a stub or the writer: it reaches an exit or the guest shortly;
            # try again then.
            if self.upcall_deliverable() or self.flush_pending:
                self.domain.rekick(self)
            return
        if self.flush_pending or (self.upcall_deliverable() and self.callbacks.get(abi.CALLBACKTYPE_event)):
            regs = self.regs
            self.exit_kind = "intr"
            self.t_rip, self.t_cs, self.t_rflags = regs.rip, sregs.cs.selector, regs.rflags
            self.t_rsp, self.t_ss = regs.rsp, sregs.ss.selector
            self._resume()

    # --- bouncing ------------------------------------------------------------------------

    def bounce_failsafe(self) -> None:
        """Deliver the failsafe callback, with the guest's data selectors in the frame."""
        cb = self.callbacks.get(abi.CALLBACKTYPE_failsafe)
        if cb is None:
            raise DomainCrash(
                f"returning to the guest at {self.t_rip:#x} failed (cs {self.t_cs:#x}, ss {self.t_ss:#x}) "
                "and it has no failsafe callback"
            )
        s = self.sregs
        selectors = (s.ds.selector, s.es.selector, s.fs.selector, s.gs.selector)
        self.bounce(cb[0], None, mask_events=bool(cb[1] & abi.CALLBACKF_mask_events), extra=selectors)

    def bounce(self, target: int, error_code: int | None, mask_events: bool,
               rcx: int | None = None, r11: int | None = None, extra: tuple[int, ...] = ()) -> None:
        """Xen's create_bounce_frame: deliver to ``target`` on the guest kernel stack."""
        if target == 0:
            raise DomainCrash("the guest has no handler registered for this event")
        if not self.kernel_mode:
            self.bases_from_cpu()
            self.kernel_mode = True
            self.bases_dirty = True
            rsp = self.kernel_sp
            cs = self.t_cs
        else:
            rsp = self.t_rsp
            cs = self.t_cs & ~3
        rsp &= ~0xF
        old_mask = self.upcall_mask
        rflags = (self.t_rflags & ~(RFLAGS_IOPL | RFLAGS_IF)) | (0 if old_mask else RFLAGS_IF)
        if self.iopl and VMASST_ARCHITECTURAL_IOPL in self.domain.vm_assist:
            rflags |= self.iopl << 12   # Xen folds the virtual IOPL into the frame under this assist
        frame = [
            self.regs.rcx if rcx is None else rcx,
            self.regs.r11 if r11 is None else r11,
        ]
        frame += extra
        if error_code is not None:
            frame.append(error_code)
        frame += [self.t_rip, cs | (old_mask << 32), rflags, self.t_rsp, self.t_ss]
        rsp -= 8 * len(frame)
        try:
            self.write(rsp, struct.pack(f"<{len(frame)}Q", *frame))   # guest-chosen words: never into a table
        except GuestFault as e:
            raise DomainCrash(f"cannot write a bounce frame to the guest kernel stack: {e}") from e
        if mask_events:
            self.upcall_mask = 1
        self.t_rip = target
        self.t_cs = abi.FLAT_KERNEL_CS
        self.t_ss = abi.FLAT_KERNEL_SS
        self.t_rsp = rsp
        self.t_rflags &= ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM | RFLAGS_AC)

    def bounce_exception(self, vec: int, error_code: int | None, cr2: int | None = None) -> None:
        entry = self.trap_table.get(vec)
        if entry is None or entry[1] == 0:
            raise DomainCrash(
                f"unhandled exception {vec} (error {error_code}) at rip {self.t_rip:#x}"
                + (f", cr2 {cr2:#x}" if cr2 is not None else "")
                + ": the guest registered no handler"
            )
        if cr2 is not None:
            self.mem.write_u64(self.vcpu_info_gpa + VI_CR2, cr2)
        flags, address = entry
        self.bounce(address, error_code, mask_events=bool(flags & 4))

    def bounce_syscall(self) -> None:
        cb = self.callbacks.get(abi.CALLBACKTYPE_syscall)
        if cb is None:
            # Xen injects #UD at the SYSCALL instruction.
            self.t_rip -= 2
            self.bounce_exception(6, None)
            return
        address, flags = cb
        rcx, r11 = self.regs.rcx, self.regs.r11
        self.bounce(address, None, mask_events=bool(flags & abi.CALLBACKF_mask_events), rcx=rcx, r11=r11)
        self.t_rflags &= ~RFLAGS_DF

    def deliver_upcall_if_pending(self) -> None:
        if self.upcall_deliverable():
            cb = self.callbacks.get(abi.CALLBACKTYPE_event)
            if cb is not None:
                self.count("upcall")
                self.bounce(cb[0], None, mask_events=True)

    # --- return to the guest -----------------------------------------------------------

    def _resume(self, args_spent: bool = False) -> None:
        """Set up the next KVM_RUN so the guest continues at the target frame.

        ``args_spent``: a hypercall just returned, so its argument registers are
        free for the writer (see :meth:`_hypercall`)."""
        self.deliver_upcall_if_pending()
        self._resume_to_target(args_spent)

    def _resume_to_target(self, args_spent: bool) -> None:
        want_cr3 = self.kernel_cr3 if self.kernel_mode else self.user_cr3
        if not self.kernel_mode:
            root = want_cr3 >> 12
            if root not in self.user_roots or root not in self.domain.mmu.user_roots:
                # First time user space runs on this L4 here (or since it was validated
                # again): hide the kernel-data pages from it, through this vCPU's writer.
                self.domain.mmu.user_root(root, self.writes)
                self.user_roots.add(root)
        sregs = self.sregs
        dirty_sregs = False
        if self.bases_dirty:
            sregs.gs.base = self.gs_base_kernel if self.kernel_mode else self.gs_base_user
            sregs.fs.base = self.fs_base
            self.bases_dirty = False
            dirty_sregs = True
        rflags = (self.t_rflags & RFLAGS_GUEST_MASK) | RFLAGS_IF | 2
        kernel = self.kernel_mode
        flags = (GP_KERNEL_MODE if kernel else 0) | (GP_CLI_NOOP if emulate.iopl_ok(self) else 0)
        if flags != self.gp_flags:   # the mode or the vIOPL changed: tell the #GP fast path
            self.gp_flags = flags
            self.mem.buf[self.gp_flags_gpa] = flags
        frame = (self.t_rip, self.t_cs, rflags, self.t_rsp, self.t_ss)
        regs = self.regs
        kind = self.exit_kind
        switch = (want_cr3 != self.cpu_cr3 or sregs.cs.selector != self.t_cs
                  or sregs.ss.selector != self.t_ss or kind == "chunk")
        if switch and not (self.writes or self.flush_pending or self.invlpg_va) and kind != "chunk":
            # Only the mode changes (a system call, an iret to user space, a
            # bounce from user mode): load CS, SS and CR3 through sync regs.
            # A CR3 written this way makes KVM drop its cached translations,
            # and no page-table stores are pending, so no in-VM work is needed.
            cs = self.segment_for(self.t_cs)
            ss = self.segment_for(self.t_ss)
            if cs is not None and ss is not None and cs.type & 8 and not ss.type & 8 and ss.type & 2:
                sregs.cs = cs
                sregs.ss = ss
                if want_cr3 != self.cpu_cr3:
                    sregs.cr3 = want_cr3
                    self.cpu_cr3 = want_cr3
                regs.rip = self.t_rip
                regs.rsp = self.t_rsp
                regs.rflags = rflags
                self.count("sregs_switch")
                self.kvm.mark_dirty(regs=True, sregs=True)
                return
        if self.writes or self.flush_pending or self.invlpg_va or switch:
            load_cr3 = 0
            if self.flush_pending or want_cr3 != self.cpu_cr3:
                # No guest instruction runs before the writer's CR3 reload: for
                # anyone waiting on a remote flush, this vCPU is done.
                load_cr3 = want_cr3
                self.flush_pending = False
                self.flush_generation += 1
            invlpg = 0 if load_cr3 else self.invlpg_va
            self.invlpg_va = 0
            if sregs.cs.dpl != 0:
                sregs.cs = RING0_CS
                sregs.ss = RING0_SS
                dirty_sregs = True
            self._enter_writer(frame, load_cr3, invlpg, args_spent)
            self.cpu_cr3 = want_cr3
        elif kind == "exception":
            # The stub continues with add $16,%rsp; iretq over the edited frame.
            gpa = self.area.gpa_of(regs.rsp + 16)
            struct.pack_into("<5Q", self.mem.buf, gpa, *frame)
        else:
            regs.rip = self.t_rip
            regs.rsp = self.t_rsp
            regs.rflags = rflags
        self.kvm.mark_dirty(regs=True, sregs=dirty_sregs)

    def _enter_writer(self, frame: tuple[int, int, int, int, int], cr3: int, invlpg: int,
                      args_spent: bool) -> None:
        """Point the CPU at the in-VM writer with the pending stores and the final frame.

        ``cr3``: the CR3 to load at the end (0: none, so no flush); ``invlpg``: a
        single address to flush (0: none).
        """
        writes = self.writes
        chunk = writes[:L.WRITER_MAX_ENTRIES]
        del writes[:L.WRITER_MAX_ENTRIES]
        if writes:  # more to do: come back out between chunks, flush at the end
            frame = (self.domain.trampoline.chunk_exit_va, abi.HYPERVISOR_CS, 2, self.area.stack_top,
                     abi.HYPERVISOR_DS)
            if cr3:
                self.flush_pending = True
            cr3 = invlpg = 0
        area = self.area
        gpa = area.gpa_of(area.frame_va)
        buf = self.mem.buf
        struct.pack_into("<5QQQQ", buf, gpa, *frame, cr3, invlpg, len(chunk))
        direct = L.DIRECT_VIRT
        if chunk:
            struct.pack_into(f"<{len(chunk)}Q", buf, gpa + 64, *[direct + target for target, _ in chunk])
        tr = self.domain.trampoline
        regs = self.regs
        if len(chunk) == 1 and not cr3 and not invlpg:
            if args_spent:
                regs.rdi = direct + chunk[0][0]
                regs.rip = tr.writer1_rdi_va
            else:
                regs.rip = tr.writer1_va
        else:
            regs.rip = tr.writer_va
        regs.rsp = area.frame_va
        self.count("writer")

    def _apply_start_context(self) -> None:
        """First entry of a vCPU brought up with VCPUOP_initialise (runs on its thread)."""
        ctx = self.start_context
        assert ctx is not None
        self.start_context = None
        k = self.kvm
        fresh = k.get_sregs()
        ctypes.memmove(ctypes.addressof(self.sregs), ctypes.addressof(fresh), ctypes.sizeof(fresh))
        fresh_regs = k.get_regs()
        for name, value in ctx.gprs:
            setattr(fresh_regs, name, value)
        ctypes.memmove(ctypes.addressof(self.regs), ctypes.addressof(fresh_regs), ctypes.sizeof(fresh_regs))
        self.sregs.cr3 = self.kernel_cr3
        self.cpu_cr3 = self.kernel_cr3
        self.t_rip, self.t_cs, self.t_rflags, self.t_rsp, self.t_ss = ctx.frame
        self.bases_dirty = True     # the context's bases, not the ones the CPU last had
        self.dr7_emul = 0
        debugregs.load(self)        # VCPUOP_initialise reset them (on another thread)
        self.exit_kind = "start"
        self._resume()
        self.kvm.mark_dirty(regs=True, sregs=True)

    def segment_for(self, selector: int) -> KvmSegment | None:
        """The segment register state ``selector`` loads, read from this vCPU's GDT.

        None when it cannot be loaded at CPL 3 (null, beyond the table, not
        present, not DPL 3, a system segment): the caller then returns through
        the writer's iretq, whose fault ends in the failsafe callback as on Xen.
        """
        index = selector >> 3
        if selector & 4 or index == 0 or selector & 3 != 3:
            return None
        if index >= abi.FIRST_RESERVED_GDT_ENTRY:
            gpa = self.area.reserved_gdt_gpa + (index - abi.FIRST_RESERVED_GDT_ENTRY) * 8
            if index - abi.FIRST_RESERVED_GDT_ENTRY >= 512:
                return None
        else:
            if index >= self.gdt_ents:
                return None
            gpa = (self.gdt_frames[index // 512] << 12) + (index % 512) * 8
        d = self.mem.read_u64(gpa)
        cached = self._segments.get((selector, d))
        if cached is not None:
            return cached
        if not d & (1 << 47) or (d >> 45) & 3 != 3 or not d & (1 << 44):
            return None
        seg = KvmSegment()
        limit = (d & 0xFFFF) | ((d >> 32) & 0xF0000)
        seg.g = (d >> 55) & 1
        seg.limit = (limit << 12) | 0xFFF if seg.g else limit
        seg.base = ((d >> 16) & 0xFFFFFF) | (((d >> 56) & 0xFF) << 24)
        seg.selector = selector
        seg.type = (d >> 40) & 0xF
        seg.s = 1
        seg.dpl = 3
        seg.present = 1
        seg.avl = (d >> 52) & 1
        seg.l = (d >> 53) & 1
        seg.db = (d >> 54) & 1
        seg.unusable = 0
        if len(self._segments) > 64:
            self._segments.clear()
        self._segments[(selector, d)] = seg
        return seg

    def _correct_clock(self) -> None:
        """Correct Hospes' estimate of the guest TSC (the guest's pvclock record stays as it is)."""
        self.domain.clock.correct(lambda: self.kvm.get_msrs([0x10])[0x10])
        self.next_clock_correct = time.monotonic_ns() + CLOCK_CORRECT_NS

    def request_flush(self) -> None:
        """Flush this vCPU's TLB (a CR3 reload by the writer) before the guest runs again."""
        self.flush_pending = True

    def request_invlpg(self, va: int) -> None:
        """Flush one address before the guest runs again (two or more: a full flush)."""
        if self.invlpg_va and self.invlpg_va != va:
            self.flush_pending = True
        self.invlpg_va = va or self.invlpg_va

    def load_gdt(self, frames: list[int], entries: int) -> None:
        """Map the guest's GDT frames into this vCPU's window (pages 0-13)."""
        tr = self.domain.trampoline
        flags = 0x63 | (1 << 63)  # P|RW|A|D, NX; supervisor-only like the rest of the window
        q = self.mem.q
        for i in range(14):
            entry_gpa = self.area.gdt_pte_gpa + i * 8
            entry = ((frames[i] << 12) if i < len(frames) else tr.zero_page) | flags
            q[entry_gpa >> 3] = entry   # the writer only writes back what memory holds
            self.writes.append((entry_gpa, entry))
        self.gdt_frames = list(frames)
        self.gdt_ents = entries
        self.request_flush()

    def close(self) -> None:
        """Release the KVM vCPU; later kicks only wake sleepers."""
        with self._thread_lock:
            self._closed = True
            self.kvm.close()

    # --- saved state ---------------------------------------------------------------------

    def save(self) -> PvVcpuState:
        """This vCPU's state; its thread must be parked or not started (see vcpu_state)."""
        if self.thread_ident is not None and not self.run_state.parked:
            raise StateError(f"vCPU {self.id} is running; pause the domain before saving it.")
        ctx = self.start_context
        self.bases_from_cpu()
        return PvVcpuState(
            vcpu_id=self.id, online=self.online, initialised=self.initialised,
            kernel_mode=self.kernel_mode, kernel_cr3=self.kernel_cr3, user_cr3=self.user_cr3,
            cpu_cr3=self.cpu_cr3, gs_base_kernel=self.gs_base_kernel, gs_base_user=self.gs_base_user,
            fs_base=self.fs_base, gs_sel=self.gs_sel,
            trap_table=tuple(sorted((v, f, a) for v, (f, a) in self.trap_table.items())),
            callbacks=tuple(sorted((t, a, f) for t, (a, f) in self.callbacks.items())),
            kernel_ss=self.kernel_ss, kernel_sp=self.kernel_sp, iopl=self.iopl, cr0_ts=self.cr0_ts,
            cr4=self.cr4, debugreg=tuple(self.debugreg), vcpu_info_gpa=self.vcpu_info_gpa,
            vcpu_info_registered=self.vcpu_info_registered, runstate_va=self.runstate_va,
            time_area_va=self.time_area_va, mcg_status=self.mcg_status, dr7_emul=self.dr7_emul,
            gdt_frames=tuple(self.gdt_frames), gdt_ents=self.gdt_ents, ldt_base=self.ldt_base,
            ldt_ents=self.ldt_ents, writes=tuple(self.writes), flush_pending=self.flush_pending,
            invlpg_va=self.invlpg_va,
            start_context=ctx,
            cpu=capture_cpu(self.kvm),
        )

    @classmethod
    def restore(cls, state: PvVcpuState, *, domain: "PvDomain", kvm_vcpu: "Vcpu", area: VcpuArea,
                cpuid_entries: list[KvmCpuidEntry2]) -> "PvVcpu":
        """A vCPU in the saved state, ready for its thread (construction with a state)."""
        check_version(state, f"vCPU {state.vcpu_id}")
        if state.start_context is not None:
            check_version(state.start_context, f"start context of vCPU {state.vcpu_id}")
        if len(state.debugreg) != 8:
            raise StateError(f"The saved vCPU {state.vcpu_id} has {len(state.debugreg)} debug registers, not 8.")
        limit = domain.layout.guest_frames << 12
        if not 0 <= state.vcpu_info_gpa <= limit - 64 or any(not 0 <= g < limit for g, _ in state.writes):
            raise StateError(f"The saved vCPU {state.vcpu_id} points outside the domain's memory.")
        pv = cls(domain, state.vcpu_id, kvm_vcpu, area)
        for name in ("initialised", "kernel_mode", "kernel_cr3", "user_cr3", "gs_base_kernel", "gs_base_user",
                     "fs_base", "gs_sel", "kernel_ss", "kernel_sp", "iopl", "cr0_ts", "cr4", "vcpu_info_gpa",
                     "vcpu_info_registered", "runstate_va", "time_area_va", "gdt_ents", "ldt_base", "ldt_ents",
                     "flush_pending", "invlpg_va", "mcg_status", "dr7_emul"):
            setattr(pv, name, getattr(state, name))
        if pv.vcpu_info_registered:
            # The page's writable reference is Hospes' own, so not in the MMU
            # record: taken again here (StateError if the page cannot be written).
            if state.vcpu_info_gpa >= domain.layout.ram_pages << 12:
                raise StateError(f"The saved vCPU {state.vcpu_id} has its vcpu_info outside the guest's RAM.")
            try:
                domain.mmu.hold_writable((state.vcpu_info_gpa >> 12,))
            except XenError as e:
                raise StateError(f"The saved vCPU {state.vcpu_id}'s vcpu_info page cannot be written: {e}") from None
            pv.mem.hold(pv.vcpu_info_gpa, 64)
        pv.trap_table = {v: (f, a) for v, f, a in state.trap_table}
        pv.callbacks = {t: (a, f) for t, a, f in state.callbacks}
        pv.debugreg = list(state.debugreg)
        pv.gdt_frames = list(state.gdt_frames)
        pv.writes = list(state.writes)
        pv.start_context = state.start_context
        pv.setup_cpu(cpuid_entries)
        load_cpu(kvm_vcpu, state.cpu)
        # LSTAR names this vCPU's own stub (the saved value may be another layout's).
        kvm_vcpu.set_msrs({0xC0000082: area.syscall_stub_va, 0xC0000083: area.syscall_stub_va})
        pv.cpu_cr3 = state.cpu_cr3
        pv.run_state.restore_online(state.online)
        return pv

    # --- diagnostics -------------------------------------------------------------------------

    def register_dump(self) -> str:
        r = self.regs
        s = self.sregs
        names = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
                 "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags"]
        lines = []
        row = []
        for n in names:
            row.append(f"{n:>6}={getattr(r, n):016x}")
            if len(row) == 3:
                lines.append(" ".join(row))
                row = []
        if row:
            lines.append(" ".join(row))
        lines.append(
            f"    cs={s.cs.selector:04x} ss={s.ss.selector:04x} cr2={s.cr2:016x} cr3={s.cr3:016x} "
            f"mode={'kernel' if self.kernel_mode else 'user'} target_rip={self.t_rip:016x}"
        )
        return "\n".join(lines)



__all__ = ["HYPERCALL_SLICE_NS", "KICK_SIGNAL", "Continuation", "PvVcpu", "DomainCrash", "NO_RETURN", "PAGE_SIZE",
           "install_kick_handler", "internal_error_message", "raised_at"]
