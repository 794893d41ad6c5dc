"""``hospes save``, ``restore``, ``migrate`` and ``migrate-receive``: xl's commands for moving domains.

They go through hospesd like every xl command (:mod:`hospes.cli.xl`); paths are
made absolute here, against the caller's directory, because the daemon resolves
them from /. ``migrate-receive`` without ``--listen`` is what ``hospes migrate
DOM HOST`` runs over ssh on the destination: the stream is its stdin, the
replies its stdout, and it relays both to an incoming domain on a private Unix
socket, so nothing else may be written to stdout there.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import click

from hospes.cli import xl
from hospes.errors import HospesError

MIB = 1024 * 1024
RATE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
RELAY_CHUNK = 1 << 16
RELAY_LINGER_S = 10.0       # after the receiver is done, how long the sender may still finish
RECEIVE_TIMEOUT_S = 24 * 3600.0
EXIT_INTERRUPTED = 130


# --- formats ---------------------------------------------------------------------------------


def parse_rate(text: str) -> int:
    """Bytes per second from ``100M``-style text (K/M/G/T are powers of 1024; ``B``, ``iB``
    and ``/s`` may follow). ValueError if it is not a positive rate."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)(?:i?[bB])?(?:/s)?\s*", text)
    if m is None:
        raise ValueError(f"{text!r} is not a rate: write bytes per second, e.g. 100M, 1.5G or 500K")
    rate = int(float(m.group(1)) * RATE_UNITS[m.group(2).upper()])
    if rate < 1:
        raise ValueError(f"{text!r} is not a rate: it must be at least 1 byte per second")
    return rate


class RateType(click.ParamType):
    name = "RATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_rate(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


def format_result(domain: str, result: dict[str, Any]) -> str:
    """The one line ``migrate`` prints on success."""
    return (f"migrated {domain}: downtime {float(result['downtime_ms']):.1f} ms, "
            f"total {float(result['total_s']):.2f} s, {int(result['rounds'])} rounds, "
            f"{int(result['pages_sent'])} pages sent")


def result_json(domain: str, result: dict[str, Any]) -> str:
    """``migrate --json``: the same figures, the rounds and the verify result as one object."""
    keys = ("downtime_ms", "total_s", "rounds", "pages_sent", "bytes_sent", "per_round", "verify", "phases", "dest")
    return json.dumps({"domain": domain, **{k: result[k] for k in keys if k in result}}, sort_keys=True)


def format_progress(event: dict[str, Any], width: int = 24) -> str:
    """One redraw of the progress line: a bar of pages sent against the estimate of all to send."""
    sent = int(event.get("pages_sent") or 0)
    left = int(event.get("remaining_pages") or 0)
    done = sent / (sent + left) if sent + left else 0.0
    filled = int(done * width)
    bar = "#" * filled + "." * (width - filled)
    return (f"[{bar}] {done * 100:3.0f}%  round {int(event.get('round') or 0)}  {sent} pages sent  "
            f"dirty {float(event.get('dirty_rate') or 0.0):.0f} pages/s  ~{left} pages left")


class ProgressLine:
    """Redraws one line on a terminal with carriage returns; silent elsewhere."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.enabled = out.isatty()
        self.drawn = 0

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled or event.get("event") != "progress":
            return
        line = format_progress(event)
        self.out.write("\r" + line + " " * max(0, self.drawn - len(line)))
        self.out.flush()
        self.drawn = len(line)

    def clear(self) -> None:
        if self.enabled and self.drawn:
            self.out.write("\r" + " " * self.drawn + "\r")
            self.out.flush()
            self.drawn = 0


# --- the relay of migrate-receive ---------------------------------------------------------------


def relay(sock: socket.socket, in_fd: int, out_fd: int, linger: float = RELAY_LINGER_S) -> tuple[int, int]:
    """Copy ``in_fd`` to ``sock`` and ``sock`` to ``out_fd`` at the same time; return the bytes
    each way (in, out).

    EOF on ``in_fd`` half-closes the socket (the receiver sees the end of the
    stream); EOF from the socket ends the relay and half-closes ``out_fd`` (it is
    pointed at /dev/null, so the reader sees EOF while the fd number stays valid).
    The sender gets ``linger`` seconds after that to reach its own EOF.
    """
    sent = [0]

    def upstream() -> None:
        try:
            while True:
                data = os.read(in_fd, RELAY_CHUNK)
                if not data:
                    break
                sock.sendall(data)
                sent[0] += len(data)
        except OSError:
            pass   # the receiver closed; the downstream side reports how it ended
        finally:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    thread = threading.Thread(target=upstream, name="relay-upstream", daemon=True)
    thread.start()
    received = 0
    try:
        while True:
            try:
                data = sock.recv(RELAY_CHUNK)
            except OSError:
                break
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(out_fd, view):]
            received += len(data)
    finally:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, out_fd)
        finally:
            os.close(devnull)
    thread.join(linger)
    return sent[0], received


def private_socket() -> Path:
    """A fresh socket path in the run directory, for one ssh-mode migrate-receive."""
    from hospes.toolstack.rundir import RunDir

    run = RunDir.default().ensure()
    return run.root / f"mig-{secrets.token_hex(4)}.sock"   # as short as a domain's control socket


def connect_unix(path: Path, timeout: float = 10.0) -> socket.socket:
    """Connect to the incoming domain's socket (it listens before the daemon answers; a
    short retry covers a process that is slow to accept)."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            return s
        except OSError as e:
            s.close()
            if time.monotonic() >= deadline:
                raise HospesError(f"Cannot connect to the incoming domain's socket {path}: {e.strerror or e}") from e
            time.sleep(0.05)


def absolute_unix(address: str) -> str:
    """``unix:PATH`` with PATH made absolute against the caller's directory; others as given."""
    if address.startswith("unix:") and not os.path.isabs(address[len("unix:"):]):
        return "unix:" + os.path.abspath(address[len("unix:"):])
    return address


# --- commands --------------------------------------------------------------------------------


def cmd_save(checkpoint: bool, compress: bool, domain: str, file: str) -> None:
    xl._not_dom0(domain, "be saved")
    d = xl.connect().domain(domain)
    r = d.save(Path(file).absolute(), checkpoint=checkpoint, compress=compress)
    click.echo(f"saved {d.name} to {r['path']} ({int(r['bytes']) / MIB:.1f} MiB, {float(r['seconds']):.1f} s)")


def cmd_restore(paused: bool, console: bool, file: str, overrides: tuple[str, ...]) -> None:
    h = xl.connect()
    d = h.restore(Path(file).absolute(), overrides, paused=paused)
    click.echo(f"restored {d.name} (domid {d.domid}) from {Path(file).absolute()}", err=True)
    if console:
        from hospes.toolstack.console_client import attach

        attach(h.transport, str(d.domid))


def cmd_migrate(live: bool, as_json: bool, verify: bool, compress: bool, max_rounds: int | None,
                bandwidth: int | None, domain: str, dest: str) -> None:
    from hospes.toolstack.addresses import migration_destination
    from hospes.toolstack.client import HospesApiError

    xl._not_dom0(domain, "be migrated")
    dest = absolute_unix(dest)
    try:
        migration_destination(dest)
    except ValueError as e:
        xl._fail(f"hospes migrate: {e}")
    d = xl.connect().domain(domain)
    progress = ProgressLine(sys.stderr)
    try:
        result = d.migrate(dest, live=live, verify=verify, compress=compress, max_rounds=max_rounds,
                           max_bandwidth=bandwidth, progress=progress)
    except KeyboardInterrupt:
        progress.clear()
        click.echo(f"hospes migrate: interrupted; the migration of {d.name} was cancelled and it keeps "
                   "running here.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except HospesApiError as e:
        progress.clear()
        xl._fail(f"hospes migrate: {d.name} was not migrated: {e}")
        return
    progress.clear()
    click.echo(result_json(d.name, result) if as_json else format_result(d.name, result))


def cmd_migrate_receive(listen: str | None, paused: bool, name: str | None) -> None:
    from hospes.toolstack.client import HospesApiError

    h = xl.connect()
    if listen is not None:
        listen = absolute_unix(listen)
        d = h.incoming(listen, paused=paused, name=name)
        click.echo(f"listening on {listen} (domid {d.domid})", err=True)
        try:
            d.wait_incoming(RECEIVE_TIMEOUT_S)
        except HospesApiError as e:
            xl._fail(f"hospes migrate-receive: {e}")
        click.echo(f"received {d.name} (domid {d.domid})")
        return
    # ssh mode: stdout carries the stream's replies, so every message goes to stderr.
    path = private_socket()
    try:
        d = h.incoming(f"unix:{path}", paused=paused, name=name)
        sock = connect_unix(path)
        try:
            relay(sock, sys.stdin.fileno(), sys.stdout.fileno())
        finally:
            sock.close()
        try:
            d.wait_incoming(RECEIVE_TIMEOUT_S)
        except HospesApiError as e:
            xl._fail(f"hospes migrate-receive: {e}")
        click.echo(f"received {d.name} (domid {d.domid})", err=True)
    finally:
        try:
            path.unlink()
        except OSError:
            pass


COMMANDS: tuple[xl.Command, ...] = (
    xl.Command("save", cmd_save, "Save a domain to FILE and destroy it (-c: keep it running).", (
        click.Option(["-c", "checkpoint"], is_flag=True, help="Leave the domain running after saving."),
        click.Option(["-z", "--compress", "compress"], is_flag=True, help="Compress the pages (zstd)."),
        click.Argument(["domain"]), click.Argument(["file"]))),
    xl.Command("restore", cmd_restore, "Restore a domain from a save FILE; KEY=VALUE lines override its config.", (
        click.Option(["-p", "paused"], is_flag=True, help="Leave the domain paused after restoring."),
        click.Option(["-c", "console"], is_flag=True, help="Attach to the console after restoring."),
        click.Argument(["file"]), click.Argument(["overrides"], nargs=-1))),
    xl.Command("migrate", cmd_migrate,
               "Migrate a domain to DEST: [USER@]HOST (over ssh), tcp://HOST:PORT or unix:PATH.", (
        click.Option(["--live/--no-live", "live"], default=True, show_default=True,
                     help="Copy memory while the guest runs (else pause it first)."),
        click.Option(["--json", "as_json"], is_flag=True, help="Print the result as one JSON object."),
        click.Option(["--verify", "verify"], is_flag=True, help="Compare all memory after the copy."),
        click.Option(["--compress", "compress"], is_flag=True, help="Compress pages on the wire."),
        click.Option(["--max-rounds", "max_rounds"], type=click.IntRange(1, 1000), default=None,
                     help="At most N copy rounds before the final one."),
        click.Option(["--bandwidth", "bandwidth"], type=RateType(), default=None,
                     help="Limit in bytes/s, K/M/G suffixes (e.g. 100M)."),
        click.Argument(["domain"]), click.Argument(["dest"]))),
    xl.Command("migrate-receive", cmd_migrate_receive,
               "Receive one migrated domain: at --listen ADDR, or (ssh mode) on stdin/stdout.", (
        click.Option(["--listen", "listen"], default=None, metavar="ADDR",
                     help="tcp://HOST:PORT or unix:/path; without it the stream is stdin/stdout."),
        click.Option(["-p", "paused"], is_flag=True, help="Leave the received domain paused."),
        click.Option(["--name", "name"], default=None, help="Its name until the stream brings its own."))),
)
