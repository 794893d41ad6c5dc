"""The toolstack's half of a xenbus device: its two xenstore directories.

Every split device has a frontend directory the guest owns
(``/local/domain/<D>/device/<kind>/<id>``) and a backend directory domain 0
owns but the guest may read (``/local/domain/0/backend/<kind>/<D>/<id>``); each
names the other, and their ``state`` nodes drive the handshake (io/xenbus.h:
1 Initialising, 2 InitWait, 3 Initialised, 4 Connected, 5 Closing, 6 Closed).
A frontend that cannot read its backend directory refuses the device
("missing or inaccessible"), hence the permissions.
"""

from __future__ import annotations

from collections.abc import Mapping

from hospes.pv.store import Store


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
        t.write(f"{back}/state", "2")
        t.write(f"{front}/backend", back)
        t.write(f"{front}/backend-id", "0")
        for key, value in frontend.items():
            t.write(f"{front}/{key}", value)
        t.write(f"{front}/state", "1")
