"""Tests for hospes.machine.atomics: encodings, results, and atomicity under real concurrency.

The concurrency tests need a writer that runs truly in parallel with Python,
the way a guest vCPU does: a few bytes of machine code called through
``ctypes.CFUNCTYPE`` (which releases the GIL) hammer the same 64-bit word with
locked instructions on another core while Python threads use the atomics.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterator

import capstone
import pytest

from hospes.machine import atomics
from hospes.machine.atomics import (
    cmpxchg64,
    fetch_and64,
    fetch_or64,
    load64,
    load_code,
    mfence,
    store64,
    xchg8,
    xchg64,
)

U64 = 0xFFFF_FFFF_FFFF_FFFF


@pytest.fixture
def mem() -> Iterator[int]:
    """Address of a zeroed, page-aligned 4 KiB buffer."""
    buf = mmap.mmap(-1, 4096)
    window = ctypes.c_char.from_buffer(buf)
    yield ctypes.addressof(window)
    del window
    buf.close()


# -- encodings ------------------------------------------------------------------


def _disassemble(code: bytes) -> list[str]:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    return [f"{insn.mnemonic} {insn.op_str}".strip() for insn in md.disasm(code, 0)]


@pytest.mark.parametrize("name", sorted(atomics.LISTINGS))
def test_listing_mnemonics_match_the_bytes(name: str) -> None:
    listing = atomics.LISTINGS[name]
    code = atomics.assemble(listing)
    assert _disassemble(code) == [mnemonic for _, mnemonic, _ in listing]
    assert sum(len(bytes.fromhex(h)) for h, _, _ in listing) == len(code)


def test_every_blob_ends_in_ret() -> None:
    for listing in atomics.LISTINGS.values():
        assert listing[-1][1] == "ret"


# -- single-threaded results --------------------------------------------------------


def test_fetch_or_and_return_old_value(mem: int) -> None:
    assert fetch_or64(mem, 0b1010) == 0
    assert fetch_or64(mem, 0b0110) == 0b1010
    assert load64(mem) == 0b1110
    assert fetch_and64(mem, ~0b0100) == 0b1110  # negative Python int = 64-bit mask
    assert load64(mem) == 0b1010
    assert fetch_or64(mem, 1 << 63) == 0b1010
    assert load64(mem) == (1 << 63) | 0b1010
    assert fetch_and64(mem, 0) == (1 << 63) | 0b1010
    assert load64(mem) == 0


def test_fetch_ops_touch_only_their_word(mem: int) -> None:
    store64(mem + 8, 0x1234)
    fetch_or64(mem, U64)
    fetch_and64(mem + 16, 0)
    assert load64(mem + 8) == 0x1234
    assert load64(mem) == U64


def test_xchg64(mem: int) -> None:
    store64(mem, 7)
    assert xchg64(mem, U64) == 7
    assert xchg64(mem, 0) == U64
    assert load64(mem) == 0


def test_cmpxchg64_success_and_failure(mem: int) -> None:
    store64(mem, 5)
    assert cmpxchg64(mem, 4, 9) == (False, 5)
    assert load64(mem) == 5
    assert cmpxchg64(mem, 5, 9) == (True, 5)
    assert load64(mem) == 9
    store64(mem, U64)
    assert cmpxchg64(mem, -1, 1) == (True, U64)  # -1 means all ones
    assert load64(mem) == 1


def test_test_and_set_and_clear_return_carry_flag(mem: int) -> None:
    assert atomics.test_and_set_bit(mem, 3) is False
    assert atomics.test_and_set_bit(mem, 3) is True
    assert load64(mem) == 1 << 3
    assert atomics.test_and_clear_bit(mem, 3) is True
    assert atomics.test_and_clear_bit(mem, 3) is False
    assert load64(mem) == 0
    assert atomics.test_and_set_bit(mem, 63) is False
    assert load64(mem) == 1 << 63
    assert atomics.test_and_clear_bit(mem, 63) is True


def test_bit_numbers_beyond_64_address_later_words(mem: int) -> None:
    # Like evtchn_pending: port p lives in word p // 64, bit p % 64.
    assert atomics.test_and_set_bit(mem, 4095) is False
    assert load64(mem + 63 * 8) == 1 << 63
    assert atomics.test_and_set_bit(mem, 64 + 5) is False
    assert load64(mem + 8) == 1 << 5
    assert load64(mem) == 0
    assert atomics.test_bit(mem, 69) is True
    assert atomics.test_bit(mem, 68) is False
    assert atomics.test_bit(mem, 4095) is True
    assert atomics.test_and_clear_bit(mem, 4095) is True
    assert load64(mem + 63 * 8) == 0


def test_test_bit_does_not_modify(mem: int) -> None:
    store64(mem, 0b100)
    assert atomics.test_bit(mem, 2) is True
    assert atomics.test_bit(mem, 1) is False
    assert load64(mem) == 0b100


def test_xchg8_swaps_exactly_one_byte(mem: int) -> None:
    store64(mem, 0x1122_3344_5566_7788)
    assert xchg8(mem, 0xAB) == 0x88
    assert xchg8(mem + 1, 0) == 0x77
    assert load64(mem) == 0x1122_3344_5566_00AB


def test_load_store_and_fence(mem: int) -> None:
    store64(mem + 24, U64)
    mfence()
    assert load64(mem + 24) == U64
    assert load64(mem + 16) == 0


def test_code_page_is_not_writable() -> None:
    with open("/proc/self/maps") as maps:
        address = atomics._ADDR["fetch_or64"]
        for line in maps:
            span, perms = line.split()[:2]
            low, high = (int(x, 16) for x in span.split("-"))
            if low <= address < high:
                assert perms.startswith("r-x")
                return
    pytest.fail("The atomics code page is not mapped")


# -- concurrency ------------------------------------------------------------------------

# rdi = word, rsi = bit, rdx = control block {u64 stop; u64 iterations_out}.
# Until *stop != 0: `lock bts` the bit (expect CF=0), `lock btr` it (expect
# CF=1). Returns the number of unexpected CF results: a lost update by anyone
# else writing this word shows up here.
TOGGLER = bytes.fromhex(
    "31 c0"  # xor eax, eax               anomalies = 0
    "31 c9"  # xor ecx, ecx               iterations = 0
    "f0 48 0f ab 37"  # 4: lock bts qword ptr [rdi], rsi
    "48 83 d0 00"  # adc rax, 0           CF=1: someone set our bit
    "f0 48 0f b3 37"  # lock btr qword ptr [rdi], rsi
    "f5"  # cmc
    "48 83 d0 00"  # adc rax, 0           CF=0: someone cleared our bit
    "48 ff c1"  # inc rcx
    "48 83 3a 00"  # cmp qword ptr [rdx], 0
    "74 e4"  # je 4
    "48 89 4a 08"  # mov qword ptr [rdx + 8], rcx
    "c3"  # ret
)

# rdi = lock word, rsi = lock bit, rdx = control block {u64 stop; u64
# iterations_out; u64 counter}. Until *stop != 0: spin on `lock bts` until
# CF=0, increment the counter with a plain load/add/store, release with
# `lock btr`. Mutual exclusion with a Python thread doing the same through
# test_and_set_bit/test_and_clear_bit means no increment is lost.
SPINLOCK_INCREMENTER = bytes.fromhex(
    "31 c9"  # xor ecx, ecx
    "f0 48 0f ab 37"  # 2: lock bts qword ptr [rdi], rsi
    "73 04"  # jae 0xd                    got it
    "f3 90"  # pause
    "eb f5"  # jmp 2
    "48 8b 42 10"  # 0xd: mov rax, qword ptr [rdx + 0x10]
    "48 ff c0"  # inc rax
    "48 89 42 10"  # mov qword ptr [rdx + 0x10], rax
    "f0 48 0f b3 37"  # lock btr qword ptr [rdi], rsi
    "48 ff c1"  # inc rcx
    "48 83 3a 00"  # cmp qword ptr [rdx], 0
    "74 dc"  # je 2
    "48 89 4a 08"  # mov qword ptr [rdx + 8], rcx
    "c3"  # ret
)

_NATIVE = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64)
toggler = _NATIVE(load_code(TOGGLER))  # CFUNCTYPE: runs without the GIL
spinlock_incrementer = _NATIVE(load_code(SPINLOCK_INCREMENTER))


def test_helper_listings_disassemble_as_commented() -> None:
    assert "lock bts qword ptr [rdi], rsi" in _disassemble(TOGGLER)
    assert _disassemble(SPINLOCK_INCREMENTER)[-1] == "ret"


class NativeWriter:
    """Run a machine-code writer on its own thread (GIL released) until stopped."""

    def __init__(
        self, func: Callable[[int, int, int], int], word: int, bit: int, control: int
    ) -> None:
        self._control = control
        self.result: int | None = None
        self._thread = threading.Thread(target=self._run, args=(func, word, bit), daemon=True)

    def _run(self, func: Callable[[int, int, int], int], word: int, bit: int) -> None:
        self.result = func(word, bit, self._control)

    def __enter__(self) -> NativeWriter:
        store64(self._control, 0)
        store64(self._control + 8, 0)
        self._thread.start()
        time.sleep(0.01)  # let it get going, so that Python really overlaps it
        return self

    def __exit__(self, *exc: object) -> None:
        store64(self._control, 1)  # stop
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()

    @property
    def iterations(self) -> int:
        return load64(self._control + 8)


def _run_threads(*targets: Callable[[], None]) -> None:
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_fetch_or_and_lose_no_concurrent_update(mem: int) -> None:
    """Two Python threads set and clear their own bits with fetch_or64/fetch_and64
    while native code toggles a third bit of the same word on another core."""
    word, control = mem, mem + 64
    n = 20_000
    errors: list[str] = []

    def python_writer(bit: int) -> Callable[[], None]:
        mask = 1 << bit

        def run() -> None:
            for i in range(n):
                if fetch_or64(word, mask) & mask:
                    errors.append(f"bit {bit} already set at iteration {i}")
                if not fetch_and64(word, ~mask) & mask:
                    errors.append(f"bit {bit} lost at iteration {i}")

        return run

    with NativeWriter(toggler, word, 40, control) as native:
        _run_threads(python_writer(3), python_writer(63))
    assert errors == []
    assert native.result == 0, "the native writer saw its bit changed by someone else"
    assert native.iterations > 0
    assert load64(word) == 0


def test_test_and_set_bit_lose_no_concurrent_update(mem: int) -> None:
    """Same as above with lock bts/btr, bit numbers >= 64 included."""
    word, control = mem, mem + 64
    n = 20_000
    errors: list[str] = []

    def python_writer(bit: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(n):
                if atomics.test_and_set_bit(word, bit):
                    errors.append(f"bit {bit}: set returned True at iteration {i}")
                if not atomics.test_and_clear_bit(word, bit):
                    errors.append(f"bit {bit}: clear returned False at iteration {i}")

        return run

    # Native code toggles bit 1 of word 1 (= bit 65); Python uses 64 and 127.
    with NativeWriter(toggler, word + 8, 1, control) as native:
        _run_threads(python_writer(64), python_writer(127))
    assert errors == []
    assert native.result == 0
    assert load64(word + 8) == 0


def test_test_and_set_bit_gives_mutual_exclusion_against_native_code(mem: int) -> None:
    """A spin lock built on test_and_set_bit excludes a native spin lock user:
    a non-atomic counter protected by it loses no increment."""
    lock_word, control = mem, mem + 64
    counter = control + 16
    n = 20_000
    errors: list[str] = []
    with NativeWriter(spinlock_incrementer, lock_word, 17, control) as native:
        for _ in range(n):
            while atomics.test_and_set_bit(lock_word, 17):
                pass
            store64(counter, load64(counter) + 1)
            if not atomics.test_and_clear_bit(lock_word, 17):
                errors.append("lock bit was not set while held")
    assert errors == []
    assert native.iterations > 0
    assert load64(counter) == n + native.iterations


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to race")
def test_the_hammer_detects_a_plain_read_modify_write(mem: int) -> None:
    """Control experiment: a non-atomic Python RMW on the same word *does* lose
    the native writer's updates, so the tests above would catch one.

    This needs the two threads to really run at the same time; on a host whose
    other CPUs are busy they may only alternate, so the test skips (rather than
    fails) when no race happened within its time budget.
    """
    word, control = mem, mem + 64
    cell = ctypes.c_uint64.from_address(word)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        with NativeWriter(toggler, word, 40, control) as native:
            for _ in range(20_000):
                cell.value |= 1 << 3  # load ... store: not atomic
                cell.value &= ~(1 << 3) & U64
        if native.result:
            return
        store64(word, 0)
    pytest.skip("no race observed: the host did not run both threads in parallel")
