"""Driving a Debian guest booted from a `hospes image --rootfs` disk under a test hospesd:
waiting for its login prompt and running commands through `hospes exec` (which logs in
on the console). Shared by the bookworm and trixie disk tests."""

from __future__ import annotations

import re
import time

from toolstack_helpers import Hospesd

BOOT_TIMEOUT = 900.0     # a loaded 2-core host has taken 4 minutes to a login prompt


def login_prompts(d: Hospesd, name: str) -> int:
    """How many login prompts the domain's console log shows (0 if there is no such domain)."""
    return len(re.findall(rb"debian login: ", d.cli("log", name, timeout=60).stdout))


def wait_for_login(d: Hospesd, name: str, seen: int) -> float:
    """Seconds until the console log shows more than ``seen`` login prompts."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < BOOT_TIMEOUT:
        if login_prompts(d, name) > seen:
            return time.monotonic() - t0
        time.sleep(3)
    tail = d.cli("log", name, timeout=60).stdout[-3000:].decode(errors="replace")
    raise AssertionError(f"no new login prompt within {BOOT_TIMEOUT:.0f} s:\n{tail}")


def assert_running(d: Hospesd, name: str) -> None:
    """systemd reached its goal with no failed unit (the failed ones are in the message)."""
    out = guest(d, name, "systemctl is-system-running --wait; systemctl --failed --no-legend; true", 600)
    assert out.splitlines()[0].strip() == "running", out


def guest(d: Hospesd, name: str, command: str, timeout: float = 300) -> str:
    """Run ``command`` with `hospes exec` (which logs in as root first); its output, status 0 asserted."""
    p = d.cli("exec", "-t", str(timeout), name, command, timeout=timeout + 60)
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, (command, out[-2000:], p.stderr.decode(errors="replace")[-2000:])
    return out
