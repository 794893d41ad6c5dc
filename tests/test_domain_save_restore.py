"""A running Debian guest is paused, saved, and resumed in a new VM: its processes carry on."""

from __future__ import annotations

import json
import re
import threading

import pytest

from hospes.domain import Domain, DomainConfig, DomainState, ShutdownReason
from hospes.images import encode_command
from hospes.state import StateError, decode, encode

pytestmark = [pytest.mark.kvm, pytest.mark.debian]


class Console:
    def __init__(self) -> None:
        self.data = b""
        self.cond = threading.Condition()

    def __call__(self, data: bytes) -> None:
        with self.cond:
            self.data += data
            self.cond.notify_all()

    def wait_for(self, needle: bytes, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: needle in self.data, timeout)


def config(default_images, command: str) -> DomainConfig:
    cmdline = f"console=hvc0 quiet {encode_command(['sh', '-c', command])}"
    return DomainConfig(kernel=default_images.kernel, ramdisk=default_images.initramfs, cmdline=cmdline,
                        memory_mib=128, vcpus=2, name="saved")


def test_a_sleeping_shell_saved_mid_run_finishes_in_a_new_vm(default_images):
    # The shell is in the middle of a loop with a sleep (both vCPUs idle, blocked in the hypervisor)
    # when the domain is saved; only the restored domain can print the later lines.
    cfg = config(default_images, "i=0; while [ $i -lt 4 ]; do echo tick-$i; i=$((i+1)); sleep 1; done; "
                                 "echo pid-$$-done; exit 7")
    first = Console()
    dom = Domain(cfg, console_out=first)
    saved: list[tuple[DomainState, bytes]] = []
    references: list[tuple[dict[int, int], dict[int, int]]] = []   # the MMU's counts and Hospes' own, when saved

    def save_when_ticking() -> None:
        try:
            if first.wait_for(b"tick-1", 120):
                state = dom.save()
                saved.append((state, dom.save_memory()))
                references.append((dict(dom.pv.mmu.count), dict(dom.pv.mmu.held)))
        finally:
            dom.destroy()

    helper = threading.Thread(target=save_when_ticking, daemon=True)
    helper.start()
    try:
        assert dom.run().reason is ShutdownReason.DESTROYED
    finally:
        helper.join(10)
        dom.close()
    assert saved, f"the guest never got to tick-1: {first.data[-2000:]!r}"
    assert b"pid-" not in first.data
    state, memory = saved[0]
    assert decode(DomainState, json.loads(json.dumps(encode(state)))) == state

    second = Console()
    again = Domain(cfg, console_out=second, saved=(state, memory))
    try:
        # Hospes' writable references (rings, vcpu_info pages) are not in the record but taken
        # again by their holders: every count comes back as it was, none twice.
        counts, held = references[0]
        assert len(held) >= 3 and again.pv.mmu.held == held and again.pv.mmu.count == counts
        result = again.run()
    finally:
        again.close()
    assert result.reason is ShutdownReason.POWEROFF, (result.message, second.data[-2000:])
    out = second.data.decode(errors="replace")
    assert re.search(r"tick-3", out) and re.search(r"pid-\d+-done", out), out[-2000:]
    assert "hospes-exit-status=7" in out
    assert b"tick-0" not in second.data            # nothing ran twice


def test_a_saved_domain_is_not_restored_with_another_memory_size(default_images):
    cfg = config(default_images, "sleep 30")
    dom = Domain(cfg, console_out=lambda b: None)
    try:
        state = dom.save()  # never started: no vCPU thread to wait for
        memory = dom.save_memory()
    finally:
        dom.close()
    bigger = DomainConfig(**{**cfg.__dict__, "memory_mib": 256})
    with pytest.raises(StateError, match="saved memory is"):
        Domain(bigger, console_out=lambda b: None, saved=(state, memory))


def test_a_domain_saved_to_a_compressed_file_resumes_from_it(default_images, tmp_path):
    from hospes.domain import DomainShell
    from hospes.migrate.savefile import read_domain, write_domain
    from hospes.migrate.stream import RecordReader

    cfg = config(default_images, "for i in 0 1 2 3; do echo step-$i; sleep 1; done; exit 5")
    first = Console()
    dom = Domain(cfg, console_out=first)
    path = tmp_path / "guest.hospes"
    written: list[int] = []

    def save_to_file() -> None:
        try:
            if first.wait_for(b"step-1", 120):
                with path.open("wb") as f:
                    written.append(write_domain(dom, f, {"name": cfg.name}, compress=True).pages_sent)
        finally:
            dom.destroy()

    helper = threading.Thread(target=save_to_file, daemon=True)
    helper.start()
    try:
        dom.run()
    finally:
        helper.join(30)
        dom.close()
    assert written == [dom.mem.size // 4096]
    assert path.stat().st_size < dom.mem.size // 4   # zero pages and zstd

    with path.open("rb") as f:
        saved = read_domain(RecordReader(f), lambda config, size: DomainShell(cfg))
    assert saved.config == {"name": "saved"}
    second = Console()
    again = Domain(cfg, console_out=second, saved=(saved.state, saved.shell))
    try:
        result = again.run()
    finally:
        again.close()
    out = second.data.decode(errors="replace")
    assert result.reason is ShutdownReason.POWEROFF and "step-3" in out and "hospes-exit-status=5" in out, out[-2000:]
    assert "step-0" not in out
