"""A Domain: one KVM VM, its PV state and its in-process backends.

Lifecycle: ``Domain(config)`` builds everything (memory, trampoline, kernel,
start_info, xenstore, console) -> ``run()`` starts the vCPU threads and serves
the console until the guest shuts down or crashes -> ``close()``.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Callable, Sequence

from hospes.devices.block import BlockBackend, DiskConfig
from hospes.devices.console import ConsoleBackend
from hospes.devices.host import BackendHost
from hospes.devices.net import NetBackend, VifConfig
from hospes.errors import HospesError
from hospes.kvm import Kvm
from hospes.machine.memory import PAGE_SIZE, GuestMemory
from hospes.pv import abi
from hospes.pv import layout as L
from hospes.pv.builder import build_domain, hypercall_page_bytes
from hospes.pv.cpuid import CpuidPolicy
from hospes.pv.errors import Errno
from hospes.pv.evtchn import EventChannels
from hospes.pv.grant import GrantTable
from hospes.pv.guestvirt import GuestVirt
from hospes.pv.hypercalls import build_table
from hospes.pv.image.kernel import load_pv_kernel
from hospes.pv.mmu import PvMmu
from hospes.pv.msr import MsrEmulator
from hospes.pv.store import Store
from hospes.pv.store.connection import RingConnection
from hospes.pv.time import Clock, Timers
from hospes.pv.trampoline import Trampoline
from hospes.pv.smp import CONTEXT_SIZE
from hospes.pv.vcpu import PvVcpu

MIN_MEMORY_MIB = 16
MAX_MEMORY_MIB = 64 * 1024
MAX_VCPUS = 32  # vcpu_info slots in shared_info (XEN_LEGACY_MAX_VCPUS)


class DomainError(HospesError):
    """The domain could not be created or run."""


@dataclass
class DomainConfig:
    kernel: Path
    ramdisk: Path | None = None
    cmdline: str = ""
    memory_mib: int = 256
    vcpus: int = 1
    name: str = "guest"
    domid: int = 1
    disks: tuple[DiskConfig, ...] = ()
    vifs: tuple[VifConfig, ...] = ()
    uuid: str | None = None


class ShutdownReason(StrEnum):
    """Why a domain stopped: Xen's SHUTDOWN_* codes (sched.h), plus destroyed by the toolstack."""

    POWEROFF = "poweroff"
    REBOOT = "reboot"
    SUSPEND = "suspend"
    CRASH = "crash"
    WATCHDOG = "watchdog"
    SOFT_RESET = "soft_reset"
    DESTROYED = "destroyed"

    @classmethod
    def from_code(cls, code: int) -> "ShutdownReason":
        """The reason for a guest's SCHEDOP_shutdown code; an unknown code is a crash."""
        return _SHUTDOWN_CODES.get(code, cls.CRASH)


_SHUTDOWN_CODES = {0: ShutdownReason.POWEROFF, 1: ShutdownReason.REBOOT, 2: ShutdownReason.SUSPEND,
                   3: ShutdownReason.CRASH, 4: ShutdownReason.WATCHDOG, 5: ShutdownReason.SOFT_RESET}


@dataclass
class ShutdownResult:
    reason: ShutdownReason
    message: str = ""
    stats: dict[str, int] = field(default_factory=dict)


class _PollWaiter:
    """What event channels wake when a polled port becomes pending."""

    def __init__(self, vcpu: PvVcpu) -> None:
        self.vcpu = vcpu

    def set(self) -> None:
        with self.vcpu.wake:
            self.vcpu.wake.notify_all()


class _Backend:
    def __init__(self, fn: Callable[[], None]) -> None:
        self.notify = fn


class Domain:
    """A running PV domain inside this process."""

    kick_signal = signal.SIGUSR1

    def __init__(self, config: DomainConfig, console_out: Callable[[bytes], None] | None = None) -> None:
        if not MIN_MEMORY_MIB <= config.memory_mib <= MAX_MEMORY_MIB:
            raise DomainError(
                f"Memory size {config.memory_mib} MiB is out of range: give between {MIN_MEMORY_MIB} and "
                f"{MAX_MEMORY_MIB} MiB."
            )
        if not 1 <= config.vcpus <= MAX_VCPUS:
            raise DomainError(f"A domain has between 1 and {MAX_VCPUS} vCPUs; {config.vcpus} were asked for.")
        self.config = config
        self.domid = config.domid
        self.uuid = uuidlib.UUID(config.uuid) if config.uuid else uuidlib.uuid4()
        self.cmdline = config.cmdline
        self.console_out = console_out or (lambda b: (sys.stdout.buffer.write(b), sys.stdout.buffer.flush()))
        kernel = load_pv_kernel(config.kernel)
        initrd = None
        if config.ramdisk is not None:
            try:
                initrd = Path(config.ramdisk).read_bytes()
            except OSError as e:
                raise DomainError(f"Cannot read the ramdisk {config.ramdisk}: {e.strerror}; check the path.") from e
        self.layout = L.Layout(ram_pages=config.memory_mib * 256, nr_vcpus=config.vcpus)
        lay = self.layout
        self.mem = GuestMemory([
            ("ram", lay.ram_bytes), ("xen", L.XEN_FRAMES * PAGE_SIZE), ("hv", lay.hv_pages * PAGE_SIZE)
        ])
        self.trampoline = Trampoline(self.mem, lay)
        self.virt = GuestVirt(self.mem, lay.guest_frames)
        self.mmu = PvMmu(self.mem, lay.ram_pages, lay.guest_frames, self.trampoline.l4_entries)
        self.mmu.flush_all = self.flush_all_vcpus
        self.mmu.translation_cache = self.virt.cache
        self.msrs = MsrEmulator()
        self.hypercall_table = build_table()
        self.vm_assist: set[int] = set()
        self.grants = GrantTable(self.mem, base_gpa=lay.grant_frame_gpa(0), max_frames=L.MAX_GRANT_FRAMES,
                                 ram_frames=lay.ram_pages)
        self.shutdown_code: int | None = None
        self.stopping = False
        self.closed = False
        self.paused = False
        self.result: ShutdownResult | None = None
        self._done = threading.Event()

        self.kvm = Kvm()
        self.vm = self.kvm.create_vm()
        self.vm.set_user_memory_region(0, 0, lay.ram_bytes, self.mem.host_addr)
        self.vm.set_user_memory_region(1, lay.ram_bytes, self.mem.size - lay.ram_bytes,
                                       self.mem.host_addr + lay.ram_bytes)
        self.cpuid = CpuidPolicy(self.kvm.supported_cpuid())

        # Events, console and store.
        self.vcpus: list[PvVcpu] = []
        self.evtchn = EventChannels(
            self.mem.addr(lay.shared_info_gpa, PAGE_SIZE), config.vcpus,
            lambda v: self.mem.host_addr + self.vcpus[v].vcpu_info_gpa,
            lambda v: self.vcpus[v].kick(), self.domid,
        )
        self._console_lock = threading.Lock()
        self._store_lock = threading.Lock()
        self.console_port = self.evtchn.alloc_backend_port(_Backend(self._console_event))
        self.store_port = self.evtchn.alloc_backend_port(_Backend(self._store_event))
        shared = self.mem.view(lay.shared_info_gpa, PAGE_SIZE)
        for v in range(32):
            shared[64 * v + 1] = 1  # evtchn_upcall_mask

        self.boot = build_domain(
            self.mem, lay.ram_pages, kernel, initrd, config.cmdline, lay.shared_info_gpa,
            self.store_port, self.console_port, self.trampoline.l4_entries, hypercall_page_bytes(),
        )
        # The builder pins its L4 (as libxc does) and the boot vCPU's CR3 holds
        # it: validating it types every bootstrap table. Its fix-ups were
        # already in memory before the first entry, so no writer run is needed.
        boot_writes: list[tuple[int, int]] = []
        self.mmu.pin_boot_l4(self.boot.l4_gpa >> 12, boot_writes)
        self.console = ConsoleBackend(self.mem.view(self.boot.console_gpa, PAGE_SIZE),
                                      lambda: self.evtchn.notify_backend_port(self.console_port))
        self.store = Store()
        from hospes.pv.store import populate_domain

        populate_domain(self.store, self.domid, config.name, str(self.uuid), config.vcpus,
                        config.memory_mib * 1024)
        self.device_host = BackendHost(domid=self.domid, mem=self.mem, grants=self.grants, evtchn=self.evtchn,
                                       store=self.store)
        self.disks = [BlockBackend(self.device_host, disk) for disk in config.disks]
        self.vifs = [NetBackend(self.device_host, vif) for vif in config.vifs]
        self.store_conn = RingConnection(self.store, self.domid, self.mem.view(self.boot.store_gpa, PAGE_SIZE),
                                         lambda: self.evtchn.notify_backend_port(self.store_port))

        for v in range(config.vcpus):
            kv = self.vm.create_vcpu(v)
            pv = PvVcpu(self, v, kv, self.trampoline.vcpus[v])
            self.vcpus.append(pv)
        bsp = self.vcpus[0]
        bsp.kernel_cr3 = self.boot.l4_gpa
        bsp.kernel_sp = self.boot.stack_top
        entries = self.cpuid.kvm_entries()
        for pv in self.vcpus:
            pv.setup_cpu(entries)
        bsp.set_entry_state(self.boot.entry, self.boot.stack_top, self.boot.start_info_va)
        bsp.online = True
        bsp.initialised = True

        self.clock = Clock(bsp.kvm.get_tsc_khz(), lambda: bsp.kvm.get_msrs([0x10])[0x10])
        self._publish_time()
        self.timers = Timers(self.clock, config.vcpus, self._timer_fired)

    # --- time ---------------------------------------------------------------------

    def _publish_time(self) -> None:
        lay = self.layout
        for pv in self.vcpus:
            for gpa in {pv.vcpu_info_gpa, lay.shared_info_gpa + 64 * pv.id}:
                self.clock.publish(self.mem.buf, gpa + 0x20, self.clock.tsc0, 0)
        sec, nsec = self.clock.wallclock()
        base = lay.shared_info_gpa + 0xC00
        self.mem.write(base, struct.pack("<III", 1, sec & 0xFFFFFFFF, nsec))
        self.mem.write(base + 12, struct.pack("<I", sec >> 32))
        self.mem.write(base, struct.pack("<I", 2))

    def _timer_fired(self, v: int) -> None:
        self.evtchn.raise_virq(abi.VIRQ_TIMER, v)
        self.vcpus[v].kick()

    # --- scheduling -----------------------------------------------------------------

    def block(self, vcpu: PvVcpu) -> None:
        with vcpu.wake:
            vcpu.blocked = True
            while not self.stopping and not vcpu.upcall_deliverable():
                vcpu.wake.wait(0.05)
                self._service_console()
            vcpu.blocked = False

    def poll(self, vcpu: PvVcpu, ports: Sequence[int], timeout: int) -> None:
        """SCHEDOP_poll: sleep until a listed port is pending (even masked), an
        upcall is deliverable, or the absolute timeout passes."""
        waiter = _PollWaiter(vcpu)
        self.evtchn.register_poller(waiter, ports)
        try:
            with vcpu.wake:
                while not self.stopping:
                    if vcpu.upcall_deliverable() or self.evtchn.poll_ready(vcpu.id, ports):
                        return
                    now = self.clock.now()
                    if timeout and now >= timeout:
                        return
                    wait = 0.05 if not timeout else max(0.0, min(0.05, (timeout - now) / 1e9))
                    vcpu.wake.wait(wait)
        finally:
            self.evtchn.unregister_poller(waiter)

    def on_yield(self, vcpu: PvVcpu) -> None:
        self._service_console()

    def rekick(self, vcpu: PvVcpu) -> None:
        def again() -> None:
            if not self.closed:
                vcpu.kick()

        threading.Timer(0.0002, again).start()

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

    # --- backends ----------------------------------------------------------------------

    def console_write(self, data: bytes) -> None:
        with self._console_lock:
            self.console_out(data)

    def _service_console(self) -> None:
        with self._console_lock:
            out = self.console.drain_output()
            if out:
                self.console_out(out)

    def _console_event(self) -> None:
        self._service_console()

    def _store_event(self) -> None:
        with self._store_lock:
            self.store_conn.service()

    # --- vCPU state helpers ---------------------------------------------------------

    def descriptor_base(self, vcpu: PvVcpu, selector: int) -> int:
        """Base of the segment a user selector names (0 for null or unusable ones)."""
        seg = vcpu.segment_for(selector | 3)
        return int(seg.base) if seg is not None else 0

    def runstate_bytes(self, vcpu: PvVcpu) -> bytes:
        now = self.clock.now()
        return struct.pack("<iIQQQQQ", 0, 0, now, now, 0, 0, 0)

    def write_runstate(self, vcpu: PvVcpu) -> None:
        if vcpu.runstate_va:
            try:
                vcpu.write(vcpu.runstate_va, self.runstate_bytes(vcpu))
            except HospesError:
                pass

    def move_vcpu_info(self, vcpu: PvVcpu, gpa: int) -> None:
        old = self.mem.read(vcpu.vcpu_info_gpa, 64)
        self.mem.write(gpa, old)
        vcpu.vcpu_info_gpa = gpa
        vcpu.vcpu_info_registered = True

    def initialise_vcpu(self, target: PvVcpu, arg: int, caller: PvVcpu) -> int:
        """VCPUOP_initialise: load a vcpu_guest_context (pv-abi.md §12.2)."""
        from hospes.pv.smp import load_guest_context

        if target.initialised:
            return -Errno.EEXIST
        return load_guest_context(self, target, caller.read(arg, CONTEXT_SIZE))

    def start_vcpu(self, target: PvVcpu) -> None:
        with target.wake:
            target.online = True
            target.wake.notify_all()
        self.write_runstate(target)

    def stop_vcpu(self, target: PvVcpu) -> None:
        target.online = False
        target.initialised = False
        if target.thread_ident != threading.get_ident():
            target.kick()

    def port_read(self, port: int, size: int) -> int:
        """An empty I/O bus reads all-ones, except the PIT counters.

        Linux's quick PIT calibration spins while the counter's MSB reads
        0xff (up to 100,000 reads, ~10 s at this host's trap cost); a stopped
        counter reading 0 ends it at once. The TSC rate comes from pvclock.
        """
        if 0x40 <= port <= 0x42:
            return 0
        return (1 << (8 * size)) - 1

    # --- lifecycle -------------------------------------------------------------------

    def request_shutdown(self, reason: str = "poweroff") -> None:
        """Ask the guest to shut down, as xl does: write control/shutdown."""
        if reason not in ("poweroff", "reboot", "halt"):
            raise DomainError(f"Unknown shutdown request {reason!r}; use poweroff, reboot or halt.")
        self.store.write(f"/local/domain/{self.domid}/control/shutdown", reason)

    def pause(self) -> None:
        """Stop running guest code until unpause(); timers keep counting."""
        self.paused = True
        for pv in self.vcpus:
            pv.kick()

    def unpause(self) -> None:
        self.paused = False
        for pv in self.vcpus:
            pv.kick()

    def destroy(self) -> None:
        """Stop the domain at once, without asking the guest."""
        self._finish(ShutdownResult(ShutdownReason.DESTROYED))

    def shutdown(self, reason: int, vcpu: PvVcpu | None = None) -> None:
        self._service_console()
        self._finish(ShutdownResult(ShutdownReason.from_code(reason)))

    def crash(self, vcpu: PvVcpu, message: str) -> None:
        self._service_console()
        text = f"vCPU {vcpu.id}: {message}\n{vcpu.register_dump()}"
        self._finish(ShutdownResult(ShutdownReason.CRASH, text))

    def _finish(self, result: ShutdownResult) -> None:
        if self.result is None:
            self.result = result
        self.stopping = True
        self._done.set()
        for pv in self.vcpus:
            pv.kick()

    def console_input(self, data: bytes) -> None:
        """Queue bytes for the guest's console (hvc0) and notify it."""
        with self._console_lock:
            self.console.queue_input(data)
            self.console.flush_input()

    def run(self, read_input: Callable[[], bytes | None] | None = None) -> ShutdownResult:
        """Run until the guest powers off, reboots or crashes.

        ``read_input``, polled by the main loop, returns console input (b"" for
        none yet, None at end of input).
        """
        old = signal.signal(self.kick_signal, lambda *_: None)
        try:
            self.timers.start()
            for pv in self.vcpus:
                t = threading.Thread(target=pv.loop, name=f"vcpu{pv.id}", daemon=True)
                pv.thread = t
                t.start()
            while not self._done.wait(0.02):
                if read_input is not None:
                    data = read_input()
                    if data is None:
                        read_input = None
                    elif data:
                        self.console_input(data)
                self._service_console()
                with self._console_lock:
                    self.console.flush_input()
                with self._store_lock:
                    self.store_conn.service()
            for pv in self.vcpus:
                if pv.thread is not None:
                    pv.thread.join(2)
        finally:
            self.timers.stop()
            signal.signal(self.kick_signal, old)
        self._service_console()
        assert self.result is not None
        stats: dict[str, int] = {}
        for pv in self.vcpus:
            for k, n in pv.stats.items():
                stats[k] = stats.get(k, 0) + n
        self.result.stats = stats
        return self.result

    def close(self) -> None:
        self.closed = True  # no more kicks: the vCPUs' kvm_run pages go away below
        for disk in self.disks:
            disk.close()
        for vif in self.vifs:
            vif.close()
        for pv in self.vcpus:
            pv.kvm.close()
        self.vm.close()
        self.kvm.close()


__all__ = ["Domain", "DomainConfig", "DomainError", "ShutdownReason", "ShutdownResult"]
