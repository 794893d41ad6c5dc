"""RingConnection against a simulated guest writing a bytearray-backed ring page."""

from __future__ import annotations

import random
import struct
import threading

import pytest

from hospes.pv.store import RingConnection, Store, XsType, populate_domain
from hospes.pv.store.connection import (
    EVENT_BACKLOG_LIMIT,
    OUTPUT_BACKLOG_LIMIT,
    XENSTORE_ERROR_PROTO,
    XENSTORE_ERROR_RINGIDX,
)

D = 5
MASK = 0xFFFFFFFF


class Guest:
    """The frontend half of ``struct xenstore_domain_interface``, as Linux drives it."""

    def __init__(self, page: bytearray) -> None:
        self.mem = memoryview(page)
        self.idx = self.mem[0x800:0x820].cast("I")
        self.pending = b""  # request bytes not yet in the ring
        self.received = b""

    # indices: 0 req_cons, 1 req_prod, 2 rsp_cons, 3 rsp_prod, 6 error
    def set_indices(self, req: int, rsp: int) -> None:
        self.idx[0] = self.idx[1] = req & MASK
        self.idx[2] = self.idx[3] = rsp & MASK

    def queue(self, type_: int, payload: bytes, req_id: int = 1, tx_id: int = 0) -> None:
        self.pending += struct.pack("<IIII", type_, req_id, tx_id, len(payload)) + payload

    def push(self, limit: int | None = None) -> int:
        """Copy up to ``limit`` pending bytes into req[] (as space allows)."""
        prod = self.idx[1]
        space = 1024 - ((prod - self.idx[0]) & MASK)
        n = min(space, len(self.pending), limit if limit is not None else 1 << 30)
        for i in range(n):
            self.mem[(prod + i) & 1023] = self.pending[i]
        self.pending = self.pending[n:]
        self.idx[1] = (prod + n) & MASK
        return n

    def pull(self) -> bytes:
        cons, prod = self.idx[2], self.idx[3]
        n = (prod - cons) & MASK
        data = bytes(self.mem[0x400 + ((cons + i) & 1023)] for i in range(n))
        self.idx[2] = (cons + n) & MASK
        self.received += data
        return data

    def messages(self) -> list[tuple[int, int, int, bytes]]:
        """Complete messages received so far (removed from the buffer)."""
        out = []
        while len(self.received) >= 16:
            type_, req_id, tx_id, length = struct.unpack_from("<IIII", self.received)
            if len(self.received) < 16 + length:
                break
            out.append((type_, req_id, tx_id, self.received[16 : 16 + length]))
            self.received = self.received[16 + length :]
        return out


class Rig:
    def __init__(self, req_start: int = 0, rsp_start: int = 0) -> None:
        self.page = bytearray(4096)
        self.guest = Guest(self.page)
        self.guest.set_indices(req_start, rsp_start)
        self.store = Store()
        populate_domain(self.store, D, "guest", "uuid", vcpus=1, memory_kib=4096)
        self.notified = 0
        self.conn = RingConnection(self.store, D, memoryview(self.page), self.notify)

    def notify(self) -> None:
        self.notified += 1

    def roundtrip(self, type_: int, payload: bytes, req_id: int = 1, tx_id: int = 0) -> list:
        self.guest.queue(type_, payload, req_id, tx_id)
        while self.guest.pending:
            self.guest.push()
            self.conn.service()
        for _ in range(64):
            self.guest.pull()
            self.conn.service()
        return self.guest.messages()


def test_read_round_trip_byte_exact() -> None:
    rig = Rig()
    rig.guest.queue(XsType.READ, b"name\0", req_id=0x1234)
    rig.guest.push()
    rig.conn.service()
    assert rig.guest.pull() == struct.pack("<IIII", 2, 0x1234, 0, 5) + b"guest"
    assert rig.page[0x800:0x808] == struct.pack("<II", 21, 21)  # req_cons caught up
    assert rig.notified == 1
    rig.conn.service()
    assert rig.notified == 1  # nothing to do, nobody disturbed


def test_watch_fires_immediately_over_the_ring() -> None:
    rig = Rig()
    assert rig.roundtrip(XsType.WATCH, b"device\0tok\0", req_id=3) == [
        (XsType.WATCH, 3, 0, b"OK\0"),
        (XsType.WATCH_EVENT, 0, 0, b"device\0tok\0"),
    ]


def test_message_split_across_calls() -> None:
    rig = Rig()
    rig.guest.queue(XsType.WRITE, b"data/key\0value", req_id=9)
    for size in (3, 10, 5, 100):  # header split, then payload split
        rig.guest.push(limit=size)
        rig.conn.service()
        if rig.guest.pending:
            assert rig.guest.pull() == b""
    assert rig.guest.pull() == struct.pack("<IIII", 11, 9, 0, 3) + b"OK\0"
    assert rig.store.read("/local/domain/5/data/key") == b"value"


@pytest.mark.parametrize("start", [0x3F8, 0xFFFFFFF0, 0xFFFFFC05])
def test_wrapping_indices_and_ring(start: int) -> None:
    rig = Rig(req_start=start, rsp_start=start + 7)
    for i in range(40):
        replies = rig.roundtrip(XsType.WRITE, f"data/k{i}\0{'v' * i}".encode(), req_id=i)
        assert replies == [(XsType.WRITE, i, 0, b"OK\0")]
    for i in range(40):
        assert rig.roundtrip(XsType.READ, f"data/k{i}\0".encode(), req_id=i) == [
            (XsType.READ, i, 0, b"v" * i)
        ]


def test_many_requests_in_one_go_are_all_drained() -> None:
    rig = Rig()
    for i in range(60):
        rig.guest.queue(XsType.READ, b"domid\0", req_id=i)
    rig.guest.push()
    assert rig.guest.pending  # more than one ring-full
    rig.conn.service()
    assert rig.page[0x800:0x804] == rig.page[0x804:0x808]  # everything consumed
    while rig.guest.pending or rig.guest.idx[2] != rig.guest.idx[3]:
        rig.guest.push()
        rig.guest.pull()
        rig.conn.service()
    assert rig.guest.messages() == [(XsType.READ, i, 0, b"5") for i in range(60)]


def test_big_request_and_reply_cross_several_ring_fills() -> None:
    rig = Rig()
    rig.store.write("/local/domain/5/data", "")
    value = bytes(range(256)) * 8  # 2048 bytes, over a ring's worth with the header
    rig.store.write("/local/domain/0/blob", value, perms=["n0", "r5"])
    assert rig.roundtrip(XsType.READ, b"/local/domain/0/blob\0") == [(XsType.READ, 1, 0, value)]
    big = b"data/big\0" + b"x" * 2000
    assert rig.roundtrip(XsType.WRITE, big) == [(XsType.WRITE, 1, 0, b"OK\0")]
    assert rig.store.read("/local/domain/5/data/big") == b"x" * 2000


def test_transaction_conflict_is_eagain_over_the_ring() -> None:
    rig = Rig()
    rig.store.write("/local/domain/5/device/vbd/1/state", "1")
    ((_, _, _, txid),) = rig.roundtrip(XsType.TRANSACTION_START, b"\0")
    tx = int(txid[:-1])
    rig.roundtrip(XsType.READ, b"device/vbd/1/state\0", tx_id=tx)
    rig.roundtrip(XsType.WRITE, b"device/vbd/1/state\x003", tx_id=tx)
    rig.store.write("/local/domain/5/device/vbd/1/state", "2")
    assert rig.roundtrip(XsType.TRANSACTION_END, b"T\0", req_id=4, tx_id=tx) == [
        (XsType.ERROR, 4, tx, b"EAGAIN\0")
    ]


def test_dom0_writes_reach_the_guest_at_once_with_relative_paths() -> None:
    rig = Rig()
    rig.roundtrip(XsType.WATCH, b"control/shutdown\0sd\0")
    before = rig.notified
    done = threading.Event()

    def toolstack() -> None:
        rig.store.write("/local/domain/5/control/shutdown", "poweroff")
        done.set()

    threading.Thread(target=toolstack).start()
    assert done.wait(5)
    assert rig.notified == before + 1
    rig.guest.pull()
    assert rig.guest.messages() == [(XsType.WATCH_EVENT, 0, 0, b"control/shutdown\0sd\0")]


def test_quota_over_the_ring() -> None:
    rig = Rig()
    answers = set()
    for i in range(1010):
        ((type_, _, _, payload),) = rig.roundtrip(XsType.WRITE, f"data/n{i}\0".encode())
        answers.add(payload)
    assert answers == {b"OK\0", b"ENOSPC\0"}
    ((_, _, _, payload),) = rig.roundtrip(XsType.WRITE, b"data/n0\0" + b"x" * 3000)
    assert payload == b"ENOSPC\0"


def test_guest_and_toolstack_threads_interleave() -> None:
    rig = Rig()
    rig.roundtrip(XsType.WATCH, b"control\0c\0")
    rig.guest.messages()
    stop = threading.Event()
    failures: list[BaseException] = []

    def toolstack() -> None:
        try:
            for i in range(300):
                rig.store.write("/local/domain/5/control/shutdown", str(i))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)
        finally:
            stop.set()

    thread = threading.Thread(target=toolstack)
    thread.start()
    sent = 0
    while not stop.is_set() or sent < 300:
        if sent < 300:
            rig.guest.queue(XsType.WRITE, f"data/k{sent}\0v".encode(), req_id=sent)
            sent += 1
        rig.guest.push()
        rig.guest.pull()
        rig.conn.service()
    thread.join()
    for _ in range(100):
        rig.guest.push()
        rig.guest.pull()
        rig.conn.service()
    assert not failures and not rig.conn.broken
    messages = rig.guest.messages()
    replies = [m for m in messages if m[0] == XsType.WRITE]
    events = [m for m in messages if m[0] == XsType.WATCH_EVENT]
    assert [r[1] for r in replies] == list(range(300))
    assert events and all(e[3] == b"control/shutdown\0c\0" for e in events)
    assert rig.store.read("/local/domain/5/control/shutdown") == b"299"


# -- hostile guests --------------------------------------------------------------------------
def test_oversized_message_breaks_the_connection_quietly() -> None:
    rig = Rig()
    rig.roundtrip(XsType.WATCH, b"data\0t\0")
    rig.guest.queue(XsType.READ, b"x" * 10)
    rig.guest.pending = struct.pack("<IIII", 2, 1, 0, 4097) + b"x" * 100
    rig.guest.push()
    rig.conn.service()
    assert rig.conn.broken
    assert rig.guest.idx[6] == XENSTORE_ERROR_PROTO
    assert len(rig.conn.watches) == 0
    rig.store.write("/local/domain/5/data/x", "")  # no event for a dead connection
    rig.conn.service()
    assert rig.guest.pull() == b""


def test_bad_request_indices_break_the_connection() -> None:
    rig = Rig()
    rig.guest.idx[1] = 2000
    rig.conn.service()
    assert rig.conn.broken and rig.guest.idx[6] == XENSTORE_ERROR_RINGIDX


def test_bad_response_indices_break_the_connection() -> None:
    rig = Rig()
    rig.guest.idx[2] = 5000  # rsp_cons ahead of rsp_prod
    rig.guest.queue(XsType.READ, b"name\0")
    rig.guest.push()
    rig.conn.service()
    assert rig.conn.broken and rig.guest.idx[6] == XENSTORE_ERROR_RINGIDX


def test_garbage_never_raises() -> None:
    rnd = random.Random(1234)
    for _ in range(200):
        rig = Rig(req_start=rnd.getrandbits(32), rsp_start=rnd.getrandbits(32))
        for _ in range(5):
            kind = rnd.random()
            if kind < 0.4:
                rig.guest.pending = rnd.randbytes(rnd.randrange(1, 600))
                rig.guest.push()
            elif kind < 0.8:
                t = rnd.choice(list(XsType) + [rnd.getrandbits(32)])
                payload = rnd.choice([b"", b"\0", b"data/x\0", rnd.randbytes(40), b"a\0b\0c"])
                rig.guest.queue(t, payload, rnd.getrandbits(32), rnd.choice([0, 1, 7]))
                rig.guest.push()
            else:
                i = rnd.randrange(8)
                rig.guest.idx[i] = rnd.getrandbits(32)
            rig.conn.service()
            rig.guest.pull() if not rig.conn.broken else None


def test_a_guest_that_never_reads_cannot_grow_the_backlog() -> None:
    rig = Rig()
    rig.store.write("/local/domain/0/blob", b"y" * 4000, perms=["n0", "r5"])
    for i in range(200):
        rig.guest.queue(XsType.READ, b"/local/domain/0/blob\0", req_id=i)
    for _ in range(50):
        rig.guest.push()
        rig.conn.service()
    assert rig.conn.pending_output < OUTPUT_BACKLOG_LIMIT + 2 * 4112
    assert rig.guest.pending  # the guest is blocked on a full request ring
    # once it reads, everything flows again
    for _ in range(2000):
        rig.guest.push()
        rig.guest.pull()
        rig.conn.service()
        idle = rig.guest.idx[2] == rig.guest.idx[3] and not rig.conn.pending_output
        if not rig.guest.pending and idle:
            break
    replies = rig.guest.messages()
    assert [r[1] for r in replies] == list(range(200))


def test_events_for_a_guest_that_never_reads_are_capped() -> None:
    rig = Rig()
    rig.roundtrip(XsType.WATCH, b"data\0t\0")
    long_name = "n" * 200
    for i in range(1500):  # about 350 KiB of events
        rig.store.write(f"/local/domain/5/data/{long_name}-{i}", "")
    assert EVENT_BACKLOG_LIMIT - 300 < rig.conn.pending_output <= EVENT_BACKLOG_LIMIT


# -- save / restore ------------------------------------------------------------------------------
def test_ring_connection_save_restore_mid_message() -> None:
    rig = Rig(req_start=1020)
    rig.roundtrip(XsType.WATCH, b"data\0t\0")
    rig.store.write("/local/domain/0/blob", b"z" * 3000, perms=["n0", "r5"])
    rig.guest.queue(XsType.READ, b"/local/domain/0/blob\0", req_id=77)
    rig.guest.queue(XsType.WRITE, b"data/a\x001", req_id=78)
    rig.guest.push(limit=16 + 22 + 10)  # first request whole, second partly
    rig.conn.service()  # the 3000-byte reply only partly fits
    state = rig.conn.save()
    store_state = rig.store.save()
    rig.conn.close()

    store = Store.restore(store_state)
    notified = []
    conn = RingConnection.restore(store, memoryview(rig.page), lambda: notified.append(1), state)
    assert conn.save() == state
    guest = rig.guest
    for _ in range(20):
        guest.push()
        guest.pull()
        conn.service()
    assert guest.messages() == [
        (XsType.READ, 77, 0, b"z" * 3000),
        (XsType.WATCH_EVENT, 0, 0, b"data/a\0t\0"),
        (XsType.WRITE, 78, 0, b"OK\0"),
    ]
    assert notified
