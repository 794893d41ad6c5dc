"""Event channels: one domain's port table, and the 2-level ABI's bits in shared memory.

(The FIFO ABI, which a guest may switch to, is :mod:`hospes.pv.evtchn_fifo`;
``EventChannels`` hands it the bit work once the guest asked for it. What
follows describes the 2-level bits.)

Event channels are the PV guest's interrupts (pv-abi.md §9). This module is the
core behind ``HYPERVISOR_event_channel_op``: the table of ports (what each port
is bound to) lives here in Python, the *delivery state* lives in guest-visible
memory, and the rules for changing that memory are the whole difficulty.

The bits
--------
Three levels, all in memory the guest reads and writes concurrently:

1. ``shared_info.evtchn_pending[64]`` and ``evtchn_mask[64]`` (offsets 0x800 and
   0xa00): one bit per port, 64 ports per 64-bit word, 4096 ports. Pending
   means "an event arrived"; mask means "don't interrupt me for this port".
2. ``vcpu_info.evtchn_pending_sel`` (offset 8 of each vCPU's ``vcpu_info``):
   bit *w* says "word *w* of ``evtchn_pending`` may hold a pending, unmasked
   port for this vCPU" -- it saves the guest scanning all 64 words.
3. ``vcpu_info.evtchn_upcall_pending`` (byte 0): the summary flag, "this vCPU
   has something to look at". Next to it, ``evtchn_upcall_mask`` (byte 1) is
   the guest's virtual interrupt flag. An upcall is *deliverable* exactly when
   ``upcall_pending != 0 and upcall_mask == 0``.

Each port also has a ``notify_vcpu`` -- whose selector and summary flag to
set. It is 0 by default, fixed at bind time for IPIs and per-vCPU VIRQs, and
changeable with ``EVTCHNOP_bind_vcpu`` otherwise.

Who writes what
---------------
The hypervisor *sets* pending bits, selector bits and ``upcall_pending``. The
guest *clears* them: its upcall handler (Linux ``xen_evtchn_do_upcall``) does
``upcall_pending = 0; sel = xchg(pending_sel, 0)``, then for every word in
``sel`` handles ``pending[w] & ~mask[w]``, acking each port with ``lock btr``
on its pending bit, and loops while ``upcall_pending`` is set again. The guest
also masks and unmasks ports itself with ``lock bts``/``lock btr``; Linux only
asks us (``EVTCHNOP_unmask``) when the port belongs to another vCPU. We never
touch a mask bit except on that request: not when a port is allocated
(Linux masks all ports at boot and unmasks when a handler is installed,
§14 item 27), not when it is closed (close only clears the pending bit, so a
re-used port starts quiet).

Why atomics, and not the lock
-----------------------------
All these words are shared with guest code that runs *right now* on other
cores and uses locked instructions. A Python read-modify-write (even under a
lock of ours) would write back a stale word and erase a concurrent guest
update -- a lost mask bit, a lost ack. So every change to shared memory is one
locked instruction from :mod:`hospes.machine.atomics`. ``self._lock`` protects
only *our* data: the port table, the VIRQ table and the poller set.

Why this order (set_pending, Xen ``evtchn_2l_set_pending``)
-----------------------------------------------------------
::

    if test_and_set(pending[port]):          return   # already signalled
    if !mask[port] and !test_and_set(sel[port/64]):   # first in this word
        if !xchg(upcall_pending, 1):  kick(vcpu)      # first for this vCPU
    wake pollers of port                              # even if masked

* *Pending before mask.* The guest unmasks with ``lock btr mask`` and then
  reads ``pending``; we set ``pending`` and then read ``mask``. Both sides put
  a full barrier (a locked op) between their write and their read, so at
  least one side sees the other's write: either we see the port unmasked and
  raise the upcall, or the guest sees it pending and raises the upcall itself
  (Linux's local unmask sets the selector and ``upcall_pending`` and lets the
  next return to the guest deliver). Both may happen; a spurious upcall is
  harmless, a lost one hangs the guest.
* *Pending, then selector, then summary.* The guest consumes them in the
  opposite order (summary, selector, pending). Whatever prefix of our writes
  its ``xchg(pending_sel, 0)`` observes, the pending bit it then scans for is
  already set (locked ops are totally ordered), and anything it missed is
  re-announced by ``upcall_pending``, which we set last.
* *test_and_set suppresses redundant work.* If the selector bit was already
  set, whoever set it has also set (or is about to set) ``upcall_pending``, and
  the guest has not yet taken the word -- nothing to add. If ``upcall_pending``
  was already 1, that vCPU was already told; we kick only on the 0 -> 1
  transition, as Xen's ``vcpu_mark_events_pending`` does. Like Xen we kick
  regardless of ``upcall_mask``: the kick callback decides whether a running
  vCPU needs interrupting (it does not while masked: Linux's ``irq_enable``
  re-checks ``upcall_pending`` after clearing the mask), but a vCPU blocked in
  SCHEDOP_block/poll must always be woken.
* *Pollers regardless of mask.* Linux's PV spinlock keeps its IPI port masked
  and waits for it with SCHEDOP_poll, so masked ports must still wake pollers.

``EVTCHNOP_unmask`` (Xen ``evtchn_2l_unmask``) is the mirror image:
``test_and_clear(mask)`` and then, if the port is pending and its selector
bit was clear, the same summary/kick step.

Callbacks and the lock
----------------------
``kick``, ``BackendEndpoint.notify`` and poller wake-ups run *after*
``self._lock`` is released: a backend may notify the guest from inside its
``notify`` (re-entering this object), and a vCPU thread may hold its own
locks while it calls in here, so calling out under our lock could deadlock.
A kick that arrives late is harmless -- the bits it announces are already set.
``vcpu_info_addr`` is called under the lock and must therefore be a plain,
non-blocking lookup.

The vCPU's ``vcpu_info`` may move (VCPUOP_register_vcpu_info, §14 item 42), so
its address is looked up on every use, never cached.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import ClassVar, Protocol

from hospes.machine.atomics import load64, test_and_clear_bit, test_and_set_bit, test_bit, xchg8
from hospes.pv.errors import Errno, XenError
from hospes.pv.evtchn_fifo import (
    LINK_BITS,
    EventPages,
    FifoEvents,
    FifoState,
    control_offset_error,
)
from hospes.state import StateError, check_version

NR_PORTS = 4096  # EVTCHN_2L_NR_CHANNELS: 64 words x 64 bits
NR_VIRQS = 24
MAX_POLL_PORTS = 128  # SCHEDOP_poll's "fairly arbitrary limit" (xen/common/sched/core.c)
DOMID_SELF = 0x7FF0
BACKEND_DOMID = 0  # our in-process backends pose as domain 0

# Offsets in shared_info and vcpu_info (pv-abi.md §2.5-2.6).
SHARED_INFO_EVTCHN_PENDING = 0x800
SHARED_INFO_EVTCHN_MASK = 0xA00
VCPU_INFO_UPCALL_PENDING = 0x00  # u8
VCPU_INFO_UPCALL_MASK = 0x01  # u8
VCPU_INFO_PENDING_SEL = 0x08  # u64


class Virq(IntEnum):
    """Virtual IRQs (xen/include/public/xen.h)."""

    TIMER = 0  # per-vCPU
    DEBUG = 1  # per-vCPU
    CONSOLE = 2
    DOM_EXC = 3
    TBUF = 4
    DEBUGGER = 6
    XENOPROF = 7  # per-vCPU
    CON_RING = 8
    PCPU_STATE = 9
    MEM_EVENT = 10
    ARGO = 11
    ENOMEM = 12
    XENPMU = 13  # per-vCPU
    ARCH_0 = 16  # x86: MCA; all ARCH VIRQs are global on x86
    ARCH_1 = 17
    ARCH_2 = 18
    ARCH_3 = 19
    ARCH_4 = 20
    ARCH_5 = 21
    ARCH_6 = 22
    ARCH_7 = 23


# Xen's virq_is_global()/get_virq_type(): these are bound per vCPU and stay on
# that vCPU; every other VIRQ is bound on vCPU 0 and may be moved.
PER_VCPU_VIRQS = frozenset({Virq.TIMER, Virq.DEBUG, Virq.XENOPROF, Virq.XENPMU})


class PortState(IntEnum):
    """What a port is bound to (Xen's ECS_* values, xen/include/xen/sched.h)."""

    FREE = 0
    RESERVED = 1
    UNBOUND = 2
    INTERDOMAIN = 3
    PIRQ = 4  # never created here
    VIRQ = 5
    IPI = 6


class EvtchnStat(IntEnum):
    """``evtchn_status.status`` values (EVTCHNSTAT_*, public/event_channel.h)."""

    CLOSED = 0
    UNBOUND = 1
    INTERDOMAIN = 2
    PIRQ = 3
    VIRQ = 4
    IPI = 5


@dataclass(frozen=True, slots=True)
class PortStatus:
    """The OUT part of ``struct evtchn_status`` (24 bytes; OUT fields from @8).

    ``status`` u32 @8, ``vcpu`` u32 @12, then the union @16: ``dom`` is
    ``u.unbound.dom`` / ``u.interdomain.dom`` (u16 @16), ``port`` is
    ``u.interdomain.port`` (u32 @20), ``virq`` is ``u.virq`` (u32 @16). Fields
    that do not apply to ``status`` are 0.
    """

    status: EvtchnStat
    vcpu: int
    dom: int = 0
    port: int = 0
    virq: int = 0


class BackendEndpoint(Protocol):
    """The domain-0 end of an interdomain channel, implemented by an in-process backend."""

    def notify(self) -> None:
        """The guest sent on its end of the channel.

        Called from the vCPU thread that executed EVTCHNOP_send (or from the
        thread that bound the channel, see :meth:`EventChannels.bind_interdomain_local`),
        with no lock of this module held. Must not block: hand the work to the
        backend's own thread. Notifications do not queue; one call may stand
        for several sends.
        """
        ...


class Waiter(Protocol):
    """Something a SCHEDOP_poll-ing vCPU sleeps on (``threading.Event`` fits)."""

    def set(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    """The saved form of one port in use.

    ``remote_dom``/``remote_port`` apply to UNBOUND and INTERDOMAIN ports,
    ``virq`` to VIRQ ports; they are 0 otherwise.
    """

    VERSION: ClassVar[int] = 1
    port: int
    state: PortState
    notify_vcpu: int
    remote_dom: int = 0
    remote_port: int = 0
    virq: int = 0
    version: int = VERSION


@dataclass(frozen=True, slots=True)
class EventChannelState:
    """Saved port table. The pending/mask/selector bits are not here: they are
    guest memory and travel with it. Backends and pollers are live objects and
    are not saved either (see :meth:`EventChannels.restore`). ``fifo`` is the
    FIFO ABI's state once the guest switched to it (None: 2-level; a save
    written before FIFO existed has no such field and loads as 2-level)."""

    VERSION: ClassVar[int] = 1
    channels: tuple[ChannelRecord, ...]
    fifo: FifoState | None = None
    version: int = VERSION


@dataclass(frozen=True, slots=True)
class _Channel:
    """A port in use. Immutable: a change replaces the table entry, so a reader
    holding an old reference never sees a half-updated channel."""

    state: PortState
    notify_vcpu: int
    remote_dom: int = 0
    remote_port: int = 0
    virq: int = 0
    backend: BackendEndpoint | None = None


_RESERVED = _Channel(PortState.RESERVED, 0)
_NO_WAITERS: tuple[Waiter, ...] = ()


class EventChannels:
    """The event channels of one domain: the port table, and the delivery ABI
    the guest chose -- 2-level (the bits in shared_info, this module) until
    it asks for FIFO (``init_control``; :mod:`hospes.pv.evtchn_fifo` then
    does the bit work, ``self._fifo``), back to 2-level on :meth:`reset`.

    Guest operations (the EVTCHNOP_* sub-ops) raise :class:`XenError` for
    guest-caused errors; the hypercall layer turns it into ``-errno``.
    All methods are thread-safe.
    """

    NR_PORTS = NR_PORTS

    def __init__(
        self,
        shared_info_addr: int,
        nr_vcpus: int,
        vcpu_info_addr: Callable[[int], int],
        kick: Callable[[int], None],
        domid: int,
        pages: EventPages | None = None,
    ) -> None:
        """Attach to a domain's shared_info page.

        ``shared_info_addr`` is the host address of the shared_info page;
        ``vcpu_info_addr(v)`` returns the host address of vCPU *v*'s current
        ``vcpu_info`` (8-byte aligned; called under our lock, so it must be a
        plain lookup); ``kick(v)`` is called, without our lock, whenever
        ``upcall_pending`` of vCPU *v* goes from 0 to 1 -- whatever
        ``upcall_mask`` is -- and must make the vCPU notice: interrupt it if it
        runs guest code with the upcall deliverable, wake it if it is blocked
        or polling. No address is validated here. ``pages`` maps the guest
        frames the FIFO ABI puts its structures in; without it the guest
        only gets 2-level (``init_control`` is -ENOSYS).
        """
        if nr_vcpus < 1:
            raise ValueError("A domain needs at least one vCPU")
        self._pending = shared_info_addr + SHARED_INFO_EVTCHN_PENDING
        self._mask = shared_info_addr + SHARED_INFO_EVTCHN_MASK
        self._nr_vcpus = nr_vcpus
        self._vcpu_info_addr = vcpu_info_addr
        self._kick = kick
        self._domid = domid
        self._lock = threading.Lock()
        self._channels: list[_Channel | None] = [None] * NR_PORTS
        self._channels[0] = _RESERVED  # port 0 is never valid (Xen ECS_RESERVED)
        self._virq_ports = [[0] * NR_VIRQS for _ in range(nr_vcpus)]
        self._pollers: dict[Waiter, frozenset[int]] = {}
        self._pages = pages
        self._fifo: FifoEvents | None = None  # set while the guest uses the FIFO ABI

    # -- allocation --------------------------------------------------------

    def alloc_unbound(self, remote_dom: int) -> int:
        """EVTCHNOP_alloc_unbound for this domain: a port waiting for ``remote_dom`` to bind."""
        if remote_dom == DOMID_SELF:
            remote_dom = self._domid
        with self._lock:
            port = self._free_port_locked()
            self._channels[port] = _Channel(PortState.UNBOUND, 0, remote_dom=remote_dom)
        return port

    def bind_interdomain_local(self, port: int, backend: BackendEndpoint) -> None:
        """An in-process backend (domain 0) binds to the guest's unbound ``port``.

        The port must be UNBOUND and name ``remote_dom`` 0, else EINVAL (the
        port number typically comes from the guest, via xenstore). Like Xen's
        EVTCHNOP_bind_interdomain, this ends by notifying the *binding* side
        once -- ``backend.notify()``, in the caller's thread -- because sends
        on the port while it was unbound were dropped.
        """
        self._check_port(port)
        with self._lock:
            channel = self._channels[port]
            if (
                channel is None
                or channel.state is not PortState.UNBOUND
                or channel.remote_dom != BACKEND_DOMID
            ):
                raise XenError(Errno.EINVAL, f"Port {port} is not an unbound port for domain 0")
            self._channels[port] = replace(
                channel, state=PortState.INTERDOMAIN, remote_port=port, backend=backend
            )
        backend.notify()

    def alloc_backend_port(self, backend: BackendEndpoint) -> int:
        """Builder: allocate a port already connected to an in-process backend.

        For the channels the guest finds in start_info (console, xenstore).
        No event is raised. The remote end reports itself as domain 0 with
        the same port number.
        """
        with self._lock:
            port = self._free_port_locked()
            self._channels[port] = _Channel(
                PortState.INTERDOMAIN,
                0,
                remote_dom=BACKEND_DOMID,
                remote_port=port,
                backend=backend,
            )
        return port

    def bind_virq(self, virq: int, vcpu: int) -> int:
        """EVTCHNOP_bind_virq."""
        if not 0 <= virq < NR_VIRQS:
            raise XenError(Errno.EINVAL, f"VIRQ {virq} does not exist")
        if virq not in PER_VCPU_VIRQS and vcpu != 0:
            raise XenError(Errno.EINVAL, f"Global VIRQ {virq} must be bound on vCPU 0")
        self._check_vcpu(vcpu)
        with self._lock:
            if self._virq_ports[vcpu][virq]:
                raise XenError(Errno.EEXIST, f"VIRQ {virq} is already bound on vCPU {vcpu}")
            port = self._free_port_locked()
            self._channels[port] = _Channel(PortState.VIRQ, vcpu, virq=virq)
            self._virq_ports[vcpu][virq] = port
        return port

    def bind_ipi(self, vcpu: int) -> int:
        """EVTCHNOP_bind_ipi: a port that notifies ``vcpu`` when sent on."""
        self._check_vcpu(vcpu)
        with self._lock:
            port = self._free_port_locked()
            self._channels[port] = _Channel(PortState.IPI, vcpu)
        return port

    def close(self, port: int) -> None:
        """EVTCHNOP_close: free the port and clear its pending bit (not its mask).

        An interdomain port's backend is simply forgotten; its later
        :meth:`notify_backend_port` calls are dropped.
        """
        self._check_port(port)
        with self._lock:
            self._close_locked(port)

    def reset(self) -> None:
        """EVTCHNOP_reset: close every port (including backend-connected ones) and,
        as Xen's evtchn_reset, return from FIFO to the 2-level ABI."""
        with self._lock:
            for port in range(1, NR_PORTS):
                if self._channels[port] is not None:
                    self._close_locked(port)
            if self._fifo is not None:
                self._fifo.destroy()
                self._fifo = None

    # -- FIFO ABI (xen/common/event_fifo.c) ---------------------------------

    @property
    def uses_fifo(self) -> bool:
        """Whether the guest switched to the FIFO ABI."""
        return self._fifo is not None

    def init_control(self, vcpu: int, gfn: int, offset: int) -> int:
        """EVTCHNOP_init_control: ``vcpu``'s control block at ``gfn``/``offset``; returns
        the link bits (17). The first call switches the domain to FIFO: ports already
        in use keep their pending state (raised once their event word exists) and
        get the default priority (Xen setup_ports)."""
        if self._pages is None:
            raise XenError(Errno.ENOSYS, "FIFO event channels are not available here")
        self._check_vcpu(vcpu)
        why = control_offset_error(offset)
        if why is not None:
            raise XenError(Errno.EINVAL, f"FIFO control block: {why}")
        with self._lock:
            fifo = self._fifo
            if fifo is not None:
                fifo.map_control_block(vcpu, gfn, offset)
                return LINK_BITS
            fifo = FifoEvents(self._nr_vcpus, NR_PORTS, self._pages, self._vcpu_info_addr)
            fifo.map_control_block(vcpu, gfn, offset)  # a refusal leaves the domain on 2-level
            for port in range(1, NR_PORTS):
                if test_bit(self._pending, port):
                    fifo.mark_waiting(port)
            self._fifo = fifo
        return LINK_BITS

    def expand_array(self, gfn: int) -> None:
        """EVTCHNOP_expand_array: one more event array page; ports that became
        pending while it was missing are raised now."""
        kicks: list[tuple[bool, int, tuple[Waiter, ...]]] = []
        with self._lock:
            fifo = self._fifo
            if fifo is None:
                raise XenError(Errno.EOPNOTSUPP, "EVTCHNOP_expand_array needs the FIFO ABI")
            for port in fifo.take_waiting(fifo.add_array_page(gfn)):
                channel = self._channels[port]
                vcpu = channel.notify_vcpu if channel is not None else 0
                kick, waiters = self._raise_locked(port, vcpu)
                kicks.append((kick, vcpu, waiters))
        for kick, vcpu, waiters in kicks:
            self._deliver(kick, vcpu, waiters)

    def set_priority(self, port: int, priority: int) -> None:
        """EVTCHNOP_set_priority: the port's queue for its future events (EINVAL above
        15; -ENOSYS under 2-level, after the port check, as Xen)."""
        self._check_port(port)
        with self._lock:
            if self._fifo is None:
                raise XenError(Errno.ENOSYS, "Event channel priorities need the FIFO ABI")
            self._fifo.set_priority(port, priority)

    # -- guest operations on existing ports --------------------------------

    def send(self, port: int) -> None:
        """EVTCHNOP_send: interdomain -> ``backend.notify()``; IPI -> set pending on
        the port itself; unbound -> silently dropped; anything else -> EINVAL."""
        self._check_port(port)
        with self._lock:
            channel = self._in_use_locked(port)
            state = channel.state
            if state is PortState.IPI:
                kick, waiters = self._raise_locked(port, channel.notify_vcpu)
            elif state is PortState.UNBOUND:
                return
            elif state is not PortState.INTERDOMAIN:
                raise XenError(Errno.EINVAL, f"Cannot send on port {port} ({state.name})")
        if state is PortState.IPI:
            self._deliver(kick, channel.notify_vcpu, waiters)
        elif channel.backend is not None:
            channel.backend.notify()

    def status(self, port: int) -> PortStatus:
        """EVTCHNOP_status. A free port in range reports CLOSED, as in Xen."""
        self._check_port(port)
        with self._lock:
            channel = self._channels[port]
        if channel is None or channel.state is PortState.RESERVED:
            return PortStatus(EvtchnStat.CLOSED, 0)
        state = channel.state
        if state is PortState.UNBOUND:
            return PortStatus(EvtchnStat.UNBOUND, channel.notify_vcpu, dom=channel.remote_dom)
        if state is PortState.INTERDOMAIN:
            return PortStatus(
                EvtchnStat.INTERDOMAIN,
                channel.notify_vcpu,
                dom=channel.remote_dom,
                port=channel.remote_port,
            )
        if state is PortState.VIRQ:
            return PortStatus(EvtchnStat.VIRQ, channel.notify_vcpu, virq=channel.virq)
        return PortStatus(EvtchnStat.IPI, channel.notify_vcpu)

    def bind_vcpu(self, port: int, vcpu: int) -> None:
        """EVTCHNOP_bind_vcpu: choose which vCPU a port notifies.

        Allowed for unbound, interdomain and global-VIRQ ports; IPIs and
        per-vCPU VIRQs stay where they were bound (EINVAL). The vCPU is
        checked first (ENOENT), then the port (EINVAL).
        """
        self._check_vcpu(vcpu)
        self._check_port(port)
        with self._lock:
            channel = self._in_use_locked(port)
            state = channel.state
            movable = state in (PortState.UNBOUND, PortState.INTERDOMAIN) or (
                state is PortState.VIRQ and channel.virq not in PER_VCPU_VIRQS
            )
            if not movable:
                raise XenError(Errno.EINVAL, f"Port {port} ({state.name}) cannot change vCPU")
            self._channels[port] = replace(channel, notify_vcpu=vcpu)

    def unmask(self, port: int) -> None:
        """EVTCHNOP_unmask (Xen ``evtchn_2l_unmask``): clear the mask bit and, if the
        port is pending, announce it to its vCPU. Like Xen, this works on any
        port in range, in use or not (a free port notifies vCPU 0)."""
        self._check_port(port)
        kick = False
        with self._lock:
            channel = self._channels[port]
            vcpu = channel.notify_vcpu if channel is not None else 0
            if self._fifo is not None:
                kick = self._fifo.unmask(port, vcpu)[0]  # no poller: P was already set
            elif test_and_clear_bit(self._mask, port) and test_bit(self._pending, port):
                kick = self._announce_locked(port, vcpu)
        if kick:
            self._kick(vcpu)

    # -- hypervisor side ---------------------------------------------------

    def set_pending(self, port: int) -> None:
        """Raise an event on one of this domain's ports (Xen's 2L set_pending).

        A port that is not in use (e.g. closed a moment ago) is ignored.
        """
        if not 0 < port < NR_PORTS:
            raise XenError(Errno.EINVAL, f"Event channel port {port} is out of range")
        with self._lock:
            channel = self._channels[port]
            if channel is None:
                return
            kick, waiters = self._raise_locked(port, channel.notify_vcpu)
        self._deliver(kick, channel.notify_vcpu, waiters)

    def raise_virq(self, virq: int, vcpu: int = 0) -> None:
        """Send a VIRQ: per-vCPU VIRQs to ``vcpu``'s binding, global ones to the
        binding on vCPU 0 (``vcpu`` is then ignored). No-op if not bound.
        ``virq`` and ``vcpu`` must be in range (caller's contract)."""
        with self._lock:
            port = self._virq_ports[vcpu if virq in PER_VCPU_VIRQS else 0][virq]
            if not port:
                return
            channel = self._channels[port]
            assert channel is not None  # the VIRQ table only names ports in use
            kick, waiters = self._raise_locked(port, channel.notify_vcpu)
        self._deliver(kick, channel.notify_vcpu, waiters)

    def notify_backend_port(self, port: int, backend: BackendEndpoint | None = None) -> None:
        """A backend notifies the guest end of its channel (= set_pending of ``port``).

        Dropped, like a send on an unbound port, unless ``port`` is currently
        an interdomain port -- and, if ``backend`` is given, connected to that
        very backend (so a port the guest closed and re-used for something
        else is not signalled by its previous owner).
        """
        self._check_port(port)
        with self._lock:
            channel = self._channels[port]
            if (
                channel is None
                or channel.state is not PortState.INTERDOMAIN
                or (backend is not None and channel.backend is not backend)
            ):
                return
            kick, waiters = self._raise_locked(port, channel.notify_vcpu)
        self._deliver(kick, channel.notify_vcpu, waiters)

    def upcall_deliverable(self, vcpu: int) -> bool:
        """``evtchn_upcall_pending != 0 and evtchn_upcall_mask == 0`` for ``vcpu``.

        One 8-byte load; the two bytes are read together, as Xen tests the
        16-bit word {pending, mask}.
        """
        word = load64(self._vcpu_info_addr(vcpu)) & 0xFFFF  # byte 0 pending, byte 1 mask
        return 0 < word <= 0xFF

    def poll_ready(self, vcpu: int, ports: Sequence[int]) -> bool:
        """SCHEDOP_poll's wake condition: an upcall is deliverable to ``vcpu``, or
        any listed port is pending (masked or not).

        More than 128 ports, or an out-of-range port reached before a pending
        one, is EINVAL (Xen ``do_poll``).
        """
        if len(ports) > MAX_POLL_PORTS:
            raise XenError(Errno.EINVAL, f"SCHEDOP_poll accepts at most {MAX_POLL_PORTS} ports")
        if self.upcall_deliverable(vcpu):
            return True
        fifo = self._fifo
        for port in ports:
            self._check_port(port)
            if fifo.is_pending(port) if fifo is not None else test_bit(self._pending, port):
                return True
        return False

    def register_poller(self, waiter: Waiter, ports: Iterable[int]) -> None:
        """Have ``waiter.set()`` called whenever one of ``ports`` becomes pending.

        Race-free use by a SCHEDOP_poll handler::

            register_poller(event, ports)        # 1. be findable
            try:
                while not poll_ready(vcpu, ports) and not timed_out:   # 2. then look
                    event.wait(remaining); event.clear()
            finally:
                unregister_poller(event)

        Registering again replaces the port set. Deliverable upcalls wake the
        vCPU through ``kick``, not through the waiter.
        """
        port_set = frozenset(ports)
        with self._lock:
            self._pollers[waiter] = port_set

    def unregister_poller(self, waiter: Waiter) -> None:
        """Forget a waiter (no error if it is not registered)."""
        with self._lock:
            self._pollers.pop(waiter, None)

    # -- save / restore ----------------------------------------------------

    def save(self) -> EventChannelState:
        """Snapshot the port table (and the FIFO state, if the guest uses it)."""
        with self._lock:
            fifo = self._fifo.save() if self._fifo is not None else None
            records = tuple(
                ChannelRecord(
                    port=port,
                    state=channel.state,
                    notify_vcpu=channel.notify_vcpu,
                    remote_dom=channel.remote_dom,
                    remote_port=channel.remote_port,
                    virq=channel.virq,
                )
                for port, channel in enumerate(self._channels)
                if channel is not None and channel is not _RESERVED
            )
        return EventChannelState(channels=records, fifo=fifo)

    @classmethod
    def restore(
        cls,
        state: EventChannelState,
        *,
        shared_info_addr: int,
        nr_vcpus: int,
        vcpu_info_addr: Callable[[int], int],
        kick: Callable[[int], None],
        domid: int,
        backends: Mapping[int, BackendEndpoint],
        pages: EventPages | None = None,
    ) -> EventChannels:
        """Rebuild from :meth:`save`'s record. ``backends`` maps each saved
        interdomain port to the live backend that serves it now. Shared memory
        is not touched. Raises :class:`StateError` if the record does not fit."""
        check_version(state, "event channel table")
        self = cls(shared_info_addr, nr_vcpus, vcpu_info_addr, kick, domid, pages)
        for record in state.channels:
            self._restore_channel(record, backends)
        if state.fifo is not None:
            if pages is None:
                raise StateError("The saved domain uses FIFO event channels; pass `pages`")
            self._fifo = FifoEvents.restore(state.fifo, nr_vcpus=nr_vcpus, nr_ports=NR_PORTS,
                                            pages=pages, vcpu_info_addr=vcpu_info_addr)
        return self

    def _restore_channel(
        self, record: ChannelRecord, backends: Mapping[int, BackendEndpoint]
    ) -> None:
        check_version(record, f"event channel port {record.port}")
        port, state, vcpu = record.port, record.state, record.notify_vcpu
        if not 0 < port < NR_PORTS or self._channels[port] is not None:
            raise StateError(f"Saved event channel port {port} is invalid or duplicated")
        if not 0 <= vcpu < self._nr_vcpus:
            raise StateError(
                f"Saved event channel port {port} notifies vCPU {vcpu}, "
                f"but the domain has {self._nr_vcpus}; restore with more vCPUs"
            )
        backend = None
        if state is PortState.INTERDOMAIN:
            backend = backends.get(port)
            if backend is None:
                raise StateError(
                    f"Saved event channel port {port} is connected to a backend; "
                    "pass that backend in `backends`"
                )
        elif state is PortState.VIRQ:
            if not 0 <= record.virq < NR_VIRQS:
                raise StateError(f"Saved event channel port {port} has bad VIRQ {record.virq}")
            table = self._virq_ports[vcpu if record.virq in PER_VCPU_VIRQS else 0]
            if table[record.virq]:
                raise StateError(f"VIRQ {record.virq} is bound twice in the saved state")
            table[record.virq] = port
        elif state not in (PortState.UNBOUND, PortState.IPI):
            raise StateError(f"Saved event channel port {port} has unsupported state {state!r}")
        self._channels[port] = _Channel(
            state, vcpu, record.remote_dom, record.remote_port, record.virq, backend
        )

    # -- internals ----------------------------------------------------------

    def _check_port(self, port: int) -> None:
        if not 0 <= port < NR_PORTS:
            raise XenError(Errno.EINVAL, f"Event channel port {port} is out of range")

    def _check_vcpu(self, vcpu: int) -> None:
        if not 0 <= vcpu < self._nr_vcpus:
            raise XenError(Errno.ENOENT, f"vCPU {vcpu} does not exist")

    def _in_use_locked(self, port: int) -> _Channel:
        channel = self._channels[port]
        if channel is None or channel is _RESERVED:
            raise XenError(Errno.EINVAL, f"Event channel port {port} is not in use")
        return channel

    def _free_port_locked(self) -> int:
        """Lowest free port >= 1 (under FIFO: not still on a queue, Xen's evtchn_is_busy)."""
        fifo = self._fifo
        port = 0
        try:
            while True:
                port = self._channels.index(None, port + 1)
                if fifo is None:
                    return port
                if not fifo.is_busy(port):
                    fifo.init_port(port)
                    return port
        except ValueError:
            raise XenError(Errno.ENOSPC, "All 4096 event channel ports are in use") from None

    def _close_locked(self, port: int) -> None:
        channel = self._in_use_locked(port)
        if channel.state is PortState.VIRQ:
            table = self._virq_ports[channel.notify_vcpu if channel.virq in PER_VCPU_VIRQS else 0]
            if table[channel.virq] == port:
                table[channel.virq] = 0
        if self._fifo is not None:
            self._fifo.clear_pending(port)
        else:
            test_and_clear_bit(self._pending, port)  # Xen evtchn_free: no stale event on re-use
        self._channels[port] = None

    def _raise_locked(self, port: int, vcpu: int) -> tuple[bool, tuple[Waiter, ...]]:
        """The 2L set-pending bit sequence (see module docstring).

        Returns whether ``vcpu`` must be kicked and which pollers to wake;
        the caller does both after releasing the lock. Under FIFO the
        strategy object does the bits (same contract).
        """
        fifo = self._fifo
        if fifo is not None:
            kick, fresh = fifo.set_pending(port, vcpu)
            if not fresh or not self._pollers:
                return kick, _NO_WAITERS
            return kick, tuple(w for w, ports in self._pollers.items() if port in ports)
        if test_and_set_bit(self._pending, port):
            return False, _NO_WAITERS
        kick = not test_bit(self._mask, port) and self._announce_locked(port, vcpu)
        if not self._pollers:
            return kick, _NO_WAITERS
        return kick, tuple(w for w, ports in self._pollers.items() if port in ports)

    def _announce_locked(self, port: int, vcpu: int) -> bool:
        """Set the port's selector bit and then ``upcall_pending`` of ``vcpu``.

        Returns True if ``vcpu`` must be kicked: only when this call moved
        ``upcall_pending`` from 0 to 1 (Xen ``vcpu_mark_events_pending``).
        """
        vcpu_info = self._vcpu_info_addr(vcpu)
        if test_and_set_bit(vcpu_info + VCPU_INFO_PENDING_SEL, port >> 6):
            return False
        return xchg8(vcpu_info + VCPU_INFO_UPCALL_PENDING, 1) == 0

    def _deliver(self, kick: bool, vcpu: int, waiters: tuple[Waiter, ...]) -> None:
        if kick:
            self._kick(vcpu)
        for waiter in waiters:
            waiter.set()
