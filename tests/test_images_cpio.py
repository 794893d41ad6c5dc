"""The newc writer, checked by parsing its output back with an independent reader."""

from __future__ import annotations

import stat
from dataclasses import dataclass

import pytest

from hospes.images.cpio import CpioArchive


@dataclass
class Member:
    name: str
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    data: bytes
    rdev: tuple[int, int]
    header_offset: int
    data_offset: int


def read_newc(archive: bytes) -> list[Member]:
    """Parse a newc archive up to and including its trailer (which is returned too).

    Written from the format description in the kernel's
    Documentation/driver-api/early-userspace/buffer-format.rst, not from the writer.
    """
    members = []
    pos = 0
    while True:
        assert pos % 4 == 0, f"header at unaligned offset {pos}"
        header = archive[pos:pos + 110]
        assert header[:6] == b"070701", f"bad magic at {pos}: {header[:6]!r}"
        f = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        (ino, mode, uid, gid, nlink, mtime, size, _maj, _min, rmaj, rmin, namesize, check) = f
        assert check == 0
        name_end = pos + 110 + namesize
        assert archive[name_end - 1] == 0, "name not NUL-terminated"
        name = archive[pos + 110:name_end - 1].decode()
        data_offset = (name_end + 3) & ~3
        assert archive[name_end:data_offset] == b"\0" * (data_offset - name_end)
        data = archive[data_offset:data_offset + size]
        members.append(Member(name, ino, mode, uid, gid, nlink, mtime, data, (rmaj, rmin),
                              pos, data_offset))
        pos = (data_offset + size + 3) & ~3
        if name == "TRAILER!!!":
            assert pos == len(archive), "bytes after the trailer"
            return members


def sample() -> CpioArchive:
    archive = CpioArchive()
    archive.add_file("init", b"#!/bin/sh\necho hi\n", 0o755)
    archive.add_file("bin/busybox", b"\x7fELF" + b"x" * 1001, 0o755)
    archive.add_symlink("bin/sh", "busybox")
    archive.add_dir("tmp", 0o1777)
    archive.add_device("dev/console", "c", 5, 1)
    archive.add_device("dev/hvc0", "c", 229, 0)
    archive.add_device("dev/null", "c", 1, 3, 0o666)
    archive.add_file("etc/empty", b"")
    return archive


def test_names_are_sorted_parents_first_and_end_with_trailer() -> None:
    names = [m.name for m in read_newc(sample().to_bytes())]
    assert names == ["bin", "bin/busybox", "bin/sh", "dev", "dev/console", "dev/hvc0",
                     "dev/null", "etc", "etc/empty", "init", "tmp", "TRAILER!!!"]


def test_modes_data_and_symlink_targets() -> None:
    members = {m.name: m for m in read_newc(sample().to_bytes())}
    assert members["init"].mode == stat.S_IFREG | 0o755
    assert members["init"].data == b"#!/bin/sh\necho hi\n"
    assert members["bin/busybox"].data == b"\x7fELF" + b"x" * 1001
    assert members["bin/sh"].mode == stat.S_IFLNK | 0o777
    assert members["bin/sh"].data == b"busybox"
    assert members["tmp"].mode == stat.S_IFDIR | 0o1777
    assert members["bin"].mode == stat.S_IFDIR | 0o755  # created implicitly
    assert members["bin"].nlink == 2 and members["init"].nlink == 1
    assert members["etc/empty"].data == b""


def test_device_nodes() -> None:
    members = {m.name: m for m in read_newc(sample().to_bytes())}
    assert members["dev/console"].mode == stat.S_IFCHR | 0o600
    assert members["dev/console"].rdev == (5, 1)
    assert members["dev/hvc0"].rdev == (229, 0)
    assert members["dev/null"].rdev == (1, 3)
    assert members["dev/null"].mode == stat.S_IFCHR | 0o666


def test_alignment_and_fixed_metadata() -> None:
    data = sample().to_bytes()
    members = read_newc(data)
    assert len(data) % 4 == 0
    for m in members:
        assert m.header_offset % 4 == 0 and m.data_offset % 4 == 0
        assert (m.uid, m.gid, m.mtime) == (0, 0, 0)
    inodes = [m.ino for m in members[:-1]]
    assert inodes == list(range(1, len(inodes) + 1))
    assert members[-1].mode == 0 and members[-1].data == b""


def test_output_is_deterministic_whatever_the_insertion_order() -> None:
    a = sample()
    b = CpioArchive()
    b.add_device("dev/null", "c", 1, 3, 0o666)
    b.add_file("etc/empty", b"")
    b.add_dir("tmp", 0o1777)
    b.add_device("dev/hvc0", "c", 229, 0)
    b.add_symlink("bin/sh", "busybox")
    b.add_device("dev/console", "c", 5, 1)
    b.add_file("bin/busybox", b"\x7fELF" + b"x" * 1001, 0o755)
    b.add_file("init", b"#!/bin/sh\necho hi\n", 0o755)
    assert a.to_bytes() == b.to_bytes()


def test_explicit_directory_mode_overrides_implicit_parent() -> None:
    archive = CpioArchive()
    archive.add_file("root/.profile", b"")
    archive.add_dir("root", 0o700)
    members = {m.name: m for m in read_newc(archive.to_bytes())}
    assert members["root"].mode == stat.S_IFDIR | 0o700


@pytest.mark.parametrize("name", ["", ".", "a/../b", "a//b"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        CpioArchive().add_file(name, b"")


def test_duplicates_and_files_as_parents_are_refused() -> None:
    archive = CpioArchive()
    archive.add_file("init", b"")
    with pytest.raises(ValueError):
        archive.add_file("/init", b"")
    with pytest.raises(ValueError):
        archive.add_file("init/x", b"")
    with pytest.raises(ValueError):
        archive.add_device("dev/x", "p", 1, 1)


def test_leading_slash_and_dot_slash_are_stripped() -> None:
    archive = CpioArchive()
    archive.add_file("/a", b"")
    archive.add_file("./b", b"")
    assert archive.names() == ["a", "b"]
