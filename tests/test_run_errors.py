"""Bad input to `hospes run` gets a clear error and no traceback."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from conftest import run_hospes

pytestmark = pytest.mark.kvm


def _elf_header(machine: int = 62, phnum: int = 0) -> bytes:
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    return ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0xFFFFFFFF81000000, 64, 0, 0, 64, 56, phnum, 64, 0, 0)


def _elf_without_notes() -> bytes:
    """A linked x86-64 ELF with one loadable segment and no Xen notes."""
    code = b"\xf4" * 16
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 120, 0xFFFFFFFF81000000, 0x1000000, len(code), len(code), 0x1000)
    return _elf_header(phnum=1) + phdr + code


@pytest.mark.parametrize(
    "name, data, phrase",
    [
        ("truncated", _elf_header()[:30], "truncated"),
        ("no-notes", _elf_without_notes(), "no Xen ELF notes"),
        ("aarch64", _elf_header(183), "AArch64"),
        ("garbage", b"this is not a kernel" * 10, "kernel"),
    ],
)
def test_malformed_kernels_are_refused(tmp_path: Path, name: str, data: bytes, phrase: str) -> None:
    k = tmp_path / name
    k.write_bytes(data)
    p = run_hospes("run", "--kernel", str(k), "--memory", "32", timeout=60)
    err = p.stderr.decode()
    assert p.returncode != 0
    assert "Traceback" not in err
    assert phrase.lower() in err.lower(), err


def test_impossible_memory_sizes_are_refused(default_images) -> None:
    for size in ("1", "100000000"):
        p = run_hospes("run", "--kernel", str(default_images.kernel), "--memory", size, timeout=60)
        err = p.stderr.decode()
        assert p.returncode != 0
        assert "Traceback" not in err
        assert "memory" in err.lower(), err


def test_missing_initrd_is_refused(default_images, tmp_path: Path) -> None:
    p = run_hospes("run", "--kernel", str(default_images.kernel), "--ramdisk", str(tmp_path / "nope.cpio"), timeout=60)
    err = p.stderr.decode()
    assert p.returncode != 0
    assert "Traceback" not in err
    assert "nope.cpio" in err, err
