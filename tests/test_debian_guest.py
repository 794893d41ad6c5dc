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
from hospes.devices.tap import tap_in_use
from netns_helpers import can_make_netns, in_netns, tcp_listener

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


# --- networking: netfront <-> the vif backend <-> a TAP in a private network namespace ----------

@pytest.mark.skipif(not can_make_netns(), reason="needs root, iproute2 and /dev/net/tun")
def test_network_ping_and_tcp_through_a_tap_in_a_namespace(default_images) -> None:
    """The guest's eth0 reaches a TAP that the test moved into its own network
    namespace (link-local addresses, nothing leaves this machine): ping, then
    TCP both ways with busybox nc, bytes checked by MD5."""
    import hashlib
    import os
    import random
    import re
    import socket
    import threading

    ns = f"hospes-e2e{os.getpid()}"
    tap = f"hpe{os.getpid() % 100000}"
    host_ip, guest_ip = "169.254.99.1", "169.254.99.2"
    down = random.Random(42).randbytes(1 << 20)
    script = (
        f"ip addr add {guest_ip}/24 dev eth0 && ip link set eth0 up; "
        f"i=0; until ping -c1 -W1 {host_ip} >/dev/null 2>&1; do i=$((i+1)); [ $i -ge 90 ] && break; done; "
        f"ping -c 3 {host_ip}; "
        "dd if=/dev/urandom of=/tmp/up bs=1k count=1024 2>/dev/null; echo up-md5 $(md5sum < /tmp/up); "
        f"nc {host_ip} 5000 < /tmp/up; "
        "nc -l -p 5001 > /tmp/down; echo down-md5 $(md5sum < /tmp/down) $(wc -c < /tmp/down)"
    )
    ip = lambda *a: subprocess.run(["ip", *a], check=True, capture_output=True)  # noqa: E731
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    ip("netns", "add", ns)
    proc = None
    try:
        ip("-n", ns, "link", "set", "lo", "up")
        proc = subprocess.Popen(
            [sys.executable, "-m", "hospes", "run", "--vif", f"mac=00:16:3e:00:63:02,tap={tap}", "--",
             "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        # Until the domain's process holds it (a jailed one's TAP is made before its process opens it).
        while not tap_in_use(tap):
            assert proc.poll() is None and time.monotonic() < deadline, "the TAP never appeared"
            time.sleep(0.05)
        ip("link", "set", tap, "netns", ns)
        ip("-n", ns, "addr", "add", f"{host_ip}/24", "dev", tap)
        ip("-n", ns, "link", "set", tap, "up")

        got: dict[str, object] = {}

        def receive() -> None:  # guest -> namespace
            srv = tcp_listener(ns, host_ip, 5000)
            srv.settimeout(200)
            try:
                conn, _ = srv.accept()
                conn.settimeout(60)
                h, n, t0 = hashlib.md5(), 0, time.monotonic()
                while chunk := conn.recv(1 << 16):
                    h.update(chunk)
                    n += len(chunk)
                got["up"] = (h.hexdigest(), n, time.monotonic() - t0)
                conn.close()
            except OSError as e:
                got["up"] = e
            finally:
                srv.close()

        def send() -> None:  # namespace -> guest, once the guest listens
            end = time.monotonic() + 200
            while time.monotonic() < end and proc.poll() is None:
                c = in_netns(ns, socket.socket)
                c.settimeout(60)
                try:
                    c.connect((guest_ip, 5001))
                except OSError:
                    c.close()
                    time.sleep(0.2)
                    continue
                t0 = time.monotonic()
                c.sendall(down)
                c.shutdown(socket.SHUT_WR)
                c.recv(1)
                got["down"] = time.monotonic() - t0
                c.close()
                return

        threads = [threading.Thread(target=receive, daemon=True), threading.Thread(target=send, daemon=True)]
        for t in threads:
            t.start()
        out_b, err_b = proc.communicate(timeout=300)
        out, err = out_b.decode(errors="replace"), err_b.decode(errors="replace")
        for t in threads:
            t.join(10)
        assert proc.returncode == 0, (out[-3000:], err[-2000:])
        assert "Traceback" not in err
        assert re.search(r"3 packets transmitted, 3 packets received", out), out[-3000:]
        rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
        assert len(rtts) == 3
        up = re.search(r"up-md5 ([0-9a-f]{32})", out)
        assert up and isinstance(got.get("up"), tuple), (got, out[-2000:])
        assert got["up"][:2] == (up.group(1), 1 << 20)
        dn = re.search(r"down-md5 ([0-9a-f]{32}) +-? *(\d+)", out)
        assert dn, out[-2000:]
        assert dn.group(1) == hashlib.md5(down).hexdigest() and int(dn.group(2)) == len(down)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", tap], capture_output=True)


@pytest.mark.skipif(not can_make_netns(), reason="needs root, iproute2 and /dev/net/tun")
def test_vif_on_a_bridge_with_a_rate_limit(default_images) -> None:
    """`hospes run` inside a private namespace with `--vif bridge=br0,rate=1Mb/s`:
    the TAP joins the bridge (the guest reaches the bridge's address) and what
    the guest sends is held to the rate. 512 KiB at 125,000 bytes/s with at
    most 128 KiB of saved-up credit cannot arrive in under ~3.1 s; 2 s is the
    bound checked (a limiter can only make it slower, never faster)."""
    import hashlib
    import os
    import re

    ns = f"hospes-brt{os.getpid()}"
    host_ip, guest_ip = "169.254.94.1", "169.254.94.2"
    size = 512 << 10
    script = (
        f"ip addr add {guest_ip}/24 dev eth0 && ip link set eth0 up; "
        f"i=0; until ping -c1 -W1 {host_ip} >/dev/null 2>&1; do i=$((i+1)); [ $i -ge 90 ] && break; done; "
        f"dd if=/dev/urandom of=/tmp/up bs=1k count={size >> 10} 2>/dev/null; echo up-md5 $(md5sum < /tmp/up); "
        f"nc {host_ip} 5000 < /tmp/up"
    )
    ip = lambda *a: subprocess.run(["ip", *a], check=True, capture_output=True)  # noqa: E731
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    ip("netns", "add", ns)
    try:
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "add", "br0", "type", "bridge")
        ip("-n", ns, "addr", "add", f"{host_ip}/24", "dev", "br0")
        ip("-n", ns, "link", "set", "br0", "up")

        srv = tcp_listener(ns, host_ip, 5000)
        srv.settimeout(240)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "hospes", "run",
             "--vif", "mac=00:16:3e:00:5e:02,bridge=br0,rate=1Mb/s", "--", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            conn, _ = srv.accept()
            conn.settimeout(60)
            h, n = hashlib.md5(), 0
            first = None
            while chunk := conn.recv(1 << 16):
                first = first or time.monotonic()
                h.update(chunk)
                n += len(chunk)
            took = time.monotonic() - (first or time.monotonic())
            conn.close()
            out_b, err_b = proc.communicate(timeout=120)
        finally:
            srv.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        out, err = out_b.decode(errors="replace"), err_b.decode(errors="replace")
        assert proc.returncode == 0, (out[-3000:], err[-2000:])
        up = re.search(r"up-md5 ([0-9a-f]{32})", out)
        assert up and (h.hexdigest(), n) == (up.group(1), size), out[-2000:]
        assert took >= 2.0, f"{size} bytes arrived in {took:.2f} s: faster than rate=1Mb/s allows"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
