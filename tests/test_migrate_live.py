"""Live migration inside one process: a running guest moves to a new VM over a socket.

The two ends are the real sender and receiver (pre-copy rounds over KVM's dirty
log and Hospes' own, the freeze, STATE, VERIFY, the ready/commit/running
handover); the toolstack around them is tested with daemons elsewhere.
"""

from __future__ import annotations

import re
import socket
import threading
from typing import Any

import pytest

from hospes.domain import Domain, DomainConfig, DomainShell, ShutdownReason
from hospes.images import encode_command
from hospes.migrate.precopy import MigrateOptions, MigrationError, MigrationResult, Sender
from hospes.migrate.receive import Receiver
from hospes.migrate.stream import StreamError
from hospes.migrate.transport import Channel
from tests.test_domain_save_restore import Console

pytestmark = [pytest.mark.kvm, pytest.mark.debian]

# A counter that survives only if the process does, and a loop rewriting 16 MiB of memory.
COUNTER = ("i=0; while [ $i -lt 40 ]; do echo tick-$i; i=$((i+1)); sleep 0.2; done; echo pid-$$-done; exit 7")
# A process spinning in user mode: the guest depends on timer events interrupting it.
SPINNER = "(while :; do :; done) & "
WRITER = ("dd if=/dev/zero of=/dev/shm/x bs=1M count=16 2>/dev/null; "
          "(while :; do dd if=/dev/urandom of=/dev/shm/x bs=1M count=16 conv=notrunc 2>/dev/null; done) & "
          + COUNTER)


def config(default_images, command: str, vcpus: int = 2) -> DomainConfig:
    cmdline = f"console=hvc0 quiet {encode_command(['sh', '-c', command])}"
    return DomainConfig(kernel=default_images.kernel, ramdisk=default_images.initramfs, cmdline=cmdline,
                        memory_mib=128, vcpus=vcpus, name="moving")


def channels() -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    return (Channel(a.makefile("rb"), a.makefile("wb", buffering=1 << 20), sock=a),
            Channel(b.makefile("rb"), b.makefile("wb", buffering=1 << 20), sock=b))


class Destination(threading.Thread):
    """Receives, builds the domain paused, runs it (paused), and as the domain process
    does, unpauses it from another thread once the source's COMMIT comes."""

    def __init__(self, cfg: DomainConfig, channel: Channel) -> None:
        super().__init__(daemon=True)
        self.cfg = cfg
        self.channel = channel
        self.console = Console()
        self.result: Any = None
        self.error: BaseException | None = None
        self.held: dict[int, int] = {}   # Hospes' own writable references, as restored
        self.source_held: dict[int, int] = {}   # and the source's, after the handover

    def run(self) -> None:
        try:
            receiver = Receiver(self.channel, lambda spec, size: DomainShell(self.cfg))
            got = receiver.receive()
            dom = Domain(self.cfg, console_out=self.console, saved=(got.state, got.shell))
            self.held = dict(dom.pv.mmu.held)
            dom.pause()

            def hand_over() -> None:
                receiver.ready(got.verify)
                receiver.wait_commit()
                dom.unpause()
                receiver.running()

            handover = threading.Thread(target=hand_over, daemon=True)
            handover.start()
            try:
                self.result = dom.run()
            finally:
                handover.join(10)
                dom.close()
        except BaseException as e:   # reported by the test
            self.error = e


def migrate(default_images, command: str, options: MigrateOptions, after: bytes = b"tick-5",
            vcpus: int = 2) -> tuple[MigrationResult, Console, Destination]:
    cfg = config(default_images, command, vcpus)
    src_end, dst_end = channels()
    dest = Destination(cfg, dst_end)
    dest.start()
    first = Console()
    dom = Domain(cfg, console_out=first)
    outcome: list[Any] = []

    def send() -> None:
        try:
            if first.wait_for(after, 120):
                outcome.append(Sender(dom, {"name": "moving"}, src_end, options).run())
                dest.source_held = dict(dom.pv.mmu.held)
        except BaseException as e:
            outcome.append(e)
        finally:
            dom.destroy()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        assert dom.run().reason is ShutdownReason.DESTROYED
    finally:
        sender.join(60)
        dom.close()
    dest.join(180)
    assert outcome, f"the guest never printed {after!r}: {first.data[-2000:]!r}"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    assert dest.error is None, dest.error
    return outcome[0], first, dest


def ticks(data: bytes) -> list[int]:
    return [int(n) for n in re.findall(rb"tick-(\d+)", data)]


def test_a_counting_guest_moves_live_and_every_page_matches(default_images):
    result, first, dest = migrate(default_images, SPINNER + COUNTER, MigrateOptions(verify=True), vcpus=1)
    assert result.verify is not None and result.verify["differences"] == 0
    assert result.rounds >= 2 and result.per_round[0].pages == result.verify["pages"]
    assert dest.result.reason is ShutdownReason.POWEROFF, dest.console.data[-2000:]
    before, after = ticks(first.data), ticks(dest.console.data)
    # The count goes on where it stopped: no tick lost, none printed twice.
    assert before + after == list(range(40)), (before, after)
    assert "hospes-exit-status=7" in dest.console.data.decode(errors="replace")
    # The rings' and vcpu_info's references are taken again at the destination, none twice.
    assert len(dest.held) >= 3 and dest.held == dest.source_held


def test_a_guest_rewriting_memory_moves_within_the_bounded_rounds(default_images):
    result, first, dest = migrate(default_images, WRITER, MigrateOptions(verify=True, max_rounds=4))
    assert result.verify is not None and result.verify["differences"] == 0
    assert 2 <= result.rounds <= 5
    assert dest.result.reason is ShutdownReason.POWEROFF, dest.console.data[-2000:]
    assert ticks(first.data) + ticks(dest.console.data) == list(range(40))


def test_a_destination_that_refuses_leaves_the_source_running(default_images):
    cfg = config(default_images, COUNTER, 1)
    src_end, dst_end = channels()

    def refuse() -> None:
        receiver = Receiver(dst_end, lambda spec, size: DomainShell(cfg))
        try:
            receiver.receive()
        except StreamError:
            pass
        receiver.refuse("no room here")

    threading.Thread(target=refuse, daemon=True).start()
    console = Console()
    dom = Domain(cfg, console_out=console)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            if console.wait_for(b"tick-2", 120):
                Sender(dom, {}, src_end, MigrateOptions()).run()
        except MigrationError as e:
            errors.append(e)

    threading.Thread(target=send, daemon=True).start()
    result = dom.run()
    dom.close()
    assert errors and "no room here" in str(errors[0]) and not errors[0].committed
    assert result.reason is ShutdownReason.POWEROFF   # it ran on to its end, here
    assert ticks(console.data) == list(range(40))
