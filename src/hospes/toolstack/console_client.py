"""Attaching a terminal (or pipes) to a domain's console through hospesd's WebSocket.

Contract of :func:`attach`: guest output goes to ``stdout`` as it comes; input
read from ``stdin`` goes to the guest. On a terminal, the terminal is put in raw
mode and Ctrl-] (0x1d) detaches (as with ``xl console``); on a pipe, input is
forwarded until EOF and output keeps flowing until the console closes. Returns
when the console closes (the domain stopped), on detach, or on Ctrl-C from a pipe.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from hospes.errors import HospesError

ESCAPE = b"\x1d"


class _RawTerminal:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: Any = None

    def __enter__(self) -> bool:
        if self.fd < 0 or not os.isatty(self.fd):
            return False
        import termios
        import tty

        self.saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd)
        return True

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


async def _attach(transport: Any, ident: str, stdin_fd: int, stdout_fd: int) -> None:
    import aiohttp

    headers = {"Authorization": f"Bearer {transport.token}"} if transport.token else {}
    if transport.url is not None:
        connector: aiohttp.BaseConnector = aiohttp.TCPConnector(ssl=transport.ssl_context or False)
        base = f"{transport.url.scheme}://{transport.url.netloc}"
    else:
        connector = aiohttp.UnixConnector(path=str(transport.socket_path))
        base = "http://localhost"
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            ws = await session.ws_connect(f"{base}/v1/domains/{ident}/console", headers=headers, heartbeat=30)
        except aiohttp.WSServerHandshakeError as e:
            raise HospesError(f"Cannot attach to the console of {ident}: HTTP {e.status} {e.message}") from e
        except aiohttp.ClientError as e:
            raise HospesError(f"Cannot attach to the console of {ident}: {e}") from e
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        with _RawTerminal(stdin_fd) as raw:
            queue: asyncio.Queue[bytes | None] = asyncio.Queue()

            def readable() -> None:
                try:
                    data = os.read(stdin_fd, 4096)
                except BlockingIOError:
                    return
                except OSError:
                    data = b""
                if not data:
                    loop.remove_reader(stdin_fd)
                    queue.put_nowait(None)
                    return
                if raw and ESCAPE in data:
                    data = data[: data.index(ESCAPE)]
                    if data:
                        queue.put_nowait(data)
                    done.set()
                    return
                queue.put_nowait(data if raw else data.replace(b"\n", b"\r"))

            reading = False
            if stdin_fd >= 0:
                try:
                    loop.add_reader(stdin_fd, readable)
                    reading = True
                except (OSError, ValueError, PermissionError):
                    reading = False

            async def send() -> None:
                while True:
                    data = await queue.get()
                    if data is None:
                        return
                    await ws.send_bytes(data)

            async def receive() -> None:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        os.write(stdout_fd, msg.data)
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        os.write(stdout_fd, msg.data.encode())
                done.set()

            tasks = [asyncio.create_task(send()), asyncio.create_task(receive())]
            try:
                await done.wait()
            finally:
                if reading:
                    loop.remove_reader(stdin_fd)
                for t in tasks:
                    t.cancel()
                await ws.close()


def attach(transport: Any, ident: str, stdin_fd: int | None = None, stdout_fd: int | None = None) -> None:
    """Attach stdin/stdout to the console of domain ``ident`` until detach or the console closes."""
    if stdin_fd is None:
        try:
            stdin_fd = sys.stdin.fileno() if sys.stdin is not None else -1
        except (OSError, ValueError):
            stdin_fd = -1
    if stdout_fd is None:
        sys.stdout.flush()
        stdout_fd = sys.stdout.fileno()
    try:
        asyncio.run(_attach(transport, ident, stdin_fd, stdout_fd))
    except KeyboardInterrupt:
        pass
