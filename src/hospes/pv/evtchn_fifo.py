"""Event channels, FIFO ABI: per-vCPU priority queues of ports in guest memory.

Xen offers two ways to tell a guest which ports fired (pv-abi.md §9). The
2-level bitmaps live in :mod:`hospes.pv.evtchn`; this module is the other one,
Xen's ``event_fifo.c``, which a guest selects by asking for it with
``EVTCHNOP_init_control`` (Linux does whenever that succeeds, so every Debian
guest runs on it). :class:`~hospes.pv.evtchn.EventChannels` keeps the port
table either way and hands the bit work to a :class:`FifoEvents` once the
guest switched.

The guest-visible structures (xen/include/public/event_channel.h)
------------------------------------------------------------------
* The *event array*: one 32-bit *event word* per port, in pages the guest
  gives with ``EVTCHNOP_expand_array`` (1024 words a page, at most 128
  pages). Bit 31 P (pending), 30 M (masked), 29 L (linked: the word is on a
  queue), 28 BUSY (Xen is linking to it), bits 0-16 LINK (the next port on
  the same queue, 0 at the end).
* One *control block* per vCPU (``EVTCHNOP_init_control``: a frame and an
  8-aligned offset; 72 bytes): ``ready`` (u32, bit q = queue q has events)
  and ``head[16]`` (u32 @8, the first port of each queue, written only when a
  queue was empty). 16 priorities, 0 the highest; new ports get 7.
* The vCPU's ``evtchn_upcall_pending`` still announces the upcall.

Hospes keeps what the guest must not see: each queue's *tail* (the port
linked last), each port's priority and the queue it was last linked on
(``lastq``), and the ports that became pending before their event word
existed (raised when the page arrives).

Raising an event (Xen ``evtchn_fifo_set_pending``)
--------------------------------------------------
::

    set P; if it was already set, pollers need no wake-up
    if the port's vCPU has no control block:        drop (Xen does)
    if not M and not test_and_set(L):               # it joins a queue
        forget it as the tail of its last queue
        if tail(q) and set_link(word[tail(q)], port):  appended
        else: head[q] = port                          # the queue was empty
        tail(q) = port
    if it started a queue and !test_and_set(ready bit q):  upcall_pending, kick

The guest consumes concurrently (Linux ``consume_one_event``): it takes the
head, clears L and LINK of that word atomically and follows the LINK it
found. So appending behind the tail is only right while the tail is still
linked: ``set_link`` is a compare-and-exchange that writes LINK only if L is
still set; if the guest has unlinked the tail meanwhile, the queue is empty
and the port becomes the new head instead. The guest may also change M and
P of a linked word at any time, so the exchange can fail; after the first
failure Xen sets BUSY, which Linux's unmask waits for, so only a bounded
number of retries can fail (four, as in Xen; then the event stays
"linked" without a successor, as Xen gives up too).

Event words are 32 bits but the atomics are 64: every operation works on
the aligned quadword holding the word (a locked access never splits a cache
line), shifting bits by 32 for a word in the upper half. A compare-exchange
that fails only because the neighbouring word changed is retried without
counting as one of Xen's four.

Locking: every method runs under the owning ``EventChannels``' lock, which
serialises Hospes' own queue updates (Xen's per-queue locks); against the
guest only the locked instructions count. ``is_pending`` alone is also read
without the lock (SCHEDOP_poll): pages are only ever appended.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

from hospes.machine.atomics import (
    Listing,
    assemble,
    cmpxchg64,
    load64,
    load_code,
    test_and_clear_bit,
    test_and_set_bit,
    test_bit,
)
from hospes.pv.errors import Errno, XenError
from hospes.state import StateError, check_version

# xen/include/public/event_channel.h
PENDING = 31
MASKED = 30
LINKED = 29
BUSY = 28
LINK_BITS = 17
LINK_MASK = (1 << LINK_BITS) - 1
NR_QUEUES = 16
PRIORITY_DEFAULT = 7
PRIORITY_MIN = 15  # the lowest priority; 0 is the highest
WORDS_PER_PAGE = 4096 // 4
MAX_ARRAY_PAGES = (1 << LINK_BITS) // WORDS_PER_PAGE  # 128
CONTROL_BLOCK_SIZE = 4 + 4 + 4 * NR_QUEUES  # ready, _rsvd, head[16]
CONTROL_HEAD = 8  # head[0] in the control block (HEAD_READY's displacement)
VCPU_INFO_UPCALL_PENDING = 0x00

_WORD = 0xFFFF_FFFF
_SET_LINK_TRIES = 4  # Xen's evtchn_fifo_set_link, once BUSY is set
_NEIGHBOUR_RETRIES = 64  # a guest hammering the other half cannot hold us forever
_U32 = ctypes.c_uint32
_U64 = ctypes.c_uint64

# The two steps of every delivery, each one call into a few instructions (as
# hospes.machine.atomics does, same table format, checked against a
# disassembler by tests/test_evtchn_fifo.py): an event costs two foreign calls,
# fewer than the 2-level path's four.
MARK: Listing = (
    ("8b 07", "mov eax, dword ptr [rdi]", "eax = old = *word"),
    ("89 c1", "mov ecx, eax", "2: ecx = old"),
    ("81 c9 00 00 00 80", "or ecx, 0x80000000", "set P"),
    ("a9 00 00 00 60", "test eax, 0x60000000", "masked or already linked?"),
    ("75 06", "jne 0x17", "then P only"),
    ("81 c9 00 00 00 20", "or ecx, 0x20000000", "else also L: the caller queues it"),
    ("f0 0f b1 0f", "lock cmpxchg dword ptr [rdi], ecx",
     "0x17: if *word == eax: *word = ecx, ZF=1 else eax = *word, ZF=0"),
    ("75 e5", "jne 2", "the guest changed the word: again with the fresh value"),
    ("c3", "ret", "return old"),
)
HEAD_READY: Listing = (
    ("89 54 b7 08", "mov dword ptr [rdi + rsi*4 + 8], edx", "head[prio] = port (a plain aligned store)"),
    ("f0 0f ab 37", "lock bts dword ptr [rdi], esi", "CF = ready bit prio; set it (full barrier)"),
    ("72 0d", "jb 0x17", "already ready: the guest was told, return 0"),
    ("b0 01", "mov al, 1", ""),
    ("86 01", "xchg byte ptr [rcx], al", "evtchn_upcall_pending = 1, al = old"),
    ("84 c0", "test al, al", ""),
    ("0f 94 c0", "sete al", "1 if it was 0: kick the vCPU"),
    ("0f b6 c0", "movzx eax, al", ""),
    ("c3", "ret", ""),
    ("31 c0", "xor eax, eax", "0x17"),
    ("c3", "ret", "return 0"),
)
_mark: Callable[[int], int] = ctypes.PYFUNCTYPE(_U32, _U64)(load_code(assemble(MARK)))
"""``_mark(word) -> old``: set P and, if neither M nor L was set, L -- one locked exchange."""
_head_ready: Callable[[int, int, int, int], int] = ctypes.PYFUNCTYPE(_U32, _U64, _U64, _U64, _U64)(
    load_code(assemble(HEAD_READY)))
"""``_head_ready(control_block, prio, port, upcall_pending_addr) -> kick``: head[prio] = port,
then the ready bit, then, if that was clear, ``upcall_pending`` (1 if it went 0 -> 1)."""
_M_OR_L = (1 << MASKED) | (1 << LINKED)


class EventPages(Protocol):
    """Guest frames Hospes writes for the FIFO ABI (control blocks, the event array)."""

    def map(self, gfn: int) -> int:
        """Hold ``gfn`` writable (as Xen's map_guest_page takes a writable type
        reference) and return its host address. XenError(EINVAL) if ``gfn`` is not
        RAM the domain holds or is a page table or descriptor page."""
        ...

    def unmap(self, gfn: int) -> None:
        """Drop the reference :meth:`map` took."""
        ...


@dataclass(frozen=True, slots=True)
class FifoState:
    """Hospes' side of the FIFO ABI. Words, heads and ready bits are guest
    memory and travel with it; the frames are mapped (held) again on restore."""

    VERSION: ClassVar[int] = 1
    control_blocks: tuple[tuple[int, int, int], ...]  # (vcpu, gfn, offset)
    array_gfns: tuple[int, ...]
    priorities: tuple[tuple[int, int], ...]  # (port, priority), where not the default
    last_queues: tuple[tuple[int, int, int], ...]  # (port, vcpu, priority), where not (0, 0)
    tails: tuple[tuple[int, int, int], ...]  # (vcpu, priority, port), non-empty queues
    waiting: tuple[int, ...]  # pending before their event word existed
    version: int = VERSION


def _split(word_addr: int) -> tuple[int, int]:
    """The aligned quadword holding a 32-bit word, and the word's bit shift in it."""
    return word_addr & ~7, (word_addr & 4) << 3


class FifoEvents:
    """The FIFO delivery state of one domain (see the module docstring)."""

    def __init__(self, nr_vcpus: int, nr_ports: int, pages: EventPages,
                 vcpu_info_addr: Callable[[int], int]) -> None:
        self._pages_api = pages
        self._vcpu_info_addr = vcpu_info_addr
        self._control = [0] * nr_vcpus  # host address of each control block, 0: none
        self._control_at: list[tuple[int, int] | None] = [None] * nr_vcpus
        self._array: list[int] = []  # host address of each event array page
        self._array_gfns: list[int] = []
        self._priority = bytearray([PRIORITY_DEFAULT]) * nr_ports
        self._lastq = [0] * nr_ports  # vcpu << 4 | priority of the queue last linked on
        self._tail = [[0] * NR_QUEUES for _ in range(nr_vcpus)]
        self._waiting: set[int] = set()

    # -- guest operations ----------------------------------------------------

    def map_control_block(self, vcpu: int, gfn: int, offset: int) -> None:
        """Xen's map_control_block: once per vCPU (EINVAL again), offset checked by the caller."""
        if self._control[vcpu]:
            raise XenError(Errno.EINVAL, f"vCPU {vcpu} already has a FIFO control block")
        self._control[vcpu] = self._pages_api.map(gfn) + offset
        self._control_at[vcpu] = (gfn, offset)

    def add_array_page(self, gfn: int) -> range:
        """EVTCHNOP_expand_array: map one more event array page; returns the ports it covers."""
        if len(self._array) >= MAX_ARRAY_PAGES:
            raise XenError(Errno.ENOSPC, f"The event array already has {MAX_ARRAY_PAGES} pages")
        first = len(self._array) * WORDS_PER_PAGE
        self._array.append(self._pages_api.map(gfn))
        self._array_gfns.append(gfn)
        return range(first, first + WORDS_PER_PAGE)

    def take_waiting(self, ports: range) -> list[int]:
        """The ports in ``ports`` that became pending before they had a word (now forgotten)."""
        found = sorted(p for p in self._waiting if p in ports)
        self._waiting.difference_update(found)
        return found

    def set_priority(self, port: int, priority: int) -> None:
        if priority > PRIORITY_MIN:
            raise XenError(Errno.EINVAL, f"Priority {priority} is beyond {PRIORITY_MIN}")
        self._priority[port] = priority

    def init_port(self, port: int) -> None:
        """A port is allocated (Xen evtchn_fifo_init): the default priority."""
        self._priority[port] = PRIORITY_DEFAULT

    def mark_waiting(self, port: int) -> None:
        """A port pending under the 2-level ABI when the guest switched (Xen setup_ports)."""
        self._waiting.add(port)

    def destroy(self) -> None:
        """Give every mapped frame back (EVTCHNOP_reset returning to 2-level)."""
        for at in self._control_at:
            if at is not None:
                self._pages_api.unmap(at[0])
        for gfn in self._array_gfns:
            self._pages_api.unmap(gfn)
        self._control = [0] * len(self._control)
        self._control_at = [None] * len(self._control)
        self._array, self._array_gfns = [], []

    # -- the bits ------------------------------------------------------------

    def word(self, port: int) -> int:
        """Host address of ``port``'s event word, 0 if its page is not there yet."""
        array = self._array
        page = port >> 10
        if page >= len(array):
            return 0
        return array[page] + ((port & (WORDS_PER_PAGE - 1)) << 2)

    def set_pending(self, port: int, vcpu: int) -> tuple[bool, bool]:
        """Xen's evtchn_fifo_set_pending for ``port`` notifying ``vcpu``.

        Returns (kick ``vcpu``, the port became pending now: wake its pollers).
        """
        w = self.word(port)
        if not w:
            self._waiting.add(port)
            return False, False
        cb = self._control[vcpu]
        if not cb:
            base, sh = _split(w)
            return False, not test_and_set_bit(base, sh + PENDING)  # P only: Xen drops the rest
        old = _mark(w)  # P, and L if it is neither masked nor linked (Xen: three steps)
        fresh = not old >> PENDING & 1
        if old & _M_OR_L:
            return False, fresh
        prio = self._priority[port]
        last = self._lastq[port]
        old_tails = self._tail[last >> 4]
        if old_tails[last & 15] == port:
            old_tails[last & 15] = 0  # its old queue is empty now: never append to it there
        queue = vcpu << 4 | prio
        if last != queue:
            self._lastq[port] = queue
        tails = self._tail[vcpu]
        tail = tails[prio]
        tails[prio] = port
        if tail and self._set_link(self.word(tail), port):
            return False, fresh  # appended: the queue is already announced
        # The queue was empty (or the guest has just emptied it): the port is its head.
        kick = _head_ready(cb, prio, port, self._vcpu_info_addr(vcpu) + VCPU_INFO_UPCALL_PENDING)
        return bool(kick), fresh

    def _set_link(self, w: int, link: int) -> bool:
        """Xen's evtchn_fifo_set_link: LINK := ``link`` iff the word is still linked."""
        base, sh = w & ~7, (w & 4) << 3
        others = ~(_WORD << sh)
        q = load64(base)
        busy = False
        tries = neighbour = 0
        while True:
            word = (q >> sh) & _WORD
            if not word >> LINKED & 1:
                if busy:
                    test_and_clear_bit(base, sh + BUSY)
                return False
            new = (word & ~((1 << BUSY) | LINK_MASK)) | link  # also ends our BUSY
            swapped, now = cmpxchg64(base, q, (q & others) | (new << sh))
            if swapped:
                return True
            if (now >> sh) & _WORD == word and neighbour < _NEIGHBOUR_RETRIES:
                neighbour += 1  # only the other word of the quadword changed
            elif not busy:
                test_and_set_bit(base, sh + BUSY)  # the guest's unmask now waits for us
                busy = True
                now = load64(base)
            else:
                tries += 1
                if tries >= _SET_LINK_TRIES:
                    test_and_clear_bit(base, sh + BUSY)
                    return True  # as Xen: give up, the port stays linked
            q = now

    def unmask(self, port: int, vcpu: int) -> tuple[bool, bool]:
        """Xen's evtchn_fifo_unmask: clear M, and raise again if P is set."""
        w = self.word(port)
        if not w:
            return False, False
        base, sh = _split(w)
        test_and_clear_bit(base, sh + MASKED)
        if test_bit(base, sh + PENDING):
            return self.set_pending(port, vcpu)
        return False, False

    def clear_pending(self, port: int) -> None:
        """A port is freed: clear P (the guest unlinks and ignores it) and forget a waiting raise."""
        self._waiting.discard(port)
        w = self.word(port)
        if w:
            base, sh = _split(w)
            test_and_clear_bit(base, sh + PENDING)

    def is_pending(self, port: int) -> bool:
        w = self.word(port)
        if not w:
            return False
        base, sh = _split(w)
        return bool(test_bit(base, sh + PENDING))

    def is_busy(self, port: int) -> bool:
        """Still on a queue: Xen does not hand the port out again until the guest unlinks it."""
        w = self.word(port)
        if not w:
            return False
        base, sh = _split(w)
        return bool(test_bit(base, sh + LINKED))

    # -- save / restore ------------------------------------------------------

    def save(self) -> FifoState:
        return FifoState(
            control_blocks=tuple((v, at[0], at[1]) for v, at in enumerate(self._control_at) if at is not None),
            array_gfns=tuple(self._array_gfns),
            priorities=tuple((p, prio) for p, prio in enumerate(self._priority) if prio != PRIORITY_DEFAULT),
            last_queues=tuple((p, q >> 4, q & 15) for p, q in enumerate(self._lastq) if q),
            tails=tuple((v, prio, port) for v, tails in enumerate(self._tail)
                        for prio, port in enumerate(tails) if port),
            waiting=tuple(sorted(self._waiting)),
        )

    @classmethod
    def restore(cls, state: FifoState, *, nr_vcpus: int, nr_ports: int, pages: EventPages,
                vcpu_info_addr: Callable[[int], int]) -> FifoEvents:
        """Rebuild from :meth:`save`; the frames are held again (StateError if one cannot be)."""
        check_version(state, "FIFO event channel state")
        for v, gfn, offset in state.control_blocks:
            if not 0 <= v < nr_vcpus or not _offset_ok(offset):
                raise StateError(f"Saved FIFO control block of vCPU {v} at {gfn:#x}+{offset:#x} does not fit")
        if len(state.array_gfns) > MAX_ARRAY_PAGES:
            raise StateError(f"The saved FIFO event array has {len(state.array_gfns)} pages")
        for port, prio in state.priorities:
            _check_saved_port(port, nr_ports)
            _check_saved_queue(0, prio, nr_vcpus)
        for port, v, prio in state.last_queues:
            _check_saved_port(port, nr_ports)
            _check_saved_queue(v, prio, nr_vcpus)
        for v, prio, port in state.tails:
            _check_saved_port(port, nr_ports)
            _check_saved_queue(v, prio, nr_vcpus)
        for port in state.waiting:
            _check_saved_port(port, nr_ports)
        self = cls(nr_vcpus, nr_ports, pages, vcpu_info_addr)
        try:
            for v, gfn, offset in state.control_blocks:
                self.map_control_block(v, gfn, offset)
            for gfn in state.array_gfns:
                self.add_array_page(gfn)
        except XenError as e:
            self.destroy()
            raise StateError(f"A saved FIFO event channel frame cannot be mapped: {e}") from None
        for port, prio in state.priorities:
            self._priority[port] = prio
        for port, v, prio in state.last_queues:
            self._lastq[port] = v << 4 | prio
        for v, prio, port in state.tails:
            self._tail[v][prio] = port
        self._waiting = set(state.waiting)
        return self


def control_offset_error(offset: int) -> str | None:
    """Why ``offset`` cannot hold a control block (Xen's init_control checks), None if it can."""
    if offset > 4096 - CONTROL_BLOCK_SIZE:
        return f"offset {offset:#x} puts the control block across the page end"
    if offset & 7:
        return f"offset {offset:#x} is not 8-byte aligned"
    return None


def _offset_ok(offset: int) -> bool:
    return 0 <= offset and control_offset_error(offset) is None


def _check_saved_port(port: int, nr_ports: int) -> None:
    if not 0 < port < nr_ports:
        raise StateError(f"Saved FIFO state names port {port}, outside 1..{nr_ports - 1}")


def _check_saved_queue(vcpu: int, prio: int, nr_vcpus: int) -> None:
    if not (0 <= vcpu < nr_vcpus and 0 <= prio <= PRIORITY_MIN):
        raise StateError(f"Saved FIFO state names queue {prio} of vCPU {vcpu}, which does not exist")
