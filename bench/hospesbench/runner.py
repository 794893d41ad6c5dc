"""Running a benchmark process while timestamping its output.

``Proc`` starts a process with stdout and stderr on pipes, reads both on
threads, and records, for each marker string, the time (seconds since the
process was started) of the first stdout line containing it, as soon as it
arrives, newline or not -- that is how boot times are taken: from process
start to ``hospes: userspace up`` (or a getty's ``login:``), the same way for
Hospes and QEMU.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class ProcResult:
    argv: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    marks: dict[str, float] = field(default_factory=dict)
    timed_out: bool = False


class Proc:
    def __init__(self, argv: Sequence[str], markers: Sequence[str] = (), env: dict[str, str] | None = None,
                 cwd: str | None = None) -> None:
        self.argv = [str(a) for a in argv]
        self.markers = list(markers)
        self.marks: dict[str, float] = {}
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._cond = threading.Condition()
        self.t0 = time.monotonic()
        self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=env, cwd=cwd)
        self.pid = self.popen.pid
        self._threads = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self._out, True), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self._err, True), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read(self, stream, sink: list[bytes], watch: bool) -> None:
        # Chunks, not lines: a prompt (`debian login: `) ends without a newline.
        line = b""
        for chunk in iter(lambda: stream.read1(65536), b""):
            now = time.monotonic() - self.t0
            with self._cond:
                sink.append(chunk)
                if watch:
                    line += chunk
                    text = line.decode(errors="replace")
                    for m in self.markers:
                        if m not in self.marks and m in text:
                            self.marks[m] = now
                    line = line[line.rfind(b"\n") + 1:]
                self._cond.notify_all()
        stream.close()

    def wait_mark(self, marker: str, timeout: float) -> float | None:
        """Seconds from start to ``marker`` (waiting up to ``timeout``); None if it never came."""
        got = self.wait_any([marker], timeout)
        return self.marks.get(marker) if got else None

    def wait_any(self, markers: Sequence[str], timeout: float) -> str | None:
        """Wait up to ``timeout`` s for the first of ``markers``; returns it, or None (timeout or exit)."""
        for m in markers:
            if m not in self.markers:
                self.markers.append(m)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                seen = [m for m in markers if m in self.marks]
                if seen:
                    return min(seen, key=lambda m: self.marks[m])
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not any(t.is_alive() for t in self._threads)):
                    return None
                self._cond.wait(min(left, 0.1))

    def finish(self, timeout: float) -> ProcResult:
        """Wait for the process (killing it after ``timeout`` s) and collect its output."""
        timed_out = False
        try:
            self.popen.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.stop()
        wall = time.monotonic() - self.t0
        for t in self._threads:
            t.join(5)
        with self._cond:
            out = b"".join(self._out).decode(errors="replace")
            err = b"".join(self._err).decode(errors="replace")
        return ProcResult(self.argv, self.popen.returncode, out, err, wall, dict(self.marks), timed_out)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s: only this process, by its pid."""
        if self.popen.poll() is not None:
            return
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue


def run(argv: Sequence[str], timeout: float, markers: Sequence[str] = (), env: dict[str, str] | None = None,
        cwd: str | None = None) -> ProcResult:
    """Run ``argv`` to completion (or ``timeout``), timestamping ``markers`` on stdout."""
    return Proc(argv, markers, env=env, cwd=cwd).finish(timeout)
