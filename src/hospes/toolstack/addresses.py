"""The addresses a migration uses: where an incoming domain listens, where a migration goes.

``listen_address`` accepts what a domain process can bind: ``tcp://HOST:PORT``
(an IPv6 host in brackets) or ``unix:/absolute/path``. ``migration_destination``
accepts those two plus ``[USER@]HOST``, which the engine reaches by running
``ssh [USER@]HOST hospes migrate-receive``; the host and user are checked
strictly because they end up on ssh's command line (no ``-o...`` smuggled in).
"""

from __future__ import annotations

import os

from hospes.migrate.transport import SSH_RE as _SSH
from hospes.migrate.transport import TCP_RE as _TCP


def listen_address(text: str) -> str:
    """``text`` if it is an address a domain process can listen at; ValueError saying why not."""
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not os.path.isabs(path):
            raise ValueError(f"The Unix socket path in {text!r} must be absolute (unix:/path/to/socket).")
        if "\0" in path or len(path.encode()) > 107:
            raise ValueError(f"The Unix socket path in {text!r} is not usable (at most 107 bytes, no NUL).")
        return text
    m = _TCP.fullmatch(text)
    if m is None:
        raise ValueError(f"The address {text!r} is not one to listen at: write tcp://HOST:PORT or unix:/path.")
    if not 1 <= int(m.group(2)) <= 65535:
        raise ValueError(f"The port in {text!r} must be between 1 and 65535.")
    return text


def migration_destination(text: str) -> str:
    """``text`` if it is a destination ``migrate`` takes; ValueError saying why not."""
    if text.startswith(("tcp://", "unix:")):
        return listen_address(text)
    if _SSH.fullmatch(text) is None:
        raise ValueError(f"The destination {text!r} is not one to migrate to: write [USER@]HOST (over ssh), "
                         "tcp://HOST:PORT or unix:/path.")
    return text


__all__ = ["listen_address", "migration_destination"]
