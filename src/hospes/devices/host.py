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

import logging
from dataclasses import dataclass
from typing import Callable, Protocol

from hospes.machine.memory import GuestMemory
from hospes.pv.evtchn import BackendEndpoint
from hospes.pv.grant import GrantTable
from hospes.pv.store import Store

log = logging.getLogger(__name__)

#: The domain the in-process backends run as; grants must name it.
BACKEND_DOMID = 0

#: ``failed(what, error)``: a backend thread met an unexpected exception.
FailureHook = Callable[[str, BaseException], None]


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

    @property
    def failed(self) -> FailureHook:
        """Where a backend thread's unexpected exception goes: the domain ends
        (a Hospes bug, never the thread alone, which would leave the device
        half alive)."""
        ...


def log_failure(what: str, error: BaseException) -> None:
    """The failure hook of a backend no domain owns (tests): log it."""
    log.error("%s: Hospes internal error: %s", what, error, exc_info=error)


def guarded(failed: FailureHook, what: str, body: Callable[[], None]) -> Callable[[], None]:
    """``body`` as a thread target whose unexpected exception goes to ``failed``."""
    def run() -> None:
        try:
            body()
        except Exception as e:  # noqa: BLE001 - a backend bug ends its domain, not just this thread
            failed(what, e)
    return run


@dataclass(slots=True)
class BackendHost:
    """A :class:`DeviceHost` as a plain record (``evtchn`` may be replaced on restore)."""

    domid: int
    mem: GuestMemory
    grants: GrantTable
    evtchn: EventPorts
    store: Store
    failed: FailureHook = log_failure


__all__ = ["BACKEND_DOMID", "BackendHost", "DeviceHost", "EventPorts", "FailureHook", "guarded", "log_failure"]
