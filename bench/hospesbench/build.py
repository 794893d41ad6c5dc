"""Building what the benchmarks run.

* host programs from bench/c/ with the system gcc: ``kvm_exit`` (the exit
  floor), and the static ``compute``, ``osbench``, ``tiny``, ``blkbench`` and
  ``netbench`` that run natively, in a Hospes guest and under QEMU unchanged;
* the PV guest bench/guests/nullcall.c, compiled with exactly the flags, headers,
  linker script and runtime (tests/guests/lib) of the project's PV test kernels
  -- taken from tests/guests/build.py, which is imported, not copied;
* the bench initramfs: the default initramfs with a second newc archive
  appended that holds /bench/{compute,osbench,tiny,blkbench,netbench,stamp,dirty} (the kernel unpacks
  concatenated archives);
* a 64 MiB disk image of pseudo-random bytes for the block device test.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parents[1]
ROOT = BENCH_DIR.parent
C_DIR = BENCH_DIR / "c"
GUEST_DIR = BENCH_DIR / "guests"
GUESTS_BUILD_PY = ROOT / "tests" / "guests" / "build.py"

# name -> (source, extra gcc flags)
HOST_PROGRAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "kvm_exit": ("kvm_exit.c", ()),
    "compute": ("compute.c", ("-static",)),
    "osbench": ("osbench.c", ("-static",)),
    "blkbench": ("blkbench.c", ("-static",)),
    "netbench": ("netbench.c", ("-static",)),
    "stamp": ("stamp.c", ("-static",)),
    "dirty": ("dirty.c", ("-static",)),
    "tiny": ("tiny.c", ("-static", "-nostdlib", "-fno-pie", "-no-pie", "-fno-stack-protector",
                        "-fcf-protection=none")),
}
HOST_CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror")
# What goes into the bench initramfs.
GUEST_PROGRAMS = ("compute", "osbench", "tiny", "blkbench", "netbench", "stamp", "dirty")
DISK_MIB = 64


class BuildError(RuntimeError):
    pass


def guest_build_module() -> ModuleType:
    """tests/guests/build.py, imported as a module (its flags and paths)."""
    name = "hospes_tests_guest_build"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, GUESTS_BUILD_PY)
    if spec is None or spec.loader is None:
        raise BuildError(f"cannot load {GUESTS_BUILD_PY}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _gcc(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"building {what} failed (gcc exit {proc.returncode}):\n{' '.join(cmd)}\n"
                         f"{proc.stderr}{proc.stdout}")


def build_host_programs(out_dir: Path, gcc: str = "gcc") -> dict[str, Path]:
    """Compile bench/c/*.c into ``out_dir``; returns name -> binary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    for name, (src, extra) in HOST_PROGRAMS.items():
        out = out_dir / name
        _gcc([gcc, *HOST_CFLAGS, *extra, "-o", str(out), str(C_DIR / src)], name)
        built[name] = out
    return built


def nullcall_command(out: Path) -> list[str]:
    """The gcc command line for the PV guest (the test kernels' recipe, our source)."""
    gb = guest_build_module()
    gcc = gb._find_gcc()
    lib = sorted(gb.LIB_DIR.glob("*.c")) + sorted(gb.LIB_DIR.glob("*.S"))
    return [gcc, *gb.CFLAGS, f"-I{gb.INCLUDE_DIR}", f"-Wl,-T,{gb.LINKER_SCRIPT}", *gb.LDFLAGS,
            "-o", str(out), str(GUEST_DIR / "nullcall.c"), *map(str, lib)]


def build_nullcall(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "nullcall.elf"
    _gcc(nullcall_command(out), "the nullcall PV guest")
    return out


def bench_archive(programs: dict[str, Path]) -> bytes:
    """A newc archive holding /bench/<name> for the guest programs."""
    from hospes.images.cpio import CpioArchive

    arc = CpioArchive()
    arc.add_dir("bench")
    for name in GUEST_PROGRAMS:
        arc.add_file(f"bench/{name}", programs[name].read_bytes(), 0o755)
    return arc.to_bytes()


def build_initramfs(base: Path, programs: dict[str, Path], out: Path) -> Path:
    """``base`` + an appended archive with the bench programs, written to ``out``."""
    data = base.read_bytes()
    data += b"\0" * (-len(data) % 4)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data + bench_archive(programs))
    return out


def build_disk_image(out: Path, mib: int = DISK_MIB) -> Path:
    """A ``mib`` MiB image of pseudo-random bytes (not sparse: every read hits data)."""
    if out.exists() and out.stat().st_size == mib << 20:
        return out
    import random

    rng = random.Random(1234)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for _ in range(mib):
            f.write(rng.randbytes(1 << 20))
    tmp.replace(out)
    return out
