"""What the block and net backend tests share: a fake event-channel table and a device host."""

from __future__ import annotations

from hospes.devices.host import BackendHost
from hospes.machine.memory import GuestMemory
from hospes.pv.grant import GrantTable
from hospes.pv.layout import MAX_GRANT_FRAMES, Layout
from hospes.pv.mmu import PvMmu
from hospes.pv.store import Store


class FakeEvtchn:
    """Records binds and notifications; a notification counts only from the endpoint bound to the port."""

    def __init__(self) -> None:
        self.bound: dict[int, object] = {}
        self.notified: list[int] = []

    def bind_interdomain_local(self, port: int, backend: object) -> None:
        self.bound[port] = backend

    def notify_backend_port(self, port: int, backend: object = None) -> None:
        if backend is None or self.bound.get(port) is backend:
            self.notified.append(port)


def make_grants(mem: GuestMemory, lay: Layout, frames: int = 1) -> GrantTable:
    """A grant table over a fresh MMU (``grants.types``: the page types a backend's references go to)."""
    types = PvMmu(mem, lay.ram_pages, lay.guest_frames, {})
    grants = GrantTable(mem, base_gpa=lay.grant_frame_gpa(0), max_frames=MAX_GRANT_FRAMES, ram_frames=lay.ram_pages,
                        types=types)
    grants.setup(frames)
    return grants


def make_host(domid: int, mem: GuestMemory, lay: Layout, store: Store, grant_frames: int = 1) -> BackendHost:
    return BackendHost(domid=domid, mem=mem, grants=make_grants(mem, lay, grant_frames), evtchn=FakeEvtchn(),
                       store=store)
