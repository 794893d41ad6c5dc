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
Data pages are named by grant references: a v1 grant entry {flags, domid,
frame} in the domain's grant frames says which frame the frontend lets
domain 0 use, and whether read-only. Hospes checks every entry (permit access,
granted to dom0, writable when the disk writes into the page) and every
segment bound before touching memory; a frontend that breaks the protocol gets
an error status for that request, never a host exception.

A worker thread serves the ring, so the vCPU that notifies never waits for
the disk.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hospes.devices.xenbus import device_paths, publish_device
from hospes.errors import HospesError
from hospes.machine.atomics import mfence

if TYPE_CHECKING:
    from hospes.domain import Domain

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
RING_HEADER = 64
SECTOR = 512
VDISK_READONLY = 4
GTF_permit_access = 1
GTF_readonly = 4
GRANT_ENTRIES_PER_FRAME = 512

XVDA = 51712  # (202 << 8) | (disk << 4) | partition


class BlockError(HospesError):
    """A disk could not be attached."""


@dataclass(frozen=True)
class DiskConfig:
    path: Path
    readonly: bool = False
    vdev: int = XVDA


def vdev_number(name: str) -> int:
    """xvda -> 51712, xvdb -> 51728, ... (the xvd major 202, 16 minors a disk)."""
    if not (name.startswith("xvd") and len(name) == 4 and "a" <= name[3] <= "p"):
        raise BlockError(f"Virtual device {name!r} is not supported; use xvda to xvdp.")
    return (202 << 8) | ((ord(name[3]) - ord("a")) << 4)


class BlockBackend:
    """One virtual disk of one domain."""

    def __init__(self, dom: "Domain", disk: DiskConfig) -> None:
        self.dom = dom
        self.disk = disk
        try:
            self.fd = os.open(disk.path, os.O_RDONLY if disk.readonly else os.O_RDWR)
        except OSError as e:
            raise BlockError(f"Cannot open disk image {disk.path}: {e.strerror}; check the path and permissions.") from e
        size = os.fstat(self.fd).st_size
        if size < SECTOR:
            os.close(self.fd)
            raise BlockError(f"Disk image {disk.path} is {size} bytes; a disk needs at least one 512-byte sector.")
        self.sectors = size // SECTOR
        self.front, self.back = device_paths(dom.domid, "vbd", disk.vdev)
        self.port = 0
        self.ring_gpa = -1
        self.req_cons = 0
        self.rsp_prod_pvt = 0
        self.connected = False
        self._work = threading.Event()
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name=f"blkback-{disk.vdev}", daemon=True)
        self._publish()
        self._thread.start()
        self._watch = dom.store.watch(f"{self.front}/state", lambda path: self._frontend_changed())

    # --- xenbus --------------------------------------------------------------------

    def _publish(self) -> None:
        publish_device(
            self.dom.store, self.dom.domid, self.front, self.back,
            backend={
                "params": str(self.disk.path),
                "mode": "r" if self.disk.readonly else "w",
                "feature-flush-cache": "1",
                "feature-max-indirect-segments": str(MAX_INDIRECT_SEGMENTS),
            },
            frontend={"virtual-device": str(self.disk.vdev), "device-type": "disk"},
        )

    def _read(self, path: str) -> str | None:
        try:
            return self.dom.store.read(path).decode()
        except HospesError:
            return None

    def _frontend_changed(self) -> None:
        state = self._read(f"{self.front}/state")
        if state == "3" and not self.connected:
            self._connect()
        elif state == "5":
            # Closing: follow (a frontend shutting down waits for exactly this).
            self.connected = False
            self.dom.store.write(f"{self.back}/state", "5")
        elif state == "6":
            self.connected = False
            self.dom.store.write(f"{self.back}/state", "6")

    def _connect(self) -> None:
        ref = self._read(f"{self.front}/ring-ref")
        port = self._read(f"{self.front}/event-channel")
        protocol = self._read(f"{self.front}/protocol") or "x86_64-abi"
        try:
            if ref is None or port is None or protocol != "x86_64-abi":
                raise ValueError("missing ring-ref/event-channel or an unsupported protocol")
            self.ring_gpa = self._granted_frame(int(ref), writable=True)
            self.port = int(port)
            self.dom.evtchn.bind_interdomain_local(self.port, self)
        except (ValueError, HospesError) as e:
            log.warning("vbd %s: the frontend's ring is unusable: %s", self.disk.vdev, e)
            self.dom.store.write(f"{self.back}/state", "6")
            return
        self.req_cons = self.rsp_prod_pvt = 0
        st = self.dom.store
        with st.transaction() as t:
            t.write(f"{self.back}/sectors", str(self.sectors))
            t.write(f"{self.back}/info", str(VDISK_READONLY if self.disk.readonly else 0))
            t.write(f"{self.back}/sector-size", str(SECTOR))
            t.write(f"{self.back}/state", "4")
        self.connected = True
        self._work.set()

    # --- grants --------------------------------------------------------------------

    def _granted_frame(self, ref: int, writable: bool) -> int:
        """Guest-physical address of the frame grant ``ref`` gives domain 0."""
        lay = self.dom.layout
        frame_index, slot = divmod(ref, GRANT_ENTRIES_PER_FRAME)
        if ref < 0 or frame_index >= self.dom.grant_frames:
            raise ValueError(f"grant reference {ref} is outside the grant table")
        flags, domid, frame = struct.unpack_from("<HHI", self.dom.mem.buf, lay.grant_frame_gpa(frame_index) + slot * 8)
        if flags & 3 != GTF_permit_access or domid != 0:
            raise ValueError(f"grant reference {ref} does not grant access to domain 0")
        if writable and flags & GTF_readonly:
            raise ValueError(f"grant reference {ref} is read-only")
        if frame >= lay.ram_pages:
            raise ValueError(f"grant reference {ref} names frame {frame:#x} outside the guest's RAM")
        return frame << 12

    # --- the ring ------------------------------------------------------------------

    def notify(self) -> None:
        """The guest sent on our port (called on its vCPU thread: just wake the worker)."""
        self._work.set()

    def _serve(self) -> None:
        while not self._stop:
            self._work.wait(0.5)
            self._work.clear()
            if self.connected and not self._stop:
                with self._lock:
                    self._drain()

    def _drain(self) -> None:
        mem = self.dom.mem
        base = self.ring_gpa
        while True:
            req_prod = mem.read_u32(base)
            if (req_prod - self.req_cons) & 0xFFFFFFFF > RING_SLOTS:
                log.warning("vbd %s: the frontend's ring indices are corrupt; disconnecting", self.disk.vdev)
                self.connected = False
                self.dom.store.write(f"{self.back}/state", "6")
                return
            notify = False
            while self.req_cons != req_prod:
                slot = base + RING_HEADER + (self.req_cons % RING_SLOTS) * SLOT_SIZE
                req = bytes(mem.view(slot, SLOT_SIZE))
                self.req_cons = (self.req_cons + 1) & 0xFFFFFFFF
                op, req_id, status = self._handle(req)
                # The response overwrites the request's slot (responses may be in any order).
                rslot = base + RING_HEADER + (self.rsp_prod_pvt % RING_SLOTS) * SLOT_SIZE
                mem.write(rslot, struct.pack("<QBxh", req_id, op, status))
                self.rsp_prod_pvt = (self.rsp_prod_pvt + 1) & 0xFFFFFFFF
                notify |= self._push_responses()
            if notify:
                self.dom.evtchn.notify_backend_port(self.port, self)
            # Final check (ring.h): ask to be notified of the next request, then look again.
            mem.write_u32(base + 4, (self.req_cons + 1) & 0xFFFFFFFF)
            mfence()
            if mem.read_u32(base) == self.req_cons:
                return

    def _push_responses(self) -> bool:
        mem = self.dom.mem
        base = self.ring_gpa
        old = mem.read_u32(base + 8)
        new = self.rsp_prod_pvt
        mfence()
        mem.write_u32(base + 8, new)
        mfence()
        event = mem.read_u32(base + 12)
        return (new - event) & 0xFFFFFFFF < (new - old) & 0xFFFFFFFF

    def _handle(self, req: bytes) -> tuple[int, int, int]:
        """Serve one request; returns (operation for the response, id, status)."""
        op, nseg, _handle, req_id, sector = struct.unpack_from("<BBH4xQQ", req, 0)
        try:
            if op == BLKIF_OP_INDIRECT:
                # blkif_request_indirect: the response names the operation done, not "indirect"
                op, nseg = struct.unpack_from("<BH", req, 1)
                if op not in (BLKIF_OP_READ, BLKIF_OP_WRITE):
                    raise ValueError(f"indirect operation {op}")
                segments = self._indirect_segments(nseg, req)
            elif op in (BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER):
                if nseg > BLKIF_MAX_SEGMENTS or (op in (BLKIF_OP_READ, BLKIF_OP_WRITE) and nseg == 0):
                    raise ValueError(f"{nseg} segments")
                segments = [struct.unpack_from("<IBB", req, 24 + 8 * i) for i in range(nseg)]
            else:
                return op, req_id, BLKIF_RSP_EOPNOTSUPP
            if op != BLKIF_OP_READ and segments and self.disk.readonly:
                return op, req_id, BLKIF_RSP_ERROR
            if segments:
                self._transfer(BLKIF_OP_READ if op == BLKIF_OP_READ else BLKIF_OP_WRITE, sector, segments)
            if op in (BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER) and not self.disk.readonly:
                os.fdatasync(self.fd)
            return op, req_id, BLKIF_RSP_OKAY
        except (ValueError, OSError, HospesError) as e:
            log.warning("vbd %s: request %#x failed: %s", self.disk.vdev, req_id, e)
            return op, req_id, BLKIF_RSP_ERROR

    def _indirect_segments(self, nseg: int, req: bytes) -> list[tuple[int, int, int]]:
        """The segment list of an indirect request, read from its granted pages."""
        if not 1 <= nseg <= MAX_INDIRECT_SEGMENTS:
            raise ValueError(f"{nseg} indirect segments (at most {MAX_INDIRECT_SEGMENTS})")
        pages = -(-nseg // SEGMENTS_PER_INDIRECT_PAGE)
        grefs = struct.unpack_from(f"<{pages}I", req, 28)
        mem = self.dom.mem
        segments: list[tuple[int, int, int]] = []
        for k, gref in enumerate(grefs):
            page = self._granted_frame(gref, writable=False)
            count = min(SEGMENTS_PER_INDIRECT_PAGE, nseg - k * SEGMENTS_PER_INDIRECT_PAGE)
            raw = mem.read(page, count * 8)
            segments += [struct.unpack_from("<IBB", raw, 8 * i) for i in range(count)]
        return segments

    def _transfer(self, op: int, sector: int, segments: list[tuple[int, int, int]]) -> None:
        """Move the segments' sectors between the file (from ``sector`` on) and the granted pages."""
        mem = self.dom.mem
        views = []
        total = 0
        for gref, first, last in segments:
            if first > last or last > 7:
                raise ValueError(f"segment sectors {first}..{last}")
            frame = self._granted_frame(gref, writable=op == BLKIF_OP_READ)
            n = (last - first + 1) * SECTOR
            views.append(mem.view(frame + first * SECTOR, n))
            total += n
        pos = sector * SECTOR
        if sector < 0 or pos + total > self.sectors * SECTOR:
            raise ValueError(f"sectors {sector}+{total // SECTOR} beyond the disk's {self.sectors}")
        io = os.preadv if op == BLKIF_OP_READ else os.pwritev
        while views:
            done = io(self.fd, views, pos)
            if done <= 0:
                raise OSError(f"{'read' if op == BLKIF_OP_READ else 'write'} at byte {pos} stopped early")
            pos += done
            while views and done >= len(views[0]):   # a short transfer: go on from where it stopped
                done -= len(views[0])
                views.pop(0)
            if views and done:
                views[0] = views[0][done:]

    def close(self) -> None:
        self._stop = True
        self._work.set()
        self._thread.join(2)
        try:
            self.dom.store.unwatch(self._watch)
        except HospesError:
            pass
        os.close(self.fd)
