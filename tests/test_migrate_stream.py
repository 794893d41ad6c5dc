"""The domain stream: records round-trip, and a cut, damaged or newer stream is refused naming the record."""

from __future__ import annotations

import io
import json
import struct

import pytest

from hospes.migrate.stream import (
    MAX_BATCH, PAGE_SIZE, VERSION, RecordType, StreamError, StreamWriter, read_records,
)


def memory(frames: int) -> bytearray:
    mem = bytearray(frames * PAGE_SIZE)
    for f in range(0, frames, 3):                 # every third page has data, the rest are zero
        mem[f * PAGE_SIZE:(f + 1) * PAGE_SIZE] = bytes([f % 251 + 1]) * PAGE_SIZE
    return mem


def stream(compress: bool, frames: int = 10) -> tuple[bytes, bytearray, StreamWriter]:
    mem = memory(frames)
    out = io.BytesIO()
    w = StreamWriter(out, compress=compress, features=["zero-pages"])
    w.config({"name": "d", "memory_bytes": len(mem)})
    w.pages(range(frames), mem)
    w.state({"answer": 42})
    w.end()
    return out.getvalue(), mem, w


@pytest.mark.parametrize("compress", [False, True])
def test_records_come_back_in_order_with_every_page(compress: bool):
    data, mem, w = stream(compress)
    records = list(read_records(io.BytesIO(data)))
    assert [r.type for r in records] == [RecordType.HEADER, RecordType.CONFIG, RecordType.PAGES,
                                         RecordType.STATE, RecordType.END]
    assert records[0].json()["version"] == VERSION and records[1].json()["name"] == "d"
    assert records[3].json() == {"answer": 42}
    back = bytearray(len(mem))
    for frame, page in records[2].pages():
        back[frame * PAGE_SIZE:(frame + 1) * PAGE_SIZE] = page
    assert back == mem and w.pages_sent == 10


def test_zero_pages_travel_as_a_flag():
    data, mem, _ = stream(False)
    nonzero = sum(1 for f in range(10) if any(mem[f * PAGE_SIZE:(f + 1) * PAGE_SIZE]))
    assert nonzero == 4
    assert len(data) < (nonzero + 1) * PAGE_SIZE   # the six zero pages cost 8 bytes each


def test_compression_shrinks_repetitive_pages():
    plain, _, _ = stream(False)
    packed, _, _ = stream(True)
    assert len(packed) < len(plain) // 10


def test_large_page_sets_are_split_into_batches():
    frames = MAX_BATCH + 5
    mem = memory(frames)
    out = io.BytesIO()
    w = StreamWriter(out)
    w.pages(range(frames), mem)
    w.end()
    pages = [r for r in read_records(io.BytesIO(out.getvalue())) if r.type is RecordType.PAGES]
    assert [sum(1 for _ in r.pages()) for r in pages] == [MAX_BATCH, 5]


@pytest.mark.parametrize("compress", [False, True])
def test_a_stream_cut_anywhere_is_refused_naming_the_record(compress: bool):
    data, _, _ = stream(compress)
    for cut in range(0, len(data), max(1, len(data) // 97)):
        with pytest.raises(StreamError, match=r"ends inside record \d+"):
            list(read_records(io.BytesIO(data[:cut])))


def test_a_damaged_byte_fails_the_checksum_of_its_record():
    data, _, _ = stream(False)
    records = list(read_records(io.BytesIO(data)))
    # the first byte of the PAGES payload: after HEADER and CONFIG records and the PAGES head
    offset = sum(16 + len(r.payload) + 4 for r in records[:2]) + 16
    damaged = bytearray(data)
    damaged[offset + 9] ^= 0x40
    with pytest.raises(StreamError, match=r"Record 2 \(PAGES\) fails its checksum"):
        list(read_records(io.BytesIO(bytes(damaged))))


def test_a_newer_version_or_another_format_is_refused():
    def header_stream(header: dict) -> bytes:
        out = io.BytesIO()
        w = StreamWriter(out)
        out.seek(0)
        out.truncate()
        w._record(RecordType.HEADER, json.dumps(header).encode())
        return out.getvalue()

    newer = header_stream({"format": "hospes-domain-stream", "version": VERSION + 1, "page_size": PAGE_SIZE})
    with pytest.raises(StreamError, match=f"format version {VERSION + 1}; this Hospes reads version {VERSION}"):
        list(read_records(io.BytesIO(newer)))
    other = header_stream({"format": "something-else", "version": 1, "page_size": PAGE_SIZE})
    with pytest.raises(StreamError, match="does not name the Hospes domain stream"):
        list(read_records(io.BytesIO(other)))


def test_an_unknown_record_type_and_a_stream_without_header_are_refused():
    data, _, _ = stream(False)
    bad_type = bytearray(data)
    struct.pack_into("<I", bad_type, 0, 0x77)
    with pytest.raises(StreamError, match="Record 0 has unknown type 0x77"):
        list(read_records(io.BytesIO(bytes(bad_type))))
    out = io.BytesIO()
    w = StreamWriter(out)
    out.seek(0)
    out.truncate()
    w.end()
    with pytest.raises(StreamError, match="starts with record type END, not HEADER"):
        list(read_records(io.BytesIO(out.getvalue())))


def test_a_pages_record_whose_count_does_not_fit_is_refused():
    out = io.BytesIO()
    w = StreamWriter(out)
    w._record(RecordType.PAGES, struct.pack("<II", 3, 0) + struct.pack("<Q", 1))
    w.end()
    records = list(read_records(io.BytesIO(out.getvalue())))
    with pytest.raises(StreamError, match=r"Record 1 \(PAGES\) lists 3 pages"):
        list(records[1].pages())
