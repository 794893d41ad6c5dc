"""CPU time of the calling thread, split the way the host kernel accounts it.

A vCPU thread's time has three owners: the guest (the CPU in guest mode), the
host kernel (KVM's exit handling, the ioctls) and Hospes in user space (its
Python, and the user side of each ioctl). Linux counts guest-mode ticks in
both ``utime`` and ``guest_time`` of ``/proc/thread-self/stat``
(``account_guest_time``), so the user-space share is their difference. The
figures are tick-sampled (``_SC_CLK_TCK``), good for totals over seconds, not
for one exit; and on a host that is itself a VM the split is the host
kernel's view: a C loop doing nothing but KVM_RUN (bench/c/kvm_exit.c) shows
some user time too, so the user share is an upper bound on the Python's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Field positions in /proc/PID/task/TID/stat after the ")" that ends the command
# name (proc(5) numbers them from 1 at the pid; the rest start at field 3).
_UTIME, _STIME, _GUEST_TIME = 14 - 3, 15 - 3, 43 - 3


@dataclass(frozen=True, slots=True)
class ThreadCpu:
    guest_ns: int
    host_kernel_ns: int
    hospes_ns: int

    def as_stats(self) -> dict[str, int]:
        """Milliseconds under ``--stats`` names (``cpu:...``)."""
        return {"cpu:guest_ms": self.guest_ns // 1_000_000, "cpu:kvm_ms": self.host_kernel_ns // 1_000_000,
                "cpu:hospes_ms": self.hospes_ns // 1_000_000}


def parse_stat(text: str, ticks_per_s: int) -> ThreadCpu:
    """A ``/proc/.../stat`` line -> the thread's split (the command name may hold spaces or ')')."""
    fields = text.rsplit(")", 1)[1].split()
    ns = 1_000_000_000 // ticks_per_s
    user, system, guest = (int(fields[i]) * ns for i in (_UTIME, _STIME, _GUEST_TIME))
    return ThreadCpu(guest_ns=guest, host_kernel_ns=system, hospes_ns=max(0, user - guest))


def this_thread() -> ThreadCpu | None:
    """The calling thread's split; None where procfs cannot say."""
    try:
        with open("/proc/thread-self/stat") as f:
            text = f.read()
        return parse_stat(text, os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None
