"""The sending side of a migration: pre-copy rounds, a brief freeze, the handover.

Order (docs/migration-stream.md, "Migration")::

    HEADER CONFIG
    live:  round 1: every page, the guest running (dirty logging on)
           round n: the pages written during round n-1
           ... until few pages are dirty, the count stops shrinking, or max_rounds
    pause + freeze (Domain.save); the last dirty pages and the held ones; STATE;
    [VERIFY]; END
    <- REPLY ready      (the destination built the domain, paused)
    COMMIT ->           (from here on the source never runs again)
    <- REPLY running    (the guest runs there; the source is destroyed)

Never both running, never neither: until COMMIT is written, any failure or a
cancel unpauses the source (it keeps running as if nothing happened); once
COMMIT is written the source stays paused for good, and is destroyed when the
destination confirms. If that confirmation never comes, the caller is told the
outcome is unknown and the source is kept, paused, for a person to decide.

Writes that KVM does not log (this process's own) come from
:meth:`hospes.domain.Domain.dirty_frames` too; pages this process writes
through long-held views are sent in the final copy whatever the logs say.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hospes.domain import Domain
from hospes.errors import HospesError
from hospes.migrate.savefile import FEATURES
from hospes.migrate.stream import PAGE_SIZE, RecordReader, RecordType, StreamError, StreamWriter
from hospes.migrate.transport import Channel
from hospes.migrate.verify import DIGEST_SIZE, page_digests
from hospes.state import encode

MAX_ROUNDS = 5              # Xen's libxc stops after 5 live iterations too
DIRTY_THRESHOLD = 50        # pages: few enough to copy in the freeze
CHUNK_PAGES = 1024          # pages between cancel checks, progress and bandwidth pacing
READY_TIMEOUT_S = 120.0     # the destination builds the domain in this time
RUNNING_TIMEOUT_S = 30.0
PROGRESS_INTERVAL_S = 0.2
GIL_SWITCH_S = 0.0005


class MigrationError(HospesError):
    """The migration failed; the source domain still runs (unless ``committed``)."""

    def __init__(self, message: str, *, committed: bool = False) -> None:
        super().__init__(message)
        self.committed = committed


class MigrationCancelled(MigrationError):
    pass


@dataclass(frozen=True)
class MigrateOptions:
    live: bool = True
    verify: bool = False
    compress: bool = False
    max_rounds: int = MAX_ROUNDS
    max_bandwidth: int | None = None        # bytes per second
    dirty_threshold: int = DIRTY_THRESHOLD


@dataclass
class RoundStats:
    round: int
    pages: int          # sent in the round
    dirty: int          # written while it was sent (the next round's pages)
    seconds: float


@dataclass
class MigrationResult:
    downtime_ms: float
    total_s: float
    rounds: int
    pages_sent: int
    bytes_sent: int
    per_round: list[RoundStats] = field(default_factory=list)
    verify: dict[str, int] | None = None
    # Where the downtime went, in ms: stopping the vCPUs and saving the state,
    # the last copy with STATE and END, the destination building the domain
    # (until its "ready"), and COMMIT until "running".
    phases: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[dict[str, Any]], None]


class Sender:
    """Sends one domain over ``channel``; :meth:`run` returns when it runs at the destination."""

    def __init__(self, dom: Domain, config: Any, channel: Channel, options: MigrateOptions,
                 progress: Progress | None = None, cancel: threading.Event | None = None) -> None:
        self.dom = dom
        self.config = config
        self.channel = channel
        self.options = options
        self.progress = progress or (lambda event: None)
        self.cancel = cancel or threading.Event()
        self.frames = dom.mem.size // PAGE_SIZE
        self.writer: StreamWriter | None = None
        self.rounds: list[RoundStats] = []
        self._t0 = 0.0
        self._last_progress = 0.0
        self._remaining = 0

    # --- the whole migration ---------------------------------------------------------

    def run(self) -> MigrationResult:
        # The vCPU threads need the GIL at every exit; while this thread copies pages,
        # hand it over sooner than every 5 ms, or each guest system call waits that long.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_S)
        try:
            return self._run()
        finally:
            sys.setswitchinterval(switch)

    def _run(self) -> MigrationResult:
        self._t0 = time.monotonic()
        dom = self.dom
        was_paused = dom.paused
        paused_at: float | None = None
        committed = False
        logging_on = False
        replies: RecordReader | None = None
        try:
            self.writer = StreamWriter(self.channel.wfile, compress=self.options.compress, features=FEATURES)
            self.writer.config({"domain": self.config, "memory_bytes": dom.mem.size})
            if self.options.live and not was_paused:
                dom.start_dirty_log()
                logging_on = True
                final = self._precopy()
            else:
                final = set(range(self.frames))
            paused_at = time.monotonic()
            state = dom.save()   # pauses and freezes the domain
            saved_at = time.monotonic()
            if logging_on:
                final |= dom.dirty_frames() | dom.held_frames()
                dom.stop_dirty_log()
                logging_on = False
            self._send_round(sorted(final), final=True)
            self.writer.state(encode(state))
            if self.options.verify:
                self.writer.verify(page_digests(dom.mem.buf, self.frames), DIGEST_SIZE)
            self.writer.end()
            sent_at = time.monotonic()
            replies = RecordReader(self.channel.rfile)
            ready = self._reply(replies, "ready", READY_TIMEOUT_S)
            ready_at = time.monotonic()
            self._check_cancel()
            if self.channel.peer_gone():   # a destination that died after "ready" never gets the guest
                raise MigrationError("The destination closed the connection before the handover.")
            self.writer.commit()
            committed = True
            self._reply(replies, "running", RUNNING_TIMEOUT_S)
            resumed_at = time.monotonic()
        except BaseException as e:
            if logging_on:
                dom.stop_dirty_log()
            if committed:
                why = e if isinstance(e, HospesError) else repr(e)
                raise MigrationError(
                    f"The destination was told to run the guest but did not confirm it ({why}). The source is "
                    "kept paused: check the destination (`hospes list` there); destroy this copy if the guest "
                    "runs there, else unpause it.", committed=True) from e
            if paused_at is not None:
                dom.thaw()
                if not was_paused:
                    dom.unpause()
            if isinstance(e, MigrationError):
                raise
            if isinstance(e, (OSError, StreamError)):
                why = self._refusal() if replies is None else ""
                if why:
                    raise MigrationError(f"The destination refused the domain: {why}. The domain keeps running "
                                         "here.") from e
                peer = self.channel.peer_message()
                raise MigrationError(f"The migration stream broke: {e}{f' ({peer})' if peer else ''}. "
                                     "The domain keeps running here.") from e
            raise
        total = resumed_at - self._t0
        writer = self.writer
        return MigrationResult(
            downtime_ms=round((resumed_at - paused_at) * 1000, 1), total_s=round(total, 3),
            rounds=len(self.rounds), pages_sent=writer.pages_sent, bytes_sent=writer.bytes_written,
            per_round=self.rounds, verify=ready.get("verify"),
            phases={name: round((end - start) * 1000, 1) for name, start, end in (
                ("stop", paused_at, saved_at), ("last_copy", saved_at, sent_at), ("build", sent_at, ready_at),
                ("commit", ready_at, resumed_at))})

    # --- rounds ----------------------------------------------------------------------

    def _precopy(self) -> set[int]:
        """Copy rounds while the guest runs; returns the pages dirty after the last one."""
        frames: Sequence[int] = range(self.frames)
        while True:
            self._send_round(frames)
            dirty = self.dom.dirty_frames()
            self.rounds[-1].dirty = len(dirty)
            self._emit(force=True)
            previous = self.rounds[-1].pages
            if (len(dirty) <= self.options.dirty_threshold or len(self.rounds) >= self.options.max_rounds
                    or (len(self.rounds) > 1 and len(dirty) >= previous)):
                return dirty
            frames = sorted(dirty)

    def _send_round(self, frames: Sequence[int], final: bool = False) -> None:
        writer = self.writer
        assert writer is not None
        stats = RoundStats(round=len(self.rounds) + 1, pages=len(frames), dirty=0, seconds=0.0)
        self.rounds.append(stats)
        start = time.monotonic()
        for i in range(0, len(frames), CHUNK_PAGES):
            if not final:
                self._check_cancel()
            writer.pages(frames[i:i + CHUNK_PAGES], self.dom.mem.buf)
            self._remaining = len(frames) - i - CHUNK_PAGES
            if not final:
                self._pace()
                self._emit()
        stats.seconds = round(time.monotonic() - start, 4)
        self._remaining = 0

    def _pace(self) -> None:
        limit = self.options.max_bandwidth
        writer = self.writer
        if not limit or writer is None:
            return
        ahead = writer.bytes_written / limit - (time.monotonic() - self._t0)
        if ahead > 0:
            self.cancel.wait(ahead)

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise MigrationCancelled("The migration was cancelled; the domain keeps running here.")

    def _emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        writer = self.writer
        assert writer is not None
        current = self.rounds[-1]
        elapsed = now - self._t0
        self.progress({
            "event": "progress", "round": current.round, "pages_sent": writer.pages_sent,
            "round_pages": current.pages, "dirty_pages": current.dirty,
            "dirty_rate": round(current.dirty / current.seconds, 1) if current.seconds else 0.0,
            "remaining_pages": max(self._remaining, 0), "elapsed": round(elapsed, 3),
        })

    # --- the handover ---------------------------------------------------------------

    def _refusal(self) -> str:
        """Why the destination hung up mid-stream, if it said so (its REPLY error) before it did."""
        self.channel.settimeout(2.0)
        try:
            replies = RecordReader(self.channel.rfile)
            for _ in range(3):
                record = replies.next()
                data = record.json() if record.type is RecordType.REPLY else None
                if isinstance(data, dict) and data.get("status") == "error":
                    return str(data.get("message") or "")
        except (OSError, StreamError, ValueError):
            pass
        finally:
            self.channel.settimeout(None)
        return ""

    def _reply(self, replies: RecordReader, want: str, timeout: float) -> dict[str, Any]:
        self.channel.settimeout(timeout)
        try:
            record = replies.next()
        except TimeoutError:
            raise MigrationError(f"The destination did not answer within {timeout:.0f} s.") from None
        finally:
            self.channel.settimeout(None)
        if record.type is RecordType.HEADER:
            return self._reply(replies, want, timeout)
        data = record.json() if record.type is RecordType.REPLY else None
        if not isinstance(data, dict):
            raise MigrationError(f"The destination answered with record {record.type.name}, not a reply.")
        if data.get("status") == "error":
            raise MigrationError(f"The destination refused the domain: {data.get('message', 'no reason given')}. "
                                 "The domain keeps running here.")
        if data.get("status") != want:
            raise MigrationError(f"The destination answered {data.get('status')!r} where {want!r} was due.")
        return data


__all__ = ["MAX_ROUNDS", "MigrateOptions", "MigrationCancelled", "MigrationError", "MigrationResult", "Sender"]
