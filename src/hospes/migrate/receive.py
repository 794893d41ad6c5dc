"""The receiving side of a migration: pages into the new domain's memory, then the handover.

The receiver reads the stream :mod:`.precopy` writes, straight into the
:class:`~hospes.machine.memory.GuestMemory` the new domain will run on (made
when the CONFIG record says how big it is), so nothing is copied twice. The
caller builds the domain from the result, then answers with :meth:`ready` (or
:meth:`refuse`), waits for the source's COMMIT (:meth:`wait_commit`), unpauses
the guest and confirms with :meth:`running`. A connection lost before COMMIT
means the source kept the guest: the caller destroys what it built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hospes.domain import DomainShell
from hospes.migrate.savefile import FEATURES, SavedDomain, read_domain
from hospes.migrate.stream import RecordReader, RecordType, StreamError, StreamWriter
from hospes.migrate.transport import Channel

COMMIT_TIMEOUT_S = 60.0


class Receiver:
    def __init__(self, channel: Channel, shell_for: Callable[[Any, int], DomainShell]) -> None:
        """``shell_for(config, size)`` makes the new domain's shell (its empty memory and
        VM), or raises HospesError if that configuration cannot be run here."""
        self.channel = channel
        self.shell_for = shell_for
        self._records = RecordReader(channel.rfile)
        self._replies: StreamWriter | None = None

    def receive(self) -> SavedDomain:
        """Read the stream up to its END; StreamError or StateError naming the bad record."""
        return read_domain(self._records, self.shell_for)

    # --- the handover ---------------------------------------------------------------

    def _reply(self, data: dict[str, Any]) -> None:
        if self._replies is None:
            self._replies = StreamWriter(self.channel.wfile, features=FEATURES)
        self._replies.reply(data)

    def ready(self, verify: dict[str, int] | None) -> None:
        self._reply({"status": "ready", "verify": verify})

    def refuse(self, message: str) -> None:
        """Tell the source why (it keeps the guest); a broken connection is ignored."""
        try:
            self._reply({"status": "error", "message": message})
        except (OSError, ValueError):
            pass

    def wait_commit(self, timeout: float = COMMIT_TIMEOUT_S) -> None:
        """Return once the source has handed the guest over; StreamError if it did not."""
        self.channel.settimeout(timeout)
        try:
            record = self._records.next()
        except TimeoutError:
            raise StreamError(f"The source did not hand the guest over within {timeout:.0f} s.") from None
        finally:
            self.channel.settimeout(None)
        if record.type is not RecordType.COMMIT:
            raise StreamError(f"Record {record.index} is {record.type.name} where the source's COMMIT was due.")

    def running(self) -> None:
        self._reply({"status": "running"})


__all__ = ["Receiver"]
