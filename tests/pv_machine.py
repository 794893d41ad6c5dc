"""A PV domain without a kernel, on KVM: memory, trampoline, VM and vCPUs (for saved-state tests)."""

from __future__ import annotations

import uuid

from hospes.kvm import Kvm
from hospes.machine.memory import PAGE_SIZE, GuestMemory
from hospes.pv import layout as L
from hospes.pv.cpuid import CpuidPolicy
from hospes.pv.evtchn import BackendEndpoint
from hospes.pv.pvdomain import DomainIdentity, PvDomain, PvDomainState, PvHooks
from hospes.pv.trampoline import Trampoline


class Machine:
    """A PV domain without a kernel: memory, trampoline, VM and vCPUs."""

    def __init__(self, nr_vcpus: int = 2, saved: PvDomainState | None = None, memory: bytes | None = None,
                 backends: dict[int, BackendEndpoint] | None = None) -> None:
        self.layout = L.Layout(ram_pages=16 * 256, nr_vcpus=nr_vcpus)
        lay = self.layout
        self.mem = GuestMemory([("ram", lay.ram_bytes), ("xen", L.XEN_FRAMES * PAGE_SIZE),
                                ("hv", lay.hv_pages * PAGE_SIZE)])
        self.trampoline = Trampoline(self.mem, lay)
        if memory is not None:
            self.mem.buf[:] = memory
        self.kvm = Kvm()
        self.vm = self.kvm.create_vm()
        self.vm.set_user_memory_region(0, 0, self.mem.size, self.mem.host_addr)
        self.cpuid = CpuidPolicy(self.kvm.supported_cpuid())
        self.pv = PvDomain(self.mem, lay, self.trampoline, self.vm, self.cpuid,
                           DomainIdentity(1, uuid.uuid4(), ""),
                           PvHooks(console_io=lambda b: None, shutdown=lambda c: None, crash=lambda t: None),
                           saved=saved, backends=backends)

    def close(self) -> None:
        self.pv.close()
        self.vm.close()
        self.kvm.close()
