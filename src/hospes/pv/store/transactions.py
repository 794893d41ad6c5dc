"""Xenstore transactions: snapshot views, optimistic commit, per-connection table.

A transaction works on a private :meth:`Tree.snapshot` of the live tree taken
at ``XS_TRANSACTION_START``; reads and writes inside it see that snapshot plus
its own changes and nothing else (snapshot isolation).  The view records every
path it looked up or stored together with the generation it first saw (or
"absent").  ``commit`` succeeds only if all of those paths still have that
generation in the live tree; then the stored paths are copied into the live
tree with fresh generations, atomically under the store lock.  Otherwise it
raises ``StoreError("EAGAIN")`` and Linux retries the whole transaction
(xenbus ``xenbus_transaction_end``).  Checking reads as well as writes makes a
committed transaction serialisable, like xenstored's generation checks.

Watch events caused inside a transaction are queued on it (``changes``) and
fired only after a successful commit; an abort or a conflict drops them.

Save/restore does not carry open transactions.  Their ids are saved, and a
restored connection answers every later request in such a transaction from a
fresh snapshot but fails its commit with EAGAIN (the transaction is *doomed*),
so the guest simply retries; aborting one is fine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from hospes.state import StateError, check_version

from .errors import StoreError
from .tree import Change, Tree

_TX_ID_MASK = 0xFFFFFFFF


@dataclass
class Transaction:
    """One open transaction: its id, private view and queued changes."""

    tx_id: int
    view: Tree
    changes: list[Change] = field(default_factory=list)
    doomed: bool = False


def commit(live: Tree, tx: Transaction) -> list[Change]:
    """Apply ``tx`` to ``live`` or raise ``StoreError("EAGAIN")``.

    Returns the queued changes, for the caller to fire.
    """
    view = tx.view
    assert view.accessed is not None and view.written is not None
    if tx.doomed:
        raise StoreError("EAGAIN", "transaction was lost by save/restore")
    for path, generation in view.accessed.items():
        node = live.peek(path)
        if (node.generation if node is not None else None) != generation:
            raise StoreError("EAGAIN", f"{path} changed during the transaction")
    for path in sorted(view.written):
        node = view.peek(path)
        live.install(path, node)
        if node is not None:
            live.restamp(path)
    return list(tx.changes)


@dataclass(frozen=True)
class TransactionsState:
    """Saved form of a table: ids of the (dropped) open transactions."""

    VERSION: ClassVar[int] = 1
    open_ids: tuple[int, ...]
    next_id: int
    version: int = VERSION


class TransactionTable:
    """The open transactions of one connection, with a cap (``ENOSPC``)."""

    def __init__(self, limit: int | None = None) -> None:
        self._limit = limit
        self._open: dict[int, Transaction] = {}
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._open)

    def _allocate_id(self) -> int:
        while True:
            tx_id = self._next_id
            self._next_id = (self._next_id + 1) & _TX_ID_MASK
            if tx_id and tx_id not in self._open:
                return tx_id

    def start(self, live: Tree) -> Transaction:
        """Open a transaction on a snapshot of ``live``."""
        if self._limit is not None and len(self._open) >= self._limit:
            raise StoreError("ENOSPC", "too many open transactions")
        tx = Transaction(self._allocate_id(), live.snapshot())
        self._open[tx.tx_id] = tx
        return tx

    def get(self, tx_id: int) -> Transaction:
        try:
            return self._open[tx_id]
        except KeyError:
            raise StoreError("ENOENT", f"no transaction {tx_id}") from None

    def pop(self, tx_id: int) -> Transaction:
        tx = self.get(tx_id)
        del self._open[tx_id]
        return tx

    def clear(self) -> None:
        self._open.clear()

    def save(self) -> TransactionsState:
        return TransactionsState(tuple(self._open), self._next_id)

    @classmethod
    def restore(
        cls, state: TransactionsState, live: Tree, limit: int | None = None
    ) -> TransactionTable:
        """Recreate the table with every saved transaction doomed (see module doc)."""
        check_version(state, "xenstore transaction table")
        table = cls(limit)
        table._next_id = state.next_id & _TX_ID_MASK
        for tx_id in state.open_ids:
            # Id 0 means "no transaction" on the wire, and ids are u32 there.
            if not 0 < tx_id <= _TX_ID_MASK or tx_id in table._open:
                raise StateError(f"The saved xenstore transaction id {tx_id} is invalid or duplicated.")
            table._open[tx_id] = Transaction(tx_id, live.snapshot(), doomed=True)
        return table
