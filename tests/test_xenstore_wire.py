"""The xenstore wire protocol: framing, every handler, replies byte for byte."""

from __future__ import annotations

import struct

import pytest

from hospes.pv.store import Connection, Store, StoreError, XsType, populate_domain
from hospes.pv.store.wire import HANDLERS, HEADER_SIZE, PAYLOAD_MAX, Message, decode_header

D = 5  # the guest


def m(type_: int, payload: bytes, req_id: int = 7, tx_id: int = 0) -> Message:
    return Message(type_, req_id, tx_id, payload)


@pytest.fixture
def store() -> Store:
    s = Store()
    populate_domain(s, D, "guest", "uuid-1", vcpus=1, memory_kib=4096)
    return s


@pytest.fixture
def conn(store: Store) -> Connection:
    c = Connection(store, D)
    return c


def ask(conn: Connection, type_: int, payload: bytes, tx_id: int = 0) -> list[Message]:
    conn.handle(m(type_, payload, tx_id=tx_id))
    return conn.take_output()


def one(conn: Connection, type_: int, payload: bytes, tx_id: int = 0) -> Message:
    (reply,) = ask(conn, type_, payload, tx_id)
    return reply


def err(name: str, tx_id: int = 0) -> Message:
    return m(XsType.ERROR, name.encode() + b"\0", tx_id=tx_id)


# -- framing ------------------------------------------------------------------------
def test_type_numbers_match_xs_wire_h() -> None:
    expected = {
        "CONTROL": 0, "DIRECTORY": 1, "READ": 2, "GET_PERMS": 3, "WATCH": 4, "UNWATCH": 5,
        "TRANSACTION_START": 6, "TRANSACTION_END": 7, "INTRODUCE": 8, "RELEASE": 9,
        "GET_DOMAIN_PATH": 10, "WRITE": 11, "MKDIR": 12, "RM": 13, "SET_PERMS": 14,
        "WATCH_EVENT": 15, "ERROR": 16, "IS_DOMAIN_INTRODUCED": 17, "RESUME": 18,
        "SET_TARGET": 19, "RESET_WATCHES": 21, "DIRECTORY_PART": 22, "INVALID": 0xFFFF,
    }  # fmt: skip
    for name, number in expected.items():
        assert XsType[name] == number


def test_header_layout() -> None:
    msg = Message(XsType.READ, 0x11223344, 9, b"name\0")
    raw = msg.encode()
    assert HEADER_SIZE == 16
    assert raw[:16] == struct.pack("<IIII", 2, 0x11223344, 9, 5)
    assert raw[16:] == b"name\0"
    assert decode_header(raw) == (2, 0x11223344, 9, 5)
    assert Message.decode(raw) == msg
    with pytest.raises(StoreError):
        Message.decode(raw[:-1])
    with pytest.raises(StoreError):
        Message.decode(struct.pack("<IIII", 2, 0, 0, PAYLOAD_MAX + 1) + bytes(PAYLOAD_MAX + 1))


def test_handler_table_is_data() -> None:
    assert isinstance(HANDLERS, dict)
    for t in (
        XsType.DIRECTORY, XsType.READ, XsType.GET_PERMS, XsType.WATCH, XsType.UNWATCH,
        XsType.TRANSACTION_START, XsType.TRANSACTION_END, XsType.GET_DOMAIN_PATH,
        XsType.WRITE, XsType.MKDIR, XsType.RM, XsType.SET_PERMS, XsType.RESET_WATCHES,
        XsType.DIRECTORY_PART, XsType.CONTROL, XsType.IS_DOMAIN_INTRODUCED,
    ):  # fmt: skip
        assert t in HANDLERS
    assert not HANDLERS[XsType.WATCH].uses_tx and HANDLERS[XsType.READ].uses_tx


# -- reads ----------------------------------------------------------------------------
def test_read_reply_has_no_nul(conn: Connection) -> None:
    assert one(conn, XsType.READ, b"name\0") == m(XsType.READ, b"guest")
    assert one(conn, XsType.READ, b"/local/domain/5/domid\0") == m(XsType.READ, b"5")
    assert one(conn, XsType.READ, b"nothing\0") == err("ENOENT")
    assert one(conn, XsType.READ, b"/local/domain/0/name\0") == err("EACCES")


def test_one_path_requests_need_exactly_one_nul(conn: Connection) -> None:
    for payload in (b"", b"name", b"name\0\0", b"name\0x"):
        assert one(conn, XsType.READ, payload) == err("EINVAL")
    assert one(conn, XsType.READ, b"bad path\0") == err("EINVAL")


def test_directory(conn: Connection, store: Store) -> None:
    assert one(conn, XsType.DIRECTORY, b"cpu\0") == m(XsType.DIRECTORY, b"0\0")
    assert one(conn, XsType.DIRECTORY, b"device\0") == m(XsType.DIRECTORY, b"")
    store.write("/local/domain/5/data/a", "")
    store.write("/local/domain/5/data/b", "")
    assert one(conn, XsType.DIRECTORY, b"data\0") == m(XsType.DIRECTORY, b"a\0b\0")


def test_directory_too_big_is_e2big(conn: Connection, store: Store) -> None:
    for i in range(300):
        store.write(f"/local/domain/5/data/child-with-a-long-name-{i:04d}", "")
    assert one(conn, XsType.DIRECTORY, b"data\0") == err("E2BIG")


def test_get_perms(conn: Connection) -> None:
    assert one(conn, XsType.GET_PERMS, b"memory/target\0") == m(XsType.GET_PERMS, b"n0\0r5\0")
    assert one(conn, XsType.GET_PERMS, b"device\0") == m(XsType.GET_PERMS, b"n5\0")


def test_get_domain_path_and_is_domain_introduced(conn: Connection) -> None:
    assert one(conn, XsType.GET_DOMAIN_PATH, b"5\0") == m(
        XsType.GET_DOMAIN_PATH, b"/local/domain/5\0"
    )
    assert one(conn, XsType.GET_DOMAIN_PATH, b"x\0") == err("EINVAL")
    assert one(conn, XsType.IS_DOMAIN_INTRODUCED, b"5\0") == m(XsType.IS_DOMAIN_INTRODUCED, b"T\0")


def test_directory_part(conn: Connection, store: Store) -> None:
    store.write("/local/domain/5/data/a", "")
    store.write("/local/domain/5/data/bb", "")
    gen = str(store.tree.peek("/local/domain/5/data").generation).encode()
    assert one(conn, XsType.DIRECTORY_PART, b"data\x000\0") == m(
        XsType.DIRECTORY_PART, gen + b"\0a\0bb\0\0"
    )
    assert one(conn, XsType.DIRECTORY_PART, b"data\x002\0") == m(
        XsType.DIRECTORY_PART, gen + b"\0bb\0\0"
    )
    assert one(conn, XsType.DIRECTORY_PART, b"data\x0099\0") == m(
        XsType.DIRECTORY_PART, gen + b"\0\0"
    )
    assert one(conn, XsType.DIRECTORY_PART, b"data\0") == err("EINVAL")


def test_directory_part_splits_big_directories(conn: Connection, store: Store) -> None:
    names = [f"child-with-a-long-name-{i:04d}" for i in range(300)]
    for name in names:
        store.write(f"/local/domain/5/data/{name}", "")
    got: list[bytes] = []
    offset = 0
    while True:
        reply = one(conn, XsType.DIRECTORY_PART, b"data\0" + str(offset).encode() + b"\0")
        assert reply.type == XsType.DIRECTORY_PART and len(reply.payload) <= PAYLOAD_MAX
        gen, rest = reply.payload.split(b"\0", 1)
        assert gen.isdigit()
        if rest.endswith(b"\0\0") or rest == b"\0":
            got += [n for n in rest.split(b"\0") if n]
            break
        chunk = [n for n in rest.split(b"\0") if n]
        got += chunk
        offset += len(rest)
    assert got == [n.encode() for n in names]


# -- writes ------------------------------------------------------------------------------
def test_write_mkdir_rm(conn: Connection, store: Store) -> None:
    assert one(conn, XsType.WRITE, b"device/vbd/51712/state\x001") == m(XsType.WRITE, b"OK\0")
    assert store.read("/local/domain/5/device/vbd/51712/state") == b"1"
    assert one(conn, XsType.WRITE, b"data/bin\0a\0b\0") == m(XsType.WRITE, b"OK\0")
    assert store.read("/local/domain/5/data/bin") == b"a\0b\0"
    assert one(conn, XsType.WRITE, b"data/empty\0") == m(XsType.WRITE, b"OK\0")
    assert store.read("/local/domain/5/data/empty") == b""
    assert one(conn, XsType.WRITE, b"no-nul") == err("EINVAL")
    assert one(conn, XsType.WRITE, b"memory/target\x001") == err("EACCES")
    assert one(conn, XsType.MKDIR, b"data/dir\0") == m(XsType.MKDIR, b"OK\0")
    assert one(conn, XsType.MKDIR, b"data/dir\0") == m(XsType.MKDIR, b"OK\0")
    assert one(conn, XsType.RM, b"device/vbd\0") == m(XsType.RM, b"OK\0")
    assert not store.exists("/local/domain/5/device/vbd")
    assert one(conn, XsType.RM, b"device/vbd\0") == m(XsType.RM, b"OK\0")
    assert one(conn, XsType.RM, b"device/vbd/x/y\0") == err("ENOENT")


def test_set_perms(conn: Connection, store: Store) -> None:
    one(conn, XsType.WRITE, b"data/x\0")
    assert one(conn, XsType.SET_PERMS, b"data/x\0n5\0r0\0") == m(XsType.SET_PERMS, b"OK\0")
    assert store.get_perms("/local/domain/5/data/x") == ["n5", "r0"]
    assert one(conn, XsType.SET_PERMS, b"data/x\0") == err("EINVAL")
    assert one(conn, XsType.SET_PERMS, b"data/x\0q5\0") == err("EINVAL")
    assert one(conn, XsType.SET_PERMS, b"data/x\0n0\0") == err("EACCES")
    assert one(conn, XsType.SET_PERMS, b"name\0n5\0") == err("EACCES")


def test_node_quota_over_the_wire(store: Store) -> None:
    conn = Connection(store, D)
    answers = set()
    for i in range(store.quota.max_nodes + 5):
        answers.add(one(conn, XsType.WRITE, f"data/n{i}\0".encode()).payload)
    assert answers == {b"OK\0", b"ENOSPC\0"}


# -- watches -------------------------------------------------------------------------------
def test_watch_acks_then_fires_immediately(conn: Connection) -> None:
    assert ask(conn, XsType.WATCH, b"device\0tok\0") == [
        m(XsType.WATCH, b"OK\0"),
        Message(XsType.WATCH_EVENT, 0, 0, b"device\0tok\0"),
    ]
    assert ask(conn, XsType.WATCH, b"device\0tok\0") == [err("EEXIST")]
    assert ask(conn, XsType.WATCH, b"device\0") == [err("EINVAL")]


def test_relative_and_absolute_events(conn: Connection, store: Store) -> None:
    ask(conn, XsType.WATCH, b"device\0rel\0")
    ask(conn, XsType.WATCH, b"/local/domain/5/device\0abs\0")
    store.write("/local/domain/5/device/vif/0/state", "1")
    assert conn.take_output() == [
        Message(XsType.WATCH_EVENT, 0, 0, b"device/vif/0/state\0rel\0"),
        Message(XsType.WATCH_EVENT, 0, 0, b"/local/domain/5/device/vif/0/state\0abs\0"),
    ]


def test_own_write_event_comes_before_the_reply(conn: Connection) -> None:
    ask(conn, XsType.WATCH, b"data\0t\0")
    assert ask(conn, XsType.WRITE, b"data/x\x001") == [
        Message(XsType.WATCH_EVENT, 0, 0, b"data/x\0t\0"),
        m(XsType.WRITE, b"OK\0"),
    ]


def test_removing_an_ancestor_fires(conn: Connection, store: Store) -> None:
    store.write("/local/domain/5/device/vbd/1/state", "1")
    ask(conn, XsType.WATCH, b"device/vbd/1/state\0t\0")
    store.rm("/local/domain/5/device")
    assert conn.take_output() == [Message(XsType.WATCH_EVENT, 0, 0, b"device/vbd/1/state\0t\0")]


def test_events_need_read_access(conn: Connection, store: Store) -> None:
    ask(conn, XsType.WATCH, b"/local/domain/0/backend\0t\0")
    store.write("/local/domain/0/backend/vbd/5/51712/state", "2")  # n0 only
    assert conn.take_output() == []
    store.mkdir("/local/domain/0/backend/vbd/5/51712", perms=["n0", "r5"])
    store.write("/local/domain/0/backend/vbd/5/51712/state", "4")
    assert conn.take_output() == [
        Message(XsType.WATCH_EVENT, 0, 0, b"/local/domain/0/backend/vbd/5/51712\0t\0"),
        Message(XsType.WATCH_EVENT, 0, 0, b"/local/domain/0/backend/vbd/5/51712/state\0t\0"),
    ]


def test_pending_duplicate_events_collapse(conn: Connection, store: Store) -> None:
    ask(conn, XsType.WATCH, b"data\0t\0")
    for _ in range(3):
        store.write("/local/domain/5/data/x", "v")
    assert conn.take_output() == [Message(XsType.WATCH_EVENT, 0, 0, b"data/x\0t\0")]


def test_unwatch_and_reset_watches(conn: Connection, store: Store) -> None:
    ask(conn, XsType.WATCH, b"data\0t\0")
    assert ask(conn, XsType.UNWATCH, b"/local/domain/5/data\0t\0") == [m(XsType.UNWATCH, b"OK\0")]
    assert ask(conn, XsType.UNWATCH, b"data\0t\0") == [err("ENOENT")]
    ask(conn, XsType.WATCH, b"data\0t\0")
    assert ask(conn, XsType.RESET_WATCHES, b"\0") == [m(XsType.RESET_WATCHES, b"OK\0")]
    store.write("/local/domain/5/data/x", "")
    assert conn.take_output() == []


def test_special_watches(conn: Connection, store: Store) -> None:
    assert ask(conn, XsType.WATCH, b"@releaseDomain\0r\0")[1].payload == b"@releaseDomain\0r\0"
    store.write("/local/domain/5/data/x", "")
    store.release_domain()
    assert conn.take_output() == [Message(XsType.WATCH_EVENT, 0, 0, b"@releaseDomain\0r\0")]


# -- transactions ---------------------------------------------------------------------------------
def start(conn: Connection) -> int:
    reply = one(conn, XsType.TRANSACTION_START, b"\0")
    assert reply.type == XsType.TRANSACTION_START and reply.payload.endswith(b"\0")
    return int(reply.payload[:-1])


def test_transaction_commit(conn: Connection, store: Store) -> None:
    ask(conn, XsType.WATCH, b"device\0t\0")
    tx = start(conn)
    assert tx == 1
    assert one(conn, XsType.READ, b"device\0", tx) == m(XsType.READ, b"", tx_id=tx)
    assert one(conn, XsType.WRITE, b"device/vbd/1/ring-ref\x008", tx) == m(
        XsType.WRITE, b"OK\0", tx_id=tx
    )
    assert not store.exists("/local/domain/5/device/vbd/1/ring-ref")
    assert ask(conn, XsType.TRANSACTION_END, b"T\0", tx) == [
        Message(XsType.WATCH_EVENT, 0, 0, b"device/vbd/1/ring-ref\0t\0"),
        m(XsType.TRANSACTION_END, b"OK\0", tx_id=tx),
    ]
    assert store.read("/local/domain/5/device/vbd/1/ring-ref") == b"8"
    assert one(conn, XsType.READ, b"device\0", tx) == err("ENOENT", tx)


def test_transaction_conflict_and_abort(conn: Connection, store: Store) -> None:
    store.write("/local/domain/5/device/vbd/1/state", "1")
    tx = start(conn)
    one(conn, XsType.READ, b"device/vbd/1/state\0", tx)
    one(conn, XsType.WRITE, b"device/vbd/1/state\x003", tx)
    store.write("/local/domain/5/device/vbd/1/state", "5")
    assert one(conn, XsType.TRANSACTION_END, b"T\0", tx) == err("EAGAIN", tx)
    assert store.read("/local/domain/5/device/vbd/1/state") == b"5"
    assert one(conn, XsType.TRANSACTION_END, b"T\0", tx) == err("ENOENT", tx)
    tx = start(conn)
    one(conn, XsType.WRITE, b"data/x\0y", tx)
    assert one(conn, XsType.TRANSACTION_END, b"F\0", tx) == m(
        XsType.TRANSACTION_END, b"OK\0", tx_id=tx
    )
    assert not store.exists("/local/domain/5/data/x")


def test_transaction_errors(conn: Connection) -> None:
    tx = start(conn)
    assert one(conn, XsType.TRANSACTION_START, b"\0", tx) == err("EBUSY", tx)
    assert one(conn, XsType.TRANSACTION_END, b"X\0", tx) == err("EINVAL", tx)
    assert one(conn, XsType.TRANSACTION_END, b"T\0") == err("ENOENT")
    assert one(conn, XsType.READ, b"name\0", 4242) == err("ENOENT", 4242)
    # WATCH ignores the transaction id
    assert ask(conn, XsType.WATCH, b"data\0t\0", 4242)[0] == m(XsType.WATCH, b"OK\0", tx_id=4242)


def test_transaction_cap(store: Store) -> None:
    conn = Connection(store, D)
    for _ in range(store.quota.max_transactions):
        start(conn)
    assert one(conn, XsType.TRANSACTION_START, b"\0") == err("ENOSPC")


# -- odds and ends -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "type_", [XsType.INTRODUCE, XsType.RELEASE, XsType.RESUME, XsType.SET_TARGET,
              XsType.RESTRICT, XsType.WATCH_EVENT, XsType.ERROR, XsType.GET_FEATURE,
              XsType.SET_QUOTA, 99, XsType.INVALID]
)  # fmt: skip
def test_unsupported_requests_are_enosys(conn: Connection, type_: int) -> None:
    assert one(conn, type_, b"5\0") == err("ENOSYS")


def test_control(conn: Connection) -> None:
    assert one(conn, XsType.CONTROL, b"log\0on\0") == err("ENOSYS")
    assert one(conn, XsType.CONTROL, b"") == err("EINVAL")


def test_errors_echo_ids(conn: Connection) -> None:
    conn.handle(Message(XsType.READ, 0xDEADBEEF, 0, b"nothing\0"))
    assert conn.take_output() == [Message(XsType.ERROR, 0xDEADBEEF, 0, b"ENOENT\0")]


def test_connection_save_restore(conn: Connection, store: Store) -> None:
    ask(conn, XsType.WATCH, b"data\0t\0")
    tx = start(conn)
    store.write("/local/domain/5/data/x", "1")  # an event stays queued
    state = conn.save()
    conn.close()
    store2 = Store.restore(store.save())
    again = Connection.restore(store2, state)
    assert again.save() == state
    assert again.take_output() == [Message(XsType.WATCH_EVENT, 0, 0, b"data/x\0t\0")]
    store2.write("/local/domain/5/data/y", "1")
    assert again.take_output() == [Message(XsType.WATCH_EVENT, 0, 0, b"data/y\0t\0")]
    # the dropped transaction still answers, then asks for a retry
    assert one(again, XsType.READ, b"name\0", tx) == m(XsType.READ, b"guest", tx_id=tx)
    assert one(again, XsType.TRANSACTION_END, b"T\0", tx) == err("EAGAIN", tx)
