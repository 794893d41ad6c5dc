"""Waiting in tests for something another thread does, without timing assertions."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(cond: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``cond`` until it holds or ``timeout`` seconds pass; its last value decides."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.002)
    return bool(cond())
