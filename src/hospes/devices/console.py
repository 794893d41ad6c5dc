"""PV console backend over ``struct xencons_interface`` (io/console.h, pv-abi.md §11.1).

Page layout::

    0x000 in[1024]    backend -> guest (keyboard input)
    0x400 out[2048]   guest -> backend (console output)
    0xc00 in_cons  (guest)     0xc04 in_prod  (backend)
    0xc08 out_cons (backend)   0xc0c out_prod (guest)

Indices are free-running u32; positions are ``idx & (size - 1)``; a ring is
broken if ``prod - cons`` exceeds its size (Linux says "Illegal ring page
indices").  Each index has a single writer, so plain aligned 32-bit loads and
stores through ``memoryview.cast("I")`` are enough: no read-modify-write of
shared memory happens, and x86 keeps our "read prod, then data" and "write
data, then prod" in order.

Linux spins with ``SCHEDOP_yield`` while ``out[]`` is full and expects the
backend to drain it without another event (pitfall 39): call
:meth:`ConsoleBackend.drain_output` on every console event *and* on
``SCHEDOP_yield``/periodically.

Call-order grammar::

    ConsoleBackend(page, notify) -> (drain_output() | feed_input(data)
                                     | queue_input(data) | flush_input())* [-> save()]

All methods are thread-safe, never raise on a bad ring (they log once and do
nothing until the indices make sense again) and call ``notify()`` without
holding the backend's lock.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

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
_MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class ConsoleState:
    """Saved backend state (the indices live in guest memory)."""

    pending_input: bytes = b""


class ConsoleBackend:
    """The backend end of one PV console ring."""

    def __init__(self, page: memoryview, notify: Callable[[], None]) -> None:
        view = memoryview(page)
        if view.format != "B":
            view = view.cast("B")
        if view.readonly or len(view) < PAGE_SIZE:
            raise ValueError("The console ring needs a writable 4096-byte page")
        self._page = view
        self._idx = view[INDEX_OFFSET : INDEX_OFFSET + 16].cast("I")
        self._notify = notify
        self._lock = threading.Lock()
        self._pending = bytearray()
        self._bad_out = False
        self._bad_in = False

    def _read(self, base: int, size: int, idx: int, n: int) -> bytes:
        off = idx & (size - 1)
        first = min(n, size - off)
        data = bytes(self._page[base + off : base + off + first])
        if first < n:
            data += bytes(self._page[base : base + n - first])
        return data

    def _write(self, base: int, size: int, idx: int, data: bytes) -> None:
        off = idx & (size - 1)
        first = min(len(data), size - off)
        self._page[base + off : base + off + first] = data[:first]
        if first < len(data):
            self._page[base : base + len(data) - first] = data[first:]

    def drain_output(self) -> bytes:
        """Consume and return everything the guest wrote to out[].

        Notifies the guest if the ring had been full (it may be waiting for
        room).  A broken ring yields ``b""``.
        """
        with self._lock:
            cons = self._idx[OUT_CONS]
            prod = self._idx[OUT_PROD]
            used = (prod - cons) & _MASK
            if used > OUT_SIZE:
                if not self._bad_out:
                    log.warning("console: guest output indices differ by %d; ignoring", used)
                    self._bad_out = True
                return b""
            self._bad_out = False
            if not used:
                return b""
            data = self._read(OUT_OFFSET, OUT_SIZE, cons, used)
            self._idx[OUT_CONS] = prod
        if used == OUT_SIZE:
            self._notify()
        return data

    def _feed_locked(self, data: bytes) -> int:
        cons = self._idx[IN_CONS]
        prod = self._idx[IN_PROD]
        used = (prod - cons) & _MASK
        if used > IN_SIZE:
            if not self._bad_in:
                log.warning("console: guest input indices differ by %d; ignoring", used)
                self._bad_in = True
            return 0
        self._bad_in = False
        n = min(IN_SIZE - used, len(data))
        if n:
            self._write(IN_OFFSET, IN_SIZE, prod, bytes(data[:n]))
            self._idx[IN_PROD] = (prod + n) & _MASK
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
        cls, page: memoryview, notify: Callable[[], None], state: ConsoleState
    ) -> ConsoleBackend:
        backend = cls(page, notify)
        backend._pending = bytearray(state.pending_input[:PENDING_INPUT_LIMIT])
        return backend
