"""An unexpected exception on any thread of a domain ends that domain, and only it.

Issue 13.4: a Hospes bug reached by a guest must never leave a domain half
alive (a dead backend thread, a console that no longer moves) nor take the
process down. Each thread kind gets a fault injected (a method monkeypatched
to raise): the block and net backend workers and the xenbus failure thread
on their own (no KVM), then in a real domain running a tiny test kernel: a
backend worker, the console, the store, the timer thread and the vCPU exit
path. The domain must end as crashed, with what failed, the exception,
every vCPU's registers and the traceback in its log, and the process must
run another domain to completion afterwards.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from hospes.devices.block import BlockBackend, DiskConfig
from hospes.devices.host import BackendHost
from hospes.devices.net import NetBackend, VifConfig
from hospes.devices.xenbus import XenbusBackend, XenbusState
from hospes.domain import Domain, DomainConfig, ShutdownReason, ShutdownResult
from hospes.machine.memory import GuestMemory
from hospes.pv.layout import Layout
from hospes.pv.store import Store, populate_domain
from hospes.kvm import constants as kc
from hospes.pv.vcpu import PvVcpu, install_kick_handler
from conftest import guest_build
from device_helpers import make_host

D = 3
WAIT = 30.0   # generous: the machine is shared


class Failures:
    """A backend host's failure hook that records and signals."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, BaseException]] = []
        self.event = threading.Event()

    def __call__(self, what: str, error: BaseException) -> None:
        self.seen.append((what, error))
        self.event.set()


@pytest.fixture()
def host(tmp_path: Path) -> Iterator[tuple[BackendHost, Failures, Path]]:
    lay = Layout(ram_pages=64, nr_vcpus=1)
    mem = GuestMemory([("ram", lay.ram_bytes), ("xen", 64 * 4096), ("hv", 4096)])
    store = Store()
    populate_domain(store, D, "t", "00000000-0000-0000-0000-000000000003", 1, 256)
    h = make_host(D, mem, lay, store)
    failures = Failures()
    h.failed = failures
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(64 * 1024))
    yield h, failures, image
    mem.close()


def _broken(*_: object, **__: object) -> None:
    raise RuntimeError("injected fault")


# --- the backend threads on their own --------------------------------------------------------------


def test_a_block_worker_exception_reaches_the_failure_hook(host, monkeypatch: pytest.MonkeyPatch) -> None:
    h, failures, image = host
    monkeypatch.setattr(BlockBackend, "_drain", _broken)
    b = BlockBackend(h, DiskConfig(image))
    try:
        b.connected = True
        b.notify()
        assert failures.event.wait(WAIT)
        (what, error), = failures.seen
        assert what == f"block backend {b.disk.vdev}" and str(error) == "injected fault"
        b._thread.join(WAIT)
        assert not b._thread.is_alive()
    finally:
        b.close()


def test_a_net_worker_exception_reaches_the_failure_hook(host, monkeypatch: pytest.MonkeyPatch) -> None:
    h, failures, _ = host
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    monkeypatch.setattr(NetBackend, "_tx_drain", _broken)
    b = NetBackend(h, VifConfig(mac="00:16:3e:00:00:03"), tap_fd=ours.fileno())
    try:
        with b._lock:
            b.connected = True
        b.notify()
        assert failures.event.wait(WAIT)
        (what, error), = failures.seen
        assert what.startswith("net backend ") and str(error) == "injected fault"
        b._thread.join(WAIT)
        assert not b._thread.is_alive()
    finally:
        b.close()
        ours.close()
        theirs.close()


def test_a_xenbus_failure_thread_exception_reaches_the_failure_hook(host) -> None:
    h, failures, _ = host

    class Device:
        def connect(self) -> dict[str, str]:
            return {}

        def activate(self) -> None: ...

        def disconnect(self) -> None: ...

    xb = XenbusBackend(h.store, f"/local/domain/{D}/device/vbd/1", "/local/domain/0/backend/vbd/3/1", Device(),
                       name="vbd test", state=XenbusState.CONNECTED, failed=failures)
    h.store.write = _broken   # type: ignore[method-assign]
    xb.fail("the ring is broken")
    assert failures.event.wait(WAIT)
    (what, error), = failures.seen
    assert what == "vbd test xenbus" and str(error) == "injected fault"


# --- a real domain ------------------------------------------------------------------------------------


class Run:
    """A domain running the tiny ``hello`` kernel, paused (so it lives until the fault), on a thread."""

    def __init__(self, tmp_path: Path, start_paused: bool = True) -> None:
        image = tmp_path / "disk.img"
        image.write_bytes(bytes(64 * 1024))
        self.log: list[bytes] = []
        config = DomainConfig(kernel=guest_build.build_guest("hello"), memory_mib=32, disks=(DiskConfig(image),))
        self.dom = Domain(config, console_out=lambda b: None, hypervisor_log=self.log.append)
        if start_paused:
            self.dom.pause()
        self.result: ShutdownResult | None = None
        install_kick_handler()   # Domain.run does it too, but only the main thread may
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.result = self.dom.run()

    def wait(self) -> ShutdownResult:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the domain did not end"
        assert self.result is not None
        return self.result

    def close(self) -> None:
        if self.thread.is_alive():
            self.dom.destroy()
            self.thread.join(WAIT)
        self.dom.close()


@pytest.fixture()
def run(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def make(**kw: bool) -> Run:
        r = Run(tmp_path, **kw)
        runs.append(r)
        return r

    yield make
    for r in runs:
        r.close()


def assert_crashed_by_a_bug(r: Run, what: str) -> None:
    result = r.wait()
    assert result.reason is ShutdownReason.CRASH, result
    assert f"{what}: Hospes internal error (a bug; please report it): RuntimeError: injected fault" in result.message
    assert "vCPU 0:" in result.message and "rip=" in result.message     # the register dump
    log = b"".join(r.log).decode()
    assert "Traceback (most recent call last)" in log and "RuntimeError: injected fault" in log


def assert_the_process_runs_another_domain(run: Callable[..., Run]) -> None:
    result = run(start_paused=False).wait()
    assert result.reason is ShutdownReason.POWEROFF, result


@pytest.mark.kvm
def test_a_block_worker_fault_ends_its_domain_only(run, monkeypatch: pytest.MonkeyPatch) -> None:
    r = run()
    disk = r.dom.disks[0]
    monkeypatch.setattr(BlockBackend, "_drain", _broken)
    disk.connected = True
    disk.notify()
    assert_crashed_by_a_bug(r, f"block backend {disk.disk.vdev}")
    monkeypatch.undo()
    assert_the_process_runs_another_domain(run)


@pytest.mark.kvm
def test_a_console_fault_ends_its_domain_only(run, monkeypatch: pytest.MonkeyPatch) -> None:
    r = run()
    monkeypatch.setattr(r.dom.console, "queue_input", _broken)
    r.dom.console_input(b"ls\n")     # as the console-input or control thread does
    assert_crashed_by_a_bug(r, "console")
    assert_the_process_runs_another_domain(run)


@pytest.mark.kvm
def test_a_store_fault_ends_its_domain_only(run, monkeypatch: pytest.MonkeyPatch) -> None:
    r = run()
    monkeypatch.setattr(r.dom.store_conn, "service", _broken)
    r.dom._store_event()   # what the guest's EVTCHNOP_send on the store port runs, on its vCPU thread
    assert_crashed_by_a_bug(r, "xenstore")
    assert_the_process_runs_another_domain(run)


@pytest.mark.kvm
def test_a_timer_thread_fault_ends_its_domain_only(run) -> None:
    r = run()
    r.dom.pv.timers.call_later(0, _broken)
    assert_crashed_by_a_bug(r, "timer thread")
    assert_the_process_runs_another_domain(run)


@pytest.mark.kvm
def test_a_vcpu_exit_path_fault_ends_its_domain_only(run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PvVcpu, "_hypercall", _broken)
    r = run(start_paused=False)
    assert_crashed_by_a_bug(r, f"vCPU 0 after KVM exit {kc.KVM_EXIT_IO}")
    monkeypatch.undo()
    assert_the_process_runs_another_domain(run)
