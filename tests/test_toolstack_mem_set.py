"""End to end: `hospes mem-set` shrinks a Debian guest and grows it back, as xl does.

The domain process writes memory/target; Linux's balloon driver follows it,
giving pages back with XENMEM_decrease_reservation (Hospes punches them out
of the domain's memfd, so the host really gets the memory) and taking them
again with XENMEM_populate_physmap. What is measured: the guest's MemTotal,
and the domain process's resident shared memory (the guest RAM is a memfd
mapping, so it is RssShmem that moves; VmRSS moves with it). A guest built
with maxmem above memory starts smaller and can grow past its boot size.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

import pytest

from hospes.toolstack.client import HospesApiError
from toolstack_helpers import REPO, Hospesd

pytestmark = [pytest.mark.kvm, pytest.mark.debian]

CONFIG = str(REPO / "examples" / "debian-pv.cfg")
MIB = 1024


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, default_images) -> Iterator[Hospesd]:
    d = Hospesd(tmp_path_factory.mktemp("memset"))
    try:
        d.start()
        yield d
    finally:
        d.close()


def create(d: Hospesd, name: str, *settings: str) -> None:
    r = d.cli("create", CONFIG, f'name="{name}"', *settings, timeout=600)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    d.client().domain(name).wait_for_console("hospes: userspace up", timeout=600)


def mem_total_kib(d: Hospesd, name: str) -> int:
    out = d.client().domain(name).run("grep MemTotal /proc/meminfo").output
    return int(out.split()[1])


def rss_shmem_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssShmem:"):
                return int(line.split()[1]) // MIB
    raise AssertionError("no RssShmem line")


def settles(what: str, probe: Callable[[], int], ok: Callable[[int], bool], d: Hospesd, name: str,
            timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    seen = probe()
    while not ok(seen) and time.monotonic() < deadline:
        time.sleep(2)
        seen = probe()
    if not ok(seen):
        pytest.fail(f"{what} stayed at {seen}; console:\n{d.client().domain(name).console_log(tail=3000)}")
    return seen


def listed_mem_mib(d: Hospesd, name: str) -> int:
    return int(d.client().domain(name).info["memory_mib"])


def test_mem_set_shrinks_a_512_mib_guest_to_128_and_grows_it_back(daemon: Hospesd) -> None:
    create(daemon, "bal", "memory=512", "maxmem=512")
    dom = daemon.client().domain("bal")
    pid = int(dom.info["pid"])
    full = mem_total_kib(daemon, "bal")
    assert full > 400 * MIB
    # Make the guest's memory resident on the host: fill a tmpfs, then free it.
    fill = dom.run("mkdir -p /mnt/fill && mount -t tmpfs -o size=420m tmpfs /mnt/fill && "
                   "dd if=/dev/zero of=/mnt/fill/x bs=1M count=400 2>/dev/null; rm /mnt/fill/x; "
                   "umount /mnt/fill; echo done", timeout=300)
    assert "done" in fill.output, fill.output
    resident = rss_shmem_mib(pid)
    assert resident > 400, resident

    r = daemon.cli("mem-set", "bal", "128m", timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    small = settles("MemTotal", lambda: mem_total_kib(daemon, "bal"), lambda kib: kib <= 128 * MIB, daemon, "bal")
    assert small < full - 300 * MIB
    assert settles("The listed memory", lambda: listed_mem_mib(daemon, "bal"), lambda m: m <= 130, daemon, "bal")
    given_back = resident - rss_shmem_mib(pid)
    assert given_back >= 300, f"the domain process holds only {given_back} MiB less after mem-set 128m"
    assert dom.run("echo still alive").output.strip() == "still alive"

    r = daemon.cli("mem-set", "bal", "512", timeout=120)      # no suffix: MiB, as xl
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    settles("MemTotal", lambda: mem_total_kib(daemon, "bal"), lambda kib: kib >= full, daemon, "bal")
    assert settles("The listed memory", lambda: listed_mem_mib(daemon, "bal"), lambda m: m == 512, daemon, "bal")
    # The pages it took again work: fill them.
    fill = dom.run("mount -t tmpfs -o size=300m tmpfs /mnt/fill && dd if=/dev/zero of=/mnt/fill/x bs=1M "
                   "count=280 2>/dev/null; ls -l /mnt/fill/x; rm /mnt/fill/x; umount /mnt/fill", timeout=300)
    assert str(280 * MIB * MIB) in fill.output, fill.output


def test_a_ballooned_guest_is_saved_and_restored_small(daemon: Hospesd, tmp_path) -> None:
    """The released frames are part of the saved state: the restored domain holds
    as little as the saved one (they are punched out of its memory again) and can
    still grow back."""
    assert daemon.cli("mem-set", "bal", "128", timeout=120).returncode == 0
    settles("MemTotal", lambda: mem_total_kib(daemon, "bal"), lambda kib: kib <= 128 * MIB, daemon, "bal")
    settles("The listed memory", lambda: listed_mem_mib(daemon, "bal"), lambda m: m <= 130, daemon, "bal")
    pid = int(daemon.client().domain("bal").info["pid"])
    r = daemon.cli("save", "-c", "bal", str(tmp_path / "checkpoint.hsv"), timeout=600)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert rss_shmem_mib(pid) < 250             # the copy read the released frames; they went back again
    saved = tmp_path / "bal.hsv"
    r = daemon.cli("save", "bal", str(saved), timeout=600)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    r = daemon.cli("restore", str(saved), timeout=600)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    dom = daemon.client().domain("bal")
    assert listed_mem_mib(daemon, "bal") <= 130
    assert mem_total_kib(daemon, "bal") <= 128 * MIB
    assert rss_shmem_mib(int(dom.info["pid"])) < 250
    assert daemon.cli("mem-set", "bal", "512m", timeout=120).returncode == 0
    assert settles("The listed memory", lambda: listed_mem_mib(daemon, "bal"), lambda m: m == 512, daemon, "bal")


def test_mem_set_refuses_targets_outside_16_mib_to_maxmem(daemon: Hospesd) -> None:
    r = daemon.cli("mem-set", "bal", "513m", timeout=120)
    assert r.returncode != 0 and b"maxmem (512 MiB)" in r.stderr, r.stderr
    r = daemon.cli("mem-set", "bal", "12x", timeout=120)
    assert r.returncode != 0 and b"invalid memory size" in r.stderr, r.stderr
    with pytest.raises(HospesApiError) as e:
        daemon.client().domain("bal").set_memory("8m")
    assert e.value.status == 400 and "between 16 MiB" in str(e.value)
    status, body = daemon.json("PUT", "/v1/domains/bal/memory", {"target_kib": "lots"})
    assert status == 400, body
    assert daemon.cli("destroy", "bal", timeout=120).returncode == 0


def test_a_guest_with_maxmem_above_memory_grows_past_its_boot_size(daemon: Hospesd) -> None:
    create(daemon, "grow", "memory=192", "maxmem=384")
    dom = daemon.client().domain("grow")
    boot = mem_total_kib(daemon, "grow")
    assert boot < 192 * MIB
    assert listed_mem_mib(daemon, "grow") == 192
    pid = int(dom.info["pid"])
    assert rss_shmem_mib(pid) < 300            # the RAM above memory was never given to it
    assert dom.set_memory(384)["target_kib"] == 384 * MIB
    settles("MemTotal", lambda: mem_total_kib(daemon, "grow"), lambda kib: kib > boot + 150 * MIB, daemon, "grow")
    assert settles("The listed memory", lambda: listed_mem_mib(daemon, "grow"), lambda m: m == 384, daemon, "grow")
    fill = dom.run("mkdir -p /mnt/fill && mount -t tmpfs -o size=300m tmpfs /mnt/fill && dd if=/dev/zero "
                   "of=/mnt/fill/x bs=1M count=250 2>/dev/null; ls -l /mnt/fill/x; rm /mnt/fill/x; umount /mnt/fill",
                   timeout=300)
    assert str(250 * MIB * MIB) in fill.output, fill.output
    assert daemon.cli("destroy", "grow", timeout=120).returncode == 0
