"""Xen ELF notes: what a PV kernel tells its loader about itself.

Note numbers are those of Xen's public ``elfnote.h``. Numeric descriptors are 4 or
8 bytes (the size is in ``descsz``); string descriptors are read by ``descsz`` and
cut at the first NUL if there is one, because Linux does not NUL-terminate
XEN_ELFNOTE_FEATURES. When a note type repeats, the last one wins. Defaults follow
Xen's libelf for images that carry notes: VIRT_BASE 0, PADDR_OFFSET 0, ENTRY =
the ELF header's e_entry.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
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
