"""Tests for hospes.pv.evtchn_fifo: the FIFO event-channel ABI behind EventChannels.

One anonymous mmap stands for the guest: page 0 is shared_info (vcpu_info of
vCPU v at 64*v), the pages after it are guest frames (gfn n at page n) that
the guest hands over as control blocks and event array pages. Every test
reads the guest-visible words directly, and the "guest" consumes queues as
Linux's events_fifo.c does, with locked instructions.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import mmap
import struct
import threading
from collections.abc import Iterator

import pytest

from hospes.machine import atomics
from hospes.pv.errors import Errno, XenError
from hospes.pv.evtchn import EventChannels, EventChannelState, Virq
from hospes.pv.evtchn_fifo import (
    BUSY,
    LINK_MASK,
    LINKED,
    MASKED,
    MAX_ARRAY_PAGES,
    PENDING,
    FifoState,
)
from hospes.state import StateError, decode, encode

DOMID = 5
NR_VCPUS = 2
NR_FRAMES = 140  # enough for 128 array pages plus control blocks
CB_GFN = (1, 2)  # vCPU v's control block frame
ARRAY_GFN = 3  # first event array frame
BAD_GFN = 0x7777  # not "RAM"
TABLE_GFN = 139  # "a page table": refused like a frame in use as one


class Pages:
    """EventPages over the fake frames, counting references like the MMU would."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.held: dict[int, int] = {}

    def map(self, gfn: int) -> int:
        if not 1 <= gfn < NR_FRAMES or gfn == TABLE_GFN:
            raise XenError(Errno.EINVAL, f"frame {gfn:#x} refused")
        self.held[gfn] = self.held.get(gfn, 0) + 1
        return self.base + gfn * 4096

    def unmap(self, gfn: int) -> None:
        self.held[gfn] -= 1
        if not self.held[gfn]:
            del self.held[gfn]


class Guest:
    def __init__(self) -> None:
        self.mem = mmap.mmap(-1, (NR_FRAMES + 1) * 4096)
        self._window = ctypes.c_char.from_buffer(self.mem)
        self.base = ctypes.addressof(self._window)
        self.vcpu_info = {v: self.base + 64 * v for v in range(NR_VCPUS)}
        self.kicks: list[int] = []
        self.pages = Pages(self.base)

    def channels(self) -> EventChannels:
        return EventChannels(self.base, NR_VCPUS, self.vcpu_info.__getitem__, self.kicks.append, DOMID,
                             self.pages)

    def close(self) -> None:
        del self._window
        self.mem.close()

    # guest-visible state
    def u32(self, addr: int) -> int:
        return int(struct.unpack_from("<I", self.mem, addr - self.base)[0])

    def word_addr(self, port: int) -> int:
        return self.base + (ARRAY_GFN + port // 1024) * 4096 + 4 * (port % 1024)

    def word(self, port: int) -> int:
        return self.u32(self.word_addr(port))

    def cb(self, vcpu: int) -> int:
        return self.base + CB_GFN[vcpu] * 4096 + 0x40  # offset 0x40, as tests pass it

    def ready(self, vcpu: int) -> int:
        return self.u32(self.cb(vcpu))

    def head(self, vcpu: int, prio: int) -> int:
        return self.u32(self.cb(vcpu) + 8 + 4 * prio)

    def upcall_pending(self, vcpu: int) -> int:
        return self.mem[self.vcpu_info[vcpu] - self.base]

    # guest actions
    def _bitop(self, op: object, port: int, bit: int) -> int:
        a = self.word_addr(port)
        return int(op(a & ~7, bit + ((a & 4) << 3)))  # type: ignore[operator]

    def unmask_local(self, port: int) -> None:
        self._bitop(atomics.test_and_clear_bit, port, MASKED)

    def mask(self, port: int) -> None:
        self._bitop(atomics.test_and_set_bit, port, MASKED)

    def init_array_page(self, page: int) -> None:
        """Linux's init_array_page: every word masked before the page is handed over."""
        gfn = ARRAY_GFN + page
        struct.pack_into("<1024I", self.mem, gfn * 4096, *([1 << MASKED] * 1024))

    def clear_linked(self, port: int) -> int:
        """Linux's clear_linked: take L and LINK off the word atomically; return LINK."""
        a = self.word_addr(port)
        base, sh = a & ~7, (a & 4) << 3
        while True:
            q = atomics.load64(base)
            w = (q >> sh) & 0xFFFF_FFFF
            new = w & ~((1 << LINKED) | LINK_MASK)
            ok, _ = atomics.cmpxchg64(base, q, (q & ~(0xFFFF_FFFF << sh)) | (new << sh))
            if ok:
                return w & LINK_MASK

    def consume(self, vcpu: int) -> list[int]:
        """One upcall as Linux handles it: upcall_pending = 0, then each ready queue,
        highest priority first, each event acked (P cleared) if pending and unmasked."""
        self.mem[self.vcpu_info[vcpu] - self.base] = 0
        cb = self.cb(vcpu)
        got: list[int] = []
        ready = atomics.fetch_and64(cb, ~0xFFFF) & 0xFFFF
        while ready:
            prio = (ready & -ready).bit_length() - 1
            port = self.head(vcpu, prio)
            while port:
                nxt = self.clear_linked(port)
                w = self.word(port)
                if w >> PENDING & 1 and not w >> MASKED & 1:
                    self._bitop(atomics.test_and_clear_bit, port, PENDING)
                    got.append(port)
                port = nxt
            ready &= ready - 1
            ready |= atomics.fetch_and64(cb, ~0xFFFF) & 0xFFFF
        return got


@pytest.fixture
def guest() -> Iterator[Guest]:
    g = Guest()
    yield g
    g.close()


@pytest.fixture
def ev(guest: Guest) -> EventChannels:
    return guest.channels()


def fifo(guest: Guest, ev: EventChannels, pages: int = 1) -> None:
    """Switch to FIFO as Linux does: vCPU 0's control block, then array pages."""
    assert ev.init_control(0, CB_GFN[0], 0x40) == 17
    assert ev.init_control(1, CB_GFN[1], 0x40) == 17
    for page in range(pages):
        guest.init_array_page(page)
        ev.expand_array(ARRAY_GFN + page)


def errno_of(fn: object, *args: int) -> Errno:
    with pytest.raises(XenError) as excinfo:
        fn(*args)  # type: ignore[operator]
    return excinfo.value.errno


# -- the hypercalls' checks -------------------------------------------------------------


def test_init_control_checks_as_xen(guest: Guest, ev: EventChannels) -> None:
    assert errno_of(ev.init_control, 2, CB_GFN[0], 0) is Errno.ENOENT
    assert errno_of(ev.init_control, 0, CB_GFN[0], 4096 - 72 + 8) is Errno.EINVAL  # across the page end
    assert errno_of(ev.init_control, 0, CB_GFN[0], 4) is Errno.EINVAL  # not 8-aligned
    assert errno_of(ev.init_control, 0, BAD_GFN, 0) is Errno.EINVAL
    assert errno_of(ev.init_control, 0, TABLE_GFN, 0) is Errno.EINVAL
    assert not ev.uses_fifo and guest.pages.held == {}  # a refused first call leaves 2-level
    assert ev.init_control(0, CB_GFN[0], 4096 - 72) == 17  # the last offset that fits
    assert ev.uses_fifo
    assert errno_of(ev.init_control, 0, CB_GFN[1], 0) is Errno.EINVAL  # twice for one vCPU
    assert guest.pages.held == {CB_GFN[0]: 1}


def test_without_pages_there_is_no_fifo(guest: Guest) -> None:
    ev = EventChannels(guest.base, NR_VCPUS, guest.vcpu_info.__getitem__, guest.kicks.append, DOMID)
    assert errno_of(ev.init_control, 0, CB_GFN[0], 0) is Errno.ENOSYS


def test_expand_array_and_set_priority_checks(guest: Guest, ev: EventChannels) -> None:
    assert errno_of(ev.expand_array, ARRAY_GFN) is Errno.EOPNOTSUPP
    port = ev.bind_ipi(0)
    assert errno_of(ev.set_priority, 5000, 1) is Errno.EINVAL  # the port first
    assert errno_of(ev.set_priority, port, 1) is Errno.ENOSYS  # then: no priorities under 2-level
    fifo(guest, ev)
    assert errno_of(ev.expand_array, BAD_GFN) is Errno.EINVAL
    assert errno_of(ev.set_priority, port, 16) is Errno.EINVAL
    ev.set_priority(port, 15)
    ev.set_priority(port, 0)
    for page in range(1, MAX_ARRAY_PAGES):
        ev.expand_array(ARRAY_GFN + page)
    assert errno_of(ev.expand_array, ARRAY_GFN) is Errno.ENOSPC


# -- delivery -------------------------------------------------------------------


def test_first_event_becomes_head_and_sets_ready_and_upcall(guest: Guest, ev: EventChannels) -> None:
    fifo(guest, ev)
    port = ev.bind_ipi(1)
    guest.unmask_local(port)
    ev.send(port)
    assert guest.word(port) == (1 << PENDING) | (1 << LINKED)
    assert guest.head(1, 7) == port and guest.ready(1) == 1 << 7
    assert guest.upcall_pending(1) == 1 and guest.kicks == [1]
    assert guest.ready(0) == 0 and guest.upcall_pending(0) == 0
    ev.send(port)  # already pending: nothing new
    assert guest.kicks == [1]
    assert guest.consume(1) == [port]
    assert guest.word(port) == 0


def test_events_queue_behind_the_tail_in_order(guest: Guest, ev: EventChannels) -> None:
    fifo(guest, ev)
    ports = [ev.bind_ipi(0) for _ in range(3)]
    for p in ports:
        guest.unmask_local(p)
    for p in reversed(ports):
        ev.send(p)
    first, mid, last = reversed(ports)
    assert guest.head(0, 7) == first
    assert guest.word(first) & LINK_MASK == mid and guest.word(mid) & LINK_MASK == last
    assert guest.word(last) & LINK_MASK == 0
    assert guest.kicks == [0]  # one upcall for the whole queue
    assert guest.consume(0) == [first, mid, last]
    # The guest unlinked the tail: the next event starts the queue again at the head.
    ev.send(mid)
    assert guest.head(0, 7) == mid and guest.word(mid) & LINK_MASK == 0
    assert guest.consume(0) == [mid]


def test_priorities_have_their_own_queues_and_ready_bits(guest: Guest, ev: EventChannels) -> None:
    fifo(guest, ev)
    low, high, default = ev.bind_ipi(0), ev.bind_ipi(0), ev.bind_virq(Virq.TIMER, 0)
    ev.set_priority(low, 12)
    ev.set_priority(high, 2)
    for p in (low, high, default):
        guest.unmask_local(p)
    ev.send(low)
    ev.raise_virq(Virq.TIMER, 0)
    ev.send(high)
    assert guest.ready(0) == (1 << 12) | (1 << 7) | (1 << 2)
    assert (guest.head(0, 12), guest.head(0, 7), guest.head(0, 2)) == (low, default, high)
    assert guest.consume(0) == [high, default, low]  # highest priority (lowest number) first


def test_masked_event_waits_and_unmask_hypercall_delivers(guest: Guest, ev: EventChannels) -> None:
    fifo(guest, ev)
    port = ev.bind_ipi(0)
    ev.send(port)  # still masked, as Linux leaves new ports
    assert guest.word(port) == (1 << PENDING) | (1 << MASKED)
    assert guest.ready(0) == 0 and guest.kicks == []
    ev.unmask(port)
    assert guest.word(port) == (1 << PENDING) | (1 << LINKED)
    assert guest.head(0, 7) == port and guest.kicks == [0]
    assert guest.consume(0) == [port]
    guest.mask(port)
    ev.unmask(port)  # not pending: nothing queued
    assert guest.word(port) == 0 and guest.kicks == [0]


def test_port_moved_to_another_vcpu_leaves_no_stale_tail(guest: Guest, ev: EventChannels) -> None:
    fifo(guest, ev)
    a = ev.alloc_unbound(0)
    b = ev.alloc_unbound(0)
    ev.bind_interdomain_local(a, _Backend())
    ev.bind_interdomain_local(b, _Backend())
    for p in (a, b):
        guest.unmask_local(p)
    ev.notify_backend_port(a)
    assert guest.consume(0) == [a]
    ev.bind_vcpu(a, 1)
    ev.notify_backend_port(a)
    assert guest.head(1, 7) == a
    ev.notify_backend_port(b)  # vCPU 0's queue is empty: b is its head, not linked behind a
    assert guest.head(0, 7) == b and guest.word(a) & LINK_MASK == 0
    assert guest.consume(1) == [a] and guest.consume(0) == [b]


def test_vcpu_without_control_block_drops_the_event(guest: Guest, ev: EventChannels) -> None:
    assert ev.init_control(0, CB_GFN[0], 0x40) == 17
    guest.init_array_page(0)
    ev.expand_array(ARRAY_GFN)
    port = ev.bind_ipi(1)
    guest.unmask_local(port)
    ev.send(port)
    assert guest.word(port) == 1 << PENDING  # P set, never queued (Xen drops it)
    assert guest.kicks == []


def test_ports_pending_before_the_switch_arrive_once_their_word_exists(guest: Guest, ev: EventChannels) -> None:
    console = ev.alloc_backend_port(_Backend())
    quiet = ev.alloc_backend_port(_Backend())
    ev.notify_backend_port(console)  # 2-level pending bit
    guest.kicks.clear()
    guest.mem[0] = 0  # the guest took that upcall's summary flag
    assert ev.init_control(0, CB_GFN[0], 0x40) == 17
    ev.notify_backend_port(quiet)  # under FIFO, before any array page
    assert guest.kicks == []
    guest.init_array_page(0)
    for p in (console, quiet):  # Linux unmasks when it binds; the page is masked until handed over
        struct.pack_into("<I", guest.mem, guest.word_addr(p) - guest.base, 0)
    ev.expand_array(ARRAY_GFN)
    assert guest.kicks == [0]
    assert guest.consume(0) == [console, quiet]


def test_close_clears_pending_and_a_linked_port_is_not_reused(guest: Guest, ev: EventChannels) -> None:
    fifo(guest, ev)
    port = ev.bind_ipi(0)
    guest.unmask_local(port)
    ev.send(port)
    ev.close(port)
    assert guest.word(port) == 1 << LINKED  # still on the queue until the guest unlinks it
    again = ev.bind_ipi(0)
    assert again != port
    assert guest.consume(0) == []  # the guest skips the no longer pending event
    ev.close(again)
    assert ev.bind_ipi(0) == port


def test_poll_sees_pending_masked_ports(guest: Guest, ev: EventChannels) -> None:
    fifo(guest, ev)
    port = ev.bind_ipi(0)
    waiter = threading.Event()
    ev.register_poller(waiter, [port])
    assert not ev.poll_ready(0, [port])
    ev.send(port)  # masked: no upcall, but a poller wakes
    assert waiter.is_set() and ev.poll_ready(0, [port])
    ev.unregister_poller(waiter)


def test_reset_returns_to_two_level_and_gives_frames_back(guest: Guest, ev: EventChannels) -> None:
    fifo(guest, ev, pages=2)
    assert guest.pages.held
    ev.reset()
    assert not ev.uses_fifo and guest.pages.held == {}
    assert errno_of(ev.expand_array, ARRAY_GFN) is Errno.EOPNOTSUPP
    port = ev.bind_ipi(0)
    ev.send(port)  # 2-level again: the shared_info pending bit
    assert atomics.test_bit(guest.base + 0x800, port)


# -- save / restore ---------------------------------------------------------------


def test_save_restore_keeps_queues_priorities_and_waiting_ports(guest: Guest, ev: EventChannels) -> None:
    fifo(guest, ev)
    a, b = ev.bind_ipi(0), ev.bind_ipi(1)
    ev.set_priority(b, 3)
    for p in (a, b):
        guest.unmask_local(p)
    ev.send(a)
    ev.send(b)
    late = ev.alloc_backend_port(_Backend())  # port 3: has a word
    state = ev.save()
    assert state.fifo is not None
    data = json.loads(json.dumps(encode(state)))
    assert decode(EventChannelState, data) == state
    backends = {late: _Backend()}
    guest.pages.held.clear()
    restored = EventChannels.restore(decode(EventChannelState, data), shared_info_addr=guest.base,
                                     nr_vcpus=NR_VCPUS, vcpu_info_addr=guest.vcpu_info.__getitem__,
                                     kick=guest.kicks.append, domid=DOMID, backends=backends, pages=guest.pages)
    assert restored.save() == state
    assert sorted(guest.pages.held) == [CB_GFN[0], CB_GFN[1], ARRAY_GFN]
    # The restored tail is used: a second event on vCPU 0 links behind a.
    c = restored.bind_ipi(0)
    guest.unmask_local(c)
    restored.send(c)
    assert guest.word(a) & LINK_MASK == c
    assert guest.consume(0) == [a, c] and guest.consume(1) == [b]


def test_restore_refuses_what_does_not_fit(guest: Guest, ev: EventChannels) -> None:
    fifo(guest, ev)
    state = ev.save()
    assert state.fifo is not None
    bad = [
        dataclasses.replace(state.fifo, control_blocks=((5, CB_GFN[0], 0),)),
        dataclasses.replace(state.fifo, control_blocks=((0, CB_GFN[0], 4),)),
        dataclasses.replace(state.fifo, array_gfns=(BAD_GFN,)),
        dataclasses.replace(state.fifo, priorities=((1, 16),)),
        dataclasses.replace(state.fifo, tails=((0, 7, 99999),)),
        dataclasses.replace(state.fifo, version=FifoState.VERSION + 1),
    ]
    for fifo_state in bad:
        held = dict(guest.pages.held)
        with pytest.raises(StateError):
            EventChannels.restore(dataclasses.replace(state, fifo=fifo_state), shared_info_addr=guest.base,
                                  nr_vcpus=NR_VCPUS, vcpu_info_addr=guest.vcpu_info.__getitem__,
                                  kick=guest.kicks.append, domid=DOMID, backends={}, pages=guest.pages)
        assert guest.pages.held == held  # nothing left mapped by a refused restore


def test_a_save_from_before_fifo_loads_as_two_level() -> None:
    old = {"channels": [], "version": 1}
    assert decode(EventChannelState, old) == EventChannelState(channels=())


# -- concurrency with the guest ------------------------------------------------------

# The native bit toggler of tests/test_evtchn.py: lock bts / lock btr of one bit
# until told to stop (the control word), outside the GIL.
TOGGLER = bytes.fromhex(
    "31 c0 31 c9 f0 48 0f ab 37 48 83 d0 00 f0 48 0f b3 37 f5 48 83 d0 00"
    "48 ff c1 48 83 3a 00 74 e4 48 89 4a 08 c3"
)
_toggler = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64)(
    atomics.load_code(TOGGLER)
)


def test_linking_survives_the_guest_changing_the_neighbouring_word(guest: Guest, ev: EventChannels) -> None:
    """Event words are 32 bits, the compare-exchange is 64: the other half of the
    quadword changing on another core must only cost a retry, never a lost link."""
    fifo(guest, ev)
    ports = [ev.bind_ipi(0) for _ in range(5)]  # 1..5: 2 and 3 share a quadword
    for p in ports:
        guest.unmask_local(p)
    neighbour = guest.word_addr(3)
    control = guest.base + 200 * 64  # a spare line in the shared_info page
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(_toggler(neighbour & ~7, 32 + BUSY - 1, control)))
    t.start()  # toggles bit 27 of port 3's word: a bit no one else uses
    try:
        for _ in range(3000):
            ev.send(2)
            ev.send(4)  # links behind 2: a compare-exchange on 2's quadword
            assert guest.word(2) & LINK_MASK == 4
            assert guest.consume(0) == [2, 4]
    finally:
        atomics.store64(control, 1)
        t.join(timeout=10)
    assert result == [0] and atomics.load64(control + 8) > 0


class _Backend:
    def __init__(self) -> None:
        self.notifications = 0

    def notify(self) -> None:
        self.notifications += 1


def test_a_tail_word_changing_under_the_link_sets_busy_and_retries(
    guest: Guest, ev: EventChannels, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Xen's set_link: a failed compare-exchange marks the tail BUSY (Linux's unmask
    waits for it) and tries again; the link lands and BUSY is gone."""
    fifo(guest, ev)
    tail, port = ev.bind_ipi(0), ev.bind_ipi(0)
    for p in (tail, port):
        guest.unmask_local(p)
    ev.send(tail)
    from hospes.pv import evtchn_fifo

    seen: list[int] = []
    real_load = evtchn_fifo.load64

    def load_then_guest_masks(addr: int) -> int:
        value = real_load(addr)
        seen.append(guest.word(tail))
        if len(seen) == 1:
            guest.mask(tail)  # the guest masks the tail right after Hospes read it
        return value

    monkeypatch.setattr(evtchn_fifo, "load64", load_then_guest_masks)
    ev.send(port)
    assert len(seen) == 2 and seen[1] >> BUSY & 1  # re-read after BUSY was set
    assert guest.word(tail) == (1 << PENDING) | (1 << MASKED) | (1 << LINKED) | port
    assert guest.kicks == [0]


@pytest.mark.parametrize("name", ["MARK", "HEAD_READY"])
def test_delivery_blobs_match_their_listings(name: str) -> None:
    import capstone

    from hospes.pv import evtchn_fifo

    listing = getattr(evtchn_fifo, name)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    code = atomics.assemble(listing)
    assert [f"{i.mnemonic} {i.op_str}".strip() for i in md.disasm(code, 0)] == [m for _, m, _ in listing]
    assert listing[-1][1] == "ret"


# -- the hypercalls on a PV domain (tests/pv_fakes.py: real MMU and guest memory) ------------


def test_hypercalls_map_frames_through_the_mmu(dom: object, vcpu: object) -> None:
    """event_channel_op's FIFO sub-ops decode Xen's structures, and the frames they
    name are held writable by the MMU (a page-table frame or a ballooned-out frame
    is -EINVAL, as Xen's map_guest_page refuses it)."""
    from pv_fakes import ARG_VA, FREE_FRAME, L4_FRAME, RAM_PAGES

    from hospes.pv.abi import Hypercall
    from hospes.pv.hypercalls import evtchn as E

    def op(cmd: int, payload: bytes) -> int:
        vcpu.put(ARG_VA, payload)  # type: ignore[attr-defined]
        return int(vcpu.hypercall(Hypercall.event_channel_op, cmd, ARG_VA))  # type: ignore[attr-defined]

    def init(gfn: int, offset: int = 0, target: int = 0) -> int:
        return op(E.EVTCHNOP_init_control, struct.pack("<QII8x", gfn, offset, target))

    mmu = dom.mmu  # type: ignore[attr-defined]
    assert init(RAM_PAGES + 3) == -Errno.EINVAL
    assert init(L4_FRAME) == -Errno.EINVAL
    mmu.released.add(FREE_FRAME + 9)
    assert init(FREE_FRAME + 9) == -Errno.EINVAL
    assert init(FREE_FRAME, 8, target=2) == -Errno.ENOENT
    assert init(FREE_FRAME, 4) == -Errno.EINVAL
    assert op(E.EVTCHNOP_expand_array, struct.pack("<Q", FREE_FRAME + 1)) == -Errno.EOPNOTSUPP
    assert not dom.evtchn.uses_fifo  # type: ignore[attr-defined]
    assert init(FREE_FRAME, 8) == 0
    assert vcpu.get(ARG_VA + 16, 8) == bytes([17]) + bytes(7)  # type: ignore[attr-defined]
    assert init(FREE_FRAME, 8) == -Errno.EINVAL
    assert op(E.EVTCHNOP_expand_array, struct.pack("<Q", FREE_FRAME + 1)) == 0
    assert mmu.held.get(FREE_FRAME) == 1 and mmu.held.get(FREE_FRAME + 1) == 1
    assert {FREE_FRAME, FREE_FRAME + 1} <= dom.mem.held  # type: ignore[attr-defined]
    # A frame held for the FIFO ABI can neither become a page table nor be given back.
    assert dom.reservation.refusal(FREE_FRAME + 1) is not None  # type: ignore[attr-defined]
    port = dom.evtchn.bind_ipi(0)  # type: ignore[attr-defined]
    assert op(E.EVTCHNOP_set_priority, struct.pack("<II", port, 16)) == -Errno.EINVAL
    assert op(E.EVTCHNOP_set_priority, struct.pack("<II", port, 0)) == 0


# -- a Debian guest ----------------------------------------------------------------------------


@pytest.mark.kvm
@pytest.mark.debian
def test_debian_guest_runs_on_fifo_with_two_vcpus_and_a_disk(default_images: object, tmp_path: object) -> None:
    """Linux picks FIFO once init_control succeeds; IPIs, timers on both vCPUs and
    the block device's interrupts all arrive through the queues."""
    from pathlib import Path

    from conftest import run_hospes

    disk = Path(str(tmp_path)) / "disk.img"
    disk.write_bytes(bytes(range(256)) * 4096 * 8)  # 8 MiB
    script = (
        "dmesg | grep -m1 'xen:events'; "
        "i=0; while [ $i -lt 100 ]; do ( : ) & i=$((i+1)); done; wait; "
        "dd if=/dev/xvda bs=4k count=2048 iflag=direct 2>/dev/null | md5sum; "
        "grep -E 'timer|resched|blkif' /proc/interrupts; exit 4"
    )
    p = run_hospes("run", "--vcpus", "2", "--disk", str(disk), "--", "sh", "-c", script, timeout=300)
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 4, p.stderr.decode(errors="replace")[-3000:] + out[-3000:]
    assert "xen:events: Using FIFO-based ABI" in out, out[-3000:]
    import hashlib

    assert hashlib.md5(disk.read_bytes()).hexdigest() in out  # every block read arrived
    counts = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0].endswith(":") and fields[-1] in ("timer0", "timer1", "blkif"):
            counts[fields[-1]] = (int(fields[1]), int(fields[2]))
    assert counts["timer0"][0] > 0 and counts["timer1"][1] > 0, counts
    assert sum(counts["blkif"]) > 0, counts
