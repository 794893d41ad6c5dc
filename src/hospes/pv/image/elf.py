"""A small ELF64 reader: just what loading an x86-64 vmlinux needs.

Layouts and numbers come from the System V gABI / ``elf.h``. Every offset read from
the file is bounds-checked before use, so a truncated or damaged kernel produces an
ImageError that says so instead of an IndexError or a silently short segment.
Segment bytes are handed out as ``memoryview`` slices: no copies until the caller
decides to keep them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from hospes.pv.image.errors import ImageError

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
EM_X86_64 = 62
PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4
SHT_NOTE, SHT_NOBITS = 7, 8
SHN_UNDEF = 0

# e_ident[16], e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags,
# e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
# p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
_PHDR = struct.Struct("<IIQQQQQQ")
# sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize
_SHDR = struct.Struct("<IIQQQQIIQQ")
# n_namesz, n_descsz, n_type
_NHDR = struct.Struct("<III")

_MACHINE_NAMES = {
    2: "SPARC",
    3: "i386",
    8: "MIPS",
    20: "PowerPC",
    21: "PowerPC64",
    22: "IBM S/390",
    40: "ARM",
    43: "SPARC V9",
    50: "IA-64",
    62: "x86-64",
    183: "AArch64",
    243: "RISC-V",
    258: "LoongArch",
}


def machine_name(e_machine: int) -> str:
    """A human name for an ELF e_machine value, for error messages."""
    return _MACHINE_NAMES.get(e_machine, f"machine type {e_machine}")


def is_elf(data: bytes | memoryview) -> bool:
    return bytes(data[:4]) == ELF_MAGIC


@dataclass(frozen=True)
class ProgramHeader:
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int


@dataclass(frozen=True)
class SectionHeader:
    name: str
    type: int
    offset: int
    size: int


@dataclass(frozen=True)
class ElfNote:
    owner: str
    type: int
    desc: bytes


@dataclass(frozen=True)
class ElfFile:
    """A parsed ELF64 little-endian x86-64 file; ``data`` is the whole file."""

    where: str
    data: memoryview
    entry: int
    program_headers: tuple[ProgramHeader, ...]
    shoff: int = 0
    shnum: int = 0
    shentsize: int = 0
    shstrndx: int = 0

    def load_segments(self) -> tuple[ProgramHeader, ...]:
        """PT_LOAD headers that occupy memory, in file order."""
        return tuple(ph for ph in self.program_headers if ph.type == PT_LOAD and ph.memsz > 0)

    def file_bytes(self, ph: ProgramHeader) -> memoryview:
        """The p_filesz bytes of a segment (bounds were checked by parse_elf)."""
        return self.data[ph.offset : ph.offset + ph.filesz]

    def notes(self, owner: str) -> Iterator[ElfNote]:
        """Notes with the given owner name from every PT_NOTE segment, in file order.

        A PT_NOTE with p_offset 0 is skipped: some binutils versions emit such
        bogus headers, and Xen's libelf skips them too.
        """
        for ph in self.program_headers:
            if ph.type == PT_NOTE and ph.offset != 0:
                for note in _parse_notes(self.file_bytes(ph), ph.offset, self.where):
                    if note.owner == owner:
                        yield note


    def section_headers(self) -> tuple[SectionHeader, ...]:
        """The section headers, with names (none when the file has no table).

        Read only when a loader falls back to sections (libelf does so only
        when no note segment holds Xen notes); a table or a name that lies
        outside the file is an ImageError, as it marks the file broken for libelf.
        """
        if self.shoff == 0 or self.shnum == 0:
            return ()
        if self.shentsize != _SHDR.size:
            raise ImageError(
                f"Kernel image {self.where} has a corrupt ELF header: section header size is "
                f"{self.shentsize} bytes, ELF64 needs {_SHDR.size}; download or copy the kernel again."
            )
        end = self.shoff + self.shnum * _SHDR.size
        if end > len(self.data):
            raise _truncated(self.where, f"its {self.shnum} section headers", end, len(self.data))
        raw = [_SHDR.unpack_from(self.data, self.shoff + i * _SHDR.size) for i in range(self.shnum)]
        strtab = b""
        if 0 < self.shstrndx < self.shnum:
            _n, st_type, _f, _a, st_off, st_size, *_ = raw[self.shstrndx]
            if st_type != SHT_NOBITS:
                if st_off + st_size > len(self.data):
                    raise _truncated(self.where, "its section name table", st_off + st_size, len(self.data))
                strtab = bytes(self.data[st_off : st_off + st_size])
        headers = []
        for sh_name, sh_type, _flags, _addr, sh_offset, sh_size, *_ in raw:
            name = strtab[sh_name:].split(b"\0", 1)[0].decode("ascii", "replace") if sh_name < len(strtab) else ""
            headers.append(SectionHeader(name, sh_type, sh_offset, sh_size))
        return tuple(headers)

    def section_bytes(self, sh: SectionHeader) -> memoryview:
        """A section's bytes; one that lies outside the file is an ImageError."""
        if sh.type == SHT_NOBITS:
            return self.data[0:0]
        if sh.offset + sh.size > len(self.data):
            raise _truncated(self.where, f"section {sh.name or '(unnamed)'} (offset {sh.offset:#x}, "
                             f"size {sh.size:#x})", sh.offset + sh.size, len(self.data))
        return self.data[sh.offset : sh.offset + sh.size]

    def section_notes(self, owner: str) -> Iterator[ElfNote]:
        """Notes with the given owner from every SHT_NOTE section, in section order
        (index 0, the null section, excepted)."""
        for sh in self.section_headers()[1:]:
            if sh.type == SHT_NOTE:
                for note in _parse_notes(self.section_bytes(sh), sh.offset, self.where):
                    if note.owner == owner:
                        yield note

    def section_named(self, name: str) -> SectionHeader | None:
        """The first section called ``name`` (libelf's elf_shdr_by_name)."""
        for sh in self.section_headers():
            if sh.name == name:
                return sh
        return None


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _parse_notes(seg: memoryview, file_offset: int, where: str) -> Iterator[ElfNote]:
    """Walk namesz/descsz/type records; name and desc are each padded to 4 bytes.

    Descriptors are returned exactly ``descsz`` long: string notes need not be
    NUL-terminated (Linux's XEN_ELFNOTE_FEATURES is not).
    """
    pos = 0
    while len(seg) - pos >= _NHDR.size:
        namesz, descsz, ntype = _NHDR.unpack_from(seg, pos)
        name_at = pos + _NHDR.size
        desc_at = name_at + _align4(namesz)
        end = desc_at + _align4(descsz)
        if desc_at + descsz > len(seg):
            raise ImageError(
                f"Kernel image {where} has a corrupt ELF note at file offset {file_offset + pos:#x}: "
                f"its name ({namesz} bytes) and descriptor ({descsz} bytes) run past the end of "
                f"its note segment or section; the file is damaged: download or copy the kernel again."
            )
        owner = bytes(seg[name_at : name_at + namesz]).split(b"\0", 1)[0].decode("ascii", "replace")
        yield ElfNote(owner, ntype, bytes(seg[desc_at : desc_at + descsz]))
        pos = end


def _check_ident(data: memoryview, where: str) -> None:
    """Reject anything but ELF64 little-endian x86-64, naming what it is instead."""
    ei_class, ei_data = data[4], data[5]
    if ei_data not in (ELFDATA2LSB, ELFDATA2MSB) or ei_class not in (ELFCLASS32, ELFCLASS64):
        raise ImageError(
            f"Kernel image {where} has a corrupt ELF identification (class {ei_class}, data "
            f"encoding {ei_data}); the file is damaged: download or copy the kernel again."
        )
    order = "<" if ei_data == ELFDATA2LSB else ">"
    (e_machine,) = struct.unpack_from(order + "H", data, 18)
    if ei_class == ELFCLASS32:
        raise ImageError(
            f"Kernel image {where} is a 32-bit ELF for {machine_name(e_machine)}, Hospes runs "
            f"64-bit x86-64 kernels; use an amd64 (x86-64) kernel."
        )
    if ei_data == ELFDATA2MSB:
        raise ImageError(
            f"Kernel image {where} is a big-endian ELF for {machine_name(e_machine)}, Hospes runs "
            f"x86-64 kernels; use an amd64 (x86-64) kernel."
        )
    if e_machine != EM_X86_64:
        raise ImageError(
            f"Kernel image {where} is an ELF for {machine_name(e_machine)}, Hospes runs x86-64 "
            f"kernels; use an amd64 (x86-64) kernel."
        )


def _truncated(where: str, what: str, end: int, size: int) -> ImageError:
    return ImageError(
        f"Kernel image {where} is truncated: {what} ends at byte {end:#x} but the file has only "
        f"{size:#x} bytes; download or copy the kernel again."
    )


def parse_elf(data: bytes | memoryview, where: str) -> ElfFile:
    """Parse and bounds-check the header and program headers of an x86-64 ELF64 file.

    ``where`` names the file in error messages.
    """
    mv = memoryview(data)
    if not is_elf(mv):
        raise ImageError(f"Kernel image {where} is not an ELF file; use a vmlinux or a bzImage.")
    if len(mv) >= 20:  # enough to say which class, byte order and machine it is
        _check_ident(mv, where)
    if len(mv) < _EHDR.size:
        raise _truncated(where, "its ELF header", _EHDR.size, len(mv))
    fields = _EHDR.unpack_from(mv, 0)
    e_entry, e_phoff, e_phentsize, e_phnum = fields[4], fields[5], fields[9], fields[10]
    e_shoff, e_shentsize, e_shnum, e_shstrndx = fields[6], fields[11], fields[12], fields[13]
    if e_phnum == 0:
        raise ImageError(
            f"Kernel image {where} has no program headers, so nothing to load; it is not a "
            f"linked kernel: use the vmlinux or bzImage the kernel build produced."
        )
    if e_phentsize != _PHDR.size:
        raise ImageError(
            f"Kernel image {where} has a corrupt ELF header: program header size is "
            f"{e_phentsize} bytes, ELF64 needs {_PHDR.size}; download or copy the kernel again."
        )
    ph_end = e_phoff + e_phnum * _PHDR.size
    if ph_end > len(mv):
        raise _truncated(where, f"its {e_phnum} program headers", ph_end, len(mv))
    headers = tuple(ProgramHeader(*_PHDR.unpack_from(mv, e_phoff + i * _PHDR.size)) for i in range(e_phnum))
    for index, ph in enumerate(headers):
        if ph.type not in (PT_LOAD, PT_NOTE):
            continue
        if ph.offset + ph.filesz > len(mv):
            raise _truncated(where, f"segment {index} (p_offset {ph.offset:#x}, p_filesz {ph.filesz:#x})",
                             ph.offset + ph.filesz, len(mv))
        if ph.type == PT_LOAD and ph.filesz > ph.memsz:
            raise ImageError(
                f"Kernel image {where} is corrupt: segment {index} has p_filesz {ph.filesz:#x} larger "
                f"than p_memsz {ph.memsz:#x}; download or copy the kernel again."
            )
    return ElfFile(where=where, data=mv, entry=e_entry, program_headers=headers, shoff=e_shoff,
                   shnum=e_shnum, shentsize=e_shentsize, shstrndx=e_shstrndx)
