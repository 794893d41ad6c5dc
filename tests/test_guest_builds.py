"""The PV test kernels build, and each is an image a Xen PV64 loader accepts.

Needs gcc (not KVM). The ELF and its Xen notes are parsed here with a small
reader of our own, independent of the Hospes loader, so a loader bug and a
kernel bug cannot cancel out. Numbers: xen/include/public/elfnote.h.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import guest_build  # noqa: E402

XEN_ELFNOTE_ENTRY = 1
XEN_ELFNOTE_HYPERCALL_PAGE = 2
XEN_ELFNOTE_VIRT_BASE = 3
XEN_ELFNOTE_PADDR_OFFSET = 4
XEN_ELFNOTE_XEN_VERSION = 5
XEN_ELFNOTE_LOADER = 8
XEN_ELFNOTE_FEATURES = 10

VIRT_BASE = 0xFFFFFFFF80000000
PT_LOAD, PT_NOTE = 1, 4
PF_X = 1
EM_X86_64 = 62
ET_EXEC = 2


@dataclass(frozen=True)
class Phdr:
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


@dataclass(frozen=True)
class Elf:
    entry: int
    machine: int
    type: int
    phdrs: tuple[Phdr, ...]
    notes: tuple[tuple[bytes, int, bytes], ...]  # (owner, type, desc)


def _parse_notes(blob: bytes) -> list[tuple[bytes, int, bytes]]:
    notes = []
    off = 0
    while off + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from("<III", blob, off)
        off += 12
        name = blob[off : off + namesz].rstrip(b"\0")
        off += (namesz + 3) & ~3
        desc = blob[off : off + descsz]
        assert len(desc) == descsz, "note runs past its segment"
        off += (descsz + 3) & ~3
        notes.append((name, ntype, desc))
    return notes


def parse_elf(data: bytes) -> Elf:
    assert data[:4] == b"\x7fELF", "not an ELF file"
    assert data[4] == 2, "not ELFCLASS64"
    assert data[5] == 1, "not little-endian"
    e_type, e_machine, _version, e_entry, e_phoff = struct.unpack_from("<HHIQQ", data, 16)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    phdrs = []
    for i in range(e_phnum):
        p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + i * e_phentsize
        )
        phdrs.append(Phdr(p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz))
    notes = []
    for ph in phdrs:
        if ph.type == PT_NOTE:
            notes += _parse_notes(data[ph.offset : ph.offset + ph.filesz])
    return Elf(e_entry, e_machine, e_type, tuple(phdrs), tuple(notes))


def xen_notes(elf: Elf) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    for owner, ntype, desc in elf.notes:
        if owner == b"Xen":
            assert ntype not in found, f"Xen note {ntype} appears twice"
            found[ntype] = desc
    return found


def _u64(desc: bytes) -> int:
    assert len(desc) in (4, 8), f"numeric note of {len(desc)} bytes"
    return int.from_bytes(desc, "little")


STANDARD_GUESTS = tuple(g for g in guest_build.ALL_GUESTS if g not in guest_build.VARIANTS)


@pytest.fixture(scope="module", params=STANDARD_GUESTS)
def guest(request) -> tuple[str, Path, Elf]:
    path = guest_build.build_guest(request.param)
    return request.param, path, parse_elf(path.read_bytes())


def test_elf64_x86_64_executable(guest):
    _name, _path, elf = guest
    assert elf.type == ET_EXEC
    assert elf.machine == EM_X86_64
    assert any(p.type == PT_LOAD for p in elf.phdrs)
    assert any(p.type == PT_NOTE for p in elf.phdrs)


def test_xen_notes(guest):
    name, _path, elf = guest
    notes = xen_notes(elf)
    assert notes[XEN_ELFNOTE_XEN_VERSION].startswith(b"xen-3.0")
    assert notes[XEN_ELFNOTE_LOADER].startswith(b"generic")
    assert _u64(notes[XEN_ELFNOTE_VIRT_BASE]) == VIRT_BASE
    assert _u64(notes[XEN_ELFNOTE_PADDR_OFFSET]) == 0
    assert _u64(notes[XEN_ELFNOTE_ENTRY]) == elf.entry
    features = notes[XEN_ELFNOTE_FEATURES].rstrip(b"\0").split(b"|")
    assert b"!writable_page_tables" in features
    if name == "hypercall_page":
        page = _u64(notes[XEN_ELFNOTE_HYPERCALL_PAGE])
        assert page % 4096 == 0
        assert any(
            p.type == PT_LOAD and p.vaddr <= page and page + 4096 <= p.vaddr + p.filesz
            for p in elf.phdrs
        ), "hypercall page is not inside a loaded segment"
    else:
        assert XEN_ELFNOTE_HYPERCALL_PAGE not in notes


def test_segments_placed_by_paddr(guest):
    """A Xen loader puts a segment at p_paddr + VIRT_BASE - PADDR_OFFSET;
    that must be where it is linked, and the kernel must start at 1 MiB."""
    _name, _path, elf = guest
    loads = [p for p in elf.phdrs if p.type == PT_LOAD]
    for p in loads:
        assert p.vaddr == p.paddr + VIRT_BASE, f"segment at {p.vaddr:#x} has p_paddr {p.paddr:#x}"
        assert p.vaddr % 4096 == 0
        assert p.filesz <= p.memsz
    assert min(p.paddr for p in loads) == 0x100000


def test_entry_inside_image(guest):
    """libelf: virt_base <= virt_kstart <= entry < virt_kend, in executable code."""
    _name, _path, elf = guest
    loads = [p for p in elf.phdrs if p.type == PT_LOAD]
    kstart = min(p.vaddr for p in loads)
    kend = max(p.vaddr + p.memsz for p in loads)
    assert VIRT_BASE <= kstart <= elf.entry < kend
    assert any(
        p.flags & PF_X and p.vaddr <= elf.entry < p.vaddr + p.filesz for p in loads
    ), "entry is not in an executable segment"


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) not installed")
def test_readelf_sees_xen_notes(guest):
    _name, path, _elf = guest
    out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True, check=True)
    assert ".note.Xen" in out.stdout
    assert out.stdout.count("Xen ") >= 7


def _section_headers(data: bytes) -> list[tuple[str, int, bytes]]:
    """(name, type, contents) of every section, read independently of the loader."""
    shoff = struct.unpack_from("<Q", data, 40)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 58)
    raw = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    st = raw[shstrndx]
    strtab = data[st[4] : st[4] + st[5]]
    out = []
    for sh in raw:
        name = strtab[sh[0] :].split(b"\0", 1)[0].decode()
        out.append((name, sh[1], data[sh[4] : sh[4] + sh[5]] if sh[1] != 8 else b""))
    return out


def test_variant_elf_shnote_has_notes_only_in_a_sht_note_section():
    data = guest_build.build_guest("elf_shnote").read_bytes()
    elf = parse_elf(data)
    assert not any(p.type == PT_NOTE for p in elf.phdrs)
    (notes,) = [c for name, t, c in _section_headers(data) if name == ".note.Xen" and t == 7]
    found = {t: d for owner, t, d in _parse_notes(notes) if owner == b"Xen"}
    assert found[XEN_ELFNOTE_LOADER].startswith(b"generic")
    assert _u64(found[XEN_ELFNOTE_HYPERCALL_PAGE]) == VIRT_BASE + 0x101000


def test_variant_elf_xen_guest_has_only_the_legacy_string():
    data = guest_build.build_guest("elf_xen_guest").read_bytes()
    elf = parse_elf(data)
    assert not any(p.type == PT_NOTE for p in elf.phdrs)
    sections = _section_headers(data)
    assert not [name for name, t, c in sections if t == 7 and any(o == b"Xen" for o, _t, _d in _parse_notes(c))]
    (info,) = [c for name, _t, c in sections if name == "__xen_guest"]
    pairs = dict(kv.split("=", 1) for kv in info.rstrip(b"\0").decode().split(","))
    assert pairs["LOADER"] == "generic" and pairs["XEN_VER"] == "xen-3.0"
    assert int(pairs["VIRT_BASE"], 0) == VIRT_BASE == int(pairs["ELF_PADDR_OFFSET"], 0)
    assert int(pairs["HYPERCALL_PAGE"], 0) == 0x101
    loads = [p for p in elf.phdrs if p.type == PT_LOAD]
    assert all(p.paddr == p.vaddr for p in loads)   # placed at p_paddr - ELF_PADDR_OFFSET


def test_variant_elf_paddr_offset_is_linked_above_its_placement():
    elf = parse_elf(guest_build.build_guest("elf_paddr_offset").read_bytes())
    offset = guest_build.PADDR_OFFSET_VARIANT
    assert _u64(xen_notes(elf)[XEN_ELFNOTE_PADDR_OFFSET]) == offset
    loads = [p for p in elf.phdrs if p.type == PT_LOAD]
    assert all(p.vaddr == p.paddr - offset + VIRT_BASE for p in loads)
    assert min(p.paddr for p in loads) == offset + 0x100000


def test_build_is_cached():
    first = guest_build.build_guest("hello")
    mtime = first.stat().st_mtime_ns
    again = guest_build.build_guest("hello")
    assert again == first
    assert again.stat().st_mtime_ns == mtime


def test_unknown_guest_is_a_clear_error():
    with pytest.raises(guest_build.GuestBuildError, match="Unknown test kernel"):
        guest_build.build_guest("no_such_kernel")
