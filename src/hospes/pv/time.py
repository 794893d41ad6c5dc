"""Guest time: the pvclock records and the per-vCPU timers (pv-abi.md §2.7, §9.8).

System time is one straight line of the guest TSC. The domain publishes a
single pvclock record -- a (TSC, system time) pair and Xen's scale factors for
the TSC rate KVM runs the guest at -- in every vCPU's ``vcpu_info.time`` and in
each registered time area, and never moves it while the domain runs. So every
vCPU, at any moment, computes the same system time from its (synchronised)
TSC, the record can carry ``PVCLOCK_TSC_STABLE_BIT``, and Linux reads the time
in user space through its vDSO without a system call, as on a Xen host with a
reliable TSC. A record that was re-anchored to the host clock now and then
would bend the line at every re-anchoring; the guest's clocksource watchdog
sees that as skew between its xen and tsc clocks.

Hospes itself needs system time too (timer deadlines are absolute system
times) but cannot read the guest TSC cheaply: a KVM_GET_MSRS round trip is
tens of microseconds and waits while the vCPU is in KVM_RUN. It estimates the
guest TSC from the host's CLOCK_MONOTONIC_RAW, which runs off the same
hardware TSC without NTP's slewing, and the vCPU threads correct the estimate
from a fresh (host time, guest TSC) sample every few seconds. The estimate
only decides when a timer fires; what the guest sees stays the line.

Timers fire VIRQ_TIMER from one thread that sleeps until the earliest deadline.

Save/restore and migration keep system time continuous, as Xen does for a
domain: the saved system time is what the record gives for the guest TSC at
the save (the vCPUs are stopped, so no guest read went past it), and the
restored :class:`Clock` publishes a new record that starts there, plus the
real time the save lasted, on the new host's TSC. Timer deadlines (absolute
system times chosen by the guest) keep their meaning and the guest never sees
time go backwards. The wall clock is not saved: it is the new host's real time
minus system time, so the guest's date stays right.
"""

from __future__ import annotations

import heapq
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol, Sequence

from hospes.state import StateError, check_version

NS = 1_000_000_000


def time_scale(hz: int) -> tuple[int, int]:
    """Xen's set_time_scale: (mul, shift) with ns = ((tsc << shift) * mul) >> 32."""
    shift = 0
    tps = hz
    while tps > 2 * NS:
        tps >>= 1
        shift -= 1
    while tps <= NS:
        tps <<= 1
        shift += 1
    mul = (NS << 32) // tps
    return mul & 0xFFFFFFFF, shift


@dataclass(frozen=True, slots=True)
class ClockState:
    """Saved clock: where the domain's system time stood when it was saved.

    ``tsc_khz`` is the guest's TSC rate then, for the restoring domain to ask
    of KVM (a guest may have calibrated with it); the restored clock itself
    scales with the rate its vCPUs really run at on the new host. ``wall_ns``
    is the host's real time at the save: the restored clock adds the real time
    that passed since (a migration's downtime), so the guest's clock keeps up
    with the world, as it does through a pause.
    """

    VERSION: ClassVar[int] = 1
    system_time_ns: int
    tsc_khz: int
    wall_ns: int = 0        # 0: unknown (add nothing)
    version: int = VERSION


#: vcpu_time_info.flags: every vCPU's system time comes from one line of a TSC that
#: is synchronised across them, so readers need no cross-vCPU monotonicity guard.
PVCLOCK_TSC_STABLE_BIT = 1
#: A (host time, guest TSC) sample read in more than this is too blurred to correct with,
#: unless no sharper one came for CORRECT_ANYWAY_NS (a loaded host: better a blurred
#: correction than none, should the guest TSC ever jump).
SAMPLE_MAX_NS = 50_000
CORRECT_ANYWAY_NS = 60 * NS
SAMPLE_TRIES = 3


def host_ns() -> int:
    """The host clock the guest TSC is estimated from (see the module docstring)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)


def sample_tsc(read_tsc: Callable[[], int]) -> tuple[int, int, int]:
    """The tightest of a few ``(host time, guest TSC, width)`` readings."""
    best = (0, 0, -1)
    for _ in range(SAMPLE_TRIES):
        t0 = host_ns()
        tsc = read_tsc()
        t1 = host_ns()
        if best[2] < 0 or t1 - t0 < best[2]:
            best = ((t0 + t1) // 2, tsc, t1 - t0)
    return best


class TscVcpu(Protocol):
    def get_tsc_offset(self) -> int | None: ...
    def set_tsc_offset(self, offset: int) -> None: ...


def synchronise_tsc(vcpus: Sequence[TscVcpu]) -> None:
    """Give every vCPU the first one's TSC offset. The pvclock record is shared
    (PVCLOCK_TSC_STABLE_BIT), so a vCPU whose TSC ran apart from the others would
    compute another system time. KVM keeps the TSCs of vCPUs created within a
    second of each other together, which a loaded host may not manage; where KVM
    offers KVM_VCPU_TSC_OFFSET, this makes it exact. (PVM hosts run every vCPU
    on the host TSC: offset 0 everywhere, nothing to do.)"""
    offset = vcpus[0].get_tsc_offset()
    if offset is None:
        return
    for vcpu in vcpus[1:]:
        if vcpu.get_tsc_offset() != offset:
            vcpu.set_tsc_offset(offset)


class Clock:
    """The domain's system time: one pvclock record, fixed while the domain runs."""

    def __init__(self, tsc_khz: int, read_tsc: Callable[[], int]) -> None:
        self._start(tsc_khz, read_tsc, 0)

    def _start(self, tsc_khz: int, read_tsc: Callable[[], int], system_time: int) -> None:
        """Start system time at ``system_time`` at the guest TSC now."""
        if tsc_khz <= 0:
            raise ValueError(f"The TSC rate must be positive, not {tsc_khz} kHz")  # time_scale would never end
        self.tsc_hz = tsc_khz * 1000
        self.mul, self.shift = time_scale(self.tsc_hz)
        self.read_tsc = read_tsc
        host, tsc, _ = sample_tsc(read_tsc)
        # The published record. After a restore tsc_stamp may be far from 0: a
        # new vCPU's TSC has nothing to do with the continued system time.
        self.tsc_stamp = tsc
        self.system_stamp = system_time
        self._estimate = (host, tsc)    # one tuple: readers on other threads never see half an update
        self._corrected_at = host
        self.wall0 = time.time_ns() - system_time

    def save(self) -> ClockState:
        """The clock where the guest left it; every vCPU must be stopped."""
        return ClockState(system_time_ns=self.system_at(self.read_tsc()), tsc_khz=self.tsc_hz // 1000,
                          wall_ns=time.time_ns())

    @classmethod
    def restore(cls, state: ClockState, *, tsc_khz: int, read_tsc: Callable[[], int]) -> Clock:
        """A clock whose system time continues from ``state`` on this host.

        ``tsc_khz`` and ``read_tsc`` are the new host's, as for the
        constructor: the new record starts at the restored vCPU's TSC now.
        """
        check_version(state, "guest clock")
        if state.system_time_ns < 0:
            raise StateError(f"The saved guest clock has negative system time {state.system_time_ns} ns.")
        # Never backwards: hosts whose clocks disagree give no negative gap.
        passed = max(0, time.time_ns() - state.wall_ns) if state.wall_ns > 0 else 0
        clock = cls.__new__(cls)
        clock._start(tsc_khz, read_tsc, state.system_time_ns + passed)
        return clock

    def system_at(self, tsc: int) -> int:
        """System time at guest TSC ``tsc``, computed exactly as the guest computes it from the record."""
        delta = tsc - self.tsc_stamp
        delta = delta << self.shift if self.shift >= 0 else delta >> -self.shift
        return self.system_stamp + ((delta * self.mul) >> 32)

    def guest_tsc(self) -> int:
        """The guest TSC now, as estimated from the host clock."""
        host, tsc = self._estimate
        return tsc + (host_ns() - host) * self.tsc_hz // NS

    def now(self) -> int:
        return self.system_at(self.guest_tsc())

    def correct(self, read_tsc: Callable[[], int]) -> None:
        """Re-base the estimate on a fresh sample (from a vCPU thread, outside KVM_RUN)."""
        host, tsc, width = sample_tsc(read_tsc)
        if width <= SAMPLE_MAX_NS or host - self._corrected_at >= CORRECT_ANYWAY_NS:
            self._estimate = (host, tsc)
            self._corrected_at = host

    def record(self, version: int) -> bytes:
        """The vcpu_time_info every vCPU publishes, with ``version``."""
        return struct.pack("<IIQQIbBH", version, 0, self.tsc_stamp, self.system_stamp, self.mul, self.shift,
                           PVCLOCK_TSC_STABLE_BIT, 0)

    def publish(self, buf: memoryview, gpa: int) -> None:
        """Write the record into a live vcpu_time_info under its version protocol (odd while changing)."""
        word = buf[gpa:gpa + 4].cast("I")       # the version: single aligned stores, never torn
        odd = (word[0] + 1) | 1
        word[0] = odd                                               # odd: update in progress
        buf[gpa + 4:gpa + 32] = self.record(odd)[4:]
        word[0] = (odd + 1) & 0xFFFFFFFF                            # even: stable again
        word.release()

    def wallclock(self) -> tuple[int, int]:
        return self.wall0 // NS, self.wall0 % NS


@dataclass(frozen=True, slots=True)
class VcpuTimersState:
    """One vCPU's timers, as absolute guest system times in ns (0 = not set)."""

    VERSION: ClassVar[int] = 1
    singleshot: int
    period: int
    next_periodic: int
    version: int = VERSION


@dataclass(frozen=True, slots=True)
class TimersState:
    """Saved timers, one entry per vCPU. Deadlines are guest system time, which
    the restored :class:`Clock` continues, so they need no adjusting."""

    VERSION: ClassVar[int] = 1
    vcpus: tuple[VcpuTimersState, ...]
    version: int = VERSION


class Timers:
    """Singleshot and periodic timers of every vCPU, on one thread."""

    def __init__(self, clock: Clock, nr_vcpus: int, fire: Callable[[int], None]) -> None:
        self.clock = clock
        self.fire = fire
        self.singleshot = [0] * nr_vcpus
        self.periodic = [0] * nr_vcpus
        self.next_periodic = [0] * nr_vcpus
        self.cond = threading.Condition()
        self.heap: list[tuple[int, int, str]] = []
        self.calls: list[tuple[int, int, Callable[[], None]]] = []  # (deadline, seq, fn): call_later
        self._seq = 0
        self.stopping = False
        self.held = False      # see hold()
        self._firing = False
        # Called (then the thread ends) when anything on the thread raises: a bug,
        # which must end the domain rather than leave it without timers. None: the thread dies.
        self.on_error: Callable[[Exception], None] | None = None
        self.thread = threading.Thread(target=self._run, name="timers", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it: no timer fires (and no call is made) afterwards."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join()

    def hold(self) -> None:
        """Fire nothing (and make no call) until :meth:`release`; returns once a firing in
        progress has ended. A save's final copy needs guest memory still: a timer that
        falls due meanwhile stays armed, and is in the saved state as such."""
        with self.cond:
            self.held = True
            while self._firing:
                self.cond.wait()

    def release(self) -> None:
        with self.cond:
            self.held = False
            self.cond.notify_all()

    def set_singleshot(self, vcpu: int, deadline: int, force: bool = False) -> None:
        """Arm ``vcpu``'s one-shot timer at system time ``deadline`` (0 stops it).

        Xen's deadline is a signed s_time_t: one with bit 63 set is in the past
        and fires at once, never a wait the host cannot express.
        """
        if deadline >= 1 << 63:
            deadline = 1
        with self.cond:
            self.singleshot[vcpu] = deadline
            if deadline:
                heapq.heappush(self.heap, (deadline, vcpu, "one"))
                self.cond.notify()

    def set_periodic(self, vcpu: int, period: int) -> None:
        with self.cond:
            self.periodic[vcpu] = period
            if period:
                self.next_periodic[vcpu] = self.clock.now() + period
                heapq.heappush(self.heap, (self.next_periodic[vcpu], vcpu, "per"))
                self.cond.notify()

    def call_later(self, delay_ns: int, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the timer thread ``delay_ns`` from now (no thread of its own)."""
        with self.cond:
            self._seq += 1
            heapq.heappush(self.calls, (self.clock.now() + delay_ns, self._seq, fn))
            self.cond.notify()

    def save(self) -> TimersState:
        with self.cond:
            return TimersState(
                tuple(
                    VcpuTimersState(
                        singleshot=self.singleshot[v],
                        period=self.periodic[v],
                        # Left behind when a periodic timer is stopped; meaningless then.
                        next_periodic=self.next_periodic[v] if self.periodic[v] else 0,
                    )
                    for v in range(len(self.singleshot))
                )
            )

    @classmethod
    def restore(
        cls, state: TimersState, *, clock: Clock, nr_vcpus: int, fire: Callable[[int], None]
    ) -> Timers:
        """Timers armed at the saved deadlines on ``clock`` (a restored clock
        continues system time, so they fire when they would have). Deadlines
        already past fire as soon as the thread starts. Not started."""
        check_version(state, "vCPU timers")
        if len(state.vcpus) != nr_vcpus:
            raise StateError(
                f"The saved vCPU timers are for {len(state.vcpus)} vCPUs, but the domain has "
                f"{nr_vcpus}; restore it with the vCPU count it was saved with."
            )
        timers = cls(clock, nr_vcpus, fire)
        for v, saved in enumerate(state.vcpus):
            check_version(saved, f"timers of vCPU {v}")
            if min(saved.singleshot, saved.period, saved.next_periodic) < 0 or (
                bool(saved.period) != bool(saved.next_periodic)
            ):
                raise StateError(
                    f"The saved timers of vCPU {v} are inconsistent: singleshot {saved.singleshot}, "
                    f"period {saved.period}, next periodic deadline {saved.next_periodic}."
                )
            timers.singleshot[v] = saved.singleshot
            timers.periodic[v] = saved.period
            timers.next_periodic[v] = saved.next_periodic
            if saved.singleshot:
                heapq.heappush(timers.heap, (saved.singleshot, v, "one"))
            if saved.period:
                heapq.heappush(timers.heap, (saved.next_periodic, v, "per"))
        return timers

    def _take_due(self, now: int) -> list[int]:
        """Pop the timers due at ``now`` (re-arming periodic ones); the vCPUs to fire.
        Called with ``cond`` held."""
        due: list[int] = []
        while self.heap and self.heap[0][0] <= now:
            deadline, v, kind = heapq.heappop(self.heap)
            if kind == "one" and self.singleshot[v] == deadline:
                self.singleshot[v] = 0
                due.append(v)
            elif kind == "per" and self.periodic[v] and self.next_periodic[v] == deadline:
                due.append(v)
                # From when it fired, as Xen's vcpu_periodic_timer_work: a late tick
                # is not followed by a burst catching up.
                self.next_periodic[v] = now + self.periodic[v]
                heapq.heappush(self.heap, (self.next_periodic[v], v, "per"))
        return due

    def _run(self) -> None:
        try:
            self._serve()
        except Exception as e:
            if self.on_error is None:
                raise
            self.on_error(e)

    def _serve(self) -> None:
        while True:
            calls: list[Callable[[], None]] = []
            with self.cond:
                if self.stopping:
                    return
                if self.held:
                    self.cond.wait()
                    continue
                now = self.clock.now()
                while self.calls and self.calls[0][0] <= now:
                    calls.append(heapq.heappop(self.calls)[2])
                due = self._take_due(now)
                if not due and not calls:
                    deadlines = [q[0][0] for q in (self.heap, self.calls) if q]
                    wait = min((min(deadlines) - now) / NS, threading.TIMEOUT_MAX) if deadlines else None
                    self.cond.wait(wait)
                    continue
                self._firing = True
            try:
                for fn in calls:
                    fn()
                for v in due:
                    self.fire(v)
            finally:
                with self.cond:
                    self._firing = False
                    self.cond.notify_all()


__all__ = ["NS", "Clock", "synchronise_tsc", "ClockState", "Timers", "TimersState", "VcpuTimersState", "time_scale"]
