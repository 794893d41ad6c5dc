"""The network backend against a simulated netfront (no KVM).

The TAP is replaced by a SOCK_SEQPACKET socketpair that speaks the TAP's
framing (a 10-byte virtio-net header, then the Ethernet frame); one test uses
a real TAP device inside a network namespace it creates (root only).
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import subprocess
import time
from types import SimpleNamespace

import pytest
from waiting import wait_for

from hospes.devices import net
from hospes.devices.net import (
    NETIF_RSP_ERROR,
    NETIF_RSP_NULL,
    NETIF_RSP_OKAY,
    NETRXF_csum_blank,
    NETRXF_data_validated,
    NETRXF_extra_info,
    NETRXF_more_data,
    NETTXF_csum_blank,
    NETTXF_data_validated,
    NETTXF_extra_info,
    NETTXF_more_data,
    NetBackend,
    NetError,
    NetState,
    VifConfig,
    default_mac,
    parse_mac,
)
from hospes.devices.netrate import TxCredit
from hospes.machine.memory import GuestMemory
from hospes.pv.layout import Layout
from hospes.devices.xenbus import XenbusState
from hospes.pv.store import Store, populate_domain
from hospes.state import StateError, decode, encode
from device_helpers import make_host
from netns_helpers import can_make_netns, in_netns

D = 1
MAC = "00:16:3e:00:01:00"
GUEST_MAC = bytes.fromhex("00163e000100")
PEER_MAC = bytes.fromhex("0a0000000001")
TX_RING, RX_RING = 10, 11            # guest frames
TX_DATA = 12                         # frames 12..31: TX data pages (read-only grants)
RX_DATA = 40                         # frames 40..59: RX buffers (writable grants)
RO_FRAME = 60
GREF_TX_RING, GREF_RX_RING = 8, 9
GREF_TX0, GREF_RX0 = 10, 40          # gref = GREF_TX0 + k <-> frame TX_DATA + k, same for RX
GREF_RO = 70                         # read-only grant: refused as an RX buffer
GREF_OTHER = 71                      # granted to domain 5, not to us
FRONT = f"/local/domain/{D}/device/vif/0"
BACK = f"/local/domain/0/backend/vif/{D}/0"
VNET = struct.Struct("<BBHHHH")



# --- a reference checksum, written independently of the backend's ------------------------

def ref_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp4_frame(payload: bytes, src="169.254.1.2", dst="169.254.1.1", csum: int | None = 0,
               sport=4000, dport=5000) -> bytes:
    """Ethernet + IPv4 + UDP; ``csum`` None = compute the right one."""
    udp_len = 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0x4000, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", ref_checksum(ip)) + ip[12:]
    if csum is None:
        pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, udp_len)
        csum = ref_checksum(pseudo + struct.pack("!HHHH", sport, dport, udp_len, 0) + payload) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, udp_len, csum)
    return PEER_MAC + GUEST_MAC + b"\x08\x00" + ip + udp + payload


def tcp6_frame(payload: bytes) -> bytes:
    src, dst = socket.inet_pton(socket.AF_INET6, "fe80::1"), socket.inet_pton(socket.AF_INET6, "fe80::2")
    tcp = struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    ip6 = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + src + dst
    return PEER_MAC + GUEST_MAC + b"\x86\xdd" + ip6 + tcp


def udp4_checksum_ok(frame: bytes) -> bool:
    ip = frame[14:34]
    udp = frame[34:]
    udp_len = struct.unpack("!H", udp[4:6])[0]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, udp_len)
    return ref_checksum(pseudo + udp[:udp_len]) == 0


def tcp6_checksum_ok(frame: bytes) -> bool:
    ip6 = frame[14:54]
    tcp = frame[54:]
    pseudo = ip6[8:40] + struct.pack("!I", len(tcp)) + b"\0\0\0\x06"
    return ref_checksum(pseudo + tcp) == 0


# --- a simulated netfront -----------------------------------------------------------------

class Front:
    """Just enough of xen-netfront: grants, rings, xenstore keys, requests."""

    def __init__(self, dom) -> None:
        self.dom = dom
        self.mem = dom.mem
        self.tx_prod = 0
        self.rx_prod = 0
        self.tx_notifies = 0

    def connect(self, *, split: bool = False, sg: bool = True, gso: bool = True, state: str = "4") -> None:
        st = self.dom.store
        for base in (TX_RING << 12, RX_RING << 12):
            struct.pack_into("<IIII", self.mem.buf, base, 0, 1, 0, 1)   # ring.h: events at 1
        st.write(f"{FRONT}/tx-ring-ref", str(GREF_TX_RING))
        st.write(f"{FRONT}/rx-ring-ref", str(GREF_RX_RING))
        if split:
            st.write(f"{FRONT}/event-channel-tx", "5")
            st.write(f"{FRONT}/event-channel-rx", "6")
        else:
            st.write(f"{FRONT}/event-channel", "5")
        st.write(f"{FRONT}/request-rx-copy", "1")
        st.write(f"{FRONT}/feature-rx-notify", "1")
        st.write(f"{FRONT}/feature-sg", "1" if sg else "0")
        st.write(f"{FRONT}/feature-gso-tcpv4", "1" if gso else "0")
        st.write(f"{FRONT}/feature-gso-tcpv6", "1" if gso else "0")
        st.write(f"{FRONT}/state", state)

    # TX: requests are (gref, offset, flags, id, size) or raw 8-byte extra-info slots.
    def send(self, backend: NetBackend, slots: list, wait: bool = True,
             check_notify: bool = False) -> list[tuple[int, int]]:
        """Publish ``slots``; notify the backend always, or with ``check_notify`` only when
        req_event asks for it (RING_PUSH_REQUESTS_AND_CHECK_NOTIFY), as netfront does."""
        base = TX_RING << 12
        start = self.tx_prod
        for s in slots:
            at = base + 64 + (self.tx_prod % 256) * 12
            if isinstance(s, bytes):
                self.mem.write(at, s.ljust(12, b"\0"))
            else:
                struct.pack_into("<IHHHH", self.mem.buf, at, *s)
            self.tx_prod += 1
        self.mem.write_u32(base, self.tx_prod)
        event = self.mem.read_u32(base + 4)
        if not check_notify or (self.tx_prod - event) & 0xFFFFFFFF < (self.tx_prod - start) & 0xFFFFFFFF:
            backend.notify()
            self.tx_notifies += 1
        if not wait:
            return []
        assert wait_for(lambda: self.mem.read_u32(base + 8) == self.tx_prod)
        return [struct.unpack_from("<Hh", self.mem.buf, base + 64 + (i % 256) * 12)
                for i in range(start, self.tx_prod)]

    def tx_responses_done(self) -> int:
        return self.mem.read_u32((TX_RING << 12) + 8)

    def put_tx_data(self, k: int, data: bytes, offset: int = 0) -> None:
        self.mem.write(((TX_DATA + k) << 12) + offset, data)

    # RX: post buffers (id, gref); responses come back in the same slots.
    def post(self, backend: NetBackend | None, bufs: list[tuple[int, int]]) -> int:
        base = RX_RING << 12
        first = self.rx_prod
        for rid, gref in bufs:
            struct.pack_into("<HxxI", self.mem.buf, base + 64 + (self.rx_prod % 256) * 8, rid, gref)
            self.rx_prod += 1
        self.mem.write_u32(base, self.rx_prod)
        if backend is not None:
            backend.notify()
        return first

    def rx_responses(self, upto: int, timeout: float = 5.0) -> bool:
        return wait_for(lambda: self.mem.read_u32((RX_RING << 12) + 8) == upto, timeout)

    def rx_response(self, index: int) -> tuple[int, int, int, int]:
        return struct.unpack_from("<HHHh", self.mem.buf, (RX_RING << 12) + 64 + (index % 256) * 8)

    def rx_page(self, k: int, n: int, offset: int = 0) -> bytes:
        return self.mem.read(((RX_DATA + k) << 12) + offset, n)


@pytest.fixture()
def setup():
    lay = Layout(ram_pages=64, nr_vcpus=1)
    mem = GuestMemory([("ram", lay.ram_bytes), ("xen", 64 * 4096), ("hv", 4096)])
    store = Store()
    populate_domain(store, D, "t", "00000000-0000-0000-0000-000000000001", 1, 256)
    dom = make_host(D, mem, lay, store)
    grants = lay.grant_frame_gpa(0)
    entries = [(GREF_TX_RING, TX_RING, 0), (GREF_RX_RING, RX_RING, 0), (GREF_RO, RO_FRAME, 4)]
    entries += [(GREF_TX0 + k, TX_DATA + k, 4) for k in range(20)]
    entries += [(GREF_RX0 + k, RX_DATA + k, 0) for k in range(20)]
    for ref, frame, ro in entries:
        struct.pack_into("<HHI", mem.buf, grants + ref * 8, 1 | ro, 0, frame)
    struct.pack_into("<HHI", mem.buf, grants + GREF_OTHER * 8, 1, 5, RX_DATA)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.settimeout(5)
    backends: list[NetBackend] = []

    def make(**kw) -> NetBackend:
        b = NetBackend(dom, VifConfig(mac=MAC, **kw), tap_fd=ours.fileno())
        backends.append(b)
        return b

    def restore(state: NetState) -> NetBackend:
        b = NetBackend.restore(state, host=dom, vif=VifConfig(mac=MAC), tap_fd=ours.fileno())
        backends.append(b)
        return b

    yield SimpleNamespace(dom=dom, front=Front(dom), host=theirs, make=make, restore=restore)
    for b in backends:
        b.close()
    ours.close()
    theirs.close()
    mem.close()


def host_recv(host: socket.socket) -> tuple[tuple[int, ...], bytes]:
    data = host.recv(70000)
    return VNET.unpack_from(data), data[10:]


def host_send(host: socket.socket, frame: bytes, flags: int = 0, gso_type: int = 0, gso_size: int = 0,
              csum_start: int = 0, csum_offset: int = 0) -> None:
    host.send(VNET.pack(flags, gso_type, 0, gso_size, csum_start, csum_offset) + frame)


# --- xenbus ---------------------------------------------------------------------------------

def test_handshake_publishes_the_vif_and_connects(setup) -> None:
    s = setup
    b = s.make()
    st = s.dom.store
    assert st.read(f"{BACK}/state") == b"2"
    assert st.read(f"{BACK}/feature-rx-copy") == b"1"
    assert st.read(f"{BACK}/mac") == MAC.encode() and st.read(f"{FRONT}/mac") == MAC.encode()
    assert st.read(f"{FRONT}/state") == b"1" and st.read(f"{FRONT}/backend-id") == b"0"
    assert st.read(f"{FRONT}/backend") == BACK.encode() and st.read(f"{BACK}/frontend") == FRONT.encode()
    assert st.read(f"{FRONT}/handle") == b"0" and st.read(f"{BACK}/handle") == b"0"
    assert st.get_perms(BACK) == ["n0", f"r{D}"]
    assert st.get_perms(FRONT) == [f"n{D}"]
    s.front.connect()
    assert st.read(f"{BACK}/state") == b"4"
    assert s.dom.evtchn.bound == {5: b._ports[0]}
    assert b.connected
    # Closing is followed (the frontend waits for it), then Closed, then a fresh start.
    st.write(f"{FRONT}/state", "5")
    assert st.read(f"{BACK}/state") == b"5" and not b.connected
    st.write(f"{FRONT}/state", "6")
    assert st.read(f"{BACK}/state") == b"6"
    st.write(f"{FRONT}/state", "1")
    assert st.read(f"{BACK}/state") == b"2"
    s.front.connect()
    assert st.read(f"{BACK}/state") == b"4" and b.connected


def test_split_event_channels_bind_both_ports(setup) -> None:
    s = setup
    b = s.make()
    s.front.connect(split=True)
    assert s.dom.store.read(f"{BACK}/state") == b"4"
    assert set(s.dom.evtchn.bound) == {5, 6}
    # RX responses are signalled on the RX port.
    first = s.front.post(b, [(0, GREF_RX0)])
    host_send(s.host, udp4_frame(b"x" * 10, csum=None))
    assert s.front.rx_responses(first + 1)
    assert wait_for(lambda: 6 in s.dom.evtchn.notified)


def test_a_frontend_without_rx_copy_or_with_bad_ring_grants_is_refused(setup) -> None:
    s = setup
    s.make()
    st = s.dom.store
    st.write(f"{FRONT}/tx-ring-ref", str(GREF_TX_RING))
    st.write(f"{FRONT}/rx-ring-ref", "999")
    st.write(f"{FRONT}/event-channel", "5")
    st.write(f"{FRONT}/request-rx-copy", "1")
    st.write(f"{FRONT}/state", "4")
    assert st.read(f"{BACK}/state") == b"6"
    assert s.dom.evtchn.bound == {}


def test_macs_and_names_are_checked() -> None:
    assert parse_mac("00:16:3e:00:01:00") == bytes.fromhex("00163e000100")
    for bad in ("00:16:3e:00:01", "01:00:5e:00:00:01", "zz:16:3e:00:01:00", "00:00:00:00:00:00"):
        with pytest.raises(NetError):
            parse_mac(bad)
    assert default_mac(1, 0) == "00:16:3e:00:01:00"
    assert default_mac(300, 2) == "00:16:3e:01:2c:02"
    with pytest.raises(NetError):
        net.open_tap("a-name-much-too-long", 1500)


# --- TX ---------------------------------------------------------------------------------------

def test_tx_udp_with_blank_checksum_is_completed(setup) -> None:
    s = setup
    b = s.make()
    s.front.connect()
    frame = udp4_frame(b"hello from the guest" * 3, csum=0)
    s.front.put_tx_data(0, frame, offset=100)
    rsp = s.front.send(b, [(GREF_TX0, 100, NETTXF_csum_blank | NETTXF_data_validated, 7, len(frame))])
    assert rsp == [(7, NETIF_RSP_OKAY)]
    hdr, out = host_recv(s.host)
    assert len(out) == len(frame) and out[:40] == frame[:40] and out[42:] == frame[42:]
    assert out[40:42] != b"\0\0" and udp4_checksum_ok(out)
    assert hdr[0] == net.VIRTIO_NET_HDR_F_DATA_VALID and hdr[1] == 0
    assert b.stats.tx_packets == 1 and b.stats.tx_bytes == len(frame)
    assert 5 in s.dom.evtchn.notified


def test_tx_packets_queued_right_behind_a_pass_need_no_notification_and_are_sent(setup) -> None:
    """After a pass that sent packets the worker lingers without re-arming req_event: packets
    the frontend publishes then are sent without a notification of their own; once idle the
    worker re-arms, and the next packet notifies again. None is ever left on the ring."""
    s = setup
    b = s.make()
    s.front.connect()
    frame = udp4_frame(b"burst" * 8)
    s.front.put_tx_data(0, frame)
    for _burst in range(3):
        for k in range(8):   # back to back, as a guest's TCP stack queues a window's worth
            s.front.send(b, [(GREF_TX0, 0, NETTXF_data_validated, k, len(frame))], wait=False, check_notify=True)
        assert wait_for(lambda: s.front.tx_responses_done() == s.front.tx_prod)
        for _ in range(8):
            assert host_recv(s.host)[1] == frame
        # idle: the worker re-armed for the next request (the final check)
        assert wait_for(lambda: s.dom.mem.read_u32((TX_RING << 12) + 4) == s.front.tx_prod + 1)
    assert b.stats.tx_packets == 24
    assert 3 <= s.front.tx_notifies < 24


def test_tx_ipv6_tcp_checksum_and_plain_packets(setup) -> None:
    s = setup
    b = s.make()
    s.front.connect()
    frame = tcp6_frame(b"segment" * 11)
    s.front.put_tx_data(0, frame)
    assert s.front.send(b, [(GREF_TX0, 0, NETTXF_csum_blank, 1, len(frame))]) == [(1, NETIF_RSP_OKAY)]
    hdr, out = host_recv(s.host)
    assert tcp6_checksum_ok(out) and hdr[0] == 0   # not validated by the guest: the host checks
    # A packet whose checksum is already there passes unchanged.
    frame = udp4_frame(b"as is", csum=0x1234)
    s.front.put_tx_data(1, frame)
    assert s.front.send(b, [(GREF_TX0 + 1, 0, 0, 2, len(frame))]) == [(2, NETIF_RSP_OKAY)]
    assert host_recv(s.host)[1] == frame


def test_tx_chain_with_extra_info_gets_null_responses(setup) -> None:
    s = setup
    b = s.make()
    s.front.connect()
    frame = udp4_frame(bytes(range(256)) * 8, csum=None)   # 2090 bytes over three slots
    a, c = frame[:1000], frame[1000:]
    s.front.put_tx_data(0, a, offset=3000)
    s.front.put_tx_data(1, c[:1000], offset=0)
    s.front.put_tx_data(2, c[1000:], offset=50)
    mcast = struct.pack("<BB6s", 2, 0, bytes.fromhex("01005e000001"))   # MCAST_ADD: nothing to do
    rsp = s.front.send(b, [
        (GREF_TX0, 3000, NETTXF_more_data | NETTXF_extra_info, 11, len(frame)),
        mcast,
        (GREF_TX0 + 1, 0, NETTXF_more_data, 12, 1000),
        (GREF_TX0 + 2, 50, 0, 13, len(c) - 1000),
    ])
    assert rsp == [(11, NETIF_RSP_OKAY), (0, NETIF_RSP_NULL), (12, NETIF_RSP_OKAY), (13, NETIF_RSP_OKAY)]
    assert host_recv(s.host)[1] == frame


def test_tx_gso_packet_is_handed_to_the_host_for_segmentation(setup) -> None:
    s = setup
    b = s.make()
    s.front.connect()
    frame = tcp6_frame(b"z" * 3000)
    s.front.put_tx_data(0, frame[:2000])
    s.front.put_tx_data(1, frame[2000:])
    gso = struct.pack("<BBHBBH", 1, 0, 1440, 2, 0, 0)   # GSO, TCPv6, 1440-byte segments
    rsp = s.front.send(b, [
        (GREF_TX0, 0, NETTXF_csum_blank | NETTXF_data_validated | NETTXF_extra_info | NETTXF_more_data,
         1, len(frame)),
        gso,
        (GREF_TX0 + 1, 0, 0, 2, len(frame) - 2000),
    ])
    assert rsp == [(1, NETIF_RSP_OKAY), (0, NETIF_RSP_NULL), (2, NETIF_RSP_OKAY)]
    (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset), out = host_recv(s.host)
    assert out == frame
    assert (flags, gso_type, gso_size) == (net.VIRTIO_NET_HDR_F_NEEDS_CSUM, net.VIRTIO_NET_HDR_GSO_TCPV6, 1440)
    assert (csum_start, csum_offset, hdr_len) == (54, 16, 74)


def test_malformed_tx_packets_get_errors_and_the_ring_keeps_working(setup) -> None:
    s = setup
    b = s.make()
    s.front.connect()
    frame = udp4_frame(b"p" * 100, csum=None)
    for k in range(3):
        s.front.put_tx_data(k, frame)
    # An unknown grant, a grant to another domain, data past the page end, a runt.
    results = s.front.send(b, [
        (999, 0, 0, 1, len(frame)),
        (GREF_OTHER, 0, 0, 2, len(frame)),
        (GREF_TX0, 4000, 0, 3, len(frame)),
        (GREF_TX0, 0, 0, 4, 10),
    ])
    assert results == [(i, NETIF_RSP_ERROR) for i in (1, 2, 3, 4)]
    # Later slots larger than the packet, and an unknown extra-info type.
    results = s.front.send(b, [
        (GREF_TX0, 0, NETTXF_more_data, 5, 100),
        (GREF_TX0 + 1, 0, 0, 6, 200),
        (GREF_TX0, 0, NETTXF_extra_info, 7, len(frame)),
        struct.pack("<BB", 9, 0),
    ])
    assert results == [(5, NETIF_RSP_ERROR), (6, NETIF_RSP_ERROR), (7, NETIF_RSP_ERROR), (0, NETIF_RSP_NULL)]
    # Too many slots: 20 chained data slots.
    chain = [(GREF_TX0, 0, NETTXF_more_data, 100 + i, 20 * 10 if i == 0 else 10) for i in range(20)]
    chain[-1] = (GREF_TX0, 0, 0, 119, 10)
    results = s.front.send(b, chain)
    assert results == [(100 + i, NETIF_RSP_ERROR) for i in range(20)]
    # Blank checksum on something that is not TCP/UDP.
    arp = PEER_MAC + GUEST_MAC + b"\x08\x06" + bytes(28)
    s.front.put_tx_data(3, arp)
    assert s.front.send(b, [(GREF_TX0 + 3, 0, NETTXF_csum_blank, 8, len(arp))]) == [(8, NETIF_RSP_ERROR)]
    assert b.stats.tx_errors == 8 and b.stats.tx_packets == 0
    # Nothing reached the host; a good packet still goes through.
    s.host.setblocking(False)
    with pytest.raises(BlockingIOError):
        s.host.recv(70000)
    s.host.settimeout(5)
    assert s.front.send(b, [(GREF_TX0, 0, 0, 9, len(frame))]) == [(9, NETIF_RSP_OKAY)]
    assert host_recv(s.host)[1] == frame
    assert b.connected


def test_tx_chain_still_being_written_waits_for_its_end(setup) -> None:
    s = setup
    b = s.make()
    s.front.connect()
    frame = udp4_frame(b"q" * 300, csum=None)
    s.front.put_tx_data(0, frame[:200])
    s.front.put_tx_data(1, frame[200:])
    base = TX_RING << 12
    struct.pack_into("<IHHHH", s.dom.mem.buf, base + 64, GREF_TX0, 0, NETTXF_more_data, 1, len(frame))
    s.dom.mem.write_u32(base, 1)
    s.front.tx_prod = 1
    b.notify()
    time.sleep(0.2)
    assert s.dom.mem.read_u32(base + 8) == 0      # not answered: the chain goes on
    assert s.front.send(b, [(GREF_TX0 + 1, 0, 0, 2, len(frame) - 200)]) == [(2, NETIF_RSP_OKAY)]
    assert struct.unpack_from("<Hh", s.dom.mem.buf, base + 64) == (1, NETIF_RSP_OKAY)
    assert host_recv(s.host)[1] == frame


def test_corrupt_tx_indices_disconnect_without_raising(setup) -> None:
    s = setup
    b = s.make()
    s.front.connect()
    s.dom.mem.write_u32(TX_RING << 12, 1000)
    b.notify()
    assert wait_for(lambda: s.dom.store.read(f"{BACK}/state") == b"6")
    assert not b.connected


# --- RX ---------------------------------------------------------------------------------------

def test_rx_fills_posted_buffers_in_the_same_slots(setup) -> None:
    s = setup
    b = s.make()
    s.front.connect()
    # Ids unrelated to slot numbers: the response must sit in the request's slot anyway.
    first = s.front.post(b, [(300 + k, GREF_RX0 + k) for k in range(4)])
    frames = [udp4_frame(bytes([k]) * (60 + k), csum=None) for k in range(3)]
    host_send(s.host, frames[0])
    host_send(s.host, frames[1], flags=net.VIRTIO_NET_HDR_F_DATA_VALID)
    # A partial checksum (pseudo-header sum in place) travels to the guest as csum_blank.
    partial = bytearray(frames[2])
    partial[40:42] = b"\x12\x34"
    host_send(s.host, bytes(partial), flags=net.VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=34, csum_offset=6)
    assert s.front.rx_responses(first + 3)
    for k, flags in enumerate((0, NETRXF_data_validated, NETRXF_csum_blank | NETRXF_data_validated)):
        rid, offset, f, status = s.front.rx_response(first + k)
        assert (rid, offset, f, status) == (300 + k, 0, flags, len(frames[k]))
        expect = frames[k] if k < 2 else bytes(partial)
        assert s.front.rx_page(k, len(expect)) == expect
    assert b.stats.rx_packets == 3 and b.stats.rx_bytes == sum(map(len, frames))
    assert 5 in s.dom.evtchn.notified
    # The fourth buffer is still posted: the backend does not ask to hear of more (req_event
    # stays behind, so refills cost the guest no notification) ...
    event = s.dom.mem.read_u32((RX_RING << 12) + 4)
    assert (first + 4 - event) & 0xFFFFFFFF < 0x80000000 and event != first + 4
    # ... until it has used the last one: then it asks for the next buffer.
    host_send(s.host, frames[0])
    assert s.front.rx_responses(first + 4)
    assert wait_for(lambda: s.dom.mem.read_u32((RX_RING << 12) + 4) == first + 5)
    # A buffer posted past req_event notifies (the frontend's check), and the waiting frame goes into it.
    s.front.post(b, [(400, GREF_RX0)])
    host_send(s.host, frames[1])
    assert s.front.rx_responses(first + 5)
    assert s.front.rx_response(first + 4)[0] == 400


def test_rx_partial_checksum_of_other_protocols_is_completed_here(setup) -> None:
    s = setup
    b = s.make()
    s.front.connect()
    first = s.front.post(b, [(1, GREF_RX0)])
    # An ICMP echo whose checksum the host left to be done (sum from csum_start,
    # stored csum_offset further): the guest only completes TCP/UDP, so we do.
    icmp = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"ping" * 10
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                     socket.inet_aton("169.254.1.1"), socket.inet_aton("169.254.1.2"))
    ip = ip[:10] + struct.pack("!H", ref_checksum(ip)) + ip[12:]
    frame = PEER_MAC + GUEST_MAC + b"\x08\x00" + ip + icmp
    host_send(s.host, frame, flags=net.VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=34, csum_offset=2)
    assert s.front.rx_responses(first + 1)
    rid, _off, flags, status = s.front.rx_response(first)
    assert (rid, flags, status) == (1, NETRXF_data_validated, len(frame))
    got = s.front.rx_page(0, status)
    assert got[:36] == frame[:36] and got[38:] == frame[38:]
    assert ref_checksum(got[34:]) == 0


def test_rx_bad_buffers_get_errors_in_their_slots(setup) -> None:
    s = setup
    b = s.make()
    s.front.connect()
    first = s.front.post(b, [(7, GREF_RO), (8, 999), (9, GREF_RX0)])
    for _ in range(3):
        host_send(s.host, udp4_frame(b"r" * 20, csum=None))
    assert s.front.rx_responses(first + 3)
    assert s.front.rx_response(first)[::3] == (7, NETIF_RSP_ERROR)
    assert s.front.rx_response(first + 1)[::3] == (8, NETIF_RSP_ERROR)
    assert s.front.rx_response(first + 2)[::3] == (9, 62)
    assert b.stats.rx_errors == 2 and b.stats.rx_dropped == 2 and b.stats.rx_packets == 1


def test_rx_frames_over_a_page(setup) -> None:
    s = setup
    b = s.make(mtu=9000)
    s.front.connect(sg=False)
    first = s.front.post(b, [(k, GREF_RX0 + k) for k in range(4)])
    big = udp4_frame(bytes(range(256)) * 24, csum=None)      # 6186 bytes
    host_send(s.host, big)                                     # no SG: cannot fit, dropped
    host_send(s.host, udp4_frame(b"small", csum=None))
    assert s.front.rx_responses(first + 1)
    assert s.front.rx_response(first)[3] == 47
    assert b.stats.rx_dropped == 1
    # With SG the frame spans two buffers, linked by more_data.
    s.dom.store.write(f"{FRONT}/state", "5")
    s.dom.store.write(f"{FRONT}/state", "6")
    s.dom.store.write(f"{FRONT}/state", "1")
    s.front.tx_prod = s.front.rx_prod = 0
    s.front.connect(sg=True)
    first = s.front.post(b, [(k, GREF_RX0 + k) for k in range(4)])
    host_send(s.host, big)
    assert s.front.rx_responses(first + 2)
    assert s.front.rx_response(first) == (0, 0, NETRXF_more_data, 4096)
    assert s.front.rx_response(first + 1) == (1, 0, 0, len(big) - 4096)
    assert s.front.rx_page(0, 4096) + s.front.rx_page(1, len(big) - 4096) == big


def test_rx_gso_frame_carries_an_extra_info_slot(setup) -> None:
    s = setup
    b = s.make()
    s.front.connect()
    first = s.front.post(b, [(k, GREF_RX0 + k) for k in range(5)])
    frame = tcp6_frame(b"G" * 9000)
    host_send(s.host, frame, flags=net.VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type=net.VIRTIO_NET_HDR_GSO_TCPV6,
              gso_size=1440, csum_start=54, csum_offset=16)
    assert s.front.rx_responses(first + 4)
    flags = NETRXF_csum_blank | NETRXF_data_validated | NETRXF_extra_info | NETRXF_more_data
    assert s.front.rx_response(first) == (0, 0, flags, 4096)
    extra = s.dom.mem.read((RX_RING << 12) + 64 + ((first + 1) % 256) * 8, 6)
    assert struct.unpack("<BBHBB", extra) == (1, 0, 1440, 2, 0)
    assert s.front.rx_response(first + 2) == (2, 0, NETRXF_more_data, 4096)
    assert s.front.rx_response(first + 3) == (3, 0, 0, len(frame) - 8192)
    assert s.front.rx_page(0, 4096) + s.front.rx_page(2, 4096) + s.front.rx_page(3, len(frame) - 8192) == frame


def test_rx_waits_for_buffers_then_drops_when_starved(setup, monkeypatch) -> None:
    s = setup
    monkeypatch.setattr(net, "RX_STALL_DROP_S", 0.3)
    b = s.make()
    s.front.connect()
    host_send(s.host, udp4_frame(b"early", csum=None))
    time.sleep(0.1)
    first = s.front.post(b, [(1, GREF_RX0)])
    assert s.front.rx_responses(first + 1)          # the frame waited for the buffer
    assert s.front.rx_response(first)[3] == 47
    # No buffer for longer than the stall limit: frames are dropped and counted.
    for _ in range(3):
        host_send(s.host, udp4_frame(b"late", csum=None))
    assert wait_for(lambda: b.stats.rx_dropped == 3)
    first = s.front.post(b, [(2, GREF_RX0)])
    host_send(s.host, udp4_frame(b"fresh!", csum=None))
    assert s.front.rx_responses(first + 1)
    assert s.front.rx_response(first)[3] == 48


def test_corrupt_rx_indices_disconnect_without_raising(setup) -> None:
    s = setup
    b = s.make()
    s.front.connect()
    s.dom.mem.write_u32(RX_RING << 12, 5000)
    b.notify()
    host_send(s.host, udp4_frame(b"x", csum=None))
    assert wait_for(lambda: s.dom.store.read(f"{BACK}/state") == b"6")


def test_close_stops_the_worker(setup) -> None:
    s = setup
    b = s.make()
    s.front.connect()
    b.close()
    assert not b._thread.is_alive()
    b.notify()   # harmless after close


# --- rate= -----------------------------------------------------------------------------------

def test_tx_credit_charges_whole_packets_and_carries_credit_over() -> None:
    now = [100.0]
    c = TxCredit(1000, 0.05, clock=lambda: now[0])
    assert c.take(600) and not c.take(600) and c.limited == 1
    assert c.next_credit_at == pytest.approx(100.05)
    now[0] = 100.05
    assert c.take(600) and c.take(600) and not c.take(600)     # 400 left + 1000
    now[0] = 100.2
    assert c.take(1000) and c.credit == 200
    # idle time accumulates credit, but only up to max(128 KiB, one interval's credit)
    for k in range(1, 400):
        now[0] = 100.2 + k * 0.05
        c.take(0)
        c.take(10**9)
    assert c.credit == 131072 and c.take(65535) and c.take(65535) and not c.take(65535)


def test_tx_credit_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        TxCredit(0, 0.05)
    with pytest.raises(ValueError):
        TxCredit(100, 0)


def test_rate_limited_tx_holds_packets_until_credit_is_due(setup) -> None:
    """rate= as xl gives it: 1000 bytes per 200 ms; five 600-byte packets need
    three credit windows, and the ones held back are sent, in order, later."""
    s = setup
    b = s.make(rate_bytes=1000, rate_usecs=200_000)
    s.front.connect()
    frames = [udp4_frame(bytes([k]) * (600 - 42), csum=None) for k in range(5)]
    for k, f in enumerate(frames):
        s.front.put_tx_data(k, f)
    t0 = time.monotonic()
    s.front.send(b, [(GREF_TX0 + k, 0, NETTXF_data_validated, k, len(f)) for k, f in enumerate(frames)], wait=False)
    assert host_recv(s.host)[1] == frames[0]
    time.sleep(0.1)
    assert s.front.tx_responses_done() == 1 and b.stats.tx_packets == 1   # the window's credit is spent
    got = [host_recv(s.host)[1] for _ in range(4)]
    assert got == frames[1:]
    assert time.monotonic() - t0 >= 0.35      # two more windows had to open
    assert wait_for(lambda: s.front.tx_responses_done() == 5)
    assert b.stats.tx_packets == 5 and b.stats.tx_rate_limited >= 2


def test_unlimited_vif_is_not_slowed(setup) -> None:
    s = setup
    b = s.make()
    s.front.connect()
    frame = udp4_frame(b"x" * 1400, csum=None)
    for k in range(8):
        s.front.put_tx_data(k, frame)
    rsp = s.front.send(b, [(GREF_TX0 + k, 0, NETTXF_data_validated, k, len(frame)) for k in range(8)])
    assert rsp == [(k, NETIF_RSP_OKAY) for k in range(8)]
    assert b.tx_credit is None and b.stats.tx_rate_limited == 0


# --- a real TAP in a network namespace ------------------------------------------------------

needs_root_netns = pytest.mark.skipif(not can_make_netns(), reason="needs root, iproute2 and /dev/net/tun")


@needs_root_netns
def test_real_tap_in_a_network_namespace(setup) -> None:
    s = setup
    ns, tap = f"hospes-nt{os.getpid()}", f"hpnt{os.getpid() % 100000}"
    b = NetBackend(s.dom, VifConfig(mac=MAC, tap=tap))
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        for cmd in (["link", "set", tap, "netns", ns],
                    ["-n", ns, "addr", "add", "169.254.1.1/24", "dev", tap],
                    ["-n", ns, "link", "set", tap, "up"],
                    ["-n", ns, "neigh", "add", "169.254.1.2", "lladdr", MAC, "dev", tap]):
            subprocess.run(["ip", *cmd], check=True)
        s.front.connect()
        # Host -> guest: a UDP datagram from inside the namespace lands in a posted buffer.
        first = s.front.post(b, [(k, GREF_RX0 + k) for k in range(8)])
        tx = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        rx = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        try:
            rx.bind(("169.254.1.1", 5000))
            rx.settimeout(5)
            tx.sendto(b"to the guest", ("169.254.1.2", 4000))
            found = None
            deadline = time.monotonic() + 5
            while found is None and time.monotonic() < deadline:
                done = s.dom.mem.read_u32((RX_RING << 12) + 8)
                for i in range(first, done):
                    rid, off, flags, status = s.front.rx_response(i)
                    data = s.front.rx_page(rid, status) if status > 0 else b""
                    if data[12:14] == b"\x08\x00" and data[23] == 17 and data.endswith(b"to the guest"):
                        found = (flags, data)
                time.sleep(0.01)
            assert found is not None, "the datagram never reached an RX buffer"
            flags, data = found
            assert data[:6] == GUEST_MAC
            if not flags & NETRXF_csum_blank:
                assert udp4_checksum_ok(data)
            # Guest -> host: a UDP packet with a blank checksum; the namespace's
            # kernel checks the checksum we complete (no data_validated flag).
            frame = data[6:12] + GUEST_MAC + udp4_frame(b"from the guest", src="169.254.1.2",
                                                         dst="169.254.1.1", csum=0)[12:]
            s.front.put_tx_data(0, frame)
            assert s.front.send(b, [(GREF_TX0, 0, NETTXF_csum_blank, 1, len(frame))]) == [(1, NETIF_RSP_OKAY)]
            payload, addr = rx.recvfrom(100)
            assert payload == b"from the guest" and addr[0] == "169.254.1.2"
        finally:
            tx.close()
            rx.close()
    finally:
        b.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", tap], capture_output=True)


@needs_root_netns
def test_bridge_puts_the_tap_on_an_existing_bridge(setup) -> None:
    """bridge= enslaves the vif's TAP (all inside a private namespace); a missing
    bridge or a device that is not one is a clear NetError and leaves no TAP behind."""
    s = setup
    ns, tap = f"hospes-br{os.getpid()}", f"hpbr{os.getpid() % 100000}"
    ip = lambda *a: subprocess.run(["ip", *a], check=True, capture_output=True, text=True)  # noqa: E731
    ip("netns", "add", ns)
    try:
        ip("-n", ns, "link", "add", "hbr0", "type", "bridge")
        b = in_netns(ns, lambda: NetBackend(s.dom, VifConfig(mac=MAC, tap=tap, bridge="hbr0")))
        try:
            assert "master hbr0" in ip("-n", ns, "link", "show", tap).stdout
        finally:
            b.close()
        for bridge, says in (("nobr0", "does not exist"), ("lo", "is not a Linux bridge"),
                             ("bad name", "not a valid interface name")):
            with pytest.raises(NetError, match=says):
                in_netns(ns, lambda bridge=bridge: NetBackend(s.dom, VifConfig(mac=MAC, tap=tap, bridge=bridge)))
            gone = subprocess.run(["ip", "-n", ns, "link", "show", tap], capture_output=True)
            assert gone.returncode != 0, f"the TAP outlived a failed attach to {bridge!r}"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# --- saved state ----------------------------------------------------------------------------

def _busy_backend(s, monkeypatch) -> tuple[NetBackend, bytes, int]:
    """A connected vif that has sent one packet and holds a received frame
    needing two RX buffers while the guest posted one."""
    monkeypatch.setattr(net, "RX_STALL_DROP_S", 3600.0)   # keep the waiting frame however slow the host
    b = s.make()
    s.front.connect(sg=True)
    frame = udp4_frame(b"out" * 20, csum=None)
    s.front.put_tx_data(0, frame)
    assert s.front.send(b, [(GREF_TX0, 0, NETTXF_data_validated, 7, len(frame))]) == [(7, NETIF_RSP_OKAY)]
    assert host_recv(s.host)[1] == frame
    first = s.front.post(b, [(0, GREF_RX0)])
    big = udp4_frame(bytes(range(256)) * 24, csum=None)      # 6186 bytes: two buffers
    host_send(s.host, big)
    assert wait_for(lambda: b.save().rx_pending != b"")
    return b, big, first


def test_save_restore_save(setup, monkeypatch) -> None:
    s = setup
    b, big, _first = _busy_backend(s, monkeypatch)
    state = b.save()
    b.close()
    assert state.xenbus is XenbusState.CONNECTED and (state.tx_port, state.rx_port) == (5, 5)
    assert state.tx_ring is not None and state.tx_ring.frame == TX_RING
    assert (state.tx_ring.req_cons, state.tx_ring.rsp_prod_pvt) == (1, 1)
    assert state.rx_ring is not None and state.rx_ring.frame == RX_RING and state.rx_ring.req_cons == 0
    assert state.rx_sg and state.rx_gso == 6
    assert state.rx_pending[10:] == big and state.rx_pending_slots == 2
    again = s.restore(decode(NetState, encode(state)))
    assert again.save() == state


def test_a_restored_backend_serves_the_rings_it_was_saved_with(setup, monkeypatch) -> None:
    s = setup
    b, big, first = _busy_backend(s, monkeypatch)
    state = b.save()
    b.close()
    s.dom.evtchn.bound.clear()
    again = s.restore(state)
    s.dom.evtchn.bound.update(again.endpoints())    # what EventChannels.restore(backends=...) does
    assert s.dom.evtchn.bound == {5: again._ports[0]}
    # The second buffer lets the frame saved in flight through.
    s.front.post(again, [(1, GREF_RX0 + 1)])
    assert s.front.rx_responses(first + 2)
    assert s.front.rx_response(first) == (0, 0, NETRXF_more_data, 4096)
    assert s.front.rx_response(first + 1) == (1, 0, 0, len(big) - 4096)
    assert s.front.rx_page(0, 4096) + s.front.rx_page(1, len(big) - 4096) == big
    # TX goes on from where it was.
    frame = udp4_frame(b"again" * 10, csum=None)
    s.front.put_tx_data(1, frame)
    assert s.front.send(again, [(GREF_TX0 + 1, 0, NETTXF_data_validated, 8, len(frame))]) == [(8, NETIF_RSP_OKAY)]
    assert host_recv(s.host)[1] == frame
    assert s.front.tx_responses_done() == 2
    # And the handshake goes on too.
    s.dom.store.write(f"{FRONT}/state", "5")
    assert s.dom.store.read(f"{BACK}/state") == b"5" and not again.connected


def test_restore_refuses_another_vif(setup) -> None:
    s = setup
    state = s.make().save()
    with pytest.raises(StateError):
        NetBackend.restore(state, host=s.dom, vif=VifConfig(mac="00:16:3e:00:09:09"), tap_fd=0)


# --- page types (issue 13): a granted page the guest made a page table is never written ------------

def test_rx_into_a_page_table_is_refused_and_the_buffers_are_given_back(setup) -> None:
    s = setup
    types = s.dom.grants.types
    b = s.make()
    s.front.connect()
    assert types.held == {TX_RING: 1, RX_RING: 1}
    types.get_type(RX_DATA, 1, [])                 # the guest made buffer 0 an L1
    first = s.front.post(b, [(7, GREF_RX0), (8, GREF_RX0 + 1)])
    for _ in range(2):
        host_send(s.host, udp4_frame(b"r" * 20, csum=None))
    assert s.front.rx_responses(first + 2)
    assert s.front.rx_response(first)[::3] == (7, NETIF_RSP_ERROR)
    assert s.front.rx_response(first + 1)[::3] == (8, 62)
    assert s.front.rx_page(0, 4096) == bytes(4096)
    assert types.held == {TX_RING: 1, RX_RING: 1} and RX_DATA + 1 not in types.count
    s.dom.store.write(f"{FRONT}/state", "5")       # closing: the rings are the guest's again
    assert not types.held and TX_RING not in types.count and RX_RING not in types.count


def test_rings_in_a_page_table_are_refused_at_connect(setup) -> None:
    s = setup
    s.dom.grants.types.get_type(RX_RING, 1, [])
    b = s.make()
    s.front.connect()
    assert s.dom.store.read(f"{BACK}/state") == b"6" and not b.connected
    assert not s.dom.grants.types.held             # the TX ring's reference was given back too


def test_brief_waits_see_readable_descriptors_whatever_their_numbers() -> None:
    """select(2) for the linger's sub-millisecond wait, poll(2) for descriptors past FD_SETSIZE."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2100:   # root may raise it; the test needs one descriptor past FD_SETSIZE
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard) if hard != resource.RLIM_INFINITY else 4096, hard))
    r, w = os.pipe()
    high = fcntl.fcntl(r, fcntl.F_DUPFD, 2000)
    try:
        assert net._wait_briefly([r], 0.0002) == []
        assert net._wait_briefly([high], 0.0002) == []
        os.write(w, b"x")
        assert net._wait_briefly([r], 0.0002) == [(r, select.POLLIN)]
        assert [fd for fd, _ in net._wait_briefly([high], 0.0002)] == [high]
    finally:
        for fd in (r, w, high):
            os.close(fd)
