"""Kernel-image fuzzer: mutated kernels through the image loader and the PV builder.

Seeds are the project's own PV test kernels (ELF files with Xen notes in a note
segment, only in a section, only as a legacy ``__xen_guest`` string, with a
PADDR_OFFSET) and a synthetic Debian-like vmlinux. Each example takes one, makes
1-6 mutations of the ELF (a header, program-header or section-header field set
to an interesting value, a note's sizes or contents changed, bytes flipped,
the file truncated, a span duplicated), then wraps it as a user could hand it
over: as it is, compressed (gzip, xz, lzma, bzip2, zstd, LZ4 frame, Linux's
legacy LZ4) or as a bzImage payload, and sometimes mutates the wrapped bytes
too. The file goes through ``load_pv_kernel`` (bzImage, decompression, ELF,
Xen notes, layout checks) and, if accepted, ``build_domain`` into a 64 MiB
``GuestMemory``. Each input either loads and builds or raises
:class:`HospesError` (``ImageError``, ``BuildError``); any other exception, or
an input taking more than EXAMPLE_SECONDS, is a finding. Decompression bombs
are refused (``pv/image/decompress.py`` bounds every decoder's output).

FUZZ_EXAMPLES mutated kernels per run (``HOSPES_FUZZ_SCALE``, ``HOSPES_FUZZ_SEED``).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import lz4.frame
import pytest
import zstandard
from hypothesis import given, note
from hypothesis import strategies as st

from conftest import guest_build
from fuzz_helpers import fuzz_seed, fuzz_settings
from hospes.errors import HospesError
from hospes.machine.memory import GuestMemory
from hospes.pv.builder import build_domain, hypercall_page_bytes
from hospes.pv.image import ImageError, load_pv_kernel
from hospes.pv.image import decompress as decompress_module
from test_image_loader import build_elf, bzimage, lz4_legacy

FUZZ_SEED = fuzz_seed(6)
FUZZ_EXAMPLES = 1000
EXAMPLE_SECONDS = 20.0
RAM_PAGES = 64 << 8
SEED_GUESTS = ("hello", "elf_shnote", "elf_xen_guest", "elf_paddr_offset")


def _seed_elves() -> tuple[bytes, ...]:
    return (*(guest_build.build_guest(name).read_bytes() for name in SEED_GUESTS), build_elf())


SEEDS = _seed_elves()

# Values at the edges of what the loader reads as offsets, sizes, counts and addresses.
INTERESTING = (0, 1, 2, 3, 4, 7, 8, 0x38, 0x40, 0x7F, 0x80, 0xFF, 0x100, 0xFFF, 0x1000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x100000000, 0xFFFFFFFF80000000, 0xFFFF800000000000,
               0x7FFFFFFFFFFFFFFF, 0x8000000000000000, 0xFFFFFFFFFFFFF000, 0xFFFFFFFFFFFFFFFF)


def _fields(elf: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every header field worth corrupting: the ELF header's, each program
    header's and each section header's (as far as they lie inside the file)."""
    fields = [(0x10, 2), (0x12, 2), (0x18, 8), (0x20, 8), (0x28, 8), (0x34, 2), (0x36, 2), (0x38, 2),
              (0x3A, 2), (0x3C, 2), (0x3E, 2)]
    if len(elf) < 0x40:
        return fields
    phoff, shoff = struct.unpack_from("<QQ", elf, 0x20)
    phnum, shnum = struct.unpack_from("<H", elf, 0x38)[0], struct.unpack_from("<H", elf, 0x3C)[0]
    for i in range(min(phnum, 64)):
        base = phoff + 56 * i
        fields += [(base + off, size) for off, size in ((0, 4), (4, 4), (8, 8), (16, 8), (24, 8), (32, 8),
                                                        (40, 8), (48, 8))]
    for i in range(min(shnum, 64)):
        base = shoff + 64 * i
        fields += [(base + off, size) for off, size in ((0, 4), (4, 4), (24, 8), (32, 8), (48, 8))]
    return [(o, s) for o, s in fields if o + s <= len(elf)]


def _notes(elf: bytes) -> list[int]:
    """Offsets of the Xen note headers (namesz, descsz, type), found by their owner name."""
    out, at = [], elf.find(b"Xen\0")
    while at >= 12 and len(out) < 64:
        out.append(at - 12)
        at = elf.find(b"Xen\0", at + 4)
    return out


WRAPPERS = ("none", "none", "none", "gzip", "xz", "lzma", "bzip2", "zstd", "lz4", "lz4-legacy",
            "bzImage-gzip", "bzImage-zstd", "bzImage-elf")


def _wrap(kind: str, elf: bytes) -> bytes:
    trailer = struct.pack("<I", len(elf) & 0xFFFFFFFF)
    match kind:
        case "gzip":
            return gzip.compress(elf, 1) + trailer
        case "xz":
            return lzma.compress(elf, preset=0) + trailer
        case "lzma":
            return lzma.compress(elf, format=lzma.FORMAT_ALONE, preset=0) + trailer
        case "bzip2":
            return bz2.compress(elf, 1) + trailer
        case "zstd":
            return zstandard.ZstdCompressor(level=1).compress(elf) + trailer
        case "lz4":
            return bytes(lz4.frame.compress(elf))
        case "lz4-legacy":
            return lz4_legacy(elf)
        case "bzImage-gzip":
            return bzimage(gzip.compress(elf, 1) + trailer)
        case "bzImage-zstd":
            return bzimage(zstandard.ZstdCompressor(level=1).compress(elf) + trailer)
        case "bzImage-elf":
            return bzimage(elf)
    return elf


@st.composite
def mutated_kernel(draw: st.DrawFn) -> tuple[str, bytes]:
    elf = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(("field", "field", "field", "note", "flip", "truncate", "duplicate",
                                     "zero")))
        if kind == "field":
            fields = _fields(bytes(elf))
            if fields:
                off, size = draw(st.sampled_from(fields))
                value = draw(st.sampled_from(INTERESTING)) if draw(st.booleans()) else \
                    int.from_bytes(elf[off:off + size], "little") + draw(st.integers(-16, 16))
                elf[off:off + size] = (value % (1 << (8 * size))).to_bytes(size, "little")
        elif kind == "note":
            notes = _notes(bytes(elf))
            if notes:
                at = draw(st.sampled_from(notes)) + 4 * draw(st.integers(0, 5))
                value = draw(st.sampled_from(INTERESTING)) & 0xFFFFFFFF
                elf[at:at + 4] = value.to_bytes(4, "little")
        elif kind == "flip" and elf:
            at = draw(st.integers(0, len(elf) - 1))
            elf[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del elf[draw(st.integers(0, len(elf))):]
        elif kind == "duplicate":
            at = draw(st.integers(0, len(elf)))
            elf[at:at] = elf[at:at + draw(st.integers(1, 4096))] * draw(st.integers(1, 8))
        elif kind == "zero":
            at = draw(st.integers(0, len(elf)))
            elf[at:at + draw(st.integers(1, 256))] = bytes(len(elf[at:at + 256]))[:len(elf[at:at + 256])]
    wrapper = draw(st.sampled_from(WRAPPERS))
    data = bytearray(_wrap(wrapper, bytes(elf)))
    if wrapper != "none" and draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if draw(st.booleans()) and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        else:
            del data[at:]
    return wrapper, bytes(data)


@pytest.fixture(scope="module")
def memory() -> Iterator[GuestMemory]:
    mem = GuestMemory([("ram", RAM_PAGES * 4096)], name="hospes-fuzz-image")
    try:
        yield mem
    finally:
        mem.close()


_workdir = tempfile.TemporaryDirectory(prefix="hospes-fuzz-image-")


def _load_and_build(path: Path, mem: GuestMemory) -> None:
    kernel = load_pv_kernel(path)
    build_domain(mem, RAM_PAGES, kernel, None, "console=hvc0", RAM_PAGES * 4096, 1, 2, {},
                 hypercall_page_bytes(1))


def test_mutated_kernels_load_or_raise_a_clear_error(memory: GuestMemory) -> None:
    path = Path(_workdir.name) / "vmlinuz"

    @fuzz_settings(FUZZ_EXAMPLES, FUZZ_SEED)
    @given(case=mutated_kernel())
    def run(case: tuple[str, bytes]) -> None:
        wrapper, data = case
        note(f"HOSPES_FUZZ_SEED={FUZZ_SEED}; {wrapper}, {len(data)} bytes, starting {data[:64].hex()}")
        path.write_bytes(data)
        start = time.monotonic()
        try:
            _load_and_build(path, memory)
        except HospesError as e:
            assert str(e).strip(), "an error without a message"
        took = time.monotonic() - start
        assert took < EXAMPLE_SECONDS, f"one kernel took {took:.1f} s"

    run()


def test_seeds_load_and_build(memory: GuestMemory) -> None:
    # The mutations start from kernels that boot: a broken seed would only test the error path.
    path = Path(_workdir.name) / "seed"
    for elf in SEEDS:
        for wrapper in WRAPPERS:
            path.write_bytes(_wrap(wrapper, elf))
            _load_and_build(path, memory)


# --- findings --------------------------------------------------------------------------------


@pytest.mark.parametrize("wrapper", ["gzip", "xz", "bzip2", "zstd", "lz4", "lz4-legacy", "bzImage-gzip"])
def test_a_decompression_bomb_is_refused(wrapper: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding of this fuzzer: every decoder inflated whatever it was given, so a few hundred
    KiB of gzip could make the loader allocate gigabytes. A valid kernel followed by more
    zeros than the limit (here lowered to 8 MiB) loaded before; now it is refused, and the
    loader never holds much more than the limit."""
    monkeypatch.setattr(decompress_module, "MAX_DECOMPRESSED_BYTES", 8 << 20)
    path = Path(_workdir.name) / f"bomb-{wrapper}"
    path.write_bytes(_wrap(wrapper, SEEDS[0] + bytes(24 << 20)))
    with pytest.raises(ImageError, match="decompression bomb"):
        load_pv_kernel(path)
    # Under the limit the same kind of file still loads.
    path.write_bytes(_wrap(wrapper, SEEDS[0] + bytes(1 << 20)))
    load_pv_kernel(path)
