"""End to end: `hospes vcpu-set` takes a guest's vCPUs down and brings them back, as xl does.

A Debian guest is created with vcpus=1 and maxvcpus=2: it boots with its
second vCPU offline (the store's cpu/1/availability says so), then follows
every `hospes vcpu-set` through the store: Linux's xen-cpu-hotplug watch takes
the vCPU down (VCPUOP_down) or up (VCPUOP_up) and `nproc` in the guest follows.
Counts outside 1..maxvcpus are refused with the reason.
"""

from __future__ import annotations

import time
from typing import Iterator

import pytest

from hospes.toolstack.client import HospesApiError
from toolstack_helpers import REPO, Hospesd

pytestmark = [pytest.mark.kvm, pytest.mark.debian]

CONFIG = str(REPO / "examples" / "debian-pv.cfg")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, default_images) -> Iterator[Hospesd]:
    d = Hospesd(tmp_path_factory.mktemp("vcpuset"))
    try:
        d.start()
        r = d.cli("create", CONFIG, 'name="hot"', "memory=192", "vcpus=1", "maxvcpus=2", timeout=600)
        assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
        d.client().domain("hot").wait_for_console("hospes: userspace up", timeout=600)
        yield d
    finally:
        d.close()


def nproc_becomes(d: Hospesd, want: int, timeout: float = 120) -> None:
    dom = d.client().domain("hot")
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = dom.run("nproc").output.strip()
        if seen == str(want):
            return
        time.sleep(1)
    pytest.fail(f"nproc in the guest stayed {seen!r}, not {want}; console:\n{dom.console_log(tail=3000)}")


def test_vcpu_set_moves_the_guest_between_one_and_two_vcpus(daemon: Hospesd) -> None:
    nproc_becomes(daemon, 1)                       # maxvcpus 2, but it booted with vcpus=1
    for count in (2, 1, 2):
        r = daemon.cli("vcpu-set", "hot", str(count), timeout=120)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        nproc_becomes(daemon, count)
        online = [v["online"] for v in daemon.client().domain("hot").vcpus()]
        assert len(online) == 2


def test_vcpu_set_refuses_counts_outside_one_to_maxvcpus(daemon: Hospesd) -> None:
    r = daemon.cli("vcpu-set", "hot", "3", timeout=120)
    assert r.returncode != 0 and b"between 1 and 2 vCPUs" in r.stderr, r.stderr
    with pytest.raises(HospesApiError) as e:
        daemon.client().domain("hot").set_vcpus(0)
    assert e.value.status == 400
    status, body = daemon.json("PUT", "/v1/domains/hot/vcpus", {"vcpus": "two"})
    assert status == 400, body


def test_the_count_is_kept_for_the_next_boot(daemon: Hospesd) -> None:
    """The config said vcpus=1; after `vcpu-set hot 2` a reboot comes up with two."""
    assert daemon.cli("vcpu-set", "hot", "2", timeout=120).returncode == 0
    nproc_becomes(daemon, 2)
    dom = daemon.client().domain("hot")
    assert daemon.cli("reboot", "hot", timeout=120).returncode == 0
    deadline = time.monotonic() + 600
    while dom.console_log().count("hospes: userspace up") < 2 and time.monotonic() < deadline:
        time.sleep(2)
    assert dom.console_log().count("hospes: userspace up") >= 2, dom.console_log(tail=3000)
    nproc_becomes(daemon, 2)
