"""The block backend against a simulated frontend (no KVM): handshake, I/O, bad requests."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from hospes.devices import block
from hospes.devices.block import BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, XVDA, BlockBackend, BlockState, DiskConfig
from hospes.devices.xenbus import XenbusState
from hospes.machine.memory import GuestMemory
from hospes.pv.errors import XenError
from hospes.pv.layout import Layout
from hospes.pv.ring import BackRingState
from hospes.pv.store import Store, populate_domain
from hospes.state import StateError, decode, encode
from device_helpers import make_host

D = 1
RING, DATA, RO_DATA = 10, 11, 12   # guest frames
GREF_RING, GREF_DATA, GREF_RO = 8, 9, 10
IND0 = 13                          # frames 13, 14: indirect segment pages (gref = frame)
BIG0, NBIG = 20, 40                # frames 20..59: data pages for indirect requests (gref = frame)




@pytest.fixture()
def setup(tmp_path: Path):
    lay = Layout(ram_pages=64, nr_vcpus=1)
    mem = GuestMemory([("ram", lay.ram_bytes), ("xen", 64 * 4096), ("hv", 4096)])
    store = Store()
    populate_domain(store, D, "t", "00000000-0000-0000-0000-000000000001", 1, 256)
    dom = make_host(D, mem, lay, store)
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(range(256)) * 16 * 64)  # 256 KiB, a known pattern
    grants = lay.grant_frame_gpa(0)
    entries = [(GREF_RING, RING, False), (GREF_DATA, DATA, False), (GREF_RO, RO_DATA, True),
               (IND0, IND0, True), (IND0 + 1, IND0 + 1, True)]
    entries += [(BIG0 + k, BIG0 + k, False) for k in range(NBIG)]
    for ref, frame, ro in entries:
        struct.pack_into("<HHI", mem.buf, grants + ref * 8, 1 | (4 if ro else 0), 0, frame)
    yield dom, image
    mem.close()


def connect(dom, backend: BlockBackend) -> None:
    front = f"/local/domain/{D}/device/vbd/{XVDA}"
    dom.store.write(f"{front}/ring-ref", str(GREF_RING))
    dom.store.write(f"{front}/event-channel", "5")
    dom.store.write(f"{front}/protocol", "x86_64-abi")
    dom.store.write(f"{front}/state", "3")
    struct.pack_into("<IIII", dom.mem.buf, RING << 12, 0, 1, 0, 1)  # ring.h: events at 1


def submit(dom, backend, reqs) -> list[tuple[int, int, int]]:
    base = RING << 12
    prod = dom.mem.read_u32(base)
    for op, sector, segs in reqs:
        slot = base + 64 + (prod % 32) * 112
        req = struct.pack("<BBH4xQQ", op, len(segs), XVDA, 0x1000 + prod, sector)
        for gref, first, last in segs:
            req += struct.pack("<IBB2x", gref, first, last)
        dom.mem.write(slot, req.ljust(112, b"\0"))
        prod += 1
    dom.mem.write_u32(base, prod)
    backend.notify()
    deadline = time.monotonic() + 5
    while dom.mem.read_u32(base + 8) != prod and time.monotonic() < deadline:
        time.sleep(0.01)
    out = []
    for i in range(prod - len(reqs), prod):
        rid, op, status = struct.unpack_from("<QBxh", dom.mem.buf, base + 64 + (i % 32) * 112)
        out.append((rid, op, status))
    return out


def submit_indirect(dom, backend, op: int, sector: int, segs: list[tuple[int, int, int]],
                    pages: tuple[int, ...] = (IND0, IND0 + 1), nseg: int | None = None) -> tuple[int, int, int]:
    """One BLKIF_OP_INDIRECT request whose segment list lies in the granted pages ``pages``."""
    for i, (gref, first, last) in enumerate(segs):
        struct.pack_into("<IBB2x", dom.mem.buf, (IND0 << 12) + 8 * i, gref, first, last)
    grefs = list(pages) + [0] * (8 - len(pages))
    base = RING << 12
    prod = dom.mem.read_u32(base)
    req = struct.pack("<BBH4xQQH2x8I4x", 6, op, len(segs) if nseg is None else nseg, 0x7000 + prod, sector,
                      XVDA, *grefs)
    dom.mem.write(base + 64 + (prod % 32) * 112, req.ljust(112, b"\0"))
    dom.mem.write_u32(base, prod + 1)
    backend.notify()
    deadline = time.monotonic() + 5
    while dom.mem.read_u32(base + 8) != prod + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    return struct.unpack_from("<QBxh", dom.mem.buf, base + 64 + (prod % 32) * 112)


def test_handshake_publishes_the_disk(setup) -> None:
    dom, image = setup
    b = BlockBackend(dom, DiskConfig(image))
    back = f"/local/domain/0/backend/vbd/{D}/{XVDA}"
    assert dom.store.read(f"{back}/state") == b"2"
    assert dom.store.read(f"/local/domain/{D}/device/vbd/{XVDA}/state") == b"1"
    connect(dom, b)
    assert dom.store.read(f"{back}/state") == b"4"
    assert dom.store.read(f"{back}/sectors") == str(256 * 1024 // 512).encode()
    assert dom.store.read(f"{back}/feature-max-indirect-segments") == b"256"
    assert dom.evtchn.bound == {5: b}
    b.close()


def test_read_write_and_refused_requests(setup) -> None:
    dom, image = setup
    b = BlockBackend(dom, DiskConfig(image))
    connect(dom, b)
    # Read sectors 2..3 into the data page's sectors 4..5.
    (rid, op, status), = submit(dom, b, [(0, 2, [(GREF_DATA, 4, 5)])])
    assert status == BLKIF_RSP_OKAY and op == 0
    assert dom.mem.read((DATA << 12) + 4 * 512, 1024) == image.read_bytes()[1024:2048]
    # Write the page's first sector to sector 7.
    dom.mem.write(DATA << 12, b"W" * 512)
    (_, _, status), = submit(dom, b, [(1, 7, [(GREF_DATA, 0, 0)])])
    assert status == BLKIF_RSP_OKAY
    assert image.read_bytes()[7 * 512:8 * 512] == b"W" * 512
    # Refused: reading into a read-only grant, an unknown grant, bad sector bounds, past the end.
    results = submit(dom, b, [
        (0, 0, [(GREF_RO, 0, 0)]),
        (0, 0, [(999, 0, 0)]),
        (0, 0, [(GREF_DATA, 5, 3)]),
        (0, 512, [(GREF_DATA, 0, 0)]),
    ])
    assert [s for _, _, s in results] == [BLKIF_RSP_ERROR] * 4
    b.close()


def test_read_only_disk_refuses_writes(setup) -> None:
    dom, image = setup
    b = BlockBackend(dom, DiskConfig(image, readonly=True))
    connect(dom, b)
    assert dom.store.read(f"/local/domain/0/backend/vbd/{D}/{XVDA}/info") == b"4"
    before = image.read_bytes()
    (_, _, status), = submit(dom, b, [(1, 0, [(GREF_DATA, 0, 0)])])
    assert status == BLKIF_RSP_ERROR and image.read_bytes() == before
    b.close()


def test_corrupt_ring_indices_disconnect_without_raising(setup) -> None:
    dom, image = setup
    b = BlockBackend(dom, DiskConfig(image))
    connect(dom, b)
    dom.mem.write_u32(RING << 12, 1000)
    b.notify()
    deadline = time.monotonic() + 5
    back = f"/local/domain/0/backend/vbd/{D}/{XVDA}/state"
    while dom.store.read(back) != b"6" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dom.store.read(back) == b"6"
    b.close()


def test_indirect_requests_move_many_segments_each(setup) -> None:
    """BLKIF_OP_INDIRECT: 40 pages read in one request; a write of partial pages lands
    contiguously on disk; the response names the operation done (blkfront checks)."""
    dom, image = setup
    b = BlockBackend(dom, DiskConfig(image))
    connect(dom, b)
    disk = image.read_bytes()
    rid, op, status = submit_indirect(dom, b, 0, 8, [(BIG0 + k, 0, 7) for k in range(NBIG)])
    assert (op, status) == (0, BLKIF_RSP_OKAY) and rid & 0xF000 == 0x7000
    for k in range(NBIG):
        assert dom.mem.read((BIG0 + k) << 12, 4096) == disk[4096 + k * 4096:4096 + (k + 1) * 4096], k
    for k in range(20):
        dom.mem.write(((BIG0 + k) << 12) + 512, bytes([k + 1]) * 3072)   # sectors 1..6 of each page
    rid, op, status = submit_indirect(dom, b, 1, 100, [(BIG0 + k, 1, 6) for k in range(20)])
    assert (op, status) == (1, BLKIF_RSP_OKAY)
    after = image.read_bytes()
    assert after[100 * 512:100 * 512 + 20 * 3072] == b"".join(bytes([k + 1]) * 3072 for k in range(20))
    assert after[:100 * 512] == disk[:100 * 512] and after[100 * 512 + 20 * 3072:] == disk[100 * 512 + 20 * 3072:]
    b.close()


def test_bad_indirect_requests_get_errors(setup) -> None:
    dom, image = setup
    b = BlockBackend(dom, DiskConfig(image))
    connect(dom, b)
    before = image.read_bytes()
    page = [(BIG0, 0, 7)]
    assert submit_indirect(dom, b, 0, 0, page, nseg=0)[2] == BLKIF_RSP_ERROR
    assert submit_indirect(dom, b, 0, 0, page * 257)[2] == BLKIF_RSP_ERROR          # over what we offer
    assert submit_indirect(dom, b, 3, 0, page)[1:] == (3, BLKIF_RSP_ERROR)            # only read/write
    assert submit_indirect(dom, b, 0, 0, page, pages=(999,))[2] == BLKIF_RSP_ERROR    # ungranted list page
    assert submit_indirect(dom, b, 0, 0, [(BIG0, 0, 7), (GREF_RO, 0, 7)])[2] == BLKIF_RSP_ERROR
    assert submit_indirect(dom, b, 1, 510, page * 2)[2] == BLKIF_RSP_ERROR             # past the end
    assert image.read_bytes() == before
    assert submit_indirect(dom, b, 0, 0, page)[2] == BLKIF_RSP_OKAY                    # the ring still works
    b.close()


def test_short_transfers_continue_where_they_stopped(setup, monkeypatch) -> None:
    dom, image = setup
    real_preadv = block.os.preadv

    def preadv_1000(fd, views, pos, *flags):   # the kernel may return less than asked
        v = views[0]
        n = min(len(v), 1000)
        return real_preadv(fd, [v[:n]], pos, *flags)

    monkeypatch.setattr(block.os, "preadv", preadv_1000)
    b = BlockBackend(dom, DiskConfig(image))
    connect(dom, b)
    assert submit_indirect(dom, b, 0, 3, [(BIG0 + k, 0, 7) for k in range(3)])[2] == BLKIF_RSP_OKAY
    assert b"".join(dom.mem.read((BIG0 + k) << 12, 4096) for k in range(3)) == image.read_bytes()[1536:1536 + 12288]
    b.close()


# --- saved state ----------------------------------------------------------------------------

def test_save_restore_save(setup) -> None:
    dom, image = setup
    b = BlockBackend(dom, DiskConfig(image))
    assert b.save() == BlockState(vdev=XVDA, xenbus=XenbusState.INIT_WAIT, port=0, ring=None)
    connect(dom, b)
    submit(dom, b, [(0, 2, [(GREF_DATA, 4, 5)]), (0, 3, [(GREF_DATA, 0, 0)])])
    state = b.save()
    b.close()
    assert state.xenbus is XenbusState.CONNECTED and state.port == 5
    assert state.ring == BackRingState(frame=RING, req_cons=2, rsp_prod_pvt=2)
    again = BlockBackend.restore(decode(BlockState, encode(state)), host=dom, disk=DiskConfig(image))
    assert again.save() == state
    again.close()


def test_a_restored_backend_serves_the_ring_it_was_saved_with(setup) -> None:
    dom, image = setup
    b = BlockBackend(dom, DiskConfig(image))
    connect(dom, b)
    assert submit(dom, b, [(0, 2, [(GREF_DATA, 4, 5)])])[0][2] == BLKIF_RSP_OKAY
    state = b.save()
    b.close()
    # While the backend is away the guest publishes a request (its notification is lost).
    base = RING << 12
    req = struct.pack("<BBH4xQQ", 0, 1, XVDA, 0xABC, 4) + struct.pack("<IBB2x", GREF_DATA, 0, 1)
    dom.mem.write(base + 64 + 1 * 112, req.ljust(112, b"\0"))
    dom.mem.write_u32(base, 2)
    dom.evtchn.bound.clear()
    again = BlockBackend.restore(state, host=dom, disk=DiskConfig(image))
    dom.evtchn.bound.update(again.endpoints())     # what EventChannels.restore(backends=...) does
    assert dom.evtchn.bound == {5: again}
    deadline = time.monotonic() + 5
    while dom.mem.read_u32(base + 8) != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert struct.unpack_from("<QBxh", dom.mem.buf, base + 64 + 112) == (0xABC, 0, BLKIF_RSP_OKAY)
    assert dom.mem.read(DATA << 12, 1024) == image.read_bytes()[4 * 512:6 * 512]
    # And on: new requests, then the closing handshake.
    dom.mem.write(DATA << 12, b"R" * 512)
    (_, _, status), = submit(dom, again, [(1, 9, [(GREF_DATA, 0, 0)])])
    assert status == BLKIF_RSP_OKAY and image.read_bytes()[9 * 512:10 * 512] == b"R" * 512
    front = f"/local/domain/{D}/device/vbd/{XVDA}"
    dom.store.write(f"{front}/state", "5")
    assert dom.store.read(f"/local/domain/0/backend/vbd/{D}/{XVDA}/state") == b"5"
    again.close()


def test_restore_refuses_another_disk(setup) -> None:
    dom, image = setup
    state = BlockState(vdev=XVDA + 16, xenbus=XenbusState.INIT_WAIT, port=0, ring=None)
    with pytest.raises(StateError):
        BlockBackend.restore(state, host=dom, disk=DiskConfig(image))


# --- page types (issue 13): a granted page the guest made a page table is never written ------------

def test_a_read_into_a_granted_page_table_fails_and_leaves_it_untouched(setup) -> None:
    dom, image = setup
    types = dom.grants.types
    b = BlockBackend(dom, DiskConfig(image))
    connect(dom, b)
    assert types.held == {RING: 1}                 # the ring page, while connected
    types.get_type(DATA, 1, [])                    # the guest made the data page an L1
    (_, _, status), = submit(dom, b, [(0, 2, [(BIG0, 0, 7), (GREF_DATA, 0, 7)])])
    assert status == BLKIF_RSP_ERROR
    assert dom.mem.read(DATA << 12, 4096) == bytes(4096) and dom.mem.read(BIG0 << 12, 4096) == bytes(4096)
    # Writing the disk from it only reads the page (a read-only map in Xen): allowed.
    (_, _, status), = submit(dom, b, [(1, 2, [(GREF_DATA, 0, 0)])])
    assert status == BLKIF_RSP_OKAY
    # An ordinary page is filled, and its reference given back after the read.
    (_, _, status), = submit(dom, b, [(0, 2, [(BIG0, 0, 7)])])
    assert status == BLKIF_RSP_OKAY and dom.mem.read(BIG0 << 12, 512) == image.read_bytes()[1024:1536]
    assert types.held == {RING: 1} and BIG0 not in types.count
    b.close()
    assert not types.held


def test_the_ring_page_is_held_while_connected_and_released_on_close(setup) -> None:
    dom, image = setup
    types = dom.grants.types
    b = BlockBackend(dom, DiskConfig(image))
    connect(dom, b)
    with pytest.raises(XenError):
        types.get_type(RING, 1, [])
    dom.store.write(f"/local/domain/{D}/device/vbd/{XVDA}/state", "5")   # the frontend closes
    assert not types.held
    types.get_type(RING, 1, [])                    # the page is the guest's to reuse
    b.close()


def test_a_ring_in_a_page_table_is_refused_at_connect(setup, caplog) -> None:
    dom, image = setup
    dom.grants.types.get_type(RING, 1, [])
    b = BlockBackend(dom, DiskConfig(image))
    connect(dom, b)
    assert dom.store.read(f"/local/domain/0/backend/vbd/{D}/{XVDA}/state") == b"6"
    assert dom.evtchn.bound == {} and not b.connected and not dom.grants.types.held
    assert "cannot be written" in caplog.text
    b.close()


# --- many requests in flight (issue 10: throughput that grows with queue depth) -----------------

def publish(dom, reqs, start_id: int = 0x100) -> int:
    """Write ``reqs`` (op, sector, segments) into the ring and publish them; no notification. The new req_prod."""
    base = RING << 12
    prod = dom.mem.read_u32(base)
    for k, (op, sector, segs) in enumerate(reqs):
        req = struct.pack("<BBH4xQQ", op, len(segs), XVDA, start_id + k, sector)
        for gref, first, last in segs:
            req += struct.pack("<IBB2x", gref, first, last)
        dom.mem.write(base + 64 + ((prod + k) % 32) * 112, req.ljust(112, b"\0"))
    dom.mem.write_u32(base, prod + len(reqs))
    return prod + len(reqs)


def responses(dom, first: int, last: int) -> list[tuple[int, int, int]]:
    """Wait until rsp_prod reaches ``last``; the (id, op, status) of ring indices first..last-1."""
    base = RING << 12
    deadline = time.monotonic() + 20
    while dom.mem.read_u32(base + 8) != last and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dom.mem.read_u32(base + 8) == last
    return [struct.unpack_from("<QBxh", dom.mem.buf, base + 64 + (i % 32) * 112) for i in range(first, last)]


class SlowDisk:
    """os.preadv for the I/O threads: each call waits until released, and the most in flight at once is kept."""

    def __init__(self, real, hold: bool = False) -> None:
        import threading
        self.real = real
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.go = threading.Event()
        if not hold:
            self.go.set()

    def __call__(self, fd, views, pos, *flags):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            self.go.wait(20)
            time.sleep(0.02 if pos % 3 else 0.001)   # uneven: completions come back out of order
            return self.real(fd, views, pos, *flags)
        finally:
            with self.lock:
                self.now -= 1


def test_requests_that_wait_for_the_disk_run_together_and_answer_their_own_ids(setup, monkeypatch) -> None:
    """16 reads the page cache cannot serve at once go to the I/O threads together; every
    response carries its own request's id, and each page gets its own sectors."""
    dom, image = setup
    slow = SlowDisk(block.os.preadv)
    monkeypatch.setattr(block.os, "preadv", slow)
    b = BlockBackend(dom, DiskConfig(image))
    b._nowait_read = False          # as on a file whose reads would all wait for the disk
    connect(dom, b)
    reqs = [(0, 8 * k, [(BIG0 + k, 0, 7)]) for k in range(16)]
    prod = publish(dom, reqs, start_id=0x500)
    b.notify()
    got = responses(dom, prod - 16, prod)
    assert sorted(rid for rid, _, _ in got) == [0x500 + k for k in range(16)]
    assert all((op, status) == (0, BLKIF_RSP_OKAY) for _, op, status in got)
    assert [rid for rid, _, _ in got] != sorted(rid for rid, _, _ in got)   # completion order, not ring order
    disk = image.read_bytes()
    for k in range(16):
        assert dom.mem.read((BIG0 + k) << 12, 4096) == disk[4096 * k:4096 * (k + 1)], k
    assert slow.most > 1
    assert dom.grants.types.held == {RING: 1}      # every page's reference given back
    b.close()


def test_one_notification_per_batch_and_none_for_a_polling_frontend(setup) -> None:
    dom, image = setup
    b = BlockBackend(dom, DiskConfig(image))
    connect(dom, b)                                 # rsp_event = 1: notify for the first response
    prod = publish(dom, [(0, k, [(BIG0 + k, 0, 0)]) for k in range(8)])
    b.notify()
    assert all(s == BLKIF_RSP_OKAY for _, _, s in responses(dom, 0, prod))
    time.sleep(0.05)
    assert dom.evtchn.notified == [5]               # eight responses, one event
    # A frontend that polls sets rsp_event far ahead: it is not disturbed.
    dom.mem.write_u32((RING << 12) + 12, prod + 1000)
    prod2 = publish(dom, [(0, k, [(BIG0 + k, 0, 0)]) for k in range(4)])
    b.notify()
    responses(dom, prod, prod2)
    time.sleep(0.05)
    assert dom.evtchn.notified == [5]
    # Idle again, the backend has asked to be notified of the next request (the final check).
    deadline = time.monotonic() + 5
    while dom.mem.read_u32((RING << 12) + 4) != prod2 + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dom.mem.read_u32((RING << 12) + 4) == prod2 + 1
    b.close()


def test_requests_published_without_a_notification_after_a_pass_are_served(setup) -> None:
    """Right after a pass the backend lingers without re-arming: a request published then
    (the frontend, seeing req_event behind, does not notify) is still served."""
    dom, image = setup
    b = BlockBackend(dom, DiskConfig(image))
    connect(dom, b)
    for k in range(20):
        prod = publish(dom, [(0, k, [(BIG0, 0, 0)])], start_id=0x900 + k)
        if k == 0 or dom.mem.read_u32((RING << 12) + 4) == prod:   # RING_PUSH_REQUESTS_AND_CHECK_NOTIFY
            b.notify()
        assert responses(dom, prod - 1, prod) == [(0x900 + k, 0, BLKIF_RSP_OKAY)]
    b.close()


def test_a_frontend_past_its_ring_waits_for_responses_and_save_waits_for_transfers(setup, monkeypatch) -> None:
    """32 requests in flight fill every slot: requests published beyond them (a broken
    frontend) are not taken until responses free slots. save() waits for the transfers in
    flight and answers them."""
    import threading
    dom, image = setup
    slow = SlowDisk(block.os.preadv, hold=True)
    monkeypatch.setattr(block.os, "preadv", slow)
    b = BlockBackend(dom, DiskConfig(image))
    b._nowait_read = False
    connect(dom, b)
    prod = publish(dom, [(0, k, [(BIG0 + k % NBIG, 0, 0)]) for k in range(32)])
    b.notify()
    deadline = time.monotonic() + 5
    while b._ring.req_cons != 32 and time.monotonic() < deadline:
        time.sleep(0.01)
    prod = publish(dom, [(0, k, [(BIG0, 1, 1)]) for k in range(4)], start_id=0x200)   # a broken frontend
    b.notify()
    time.sleep(0.2)
    assert b._ring.req_cons == 32 and dom.mem.read_u32((RING << 12) + 8) == 0
    saved: list[BlockState] = []
    saver = threading.Thread(target=lambda: saved.append(b.save()))
    saver.start()
    time.sleep(0.2)
    assert not saved                                # the transfers are still in flight
    slow.go.set()
    saver.join(20)
    assert saved and saved[0].ring is not None
    assert saved[0].ring.rsp_prod_pvt == saved[0].ring.req_cons >= 32
    # The four extra requests went into slots whose requests were still in flight, and were
    # overwritten by their responses before the backend could take them: the frontend's loss
    # only. Each gets a response; the backend goes on.
    got = responses(dom, 0, prod)
    assert {rid for rid, _, _ in got[4:32]} <= {0x100 + k for k in range(32)}
    assert dom.grants.types.held == {RING: 1}
    dom.mem.write_u32((RING << 12) + 12, prod + 1)
    prod2 = publish(dom, [(0, 3, [(BIG0, 0, 0)])], start_id=0x300)
    b.notify()
    assert responses(dom, prod, prod2) == [(0x300, 0, BLKIF_RSP_OKAY)]
    b.close()


def test_the_worker_lingers_only_for_a_frontend_that_queues(setup) -> None:
    """One request at a time: no linger (no extra wake-up per request). Several at once: the
    worker lingers after its passes, until LINGER_TRIES lingers in a row found nothing."""
    dom, image = setup
    b = BlockBackend(dom, DiskConfig(image))
    connect(dom, b)
    for k in range(5):
        (_, _, status), = submit(dom, b, [(0, k, [(BIG0, 0, 0)])])
        assert status == BLKIF_RSP_OKAY
    assert b._linger_tries == 0
    prod = publish(dom, [(0, k, [(BIG0 + k, 0, 0)]) for k in range(8)])
    b.notify()
    responses(dom, prod - 8, prod)
    assert wait_rearmed(dom, prod)                 # idle: re-armed after a fruitless linger
    assert b._linger_tries == block.LINGER_TRIES - 1
    for k in range(block.LINGER_TRIES - 1):        # lone requests use up the rest
        (_, _, status), = submit(dom, b, [(0, k, [(BIG0, 0, 0)])])
        assert wait_rearmed(dom, dom.mem.read_u32(RING << 12))
    assert b._linger_tries == 0
    b.close()


def wait_rearmed(dom, prod: int) -> bool:
    """Wait until the backend has asked to be notified of request ``prod`` (req_event = prod + 1)."""
    deadline = time.monotonic() + 5
    while dom.mem.read_u32((RING << 12) + 4) != prod + 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    return dom.mem.read_u32((RING << 12) + 4) == prod + 1


def test_a_queueing_frontend_gets_an_event_for_every_batch_of_responses(setup) -> None:
    """A frontend that consumes responses only when notified (and then asks for the next
    event, as blkfront's interrupt handler does) while it keeps queueing: the backend may
    hold an event back for one linger, never lose it."""
    dom, image = setup
    b = BlockBackend(dom, DiskConfig(image))
    connect(dom, b)
    base = RING << 12
    rsp_cons = 0
    for batch in range(12):
        seen = len(dom.evtchn.notified)
        old = dom.mem.read_u32(base)
        prod = publish(dom, [(0, k, [(BIG0 + k, 0, 0)]) for k in range(1 + batch % 4)], start_id=0x40 * batch)
        event = dom.mem.read_u32(base + 4)
        if (prod - event) & 0xFFFFFFFF < (prod - old) & 0xFFFFFFFF:   # RING_PUSH_REQUESTS_AND_CHECK_NOTIFY
            b.notify()
        deadline = time.monotonic() + 5
        while len(dom.evtchn.notified) == seen and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(dom.evtchn.notified) > seen, f"batch {batch}: no event"
        got = responses(dom, rsp_cons, prod) if dom.mem.read_u32(base + 8) == prod else []
        rsp_cons = dom.mem.read_u32(base + 8)
        dom.mem.write_u32(base + 12, rsp_cons + 1)   # RING_FINAL_CHECK_FOR_RESPONSES
        if rsp_cons != prod:                          # more were still coming: they bring their own event
            got = responses(dom, rsp_cons, prod)
            rsp_cons = prod
            dom.mem.write_u32(base + 12, rsp_cons + 1)
        assert all(s == BLKIF_RSP_OKAY for _, _, s in got)
    b.close()


def test_a_bug_on_an_io_thread_reaches_the_failure_hook_and_the_request_is_answered(setup, monkeypatch) -> None:
    dom, image = setup
    seen: list[tuple[str, BaseException]] = []
    dom.failed = lambda what, error: seen.append((what, error))

    def broken(*_):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(block.os, "preadv", broken)
    b = BlockBackend(dom, DiskConfig(image))
    b._nowait_read = False
    connect(dom, b)
    prod = publish(dom, [(0, 0, [(BIG0, 0, 7)])], start_id=0x77)
    b.notify()
    assert responses(dom, prod - 1, prod) == [(0x77, 0, BLKIF_RSP_ERROR)]
    assert [(what, str(e)) for what, e in seen] == [(f"block backend {XVDA} I/O", "injected fault")]
    assert dom.grants.types.held == {RING: 1}
    b.close()
