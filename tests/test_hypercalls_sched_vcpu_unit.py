"""sched_op, set_timer_op and vcpu_op, without KVM.

Sleeping and timers are recorded by :class:`pv_fakes.FakePvDomain` instead of
done; everything else (run states, vcpu_info placement, event channels,
VCPUOP_initialise's context checks) is the production code. Expected answers
are Xen's (xen/include/public/sched.h and vcpu.h; xen/common/sched/core.c,
xen/common/domain.c): a vCPU that does not exist is -ENOENT, bringing up a
vCPU that has no context is -EINVAL, a periodic timer under 1 ms is -EINVAL,
a singleshot timer for another vCPU is -EINVAL and one already in the past
with VCPU_SSHOTTMR_future is -ETIME, a second vcpu_info registration is
-EBUSY, poll takes at most 128 ports below the port limit.
"""

from __future__ import annotations

import struct
import time

import pytest

from hospes.pv import abi
from hospes.pv.abi import Hypercall
from hospes.pv.errors import Errno
from hospes.pv.evtchn import NR_PORTS
from hospes.pv.hypercalls import sched, vcpu_op as V
from hospes.pv.smp import CONTEXT_SIZE, VGCF_in_kernel
from pv_fakes import ARG_VA, BUF_VA, BUF_FRAME, L4_FRAME, STACK_TOP, FakePvDomain, FakeVcpu, u32, u64

HANDLER = 0xFFFF_FFFF_8100_0000
MS = 1_000_000


def sched_op(vcpu: FakeVcpu, cmd: int, payload: bytes = b"") -> int:
    vcpu.put(ARG_VA, payload or bytes(8))
    return vcpu.hypercall(Hypercall.sched_op, cmd, ARG_VA)


def vcpu_op(vcpu: FakeVcpu, cmd: int, target: int, payload: bytes | None = None, arg: int = ARG_VA) -> int:
    if payload is not None:
        vcpu.put(arg, payload)
    return vcpu.hypercall(Hypercall.vcpu_op, cmd, target, arg)


# --- sched_op ----------------------------------------------------------------------------------


def test_yield_asks_the_domain_to_yield(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert sched_op(vcpu, sched.SCHEDOP_yield) == 0
    assert dom.yields == [0]


def test_block_enables_event_delivery_then_blocks(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    vcpu.upcall_mask = 1
    assert sched_op(vcpu, sched.SCHEDOP_block) == 0
    assert vcpu.upcall_mask == 0
    assert dom.blocked == [0]


@pytest.mark.parametrize("reason", [abi.SHUTDOWN_poweroff, abi.SHUTDOWN_reboot, abi.SHUTDOWN_crash])
def test_shutdown_reports_the_reason_code(dom: FakePvDomain, vcpu: FakeVcpu, reason: int) -> None:
    assert sched_op(vcpu, sched.SCHEDOP_shutdown, struct.pack("<I", reason)) == 0
    assert dom.record.shutdowns == [reason]


def test_shutdown_with_an_unknown_reason_is_refused(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    # Hospes' own rule (Xen passes any reason on to the toolstack): a reason
    # the toolstack cannot name is refused rather than reported.
    assert sched_op(vcpu, sched.SCHEDOP_shutdown, struct.pack("<I", 77)) == -Errno.EINVAL
    assert dom.record.shutdowns == []


def test_shutdown_code_records_the_code_without_shutting_down(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert sched_op(vcpu, sched.SCHEDOP_shutdown_code, struct.pack("<I", abi.SHUTDOWN_crash)) == 0
    assert dom.shutdown_code == abi.SHUTDOWN_crash
    assert dom.record.shutdowns == []


def test_a_shutdown_after_shutdown_code_reports_the_code(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    sched_op(vcpu, sched.SCHEDOP_shutdown_code, struct.pack("<I", abi.SHUTDOWN_crash))
    sched_op(vcpu, sched.SCHEDOP_shutdown, struct.pack("<I", abi.SHUTDOWN_poweroff))
    assert dom.record.shutdowns == [abi.SHUTDOWN_crash]


def poll_args(vcpu: FakeVcpu, ports: list[int], timeout: int, nr: int | None = None) -> bytes:
    vcpu.put(BUF_VA, struct.pack(f"<{len(ports)}I", *ports))
    return struct.pack("<QI4xQ", BUF_VA, len(ports) if nr is None else nr, timeout)


def test_poll_passes_the_ports_and_the_timeout_to_the_domain(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert sched_op(vcpu, sched.SCHEDOP_poll, poll_args(vcpu, [3, 9], 123 * MS)) == 0
    assert dom.polled == [(0, (3, 9), 123 * MS)]


def test_poll_refuses_more_than_128_ports_and_ports_beyond_the_limit(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert sched_op(vcpu, sched.SCHEDOP_poll, poll_args(vcpu, [1] * 129, 0)) == -Errno.EINVAL
    assert sched_op(vcpu, sched.SCHEDOP_poll, poll_args(vcpu, [1, NR_PORTS], 0)) == -Errno.EINVAL
    assert dom.polled == []


def test_poll_with_an_unreadable_port_list_is_efault(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert sched_op(vcpu, sched.SCHEDOP_poll, struct.pack("<QI4xQ", 0x1000, 2, 0)) == -Errno.EFAULT
    assert dom.polled == []


def test_remote_shutdown_is_not_permitted_and_unknown_commands_are_enosys(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert sched_op(vcpu, sched.SCHEDOP_remote_shutdown, struct.pack("<HxxI", 0, 0)) == -Errno.EPERM
    assert sched_op(vcpu, 99) == -Errno.ENOSYS
    assert dom.record.shutdowns == []


def test_set_timer_op_sets_this_vcpus_singleshot_timer(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert vcpu.hypercall(Hypercall.set_timer_op, 7_000 * MS) == 0
    assert dom.timers.singleshot == [(0, 7_000 * MS, False)]


@pytest.mark.parametrize("deadline", [(1 << 64) - 1, 1 << 63, "now + 2^50", "now + 2^52"])
def test_set_timer_op_takes_a_huge_timeout_for_100_ms(dom: FakePvDomain, vcpu: FakeVcpu, deadline) -> None:
    # do_set_timer_op: negative, or 2^50 ns or more ahead -> NOW() + 100 ms.
    now = dom.clock.now()
    value = {"now + 2^50": now + (1 << 50), "now + 2^52": now + (1 << 52)}.get(deadline, deadline)
    assert vcpu.hypercall(Hypercall.set_timer_op, value) == 0
    assert dom.timers.singleshot == [(0, now + 100 * MS, False)]


def test_set_timer_op_just_under_2_50_ahead_and_in_the_past_are_kept(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    now = dom.clock.now()
    assert vcpu.hypercall(Hypercall.set_timer_op, now + (1 << 50) - 1) == 0
    assert vcpu.hypercall(Hypercall.set_timer_op, now - 1) == 0       # past: fires at once
    assert vcpu.hypercall(Hypercall.set_timer_op, 0) == 0             # stops
    assert dom.timers.singleshot == [(0, now + (1 << 50) - 1, False), (0, now - 1, False), (0, 0, False)]


# --- vcpu_op: who is up ------------------------------------------------------------------------------


def test_vcpu_op_on_a_vcpu_that_does_not_exist_is_enoent(vcpu: FakeVcpu) -> None:
    assert vcpu_op(vcpu, V.VCPUOP_is_up, 2) == -Errno.ENOENT
    assert vcpu_op(vcpu, V.VCPUOP_is_up, 0xFFFF_FFFF) == -Errno.ENOENT


def test_is_up_tells_the_boot_vcpu_from_a_secondary_one(vcpu: FakeVcpu) -> None:
    assert vcpu_op(vcpu, V.VCPUOP_is_up, 0) == 1
    assert vcpu_op(vcpu, V.VCPUOP_is_up, 1) == 0


def test_a_vcpu_without_a_context_cannot_be_brought_up(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert vcpu_op(vcpu, V.VCPUOP_up, 1) == -Errno.EINVAL
    assert not dom.vcpus[1].online


def guest_context(*, rip: int, rsp: int, cr3: int, flags: int = VGCF_in_kernel) -> bytes:
    ctx = bytearray(CONTEXT_SIZE)
    struct.pack_into("<Q", ctx, 0x200, flags)
    struct.pack_into("<Q", ctx, 0x288, rip)                        # user_regs.rip
    struct.pack_into("<H", ctx, 0x290, abi.FLAT_KERNEL_CS)
    struct.pack_into("<QQH", ctx, 0x298, 0x202, rsp, abi.FLAT_KERNEL_SS)
    struct.pack_into("<QQ", ctx, 0x1368, abi.FLAT_KERNEL_SS, rsp)  # kernel_ss, kernel_sp
    struct.pack_into("<Q", ctx, 0x1378 + 3 * 8, cr3)               # ctrlreg[3]
    struct.pack_into("<Q", ctx, 0x13F8, HANDLER)                   # event callback
    return bytes(ctx)


def test_initialise_then_up_then_down_brings_a_vcpu_online_and_offline(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    target = dom.vcpus[1]
    ctx = guest_context(rip=HANDLER + 0x100, rsp=STACK_TOP - 0x800, cr3=L4_FRAME << 12)
    assert vcpu_op(vcpu, V.VCPUOP_initialise, 1, ctx, arg=BUF_VA) == 0
    assert target.initialised and target.kernel_cr3 == L4_FRAME << 12
    assert target.start_context is not None and target.start_context.frame[0] == HANDLER + 0x100
    assert target.callbacks[abi.CALLBACKTYPE_event][0] == HANDLER
    assert vcpu_op(vcpu, V.VCPUOP_initialise, 1, arg=BUF_VA) == -Errno.EEXIST
    assert vcpu_op(vcpu, V.VCPUOP_up, 1) == 0
    assert vcpu_op(vcpu, V.VCPUOP_is_up, 1) == 1
    assert vcpu_op(vcpu, V.VCPUOP_down, 1) == 0
    assert vcpu_op(vcpu, V.VCPUOP_is_up, 1) == 0
    assert not target.online and target.kicks == 1      # woken to notice it is down


def bring_up_vcpu1(vcpu: FakeVcpu) -> None:
    ctx = guest_context(rip=HANDLER + 0x100, rsp=STACK_TOP - 0x800, cr3=L4_FRAME << 12)
    assert vcpu_op(vcpu, V.VCPUOP_initialise, 1, ctx, arg=BUF_VA) == 0
    assert vcpu_op(vcpu, V.VCPUOP_up, 1) == 0


def test_a_vcpu_taken_down_can_be_brought_up_again_without_a_new_context(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    bring_up_vcpu1(vcpu)
    assert vcpu_op(vcpu, V.VCPUOP_down, 1) == 0
    assert vcpu_op(vcpu, V.VCPUOP_up, 1) == 0
    assert vcpu_op(vcpu, V.VCPUOP_is_up, 1) == 1


def test_taking_down_the_last_online_vcpu_powers_the_domain_off(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert vcpu_op(vcpu, V.VCPUOP_down, 0) == 0
    assert dom.record.shutdowns == [abi.SHUTDOWN_poweroff]
    assert vcpu.online


def test_initialise_refuses_a_context_without_a_kernel_page_table(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    ctx = guest_context(rip=HANDLER, rsp=STACK_TOP, cr3=0)
    assert vcpu_op(vcpu, V.VCPUOP_initialise, 1, ctx, arg=BUF_VA) == -Errno.EINVAL
    assert not dom.vcpus[1].initialised


def test_initialise_refuses_a_non_canonical_entry_point(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    ctx = guest_context(rip=0x0000_8000_0000_0000, rsp=STACK_TOP, cr3=L4_FRAME << 12)
    assert vcpu_op(vcpu, V.VCPUOP_initialise, 1, ctx, arg=BUF_VA) == -Errno.EINVAL
    assert not dom.vcpus[1].initialised


# --- vcpu_op: registration --------------------------------------------------------------------------------


def test_register_runstate_area_writes_the_runstate_at_once(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    area = BUF_VA + 0x100
    vcpu.put(area, b"\xff" * 48)
    assert vcpu_op(vcpu, V.VCPUOP_register_runstate_memory_area, 0, struct.pack("<Q", area)) == 0
    assert vcpu.runstate_va == area
    data = vcpu.get(area, 48)
    assert u32(data, 0) == 0                          # RUNSTATE_running
    assert u64(data, 8) == dom.clock.now()            # state_entry_time


def test_register_time_area_copies_the_clock_record_under_the_version_protocol(
        dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    area = BUF_VA + 0x200
    vcpu.put(area, struct.pack("<I", 6) + b"\xff" * 28)
    assert vcpu_op(vcpu, V.VCPUOP_register_vcpu_time_memory_area, 0, struct.pack("<Q", area)) == 0
    assert vcpu.time_area_va == area
    data = vcpu.get(area, 32)
    assert u32(data, 0) == 8                          # was 6: odd while writing, even again after
    assert data[4:] == dom.clock.record(8)[4:]
    # 0 unregisters; an area the guest does not map is accepted and skipped, as on Xen.
    assert vcpu_op(vcpu, V.VCPUOP_register_vcpu_time_memory_area, 0, struct.pack("<Q", 0)) == 0
    assert vcpu.time_area_va == 0
    assert vcpu_op(vcpu, V.VCPUOP_register_vcpu_time_memory_area, 0, struct.pack("<Q", 0x7000_0000_0000)) == 0


def test_areas_in_the_hypervisor_range_are_efault(vcpu: FakeVcpu) -> None:
    for op in (V.VCPUOP_register_vcpu_time_memory_area, V.VCPUOP_register_runstate_memory_area):
        for va in (0xFFFF_8000_0000_0000, 0xFFFF_87FF_FFFF_FFF0):
            assert vcpu_op(vcpu, op, 0, struct.pack("<Q", va)) == -Errno.EFAULT
    assert vcpu.time_area_va == 0 and vcpu.runstate_va == 0


def test_get_runstate_info_writes_the_running_state(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    dom.clock.now_ns = 42 * MS
    assert vcpu_op(vcpu, V.VCPUOP_get_runstate_info, 0, arg=BUF_VA) == 0
    data = vcpu.get(BUF_VA, 48)
    assert (u32(data, 0), u64(data, 8)) == (0, 42 * MS)


def test_register_vcpu_info_moves_it_and_events_follow(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    old_gpa = vcpu.vcpu_info_gpa
    vcpu.upcall_mask = 0
    vcpu.mem.buf[old_gpa + 0x20] = 0x5A               # something of the old contents
    new_gpa = (BUF_FRAME << 12) + 0x40
    assert vcpu_op(vcpu, V.VCPUOP_register_vcpu_info, 0, struct.pack("<QI4x", BUF_FRAME, 0x40)) == 0
    assert vcpu.vcpu_info_gpa == new_gpa and vcpu.vcpu_info_registered
    assert dom.mem.buf[new_gpa + 0x20] == 0x5A
    port = dom.evtchn.bind_ipi(0)
    dom.evtchn.send(port)
    assert dom.mem.buf[new_gpa] == 1                  # evtchn_upcall_pending, at the new place
    assert dom.mem.buf[old_gpa] == 0
    assert vcpu.upcall_deliverable()


def test_register_vcpu_info_refuses_a_second_registration_and_bad_places(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    gpa = vcpu.vcpu_info_gpa
    assert vcpu_op(vcpu, V.VCPUOP_register_vcpu_info, 0,
                   struct.pack("<QI4x", dom.layout.ram_pages, 0)) == -Errno.EINVAL
    assert vcpu_op(vcpu, V.VCPUOP_register_vcpu_info, 0, struct.pack("<QI4x", BUF_FRAME, 4096 - 32)) < 0
    assert vcpu_op(vcpu, V.VCPUOP_register_vcpu_info, 0, struct.pack("<QI4x", BUF_FRAME, 4)) < 0
    assert vcpu.vcpu_info_gpa == gpa and not vcpu.vcpu_info_registered
    assert vcpu_op(vcpu, V.VCPUOP_register_vcpu_info, 0, struct.pack("<QI4x", BUF_FRAME, 0)) == 0
    assert vcpu_op(vcpu, V.VCPUOP_register_vcpu_info, 0, struct.pack("<QI4x", BUF_FRAME, 64)) == -Errno.EBUSY
    assert vcpu.vcpu_info_gpa == BUF_FRAME << 12


# --- vcpu_op: timers ----------------------------------------------------------------------------------------


def test_periodic_timer_above_stime_delta_max_is_einval(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert vcpu_op(vcpu, V.VCPUOP_set_periodic_timer, 0, struct.pack("<Q", 1 << 62)) == -Errno.EINVAL
    assert vcpu_op(vcpu, V.VCPUOP_set_periodic_timer, 0, struct.pack("<Q", (1 << 64) - 1)) == -Errno.EINVAL
    assert vcpu_op(vcpu, V.VCPUOP_set_periodic_timer, 0, struct.pack("<Q", (1 << 62) - 1)) == 0
    assert dom.timers.periodic == [(0, (1 << 62) - 1)]


def test_singleshot_timer_at_zero_fires_at_once_rather_than_stopping(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    # Xen: a deadline before NOW() sends the timer event at once; 0 is such a deadline.
    assert vcpu_op(vcpu, V.VCPUOP_set_singleshot_timer, 0, struct.pack("<QI4x", 0, 0)) == 0
    (_, deadline, _force), = dom.timers.singleshot
    assert 0 < deadline <= dom.clock.now()


def test_periodic_timer_needs_at_least_a_millisecond(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    assert vcpu_op(vcpu, V.VCPUOP_set_periodic_timer, 1, struct.pack("<Q", MS - 1)) == -Errno.EINVAL
    assert vcpu_op(vcpu, V.VCPUOP_set_periodic_timer, 1, struct.pack("<Q", 10 * MS)) == 0
    assert vcpu_op(vcpu, V.VCPUOP_stop_periodic_timer, 1) == 0
    assert dom.timers.periodic == [(1, 10 * MS), (1, 0)]


def test_singleshot_timer_is_for_the_calling_vcpu_only(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    payload = struct.pack("<QI4x", 9_000 * MS, 0)
    assert vcpu_op(vcpu, V.VCPUOP_set_singleshot_timer, 1, payload) == -Errno.EINVAL
    assert vcpu_op(vcpu, V.VCPUOP_stop_singleshot_timer, 1) == -Errno.EINVAL
    assert vcpu_op(vcpu, V.VCPUOP_set_singleshot_timer, 0, payload) == 0
    assert vcpu_op(vcpu, V.VCPUOP_stop_singleshot_timer, 0) == 0
    assert dom.timers.singleshot == [(0, 9_000 * MS, True), (0, 0, False)]


def test_singleshot_timer_in_the_past_with_the_future_flag_is_etime(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    past = dom.clock.now() - 1
    payload = struct.pack("<QI4x", past, V.VCPU_SSHOTTMR_future)
    assert vcpu_op(vcpu, V.VCPUOP_set_singleshot_timer, 0, payload) == -Errno.ETIME
    assert dom.timers.singleshot == []
    assert vcpu_op(vcpu, V.VCPUOP_set_singleshot_timer, 0, struct.pack("<QI4x", past, 0)) == 0
    assert dom.timers.singleshot == [(0, past, True)]


def test_unknown_and_unsupported_vcpu_ops_are_enosys(vcpu: FakeVcpu) -> None:
    assert vcpu_op(vcpu, 99, 0) == -Errno.ENOSYS
    assert vcpu_op(vcpu, V.VCPUOP_send_nmi, 0) == -Errno.ENOSYS


# --- a Hospes bug ends the domain, not the thread ----------------------------------------------------


def test_an_exception_on_the_vcpu_thread_crashes_the_domain_with_a_dump(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    def broken_run() -> int:
        raise ZeroDivisionError("injected")

    vcpu.kvm.run = broken_run  # type: ignore[attr-defined]
    vcpu.next_clock_correct = 1 << 62
    vcpu._loop()
    (text,) = dom.record.crashes
    assert "vCPU 0 before the first KVM exit: Hospes internal error" in text
    assert "ZeroDivisionError: injected" in text and "broken_run" in text
    assert "rip=" in text and "cr3=" in text


def test_an_exception_in_an_exit_handler_names_the_exit(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    from hospes.kvm import constants as kc

    vcpu.kvm.run = lambda: kc.KVM_EXIT_INTR  # type: ignore[attr-defined]
    vcpu.next_clock_correct = 1 << 62

    def broken_kick() -> None:
        raise KeyError("injected")

    vcpu._on_kick = broken_kick  # type: ignore[method-assign]
    vcpu._loop()
    (text,) = dom.record.crashes
    assert f"after KVM exit {kc.KVM_EXIT_INTR}" in text and "KeyError" in text


def test_a_timer_thread_exception_crashes_the_domain_with_every_vcpus_dump() -> None:
    import threading

    from hospes.pv.time import Clock, Timers

    dom = FakePvDomain()
    try:
        crashed = threading.Event()
        dom.hooks = type(dom.hooks)(console_io=dom.record.console.append, shutdown=dom.record.shutdowns.append,
                                    crash=lambda text: (dom.record.crashes.append(text), crashed.set()))
        timers = Timers(Clock(1_000_000, time.monotonic_ns), 2, lambda v: 1 // 0)
        timers.on_error = dom._timer_thread_failed
        timers.start()
        timers.set_singleshot(1, 1)
        assert crashed.wait(10)
        timers.thread.join(10)
        assert not timers.thread.is_alive()
        (text,) = dom.record.crashes
        assert "timer thread: Hospes internal error" in text and "ZeroDivisionError" in text
        assert "vCPU 0:" in text and "vCPU 1:" in text and "rip=" in text
    finally:
        dom.close_memory()
