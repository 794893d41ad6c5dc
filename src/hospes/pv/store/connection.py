"""The store shared by a host's connections, and the guest ring transport.

:class:`Store` owns the live :class:`Tree`, the list of connections and the
dom0 (toolstack) watches; it also offers the toolstack a direct Python API
(``read``/``write``/``rm``/``mkdir``/``directory``/``watch``/``transaction``).
:class:`Connection` is one client's protocol state (watches, transactions,
queued output).  :class:`RingConnection` moves a guest's messages over the
shared ring page ``struct xenstore_domain_interface`` (xs_wire.h)::

    0x000 req[1024]   guest -> store byte stream
    0x400 rsp[1024]   store -> guest (replies and watch events)
    0x800 req_cons    written by us      0x804 req_prod  written by the guest
    0x808 rsp_cons    written by guest   0x80c rsp_prod  written by us
    0x810 server_features  0x814 connection  0x818 error  0x81c evtchn_port

Why plain loads and stores are enough
    Every index has exactly one writer: we only write ``req_cons``,
    ``rsp_prod`` (and ``error``), the guest only ``req_prod`` and
    ``rsp_cons``.  Both directions are :class:`hospes.pv.ring.ByteRing`,
    whose docstring gives the argument: whole-word index accesses, and x86's
    ordering of loads with loads and stores with stores.  Indices are
    free-running u32; the byte position is ``idx & 1023``; ``prod - cons`` must
    never exceed 1024.

Linux only sends an event when the request ring was empty before its write
(pv-abi.md §10.1), so :meth:`RingConnection.service` drains the request ring
completely on every call, keeps partial messages across calls, and notifies
the guest after consuming requests or producing output.

Call-order grammar (asyncio style)::

    Store() -> [Store.write/... | RingConnection(store, domid, page, notify)]*
    RingConnection(...) -> service()* -> close()
    save: Store.save() + RingConnection.save() for each connection
    restore: Store.restore(state) -> RingConnection.restore(store, page, notify, state)*

``service()`` may be called from any thread at any time (it takes the store
lock) and does nothing when there is nothing to do.  ``notify()`` is called
with no store lock held, on the thread whose operation produced the output:
a guest's own ``service()``, or the toolstack thread whose ``Store.write``
fired the guest's watch (events caused by dom0 are delivered immediately).
dom0 watch callbacks run the same way, after the lock is released; they may
use the store, and callbacks caused by different threads may interleave, so a
callback should re-read the nodes it cares about rather than trust ordering.

A malformed ring (``prod - cons > 1024``, a message longer than 4096 bytes)
never raises: the connection sets the ring's ``error`` field (2 = ring index,
3 = protocol), logs, drops its watches, transactions and buffers, and ignores
the ring from then on (xenstored's "ignored connection").
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator, Sequence

from hospes.state import StateError, check_version

from hospes.pv.ring import ByteRing, RingError, index_words, writable_page

from .errors import StoreError
from .transactions import Transaction, TransactionsState, TransactionTable, commit
from .tree import (
    PRIVILEGED_DOMID,
    Change,
    Perm,
    Quota,
    Tree,
    TreeState,
    canonicalize,
    parse_perms,
)
from .watches import WatchesState, WatchList
from .wire import HEADER_SIZE, PAYLOAD_MAX, Message, decode_header, dispatch, event_message

log = logging.getLogger(__name__)

# struct xenstore_domain_interface
PAGE_SIZE = 4096
RING_SIZE = 1024
REQ_OFFSET = 0x000
RSP_OFFSET = 0x400
INDEX_OFFSET = 0x800
# Word numbers within page[0x800:0x820].cast("I").
REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD, SERVER_FEATURES, CONNECTION, ERROR, EVTCHN_PORT = range(8)
# Values of the error field (xs_wire.h XENSTORE_ERROR_*).
XENSTORE_ERROR_NONE = 0
XENSTORE_ERROR_COMM = 1
XENSTORE_ERROR_RINGIDX = 2
XENSTORE_ERROR_PROTO = 3

_MASK = 0xFFFFFFFF
#: Stop taking requests while this many output bytes wait for the guest.
OUTPUT_BACKLOG_LIMIT = 16 * 1024
#: Drop new watch events while this many event bytes are queued.
EVENT_BACKLOG_LIMIT = 256 * 1024

_EVERYONE: tuple[Perm, ...] = (Perm("r", PRIVILEGED_DOMID),)

Callback = Callable[[str], None]


@dataclass(frozen=True)
class WatchHandle:
    """A dom0 watch, as returned by :meth:`Store.watch`."""

    path: str
    token: str


@dataclass(frozen=True)
class StoreState:
    """Saved store: the tree (dom0 Python watches are re-registered by their owners)."""

    VERSION: ClassVar[int] = 1
    tree: TreeState
    version: int = VERSION


@dataclass(frozen=True)
class ConnectionState:
    """Saved connection.  ``outq`` holds ``(bytes, is_event)``; ``out_offset``
    is how much of the first entry the guest already has."""

    VERSION: ClassVar[int] = 1
    domid: int
    watches: WatchesState
    transactions: TransactionsState
    outq: tuple[tuple[bytes, bool], ...]
    out_offset: int
    inbuf: bytes = b""
    broken: bool = False
    version: int = VERSION


def _dom0_path(path: str, *, allow_special: bool = False) -> str:
    return canonicalize(path, PRIVILEGED_DOMID, allow_special=allow_special)


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


class _Dom0Ops:
    """The toolstack's operations, shared by :class:`Store` and :class:`Dom0Transaction`.

    Paths are absolute or relative to ``/local/domain/0``; dom0 may do
    anything and has no quota.  Errors raise :class:`StoreError`.
    """

    _store: Store

    def _tree(self) -> Tree:
        raise NotImplementedError

    def _publish(self, changes: Sequence[Change]) -> None:
        raise NotImplementedError

    def read(self, path: str) -> bytes:
        with self._store._op():
            return self._tree().read(PRIVILEGED_DOMID, _dom0_path(path))

    def exists(self, path: str) -> bool:
        with self._store._op():
            return self._tree().peek(_dom0_path(path)) is not None

    def directory(self, path: str) -> list[str]:
        with self._store._op():
            return list(self._tree().directory(PRIVILEGED_DOMID, _dom0_path(path)))

    def get_perms(self, path: str) -> list[str]:
        with self._store._op():
            perms = self._tree().get_perms(PRIVILEGED_DOMID, _dom0_path(path))
            return [str(p) for p in perms]

    def write(self, path: str, value: bytes | str, *, perms: Sequence[str] | None = None) -> None:
        """Write ``value`` (str is UTF-8 encoded), creating parents; then set ``perms``."""
        with self._store._op():
            name = _dom0_path(path)
            changes = self._tree().write(PRIVILEGED_DOMID, name, _as_bytes(value))
            if perms is not None:
                changes += self._tree().set_perms(PRIVILEGED_DOMID, name, parse_perms(perms))
            self._publish(changes)

    def mkdir(self, path: str, *, perms: Sequence[str] | None = None) -> None:
        with self._store._op():
            name = _dom0_path(path)
            changes = self._tree().mkdir(PRIVILEGED_DOMID, name)
            if perms is not None:
                changes += self._tree().set_perms(PRIVILEGED_DOMID, name, parse_perms(perms))
            self._publish(changes)

    def rm(self, path: str) -> None:
        with self._store._op():
            self._publish(self._tree().rm(PRIVILEGED_DOMID, _dom0_path(path)))

    def set_perms(self, path: str, perms: Sequence[str]) -> None:
        with self._store._op():
            changes = self._tree().set_perms(
                PRIVILEGED_DOMID, _dom0_path(path), parse_perms(perms)
            )
            self._publish(changes)


class Store(_Dom0Ops):
    """The tree, watch registry and connections of one host (or domain process).

    Thread-safe: every operation holds one re-entrant lock.  See the module
    docstring for when notifications and dom0 callbacks run.
    """

    def __init__(self, quota: Quota | None = None, *, tree: Tree | None = None) -> None:
        self.quota = quota or Quota()
        self.tree = tree if tree is not None else Tree(self.quota)
        self._store = self
        self._lock = threading.RLock()
        self._depth = 0
        self._connections: list[Connection] = []
        self._dirty: dict[Connection, None] = {}
        self._dom0_watches = WatchList(PRIVILEGED_DOMID)
        self._callbacks: dict[str, Callback] = {}
        self._pending_callbacks: deque[tuple[Callback, str]] = deque()
        self._next_token = 0

    # -- locking and delivery ----------------------------------------------
    @contextmanager
    def _op(self) -> Iterator[None]:
        """Hold the store lock; on leaving the outermost level, flush output,
        then (unlocked) notify guests and run dom0 callbacks."""
        self._lock.acquire()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            notifies: list[Callable[[], None]] = []
            callbacks: list[tuple[Callback, str]] = []
            try:
                if self._depth == 0:
                    notifies = self._flush_dirty()
                    callbacks = list(self._pending_callbacks)
                    self._pending_callbacks.clear()
            finally:
                self._lock.release()
            for notify in notifies:
                try:
                    notify()
                except Exception:
                    log.exception("xenstore: notify callback failed")
            for callback, path in callbacks:
                try:
                    callback(path)
                except Exception:
                    log.exception("xenstore: dom0 watch callback for %s failed", path)

    def _flush_dirty(self) -> list[Callable[[], None]]:
        notifies = []
        while self._dirty:
            conn = next(iter(self._dirty))
            del self._dirty[conn]
            if conn._flush_locked():
                notifies.append(conn.notify)
        return notifies

    def _mark_dirty(self, conn: Connection) -> None:
        self._dirty[conn] = None

    # -- connections and watch firing ------------------------------------
    def _attach(self, conn: Connection) -> None:
        with self._op():
            self._connections.append(conn)

    def _detach(self, conn: Connection) -> None:
        with self._op():
            if conn in self._connections:
                self._connections.remove(conn)
            self._dirty.pop(conn, None)

    @property
    def connections(self) -> tuple[Connection, ...]:
        return tuple(self._connections)

    def _fire(self, changes: Sequence[Change]) -> None:
        """Queue the events ``changes`` cause for every watcher."""
        for change in changes:
            for conn in self._connections:
                if conn.domid != PRIVILEGED_DOMID and not change.visible_to(conn.domid):
                    continue
                for path, token in conn.watches.events(change):
                    conn.queue_event(path, token)
            for path, token in self._dom0_watches.events(change):
                self._pending_callbacks.append((self._callbacks[token], path))

    def _tree(self) -> Tree:
        return self.tree

    def _publish(self, changes: Sequence[Change]) -> None:
        self._fire(changes)

    # -- dom0 API beyond _Dom0Ops ------------------------------------------
    def watch(self, path: str, callback: Callback) -> WatchHandle:
        """Call ``callback(event_path)`` for changes at or below ``path``.

        Like a guest watch it fires once right away.  ``path`` may be a
        special path (``@introduceDomain``, ``@releaseDomain``).
        """
        with self._op():
            self._next_token += 1
            token = f"dom0-{self._next_token}"
            watch = self._dom0_watches.add(path, token)
            self._callbacks[token] = callback
            self._pending_callbacks.append((callback, watch.registered_path))
            return WatchHandle(watch.registered_path, token)

    def unwatch(self, handle: WatchHandle) -> None:
        with self._op():
            self._dom0_watches.remove(handle.path, handle.token)
            del self._callbacks[handle.token]

    def transaction(self) -> Dom0Transaction:
        """A dom0 transaction; use as ``with store.transaction() as t: ...``."""
        return Dom0Transaction(self)

    def introduce_domain(self) -> None:
        """Fire ``@introduceDomain`` watches (a domain was created)."""
        with self._op():
            self._fire([Change("@introduceDomain", True, (_EVERYONE,))])

    def release_domain(self) -> None:
        """Fire ``@releaseDomain`` watches (a domain went away)."""
        with self._op():
            self._fire([Change("@releaseDomain", True, (_EVERYONE,))])

    # -- save / restore ---------------------------------------------------
    def save(self) -> StoreState:
        """The tree with permissions and generations.  Connections save themselves."""
        with self._op():
            return StoreState(self.tree.save())

    @classmethod
    def restore(cls, state: StoreState, quota: Quota | None = None) -> Store:
        check_version(state, "xenstore")
        quota = quota or Quota()
        return cls(quota, tree=Tree.restore(state.tree, quota))


class Dom0Transaction(_Dom0Ops):
    """A toolstack transaction with the same API as :class:`Store`.

    ``commit()`` raises ``StoreError("EAGAIN")`` on conflict; as a context
    manager it commits on normal exit and aborts if the body raised.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        with store._op():
            self._tx: Transaction | None = Transaction(0, store.tree.snapshot())

    def _live(self) -> Transaction:
        if self._tx is None:
            raise StoreError("ENOENT", "the transaction has ended")
        return self._tx

    def _tree(self) -> Tree:
        return self._live().view

    def _publish(self, changes: Sequence[Change]) -> None:
        self._live().changes.extend(changes)

    def commit(self) -> None:
        with self._store._op():
            tx, self._tx = self._live(), None
            self._store._fire(commit(self._store.tree, tx))

    def abort(self) -> None:
        self._tx = None

    def __enter__(self) -> Dom0Transaction:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class Connection:
    """One client's protocol state: watches, transactions, queued output.

    Without a transport (this base class) replies and events collect until
    :meth:`take_output`; :class:`RingConnection` moves them to a guest ring.
    """

    def __init__(self, store: Store, domid: int) -> None:
        self.store = store
        self.domid = domid
        self.quota: Quota | None = None if domid == PRIVILEGED_DOMID else store.quota
        self.watches = WatchList(domid, self.quota)
        self.transactions = TransactionTable(self.quota.max_transactions if self.quota else None)
        self._outq: deque[tuple[bytes, bool]] = deque()
        self._out_offset = 0
        self._out_bytes = 0
        self._event_bytes = 0
        self._closed = False
        store._attach(self)

    # -- Session protocol (used by wire handlers, under the store lock) ----
    @property
    def tree(self) -> Tree:
        return self.store.tree

    def publish(self, changes: Sequence[Change], tx: Transaction | None) -> None:
        if tx is not None:
            tx.changes.extend(changes)
        else:
            self.store._fire(changes)

    def commit(self, tx: Transaction) -> None:
        self.store._fire(commit(self.store.tree, tx))

    def queue_message(self, message: Message) -> None:
        data = message.encode()
        self._outq.append((data, False))
        self._out_bytes += len(data)
        self.store._mark_dirty(self)

    def queue_event(self, path: str, token: str) -> None:
        """Queue a watch event, dropping duplicates and excess (logged)."""
        data = event_message(path, token).encode()
        if len(data) - HEADER_SIZE > PAYLOAD_MAX:
            return
        if not path.startswith("@") and (data, True) in self._outq:
            return
        if self._event_bytes + len(data) > EVENT_BACKLOG_LIMIT:
            log.warning("xenstore: domain %d is not reading events; dropped %s", self.domid, path)
            return
        self._outq.append((data, True))
        self._out_bytes += len(data)
        self._event_bytes += len(data)
        self.store._mark_dirty(self)

    # -- transport hooks ------------------------------------------------
    def notify(self) -> None:
        """Tell the peer there is news; the base class has no peer."""

    def _flush_locked(self) -> bool:
        """Move queued output to the transport; True if the peer must be notified."""
        return False

    def _pop_output(self) -> bytes:
        data, is_event = self._outq.popleft()
        self._out_bytes -= len(data)
        if is_event:
            self._event_bytes -= len(data)
        return data

    # -- API --------------------------------------------------------------
    def handle(self, message: Message) -> None:
        """Handle one request (transport-less use and tests)."""
        with self.store._op():
            dispatch(self, message)

    def take_output(self) -> list[Message]:
        """Remove and return everything queued (transport-less use and tests)."""
        with self.store._op():
            out = []
            while self._outq:
                out.append(Message.decode(self._pop_output()))
            self._out_offset = 0
            return out

    @property
    def pending_output(self) -> int:
        """Bytes queued for the peer and not yet handed over."""
        return self._out_bytes - self._out_offset

    def close(self) -> None:
        """Forget watches, transactions and output; detach from the store."""
        with self.store._op():
            self._drop_state()
            self._closed = True
            self.store._detach(self)

    def _drop_state(self) -> None:
        self.watches.clear()
        self.transactions.clear()
        self._outq.clear()
        self._out_offset = self._out_bytes = self._event_bytes = 0

    # -- save / restore ---------------------------------------------------
    def save(self) -> ConnectionState:
        """Watches, output and transaction ids (open transactions are dropped,
        see :mod:`.transactions`)."""
        with self.store._op():
            return ConnectionState(
                domid=self.domid,
                watches=self.watches.save(),
                transactions=self.transactions.save(),
                outq=tuple(self._outq),
                out_offset=self._out_offset,
            )

    def _restore_state(self, state: ConnectionState) -> None:
        """Take over a saved connection's state (transports add their own);
        on a record that does not fit, close and raise :class:`StateError`."""
        try:
            check_version(state, f"xenstore connection of domain {state.domid}")
            first = len(state.outq[0][0]) if state.outq else 0
            if not 0 <= state.out_offset <= first:
                raise StateError(
                    f"The saved xenstore connection of domain {state.domid} has sent "
                    f"{state.out_offset} bytes of a {first}-byte message."
                )
            self.watches = WatchList.restore(state.watches, self.domid, self.quota)
            self.transactions = TransactionTable.restore(
                state.transactions,
                self.store.tree,
                self.quota.max_transactions if self.quota else None,
            )
        except StateError:
            self.close()  # constructing attached us to the store
            raise
        self._outq = deque((bytes(d), bool(e)) for d, e in state.outq)
        self._out_bytes = sum(len(d) for d, _ in self._outq)
        self._event_bytes = sum(len(d) for d, e in self._outq if e)
        self._out_offset = state.out_offset

    @classmethod
    def restore(cls, store: Store, state: ConnectionState) -> Connection:
        """Recreate a saved connection on a restored store.  Queued output is
        not pushed (nor the peer notified) until the next service()."""
        check_version(state, f"xenstore connection of domain {state.domid}")
        conn = cls(store, state.domid)
        with store._op():
            conn._restore_state(state)
        return conn


class RingConnection(Connection):
    """A guest's xenstore connection over its shared ring page.

    ``page`` is the 4096-byte, writable view of the guest frame
    ``start_info.store_mfn``; ``notify`` sends an event on the store port.
    The constructor does not touch the page (it may hold live indices after
    a restore).  See the module docstring for the protocol and threading.
    """

    def __init__(
        self, store: Store, domid: int, page: memoryview, notify: Callable[[], None]
    ) -> None:
        page = writable_page(page, "xenstore")
        self._idx = index_words(page, INDEX_OFFSET, 8)
        self._req = ByteRing(page, data=REQ_OFFSET, size=RING_SIZE, indices=self._idx, cons=REQ_CONS,
                             prod=REQ_PROD)
        self._rsp = ByteRing(page, data=RSP_OFFSET, size=RING_SIZE, indices=self._idx, cons=RSP_CONS,
                             prod=RSP_PROD)
        self._notify = notify
        self._inbuf = bytearray()
        self._in_len = -1  # payload length once the header is complete
        self._broken = False
        self._kick = False
        super().__init__(store, domid)

    @property
    def broken(self) -> bool:
        """True once the guest violated the ring protocol (see module doc)."""
        return self._broken

    def notify(self) -> None:
        self._notify()

    def service(self) -> None:
        """Consume every complete request, answer it, push output; never raises."""
        with self.store._op():
            if self._broken or self._closed:
                return
            try:
                self.store._mark_dirty(self)
                self._push()
                while self._pull():
                    self._push()
            except Exception:
                log.exception("xenstore: servicing domain %d failed", self.domid)
                self._fail(XENSTORE_ERROR_COMM, "internal error")

    # -- ring I/O ---------------------------------------------------------
    def _pull(self) -> bool:
        """Take request bytes while the output backlog allows; True if any."""
        progress = False
        while not self._broken and self._out_bytes - self._out_offset < OUTPUT_BACKLOG_LIMIT:
            if self._in_len < 0:
                need = HEADER_SIZE - len(self._inbuf)
            else:
                need = HEADER_SIZE + self._in_len - len(self._inbuf)
            try:
                chunk = self._req.read(need)
            except RingError as e:
                self._fail(XENSTORE_ERROR_RINGIDX, f"request ring: {e}")
                break
            if not chunk:
                break
            self._inbuf += chunk
            progress = self._kick = True
            self._take_message()
        return progress

    def _take_message(self) -> None:
        if self._in_len < 0 and len(self._inbuf) == HEADER_SIZE:
            length = decode_header(self._inbuf)[3]
            if length > PAYLOAD_MAX:
                self._fail(XENSTORE_ERROR_PROTO, f"message of {length} bytes")
                return
            self._in_len = length
        if self._in_len >= 0 and len(self._inbuf) == HEADER_SIZE + self._in_len:
            message = Message.decode(bytes(self._inbuf))
            self._inbuf.clear()
            self._in_len = -1
            dispatch(self, message)

    def _push(self) -> None:
        """Write as much queued output as fits into rsp[]."""
        if self._broken:
            return
        rsp = self._rsp
        try:
            rsp.writable()   # check the indices even with nothing to send
            while self._outq:
                data = self._outq[0][0]
                if self._out_offset < len(data):
                    n = rsp.write(memoryview(data)[self._out_offset:])
                    if not n:
                        break
                    self._kick = True
                    self._out_offset += n
                    if self._out_offset < len(data):
                        break   # the ring is full
                self._pop_output()
                self._out_offset = 0
        except RingError as e:
            self._fail(XENSTORE_ERROR_RINGIDX, f"response ring: {e}")

    def _flush_locked(self) -> bool:
        if not self._broken and not self._closed:
            try:
                self._push()
            except Exception:
                log.exception("xenstore: writing to domain %d failed", self.domid)
                self._fail(XENSTORE_ERROR_COMM, "internal error")
        kick, self._kick = self._kick, False
        return kick

    def _fail(self, code: int, reason: str) -> None:
        log.warning(
            "xenstore: domain %d broke the ring protocol (%s); ignoring it", self.domid, reason
        )
        self._broken = True
        self._inbuf.clear()
        self._in_len = -1
        self._drop_state()
        try:
            self._idx[ERROR] = code
        except Exception:
            log.exception("xenstore: cannot flag the ring error of domain %d", self.domid)

    # -- save / restore ---------------------------------------------------
    def save(self) -> ConnectionState:
        """Connection state plus the partial request already taken from the ring."""
        with self.store._op():
            base = super().save()
            return ConnectionState(
                domid=base.domid,
                watches=base.watches,
                transactions=base.transactions,
                outq=base.outq,
                out_offset=base.out_offset,
                inbuf=bytes(self._inbuf),
                broken=self._broken,
            )

    @classmethod
    def restore(  # type: ignore[override]
        cls,
        store: Store,
        page: memoryview,
        notify: Callable[[], None],
        state: ConnectionState,
    ) -> RingConnection:
        conn = cls(store, state.domid, page, notify)
        with store._op():
            conn._restore_state(state)
            conn._broken = state.broken
            conn._inbuf = bytearray(state.inbuf)
            if len(conn._inbuf) >= HEADER_SIZE:
                conn._in_len = decode_header(conn._inbuf)[3]
        return conn
