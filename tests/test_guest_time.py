"""End to end: guest user space reads the time without entering the hypervisor.

Debian's kernel finds a pvclock record with PVCLOCK_TSC_STABLE_BIT and a
registered time area (VCPUOP_register_vcpu_time_memory_area), so its vDSO
answers clock_gettime and gettimeofday from the record and the TSC. A static
program (tests/userspace/clockcheck.c) reads the clocks 200000 times per
thread: the guest's system-call count (`hospes run --stats`) must not grow
with the reads, time must never go backwards on a CPU or (with 2 vCPUs)
between CPUs, and the kernel keeps its xen clocksource.

With one vCPU the kernel also runs its clocksource watchdog, comparing the tsc
clocksource with xen every half second: it must never find them skewed. (With
two, a kernel on an AMD host marks the TSC unstable at boot already, because
Xen does not show PV guests an invariant TSC unless they may never migrate,
and Hospes shows what Xen shows; the watchdog then has nothing to watch.)
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import run_hospes

pytestmark = [pytest.mark.kvm, pytest.mark.debian]

SOURCE = Path(__file__).parent / "userspace" / "clockcheck.c"
READS = 200_000


@pytest.fixture(scope="module")
def clock_initramfs(default_images, tmp_path_factory) -> Path:
    from hospes.images.cpio import CpioArchive

    out = tmp_path_factory.mktemp("clockcheck")
    binary = out / "clockcheck"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-static", "-pthread", "-o", str(binary),
                    str(SOURCE)], check=True, capture_output=True)
    base = Path(default_images.initramfs).read_bytes()
    base += b"\0" * (-len(base) % 4)          # the kernel unpacks concatenated newc archives
    archive = CpioArchive()
    archive.add_file("clockcheck", binary.read_bytes(), 0o755)
    initrd = out / "initrd"
    initrd.write_bytes(base + archive.to_bytes())
    return initrd


@pytest.mark.parametrize("vcpus", [1, 2])
def test_user_space_reads_the_time_without_system_calls(clock_initramfs: Path, vcpus: int) -> None:
    script = (
        f"/clockcheck {READS}; sleep 3; "     # the sleep lets the clocksource watchdog compare clocks a few times
        "cat /sys/devices/system/clocksource/clocksource0/current_clocksource; "
        "dmesg | grep -i -E 'pvclock|clocksource' || true"
    )
    p = run_hospes("run", "--vcpus", str(vcpus), "--ramdisk", str(clock_initramfs), "--stats", "--",
                   "sh", "-c", script, timeout=300)
    out = p.stdout.decode(errors="replace")
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 0, err[-3000:]
    m = re.search(r"clockcheck reads=(\d+) backwards=(\d+) cross_cpu_backwards=(\d+) cpus=(\d+)", out)
    assert m, out[-3000:]
    assert m.groups() == (str(READS), "0", "0", str(vcpus)), m.group(0)
    lines = out.splitlines()
    assert "xen" in lines, out[-3000:]                       # the kernel kept the xen clocksource
    assert not any("VCLOCK_PVCLOCK not supported" in line for line in lines), out[-3000:]
    assert not any("Marking clocksource" in line or "skew" in line for line in lines), out[-3000:]
    syscalls = re.search(r"\[hospes\]\s+syscall\s+(\d+)", err)
    assert syscalls, err[-3000:]
    # A boot with this script makes about 2000 system calls; the reads alone would be
    # 3 x 200000 (plus 2 x 200000 in the two threads) if any of them entered the kernel.
    assert int(syscalls.group(1)) < 20_000, err[-3000:]
