"""Atomic read-modify-write on raw host addresses (guest RAM, shared_info).

Why this module exists
----------------------
The guest and the hypervisor share words of memory that both sides modify:
the event-channel ``evtchn_pending``/``evtchn_mask`` bitmaps and
``evtchn_pending_sel`` (pv-abi.md §2.5-2.6, §9), grant-entry flags (§11.2),
ring indices. The guest runs on other cores *at the same time* as our Python
code (a vCPU thread in ``KVM_RUN`` has released the GIL) and changes those
words with ``lock bts``/``lock btr``/``xchg``/``lock cmpxchg``.

A Python read-modify-write of such a word -- ``w = load(); store(w | bit)``,
even through ctypes -- is two separate memory accesses. If the guest flips a
neighbouring bit in between, our store writes back the stale value and the
guest's update is lost: a lost mask bit leaves a port unmasked, a lost clear
of a pending bit produces a phantom event, a lost unmask hangs the guest
(pv-abi.md §13.7, §14 item 45). The GIL does not help: the guest does not take
it. Only the CPU's own locked instructions are atomic with respect to the
guest, so that is what this module executes.

How
---
Each operation is a few bytes of x86-64 machine code (the tables below give
every instruction's bytes and mnemonic) copied into one anonymous page that is
then made ``PROT_READ|PROT_EXEC`` (never writable and executable at once), and
called through a ctypes function pointer. There is no dependency on
libatomic or a compiler.

* Calling convention: System V AMD64 -- arguments in ``rdi``, ``rsi``,
  ``rdx``; result in ``rax``. The blobs use only caller-saved registers
  (``rax``, ``rcx``) and no stack.
* Every public name below is *itself* the ctypes function pointer (except
  :func:`cmpxchg64`, which adds one comparison), so each call is exactly one
  ctypes call: these sit on event-delivery hot paths.
* The pointers are built with ``ctypes.PYFUNCTYPE``, i.e. they keep the GIL
  during the call. The code is a handful of instructions that never block;
  dropping and re-taking the GIL would cost more than the operation, and the
  atomicity we need is against the guest, which the GIL does not involve
  anyway.
* Integer arguments are converted as ``uint64`` with masking, so ``~mask`` (a
  negative Python int) works as an AND mask, and results are non-negative.

Memory ordering (x86-TSO)
-------------------------
Every ``lock``-prefixed instruction and ``xchg`` with a memory operand is a
full barrier: no load or store moves across it in either direction. So
:func:`fetch_or64`, :func:`fetch_and64`, :func:`xchg64`, :func:`cmpxchg64`,
:func:`test_and_set_bit`, :func:`test_and_clear_bit`, :func:`xchg8` and
:func:`mfence` are full barriers. :func:`load64`, :func:`store64` and
:func:`test_bit` are plain accesses (x86 gives loads acquire and stores
release semantics); the one reordering x86 allows -- a later load passing an
earlier store -- must be closed with :func:`mfence` or by using a locked op for
the store (e.g. :func:`xchg64`).

Bit numbering
-------------
``test_and_set_bit(addr, bit)`` and friends use the register form of
``bts``/``btr``/``bt`` with a 64-bit operand. For a memory operand the CPU
treats ``bit`` as a signed offset into a bit string starting at ``addr``: it
accesses the qword at ``addr + 8 * (bit >> 6)`` and bit ``bit & 63`` in it --
exactly Xen's/Linux's ``test_and_set_bit(nr, bitmap)`` on an array of
``unsigned long``. So ``test_and_set_bit(shared_info + 0x800, port)`` works for
every port 0..4095. Keep ``addr`` 8-byte aligned so no access splits a cache
line (a split locked access is slow and may raise #AC/SIGBUS on hosts with
split-lock detection).

No validation
-------------
Nothing here checks an address: a wrong one corrupts memory or kills the
process with SIGSEGV. Callers own the bounds checks (guest-physical range,
page-offset arithmetic) before they compute a host address.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Callable

__all__ = [
    "cmpxchg64",
    "fetch_and64",
    "fetch_or64",
    "load64",
    "load_code",
    "mfence",
    "store64",
    "test_and_clear_bit",
    "test_and_set_bit",
    "test_bit",
    "xchg64",
    "xchg8",
]

# One entry per instruction: (bytes, mnemonic exactly as capstone prints it in
# Intel syntax, comment). tests/test_atomics.py disassembles every blob and
# checks it against the mnemonic column, so this table cannot drift from the
# bytes. Jump targets are offsets from the start of the blob.
Listing = tuple[tuple[str, str, str], ...]

_FETCH_OR64: Listing = (
    ("48 8b 07", "mov rax, qword ptr [rdi]", "rax = old = *addr"),
    ("48 89 c1", "mov rcx, rax", "3: rcx = old"),
    ("48 09 f1", "or rcx, rsi", "rcx = old | mask"),
    ("f0 48 0f b1 0f", "lock cmpxchg qword ptr [rdi], rcx",
     "if *addr == rax: *addr = rcx, ZF=1 else rax = *addr, ZF=0"),
    ("75 f3", "jne 3", "lost a race: retry with the fresh value in rax"),
    ("c3", "ret", "return old"),
)

_FETCH_AND64: Listing = (
    ("48 8b 07", "mov rax, qword ptr [rdi]", "rax = old = *addr"),
    ("48 89 c1", "mov rcx, rax", "3: rcx = old"),
    ("48 21 f1", "and rcx, rsi", "rcx = old & mask"),
    ("f0 48 0f b1 0f", "lock cmpxchg qword ptr [rdi], rcx",
     "if *addr == rax: *addr = rcx, ZF=1 else rax = *addr, ZF=0"),
    ("75 f3", "jne 3", "lost a race: retry with the fresh value in rax"),
    ("c3", "ret", "return old"),
)

_XCHG64: Listing = (
    ("48 89 f0", "mov rax, rsi", "rax = value"),
    ("48 87 07", "xchg qword ptr [rdi], rax", "swap (implicitly locked)"),
    ("c3", "ret", "return old"),
)

_CMPXCHG64: Listing = (
    ("48 89 f0", "mov rax, rsi", "rax = expected"),
    ("f0 48 0f b1 17", "lock cmpxchg qword ptr [rdi], rdx",
     "if *addr == rax: *addr = new else rax = *addr"),
    ("c3", "ret", "return old (== expected iff the swap happened)"),
)

_TEST_AND_SET_BIT: Listing = (
    ("f0 48 0f ab 37", "lock bts qword ptr [rdi], rsi",
     "CF = bit; bit = 1 (qword addr + 8*(bit>>6))"),
    ("0f 92 c0", "setb al", "al = CF (setc)"),
    ("0f b6 c0", "movzx eax, al", "zero-extend"),
    ("c3", "ret", "return old bit"),
)

_TEST_AND_CLEAR_BIT: Listing = (
    ("f0 48 0f b3 37", "lock btr qword ptr [rdi], rsi",
     "CF = bit; bit = 0 (qword addr + 8*(bit>>6))"),
    ("0f 92 c0", "setb al", "al = CF (setc)"),
    ("0f b6 c0", "movzx eax, al", "zero-extend"),
    ("c3", "ret", "return old bit"),
)

_TEST_BIT: Listing = (
    ("48 0f a3 37", "bt qword ptr [rdi], rsi",
     "CF = bit (qword addr + 8*(bit>>6)); plain load"),
    ("0f 92 c0", "setb al", "al = CF (setc)"),
    ("0f b6 c0", "movzx eax, al", "zero-extend"),
    ("c3", "ret", "return bit"),
)

_XCHG8: Listing = (
    ("89 f0", "mov eax, esi", "al = value"),
    ("86 07", "xchg byte ptr [rdi], al", "swap one byte (implicitly locked)"),
    ("0f b6 c0", "movzx eax, al", "zero-extend the old byte"),
    ("c3", "ret", "return old"),
)

_LOAD64: Listing = (
    ("48 8b 07", "mov rax, qword ptr [rdi]", "one aligned 8-byte load"),
    ("c3", "ret", ""),
)

_STORE64: Listing = (
    ("48 89 37", "mov qword ptr [rdi], rsi", "one aligned 8-byte store"),
    ("c3", "ret", ""),
)

_MFENCE: Listing = (
    ("0f ae f0", "mfence", "full barrier, including store->load"),
    ("c3", "ret", ""),
)

LISTINGS: dict[str, Listing] = {
    "fetch_or64": _FETCH_OR64,
    "fetch_and64": _FETCH_AND64,
    "xchg64": _XCHG64,
    "cmpxchg64": _CMPXCHG64,
    "test_and_set_bit": _TEST_AND_SET_BIT,
    "test_and_clear_bit": _TEST_AND_CLEAR_BIT,
    "test_bit": _TEST_BIT,
    "xchg8": _XCHG8,
    "load64": _LOAD64,
    "store64": _STORE64,
    "mfence": _MFENCE,
}


def assemble(listing: Listing) -> bytes:
    """Concatenate the bytes column of a listing."""
    return bytes.fromhex(" ".join(hexbytes for hexbytes, _, _ in listing))


_libc = ctypes.CDLL(None, use_errno=True)
_mprotect = _libc.mprotect
_mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_mprotect.restype = ctypes.c_int

# Code pages stay mapped for the life of the process: the function pointers
# made from them must never dangle.
_code_pages: list[mmap.mmap] = []


def load_code(code: bytes) -> int:
    """Copy machine code into fresh executable memory and return its address.

    The pages are written while ``PROT_READ|PROT_WRITE`` and then switched to
    ``PROT_READ|PROT_EXEC``; they are never unmapped. This module uses it for
    its own blobs; tests use it to run concurrent machine-code writers.
    """
    size = max(mmap.PAGESIZE, -(-len(code) // mmap.PAGESIZE) * mmap.PAGESIZE)
    page = mmap.mmap(-1, size, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    page.write(code)
    window = ctypes.c_char.from_buffer(page)
    address = ctypes.addressof(window)
    del window  # release the buffer export; the mapping lives on in `page`
    if _mprotect(address, size, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"Cannot make the atomics code page executable: {os.strerror(err)}")
    _code_pages.append(page)
    return address


def _layout() -> dict[str, int]:
    """Place every blob in one page, each at a 32-byte boundary."""
    offsets: dict[str, int] = {}
    code = bytearray()
    for name, listing in LISTINGS.items():
        offsets[name] = len(code)
        code += assemble(listing)
        code += b"\xcc" * (-len(code) % 32)  # int3 padding between blobs
    base = load_code(bytes(code))
    return {name: base + offset for name, offset in offsets.items()}


_ADDR = _layout()
_U64 = ctypes.c_uint64
_U8 = ctypes.c_uint8

fetch_or64: Callable[[int, int], int] = ctypes.PYFUNCTYPE(_U64, _U64, _U64)(_ADDR["fetch_or64"])
"""``fetch_or64(addr, mask) -> old``: atomically ``*addr |= mask``. Full barrier."""

fetch_and64: Callable[[int, int], int] = ctypes.PYFUNCTYPE(_U64, _U64, _U64)(_ADDR["fetch_and64"])
"""``fetch_and64(addr, mask) -> old``: atomically ``*addr &= mask``. Full barrier."""

xchg64: Callable[[int, int], int] = ctypes.PYFUNCTYPE(_U64, _U64, _U64)(_ADDR["xchg64"])
"""``xchg64(addr, value) -> old``: atomically swap the qword. Full barrier."""

_cmpxchg64_raw: Callable[[int, int, int], int] = ctypes.PYFUNCTYPE(_U64, _U64, _U64, _U64)(
    _ADDR["cmpxchg64"]
)

test_and_set_bit: Callable[[int, int], bool] = ctypes.PYFUNCTYPE(ctypes.c_bool, _U64, _U64)(
    _ADDR["test_and_set_bit"]
)
"""``test_and_set_bit(addr, bit) -> old``: ``lock bts``; bit may be >= 64. Full barrier."""

test_and_clear_bit: Callable[[int, int], bool] = ctypes.PYFUNCTYPE(ctypes.c_bool, _U64, _U64)(
    _ADDR["test_and_clear_bit"]
)
"""``test_and_clear_bit(addr, bit) -> old``: ``lock btr``; bit may be >= 64. Full barrier."""

test_bit: Callable[[int, int], bool] = ctypes.PYFUNCTYPE(ctypes.c_bool, _U64, _U64)(
    _ADDR["test_bit"]
)
"""``test_bit(addr, bit) -> bit``: plain ``bt`` load; bit may be >= 64. Not a barrier."""

xchg8: Callable[[int, int], int] = ctypes.PYFUNCTYPE(_U8, _U64, _U8)(_ADDR["xchg8"])
"""``xchg8(addr, value) -> old``: atomically swap one byte. Full barrier."""

load64: Callable[[int], int] = ctypes.PYFUNCTYPE(_U64, _U64)(_ADDR["load64"])
"""``load64(addr) -> value``: one 8-byte load (atomic if aligned). Not a barrier."""

store64: Callable[[int, int], None] = ctypes.PYFUNCTYPE(None, _U64, _U64)(_ADDR["store64"])
"""``store64(addr, value)``: one 8-byte store (atomic if aligned). Not a barrier."""

mfence: Callable[[], None] = ctypes.PYFUNCTYPE(None)(_ADDR["mfence"])
"""``mfence()``: full memory barrier."""


def cmpxchg64(addr: int, expected: int, new: int) -> tuple[bool, int]:
    """Atomically: if ``*addr == expected`` then ``*addr = new``. Full barrier.

    Returns ``(swapped, old)``. ``lock cmpxchg`` leaves the old value in
    ``rax`` whether or not it swapped, and swaps exactly when that value
    equals ``expected``, so ``swapped = old == expected`` is exact.
    """
    old = _cmpxchg64_raw(addr, expected, new)
    return old == (expected & 0xFFFF_FFFF_FFFF_FFFF), old
