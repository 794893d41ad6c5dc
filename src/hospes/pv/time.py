"""Guest time: the pvclock records and the per-vCPU timers (pv-abi.md §2.7, §9.8).

System time is host CLOCK_MONOTONIC minus the domain's start, in ns. The
guest TSC runs natively; a (TSC, system time) pair and the TSC frequency from
KVM give Xen's scale factors, published in every vCPU's ``vcpu_time_info``.
Each vCPU re-samples its pair about once a second: a guest TSC on a nested or
migrating host can drift from the host's monotonic clock, and the timers below
compare guest deadlines with that clock, so the two must not drift apart.
Timers fire VIRQ_TIMER from one thread that sleeps until the earliest deadline.

Save/restore and migration keep system time continuous, as Xen does for a
domain: the restored :class:`Clock` starts at the saved system time on the new
host's monotonic clock, so timer deadlines (absolute system times chosen by the
guest) keep their meaning and the guest never sees time go backwards. The
wall clock is not saved: it is the new host's real time minus system time, so
the guest's date stays right even though system time did not stop.
"""

from __future__ import annotations

import heapq
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, ClassVar

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


class Clock:
    def __init__(self, tsc_khz: int, read_tsc: Callable[[], int]) -> None:
        self._start(tsc_khz, read_tsc, 0)

    def _start(self, tsc_khz: int, read_tsc: Callable[[], int], system_time: int) -> None:
        """Anchor system time ``system_time`` to this host's clock and the guest TSC now."""
        if tsc_khz <= 0:
            raise ValueError(f"The TSC rate must be positive, not {tsc_khz} kHz")  # time_scale would never end
        self.tsc_hz = tsc_khz * 1000
        self.mul, self.shift = time_scale(self.tsc_hz)
        t0 = time.monotonic_ns()
        tsc = read_tsc()
        t1 = time.monotonic_ns()
        self.base_ns = (t0 + t1) // 2 - system_time
        # The guest TSC at system time 0. After a restore this may be negative
        # (a new vCPU's TSC can be behind the continued system time); the guest
        # only sees guest_tsc(), which never goes below the TSC read here.
        self.tsc0 = tsc - system_time * self.tsc_hz // NS
        self.wall0 = time.time_ns() - (time.monotonic_ns() - self.base_ns)

    def save(self) -> ClockState:
        return ClockState(system_time_ns=self.now(), tsc_khz=self.tsc_hz // 1000, wall_ns=time.time_ns())

    @classmethod
    def restore(cls, state: ClockState, *, tsc_khz: int, read_tsc: Callable[[], int]) -> Clock:
        """A clock whose system time continues from ``state`` on this host.

        ``tsc_khz`` and ``read_tsc`` are the new host's, as for the
        constructor; the guest TSC is re-anchored to whatever the restored
        vCPU reads now, so guest_tsc() agrees with the guest's RDTSC.
        """
        check_version(state, "guest clock")
        if state.system_time_ns < 0:
            raise StateError(f"The saved guest clock has negative system time {state.system_time_ns} ns.")
        # Never backwards: hosts whose clocks disagree give no negative gap.
        passed = max(0, time.time_ns() - state.wall_ns) if state.wall_ns > 0 else 0
        clock = cls.__new__(cls)
        clock._start(tsc_khz, read_tsc, state.system_time_ns + passed)
        return clock

    def now(self) -> int:
        return time.monotonic_ns() - self.base_ns

    def guest_tsc(self) -> int:
        return self.tsc0 + self.now() * self.tsc_hz // NS

    def time_info(self, version: int, tsc: int, system_time: int) -> bytes:
        """A vcpu_time_info record: ``system_time`` ns corresponds to guest TSC ``tsc``."""
        return struct.pack("<IIQQIbBH", version, 0, tsc, system_time, self.mul, self.shift, 0, 0)

    def publish(self, buf: memoryview, gpa: int, tsc: int, system_time: int) -> None:
        """Rewrite a live vcpu_info.time under its version protocol (odd while changing)."""
        word = buf[gpa:gpa + 4].cast("I")       # the version: single aligned stores, never torn
        odd = (word[0] + 1) | 1
        word[0] = odd                                               # odd: update in progress
        buf[gpa + 4:gpa + 32] = self.time_info(odd, tsc, system_time)[4:]
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
        # Called (then the thread ends) when a firing raises: a bug, which must end
        # the domain rather than leave it without timers. None: the thread dies.
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
                self.next_periodic[v] = deadline + self.periodic[v]
                heapq.heappush(self.heap, (self.next_periodic[v], v, "per"))
        return due

    def _run(self) -> None:
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
            except Exception as e:
                if self.on_error is None:
                    raise
                self.on_error(e)
                return
            finally:
                with self.cond:
                    self._firing = False
                    self.cond.notify_all()


__all__ = ["NS", "Clock", "ClockState", "Timers", "TimersState", "VcpuTimersState", "time_scale"]
