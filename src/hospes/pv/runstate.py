"""A vCPU's run state: an explicit state machine, driven by events, never polled.

A vCPU thread is in one of five states::

    DOWN --up--> RUNNING --block--> BLOCKED --wake--> RUNNING
      ^             |  ^                |
      +----down-----+  +------down------+ (to DOWN)
    any --pause--> PAUSED --unpause--> (the state it was paused in)
    any --stop--> STOPPING (final)

``DOWN`` is a vCPU that is not up (secondary vCPUs before VCPUOP_up, or after
VCPUOP_down). ``BLOCKED`` is SCHEDOP_block or SCHEDOP_poll: the vCPU thread
sleeps inside the hypercall. ``PAUSED`` is the toolstack's pause; it remembers
the state it interrupted, and events that arrive meanwhile (an up, a down)
change that remembered state, so unpausing lands where an unpaused vCPU would
be. Pausing a blocked vCPU wakes it (a block may always end early, and the
guest's idle loop blocks again): its thread leaves the hypercall and *parks*
between exits, where its whole state can be saved. ``STOPPING`` ends the vCPU
thread.

Why a condition variable and no timeouts: every event that can end a wait is
one of the transitions above or a *kick* (an event channel raised for this
vCPU, a remote TLB flush), and each of them takes the lock and notifies. A
waiter checks its condition under the same lock before sleeping, so an event
that lands between the check and the sleep is not lost: the waker cannot take
the lock until the waiter is asleep in ``wait()``. So a sleeping vCPU costs
nothing and wakes as soon as there is a reason to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import Enum

NS = 1_000_000_000


class RunState(Enum):
    DOWN = "down"
    RUNNING = "running"
    BLOCKED = "blocked"
    PAUSED = "paused"
    STOPPING = "stopping"


class RunEvent(Enum):
    UP = "up"
    DOWN = "down"
    BLOCK = "block"
    WAKE = "wake"
    PAUSE = "pause"
    UNPAUSE = "unpause"
    STOP = "stop"


_S, _E = RunState, RunEvent

# (state, event) -> next state. Pairs that are absent leave the state as it is:
# a wake for a running vCPU or an up for a running one is not an error.
TRANSITIONS: dict[tuple[RunState, RunEvent], RunState] = {
    (_S.DOWN, _E.UP): _S.RUNNING,
    (_S.RUNNING, _E.BLOCK): _S.BLOCKED,
    (_S.RUNNING, _E.DOWN): _S.DOWN,
    (_S.BLOCKED, _E.WAKE): _S.RUNNING,
    (_S.BLOCKED, _E.DOWN): _S.DOWN,
}


class VcpuRun:
    """The run state of one vCPU and the waits that depend on it."""

    def __init__(self, online: bool = False) -> None:
        self.cond = threading.Condition()
        # Changed only under ``cond``; read without it on the hot path (a word read is atomic).
        self.state = RunState.RUNNING if online else RunState.DOWN
        self._paused_in: RunState | None = None  # the state PAUSED interrupted
        self._kicks = 0                            # bumped by every kick, so waiters can tell
        self.parked = False                        # the vCPU thread sleeps between exits (wait_runnable)

    @property
    def online(self) -> bool:
        """Up (running, blocked, or paused while up)."""
        s = self._paused_in if self.state is RunState.PAUSED else self.state
        return s in (RunState.RUNNING, RunState.BLOCKED)

    def fire(self, event: RunEvent) -> RunState:
        """Apply ``event`` and wake everyone waiting on this vCPU; return the new state."""
        with self.cond:
            self._apply(event)
            self.cond.notify_all()
            return self.state

    def _apply(self, event: RunEvent) -> None:
        state = self.state
        if state is RunState.STOPPING:
            return
        if event is RunEvent.STOP:
            self.state = RunState.STOPPING
        elif event is RunEvent.PAUSE:
            if state is not RunState.PAUSED:
                resume = RunState.RUNNING if state is RunState.BLOCKED else state
                self._paused_in, self.state = resume, RunState.PAUSED
        elif event is RunEvent.UNPAUSE:
            if state is RunState.PAUSED:
                assert self._paused_in is not None
                self.state, self._paused_in = self._paused_in, None
        elif state is RunState.PAUSED:
            assert self._paused_in is not None
            self._paused_in = TRANSITIONS.get((self._paused_in, event), self._paused_in)
        else:
            self.state = TRANSITIONS.get((state, event), state)

    def _now(self) -> RunState:
        return self.state

    def kick(self) -> None:
        """Wake whatever this vCPU's thread is waiting for, so it looks again."""
        with self.cond:
            self._kicks += 1
            self.cond.notify_all()

    def wait_runnable(self) -> RunState:
        """Sleep until the vCPU may run guest code (RUNNING) or must stop (STOPPING)."""
        with self.cond:
            while self.state not in (RunState.RUNNING, RunState.STOPPING):
                if not self.parked:
                    self.parked = True
                    self.cond.notify_all()  # for wait_parked
                self.cond.wait()
            self.parked = False
            return self.state

    def wait_parked(self, timeout: float) -> bool:
        """Wait until the vCPU thread sleeps between exits (or the vCPU stops); False on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.parked and self.state is not RunState.STOPPING:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def restore_online(self, online: bool) -> None:
        """Set up/down for a vCPU being restored (its thread has not started)."""
        with self.cond:
            self.state = RunState.RUNNING if online else RunState.DOWN
            self._paused_in = None

    def block(self, ready: Callable[[], bool], deadline_ns: int = 0,
              now_ns: Callable[[], int] = time.monotonic_ns) -> None:
        """SCHEDOP_block/poll: sleep until ``ready()`` holds, the vCPU is taken
        down or stopped, or the clock ``now_ns`` reaches ``deadline_ns`` (0: none).

        ``ready`` is checked under the lock after every kick and transition,
        so the wake-up it waits for cannot be missed. A pause ends the block
        too (the thread then parks in :meth:`wait_runnable`).
        """
        with self.cond:
            if self.state is not RunState.RUNNING:
                return
            self._apply(RunEvent.BLOCK)
            try:
                while True:
                    if self._now() is not RunState.BLOCKED:
                        return  # woken, paused (which wakes), taken down or stopped
                    if ready():
                        self._apply(RunEvent.WAKE)
                        continue
                    if deadline_ns:
                        left = deadline_ns - now_ns()
                        if left <= 0:
                            self._apply(RunEvent.WAKE)
                            continue
                        self.cond.wait(left / NS)
                    else:
                        self.cond.wait()
            finally:
                if self._now() is RunState.BLOCKED:
                    self._apply(RunEvent.WAKE)


__all__ = ["RunEvent", "RunState", "TRANSITIONS", "VcpuRun"]
