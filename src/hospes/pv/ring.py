"""Shared rings: the request/response rings of blkif and netif, and the byte rings
of the console and xenstore.

Both kinds live in a page the guest writes while we read it, and both rest on
one rule: every index has exactly one writer. That makes plain aligned 32-bit
loads and stores enough (nothing is read-modify-written in shared memory), as
long as each index is accessed whole -- through ``GuestMemory.read_u32`` /
``write_u32`` or a ``memoryview.cast("I")`` of the page, never byte slices or
``struct.pack_into`` (pv-abi.md §13.7, docs/architecture.md). Indices are
free-running u32; a slot or byte position is the index modulo the ring's size,
a power of two. A guest can write any value into its indices, so every read
of one is checked: ``prod - cons`` beyond the ring's size is a broken ring
(:class:`RingError`), and no position we compute ever leaves the ring.

Request/response rings (io/ring.h, pv-abi.md §11.3)
    A header of four u32 -- ``req_prod`` (front), ``req_event`` (back),
    ``rsp_prod`` (back), ``rsp_event`` (front) -- then 64 bytes in, the
    slots. Responses overwrite the slots of the requests they answer. The two
    orderings the protocol needs:

    * Pushing responses: the response stores come before the ``rsp_prod``
      store (x86 keeps stores in order), and the ``rsp_event`` load after it
      needs a full barrier, since x86 may move a load ahead of an earlier
      store. Notify iff ``rsp_event`` lies in ``(old, new]``, i.e.
      ``new - event < new - old`` in u32 arithmetic; a frontend that polls
      sets ``rsp_event`` ahead and is not disturbed.
    * The final check: having consumed everything, a backend stores
      ``req_event = req_cons + 1`` ("wake me for the next one"), a full
      barrier, then reads ``req_prod`` again. Without the re-read a request
      the frontend pushed between our last look and the ``req_event`` store
      would wait forever: the frontend saw the old ``req_event`` and did not
      notify. A backend that never advances ``req_event`` gets no
      notification after the first.

Byte rings (io/console.h, io/xs_wire.h)
    Two arrays of bytes in one page, one per direction, each with a
    ``cons``/``prod`` pair. The consumer reads ``prod`` before the bytes it
    covers and publishes ``cons`` after copying them out; the producer writes
    bytes before publishing ``prod``. x86 keeps loads ordered with loads and
    stores with stores, which is all that needs, so no barrier is used.

Why a ring holds a type reference
    Hospes writes a ring page through its own view for as long as the ring
    is connected, which Xen counts as a writable type reference (a backend's
    grant map, or Xen's own mapping of the console and store pages). The page
    must not become a page table or descriptor page meanwhile, or the
    responses and indices stored into it would be entries nobody validated.
    :class:`BackRing` takes that reference when it is built and drops it in
    :meth:`BackRing.release`; the byte rings' holders (the domain) do the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Protocol

from hospes.errors import HospesError
from hospes.machine.atomics import mfence
from hospes.machine.memory import PAGE_SHIFT, PAGE_SIZE, GuestMemory

MASK = 0xFFFFFFFF
#: Bytes before the first slot of a request/response ring (io/ring.h sring header).
RING_HEADER = 64
REQ_PROD = 0
REQ_EVENT = 4
RSP_PROD = 8
RSP_EVENT = 12


class RingError(HospesError):
    """The guest's ring indices are impossible, or its page cannot be ours to write;
    the ring cannot be served (any more)."""


class WritableHolds(Protocol):
    """Who keeps the writable type references on pages Hospes writes (a domain's
    ``PvMmu``, or its ``GrantTable`` for a backend); both raise a HospesError on refusal."""

    def hold_writable(self, frames: Iterable[int]) -> None: ...

    def release_writable(self, frames: Iterable[int]) -> None: ...


@dataclass(frozen=True)
class BackRingState:
    """Saved backend end of a request/response ring. The header and the slots
    are guest memory and travel with it; ``frame`` is the ring's guest frame."""

    VERSION: ClassVar[int] = 1
    frame: int
    req_cons: int
    rsp_prod_pvt: int
    version: int = VERSION


class BackRing:
    """The backend end of one one-page request/response ring at ``gpa``.

    ``req_cons`` is the next request to take, ``rsp_prod_pvt`` the next
    response slot to fill; both are ours alone (the guest sees responses only
    when :meth:`push_responses` publishes them). Hot loops may read
    :attr:`slots_gpa`, :attr:`mask` and :attr:`slot_size` to compute slot
    addresses inline.
    """

    __slots__ = ("mem", "gpa", "slots_gpa", "nr_slots", "mask", "slot_size", "req_cons", "rsp_prod_pvt",
                 "_holds")

    def __init__(self, mem: GuestMemory, gpa: int, *, holds: WritableHolds, nr_slots: int, slot_size: int,
                 req_cons: int = 0, rsp_prod_pvt: int = 0) -> None:
        if nr_slots < 1 or nr_slots & (nr_slots - 1) or RING_HEADER + nr_slots * slot_size > PAGE_SIZE:
            raise RingError(f"A ring of {nr_slots} slots of {slot_size} bytes does not fit one page.")
        if gpa % PAGE_SIZE:
            raise RingError(f"A ring page must be page-aligned, not at {gpa:#x}.")
        mem.check(gpa, PAGE_SIZE)
        try:
            holds.hold_writable((gpa >> PAGE_SHIFT,))
        except HospesError as e:
            raise RingError(f"The ring page at {gpa:#x} cannot be written: {e}") from None
        self._holds: WritableHolds | None = holds
        mem.hold(gpa, PAGE_SIZE)   # responses and event indices are stored straight into it
        self.mem = mem
        self.gpa = gpa
        self.slots_gpa = gpa + RING_HEADER
        self.nr_slots = nr_slots
        self.mask = nr_slots - 1
        self.slot_size = slot_size
        self.req_cons = req_cons & MASK
        self.rsp_prod_pvt = rsp_prod_pvt & MASK

    def slot(self, index: int) -> int:
        """Guest-physical address of the slot of ring index ``index``."""
        return self.slots_gpa + (index & self.mask) * self.slot_size

    def req_prod(self) -> int:
        return self.mem.read_u32(self.gpa + REQ_PROD)

    def unconsumed(self) -> int:
        """Requests the frontend has published that we have not taken (RingError if impossible)."""
        n = (self.mem.read_u32(self.gpa + REQ_PROD) - self.req_cons) & MASK
        if n > self.nr_slots:
            raise RingError(f"the request indices differ by {n} on a ring of {self.nr_slots}")
        return n

    def take_request(self) -> int:
        """Consume the next request; the address of its slot (copy it before trusting it)."""
        cons = self.req_cons
        self.req_cons = (cons + 1) & MASK
        return self.slots_gpa + (cons & self.mask) * self.slot_size

    def next_response(self) -> int:
        """Claim the next response slot (private until pushed); its address."""
        prod = self.rsp_prod_pvt
        self.rsp_prod_pvt = (prod + 1) & MASK
        return self.slots_gpa + (prod & self.mask) * self.slot_size

    def push_responses(self) -> bool:
        """Publish the responses written so far; True if the frontend asked to be notified."""
        mem = self.mem
        old = mem.read_u32(self.gpa + RSP_PROD)
        new = self.rsp_prod_pvt
        mem.write_u32(self.gpa + RSP_PROD, new)
        mfence()
        event = mem.read_u32(self.gpa + RSP_EVENT)
        return (new - event) & MASK < (new - old) & MASK

    def final_check(self, seen: int | None = None) -> bool:
        """Ask to be notified of the request after index ``seen`` (default:
        everything consumed), then look again: True if the frontend published
        past ``seen`` meanwhile, and the caller must go on."""
        at = self.req_cons if seen is None else seen
        self.mem.write_u32(self.gpa + REQ_EVENT, (at + 1) & MASK)
        mfence()
        return self.mem.read_u32(self.gpa + REQ_PROD) != at

    def notify_at(self, index: int) -> None:
        """Ask to be notified once request ``index - 1`` is published (several
        requests ahead: a backend that needs more than one before it can work)."""
        self.mem.write_u32(self.gpa + REQ_EVENT, index & MASK)
        mfence()

    def release(self) -> None:
        """Drop the ring page's type reference (the ring is no longer served; repeatable)."""
        holds, self._holds = self._holds, None
        if holds is not None:
            holds.release_writable((self.gpa >> PAGE_SHIFT,))

    def save(self) -> BackRingState:
        return BackRingState(frame=self.gpa >> PAGE_SHIFT, req_cons=self.req_cons, rsp_prod_pvt=self.rsp_prod_pvt)


def index_words(page: memoryview, offset: int, count: int) -> memoryview:
    """``count`` u32 index words of ``page`` from byte ``offset``, for whole-word access."""
    if offset % 4 or offset < 0 or offset + 4 * count > len(page):
        raise RingError(f"{count} index words at {offset:#x} do not fit the ring page.")
    return page[offset:offset + 4 * count].cast("I")


def writable_page(page: memoryview, what: str) -> memoryview:
    """``page`` as a writable byte view of at least one page (ValueError if it is not)."""
    view = memoryview(page)
    if view.format != "B":
        view = view.cast("B")
    if view.readonly or len(view) < PAGE_SIZE:
        raise ValueError(f"The {what} ring needs a writable 4096-byte page")
    return view


class ByteRing:
    """One direction of a byte ring: ``size`` bytes at ``data`` in ``page``,
    indexed by words ``cons`` and ``prod`` of ``indices`` (see :func:`index_words`).

    We use one end of it: :meth:`read` when the guest produces, :meth:`write`
    when it consumes. Each call reads the indices afresh; RingError if they
    differ by more than the ring's size.
    """

    __slots__ = ("_page", "_data", "_size", "_idx", "_cons", "_prod")

    def __init__(self, page: memoryview, *, data: int, size: int, indices: memoryview, cons: int,
                 prod: int) -> None:
        if size < 1 or size & (size - 1) or data < 0 or data + size > len(page):
            raise RingError(f"A byte ring of {size} bytes at {data:#x} does not fit its page.")
        self._page = page
        self._data = data
        self._size = size
        self._idx = indices
        self._cons = cons
        self._prod = prod

    @property
    def size(self) -> int:
        return self._size

    def _positions(self) -> tuple[int, int, int]:
        cons = self._idx[self._cons]
        prod = self._idx[self._prod]
        used = (prod - cons) & MASK
        if used > self._size:
            raise RingError(f"the indices differ by {used} on a ring of {self._size} bytes")
        return cons, prod, used

    def readable(self) -> int:
        """Bytes waiting to be read."""
        return self._positions()[2]

    def writable(self) -> int:
        """Room for bytes to write."""
        return self._size - self._positions()[2]

    def read(self, limit: int) -> bytes:
        """Consume and return up to ``limit`` waiting bytes."""
        cons, _prod, used = self._positions()
        n = min(used, limit)
        if n <= 0:
            return b""
        off = cons & (self._size - 1)
        first = min(n, self._size - off)
        start = self._data + off
        data = bytes(self._page[start:start + first])
        if first < n:
            data += bytes(self._page[self._data:self._data + n - first])
        self._idx[self._cons] = (cons + n) & MASK
        return data

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Produce as much of ``data`` as fits; how many bytes that was."""
        _cons, prod, used = self._positions()
        n = min(self._size - used, len(data))
        if n <= 0:
            return 0
        off = prod & (self._size - 1)
        first = min(n, self._size - off)
        start = self._data + off
        self._page[start:start + first] = data[:first]
        if first < n:
            self._page[self._data:self._data + n - first] = data[first:n]
        self._idx[self._prod] = (prod + n) & MASK
        return n


__all__ = [
    "MASK", "RING_HEADER", "BackRing", "BackRingState", "ByteRing", "RingError", "WritableHolds", "index_words",
    "writable_page",
]
