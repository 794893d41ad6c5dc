"""Saved xenstore state: every part round-trips, goes through JSON, and refuses what it cannot read."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from hospes.pv.store import Connection, ConnectionState, Store, StoreState, XsType, populate_domain
from hospes.pv.store.transactions import TransactionsState, TransactionTable
from hospes.pv.store.tree import NodeRecord, Quota, Tree, TreeState
from hospes.pv.store.watches import WatchesState, WatchList
from hospes.pv.store.wire import Message
from hospes.state import StateError, decode, encode

D = 5


def via_json(cls: type[Any], state: Any) -> Any:
    return decode(cls, json.loads(json.dumps(encode(state))))


@pytest.fixture
def store() -> Store:
    s = Store()
    populate_domain(s, D, "guest", "uuid-1", vcpus=1, memory_kib=4096)
    s.write("/local/domain/5/data/bin", b"\x00\xff\x7f")
    return s


@pytest.fixture
def conn(store: Store) -> Connection:
    """A guest connection with a watch, an open transaction and queued output."""
    c = Connection(store, D)
    c.handle(Message(XsType.WATCH, 1, 0, b"data\0tok\0"))
    c.handle(Message(XsType.TRANSACTION_START, 2, 0, b"\0"))
    store.write("/local/domain/5/data/x", "1")
    return c


# -- every part: restore, save again, JSON ------------------------------------------


def test_tree(store: Store) -> None:
    state = store.tree.save()
    assert Tree.restore(state).save() == state
    assert via_json(TreeState, state) == state
    assert Tree.restore(via_json(TreeState, state)).save() == state


def test_watches() -> None:
    watches = WatchList(D, Quota())
    for path, token in [("device", "t1"), ("/x", "t2"), ("@releaseDomain", "t3")]:
        watches.add(path, token)
    state = watches.save()
    assert WatchList.restore(state, D, Quota()).save() == state
    assert via_json(WatchesState, state) == state


def test_transactions() -> None:
    live = Tree()
    table = TransactionTable()
    for _ in range(3):
        table.start(live)
    table.pop(2)
    state = table.save()
    assert state == TransactionsState((1, 3), 4)
    assert TransactionTable.restore(state, live).save() == state
    assert via_json(TransactionsState, state) == state


def test_store(store: Store) -> None:
    state = store.save()
    assert Store.restore(state).save() == state
    assert via_json(StoreState, state) == state


def test_connection(store: Store, conn: Connection) -> None:
    state = conn.save()
    assert state.outq and state.transactions.open_ids and state.watches.watches
    conn.close()
    again = Connection.restore(Store.restore(store.save()), state)
    assert again.save() == state
    assert via_json(ConnectionState, state) == state


# -- newer versions are refused, naming the part -------------------------------------


def newer(state: Any) -> Any:
    return dataclasses.replace(state, version=type(state).VERSION + 1)


def test_newer_tree_and_node_records_are_refused(store: Store) -> None:
    state = store.tree.save()
    with pytest.raises(StateError, match="saved xenstore tree is version 2"):
        Tree.restore(newer(state))
    first, *rest = state.nodes
    with pytest.raises(StateError, match=f"saved xenstore node {first.path} is version 2"):
        Tree.restore(dataclasses.replace(state, nodes=(newer(first), *rest)))


def test_newer_watches_transactions_and_store_are_refused(store: Store) -> None:
    with pytest.raises(StateError, match="saved xenstore watches of domain 5 is version 2"):
        WatchList.restore(newer(WatchesState(())), D)
    with pytest.raises(StateError, match="saved xenstore transaction table is version 2"):
        TransactionTable.restore(newer(TransactionsState((), 1)), store.tree)
    with pytest.raises(StateError, match="saved xenstore is version 2"):
        Store.restore(newer(store.save()))


def test_newer_connection_is_refused_and_not_left_attached(store: Store, conn: Connection) -> None:
    state = conn.save()
    conn.close()
    store2 = Store.restore(store.save())
    with pytest.raises(StateError, match="saved xenstore connection of domain 5 is version 2"):
        Connection.restore(store2, newer(state))
    bad_watch = dataclasses.replace(state, watches=newer(state.watches))
    with pytest.raises(StateError, match="saved xenstore watches of domain 5 is version 2"):
        Connection.restore(store2, bad_watch)
    assert store2.connections == ()


# -- records that do not fit ---------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ((NodeRecord("/", b"", ("n0",), ("a",), 0),), "lists child 'a'"),
        ((), "no root"),
        ((NodeRecord("/", b"", ("n0",), (), 0),) * 2, "twice"),
        ((NodeRecord("/", b"", ("q0",), (), 0),), "malformed"),
        ((NodeRecord("/", b"", ("n0",), ("a",), 0), NodeRecord("/a/", b"", ("n0",), (), 0)), "malformed"),
    ],
)
def test_inconsistent_trees_are_refused(nodes: tuple[NodeRecord, ...], message: str) -> None:
    with pytest.raises(StateError, match=message):
        Tree.restore(TreeState(nodes, 0))


def test_malformed_watch_paths_and_transaction_ids_are_refused() -> None:
    with pytest.raises(StateError, match="watch 'a//b' of domain 5 is malformed"):
        WatchList.restore(WatchesState((("a//b", "t"),)), D)
    for ids in [(0,), (1, 1), (1 << 32,)]:
        with pytest.raises(StateError, match="transaction id"):
            TransactionTable.restore(TransactionsState(ids, 1), Tree())


def test_connection_output_offset_must_fit_the_first_message(store: Store, conn: Connection) -> None:
    state = conn.save()
    conn.close()
    too_far = dataclasses.replace(state, out_offset=len(state.outq[0][0]) + 1)
    with pytest.raises(StateError, match="bytes of a"):
        Connection.restore(store, too_far)
    assert store.connections == ()
