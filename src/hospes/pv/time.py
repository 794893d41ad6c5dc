"""Guest time: the pvclock records and the per-vCPU timers (pv-abi.md §2.7, §9.8).

System time is host CLOCK_MONOTONIC minus the domain's start, in ns. The
guest TSC runs natively; a (TSC, system time) pair and the TSC frequency from
KVM give Xen's scale factors, published in every vCPU's ``vcpu_time_info``.
Each vCPU re-samples its pair about once a second: a guest TSC on a nested or
migrating host can drift from the host's monotonic clock, and the timers below
compare guest deadlines with that clock, so the two must not drift apart.
Timers fire VIRQ_TIMER from one thread that sleeps until the earliest deadline.
"""

from __future__ import annotations

import heapq
import struct
import threading
import time
from typing import Callable

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


class Clock:
    def __init__(self, tsc_khz: int, read_tsc: Callable[[], int]) -> None:
        self.tsc_hz = tsc_khz * 1000
        self.mul, self.shift = time_scale(self.tsc_hz)
        t0 = time.monotonic_ns()
        tsc = read_tsc()
        t1 = time.monotonic_ns()
        self.base_ns = (t0 + t1) // 2
        self.tsc0 = tsc
        self.wall0 = time.time_ns() - (time.monotonic_ns() - self.base_ns)

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
        self.thread = threading.Thread(target=self._run, name="timers", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()

    def set_singleshot(self, vcpu: int, deadline: int, force: bool = False) -> None:
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

    def _run(self) -> None:
        while True:
            due: list[int] = []
            calls: list[Callable[[], None]] = []
            with self.cond:
                if self.stopping:
                    return
                now = self.clock.now()
                while self.calls and self.calls[0][0] <= now:
                    calls.append(heapq.heappop(self.calls)[2])
                while self.heap and self.heap[0][0] <= now:
                    deadline, v, kind = heapq.heappop(self.heap)
                    if kind == "one" and self.singleshot[v] == deadline:
                        self.singleshot[v] = 0
                        due.append(v)
                    elif kind == "per" and self.periodic[v] and self.next_periodic[v] == deadline:
                        due.append(v)
                        self.next_periodic[v] = deadline + self.periodic[v]
                        heapq.heappush(self.heap, (self.next_periodic[v], v, "per"))
                if not due and not calls:
                    deadlines = [q[0][0] for q in (self.heap, self.calls) if q]
                    self.cond.wait((min(deadlines) - now) / NS if deadlines else None)
                    continue
            for fn in calls:
                fn()
            for v in due:
                self.fire(v)
