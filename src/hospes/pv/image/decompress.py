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

from hospes.pv.image.errors import ImageError

Buffer = bytes | bytearray | memoryview

_U32 = struct.Struct("<I")

LZ4_LEGACY_MAGIC = 0x184C2102
"""First u32 of a legacy LZ4 stream; may also reappear between blocks."""

LZ4_LEGACY_CHUNK = 8 << 20
"""Uncompressed size of every legacy LZ4 block except the last."""

LZ4_LEGACY_MAX_BLOCK = LZ4_LEGACY_CHUNK + LZ4_LEGACY_CHUNK // 255 + 16
"""LZ4_compressBound(8 MiB): no real block is longer than this."""


class _Corrupt(Exception):
    """A stream that cannot be decoded; the text says why."""


class _StreamDecoder(Protocol):
    """What zlib, lzma, bz2, zstandard and lz4.frame decompressor objects share."""

    @property
    def eof(self) -> bool: ...

    def decompress(self, data: Buffer, /) -> bytes: ...


def _single_stream(make: Callable[[], _StreamDecoder]) -> Callable[[memoryview], bytes]:
    """Decode one stream and ignore trailing bytes (size trailer, padding)."""

    def decode(data: memoryview) -> bytes:
        decoder = make()
        out = decoder.decompress(data)
        if not decoder.eof:
            raise _Corrupt("the stream ends before its end marker (the data is truncated)")
        return out

    return decode


def _lz4_legacy(data: memoryview) -> bytes:
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
        pos = block_end
    if not chunks:
        raise _Corrupt("it holds no LZ4 block")
    return b"".join(chunks)


@dataclass(frozen=True)
class Compression:
    """A compressed format recognised by its magic; ``decode`` is None if we cannot read it."""

    name: str
    magic: bytes
    decode: Callable[[memoryview], bytes] | None


# Magic numbers as Linux's lib/decompress.c and Xen's bzImage loader know them.
FORMATS: tuple[Compression, ...] = (
    Compression("gzip", b"\x1f\x8b", _single_stream(lambda: zlib.decompressobj(wbits=16 + zlib.MAX_WBITS))),
    Compression("xz", b"\xfd7zXZ\x00", _single_stream(lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ))),
    Compression("lzma", b"\x5d\x00\x00", _single_stream(lambda: lzma.LZMADecompressor(format=lzma.FORMAT_ALONE))),
    Compression("bzip2", b"BZh", _single_stream(bz2.BZ2Decompressor)),
    Compression("zstd", b"\x28\xb5\x2f\xfd", _single_stream(lambda: zstandard.ZstdDecompressor().decompressobj())),
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


def decompress(data: Buffer, where: str) -> tuple[str, bytes]:
    """Decompress ``data`` (which ``where`` names in messages); return (format name, bytes).

    Raises ImageError if the format is unknown or unsupported, or the stream is corrupt.
    """
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
        return fmt.name, fmt.decode(memoryview(data))
    except _DECODER_ERRORS as exc:
        raise ImageError(
            f"Kernel image {where} has a corrupt {fmt.name} stream ({exc}); "
            f"the file is damaged: download or copy the kernel again."
        ) from exc
