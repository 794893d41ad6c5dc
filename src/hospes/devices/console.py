"""PV console backend over ``struct xencons_interface`` (io/console.h, pv-abi.md §11.1).

Page layout::

    0x000 in[1024]    backend -> guest (keyboard input)
    0x400 out[2048]   guest -> backend (console output)
    0xc00 in_cons  (guest)     0xc04 in_prod  (backend)
    0xc08 out_cons (backend)   0xc0c out_prod (guest)

Indices are free-running u32; positions are ``idx & (size - 1)``; a ring is
broken if ``prod - cons`` exceeds its size (Linux says "Illegal ring page
indices").  Both directions are :class:`hospes.pv.ring.ByteRing` (whose
docstring says why plain whole-word index accesses are enough).

Linux spins with ``SCHEDOP_yield`` while ``out[]`` is full and expects the
backend to drain it without another event (pitfall 39): call
:meth:`ConsoleBackend.drain_output` on every console event *and* on
``SCHEDOP_yield``/periodically.

Call-order grammar::

    ConsoleBackend(page, notify) -> (drain_output() | feed_input(data)
                                     | queue_input(data) | flush_input())* [-> save()]
    ConsoleBackend.restore(state, page=page, notify=notify) -> (as above)

All methods are thread-safe, never raise on a bad ring (they log once and do
nothing until the indices make sense again) and call ``notify()`` without
holding the backend's lock.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, ClassVar

from hospes.pv.ring import ByteRing, RingError, index_words, writable_page
from hospes.state import check_version

log = logging.getLogger(__name__)

PAGE_SIZE = 4096
IN_OFFSET = 0x000
IN_SIZE = 1024
OUT_OFFSET = 0x400
OUT_SIZE = 2048
INDEX_OFFSET = 0xC00
# Word numbers within page[0xc00:0xc10].cast("I").
IN_CONS, IN_PROD, OUT_CONS, OUT_PROD = range(4)

#: Input kept for the guest beyond what fits in in[]; more is dropped.
PENDING_INPUT_LIMIT = 64 * 1024


@dataclass(frozen=True)
class ConsoleState:
    """Saved backend state: input not yet in the ring. The ring and its
    indices are guest memory and travel with it; nothing is ever in flight
    (every call finishes its ring update before it returns)."""

    VERSION: ClassVar[int] = 1
    pending_input: bytes = b""
    version: int = VERSION


class ConsoleBackend:
    """The backend end of one PV console ring."""

    def __init__(self, page: memoryview, notify: Callable[[], None]) -> None:
        view = writable_page(page, "console")
        idx = index_words(view, INDEX_OFFSET, 4)
        self._in = ByteRing(view, data=IN_OFFSET, size=IN_SIZE, indices=idx, cons=IN_CONS, prod=IN_PROD)
        self._out = ByteRing(view, data=OUT_OFFSET, size=OUT_SIZE, indices=idx, cons=OUT_CONS, prod=OUT_PROD)
        self._notify = notify
        self._lock = threading.Lock()
        self._pending = bytearray()
        self._bad_out = False
        self._bad_in = False

    def drain_output(self) -> bytes:
        """Consume and return everything the guest wrote to out[].

        Notifies the guest if the ring had been full (it may be waiting for
        room).  A broken ring yields ``b""``.
        """
        with self._lock:
            try:
                data = self._out.read(OUT_SIZE)
            except RingError as e:
                if not self._bad_out:
                    log.warning("console: guest output ring: %s; ignoring", e)
                    self._bad_out = True
                return b""
            self._bad_out = False
        if len(data) == OUT_SIZE:
            self._notify()
        return data

    def _feed_locked(self, data: bytes | bytearray) -> int:
        try:
            n = self._in.write(data)
        except RingError as e:
            if not self._bad_in:
                log.warning("console: guest input ring: %s; ignoring", e)
                self._bad_in = True
            return 0
        self._bad_in = False
        return n

    def feed_input(self, data: bytes) -> int:
        """Write as much of ``data`` as fits into in[]; return how much.

        Notifies the guest if anything was written.  Bypasses (and does not
        disturb) the pending-input buffer.
        """
        with self._lock:
            n = self._feed_locked(data)
        if n:
            self._notify()
        return n

    def queue_input(self, data: bytes) -> int:
        """Buffer ``data`` after any pending input and deliver what fits.

        Returns the number of bytes delivered now.  Input beyond
        :data:`PENDING_INPUT_LIMIT` is dropped (logged).
        """
        with self._lock:
            room = PENDING_INPUT_LIMIT - len(self._pending)
            if len(data) > room:
                dropped = len(data) - room
                log.warning("console: guest is not reading input; dropped %d bytes", dropped)
                data = data[:room]
            self._pending += data
        return self.flush_input()

    def flush_input(self) -> int:
        """Deliver as much pending input as fits; call when the guest consumed input."""
        with self._lock:
            n = self._feed_locked(self._pending) if self._pending else 0
            del self._pending[:n]
        if n:
            self._notify()
        return n

    @property
    def pending_input(self) -> bytes:
        """Queued input not yet in the ring."""
        with self._lock:
            return bytes(self._pending)

    def save(self) -> ConsoleState:
        with self._lock:
            return ConsoleState(bytes(self._pending))

    @classmethod
    def restore(
        cls, state: ConsoleState, *, page: memoryview, notify: Callable[[], None]
    ) -> ConsoleBackend:
        """A backend over the (restored) console page holding the saved pending input."""
        check_version(state, "console backend")
        backend = cls(page, notify)
        backend._pending = bytearray(state.pending_input[:PENDING_INPUT_LIMIT])
        return backend
