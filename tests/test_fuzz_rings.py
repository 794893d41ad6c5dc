"""Ring-content fuzzer: random requests in the block and net backends' shared rings.

A simulated frontend (no KVM, fake grant table and event channels, as in
tests/test_block_backend.py and tests/test_net_backend.py) fills the rings
with requests drawn by hypothesis: bad operations and ids, grant references
that are writable, read-only, the ring itself, granted to another domain or
not granted at all, segment counts and sector ranges at and past every limit,
indirect requests whose segment pages hold the same kind of garbage, TX chains
with lying sizes and extra-info slots, RX buffers on bad grants, frames of
every length from the host side, raw random slots, and producer indices that
run more than a ring ahead. Checks for every batch:

* no backend thread dies with an exception (``threading.excepthook``);
* either every request gets a response with its id and a status from the
  protocol, or the backend declares the ring broken (xenbus Closed) as
  Xen's backends do;
* nothing outside the ring pages and the writable data grants changed in
  guest RAM (read-only grants and every other frame are compared byte for
  byte), and the disk image keeps its size;
* a backend that did not disconnect still serves a valid request.

FUZZ_EXAMPLES batches per backend (``HOSPES_FUZZ_SCALE``, ``HOSPES_FUZZ_SEED``).
"""

from __future__ import annotations

import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from device_helpers import make_host
from fuzz_helpers import fuzz_seed, fuzz_settings
from hospes.devices.block import (
    BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, XVDA, BlockBackend, DiskConfig,
)
from hospes.devices.net import NETIF_RSP_DROPPED, NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NetBackend, VifConfig
from hospes.machine.memory import GuestMemory
from hospes.pv.layout import Layout
from hospes.pv.store import Store, populate_domain
from test_net_backend import (
    GREF_OTHER, GREF_RO, GREF_RX0, GREF_RX_RING, GREF_TX0, GREF_TX_RING, MAC, RO_FRAME, RX_DATA, RX_RING, TX_DATA,
    TX_RING, VNET, Front,
)
from waiting import wait_for

FUZZ_SEED = fuzz_seed(6)
FUZZ_EXAMPLES = 150
D = 1
PAGE = 4096
U32 = 0xFFFFFFFF


class ThreadErrors:
    """Exceptions that ended a thread while installed (threading.excepthook)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def __enter__(self) -> "ThreadErrors":
        self._old = threading.excepthook
        threading.excepthook = lambda args: self.errors.append(
            f"{args.thread.name if args.thread else '?'}: {args.exc_type.__name__}: {args.exc_value}")
        return self

    def __exit__(self, *exc: object) -> None:
        threading.excepthook = self._old


def _changed_frames(before: bytes, after: bytes) -> set[int]:
    return {f for f in range(len(before) // PAGE) if before[f * PAGE:(f + 1) * PAGE] != after[f * PAGE:(f + 1) * PAGE]}


def _closed(store: Store, back: str) -> bool:
    return store.read(f"{back}/state") in (b"5", b"6")


# --- block ------------------------------------------------------------------------------------

B_RING, B_DATA, B_RO, B_IND0, B_BIG0, B_NBIG = 10, 11, 12, 13, 20, 8
B_GREF_RING, B_GREF_DATA, B_GREF_RO = 8, 9, 10
B_GREF_OTHER = 70                       # granted to domain 5
B_WRITABLE = {B_RING, B_DATA, *range(B_BIG0, B_BIG0 + B_NBIG)}
DISK_SECTORS = 512                       # 256 KiB
BACK_VBD = f"/local/domain/0/backend/vbd/{D}/{XVDA}"

grefs = st.one_of(
    st.sampled_from((B_GREF_DATA, B_GREF_RO, B_GREF_RING, B_IND0, B_IND0 + 1, B_BIG0, B_BIG0 + B_NBIG - 1,
                     B_GREF_OTHER, 0, 1, 7, 999, 0xFFFF, U32)),
    st.integers(0, U32))
sectors = st.sampled_from((0, 1, 6, 7, 8, 9, 254, 255))
sector_numbers = st.one_of(
    st.sampled_from((0, 1, DISK_SECTORS - 8, DISK_SECTORS - 1, DISK_SECTORS, DISK_SECTORS + 1, 1 << 32, 1 << 55,
                     (1 << 64) - 1, (1 << 64) - 8)),
    st.integers(0, (1 << 64) - 1))
segment = st.tuples(grefs, st.integers(0, 255) | sectors, st.integers(0, 255) | sectors)


@st.composite
def block_request(draw: st.DrawFn, req_id: int) -> bytes:
    if draw(st.integers(0, 19)) == 7:
        return draw(st.binary(min_size=112, max_size=112))
    op = draw(st.sampled_from((0, 0, 1, 1, 2, 3, 4, 5, 6, 6, 255)))
    sector = draw(sector_numbers)
    if op == 6:
        indirect_op = draw(st.sampled_from((0, 1, 2, 6, 255)))
        nseg = draw(st.sampled_from((0, 1, 2, 8, 255, 256, 257, 0xFFFF)))
        pages = draw(st.lists(grefs, min_size=8, max_size=8))
        req = struct.pack("<BBH4xQQH2x8I4x", 6, indirect_op, nseg, req_id, sector, XVDA, *pages)
    else:
        segs = draw(st.lists(segment, max_size=11))
        nseg = draw(st.sampled_from((len(segs), len(segs), len(segs), 0, 11, 12, 255)))
        handle = XVDA if draw(st.integers(0, 9)) else draw(st.integers(0, 0xFFFF))
        req = struct.pack("<BBH4xQQ", op, nseg, handle, req_id, sector)
        req += b"".join(struct.pack("<IBB2x", *s) for s in segs)
    return req.ljust(112, b"\0")[:112]


def _block_rig(tmp: Path) -> SimpleNamespace:
    lay = Layout(ram_pages=64, nr_vcpus=1)
    mem = GuestMemory([("ram", lay.ram_bytes), ("xen", 64 * 4096), ("hv", 4096)], name="hospes-fuzz-block")
    store = Store()
    populate_domain(store, D, "t", "00000000-0000-0000-0000-000000000001", 1, 256)
    dom = make_host(D, mem, lay, store)
    image = tmp / "disk.img"
    image.write_bytes(bytes(range(256)) * 2 * DISK_SECTORS)
    grants = lay.grant_frame_gpa(0)
    entries = [(B_GREF_RING, B_RING, 0, 0), (B_GREF_DATA, B_DATA, 0, 0), (B_GREF_RO, B_RO, 4, 0),
               (B_IND0, B_IND0, 4, 0), (B_IND0 + 1, B_IND0 + 1, 4, 0), (B_GREF_OTHER, B_DATA, 0, 5)]
    entries += [(B_BIG0 + k, B_BIG0 + k, 0, 0) for k in range(B_NBIG)]
    for ref, frame, ro, domid in entries:
        struct.pack_into("<HHI", mem.buf, grants + ref * 8, 1 | ro, domid, frame)
    backend = BlockBackend(dom, DiskConfig(image))
    front = f"/local/domain/{D}/device/vbd/{XVDA}"
    store.write(f"{front}/ring-ref", str(B_GREF_RING))
    store.write(f"{front}/event-channel", "5")
    store.write(f"{front}/protocol", "x86_64-abi")
    store.write(f"{front}/state", "3")
    struct.pack_into("<IIII", mem.buf, B_RING << 12, 0, 1, 0, 1)
    assert store.read(f"{BACK_VBD}/state") == b"4"
    return SimpleNamespace(mem=mem, store=store, backend=backend, image=image, prod=0)


def _block_valid_read_works(rig: SimpleNamespace) -> bool:
    base = B_RING << 12
    req = struct.pack("<BBH4xQQIBB2x", 0, 1, XVDA, 0xC0FFEE, 0, B_GREF_DATA, 0, 0).ljust(112, b"\0")
    rig.mem.write(base + 64 + (rig.prod % 32) * 112, req)
    rig.prod += 1
    rig.mem.write_u32(base, rig.prod)
    rig.backend.notify()
    if not wait_for(lambda: rig.mem.read_u32(base + 8) == rig.prod, 5):
        return False
    rid, _, status = struct.unpack_from("<QBxh", rig.mem.buf, base + 64 + ((rig.prod - 1) % 32) * 112)
    return rid == 0xC0FFEE and status == BLKIF_RSP_OKAY


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hospes-fuzz-rings-") as d:
        yield Path(d)


def test_block_ring_requests_get_answers_and_stay_in_bounds(workdir: Path) -> None:
    @fuzz_settings(FUZZ_EXAMPLES, FUZZ_SEED)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        note(f"HOSPES_FUZZ_SEED={FUZZ_SEED}")
        rig = _block_rig(workdir)
        try:
            with ThreadErrors() as errors:
                _block_batch(data, rig)
                assert not errors.errors, errors.errors
        finally:
            rig.backend.close()
            rig.mem.close()

    run()


def _block_batch(data: st.DataObject, rig: SimpleNamespace) -> None:
    mem, base = rig.mem, B_RING << 12
    # The indirect segment pages hold a drawn segment list (or garbage).
    for page in (B_IND0, B_IND0 + 1):
        segs = data.draw(st.lists(segment, max_size=512), label=f"indirect page {page}")
        raw = b"".join(struct.pack("<IBB2x", *s) for s in segs)
        mem.write(page << 12, raw.ljust(PAGE, b"\0")[:PAGE])
    before = bytes(mem.buf[:64 * PAGE])
    n = data.draw(st.integers(1, 32), label="requests")
    ids = []
    for i in range(n):
        req = data.draw(block_request(data.draw(st.integers(0, (1 << 64) - 1), label="id")), label=f"request {i}")
        ids.append(struct.unpack_from("<Q", req, 8)[0])
        mem.write(base + 64 + ((rig.prod + i) % 32) * 112, req)
    race = data.draw(st.integers(0, 29), label="index race") == 17
    prod = (rig.prod + (data.draw(st.sampled_from((33, 100, 1 << 31)), label="jump") if race else n)) & U32
    mem.write_u32(base, prod)
    rig.backend.notify()
    rewrite = data.draw(st.integers(0, 4), label="rewrite") == 3
    if rewrite:                                 # the guest rewrites slots in flight
        for i in range(n):
            mem.write(base + 64 + ((rig.prod + i) % 32) * 112, data.draw(st.binary(min_size=112, max_size=112)))
    done = wait_for(lambda: mem.read_u32(base + 8) == prod or _closed(rig.store, BACK_VBD), 10)
    assert done, f"no answer and no disconnect: rsp_prod {mem.read_u32(base + 8)}, req_prod {prod}"
    after = bytes(mem.buf[:64 * PAGE])
    outside = _changed_frames(before, after) - B_WRITABLE
    assert not outside, f"frames {sorted(outside)} changed (not the ring or a writable grant)"
    assert rig.image.stat().st_size == DISK_SECTORS * 512
    if race:
        assert _closed(rig.store, BACK_VBD), "a producer more than a ring ahead was served"
        return
    if _closed(rig.store, BACK_VBD):
        return
    got = [struct.unpack_from("<QBxh", mem.buf, base + 64 + ((rig.prod + i) % 32) * 112) for i in range(n)]
    rig.prod = prod
    if not rewrite:                             # the guest's rewrites land on the responses too
        statuses = {BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP}
        assert all(status in statuses for _, _, status in got), got
        assert sorted(ids) == sorted(r for r, _, _ in got), "a request without its response"
    assert _block_valid_read_works(rig), "the backend stopped serving"


# --- net --------------------------------------------------------------------------------------

N_WRITABLE = {TX_RING, RX_RING, *range(RX_DATA, RX_DATA + 20)}
BACK_VIF = f"/local/domain/0/backend/vif/{D}/0"
net_grefs = st.one_of(
    st.sampled_from((GREF_TX0, GREF_TX0 + 19, GREF_RX0, GREF_RX0 + 19, GREF_RO, GREF_OTHER, GREF_TX_RING,
                     GREF_RX_RING, 0, 999, U32)),
    st.integers(0, U32))


@st.composite
def tx_slot(draw: st.DrawFn, slot_id: int) -> bytes:
    if draw(st.integers(0, 9)) == 7:
        return draw(st.binary(min_size=12, max_size=12))
    flags = draw(st.sampled_from((0, 0, 1, 2, 3, 4, 4, 8, 12, 15, 0xFFFF)))
    size = draw(st.sampled_from((0, 1, 13, 14, 42, 60, 1514, 4096, 4097, 9000, 65535)) | st.integers(0, 0xFFFF))
    offset = draw(st.sampled_from((0, 1, 2048, 4095, 4096, 0xFFFF)))
    return struct.pack("<IHHHH", draw(net_grefs), offset, flags, slot_id, size).ljust(12, b"\0")


def _net_rig() -> SimpleNamespace:
    lay = Layout(ram_pages=64, nr_vcpus=1)
    mem = GuestMemory([("ram", lay.ram_bytes), ("xen", 64 * 4096), ("hv", 4096)], name="hospes-fuzz-net")
    store = Store()
    populate_domain(store, D, "t", "00000000-0000-0000-0000-000000000001", 1, 256)
    dom = make_host(D, mem, lay, store)
    grants = lay.grant_frame_gpa(0)
    entries = [(GREF_TX_RING, TX_RING, 0), (GREF_RX_RING, RX_RING, 0), (GREF_RO, RO_FRAME, 4)]
    entries += [(GREF_TX0 + k, TX_DATA + k, 4) for k in range(20)]
    entries += [(GREF_RX0 + k, RX_DATA + k, 0) for k in range(20)]
    for ref, frame, ro in entries:
        struct.pack_into("<HHI", mem.buf, grants + ref * 8, 1 | ro, 0, frame)
    struct.pack_into("<HHI", mem.buf, grants + GREF_OTHER * 8, 1, 5, RX_DATA)
    for k in range(20):                        # TX data: an Ethernet frame's worth of pattern
        mem.write((TX_DATA + k) << 12, bytes((k + i) & 0xFF for i in range(PAGE)))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.setblocking(False)
    backend = NetBackend(dom, VifConfig(mac=MAC), tap_fd=ours.fileno())
    front = Front(dom)
    front.connect()
    assert store.read(f"{BACK_VIF}/state") == b"4"
    return SimpleNamespace(mem=mem, store=store, backend=backend, front=front, host=theirs, ours=ours)


def test_net_rings_get_answers_and_stay_in_bounds() -> None:
    @fuzz_settings(FUZZ_EXAMPLES, FUZZ_SEED)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        note(f"HOSPES_FUZZ_SEED={FUZZ_SEED}")
        rig = _net_rig()
        try:
            with ThreadErrors() as errors:
                _net_batch(data, rig)
                assert not errors.errors, errors.errors
        finally:
            rig.backend.close()
            rig.ours.close()
            rig.host.close()
            rig.mem.close()

    run()


def _net_batch(data: st.DataObject, rig: SimpleNamespace) -> None:
    mem, front = rig.mem, rig.front
    before = bytes(mem.buf[:64 * PAGE])
    # RX: buffers on drawn grants, then frames of drawn sizes and offload headers from the host.
    bufs = data.draw(st.lists(st.tuples(st.integers(0, 0xFFFF), net_grefs), max_size=24), label="rx buffers")
    rx_first = front.post(rig.backend, bufs)
    for _ in range(data.draw(st.integers(0, 4), label="frames")):
        size = data.draw(st.sampled_from((0, 1, 13, 14, 60, 1514, 4096, 9000, 65000)), label="frame size")
        header = VNET.pack(data.draw(st.sampled_from((0, 1, 2, 3, 255))), data.draw(st.sampled_from((0, 1, 3, 4, 5, 0x80, 255))),
                           data.draw(st.integers(0, 0xFFFF)), data.draw(st.sampled_from((0, 1, 536, 1448, 0xFFFF))),
                           data.draw(st.sampled_from((0, 14, 34, 54, 0xFFFF))), data.draw(st.sampled_from((0, 6, 16, 0xFFFF))))
        try:
            rig.host.send(header + bytes(i & 0xFF for i in range(size)))
        except OSError:
            pass                                # the socket's own limit: nothing reached the backend
    # TX: slots (chains, extra-info slots, garbage), sometimes a producer far ahead.
    n = data.draw(st.integers(0, 24), label="tx slots")
    slots = [data.draw(tx_slot(i), label=f"tx {i}") for i in range(n)]
    race = data.draw(st.integers(0, 29), label="index race") == 17
    tx_base = TX_RING << 12
    start = front.tx_prod
    for s in slots:
        mem.write(tx_base + 64 + (front.tx_prod % 256) * 12, s)
        front.tx_prod += 1
    if race:
        front.tx_prod += data.draw(st.sampled_from((257, 1 << 31)), label="jump")
    else:
        # Two plain one-slot packets end any chain left open (more_data, extra-info slots):
        # netback leaves an unfinished packet on the ring until its last slot comes.
        for _ in range(2):
            mem.write(tx_base + 64 + (front.tx_prod % 256) * 12, struct.pack("<IHHHH", GREF_TX0, 0, 0, 0xE0D, 60))
            front.tx_prod += 1
    mem.write_u32(tx_base, front.tx_prod & U32)
    rig.backend.notify()
    done = wait_for(lambda: mem.read_u32(tx_base + 8) == front.tx_prod & U32 or _closed(rig.store, BACK_VIF), 10)
    assert done, f"TX: no answer and no disconnect ({mem.read_u32(tx_base + 8)} of {front.tx_prod})"
    time.sleep(0.05)                            # frames from the host side land in the RX buffers
    while True:                                 # what the guest sent reaches the host as whole frames
        try:
            frame = rig.host.recv(70000)
        except BlockingIOError:
            break
        assert len(frame) >= VNET.size, frame
    after = bytes(mem.buf[:64 * PAGE])
    outside = _changed_frames(before, after) - N_WRITABLE
    assert not outside, f"frames {sorted(outside)} changed (not a ring or a writable grant)"
    if race:
        assert wait_for(lambda: _closed(rig.store, BACK_VIF), 5), "a producer more than a ring ahead was served"
        return
    if _closed(rig.store, BACK_VIF):
        return
    statuses = {NETIF_RSP_OKAY, NETIF_RSP_ERROR, NETIF_RSP_DROPPED, NETIF_RSP_NULL}
    got = [struct.unpack_from("<Hh", mem.buf, tx_base + 64 + (i % 256) * 12) for i in range(start, front.tx_prod)]
    assert all(status in statuses for _, status in got), got
    rx_done = mem.read_u32((RX_RING << 12) + 8)
    assert (rx_done - rx_first) & U32 <= len(bufs), "more RX responses than buffers"
