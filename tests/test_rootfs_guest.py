"""End to end: a Debian disk image from `hospes image --rootfs`, booted by its own kernel with pygrub.

The image is built once into the cache (about 3 minutes; the cache key includes
the SSH key, so the test key is kept in the cache too) and copied for the guest.
The guest is examples/debian-disk.cfg with the copy as its disk, under a hospesd
in a private network namespace whose bridge xenbr0 has 169.254.99.1/16 (the
image's fixed guest address is 169.254.99.2/16): nothing leaves this machine.

One test walks a guest's life, as a user would: login prompt, `hospes exec`
(which logs in on the console), systemd fully up, SSH over the vif, a file
written, a second kernel installed and made the default in grub.cfg, a reboot
(pygrub runs again and boots that kernel), a power off, and a new boot that
finds the file. The slowest test of the suite: about 3 boots of 2-4 minutes.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hospes.bootloader.diskimage import Filesystem, find_filesystems
from hospes.images import default_cache_dir
from hospes.images.rootfs import DEFAULT_ADDRESS, RootfsImage, RootfsOptions, ensure_rootfs
from netns_helpers import can_make_netns
from rootfs_helpers import BOOT_TIMEOUT, assert_running, guest, login_prompts, wait_for_login
from toolstack_helpers import Hospesd

pytestmark = [pytest.mark.kvm, pytest.mark.debian]

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "debian-disk.cfg"
GUEST_IP = DEFAULT_ADDRESS.split("/")[0]
HOST_CIDR = "169.254.99.1/16"


@pytest.fixture(scope="module")
def ssh_key() -> Path:
    """A key pair kept beside the cached images, so the image (keyed by it) is built once."""
    directory = default_cache_dir() / "rootfs" / "test-ssh-key"
    key = directory / "id_ed25519"
    if not key.exists() or not key.with_suffix(".pub").exists():
        directory.mkdir(parents=True, exist_ok=True)
        key.unlink(missing_ok=True)
        key.with_suffix(".pub").unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hospes-tests", "-f", str(key)],
                       check=True)
    return key


@pytest.fixture(scope="module")
def rootfs(ssh_key: Path) -> RootfsImage:
    t0 = time.monotonic()
    image = ensure_rootfs(RootfsOptions(ssh_key=ssh_key.with_suffix(".pub").read_text()),
                          log=lambda m: print(m, flush=True))
    print(f"rootfs image ready in {time.monotonic() - t0:.0f} s: {image.path}")
    return image


@pytest.mark.timeout(900)
def test_image_holds_what_the_guest_needs(rootfs: RootfsImage, ssh_key: Path) -> None:
    """Read back through pygrub's reader: the files rootfs-setup.sh promises."""
    with open(rootfs.path, "rb") as f:
        (region,) = find_filesystems(f, str(rootfs.path))
        fs = Filesystem(f, region)
        grub = fs.read("/boot/grub/grub.cfg", "grub.cfg").decode()
        assert f"linux\t/boot/vmlinuz-{rootfs.kernel_version} root=/dev/xvda ro console=hvc0" in grub
        assert fs.read("/etc/fstab", "fstab").decode().splitlines()[-1].startswith("/dev/xvda / ext4 ")
        assert fs.read("/root/.ssh/authorized_keys", "keys") == ssh_key.with_suffix(".pub").read_bytes()
        network = fs.read("/etc/systemd/network/50-xen-vif.network", "network").decode()
        assert "Driver=vif" in network and f"Address={DEFAULT_ADDRESS}" in network and "DHCP=ipv4" in network
        modules = fs.read("/etc/initramfs-tools/modules", "modules").decode().split()
        assert "xen-blkfront" in modules and "xen-netfront" in modules
        assert fs.resolve("/vmlinuz") == f"/boot/vmlinuz-{rootfs.kernel_version}"
        assert fs.read("/etc/hostname", "hostname") == b"debian\n"
        shadow = fs.read("/etc/shadow", "shadow").decode().splitlines()
        assert any(line.startswith("root::") for line in shadow), "root logs in on the console without a password"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture()
def netns_daemon(tmp_path: Path) -> Iterator[Hospesd]:
    if not can_make_netns() or shutil.which("nsenter") is None:
        pytest.fail("this test needs root, ip(8), nsenter(1) and /dev/net/tun")
    ns = f"hospes-rootfs{os.getpid()}"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    ip("netns", "add", ns)
    d = Hospesd(tmp_path, prefix=["nsenter", f"--net=/run/netns/{ns}"])
    d.ns = ns  # type: ignore[attr-defined]
    try:
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "add", "xenbr0", "type", "bridge")
        ip("-n", ns, "addr", "add", HOST_CIDR, "dev", "xenbr0")
        ip("-n", ns, "link", "set", "xenbr0", "up")
        yield d.start()
    finally:
        d.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.timeout(3600)
def test_debian_disk_boots_with_pygrub_logs_in_serves_ssh_and_keeps_its_files(
        rootfs: RootfsImage, ssh_key: Path, netns_daemon: Hospesd, tmp_path: Path) -> None:
    d = netns_daemon
    ns: str = d.ns  # type: ignore[attr-defined]
    disk = tmp_path / "debian-disk.img"
    subprocess.run(["cp", "--sparse=always", str(rootfs.path), str(disk)], check=True)
    name = "debian-disk"
    create = ("create", "-q", str(EXAMPLE), f"disk=['{disk},raw,xvda,rw']")
    t0 = time.monotonic()
    p = d.cli(*create, timeout=300)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    first = wait_for_login(d, name, 0)
    print(f"boot 1: login prompt after {first:.0f} s")

    # systemd reached its goal with no failed unit; this is a Xen guest; the vif is up.
    assert_running(d, name)
    assert guest(d, name, "cat /sys/hypervisor/type").strip() == "xen"
    assert f"inet {DEFAULT_ADDRESS}" in guest(d, name, "ip -4 addr show")
    token = secrets.token_hex(8)
    guest(d, name, f"echo {token} > /root/persist && sync")

    # SSH from the host side of the bridge with the key baked into the image.
    ssh = ["ip", "netns", "exec", ns, "ssh", "-i", str(ssh_key), "-o", "StrictHostKeyChecking=no",
           "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20", "-o", "BatchMode=yes",
           f"root@{GUEST_IP}"]
    deadline = time.monotonic() + 180
    while True:
        p = subprocess.run([*ssh, "cat /root/persist; hostname"], capture_output=True, timeout=120)
        if p.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    assert p.stdout.decode().split() == [token, "debian"]

    # A second kernel (a copy of the running one under a newer version) becomes grub.cfg's
    # default through the image's kernel hook; the reboot runs pygrub again and boots it.
    release = guest(d, name, "uname -r").strip()
    new = "9.9.9-hospes-test"
    guest(d, name, f"cp /boot/vmlinuz-{release} /boot/vmlinuz-{new} && "
                   f"cp /boot/initrd.img-{release} /boot/initrd.img-{new} && "
                   f"/etc/kernel/postinst.d/zz-hospes-update-grub {new} /boot/vmlinuz-{new} && sync")
    seen = login_prompts(d, name)
    p = d.cli("reboot", "-w", name, timeout=BOOT_TIMEOUT)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    second = wait_for_login(d, name, seen)
    print(f"boot 2 (reboot): login prompt after {second:.0f} s")
    cmdline = guest(d, name, "cat /proc/cmdline")
    assert f"BOOT_IMAGE=/boot/vmlinuz-{new}" in cmdline, cmdline
    assert guest(d, name, "cat /root/persist").strip() == token

    # Power off; a new domain from the same disk finds the file.
    p = d.cli("shutdown", "-w", name, timeout=600)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    seen = login_prompts(d, name)
    p = d.cli(*create, timeout=300)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    third = wait_for_login(d, name, seen)
    print(f"boot 3: login prompt after {third:.0f} s; whole test {time.monotonic() - t0:.0f} s")
    assert guest(d, name, "cat /root/persist").strip() == token
    assert_running(d, name)
    p = d.cli("destroy", name, timeout=120)
    assert p.returncode == 0
