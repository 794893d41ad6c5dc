"""End to end: Debian's stock cloud kernel boots as a Xen PV guest on Hospes.

Each test boots the real kernel and busybox initramfs (about 20-30 s here) and
checks from inside the guest.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import run_hospes

pytestmark = [pytest.mark.kvm, pytest.mark.debian]


def test_guest_runs_command_and_reports_xen(default_images) -> None:
    script = (
        "cat /sys/hypervisor/type; uname -r; "
        "dmesg | grep -m1 'Hypervisor detected'; dmesg | grep -m1 'Booting kernel on Xen'; "
        "grep -c ^processor /proc/cpuinfo; exit 7"
    )
    p = run_hospes("run", "--", "sh", "-c", script)
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 7, p.stderr.decode(errors="replace")[-2000:]
    lines = out.splitlines()
    assert "xen" in lines
    assert default_images.kernel_version in lines
    assert any(line.endswith("Hypervisor detected: Xen PV") for line in lines), out[-3000:]
    assert any("Booting kernel on Xen" in line for line in lines), out[-3000:]
    assert "hospes-exit-status=7" in lines
    assert "Traceback" not in p.stderr.decode(errors="replace")


def test_poweroff_exits_zero_and_reboot_is_reported(default_images) -> None:
    p = run_hospes("run", "--", "true")
    assert p.returncode == 0
    assert b"hospes-exit-status=0" in p.stdout
    # With hospes.reboot=1 the init reboots instead of powering off.
    p = run_hospes("run", "--on-reboot", "exit", "--cmdline", "console=hvc0 quiet hospes.reboot=1", "--", "true")
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-2000:]
    assert b"the guest rebooted" in p.stderr


def test_shell_over_console_answers(default_images) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hospes", "run"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    buf = b""
    deadline = time.monotonic() + 180
    import os
    import select

    os.set_blocking(proc.stdout.fileno(), False)
    sent = False
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([proc.stdout], [], [], 0.5)
            if r:
                chunk = proc.stdout.read() or b""
                buf += chunk
            if not sent and b"hospes:/#" in buf:
                proc.stdin.write(b"echo answer-$((6*7))\n")
                proc.stdin.flush()
                sent = True
            if b"answer-42" in buf:
                proc.stdin.write(b"poweroff -f\n")
                proc.stdin.flush()
                break
        assert b"answer-42" in buf, buf[-2000:]
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_asks_guest_to_power_off_via_xenstore(default_images) -> None:
    """SIGTERM to `hospes run` writes control/shutdown=poweroff; the guest obeys."""
    import os
    import select
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "hospes", "run"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    buf = b""
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and b"hospes:/#" not in buf:
            if select.select([proc.stdout], [], [], 0.5)[0]:
                buf += proc.stdout.read() or b""
        assert b"hospes:/#" in buf, buf[-2000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_two_vcpus_come_online_and_run_in_parallel(default_images) -> None:
    script = (
        "cat /sys/devices/system/cpu/online; "
        "for j in 1 2 3 4; do (i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; echo job$j) & done; wait"
    )
    p = run_hospes("run", "--vcpus", "2", "--", "sh", "-c", script)
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-2000:]
    lines = out.splitlines()
    assert "0-1" in lines
    assert sorted(line for line in lines if line.startswith("job")) == ["job1", "job2", "job3", "job4"]


def test_disk_reads_and_writes_through_blkfront(default_images, tmp_path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"HOSPES-DISK-MAGIC".ljust(512, b"\0") + bytes(8 * 1024 * 1024 - 512))
    script = (
        "cat /sys/block/xvda/size; dd if=/dev/xvda bs=17 count=1 2>/dev/null; echo; "
        "echo written-by-guest | dd of=/dev/xvda bs=512 seek=100 conv=fsync 2>/dev/null"
    )
    p = run_hospes("run", "--disk", str(image), "--", "sh", "-c", script)
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-2000:]
    lines = out.splitlines()
    assert "16384" in lines and "HOSPES-DISK-MAGIC" in lines
    assert "timeout closing device" not in out
    assert image.read_bytes()[100 * 512:100 * 512 + 17] == b"written-by-guest\n"
