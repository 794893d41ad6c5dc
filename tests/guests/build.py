"""Build the Hospes PV test kernels (``tests/guests/<name>.c``) with gcc.

Each test kernel is one C file (plus ``<name>.S`` where it needs assembly)
linked with the common runtime in ``lib/`` into a freestanding x86-64 ELF
that a Xen PV64 loader accepts: ``tests/guests/build/<name>.elf``.

Builds are cached: the output is reused while a SHA-256 over the compiler's
identity, the flags and every source, header and the linker script is
unchanged (stored next to the ELF as ``<name>.elf.sha256``). Concurrent
pytest workers are safe: a per-guest ``flock`` serialises the builds, the
ELF is written to a temporary file and renamed into place, and the stamp is
renamed in only after the ELF.

Run ``python tests/guests/build.py [name ...]`` to build by hand.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

GUESTS_DIR = Path(__file__).resolve().parent
BUILD_DIR = GUESTS_DIR / "build"
INCLUDE_DIR = GUESTS_DIR / "include"
LIB_DIR = GUESTS_DIR / "lib"
LINKER_SCRIPT = LIB_DIR / "guest.ld"

ALL_GUESTS: tuple[str, ...] = (
    "hello",
    "hypercall_page",
    "traps",
    "syscall_user",
    "mmu",
    "events",
    "timers",
    "multicall",
    "version",
    "failsafe",
    "robust",
    "iret_edges",
    "cpu_policy",
    "priv_ops",
    "gp_fast",
    "debugregs",
    "balloon",
    "elf_shnote",
    "elf_xen_guest",
    "elf_paddr_offset",
    "hostile",
    "grants",
    "preempt",
    "fifo_events",
)


@dataclass(frozen=True)
class Variant:
    """A kernel built from another kernel's source with other loader metadata.

    ``source``: the ``<source>.c`` (and ``.S``) it is built from; ``flags``:
    extra gcc/linker flags (``-D`` for the sources, ``-Wl,--defsym`` for
    lib/guest.ld); ``null_pt_note``: turn the PT_NOTE program header into
    PT_NULL after linking, so the Xen notes are found only through the
    section headers (an ELF the way some linkers write it).
    """

    source: str
    flags: tuple[str, ...] = ()
    null_pt_note: bool = False


# PADDR_OFFSET of elf_paddr_offset: its segments' p_paddr are this much above
# where a loader places them (far above the 64 MiB a test domain has).
PADDR_OFFSET_VARIANT = 0x40000000

VARIANTS: dict[str, Variant] = {
    # Xen notes only in the SHT_NOTE section .note.Xen: libelf's first fallback.
    "elf_shnote": Variant("elf_variants", ("-DELF_VARIANT_SHNOTE",), null_pt_note=True),
    # No Xen notes at all, only the legacy __xen_guest string: libelf's last fallback.
    # p_paddr = p_vaddr with ELF_PADDR_OFFSET = VIRT_BASE, as old kernels were linked.
    "elf_xen_guest": Variant(
        "elf_variants",
        ("-DELF_VARIANT_XEN_GUEST", "-DHOSPES_NO_XEN_NOTES",
         "-Wl,--defsym,HOSPES_PADDR_OFFSET=0xffffffff80000000"),
        null_pt_note=True,
    ),
    # Notes with a non-zero PADDR_OFFSET: placed at p_paddr - PADDR_OFFSET.
    "elf_paddr_offset": Variant(
        "elf_variants",
        ("-DELF_VARIANT_PADDR_OFFSET", f"-DHOSPES_PADDR_OFFSET={PADDR_OFFSET_VARIANT:#x}",
         f"-Wl,--defsym,HOSPES_PADDR_OFFSET={PADDR_OFFSET_VARIANT:#x}"),
    ),
}

# Freestanding kernel code: no libc, no PIC (Debian's gcc defaults to PIE),
# kernel code model for the top 2 GiB, no red zone (exception frames and the
# hypercall wrappers' pushes land below RSP), no SSE (nobody saves it), no
# stack protector (no TLS), no unwind tables, no CET notes or endbr64.
CFLAGS: tuple[str, ...] = (
    "-std=gnu11",
    "-O2",
    "-g",
    "-ffreestanding",
    "-nostdlib",
    "-static",
    "-fno-pic",
    "-fno-pie",
    "-no-pie",
    "-mno-red-zone",
    "-mcmodel=kernel",
    "-fno-stack-protector",
    "-mgeneral-regs-only",
    "-fno-asynchronous-unwind-tables",
    "-fno-strict-aliasing",
    "-fcf-protection=none",
    "-Wall",
    "-Wextra",
    "-Werror",
)

LDFLAGS: tuple[str, ...] = (
    "-Wl,--build-id=none",
    "-Wl,-z,max-page-size=4096",
    "-Wl,-z,noexecstack",
    "-Wl,--fatal-warnings",
)

# Bump when the build recipe changes in a way the hash would not see.
_RECIPE_VERSION = b"hospes-guest-build-2"


class GuestBuildError(RuntimeError):
    """A test kernel could not be built; the message says why and what to do."""


def _find_gcc() -> str:
    cc = os.environ.get("HOSPES_GUEST_CC", "gcc")
    path = shutil.which(cc)
    if path is None:
        raise GuestBuildError(
            f"Cannot build the PV test kernels: {cc!r} was not found on PATH. "
            "Install gcc (Debian: apt-get install gcc) or point HOSPES_GUEST_CC at an "
            "x86-64 gcc."
        )
    return path


_compiler_ids: dict[str, bytes] = {}


def _compiler_id(gcc: str) -> bytes:
    if gcc not in _compiler_ids:
        proc = subprocess.run([gcc, "--version"], capture_output=True, check=False)
        machine = subprocess.run([gcc, "-dumpmachine"], capture_output=True, check=False)
        _compiler_ids[gcc] = gcc.encode() + proc.stdout + machine.stdout
    return _compiler_ids[gcc]


def source_name(name: str) -> str:
    """The base name of the sources guest ``name`` is built from (itself unless a variant)."""
    variant = VARIANTS.get(name)
    return variant.source if variant else name


def guest_sources(name: str) -> list[Path]:
    """The files compiled and linked into guest ``name`` (headers excluded)."""
    base = source_name(name)
    main = GUESTS_DIR / f"{base}.c"
    if not main.is_file():
        raise GuestBuildError(
            f"Unknown test kernel {name!r}: {main} does not exist (known: {', '.join(ALL_GUESTS)})."
        )
    sources = [main]
    asm = GUESTS_DIR / f"{base}.S"
    if asm.is_file():
        sources.append(asm)
    sources += sorted(LIB_DIR.glob("*.c")) + sorted(LIB_DIR.glob("*.S"))
    return sources


def _digest(gcc: str, sources: list[Path], variant: Variant | None = None) -> str:
    h = hashlib.sha256(_RECIPE_VERSION)
    h.update(_compiler_id(gcc))
    h.update(repr(variant).encode())
    for flag in (*CFLAGS, *LDFLAGS):
        h.update(flag.encode() + b"\0")
    inputs = sorted(set(sources) | set(INCLUDE_DIR.glob("*.h")) | {LINKER_SCRIPT})
    for path in inputs:
        h.update(str(path.relative_to(GUESTS_DIR)).encode() + b"\0")
        data = path.read_bytes()
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _is_fresh(elf: Path, stamp: Path, digest: str) -> bool:
    try:
        return elf.is_file() and stamp.read_text().strip() == digest
    except OSError:
        return False


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_command(gcc: str, name: str, output: Path) -> list[str]:
    """The gcc command line that builds guest ``name`` into ``output``."""
    sources = [str(p.relative_to(GUESTS_DIR)) for p in guest_sources(name)]
    variant = VARIANTS.get(name)
    return [
        gcc,
        *CFLAGS,
        *(variant.flags if variant else ()),
        f"-I{INCLUDE_DIR.relative_to(GUESTS_DIR)}",
        f"-Wl,-T,{LINKER_SCRIPT.relative_to(GUESTS_DIR)}",
        *LDFLAGS,
        "-o",
        str(output),
        *sources,
    ]


def _null_pt_note(elf: Path) -> None:
    """Make every PT_NOTE program header PT_NULL (ELF64 little-endian, in place)."""
    data = bytearray(elf.read_bytes())
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    found = False
    for i in range(phnum):
        at = phoff + i * phentsize
        if struct.unpack_from("<I", data, at)[0] == 4:   # PT_NOTE
            struct.pack_into("<I", data, at, 0)          # PT_NULL
            found = True
    if not found:
        raise GuestBuildError(f"{elf}: no PT_NOTE program header to remove")
    elf.write_bytes(bytes(data))


def build_guest(name: str) -> Path:
    """Build test kernel ``name`` (if its inputs changed) and return the ELF path."""
    gcc = _find_gcc()
    sources = guest_sources(name)
    variant = VARIANTS.get(name)
    digest = _digest(gcc, sources, variant)
    elf = BUILD_DIR / f"{name}.elf"
    stamp = BUILD_DIR / f"{name}.elf.sha256"
    if _is_fresh(elf, stamp, digest):
        return elf

    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with _locked(BUILD_DIR / f".{name}.lock"):
        if _is_fresh(elf, stamp, digest):      # another worker just built it
            return elf
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".elf.tmp", dir=BUILD_DIR)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            cmd = build_command(gcc, name, tmp)
            proc = subprocess.run(cmd, cwd=GUESTS_DIR, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise GuestBuildError(
                    f"Building test kernel {name!r} failed (gcc exit {proc.returncode}).\n"
                    f"Command (in {GUESTS_DIR}): {' '.join(cmd)}\n{proc.stderr}{proc.stdout}"
                )
            if variant is not None and variant.null_pt_note:
                _null_pt_note(tmp)
            os.replace(tmp, elf)
        finally:
            tmp.unlink(missing_ok=True)
        _write_atomic(stamp, digest)
    return elf


def main(argv: list[str]) -> int:
    names = argv or list(ALL_GUESTS)
    try:
        for name in names:
            print(build_guest(name))
    except GuestBuildError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
