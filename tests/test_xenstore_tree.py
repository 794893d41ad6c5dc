"""Tree, permissions, quotas, transactions, watches and the dom0 API of the store."""

from __future__ import annotations

import pytest

from hospes.pv.store import Store, StoreError, populate_domain
from hospes.pv.store.transactions import TransactionTable, commit
from hospes.pv.store.tree import (
    ABS_PATH_MAX,
    Change,
    Perm,
    Quota,
    Tree,
    TreeState,
    NodeRecord,
    canonicalize,
    parse_perms,
)
from hospes.pv.store.watches import WatchList, is_child
from hospes.state import StateError


def errno_of(excinfo: pytest.ExceptionInfo[StoreError]) -> str:
    return excinfo.value.errno_name


# -- paths -------------------------------------------------------------------
def test_relative_paths_resolve_against_the_home() -> None:
    assert canonicalize("device/vbd", 7) == "/local/domain/7/device/vbd"
    assert canonicalize("/local/domain/0/backend", 7) == "/local/domain/0/backend"
    assert canonicalize("/", 7) == "/"


@pytest.mark.parametrize(
    "path", ["", "a b", "/a//b", "/a/", "a/", "/a\n", "/caf\u00e9", "/a.b", "@introduceDomain"]
)
def test_bad_paths_are_einval(path: str) -> None:
    with pytest.raises(StoreError) as exc:
        canonicalize(path, 1)
    assert errno_of(exc) == "EINVAL"


def test_special_paths_only_where_allowed() -> None:
    assert canonicalize("@releaseDomain", 1, allow_special=True) == "@releaseDomain"


def test_path_length_limits() -> None:
    ok = "/" + "a" * (ABS_PATH_MAX - 1)
    assert canonicalize(ok, 0) == ok
    with pytest.raises(StoreError) as exc:
        canonicalize(ok + "b", 0)
    assert errno_of(exc) == "EINVAL"
    with pytest.raises(StoreError):
        canonicalize("x" * 2049, 3, quota=Quota())
    assert canonicalize("x" * 2048, 3, quota=Quota()).endswith("x" * 2048)


def test_perm_parsing() -> None:
    assert parse_perms(["n0", "r5", "w7", "b9"]) == (
        Perm("n", 0),
        Perm("r", 5),
        Perm("w", 7),
        Perm("b", 9),
    )
    for bad in ["x1", "r", "rr", "r-1", "r70000"]:
        with pytest.raises(StoreError):
            Perm.parse(bad)
    with pytest.raises(StoreError):
        parse_perms([])


# -- basic operations --------------------------------------------------------
def test_write_creates_parents_and_read_directory() -> None:
    tree = Tree()
    tree.write(0, "/a/b/c", b"v")
    assert tree.read(0, "/a/b/c") == b"v"
    assert tree.read(0, "/a/b") == b""
    assert tree.directory(0, "/") == ("a",)
    tree.write(0, "/a/x", b"1")
    tree.write(0, "/a/b2", b"2")
    assert tree.directory(0, "/a") == ("b", "x", "b2")
    with pytest.raises(StoreError) as exc:
        tree.read(0, "/nope")
    assert errno_of(exc) == "ENOENT"


def test_mkdir_existing_is_fine_and_fires_nothing() -> None:
    tree = Tree()
    assert len(tree.mkdir(0, "/d")) == 1
    tree.write(0, "/d", b"keep")
    assert tree.mkdir(0, "/d") == []
    assert tree.read(0, "/d") == b"keep"


def test_rm_is_recursive_and_reports_every_node() -> None:
    tree = Tree()
    tree.write(0, "/a/b/c", b"")
    tree.write(0, "/a/d", b"")
    changes = tree.rm(0, "/a")
    assert [(c.path, c.exact) for c in changes] == [
        ("/a/b/c", True),
        ("/a/b", True),
        ("/a/d", True),
        ("/a", False),
    ]
    assert tree.directory(0, "/") == ()
    assert len(tree) == 1


def test_rm_missing_node() -> None:
    tree = Tree()
    tree.write(0, "/a", b"")
    assert tree.rm(0, "/a/missing") == []
    with pytest.raises(StoreError) as exc:
        tree.rm(0, "/x/y")
    assert errno_of(exc) == "ENOENT"
    with pytest.raises(StoreError) as exc:
        tree.rm(0, "/")
    assert errno_of(exc) == "EINVAL"


def test_generations_move_on_every_change() -> None:
    tree = Tree()
    tree.write(0, "/a", b"1")
    g_a = tree.node(0, "/a").generation
    g_root = tree.node(0, "/").generation
    tree.write(0, "/a/b", b"")
    assert tree.node(0, "/a").generation > g_a  # child list changed
    assert tree.node(0, "/").generation == g_root
    g_a = tree.node(0, "/a").generation
    tree.write(0, "/a", b"2")
    assert tree.node(0, "/a").generation > g_a


# -- permissions ---------------------------------------------------------------
def make_tree() -> Tree:
    tree = Tree()
    tree.write(0, "/local/domain/0/backend/vbd/5/0/state", b"2")
    tree.set_perms(0, "/local/domain/0/backend/vbd/5", parse_perms(["n0", "r5"]))
    tree.mkdir(0, "/local/domain/5")
    tree.set_perms(0, "/local/domain/5", parse_perms(["n5"]))
    return tree


def test_guest_access_follows_perms() -> None:
    tree = make_tree()
    assert tree.read(5, "/local/domain/5") == b""
    with pytest.raises(StoreError) as exc:
        tree.read(5, "/local/domain/0/backend/vbd/5/0/state")  # inherited n0 only
    assert errno_of(exc) == "EACCES"
    tree.set_perms(0, "/local/domain/0/backend/vbd/5/0/state", parse_perms(["n0", "r5"]))
    assert tree.read(5, "/local/domain/0/backend/vbd/5/0/state") == b"2"
    assert tree.directory(5, "/local/domain/0/backend/vbd/5") == ("0",)
    with pytest.raises(StoreError) as exc:
        tree.write(5, "/local/domain/0/backend/vbd/5/0/state", b"4")
    assert errno_of(exc) == "EACCES"
    with pytest.raises(StoreError) as exc:
        tree.read(6, "/local/domain/5")
    assert errno_of(exc) == "EACCES"


def test_missing_node_is_enoent_only_if_the_ancestor_allows() -> None:
    tree = make_tree()
    with pytest.raises(StoreError) as exc:
        tree.read(5, "/local/domain/5/nothing")
    assert errno_of(exc) == "ENOENT"
    with pytest.raises(StoreError) as exc:
        tree.read(5, "/local/domain/0/secret")
    assert errno_of(exc) == "EACCES"


def test_guest_owns_what_it_creates_and_inherits_the_rest() -> None:
    tree = make_tree()
    tree.set_perms(0, "/local/domain/5", parse_perms(["n5", "r0", "w3"]))
    tree.write(5, "/local/domain/5/device/vbd/1/state", b"1")
    assert [str(p) for p in tree.get_perms(0, "/local/domain/5/device/vbd/1/state")] == [
        "n5",
        "r0",
        "w3",
    ]
    tree.write(0, "/local/domain/0/shared", b"")
    tree.set_perms(0, "/local/domain/0/shared", parse_perms(["n0", "b5"]))
    tree.write(5, "/local/domain/0/shared/mine", b"x")
    assert str(tree.get_perms(0, "/local/domain/0/shared/mine")[0]) == "n5"
    tree.write(0, "/local/domain/0/shared/dom0s", b"x")
    assert [str(p) for p in tree.get_perms(0, "/local/domain/0/shared/dom0s")] == ["n0", "b5"]


def test_set_perms_needs_ownership_and_cannot_give_nodes_away() -> None:
    tree = make_tree()
    tree.write(5, "/local/domain/5/x", b"")
    tree.set_perms(5, "/local/domain/5/x", parse_perms(["n5", "r0"]))
    with pytest.raises(StoreError) as exc:
        tree.set_perms(5, "/local/domain/5/x", parse_perms(["n6"]))
    assert errno_of(exc) == "EACCES"
    tree.write(0, "/local/domain/0/shared", b"")
    tree.set_perms(0, "/local/domain/0/shared", parse_perms(["n0", "b5"]))
    with pytest.raises(StoreError) as exc:
        tree.set_perms(5, "/local/domain/0/shared", parse_perms(["n0", "b5", "b6"]))
    assert errno_of(exc) == "EACCES"


def test_change_visibility_for_watchers() -> None:
    tree = make_tree()
    (change,) = tree.write(0, "/local/domain/0/backend/vbd/5/0/state", b"4")
    assert not change.visible_to(5)  # neither it nor its parent is readable by 5
    tree.set_perms(0, "/local/domain/0/backend/vbd/5/0", parse_perms(["n0", "r5"]))
    (change,) = tree.write(0, "/local/domain/0/backend/vbd/5/0/state", b"4")
    assert change.visible_to(5)  # the parent is
    assert not change.visible_to(6)
    (change,) = tree.write(0, "/local/domain/0/private", b"")
    assert not change.visible_to(5)


# -- quotas --------------------------------------------------------------------
def test_node_quota() -> None:
    tree = Tree(Quota(max_nodes=5))
    tree.mkdir(0, "/local/domain/5")
    tree.set_perms(0, "/local/domain/5", parse_perms(["n5"]))  # 1 node owned by 5
    for i in range(4):
        tree.write(5, f"/local/domain/5/n{i}", b"")
    with pytest.raises(StoreError) as exc:
        tree.write(5, "/local/domain/5/n4", b"")
    assert errno_of(exc) == "ENOSPC"
    with pytest.raises(StoreError) as exc:
        tree.write(5, "/local/domain/5/n0/a/b", b"")
    assert errno_of(exc) == "ENOSPC"
    tree.rm(5, "/local/domain/5/n0")
    tree.write(5, "/local/domain/5/n4", b"")
    assert tree.owned_count(5) == 5
    for i in range(20):
        tree.write(0, f"/local/domain/0/n{i}", b"")  # dom0 has no quota


def test_value_and_perm_quotas() -> None:
    tree = Tree(Quota(max_value_size=16, max_perms=2))
    tree.mkdir(0, "/h")
    tree.set_perms(0, "/h", parse_perms(["n5"]))
    tree.write(5, "/h/v", b"x" * 16)
    with pytest.raises(StoreError) as exc:
        tree.write(5, "/h/v", b"x" * 17)
    assert errno_of(exc) == "ENOSPC"
    with pytest.raises(StoreError) as exc:
        tree.set_perms(5, "/h/v", parse_perms(["n5", "r1", "r2"]))
    assert errno_of(exc) == "ENOSPC"
    tree.write(0, "/h/big", b"x" * 4000)


# -- save / restore ------------------------------------------------------------
def test_tree_save_restore_round_trip() -> None:
    tree = make_tree()
    tree.write(5, "/local/domain/5/device/vbd/1/state", b"1")
    tree.write(0, "/z", b"\x00\xffbinary")
    state = tree.save()
    again = Tree.restore(state)
    assert again.save() == state
    for path in tree.paths():
        assert again.peek(path) == tree.peek(path)
    assert again.owned_count(5) == tree.owned_count(5)
    again.write(0, "/new", b"")
    assert again.node(0, "/new").generation > max(n.generation for n in state.nodes)


def test_restore_rejects_an_inconsistent_tree() -> None:
    bad = TreeState((NodeRecord("/", b"", ("n0",), ("a",), 0),), 0)
    with pytest.raises(StateError):
        Tree.restore(bad)
    with pytest.raises(StateError):
        Tree.restore(TreeState((), 0))


# -- transactions ----------------------------------------------------------------
def test_transaction_sees_a_snapshot_and_commits_atomically() -> None:
    live = Tree()
    live.write(0, "/a", b"old")
    live.write(0, "/d", b"")
    table = TransactionTable(limit=2)
    tx = table.start(live)
    live.write(0, "/d/other", b"later")
    assert tx.view.peek("/d/other") is None  # not in the snapshot
    tx.view.write(0, "/a", b"new")
    tx.view.write(0, "/a/b/c", b"made")
    assert live.read(0, "/a") == b"old"
    assert live.peek("/a/b") is None
    commit(live, table.pop(tx.tx_id))
    assert live.read(0, "/a") == b"new"
    assert live.read(0, "/a/b/c") == b"made"
    assert live.directory(0, "/a") == ("b",)
    assert live.read(0, "/d/other") == b"later"
    assert live.directory(0, "/") == ("a", "d")


def test_transaction_conflicts_are_eagain() -> None:
    live = Tree()
    live.write(0, "/state", b"1")
    tx = TransactionTable().start(live)
    assert tx.view.read(0, "/state") == b"1"
    tx.view.write(0, "/elsewhere", b"x")
    live.write(0, "/state", b"2")  # something the transaction read changed
    with pytest.raises(StoreError) as exc:
        commit(live, tx)
    assert errno_of(exc) == "EAGAIN"
    assert live.peek("/elsewhere") is None


def test_transaction_conflict_on_a_node_it_saw_missing() -> None:
    live = Tree()
    tx = TransactionTable().start(live)
    with pytest.raises(StoreError):
        tx.view.read(0, "/x")
    live.write(0, "/x", b"")
    with pytest.raises(StoreError) as exc:
        commit(live, tx)
    assert errno_of(exc) == "EAGAIN"


def test_unrelated_changes_do_not_conflict() -> None:
    live = Tree()
    live.write(0, "/a/x", b"")
    live.write(0, "/b", b"")
    tx = TransactionTable().start(live)
    tx.view.write(0, "/a/x", b"1")
    live.write(0, "/b", b"changed")
    commit(live, tx)
    assert live.read(0, "/a/x") == b"1"


def test_transaction_cap_and_ids() -> None:
    table = TransactionTable(limit=2)
    live = Tree()
    ids = {table.start(live).tx_id, table.start(live).tx_id}
    assert 0 not in ids and len(ids) == 2
    with pytest.raises(StoreError) as exc:
        table.start(live)
    assert errno_of(exc) == "ENOSPC"
    with pytest.raises(StoreError) as exc:
        table.get(999)
    assert errno_of(exc) == "ENOENT"


def test_saved_transactions_come_back_doomed() -> None:
    live = Tree()
    table = TransactionTable()
    tx = table.start(live)
    state = table.save()
    again = TransactionTable.restore(state, live)
    assert again.save() == state
    doomed = again.get(tx.tx_id)
    doomed.view.write(0, "/x", b"")  # still usable
    with pytest.raises(StoreError) as exc:
        commit(live, again.pop(tx.tx_id))
    assert errno_of(exc) == "EAGAIN"
    assert again.start(live).tx_id != tx.tx_id


# -- watches -----------------------------------------------------------------------
def test_is_child() -> None:
    assert is_child("/a/b", "/a")
    assert is_child("/a", "/a")
    assert not is_child("/ab", "/a")
    assert is_child("/anything", "/")


def test_watch_matching_and_relative_event_paths() -> None:
    watches = WatchList(5, Quota())
    watches.add("device", "t1")
    watches.add("/local/domain/5/device/vbd", "t2")
    watches.add("@releaseDomain", "t3")
    change = Change("/local/domain/5/device/vbd/1/state", False, ())
    assert watches.events(change) == [
        ("device/vbd/1/state", "t1"),
        ("/local/domain/5/device/vbd/1/state", "t2"),
    ]
    assert watches.events(Change("/local/domain/5/devices", False, ())) == []
    # removal of an ancestor reports the watched node exactly
    assert watches.events(Change("/local/domain/5/device/vbd", True, ())) == [
        ("/local/domain/5/device/vbd", "t2")
    ]
    assert watches.events(Change("/local/domain/5", False, ())) == []
    assert watches.events(Change("@releaseDomain", True, ())) == [("@releaseDomain", "t3")]


def test_watch_duplicates_cap_and_unwatch() -> None:
    watches = WatchList(5, Quota(max_watches=2))
    watches.add("a", "t")
    with pytest.raises(StoreError) as exc:
        watches.add("/local/domain/5/a", "t")  # same node, same token
    assert errno_of(exc) == "EEXIST"
    watches.add("a", "u")
    with pytest.raises(StoreError) as exc:
        watches.add("b", "t")
    assert errno_of(exc) == "E2BIG"
    watches.remove("/local/domain/5/a", "u")
    with pytest.raises(StoreError) as exc:
        watches.remove("a", "u")
    assert errno_of(exc) == "ENOENT"


def test_watch_save_restore() -> None:
    watches = WatchList(5, Quota())
    watches.add("device", "t1")
    watches.add("/x", "t2")
    watches.add("@introduceDomain", "t3")
    state = watches.save()
    assert state.watches == (("device", "t1"), ("/x", "t2"), ("@introduceDomain", "t3"))
    again = WatchList.restore(state, 5, Quota())
    assert list(again) == list(watches)


# -- dom0 API --------------------------------------------------------------------
def test_dom0_api_and_python_watches() -> None:
    store = Store()
    seen: list[str] = []
    handle = store.watch("/local/domain/0/backend", seen.append)
    assert seen == ["/local/domain/0/backend"]  # fires once right away
    store.write("/local/domain/0/backend/vbd/5/0/state", "2", perms=["n0", "r5"])
    assert store.read("/local/domain/0/backend/vbd/5/0/state") == b"2"
    assert store.get_perms("/local/domain/0/backend/vbd/5/0/state") == ["n0", "r5"]
    assert seen[1:] == ["/local/domain/0/backend/vbd/5/0/state"] * 2  # write + set_perms
    store.mkdir("backend/vif")  # relative to /local/domain/0
    assert store.directory("/local/domain/0/backend") == ["vbd", "vif"]
    store.rm("/local/domain/0/backend/vbd")
    assert seen[-1] == "/local/domain/0/backend/vbd"
    assert not store.exists("/local/domain/0/backend/vbd")
    store.unwatch(handle)
    store.write("/local/domain/0/backend/x", "")
    assert seen[-1] == "/local/domain/0/backend/vbd"


def test_dom0_callbacks_may_use_the_store_and_may_fail() -> None:
    store = Store()

    def echo(path: str) -> None:
        if path.endswith("/ping"):
            store.write("/pong", store.read(path))

    def broken(path: str) -> None:
        raise RuntimeError("backend bug")

    store.watch("/ping", echo)
    store.watch("/", broken)
    store.write("/ping", "hello")
    assert store.read("/pong") == b"hello"


def test_dom0_transactions() -> None:
    store = Store()
    seen: list[str] = []
    store.watch("/t", seen.append)
    with store.transaction() as t:
        t.write("/t/a", "1")
        assert t.read("/t/a") == b"1"
        assert not store.exists("/t/a")
        assert seen == ["/t"]  # queued until commit
    assert store.read("/t/a") == b"1"
    assert seen == ["/t", "/t/a"]
    t = store.transaction()
    t.read("/t/a")
    store.write("/t/a", "2")
    with pytest.raises(StoreError) as exc:
        t.commit()
    assert errno_of(exc) == "EAGAIN"
    with pytest.raises(RuntimeError):
        with store.transaction() as t:
            t.write("/t/b", "x")
            raise RuntimeError
    assert not store.exists("/t/b")


def test_special_watches_from_the_toolstack() -> None:
    store = Store()
    seen: list[str] = []
    store.watch("@releaseDomain", seen.append)
    store.write("/x", "")
    store.release_domain()
    assert seen == ["@releaseDomain", "@releaseDomain"]


def test_populate_domain() -> None:
    store = Store()
    introduced: list[str] = []
    store.watch("@introduceDomain", introduced.append)
    populate_domain(store, 3, "guest", "0123-abcd", vcpus=2, memory_kib=262144)
    home = "/local/domain/3"
    assert store.read(f"{home}/name") == b"guest"
    assert store.read(f"{home}/domid") == b"3"
    assert store.read(f"{home}/vm") == b"/vm/0123-abcd"
    assert store.read("/vm/0123-abcd/uuid") == b"0123-abcd"
    assert store.read("/vm/0123-abcd/name") == b"guest"
    assert store.read(f"{home}/control/shutdown") == b""
    assert store.read(f"{home}/cpu/1/availability") == b"online"
    assert store.directory(f"{home}/cpu") == ["0", "1"]
    assert store.read(f"{home}/memory/target") == b"262144"
    assert store.read(f"{home}/memory/static-max") == b"262144"
    assert store.directory(f"{home}/device") == []
    assert store.directory(f"{home}/data") == []
    assert store.get_perms(home) == ["n3"]
    assert store.get_perms(f"{home}/memory/target") == ["n0", "r3"]
    assert store.read("/local/domain/0/name") == b"Domain-0"
    # what the guest itself may do
    tree = store.tree
    tree.write(3, f"{home}/control/feature-poweroff", b"1")
    tree.write(3, f"{home}/device/vbd/51712/state", b"1")
    tree.write(3, f"{home}/control/shutdown", b"")
    assert tree.read(3, f"{home}/cpu/0/availability") == b"online"
    with pytest.raises(StoreError):
        tree.write(3, f"{home}/memory/target", b"1")
    assert introduced == ["@introduceDomain", "@introduceDomain"]


def test_store_save_restore_round_trip() -> None:
    store = Store()
    populate_domain(store, 3, "guest", "u", vcpus=1, memory_kib=1024)
    state = store.save()
    again = Store.restore(state)
    assert again.save() == state
    assert again.read("/local/domain/3/name") == b"guest"
