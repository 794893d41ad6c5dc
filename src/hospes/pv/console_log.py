"""What a domU writes with HYPERVISOR_console_io: lines for the hypervisor's log.

On Xen, CONSOLEIO_write from a domU (allowed on debug builds) goes to Xen's own
console, not to the domain's PV console: ``guest_console_write``
(xen/drivers/char/console.c) drops unprintable bytes (tab excepted), collects
a line until its newline or until the per-domain buffer is full, and prints it
behind a ``(d<domid>) `` prefix. Hospes keeps the same line discipline, so a
kernel that writes both channels shows each line once on its console and once,
marked, in the hypervisor's log.
"""

from __future__ import annotations

# Xen's DOMAIN_PBUF_SIZE is 200 with room for a NUL: a line longer than this
# is printed in pieces.
LINE_MAX = 199


class ConsoleIoLog:
    """Turn console_io bytes into complete ``(d<domid>) ...\\n`` lines."""

    def __init__(self, domid: int) -> None:
        self.prefix = f"(d{domid}) ".encode()
        self._line = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The lines ``data`` completes (a partial line waits for the next call)."""
        out: list[bytes] = []
        line = self._line
        for c in data:
            if c == 0x0A:
                out.append(self.prefix + bytes(line) + b"\n")
                line.clear()
            elif 0x20 <= c < 0x7F or c == 0x09:
                line.append(c)
                if len(line) >= LINE_MAX:
                    out.append(self.prefix + bytes(line) + b"\n")
                    line.clear()
        return out


__all__ = ["LINE_MAX", "ConsoleIoLog"]
