"""Running test code inside a private network namespace (root only)."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import threading
from typing import Callable, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def can_make_netns() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and os.path.exists("/dev/net/tun")


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """``fn()`` on a thread that entered network namespace ``ns``: sockets, TAPs and
    interface ioctls it makes belong there. Exceptions are re-raised here."""
    out: list[object] = []

    def run() -> None:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                out.append(OSError(ctypes.get_errno(), f"setns {ns}"))
                return
            out.append(fn())
        except BaseException as e:  # handed to the caller
            out.append(e)
        finally:
            os.close(fd)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]  # type: ignore[return-value]


def tcp_listener(ns: str, host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` inside network namespace ``ns``."""
    def listen() -> socket.socket:
        s = socket.socket()
        s.bind((host, port))
        s.listen(1)
        return s

    return in_netns(ns, listen)
