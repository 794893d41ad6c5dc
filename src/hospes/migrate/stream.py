"""The Hospes domain stream: one format for a save file and a migration.

A stream is a sequence of self-describing records (docs/migration-stream.md
is the specification; this module is its one implementation)::

    record  = u32 type | u32 flags | u64 length | payload[length] | u32 crc32
    stream  = HEADER (CONFIG | PAGES | STATE)* END

All integers are little-endian. ``crc32`` covers the 16-byte record head and
the payload as stored. Flag bit 0 says the payload is zstd-compressed. A PAGES
payload is ``u32 count | u32 0 | count x u64 entry | page data``: an entry is
a guest frame number, with bit 63 set for a page of zeroes (no data follows
for it); the data of the other pages follows in entry order, 4096 bytes each.
HEADER, CONFIG and STATE carry UTF-8 JSON.

Why every record is checked on its own: a stream may be cut anywhere (a full
disk, a dropped connection) or damaged in transit, and the reader must say
which record is wrong rather than restore a domain from half a page table.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, BinaryIO

import zstandard

from hospes.errors import HospesError

FORMAT = "hospes-domain-stream"
VERSION = 1
PAGE_SIZE = 4096
MAX_RECORD = 256 << 20              # no record is larger; a bigger length is damage
MAX_BATCH = 1024                    # pages per PAGES record
ZERO_PAGE = 1 << 63
FLAG_ZSTD = 1

_HEAD = struct.Struct("<IIQ")
_CRC = struct.Struct("<I")
_BATCH = struct.Struct("<II")
_ZERO = bytes(PAGE_SIZE)


class RecordType(IntEnum):
    HEADER = 1
    CONFIG = 2
    PAGES = 3
    STATE = 4
    VERIFY = 5          # hashes of every page at the source, after the last copy (a check, not data)
    COMMIT = 6          # source -> destination: the source has stopped for good; run the guest
    REPLY = 7           # destination -> source: JSON {"status": "ready"|"running"|"error", ...}
    END = 0xFFFF


class StreamError(HospesError):
    """A stream cannot be read: truncated, damaged, or from a newer Hospes."""


@dataclass(frozen=True)
class Record:
    index: int          # position in the stream, from 0
    type: RecordType
    payload: bytes      # decompressed

    def json(self) -> Any:
        try:
            return json.loads(self.payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StreamError(f"Record {self.index} ({self.type.name}) is not valid JSON: {e}.") from None

    def pages(self) -> Iterator[tuple[int, bytes]]:
        """(frame, 4096 bytes) for each page of a PAGES record."""
        data = self.payload
        if len(data) < _BATCH.size:
            raise StreamError(f"Record {self.index} (PAGES) is too short for its count.")
        count, _ = _BATCH.unpack_from(data)
        entries_end = _BATCH.size + 8 * count
        if count > MAX_BATCH or len(data) < entries_end:
            raise StreamError(f"Record {self.index} (PAGES) lists {count} pages but is {len(data)} bytes.")
        entries = struct.unpack_from(f"<{count}Q", data, _BATCH.size)
        offset = entries_end
        for entry in entries:
            if entry & ZERO_PAGE:
                yield entry & ~ZERO_PAGE, _ZERO
                continue
            page = data[offset:offset + PAGE_SIZE]
            if len(page) != PAGE_SIZE:
                raise StreamError(f"Record {self.index} (PAGES) ends inside the data of frame {entry:#x}.")
            offset += PAGE_SIZE
            yield entry, page
        if offset != len(data):
            raise StreamError(f"Record {self.index} (PAGES) has {len(data) - offset} bytes after its last page.")


class StreamWriter:
    """Writes the records of one stream to ``out`` (a file or a socket's file)."""

    def __init__(self, out: BinaryIO, *, compress: bool = False, features: Sequence[str] = ()) -> None:
        self.out = out
        self.compress = compress
        self._zstd = zstandard.ZstdCompressor(level=3) if compress else None
        self.pages_sent = 0
        self.bytes_written = 0
        self._record(RecordType.HEADER, json.dumps(
            {"format": FORMAT, "version": VERSION, "page_size": PAGE_SIZE, "features": sorted(features)}).encode())

    def config(self, data: Any) -> None:
        self._record(RecordType.CONFIG, json.dumps(data).encode())

    def state(self, data: Any) -> None:
        self._record(RecordType.STATE, json.dumps(data).encode())

    def pages(self, frames: Sequence[int], memory: memoryview | bytes) -> None:
        """The pages ``frames`` of ``memory`` (the guest-physical space), in batches."""
        for start in range(0, len(frames), MAX_BATCH):
            batch = frames[start:start + MAX_BATCH]
            entries = []
            data = []
            for frame in batch:
                page = memory[frame * PAGE_SIZE:(frame + 1) * PAGE_SIZE]
                if len(page) != PAGE_SIZE:
                    raise StreamError(f"Frame {frame:#x} is outside the memory being saved.")
                if page == _ZERO:
                    entries.append(frame | ZERO_PAGE)
                else:
                    entries.append(frame)
                    data.append(bytes(page))
            payload = _BATCH.pack(len(batch), 0) + struct.pack(f"<{len(batch)}Q", *entries) + b"".join(data)
            self._record(RecordType.PAGES, payload)
            self.pages_sent += len(batch)

    def verify(self, digests: bytes, digest_size: int) -> None:
        """A hash of every page, frame 0 upwards (``u32 digest_size | digests``)."""
        self._record(RecordType.VERIFY, struct.pack("<I", digest_size) + digests)

    def end(self) -> None:
        self._record(RecordType.END, b"")
        self.out.flush()

    def commit(self) -> None:
        self._record(RecordType.COMMIT, b"")
        self.out.flush()

    def reply(self, data: Any) -> None:
        self._record(RecordType.REPLY, json.dumps(data).encode())
        self.out.flush()

    def _record(self, type_: RecordType, payload: bytes) -> None:
        flags = 0
        if self._zstd is not None and payload:
            payload = self._zstd.compress(payload)
            flags |= FLAG_ZSTD
        head = _HEAD.pack(type_, flags, len(payload))
        crc = zlib.crc32(payload, zlib.crc32(head))
        self.out.write(head)
        self.out.write(payload)
        self.out.write(_CRC.pack(crc))
        self.bytes_written += len(head) + len(payload) + _CRC.size


def read_records(inp: BinaryIO) -> Iterator[Record]:
    """The records of a stream, each checked; the first is the HEADER, the last END."""
    reader = RecordReader(inp)
    while True:
        record = reader.next()
        yield record
        if record.type is RecordType.END:
            return


class RecordReader:
    """Reads a stream one record at a time (a migration's two directions are read
    a record at a time: the destination's replies come one by one)."""

    def __init__(self, inp: BinaryIO) -> None:
        self.inp = inp
        self.index = 0
        self._decompressor = zstandard.ZstdDecompressor()

    def next(self) -> Record:
        """The next record, checked; StreamError if the stream is cut, damaged or newer."""
        record = _read_record(self.inp, self.index, self._decompressor)
        self.index += 1
        return record


def _read_record(inp: BinaryIO, index: int, decompressor: zstandard.ZstdDecompressor) -> Record:
    head = _read(inp, _HEAD.size, index, "head")
    type_, flags, length = _HEAD.unpack(head)
    try:
        rtype = RecordType(type_)
    except ValueError:
        raise StreamError(f"Record {index} has unknown type {type_:#x}: the stream is damaged or from a "
                          "newer Hospes.") from None
    name = f"{rtype.name}"
    if length > MAX_RECORD or flags & ~FLAG_ZSTD:
        raise StreamError(f"Record {index} ({name}) has a bad head (length {length}, flags {flags:#x}).")
    payload = _read(inp, length, index, name)
    (crc,) = _CRC.unpack(_read(inp, _CRC.size, index, name))
    if zlib.crc32(payload, zlib.crc32(head)) != crc:
        raise StreamError(f"Record {index} ({name}) fails its checksum: the stream is damaged.")
    if flags & FLAG_ZSTD:
        try:
            payload = decompressor.decompress(payload, max_output_size=MAX_RECORD)
        except zstandard.ZstdError as e:
            raise StreamError(f"Record {index} ({name}) does not decompress: {e}.") from None
    record = Record(index, rtype, payload)
    if index == 0:
        _check_header(record)
    elif rtype is RecordType.HEADER:
        raise StreamError(f"Record {index} is a second HEADER.")
    return record


def _check_header(record: Record) -> None:
    if record.type is not RecordType.HEADER:
        raise StreamError(f"The stream starts with record type {record.type.name}, not HEADER: it is not a "
                          "Hospes domain stream.")
    header = record.json()
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StreamError("The stream's HEADER does not name the Hospes domain stream format.")
    version = header.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise StreamError(f"The stream is format version {version}; this Hospes reads version {VERSION}. "
                          "Restore it with the Hospes that wrote it, or a newer one.")
    if header.get("page_size") != PAGE_SIZE:
        raise StreamError(f"The stream's pages are {header.get('page_size')} bytes, not {PAGE_SIZE}.")


def _read(inp: BinaryIO, size: int, index: int, what: str) -> bytes:
    data = inp.read(size)
    if data is None or len(data) != size:
        got = 0 if data is None else len(data)
        raise StreamError(f"The stream ends inside record {index} ({what}): {got} of {size} bytes. "
                          "It was cut short (a full disk, a dropped connection?).")
    return data


__all__ = ["MAX_BATCH", "Record", "RecordReader", "RecordType", "StreamError", "StreamWriter", "VERSION",
           "read_records"]
