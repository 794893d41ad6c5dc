"""Test helpers for the toolstack: a hospesd in a private runtime directory, cleaned up for sure.

``Hospesd(tmp_path)`` starts ``python -m hospes.toolstack.daemon`` on its own run
dir. ``close()`` (also on failure, via the fixtures) kills the daemon and every
process whose command line names that run dir -- the domain processes it started --
by pid, never by a broad name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hospes.toolstack.client import Hospes, Transport, _UnixHTTPConnection

REPO = Path(__file__).resolve().parent.parent


def processes_naming(text: str) -> list[int]:
    """Pids of processes whose command line contains ``text``."""
    needle = text.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry))
    return found


def kill_all_naming(text: str, timeout: float = 10.0) -> None:
    for pid in processes_naming(text):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while processes_naming(text) and time.monotonic() < deadline:
        time.sleep(0.05)


class Hospesd:
    """A daemon on ``root/run``; ``env`` points the CLI at it."""

    def __init__(self, root: Path, extra_args: list[str] | None = None, prefix: list[str] | None = None) -> None:
        self.run_dir = (root / "run").absolute()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.extra_args = extra_args or []
        self.prefix = prefix or []      # e.g. ["nsenter", "--net=/run/netns/NS"]: the daemon runs under it
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "HOSPES_RUN_DIR": str(self.run_dir)}
        self.env.pop("HOSPES_URL", None)

    @property
    def socket(self) -> Path:
        return self.run_dir / "hospesd.sock"

    def start(self, timeout: float = 20.0) -> "Hospesd":
        log = open(self.run_dir / "hospesd.log", "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "hospes.toolstack.daemon", "--run-dir", str(self.run_dir),
             *self.extra_args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hospesd exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                status, _, _ = self.request("GET", "/v1/version")
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"hospesd did not answer: {self.log()[-2000:]}")

    def stop(self) -> None:
        """Stop the daemon only (domains keep running)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """Kill the daemon and everything started on this run dir."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        kill_all_naming(str(self.run_dir))

    def log(self) -> str:
        try:
            return (self.run_dir / "hospesd.log").read_text(errors="replace")
        except OSError:
            return ""

    def client(self) -> Hospes:
        return Hospes(Transport(socket_path=self.socket))

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
        conn = _UnixHTTPConnection(str(self.socket), timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, obj: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
        body = None if obj is None else json.dumps(obj).encode()
        status, _, data = self.request(method, path, body, {"Content-Type": "application/json"}, timeout)
        return status, (json.loads(data) if data else None)

    def cli(self, *args: str, timeout: float = 600, input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "hospes", *args], input=input, capture_output=True,
                              timeout=timeout, env=self.env)


__all__ = ["Hospesd", "kill_all_naming", "processes_naming"]
