"""Tests for hospes.pv.image: synthetic ELF64 kernels built here with struct.

Each test writes a small x86-64 ELF with Xen notes laid out like Debian's 6.1 cloud
kernel (pv-abi.md §1.2-1.3), optionally wrapped in a bzImage or a compressed file,
and checks what load_pv_kernel makes of it or which error it gives.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import lzma
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import lz4.block
import lz4.frame
import pytest
import zstandard

from hospes.errors import HospesError
from hospes.pv.image import ImageError, PvKernel, Segment, XenElfNote, XenNotes, load_pv_kernel

# --------------------------------------------------------------------------------------
# Builders

VIRT_BASE = 0xFFFFFFFF80000000
INIT_P2M = 0x0000008000000000
HV_START_LOW = 0xFFFF800000000000
FEATURES = b"!writable_page_tables|pae_pgdir_above_4gb"  # 41 bytes, no NUL, as in Linux
PF_X, PF_W, PF_R = 1, 2, 4
PT_LOAD, PT_NOTE = 1, 4


def _pad4(b: bytes, fill: bytes = b"\0") -> bytes:
    return b + fill * (-len(b) % 4)


def note(owner: bytes, ntype: int, desc: bytes, pad: bytes = b"\0") -> bytes:
    """One ELF note record; ``pad`` fills name/desc up to 4-byte alignment."""
    name = owner + b"\0"
    return struct.pack("<III", len(name), len(desc), ntype) + _pad4(name) + _pad4(desc, pad)


def xen(ntype: int, desc: bytes, pad: bytes = b"\0") -> bytes:
    return note(b"Xen", ntype, desc, pad)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


@dataclass
class Load:
    vaddr: int
    paddr: int
    data: bytes
    memsz: int
    flags: int


def default_loads() -> list[Load]:
    """Text, per-cpu (p_vaddr 0) and init+bss (memsz > filesz) segments."""
    return [
        Load(0xFFFFFFFF81000000, 0x1000000, b"T" * 0x3000, 0x3000, PF_R | PF_X),
        Load(0x0, 0x1003000, b"P" * 0x100, 0x1000, PF_R | PF_W),
        Load(0xFFFFFFFF81004000, 0x1004000, b"I" * 0x200, 0x4000, PF_R | PF_W | PF_X),
    ]


ENTRY = 0xFFFFFFFF81004100
KSTART = 0xFFFFFFFF81000000
KEND = 0xFFFFFFFF81008000


def debian_notes(**override: bytes | None) -> bytes:
    """Xen notes in the order Debian 6.1 has them, plus foreign-owner notes.

    Keyword arguments replace a note's descriptor by XenElfNote name; None drops it.
    """
    notes: dict[str, tuple[int, bytes]] = {
        "GUEST_OS": (6, b"linux\0"),
        "GUEST_VERSION": (7, b"2.6\0"),
        "XEN_VERSION": (5, b"xen-3.0\0"),
        "VIRT_BASE": (3, u64(VIRT_BASE)),
        "INIT_P2M": (15, u64(INIT_P2M)),
        "ENTRY": (1, u64(ENTRY)),
        "FEATURES": (10, FEATURES),
        "SUPPORTED_FEATURES": (17, u32(0x8801)),
        "PAE_MODE": (9, b"yes\0"),
        "LOADER": (8, b"generic\0"),
        "L1_MFN_VALID": (13, u64(1) + u64(1)),
        "SUSPEND_CANCEL": (14, u32(1)),
        "MOD_START_PFN": (16, u32(1)),
        "HV_START_LOW": (12, u64(HV_START_LOW)),
        "PADDR_OFFSET": (4, u64(0)),
        "PHYS32_ENTRY": (18, u32(0x1000850)),
    }
    blob = note(b"GNU", 3, b"\x12" * 20)  # build-id
    blob += note(b"Linux", 1, b"6.1\0")  # same type number as ENTRY, other owner
    for name, desc in override.items():
        if desc is None:
            notes.pop(name)
        else:
            notes[name] = (XenElfNote[name].value, desc)
    for name, (ntype, desc) in notes.items():
        # Garbage (not NUL) in FEATURES' padding: only descsz may bound the string.
        blob += xen(ntype, desc, pad=b"\xee" if name == "FEATURES" else b"\0")
    return blob


@dataclass
class ElfSpec:
    notes: bytes | None = field(default_factory=debian_notes)
    loads: list[Load] = field(default_factory=default_loads)
    e_entry: int = ENTRY
    machine: int = 62
    ei_class: int = 2
    ei_data: int = 1


def build_elf(spec: ElfSpec | None = None) -> bytes:
    """Header, program headers, note segment, then segment bytes (last in the file)."""
    spec = spec or ElfSpec()
    phnum = len(spec.loads) + (spec.notes is not None)
    phoff = 64
    offset = phoff + phnum * 56
    phdrs, body = b"", b""
    if spec.notes is not None:
        phdrs += struct.pack("<IIQQQQQQ", PT_NOTE, PF_R, offset, 0, 0, len(spec.notes), len(spec.notes), 4)
        body += spec.notes
    for ld in spec.loads:
        body += b"\0" * (-(offset + len(body)) % 16)
        at = offset + len(body)
        phdrs += struct.pack("<IIQQQQQQ", PT_LOAD, ld.flags, at, ld.vaddr, ld.paddr, len(ld.data), ld.memsz, 0x1000)
        body += ld.data
    ident = b"\x7fELF" + bytes([spec.ei_class, spec.ei_data, 1, 0]) + b"\0" * 8
    header = struct.pack(
        "<16sHHIQQQIHHHHHH", ident, 2, spec.machine, 1, spec.e_entry, phoff, 0, 0, 64, 56, phnum, 64, 0, 0
    )
    return header + phdrs + body


def size_trailer(data: bytes) -> bytes:
    """What Linux's build appends to a compressed payload: u32 LE uncompressed size."""
    return struct.pack("<I", len(data))


def lz4_legacy(data: bytes, chunk: int = 8 << 20, trailer: bool = True) -> bytes:
    out = [b"\x02\x21\x4c\x18"]
    for i in range(0, len(data), chunk):
        block = lz4.block.compress(data[i : i + chunk], store_size=False)
        out += [struct.pack("<I", len(block)), block]
    if trailer:
        out.append(size_trailer(data))
    return b"".join(out)


def bzimage(payload: bytes, *, setup_sects: int = 27, version: int = 0x020F, payload_offset: int = 0x2CC) -> bytes:
    """A bzImage: setup sectors with a boot header, decompressor stand-in, payload, tail."""
    sectors = (setup_sects or 4) + 1
    setup = bytearray(sectors * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<II", setup, 0x248, payload_offset, len(payload))
    return bytes(setup) + b"\x90" * payload_offset + payload + b"\xcc" * 200


def write(tmp_path: Path, data: bytes, name: str = "vmlinuz") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def load_bytes(tmp_path: Path, data: bytes) -> PvKernel:
    return load_pv_kernel(write(tmp_path, data))


def load_error(tmp_path: Path, data: bytes) -> str:
    path = write(tmp_path, data)
    with pytest.raises(ImageError) as info:
        load_pv_kernel(path)
    message = str(info.value)
    assert message[0].isupper(), message
    assert str(path) in message, message
    return message


# --------------------------------------------------------------------------------------
# A valid kernel


def check_default_kernel(k: PvKernel, path: Path) -> None:
    assert k.path == path
    assert k.virt_base == VIRT_BASE
    assert k.virt_offset == VIRT_BASE
    assert (k.pstart, k.pend) == (0x1000000, 0x1008000)
    assert (k.virt_kstart, k.virt_kend) == (KSTART, KEND)
    assert k.entry == ENTRY
    assert k.segments == (
        Segment(paddr=0x1000000, vaddr=0xFFFFFFFF81000000, data=b"T" * 0x3000, memsz=0x3000, flags=PF_R | PF_X),
        Segment(paddr=0x1003000, vaddr=0, data=b"P" * 0x100, memsz=0x1000, flags=PF_R | PF_W),
        Segment(paddr=0x1004000, vaddr=0xFFFFFFFF81004000, data=b"I" * 0x200, memsz=0x4000, flags=7),
    )


def test_valid_kernel_notes(tmp_path: Path) -> None:
    k = load_bytes(tmp_path, build_elf())
    assert k.notes == XenNotes(
        guest_os="linux",
        xen_version="xen-3.0",
        loader="generic",
        virt_base=VIRT_BASE,
        paddr_offset=0,
        entry=ENTRY,
        hypercall_page=None,
        init_p2m=INIT_P2M,
        features=FEATURES.decode(),
        supported_features=0x8801,
        mod_start_pfn=True,
        hv_start_low=HV_START_LOW,
        l1_mfn_valid=(1, 1),
        suspend_cancel=True,
    )
    assert k.notes.required_features == {"writable_page_tables"}
    assert k.notes.optional_features == {"pae_pgdir_above_4gb"}


def test_valid_kernel_layout(tmp_path: Path) -> None:
    path = write(tmp_path, build_elf())
    check_default_kernel(load_pv_kernel(path), path)


def test_accepts_str_path(tmp_path: Path) -> None:
    path = write(tmp_path, build_elf())
    assert load_pv_kernel(str(path)).path == path  # type: ignore[arg-type]


def test_hypercall_page_note(tmp_path: Path) -> None:
    k = load_bytes(tmp_path, build_elf(ElfSpec(notes=debian_notes(HYPERCALL_PAGE=u64(0xFFFFFFFF81001000)))))
    assert k.notes.hypercall_page == 0xFFFFFFFF81001000


def test_hypercall_page_outside_image(tmp_path: Path) -> None:
    msg = load_error(tmp_path, build_elf(ElfSpec(notes=debian_notes(HYPERCALL_PAGE=u64(0xFFFFFFFF81008000)))))
    assert "hypercall page at 0xffffffff81008000" in msg


def test_missing_optional_notes_get_defaults(tmp_path: Path) -> None:
    notes = debian_notes(
        ENTRY=None, INIT_P2M=None, FEATURES=None, SUPPORTED_FEATURES=None, MOD_START_PFN=None,
        HV_START_LOW=None, L1_MFN_VALID=None, SUSPEND_CANCEL=None, PADDR_OFFSET=None,
    )
    k = load_bytes(tmp_path, build_elf(ElfSpec(notes=notes, e_entry=KSTART)))
    assert k.entry == KSTART  # from e_entry
    n = k.notes
    assert (n.init_p2m, n.features, n.supported_features, n.hv_start_low, n.l1_mfn_valid) == (None, "", 0, None, None)
    assert (n.mod_start_pfn, n.suspend_cancel, n.paddr_offset) == (False, False, 0)


def test_four_byte_numbers_and_paddr_offset(tmp_path: Path) -> None:
    """Old-style image: p_paddr holds virtual addresses and PADDR_OFFSET = VIRT_BASE."""
    base = 0xC0000000
    loads = [Load(base + 0x100000, base + 0x100000, b"K" * 0x1000, 0x2000, PF_R | PF_X)]
    notes = debian_notes(VIRT_BASE=u32(base), PADDR_OFFSET=u32(base), ENTRY=u32(base + 0x100010), INIT_P2M=None)
    k = load_bytes(tmp_path, build_elf(ElfSpec(notes=notes, loads=loads)))
    assert (k.virt_base, k.virt_offset, k.entry) == (base, 0, base + 0x100010)
    assert (k.virt_kstart, k.virt_kend) == (base + 0x100000, base + 0x102000)


def test_loader_generic_is_enough(tmp_path: Path) -> None:
    k = load_bytes(tmp_path, build_elf(ElfSpec(notes=debian_notes(GUEST_OS=b"netbsd\0"))))
    assert k.notes.guest_os == "netbsd"


def test_guest_os_linux_is_enough(tmp_path: Path) -> None:
    k = load_bytes(tmp_path, build_elf(ElfSpec(notes=debian_notes(LOADER=None, GUEST_OS=b"linux-6.1"))))
    assert k.notes.loader == ""


def test_entry_at_image_end_is_accepted(tmp_path: Path) -> None:
    assert load_bytes(tmp_path, build_elf(ElfSpec(notes=debian_notes(ENTRY=u64(KEND))))).entry == KEND


# --------------------------------------------------------------------------------------
# Errors: file and ELF level


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(ImageError, match=r"^Cannot read kernel image .*nope: No such file or directory"):
        load_pv_kernel(path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="^Cannot read kernel image"):
        load_pv_kernel(tmp_path)


def test_image_error_is_a_hospes_error() -> None:
    assert issubclass(ImageError, HospesError)


def test_empty_file(tmp_path: Path) -> None:
    assert "is empty" in load_error(tmp_path, b"")


def test_not_a_kernel(tmp_path: Path) -> None:
    msg = load_error(tmp_path, b"#!/bin/sh\necho hello\n")
    assert "neither an ELF vmlinux nor a bzImage" in msg


def test_truncated_header(tmp_path: Path) -> None:
    assert "is truncated: its ELF header ends at byte 0x40" in load_error(tmp_path, build_elf()[:40])


def test_truncated_program_headers(tmp_path: Path) -> None:
    assert "is truncated: its 4 program headers" in load_error(tmp_path, build_elf()[: 64 + 56])


def test_truncated_segment(tmp_path: Path) -> None:
    msg = load_error(tmp_path, build_elf()[:-10])
    assert "is truncated: segment 3" in msg


def test_truncated_note_segment(tmp_path: Path) -> None:
    elf = build_elf(ElfSpec(loads=[]))  # the note segment is last
    assert "is truncated: segment 0" in load_error(tmp_path, elf[:-4])


@pytest.mark.parametrize(
    ("machine", "name"), [(183, "AArch64"), (243, "RISC-V"), (3, "i386"), (0x1234, "machine type 4660")]
)
def test_wrong_architecture(tmp_path: Path, machine: int, name: str) -> None:
    msg = load_error(tmp_path, build_elf(ElfSpec(machine=machine)))
    assert f"is an ELF for {name}, Hospes runs x86-64 kernels" in msg


def test_elf32(tmp_path: Path) -> None:
    msg = load_error(tmp_path, build_elf(ElfSpec(ei_class=1, machine=3)))
    assert "is a 32-bit ELF for i386, Hospes runs 64-bit x86-64 kernels" in msg


def test_big_endian(tmp_path: Path) -> None:
    elf = bytearray(build_elf())
    elf[5] = 2
    struct.pack_into(">H", elf, 18, 21)
    assert "is a big-endian ELF for PowerPC64, Hospes runs x86-64 kernels" in load_error(tmp_path, bytes(elf))


def test_corrupt_ident(tmp_path: Path) -> None:
    assert "corrupt ELF identification" in load_error(tmp_path, build_elf(ElfSpec(ei_class=7)))


def test_no_notes_at_all(tmp_path: Path) -> None:
    msg = load_error(tmp_path, build_elf(ElfSpec(notes=None)))
    assert "is not a Xen PV kernel: it has no Xen ELF notes (in a note segment or section) and no __xen_guest section; build it with CONFIG_XEN_PV=y" in msg


def test_only_foreign_notes(tmp_path: Path) -> None:
    blob = note(b"GNU", 3, b"\1" * 20) + note(b"Linux", 1, b"6.1\0") + note(b"Xenon", 1, u64(ENTRY))
    msg = load_error(tmp_path, build_elf(ElfSpec(notes=blob)))
    assert "is not a Xen PV kernel: it has no Xen ELF notes (in a note segment or section) and no __xen_guest section; build it with CONFIG_XEN_PV=y" in msg


def test_wrong_guest_os_and_loader(tmp_path: Path) -> None:
    msg = load_error(tmp_path, build_elf(ElfSpec(notes=debian_notes(GUEST_OS=b"freebsd\0", LOADER=None))))
    assert "GUEST_OS 'freebsd' and LOADER ''" in msg
    assert "starting with 'linux'" in msg and "starting with 'generic'" in msg


def test_wrong_xen_version(tmp_path: Path) -> None:
    msg = load_error(tmp_path, build_elf(ElfSpec(notes=debian_notes(XEN_VERSION=b"xen-2.0\0"))))
    assert "built for Xen interface 'xen-2.0'" in msg and "starts with 'xen-3.0'" in msg


def test_missing_xen_version(tmp_path: Path) -> None:
    msg = load_error(tmp_path, build_elf(ElfSpec(notes=debian_notes(XEN_VERSION=None))))
    assert "built for Xen interface ''" in msg


@pytest.mark.parametrize("entry", [KSTART - 1, KEND + 1, 0x1004100])
def test_entry_outside_image(tmp_path: Path, entry: int) -> None:
    msg = load_error(tmp_path, build_elf(ElfSpec(notes=debian_notes(ENTRY=u64(entry)))))
    assert f"has its entry point {entry:#x} outside its image {KSTART:#x}..{KEND:#x}" in msg


def test_image_below_virt_base(tmp_path: Path) -> None:
    msg = load_error(tmp_path, build_elf(ElfSpec(notes=debian_notes(PADDR_OFFSET=u64(0x2000000)))))
    assert f"below its VIRT_BASE {VIRT_BASE:#x}" in msg


def test_malformed_numeric_note(tmp_path: Path) -> None:
    msg = load_error(tmp_path, build_elf(ElfSpec(notes=debian_notes(ENTRY=b"\1" * 6))))
    assert "malformed Xen ELF note ENTRY: its descriptor is 6 bytes where 4 or 8 are expected" in msg


def test_corrupt_note(tmp_path: Path) -> None:
    blob = debian_notes() + struct.pack("<III", 4, 0x100, 1) + b"Xen\0" + b"\0" * 8
    assert "has a corrupt ELF note at file offset" in load_error(tmp_path, build_elf(ElfSpec(notes=blob)))


def test_filesz_larger_than_memsz(tmp_path: Path) -> None:
    loads = default_loads()
    loads[0].memsz = 0x10
    msg = load_error(tmp_path, build_elf(ElfSpec(loads=loads)))
    assert "segment 1 has p_filesz 0x3000 larger than p_memsz 0x10" in msg


def test_no_load_segments(tmp_path: Path) -> None:
    assert "has no loadable (PT_LOAD) segments" in load_error(tmp_path, build_elf(ElfSpec(loads=[])))


# --------------------------------------------------------------------------------------
# bzImage and compressed files


def _gzip(d: bytes) -> bytes:
    return gzip.compress(d, mtime=0) + size_trailer(d)


def _xz(d: bytes) -> bytes:
    return lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) + size_trailer(d)


def _lzma(d: bytes) -> bytes:
    return lzma.compress(d, format=lzma.FORMAT_ALONE) + size_trailer(d)


def _bzip2(d: bytes) -> bytes:
    return bz2.compress(d) + size_trailer(d)


def _zstd(d: bytes) -> bytes:
    """Like the zstd tool Linux's build runs: with a content checksum."""
    return zstandard.ZstdCompressor(level=19, write_checksum=True).compress(d) + size_trailer(d)


def _zstd_stream(d: bytes) -> bytes:
    """Like `cat vmlinux | zstd`: no content size in the frame header."""
    c = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    return c.compress(d) + c.flush() + size_trailer(d)


def _lz4(d: bytes) -> bytes:
    return lz4_legacy(d)


def _lz4_small_blocks(d: bytes) -> bytes:
    return lz4_legacy(d, chunk=0x1000)


def _lz4_no_trailer(d: bytes) -> bytes:
    return lz4_legacy(d, chunk=0x1000, trailer=False)


def _lz4_trailer_and_zero_padding(d: bytes) -> bytes:
    """The trailer is small enough to look like a block length, and padding follows."""
    return lz4_legacy(d, chunk=0x1000) + b"\0" * (len(d) + 64)


def _lz4_garbage_tail(d: bytes) -> bytes:
    return lz4_legacy(d) + b"\xff" * 13


def _lz4_repeated_magic(d: bytes) -> bytes:
    half = len(d) // 2
    return lz4_legacy(d[:half], trailer=False) + lz4_legacy(d[half:])


def _lz4_frame(d: bytes) -> bytes:
    return lz4.frame.compress(d)


COMPRESSORS = {
    "gzip": _gzip,
    "xz": _xz,
    "lzma": _lzma,
    "bzip2": _bzip2,
    "zstd": _zstd,
    "zstd-stream": _zstd_stream,
    "lz4": _lz4,
    "lz4-small-blocks": _lz4_small_blocks,
    "lz4-no-trailer": _lz4_no_trailer,
    "lz4-trailer-padding": _lz4_trailer_and_zero_padding,
    "lz4-garbage-tail": _lz4_garbage_tail,
    "lz4-repeated-magic": _lz4_repeated_magic,
    "lz4-frame": _lz4_frame,
}


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_bzimage_round_trip(tmp_path: Path, kind: str) -> None:
    path = write(tmp_path, bzimage(COMPRESSORS[kind](build_elf())))
    check_default_kernel(load_pv_kernel(path), path)


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2", "zstd", "lz4"])
def test_compressed_elf_file(tmp_path: Path, kind: str) -> None:
    path = write(tmp_path, COMPRESSORS[kind](build_elf()), name="vmlinux.compressed")
    check_default_kernel(load_pv_kernel(path), path)


def test_bzimage_setup_sects_zero_means_four(tmp_path: Path) -> None:
    path = write(tmp_path, bzimage(_gzip(build_elf()), setup_sects=0))
    check_default_kernel(load_pv_kernel(path), path)


def test_bzimage_uncompressed_payload(tmp_path: Path) -> None:
    path = write(tmp_path, bzimage(build_elf()))
    check_default_kernel(load_pv_kernel(path), path)


def test_bzimage_errors_name_the_payload(tmp_path: Path) -> None:
    msg = load_error(tmp_path, bzimage(_lz4(build_elf(ElfSpec(machine=183)))))
    assert "(lz4 payload of the bzImage) is an ELF for AArch64" in msg


def test_bzimage_unknown_payload(tmp_path: Path) -> None:
    msg = load_error(tmp_path, bzimage(b"\0" * 256))
    assert "is a bzImage without a payload Hospes recognises" in msg


def test_bzimage_lzo_payload(tmp_path: Path) -> None:
    msg = load_error(tmp_path, bzimage(b"\x89LZO\x00\r\n\x1a\n" + b"\0" * 64))
    assert "is lzo-compressed, which Hospes cannot decompress" in msg


def test_bzimage_payload_beyond_eof(tmp_path: Path) -> None:
    image = bzimage(_gzip(build_elf()))
    assert "runs past the end of the" in load_error(tmp_path, image[: len(image) - 300])


def test_bzimage_truncated_header(tmp_path: Path) -> None:
    assert "truncated bzImage" in load_error(tmp_path, bzimage(b"")[:0x240])


def test_bzimage_old_boot_protocol(tmp_path: Path) -> None:
    msg = load_error(tmp_path, bzimage(_gzip(build_elf()), version=0x0207))
    assert "boot protocol 2.07" in msg and "needs 2.08" in msg


def test_payload_not_elf(tmp_path: Path) -> None:
    msg = load_error(tmp_path, bzimage(_gzip(b"hello, world" * 10)))
    assert "decompresses to something that is not an ELF file" in msg


def _flip_middle(blob: bytes) -> bytes:
    mid = len(blob) // 2
    return blob[:mid] + bytes(b ^ 0x5A for b in blob[mid : mid + 32]) + blob[mid + 32 :]


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2", "zstd"])
def test_corrupt_payload(tmp_path: Path, kind: str) -> None:
    loads = [Load(KSTART, 0x1000000, os.urandom(0x4000), 0x4000, PF_R | PF_X)]
    elf = build_elf(ElfSpec(loads=loads, notes=debian_notes(ENTRY=u64(KSTART))))
    msg = load_error(tmp_path, bzimage(_flip_middle(COMPRESSORS[kind](elf))))
    assert f"has a corrupt {kind} stream" in msg


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2", "zstd", "lzma"])
def test_truncated_payload(tmp_path: Path, kind: str) -> None:
    blob = COMPRESSORS[kind](build_elf())
    msg = load_error(tmp_path, bzimage(blob[: len(blob) // 2]))
    assert f"has a corrupt {kind} stream" in msg


def test_corrupt_lz4_block(tmp_path: Path) -> None:
    good = lz4_legacy(build_elf(), chunk=0x1000, trailer=False)
    bad = good + struct.pack("<I", 64) + b"\xff" * 64
    assert "has a corrupt lz4 stream" in load_error(tmp_path, bzimage(bad))


def test_lz4_without_blocks(tmp_path: Path) -> None:
    assert "has a corrupt lz4 stream (it holds no LZ4 block)" in load_error(tmp_path, bzimage(b"\x02\x21\x4c\x18"))


# --------------------------------------------------------------------------------------
# Size and speed: a Debian-sized payload (~53 MB in 8 MiB LZ4 blocks)


def test_large_lz4_bzimage_loads(tmp_path: Path) -> None:
    text = (os.urandom(1 << 20) + bytes(1 << 20)) * 12  # 24 MiB, half compressible
    bss = 0x2000000
    loads = [
        Load(0xFFFFFFFF81000000, 0x1000000, text, len(text), PF_R | PF_X),
        Load(0, 0x1000000 + len(text), b"P" * 0x34000, 0x34000, PF_R | PF_W),
        Load(0xFFFFFFFF83000000, 0x3000000, bytes(29 << 20), (29 << 20) + bss, 7),
    ]
    elf = build_elf(ElfSpec(loads=loads, notes=debian_notes(ENTRY=u64(0xFFFFFFFF83000100))))
    path = write(tmp_path, bzimage(lz4_legacy(elf)))
    k = load_pv_kernel(path)
    assert k.segments[0].data == text
    assert k.pend == 0x3000000 + (29 << 20) + bss


# --------------------------------------------------------------------------------------
# A real Debian kernel, if this machine has one


def _real_kernels() -> list[Path]:
    patterns = [os.path.expanduser("~/.cache/hospes/**/vmlinuz*"), "/boot/vmlinuz*"]
    return sorted({Path(p) for pat in patterns for p in glob.glob(pat, recursive=True) if os.path.isfile(p)})


REAL_KERNELS = _real_kernels()


@pytest.mark.skipif(
    not REAL_KERNELS,
    reason="no real kernel found (looked for ~/.cache/hospes/**/vmlinuz* and /boot/vmlinuz*); "
    "the synthetic tests above cover the loader",
)
@pytest.mark.parametrize("path", REAL_KERNELS or [Path("/none")], ids=str)
def test_real_debian_kernel(path: Path) -> None:
    k = load_pv_kernel(path)
    assert k.virt_base == VIRT_BASE  # pv-abi.md §1.2
    assert k.notes.paddr_offset == 0
    assert k.pstart == 0x1000000  # CONFIG_PHYSICAL_START
    assert k.virt_kstart == 0xFFFFFFFF81000000
    assert k.virt_kstart <= k.entry <= k.virt_kend
    assert "!writable_page_tables" in k.notes.features.split("|")
    assert any(s.vaddr == 0 for s in k.segments)  # the per-cpu segment
    if "6.1.0-56-cloud-amd64" in path.name:
        assert k.entry == 0xFFFFFFFF8304E1C0
        assert k.pend == 0x3E00000
        assert k.notes.hypercall_page is None
        assert k.notes.init_p2m == INIT_P2M


# --------------------------------------------------------------------------------------
# Where libelf looks when there are no notes in a PT_NOTE segment

SHT_PROGBITS, SHT_STRTAB, SHT_NOTE, SHT_NOBITS = 1, 3, 7, 8


def with_sections(elf: bytes, sections: list[tuple[str, int, bytes]]) -> bytes:
    """``elf`` plus the given sections, a .shstrtab and a section header table."""
    names = b"\0"
    offsets = []
    body = b""
    start = len(elf)
    for name, _type, _data in sections + [(".shstrtab", SHT_STRTAB, b"")]:
        offsets.append(len(names))
        names += name.encode() + b"\0"
    datas = [d for _n, _t, d in sections] + [names]
    placed = []
    for data in datas:
        body += b"\0" * (-(start + len(body)) % 8)
        placed.append(start + len(body))
        body += data
    body += b"\0" * (-(start + len(body)) % 8)
    shoff = start + len(body)
    table = bytes(64)  # SHN_UNDEF
    types = [t for _n, t, _d in sections] + [SHT_STRTAB]
    for name_at, sh_type, at, data in zip(offsets, types, placed, datas, strict=True):
        table += struct.pack("<IIQQQQIIQQ", name_at, sh_type, 0, 0, at, len(data), 0, 0, 1, 0)
    out = bytearray(elf + body + table)
    shnum = len(types) + 1
    struct.pack_into("<Q", out, 40, shoff)
    struct.pack_into("<HHH", out, 58, 64, shnum, shnum - 1)
    return bytes(out)


def test_notes_only_in_a_sht_note_section_are_used(tmp_path: Path) -> None:
    elf = with_sections(build_elf(ElfSpec(notes=None)), [(".note.Xen", SHT_NOTE, debian_notes())])
    path = write(tmp_path, elf)
    k = load_pv_kernel(path)
    check_default_kernel(k, path)
    assert k.notes.init_p2m == INIT_P2M and k.notes.loader == "generic"


def test_a_note_segment_with_xen_notes_wins_over_sections(tmp_path: Path) -> None:
    other = debian_notes(ENTRY=u64(KSTART))
    elf = with_sections(build_elf(), [(".note.Xen", SHT_NOTE, other)])
    assert load_bytes(tmp_path, elf).entry == ENTRY


def test_sections_are_searched_when_the_note_segment_has_no_xen_notes(tmp_path: Path) -> None:
    gnu_only = note(b"GNU", 3, b"\x12" * 20)
    elf = with_sections(build_elf(ElfSpec(notes=gnu_only)),
                        [(".note.gnu", SHT_NOTE, gnu_only), (".note.Xen", SHT_NOTE, debian_notes())])
    assert load_bytes(tmp_path, elf).virt_base == VIRT_BASE


def test_a_note_section_past_the_end_of_the_file_is_a_clear_error(tmp_path: Path) -> None:
    elf = bytearray(with_sections(build_elf(ElfSpec(notes=None)), [(".note.Xen", SHT_NOTE, debian_notes())]))
    shoff = struct.unpack_from("<Q", elf, 40)[0]
    struct.pack_into("<Q", elf, shoff + 64 + 32, len(elf) * 2)  # section 1's sh_size
    assert "truncated" in load_error(tmp_path, bytes(elf))


LEGACY = (b"GUEST_OS=linux,GUEST_VER=2.6,XEN_VER=xen-3.0,VIRT_BASE=0xffffffff80000000,"
          b"ELF_PADDR_OFFSET=0xffffffff80000000,HYPERCALL_PAGE=0x1001,LOADER=generic\0garbage")


def legacy_loads() -> list[Load]:
    """Linked with p_paddr = p_vaddr, as kernels of the __xen_guest era were."""
    return [Load(ld.vaddr, ld.vaddr, ld.data, ld.memsz, ld.flags) for ld in default_loads() if ld.vaddr]


def test_the_legacy_xen_guest_string_is_the_last_fallback(tmp_path: Path) -> None:
    elf = with_sections(build_elf(ElfSpec(notes=None, loads=legacy_loads())),
                        [("__xen_guest", SHT_PROGBITS, LEGACY)])
    k = load_bytes(tmp_path, elf)
    assert (k.notes.guest_os, k.notes.xen_version, k.notes.loader) == ("linux", "xen-3.0", "generic")
    assert k.virt_base == VIRT_BASE and k.notes.paddr_offset == VIRT_BASE and k.virt_offset == 0
    # HYPERCALL_PAGE is a page number relative to VIRT_BASE.
    assert k.notes.hypercall_page == VIRT_BASE + 0x1001 * 4096 == 0xFFFFFFFF81001000
    assert (k.virt_kstart, k.virt_kend, k.entry) == (KSTART, KEND, ENTRY)


def test_legacy_paddr_offset_defaults_to_virt_base_and_virt_entry_overrides_e_entry(tmp_path: Path) -> None:
    info = b"GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xffffffff80000000,VIRT_ENTRY=0xffffffff81000010"
    elf = with_sections(build_elf(ElfSpec(notes=None, loads=legacy_loads())), [("__xen_guest", SHT_PROGBITS, info)])
    k = load_bytes(tmp_path, elf)
    assert k.notes.paddr_offset == VIRT_BASE and k.entry == 0xFFFFFFFF81000010
    assert k.notes.hypercall_page is None


def test_legacy_string_is_not_read_when_notes_exist(tmp_path: Path) -> None:
    elf = with_sections(build_elf(), [("__xen_guest", SHT_PROGBITS, b"GUEST_OS=other,XEN_VER=xen-2.0")])
    assert load_bytes(tmp_path, elf).notes.guest_os == "linux"


@pytest.mark.parametrize("info, phrase", [
    (b"GUEST_OS=linux,XEN_VER=xen-3.0,ELF_PADDR_OFFSET=0", "PADDR_OFFSET but not VIRT_BASE"),
    (b"GUEST_OS=netbsd,XEN_VER=xen-3.0,VIRT_BASE=0", "GUEST_OS 'netbsd'"),
    (b"GUEST_OS=linux,XEN_VER=xen-2.0,VIRT_BASE=0", "'xen-2.0'"),
])
def test_legacy_strings_libelf_refuses_are_refused(tmp_path: Path, info: bytes, phrase: str) -> None:
    elf = with_sections(build_elf(ElfSpec(notes=None, loads=legacy_loads())), [("__xen_guest", SHT_PROGBITS, info)])
    assert phrase in load_error(tmp_path, elf)


def test_notes_with_paddr_offset_but_no_virt_base_are_refused(tmp_path: Path) -> None:
    notes = debian_notes(VIRT_BASE=None, PADDR_OFFSET=u64(0x1000))
    assert "PADDR_OFFSET but not VIRT_BASE" in load_error(tmp_path, build_elf(ElfSpec(notes=notes)))


def test_no_notes_anywhere_and_no_xen_guest_is_not_a_pv_kernel(tmp_path: Path) -> None:
    elf = with_sections(build_elf(ElfSpec(notes=None)), [(".note.gnu", SHT_NOTE, note(b"GNU", 3, b"x" * 20))])
    assert "no __xen_guest section" in load_error(tmp_path, elf)


@pytest.mark.parametrize("text, value", [
    ("0x1f", 0x1F), ("0X1F", 0x1F), ("017", 0o17), ("42", 42), ("  42", 42), ("42abc", 42), ("", 0),
    ("zz", 0), ("0x", 0), ("-1", (1 << 64) - 1), ("+7", 7), ("0xffffffffffffffffff", (1 << 64) - 1), ("08", 0),
])
def test_strtoull_reads_numbers_as_c_does(text: str, value: int) -> None:
    from hospes.pv.image.xen_notes import strtoull

    assert strtoull(text) == value


def test_guest_info_names_and_values_are_cut_as_libelf_cuts_them() -> None:
    from hospes.pv.image.xen_notes import _guest_info_pairs

    pairs = list(_guest_info_pairs(b"A=1,,B,C=" + b"v" * 130 + b",D=2"))
    assert pairs[:3] == [("A", "1"), ("", ""), ("B", "")]
    assert pairs[3] == ("C", "v" * 127)       # the value stops at 127 characters ...
    assert pairs[4] == ("vvv", "")            # ... and the rest reads as a name
    assert pairs[5] == ("D", "2")


def test_a_kernel_with_a_paddr_offset_is_sized_where_it_is_placed(tmp_path: Path) -> None:
    """p_paddr 1 GiB above the placement (PADDR_OFFSET 1 GiB) fits a 64 MiB domain."""
    from hospes.machine.memory import GuestMemory
    from hospes.pv.builder import BuildError, build_domain, hypercall_page_bytes

    offset = 1 << 30
    loads = [Load(ld.vaddr, ld.paddr + offset, ld.data, ld.memsz, ld.flags) for ld in default_loads()]
    k = load_bytes(tmp_path, build_elf(ElfSpec(notes=debian_notes(PADDR_OFFSET=u64(offset)), loads=loads)))
    assert (k.pstart, k.virt_kstart, k.virt_kend) == (0x1000000 + offset, KSTART, KEND)
    pages = 64 << 8
    mem = GuestMemory([("ram", pages * 4096)], name="paddr-offset-test")
    try:
        boot = build_domain(mem, pages, k, None, "", pages * 4096, 1, 2, {}, hypercall_page_bytes(1))
        assert bytes(mem.buf[0x1000000:0x1000004]) == b"TTTT"      # at p_paddr - PADDR_OFFSET
        assert boot.entry == ENTRY
        small = 16 << 8                                              # 16 MiB: the image ends at 16 MiB + 32 KiB
        with pytest.raises(BuildError, match="needs 17 MiB"):
            build_domain(mem, small, k, None, "", small * 4096, 1, 2, {}, hypercall_page_bytes(1))
    finally:
        mem.close()
