"""The PV console backend against a simulated guest ring."""

from __future__ import annotations

import pytest

from hospes.devices.console import (
    IN_SIZE,
    OUT_SIZE,
    PENDING_INPUT_LIMIT,
    ConsoleBackend,
    ConsoleState,
)
from hospes.state import StateError, decode, encode

MASK = 0xFFFFFFFF


class Guest:
    """hvc_xen's half of ``struct xencons_interface``."""

    def __init__(self, page: bytearray) -> None:
        self.mem = memoryview(page)
        self.idx = self.mem[0xC00:0xC10].cast("I")  # in_cons, in_prod, out_cons, out_prod

    def write(self, data: bytes) -> int:
        cons, prod = self.idx[2], self.idx[3]
        n = min(OUT_SIZE - ((prod - cons) & MASK), len(data))
        for i in range(n):
            self.mem[0x400 + ((prod + i) & (OUT_SIZE - 1))] = data[i]
        self.idx[3] = (prod + n) & MASK
        return n

    def read(self) -> bytes:
        cons, prod = self.idx[0], self.idx[1]
        n = (prod - cons) & MASK
        data = bytes(self.mem[(cons + i) & (IN_SIZE - 1)] for i in range(n))
        self.idx[0] = (cons + n) & MASK
        return data


class Rig:
    def __init__(self, start: int = 0) -> None:
        self.page = bytearray(4096)
        self.guest = Guest(self.page)
        for i in range(4):
            self.guest.idx[i] = start & MASK
        self.kicks = 0
        self.backend = ConsoleBackend(memoryview(self.page), self.kick)

    def kick(self) -> None:
        self.kicks += 1


def test_drain_output() -> None:
    rig = Rig()
    assert rig.backend.drain_output() == b""
    rig.guest.write(b"Linux version 6.1\n")
    assert rig.backend.drain_output() == b"Linux version 6.1\n"
    assert rig.guest.idx[2] == rig.guest.idx[3]
    assert rig.backend.drain_output() == b""
    assert rig.kicks == 0  # the ring was never full


@pytest.mark.parametrize("start", [2040, 0xFFFFFFF8, 0xFFFFF800])
def test_output_wraps(start: int) -> None:
    rig = Rig(start)
    sent = b""
    got = b""
    for i in range(50):
        chunk = bytes([65 + i % 26]) * (i * 7 % 300 + 1)
        assert rig.guest.write(chunk) == len(chunk)
        sent += chunk
        got += rig.backend.drain_output()
    assert got == sent


def test_full_output_ring_is_drained_and_kicked() -> None:
    rig = Rig()
    data = bytes(range(256)) * 10
    assert rig.guest.write(data) == OUT_SIZE
    assert rig.backend.drain_output() == data[:OUT_SIZE]
    assert rig.kicks == 1
    assert rig.guest.write(data[OUT_SIZE:]) == len(data) - OUT_SIZE


def test_broken_output_indices_are_ignored() -> None:
    rig = Rig()
    rig.guest.idx[3] = OUT_SIZE + 1
    assert rig.backend.drain_output() == b""
    assert rig.backend.drain_output() == b""
    assert rig.guest.idx[2] == 0  # untouched
    rig.guest.idx[3] = 5
    assert len(rig.backend.drain_output()) == 5  # indices sane again


def test_feed_input() -> None:
    rig = Rig(0xFFFFFFF0)
    assert rig.backend.feed_input(b"") == 0
    assert rig.kicks == 0
    assert rig.backend.feed_input(b"root\n") == 5
    assert rig.kicks == 1
    assert rig.guest.read() == b"root\n"
    big = bytes(range(256)) * 5
    assert rig.backend.feed_input(big) == IN_SIZE
    assert rig.backend.feed_input(b"more") == 0
    assert rig.kicks == 2
    assert rig.guest.read() == big[:IN_SIZE]


def test_broken_input_indices() -> None:
    rig = Rig()
    rig.guest.idx[0] = 7  # in_cons beyond in_prod
    assert rig.backend.feed_input(b"x") == 0
    assert rig.kicks == 0


def test_queued_input_flows_as_the_guest_reads() -> None:
    rig = Rig()
    data = bytes(i % 251 for i in range(3000))
    assert rig.backend.queue_input(data) == IN_SIZE
    assert len(rig.backend.pending_input) == 3000 - IN_SIZE
    got = rig.guest.read()
    while rig.backend.pending_input:
        rig.backend.flush_input()
        got += rig.guest.read()
    assert got == data
    assert rig.backend.flush_input() == 0


def test_pending_input_is_bounded() -> None:
    rig = Rig()
    rig.backend.queue_input(b"a" * (PENDING_INPUT_LIMIT + 5000))
    assert len(rig.backend.pending_input) == PENDING_INPUT_LIMIT - IN_SIZE
    rig.backend.queue_input(b"b" * 5000)
    assert len(rig.backend.pending_input) == PENDING_INPUT_LIMIT  # ring full, excess dropped


def test_save_restore() -> None:
    rig = Rig()
    rig.backend.queue_input(b"x" * 1500)
    state = rig.backend.save()
    assert state == ConsoleState(b"x" * (1500 - IN_SIZE))
    again = ConsoleBackend.restore(state, page=memoryview(rig.page), notify=rig.kick)
    assert again.save() == state
    rig.guest.read()
    assert again.flush_input() == 1500 - IN_SIZE


def test_rejects_a_bad_page() -> None:
    with pytest.raises(ValueError):
        ConsoleBackend(memoryview(bytes(4096)), lambda: None)
    with pytest.raises(ValueError):
        ConsoleBackend(memoryview(bytearray(100)), lambda: None)


def test_saved_state_round_trips_and_the_restored_backend_serves_both_rings() -> None:
    rig = Rig(0xFFFFFF00)
    rig.backend.queue_input(b"z" * 1100)
    rig.guest.write(b"boot log")
    state = rig.backend.save()
    again = ConsoleBackend.restore(decode(ConsoleState, encode(state)), page=memoryview(rig.page), notify=rig.kick)
    assert again.save() == state
    assert again.drain_output() == b"boot log"
    assert rig.guest.read() == b"z" * IN_SIZE
    assert again.flush_input() == 1100 - IN_SIZE and rig.guest.read() == b"z" * (1100 - IN_SIZE)


def test_restore_refuses_a_newer_record() -> None:
    rig = Rig()
    with pytest.raises(StateError):
        ConsoleBackend.restore(ConsoleState(b"", version=2), page=memoryview(rig.page), notify=rig.kick)
