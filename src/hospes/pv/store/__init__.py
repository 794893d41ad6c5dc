"""The in-process xenstore (pv-abi.md §10).

Layers, bottom up: :mod:`.tree` (nodes, paths, permissions, quotas),
:mod:`.transactions` and :mod:`.watches` (per-connection state),
:mod:`.wire` (message framing and the request handler table),
:mod:`.connection` (the shared :class:`Store` with its toolstack API, and the
guest ring transport :class:`RingConnection`).

Wiring into a domain::

    store = Store()
    populate_domain(store, domid, name, uuid, vcpus, memory_kib)
    conn = RingConnection(store, domid, store_page_view, notify=send_store_event)
    # on every event the guest sends on the store port, and periodically:
    conn.service()
"""

from __future__ import annotations

from .connection import (
    Connection,
    ConnectionState,
    Dom0Transaction,
    RingConnection,
    Store,
    StoreState,
    WatchHandle,
)
from .errors import XS_ERROR_NAMES, StoreError
from .tree import PRIVILEGED_DOMID, Quota, home_path
from .wire import Message, XsType

__all__ = [
    "Connection",
    "ConnectionState",
    "Dom0Transaction",
    "Message",
    "PRIVILEGED_DOMID",
    "Quota",
    "RingConnection",
    "Store",
    "StoreError",
    "StoreState",
    "WatchHandle",
    "XS_ERROR_NAMES",
    "XsType",
    "home_path",
    "populate_domain",
]


def populate_domain(
    store: Store, domid: int, name: str, uuid: str, vcpus: int, memory_kib: int, max_vcpus: int = 0,
    max_memory_kib: int = 0,
) -> None:
    """Write the nodes a Linux PV domU reads at boot (pv-abi.md §10.4).

    ``/local/domain/<domid>`` is owned by the guest, as are ``control/``
    (``shutdown`` empty; the guest adds ``feature-*``), ``device/`` and
    ``data/``.  Facts the toolstack owns are dom0's and only readable by the
    guest: ``name``, ``domid``, ``vm``, ``cpu/<n>/availability`` (``online`` for
    the first ``vcpus``, ``offline`` for the rest of ``max_vcpus``),
    ``memory/static-max`` (``max_memory_kib``, xl's maxmem, at least
    ``memory_kib``) and ``memory/target`` (= ``memory_kib``; ``hospes mem-set``
    moves it, and the balloon driver gives memory back or takes it again) and
    ``control/platform-feature-xs_reset_watches``.  ``/vm/<uuid>`` holds
    ``name`` and ``uuid``; ``/local/domain/0`` gets ``name`` and ``domid``.
    Finally ``@introduceDomain`` fires.  Everything is one transaction.
    """
    if domid <= PRIVILEGED_DOMID or vcpus < 1 or memory_kib < 1:
        raise StoreError("EINVAL", "populate_domain needs a guest domid, vcpus and memory")
    home = home_path(domid)
    vm = f"/vm/{uuid}"
    guest_owned = [f"n{domid}"]
    read_only = [f"n{PRIVILEGED_DOMID}", f"r{domid}"]
    with store.transaction() as t:
        t.write("/local/domain/0/name", "Domain-0")
        t.write("/local/domain/0/domid", "0")
        t.mkdir(vm, perms=read_only)
        t.write(f"{vm}/name", name)
        t.write(f"{vm}/uuid", uuid)
        t.mkdir(home, perms=guest_owned)
        t.write(f"{home}/name", name, perms=read_only)
        t.write(f"{home}/domid", str(domid), perms=read_only)
        t.write(f"{home}/vm", vm, perms=read_only)
        t.mkdir(f"{home}/control", perms=guest_owned)
        t.write(f"{home}/control/shutdown", "")
        t.write(f"{home}/control/platform-feature-xs_reset_watches", "1", perms=read_only)
        t.mkdir(f"{home}/cpu", perms=read_only)
        for cpu in range(max(vcpus, max_vcpus)):
            t.write(f"{home}/cpu/{cpu}/availability", "online" if cpu < vcpus else "offline")
        t.mkdir(f"{home}/memory", perms=read_only)
        t.write(f"{home}/memory/static-max", str(max(memory_kib, max_memory_kib)))
        t.write(f"{home}/memory/target", str(memory_kib))
        t.mkdir(f"{home}/device", perms=guest_owned)
        t.mkdir(f"{home}/data", perms=guest_owned)
    store.introduce_domain()
