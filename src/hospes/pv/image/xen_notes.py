"""Xen ELF notes: what a PV kernel tells its loader about itself.

Note numbers are those of Xen's public ``elfnote.h``. Numeric descriptors are 4 or
8 bytes (the size is in ``descsz``); string descriptors are read by ``descsz`` and
cut at the first NUL if there is one, because Linux does not NUL-terminate
XEN_ELFNOTE_FEATURES. When a note type repeats, the last one wins. Defaults follow
Xen's libelf for images that carry notes: VIRT_BASE 0, PADDR_OFFSET 0, ENTRY =
the ELF header's e_entry.

Kernels older than the notes carry the same facts as one string in a section
named ``__xen_guest`` (:func:`parse_xen_guest`), read as libelf reads it:
``NAME=VALUE`` pairs separated by commas, names cut at 31 characters and values
at 127, numbers in C's ``strtoull(value, NULL, 0)`` syntax, HYPERCALL_PAGE a
page number relative to VIRT_BASE, and PADDR_OFFSET defaulting to VIRT_BASE
(old kernels were linked with p_paddr = p_vaddr).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum

from hospes.pv.image.elf import ElfNote
from hospes.pv.image.errors import ImageError

XEN_NOTE_OWNER = "Xen"


class XenElfNote(IntEnum):
    """XEN_ELFNOTE_* types (xen/include/public/elfnote.h)."""

    INFO = 0
    ENTRY = 1
    HYPERCALL_PAGE = 2
    VIRT_BASE = 3
    PADDR_OFFSET = 4
    XEN_VERSION = 5
    GUEST_OS = 6
    GUEST_VERSION = 7
    LOADER = 8
    PAE_MODE = 9
    FEATURES = 10
    BSD_SYMTAB = 11
    HV_START_LOW = 12
    L1_MFN_VALID = 13
    SUSPEND_CANCEL = 14
    INIT_P2M = 15
    MOD_START_PFN = 16
    SUPPORTED_FEATURES = 17
    PHYS32_ENTRY = 18
    PHYS32_RELOC = 19
    CRASH_INFO = 0x1000001
    CRASH_REGS = 0x1000002
    DUMPCORE_NONE = 0x2000000
    DUMPCORE_HEADER = 0x2000001
    DUMPCORE_XEN_VERSION = 0x2000002
    DUMPCORE_FORMAT_VERSION = 0x2000003


_NUMERIC_FORMATS = {4: "<I", 8: "<Q"}


@dataclass(frozen=True)
class XenNotes:
    """The Xen notes a PV64 loader acts on (or reports)."""

    guest_os: str
    xen_version: str
    loader: str
    virt_base: int
    paddr_offset: int
    entry: int
    hypercall_page: int | None
    init_p2m: int | None
    features: str
    supported_features: int
    mod_start_pfn: bool
    hv_start_low: int | None
    l1_mfn_valid: tuple[int, int] | None  # (mask, value)
    suspend_cancel: bool

    @property
    def required_features(self) -> frozenset[str]:
        """Feature names marked '!' in FEATURES: the kernel cannot run without them."""
        return frozenset(f[1:] for f in self.features.split("|") if f.startswith("!"))

    @property
    def optional_features(self) -> frozenset[str]:
        """Feature names listed in FEATURES without '!'."""
        return frozenset(f for f in self.features.split("|") if f and not f.startswith("!"))


def _string(desc: bytes) -> str:
    return desc.split(b"\0", 1)[0].decode("ascii", "replace")


def _number(note: ElfNote, where: str) -> int:
    fmt = _NUMERIC_FORMATS.get(len(note.desc))
    if fmt is None:
        raise ImageError(
            f"Kernel image {where} has a malformed Xen ELF note {_name(note.type)}: its descriptor "
            f"is {len(note.desc)} bytes where 4 or 8 are expected; the kernel is damaged or was "
            f"built by a broken toolchain: use another kernel build."
        )
    (value,) = struct.unpack(fmt, note.desc)
    return int(value)


def _name(note_type: int) -> str:
    try:
        return XenElfNote(note_type).name
    except ValueError:
        return f"type {note_type}"


def _l1_mfn_valid(desc: bytes) -> tuple[int, int] | None:
    """The first (mask, value) pair; entries are maddr_t-sized (8 bytes on x86-64)."""
    if len(desc) >= 16:
        mask, value = struct.unpack_from("<QQ", desc)
        return mask, value
    if len(desc) == 8:
        mask, value = struct.unpack("<II", desc)
        return mask, value
    return None  # informational only; not worth refusing a kernel over


def _paddr_offset_without_virt_base(where: str) -> ImageError:
    return ImageError(
        f"Kernel image {where} sets PADDR_OFFSET but not VIRT_BASE, which Xen's loader refuses; "
        f"the kernel's Xen metadata is incomplete: use a correctly built kernel."
    )


def parse_xen_notes(notes: Iterable[ElfNote], *, default_entry: int, where: str) -> XenNotes | None:
    """Collect the notes owned by "Xen"; return None if there is none.

    ``default_entry`` (the ELF e_entry) is used when there is no ENTRY note.
    """
    by_type: dict[int, ElfNote] = {}
    for note in notes:
        if note.owner == XEN_NOTE_OWNER:
            by_type[note.type] = note
    if not by_type:
        return None

    def text(t: XenElfNote) -> str:
        note = by_type.get(t)
        return _string(note.desc) if note else ""

    def number(t: XenElfNote) -> int | None:
        note = by_type.get(t)
        return _number(note, where) if note else None

    def number_or(t: XenElfNote, default: int) -> int:
        value = number(t)
        return default if value is None else value

    l1 = by_type.get(XenElfNote.L1_MFN_VALID)
    if XenElfNote.PADDR_OFFSET in by_type and XenElfNote.VIRT_BASE not in by_type:
        raise _paddr_offset_without_virt_base(where)
    return XenNotes(
        guest_os=text(XenElfNote.GUEST_OS),
        xen_version=text(XenElfNote.XEN_VERSION),
        loader=text(XenElfNote.LOADER),
        virt_base=number_or(XenElfNote.VIRT_BASE, 0),
        paddr_offset=number_or(XenElfNote.PADDR_OFFSET, 0),
        entry=number_or(XenElfNote.ENTRY, default_entry),
        hypercall_page=number(XenElfNote.HYPERCALL_PAGE),
        init_p2m=number(XenElfNote.INIT_P2M),
        features=text(XenElfNote.FEATURES),
        supported_features=number_or(XenElfNote.SUPPORTED_FEATURES, 0),
        mod_start_pfn=bool(number_or(XenElfNote.MOD_START_PFN, 0)),
        hv_start_low=number(XenElfNote.HV_START_LOW),
        l1_mfn_valid=_l1_mfn_valid(l1.desc) if l1 else None,
        suspend_cancel=bool(number_or(XenElfNote.SUSPEND_CANCEL, 0)),
    )


_U64 = (1 << 64) - 1
_GUEST_INFO_NAME_MAX = 31
_GUEST_INFO_VALUE_MAX = 127


def strtoull(text: str) -> int:
    """C's ``strtoull(text, NULL, 0)``: leading blanks, a sign, 0x/0 prefixes, digits
    up to the first that does not fit; nothing parsed is 0, overflow ULLONG_MAX."""
    i, n = 0, len(text)
    while i < n and text[i] in " \t\n\v\f\r":
        i += 1
    negative = False
    if i < n and text[i] in "+-":
        negative = text[i] == "-"
        i += 1
    base = 10
    if text[i:i + 2].lower() == "0x" and i + 2 < n and text[i + 2] in "0123456789abcdefABCDEF":
        base, i = 16, i + 2
    elif text[i:i + 1] == "0":
        base = 8
    value = 0
    while i < n:
        digit = "0123456789abcdef".find(text[i].lower())
        if digit < 0 or digit >= base:
            break
        value = value * base + digit
        i += 1
    if value > _U64:
        return _U64
    return (-value) & _U64 if negative else value


def _guest_info_pairs(info: bytes) -> Iterator[tuple[str, str]]:
    """libelf's walk over the __xen_guest string: (name, value) pairs."""
    h, n = 0, len(info)
    while h < n:
        name, value = bytearray(), bytearray()
        while len(name) < _GUEST_INFO_NAME_MAX and h < n:
            c = info[h]
            if c == 0x2C:            # ','
                h += 1
                break
            if c == 0x3D:            # '='
                h += 1
                while len(value) < _GUEST_INFO_VALUE_MAX and h < n:
                    c = info[h]
                    if c == 0x2C:
                        h += 1
                        break
                    value.append(c)
                    h += 1
                break
            name.append(c)
            h += 1
        yield name.decode("ascii", "replace"), value.decode("ascii", "replace")


def parse_xen_guest(info: bytes, *, default_entry: int, where: str) -> XenNotes:
    """The legacy ``__xen_guest`` string (up to its first NUL) as :class:`XenNotes`."""
    info = bytes(info).split(b"\0", 1)[0]
    strings: dict[str, str] = {}
    numbers: dict[str, int] = {}
    for name, value in _guest_info_pairs(info):
        if name in ("LOADER", "GUEST_OS", "GUEST_VER", "XEN_VER", "FEATURES"):
            strings[name] = value
        elif name in ("VIRT_BASE", "VIRT_ENTRY", "ELF_PADDR_OFFSET", "HYPERCALL_PAGE"):
            numbers[name] = strtoull(value)
    if "ELF_PADDR_OFFSET" in numbers and "VIRT_BASE" not in numbers:
        raise _paddr_offset_without_virt_base(where)
    virt_base = numbers.get("VIRT_BASE", 0)
    hypercall_page = numbers.get("HYPERCALL_PAGE")
    if hypercall_page is not None:
        hypercall_page = ((hypercall_page << 12) + virt_base) & _U64
    return XenNotes(
        guest_os=strings.get("GUEST_OS", ""),
        xen_version=strings.get("XEN_VER", ""),
        loader=strings.get("LOADER", ""),
        virt_base=virt_base,
        paddr_offset=numbers.get("ELF_PADDR_OFFSET", virt_base),
        entry=numbers.get("VIRT_ENTRY", default_entry),
        hypercall_page=hypercall_page,
        init_p2m=None,
        features=strings.get("FEATURES", ""),
        supported_features=0,
        mod_start_pfn=False,
        hv_start_low=None,
        l1_mfn_valid=None,
        suspend_cancel=False,
    )
