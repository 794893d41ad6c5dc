"""The backend xenbus state machine against a fake device and a real store."""

from __future__ import annotations

import time

import pytest

from hospes.devices.xenbus import XenbusBackend, XenbusState, device_paths, publish_device
from hospes.pv.store import Store, populate_domain

D = 2


class Device:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.refuse = False

    def connect(self) -> dict[str, str]:
        self.calls.append("connect")
        if self.refuse:
            raise ValueError("no ring")
        return {"sectors": "8"}

    def activate(self) -> None:
        self.calls.append("activate")

    def disconnect(self) -> None:
        self.calls.append("disconnect")


@pytest.fixture()
def rig():
    store = Store()
    populate_domain(store, D, "t", "00000000-0000-0000-0000-000000000002", 1, 256)
    front, back = device_paths(D, "vbd", 51712)
    publish_device(store, D, front, back, backend={}, frontend={})
    dev = Device()
    xb = XenbusBackend(store, front, back, dev, name="test")
    xb.start()
    yield store, front, back, dev, xb
    xb.close()


def test_values_are_io_xenbus_h() -> None:
    assert [int(s) for s in XenbusState] == list(range(9))
    assert XenbusState.CONNECTED.node == "4"


def test_connect_close_and_start_over(rig) -> None:
    store, front, back, dev, xb = rig
    assert store.read(f"{back}/state") == b"2" and dev.calls == []
    store.write(f"{front}/state", "3")
    assert store.read(f"{back}/state") == b"4" and store.read(f"{back}/sectors") == b"8"
    assert dev.calls == ["connect", "activate"] and xb.state is XenbusState.CONNECTED
    store.write(f"{front}/state", "4")            # nothing new: already connected
    assert dev.calls == ["connect", "activate"]
    store.write(f"{front}/state", "5")
    assert store.read(f"{back}/state") == b"5" and dev.calls[-1] == "disconnect"
    store.write(f"{front}/state", "6")
    assert store.read(f"{back}/state") == b"6"
    store.write(f"{front}/state", "3")            # not from Closed: the frontend must start over
    assert store.read(f"{back}/state") == b"6"
    store.write(f"{front}/state", "1")
    assert store.read(f"{back}/state") == b"2"
    store.write(f"{front}/state", "4")            # netfront goes straight to Connected
    assert store.read(f"{back}/state") == b"4" and xb.state is XenbusState.CONNECTED


def test_an_unusable_frontend_is_closed(rig) -> None:
    store, front, back, dev, xb = rig
    dev.refuse = True
    store.write(f"{front}/state", "3")
    assert store.read(f"{back}/state") == b"6" and dev.calls == ["connect", "disconnect"]
    assert not store.exists(f"{back}/sectors")


def test_a_vanished_frontend_closes_the_backend(rig) -> None:
    store, front, back, _dev, xb = rig
    store.write(f"{front}/state", "3")
    store.rm(front)
    assert store.read(f"{back}/state") == b"6" and xb.state is XenbusState.CLOSED


def test_fail_publishes_closed_from_another_thread(rig) -> None:
    store, front, back, _dev, xb = rig
    store.write(f"{front}/state", "3")
    xb.fail("the ring is broken")
    deadline = time.monotonic() + 5
    while store.read(f"{back}/state") != b"6" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.read(f"{back}/state") == b"6" and xb.state is XenbusState.CLOSED


def test_a_restored_machine_keeps_its_state(rig) -> None:
    store, front, back, _dev, xb = rig
    store.write(f"{front}/state", "3")
    xb.close()
    dev2 = Device()
    again = XenbusBackend(store, front, back, dev2, name="again", state=xb.state)
    again.start()                                # the watch fires once at once
    assert dev2.calls == [] and again.state is XenbusState.CONNECTED
    store.write(f"{front}/state", "5")
    assert store.read(f"{back}/state") == b"5" and dev2.calls == ["disconnect"]
    again.close()


def test_a_conflicting_commit_of_connected_is_retried(rig, monkeypatch) -> None:
    store, front, back, dev, xb = rig
    real = store.transaction
    conflicts = []

    def conflicting():
        t = real()
        if not conflicts:
            conflicts.append(1)
            store.write(f"{back}/sectors", "7")   # the toolstack writes after the snapshot: EAGAIN
        return t

    monkeypatch.setattr(store, "transaction", conflicting)
    store.write(f"{front}/state", "3")
    assert conflicts and store.read(f"{back}/state") == b"4" and store.read(f"{back}/sectors") == b"8"
    assert dev.calls == ["connect", "activate"]
