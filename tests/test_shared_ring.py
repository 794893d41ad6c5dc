"""The shared-ring helpers: io/ring.h's request/response ring and the console/xenstore byte ring."""

from __future__ import annotations

import pytest

from hospes.errors import HospesError

from hospes.machine.memory import GuestMemory
from hospes.pv.mmu import PvMmu
from hospes.pv.ring import BackRing, BackRingState, ByteRing, RingError, index_words, writable_page

RING = 0x3000
M = 0xFFFFFFFF


@pytest.fixture()
def mem():
    m = GuestMemory([("ram", 16 * 4096)])
    yield m
    m.close()


def types(mem: GuestMemory) -> PvMmu:
    """Page types for the 16 pages, where a ring takes its page's writable reference."""
    return PvMmu(mem, 16, 16, {})


def front_push(mem: GuestMemory, ring: BackRing, count: int) -> None:
    """The frontend publishes ``count`` more requests."""
    mem.write_u32(RING, (mem.read_u32(RING) + count) & M)


def test_requests_are_taken_in_order_and_wrap(mem) -> None:
    start = M - 2          # indices wrap past 2**32 on the way
    for off in (0, 4, 8, 12):
        mem.write_u32(RING + off, start)
    r = BackRing(mem, RING, holds=types(mem), nr_slots=32, slot_size=112, req_cons=start, rsp_prod_pvt=start)
    front_push(mem, r, 5)
    assert r.unconsumed() == 5
    slots = [r.take_request() for _ in range(5)]
    assert slots == [RING + 64 + ((start + k) & 31) * 112 for k in range(5)]
    assert r.unconsumed() == 0 and r.req_cons == (start + 5) & M


def test_push_notifies_only_when_the_event_index_is_passed(mem) -> None:
    r = BackRing(mem, RING, holds=types(mem), nr_slots=32, slot_size=112)
    mem.write_u32(RING + 12, 1)               # rsp_event: the frontend wants the first response
    r.next_response()
    assert r.push_responses() is True
    assert mem.read_u32(RING + 8) == 1
    r.next_response()
    assert r.push_responses() is False        # event 1 is behind: the frontend is polling
    mem.write_u32(RING + 12, 5)
    for _ in range(2):
        r.next_response()
    assert r.push_responses() is False        # 4 published, event at 5
    r.next_response()
    assert r.push_responses() is True         # 5 reaches it


def test_final_check_sets_req_event_and_sees_late_requests(mem) -> None:
    r = BackRing(mem, RING, holds=types(mem), nr_slots=32, slot_size=112)
    front_push(mem, r, 2)
    r.take_request(), r.take_request()
    assert r.final_check() is False
    assert mem.read_u32(RING + 4) == 3        # wake me for request index 2 (event = cons + 1)
    front_push(mem, r, 1)
    assert r.final_check() is True            # a request came in meanwhile
    assert r.final_check(seen=1) is True      # "seen" = what the caller already looked at
    assert mem.read_u32(RING + 4) == 2
    r.notify_at(10)
    assert mem.read_u32(RING + 4) == 10


def test_impossible_indices_are_an_error(mem) -> None:
    r = BackRing(mem, RING, holds=types(mem), nr_slots=32, slot_size=112)
    mem.write_u32(RING, 33)
    with pytest.raises(RingError, match="differ by 33"):
        r.unconsumed()
    mem.write_u32(RING, M)                     # "behind" the consumer
    with pytest.raises(RingError):
        r.unconsumed()


def test_a_ring_must_fit_the_guest_and_a_page(mem) -> None:
    with pytest.raises(RingError):
        BackRing(mem, RING, holds=types(mem), nr_slots=64, slot_size=112)      # 64 * 112 > 4096 - 64
    with pytest.raises(RingError):
        BackRing(mem, RING, holds=types(mem), nr_slots=24, slot_size=112)      # not a power of two
    with pytest.raises(RingError):
        BackRing(mem, RING + 8, holds=types(mem), nr_slots=32, slot_size=112)  # not page-aligned
    with pytest.raises(HospesError):
        BackRing(mem, 16 * 4096, holds=types(mem), nr_slots=32, slot_size=112)  # beyond the guest's memory


def test_save_names_the_frame_and_positions(mem) -> None:
    r = BackRing(mem, RING, holds=types(mem), nr_slots=256, slot_size=12, req_cons=7, rsp_prod_pvt=5)
    assert r.save() == BackRingState(frame=3, req_cons=7, rsp_prod_pvt=5)


# --- byte rings --------------------------------------------------------------------------

def byte_rings(start: int) -> tuple[bytearray, memoryview, ByteRing, ByteRing]:
    page = bytearray(4096)
    view = writable_page(memoryview(page), "test")
    idx = index_words(view, 0x800, 4)
    for i in range(4):
        idx[i] = start
    inbound = ByteRing(view, data=0, size=1024, indices=idx, cons=0, prod=1)
    outbound = ByteRing(view, data=0x400, size=1024, indices=idx, cons=2, prod=3)
    return page, idx, inbound, outbound


@pytest.mark.parametrize("start", [0, 1000, M - 10])
def test_byte_ring_write_then_read_wraps(start: int) -> None:
    page, idx, _inbound, out = byte_rings(start)
    data = bytes(range(256)) * 5
    assert out.write(data) == 1024 and out.writable() == 0
    assert out.write(b"x") == 0
    assert idx[3] == (start + 1024) & M
    # The guest reads 100 bytes: room for 100 more, written across the array's end.
    got = bytes(page[0x400 + ((start + i) & 1023)] for i in range(100))
    assert got == data[:100]
    idx[2] = (start + 100) & M
    assert out.write(b"y" * 150) == 100


@pytest.mark.parametrize("start", [0, 1020, M - 3])
def test_byte_ring_read_takes_what_the_guest_wrote(start: int) -> None:
    page, idx, inbound, _out = byte_rings(start)
    for i, b in enumerate(b"hello, world"):
        page[(start + i) & 1023] = b
    idx[1] = (start + 12) & M
    assert inbound.readable() == 12
    assert inbound.read(5) == b"hello"
    assert inbound.read(100) == b", world"
    assert idx[0] == (start + 12) & M and inbound.read(10) == b""


def test_byte_ring_refuses_impossible_indices_without_moving() -> None:
    _page, idx, inbound, out = byte_rings(0)
    idx[1] = 1025
    with pytest.raises(RingError):
        inbound.read(10)
    assert idx[0] == 0
    idx[2] = 5                                 # the guest's cons ahead of our prod
    with pytest.raises(RingError):
        out.write(b"x")
    assert idx[3] == 0


def test_byte_ring_must_fit_its_page() -> None:
    view = memoryview(bytearray(4096))
    idx = index_words(view, 0x800, 4)
    with pytest.raises(RingError):
        ByteRing(view, data=0xC00, size=2048, indices=idx, cons=0, prod=1)
    with pytest.raises(RingError):
        index_words(view, 4094, 1)
    with pytest.raises(ValueError):
        writable_page(memoryview(bytes(4096)), "test")
