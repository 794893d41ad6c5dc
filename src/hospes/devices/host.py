"""What a split-device backend gets from the domain it serves, and nothing more.

A backend needs the frontend's domain id, the guest's memory, the grant table
that says which of its pages it may touch, the event channels to bind and
signal, and the store to do the xenbus handshake in. :class:`DeviceHost` names
exactly those; :class:`BackendHost` is the plain record a domain (or a test)
hands over. Keeping the backend off the domain object means a backend can be
built, tested, saved and restored on its own, and cannot come to depend on the
rest of the domain by accident.

Backends read ``host.evtchn`` when they bind or signal, never at construction
or restore: on restore the event channels are rebuilt *after* the backends,
from their :meth:`endpoints`, so a host's ``evtchn`` may be set late.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hospes.machine.memory import GuestMemory
from hospes.pv.evtchn import BackendEndpoint
from hospes.pv.grant import GrantTable
from hospes.pv.store import Store

#: The domain the in-process backends run as; grants must name it.
BACKEND_DOMID = 0


class EventPorts(Protocol):
    """The two event-channel operations a backend uses (``EventChannels`` fits)."""

    def bind_interdomain_local(self, port: int, backend: BackendEndpoint) -> None: ...

    def notify_backend_port(self, port: int, backend: BackendEndpoint | None = None) -> None: ...


class DeviceHost(Protocol):
    """The narrow view of a domain a device backend receives."""

    @property
    def domid(self) -> int: ...

    @property
    def mem(self) -> GuestMemory: ...

    @property
    def grants(self) -> GrantTable: ...

    @property
    def evtchn(self) -> EventPorts: ...

    @property
    def store(self) -> Store: ...


@dataclass(slots=True)
class BackendHost:
    """A :class:`DeviceHost` as a plain record (``evtchn`` may be replaced on restore)."""

    domid: int
    mem: GuestMemory
    grants: GrantTable
    evtchn: EventPorts
    store: Store


__all__ = ["BACKEND_DOMID", "BackendHost", "DeviceHost", "EventPorts"]
