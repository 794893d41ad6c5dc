"""Tests for hospes.pv.evtchn: the 2-level event-channel core.

An anonymous mmap stands in for the shared_info page (vcpu_info of vCPU v at
offset 64*v) plus a second page where a vCPU may "register" a moved
vcpu_info. Every test reads the guest-visible bits directly.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import mmap
import struct
import threading
from collections.abc import Iterator, Mapping

import pytest

from hospes.machine import atomics
from hospes.pv.errors import Errno, XenError
from hospes.pv.evtchn import (
    DOMID_SELF,
    NR_PORTS,
    ChannelRecord,
    EventChannels,
    EventChannelState,
    EvtchnStat,
    PortState,
    PortStatus,
    Virq,
)
from hospes.state import StateError, decode, encode

DOMID = 7
NR_VCPUS = 3
PENDING, MASK = 0x800, 0xA00


class Backend:
    def __init__(self) -> None:
        self.notifications = 0

    def notify(self) -> None:
        self.notifications += 1


class Guest:
    """The fake shared memory plus the callbacks EventChannels needs."""

    def __init__(self) -> None:
        self.mem = mmap.mmap(-1, 2 * 4096)
        self._window = ctypes.c_char.from_buffer(self.mem)
        self.base = ctypes.addressof(self._window)
        self.vcpu_info = {v: self.base + 64 * v for v in range(NR_VCPUS)}
        self.kicks: list[int] = []
        # Linux's xen_init_IRQ masks every port before it binds any.
        for word in range(64):
            atomics.store64(self.base + MASK + 8 * word, 0xFFFF_FFFF_FFFF_FFFF)

    def channels(self) -> EventChannels:
        return EventChannels(
            self.base, NR_VCPUS, self.vcpu_info.__getitem__, self.kicks.append, DOMID
        )

    # guest-visible state
    def _bit(self, offset: int, port: int) -> bool:
        return bool(atomics.load64(self.base + offset + 8 * (port // 64)) >> (port % 64) & 1)

    def pending(self, port: int) -> bool:
        return self._bit(PENDING, port)

    def masked(self, port: int) -> bool:
        return self._bit(MASK, port)

    def sel(self, vcpu: int) -> int:
        return atomics.load64(self.vcpu_info[vcpu] + 8)

    def upcall_pending(self, vcpu: int) -> int:
        return self.mem[self.vcpu_info[vcpu] - self.base]

    # guest actions (with locked instructions, as Linux does)
    def unmask_bit(self, port: int) -> None:
        atomics.test_and_clear_bit(self.base + MASK, port)

    def mask_bit(self, port: int) -> None:
        atomics.test_and_set_bit(self.base + MASK, port)

    def ack(self, port: int) -> None:
        atomics.test_and_clear_bit(self.base + PENDING, port)

    def set_upcall_mask(self, vcpu: int, value: int) -> None:
        self.mem[self.vcpu_info[vcpu] - self.base + 1] = value

    def consume_upcall(self, vcpu: int) -> None:
        """What xen_evtchn_do_upcall does with the summary bits."""
        self.mem[self.vcpu_info[vcpu] - self.base] = 0
        atomics.xchg64(self.vcpu_info[vcpu] + 8, 0)

    def close(self) -> None:
        del self._window
        self.mem.close()


@pytest.fixture
def guest() -> Iterator[Guest]:
    g = Guest()
    yield g
    g.close()


@pytest.fixture
def ev(guest: Guest) -> EventChannels:
    return guest.channels()


def errno_of(excinfo: pytest.ExceptionInfo[XenError]) -> Errno:
    return excinfo.value.errno


# -- allocation --------------------------------------------------------------------


def test_port_zero_is_reserved_and_lowest_free_port_is_used(ev: EventChannels) -> None:
    assert ev.alloc_unbound(0) == 1
    assert ev.bind_ipi(0) == 2
    assert ev.bind_virq(Virq.TIMER, 0) == 3
    ev.close(2)
    assert ev.alloc_unbound(0) == 2
    assert ev.alloc_unbound(0) == 4
    assert ev.status(0) == PortStatus(EvtchnStat.CLOSED, 0)
    for op in (ev.close, ev.send):
        with pytest.raises(XenError) as excinfo:
            op(0)
        assert errno_of(excinfo) is Errno.EINVAL


def test_allocation_never_touches_the_mask(guest: Guest, ev: EventChannels) -> None:
    port = ev.bind_ipi(1)
    assert guest.masked(port)
    guest.unmask_bit(2)
    assert ev.alloc_unbound(0) == 2
    assert not guest.masked(2)


def test_all_ports_in_use_is_enospc(ev: EventChannels) -> None:
    for expected in range(1, NR_PORTS):
        assert ev.alloc_unbound(0) == expected
    with pytest.raises(XenError) as excinfo:
        ev.bind_ipi(0)
    assert errno_of(excinfo) is Errno.ENOSPC


def test_alloc_unbound_domid_self_names_this_domain(ev: EventChannels) -> None:
    port = ev.alloc_unbound(DOMID_SELF)
    assert ev.status(port) == PortStatus(EvtchnStat.UNBOUND, 0, dom=DOMID)
    assert ev.status(ev.alloc_unbound(0)).dom == 0


# -- set_pending: the 2L order -----------------------------------------------------------


def test_set_pending_on_unmasked_port_sets_selector_upcall_and_kicks(
    guest: Guest, ev: EventChannels
) -> None:
    port = ev.bind_ipi(1)
    guest.unmask_bit(port)
    ev.set_pending(port)
    assert guest.pending(port)
    assert guest.sel(1) == 1 << (port // 64)
    assert guest.upcall_pending(1) == 1
    assert guest.kicks == [1]
    assert guest.sel(0) == 0 and guest.upcall_pending(0) == 0


def test_set_pending_on_pending_port_does_nothing_more(guest: Guest, ev: EventChannels) -> None:
    port = ev.bind_ipi(0)
    guest.unmask_bit(port)
    ev.set_pending(port)
    guest.consume_upcall(0)  # guest took the selector but has not acked the port
    ev.set_pending(port)
    assert guest.sel(0) == 0 and guest.upcall_pending(0) == 0
    assert guest.kicks == [0]


def test_selector_already_set_means_no_second_kick(guest: Guest, ev: EventChannels) -> None:
    a, b = ev.bind_ipi(0), ev.bind_ipi(0)  # same word
    guest.unmask_bit(a)
    guest.unmask_bit(b)
    ev.set_pending(a)
    ev.set_pending(b)
    assert guest.pending(a) and guest.pending(b)
    assert guest.kicks == [0]


def test_kick_only_on_upcall_pending_transition(guest: Guest, ev: EventChannels) -> None:
    low = ev.bind_ipi(0)
    for _ in range(64):  # reach word 1
        high = ev.alloc_unbound(0)
    high = ev.bind_ipi(0)
    assert high // 64 == 1
    guest.unmask_bit(low)
    guest.unmask_bit(high)
    ev.set_pending(low)
    ev.set_pending(high)  # new selector bit, but upcall_pending already 1
    assert guest.sel(0) == 0b11
    assert guest.kicks == [0]
    guest.consume_upcall(0)
    guest.ack(low)
    guest.ack(high)
    ev.set_pending(low)
    assert guest.kicks == [0, 0]


def test_kick_happens_even_with_events_masked(guest: Guest, ev: EventChannels) -> None:
    # Xen's vcpu_mark_events_pending kicks regardless of upcall_mask; the kick
    # callback decides. upcall_deliverable tells the difference.
    port = ev.bind_ipi(2)
    guest.unmask_bit(port)
    guest.set_upcall_mask(2, 1)
    ev.set_pending(port)
    assert guest.kicks == [2]
    assert not ev.upcall_deliverable(2)
    guest.set_upcall_mask(2, 0)
    assert ev.upcall_deliverable(2)


def test_masked_port_only_becomes_pending(guest: Guest, ev: EventChannels) -> None:
    port = ev.bind_ipi(0)
    ev.set_pending(port)
    assert guest.pending(port)
    assert guest.sel(0) == 0 and guest.upcall_pending(0) == 0
    assert guest.kicks == []


def test_set_pending_ignores_free_ports_and_rejects_out_of_range(
    guest: Guest, ev: EventChannels
) -> None:
    ev.set_pending(5)
    assert not guest.pending(5)
    for bad in (0, NR_PORTS, -1):
        with pytest.raises(XenError):
            ev.set_pending(bad)


def test_set_pending_uses_the_current_vcpu_info(guest: Guest, ev: EventChannels) -> None:
    port = ev.bind_ipi(1)
    guest.unmask_bit(port)
    guest.vcpu_info[1] = guest.base + 4096 + 128  # VCPUOP_register_vcpu_info
    ev.set_pending(port)
    assert guest.sel(1) == 1 << (port // 64)
    assert guest.upcall_pending(1) == 1
    assert atomics.load64(guest.base + 64 + 8) == 0  # old location untouched
    assert guest.mem[64] == 0


# -- unmask -------------------------------------------------------------------------------


def test_unmask_delivers_a_pending_port(guest: Guest, ev: EventChannels) -> None:
    port = ev.bind_ipi(2)
    ev.set_pending(port)
    assert guest.kicks == []
    ev.unmask(port)
    assert not guest.masked(port)
    assert guest.sel(2) == 1 << (port // 64)
    assert guest.upcall_pending(2) == 1
    assert guest.kicks == [2]


def test_unmask_of_quiet_port_only_clears_the_mask(guest: Guest, ev: EventChannels) -> None:
    port = ev.bind_ipi(0)
    ev.unmask(port)
    assert not guest.masked(port)
    assert guest.sel(0) == 0 and guest.kicks == []


def test_unmask_of_unmasked_port_does_nothing(guest: Guest, ev: EventChannels) -> None:
    # Xen only propagates when *this* call cleared the mask bit.
    port = ev.bind_ipi(0)
    guest.unmask_bit(port)
    atomics.test_and_set_bit(guest.base + PENDING, port)  # pending, no selector
    ev.unmask(port)
    assert guest.sel(0) == 0 and guest.kicks == []


def test_unmask_range(ev: EventChannels, guest: Guest) -> None:
    with pytest.raises(XenError) as excinfo:
        ev.unmask(NR_PORTS)
    assert errno_of(excinfo) is Errno.EINVAL
    ev.unmask(77)  # free but in range: Xen's 2L unmask just clears the bit
    assert not guest.masked(77)


# -- pollers -----------------------------------------------------------------------------


def test_pollers_are_woken_even_when_masked(guest: Guest, ev: EventChannels) -> None:
    port, other = ev.bind_ipi(1), ev.bind_ipi(1)
    mine, theirs = threading.Event(), threading.Event()
    ev.register_poller(mine, [port])
    ev.register_poller(theirs, [other])
    ev.set_pending(port)
    assert mine.is_set() and not theirs.is_set()
    assert guest.kicks == []  # masked: no upcall, but the poller woke
    ev.unregister_poller(mine)
    ev.unregister_poller(mine)  # idempotent
    mine.clear()
    guest.ack(port)
    ev.set_pending(port)
    assert not mine.is_set()


def test_poll_ready(guest: Guest, ev: EventChannels) -> None:
    port = ev.bind_ipi(0)
    assert not ev.poll_ready(0, [port])
    ev.set_pending(port)  # masked
    assert ev.poll_ready(0, [port])
    assert ev.poll_ready(1, [1, port])
    guest.ack(port)
    assert not ev.poll_ready(0, [port])
    guest.mem[guest.vcpu_info[0] - guest.base] = 1  # upcall pending, unmasked
    assert ev.poll_ready(0, [])
    guest.set_upcall_mask(0, 1)
    assert not ev.poll_ready(0, [])


def test_poll_ready_errors(ev: EventChannels) -> None:
    with pytest.raises(XenError) as excinfo:
        ev.poll_ready(0, [1] * 129)
    assert errno_of(excinfo) is Errno.EINVAL
    with pytest.raises(XenError) as excinfo:
        ev.poll_ready(0, [1, NR_PORTS])
    assert errno_of(excinfo) is Errno.EINVAL
    port = ev.bind_ipi(0)
    ev.set_pending(port)
    assert ev.poll_ready(0, [port, NR_PORTS])  # Xen stops at the first pending port


def test_upcall_deliverable(guest: Guest, ev: EventChannels) -> None:
    offset = guest.vcpu_info[1] - guest.base
    for pending, mask, expected in [(0, 0, False), (1, 0, True), (1, 1, False), (0, 1, False)]:
        guest.mem[offset] = pending
        guest.mem[offset + 1] = mask
        assert ev.upcall_deliverable(1) is expected


# -- close, status, bind_vcpu --------------------------------------------------------------


def test_close_clears_pending_but_not_mask(guest: Guest, ev: EventChannels) -> None:
    port = ev.bind_ipi(0)
    guest.unmask_bit(port)
    ev.set_pending(port)
    ev.close(port)
    assert not guest.pending(port)
    assert not guest.masked(port)
    assert ev.status(port) == PortStatus(EvtchnStat.CLOSED, 0)
    with pytest.raises(XenError) as excinfo:
        ev.close(port)
    assert errno_of(excinfo) is Errno.EINVAL
    with pytest.raises(XenError) as excinfo:
        ev.close(NR_PORTS)
    assert errno_of(excinfo) is Errno.EINVAL


def test_status_of_every_kind(ev: EventChannels) -> None:
    backend = Backend()
    unbound = ev.alloc_unbound(3)
    interdomain = ev.alloc_backend_port(backend)
    virq = ev.bind_virq(Virq.TIMER, 2)
    ipi = ev.bind_ipi(1)
    assert ev.status(unbound) == PortStatus(EvtchnStat.UNBOUND, 0, dom=3)
    assert ev.status(interdomain) == PortStatus(
        EvtchnStat.INTERDOMAIN, 0, dom=0, port=interdomain
    )
    assert ev.status(virq) == PortStatus(EvtchnStat.VIRQ, 2, virq=Virq.TIMER)
    assert ev.status(ipi) == PortStatus(EvtchnStat.IPI, 1)
    assert ev.status(100) == PortStatus(EvtchnStat.CLOSED, 0)
    with pytest.raises(XenError) as excinfo:
        ev.status(NR_PORTS)
    assert errno_of(excinfo) is Errno.EINVAL


def test_bind_vcpu_moves_delivery(guest: Guest, ev: EventChannels) -> None:
    backend = Backend()
    port = ev.alloc_backend_port(backend)
    guest.unmask_bit(port)
    ev.bind_vcpu(port, 2)
    assert ev.status(port).vcpu == 2
    ev.notify_backend_port(port)
    assert guest.sel(2) and guest.upcall_pending(2) == 1 and not guest.sel(0)
    assert guest.kicks == [2]


def test_bind_vcpu_rules(ev: EventChannels) -> None:
    unbound = ev.alloc_unbound(0)
    console = ev.bind_virq(Virq.CONSOLE, 0)  # global
    timer = ev.bind_virq(Virq.TIMER, 1)  # per-vCPU
    ipi = ev.bind_ipi(1)
    ev.bind_vcpu(unbound, 1)
    ev.bind_vcpu(console, 2)
    assert ev.status(console) == PortStatus(EvtchnStat.VIRQ, 2, virq=Virq.CONSOLE)
    for port in (timer, ipi, 200):
        with pytest.raises(XenError) as excinfo:
            ev.bind_vcpu(port, 0)
        assert errno_of(excinfo) is Errno.EINVAL
    with pytest.raises(XenError) as excinfo:
        ev.bind_vcpu(NR_PORTS, NR_VCPUS)  # the vCPU is checked first
    assert errno_of(excinfo) is Errno.ENOENT
    with pytest.raises(XenError) as excinfo:
        ev.bind_vcpu(NR_PORTS, 0)
    assert errno_of(excinfo) is Errno.EINVAL


# -- VIRQs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("virq", "vcpu", "errno"),
    [
        (24, 0, Errno.EINVAL),
        (-1, 0, Errno.EINVAL),
        (Virq.CONSOLE, 1, Errno.EINVAL),  # global VIRQ on vCPU != 0
        (Virq.ARCH_0, 1, Errno.EINVAL),
        (Virq.TIMER, NR_VCPUS, Errno.ENOENT),
        (Virq.XENPMU, -1, Errno.ENOENT),
        (Virq.CONSOLE, NR_VCPUS, Errno.EINVAL),  # global check comes before the vCPU check
    ],
)
def test_bind_virq_errors(ev: EventChannels, virq: int, vcpu: int, errno: Errno) -> None:
    with pytest.raises(XenError) as excinfo:
        ev.bind_virq(virq, vcpu)
    assert errno_of(excinfo) is errno


def test_bind_virq_once_per_vcpu(ev: EventChannels) -> None:
    ports = [ev.bind_virq(Virq.TIMER, v) for v in range(NR_VCPUS)]
    assert len(set(ports)) == NR_VCPUS
    ev.bind_virq(Virq.DEBUG, 1)
    with pytest.raises(XenError) as excinfo:
        ev.bind_virq(Virq.TIMER, 1)
    assert errno_of(excinfo) is Errno.EEXIST
    ev.close(ports[1])
    assert ev.bind_virq(Virq.TIMER, 1) == ports[1]


def test_raise_virq(guest: Guest, ev: EventChannels) -> None:
    ev.raise_virq(Virq.TIMER, 1)  # not bound: no-op
    timer = ev.bind_virq(Virq.TIMER, 1)
    guest.unmask_bit(timer)
    ev.raise_virq(Virq.TIMER, 0)  # bound on vCPU 1 only
    assert not guest.pending(timer)
    ev.raise_virq(Virq.TIMER, 1)
    assert guest.pending(timer) and guest.kicks == [1]


def test_raise_global_virq_follows_bind_vcpu(guest: Guest, ev: EventChannels) -> None:
    port = ev.bind_virq(Virq.DOM_EXC, 0)
    guest.unmask_bit(port)
    ev.bind_vcpu(port, 2)
    ev.raise_virq(Virq.DOM_EXC)
    assert guest.pending(port) and guest.kicks == [2]
    ev.close(port)
    assert ev.bind_virq(Virq.DOM_EXC, 0) == port


# -- send and backends --------------------------------------------------------------------


def test_send_ipi_raises_the_same_port(guest: Guest, ev: EventChannels) -> None:
    port = ev.bind_ipi(2)
    guest.unmask_bit(port)
    ev.send(port)
    assert guest.pending(port) and guest.kicks == [2]


def test_send_unbound_is_dropped_and_virq_is_einval(guest: Guest, ev: EventChannels) -> None:
    unbound = ev.alloc_unbound(0)
    ev.send(unbound)
    assert not guest.pending(unbound)
    virq = ev.bind_virq(Virq.TIMER, 0)
    for port in (virq, 300, NR_PORTS):
        with pytest.raises(XenError) as excinfo:
            ev.send(port)
        assert errno_of(excinfo) is Errno.EINVAL


def test_send_interdomain_notifies_the_backend(guest: Guest, ev: EventChannels) -> None:
    backend = Backend()
    port = ev.alloc_backend_port(backend)
    assert backend.notifications == 0
    guest.unmask_bit(port)
    ev.send(port)
    assert backend.notifications == 1
    assert not guest.pending(port) and guest.kicks == []


def test_backend_notifies_the_guest(guest: Guest, ev: EventChannels) -> None:
    backend = Backend()
    port = ev.alloc_backend_port(backend)
    guest.unmask_bit(port)
    ev.notify_backend_port(port, backend)
    assert guest.pending(port) and guest.upcall_pending(0) == 1 and guest.kicks == [0]


def test_backend_binds_to_the_guests_unbound_port(guest: Guest, ev: EventChannels) -> None:
    backend = Backend()
    port = ev.alloc_unbound(0)
    ev.send(port)  # dropped: nobody there yet
    ev.bind_interdomain_local(port, backend)
    assert backend.notifications == 1  # Xen's conservative notification of the binder
    assert ev.status(port) == PortStatus(EvtchnStat.INTERDOMAIN, 0, dom=0, port=port)
    ev.send(port)
    assert backend.notifications == 2


def test_backend_bind_errors(ev: EventChannels) -> None:
    backend = Backend()
    for port in (ev.alloc_unbound(5), ev.bind_ipi(0), ev.alloc_backend_port(backend), 99):
        with pytest.raises(XenError) as excinfo:
            ev.bind_interdomain_local(port, backend)
        assert errno_of(excinfo) is Errno.EINVAL
    assert backend.notifications == 0


def test_backend_notify_after_close_is_dropped(guest: Guest, ev: EventChannels) -> None:
    old, new = Backend(), Backend()
    port = ev.alloc_backend_port(old)
    guest.unmask_bit(port)
    ev.close(port)
    ev.notify_backend_port(port, old)
    assert not guest.pending(port)
    assert ev.alloc_backend_port(new) == port  # re-used for another backend
    ev.notify_backend_port(port, old)
    assert not guest.pending(port)
    ev.notify_backend_port(port, new)
    assert guest.pending(port)


def test_callbacks_may_reenter(guest: Guest, ev: EventChannels) -> None:
    """A backend may answer from inside notify(): no lock is held there."""

    class EchoBackend:
        port = 0

        def notify(self) -> None:
            ev.notify_backend_port(self.port, self)

    backend = EchoBackend()
    backend.port = ev.alloc_backend_port(backend)
    guest.unmask_bit(backend.port)
    ev.send(backend.port)
    assert guest.pending(backend.port)


# -- reset, save, restore -------------------------------------------------------------------


def test_reset_closes_everything(guest: Guest, ev: EventChannels) -> None:
    timer = ev.bind_virq(Virq.TIMER, 0)
    ipi = ev.bind_ipi(1)
    ev.alloc_backend_port(Backend())
    guest.unmask_bit(ipi)
    ev.set_pending(ipi)
    ev.reset()
    assert not guest.pending(ipi)
    assert not guest.masked(ipi) and guest.masked(timer)
    assert ev.save() == EventChannelState(channels=())
    assert ev.bind_virq(Virq.TIMER, 0) == 1


def _populate(ev: EventChannels, backends: dict[int, Backend]) -> None:
    ev.alloc_unbound(0)
    console = Backend()
    backends[ev.alloc_backend_port(console)] = console
    for v in range(NR_VCPUS):
        ev.bind_virq(Virq.TIMER, v)
        ev.bind_ipi(v)
    global_virq = ev.bind_virq(Virq.DOM_EXC, 0)
    ev.bind_vcpu(global_virq, 2)
    ev.close(ev.bind_ipi(0))  # leave a hole
    ev.alloc_unbound(DOMID_SELF)


def test_save_restore_round_trip(guest: Guest, ev: EventChannels) -> None:
    backends: dict[int, Backend] = {}
    _populate(ev, backends)
    state = ev.save()
    new_backends = {port: Backend() for port in backends}
    restored = EventChannels.restore(
        state,
        shared_info_addr=guest.base,
        nr_vcpus=NR_VCPUS,
        vcpu_info_addr=guest.vcpu_info.__getitem__,
        kick=guest.kicks.append,
        domid=DOMID,
        backends=new_backends,
    )
    assert restored.save() == state
    for port in range(NR_PORTS):
        assert restored.status(port) == ev.status(port)
    # The restored object is live: tables rebuilt, backends attached.
    with pytest.raises(XenError) as excinfo:
        restored.bind_virq(Virq.TIMER, 1)
    assert errno_of(excinfo) is Errno.EEXIST
    (backend_port,) = new_backends
    restored.send(backend_port)
    assert new_backends[backend_port].notifications == 1
    dom_exc = next(c.port for c in state.channels if c.virq == Virq.DOM_EXC)
    guest.unmask_bit(dom_exc)
    restored.raise_virq(Virq.DOM_EXC)
    assert guest.kicks == [2]


def test_restore_rejects_a_state_that_does_not_fit(guest: Guest, ev: EventChannels) -> None:
    backends: dict[int, Backend] = {}
    _populate(ev, backends)
    state = ev.save()

    with pytest.raises(StateError, match="backend"):
        _restore_into(guest, state, {})
    with pytest.raises(StateError, match="vCPU"):
        _restore_into(guest, state, backends, nr_vcpus=1)


def _restore_into(guest: Guest, state: EventChannelState, backends: Mapping[int, Backend],
                  nr_vcpus: int = NR_VCPUS) -> EventChannels:
    return EventChannels.restore(
        state,
        shared_info_addr=guest.base,
        nr_vcpus=nr_vcpus,
        vcpu_info_addr=guest.vcpu_info.__getitem__,
        kick=guest.kicks.append,
        domid=DOMID,
        backends=backends,
    )


def test_state_round_trips_through_json(guest: Guest, ev: EventChannels) -> None:
    backends: dict[int, Backend] = {}
    _populate(ev, backends)
    state = ev.save()
    assert {c.state for c in state.channels} == {
        PortState.UNBOUND, PortState.INTERDOMAIN, PortState.VIRQ, PortState.IPI
    }
    data = json.loads(json.dumps(encode(state)))
    assert decode(EventChannelState, data) == state
    assert _restore_into(guest, decode(EventChannelState, data), backends).save() == state


def test_restore_refuses_newer_versions(guest: Guest, ev: EventChannels) -> None:
    backends: dict[int, Backend] = {}
    _populate(ev, backends)
    state = ev.save()
    newer = dataclasses.replace(state, version=EventChannelState.VERSION + 1)
    with pytest.raises(StateError, match="saved event channel table is version"):
        _restore_into(guest, newer, backends)
    first, *rest = state.channels
    newer_record = dataclasses.replace(first, version=ChannelRecord.VERSION + 1)
    with pytest.raises(StateError, match=f"saved event channel port {first.port} is version"):
        _restore_into(guest, EventChannelState((newer_record, *rest)), backends)


# -- concurrency with the guest -------------------------------------------------------------

# Native "guest" that toggles one bit with lock bts/btr until told to stop and
# counts unexpected carry flags (see tests/test_atomics.py for the listing).
TOGGLER = bytes.fromhex(
    "31 c0 31 c9 f0 48 0f ab 37 48 83 d0 00 f0 48 0f b3 37 f5 48 83 d0 00"
    "48 ff c1 48 83 3a 00 74 e4 48 89 4a 08 c3"
)
_toggler = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64)(
    atomics.load_code(TOGGLER)
)


def test_operations_do_not_clobber_concurrent_guest_bit_flips(
    guest: Guest, ev: EventChannels
) -> None:
    """The guest flips the mask and pending bits of port 127 on another core
    while we raise, unmask, close and re-bind ports in the same words."""
    control = guest.base + 4096 + 512
    results: dict[str, int] = {}

    def run_guest(name: str, word: int, ctl: int) -> None:
        results[name] = _toggler(word, 63, ctl)

    words = {"mask": guest.base + MASK + 8, "pending": guest.base + PENDING + 8}
    for _ in range(64):
        ev.alloc_unbound(0)  # push the next ports into word 1
    threads = [
        threading.Thread(target=run_guest, args=(name, word, control + 16 * i))
        for i, (name, word) in enumerate(words.items())
    ]
    atomics.test_and_clear_bit(guest.base + MASK, 127)
    for t in threads:
        t.start()
    try:
        for _ in range(2000):
            port = ev.bind_ipi(1)
            assert 64 <= port < 127
            ev.set_pending(port)
            ev.unmask(port)
            guest.consume_upcall(1)
            ev.close(port)
            atomics.test_and_set_bit(guest.base + MASK, port)  # as Linux re-masks
    finally:
        atomics.store64(control, 1)
        atomics.store64(control + 16, 1)
        for t in threads:
            t.join(timeout=10)
    assert results == {"mask": 0, "pending": 0}
    assert atomics.load64(control + 8) > 0 and atomics.load64(control + 24) > 0
    assert struct.unpack_from("<Q", guest.mem, MASK + 8)[0] == 0xFFFF_FFFF_FFFF_FFFF & ~(1 << 63)
    assert struct.unpack_from("<Q", guest.mem, PENDING + 8)[0] == 0
