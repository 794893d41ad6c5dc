"""The virtual network interface backend (netback): a host TAP device as the guest's ethN.

Xenbus handshake (pv-abi.md §10.7), as the toolstack and netback do it::

    toolstack: frontend dir (state 1, mac) + backend dir (state 2, InitWait,
               feature-rx-copy and the other features we really handle)
    frontend:  grants a TX and an RX ring page, allocates one event channel
               (or one per direction when feature-split-event-channels), writes
               tx-ring-ref, rx-ring-ref, event-channel, request-rx-copy=1 and
               its own feature-* keys, posts RX buffers and goes straight to 4
    backend:   maps both rings, binds the port(s), state 4 (Connected)
    closing:   frontend 5 -> backend 5 (the frontend waits for exactly this),
               frontend 6 -> backend 6; a frontend back at 1 (driver reloaded)
               finds the backend at 2 again

Rings (io/netif.h, pv-abi.md §11.5) are one page each with 256 slots: TX slots
of 12 bytes carry packets from the guest (one packet is a chain of request
slots linked by NETTXF_more_data, the first slot's size being the whole
packet's, optionally followed by extra-info slots), RX slots of 8 bytes carry
empty guest pages the backend copies received frames into. Every data page is
named by a grant reference, resolved through the domain's grant table
(``hospes.pv.grant``: permit access, granted to domain 0, writable for RX) as
the block backend does; a slot that breaks the rules gets an error status, the
packet is dropped and counted, and nothing is ever raised into the vCPU or
worker thread. Ring indices that make no sense disconnect the vif.

The host side is a TAP device (``hospes.devices.tap``) whose every read and
write carries a 10-byte virtio-net header in front of the Ethernet frame. On
TX the header says whether the guest validated the checksum, or, for a TCP
segmentation offload packet, how the host kernel must segment it; on RX it
tells us whether the host left the TCP/UDP checksum to be completed (passed
to the guest as NETRXF_csum_blank) or already validated it.
TCP/UDP checksums the guest left blank on ordinary packets (NETTXF_csum_blank)
are completed here in Python.

One worker thread per vif serves both rings (``hospes.pv.ring.BackRing``) and
the TAP: the vCPU thread that notifies only wakes it (an eventfd), so a guest
never waits for the host. The handshake is the shared ``XenbusBackend``;
everything the backend needs of its domain comes through a ``DeviceHost``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import re
import select
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import ClassVar

from hospes.devices.tap import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUNSETOFFLOAD, NetError, attach_to_bridge, open_tap
from hospes.devices.netrate import TxCredit
from hospes.devices.host import BACKEND_DOMID, DeviceHost, guarded
from hospes.devices.xenbus import XenbusBackend, XenbusState, device_paths, publish_device
from hospes.errors import HospesError
from hospes.pv.evtchn import BackendEndpoint
from hospes.pv.grant import GrantError
from hospes.pv.ring import BackRing, BackRingState, RingError
from hospes.state import StateError, check_version

log = logging.getLogger(__name__)

# --- io/netif.h ------------------------------------------------------------------------
NETTXF_csum_blank = 1
NETTXF_data_validated = 2
NETTXF_more_data = 4
NETTXF_extra_info = 8
NETRXF_data_validated = 1
NETRXF_csum_blank = 2
NETRXF_more_data = 4
NETRXF_extra_info = 8
NETIF_RSP_DROPPED = -2
NETIF_RSP_ERROR = -1
NETIF_RSP_OKAY = 0
NETIF_RSP_NULL = 1
XEN_NETIF_EXTRA_TYPE_GSO = 1
XEN_NETIF_EXTRA_TYPE_MAX = 6
XEN_NETIF_EXTRA_FLAG_MORE = 1
XEN_NETIF_GSO_TYPE_TCPV4 = 1
XEN_NETIF_GSO_TYPE_TCPV6 = 2
XEN_NETIF_NR_SLOTS_MIN = 18     # the most data slots one packet may use
RING_SLOTS = 256
TX_SLOT = 12
RX_SLOT = 8
PAGE = 4096
ETH_HLEN = 14
MAX_PACKET = 65535             # XEN_NETIF_MAX_TX_SIZE; u16 sizes
U32 = 0xFFFFFFFF

# --- linux/virtio_net.h ----------------------------------------------------------------
VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
NO_VNET_HDR = VNET_HDR.pack(0, 0, 0, 0, 0, 0)
VALID_VNET_HDR = VNET_HDR.pack(VIRTIO_NET_HDR_F_DATA_VALID, 0, 0, 0, 0, 0)

#: How long frames may wait in the TAP while the guest posts no RX buffer
#: before we read and drop them (netback's rx_drain_timeout, shortened).
RX_STALL_DROP_S = 1.0
#: Responses are published in batches of at most this many packets.
PUSH_BATCH = 32
#: How long the worker keeps looking at the TX ring after a pass that sent packets,
#: before it asks the frontend for a notification again (see NetBackend._tx_drain).
LINGER_S = 0.0002
#: Lingers finding at most one packet after which the worker stops lingering until a pass takes several.
LINGER_TRIES = 4
_FD_SETSIZE = 1024             # select(2)'s limit on descriptor numbers

_TX_REQ = struct.Struct("<IHHHH")   # gref, offset, flags, id, size
_TX_RSP = struct.Struct("<Hh")      # id, status
_EXTRA = struct.Struct("<BBHBBH")   # type, flags, gso size, gso type, pad, gso features
_RX_REQ = struct.Struct("<HxxI")    # id, gref
_RX_RSP = struct.Struct("<HHHh")    # id, offset, flags, status

# write(2) called with the GIL held: a vCPU thread that wakes the worker must not
# give the GIL away in the middle of its exit (the worker would take it and the
# guest would wait for the packet's whole processing).
_write_holding_gil = ctypes.PyDLL(None).write
_write_holding_gil.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
_write_holding_gil.restype = ctypes.c_ssize_t
_EVENTFD_ONE = struct.pack("<Q", 1)

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


@dataclass(frozen=True)
class VifConfig:
    mac: str
    tap: str | None = None   # a TAP device to create or attach; default "hospes<domid>.<devid>"
    bridge: str | None = None  # a Linux bridge to put the TAP on
    devid: int = 0
    mtu: int = 1500
    rate_bytes: int = 0        # guest -> host limit: bytes per rate_usecs (0: unlimited)
    rate_usecs: int = 50_000
    attach: bool = False       # open the TAP even if held: a migration arriving on the source's host


def _wait_briefly(fds: list[int], seconds: float) -> list[tuple[int, int]]:
    """Wait up to ``seconds`` for one of ``fds`` to be readable; poll(2)'s (fd, events) pairs.

    select(2) takes microseconds where poll(2) takes milliseconds, but only
    descriptors below FD_SETSIZE; a process holding more files (a daemon with
    many domains) waits the millisecond instead.
    """
    if max(fds) < _FD_SETSIZE:
        ready, _, _ = select.select(fds, [], [], seconds)
        return [(fd, select.POLLIN) for fd in ready]
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return poller.poll(max(1, int(seconds * 1000)))


def _announce_frame(mac: bytes, ethertype: int, op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    """A broadcast ARP-format frame (ARP or RARP, RFC 826/903), padded to the 60-byte minimum."""
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + spa + tha + tpa
    return (b"\xff" * 6 + mac + struct.pack("!H", ethertype) + body).ljust(60, b"\0")


def default_mac(domid: int, devid: int) -> str:
    """Xen's 00:16:3e prefix, then the domid (15 bits) and the devid (8 bits)."""
    return f"00:16:3e:{(domid >> 8) & 0x7F:02x}:{domid & 0xFF:02x}:{devid & 0xFF:02x}"


def parse_mac(mac: str) -> bytes:
    if not _MAC_RE.match(mac):
        raise NetError(f"MAC address {mac!r} is not six hex pairs separated by ':' (e.g. 00:16:3e:00:01:00).")
    raw = bytes(int(x, 16) for x in mac.split(":"))
    if raw[0] & 1:
        raise NetError(f"MAC address {mac} is a multicast address; a NIC needs a unicast one (even first octet).")
    if raw == bytes(6):
        raise NetError("MAC address 00:00:00:00:00:00 is not usable; give another one.")
    return raw


@dataclass
class NetStats:
    """Counters of one vif; tx = guest -> host, rx = host -> guest."""

    tx_packets: int = 0
    tx_bytes: int = 0
    tx_errors: int = 0      # malformed packets answered with an error status
    tx_dropped: int = 0     # well-formed packets the host did not take
    rx_packets: int = 0
    rx_bytes: int = 0
    rx_dropped: int = 0     # frames that did not fit, found no buffer, or had a bad grant
    rx_errors: int = 0      # RX requests answered with an error status (bad grant)
    tx_rate_limited: int = 0  # times TX stopped to wait for rate= credit

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Malformed(Exception):
    """A TX packet breaks the protocol (answered with NETIF_RSP_ERROR)."""


# --- checksums ---------------------------------------------------------------------------

def _ones_sum(*parts: bytes | bytearray | memoryview) -> int:
    """The folded 16-bit one's complement sum of the concatenated parts
    (every part but the last must have an even length)."""
    total = 0
    for p in parts:
        v = int.from_bytes(p, "big")
        if len(p) & 1:
            v <<= 8
        total += v
    s = total % 0xFFFF
    return s if s or not total else 0xFFFF


def l4_info(frame: bytes | bytearray) -> tuple[int, int, int, bytes] | None:
    """For a TCP or UDP packet over IPv4/IPv6 (optionally VLAN-tagged), return
    (L4 offset, L4 length, protocol, pseudo-header); else None."""
    n = len(frame)
    off = 12
    if n < ETH_HLEN:
        return None
    ethertype = int.from_bytes(frame[12:14], "big")
    while ethertype in (0x8100, 0x88A8) and off + 6 <= n:
        off += 4
        ethertype = int.from_bytes(frame[off:off + 2], "big")
    off += 2
    if ethertype == 0x0800:
        if off + 20 > n or frame[off] >> 4 != 4:
            return None
        ihl = (frame[off] & 15) * 4
        total = int.from_bytes(frame[off + 2:off + 4], "big")
        frag = int.from_bytes(frame[off + 6:off + 8], "big")
        proto = frame[off + 9]
        if ihl < 20 or frag & 0x3FFF or total < ihl or off + total > n:
            return None
        l4 = off + ihl
        length = total - ihl
        pseudo = bytes(frame[off + 12:off + 20]) + bytes((0, proto)) + length.to_bytes(2, "big")
    elif ethertype == 0x86DD:
        if off + 40 > n or frame[off] >> 4 != 6:
            return None
        payload = int.from_bytes(frame[off + 4:off + 6], "big")
        proto = frame[off + 6]
        src_dst = bytes(frame[off + 8:off + 40])
        l4 = off + 40
        end = l4 + payload
        if end > n:
            return None
        while proto in (0, 43, 60):  # hop-by-hop, routing, destination options
            if l4 + 8 > end:
                return None
            proto, hlen = frame[l4], (frame[l4 + 1] + 1) * 8
            l4 += hlen
        if l4 > end:
            return None
        length = end - l4
        pseudo = src_dst + length.to_bytes(4, "big") + bytes((0, 0, 0, proto))
    else:
        return None
    if proto == 6:
        if length < 20:
            return None
    elif proto == 17:
        if length < 8:
            return None
    else:
        return None
    return l4, length, proto, pseudo


def complete_l4_checksum(frame: bytearray) -> bool:
    """Compute and store the TCP/UDP checksum of ``frame`` in place; False if it
    is not a TCP or UDP packet over IPv4/IPv6 we can parse."""
    info = l4_info(frame)
    if info is None:
        return False
    l4, length, proto, pseudo = info
    field = l4 + (16 if proto == 6 else 6)
    frame[field:field + 2] = b"\0\0"
    csum = ~_ones_sum(pseudo, memoryview(frame)[l4:l4 + length]) & 0xFFFF
    if proto == 17 and csum == 0:
        csum = 0xFFFF
    frame[field:field + 2] = csum.to_bytes(2, "big")
    return True


def checksum_ok(frame: bytes | bytearray) -> bool:
    """True if ``frame`` is TCP/UDP over IPv4/IPv6 with a correct checksum."""
    info = l4_info(frame)
    if info is None:
        return False
    l4, length, proto, pseudo = info
    if proto == 17 and frame[l4 + 6:l4 + 8] == b"\0\0":
        return True
    return _ones_sum(pseudo, memoryview(frame)[l4:l4 + length]) == 0xFFFF


class _Port:
    """One event channel end of a vif (the backend object the port notifies)."""

    def __init__(self, owner: NetBackend) -> None:
        self.notify = owner.notify


@dataclass(frozen=True)
class NetState:
    """Saved net backend. The rings' positions and the features the frontend
    negotiated; ``rx_pending`` is a frame already taken from the TAP
    (virtio-net header first) that waits for ``rx_pending_slots`` RX buffers,
    the one piece of in-flight data a quiesced backend holds (see
    :meth:`NetBackend.save`). Counters and the rate limiter's credit start
    afresh."""

    VERSION: ClassVar[int] = 1
    devid: int
    mac: str
    xenbus: XenbusState
    tx_port: int
    rx_port: int
    tx_ring: BackRingState | None
    rx_ring: BackRingState | None
    rx_sg: bool
    rx_gso: int
    rx_pending: bytes = b""
    rx_pending_slots: int = 0
    ipv4: bytes = b""           # the guest's address, as its last ARP gave it (for announce())
    version: int = VERSION


class NetBackend:
    """One virtual network interface of one domain.

    ``NetBackend(host, vif)`` creates (or opens) the TAP, publishes the device
    and follows the frontend; ``close()`` stops it. ``save()``/``restore()``
    move it (see :meth:`save`).
    """

    def __init__(self, host: DeviceHost, vif: VifConfig, *, tap_fd: int | None = None) -> None:
        """``tap_fd``, for tests: a datagram fd speaking the TAP's framing (a
        virtio-net header, then the Ethernet frame) used instead of a TAP; the
        caller keeps ownership of it."""
        self._setup(host, vif, tap_fd, XenbusState.INIT_WAIT)
        try:
            self._publish()
        except HospesError:
            self._close_fds()
            raise
        self._start()

    def _setup(self, host: DeviceHost, vif: VifConfig, tap_fd: int | None, state: XenbusState) -> None:
        self.host = host
        self._mem = host.mem
        self._grants = host.grants
        self.vif = vif
        self.mac = parse_mac(vif.mac)
        if not 0 <= vif.devid < 1 << 16:
            raise NetError(f"vif device id {vif.devid} is out of range (0-65535).")
        if not 68 <= vif.mtu <= MAX_PACKET - ETH_HLEN - 4:
            raise NetError(f"MTU {vif.mtu} is out of range (68-{MAX_PACKET - ETH_HLEN - 4}).")
        if vif.rate_bytes < 0 or (vif.rate_bytes and vif.rate_usecs <= 0):
            raise NetError(f"rate {vif.rate_bytes} bytes per {vif.rate_usecs} us is not a valid limit.")
        self.tx_credit = TxCredit(vif.rate_bytes, vif.rate_usecs / 1e6) if vif.rate_bytes else None
        d = host.domid
        self.tap_name = vif.tap or f"hospes{d}.{vif.devid}"
        self._own_fd = tap_fd is None
        self.fd = open_tap(self.tap_name, vif.mtu, attach=vif.attach) if tap_fd is None else tap_fd
        if vif.bridge is not None and tap_fd is None:
            try:
                attach_to_bridge(self.tap_name, vif.bridge, already=vif.attach)
            except NetError:
                os.close(self.fd)
                raise
        if tap_fd is not None:
            os.set_blocking(tap_fd, False)
        self.front, self.back = device_paths(d, "vif", vif.devid)
        self.stats = NetStats()
        self.connected = False
        self._tx: BackRing | None = None
        self._rx: BackRing | None = None
        self.tx_port = self.rx_port = 0
        self.rx_sg = False          # the frontend takes frames over several RX slots
        self.rx_gso = 0             # bit 1: TCPv4, bit 2: TCPv6 GSO frames accepted by the frontend
        self._rx_pending: tuple[bytes, int] | None = None   # (frame with vnet header, slots needed)
        self._rx_buf = bytearray(VNET_HDR_LEN + 65536 + 256)
        self._rx_view = memoryview(self._rx_buf)
        self._rx_starved_since: float | None = None
        self.ipv4 = b""
        self._lock = threading.Lock()      # ring state (worker vs. xenbus vs. save)
        self._tx_linger_tries = 0          # see _tx_drain
        self._stop = False
        self._frozen = False               # see freeze()
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._kicked = False
        self._ports = (_Port(self), _Port(self))
        self._thread = threading.Thread(target=guarded(host.failed, f"net backend {self.tap_name}", self._serve),
                                        name=f"netback-{d}.{vif.devid}", daemon=True)
        self._xenbus = XenbusBackend(host.store, self.front, self.back, self, name=f"vif {self.tap_name}",
                                     state=state, failed=host.failed)

    def _start(self) -> None:
        self._thread.start()
        self._xenbus.start()

    # --- xenbus --------------------------------------------------------------------

    def _publish(self) -> None:
        n = str(self.vif.devid)
        features = ("rx-copy", "sg", "gso-tcpv4", "gso-tcpv6", "ipv6-csum-offload", "split-event-channels")
        publish_device(
            self.host.store, self.host.domid, self.front, self.back,
            backend={"handle": n, "mac": self.vif.mac, "type": "vif", **{f"feature-{f}": "1" for f in features}},
            frontend={"handle": n, "mac": self.vif.mac},
        )

    @property
    def xenbus_state(self) -> XenbusState:
        return self._xenbus.state

    def connect(self) -> Mapping[str, str]:
        """XenbusDevice: map both rings, take the frontend's features, bind the port(s)."""
        f = self._xenbus.frontend
        tx_ref, rx_ref = f("tx-ring-ref"), f("rx-ring-ref")
        single = f("event-channel")
        tx_evt, rx_evt = f("event-channel-tx"), f("event-channel-rx")
        if tx_ref is None or rx_ref is None:
            raise ValueError("tx-ring-ref or rx-ring-ref is missing")
        if f("request-rx-copy") != "1":
            raise ValueError("the frontend does not request the copying receive path (request-rx-copy)")
        queues = f("multi-queue-num-queues")
        if queues not in (None, "1"):
            raise ValueError(f"{queues} queues asked for; this backend has one")
        if single is not None:
            tx_port = rx_port = int(single)
        elif tx_evt is not None and rx_evt is not None:
            tx_port, rx_port = int(tx_evt), int(rx_evt)
        else:
            raise ValueError("event-channel is missing")
        tx_gpa = self._grants.lookup(int(tx_ref), grantee=BACKEND_DOMID, writable=True)
        rx_gpa = self._grants.lookup(int(rx_ref), grantee=BACKEND_DOMID, writable=True)
        if tx_gpa == rx_gpa:
            raise ValueError("the TX and RX rings share a page")
        tx = BackRing(self._mem, tx_gpa, holds=self._grants, nr_slots=RING_SLOTS, slot_size=TX_SLOT)
        try:
            rx = BackRing(self._mem, rx_gpa, holds=self._grants, nr_slots=RING_SLOTS, slot_size=RX_SLOT)
        except RingError:
            tx.release()
            raise
        rx_sg = f("feature-sg") == "1"
        rx_gso = (2 if f("feature-gso-tcpv4") == "1" else 0) | (4 if f("feature-gso-tcpv6") == "1" else 0)
        with self._lock:
            old = (self._tx, self._rx)
            self._tx, self._rx = tx, rx
            self.rx_sg, self.rx_gso = rx_sg, rx_gso if rx_sg else 0
            self._rx_pending = None
            self._rx_starved_since = None
        for ring in old:
            if ring is not None:
                ring.release()
        self._set_offload(self.rx_gso)
        evtchn = self.host.evtchn
        evtchn.bind_interdomain_local(tx_port, self._ports[0])
        self.tx_port = self.rx_port = tx_port
        if rx_port != tx_port:
            evtchn.bind_interdomain_local(rx_port, self._ports[1])
            self.rx_port = rx_port
        return {}

    def activate(self) -> None:
        with self._lock:
            self.connected = self._tx is not None
        self.notify()

    def disconnect(self) -> None:
        with self._lock:
            self.connected = False
            self._rx_pending = None
            self._release_rings()

    def _release_rings(self) -> None:
        """Drop the rings and their pages' type references (lock held): the frontend may reuse the pages."""
        rings = (self._tx, self._rx)
        self._tx = self._rx = None
        for ring in rings:
            if ring is not None:
                ring.release()

    def endpoints(self) -> dict[int, BackendEndpoint]:
        """The event channel ports this backend serves, for ``EventChannels.restore``."""
        if not self.tx_port:
            return {}
        if self.rx_port != self.tx_port:
            return {self.tx_port: self._ports[0], self.rx_port: self._ports[1]}
        return {self.tx_port: self._ports[0]}

    def _set_offload(self, gso: int) -> None:
        """Let the host hand us partial checksums, and TCP segmentation offload
        frames of the kinds the frontend takes (a frame over one page needs SG)."""
        if not self._own_fd:
            return
        flags = TUN_F_CSUM | (TUN_F_TSO4 if gso & 2 else 0) | (TUN_F_TSO6 if gso & 4 else 0)
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
        except OSError as e:
            log.warning("vif %s: cannot set the TAP offloads: %s", self.tap_name, e.strerror)

    # --- worker --------------------------------------------------------------------

    def notify(self) -> None:
        """The guest sent on our port (called on its vCPU thread: just wake the worker)."""
        if not self._kicked:
            self._kicked = True
            _write_holding_gil(self._efd, _EVENTFD_ONE, 8)

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self._efd, select.POLLIN)
        tap_polled = False
        lingering = False
        while not self._stop:
            want_tap = False
            timeout = 500
            lingered, lingering = lingering, False
            self._kicked = False
            with self._lock:
                if self.connected and not self._frozen:
                    try:
                        lingering = self._tx_drain(lingered)
                        if self.connected:
                            self._rx_fill()
                        if self.connected:
                            want_tap, timeout = self._rx_plan()
                        if self.tx_credit is not None and self._tx_waiting():
                            left = self.tx_credit.next_credit_at - time.monotonic()
                            timeout = max(0, min(timeout, int(left * 1000) + 1))
                    except RingError as e:
                        self._fail(f"the frontend's ring is broken ({e})")
            if lingering and self.connected:
                # TX took packets and is not re-armed: look again after LINGER_S, or sooner
                # for a frame from the TAP or a notification.
                events = _wait_briefly([self._efd, self.fd] if want_tap else [self._efd],
                                       min(LINGER_S, timeout / 1000))
            else:
                if want_tap != tap_polled:
                    if want_tap:
                        poller.register(self.fd, select.POLLIN)
                    else:
                        poller.unregister(self.fd)
                    tap_polled = want_tap
                try:
                    events = poller.poll(timeout)
                except InterruptedError:
                    continue
            for fd, _ in events:
                if fd == self._efd:
                    try:
                        os.eventfd_read(self._efd)
                    except OSError:
                        pass

    def announce(self) -> None:
        """Tell the host's network the guest is here now (after a migration): a
        gratuitous ARP for its address if the backend has seen one, and a RARP
        naming its MAC, which every switch learns from whatever the guest runs."""
        frames = [_announce_frame(self.mac, 0x8035, 3, self.mac, b"\0" * 4, self.mac, b"\0" * 4)]
        if self.ipv4:
            frames.append(_announce_frame(self.mac, 0x0806, 1, self.mac, self.ipv4, b"\0" * 6, self.ipv4))
        for frame in frames:
            try:
                os.write(self.fd, bytes(VNET_HDR_LEN) + frame)
            except OSError as e:
                log.warning("vif %s: cannot announce the guest: %s", self.tap_name, e.strerror)

    def freeze(self) -> None:
        """Move no more packets until :meth:`thaw` (a save or migration's final copy):
        the pass in progress ends first, and guest memory is not written after this
        returns. Frames the host sends meanwhile wait in the TAP's queue."""
        with self._lock:
            self._frozen = True

    def thaw(self) -> None:
        with self._lock:
            self._frozen = False
        self.notify()

    def _fail(self, why: str) -> None:
        """The frontend broke the ring protocol beyond repair: disconnect (lock held)."""
        self.connected = False
        self._rx_pending = None
        self._xenbus.fail(why)

    def _notify_guest(self, port: int, which: int) -> None:
        endpoint = self._ports[which] if self.rx_port != self.tx_port else self._ports[0]
        self.host.evtchn.notify_backend_port(port, endpoint)

    # --- TX: guest -> TAP ------------------------------------------------------------

    def _tx_drain(self, lingered: bool = False) -> bool:
        """Send and answer every packet on the TX ring. True when it took packets from
        a frontend that queues and did not re-arm ``req_event``: the worker lingers
        (LINGER_S) and comes back, so packets the frontend queues right behind them
        need no notification each (an exit); a pass that finds nothing re-arms and
        ends with the final check. As in the block backend, only a pass taking
        several packets shows queueing, and LINGER_TRIES lingers finding one packet
        or none end it: a guest sending one packet at a time is never kept waiting
        for a linger. ``lingered``: this pass follows a linger."""
        ring = self._tx
        assert ring is not None   # connected
        buf = self._mem.buf
        while True:
            req_prod = (ring.req_cons + ring.unconsumed()) & U32
            notify = False
            done = 0
            limited = False
            credit = self.tx_credit
            size = 0
            while ring.req_cons != req_prod:
                if credit is not None:
                    # the first slot's size is the whole packet's (netif.h)
                    size = _TX_REQ.unpack_from(buf, ring.slot(ring.req_cons))[4]
                    if not credit.take(size):
                        limited = True
                        break
                used = self._tx_packet(buf, ring, req_prod)
                if used == 0:
                    if credit is not None:
                        credit.credit += size   # not sent yet: charged again when it is
                    break   # the rest of the chain is not on the ring yet
                done += 1
                if done % PUSH_BATCH == 0:
                    notify |= ring.push_responses()
            if done:
                notify |= ring.push_responses()
            if notify:
                self._notify_guest(self.tx_port, 0)
            if limited:
                # the worker comes back when credit is due (_serve's sleep), not on a notification
                self.stats.tx_rate_limited += 1
                return False
            if done > 1:
                self._tx_linger_tries = LINGER_TRIES
            elif lingered:
                self._tx_linger_tries = max(0, self._tx_linger_tries - 1)
            lingered = True
            if done and ring.req_cons == req_prod and self._tx_linger_tries:
                return True
            # Wake us for the slot after the last one seen: with a chain cut
            # short that is past req_cons, as the chain's start was left there.
            if not ring.final_check(req_prod):
                return False

    def _tx_waiting(self) -> bool:
        """Requests left on the TX ring (after a drain: the rate limit held them)."""
        ring = self._tx
        return self.connected and ring is not None and ring.req_prod() != ring.req_cons

    def _tx_packet(self, buf: memoryview, ring: BackRing, req_prod: int) -> int:
        """Consume, send and answer one packet; return the slots used (0: incomplete chain)."""
        cons = ring.req_cons
        avail = (req_prod - cons) & U32
        base, mask = ring.slots_gpa, ring.mask
        slots: list[tuple[int, int, int, int]] = []   # (gref, offset, id, size) of the data slots
        extras: list[bytes] = []
        malformed = ""
        first = _TX_REQ.unpack_from(buf, base + (cons & mask) * TX_SLOT)
        gref, offset, flags, rid, size = first
        slots.append((gref, offset, rid, size))
        used = 1
        layout = [rid]            # response ids in slot order; -1 marks an extra-info slot
        if flags & NETTXF_extra_info:
            more = True
            while more:
                if used == avail:
                    return self._tx_incomplete(ring, cons, avail, layout)
                at = base + ((cons + used) & mask) * TX_SLOT
                raw = bytes(buf[at:at + 8])
                extras.append(raw)
                layout.append(-1)
                used += 1
                more = bool(raw[1] & XEN_NETIF_EXTRA_FLAG_MORE)
                if len(extras) > XEN_NETIF_EXTRA_TYPE_MAX:
                    malformed = "too many extra-info slots"
                    break
        chain = flags
        while chain & NETTXF_more_data and not malformed:
            if used == avail:
                return self._tx_incomplete(ring, cons, avail, layout)
            g, o, chain, i, s = _TX_REQ.unpack_from(buf, base + ((cons + used) & mask) * TX_SLOT)
            slots.append((g, o, i, s))
            layout.append(i)
            used += 1
        ring.req_cons = (cons + used) & U32
        status = NETIF_RSP_OKAY
        try:
            if malformed:
                raise _Malformed(malformed)
            if len(slots) > XEN_NETIF_NR_SLOTS_MIN:
                raise _Malformed(f"{len(slots)} slots in one packet (at most {XEN_NETIF_NR_SLOTS_MIN})")
            frame, hdr = self._tx_build(buf, slots, flags, extras)
            if frame[12:14] == b"\x08\x06" and len(frame) >= 42:
                self.ipv4 = bytes(frame[28:32])    # the ARP sender's address: the guest's own
            try:
                os.writev(self.fd, (hdr, frame))
            except OSError as e:
                self.stats.tx_dropped += 1
                status = NETIF_RSP_DROPPED
                if e.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EIO, errno.EINVAL, errno.ENOMEM):
                    log.warning("vif %s: TAP write failed: %s", self.tap_name, e.strerror)
            else:
                self.stats.tx_packets += 1
                self.stats.tx_bytes += len(frame)
        except (_Malformed, GrantError) as e:
            log.debug("vif %s: TX packet dropped: %s", self.tap_name, e)
            self.stats.tx_errors += 1
            status = NETIF_RSP_ERROR
        self._tx_respond(ring, layout, status)
        return used

    def _tx_incomplete(self, ring: BackRing, cons: int, avail: int, layout: list[int]) -> int:
        if avail < RING_SLOTS:
            return 0
        # The chain fills the whole ring and still goes on: it can never end.
        ring.req_cons = (cons + avail) & U32
        self.stats.tx_errors += 1
        ids = []
        buf = self._mem.buf
        for k in range(avail):
            ids.append(layout[k] if k < len(layout) else _TX_REQ.unpack_from(buf, ring.slot(cons + k))[3])
        self._tx_respond(ring, ids, NETIF_RSP_ERROR)
        return avail

    def _tx_respond(self, ring: BackRing, layout: list[int], status: int) -> None:
        buf = self._mem.buf
        base, mask = ring.slots_gpa, ring.mask
        prod = ring.rsp_prod_pvt
        for rid in layout:
            slot = base + (prod & mask) * TX_SLOT
            if rid < 0:
                _TX_RSP.pack_into(buf, slot, 0, NETIF_RSP_NULL)
            else:
                _TX_RSP.pack_into(buf, slot, rid, status)
            prod = (prod + 1) & U32
        ring.rsp_prod_pvt = prod

    def _tx_build(self, buf: memoryview, slots: list[tuple[int, int, int, int]], flags: int,
                  extras: list[bytes]) -> tuple[bytes | bytearray, bytes]:
        """Gather one packet's data; return (frame, virtio-net header)."""
        total = slots[0][3]
        rest = sum(s[3] for s in slots[1:])
        if total < ETH_HLEN or rest > total:
            raise _Malformed(f"packet size {total} with {rest} bytes in later slots")
        lookup = self._grants.lookup
        parts = []
        for k, (gref, offset, _rid, size) in enumerate(slots):
            n = total - rest if k == 0 else size
            if offset + n > PAGE:
                raise _Malformed(f"slot data {offset}+{n} crosses the page")
            gpa = lookup(gref, grantee=BACKEND_DOMID, writable=False) + offset
            parts.append(buf[gpa:gpa + n])
        frame: bytes | bytearray = b"".join(parts)
        gso = None
        for raw in extras:
            etype, _eflags, gso_size, gso_type, _pad, _features = _EXTRA.unpack(raw)
            if etype == XEN_NETIF_EXTRA_TYPE_GSO:
                if gso_type not in (XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6) or gso_size == 0:
                    raise _Malformed(f"GSO type {gso_type} size {gso_size}")
                gso = (gso_type, gso_size)
            elif not 0 < etype < XEN_NETIF_EXTRA_TYPE_MAX:
                raise _Malformed(f"extra-info type {etype}")
            # Multicast filter and hash extras need no action: we pass every frame.
        if gso is not None:
            return frame, self._gso_header(frame, *gso)
        if flags & NETTXF_csum_blank:
            frame = bytearray(frame)
            if not complete_l4_checksum(frame):
                raise _Malformed("checksum left blank on a packet that is not TCP/UDP over IP")
        if flags & NETTXF_data_validated:
            return frame, VALID_VNET_HDR
        return frame, NO_VNET_HDR

    def _gso_header(self, frame: bytes | bytearray, gso_type: int, gso_size: int) -> bytes:
        info = l4_info(frame)
        if info is None or info[2] != 6:
            raise _Malformed("a GSO packet that is not TCP over IP")
        l4, _length, _proto, _pseudo = info
        thl = (frame[l4 + 12] >> 4) * 4
        if thl < 20 or l4 + thl > len(frame):
            raise _Malformed("a GSO packet with a bad TCP header")
        vtype = VIRTIO_NET_HDR_GSO_TCPV6 if gso_type == XEN_NETIF_GSO_TYPE_TCPV6 else VIRTIO_NET_HDR_GSO_TCPV4
        # The guest left the checksum partial (pseudo-header sum in place) for the segments.
        return VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, vtype, l4 + thl, gso_size, l4, 16)

    # --- RX: TAP -> guest ------------------------------------------------------------

    def _rx_posted(self) -> int:
        """Unconsumed RX requests (buffers the guest posted), or -1 if the indices are corrupt."""
        ring = self._rx
        if ring is None:
            return -1
        try:
            return ring.unconsumed()
        except RingError:
            return -1

    def _rx_plan(self) -> tuple[bool, int]:
        """After the work: should the worker poll the TAP, and for how long may it sleep (ms)?"""
        need = self._rx_pending[1] if self._rx_pending is not None else 1
        posted = self._rx_posted()
        if posted < 0:
            return False, 500
        if posted >= need:
            self._rx_starved_since = None
            return self._rx_pending is None, 0 if self._rx_pending is not None else 500
        now = time.monotonic()
        if self._rx_starved_since is None:
            self._rx_starved_since = now
        left = self._rx_starved_since + RX_STALL_DROP_S - now
        if left <= 0:
            return True, 500       # drop mode: take frames off the TAP and count them as dropped
        return False, max(1, min(500, int(left * 1000) + 1))

    def _rx_slots(self, length: int, gso: bool) -> int:
        """RX slots a frame of ``length`` bytes needs (0: it can never fit)."""
        if length <= PAGE:
            n = 1
        elif self.rx_sg:
            n = -(-length // PAGE)
        else:
            return 0
        if n > XEN_NETIF_NR_SLOTS_MIN:
            return 0
        return n + (1 if gso else 0)

    def _rx_read(self) -> memoryview | None:
        try:
            n = os.readv(self.fd, (self._rx_buf,))
            return self._rx_view[:n]
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            log.warning("vif %s: TAP read failed: %s", self.tap_name, e.strerror)
            return None

    def _rx_fill(self) -> None:
        ring = self._rx
        assert ring is not None   # connected
        notify = False
        done = 0
        data: bytes | memoryview | None
        while True:
            posted = ring.unconsumed()
            if self._rx_pending is not None:
                data, need = self._rx_pending
                if need > posted:
                    if self._rx_starved_since is None or \
                            time.monotonic() - self._rx_starved_since < RX_STALL_DROP_S:
                        break
                    self._rx_pending = None
                    self.stats.rx_dropped += 1
                    continue
                self._rx_pending = None
            else:
                starving = posted == 0 and self._rx_starved_since is not None and \
                    time.monotonic() - self._rx_starved_since >= RX_STALL_DROP_S
                if posted == 0 and not starving:
                    break
                data = self._rx_read()
                if data is None:
                    break
                if len(data) < VNET_HDR_LEN + ETH_HLEN:
                    self.stats.rx_dropped += 1
                    continue
                gso = data[1] != VIRTIO_NET_HDR_GSO_NONE
                need = self._rx_slots(len(data) - VNET_HDR_LEN, gso)
                if need == 0 or (gso and not self._rx_gso_ok(data[1])):
                    self.stats.rx_dropped += 1
                    continue
                if need > posted:
                    if starving:
                        self.stats.rx_dropped += 1
                        continue
                    self._rx_pending = (bytes(data), need)
                    break
            self._rx_deliver(ring, data, need)
            done += 1
            if done % PUSH_BATCH == 0:
                notify |= ring.push_responses()
        if done:
            notify |= ring.push_responses()
        if notify:
            self._notify_guest(self.rx_port, 1)
        # Ask to hear of new buffers only when too few are posted for the waiting frame
        # (or any frame), as netback does: netfront refills after every batch it takes,
        # and a notification each time would be a hypercall (an exit) per refill. With
        # enough posted, req_event stays behind and the TAP is what wakes us. _rx_plan
        # reads the posted count again after this store, so a refill in between is seen.
        need = self._rx_pending[1] if self._rx_pending is not None else 1
        if ring.unconsumed() < need:
            ring.notify_at(ring.req_cons + need)

    def _rx_gso_ok(self, vtype: int) -> bool:
        vtype &= 0x7F
        if vtype == VIRTIO_NET_HDR_GSO_TCPV4:
            return bool(self.rx_gso & 2)
        if vtype == VIRTIO_NET_HDR_GSO_TCPV6:
            return bool(self.rx_gso & 4)
        return False

    def _rx_deliver(self, ring: BackRing, data: bytes | memoryview, need: int) -> None:
        """Copy one frame (with its virtio-net header) into the next ``need`` posted buffers.
        netfront takes each response from the slot of the request it answers."""
        buf = self._mem.buf
        base, mask = ring.slots_gpa, ring.mask
        vflags, vtype, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(data)
        frame = memoryview(data)[VNET_HDR_LEN:]
        cons = ring.req_cons
        reqs = [_RX_REQ.unpack_from(buf, base + ((cons + k) & mask) * RX_SLOT) for k in range(need)]
        ring.req_cons = ring.rsp_prod_pvt = (cons + need) & U32
        grants = self._grants
        lookup = grants.lookup
        try:
            pages = [lookup(gref, grantee=BACKEND_DOMID, writable=True) for _rid, gref in reqs]
            held = [gpa >> 12 for gpa in pages]
            # Held while we copy (Xen's writable grant map): never into a page table or GDT.
            grants.hold_writable(held)
        except GrantError as e:
            log.debug("vif %s: RX buffer refused: %s", self.tap_name, e)
            for k, (rid, _gref) in enumerate(reqs):
                _RX_RSP.pack_into(buf, base + ((cons + k) & mask) * RX_SLOT, rid, 0, 0, NETIF_RSP_ERROR)
            self.stats.rx_errors += need
            self.stats.rx_dropped += 1
            return
        try:
            self._rx_copy(ring, reqs, cons, pages, frame, vflags, vtype, gso_size, csum_start, csum_offset)
        finally:
            grants.release_writable(held)

    def _rx_copy(self, ring: BackRing, reqs: list[tuple[int, int]], cons: int, pages: list[int],
                 frame: memoryview, vflags: int, vtype: int, gso_size: int, csum_start: int,
                 csum_offset: int) -> None:
        """The second half of :meth:`_rx_deliver`, with the pages held."""
        buf = self._mem.buf
        base, mask = ring.slots_gpa, ring.mask
        need = len(reqs)
        length = len(frame)
        gso = vtype != VIRTIO_NET_HDR_GSO_NONE
        flags = 0
        if vflags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            info = l4_info(frame)
            if info is not None and info[0] == csum_start and csum_offset == (16 if info[2] == 6 else 6):
                flags = NETRXF_csum_blank | NETRXF_data_validated
            elif gso:
                self._rx_drop_slots(ring, reqs, cons)
                return
            else:
                # Not a kind the guest completes itself: finish the partial checksum here.
                fixed = bytearray(frame)
                if csum_start + csum_offset + 2 > length:
                    self._rx_drop_slots(ring, reqs, cons)
                    return
                s = ~_ones_sum(memoryview(fixed)[csum_start:]) & 0xFFFF
                fixed[csum_start + csum_offset:csum_start + csum_offset + 2] = s.to_bytes(2, "big")
                frame = memoryview(bytes(fixed))
                flags = NETRXF_data_validated
        elif vflags & VIRTIO_NET_HDR_F_DATA_VALID:
            flags = NETRXF_data_validated
        k = 0
        pos = 0
        for slot_no in range(need):
            rid = reqs[slot_no][0]
            slot = base + ((cons + slot_no) & mask) * RX_SLOT
            if gso and slot_no == 1:
                # The extra-info slot: GSO type and segment size, in the response ring.
                gtype = XEN_NETIF_GSO_TYPE_TCPV6 if vtype & 0x7F == VIRTIO_NET_HDR_GSO_TCPV6 \
                    else XEN_NETIF_GSO_TYPE_TCPV4
                _EXTRA.pack_into(buf, slot, XEN_NETIF_EXTRA_TYPE_GSO, 0, gso_size, gtype, 0, 0)
                continue
            chunk = min(PAGE, length - pos)
            gpa = pages[slot_no]
            buf[gpa:gpa + chunk] = frame[pos:pos + chunk]
            pos += chunk
            f = flags if k == 0 else 0
            if pos < length:
                f |= NETRXF_more_data
            if k == 0 and gso:
                f |= NETRXF_extra_info
            _RX_RSP.pack_into(buf, slot, rid, 0, f, chunk)
            k += 1
        for gpa in pages:   # after the copies: see GuestMemory.dirty
            self._mem.mark(gpa, PAGE)
        self.stats.rx_packets += 1
        self.stats.rx_bytes += length

    def _rx_drop_slots(self, ring: BackRing, reqs: list[tuple[int, int]], cons: int) -> None:
        buf = self._mem.buf
        for k, (rid, _gref) in enumerate(reqs):
            _RX_RSP.pack_into(buf, ring.slot(cons + k), rid, 0, 0, NETIF_RSP_ERROR)
        self.stats.rx_dropped += 1

    # --- saved state ----------------------------------------------------------------

    def save(self) -> NetState:
        """The backend's state; call with the guest's vCPUs paused.

        Takes the ring lock, so the worker's pass over the rings ends first:
        every TX packet taken from the ring has been written to the TAP and
        answered, every RX buffer taken has been filled and answered, and the
        responses are published. A TX chain whose end the guest has not
        written yet was not taken and stays on the ring; a received frame
        waiting for RX buffers is saved as ``rx_pending``.
        """
        with self._lock:
            live = self.connected and self._tx is not None and self._rx is not None
            pending = self._rx_pending if live else None
            return NetState(
                devid=self.vif.devid, mac=self.vif.mac, xenbus=self._xenbus.state,
                tx_port=self.tx_port, rx_port=self.rx_port,
                tx_ring=self._tx.save() if live and self._tx is not None else None,
                rx_ring=self._rx.save() if live and self._rx is not None else None,
                rx_sg=self.rx_sg, rx_gso=self.rx_gso,
                rx_pending=pending[0] if pending is not None else b"",
                rx_pending_slots=pending[1] if pending is not None else 0, ipv4=self.ipv4,
            )

    @classmethod
    def restore(cls, state: NetState, *, host: DeviceHost, vif: VifConfig,
                tap_fd: int | None = None) -> NetBackend:
        """A backend serving ``vif`` as the saved one did, over ``host``
        (``tap_fd`` as for the constructor).

        The xenstore directories are the restored store's, so nothing is
        published. ``host.evtchn`` is not touched: restore the event channels
        afterwards with this backend's :meth:`endpoints`.
        """
        check_version(state, "net backend")
        if (state.devid, state.mac.lower()) != (vif.devid, vif.mac.lower()):
            raise StateError(f"The saved vif is {state.devid} ({state.mac}), not {vif.devid} ({vif.mac}).")
        rings = (state.tx_ring, state.rx_ring)
        for ring in rings:
            if ring is not None:
                check_version(ring, "vif ring")
                if not 0 <= ring.frame < host.grants.ram_frames:
                    raise StateError(f"The saved vif ring is at frame {ring.frame:#x}, outside the guest's RAM.")
        if (state.tx_ring is None) != (state.rx_ring is None) or not 0 <= state.rx_pending_slots <= RING_SLOTS:
            raise StateError("The saved vif's rings are inconsistent.")
        backend = cls.__new__(cls)
        backend._setup(host, vif, tap_fd, state.xenbus)
        try:
            backend.tx_port, backend.rx_port = state.tx_port, state.rx_port
            backend.rx_sg, backend.rx_gso = state.rx_sg, state.rx_gso
            backend.ipv4 = state.ipv4 if len(state.ipv4) == 4 else b""
            if state.tx_ring is not None and state.rx_ring is not None:
                t, r = state.tx_ring, state.rx_ring
                try:
                    backend._tx = BackRing(host.mem, t.frame << 12, holds=host.grants, nr_slots=RING_SLOTS,
                                           slot_size=TX_SLOT, req_cons=t.req_cons, rsp_prod_pvt=t.rsp_prod_pvt)
                    backend._rx = BackRing(host.mem, r.frame << 12, holds=host.grants, nr_slots=RING_SLOTS,
                                           slot_size=RX_SLOT, req_cons=r.req_cons, rsp_prod_pvt=r.rsp_prod_pvt)
                except RingError as e:
                    backend._release_rings()
                    raise StateError(f"The saved vif rings cannot be restored: {e}") from None
                backend.connected = state.xenbus is XenbusState.CONNECTED
                if state.rx_pending:
                    backend._rx_pending = (state.rx_pending, state.rx_pending_slots)
                backend._set_offload(state.rx_gso)
        except HospesError:
            backend._close_fds()
            raise
        backend._start()
        backend.notify()
        return backend

    # --- teardown --------------------------------------------------------------------

    def _close_fds(self) -> None:
        if self._own_fd and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1
        if self._efd >= 0:
            self._kicked = True   # notify() is a no-op from now on
            efd, self._efd = self._efd, -1
            os.close(efd)

    def close(self) -> None:
        self._stop = True
        self.notify()
        self._thread.join(2)
        self._xenbus.close()
        with self._lock:
            self.connected = False
            self._release_rings()
            self._close_fds()
