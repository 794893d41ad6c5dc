"""Take the vmlinux out of a bzImage.

A bzImage is real-mode setup code, a 32/64-bit decompressor stub and, inside it,
the compressed (stripped) ELF vmlinux. The x86 boot protocol's setup header says
where that payload is (Documentation/arch/x86/boot.rst):

* 0x1f1 u8  ``setup_sects``: setup code is (setup_sects or 4 if 0) + 1 sectors of 512 bytes;
* 0x202     ``"HdrS"``: the header is present;
* 0x206 u16 boot protocol version; the payload fields exist from 2.08 on;
* 0x248 u32 ``payload_offset``: from the end of the setup code;
* 0x24c u32 ``payload_length``.

This is the same route Xen's bzImage loader and Linux's extract-vmlinux take.
"""

from __future__ import annotations

import struct

from hospes.pv.image.decompress import SUPPORTED_NAMES, decompress, detect_compression
from hospes.pv.image.elf import is_elf
from hospes.pv.image.errors import ImageError

BZIMAGE_MAGIC = b"HdrS"
_MAGIC_AT = 0x202
_SETUP_SECTS_AT = 0x1F1
_VERSION_AT = 0x206
_PAYLOAD_AT = 0x248
_HEADER_END = 0x250
_MIN_VERSION = 0x0208
_SECTOR = 512


def is_bzimage(data: bytes | memoryview) -> bool:
    return bytes(data[_MAGIC_AT : _MAGIC_AT + 4]) == BZIMAGE_MAGIC


def bzimage_payload(data: bytes | memoryview, where: str) -> memoryview:
    """The (still compressed) payload of a bzImage, as a view into ``data``."""
    mv = memoryview(data)
    if len(mv) < _HEADER_END:
        raise ImageError(
            f"Kernel image {where} is a truncated bzImage: its setup header ends at byte "
            f"{_HEADER_END:#x} but the file has {len(mv)} bytes; download or copy the kernel again."
        )
    (version,) = struct.unpack_from("<H", mv, _VERSION_AT)
    if version < _MIN_VERSION:
        raise ImageError(
            f"Kernel image {where} is a bzImage with boot protocol {version >> 8}.{version & 0xff:02d}, "
            f"which does not say where its payload is (needs 2.08, Linux 2.6.26 or later); "
            f"use a newer kernel or its vmlinux."
        )
    setup_sects = mv[_SETUP_SECTS_AT] or 4
    offset, length = struct.unpack_from("<II", mv, _PAYLOAD_AT)
    start = (setup_sects + 1) * _SECTOR + offset
    if length == 0 or start + length > len(mv):
        raise ImageError(
            f"Kernel image {where} is a bzImage whose payload (bytes {start:#x}..{start + length:#x}) "
            f"is empty or runs past the end of the {len(mv):#x}-byte file; the file is truncated or "
            f"damaged: download or copy the kernel again."
        )
    return mv[start : start + length]


def extract_vmlinux(data: bytes | memoryview, where: str) -> tuple[str, bytes | memoryview]:
    """Return (description for messages, ELF bytes) from a bzImage.

    The payload is decompressed by its magic; an uncompressed payload
    (CONFIG_KERNEL_UNCOMPRESSED) is an ELF already.
    """
    payload = bzimage_payload(data, where)
    if is_elf(payload):
        return f"{where} (bzImage payload)", payload
    fmt = detect_compression(payload)
    if fmt is None:
        raise ImageError(
            f"Kernel image {where} is a bzImage without a payload Hospes recognises (it starts with "
            f"{bytes(payload[:8]).hex(' ')}); Hospes reads payloads compressed with {SUPPORTED_NAMES}: "
            f"use such a kernel or pass its uncompressed vmlinux."
        )
    name, elf = decompress(payload, f"{where} (bzImage payload)")
    return f"{where} ({name} payload of the bzImage)", elf
