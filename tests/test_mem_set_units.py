"""`hospes mem-set`'s size syntax (xl's parse_mem_size_kb) and the store nodes a
balloon driver reads, without a domain."""

from __future__ import annotations

import pytest

from hospes.errors import HospesError
from hospes.pv.store import Store, populate_domain
from hospes.toolstack.spec import parse_mem_size_kb


@pytest.mark.parametrize("text, kib", [
    ("512", 512 * 1024), ("512m", 512 * 1024), ("512M", 512 * 1024), ("1g", 1024 * 1024), ("1G", 1024 * 1024),
    ("131072k", 131072), ("134217728b", 131072), ("1t", 1 << 30), ("0", 0),
])
def test_sizes_as_xl_reads_them(text: str, kib: int) -> None:
    assert parse_mem_size_kb(text) == kib


@pytest.mark.parametrize("text", ["", "m", "-5", "12mb", "1.5g", "12x", "0x100", "½"])
def test_sizes_xl_refuses(text: str) -> None:
    with pytest.raises(HospesError, match="invalid memory size"):
        parse_mem_size_kb(text)


def test_static_max_is_maxmem_and_target_is_memory() -> None:
    store = Store()
    populate_domain(store, 3, "g", "00000000-0000-0000-0000-000000000001", 1, 128 * 1024, max_memory_kib=512 * 1024)
    with store.transaction() as t:
        assert t.read("/local/domain/3/memory/static-max") == b"524288"
        assert t.read("/local/domain/3/memory/target") == b"131072"
