"""One domain run through its restarts: the loop ``hospes run`` and the domain process share.

:meth:`DomainRunner.run` builds a :class:`~hospes.domain.Domain`, runs it in the
calling (main) thread, and when the guest stops decides by the spec's ``on_*``
keys (:func:`.lifecycle.action_for`) whether to build it again or to end, with
the guest's :class:`~hospes.domain.ShutdownResult` and the final
:class:`~.lifecycle.Outcome` (destroy or preserve).

Other threads and signal handlers steer it through :meth:`request_shutdown`,
:meth:`destroy` and :meth:`console_input`; all three also work between two
boots (a shutdown request and console input wait for the next domain, a destroy
ends the loop). :class:`TerminationSignals` is the
SIGTERM/SIGHUP policy both front ends use: the first signal asks the guest to
power off, a second one stops it at once.
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from hospes.domain import Domain, ShutdownReason, ShutdownResult
from hospes.toolstack.lifecycle import (
    RESTART_LIMIT, RESTART_MIN_INTERVAL_S, RESTART_WINDOW_S, Outcome, ShutdownRequest, action_for,
)
from hospes.toolstack.spec import DomainSpec

@dataclass
class Ending:
    """How a run ended: the last guest's result and what became of it (never RESTART);
    ``too_fast`` when the restart limit stopped a guest that kept rebooting."""

    result: ShutdownResult
    outcome: Outcome
    too_fast: bool = False


class RestartLimit:
    """Allows at most ``limit`` restarts within any ``window_s`` seconds (a reboot loop stops), each
    at least ``min_interval_s`` after the previous boot began (:meth:`delay` says how long to wait)."""

    def __init__(self, limit: int = RESTART_LIMIT, window_s: float = RESTART_WINDOW_S,
                 min_interval_s: float = RESTART_MIN_INTERVAL_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self.min_interval_s = min_interval_s
        self._times: collections.deque[float] = collections.deque()

    def delay(self, booted_at: float) -> float:
        """Seconds to wait before restarting a guest whose boot began at ``booted_at`` (monotonic)."""
        return max(0.0, booted_at + self.min_interval_s - time.monotonic())

    def message(self) -> str:
        return (f"Rebooted too fast: restarted {self.limit} times within {self.window_s:.0f} s; "
                "stopped instead of restarting again.")

    def allow(self) -> bool:
        now = time.monotonic()
        self._times.append(now)
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        return len(self._times) <= self.limit


def _ignore(*_: object) -> None:
    pass


class DomainRunner:
    """Builds and runs one domain until the spec's actions say stop; see the module docstring.

    ``build`` makes the next Domain (its exceptions end :meth:`run`; ``builds`` then
    tells a first-build failure from a later one). The hooks run in the main thread:
    ``on_built(dom)`` with :attr:`lock` held, before the guest runs;
    ``on_stopped(result, outcome)`` after each stop; ``on_restart(result)`` before a
    rebuild. ``restart_limit`` spaces restarts out and, past its limit, turns a restart
    into ``restart_limit_outcome`` (preserve: the domain stays, shut down, with a message).
    """

    def __init__(self, spec: Callable[[], DomainSpec], build: Callable[[], Domain], *,
                 lock: threading.RLock | None = None, restart_limit: RestartLimit | None = None,
                 on_built: Callable[[Domain], None] = _ignore,
                 on_stopped: Callable[[ShutdownResult, Outcome], None] = _ignore,
                 on_restart: Callable[[ShutdownResult], None] = _ignore,
                 restart_limit_outcome: Outcome = Outcome.PRESERVE) -> None:
        self.spec = spec
        self.build = build
        self.lock = lock if lock is not None else threading.RLock()
        self.restart_limit = restart_limit
        self.restart_limit_outcome = restart_limit_outcome
        self.on_built = on_built
        self.on_stopped = on_stopped
        self.on_restart = on_restart
        self.dom: Domain | None = None
        self.builds = 0
        self._destroy = threading.Event()
        self._pending: ShutdownRequest | None = None
        self._input = bytearray()  # console input that arrived while no domain ran

    # --- controls (any thread, signal handlers) --------------------------------------------

    def request_shutdown(self, reason: ShutdownRequest) -> None:
        """Ask the guest to power off or reboot; between boots, ask the next one."""
        with self.lock:
            if self.dom is None:
                self._pending = reason
                return
            self.dom.request_shutdown(str(reason))

    def console_input(self, data: bytes) -> None:
        """Bytes for the guest's console; kept for the next domain between boots."""
        with self.lock:
            if self.dom is None:
                self._input += data
            else:
                self.dom.console_input(data)

    def destroy(self) -> None:
        """Stop the guest at once and end the run (no restart)."""
        self._destroy.set()
        with self.lock:
            if self.dom is not None:
                self.dom.destroy()

    @property
    def destroying(self) -> bool:
        return self._destroy.is_set()

    # --- the loop (main thread) ---------------------------------------------------------------

    def run(self) -> Ending:
        while True:
            if self._destroy.is_set():
                return Ending(ShutdownResult(ShutdownReason.DESTROYED), Outcome.DESTROY)
            booted_at = time.monotonic()
            dom = self.build()
            self.builds += 1
            with self.lock:
                self.dom = dom
                if self._pending is not None:
                    dom.request_shutdown(str(self._pending))
                    self._pending = None
                if self._destroy.is_set():
                    dom.destroy()
                if self._input:
                    dom.console_input(bytes(self._input))
                    self._input.clear()
                self.on_built(dom)
            try:
                result = dom.run()
            finally:
                with self.lock:
                    self.dom = None
                dom.close()
            if result.reason is ShutdownReason.DESTROYED or self._destroy.is_set():
                self.on_stopped(result, Outcome.DESTROY)
                return Ending(result, Outcome.DESTROY)
            outcome = action_for(result.reason, self.spec())
            too_fast = False
            if outcome is Outcome.RESTART and self.restart_limit is not None and not self.restart_limit.allow():
                outcome, too_fast = self.restart_limit_outcome, True
                result.message = f"{self.restart_limit.message()} {result.message}".strip()
            self.on_stopped(result, outcome)
            if outcome is not Outcome.RESTART:
                return Ending(result, outcome, too_fast)
            self.on_restart(result)      # "building" from here: the wait is part of the restart
            if self.restart_limit is not None:
                # A destroy during the wait ends the run at the top of the loop.
                self._destroy.wait(self.restart_limit.delay(booted_at))


class TerminationSignals:
    """SIGTERM/SIGHUP while installed: the first asks the guest to power off, a second destroys it.

    A context manager; the previous handlers come back on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self, runner: DomainRunner) -> None:
        self.runner = runner
        self.received = 0
        self.last: threading.Thread | None = None   # the thread acting on the last signal
        self._old: dict[int, object] = {}

    def handle(self, signum: int, frame: FrameType | None) -> None:
        # The handler runs on the main thread, between two bytecodes of whatever it
        # was doing -- often the vCPU loop, holding re-entrant locks (the store's,
        # a vCPU's run state between its wake-up check and its wait). Acting here
        # would re-enter them: a store write mid-flush, a kick its own wait then
        # misses (the guest slept through SIGTERM). So the work goes to a thread,
        # which takes those locks properly.
        self.received += 1
        act = self.runner.destroy if self.received > 1 else self._power_off
        self.last = threading.Thread(target=act, name="hospes-signal", daemon=True)
        self.last.start()

    def _power_off(self) -> None:
        self.runner.request_shutdown(ShutdownRequest.POWEROFF)

    def __enter__(self) -> "TerminationSignals":
        self._old = {sig: signal.signal(sig, self.handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old = {}


__all__ = ["DomainRunner", "Ending", "RestartLimit", "TerminationSignals"]
