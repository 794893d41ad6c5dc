"""End to end: save, restore and live migration of real guests between two hospesd daemons.

Two daemons on private runtime directories (A, the source, and B, the
destination) run for the whole module inside one private network namespace
that holds a bridge ``br0`` with 169.254.77.1/24 (nothing leaves this machine).
Everything goes through the CLI as a user would type it: ``hospes create``,
``exec``, ``save``, ``restore``, ``migrate``, ``migrate-receive``. The guests are
the default busybox image; what they run is checked from inside them with
``hospes exec``. Every test removes its domains (the ``domains`` fixture), and
the daemons' close() kills whatever a failure left behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hospes.migrate.stream import PAGE_SIZE, RecordType, StreamWriter
from netns_helpers import can_make_netns, in_netns
from toolstack_helpers import Hospesd
from waiting import wait_for

pytestmark = [pytest.mark.kvm, pytest.mark.debian, pytest.mark.timeout(900)]

HOST_IP, GUEST_IP = "169.254.77.1", "169.254.77.2"
GUEST_MAC = "00:16:3e:00:77:02"
BOOT_TIMEOUT = 300.0
MIB = 1 << 20

# Holds the disk open on fd 3 and counts in /tmp/count; `echo $!` gives its pid.
COUNTER = ("(i=0; exec 3<>/dev/xvda; while :; do echo $i > /tmp/count; i=$((i+1)); sleep 0.2; done) "
           ">/dev/null 2>&1 & echo $!")
COUNTER_NO_DISK = ("(i=0; while :; do echo $i > /tmp/count; i=$((i+1)); sleep 0.2; done) "
                   ">/dev/null 2>&1 & echo $!")


# --- the two daemons -----------------------------------------------------------------------------


@dataclass
class Pair:
    a: Hospesd
    b: Hospesd
    ns: str
    root: Path
    ssh: Path           # the HOSPES_SSH stand-in: runs `hospes migrate-receive` against B
    serial: list[int] = field(default_factory=lambda: [0])

    def unique(self, stem: str) -> str:
        self.serial[0] += 1
        return f"{stem}{self.serial[0]}"

    def sock(self, stem: str) -> str:
        return f"unix:{self.root / (self.unique(stem) + '.sock')}"

    def logs(self) -> str:
        """The daemons' logs and the domain processes' stderr, for assertion messages."""
        parts = []
        for label, d in (("A", self.a), ("B", self.b)):
            parts.append(f"--- {label} hospesd.log\n{d.log()[-3000:]}")
            for err in sorted((d.run_dir / "domains").glob("*.err")):
                parts.append(f"--- {label} {err.name}\n{err.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, default_images) -> Iterator[Pair]:
    if not can_make_netns() or not os.path.exists("/usr/bin/nsenter"):
        pytest.fail("these tests need root, ip(8), nsenter(1) and /dev/net/tun")
    root = tmp_path_factory.mktemp("mig")
    ns = f"hospes-mig{os.getpid()}"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    ip("netns", "add", ns)
    prefix = ["nsenter", f"--net=/run/netns/{ns}"]
    a = Hospesd(root / "a", prefix=prefix)
    b = Hospesd(root / "b", prefix=prefix)
    ssh = root / "fake-ssh"
    ssh.write_text("#!/bin/sh\n"
                   "# ssh HOST COMMAND...: drop the host and run the command against daemon B\n"
                   "shift\n"
                   f"export HOSPES_RUN_DIR='{b.run_dir}'\n"
                   f"export PATH='{Path(sys.executable).parent}':\"$PATH\"\n"
                   "exec \"$@\"\n")
    ssh.chmod(0o755)
    # The source's domain process runs the ssh command: it has the daemon's environment.
    a.env["HOSPES_SSH"] = str(ssh)
    try:
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "add", "br0", "type", "bridge")
        ip("-n", ns, "addr", "add", f"{HOST_IP}/24", "dev", "br0")
        ip("-n", ns, "link", "set", "br0", "up")
        a.start()
        b.start()
        yield Pair(a, b, ns, root, ssh)
    finally:
        a.close()
        b.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def icmp_echo(ns: str, host: str, timeout: float = 1.0) -> bool:
    """One ICMP echo from inside ``ns`` (the host may have no ping(8)); True if ``host`` answered."""
    ident = os.getpid() & 0xFFFF

    def checksum(data: bytes) -> int:
        total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data) - 1, 2))
        total += data[-1] << 8 if len(data) % 2 else 0
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return ~total & 0xFFFF

    def echo() -> bool:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        s.settimeout(timeout)
        try:
            body = b"hospes-e2e-ping"
            head = bytes([8, 0, 0, 0]) + ident.to_bytes(2, "big") + (1).to_bytes(2, "big")
            packet = head[:2] + checksum(head + body).to_bytes(2, "big") + head[4:] + body
            s.sendto(packet, (host, 0))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data, addr = s.recvfrom(2048)
                icmp = data[(data[0] & 0x0F) * 4:]
                if addr[0] == host and icmp[0] == 0 and icmp[4:6] == ident.to_bytes(2, "big"):
                    return True
            return False
        except OSError:
            return False
        finally:
            s.close()

    return in_netns(ns, echo)


def names(d: Hospesd) -> set[str]:
    """The domain names `hospes list` shows (Domain-0 left out)."""
    r = d.cli("list", timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return {line.split()[0] for line in r.stdout.decode().splitlines()[1:] if line.strip()} - {"Domain-0"}


@pytest.fixture
def domains(pair: Pair) -> Iterator[list[str]]:
    """Names a test creates; destroyed on both daemons afterwards, whatever happened."""
    made: list[str] = []
    yield made
    for d in (pair.a, pair.b):
        for name in set(made) & names(d):
            d.cli("destroy", name, timeout=60)
        leftover = {n for n in names(d) if n.startswith("incoming-")}
        for name in leftover:
            d.cli("destroy", name, timeout=60)


# --- guests --------------------------------------------------------------------------------------


def run(d: Hospesd, name: str, command: str, timeout: float = 60.0) -> str:
    """`hospes exec NAME COMMAND`; its output, after checking it exited 0."""
    r = d.cli("exec", "-t", str(timeout), name, command, timeout=timeout + 60)
    out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    assert r.returncode == 0, f"exec {command!r} on {name}: exit {r.returncode}\n{out[-2000:]}\n{err[-2000:]}"
    return out


def create(pair: Pair, made: list[str], stem: str, *, memory: int = 256, vcpus: int = 1,
           disk_mib: int = 0, vif: bool = False) -> str:
    """Create a default-image guest on A from an xl config and wait until its shell answers."""
    name = pair.unique(stem)
    lines = [f'name = "{name}"', 'kernel = "@default"', f"memory = {memory}", f"vcpus = {vcpus}"]
    if disk_mib:
        img = pair.root / f"{name}.img"
        with open(img, "wb") as f:
            f.truncate(disk_mib * MIB)
        lines.append(f"disk = [ 'file:{img},xvda,w' ]")
    if vif:
        lines.append(f"vif = [ 'bridge=br0,mac={GUEST_MAC}' ]")
    cfg = pair.root / f"{name}.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    made.append(name)
    r = pair.a.cli("create", str(cfg), timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:] + pair.logs()
    assert run(pair.a, name, "echo up-$((6*7))", timeout=BOOT_TIMEOUT) == "up-42\n"
    return name


def start_counter(d: Hospesd, name: str, with_disk: bool = True) -> int:
    """Start the counting loop; its pid. A kernel message the guest prints on the
    same console meanwhile may surround the echoed pid (seen once), so the pid is
    the output's last line that is a number."""
    out = run(d, name, COUNTER if with_disk else COUNTER_NO_DISK)
    pid = _last_number(out)
    assert pid is not None, f"no pid in {out!r}"
    return pid


def _last_number(out: str) -> int | None:
    """The output's last line that is a number: a kernel message on the shared console
    may come with it."""
    numbers = [ln.strip() for ln in out.splitlines() if ln.strip().lstrip("-").isdigit()]
    return int(numbers[-1]) if numbers else None


def count(d: Hospesd, name: str) -> int:
    n = _last_number(run(d, name, "cat /tmp/count 2>/dev/null || echo -1"))
    return -1 if n is None else n


# The counter rewrites /tmp/count every 0.2 s (truncate, then write): a read in
# between finds it empty, so the guest-side check treats "" as not yet counted on.
def assert_counter_goes_on(d: Hospesd, name: str, pid: int, before: int) -> None:
    """The same process is alive there and counts on past ``before`` (polled in the guest, 15 s at most)."""
    r = d.cli("exec", name, f"kill -0 {pid} || exit 3; t=0; "
                            f"until c=$(cat /tmp/count); [ \"${{c:-0}}\" -gt {before} ]; do "
                            "t=$((t+1)); [ $t -gt 150 ] && exit 4; usleep 100000; done; echo $c",
              timeout=120)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, (f"counter {pid} on {name}: exit {r.returncode} (3: gone, 4: stopped at "
                               f"{before})", out, r.stderr.decode(errors="replace"))
    n = _last_number(out)
    assert n is not None and n > before, out


# --- migration commands --------------------------------------------------------------------------


class Receiver:
    """`hospes migrate-receive --listen ADDR` on a daemon, as a background process."""

    def __init__(self, d: Hospesd, listen: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "hospes", "migrate-receive", "--listen", listen],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=d.env)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode(errors="replace")
        m = re.match(rf"listening on {re.escape(listen)} \(domid (\d+)\)$", line.strip())
        if m is None:
            out, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"migrate-receive did not listen: {line}{err.decode(errors='replace')}")
        self.domid = int(m.group(1))
        self.d = d

    def finish(self, timeout: float = 120.0) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"migrate-receive still waits {timeout:.0f} s after the migration ended") from None
        return self.proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def migrate_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "hospes", "migrate", *args]


def migrate(pair: Pair, src: Hospesd, dst: Hospesd, name: str, *opts: str,
            listen: str | None = None) -> tuple[dict, str]:
    """`hospes migrate --json OPTS NAME ADDR` from ``src`` to a receiver on ``dst``; the JSON result
    and the receiver's stdout. Asserts both ends succeeded."""
    listen = listen or pair.sock("in")
    receiver = Receiver(dst, listen)
    try:
        r = subprocess.run(migrate_cmd("--json", *opts, name, listen), capture_output=True, timeout=600,
                           env=src.env)
        out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
        assert r.returncode == 0, f"migrate failed: {err[-3000:]}\n{pair.logs()}"
        rc, rout, rerr = receiver.finish()
        assert rc == 0, f"migrate-receive: {rerr[-3000:]}\n{pair.logs()}"
        assert rout == f"received {name} (domid {receiver.domid})\n", (rout, rerr)
    finally:
        receiver.close()
    assert out.count("\n") == 1, out
    result = json.loads(out)
    assert result["domain"] == name
    return result, rout


def state_of(d: Hospesd, name: str) -> str | None:
    status, body = d.json("GET", f"/v1/domains/{name}")
    return body.get("state") if status == 200 and isinstance(body, dict) else None


def assert_moved(src: Hospesd, dst: Hospesd, name: str) -> None:
    assert name not in names(src)
    assert name in names(dst)
    assert state_of(dst, name) == "running"


# --- 1. save and restore -------------------------------------------------------------------------


def test_save_then_restore_keeps_processes_open_files_and_the_disk(pair: Pair, domains: list[str]) -> None:
    name = create(pair, domains, "saved", disk_mib=16)
    pid = start_counter(pair.a, name)
    run(pair.a, name, "dd if=/dev/urandom of=/tmp/pattern bs=1M count=8 2>/dev/null && "
                      "dd if=/tmp/pattern of=/dev/xvda bs=1M conv=fsync 2>/dev/null && sync")
    md5 = run(pair.a, name, "md5sum /dev/xvda").split()[0]
    assert re.fullmatch(r"[0-9a-f]{32}", md5)
    before = count(pair.a, name)

    save = pair.root / f"{name}.save"
    r = pair.a.cli("save", name, str(save), timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace") + pair.logs()
    assert re.match(rf"saved {name} to {re.escape(str(save))} \([\d.]+ MiB, [\d.]+ s\)$", r.stdout.decode().strip())
    assert name not in names(pair.a)
    assert save.stat().st_size > 4 * MIB

    r = pair.b.cli("restore", str(save), timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace") + pair.logs()
    assert re.match(rf"restored {name} \(domid \d+\) from {re.escape(str(save))}$", r.stderr.decode().strip())
    assert state_of(pair.b, name) == "running"
    assert_counter_goes_on(pair.b, name, pid, before)
    assert run(pair.b, name, f"ls -l /proc/{pid}/fd/3").rstrip().endswith("-> /dev/xvda")
    assert run(pair.b, name, "md5sum /dev/xvda").split()[0] == md5

    # A checkpoint (-c): the domain runs on; the file restores the same guest.
    ckpt = pair.root / f"{name}.ckpt"
    r = pair.b.cli("save", "-c", name, str(ckpt), timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace") + pair.logs()
    assert state_of(pair.b, name) == "running"
    assert_counter_goes_on(pair.b, name, pid, count(pair.b, name))
    r = pair.b.cli("destroy", name, timeout=60)
    assert r.returncode == 0 and name not in names(pair.b)
    r = pair.a.cli("restore", str(ckpt), timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace") + pair.logs()
    assert_counter_goes_on(pair.a, name, pid, 0)
    assert run(pair.a, name, "md5sum /dev/xvda").split()[0] == md5


# --- 2. an idle guest, there and back ------------------------------------------------------------


def test_live_migration_of_an_idle_guest_there_and_back(pair: Pair, domains: list[str]) -> None:
    name = create(pair, domains, "idle", disk_mib=16)
    pid = start_counter(pair.a, name)
    before = count(pair.a, name)

    result, _ = migrate(pair, pair.a, pair.b, name, "--verify")
    assert result["verify"]["differences"] == 0, result
    assert result["verify"]["pages"] >= 256 * MIB // PAGE_SIZE * 9 // 10, result
    assert result["rounds"] >= 2, result
    assert result["pages_sent"] >= result["verify"]["pages"], result
    assert len(result["per_round"]) >= 1 and result["downtime_ms"] > 0, result
    assert_moved(pair.a, pair.b, name)
    assert_counter_goes_on(pair.b, name, pid, before)

    # Back again, over TCP inside the namespace this time.
    before = count(pair.b, name)
    port = 20000 + os.getpid() % 20000
    result, _ = migrate(pair, pair.b, pair.a, name, "--verify", listen=f"tcp://127.0.0.1:{port}")
    assert result["verify"]["differences"] == 0, result
    assert_moved(pair.b, pair.a, name)
    assert_counter_goes_on(pair.a, name, pid, before)
    assert run(pair.a, name, f"ls -l /proc/{pid}/fd/3").rstrip().endswith("-> /dev/xvda")


# --- 3. a guest rewriting its memory -------------------------------------------------------------


def test_live_migration_while_the_guest_rewrites_memory(pair: Pair, domains: list[str]) -> None:
    name = create(pair, domains, "busy")
    pid = start_counter(pair.a, name, with_disk=False)
    writer = int(run(pair.a, name, "dd if=/dev/zero of=/dev/shm/x bs=1M count=32 2>/dev/null; "
                                   "(while :; do dd if=/dev/urandom of=/dev/shm/x bs=1M count=32 conv=notrunc "
                                   "2>/dev/null; done) >/dev/null 2>&1 & echo $!").strip())
    before = count(pair.a, name)

    result, _ = migrate(pair, pair.a, pair.b, name, "--verify", "--max-rounds", "4")
    assert result["verify"]["differences"] == 0, result
    assert 2 <= result["rounds"] <= 5, result
    assert_moved(pair.a, pair.b, name)
    assert_counter_goes_on(pair.b, name, pid, before)
    assert run(pair.b, name, f"kill -0 {writer} && echo writing") == "writing\n"
    assert run(pair.b, name, "echo $((6*7))") == "42\n"


# --- 4. a guest writing to its disk --------------------------------------------------------------


DISK_WRITER = (
    "(n=0; while :; do n=$((n+1)); printf 'block-%-4090d' $n | "
    "dd of=/dev/xvda bs=4096 seek=$n count=1 oflag=direct conv=notrunc 2>/dev/null || break; "
    "echo $n > /tmp/n; usleep 20000; done) >/dev/null 2>&1 & echo $!"
)
# Reads blocks 1..n back in one go: an intact block is "block-N" and spaces; a lost block (zeroes),
# a torn one (mixed) or one in the wrong place does not give line N == "block-N".
DISK_CHECK = (
    "n=$(cat /tmp/n); dd if=/dev/xvda bs=4096 skip=1 count=$n iflag=direct 2>/dev/null | tr -s ' ' '\\n' | "
    "awk -v n=$n '$0 != \"block-\" NR { bad++; if (bad <= 5) print \"bad line \" NR } "
    "END { print \"checked\", n, \"lines\", NR, \"bad\", bad + 0 }'"
)


def test_live_migration_while_the_guest_writes_its_disk(pair: Pair, domains: list[str]) -> None:
    name = create(pair, domains, "disky", disk_mib=64)
    writer = int(run(pair.a, name, DISK_WRITER).strip())

    def last() -> int:
        out = run(pair.b if name in names(pair.b) else pair.a, name, "cat /tmp/n 2>/dev/null || echo 0").strip()
        return int(out) if out.isdigit() else 0

    assert wait_for(lambda: last() >= 20, 60), "the disk writer does not write"
    result, _ = migrate(pair, pair.a, pair.b, name, "--verify")
    assert result["verify"]["differences"] == 0, result
    assert_moved(pair.a, pair.b, name)
    at_arrival = last()
    assert wait_for(lambda: last() >= at_arrival + 20, 60), "the disk writer stopped after the migration"
    run(pair.b, name, f"kill {writer}; while kill -0 {writer} 2>/dev/null; do usleep 10000; done; sync")
    out = run(pair.b, name, DISK_CHECK, timeout=300)
    m = re.search(r"checked (\d+) lines (\d+) bad (\d+)$", out.strip())
    assert m, out
    assert int(m.group(1)) >= at_arrival + 20 and m.group(1) == m.group(2) and int(m.group(3)) == 0, out
    # What the host's image holds agrees (the guest wrote around its cache, the backend to the file).
    n = int(m.group(1))
    data = (pair.root / f"{name}.img").read_bytes()
    for i in range(1, n + 1):
        assert data[i * 4096:(i + 1) * 4096].rstrip(b" ") == f"block-{i}".encode(), i


# --- 5. a TCP connection through the migration ---------------------------------------------------


def test_a_tcp_stream_into_the_guest_survives_the_migration(pair: Pair, domains: list[str]) -> None:
    name = create(pair, domains, "net", vif=True)
    run(pair.a, name, f"ip addr add {GUEST_IP}/24 dev eth0 && ip link set eth0 up && echo ok")

    assert wait_for(lambda: icmp_echo(pair.ns, GUEST_IP), 60), "the guest does not answer ping on br0"
    run(pair.a, name, "rm -f /tmp/md5; (nc -l -p 5001 | md5sum > /tmp/md5.part && mv /tmp/md5.part /tmp/md5) "
                      ">/dev/null 2>&1 & echo started")
    data = random.Random(7).randbytes(32 * MIB)
    rate = 4 * MIB
    sent = [0]
    migrated = threading.Event()    # the last 4 MiB wait for it: the stream spans the migration
    outcome: list[BaseException | str] = []

    def connect() -> socket.socket:
        deadline = time.monotonic() + 60
        while True:
            c = socket.socket()
            c.settimeout(60)
            try:
                c.connect((GUEST_IP, 5001))
                return c
            except OSError:
                c.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    conn: list[socket.socket] = []

    def send() -> None:
        # The guest's nc has /dev/null for stdin (a background job of a shell without job
        # control), so it half-closes its side at once: an EOF here says nothing about what
        # the guest received. Only the guest's md5 does; the socket stays open until then,
        # so a stalled stream can be looked at (ss) rather than handed to an orphan.
        try:
            c = in_netns(pair.ns, connect)
            conn.append(c)
            t0 = time.monotonic()
            chunk = 64 * 1024
            for off in range(0, len(data), chunk):
                if off >= len(data) - 4 * MIB and not migrated.is_set():
                    migrated.wait(300)
                c.sendall(data[off:off + chunk])
                sent[0] = off + chunk
                ahead = sent[0] / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            c.shutdown(socket.SHUT_WR)
            outcome.append("done")
        except BaseException as e:  # reported below
            outcome.append(e)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        assert wait_for(lambda: sent[0] >= 6 * MIB or bool(outcome), 60), ("the stream did not start", outcome)
        assert not outcome, outcome
        try:
            result, _ = migrate(pair, pair.a, pair.b, name)
        finally:
            moved_at = sent[0]
            migrated.set()
        assert moved_at < len(data)
        assert_moved(pair.a, pair.b, name)
        sender.join(180)
        assert outcome == ["done"], (outcome, sent[0], pair.logs())

        def md5() -> str:
            return run(pair.b, name, "cat /tmp/md5 2>/dev/null; true").strip()

        # TCP's retransmission back-off after the freeze can reach tens of seconds.
        if not wait_for(lambda: bool(md5()), 180):
            guest = run(pair.b, name, "ls -l /tmp; cat /proc/net/tcp; cat /proc/net/dev; ps; true")
            host = subprocess.run(["ip", "netns", "exec", pair.ns, "ss", "-tin"], capture_output=True, text=True)
            raise AssertionError("nc in the guest never saw the end of the stream\n"
                                 f"guest:\n{guest}\nhost ss:\n{host.stdout}{host.stderr}\n{pair.logs()}")
        assert md5().split()[0] == hashlib.md5(data).hexdigest(), (md5(), moved_at)
    finally:
        for c in conn:
            c.close()
    assert all(icmp_echo(pair.ns, GUEST_IP, 2.0) for _ in range(3)), "no answer to ping after the migration"
    assert result["downtime_ms"] > 0


# --- 6. two vCPUs ---------------------------------------------------------------------------------


def test_a_two_vcpu_guest_moves_live(pair: Pair, domains: list[str]) -> None:
    name = create(pair, domains, "smp", vcpus=2)
    pid = start_counter(pair.a, name, with_disk=False)
    # Keep both vCPUs busy-ish: a shell loop pinned to each.
    run(pair.a, name, "for c in 0 1; do taskset -c $c sh -c 'while :; do :; done' >/dev/null 2>&1 & done; echo ok")
    before = count(pair.a, name)
    result, _ = migrate(pair, pair.a, pair.b, name, "--verify")
    assert result["verify"]["differences"] == 0, result
    assert_moved(pair.a, pair.b, name)
    assert run(pair.b, name, "grep -c ^processor /proc/cpuinfo").strip() == "2"
    assert run(pair.b, name, "cat /sys/devices/system/cpu/online").strip() == "0-1"
    assert_counter_goes_on(pair.b, name, pid, before)
    # Each vCPU still schedules: something runs on either one.
    for cpu in (0, 1):
        assert run(pair.b, name, f"taskset -c {cpu} echo on-{cpu}") == f"on-{cpu}\n"


# --- 7. failures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def victim(pair: Pair) -> Iterator[tuple[str, int]]:
    """A guest on A that the failure tests try to move: (name, counter pid)."""
    made: list[str] = []
    try:
        name = create(pair, made, "victim", disk_mib=16)
        yield name, start_counter(pair.a, name)
    finally:
        for d in (pair.a, pair.b):
            for n in set(made) & names(d):
                d.cli("destroy", n, timeout=60)


def domain_list(d: Hospesd) -> list[dict]:
    status, body = d.json("GET", "/v1/domains")
    assert status == 200, body
    return body if isinstance(body, list) else body.get("domains", [])


def wait_migrating(pair: Pair, name: str, dest: str) -> None:
    """Until the source's domain process says it migrates to ``dest`` (its stderr, domains/N.err)."""
    status, info = pair.a.json("GET", f"/v1/domains/{name}")
    assert status == 200, info
    err = pair.a.run_dir / "domains" / f"{info['domid']}.err"
    assert wait_for(lambda: f"migrating to {dest}" in err.read_text(errors="replace"), 30), pair.logs()


def as_in_a_terminal() -> None:
    """In a child before its exec: SIGINT's default action, as a command typed at a terminal has.

    A disposition is inherited, and a suite started in the background of a
    non-interactive shell (`pytest ... &`, nohup scripts) runs with SIGINT ignored;
    Python then leaves it ignored, as a program should, and the "Ctrl-C" this file
    sends was dropped: the migration ran to its end and the next tests lost the
    victim."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """A migrate command a failed test left running: cancel it (as Ctrl-C does), kill it if need be."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def assert_source_unharmed(pair: Pair, victim: tuple[str, int]) -> None:
    name, pid = victim
    assert state_of(pair.a, name) == "running", pair.logs()
    assert_counter_goes_on(pair.a, name, pid, count(pair.a, name))


def assert_nothing_on_b(pair: Pair) -> None:
    """Nothing half-registered on B once the failure has settled."""
    assert wait_for(lambda: not names(pair.b), 30), (names(pair.b), domain_list(pair.b), pair.logs())


@pytest.fixture
def clean_b(pair: Pair) -> Iterator[None]:
    """After a failure test: whatever it left on B goes, so one failure does not spill into the next."""
    yield
    for name in names(pair.b):
        pair.b.cli("destroy", name, timeout=60)


def test_ctrl_c_cancels_and_the_source_keeps_running(pair: Pair, victim: tuple[str, int], clean_b: None) -> None:
    name, _ = victim
    listen = pair.sock("cancel")
    receiver = Receiver(pair.b, listen)
    proc = subprocess.Popen(migrate_cmd("--bandwidth", "1M", name, listen), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=pair.a.env, preexec_fn=as_in_a_terminal)
    try:
        wait_migrating(pair, name, listen)
        time.sleep(1.0)   # ~1 s of a 1 MiB/s stream: the cancel stops it mid-way
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, (proc.returncode, out, err)
        assert out == b""
        assert f"the migration of {name} was cancelled and it keeps running here" in err.decode(), err
        assert_source_unharmed(pair, victim)
        rc, _, rerr = receiver.finish(60)
        assert rc != 0 and "Traceback" not in rerr, rerr
        # It says why, as POST .../incoming/wait answers with the reason (docs/toolstack.md).
        assert re.search(r"migration into domain \d+ failed", rerr), (rerr, pair.logs())
    finally:
        stop(proc)
        receiver.close()
    assert_nothing_on_b(pair)


def test_a_killed_destination_fails_the_migration_and_the_source_keeps_running(
        pair: Pair, victim: tuple[str, int], clean_b: None) -> None:
    name, _ = victim
    listen = pair.sock("killed")
    receiver = Receiver(pair.b, listen)
    proc = subprocess.Popen(migrate_cmd("--bandwidth", "2M", name, listen), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=pair.a.env,
                            preexec_fn=as_in_a_terminal)   # stop() cancels with SIGINT
    try:
        record = pair.b.run_dir / "domains" / f"{receiver.domid}.json"
        assert wait_for(lambda: record.exists() and json.loads(record.read_text()).get("pid"), 20)
        dest_pid = int(json.loads(record.read_text())["pid"])
        wait_migrating(pair, name, listen)
        time.sleep(1.0)   # well inside the stream: at 2 MiB/s, 256 MiB take minutes
        assert proc.poll() is None, proc.communicate()
        os.kill(dest_pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, (proc.returncode, out, err)
        assert out == b""
        assert f"hospes migrate: {name} was not migrated: " in err.decode(), err
        assert "Traceback" not in err.decode()
        assert_source_unharmed(pair, victim)
        assert_nothing_on_b(pair)
        rc, _, rerr = receiver.finish(60)
        assert rc != 0 and "Traceback" not in rerr, rerr
    finally:
        stop(proc)
        receiver.close()


def relay(listen: Path, target: Path, corrupt_at: int, done: list[object]) -> threading.Thread:
    """A unix-socket relay from ``listen`` to ``target`` that flips one byte of the stream (the
    ``corrupt_at``-th) on its way to the destination, and passes the replies back untouched."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(listen))
    server.listen(1)
    server.settimeout(60)

    def pump(src: socket.socket, dst: socket.socket, flip: int | None) -> None:
        seen = 0
        try:
            while data := src.recv(1 << 16):
                if flip is not None and seen <= flip < seen + len(data):
                    b = bytearray(data)
                    b[flip - seen] ^= 0x5A
                    data = bytes(b)
                    done.append("flipped")
                seen += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def serve() -> None:
        try:
            conn, _ = server.accept()
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            up.connect(str(target))
            back = threading.Thread(target=pump, args=(up, conn, None), daemon=True)
            back.start()
            pump(conn, up, corrupt_at)
            back.join(60)
            conn.close()
            up.close()
        except BaseException as e:   # reported by the test
            done.append(e)
        finally:
            server.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_a_byte_damaged_in_transit_is_refused_and_the_source_keeps_running(
        pair: Pair, victim: tuple[str, int], clean_b: None) -> None:
    name, _ = victim
    listen = pair.sock("real")
    receiver = Receiver(pair.b, listen)
    front = pair.root / (pair.unique("relay") + ".sock")
    events: list[object] = []
    try:
        t = relay(front, Path(listen[len("unix:"):]), corrupt_at=20 * MIB + 12345, done=events)
        r = subprocess.run(migrate_cmd(name, f"unix:{front}"), capture_output=True, timeout=300, env=pair.a.env)
        err = r.stderr.decode(errors="replace")
        assert r.returncode == 1, (r.returncode, r.stdout, err, pair.logs())
        assert "flipped" in events, events
        assert f"hospes migrate: {name} was not migrated: " in err and "Traceback" not in err, err
        assert_source_unharmed(pair, victim)
        assert_nothing_on_b(pair)
        t.join(30)
        # The source says what went wrong there, not just that its socket broke ...
        assert re.search(r"Record \d+ \(PAGES\)|damaged|refused", err), err
        # ... and so does the receiving side.
        rc, _, rerr = receiver.finish(60)
        assert rc != 0 and re.search(r"Record \d+ \(PAGES\) fails its checksum", rerr), (rerr, pair.logs())
    finally:
        receiver.close()


def test_a_destination_answering_garbage_is_refused_and_the_source_keeps_running(
        pair: Pair, victim: tuple[str, int], clean_b: None) -> None:
    name, _ = victim
    path = pair.root / (pair.unique("fake") + ".sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(60)
    got = [0]

    def fake_destination() -> None:
        try:
            conn, _ = server.accept()
            with conn:
                while got[0] < 4 * MIB and (data := conn.recv(1 << 16)):
                    got[0] += len(data)
                conn.sendall(b"this is not a reply stream\n" * 200)
                conn.settimeout(30)
                while conn.recv(1 << 16):
                    pass
        except OSError:
            pass
        finally:
            server.close()

    t = threading.Thread(target=fake_destination, daemon=True)
    t.start()
    r = subprocess.run(migrate_cmd(name, f"unix:{path}"), capture_output=True, timeout=300, env=pair.a.env)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1, (r.returncode, r.stdout, err, pair.logs())
    assert got[0] > 0
    assert f"hospes migrate: {name} was not migrated: " in err and "Traceback" not in err, err
    assert re.search(r"[Rr]ecord|damaged|refused|reply", err), err
    t.join(30)
    assert_source_unharmed(pair, victim)


def test_restore_refuses_a_newer_version_and_a_truncated_file(pair: Pair, victim: tuple[str, int],
                                                              clean_b: None) -> None:
    name, _ = victim
    # A stream whose HEADER says version 99, with a plausible rest.
    out = io.BytesIO()
    w = StreamWriter(out)
    out.seek(0)
    out.truncate()
    w._record(RecordType.HEADER, json.dumps({"format": "hospes-domain-stream", "version": 99,
                                             "page_size": PAGE_SIZE, "features": []}).encode())
    w.config({"domain": {"name": "future"}, "memory_bytes": 1 << 20})
    w.end()
    newer = pair.root / "newer.save"
    newer.write_bytes(out.getvalue())
    r = pair.b.cli("restore", str(newer), timeout=120)
    err = r.stderr.decode(errors="replace")
    assert r.returncode != 0, (r.returncode, err)
    assert "version 99" in err and "Traceback" not in err, err
    assert not names(pair.b)

    # A real save file (a checkpoint of the victim), cut in the middle of its pages.
    whole = pair.root / "victim.ckpt"
    r = pair.a.cli("save", "-c", name, str(whole), timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    cut = pair.root / "victim-cut.save"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    r = pair.b.cli("restore", str(cut), 'name="victim-cut"', timeout=300)
    err = r.stderr.decode(errors="replace")
    assert r.returncode != 0, (r.returncode, err, pair.logs())
    assert re.search(r"[Rr]ecord \d+ \(\w+\)", err) and "Traceback" not in err, err
    assert wait_for(lambda: not names(pair.b), 30), names(pair.b)
    assert_source_unharmed(pair, victim)


# --- 8. over "ssh" ---------------------------------------------------------------------------------


def test_migration_over_ssh(pair: Pair, domains: list[str]) -> None:
    name = create(pair, domains, "sshed")
    pid = start_counter(pair.a, name, with_disk=False)
    before = count(pair.a, name)
    r = subprocess.run(migrate_cmd(name, "root@otherhost"), capture_output=True, timeout=600,
                       env={**pair.a.env, "HOSPES_SSH": str(pair.ssh)})
    out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    assert r.returncode == 0, err + pair.logs()
    assert re.fullmatch(rf"migrated {name}: downtime [\d.]+ ms, total [\d.]+ s, \d+ rounds, \d+ pages sent\n",
                        out), out
    assert_moved(pair.a, pair.b, name)
    assert_counter_goes_on(pair.b, name, pid, before)
    assert not list(pair.b.run_dir.glob("mig-*.sock")), "migrate-receive left its socket behind"

