"""xenstore wire-protocol fuzzer: random and mutated messages through a guest's ring.

A guest (domain 5) writes messages into its ``xenstore_domain_interface`` page
the way Linux does, and the store's :class:`RingConnection` services the ring;
a second guest (domain 6) has a private node and dom0 owns the rest. Each
example sends MESSAGES_PER_EXAMPLE messages: well-formed requests of every
type (and unknown ones) whose payloads are built from paths (relative,
absolute, other domains', special ``@`` paths, ``..``, over-long), permission
strings, tokens, transaction ids the store handed out and random bytes;
some are mutated after framing (a byte flipped, the length field changed).
Now and then the guest misbehaves with the ring indices (a request producer
more than a ring ahead, a response consumer past the producer). Checks:

* ``service()`` never lets an exception out, and never swallows one either
  (the connection logs an internal error and flags XENSTORE_ERROR_COMM: that
  is a finding);
* until the guest breaks the ring protocol, every request the store can have
  framed gets exactly one reply, in order, with its req_id: its own type or
  XS_ERROR with one of xenstored's error names; after a break the ring's
  error field says which (ring index or protocol) and nothing more comes;
* the tree stays consistent (every child listed by its parent and back,
  per-owner node counts right), the guest owns no more nodes than its quota and
  no value above the quota's size, nothing outside its home changed, the
  other guest's private value never reached it, and the whole store saves
  and restores.

FUZZ_EXAMPLES x MESSAGES_PER_EXAMPLE messages per run (``HOSPES_FUZZ_SCALE``,
``HOSPES_FUZZ_SEED``).
"""

from __future__ import annotations

import logging
import struct

from hypothesis import given, note
from hypothesis import strategies as st

from fuzz_helpers import fuzz_seed, fuzz_settings
from hospes.pv.store import XS_ERROR_NAMES, Quota, RingConnection, Store, XsType, populate_domain
from hospes.pv.store.connection import XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX
from hospes.pv.store.wire import PAYLOAD_MAX
from test_xenstore_ring import Guest

FUZZ_SEED = fuzz_seed(6)
FUZZ_EXAMPLES = 250
MESSAGES_PER_EXAMPLE = 40
GUEST, OTHER = 5, 6
SECRET = b"secret-of-domain-6"
QUOTA = Quota(max_nodes=60, max_value_size=256, max_watches=8, max_transactions=3)
ERROR_FIELD = (0x818 - 0x800) // 4            # in Guest.idx, the words from 0x800

PATHS = ("name", "data", "data/x", "data/x/y", "device", "control/shutdown", "", "/", "//", "data//x",
         "data/", "/local/domain/5", "/local/domain/5/data/a", "/local/domain/6", "/local/domain/6/secret",
         "/local/domain/0", "/vm", "/local", "/tool", "@introduceDomain", "@releaseDomain", "@other",
         "data/../x", "data/./x", "data/x\xff", "data/x y", "data/" + "a" * 300, "/" + "b/" * 1200,
         "/local/domain/5/" + "c" * 2100, "data/\x01", "data/%s", "*", "/local/domain/7/x")
PERMS = ("n5", "r5", "w5", "b5", "n0", "r0", "b6", "r6", "n99999", "x5", "n", "5", "n-1", "n4294967301",
         "", "r", "n5\0r0", "w6")
WORDS = ("OK", "1", "0", "T", "F", "tok", "-1", "4294967295", "18446744073709551616", "", "\xff\xfe",
         "debug", "print", "check", "quota", "5", "6", "0", "x" * 3000)
TYPES = tuple(int(t) for t in XsType if t != XsType.INVALID) + (27, 28, 100, 0xFFFF, 0xFFFFFFFF)


COMMON = (XsType.READ, XsType.WRITE, XsType.WRITE, XsType.MKDIR, XsType.RM, XsType.DIRECTORY,
          XsType.DIRECTORY_PART, XsType.GET_PERMS, XsType.SET_PERMS, XsType.WATCH, XsType.UNWATCH,
          XsType.TRANSACTION_START, XsType.TRANSACTION_END, XsType.GET_DOMAIN_PATH, XsType.RESET_WATCHES)
OWN_PATHS = ("data/a", "data/b", "data/a/b", "device/vif/0/state", "control/feature-x", "data/" + "z" * 40,
             "/local/domain/5/data/c")
VALUES = (b"", b"1", b"v" * 100, b"w" * 256, b"x" * 257, b"y" * 3000, b"\0\0", b"\xff" * 10)


@st.composite
def well_formed(draw: st.DrawFn, type_: int) -> bytes:
    """A payload as the protocol lays it out for ``type_``, from paths the guest may use."""
    path = draw(st.one_of(st.sampled_from(OWN_PATHS), st.sampled_from(OWN_PATHS), st.sampled_from(PATHS))).encode(
        "utf-8", "surrogatepass")
    match type_:
        case XsType.WRITE:
            return path + b"\0" + draw(st.sampled_from(VALUES))
        case XsType.SET_PERMS:
            perms = draw(st.lists(st.sampled_from(PERMS), min_size=1, max_size=7))
            return path + b"\0" + b"".join(p.encode() + b"\0" for p in perms)
        case XsType.WATCH | XsType.UNWATCH:
            return path + b"\0" + draw(st.sampled_from((b"tok", b"t2", b""))) + b"\0"
        case XsType.DIRECTORY_PART:
            return path + b"\0" + draw(st.sampled_from((b"0", b"1", b"999999", b"x", b""))) + b"\0"
        case XsType.TRANSACTION_START:
            return b"\0"
        case XsType.TRANSACTION_END:
            return draw(st.sampled_from((b"T\0", b"F\0", b"X\0", b"")))
        case XsType.GET_DOMAIN_PATH:
            return draw(st.sampled_from((b"5", b"6", b"0", b"-1", b"x", b"99999999999"))) + b"\0"
        case XsType.RESET_WATCHES:
            return b""
    return path + b"\0"


@st.composite
def request(draw: st.DrawFn, tx_ids: list[int]) -> bytes:
    """One framed request (header and payload), maybe mutated."""
    if draw(st.integers(0, 3)):
        type_ = draw(st.sampled_from(COMMON))
        payload = draw(well_formed(type_))
    else:
        type_ = draw(st.sampled_from(TYPES))
        parts = [draw(st.one_of(st.sampled_from(PATHS), st.sampled_from(PERMS), st.sampled_from(WORDS),
                                st.text(max_size=20)))
                 for _ in range(draw(st.integers(0, 4)))]
        payload = b"\0".join(p.encode("utf-8", "surrogatepass") for p in parts)
        if draw(st.integers(0, 3)):
            payload += b"\0"
        if draw(st.integers(0, 9)) == 0:
            payload = draw(st.binary(max_size=300))
    payload = payload[:PAYLOAD_MAX]
    tx_id = draw(st.sampled_from([0] * 12 + [1, 0xFFFFFFFF, *tx_ids[-3:], *tx_ids[-1:] * 3]))
    req_id = draw(st.integers(0, 0xFFFFFFFF))
    length = len(payload)
    # rare events compare with a middle value: hypothesis draws the bounds more often
    if draw(st.integers(0, 149)) == 77:     # a length field that lies
        length = draw(st.sampled_from((0, max(length - 1, 0), length + 1, PAYLOAD_MAX, PAYLOAD_MAX + 1,
                                       0xFFFFFFFF)))
    data = bytearray(struct.pack("<IIII", type_, req_id, tx_id, length) + payload)
    if draw(st.integers(0, 149)) == 77 and data:
        at = draw(st.integers(0, len(data) - 1))
        data[at] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


def framed(stream: bytes) -> tuple[list[tuple[int, int]], bool]:
    """The (type, req_id) of each request the store can frame from ``stream``, and whether a
    length above PAYLOAD_MAX breaks the protocol on the way."""
    out, pos = [], 0
    while len(stream) - pos >= 16:
        type_, req_id, _, length = struct.unpack_from("<IIII", stream, pos)
        if length > PAYLOAD_MAX:
            return out, True
        if len(stream) - pos - 16 < length:
            break
        out.append((type_, req_id))
        pos += 16 + length
    return out, False


class Failures(logging.Handler):
    """Collects what the store logs with a traceback (an exception it caught)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _store() -> Store:
    store = Store(QUOTA)
    populate_domain(store, GUEST, "fuzzed", "00000000-0000-4000-8000-000000000005", vcpus=1, memory_kib=65536)
    populate_domain(store, OTHER, "other", "00000000-0000-4000-8000-000000000006", vcpus=1, memory_kib=65536)
    store.write(f"/local/domain/{OTHER}/secret", SECRET, perms=[f"n{OTHER}"])
    store.write("/tool/hospes/x", b"dom0 only", perms=["n0"])
    return store


def _check_tree(store: Store) -> None:
    tree = store._tree()
    nodes = {path: tree.peek(path) for path in tree.paths()}
    owned: dict[int, int] = {}
    for path, node in nodes.items():
        assert node is not None
        owned[node.owner] = owned.get(node.owner, 0) + 1
        for child in node.children:
            full = (path.rstrip("/") + "/" + child) if path != "/" else "/" + child
            assert full in nodes, f"{path} lists child {child} that does not exist"
        if path != "/":
            parent = path.rsplit("/", 1)[0] or "/"
            assert parent in nodes and path.rsplit("/", 1)[1] in nodes[parent].children, \
                f"{path} is not listed by its parent"
        if node.owner == GUEST:
            assert len(node.value) <= QUOTA.max_value_size, f"{path}: {len(node.value)}-byte value"
    for owner, n in owned.items():
        assert tree.owned_count(owner) == n, (owner, tree.owned_count(owner), n)
    assert owned.get(GUEST, 0) <= QUOTA.max_nodes


def _outside_home(store: Store) -> dict[str, object]:
    """Every node outside the guest's home, as (value, perms, children). The guest may remove
    its own home (xenstored's do_rm checks write permission on the node only), which takes it
    out of /local/domain's children: that child is left out."""
    tree = store._tree()
    home = f"/local/domain/{GUEST}"
    out: dict[str, object] = {}
    for p in tree.paths():
        if p == home or p.startswith(home + "/"):
            continue
        node = tree.peek(p)
        assert node is not None
        children = tuple(c for c in node.children if p != "/local/domain" or c != str(GUEST))
        out[p] = (node.value, node.perms, children)
    return out


@fuzz_settings(FUZZ_EXAMPLES, FUZZ_SEED)
@given(data=st.data())
def test_random_messages_get_a_reply_and_leave_the_store_consistent(data: st.DataObject) -> None:
    logger = logging.getLogger("hospes.pv.store")
    failures = Failures()
    logger.addHandler(failures)
    try:
        _run(data, failures)
    finally:
        logger.removeHandler(failures)


def _run(data: st.DataObject, failures: Failures) -> None:
    note(f"HOSPES_FUZZ_SEED={FUZZ_SEED}")
    store = _store()
    before = _outside_home(store)
    page = bytearray(4096)
    guest = Guest(page)
    start = data.draw(st.sampled_from((0, 0x3F0, 0xFFFFFFF8)))
    guest.set_indices(start, start + 3)
    conn = RingConnection(store, GUEST, memoryview(page), lambda: None)
    sent = b""
    tx_ids: list[int] = []
    bad_indices = False
    for i in range(MESSAGES_PER_EXAMPLE):
        message = data.draw(request(tx_ids), label=f"message {i}")
        sent += message
        guest.pending += message
        while guest.pending:
            guest.push()
            conn.service()
            guest.pull()
            conn.service()
            if conn.broken:
                break
        for type_, _, _, payload in parse_all(guest.received):
            if type_ == XsType.TRANSACTION_START and payload.rstrip(b"\0").isdigit():
                tx_ids.append(int(payload.rstrip(b"\0")))
        if conn.broken:
            break
        if data.draw(st.integers(0, 199), label="index race") == 77:
            bad_indices = True
            if data.draw(st.booleans()):
                guest.idx[1] = (guest.idx[0] + data.draw(st.sampled_from((1025, 4096, 0x80000000)))) & 0xFFFFFFFF
            else:
                guest.idx[2] = (guest.idx[3] + data.draw(st.sampled_from((1, 1024, 0x80000000)))) & 0xFFFFFFFF
            conn.service()
            assert conn.broken and guest.idx[ERROR_FIELD] == XENSTORE_ERROR_RINGIDX, "a bad index was not refused"
            break

    assert not failures.records, "the store caught an exception: " + "; ".join(
        r.getMessage() + (f" ({r.exc_info[1]!r})" if r.exc_info else "") for r in failures.records)
    expected, protocol_break = framed(sent)
    if protocol_break and not bad_indices:
        assert conn.broken and guest.idx[ERROR_FIELD] == XENSTORE_ERROR_PROTO
    if not conn.broken:
        _check_replies(conn, guest, expected)
    assert all(SECRET not in m[3] for m in parse_all(guest.received))
    _check_tree(store)
    assert _outside_home(store) == before, "a node outside the guest's home changed"
    # The store, with whatever the guest left in it, saves and restores.
    state = store.save()
    again = Store.restore(state, QUOTA)
    assert sorted(again._tree().paths()) == sorted(store._tree().paths())
    conn.save()


def parse_all(received: bytes) -> list[tuple[int, int, int, bytes]]:
    """Every complete message in what the guest received so far."""
    out, pos = [], 0
    while len(received) - pos >= 16:
        type_, req_id, tx_id, length = struct.unpack_from("<IIII", received, pos)
        if len(received) - pos - 16 < length:
            break
        out.append((type_, req_id, tx_id, received[pos + 16:pos + 16 + length]))
        pos += 16 + length
    return out


def _check_replies(conn: RingConnection, guest: Guest, expected: list[tuple[int, int]]) -> None:
    for _ in range(4):
        conn.service()
        guest.pull()
    messages = parse_all(guest.received)
    assert all(SECRET not in m[3] for m in messages), "another domain's private value reached the guest"
    replies = [m for m in messages if m[0] != XsType.WATCH_EVENT or m[1] != 0]
    assert len(replies) == len(expected), f"{len(expected)} requests, {len(replies)} replies"
    for (req_type, req_id), (type_, rid, _, payload) in zip(expected, replies, strict=True):
        assert rid == req_id, (req_type, req_id, type_, rid)
        if type_ == XsType.ERROR:
            assert payload.endswith(b"\0") and payload[:-1].decode() in XS_ERROR_NAMES, payload
        else:
            assert type_ == req_type, (req_type, type_, payload)
