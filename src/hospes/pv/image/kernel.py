"""Load a Xen PV64 kernel image: the one entry point the domain builder calls.

The rules are Xen's libelf rules for PV guests, restated:

* the image must carry Xen metadata, looked for where libelf looks, in order:
  notes (owner "Xen") in PT_NOTE segments; if those hold none, notes in SHT_NOTE
  sections; if none there either, the legacy ``__xen_guest`` section string;
* GUEST_OS starts with "linux" or LOADER starts with "generic";
* XEN_VERSION starts with "xen-3.0";
* segments are placed by **p_paddr**: ``virt_offset = VIRT_BASE - PADDR_OFFSET`` and a
  segment lands at guest-physical ``p_paddr`` and virtual ``p_paddr + virt_offset``
  (p_vaddr is not used: Linux's per-cpu segment is linked at 0);
* ``VIRT_BASE <= virt_kstart <= ENTRY <= virt_kend``.

A hypercall page, if the kernel names one, must lie inside the image, because the
builder writes 4 KiB of stubs there. Zero-filling ``memsz - filesz`` is the builder's
job; ``Segment`` keeps both sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hospes.pv.image.bzimage import extract_vmlinux, is_bzimage
from hospes.pv.image.decompress import SUPPORTED_NAMES, decompress, detect_compression
from hospes.pv.image.elf import ElfFile, is_elf, parse_elf
from hospes.pv.image.errors import ImageError
from hospes.pv.image.xen_notes import XEN_NOTE_OWNER, XenNotes, parse_xen_guest, parse_xen_notes

PAGE_SIZE = 4096
_ADDRESS_LIMIT = 1 << 64


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD segment: ``data`` is its file bytes, ``memsz`` its size in memory."""

    paddr: int
    vaddr: int
    data: bytes
    memsz: int
    flags: int


@dataclass(frozen=True)
class PvKernel:
    """A kernel ready for the PV domain builder (all addresses in bytes)."""

    path: Path
    notes: XenNotes
    segments: tuple[Segment, ...]
    virt_base: int
    virt_offset: int  # virt_base - paddr_offset
    pstart: int  # min p_paddr
    pend: int  # max p_paddr + memsz
    virt_kstart: int  # pstart + virt_offset
    virt_kend: int  # pend + virt_offset
    entry: int


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(
            f"Cannot read kernel image {path}: {exc.strerror or exc}; check the path and its permissions."
        ) from exc
    if not data:
        raise ImageError(f"Kernel image {path} is empty; download or copy the kernel again.")
    return data


def _vmlinux(data: bytes, path: Path) -> tuple[str, bytes | memoryview]:
    """Unwrap a bzImage or a compressed file to ELF bytes; return (description, bytes)."""
    where = str(path)
    if is_elf(data):
        return where, data
    if is_bzimage(data):
        where, elf = extract_vmlinux(data, where)
    elif detect_compression(data) is not None:
        name, elf = decompress(data, where)
        where = f"{where} (after {name} decompression)"
    else:
        raise ImageError(
            f"Kernel image {path} is neither an ELF vmlinux nor a bzImage nor a file compressed with "
            f"{SUPPORTED_NAMES} (it starts with {data[:8].hex(' ')}); pass the kernel's vmlinuz or vmlinux."
        )
    if not is_elf(elf):
        raise ImageError(
            f"Kernel image {where} decompresses to something that is not an ELF file (it starts with "
            f"{bytes(elf[:8]).hex(' ')}); pass the kernel's vmlinuz or vmlinux."
        )
    return where, elf


def _check_compatible(notes: XenNotes, where: str) -> None:
    if not (notes.guest_os.startswith("linux") or notes.loader.startswith("generic")):
        raise ImageError(
            f"Kernel image {where} is not a kernel Hospes can load: its Xen notes say GUEST_OS "
            f"{notes.guest_os!r} and LOADER {notes.loader!r}, but Hospes (like Xen) needs GUEST_OS "
            f"starting with 'linux' or LOADER starting with 'generic'; use a Linux kernel built with "
            f"CONFIG_XEN_PV=y."
        )
    if not notes.xen_version.startswith("xen-3.0"):
        raise ImageError(
            f"Kernel image {where} is built for Xen interface {notes.xen_version!r}, Hospes (like Xen) "
            f"only loads kernels whose XEN_VERSION note starts with 'xen-3.0'; use a Linux kernel "
            f"built with CONFIG_XEN_PV=y."
        )


def _segments(elf: ElfFile) -> tuple[Segment, ...]:
    segments = tuple(
        Segment(paddr=ph.paddr, vaddr=ph.vaddr, data=bytes(elf.file_bytes(ph)), memsz=ph.memsz, flags=ph.flags)
        for ph in elf.load_segments()
    )
    if not segments:
        raise ImageError(
            f"Kernel image {elf.where} has no loadable (PT_LOAD) segments; it is not a linked kernel: "
            f"use the vmlinux or bzImage the kernel build produced."
        )
    return segments


def _check_layout(kernel: PvKernel, where: str) -> None:
    """libelf's bounds: VIRT_BASE <= virt_kstart <= ENTRY <= virt_kend < 2**64."""
    image = f"{kernel.virt_kstart:#x}..{kernel.virt_kend:#x}"
    if kernel.virt_kstart < 0 or kernel.virt_kend > _ADDRESS_LIMIT:
        raise ImageError(
            f"Kernel image {where} does not fit the address space: with VIRT_BASE "
            f"{kernel.virt_base:#x} and PADDR_OFFSET {kernel.notes.paddr_offset:#x} its image would "
            f"span {image}; the Xen notes are wrong: use a correctly built kernel."
        )
    if kernel.virt_base > kernel.virt_kstart:
        raise ImageError(
            f"Kernel image {where} starts at {kernel.virt_kstart:#x}, below its VIRT_BASE "
            f"{kernel.virt_base:#x}; its Xen notes and program headers disagree: use a correctly "
            f"built kernel."
        )
    if not kernel.virt_kstart <= kernel.entry <= kernel.virt_kend:
        raise ImageError(
            f"Kernel image {where} has its entry point {kernel.entry:#x} outside its image {image}; "
            f"the kernel is damaged or its Xen notes are wrong: use a correctly built kernel."
        )
    page = kernel.notes.hypercall_page
    if page is not None and not kernel.virt_kstart <= page <= kernel.virt_kend - PAGE_SIZE:
        raise ImageError(
            f"Kernel image {where} names a hypercall page at {page:#x}, which is not inside its image "
            f"{image}; the kernel is damaged or its Xen notes are wrong: use a correctly built kernel."
        )


def find_xen_notes(elf: ElfFile) -> XenNotes | None:
    """The kernel's Xen metadata from the first place libelf finds any (module docstring)."""
    for found in (elf.notes(XEN_NOTE_OWNER), elf.section_notes(XEN_NOTE_OWNER)):
        notes = parse_xen_notes(found, default_entry=elf.entry, where=elf.where)
        if notes is not None:
            return notes
    legacy = elf.section_named("__xen_guest")
    if legacy is None:
        return None
    return parse_xen_guest(elf.section_bytes(legacy), default_entry=elf.entry, where=elf.where)


def load_pv_kernel(path: Path) -> PvKernel:
    """Read a vmlinux, bzImage or compressed vmlinux and check it is a bootable Xen PV64 kernel.

    Raises ImageError, whose message names the file and the fix, for anything that
    would not boot.
    """
    path = Path(path)
    where, raw = _vmlinux(_read(path), path)
    elf = parse_elf(raw, where)
    notes = find_xen_notes(elf)
    if notes is None:
        raise ImageError(
            f"Kernel image {where} is not a Xen PV kernel: it has no Xen ELF notes (in a note segment "
            f"or section) and no __xen_guest section; build it with "
            f"CONFIG_XEN_PV=y (Debian's linux-image-cloud-amd64 and linux-image-amd64 have it)."
        )
    _check_compatible(notes, where)
    segments = _segments(elf)
    virt_offset = notes.virt_base - notes.paddr_offset
    pstart = min(s.paddr for s in segments)
    pend = max(s.paddr + s.memsz for s in segments)
    kernel = PvKernel(
        path=path,
        notes=notes,
        segments=segments,
        virt_base=notes.virt_base,
        virt_offset=virt_offset,
        pstart=pstart,
        pend=pend,
        virt_kstart=pstart + virt_offset,
        virt_kend=pend + virt_offset,
        entry=notes.entry,
    )
    _check_layout(kernel, where)
    return kernel
