"""Private network namespaces for the network benchmark.

Every link the benchmark uses lives in a namespace of its own, with
link-local addresses (169.254.0.0/16), so nothing it sends leaves this
machine or touches the host's own interfaces and routes:

* native reference: two namespaces joined by a veth pair (the host kernel's
  TCP on both ends, no virtualisation);
* guest <-> host: the TAP that ``hospes run --vif tap=NAME`` creates, moved
  into a namespace that holds the host end's address;
* guest <-> guest: two such TAPs moved into one namespace and enslaved to a
  bridge there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Callable


class NetnsError(RuntimeError):
    pass


def unavailable_reason() -> str | None:
    """Why namespaces, veths and TAPs cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


def ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True, check=False).returncode == 0


class Namespace:
    """A network namespace that exists for the life of a ``with`` block (lo up)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> "Namespace":
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        ip("netns", "add", self.name)
        self.ip("link", "set", "lo", "up")
        return self

    def __exit__(self, *exc: object) -> None:
        # deleting the namespace also deletes the veths, bridges and TAPs moved into it
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)

    def ip(self, *args: str) -> None:
        ip("-n", self.name, *args)

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def adopt(self, link: str, addr: str | None = None, master: str | None = None) -> None:
        """Move ``link`` in here, give it ``addr`` (CIDR) or a bridge ``master``, bring it up."""
        ip("link", "set", link, "netns", self.name)
        if addr is not None:
            self.ip("addr", "add", addr, "dev", link)
        if master is not None:
            self.ip("link", "set", link, "master", master)
        self.ip("link", "set", link, "up")

    def bridge(self, name: str) -> None:
        self.ip("link", "add", name, "type", "bridge")
        self.ip("link", "set", name, "up")


def veth_between(a: Namespace, addr_a: str, b: Namespace, addr_b: str, tag: str) -> None:
    """A veth pair with one end in each namespace, addressed and up."""
    end_a, end_b = f"vb{tag}a", f"vb{tag}b"
    ip("link", "add", end_a, "type", "veth", "peer", "name", end_b)
    try:
        a.adopt(end_a, addr_a)
        b.adopt(end_b, addr_b)
    except NetnsError:
        subprocess.run(["ip", "link", "del", end_a], capture_output=True, check=False)
        raise


def wait_for_link(name: str, alive: Callable[[], bool], timeout: float) -> None:
    """Wait until ``name`` exists in this namespace (a hypervisor creating its TAP)."""
    deadline = time.monotonic() + timeout
    while not link_exists(name):
        if not alive():
            raise NetnsError(f"{name} never appeared: its creator exited")
        if time.monotonic() > deadline:
            raise NetnsError(f"{name} did not appear within {timeout:.0f} s")
        time.sleep(0.05)
