"""Build the real default images from Debian packages (needs the Debian mirrors).

The build goes into a fresh cache directory once per module, so the first run
really downloads; the later tests check that the cache then serves without apt.
"""

from __future__ import annotations

import json
import lzma
import shutil
import stat
import struct
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import click
import pytest
import zstandard
from click.testing import CliRunner

from hospes.cli.image import register
from hospes.images import DefaultImages, ImagesError, encode_command, ensure_default_images
from hospes.images import cache, debian
from hospes.images.initramfs import ModuleTree, build_initramfs, modinfo
from test_images_cpio import Member, read_newc


def needs_debian(test):  # type: ignore[no-untyped-def]
    """Mark a test that downloads Debian packages (and so needs apt and the mirrors)."""
    skip = pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt (a Debian host)")
    return pytest.mark.debian(skip(test))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hospes-cache")


@pytest.fixture(scope="module")
def built(cache_dir: Path) -> tuple[DefaultImages, list[str]]:
    logs: list[str] = []
    return ensure_default_images(cache_dir=cache_dir, log=logs.append), logs


@pytest.fixture(scope="module")
def members(built: tuple[DefaultImages, list[str]]) -> dict[str, Member]:
    images, _ = built
    return {m.name: m for m in read_newc(images.initramfs.read_bytes())}


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Sequence[str]]]:
    """Record every host tool the image code runs."""
    calls: list[Sequence[str]] = []
    real_run = debian._run

    def recording_run(argv: Sequence[str], cwd: Path | None = None):  # type: ignore[no-untyped-def]
        calls.append(list(argv))
        return real_run(argv, cwd)

    monkeypatch.setattr(debian, "_run", recording_run)
    yield calls



@needs_debian
def test_first_build_downloads_and_lands_in_the_cache(cache_dir: Path,
                                                      built: tuple[DefaultImages, list[str]]) -> None:
    images, logs = built
    assert any(line.startswith("downloading linux-image-") for line in logs)
    assert images.kernel == cache_dir / "debian" / images.kernel_version / "vmlinuz"
    assert images.initramfs.parent == images.kernel.parent
    assert images.kernel_version.endswith("-cloud-amd64")
    assert {"xen-blkfront", "xen-netfront"} <= set(images.modules)
    leftovers = [p.name for p in (cache_dir / "debian").iterdir() if p.name.startswith(".build")]
    assert leftovers == []


@needs_debian
def test_kernel_is_a_bzimage(built: tuple[DefaultImages, list[str]]) -> None:
    images, _ = built
    header = images.kernel.read_bytes()[:0x300]
    assert header[0x202:0x206] == b"HdrS"
    assert header[0x1FE:0x200] == b"\x55\xaa"


@needs_debian
def test_initramfs_contents(built: tuple[DefaultImages, list[str]],
                            members: dict[str, Member]) -> None:
    images, _ = built
    assert members["init"].mode == stat.S_IFREG | 0o755
    assert members["init"].data.startswith(b"#!/bin/sh\n")
    assert members["bin/busybox"].data[:4] == b"\x7fELF"
    assert members["bin/sh"].data == b"busybox"
    assert members["dev/console"].rdev == (5, 1)
    modules_dir = f"lib/modules/{images.kernel_version}/"
    by_file = {Path(n).name: m for n, m in members.items() if n.startswith(modules_dir)}
    for name in ("xen-blkfront.ko", "xen-netfront.ko"):
        data = by_file[name].data
        assert data[:4] == b"\x7fELF", f"{name} is not a decompressed ELF module"
        assert f"vermagic={images.kernel_version} ".encode() in data
    load_list = members["etc/hospes/modules"].data.decode().split()
    assert [Path(p).stem for p in load_list] == list(images.modules)
    assert all(p.lstrip("/") in members for p in load_list)
    assert f"{modules_dir}modules.dep" in members


@needs_debian
def test_dependencies_load_first(built: tuple[DefaultImages, list[str]]) -> None:
    images, _ = built
    if "xenfs" in images.modules:  # xenfs needs xen-privcmd
        assert images.modules.index("xen-privcmd") < images.modules.index("xenfs")


@needs_debian
def test_second_call_is_served_from_the_cache(cache_dir: Path,
                                              built: tuple[DefaultImages, list[str]],
                                              spawned: list[Sequence[str]]) -> None:
    images, _ = built
    before = images.initramfs.stat().st_mtime_ns
    logs: list[str] = []
    again = ensure_default_images(cache_dir=cache_dir, log=logs.append)
    assert again == images
    assert logs == []
    assert not [c for c in spawned if c[0] in ("apt-get", "dpkg-deb")], spawned
    assert images.initramfs.stat().st_mtime_ns == before


@needs_debian
def test_without_apt_a_complete_cache_is_still_used(cache_dir: Path,
                                                    built: tuple[DefaultImages, list[str]],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    images, _ = built
    monkeypatch.setattr(debian.shutil, "which", lambda _tool: None)
    assert ensure_default_images(cache_dir=cache_dir, log=lambda _m: None) == images


@needs_debian
def test_rebuild_reuses_downloads(cache_dir: Path, built: tuple[DefaultImages, list[str]],
                                  spawned: list[Sequence[str]]) -> None:
    images, _ = built
    again = ensure_default_images(cache_dir=cache_dir, rebuild=True, log=lambda _m: None)
    assert again == images
    assert not [c for c in spawned if c[0] == "apt-get"], spawned
    assert images.initramfs.read_bytes() == again.initramfs.read_bytes()


@needs_debian
def test_cli_prints_paths_and_json(cache_dir: Path, built: tuple[DefaultImages, list[str]]) -> None:
    images, _ = built
    group = click.Group("hospes")
    register(group)
    runner = CliRunner(mix_stderr=False)
    result = runner.invoke(group, ["image", "--cache-dir", str(cache_dir)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"kernel: {images.kernel}\ninitramfs: {images.initramfs}\n"
    result = runner.invoke(group, ["image", "--cache-dir", str(cache_dir), "--print-json"])
    assert json.loads(result.stdout) == {
        "kernel": str(images.kernel), "initramfs": str(images.initramfs),
        "kernel_version": images.kernel_version, "modules": list(images.modules)}


def test_missing_apt_without_cache_is_a_clear_error(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian.shutil, "which", lambda _tool: None)
    with pytest.raises(ImagesError, match="apt-cache, apt-get, dpkg-deb not found"):
        ensure_default_images(cache_dir=tmp_path, log=lambda _m: None)


def test_interrupted_build_publishes_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with cache.atomic_directory(tmp_path / "6.1.0-1-cloud-amd64") as out:
            (out / "vmlinuz").write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_an_old_build(tmp_path: Path) -> None:
    target = tmp_path / "build"
    target.mkdir()
    (target / "old").write_text("old")
    with cache.atomic_directory(target) as out:
        (out / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["build"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_lock_serialises_builders_and_clears_leftovers(tmp_path: Path) -> None:
    (tmp_path / ".build-x-123").mkdir()
    messages: list[str] = []
    entered = threading.Event()

    def second() -> None:
        with cache.cache_lock(tmp_path, messages.append):
            entered.set()

    with cache.cache_lock(tmp_path, messages.append):
        assert not (tmp_path / ".build-x-123").exists()
        thread = threading.Thread(target=second)
        thread.start()
        assert not entered.wait(0.3)
    thread.join(10)
    assert entered.is_set()
    assert messages and messages[0].startswith("waiting for another 'hospes image' run")


def test_cache_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOSPES_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache.default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("HOSPES_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir() == tmp_path / "xdg" / "hospes"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache.default_cache_dir() == tmp_path / ".cache" / "hospes"


# --- the real /init, run as PID 1 of throw-away namespaces ------------------------------
#
# In a new user namespace the script holds no privilege over the host: insmod fails,
# devtmpfs cannot be mounted (so the static nodes are used), and poweroff/reboot only
# end the new PID namespace -- with SIGINT and SIGHUP respectively (reboot(2)); unshare
# passes the signal on, so the exit code is -SIG (or 128+SIG from a shell).


def unpack_for_host(members: dict[str, Member], root: Path) -> None:
    """Extract the archive; device nodes become plain files the test can read."""
    for name, m in members.items():
        path = root / name
        if name == "TRAILER!!!" or name == "dev/hvc0":
            continue
        if stat.S_ISDIR(m.mode):
            path.mkdir(parents=True, exist_ok=True)
        elif stat.S_ISLNK(m.mode):
            path.symlink_to(m.data.decode())
        else:
            path.write_bytes(m.data)
            path.chmod(stat.S_IMODE(m.mode) & 0o777)


def run_init(members: dict[str, Member], root: Path, cmdline: str) -> tuple[int, str]:
    unpack_for_host(members, root)
    (root / "cmdline").write_text(cmdline + "\n")
    argv = ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--net",
            "--uts", "--kill-child", f"--root={root}", "/init"]
    result = subprocess.run(argv, env={"HOSPES_CMDLINE": "/cmdline"}, capture_output=True,
                            text=True, timeout=60, check=False)
    if "unshare:" in result.stderr and result.returncode in (1, 127):
        pytest.skip(f"no unprivileged namespaces here: {result.stderr.strip()}")
    return result.returncode, (root / "dev" / "console").read_text()


@needs_debian
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_init_runs_the_command_and_powers_off(members: dict[str, Member], tmp_path: Path) -> None:
    token = encode_command(["sh", "-c", 'echo "ran as $(cat /proc/1/comm) on $(hostname)"; '
                                        "exit 7"])
    code, console = run_init(members, tmp_path, f"console=hvc0 {token} quiet")
    lines = console.splitlines()
    assert code in (-2, 128 + 2)  # SIGINT: poweroff in a PID namespace
    assert "hospes: userspace up" in lines
    assert lines[lines.index("hospes: userspace up"):] == [
        "hospes: userspace up", "ran as init on hospes", "hospes-exit-status=7"]


@needs_debian
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_init_reboots_when_asked(members: dict[str, Member], tmp_path: Path) -> None:
    token = encode_command(["true"])
    code, console = run_init(members, tmp_path, f"{token} hospes.reboot=1")
    assert code in (-1, 128 + 1)  # SIGHUP: reboot in a PID namespace
    assert console.splitlines()[-1] == "hospes-exit-status=0"


# --- module resolution on a synthetic module tree (no network) --------------------------


def fake_module(name: str, depends: str = "") -> bytes:
    """A minimal ELF64 object with a .modinfo section, enough for the module reader."""
    modinfo = f"license=GPL\0depends={depends}\0name={name.replace('-', '_')}\0".encode()
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    body = modinfo + shstrtab
    shoff = 64 + len(body) + (-(64 + len(body)) % 8)
    header = (b"\x7fELF\x02\x01\x01" + b"\0" * 9
              + struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2))
    sections = [struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
                struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, 64, len(modinfo), 0, 0, 1, 0),
                struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, 64 + len(modinfo), len(shstrtab),
                            0, 0, 1, 0)]
    return (header + body).ljust(shoff, b"\0") + b"".join(sections)


def make_tree(root: Path, files: dict[str, bytes], builtin: str = "") -> Path:
    modules_dir = root / "lib" / "modules" / "6.1.0-9-cloud-amd64"
    for rel, data in files.items():
        (modules_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (modules_dir / rel).write_bytes(data)
    (modules_dir / "modules.builtin").write_text(builtin)
    return modules_dir


def test_compressed_modules_are_decompressed_and_ordered(tmp_path: Path) -> None:
    blk = fake_module("xen-blkfront", "helper")
    modules_dir = make_tree(tmp_path, {
        "kernel/drivers/block/xen-blkfront.ko.xz": lzma.compress(blk),
        "kernel/lib/helper.ko.zst": zstandard.ZstdCompressor().compress(fake_module("helper")),
        "kernel/drivers/net/xen-netfront.ko": fake_module("xen-netfront"),
    }, builtin="kernel/drivers/xen/xen-evtchn.ko\n")
    (tmp_path / "busybox").write_bytes(b"\x7fELF busybox")
    result = build_initramfs(tmp_path / "busybox", modules_dir, "6.1.0-9-cloud-amd64")
    assert result.modules == ("helper", "xen-blkfront", "xen-netfront")  # xenfs absent: fine
    members = {m.name: m for m in read_newc(result.data)}
    base = "lib/modules/6.1.0-9-cloud-amd64/"
    assert members[base + "kernel/drivers/block/xen-blkfront.ko"].data == blk
    assert modinfo(members[base + "kernel/lib/helper.ko"].data)["name"] == "helper"
    assert members[base + "modules.dep"].data.decode().splitlines() == [
        "kernel/lib/helper.ko:",
        "kernel/drivers/block/xen-blkfront.ko: kernel/lib/helper.ko",
        "kernel/drivers/net/xen-netfront.ko:"]
    assert members["etc/hospes/modules"].data.decode().split() == [
        f"/{base}kernel/lib/helper.ko", f"/{base}kernel/drivers/block/xen-blkfront.ko",
        f"/{base}kernel/drivers/net/xen-netfront.ko"]


def test_required_module_missing_is_an_error_unless_built_in(tmp_path: Path) -> None:
    (tmp_path / "busybox").write_bytes(b"bb")
    modules_dir = make_tree(tmp_path / "a", {"kernel/xen-blkfront.ko": fake_module("xen-blkfront")})
    with pytest.raises(ImagesError, match="xen-netfront"):
        build_initramfs(tmp_path / "busybox", modules_dir, "r")
    modules_dir = make_tree(tmp_path / "b", {"kernel/xen-blkfront.ko": fake_module("xen-blkfront")},
                            builtin="kernel/drivers/net/xen-netfront.ko\n")
    assert build_initramfs(tmp_path / "busybox", modules_dir, "r").modules == ("xen-blkfront",)


def test_dependency_cycles_and_missing_dependencies_are_errors(tmp_path: Path) -> None:
    tree = ModuleTree(make_tree(tmp_path, {"kernel/a.ko": fake_module("a", "b"),
                                           "kernel/b.ko": fake_module("b", "a"),
                                           "kernel/c.ko": fake_module("c", "nothere")}))
    with pytest.raises(ImagesError, match="cycle"):
        tree.load_order(["a"])
    with pytest.raises(ImagesError, match="nothere"):
        tree.load_order(["c"])
