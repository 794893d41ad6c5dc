"""hospes.cputime: a vCPU thread's time split into guest mode, host kernel and Python."""

from __future__ import annotations

import threading

from hospes import cputime

# A real /proc/PID/task/TID/stat line, its command name made awkward (a space and a ')').
STAT = ("4242 (py thr) x) R 1 4242 4242 0 -1 4194560 1000 0 0 0 "
        "730 120 0 0 20 0 3 0 100 1000000 5000 18446744073709551615 1 1 0 0 0 0 0 16781312 2 0 0 0 17 1 0 0 "
        "0 410 0 0 0 0 0 0 0 0 0")


def test_guest_ticks_are_taken_out_of_user_time():
    split = cputime.parse_stat(STAT, 100)
    # utime 730 ticks includes guest_time 410 ticks (Linux counts guest time in both)
    assert split == cputime.ThreadCpu(guest_ns=4_100_000_000, host_kernel_ns=1_200_000_000,
                                      hospes_ns=3_200_000_000)
    assert split.as_stats() == {"cpu:guest_ms": 4100, "cpu:kvm_ms": 1200, "cpu:hospes_ms": 3200}


def test_this_thread_sees_its_own_python_time():
    out: list[cputime.ThreadCpu | None] = []

    def spin() -> None:
        x = 0
        for i in range(3_000_000):
            x += i
        out.append(cputime.this_thread())

    t = threading.Thread(target=spin)
    t.start()
    t.join()
    (split,) = out
    assert split is not None and split.guest_ns == 0
    assert split.hospes_ns + split.host_kernel_ns > 0     # some ticks of a ~0.2 s loop
