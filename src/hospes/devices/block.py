"""The virtual block device backend (blkback): a host file as the guest's xvdX.

Xenbus handshake (pv-abi.md §10.6), as the toolstack and blkback do it::

    toolstack: frontend dir (state 1) + backend dir (state 2, InitWait)
    frontend:  grants its ring page, allocates an unbound port, writes ring-ref,
               event-channel, protocol, state 3 (Initialised)
    backend:   maps the ring, binds the port, writes sectors/info/sector-size,
               state 4 (Connected)
    frontend:  state 4; requests flow; closing: 5 -> 6, the backend follows

Requests (io/blkif.h) sit on a one-page shared ring of 32 slots of 112 bytes.
A request carries up to 11 segments (44 KiB); an indirect request
(BLKIF_OP_INDIRECT, offered as ``feature-max-indirect-segments``) names up to
8 granted pages that hold its segment list instead, so a frontend sends fewer,
larger requests (Linux blkfront takes 32 segments, 128 KiB) and the guest
pays fewer notifications and completions per MiB. Each request is one
preadv/pwritev between the file and the guest's pages, no copy in between.
Data pages are named by grant references, each resolved through the
domain's grant table (``hospes.pv.grant``: permit access, granted to dom0,
writable when the disk writes into the page, a frame of guest RAM); every
segment bound is checked before memory is touched. A read holds a writable
type reference on each page it fills while it fills them, and the ring page
holds one while the device is connected (as Xen's writable grant map does),
so a page the guest has made a page table or GDT is never written: such a
request gets an error status, such a ring is refused with a log line. A
frontend that breaks the protocol gets an error status for that request,
never a host exception; one that breaks the ring indices is disconnected.

A worker thread serves the ring (``hospes.pv.ring.BackRing``), so the vCPU
that notifies never waits for the disk. Each wake-up serves every request
published (and, for a frontend that queues, lingers briefly for more before
asking to be notified again, letting the responses' event wait for that one
linger), answers them in one push with at most one notification, and
re-checks the ring before it sleeps. A transfer the host's page cache can do at once
(``RWF_NOWAIT``) is done by the worker itself; one that would wait for the
host's disk goes to a few I/O threads, so several are in flight together and
complete in any order (a response names its request's id). The xenbus handshake is the shared
``XenbusBackend``; everything the backend needs of its domain comes through a
``DeviceHost``.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from hospes.devices.host import BACKEND_DOMID, DeviceHost, guarded
from hospes.devices.xenbus import XenbusBackend, XenbusState, device_paths, publish_device
from hospes.errors import HospesError
from hospes.files import open_host
from hospes.pv.evtchn import BackendEndpoint
from hospes.pv.ring import MASK, BackRing, BackRingState, RingError
from hospes.state import StateError, check_version

log = logging.getLogger(__name__)

BLKIF_OP_READ = 0
BLKIF_OP_WRITE = 1
BLKIF_OP_WRITE_BARRIER = 2
BLKIF_OP_FLUSH_DISKCACHE = 3
BLKIF_OP_INDIRECT = 6
BLKIF_RSP_OKAY = 0
BLKIF_RSP_ERROR = -1
BLKIF_RSP_EOPNOTSUPP = -2
BLKIF_MAX_SEGMENTS = 11
MAX_INDIRECT_SEGMENTS = 256        # what we offer; blkback's figure
MAX_INDIRECT_PAGES = 8             # BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST
SEGMENTS_PER_INDIRECT_PAGE = 512   # 8-byte blkif_request_segment entries in a 4 KiB page
RING_SLOTS = 32
SLOT_SIZE = 112
SECTOR = 512
VDISK_READONLY = 4

_REQ = struct.Struct("<BBH4xQQ")     # operation, nr_segments, handle, id, sector_number
_INDIRECT = struct.Struct("<BH")     # indirect_op, nr_segments (at offset 1)
_SEG = struct.Struct("<IBB")         # gref, first_sect, last_sect
_RSP = struct.Struct("<QBxh")        # id, operation, status

XVDA = 51712  # (202 << 8) | (disk << 4) | partition
#: Threads for transfers that would wait for the host's disk (several in flight at once).
IO_THREADS = 4
#: How long the worker keeps looking at the ring after a pass that took requests, before it
#: asks the frontend for a notification again (see BlockBackend._serve).
LINGER_S = 0.0002
#: Lingers finding at most one request after which the worker stops lingering until a pass takes several.
LINGER_TRIES = 4


class BlockError(HospesError):
    """A disk could not be attached."""


@dataclass(frozen=True)
class BlockState:
    """Saved block backend: the xenbus state, the event channel port and, while
    connected, the ring's position. No request is in flight in a saved
    backend (see :meth:`BlockBackend.save`); the disk's contents are the
    file's."""

    VERSION: ClassVar[int] = 1
    vdev: int
    xenbus: XenbusState
    port: int
    ring: BackRingState | None
    version: int = VERSION


@dataclass(frozen=True)
class DiskConfig:
    path: Path
    readonly: bool = False
    vdev: int = XVDA


def _advance(views: list[memoryview], done: int) -> None:
    """Drop the first ``done`` bytes of ``views`` (after a transfer that may have been short)."""
    while views and done >= len(views[0]):
        done -= len(views[0])
        views.pop(0)
    if views and done:
        views[0] = views[0][done:]


class _Job:
    """A transfer on the I/O threads: what its completion needs."""

    __slots__ = ("op", "req_id", "held", "frames", "future")

    def __init__(self, op: int, req_id: int, held: list[int], frames: list[int]) -> None:
        self.op = op
        self.req_id = req_id
        self.held = held          # frames holding a writable reference until the read is done
        self.frames = frames
        self.future: futures.Future[None] | None = None


def vdev_number(name: str) -> int:
    """xvda -> 51712, xvdb -> 51728, ... (the xvd major 202, 16 minors a disk)."""
    if not (name.startswith("xvd") and len(name) == 4 and "a" <= name[3] <= "p"):
        raise BlockError(f"Virtual device {name!r} is not supported; use xvda to xvdp.")
    return (202 << 8) | ((ord(name[3]) - ord("a")) << 4)


class BlockBackend:
    """One virtual disk of one domain.

    ``BlockBackend(host, disk)`` publishes the device and follows the
    frontend; ``close()`` stops it. ``save()``/``restore()`` move it (see
    :meth:`save`).
    """

    def __init__(self, host: DeviceHost, disk: DiskConfig) -> None:
        self._setup(host, disk, XenbusState.INIT_WAIT)
        try:
            self._publish()
        except HospesError:
            os.close(self.fd)
            raise
        self._start()

    def _setup(self, host: DeviceHost, disk: DiskConfig, state: XenbusState) -> None:
        self.host = host
        self.disk = disk
        self._mem = host.mem
        self._grants = host.grants
        try:
            self.fd = open_host(disk.path, os.O_RDONLY if disk.readonly else os.O_RDWR)
        except OSError as e:
            raise BlockError(
                f"Cannot open disk image {disk.path}: {e.strerror}; check the path and permissions.") from e
        size = os.fstat(self.fd).st_size
        if size < SECTOR:
            os.close(self.fd)
            raise BlockError(f"Disk image {disk.path} is {size} bytes; a disk needs at least one 512-byte sector.")
        self.sectors = size // SECTOR
        self.front, self.back = device_paths(host.domid, "vbd", disk.vdev)
        self.port = 0
        self._ring: BackRing | None = None
        self.connected = False
        self._work = threading.Event()
        self._stop = False
        self._frozen = False               # see freeze()
        self._lock = threading.Lock()      # the ring: worker vs. xenbus vs. save
        self._pushed = 0                   # rsp_prod_pvt at the last push
        self._linger_tries = 0             # lingers left before a fruitless streak stops them
        self._owed = False                 # pushed responses whose notification is not sent yet
        self._deferred = False             # ... held back for one linger already
        self._nowait_read = self._nowait_write = True   # until the file says RWF_NOWAIT is unsupported
        self._pool = futures.ThreadPoolExecutor(IO_THREADS, thread_name_prefix=f"blkio-{disk.vdev}")
        self._inflight: set[futures.Future[None]] = set()
        self._finished: deque[tuple[_Job, int]] = deque()   # appended by I/O threads
        self._thread = threading.Thread(target=guarded(host.failed, f"block backend {disk.vdev}", self._serve),
                                        name=f"blkback-{disk.vdev}", daemon=True)
        self._xenbus = XenbusBackend(host.store, self.front, self.back, self, name=f"vbd {disk.vdev}", state=state,
                                     failed=host.failed)

    def _start(self) -> None:
        self._thread.start()
        self._xenbus.start()

    # --- xenbus --------------------------------------------------------------------

    def _publish(self) -> None:
        publish_device(
            self.host.store, self.host.domid, self.front, self.back,
            backend={
                "params": str(self.disk.path),
                "mode": "r" if self.disk.readonly else "w",
                "feature-flush-cache": "1",
                "feature-max-indirect-segments": str(MAX_INDIRECT_SEGMENTS),
            },
            frontend={"virtual-device": str(self.disk.vdev), "device-type": "disk"},
        )

    @property
    def xenbus_state(self) -> XenbusState:
        return self._xenbus.state

    def connect(self) -> Mapping[str, str]:
        """XenbusDevice: map the frontend's ring and bind its port."""
        xb = self._xenbus
        ref, port = xb.frontend("ring-ref"), xb.frontend("event-channel")
        protocol = xb.frontend("protocol") or "x86_64-abi"
        if ref is None or port is None or protocol != "x86_64-abi":
            raise ValueError("missing ring-ref/event-channel or an unsupported protocol")
        gpa = self._grants.lookup(int(ref), grantee=BACKEND_DOMID, writable=True)
        ring = BackRing(self._mem, gpa, holds=self._grants, nr_slots=RING_SLOTS, slot_size=SLOT_SIZE)
        with self._lock:
            self._settle()
            old, self._ring = self._ring, ring
            self._pushed = ring.rsp_prod_pvt
        if old is not None:
            old.release()
        self.host.evtchn.bind_interdomain_local(int(port), self)
        self.port = int(port)
        return {
            "sectors": str(self.sectors),
            "info": str(VDISK_READONLY if self.disk.readonly else 0),
            "sector-size": str(SECTOR),
        }

    def activate(self) -> None:
        with self._lock:
            self.connected = self._ring is not None
        self._work.set()

    def disconnect(self) -> None:
        with self._lock:
            self._settle()   # the transfers in flight write into the frontend's pages
            self.connected = False
            ring, self._ring = self._ring, None
        if ring is not None:
            ring.release()   # the frontend may reuse the page for anything now

    def endpoints(self) -> dict[int, BackendEndpoint]:
        """The event channel ports this backend serves, for ``EventChannels.restore``."""
        return {self.port: self} if self.port else {}

    # --- the ring ------------------------------------------------------------------

    def notify(self) -> None:
        """The guest sent on our port (called on its vCPU thread: just wake the worker)."""
        self._work.set()

    def _serve(self) -> None:
        """The worker: passes over the ring until it stays empty, then sleep until notified.

        After a pass that took requests the worker may linger (``LINGER_S``)
        before it asks for the next notification: a frontend that queues
        several requests in a row publishes the rest of them meanwhile without
        a notify (a hypercall, an exit, for each), and they are served in one
        pass. It lingers only while the frontend shows that it queues (a pass
        took several requests; then up to ``LINGER_TRIES`` lingers that find
        one request or none): a frontend sending one request at a time gets
        neither an extra wake-up nor a linger's delay per request. Once a pass
        finds nothing new the worker re-arms ``req_event`` and sleeps.
        """
        lingering = False
        while not self._stop:
            # set by every notify, connect, completed transfer and close: nothing to poll
            self._work.wait(LINGER_S if lingering else None)
            self._work.clear()
            lingered, lingering = lingering, False
            if self.connected and not self._stop:
                with self._lock:
                    if not self._frozen:
                        lingering = self._drain(lingered)

    def freeze(self) -> None:
        """Serve no more requests until :meth:`thaw` (a save or migration's final copy):
        the pass in progress ends first and the transfers in flight complete and are
        answered, so guest memory is not written after this returns.
        The image's written data is flushed: a migration's destination may open it on
        another host (shared storage), where this host's page cache is not seen."""
        with self._lock:
            self._settle()
            self._frozen = True
            if not self.disk.readonly:
                try:
                    os.fdatasync(self.fd)
                except OSError as e:   # a device that cannot flush: the data is where writes put it
                    log.warning("vbd %s: cannot flush %s before the freeze: %s", self.disk.vdev, self.disk.path,
                                e.strerror)

    def thaw(self) -> None:
        with self._lock:
            self._frozen = False
        self._work.set()   # requests published meanwhile

    def _drain(self, lingered: bool = False) -> bool:
        """One pass (the caller holds the lock): answer finished transfers, serve or
        start every published request, publish the responses with at most one
        notification. Returns True if the pass took requests and the frontend has been
        queueing (the caller lingers and comes back without re-arming); else re-arms
        ``req_event`` and ends once the final check finds nothing more. ``lingered``:
        this pass follows a linger."""
        ring = self._ring
        if ring is None or not self.connected:
            return False
        mem = self._mem
        try:
            while True:
                self._complete_finished()
                took = 0
                for _ in range(ring.unconsumed()):
                    if (ring.req_cons - ring.rsp_prod_pvt) & MASK >= RING_SLOTS:
                        break   # every slot awaits a response: a broken frontend; on after completions
                    # A copy: the guest may rewrite the slot while we serve it.
                    answer = self._handle(mem.read(ring.take_request(), SLOT_SIZE))
                    took += 1
                    if answer is not None:
                        self._respond(*answer)
                self._push(notify=False)
                if took > 1:
                    self._linger_tries = LINGER_TRIES   # the frontend queues
                elif lingered:
                    # One request (or none) behind the last pass: a frontend that waits for
                    # each response would otherwise keep us lingering, its every request
                    # late by a linger, as it does not notify while we do not re-arm.
                    self._linger_tries = max(0, self._linger_tries - 1)
                if took:
                    if self._linger_tries:
                        # The frontend queues: its event for these responses may wait for the
                        # linger's pass (one event, one upcall for both), but never longer.
                        if self._owed and not self._deferred:
                            self._deferred = True
                        else:
                            self._push()
                        return True
                self._push()
                lingered = True   # from here on, requests found are requests published behind others
                if self._inflight and (ring.req_cons - ring.rsp_prod_pvt) & MASK >= RING_SLOTS:
                    return False   # a completion wakes us; taking more would overrun the responses
                if not ring.final_check():
                    return False
        except RingError as e:
            self.connected = False
            self._xenbus.fail(f"the frontend's ring is broken ({e})")
            return False

    def _respond(self, op: int, req_id: int, status: int) -> None:
        """Write one response (the caller holds the lock; published by :meth:`_push`)."""
        ring = self._ring
        if ring is not None:
            # The response overwrites a request's slot (responses may be in any order).
            _RSP.pack_into(self._mem.buf, ring.next_response(), req_id, op, status)

    def _push(self, notify: bool = True) -> None:
        """Publish the responses written since the last push, and send the one
        notification owed if the frontend asked for it (at once unless ``notify``
        is False: then :attr:`_owed` remembers it; a later push must not miss it,
        as the frontend's ``rsp_event`` check only looks at the newest responses)."""
        ring = self._ring
        if ring is not None and ring.rsp_prod_pvt != self._pushed:
            self._pushed = ring.rsp_prod_pvt
            self._owed |= ring.push_responses()
        if notify:
            self._deferred = False
            if self._owed:
                self._owed = False
                self.host.evtchn.notify_backend_port(self.port, self)

    def _complete_finished(self) -> None:
        """Answer the transfers the I/O threads have finished (the caller holds the lock)."""
        finished = self._finished
        while finished:
            job, status = finished.popleft()
            if job.future is not None:
                self._inflight.discard(job.future)
            if job.held:
                self._grants.release_writable(job.held)
            if status == BLKIF_RSP_OKAY and job.held:   # after the reads: see GuestMemory.dirty
                for frame in job.frames:
                    self._mem.mark(frame, 8 * SECTOR)
            self._respond(job.op, job.req_id, status)

    def _settle(self) -> None:
        """Wait for every transfer in flight, then answer and publish them (the caller
        holds the lock): afterwards no I/O thread touches guest memory."""
        if self._inflight:
            futures.wait(list(self._inflight))
        self._complete_finished()
        self._push()

    def _handle(self, req: bytes) -> tuple[int, int, int] | None:
        """Serve or start one request: (operation for the response, id, status) when it is
        done, None when its transfer went to the I/O threads (answered on completion)."""
        op, nseg, _handle, req_id, sector = _REQ.unpack_from(req, 0)
        try:
            if op == BLKIF_OP_INDIRECT:
                # blkif_request_indirect: the response names the operation done, not "indirect"
                op, nseg = _INDIRECT.unpack_from(req, 1)
                if op not in (BLKIF_OP_READ, BLKIF_OP_WRITE):
                    raise ValueError(f"indirect operation {op}")
                segments = self._indirect_segments(nseg, req)
            elif op in (BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER):
                if nseg > BLKIF_MAX_SEGMENTS or (op in (BLKIF_OP_READ, BLKIF_OP_WRITE) and nseg == 0):
                    raise ValueError(f"{nseg} segments")
                segments = [_SEG.unpack_from(req, 24 + 8 * i) for i in range(nseg)]
            else:
                return op, req_id, BLKIF_RSP_EOPNOTSUPP
            if op != BLKIF_OP_READ and segments and self.disk.readonly:
                return op, req_id, BLKIF_RSP_ERROR
            if op in (BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER):
                # Ordered after everything taken before it (a barrier's meaning; for a
                # flush simply the safe reading), and nothing after it starts first.
                self._settle()
                if segments:
                    self._io(os.pwritev, self._views(BLKIF_OP_WRITE, sector, segments)[0], sector * SECTOR)
                if not self.disk.readonly:
                    os.fdatasync(self.fd)
                return op, req_id, BLKIF_RSP_OKAY
            if self._transfer(op, req_id, sector, segments):
                return op, req_id, BLKIF_RSP_OKAY
            return None
        except (ValueError, OSError, HospesError) as e:
            log.warning("vbd %s: request %#x failed: %s", self.disk.vdev, req_id, e)
            return op, req_id, BLKIF_RSP_ERROR

    def _indirect_segments(self, nseg: int, req: bytes) -> list[tuple[int, int, int]]:
        """The segment list of an indirect request, read from its granted pages."""
        if not 1 <= nseg <= MAX_INDIRECT_SEGMENTS:
            raise ValueError(f"{nseg} indirect segments (at most {MAX_INDIRECT_SEGMENTS})")
        pages = -(-nseg // SEGMENTS_PER_INDIRECT_PAGE)
        grefs = struct.unpack_from(f"<{pages}I", req, 28)
        mem = self._mem
        segments: list[tuple[int, int, int]] = []
        for k, gref in enumerate(grefs):
            page = self._grants.lookup(gref, grantee=BACKEND_DOMID, writable=False)
            count = min(SEGMENTS_PER_INDIRECT_PAGE, nseg - k * SEGMENTS_PER_INDIRECT_PAGE)
            raw = mem.read(page, count * 8)
            segments += [_SEG.unpack_from(raw, 8 * i) for i in range(count)]
        return segments

    def _views(self, op: int, sector: int, segments: list[tuple[int, int, int]]) -> tuple[list[memoryview], list[int]]:
        """The guest memory the segments name (every grant and bound checked), and their frames."""
        mem = self._mem
        lookup = self._grants.lookup
        writable = op == BLKIF_OP_READ
        views = []
        frames = []
        total = 0
        for gref, first, last in segments:
            if first > last or last > 7:
                raise ValueError(f"segment sectors {first}..{last}")
            frame = lookup(gref, grantee=BACKEND_DOMID, writable=writable)
            n = (last - first + 1) * SECTOR
            views.append(mem.view(frame + first * SECTOR, n))
            frames.append(frame)
            total += n
        if sector < 0 or (sector * SECTOR) + total > self.sectors * SECTOR:
            raise ValueError(f"sectors {sector}+{total // SECTOR} beyond the disk's {self.sectors}")
        return views, frames

    def _transfer(self, op: int, req_id: int, sector: int, segments: list[tuple[int, int, int]]) -> bool:
        """Move the segments' sectors between the file (from ``sector`` on) and the granted
        pages: True when done here, False when the rest went to the I/O threads.

        A read is tried at once without blocking (``RWF_NOWAIT``: the host page
        cache has it), which costs no thread hand-off; only what would wait for
        the host's disk goes to an I/O thread, so several such requests are in
        flight together. Writes go the same way.
        """
        views, frames = self._views(op, sector, segments)
        pos = sector * SECTOR
        read = op == BLKIF_OP_READ
        held = [frame >> 12 for frame in frames] if read else []
        if held:
            self._grants.hold_writable(held)   # GrantError for a page table or GDT page: the request fails
        try:
            pos = self._try_now(read, views, pos)
        except OSError:
            if held:
                self._grants.release_writable(held)
            raise
        if not views:
            if held:
                self._grants.release_writable(held)
                for frame in frames:   # after the reads: see GuestMemory.dirty
                    self._mem.mark(frame, 8 * SECTOR)
            return True
        job = _Job(op, req_id, held, frames)
        job.future = self._pool.submit(self._run_job, job, os.preadv if read else os.pwritev, views, pos)
        self._inflight.add(job.future)
        job.future.add_done_callback(self._job_done)
        return False

    def _try_now(self, read: bool, views: list[memoryview], pos: int) -> int:
        """Transfer what the host can do without waiting (consumes ``views``); the position after it."""
        if not (self._nowait_read if read else self._nowait_write):
            return pos
        try:
            if read:
                done = os.preadv(self.fd, views, pos, os.RWF_NOWAIT)
            else:
                done = os.pwritev(self.fd, views, pos, os.RWF_NOWAIT)
        except BlockingIOError:
            return pos
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            # this file cannot say "would block": every transfer goes to the I/O threads
            if read:
                self._nowait_read = False
            else:
                self._nowait_write = False
            return pos
        if done <= 0:
            return pos   # let the I/O thread find out (end of file, a device that stopped)
        _advance(views, done)
        return pos + done

    def _run_job(self, job: _Job, io: Callable[[int, list[memoryview], int], int], views: list[memoryview],
                 pos: int) -> None:
        """An I/O thread: the blocking part of one transfer; the worker answers it (even
        after a Hospes bug here, which also reaches the failure hook: see _job_done)."""
        status = BLKIF_RSP_ERROR
        try:
            self._io(io, views, pos)
            status = BLKIF_RSP_OKAY
        except OSError as e:
            log.warning("vbd %s: request %#x failed: %s", self.disk.vdev, job.req_id, e)
        finally:
            self._finished.append((job, status))

    def _job_done(self, future: futures.Future[None]) -> None:
        error = future.exception()
        if error is not None:   # a Hospes bug in _run_job: the domain ends
            self.host.failed(f"block backend {self.disk.vdev} I/O", error)
        self._work.set()

    def _io(self, io: Callable[[int, list[memoryview], int], int], views: list[memoryview], pos: int) -> None:
        """preadv/pwritev ``views`` at byte ``pos`` of the file, going on after short transfers."""
        while views:
            done = io(self.fd, views, pos)
            if done <= 0:
                raise OSError(f"{'read' if io is os.preadv else 'write'} at byte {pos} stopped early")
            pos += done
            _advance(views, done)

    # --- saved state ---------------------------------------------------------------

    def save(self) -> BlockState:
        """The backend's state; call with the guest's vCPUs paused.

        Takes the ring lock, so a pass in progress ends first, then waits for
        the transfers still in flight and publishes their responses: every
        request taken from the ring is answered and nothing is in flight.
        Requests the guest published that we have not taken stay in its memory
        and are served after restore.
        """
        with self._lock:
            self._settle()
            ring = self._ring.save() if self._ring is not None and self.connected else None
            return BlockState(vdev=self.disk.vdev, xenbus=self._xenbus.state, port=self.port, ring=ring)

    @classmethod
    def restore(cls, state: BlockState, *, host: DeviceHost, disk: DiskConfig) -> BlockBackend:
        """A backend serving ``disk`` as the saved one did, over ``host``.

        The xenstore directories are the restored store's, so nothing is
        published. ``host.evtchn`` is not touched: restore the event channels
        afterwards with this backend's :meth:`endpoints`. The worker looks at
        the ring at once, for requests the guest published meanwhile.
        """
        check_version(state, "block backend")
        if state.vdev != disk.vdev:
            raise StateError(f"The saved block backend is virtual device {state.vdev}, not {disk.vdev}.")
        if state.ring is not None:
            check_version(state.ring, "block ring")
            if not 0 <= state.ring.frame < host.grants.ram_frames:
                raise StateError(f"The saved block ring is at frame {state.ring.frame:#x}, outside the guest's RAM.")
        backend = cls.__new__(cls)
        backend._setup(host, disk, state.xenbus)
        backend.port = state.port
        if state.ring is not None:
            r = state.ring
            try:
                backend._ring = BackRing(host.mem, r.frame << 12, holds=host.grants, nr_slots=RING_SLOTS,
                                         slot_size=SLOT_SIZE, req_cons=r.req_cons, rsp_prod_pvt=r.rsp_prod_pvt)
            except RingError as e:
                os.close(backend.fd)
                raise StateError(f"The saved block ring cannot be restored: {e}") from None
            backend._pushed = r.rsp_prod_pvt & MASK
            backend.connected = state.xenbus is XenbusState.CONNECTED
        backend._start()
        backend._work.set()
        return backend

    def close(self) -> None:
        self._stop = True
        self._work.set()
        self._thread.join(2)
        self._xenbus.close()
        with self._lock:
            self._settle()
            ring, self._ring = self._ring, None
            self.connected = False
        if ring is not None:
            ring.release()
        self._pool.shutdown()
        os.close(self.fd)
