"""A vCPU's saved state: KVM's registers and the PV vCPU fields survive save -> restore -> save."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hospes.pv import abi
from hospes.pv.runstate import RunEvent
from hospes.pv.vcpu import PvVcpu
from hospes.pv.vcpu_state import PvVcpuState, StartContext
from hospes.state import StateError, decode, encode
from pv_machine import Machine

pytestmark = pytest.mark.kvm


@pytest.fixture()
def machine():
    m = Machine()
    yield m
    m.close()


def dress(pv: PvVcpu) -> None:
    """Give a vCPU state that differs from a fresh one in every field."""
    pv.setup_cpu(pv.domain.cpuid.kvm_entries())
    pv.set_entry_state(0xFFFFFFFF81000000, 0xFFFFFFFF81800000, 0x1234)
    regs = pv.kvm.get_regs()
    regs.rbx, regs.r15 = 0xDEADBEEF, 0x1122334455667788
    pv.kvm.set_regs(regs)
    pv.kernel_mode = False
    pv.kernel_cr3, pv.user_cr3, pv.cpu_cr3 = 0x5000, 0x6000, 0x6000
    pv.gs_base_kernel, pv.gs_base_user, pv.fs_base, pv.gs_sel = 0xFFFF888000000000, 0x7F0000, 0x7F1000, 0x2B
    pv.trap_table = {14: (0, 0xFFFFFFFF81001000), 3: (3, 0xFFFFFFFF81002000)}
    pv.callbacks = {abi.CALLBACKTYPE_event: (0xFFFFFFFF81003000, abi.CALLBACKF_mask_events)}
    pv.kernel_ss, pv.kernel_sp, pv.iopl, pv.cr0_ts, pv.cr4 = 0xE02B, 0xFFFFC90000004000, 1, True, 0x6F0
    pv.debugreg = [1, 2, 3, 4, 0, 0, 0xFFFF0FF0, 0x401]
    pv.vcpu_info_gpa, pv.vcpu_info_registered, pv.runstate_va = 0x3000 + 64, True, 0xFFFF888000010000
    pv.gdt_frames, pv.gdt_ents, pv.ldt_base, pv.ldt_ents = [7, 8], 600, 0xFFFF888000020000, 5
    pv.writes = [(0x9000, 0x5067), (0x9008, 0)]
    pv.flush_pending, pv.invlpg_va, pv.initialised = True, 0x400000, True
    pv.start_context = StartContext(gprs=(("rax", 1), ("rdi", 2)), frame=(0x1000, 0xE033, 0x202, 0x2000, 0xE02B))
    pv.run_state.fire(RunEvent.UP)


def test_a_vcpu_saved_restored_and_saved_again_is_equal(machine: Machine):
    pv = machine.pv.vcpus[1]
    dress(pv)
    first = pv.save()
    assert (0xDEADBEEF).to_bytes(8, "little") in first.cpu.regs  # KVM's registers are really captured
    other = Machine()
    try:
        again = PvVcpu.restore(first, domain=other.pv, kvm_vcpu=other.pv.vcpus[1].kvm,
                               area=other.trampoline.vcpus[1], cpuid_entries=other.cpuid.kvm_entries())
        second = again.save()
        assert second == first
        regs = again.kvm.get_regs()
        assert (regs.rbx, regs.r15, regs.rip) == (0xDEADBEEF, 0x1122334455667788, 0xFFFFFFFF81000000)
        assert again.online and again.trap_table == pv.trap_table and again.writes == pv.writes
    finally:
        other.close()


def test_a_vcpu_state_round_trips_through_json(machine: Machine):
    pv = machine.pv.vcpus[0]
    dress(pv)
    state = pv.save()
    assert decode(PvVcpuState, json.loads(json.dumps(encode(state)))) == state


def test_a_running_vcpu_is_not_saved(machine: Machine):
    pv = machine.pv.vcpus[0]
    pv.thread_ident = 12345  # as if its thread were in KVM_RUN
    with pytest.raises(StateError, match="pause the domain"):
        pv.save()
    pv.thread_ident = None


def test_restore_refuses_a_newer_version_and_foreign_addresses(machine: Machine):
    import dataclasses

    pv = machine.pv.vcpus[0]
    dress(pv)
    state = pv.save()
    args = dict(domain=machine.pv, kvm_vcpu=machine.pv.vcpus[0].kvm, area=machine.trampoline.vcpus[0],
                cpuid_entries=machine.cpuid.kvm_entries())
    with pytest.raises(StateError, match="version 2"):
        PvVcpu.restore(dataclasses.replace(state, version=2), **args)
    with pytest.raises(StateError, match="outside the domain's memory"):
        PvVcpu.restore(dataclasses.replace(state, writes=((1 << 40, 0),)), **args)
    with pytest.raises(StateError, match="KVM's struct"):
        PvVcpu.restore(dataclasses.replace(state, cpu=dataclasses.replace(state.cpu, regs=b"\0" * 3)), **args)


class _Backend:
    def __init__(self) -> None:
        self.notified = 0

    def notify(self) -> None:
        self.notified += 1


def test_a_pv_domain_saved_and_restored_on_a_new_vm_saves_the_same(machine: Machine):
    """vCPUs, page types and pins, event channels, timers and domain flags come back as they were;
    the clock continues from the saved system time."""
    pv = machine.pv
    for v in pv.vcpus:
        dress(v)
    backend = _Backend()
    port = pv.evtchn.alloc_backend_port(backend)
    pv.evtchn.bind_virq(abi.VIRQ_TIMER, 1)
    pv.evtchn.alloc_unbound(0)
    pv.mmu.pin(pv.vcpus[0], 40, 1)  # an empty L1 is a valid page table
    pv.timers.set_singleshot(0, pv.clock.now() + 10**9)
    pv.timers.set_periodic(1, 5 * 10**6)
    pv.vm_assist.add(2)
    pv.grants.setup(4)
    pv.shutdown_code = 3
    first = pv.save()
    assert decode(type(first), json.loads(json.dumps(encode(first)))) == first
    restored_backend = _Backend()
    other = Machine(saved=first, memory=bytes(machine.mem.buf), backends={port: restored_backend})
    try:
        second = other.pv.save()
        assert second.clock.system_time_ns >= first.clock.system_time_ns
        assert dataclasses.replace(second, clock=first.clock) == first
        assert other.pv.mmu.table_level(40) == 1
        other.pv.evtchn.send(port)
        assert restored_backend.notified == 1 and backend.notified == 0
    finally:
        other.close()


def test_a_saved_pv_domain_does_not_restore_with_other_vcpus(machine: Machine):
    first = machine.pv.save()
    with pytest.raises(StateError, match="cannot become domain 1 with 3"):
        Machine(nr_vcpus=3, saved=first)
