"""`hospes image` options for disk images and other suites, without the network.

The slow, networked build itself is exercised by tests/test_rootfs_guest.py; these
check what is decided before it (options, cache keys, errors) and that a
merged-/usr kernel package (trixie's layout) is accepted by the default-image build.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import run_hospes
from hospes.images.cache import ImagesError
from hospes.images.debian import Package, Selection, build
from hospes.images.rootfs import RootfsOptions, _setup_script, load_cached


def test_options_are_checked_before_anything_runs() -> None:
    RootfsOptions().check()
    for bad, message in ((RootfsOptions(suite="sid"), "Unknown suite"),
                         (RootfsOptions(size=100 << 20), "below 1024 MiB"),
                         (RootfsOptions(packages=("vim", "rm -rf")), "Not a Debian package name: rm -rf"),
                         (RootfsOptions(address="10.0.0.1"), "Invalid address"),
                         (RootfsOptions(hostname="a_b"), "Invalid host name")):
        with pytest.raises(ImagesError, match=message):
            bad.check()


def test_cache_key_follows_every_option() -> None:
    base = RootfsOptions()
    keys = {base.key(), RootfsOptions(suite="trixie").key(), RootfsOptions(size=4 << 30).key(),
            RootfsOptions(packages=("vim",)).key(), RootfsOptions(ssh_key="ssh-ed25519 AAAA k").key(),
            RootfsOptions(address="169.254.7.7/16").key()}
    assert len(keys) == 6 and RootfsOptions().key() == base.key()


def test_setup_script_gets_the_settings_quoted() -> None:
    script = _setup_script(RootfsOptions(ssh_key="ssh-ed25519 AAAA it's me\n"))
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "HOSPES_SSH_KEY='ssh-ed25519 AAAA it'\"'\"'s me'" in lines
    p = subprocess.run(["sh", "-c", "\n".join(lines[1:4]) + '\nprintf %s "$HOSPES_SSH_KEY"'], capture_output=True)
    assert p.stdout == b"ssh-ed25519 AAAA it's me"


def test_cli_refuses_rootfs_options_alone_and_bad_sizes(tmp_path: Path) -> None:
    p = run_hospes("image", "--cache-dir", str(tmp_path), "--size", "4G")
    assert p.returncode != 0 and b"--size goes with --rootfs" in p.stderr
    p = run_hospes("image", "--cache-dir", str(tmp_path), "--rootfs", "--size", "lots")
    assert p.returncode != 0 and b"is not a size" in p.stderr
    p = run_hospes("image", "--cache-dir", str(tmp_path), "--rootfs", "--packages", "a;b")
    assert p.returncode != 0 and b"Not a Debian package name" in p.stderr
    assert not (tmp_path / "rootfs").exists() or not any((tmp_path / "rootfs").glob("*/disk.img"))


def test_a_cached_image_with_a_wrong_size_is_not_used(tmp_path: Path) -> None:
    (tmp_path / "disk.img").write_bytes(b"x" * 10)
    (tmp_path / "manifest.json").write_text('{"format": 1, "size": 11, "suite": "bookworm"}')
    assert load_cached(tmp_path) is None
    (tmp_path / "manifest.json").write_text('{"format": 1, "size": 10, "suite": "bookworm", "kernel_version": "k"}')
    image = load_cached(tmp_path)
    assert image is not None and image.kernel_version == "k"


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_merged_usr_kernel_package_builds(tmp_path: Path) -> None:
    """trixie's kernel packages keep modules in usr/lib/modules and busybox in usr/bin."""
    release = "6.12.0-test-cloud-amd64"

    def deb(name: str, files: dict[str, bytes]) -> Path:
        tree = tmp_path / name
        for rel, data in files.items():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_bytes(data)
        (tree / "DEBIAN").mkdir()
        (tree / "DEBIAN" / "control").write_text(f"Package: {name}\nVersion: 1\nArchitecture: amd64\n"
                                                 "Maintainer: t <t@example.org>\nDescription: test\n")
        out = tmp_path / f"{name}.deb"
        subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(out)], check=True,
                       capture_output=True)
        return out

    bzimage = bytearray(4096)
    bzimage[0x202:0x206] = b"HdrS"
    modules = f"usr/lib/modules/{release}"
    kernel = deb("linux-image-test", {
        f"boot/vmlinuz-{release}": bytes(bzimage),
        f"{modules}/kernel/.keep": b"",
        f"{modules}/modules.builtin": b"kernel/drivers/block/xen-blkfront.ko\nkernel/drivers/net/xen-netfront.ko\n",
    })
    busybox = deb("busybox-static", {"usr/bin/busybox": b"\x7fELF busybox"})
    root = tmp_path / "cache"
    root.mkdir()
    selection = Selection(Package(f"linux-image-{release}", "1", 0), Package("busybox-static", "1", 0))
    images = build(root, selection, {selection.kernel.name: kernel, "busybox-static": busybox}, lambda m: None)
    assert images.kernel.read_bytes() == bytes(bzimage) and images.kernel_version == release
    assert images.initramfs.stat().st_size > 0


def test_old_cached_images_are_pruned(tmp_path: Path) -> None:
    import os

    from hospes.images.rootfs import KEEP_IMAGES, _prune

    dirs = []
    for i in range(KEEP_IMAGES + 2):
        d = tmp_path / f"bookworm-{i}"
        d.mkdir()
        (d / "manifest.json").write_text("{}")
        os.utime(d / "manifest.json", (1000 + i, 1000 + i))
        dirs.append(d)
    (tmp_path / "test-ssh-key").mkdir()   # not an image: never pruned
    _prune(tmp_path, keep=dirs[0])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["test-ssh-key", dirs[0].name] + [d.name for d in dirs[-(KEEP_IMAGES - 1):]])
