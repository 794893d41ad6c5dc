"""A whole domain through one stream: what ``hospes save`` writes and ``hospes restore`` reads.

Order: HEADER, CONFIG (the toolstack's configuration of the domain and the
size of its guest-physical space), PAGES (every page, zero pages as a flag),
STATE (``DomainState`` as :func:`hospes.state.encode` gives it), END. A live
migration sends the same records, with PAGES repeated as pages are dirtied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from hospes.domain import Domain, DomainShell, DomainState
from hospes.machine.memory import GuestMemory
from hospes.migrate.stream import PAGE_SIZE, Record, RecordReader, RecordType, StreamError, StreamWriter, read_records
from hospes.migrate.verify import compare
from hospes.state import StateError, decode, encode

FEATURES = ("pv64", "zero-pages", "zstd")


@dataclass(frozen=True)
class SavedDomain:
    config: Any            # what the writer passed as its configuration
    state: DomainState
    shell: DomainShell     # its memory filled from the stream, for Domain(saved=(state, shell))
    verify: dict[str, int] | None = None   # the VERIFY record's outcome, if there was one


def write_domain(dom: Domain, out: BinaryIO, config: Any, *, compress: bool = False) -> StreamWriter:
    """Pause ``dom``, save it and write it to ``out``; the domain stays paused."""
    state = dom.save()
    memory = dom.mem.buf
    writer = StreamWriter(out, compress=compress, features=FEATURES)
    writer.config({"domain": config, "memory_bytes": len(memory)})
    writer.pages(range(len(memory) // PAGE_SIZE), memory)
    writer.state(encode(state))
    writer.end()
    return writer


def peek_config(inp: BinaryIO) -> tuple[Any, int]:
    """The writer's configuration and the memory size from the start of a stream,
    reading no further than its CONFIG record (``hospes restore`` checks these
    before it starts a domain process)."""
    for record in read_records(inp):
        if record.type is RecordType.CONFIG:
            return config_of(record)
        if record.type is not RecordType.HEADER:
            break
    raise StreamError("The stream has no CONFIG record after its HEADER: it is not a whole domain.")


def config_of(record: Record) -> tuple[Any, int]:
    data = record.json()
    size = data.get("memory_bytes") if isinstance(data, dict) else None
    if not isinstance(size, int) or size <= 0 or size % PAGE_SIZE or size > 1 << 40:
        raise StreamError(f"Record {record.index} (CONFIG) gives no usable memory size.")
    return data.get("domain"), size


def read_domain(records: RecordReader, shell_for: Callable[[Any, int], DomainShell]) -> SavedDomain:
    """Read a domain stream (a save file or a migration) up to its END, straight into
    the memory of the shell ``shell_for(config, size)`` makes (it raises
    HospesError for a configuration it cannot run); StreamError naming the bad
    record."""
    shell: DomainShell | None = None
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
                shell = shell_for(config, size)
                memory = shell.mem
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
        if shell is None or state is None:
            raise StreamError("The stream ended without a CONFIG and a STATE record: it is not a whole domain.")
        verify = None if digests is None else compare(digests, shell.mem)
    except BaseException:
        if shell is not None:
            shell.close()
        raise
    return SavedDomain(config, state, shell, verify)


__all__ = ["SavedDomain", "config_of", "peek_config", "read_domain", "write_domain"]
