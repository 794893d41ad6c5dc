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

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hospes.domain import DomainState
from hospes.machine.memory import GuestMemory
from hospes.migrate.precopy import DIGEST_SIZE, page_digests
from hospes.migrate.savefile import FEATURES, config_of
from hospes.migrate.stream import PAGE_SIZE, RecordReader, RecordType, StreamError, StreamWriter
from hospes.migrate.transport import Channel
from hospes.state import StateError, decode

COMMIT_TIMEOUT_S = 60.0
MAX_LISTED = 8


@dataclass
class Received:
    config: Any                 # the source's configuration (its DomainSpec as a dict)
    state: DomainState
    memory: GuestMemory
    verify: dict[str, int] | None


class Receiver:
    def __init__(self, channel: Channel, memory_for: Callable[[Any, int], GuestMemory]) -> None:
        """``memory_for(config, size)`` makes the new domain's empty memory, or raises
        HospesError if that configuration cannot be run here."""
        self.channel = channel
        self.memory_for = memory_for
        self._records = RecordReader(channel.rfile)
        self._replies: StreamWriter | None = None

    def receive(self) -> Received:
        """Read the stream up to its END; StreamError or StateError naming the bad record."""
        return receive_domain(self._records, self.memory_for)

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


def receive_domain(records: RecordReader, memory_for: Callable[[Any, int], GuestMemory]) -> Received:
    """Read a domain stream (a save file or a migration) up to its END, straight into
    the memory ``memory_for(config, size)`` makes; StreamError naming the bad record."""
    memory: GuestMemory | None = None
    config: Any = None
    state: DomainState | None = None
    digests: bytes | None = None
    try:
        while True:
            record = records.next()
            if record.type is RecordType.CONFIG:
                if memory is not None:
                    raise StreamError(f"Record {record.index} is a second CONFIG.")
                config, size = config_of(record)
                memory = memory_for(config, size)
                if memory.size != size:
                    raise StreamError(f"Record {record.index} (CONFIG) gives {size} bytes of memory; the "
                                      f"configuration here makes {memory.size}.")
            elif record.type is RecordType.PAGES:
                if memory is None:
                    raise StreamError(f"Record {record.index} (PAGES) comes before the CONFIG record.")
                buf, limit = memory.buf, memory.size // PAGE_SIZE
                for frame, page in record.pages():
                    if frame >= limit:
                        raise StreamError(f"Record {record.index} (PAGES) holds frame {frame:#x}, beyond the "
                                          "memory.")
                    buf[frame * PAGE_SIZE:(frame + 1) * PAGE_SIZE] = page
            elif record.type is RecordType.STATE:
                try:
                    state = decode(DomainState, record.json())
                except StateError as e:
                    raise StreamError(f"Record {record.index} (STATE) does not fit: {e}") from None
            elif record.type is RecordType.VERIFY:
                digests = record.payload
            elif record.type is RecordType.END:
                break
            elif record.type is not RecordType.HEADER:
                raise StreamError(f"Record {record.index} ({record.type.name}) has no place in a domain stream.")
        if memory is None or state is None:
            raise StreamError("The stream ended without a CONFIG and a STATE record: it is not a whole domain.")
        verify = None if digests is None else _compare(digests, memory)
    except BaseException:
        if memory is not None:
            memory.close()
        raise
    return Received(config, state, memory, verify)


def _compare(payload: bytes, memory: GuestMemory) -> dict[str, int]:
    """Check the source's page hashes against the received memory (raises on any difference)."""
    if len(payload) < 4 or struct.unpack_from("<I", payload)[0] != DIGEST_SIZE:
        raise StreamError("The VERIFY record does not hold hashes of the expected size.")
    theirs = payload[4:]
    frames = memory.size // PAGE_SIZE
    if len(theirs) != frames * DIGEST_SIZE:
        raise StreamError(f"The VERIFY record hashes {len(theirs) // DIGEST_SIZE} pages; the memory has {frames}.")
    ours = page_digests(memory.buf, frames)
    differ = [f for f in range(frames)
              if ours[f * DIGEST_SIZE:(f + 1) * DIGEST_SIZE] != theirs[f * DIGEST_SIZE:(f + 1) * DIGEST_SIZE]]
    if differ:
        listed = ", ".join(f"{f:#x}" for f in differ[:MAX_LISTED])
        raise StreamError(f"Verification failed: {len(differ)} of {frames} pages differ from the source's "
                          f"(frames {listed}{', ...' if len(differ) > MAX_LISTED else ''}).")
    return {"pages": frames, "differences": 0}


__all__ = ["Received", "Receiver", "receive_domain"]
