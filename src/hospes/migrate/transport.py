"""Where a migration stream goes: ``tcp://HOST:PORT``, ``unix:PATH`` or ``[USER@]HOST``.

The last form is ``xl migrate``'s: the source runs ``ssh [USER@]HOST hospes
migrate-receive`` and the stream travels over that command's stdin and stdout.
``HOSPES_SSH`` replaces the ``ssh`` command (a wrapper with options, or a test's
stand-in that runs the command locally).

A :class:`Channel` is the two directions of one connection as buffered binary
files: the stream and the source's COMMIT go one way, the destination's
replies the other.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from typing import BinaryIO

from hospes.errors import HospesError

CONNECT_TIMEOUT_S = 30.0
# The address grammar (the toolstack checks requests with it too). A host starts with
# a letter or digit, so nothing that reaches ssh's command line reads as an option.
HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}))"
TCP_RE = re.compile(rf"tcp://({HOST}):([0-9]{{1,5}})")
SSH_RE = re.compile(rf"(?:([A-Za-z0-9._][A-Za-z0-9._-]{{0,31}})@)?({HOST})")


class TransportError(HospesError):
    """A migration peer could not be reached, or the connection broke."""


@dataclass(frozen=True)
class Address:
    kind: str            # "tcp", "unix" or "ssh"
    host: str = ""       # tcp: the host; ssh: [USER@]HOST
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "tcp":
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"tcp://{host}:{self.port}"
        if self.kind == "unix":
            return f"unix:{self.path}"
        return self.host


def parse_address(text: str, *, listen: bool = False) -> Address:
    """``tcp://HOST:PORT``, ``unix:/PATH``, or (not for listening) ``[USER@]HOST``."""
    if text.startswith("tcp://"):
        m = TCP_RE.fullmatch(text)
        if m is None or not 1 <= int(m.group(2)) <= 65535:
            raise TransportError(f"{text!r} is not tcp://HOST:PORT with a port from 1 to 65535.")
        host = m.group(1)
        return Address("tcp", host=host[1:-1] if host.startswith("[") else host, port=int(m.group(2)))
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path.startswith("/"):
            raise TransportError(f"{text!r} is not unix:/ABSOLUTE/PATH.")
        if len(path.encode()) >= 108:
            raise TransportError(f"The socket path {path!r} is too long for a Unix socket (107 bytes at most).")
        return Address("unix", path=path)
    if listen:
        raise TransportError(f"Cannot listen at {text!r}: give tcp://HOST:PORT or unix:/PATH.")
    if not SSH_RE.fullmatch(text):
        raise TransportError(f"{text!r} is neither tcp://HOST:PORT, unix:/PATH nor [USER@]HOST.")
    return Address("ssh", host=text)


class Channel:
    """Both directions of one migration connection."""

    def __init__(self, rfile: BinaryIO, wfile: BinaryIO, *, sock: socket.socket | None = None,
                 proc: subprocess.Popen[bytes] | None = None, errlog: BinaryIO | None = None) -> None:
        self.rfile = rfile
        self.wfile = wfile
        self._sock = sock
        self._proc = proc
        self._errlog = errlog

    def settimeout(self, seconds: float | None) -> None:
        """Bound each read and write (sockets only: a pipe to ssh waits for ssh)."""
        if self._sock is not None:
            self._sock.settimeout(seconds)

    def peer_gone(self) -> bool:
        """True if a socket peer has closed its end (nothing to read but the end of the stream)."""
        if self._sock is None:
            return False
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            return bool(readable) and self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def peer_message(self) -> str:
        """What the ssh command printed on stderr, for an error message ('' for sockets)."""
        if self._errlog is None:
            return ""
        try:
            self._errlog.seek(0)
            lines = self._errlog.read().decode(errors="replace").strip().splitlines()
        except (OSError, ValueError):
            return ""
        return lines[-1] if lines else ""

    def close(self) -> None:
        for f in (self.wfile, self.rfile):
            try:
                f.close()
            except (OSError, ValueError):
                pass
        if self._sock is not None:
            self._sock.close()
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._errlog is not None:
            self._errlog.close()


def _socket_channel(sock: socket.socket) -> Channel:
    return Channel(sock.makefile("rb"), sock.makefile("wb", buffering=1 << 20), sock=sock)  # type: ignore[arg-type]


def connect(addr: Address, timeout: float = CONNECT_TIMEOUT_S) -> Channel:
    """Open a channel to a destination that listens (or, for ssh, start one)."""
    if addr.kind == "ssh":
        return _ssh(addr.host)
    try:
        if addr.kind == "tcp":
            sock = socket.create_connection((addr.host, addr.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(addr.path)
            except BaseException:
                sock.close()
                raise
    except OSError as e:
        raise TransportError(f"Cannot connect to {addr}: {e.strerror or e}; is `hospes migrate-receive "
                             f"--listen {addr}` running there?") from e
    sock.settimeout(None)
    return _socket_channel(sock)


def _ssh(target: str) -> Channel:
    command = shlex.split(os.environ.get("HOSPES_SSH", "ssh")) + [target, "hospes", "migrate-receive"]
    errlog = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog,
                                start_new_session=True)
    except OSError as e:
        errlog.close()
        raise TransportError(f"Cannot run {command[0]}: {e.strerror}.") from e
    assert proc.stdin is not None and proc.stdout is not None
    return Channel(proc.stdout, proc.stdin, proc=proc, errlog=errlog)   # type: ignore[arg-type]


class Listener:
    """A listening socket that accepts one migration."""

    def __init__(self, addr: Address) -> None:
        if addr.kind == "ssh":
            raise TransportError("A listener needs tcp://HOST:PORT or unix:/PATH.")
        self.addr = addr
        try:
            if addr.kind == "tcp":
                family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
                self._sock = socket.socket(family, socket.SOCK_STREAM)
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self._sock.bind((addr.host, addr.port))
            else:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                if os.path.exists(addr.path) and _is_stale_socket(addr.path):
                    os.unlink(addr.path)
                self._sock.bind(addr.path)
                os.chmod(addr.path, 0o600)
            self._sock.listen(1)
        except OSError as e:
            raise TransportError(f"Cannot listen at {addr}: {e.strerror or e}.") from e

    def accept(self, timeout: float | None = None) -> Channel:
        self._sock.settimeout(timeout)
        try:
            sock, _ = self._sock.accept()
        except socket.timeout:
            raise TransportError(f"No migration arrived at {self.addr} within {timeout:.0f} s.") from None
        except OSError as e:
            raise TransportError(f"Accepting at {self.addr} failed: {e.strerror or e}.") from e
        sock.settimeout(None)
        if self.addr.kind == "tcp":
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _socket_channel(sock)

    def close(self) -> None:
        self._sock.close()
        if self.addr.kind == "unix":
            try:
                os.unlink(self.addr.path)
            except OSError:
                pass


def _is_stale_socket(path: str) -> bool:
    """True if ``path`` is a Unix socket nobody listens on (left by a dead receiver)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


__all__ = ["Address", "Channel", "Listener", "TransportError", "connect", "parse_address"]
