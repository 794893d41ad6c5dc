"""Shared words of guest memory are stored and loaded whole.

A guest on another CPU reads ring indices while Hospes writes them. The
test stands in for that guest with a C loop (running without the GIL, on
its own thread) that reads one word as fast as it can and counts every
value that is neither of the two the Python side alternates between. A
write that goes byte by byte, or zeroes the word first (as
struct.pack_into does), shows up as such a value: netfront then reports
"Illegal number of responses" and disables the device.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from hospes.machine.memory import GuestMemory

A32, B32 = 0x00FF00FF, 0xFF00FF00
A64, B64 = 0x00FF00FF00FF00FF, 0xFF00FF00FF00FF00

READER_C = r"""
#include <stdint.h>
/* Reads *p until *stop is set; returns how many reads saw neither a nor b. */
long watch32(volatile uint32_t *p, volatile int *stop, uint32_t a, uint32_t b, long *reads) {
    long bad = 0, n = 0;
    while (!*stop) { uint32_t v = *p; if (v != a && v != b) bad++; n++; }
    *reads = n;
    return bad;
}
long watch64(volatile uint64_t *p, volatile int *stop, uint64_t a, uint64_t b, long *reads) {
    long bad = 0, n = 0;
    while (!*stop) { uint64_t v = *p; if (v != a && v != b) bad++; n++; }
    *reads = n;
    return bad;
}
"""


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed to build the reader (scripts/setup.sh installs it)")
    d = tmp_path_factory.mktemp("reader")
    src, lib = d / "reader.c", d / "libreader.so"
    src.write_text(READER_C)
    subprocess.run([gcc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    dll = ctypes.CDLL(str(Path(lib)))   # CDLL calls release the GIL: the loop runs beside Python
    for fn, word in ((dll.watch32, ctypes.c_uint32), (dll.watch64, ctypes.c_uint64)):
        fn.argtypes = (ctypes.c_void_p, ctypes.c_void_p, word, word, ctypes.POINTER(ctypes.c_long))
        fn.restype = ctypes.c_long
    return dll


@pytest.mark.parametrize("width", [32, 64])
def test_a_concurrent_reader_never_sees_a_torn_word(reader: ctypes.CDLL, width: int) -> None:
    mem = GuestMemory([("ram", 1 << 16)])
    try:
        gpa = 0x1008
        a, b = (A32, B32) if width == 32 else (A64, B64)
        write = mem.write_u32 if width == 32 else mem.write_u64
        write(gpa, a)
        stop = ctypes.c_int(0)
        reads = ctypes.c_long(0)
        out: list[int] = []
        watch = reader.watch32 if width == 32 else reader.watch64
        t = threading.Thread(target=lambda: out.append(
            watch(mem.addr(gpa), ctypes.addressof(stop), a, b, ctypes.byref(reads))))
        t.start()
        for i in range(200_000):
            write(gpa, b if i & 1 else a)
        stop.value = 1
        t.join(10)
        assert reads.value > 1000, "the reader hardly ran; the test proves nothing"
        assert out == [0], f"{out[0]} of {reads.value} reads saw a half-written word"
        read = mem.read_u32 if width == 32 else mem.read_u64
        assert read(gpa) in (a, b)
    finally:
        mem.close()
