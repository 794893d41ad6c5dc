"""The transmit rate limit of a vif (xl's ``rate=RATE@INTERVAL``), as Xen's netback does it.

A credit of ``bytes_per_interval`` is added once per interval; a packet leaves
the guest only when the credit left covers its whole size, and is charged
when it does. Unused credit carries over, up to the larger of one interval's
credit and 128 KiB, so a rate below 128 KiB per interval still passes a
maximal (64 KiB GSO) packet instead of wedging the queue. The limit covers
guest -> host traffic only (the direction a guest controls), like Xen's.
"""

from __future__ import annotations

import time
from typing import Callable

MAX_BURST_FLOOR = 131072


class TxCredit:
    def __init__(self, bytes_per_interval: int, interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if bytes_per_interval <= 0 or interval_s <= 0:
            raise ValueError("a rate limit needs a positive credit and interval")
        self.bytes_per_interval = bytes_per_interval
        self.interval_s = interval_s
        self._clock = clock
        self.credit = bytes_per_interval
        self.window_start = clock()
        self.limited = 0          # times a packet had to wait for credit

    def take(self, size: int) -> bool:
        """Charge ``size`` bytes if the credit covers them; False: wait until ``next_credit_at``."""
        if size > self.credit:
            now = self._clock()
            if now >= self.window_start + self.interval_s:
                self.window_start = now
                cap = max(MAX_BURST_FLOOR, self.bytes_per_interval)
                self.credit = min(self.credit + self.bytes_per_interval, cap)
            if size > self.credit:
                self.limited += 1
                return False
        self.credit -= size
        return True

    @property
    def next_credit_at(self) -> float:
        return self.window_start + self.interval_s
