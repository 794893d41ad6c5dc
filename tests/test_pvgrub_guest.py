"""End to end: Debian's PV GRUB (pvgrub2) as the domain's kernel boots the kernel on its disk.

PV GRUB is a Xen PV kernel of its own: it reads the guest's disk through its
blkfront, follows the disk's ``/boot/grub/grub.cfg`` and loads the kernel
there with its Xen loader, which gives that kernel a start of day of its own
making: new page tables, a p2m list mapped outside the kernel's map, and the
console and store frames moved to the end of the pfn space, told to the M2P
with ``MMU_MACHPHYS_UPDATE``. Before Hospes kept a real M2P, Linux read the
unchanged identity back and ended in ``kernel BUG at arch/x86/xen/mmu_pv.c:201``.

The disk holds Debian's cloud kernel as a gzipped vmlinux (GRUB 2.06 cannot
unpack the bzImage's LZ4 payload) and Hospes' initramfs. The guest is then
saved and restored: the M2P changes PV GRUB made are part of its state.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from hospes.domain import DomainState
from hospes.images.pvgrub import ensure_pvgrub, write_vmlinux
from hospes.migrate.stream import RecordType, read_records
from hospes.pv.image.bzimage import extract_vmlinux
from hospes.state import decode
from toolstack_helpers import Hospesd

pytestmark = [pytest.mark.kvm, pytest.mark.debian]

MARK = "hospes.booted_by=pvgrub2"
GRUB_CFG = f"""set timeout=0
menuentry 'Debian (vmlinux) via PV GRUB' {{
  linux /boot/vmlinux.gz console=hvc0 {MARK}
  initrd /boot/initrd
}}
"""


def make_disk(root: Path, images) -> Path:
    """An ext4 disk (mkfs.ext4 -d, no mounts) with /boot/grub/grub.cfg, the kernel and the initrd."""
    tree = root / "tree"
    (tree / "boot" / "grub").mkdir(parents=True)
    _, elf = extract_vmlinux(images.kernel.read_bytes(), str(images.kernel))
    write_vmlinux(bytes(elf), tree / "boot" / "vmlinux.gz")
    (tree / "boot" / "initrd").write_bytes(images.initramfs.read_bytes())
    (tree / "boot" / "grub" / "grub.cfg").write_text(GRUB_CFG)
    disk = root / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(128 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(disk)], check=True, capture_output=True)
    return disk


def saved_m2p_changes(path: Path) -> tuple[tuple[int, int], ...]:
    with open(path, "rb") as f:
        for record in read_records(f):
            if record.type is RecordType.STATE:
                return decode(DomainState, record.json()).pv.m2p.changed
    raise AssertionError(f"{path} has no STATE record")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, default_images) -> Iterator[Hospesd]:
    root = tmp_path_factory.mktemp("pvgrub")
    disk = make_disk(root, default_images)
    pvgrub = ensure_pvgrub(log=lambda m: None)
    cfg = root / "pvgrub.cfg"
    cfg.write_text(f'name = "grubbed"\nkernel = "{pvgrub}"\nmemory = 384\nvcpus = 1\n'
                   f"disk = [ 'file:{disk},xvda,w' ]\n")
    d = Hospesd(root / "run")
    try:
        d.start()
        r = d.cli("create", str(cfg), timeout=600)
        assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
        yield d
    finally:
        d.close()


def test_pv_grub_boots_the_kernel_its_grub_cfg_names(daemon: Hospesd) -> None:
    dom = daemon.client().domain("grubbed")
    log = dom.wait_for_console("hospes: userspace up", timeout=600)
    assert "Booting `Debian (vmlinux) via PV GRUB'" in log, log[-3000:]
    out = dom.run("cat /proc/cmdline; cat /sys/hypervisor/type").output
    assert MARK in out and "xen" in out, out
    assert dom.run("echo $((6 * 7))").output.strip() == "42"


def test_a_pv_grub_booted_guest_is_saved_and_restored(daemon: Hospesd, tmp_path: Path) -> None:
    dom = daemon.client().domain("grubbed")
    dom.wait_for_console("hospes: userspace up", timeout=600)
    assert dom.run("echo before > /tmp/mark").exit_status == 0
    saved = tmp_path / "grubbed.hsv"
    r = daemon.cli("save", "grubbed", str(saved), timeout=600)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    # PV GRUB told the M2P where it moved frames; those entries are saved state.
    assert saved_m2p_changes(saved), "the save file holds no M2P changes"
    r = daemon.cli("restore", str(saved), timeout=600)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    dom = daemon.client().domain("grubbed")
    out = dom.run("cat /tmp/mark; ls /proc/1 >/dev/null && echo alive").output
    assert "before" in out and "alive" in out, out
