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

import sys
import threading
import uuid as uuidlib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Callable

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
from hospes.pv.image.kernel import load_pv_kernel
from hospes.pv.pvdomain import DomainIdentity, PvDomain, PvHooks
from hospes.pv.store import Store, populate_domain
from hospes.pv.store.connection import RingConnection
from hospes.pv.trampoline import Trampoline
from hospes.pv.vcpu import PvVcpu, install_kick_handler

MIN_MEMORY_MIB = 16
MAX_MEMORY_MIB = 64 * 1024
MAX_VCPUS = abi.XEN_LEGACY_MAX_VCPUS


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


class _Backend:
    """An event-channel endpoint served by a function (the console and the store)."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.notify = fn


class Domain:
    """A running PV domain inside this process."""

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
        self.console_out = console_out or _stdout
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
        self.result: ShutdownResult | None = None
        self._done = threading.Event()
        self._console_lock = threading.Lock()
        self._store_lock = threading.Lock()

        self.kvm = Kvm()
        self.vm = self.kvm.create_vm()
        self.vm.set_user_memory_region(0, 0, lay.ram_bytes, self.mem.host_addr)
        self.vm.set_user_memory_region(1, lay.ram_bytes, self.mem.size - lay.ram_bytes,
                                       self.mem.host_addr + lay.ram_bytes)
        self.pv = PvDomain(
            self.mem, lay, self.trampoline, self.vm, CpuidPolicy(self.kvm.supported_cpuid()),
            DomainIdentity(self.domid, self.uuid, config.cmdline),
            PvHooks(console_io=self._console_io, shutdown=self._guest_shutdown, crash=self._crash),
        )
        self.evtchn = self.pv.evtchn
        self.console_port = self.evtchn.alloc_backend_port(_Backend(self._service_console))
        self.store_port = self.evtchn.alloc_backend_port(_Backend(self._store_event))

        self.boot = build_domain(
            self.mem, lay.ram_pages, kernel, initrd, config.cmdline, lay.shared_info_gpa,
            self.store_port, self.console_port, self.trampoline.l4_entries, hypercall_page_bytes(),
        )
        self.pv.boot(self.boot.l4_gpa, self.boot.entry, self.boot.stack_top, self.boot.start_info_va)
        self.console = ConsoleBackend(self.mem.view(self.boot.console_gpa, PAGE_SIZE),
                                      lambda: self.evtchn.notify_backend_port(self.console_port))
        self.store = Store()
        populate_domain(self.store, self.domid, config.name, str(self.uuid), config.vcpus,
                        config.memory_mib * 1024)
        self.device_host = BackendHost(domid=self.domid, mem=self.mem, grants=self.pv.grants, evtchn=self.evtchn,
                                       store=self.store)
        self.disks = [BlockBackend(self.device_host, disk) for disk in config.disks]
        self.vifs = [NetBackend(self.device_host, vif) for vif in config.vifs]
        self.store_conn = RingConnection(self.store, self.domid, self.mem.view(self.boot.store_gpa, PAGE_SIZE),
                                         lambda: self.evtchn.notify_backend_port(self.store_port))

    @property
    def vcpus(self) -> list[PvVcpu]:
        return self.pv.vcpus

    @property
    def paused(self) -> bool:
        return self.pv.paused

    # --- what the PV layer asks of us (PvHooks) ---------------------------------------

    def _console_io(self, data: bytes) -> None:
        with self._console_lock:
            self.console_out(data)

    def _guest_shutdown(self, code: int) -> None:
        self._service_console()
        self._finish(ShutdownResult(ShutdownReason.from_code(code)))

    def _crash(self, text: str) -> None:
        self._service_console()
        self._finish(ShutdownResult(ShutdownReason.CRASH, text))

    # --- backends ----------------------------------------------------------------------

    def _service_console(self) -> None:
        """Pass the guest's output on and its pending input in (each console event)."""
        with self._console_lock:
            out = self.console.drain_output()
            if out:
                self.console_out(out)
            self.console.flush_input()

    def _store_event(self) -> None:
        with self._store_lock:
            self.store_conn.service()

    def console_input(self, data: bytes) -> None:
        """Queue bytes for the guest's console (hvc0) and notify it (from any thread)."""
        with self._console_lock:
            self.console.queue_input(data)
            self.console.flush_input()

    # --- lifecycle -------------------------------------------------------------------

    def request_shutdown(self, reason: str = "poweroff") -> None:
        """Ask the guest to shut down, as xl does: write control/shutdown."""
        if reason not in ("poweroff", "reboot", "halt"):
            raise DomainError(f"Unknown shutdown request {reason!r}; use poweroff, reboot or halt.")
        self.store.write(f"/local/domain/{self.domid}/control/shutdown", reason)

    def pause(self) -> None:
        """Stop running guest code until unpause(); timers keep counting."""
        self.pv.pause()

    def unpause(self) -> None:
        self.pv.unpause()

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
            self._done.wait()
        finally:
            self.pv.stop()
            self.pv.join()
        self._service_console()
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


def _stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


__all__ = ["Domain", "DomainConfig", "DomainError", "ShutdownReason", "ShutdownResult"]
