"""The control protocol between hospesd and a domain process.

Transport: the Unix stream socket ``domains/<id>.sock`` that the domain process
listens on (kvmtool's model: one socket per guest in a known directory).

Grammar of one connection::

    client: request-line        (one JSON object + "\\n", at most MAX_LINE bytes)
    server: reply-line          (one JSON object + "\\n")
    [op == "console" and reply.ok: raw bytes both ways until either side closes]
    close

    op == "migrate" (a long operation that reports as it goes):
    client: request-line
    server: event-line*        ({"event": "progress", ...}, zero or more)
    server: reply-line         (the one final line, with "ok")
    close                      (the client closing before the reply cancels the migration)

A request is ``{"op": NAME, ...arguments}``. A reply is ``{"ok": true, ...}`` or
``{"ok": false, "error": MESSAGE}``. Operations (served by
:mod:`hospes.toolstack.domain_process`):

==========  =================================  ==========================================
op          arguments                          reply
==========  =================================  ==========================================
status      -                                  the live status (see ``DomainProcess.status``)
pause       -                                  -
unpause     -                                  -
shutdown    reason: "poweroff" | "reboot"      -  (writes control/shutdown; the guest obeys)
destroy     -                                  -  (the process exits soon after)
rename      name: str                          -
log         -                                  path: the console log file
console     -                                  then the raw console stream, both ways
save        path: absolute str, checkpoint:       path, bytes, pages, seconds (without
            bool, compress: bool                  checkpoint the process then destroys the
                                                  domain and exits)
migrate     dest: tcp://H:P | unix:PATH |         progress events, then result: downtime_ms,
            [USER@]HOST, live, verify,            total_s, rounds, pages_sent, bytes_sent,
            compress: bool, max_rounds,           per_round, verify (after ok the process
            max_bandwidth: int | null (B/s)       destroys the domain and exits)
migrate_cancel  -                              -  (the running migration fails; the domain stays)
==========  =================================  ==========================================

``migrate``'s destination ``[USER@]HOST`` runs ``ssh [USER@]HOST hospes
migrate-receive`` (``$HOSPES_SSH`` replaces ``ssh``), whose stdin and stdout
carry the stream.
"""

from __future__ import annotations

import asyncio
import json
import inspect
import socket
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from hospes.errors import HospesError

MAX_LINE = 64 * 1024
STREAM_LINE = 1024 * 1024      # a migration's final line lists every round
OPS = ("status", "pause", "unpause", "shutdown", "destroy", "rename", "log", "sched", "console",
       "save", "migrate", "migrate_cancel", "vcpu_set", "mem_set")

#: What a streamed operation hands its caller for each event line.
EventHandler = Callable[[dict[str, Any]], "Awaitable[None] | None"]


class ControlError(HospesError):
    """The domain process refused a request or could not be reached."""


class _HandlerFailed(Exception):
    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line; raise ControlError if it is not a JSON object."""
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise ControlError(f"Malformed control message: {e}") from e
    if not isinstance(obj, dict):
        raise ControlError("Malformed control message: not a JSON object")
    return obj


def _check(reply: dict[str, Any]) -> dict[str, Any]:
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error") or "The domain process refused the request."))
    return reply


async def request(path: Path, op: str, /, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
    """Send one request and return the reply; ControlError on refusal or no answer."""
    return await request_stream(path, op, _no_events, timeout, **args)


def _no_events(event: dict[str, Any]) -> None:
    raise ControlError(f"The domain process sent an event ({event.get('event')!r}) to a plain request.")


async def request_stream(path: Path, op: str, on_event: EventHandler, /, timeout: float | None = None,
                         **args: Any) -> dict[str, Any]:
    """Send one request whose reply is preceded by event lines (``migrate``).

    ``on_event`` gets each ``{"event": ...}`` line (it may be a coroutine
    function); the final line is returned, or raised as ControlError. ``timeout``
    bounds the whole operation (None: no bound). Cancelling the caller closes the
    connection, which is how the domain process learns to give up.
    """
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path), limit=STREAM_LINE),
                                                10.0 if timeout is None else min(timeout, 10.0))
    except (OSError, asyncio.TimeoutError) as e:
        raise ControlError(f"Cannot reach the domain process at {path}: {e or 'timeout'}") from e
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        writer.write(encode({"op": op, **args}))
        await writer.drain()
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            line = await asyncio.wait_for(reader.readline(), left)
            if not line:
                raise ControlError(f"The domain process closed the control connection during {op!r}.")
            message = decode(line)
            if "event" in message and "ok" not in message:
                try:
                    handled = on_event(message)
                    if inspect.isawaitable(handled):
                        await handled
                except Exception as e:
                    raise _HandlerFailed(e) from e
                continue
            return _check(message)
    except _HandlerFailed as failed:
        raise failed.error from None   # the caller's own failure, not the control channel's
    except (OSError, asyncio.TimeoutError, ValueError) as e:
        raise ControlError(f"The control request {op!r} failed: {e or 'timeout'}") from e
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def open_console(path: Path, timeout: float = 10.0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a console stream: after this, reads are guest output, writes are guest input."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path), limit=MAX_LINE), timeout)
    except (OSError, asyncio.TimeoutError) as e:
        raise ControlError(f"Cannot reach the domain process at {path}: {e or 'timeout'}") from e
    try:
        writer.write(encode({"op": "console"}))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        _check(decode(line) if line else {"ok": False, "error": "The domain process closed the console."})
    except BaseException:
        writer.close()
        raise
    return reader, writer


def request_sync(path: Path, op: str, /, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
    """Blocking variant of :func:`request`, for tools and tests."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            s.sendall(encode({"op": op, **args}))
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError as e:
            raise ControlError(f"The control request {op!r} to {path} failed: {e}") from e
    if not buf:
        raise ControlError(f"The domain process closed the control connection during {op!r}.")
    return _check(decode(buf))
