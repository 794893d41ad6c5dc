"""The verification mode of a migration: a hash of every page at both ends.

The source sends the hashes of its memory after the last copy (a VERIFY
record); the destination compares them with what it received before it
builds the domain. A difference means a write that no dirty log caught, so
the migration is refused rather than run a guest with a stale page.
"""

from __future__ import annotations

import hashlib
import struct

from hospes.machine.memory import GuestMemory
from hospes.migrate.stream import PAGE_SIZE, StreamError

DIGEST_SIZE = 16
MAX_LISTED = 8


def page_digests(memory: memoryview, frames: int) -> bytes:
    """A short hash of each page, frame 0 upwards."""
    out = bytearray()
    for f in range(frames):
        out += hashlib.blake2b(memory[f * PAGE_SIZE:(f + 1) * PAGE_SIZE], digest_size=DIGEST_SIZE).digest()
    return bytes(out)


def compare(payload: bytes, memory: GuestMemory) -> dict[str, int]:
    """Check the source's page hashes against the received memory (raises on any difference)."""
    if len(payload) < 4 or struct.unpack_from("<I", payload)[0] != DIGEST_SIZE:
        raise StreamError("The VERIFY record does not hold hashes of the expected size.")
    theirs = payload[4:]
    frames = memory.size // PAGE_SIZE
    if len(theirs) != frames * DIGEST_SIZE:
        raise StreamError(f"The VERIFY record hashes {len(theirs) // DIGEST_SIZE} pages; the memory has {frames}.")
    ours = page_digests(memory.buf, frames)
    differ = [f for f in range(frames)
              if ours[f * DIGEST_SIZE:(f + 1) * DIGEST_SIZE] != theirs[f * DIGEST_SIZE:(f + 1) * DIGEST_SIZE]]
    if differ:
        listed = ", ".join(f"{f:#x}" for f in differ[:MAX_LISTED])
        raise StreamError(f"Verification failed: {len(differ)} of {frames} pages differ from the source's "
                          f"(frames {listed}{', ...' if len(differ) > MAX_LISTED else ''}).")
    return {"pages": frames, "differences": 0}


__all__ = ["DIGEST_SIZE", "compare", "page_digests"]
