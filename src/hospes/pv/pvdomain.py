"""The PV domain: what Xen's ``struct domain`` holds for a PV guest, and the
services its hypercalls call.

A hypercall handler reaches everything it may touch through
``vcpu.domain``, a :class:`PvDomain`: the MMU, event channels, time, the
vCPUs, and the scheduling services (block, poll, yield, kicks, cross-vCPU TLB
flushes, vCPU bring-up). What lies above the PV layer — the console and block
and network backends, the xenstore's owner, the domain's lifecycle — is
reached only through :class:`PvHooks`, three callbacks the assembler
(``hospes.domain``) passes in: the PV layer never imports it.

Construction order (``hospes.domain.Domain`` does this)::

    PvDomain(mem, layout, trampoline, vm, cpuid, identity, hooks)
      -> evtchn.alloc_backend_port(...)* -> builder -> boot(...) -> start() -> ... -> stop() -> join() -> close()

or, restoring, PvDomain(..., saved=state, backends=...) -> start() -> ...
"""

from __future__ import annotations

import struct
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from hospes.errors import HospesError
from hospes.kvm import Vm
from hospes.machine.memory import PAGE_SIZE, GuestMemory
from hospes.pv import abi
from hospes.pv import layout as L
from hospes.pv.cpuid import CpuidPolicy
from hospes.pv.errors import Errno, XenError
from hospes.pv.evtchn import BackendEndpoint, EventChannels, EventChannelState
from hospes.pv.grant import GrantTable, GrantTableState
from hospes.pv.m2p import M2PState, MachToPhys
from hospes.pv.guestvirt import GuestVirt
from hospes.pv.hypercalls import build_table
from hospes.pv.mmu import MmuState, PvMmu
from hospes.pv.msr import MsrEmulator
from hospes.pv.reservation import Reservation, ReservationState
from hospes.pv.runstate import RunEvent, RunState
from hospes.pv.console_log import ConsoleIoLog
from hospes.pv.smp import CONTEXT_SIZE, load_guest_context
from hospes.pv.time import Clock, ClockState, Timers, TimersState, synchronise_tsc
from hospes.pv.trampoline import Trampoline
from hospes.pv.vcpu import VI_TIME, PvVcpu, internal_error_message
from hospes.pv.vcpu_state import PvVcpuState
from hospes.state import StateError, check_version

SHARED_INFO_WALLCLOCK = 0xC00
REKICK_NS = 200_000  # a kick that found the vCPU inside a stub or the writer is retried this much later

# KVM's counters worth a line in --stats: all its exits (in-kernel ones too),
# the CPL-0 instructions it emulated (stubs, writer), shadow page faults it
# fixed, and the TLB flushes (CR3 loads) it did.
KVM_COUNTERS = ("exits", "insn_emulation", "pf_fixed", "pf_guest", "tlb_flush")


@dataclass(frozen=True)
class PvHooks:
    """What the PV layer asks of the domain that assembled it.

    ``console_io``: one line a guest wrote with HYPERVISOR_console_io, already
    ``(d<domid>) ``-prefixed: it belongs in the hypervisor's log, not on the
    domain's console (pv/console_log.py).
    ``shutdown``: SCHEDOP_shutdown with its reason code.
    ``crash``: the domain must end; the text says why (with a register dump).
    ``internal_error``: an unexpected exception on one of the domain's threads
    (a Hospes bug), with what failed; the domain must end. None: a crash with
    the message :meth:`PvDomain.internal_error` builds.
    """

    console_io: Callable[[bytes], None]
    shutdown: Callable[[int], None]
    crash: Callable[[str], None]
    internal_error: Callable[[str, BaseException], None] | None = None


@dataclass(frozen=True)
class DomainIdentity:
    domid: int
    uuid: uuidlib.UUID
    cmdline: str


@dataclass(frozen=True)
class PvDomainState:
    """Everything a PV domain holds beyond guest memory (and its backends)."""

    VERSION: ClassVar[int] = 1
    domid: int
    vcpus: tuple[PvVcpuState, ...]
    mmu: MmuState
    evtchn: EventChannelState
    clock: ClockState
    timers: TimersState
    vm_assist: tuple[int, ...]
    grants: GrantTableState
    shutdown_code: int | None
    # Ballooned-out frames; absent in saves made before ballooning (none released).
    reservation: ReservationState = ReservationState()
    # The guest's changes to its M2P; absent in saves made before they were kept (none).
    m2p: M2PState = M2PState()
    version: int = VERSION


def page_types(mem: GuestMemory, layout: L.Layout, trampoline: Trampoline, saved: MmuState | None = None) -> PvMmu:
    """The domain's MMU (page types and references), new or restored.

    A restore builds it before the backends, whose rings take their
    references again as they are restored (see :class:`~hospes.pv.mmu.MmuState`).
    """
    if saved is None:
        mmu = PvMmu(mem, layout.ram_pages, layout.guest_frames, trampoline.l4_entries)
    else:
        mmu = PvMmu.restore(saved, mem=mem, ram_pages=layout.ram_pages, guest_frames=layout.guest_frames,
                            hv_l4_entries=trampoline.l4_entries)
    mmu.kdata_user_entry = trampoline.kdata_user_l4e
    return mmu


def grant_table(mem: GuestMemory, layout: L.Layout, types: PvMmu,
                saved: GrantTableState | None = None) -> GrantTable:
    """The domain's grant table in the frames ``layout`` reserves for it, new or restored;
    ``types`` keeps the references backends take on granted frames."""
    if saved is None:
        return GrantTable(mem, base_gpa=layout.grant_frame_gpa(0), max_frames=L.MAX_GRANT_FRAMES,
                          ram_frames=layout.ram_pages, types=types)
    return GrantTable.restore(saved, mem=mem, base_gpa=layout.grant_frame_gpa(0), max_frames=L.MAX_GRANT_FRAMES,
                              ram_frames=layout.ram_pages, types=types)


class _EventPages:
    """The guest frames of FIFO event channels (control blocks, event array), for
    :class:`~hospes.pv.evtchn_fifo.EventPages`: held writable as Xen's map_guest_page
    holds them, and kept in every final copy of a migration (Hospes writes them)."""

    def __init__(self, mem: GuestMemory, mmu: PvMmu, ram_pages: int) -> None:
        self._mem, self._mmu, self._ram_pages = mem, mmu, ram_pages

    def map(self, gfn: int) -> int:
        with self._mmu.lock:   # a balloon release cannot come between the check and the hold
            if not 0 <= gfn < self._ram_pages or gfn in self._mmu.released:
                raise XenError(Errno.EINVAL, f"frame {gfn:#x} is not RAM the domain holds")
            self._mmu.hold_writable((gfn,))
        self._mem.hold(gfn << 12)
        return self._mem.addr(gfn << 12, PAGE_SIZE)

    def unmap(self, gfn: int) -> None:
        self._mmu.release_writable((gfn,))


class _PollWaiter:
    """What event channels wake when a polled port becomes pending."""

    def __init__(self, vcpu: PvVcpu) -> None:
        self.vcpu = vcpu

    def set(self) -> None:
        self.vcpu.run_state.kick()


class PvDomain:
    """One PV domain's hypervisor-side state and services."""

    def __init__(self, mem: GuestMemory, layout: L.Layout, trampoline: Trampoline, vm: Vm,
                 cpuid: CpuidPolicy, identity: DomainIdentity, hooks: PvHooks,
                 saved: PvDomainState | None = None,
                 backends: Mapping[int, BackendEndpoint] | None = None,
                 grants: GrantTable | None = None) -> None:
        """A new domain, or with ``saved`` the domain :meth:`save` described
        (its guest memory already restored); ``backends`` then maps each saved
        port connected to an in-process backend to that backend, live, and
        ``grants`` may be the grant table already restored from ``saved.grants``
        with :func:`grant_table` over the MMU :func:`page_types` restored from
        ``saved.mmu`` (backends restored before the domain need both); the
        domain then uses that MMU."""
        self.mem = mem
        self.layout = layout
        self.trampoline = trampoline
        self.cpuid = cpuid
        self.domid = identity.domid
        self.uuid = identity.uuid
        self.cmdline = identity.cmdline
        self.hooks = hooks
        self._console_io_log = ConsoleIoLog(identity.domid)
        self.virt = GuestVirt(mem, layout.guest_frames)
        self.msrs = MsrEmulator()
        self.hypercall_table = build_table()
        if saved is None:
            self.mmu = page_types(mem, layout, trampoline)
            self.grants = grant_table(mem, layout, self.mmu)
            self.vm_assist: set[int] = set()
            self.shutdown_code: int | None = None
        else:
            check_version(saved, "PV domain")
            if saved.domid != self.domid or len(saved.vcpus) != layout.nr_vcpus:
                raise StateError(
                    f"The saved PV domain is domain {saved.domid} with {len(saved.vcpus)} vCPUs; it cannot "
                    f"become domain {self.domid} with {layout.nr_vcpus}. Restore it with its own configuration.")
            if grants is not None:
                self.mmu, self.grants = grants.types, grants
            else:
                self.mmu = page_types(mem, layout, trampoline, saved.mmu)
                self.grants = grant_table(mem, layout, self.mmu, saved.grants)
            self.vm_assist = set(saved.vm_assist)
            self.shutdown_code = saved.shutdown_code
        self.reservation = Reservation(mem, self.mmu, layout.ram_pages)
        self.m2p = MachToPhys(mem, trampoline.m2p_gpa, layout.ram_pages, layout.guest_frames)
        self.m2p.fill()
        if saved is not None:
            self.reservation.restore_released(saved.reservation)
            self.m2p.restore(saved.m2p)
        self.stopping = False   # no vCPU enters the guest again
        self.paused = False

        self.mmu.flush_all = self.flush_all_vcpus
        self.mmu.translation_cache = self.virt.cache

        self.vcpus: list[PvVcpu] = []
        shared_info_addr = mem.addr(layout.shared_info_gpa, PAGE_SIZE)

        def vcpu_info_addr(v: int) -> int:
            return mem.host_addr + self.vcpus[v].vcpu_info_gpa

        def kick(v: int) -> None:
            self.vcpus[v].kick()

        event_pages = _EventPages(mem, self.mmu, layout.ram_pages)
        if saved is None:
            self.evtchn = EventChannels(shared_info_addr, layout.nr_vcpus, vcpu_info_addr, kick, self.domid,
                                        event_pages)
            shared = mem.view(layout.shared_info_gpa, PAGE_SIZE)
            for v in range(abi.XEN_LEGACY_MAX_VCPUS):
                shared[64 * v + 1] = 1  # evtchn_upcall_mask: no upcalls before the guest asks
            for v in range(layout.nr_vcpus):
                self.vcpus.append(PvVcpu(self, v, vm.create_vcpu(v), trampoline.vcpus[v]))
        else:
            self.evtchn = EventChannels.restore(
                saved.evtchn, shared_info_addr=shared_info_addr, nr_vcpus=layout.nr_vcpus,
                vcpu_info_addr=vcpu_info_addr, kick=kick, domid=self.domid, backends=backends or {},
                pages=event_pages)
            entries = cpuid.kvm_entries()
            for v, vstate in enumerate(saved.vcpus):
                if vstate.vcpu_id != v:
                    raise StateError(f"The saved PV domain lists vCPU {vstate.vcpu_id} in place {v}.")
                self.vcpus.append(PvVcpu.restore(vstate, domain=self, kvm_vcpu=vm.create_vcpu(v),
                                                 area=trampoline.vcpus[v], cpuid_entries=entries))
        synchronise_tsc([pv.kvm for pv in self.vcpus])
        bsp = self.vcpus[0]
        tsc_khz = bsp.kvm.get_tsc_khz()
        read_tsc = lambda: bsp.kvm.get_msrs([0x10])[0x10]  # noqa: E731
        if saved is None:
            self.clock = Clock(tsc_khz, read_tsc)
            self.timers = Timers(self.clock, layout.nr_vcpus, self._timer_fired)
        else:
            self.clock = Clock.restore(saved.clock, tsc_khz=tsc_khz, read_tsc=read_tsc)
            self.timers = Timers.restore(saved.timers, clock=self.clock, nr_vcpus=layout.nr_vcpus,
                                         fire=self._timer_fired)
            self._publish_time()   # the restored clock's record starts at this host's TSC
        self.timers.on_error = self._timer_thread_failed

    # --- saved state ------------------------------------------------------------------

    def save(self) -> PvDomainState:
        """The PV domain's state beyond guest memory; every vCPU must be parked (paused)."""
        return PvDomainState(
            domid=self.domid, vcpus=tuple(pv.save() for pv in self.vcpus), mmu=self.mmu.save(),
            evtchn=self.evtchn.save(), clock=self.clock.save(), timers=self.timers.save(),
            vm_assist=tuple(sorted(self.vm_assist)), grants=self.grants.save(),
            shutdown_code=self.shutdown_code, reservation=self.reservation.save(), m2p=self.m2p.save(),
        )

    # --- start of day ------------------------------------------------------------

    def boot(self, l4_gpa: int, entry: int, stack_top: int, start_info_va: int) -> None:
        """Type the builder's page tables and point the boot vCPU at the kernel entry."""
        # The builder pins its L4 (as libxc does) and the boot vCPU's CR3 holds
        # it: validating it types every bootstrap table. Its fix-ups were
        # already in memory before the first entry, so no writer run is needed.
        boot_writes: list[tuple[int, int]] = []
        self.mmu.pin_boot_l4(l4_gpa >> 12, boot_writes)
        bsp = self.vcpus[0]
        bsp.kernel_cr3 = l4_gpa
        bsp.kernel_sp = stack_top
        entries = self.cpuid.kvm_entries()
        for pv in self.vcpus:
            pv.setup_cpu(entries)
        bsp.set_entry_state(entry, stack_top, start_info_va)
        bsp.initialised = True
        bsp.run_state.fire(RunEvent.UP)
        self._publish_time()

    def _publish_time(self) -> None:
        """The clock's record in every vCPU's vcpu_info and time area, and the wallclock
        in shared_info: at boot, and after a restore (whose clock has a new record)."""
        lay = self.layout
        for pv in self.vcpus:
            for gpa in {pv.vcpu_info_gpa, lay.shared_info_gpa + 64 * pv.id}:
                self.clock.publish(self.mem.buf, gpa + VI_TIME)
            self.write_time_area(pv)
        sec, nsec = self.clock.wallclock()
        base = lay.shared_info_gpa + SHARED_INFO_WALLCLOCK
        self.mem.write_u32(base, 1)  # odd: update in progress (the version protocol of pvclock)
        self.mem.write(base + 4, struct.pack("<II", sec & 0xFFFFFFFF, nsec))
        self.mem.write_u32(base + 12, sec >> 32)
        self.mem.write_u32(base, 2)

    # --- running -------------------------------------------------------------------

    def start(self) -> None:
        """Start the timer thread and one thread per vCPU."""
        self.timers.start()
        for pv in self.vcpus:
            t = threading.Thread(target=pv.loop, name=f"vcpu{pv.id}", daemon=True)
            pv.thread = t
            t.start()

    def stop(self) -> None:
        """Every vCPU leaves the guest and its thread ends (safe from any thread, repeatable)."""
        self.stopping = True
        for pv in self.vcpus:
            pv.run_state.fire(RunEvent.STOP)
            pv.kick()

    def join(self, timeout: float = 2.0) -> None:
        """Wait for the vCPU threads (after :meth:`stop`), then stop the timers."""
        me = threading.current_thread()
        for pv in self.vcpus:
            if pv.thread is not None and pv.thread is not me:
                pv.thread.join(timeout)
        self.timers.stop()

    def pause(self) -> None:
        """No vCPU runs guest code until unpause(); timers keep counting."""
        self.paused = True
        for pv in self.vcpus:
            pv.run_state.fire(RunEvent.PAUSE)
            pv.kick()

    def quiesce(self, timeout: float = 5.0) -> None:
        """Pause, and wait until every vCPU thread sleeps between exits (for :meth:`save`).

        A vCPU asleep in SCHEDOP_block or SCHEDOP_poll is woken by the pause
        and parks once it has left the hypercall.
        """
        self.pause()
        deadline = time.monotonic() + timeout
        for pv in self.vcpus:
            if pv.thread_ident is not None and not pv.run_state.wait_parked(deadline - time.monotonic()):
                raise StateError(f"vCPU {pv.id} did not stop within {timeout:.0f} s; the domain cannot be saved now.")

    def unpause(self) -> None:
        self.paused = False
        for pv in self.vcpus:
            pv.run_state.fire(RunEvent.UNPAUSE)

    def crash(self, vcpu: PvVcpu, message: str) -> None:
        self.hooks.crash(f"vCPU {vcpu.id}: {message}\n{vcpu.register_dump()}")

    def close(self) -> None:
        """Release the vCPUs' KVM state (after :meth:`join`)."""
        for pv in self.vcpus:
            pv.close()

    def stats(self) -> dict[str, int]:
        """Exit counts by kind, summed over the vCPUs, (as ``kvm:NAME``) those of
        KVM's own counters that say what the exits Hospes never sees cost, and (as
        ``cpu:..._ms``) where the vCPU threads' time went: guest mode, the host
        kernel (KVM), Hospes' Python (:mod:`hospes.cputime`)."""
        total: dict[str, int] = {}
        for pv in self.vcpus:
            for k, n in pv.stats.items():
                total[k] = total.get(k, 0) + n
            for k in KVM_COUNTERS:
                if k in pv.kvm_counters:
                    total["kvm:" + k] = total.get("kvm:" + k, 0) + pv.kvm_counters[k]
            if pv.cpu is not None:
                for k, ms in pv.cpu.as_stats().items():
                    total[k] = total.get(k, 0) + ms
        return total

    # --- time -------------------------------------------------------------------------

    def internal_error(self, what: str, e: BaseException) -> None:
        """An unexpected exception on one of this domain's threads (a Hospes bug):
        the domain ends, never the thread alone (a vCPU, timer or device left
        half alive). The one path every thread's failure takes."""
        if self.hooks.internal_error is not None:
            self.hooks.internal_error(what, e)
        else:
            self.hooks.crash(internal_error_message(what, e, self.vcpus))

    def _timer_thread_failed(self, e: Exception) -> None:
        self.internal_error("timer thread", e)

    def _timer_fired(self, v: int) -> None:
        self.evtchn.raise_virq(abi.VIRQ_TIMER, v)
        self.vcpus[v].kick()

    # --- scheduling ---------------------------------------------------------------------

    def block(self, vcpu: PvVcpu) -> None:
        """SCHEDOP_block (and hlt): sleep until an upcall is deliverable."""
        vcpu.run_state.block(vcpu.upcall_deliverable)

    def poll(self, vcpu: PvVcpu, ports: Sequence[int], timeout: int) -> None:
        """SCHEDOP_poll: sleep until a listed port is pending (even masked), an
        upcall is deliverable, or the absolute guest-time ``timeout`` passes."""
        waiter = _PollWaiter(vcpu)
        self.evtchn.register_poller(waiter, ports)
        try:
            vcpu.run_state.block(lambda: self.evtchn.poll_ready(vcpu.id, ports),  # upcalls included
                                 deadline_ns=timeout, now_ns=self.clock.now)
        finally:
            self.evtchn.unregister_poller(waiter)

    def yield_(self, vcpu: PvVcpu) -> None:
        """SCHEDOP_yield: let the host run someone else."""
        time.sleep(0)

    def rekick(self, vcpu: PvVcpu) -> None:
        """Kick ``vcpu`` again shortly: it was inside a stub or the writer, which
        reach the guest or an exit within microseconds."""
        self.timers.call_later(REKICK_NS, vcpu.kick)

    def flush_all_vcpus(self) -> None:
        """Every vCPU flushes its TLB before running guest code again (see flush_others)."""
        current = threading.get_ident()
        me = next((pv for pv in self.vcpus if pv.thread_ident == current), self.vcpus[0])
        self.flush_others(me)

    def flush_others(self, vcpu: PvVcpu) -> None:
        """Flush every vCPU's TLB before returning (Xen's *_MULTI/ALL semantics).

        A vCPU outside KVM_RUN flushes before it next runs guest code; a running
        one is kicked, and we wait until it has scheduled its flush.
        """
        vcpu.request_flush()
        waits = []
        for other in self.vcpus:
            if other is vcpu or not other.online:
                continue
            gen = other.flush_generation
            other.flush_pending = True
            # Kick even a vCPU between exits: immediate_exit makes its next
            # KVM_RUN return at once, so it cannot enter the guest unflushed.
            other.kick()
            if other.in_kvm_run:
                waits.append((other, gen))
        deadline = time.monotonic() + 1.0
        for other, gen in waits:
            while other.flush_generation == gen and other.in_kvm_run and other.online and not self.stopping:
                if time.monotonic() > deadline:
                    other.kick()
                    deadline = time.monotonic() + 1.0
                time.sleep(0)

    # --- vCPU state -------------------------------------------------------------------------

    def descriptor_base(self, vcpu: PvVcpu, selector: int) -> int:
        """Base of the segment a user selector names (0 for null or unusable ones)."""
        seg = vcpu.segment_for(selector | 3)
        return int(seg.base) if seg is not None else 0

    def runstate_bytes(self, vcpu: PvVcpu) -> bytes:
        """A vcpu_runstate_info: always running, entered at the current system time."""
        now = self.clock.now()
        return struct.pack("<iIQQQQQ", 0, 0, now, now, 0, 0, 0)

    def write_runstate(self, vcpu: PvVcpu) -> None:
        if vcpu.runstate_va:
            try:
                vcpu.write(vcpu.runstate_va, self.runstate_bytes(vcpu))
            except HospesError:
                pass  # Xen ignores a runstate area it cannot reach

    def write_time_area(self, vcpu: PvVcpu) -> None:
        """Copy the clock's record to ``vcpu``'s registered time area, under the version
        protocol, through its kernel page tables as Xen does; an area the guest no
        longer maps is skipped, as Xen skips it."""
        va = vcpu.time_area_va
        if not va:
            return
        try:
            version = ((int.from_bytes(vcpu.read(va, 4), "little") + 1) | 1) & 0xFFFFFFFF   # a u32: wraps
            vcpu.write(va, version.to_bytes(4, "little"))
            vcpu.write(va + 4, self.clock.record(version)[4:])
            vcpu.write(va, ((version + 1) & 0xFFFFFFFF).to_bytes(4, "little"))
        except HospesError:
            pass

    def move_vcpu_info(self, vcpu: PvVcpu, gpa: int) -> None:
        """VCPUOP_register_vcpu_info: event and time updates go to ``gpa`` (a RAM
        page) from now on. The page holds a writable type reference while it is
        registered, as Xen's map_vcpu_info takes one: -EINVAL if it is a page
        table or descriptor page."""
        self.mmu.hold_writable((gpa >> 12,))
        if vcpu.vcpu_info_registered:
            self.mmu.release_writable((vcpu.vcpu_info_gpa >> 12,))
        old = self.mem.read(vcpu.vcpu_info_gpa, 64)
        self.mem.write(gpa, old)
        vcpu.vcpu_info_gpa = gpa
        vcpu.vcpu_info_registered = True
        self.mem.hold(gpa, 64)

    def initialise_vcpu(self, target: PvVcpu, arg: int, caller: PvVcpu) -> int:
        """VCPUOP_initialise: load a vcpu_guest_context (pv-abi.md §12.2)."""
        if target.initialised:
            return -Errno.EEXIST
        return load_guest_context(self.mmu, self.layout.ram_pages, target, caller.read(arg, CONTEXT_SIZE))

    def start_vcpu(self, target: PvVcpu) -> None:
        target.run_state.fire(RunEvent.UP)
        self.write_runstate(target)

    def stop_vcpu(self, target: PvVcpu) -> None:
        """VCPUOP_down. The vCPU keeps its context (VCPUOP_up alone brings it back);
        the last vCPU going down powers the domain off instead, as in Xen."""
        if not any(pv.online for pv in self.vcpus if pv is not target):
            self.shutdown(abi.SHUTDOWN_poweroff)
            return
        target.run_state.fire(RunEvent.DOWN)
        if target.thread_ident != threading.get_ident():
            target.kick()

    # --- console and shutdown -------------------------------------------------------------

    def console_write(self, data: bytes) -> None:
        for line in self._console_io_log.feed(data):
            self.hooks.console_io(line)

    def shutdown(self, reason: int) -> None:
        """SCHEDOP_shutdown: a code set earlier with SCHEDOP_shutdown_code wins, as in Xen."""
        self.hooks.shutdown(self.shutdown_code if self.shutdown_code is not None else reason)

    # --- I/O ---------------------------------------------------------------------------------

    def port_read(self, port: int, size: int) -> int:
        """An empty I/O bus reads all-ones, except the PIT counters.

        Linux's quick PIT calibration spins while the counter's MSB reads
        0xff (up to 100,000 reads, ~10 s at this host's trap cost); a stopped
        counter reading 0 ends it at once. The TSC rate comes from pvclock.
        """
        if 0x40 <= port <= 0x42:
            return 0
        return (1 << (8 * size)) - 1


__all__ = ["DomainIdentity", "PvDomain", "PvDomainState", "PvHooks", "RunState", "grant_table", "page_types"]
