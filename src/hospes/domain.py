"""A Domain: one KVM VM, its PV state and its in-process backends.

Lifecycle: ``Domain(config)`` builds everything (memory, trampoline, kernel,
start_info, the PV domain, xenstore, console, backends) -> ``run()`` starts the
vCPU threads and returns when the guest shuts down or crashes -> ``close()``.

The PV layer (:class:`hospes.pv.pvdomain.PvDomain`) owns everything a
hypercall touches; this module assembles it with the backends and owns the
lifecycle. The PV layer reaches up only through the three :class:`PvHooks`
callbacks passed in here.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from array import array
import uuid as uuidlib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Callable, ClassVar

from hospes.devices.block import BlockBackend, BlockState, DiskConfig
from hospes.devices.console import ConsoleBackend, ConsoleState
from hospes.devices.host import BackendHost
from hospes.devices.net import NetBackend, NetState, VifConfig
from hospes.errors import HospesError
from hospes.files import MAX_IMAGE_BYTES, read_regular
from hospes.kvm import Kvm
from hospes.kvm.constants import KVM_MEM_LOG_DIRTY_PAGES
from hospes.machine.memory import PAGE_SIZE, GuestMemory
from hospes.pv import abi
from hospes.pv import layout as L
from hospes.pv.builder import build_domain, hypercall_page_bytes
from hospes.pv.cpuid import CpuidPolicy
from hospes.pv.evtchn import BackendEndpoint, EventChannels
from hospes.pv.image.kernel import PvKernel, load_pv_kernel
from hospes.pv.errors import XenError
from hospes.pv.pvdomain import DomainIdentity, PvDomain, PvDomainState, PvHooks, grant_table, page_types
from hospes.pv.store import ConnectionState, Store, StoreState, populate_domain
from hospes.pv.store.connection import RingConnection
from hospes.pv.trampoline import Trampoline
from hospes.pv.vcpu import PvVcpu, install_kick_handler, internal_error_message
from hospes.state import StateError, check_version

log = logging.getLogger(__name__)

MIN_MEMORY_MIB = 16
MAX_MEMORY_MIB = 64 * 1024
MAX_VCPUS = abi.XEN_LEGACY_MAX_VCPUS



#: How long the main thread sleeps at most before it looks for signals.
SIGNAL_POLL_S = 0.2


def sleep_until(event: threading.Event) -> None:
    """Wait for ``event`` on the main thread, running Python's signal handlers meanwhile.

    Python runs handlers on the main thread, when it next executes bytecode. The
    kernel gives a process-directed signal (SIGTERM from `kill`) to any thread
    that does not block it -- often a vCPU thread -- which interrupts only that
    thread's wait; a main thread asleep in an untimed wait never learns of it,
    and the guest was not asked to power off until something else woke it.
    """
    while not event.wait(SIGNAL_POLL_S):
        pass


class DomainError(HospesError):
    """The domain could not be created or run."""


def _kib_text(kib: int) -> str:
    return f"{kib // 1024} MiB" if kib % 1024 == 0 else f"{kib} KiB"


@dataclass
class DomainConfig:
    kernel: Path
    ramdisk: Path | None = None
    cmdline: str = ""
    memory_mib: int = 256
    vcpus: int = 1          # online at boot
    name: str = "guest"
    domid: int = 1
    disks: tuple[DiskConfig, ...] = ()
    vifs: tuple[VifConfig, ...] = ()
    uuid: str | None = None
    max_vcpus: int = 0      # vCPUs the domain is built with (xl's maxvcpus); 0: as many as ``vcpus``
    max_memory_mib: int = 0  # xl's maxmem: what the guest may balloon up to; 0: ``memory_mib``

    @property
    def ram_mib(self) -> int:
        """The guest-physical RAM the domain is built with (its maxmem); it starts
        holding ``memory_mib`` of it, the rest released for its balloon driver."""
        return max(self.memory_mib, self.max_memory_mib)

    @property
    def vcpu_slots(self) -> int:
        """How many vCPUs the domain has, online or not: ``hospes vcpu-set`` moves within them."""
        return max(self.vcpus, self.max_vcpus)


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


def memory_regions(layout: L.Layout) -> list[tuple[str, int]]:
    """The guest-physical space of a domain: RAM, then the Xen frames, then the hypervisor's."""
    return [("ram", layout.ram_bytes), ("xen", L.XEN_FRAMES * PAGE_SIZE), ("hv", layout.hv_pages * PAGE_SIZE)]


def memory_slots(layout: L.Layout, size: int) -> list[tuple[int, int, int]]:
    """KVM memory slots as (slot, guest-physical address, size): RAM, and the rest."""
    return [(0, 0, layout.ram_bytes), (1, layout.ram_bytes, size - layout.ram_bytes)]


class DomainShell:
    """What a domain is built in, before anything runs in it: its memory, the
    hypervisor region laid out by the trampoline, and an empty VM with the
    memory registered. A migration's receiver makes it when the CONFIG record
    arrives and fills the memory from the stream (the hypervisor region too, so
    the trampoline's fresh layout is overwritten by the saved one), so the
    guest's downtime does not wait for any of it."""

    def __init__(self, config: DomainConfig) -> None:
        self.layout = L.Layout(ram_pages=config.ram_mib * 256, nr_vcpus=config.vcpu_slots)
        self.mem = GuestMemory(memory_regions(self.layout))
        try:
            self.trampoline = Trampoline(self.mem, self.layout)
            self.kvm = Kvm()
            try:
                self.vm = self.kvm.create_vm()
                for slot, gpa, size in memory_slots(self.layout, self.mem.size):
                    self.vm.set_user_memory_region(slot, gpa, size, self.mem.host_addr + gpa)
            except BaseException:
                self.kvm.close()
                raise
        except BaseException:
            self.mem.close()
            raise

    def close(self) -> None:
        """Release a shell no domain was built in."""
        self.vm.close()
        self.kvm.close()
        self.mem.close()


class _Backend:
    """An event-channel endpoint served by a function (the console and the store)."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.notify = fn


@dataclass(frozen=True)
class DomainState:
    """A domain's state beyond its memory: the PV domain, the store and its
    connection, the console and the backends (see :meth:`Domain.save`)."""

    VERSION: ClassVar[int] = 1
    uuid: str
    pv: PvDomainState
    store: StoreState
    store_conn: ConnectionState
    console: ConsoleState
    disks: tuple[BlockState, ...]
    vifs: tuple[NetState, ...]
    console_port: int
    store_port: int
    console_gpa: int
    store_gpa: int
    version: int = VERSION


class _LatePorts:
    """Event channels for backends restored before the event channels are:
    notifications made meanwhile are kept and passed on once they exist."""

    def __init__(self) -> None:
        self.target: EventChannels | None = None
        self.held: list[tuple[int, BackendEndpoint | None]] = []
        self.lock = threading.Lock()

    def bind_interdomain_local(self, port: int, backend: BackendEndpoint) -> None:
        raise DomainError("A backend tried to bind an event channel while the domain was being restored.")

    def notify_backend_port(self, port: int, backend: BackendEndpoint | None = None) -> None:
        with self.lock:
            if self.target is None:
                self.held.append((port, backend))
                return
        self.target.notify_backend_port(port, backend)

    def attach(self, target: EventChannels) -> None:
        with self.lock:
            self.target, held = target, self.held
            self.held = []
        for port, backend in held:
            target.notify_backend_port(port, backend)


class Domain:
    """A running PV domain inside this process.

    ``Domain(config)`` builds a new domain from its kernel;
    ``Domain(config, saved=(state, memory))`` rebuilds the one :meth:`save`
    and :meth:`save_memory` described, on a new VM (restore is construction
    with a state).
    """

    def __init__(self, config: DomainConfig, console_out: Callable[[bytes], None] | None = None,
                 saved: tuple[DomainState, bytes | bytearray | DomainShell] | None = None,
                 hypervisor_log: Callable[[bytes], None] | None = None) -> None:
        if not MIN_MEMORY_MIB <= config.memory_mib <= MAX_MEMORY_MIB:
            raise DomainError(
                f"Memory size {config.memory_mib} MiB is out of range: give between {MIN_MEMORY_MIB} and "
                f"{MAX_MEMORY_MIB} MiB."
            )
        if config.max_memory_mib > MAX_MEMORY_MIB:
            raise DomainError(f"maxmem {config.max_memory_mib} MiB is out of range: at most {MAX_MEMORY_MIB} MiB.")
        if not 1 <= config.vcpus <= MAX_VCPUS or config.vcpu_slots > MAX_VCPUS:
            raise DomainError(f"A domain has between 1 and {MAX_VCPUS} vCPUs; {config.vcpus} (at most "
                              f"{config.vcpu_slots}) were asked for.")
        self.config = config
        self.domid = config.domid
        self.console_out = console_out or _stdout
        # The guest's console_io lines, "(d<domid>) "-prefixed: the hypervisor's log
        # (stderr by default), never its console, as on Xen.
        self.hypervisor_log = hypervisor_log or _stderr
        self._console_tail = b""   # the guest's last output, for a crash it asks for
        self.layout = L.Layout(ram_pages=config.ram_mib * 256, nr_vcpus=config.vcpu_slots)
        lay = self.layout
        if saved is None:
            self.uuid = uuidlib.UUID(config.uuid) if config.uuid else uuidlib.uuid4()
            kernel = load_pv_kernel(config.kernel)
            initrd = None
            if config.ramdisk is not None:
                try:
                    initrd = read_regular(config.ramdisk, "ramdisk", MAX_IMAGE_BYTES)
                except OSError as e:
                    raise DomainError(f"Cannot read the ramdisk {config.ramdisk}: {e.strerror}; check the path.") from e
        else:
            state, memory = saved
            check_version(state, "domain")
            self.uuid = uuidlib.UUID(state.uuid)
            if len(state.disks) != len(config.disks) or len(state.vifs) != len(config.vifs):
                raise StateError(
                    f"The saved domain has {len(state.disks)} disks and {len(state.vifs)} network interfaces; "
                    f"the configuration gives {len(config.disks)} and {len(config.vifs)}.")
        if saved is not None and isinstance(memory, DomainShell):
            if memory.layout != lay:
                raise StateError(f"The received memory does not have the layout of a domain of {config.ram_mib} "
                                 f"MiB and {config.vcpu_slots} vCPUs. Restore with its configuration.")
            shell = memory   # filled by a migration's receiver: no second copy
        else:
            shell = DomainShell(config)
            if saved is not None:
                assert not isinstance(memory, DomainShell)
                if len(memory) != shell.mem.size:
                    shell.close()
                    raise StateError(
                        f"The saved memory is {len(memory)} bytes; a domain of {config.ram_mib} MiB and "
                        f"{config.vcpu_slots} vCPUs has {shell.mem.size}. Restore with its configuration.")
                shell.mem.buf[:] = memory
        self.mem, self.trampoline, self.kvm, self.vm = shell.mem, shell.trampoline, shell.kvm, shell.vm
        self.result: ShutdownResult | None = None
        self._done = threading.Event()
        self._console_lock = threading.Lock()
        self._store_lock = threading.Lock()
        self._frozen = False    # saved: nothing may write guest memory until unpause
        cpuid = CpuidPolicy(self.kvm.supported_cpuid())
        identity = DomainIdentity(self.domid, self.uuid, config.cmdline)
        hooks = PvHooks(console_io=self._console_io, shutdown=self._guest_shutdown, crash=self._crash,
                        internal_error=self._internal_error)
        if saved is None:
            self._build(config, kernel, initrd, cpuid, identity, hooks)
        else:
            self._restore(config, state, cpuid, identity, hooks)

    def _build(self, config: DomainConfig, kernel: PvKernel, initrd: bytes | None, cpuid: CpuidPolicy,
               identity: DomainIdentity, hooks: PvHooks) -> None:
        lay = self.layout
        self.pv = PvDomain(self.mem, lay, self.trampoline, self.vm, cpuid, identity, hooks)
        self.evtchn = self.pv.evtchn
        self.console_port = self.evtchn.alloc_backend_port(_Backend(self._service_console))
        self.store_port = self.evtchn.alloc_backend_port(_Backend(self._store_event))
        boot = build_domain(
            self.mem, config.memory_mib * 256, kernel, initrd, config.cmdline, lay.shared_info_gpa,
            self.store_port, self.console_port, self.trampoline.l4_entries,
            hypercall_page_bytes(config.vcpu_slots),
        )
        self.pv.boot(boot.l4_gpa, boot.entry, boot.stack_top, boot.start_info_va)
        # start_info.nr_pages is memory; the RAM above it (up to maxmem) is where
        # the guest's balloon driver may grow: released until it populates it.
        self.pv.reservation.start_with(config.memory_mib * 256)
        self.console_gpa, self.store_gpa = boot.console_gpa, boot.store_gpa
        # Written through our views for the domain's life: writable type references
        # (as Xen's own mappings of them), so the guest can never make them page tables.
        self.pv.mmu.hold_writable((self.console_gpa // PAGE_SIZE, self.store_gpa // PAGE_SIZE))
        self.mem.hold(self.console_gpa)
        self.mem.hold(self.store_gpa)
        self.console = ConsoleBackend(self.mem.view(self.console_gpa, PAGE_SIZE),
                                      lambda: self.evtchn.notify_backend_port(self.console_port))
        self.store = Store()
        populate_domain(self.store, self.domid, config.name, str(self.uuid), config.vcpus,
                        config.memory_mib * 1024, max_vcpus=config.vcpu_slots,
                        max_memory_kib=config.ram_mib * 1024)
        self.device_host = BackendHost(domid=self.domid, mem=self.mem, grants=self.pv.grants, evtchn=self.evtchn,
                                       store=self.store, failed=self._internal_error)
        self.disks = [BlockBackend(self.device_host, disk) for disk in config.disks]
        self.vifs = [NetBackend(self.device_host, vif) for vif in config.vifs]
        self.store_conn = RingConnection(self.store, self.domid, self.mem.view(self.store_gpa, PAGE_SIZE),
                                         lambda: self.evtchn.notify_backend_port(self.store_port))

    def _restore(self, config: DomainConfig, state: DomainState, cpuid: CpuidPolicy, identity: DomainIdentity,
                 hooks: PvHooks) -> None:
        """Backends first (they need the grant table and the store, not the event
        channels), then the PV domain with their endpoints, then the rings."""
        lay = self.layout
        self.console_port, self.store_port = state.console_port, state.store_port
        self.console_gpa, self.store_gpa = state.console_gpa, state.store_gpa
        for gpa in (self.console_gpa, self.store_gpa):
            if not 0 <= gpa < lay.ram_bytes or gpa % PAGE_SIZE:
                raise StateError(f"The saved domain's console or store ring at {gpa:#x} is not a page of its RAM.")
        # The MMU first: the rings (here and in the backends) take their type references again.
        mmu = page_types(self.mem, lay, self.trampoline, state.pv.mmu)
        try:
            mmu.hold_writable((self.console_gpa // PAGE_SIZE, self.store_gpa // PAGE_SIZE))
        except XenError as e:
            raise StateError(f"The saved domain's console or store ring cannot be written: {e}") from None
        for gpa in (self.console_gpa, self.store_gpa):
            self.mem.hold(gpa)
        self.store = Store.restore(state.store)
        grants = grant_table(self.mem, lay, mmu, state.pv.grants)
        late = _LatePorts()
        self.device_host = BackendHost(domid=self.domid, mem=self.mem, grants=grants, evtchn=late, store=self.store,
                                       failed=self._internal_error)
        self.disks = [BlockBackend.restore(s, host=self.device_host, disk=d)
                      for s, d in zip(state.disks, config.disks, strict=True)]
        self.vifs = [NetBackend.restore(s, host=self.device_host, vif=v)
                     for s, v in zip(state.vifs, config.vifs, strict=True)]
        endpoints: dict[int, BackendEndpoint] = {self.console_port: _Backend(self._service_console),
                                                 self.store_port: _Backend(self._store_event)}
        for disk in self.disks:
            endpoints.update(disk.endpoints())
        for vif in self.vifs:
            endpoints.update(vif.endpoints())
        self.pv = PvDomain(self.mem, lay, self.trampoline, self.vm, cpuid, identity, hooks,
                           saved=state.pv, backends=endpoints, grants=grants)
        self.evtchn = self.pv.evtchn
        self.device_host.evtchn = self.evtchn
        late.attach(self.evtchn)
        self.console = ConsoleBackend.restore(state.console, page=self.mem.view(self.console_gpa, PAGE_SIZE),
                                              notify=lambda: self.evtchn.notify_backend_port(self.console_port))
        self.store_conn = RingConnection.restore(self.store, self.mem.view(self.store_gpa, PAGE_SIZE),
                                                 lambda: self.evtchn.notify_backend_port(self.store_port),
                                                 state.store_conn)

    # --- saved state -----------------------------------------------------------------

    def save(self) -> DomainState:
        """Pause the domain, let every vCPU park, and describe it (the domain stays paused).

        Guest memory is not in the record: :meth:`save_memory` copies it, once
        this has returned and before the domain is unpaused.
        """
        self.pv.quiesce()
        self.pv.timers.hold()
        for backend in self._backends():
            backend.freeze()
        with self._console_lock, self._store_lock:
            self._frozen = True
            return DomainState(
                uuid=str(self.uuid), pv=self.pv.save(), store=self.store.save(), store_conn=self.store_conn.save(),
                console=self.console.save(), disks=tuple(d.save() for d in self.disks),
                vifs=tuple(v.save() for v in self.vifs), console_port=self.console_port,
                store_port=self.store_port, console_gpa=self.console_gpa, store_gpa=self.store_gpa,
            )

    def save_memory(self) -> bytes:
        """A copy of the whole guest-physical space (RAM, Xen frames, hypervisor region)."""
        return bytes(self.mem.buf)

    # --- dirty logging (a live migration's copy rounds) ------------------------------

    def start_dirty_log(self) -> None:
        """Log every page written from now on: the guest's stores (KVM's log of
        both memory slots) and this process's own (:attr:`GuestMemory.dirty`)."""
        self.mem.start_dirty_log()
        for slot, gpa, size in self._slots():
            self.vm.set_user_memory_region(slot, gpa, size, self.mem.host_addr + gpa, flags=KVM_MEM_LOG_DIRTY_PAGES)
        self.dirty_frames()   # KVM's log starts empty only once read

    def stop_dirty_log(self) -> None:
        for slot, gpa, size in self._slots():
            self.vm.set_user_memory_region(slot, gpa, size, self.mem.host_addr + gpa)
        self.mem.stop_dirty_log()

    def dirty_frames(self) -> set[int]:
        """The frames written since the last call, and forget them."""
        frames = self.mem.harvest_dirty()
        for slot, gpa, size in self._slots():
            words = array("Q", self.vm.get_dirty_log(slot, size // PAGE_SIZE))
            base = gpa // PAGE_SIZE
            for i, word in enumerate(words):
                while word:
                    low = word & -word
                    frames.add(base + i * 64 + low.bit_length() - 1)
                    word ^= low
        return frames

    def announce(self) -> None:
        """Make the guest's network interfaces known where it runs now (after a migration)."""
        for vif in self.vifs:
            vif.announce()

    def held_frames(self) -> set[int]:
        """Frames a final copy always sends, whatever the logs say: the Xen frames
        (shared_info, the grant table), the parts of the hypervisor region that
        change as the domain runs, and the pages Hospes holds views of; Hospes
        stores into all of them without marking each store."""
        xen = self.mem.region("xen")
        frames = set(self.mem.held) | self.trampoline.runtime_frames()
        frames.update(range(xen.gpa // PAGE_SIZE, xen.end // PAGE_SIZE))
        return frames

    def _backends(self) -> list[BlockBackend | NetBackend]:
        return [*self.disks, *self.vifs]

    def _slots(self) -> list[tuple[int, int, int]]:
        return memory_slots(self.layout, self.mem.size)

    @property
    def vcpus(self) -> list[PvVcpu]:
        return self.pv.vcpus

    @property
    def paused(self) -> bool:
        return self.pv.paused

    # --- what the PV layer asks of us (PvHooks) ---------------------------------------

    def _console_io(self, line: bytes) -> None:
        with self._console_lock:
            self._console_tail = (self._console_tail + line)[-CONSOLE_TAIL_BYTES:]
            self.hypervisor_log(line)

    def _guest_shutdown(self, code: int) -> None:
        self._last_console()
        reason = ShutdownReason.from_code(code)
        message = ""
        if reason is ShutdownReason.CRASH:
            message = crash_request_message(code, self._console_tail)
        self._finish(ShutdownResult(reason, message))

    def _crash(self, text: str) -> None:
        self._last_console()
        self._finish(ShutdownResult(ShutdownReason.CRASH, text))

    def _internal_error(self, what: str, error: BaseException) -> None:
        """An unexpected exception on one of this domain's threads (a vCPU's exit
        path, the timers, a block or net backend, the console or the store): a
        Hospes bug. The domain ends, and only it: never the thread alone, which
        would leave the domain half alive. The traceback goes to the hypervisor
        log (stderr, or the domain's .err file under hospesd), what failed and
        every vCPU's registers into the crash message."""
        try:
            self.hypervisor_log(f"hospes: {what}: Hospes internal error\n"
                                f"{''.join(traceback.format_exception(error))}".encode())
        except Exception:  # noqa: BLE001 - the log is best effort; ending the domain is not
            log.exception("domain %d: cannot log an internal error", self.domid)
        if getattr(self, "pv", None) is None:   # a restore's backend, before the PV domain exists
            log.error("domain %d: %s: Hospes internal error while restoring", self.domid, what, exc_info=error)
            return
        self._crash(internal_error_message(what, error, self.pv.vcpus))

    # --- backends ----------------------------------------------------------------------

    def _pass_console(self) -> None:
        with self._console_lock:
            if self._frozen:
                return
            out = self.console.drain_output()
            if out:
                self._console_tail = (self._console_tail + out)[-CONSOLE_TAIL_BYTES:]
                self.console_out(out)
            self.console.flush_input()

    def _service_console(self) -> None:
        """Pass the guest's output on and its pending input in (each console event)."""
        try:
            self._pass_console()
        except Exception as e:  # noqa: BLE001 - a console bug ends this domain, not its caller's thread
            self._internal_error("console", e)

    def _last_console(self) -> None:
        """The guest's last output, as the domain ends (a broken console must not stop that)."""
        try:
            self._pass_console()
        except Exception:  # noqa: BLE001 - see above
            log.warning("domain %d: cannot pass the guest's last console output on", self.domid, exc_info=True)

    def _store_event(self) -> None:
        try:
            with self._store_lock:
                if not self._frozen:
                    self.store_conn.service()
        except Exception as e:  # noqa: BLE001 - a store bug ends this domain, not the vCPU thread alone
            self._internal_error("xenstore", e)

    def console_input(self, data: bytes) -> None:
        """Queue bytes for the guest's console (hvc0) and notify it (from any thread)."""
        try:
            with self._console_lock:
                self.console.queue_input(data)
                if not self._frozen:
                    self.console.flush_input()
        except Exception as e:  # noqa: BLE001 - see _service_console
            self._internal_error("console", e)

    # --- lifecycle -------------------------------------------------------------------

    def request_shutdown(self, reason: str = "poweroff") -> None:
        """Ask the guest to shut down, as xl does: write control/shutdown."""
        if reason not in ("poweroff", "reboot", "halt"):
            raise DomainError(f"Unknown shutdown request {reason!r}; use poweroff, reboot or halt.")
        self.store.write(f"/local/domain/{self.domid}/control/shutdown", reason)

    def set_vcpus(self, count: int) -> None:
        """Ask the guest to run ``count`` vCPUs, as ``xl vcpu-set`` does: write each
        ``cpu/<n>/availability``, which the guest watches; it takes vCPUs down
        (VCPUOP_down) or brings them up (VCPUOP_up) itself."""
        slots = len(self.pv.vcpus)
        if not 1 <= count <= slots:
            raise DomainError(f"The domain can run between 1 and {slots} vCPUs (its maxvcpus); "
                              f"{count} were asked for.")
        home = f"/local/domain/{self.domid}"
        with self.store.transaction() as t:
            for cpu in range(slots):
                t.write(f"{home}/cpu/{cpu}/availability", "online" if cpu < count else "offline")

    def set_memory_target(self, target_kib: int) -> None:
        """Ask the guest to hold ``target_kib`` KiB, as ``xl mem-set`` does: write
        ``memory/target``, which Linux's balloon driver watches; it gives memory
        back (XENMEM_decrease_reservation) or takes it again (populate_physmap)
        itself, as far as it can."""
        max_kib = self.pv.reservation.max_pages * 4
        if not MIN_MEMORY_MIB * 1024 <= target_kib <= max_kib:
            raise DomainError(f"The memory target must be between {MIN_MEMORY_MIB} MiB and the domain's maxmem "
                              f"({max_kib // 1024} MiB); {_kib_text(target_kib)} was asked for.")
        self.store.write(f"/local/domain/{self.domid}/memory/target", str(target_kib))

    def memory_status(self) -> dict[str, int]:
        """What the domain holds now (XENMEM_current_reservation), the target its
        balloon driver follows and its maxmem, in KiB."""
        res = self.pv.reservation
        try:
            target = int(self.store.read(f"/local/domain/{self.domid}/memory/target"))
        except (HospesError, ValueError):
            target = res.current_pages * 4
        return {"memory_kib": res.current_pages * 4, "target_kib": target, "maxmem_kib": res.max_pages * 4}

    def pause(self) -> None:
        """Stop running guest code until unpause(); timers keep counting."""
        self.pv.pause()

    def unpause(self) -> None:
        """Run guest code again; after a :meth:`save`, the backends and console move again too."""
        self.thaw()
        self.pv.unpause()

    def thaw(self) -> None:
        """Undo the freeze of a :meth:`save` (backends, console, store) and leave the vCPUs as they are."""
        if not self._frozen:
            return
        with self._console_lock, self._store_lock:
            self._frozen = False
        self.pv.reservation.punch_released()   # the copy just made read them in as zeros
        self.pv.timers.release()
        for backend in self._backends():
            backend.thaw()
        self._service_console()
        self._store_event()

    def destroy(self) -> None:
        """Stop the domain at once, without asking the guest."""
        self._finish(ShutdownResult(ShutdownReason.DESTROYED))

    def _finish(self, result: ShutdownResult) -> None:
        if self.result is None:
            self.result = result
        self.pv.stop()
        self._done.set()

    def run(self) -> ShutdownResult:
        """Run until the guest powers off, reboots or crashes, or is destroyed.

        The calling thread sleeps until then: console output, xenstore
        requests and backend work are all driven by the guest's events, and
        console input is pushed in with :meth:`console_input`.
        """
        install_kick_handler()
        try:
            self.pv.start()
            sleep_until(self._done)
        finally:
            self.pv.stop()
            self.pv.join()
        self._last_console()
        assert self.result is not None
        self.result.stats = self.pv.stats()
        return self.result

    def close(self) -> None:
        for disk in self.disks:
            disk.close()
        for vif in self.vifs:
            vif.close()
        self.pv.close()
        self.vm.close()
        self.kvm.close()
        self.mem.discard()   # now, not when the views of it are collected (a reboot builds a new one)


def _stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _stderr(data: bytes) -> None:
    sys.stderr.buffer.write(data)
    sys.stderr.buffer.flush()


CONSOLE_TAIL_BYTES = 4096
CRASH_TAIL_LINES = 5


def crash_request_message(code: int, tail: bytes) -> str:
    """Why a guest that asked to crash stopped: which request, and its last console lines."""
    what = ("the guest asked to crash (SCHEDOP_shutdown, SHUTDOWN_crash)" if code == 3 else
            f"the guest shut down with unknown reason code {code}, taken as a crash")
    lines = [ln.rstrip("\r") for ln in tail.decode("utf-8", "replace").splitlines() if ln.strip()]
    if not lines:
        return what + "; it wrote nothing to its console"
    last = lines[-CRASH_TAIL_LINES:]
    return what + "; its last console lines:\n" + "\n".join(f"    {ln}" for ln in last)


__all__ = ["Domain", "DomainConfig", "DomainError", "DomainShell", "DomainState", "ShutdownReason", "ShutdownResult",
           "memory_regions", "memory_slots"]
