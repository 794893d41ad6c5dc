"""Guest time across save/restore: the clock continues system time, timers keep their deadlines."""

from __future__ import annotations

import dataclasses
import json
import struct
import threading
from types import SimpleNamespace

import pytest

from hospes.pv import time as pvtime
from hospes.pv.time import NS, Clock, ClockState, Timers, TimersState, VcpuTimersState, time_scale
from hospes.state import StateError, decode, encode


def tsc_1ghz() -> int:
    """A TSC at 1 GHz that runs with the real host clock."""
    return pvtime.host_ns()


class FakeHost:
    """A host's raw monotonic and wall clocks and a vCPU's TSC running at ``tsc_hz`` from
    ``tsc_at_zero``, moved by hand."""

    def __init__(self, monotonic: int, wall: int, tsc_hz: int = 2_000_000_000, tsc_at_zero: int = 0) -> None:
        self.monotonic = monotonic
        self.wall = wall
        self.tsc_hz = tsc_hz
        self.tsc_at_zero = tsc_at_zero

    def advance(self, ns: int) -> None:
        self.monotonic += ns
        self.wall += ns

    def tsc(self) -> int:
        return self.tsc_at_zero + self.monotonic * self.tsc_hz // NS

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(pvtime, "host_ns", lambda: self.monotonic)
        monkeypatch.setattr(pvtime.time, "time_ns", lambda: self.wall)


def test_restored_clock_continues_system_time_on_another_host(monkeypatch) -> None:
    old = FakeHost(monotonic=7 * NS, wall=1_700_000_000 * NS)
    old.install(monkeypatch)
    clock = Clock(2_000_000, old.tsc)
    old.advance(5 * NS)
    state = clock.save()
    assert state == ClockState(system_time_ns=5 * NS, tsc_khz=2_000_000, wall_ns=1_700_000_005 * NS)

    # The new host booted later (smaller monotonic clock), its real time is
    # 20 s on (15 s after the save), it runs TSCs at another rate, and the new
    # vCPU's TSC reads 99.
    new = FakeHost(monotonic=3 * NS, wall=1_700_000_000 * NS + 20 * NS, tsc_hz=3_000_000_000,
                   tsc_at_zero=99 - 9_000_000_000)
    new.install(monkeypatch)
    restored = Clock.restore(state, tsc_khz=3_000_000, read_tsc=new.tsc)
    # System time went on by the real time that passed, as through a pause...
    assert restored.now() == 20 * NS
    assert restored.guest_tsc() == 99
    assert (restored.mul, restored.shift) == time_scale(3_000_000_000)
    assert (restored.tsc_stamp, restored.system_stamp) == (99, 20 * NS)
    # ...so the wall clock at system time 0 is the one the guest booted with: its date stays right.
    assert restored.wallclock() == divmod(1_700_000_000 * NS, NS)
    new.advance(NS)
    assert restored.guest_tsc() == 99 + 3_000_000_000
    assert abs(restored.now() - 21 * NS) <= 1          # the pvclock scale's rounding, as the guest computes it
    assert restored.now() == restored.system_at(new.tsc())


def test_system_time_is_one_line_of_the_tsc_whatever_the_host_clock_does(monkeypatch) -> None:
    host = FakeHost(monotonic=NS, wall=1_700_000_000 * NS, tsc_hz=2_596_144_000)
    host.install(monkeypatch)
    clock = Clock(2_596_144, host.tsc)
    record = clock.record(2)
    version, _, tsc_stamp, system_stamp, mul, shift, flags, _ = struct.unpack("<IIQQIbBH", record)
    assert (version, tsc_stamp, system_stamp, (mul, shift)) == (2, host.tsc(), 0, time_scale(2_596_144_000))
    assert flags & pvtime.PVCLOCK_TSC_STABLE_BIT

    def guest_reads(tsc: int) -> int:     # what Linux's pvclock_scale_delta computes from the record
        delta = tsc - tsc_stamp
        delta = delta << shift if shift >= 0 else delta >> -shift
        return system_stamp + ((delta * mul) >> 32)

    # The host's clock runs 1% fast of the TSC: corrections follow the TSC, the record never moves.
    for _ in range(10):
        host.monotonic += NS
        host.tsc_at_zero -= host.tsc_hz // 100
        clock.correct(host.tsc)
        assert clock.record(2) == record
        assert clock.now() == guest_reads(host.tsc())
    host.monotonic += NS // 2                  # between corrections the estimate runs on the host clock
    assert abs(clock.now() - guest_reads(host.tsc())) < NS // 100


def test_a_blurred_sample_does_not_correct_the_estimate(monkeypatch) -> None:
    host = FakeHost(monotonic=NS, wall=1_700_000_000 * NS)
    host.install(monkeypatch)
    clock = Clock(2_000_000, host.tsc)
    before = clock.guest_tsc()

    def slow_tsc() -> int:
        host.monotonic += pvtime.SAMPLE_MAX_NS + 1
        return 12345
    clock.correct(slow_tsc)
    assert clock.guest_tsc() == before + 3 * (pvtime.SAMPLE_MAX_NS + 1) * 2  # only the host clock moved
    # ...until no sharp sample has come for a long while: then a blurred one is better than none.
    host.monotonic += pvtime.CORRECT_ANYWAY_NS
    clock.correct(slow_tsc)
    width = pvtime.SAMPLE_MAX_NS + 1
    # Anchored at the first (tightest-equal) reading's midpoint; three readings went by since.
    assert clock.guest_tsc() == 12345 + (3 * width - width // 2) * 2


def test_a_host_whose_clock_is_behind_never_takes_system_time_back(monkeypatch) -> None:
    old = FakeHost(monotonic=7 * NS, wall=1_700_000_000 * NS)
    old.install(monkeypatch)
    state = Clock(2_000_000, lambda: 0).save()
    new = FakeHost(monotonic=1 * NS, wall=1_600_000_000 * NS)
    new.install(monkeypatch)
    assert Clock.restore(state, tsc_khz=2_000_000, read_tsc=lambda: 0).now() == state.system_time_ns


def test_restored_clock_on_the_real_host_is_monotonic_from_the_saved_time() -> None:
    clock = Clock(1_000_000, tsc_1ghz)
    state = dataclasses.replace(clock.save(), system_time_ns=clock.now() + 3600 * NS)
    restored = Clock.restore(state, tsc_khz=1_000_000, read_tsc=tsc_1ghz)
    first = restored.now()
    assert first >= state.system_time_ns
    assert restored.now() >= first


def test_clock_state_round_trips_through_json() -> None:
    state = Clock(2_500_000, lambda: 0).save()
    assert decode(ClockState, json.loads(json.dumps(encode(state)))) == state


def test_clock_refuses_a_newer_version_and_negative_time() -> None:
    with pytest.raises(StateError, match="saved guest clock is version 2"):
        Clock.restore(ClockState(0, 1_000_000, version=2), tsc_khz=1_000_000, read_tsc=tsc_1ghz)
    with pytest.raises(StateError, match="negative"):
        Clock.restore(ClockState(-1, 1_000_000), tsc_khz=1_000_000, read_tsc=tsc_1ghz)


# --- timers ---------------------------------------------------------------------------


def fake_clock(now: int) -> SimpleNamespace:
    clock = SimpleNamespace(t=now)
    clock.now = lambda: clock.t
    return clock


def armed(clock) -> Timers:
    """vCPU 0: singleshot at 5000; vCPU 1: every 1000 from 100; vCPU 2: idle."""
    timers = Timers(clock, 3, lambda v: None)
    timers.set_singleshot(0, 5000)
    timers.set_periodic(1, 1000)
    return timers


def test_timers_state_holds_deadlines_in_system_time() -> None:
    timers = armed(fake_clock(100))
    assert timers.save() == TimersState(
        (VcpuTimersState(5000, 0, 0), VcpuTimersState(0, 1000, 1100), VcpuTimersState(0, 0, 0))
    )
    timers.set_periodic(1, 0)  # a stopped periodic timer leaves no deadline behind
    assert timers.save().vcpus[1] == VcpuTimersState(0, 0, 0)


def test_timers_round_trip_through_restore_and_json() -> None:
    clock = fake_clock(100)
    state = armed(clock).save()
    again = Timers.restore(state, clock=clock, nr_vcpus=3, fire=lambda v: None)
    assert again.save() == state
    assert decode(TimersState, json.loads(json.dumps(encode(state)))) == state


def test_restored_timers_fire_at_the_saved_deadlines() -> None:
    state = armed(fake_clock(100)).save()
    restored = Timers.restore(state, clock=fake_clock(100), nr_vcpus=3, fire=lambda v: None)
    with restored.cond:
        assert restored._take_due(1099) == []
        assert restored._take_due(1100) == [1]
        # Late (2100 was due): one tick, and the next a period after it (Xen), not a burst.
        assert restored._take_due(4999) == [1]
        assert restored._take_due(5000) == [0]
        assert restored._take_due(5998) == []
        assert restored._take_due(5999) == [1]  # 4999 + 1000; the one-shot does not come back
    assert restored.save().vcpus[0] == VcpuTimersState(0, 0, 0)


def test_restored_timer_thread_fires_a_deadline_the_continued_clock_has_passed() -> None:
    clock = Clock(1_000_000, tsc_1ghz)
    saved_clock = clock.save()
    timers = Timers(clock, 2, lambda v: None)
    timers.set_singleshot(1, saved_clock.system_time_ns)  # due exactly when the domain was saved
    state = timers.save()

    restored_clock = Clock.restore(saved_clock, tsc_khz=1_000_000, read_tsc=tsc_1ghz)
    fired: list[int] = []
    done = threading.Event()

    def fire(v: int) -> None:
        fired.append(v)
        done.set()

    restored = Timers.restore(state, clock=restored_clock, nr_vcpus=2, fire=fire)
    restored.start()
    try:
        assert done.wait(10)
    finally:
        restored.stop()
        restored.thread.join(10)
    assert fired == [1]


def test_timers_refuse_newer_versions_other_vcpu_counts_and_inconsistency() -> None:
    clock = fake_clock(0)
    ok = VcpuTimersState(0, 0, 0)
    with pytest.raises(StateError, match="saved vCPU timers is version 9"):
        Timers.restore(TimersState((ok,), version=9), clock=clock, nr_vcpus=1, fire=print)
    with pytest.raises(StateError, match="saved timers of vCPU 0 is version 9"):
        Timers.restore(TimersState((VcpuTimersState(0, 0, 0, version=9),)), clock=clock, nr_vcpus=1, fire=print)
    with pytest.raises(StateError, match="for 1 vCPUs, but the domain has 2"):
        Timers.restore(TimersState((ok,)), clock=clock, nr_vcpus=2, fire=print)
    with pytest.raises(StateError, match="inconsistent"):
        Timers.restore(TimersState((VcpuTimersState(0, 1000, 0),)), clock=clock, nr_vcpus=1, fire=print)
    with pytest.raises(StateError, match="inconsistent"):
        Timers.restore(TimersState((VcpuTimersState(-5, 0, 0),)), clock=clock, nr_vcpus=1, fire=print)


def test_a_deadline_with_bit_63_set_is_in_the_past_and_fires_at_once() -> None:
    """set_timer_op(0xffffffffffffffff): a negative s_time_t for Xen; the timer thread must survive it."""
    clock = Clock(1_000_000, tsc_1ghz)
    fired = threading.Event()
    timers = Timers(clock, 1, lambda v: fired.set())
    timers.start()
    try:
        timers.set_singleshot(0, (1 << 64) - 1)
        assert fired.wait(10)
        fired.clear()
        timers.set_singleshot(0, clock.now() + (1 << 62))   # far, but a wait the host can express
        timers.set_singleshot(0, 1)
        assert fired.wait(10) and timers.thread.is_alive()
    finally:
        timers.stop()


def test_every_vcpu_gets_the_first_ones_tsc_offset() -> None:
    class Vcpu:
        def __init__(self, offset: int | None) -> None:
            self.offset = offset
            self.sets: list[int] = []

        def get_tsc_offset(self) -> int | None:
            return self.offset

        def set_tsc_offset(self, offset: int) -> None:
            self.sets.append(offset)
            self.offset = offset

    vcpus = [Vcpu(100), Vcpu(100), Vcpu(-5000)]
    pvtime.synchronise_tsc(vcpus)
    assert [v.offset for v in vcpus] == [100, 100, 100] and [v.sets for v in vcpus] == [[], [], [100]]
    unsupported = [Vcpu(None), Vcpu(None)]
    pvtime.synchronise_tsc(unsupported)       # a KVM without the attribute: nothing to set
    assert all(v.sets == [] for v in unsupported)


def test_real_vcpus_share_one_tsc() -> None:
    from hospes.kvm.system import Kvm

    with Kvm() as kvm:
        vm = kvm.create_vm()
        vcpus = [vm.create_vcpu(0), vm.create_vcpu(1)]
        pvtime.synchronise_tsc(vcpus)
        offsets = {v.get_tsc_offset() for v in vcpus}
        assert len(offsets) == 1 and None not in offsets     # this KVM has KVM_VCPU_TSC_OFFSET
        for v in vcpus:
            v.close()
        vm.close()
