"""Decompress a kernel payload, choosing the format by its magic bytes.

Linux can compress its bzImage payload with any of its CONFIG_KERNEL_* formats, and
people also hand us ``vmlinux.gz``-style files. Two facts shape this module:

* Linux's build appends a 4-byte little-endian "uncompressed size" after most
  compressed payloads, and files may carry padding. So every decoder stops at the
  end of its own stream and ignores what follows, instead of demanding that the
  stream fill the buffer.
* The LZ4 format Linux uses is the *legacy* framing (magic ``02 21 4c 18``): a
  sequence of u32-little-endian-length-prefixed LZ4 blocks, each decompressing to at
  most 8 MiB, with no end marker. The stream ends where a length stops looking like
  a block: zero, larger than the worst-case size of an 8 MiB block, running past
  the end of the buffer, or equal to the bytes produced so far while not decoding
  (that is the size trailer followed by padding).

Everything works on ``memoryview`` slices and hands whole buffers to the C
decoders; a Debian payload (~53 MB) decompresses in well under a second.

Output is bounded: no decoder produces more than ``MAX_DECOMPRESSED_BYTES`` (the
size a kernel file itself may have), so a decompression bomb (a few hundred KiB
of gzip that would inflate to gigabytes) is refused with a clear error instead
of filling the host's memory. zlib, xz/lzma, bzip2 and LZ4 frames stop at the
limit themselves (``max_length``); zstd is fed in small pieces (one piece
inflates to a few tens of MiB at most) and the legacy LZ4 blocks are 8 MiB each.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import lz4.block
import lz4.frame
import zstandard

from hospes.files import MAX_IMAGE_BYTES
from hospes.pv.image.errors import ImageError

Buffer = bytes | bytearray | memoryview

_U32 = struct.Struct("<I")

LZ4_LEGACY_MAGIC = 0x184C2102
"""First u32 of a legacy LZ4 stream; may also reappear between blocks."""

LZ4_LEGACY_CHUNK = 8 << 20
"""Uncompressed size of every legacy LZ4 block except the last."""

LZ4_LEGACY_MAX_BLOCK = LZ4_LEGACY_CHUNK + LZ4_LEGACY_CHUNK // 255 + 16
"""LZ4_compressBound(8 MiB): no real block is longer than this."""


MAX_DECOMPRESSED_BYTES = MAX_IMAGE_BYTES
"""The most a kernel may decompress to (Debian's vmlinux is ~53 MB)."""

ZSTD_PIECE = 1024
"""Input bytes handed to zstd at a time: a zstd block of 4 bytes may inflate to
128 KiB, so one piece makes at most ~32 MiB before the limit is checked."""


class _Corrupt(Exception):
    """A stream that cannot be decoded; the text says why."""


class _TooLarge(Exception):
    """A stream that decompresses to more than the limit."""


class _BoundedDecoder(Protocol):
    """What zlib, lzma, bz2 and lz4.frame decompressor objects share."""

    @property
    def eof(self) -> bool: ...

    def decompress(self, data: Buffer, max_length: int = -1, /) -> bytes: ...


def _single_stream(make: Callable[[], _BoundedDecoder]) -> Callable[[memoryview, int], bytes]:
    """Decode one stream, at most ``limit`` bytes of it, and ignore trailing bytes
    (size trailer, padding)."""

    def decode(data: memoryview, limit: int) -> bytes:
        decoder = make()
        out = decoder.decompress(data, limit + 1)
        if len(out) > limit:
            raise _TooLarge()
        if not decoder.eof:
            raise _Corrupt("the stream ends before its end marker (the data is truncated)")
        return out

    return decode


def _zstd(data: memoryview, limit: int) -> bytes:
    """One zstd frame, fed in pieces so that its output is checked against ``limit`` as it grows."""
    decoder = zstandard.ZstdDecompressor().decompressobj()
    out = bytearray()
    pos = 0
    while pos < len(data) and not decoder.eof:
        out += decoder.decompress(data[pos : pos + ZSTD_PIECE])
        pos += ZSTD_PIECE
        if len(out) > limit:
            raise _TooLarge()
    if not decoder.eof:
        raise _Corrupt("the stream ends before its end marker (the data is truncated)")
    return bytes(out)


def _lz4_legacy(data: memoryview, limit: int) -> bytes:
    """Decode Linux's legacy LZ4 framing (see the module docstring for the end rule)."""
    chunks: list[bytes] = []
    produced = 0
    pos = 4  # past the magic
    while len(data) - pos >= 4:
        (length,) = _U32.unpack_from(data, pos)
        if length == LZ4_LEGACY_MAGIC:  # concatenated streams
            pos += 4
            continue
        block_end = pos + 4 + length
        if length == 0 or length > LZ4_LEGACY_MAX_BLOCK or block_end > len(data):
            break
        try:
            chunk = lz4.block.decompress(data[pos + 4 : block_end], uncompressed_size=LZ4_LEGACY_CHUNK)
        except lz4.block.LZ4BlockError as exc:
            if chunks and length == produced:
                break  # the uncompressed-size trailer, followed by padding
            raise _Corrupt(f"block at byte {pos} does not decode: {exc}") from exc
        chunks.append(chunk)
        produced += len(chunk)
        if produced > limit:
            raise _TooLarge()
        pos = block_end
    if not chunks:
        raise _Corrupt("it holds no LZ4 block")
    return b"".join(chunks)


@dataclass(frozen=True)
class Compression:
    """A compressed format recognised by its magic; ``decode`` is None if we cannot read it."""

    name: str
    magic: bytes
    decode: Callable[[memoryview, int], bytes] | None


# Magic numbers as Linux's lib/decompress.c and Xen's bzImage loader know them.
FORMATS: tuple[Compression, ...] = (
    Compression("gzip", b"\x1f\x8b", _single_stream(lambda: zlib.decompressobj(wbits=16 + zlib.MAX_WBITS))),
    Compression("xz", b"\xfd7zXZ\x00", _single_stream(lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ))),
    Compression("lzma", b"\x5d\x00\x00", _single_stream(lambda: lzma.LZMADecompressor(format=lzma.FORMAT_ALONE))),
    Compression("bzip2", b"BZh", _single_stream(bz2.BZ2Decompressor)),
    Compression("zstd", b"\x28\xb5\x2f\xfd", _zstd),
    Compression("lz4", _U32.pack(LZ4_LEGACY_MAGIC), _lz4_legacy),
    Compression("lz4 (frame format)", b"\x04\x22\x4d\x18", _single_stream(lz4.frame.LZ4FrameDecompressor)),
    Compression("lzo", b"\x89LZO\x00\r\n\x1a\n", None),
)

SUPPORTED_NAMES = ", ".join(f.name for f in FORMATS if f.decode is not None)

# What the C decoders raise on bad input (bz2 raises OSError, lz4.frame RuntimeError).
_DECODER_ERRORS: tuple[type[BaseException], ...] = (
    _Corrupt,
    zlib.error,
    lzma.LZMAError,
    OSError,
    EOFError,
    ValueError,
    RuntimeError,
    zstandard.ZstdError,
    lz4.block.LZ4BlockError,
)


def detect_compression(data: Buffer) -> Compression | None:
    """Return the format whose magic starts ``data``, or None."""
    head = bytes(memoryview(data)[:16])
    for fmt in FORMATS:
        if head.startswith(fmt.magic):
            return fmt
    return None


def decompress(data: Buffer, where: str, limit: int | None = None) -> tuple[str, bytes]:
    """Decompress ``data`` (which ``where`` names in messages); return (format name, bytes).

    Raises ImageError if the format is unknown or unsupported, the stream is corrupt,
    or it decompresses to more than ``limit`` bytes (default MAX_DECOMPRESSED_BYTES).
    """
    if limit is None:
        limit = MAX_DECOMPRESSED_BYTES
    fmt = detect_compression(data)
    if fmt is None:
        raise ImageError(
            f"Kernel image {where} is not in a compressed format Hospes knows "
            f"(it starts with {bytes(memoryview(data)[:8]).hex(' ')}); "
            f"use an uncompressed vmlinux or one compressed with {SUPPORTED_NAMES}."
        )
    if fmt.decode is None:
        raise ImageError(
            f"Kernel image {where} is {fmt.name}-compressed, which Hospes cannot decompress; "
            f"decompress it yourself (e.g. with 'lzop -d') or rebuild the kernel with "
            f"another CONFIG_KERNEL_* compressor."
        )
    try:
        return fmt.name, fmt.decode(memoryview(data), limit)
    except _TooLarge:
        raise ImageError(
            f"Kernel image {where} decompresses ({fmt.name}) to more than {limit >> 20} MiB, more than "
            f"any kernel: the file is damaged or a decompression bomb; pass the kernel's vmlinuz."
        ) from None
    except _DECODER_ERRORS as exc:
        raise ImageError(
            f"Kernel image {where} has a corrupt {fmt.name} stream ({exc}); "
            f"the file is damaged: download or copy the kernel again."
        ) from exc
