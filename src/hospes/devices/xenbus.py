"""The backend's half of a xenbus device: its two xenstore directories and the
state machine that follows the frontend's.

Every split device has a frontend directory the guest owns
(``/local/domain/<D>/device/<kind>/<id>``) and a backend directory domain 0
owns but the guest may read (``/local/domain/0/backend/<kind>/<D>/<id>``); each
names the other, and their ``state`` nodes drive the handshake (io/xenbus.h:
1 Initialising, 2 InitWait, 3 Initialised, 4 Connected, 5 Closing, 6 Closed).
A frontend that cannot read its backend directory refuses the device
("missing or inaccessible"), hence the permissions.

Why the backend follows rather than leads
    The frontend owns the handshake: it sets up its rings, then says
    Initialised (blkfront) or Connected (netfront); the backend connects only
    then, and only from InitWait, so a frontend that failed or went away must
    start over from Initialising before it is served again. When the frontend
    says Closing the backend must say Closing too (a frontend shutting down
    waits for exactly that), and Closed follows Closed. A frontend back at
    Initialising after a close (its driver reloaded) finds the backend at
    InitWait again. :class:`XenbusBackend` is that table, once, for every
    backend; a device plugs in with :class:`XenbusDevice`.

Threading: the store calls :meth:`XenbusBackend.frontend_changed` on whatever
thread wrote the frontend's state node; the machine's lock makes transitions
one at a time. A device's serving thread that finds the ring broken calls
:meth:`XenbusBackend.fail`, which publishes Closed from a thread of its own so
the serving thread never waits on the machine's lock while holding its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from enum import IntEnum
from typing import Protocol

from hospes.devices.host import FailureHook, guarded, log_failure
from hospes.errors import HospesError
from hospes.pv.store import Store, StoreError, WatchHandle

log = logging.getLogger(__name__)

#: Commits of the Connected transaction tried before the device is given up.
CONNECT_COMMIT_TRIES = 5


class XenbusState(IntEnum):
    """io/xenbus.h ``enum xenbus_state``: the value of a ``state`` node."""

    UNKNOWN = 0
    INITIALISING = 1
    INIT_WAIT = 2
    INITIALISED = 3
    CONNECTED = 4
    CLOSING = 5
    CLOSED = 6
    RECONFIGURING = 7
    RECONFIGURED = 8

    @property
    def node(self) -> str:
        """The state as the store holds it."""
        return str(int(self))


class XenbusDevice(Protocol):
    """What the state machine drives in a backend."""

    def connect(self) -> Mapping[str, str]:
        """The frontend is ready: read its keys, map its rings, bind its ports.
        Returns backend nodes to publish together with Connected. Raises
        HospesError or ValueError if the frontend's setup is unusable (the
        backend then goes Closed)."""
        ...

    def activate(self) -> None:
        """Connected is published: start serving."""
        ...

    def disconnect(self) -> None:
        """Stop serving the rings (idempotent; the device may be connected again later)."""
        ...


def device_paths(domid: int, kind: str, devid: int) -> tuple[str, str]:
    """(frontend, backend) directories of device ``kind``/``devid`` of ``domid``."""
    return (f"/local/domain/{domid}/device/{kind}/{devid}",
            f"/local/domain/0/backend/{kind}/{domid}/{devid}")


def publish_device(store: Store, domid: int, front: str, back: str,
                   backend: Mapping[str, str], frontend: Mapping[str, str]) -> None:
    """Create both directories in one transaction: backend InitWait, frontend Initialising."""
    with store.transaction() as t:
        t.mkdir(back, perms=["n0", f"r{domid}"])  # children inherit: readable by the guest
        t.mkdir(front, perms=[f"n{domid}"])
        t.write(f"{back}/frontend", front)
        t.write(f"{back}/frontend-id", str(domid))
        t.write(f"{back}/online", "1")
        for key, value in backend.items():
            t.write(f"{back}/{key}", value)
        t.write(f"{back}/state", XenbusState.INIT_WAIT.node)
        t.write(f"{front}/backend", back)
        t.write(f"{front}/backend-id", "0")
        for key, value in frontend.items():
            t.write(f"{front}/{key}", value)
        t.write(f"{front}/state", XenbusState.INITIALISING.node)


class XenbusBackend:
    """The backend's side of one device's handshake (see the module docstring).

    ``state`` is the backend state already published (InitWait after
    :func:`publish_device`; the saved state on restore). :meth:`start`
    registers the watch on the frontend's state node; it fires once at once,
    so a restored backend re-checks the frontend.
    """

    def __init__(self, store: Store, front: str, back: str, device: XenbusDevice, *, name: str,
                 state: XenbusState = XenbusState.INIT_WAIT, failed: FailureHook = log_failure) -> None:
        self.store = store
        self._failed = failed
        self.front = front
        self.back = back
        self.name = name
        self._device = device
        self._state = state
        self._lock = threading.Lock()
        self._watch: WatchHandle | None = None

    @property
    def state(self) -> XenbusState:
        """The backend state we last published."""
        return self._state

    def start(self) -> None:
        self._watch = self.store.watch(f"{self.front}/state", lambda _path: self.frontend_changed())

    def frontend(self, key: str) -> str | None:
        """The frontend's node ``key``, or None if it is missing or not text."""
        try:
            return self.store.read(f"{self.front}/{key}").decode()
        except (HospesError, UnicodeDecodeError):
            return None

    def frontend_state(self) -> XenbusState | None:
        raw = self.frontend("state")
        try:
            return XenbusState(int(raw)) if raw is not None else None
        except ValueError:
            return XenbusState.UNKNOWN

    def frontend_changed(self) -> None:
        with self._lock:
            front = self.frontend_state()
            ours = self._state
            if front in (XenbusState.INITIALISED, XenbusState.CONNECTED):
                if ours is XenbusState.INIT_WAIT:
                    self._connect()
            elif front is XenbusState.CLOSING:
                self._device.disconnect()
                self._set(XenbusState.CLOSING)
            elif front is XenbusState.CLOSED or front is None:
                self._device.disconnect()
                self._set(XenbusState.CLOSED)
            elif front is XenbusState.INITIALISING and ours in (XenbusState.CLOSING, XenbusState.CLOSED):
                self._device.disconnect()
                self._set(XenbusState.INIT_WAIT)

    def _connect(self) -> None:
        try:
            nodes = self._device.connect()
            self._publish_connected(nodes)
        except (HospesError, ValueError) as e:
            log.warning("%s: the frontend's setup is unusable: %s", self.name, e)
            self._device.disconnect()
            self._set(XenbusState.CLOSED)
            return
        self._state = XenbusState.CONNECTED
        self._device.activate()

    def _publish_connected(self, nodes: Mapping[str, str]) -> None:
        """The device's nodes and Connected in one transaction, so the frontend
        never sees Connected without them. A commit can only conflict with a
        toolstack write to the backend directory; it is simply tried again."""
        for attempt in range(CONNECT_COMMIT_TRIES):
            try:
                with self.store.transaction() as t:
                    for key, value in nodes.items():
                        t.write(f"{self.back}/{key}", value)
                    t.write(f"{self.back}/state", XenbusState.CONNECTED.node)
                return
            except StoreError as e:
                if e.errno_name != "EAGAIN" or attempt == CONNECT_COMMIT_TRIES - 1:
                    raise

    def _set(self, state: XenbusState) -> None:
        if state is self._state:
            return
        self._state = state
        try:
            self.store.write(f"{self.back}/state", state.node)
        except HospesError as e:
            log.warning("%s: cannot write the backend state: %s", self.name, e)

    def fail(self, why: str) -> None:
        """The frontend broke its ring beyond repair; the device has stopped
        serving. Publish Closed (from another thread, see the module docstring)."""
        log.warning("%s: %s; disconnecting", self.name, why)
        threading.Thread(target=guarded(self._failed, f"{self.name} xenbus", self._closed_after_failure),
                         name=f"{self.name}-fail", daemon=True).start()

    def _closed_after_failure(self) -> None:
        with self._lock:
            if self._state is XenbusState.CONNECTED:
                self._set(XenbusState.CLOSED)

    def close(self) -> None:
        """Stop following the frontend (the directories stay for the toolstack to remove)."""
        watch, self._watch = self._watch, None
        if watch is not None:
            try:
                self.store.unwatch(watch)
            except HospesError:
                pass
