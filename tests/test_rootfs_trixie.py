"""Debian 13: a `hospes image --rootfs --suite trixie` disk booted by its own 6.12 kernel with pygrub.

The image is the one `hospes image --rootfs --suite trixie` builds and caches (no SSH
key, default options: .ci/run builds it before the tests, so this test only finds it),
copied for the guest. Kept to one boot for CI's time: examples/debian-disk.cfg with the
copy as its disk and no vif (nothing to reach over a network here; the bookworm test does
SSH), to the login prompt, then systemd's state and the running kernel through
`hospes exec`. About 2-4 minutes with the image cached.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hospes.images.rootfs import RootfsImage, RootfsOptions, ensure_rootfs
from rootfs_helpers import assert_running, guest, wait_for_login
from toolstack_helpers import Hospesd

pytestmark = [pytest.mark.kvm, pytest.mark.debian]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "debian-disk.cfg"


@pytest.fixture(scope="module")
def trixie_rootfs() -> RootfsImage:
    t0 = time.monotonic()
    image = ensure_rootfs(RootfsOptions(suite="trixie"), log=lambda m: print(m, flush=True))
    print(f"trixie rootfs image ready in {time.monotonic() - t0:.0f} s: {image.path}")
    return image


@pytest.fixture()
def daemon(tmp_path: Path) -> Iterator[Hospesd]:
    d = Hospesd(tmp_path)
    try:
        yield d.start()
    finally:
        d.close()


@pytest.mark.timeout(2400)
def test_trixie_disk_boots_its_612_kernel_with_pygrub(trixie_rootfs: RootfsImage, daemon: Hospesd,
                                                     tmp_path: Path) -> None:
    assert trixie_rootfs.suite == "trixie" and trixie_rootfs.kernel_version.startswith("6.12")
    disk = tmp_path / "trixie-disk.img"
    subprocess.run(["cp", "--sparse=always", str(trixie_rootfs.path), str(disk)], check=True)
    name = "debian-disk"
    p = daemon.cli("create", "-q", str(EXAMPLE), f"disk=['{disk},raw,xvda,rw']", "vif=[]", timeout=300)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    print(f"login prompt after {wait_for_login(daemon, name, 0):.0f} s")
    assert_running(daemon, name)
    assert guest(daemon, name, "uname -r").strip() == trixie_rootfs.kernel_version
    assert "VERSION_ID=\"13\"" in guest(daemon, name, "cat /etc/os-release")
    assert f"BOOT_IMAGE=/boot/vmlinuz-{trixie_rootfs.kernel_version}" in guest(daemon, name, "cat /proc/cmdline")
    p = daemon.cli("destroy", name, timeout=120)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
