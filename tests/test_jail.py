"""The jailed domain process (issue 13 item 2; docs/security.md).

A domain process under hospesd runs as its own uid with no capabilities, in its
own mount, PID and IPC namespaces, with a seccomp filter (``Seccomp: 2``), no
core dumps and a cgroup memory limit; its root holds no host file it was not
given, and a save to a path outside the jail, asked for on its control socket,
fails. The filter itself kills a process that makes a system call off the list.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from hospes.cgroup import find_hierarchy, memory_overhead
from hospes.toolstack import control
from hospes.devices.tap import TUNGETIFF, close_handed_taps, hand_over_tap, open_tap
from hospes.domain import Domain, DomainConfig, ShutdownReason
from hospes.toolstack.jail import JAIL_ID_BASE, JailError, jail_ids, prepare_tap, python_paths, release_tap
from hospes.toolstack.jail_syscalls import allowed_syscalls, make_filter
from conftest import guest_build
from netns_helpers import can_make_netns, in_netns
from toolstack_helpers import REPO, Hospesd

CONFIG = str(REPO / "examples" / "debian-pv.cfg")
USERSPACE = "hospes: userspace up"
MEMORY = 160


# --- the filter, in a forked child ---------------------------------------------------------------

def _in_filtered_child(call: str) -> int:
    """Fork; the child loads the jail's filter and makes ``call``; return its wait status."""
    pid = os.fork()
    if pid == 0:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            make_filter("kill").load()
            if call == "getpid":
                os.getpid()
                os._exit(7)
            if call == "ptrace":
                libc.ptrace(0, 0, 0, 0)           # PTRACE_TRACEME
            elif call == "mount":
                libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)
            elif call == "unshare-user":
                libc.unshare(0x10000000)          # CLONE_NEWUSER
            elif call == "execve":
                os.execv("/bin/true", ["true"])
            os._exit(0)                           # the call came back: the filter let it through
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    return status


def test_the_list_is_measured_data() -> None:
    names = allowed_syscalls()
    assert "ioctl" in names and "mmap" in names       # KVM and guest memory
    for never in ("ptrace", "mount", "pivot_root", "execve", "unshare", "setns", "init_module", "bpf"):
        assert never not in names, never
    header = (REPO / "src" / "hospes" / "toolstack" / "jail_syscalls.txt").read_text().splitlines()[:4]
    assert any("measure_jail_syscalls.py" in line for line in header)


def test_an_allowed_call_works_under_the_filter() -> None:
    status = _in_filtered_child("getpid")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7


@pytest.mark.parametrize("call", ["ptrace", "mount", "unshare-user", "execve"])
def test_a_call_off_the_list_kills_the_process(call: str) -> None:
    status = _in_filtered_child(call)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS, status


def test_jail_ids_are_per_domain_and_never_root() -> None:
    assert jail_ids(1) == (JAIL_ID_BASE + 1, JAIL_ID_BASE + 1)
    assert jail_ids(0x7FEF)[0] == JAIL_ID_BASE + 0x7FEF < 2**31
    with pytest.raises(JailError):
        jail_ids(0)


# --- the TAPs a jailed domain gets ------------------------------------------------------------------

@contextlib.contextmanager
def _fresh_netns(*names: str) -> Iterator[tuple[str, ...]]:
    """Empty network namespaces ``names`` for the test, deleted (with their devices) after it."""
    if not can_make_netns():
        pytest.fail("this test needs root, ip(8) and /dev/net/tun")
    for n in names:
        subprocess.run(["ip", "netns", "del", n], capture_output=True)
        subprocess.run(["ip", "netns", "add", n], check=True)
    try:
        yield names
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def _open_tap_elsewhere(name: str) -> subprocess.CompletedProcess[str]:
    """open_tap in another process (of this thread's network namespace), which was handed nothing."""
    code = f"from hospes.devices.tap import open_tap; open_tap({name!r}, 1500)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_a_prepared_tap_opens_at_once_and_stays_its_domains(tmp_path: Path) -> None:
    # The set-up makes the TAP persistent and hands its descriptor over; the jailed process
    # opens it right away, and again at every reboot. (Reopened by name, the kernel's
    # "running" flag lagged a closed queue by up to a second, so the TAP looked held and the
    # build failed: "another process holds it".)
    uid, gid = jail_ids(5)

    def scenario() -> None:
        prepare_tap("hjt0", 1500, None, uid, gid)
        try:
            for _ in range(10):   # build, then reboots: each closes its copy and opens one again at once
                os.close(open_tap("hjt0", 1500))
            fd = open_tap("hjt0", 1500)
            try:
                proc = _open_tap_elsewhere("hjt0")   # while the domain holds it, nobody else gets it
                assert proc.returncode != 0 and "another process holds it" in proc.stderr, proc.stderr
            finally:
                os.close(fd)
        finally:
            close_handed_taps()
            release_tap("hjt0", uid)

    with _fresh_netns(f"hospes-jailtap{os.getpid()}") as (ns,):
        in_netns(ns, scenario)


def test_handing_a_tap_over_again_closes_the_descriptor_it_replaces() -> None:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        hand_over_tap("hjtx", r1)
        hand_over_tap("hjtx", r2)
        with pytest.raises(OSError):
            os.fstat(r1)
        os.fstat(r2)
        close_handed_taps()
        with pytest.raises(OSError):
            os.fstat(r2)
    finally:
        close_handed_taps()
        os.close(w1)
        os.close(w2)


def test_a_prepared_tap_moved_to_another_namespace_still_opens(tmp_path: Path) -> None:
    # The bench (and anyone wiring a guest into a namespace) moves the TAP away as soon as it
    # appears. Reopened by name, the jailed process then asked for a new TAP, which it may not
    # create: "Cannot create TAP device ...: Operation not permitted".
    uid, gid = jail_ids(5)
    away = f"hospes-jailaway{os.getpid()}"

    def scenario() -> None:
        prepare_tap("hjt1", 1500, None, uid, gid)
        try:
            subprocess.run(["ip", "link", "set", "hjt1", "netns", away], check=True)
            fd = open_tap("hjt1", 1500)
            try:
                name = fcntl.ioctl(fd, TUNGETIFF, bytes(40))[:16].rstrip(b"\0").decode()
                assert name == "hjt1"
                here = subprocess.run(["ip", "link", "show", "hjt1"], capture_output=True)
                assert here.returncode != 0      # no new TAP was made where the old one was
            finally:
                os.close(fd)
        finally:
            close_handed_taps()

    with _fresh_netns(f"hospes-jailtap{os.getpid()}", away) as (ns, _):
        in_netns(ns, scenario)
        there = subprocess.run(["ip", "-n", away, "link", "show", "hjt1"], capture_output=True, text=True)
        assert there.returncode == 0, there.stderr


# --- guest memory across reboots ------------------------------------------------------------------

@pytest.mark.kvm
def test_an_ended_domain_gives_its_memory_back_at_once() -> None:
    # A reboot builds a new domain in the same process. The old one's memory went only when
    # the cyclic collector reached its views, so a jailed domain rebooting in a row held
    # several guests' memory and its cgroup's limit killed it (SIGKILL at the 7th boot).
    dom = Domain(DomainConfig(kernel=guest_build.build_guest("hello"), memory_mib=32),
                 console_out=lambda b: None, hypervisor_log=lambda b: None)
    result = dom.run()
    assert result.reason is ShutdownReason.POWEROFF, result
    held = os.fstat(dom.mem.fd).st_blocks
    assert held > 0                       # the guest wrote its memory (kernel, page tables, stack)
    dom.close()
    assert os.fstat(dom.mem.fd).st_blocks == 0, held


# --- a real domain under hospesd -------------------------------------------------------------------

@pytest.fixture(scope="module")
def jailed(tmp_path_factory: pytest.TempPathFactory, default_images) -> Iterator[tuple[Hospesd, int]]:
    d = Hospesd(tmp_path_factory.mktemp("jail"))
    try:
        d.start()
        r = d.cli("create", CONFIG, 'name="jailed"', f"memory={MEMORY}", timeout=600)
        assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
        h = d.client()
        deadline = time.monotonic() + 600
        while USERSPACE not in h.domain("jailed").console_log() and time.monotonic() < deadline:
            time.sleep(1)
        assert USERSPACE in h.domain("jailed").console_log(), d.log()[-3000:]
        info = h.domain("jailed").info
        yield d, int(info["pid"])
    finally:
        d.close()


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


@pytest.mark.kvm
@pytest.mark.debian
@pytest.mark.timeout(900)
def test_domain_process_is_unprivileged_filtered_and_in_its_own_namespaces(jailed: tuple[Hospesd, int]) -> None:
    d, pid = jailed
    st = _status(pid)
    uid = JAIL_ID_BASE + 1
    assert st["Uid"].split() == [str(uid)] * 4
    assert st["Gid"].split() == [str(uid)] * 4
    assert st["Groups"] == ""
    assert st["Seccomp"] == "2"
    assert st["NoNewPrivs"] == "1"
    assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0
    assert d.proc is not None
    for ns in ("mnt", "pid", "ipc"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/{d.proc.pid}/ns/{ns}"), ns
    assert "Max core file size        0" in Path(f"/proc/{pid}/limits").read_text()


@pytest.mark.kvm
@pytest.mark.debian
@pytest.mark.timeout(900)
def test_domain_process_has_a_memory_limit(jailed: tuple[Hospesd, int]) -> None:
    d, pid = jailed
    config = d.client().domain("jailed").info["config"]
    guest = max(config["memory"], config.get("maxmem") or 0)     # the most it can balloon up to
    assert guest >= MEMORY
    hier = find_hierarchy(controller="memory")
    assert hier is not None
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (hier.version == 2 and controllers == "") or (hier.version == 1 and "memory" in controllers.split(",")):
            group = hier.root / path.lstrip("/")
            break
    else:
        pytest.fail("the domain process is in no memory cgroup")
    name = "memory.max" if hier.version == 2 else "memory.limit_in_bytes"
    assert int((group / name).read_text()) == (guest + memory_overhead(guest)) * 1024 * 1024


@pytest.mark.kvm
@pytest.mark.debian
@pytest.mark.timeout(900)
def test_host_files_are_not_in_the_jail(jailed: tuple[Hospesd, int], default_images) -> None:
    _, pid = jailed
    root = Path(f"/proc/{pid}/root")
    assert Path("/etc/shadow").exists()
    assert not (root / "etc" / "shadow").exists()
    # The interpreter, the venv and the source (wherever this checkout is), /etc's few name-service
    # files, the kernel and initramfs from the image cache: nothing else.
    shown = {p.resolve().parts[1] for p in (*python_paths(), default_images.kernel, default_images.initramfs)}
    assert {p.name for p in root.iterdir()} <= {"dev", "etc", "proc", "tmp"} | shown
    assert {p.name for p in (root / "etc").iterdir()} <= {"hosts", "resolv.conf", "nsswitch.conf", "gai.conf",
                                                          "localtime"}
    assert sorted(p.name for p in (root / "dev").iterdir()) == ["kvm", "net", "null", "random", "urandom", "zero"]


@pytest.mark.kvm
@pytest.mark.debian
@pytest.mark.timeout(900)
def test_a_save_outside_the_jail_fails_and_one_through_hospesd_works(jailed: tuple[Hospesd, int],
                                                                     tmp_path: Path) -> None:
    d, pid = jailed
    outside = Path("/etc") / f"hospes-jail-escape-{os.getpid()}"
    sock = d.run_dir / "domains" / "1.sock"
    import asyncio

    with pytest.raises(control.ControlError, match="jailed"):
        asyncio.run(control.request(sock, "save", timeout=60, path=str(outside), checkpoint=True))
    assert not outside.exists()
    assert not Path(f"/etc/.{outside.name}.partial").exists()
    # The same checkpoint through hospesd: it opens the file and hands it over.
    saved = tmp_path / "jailed.save"
    r = d.cli("save", "-c", "jailed", str(saved), timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert saved.stat().st_size > MEMORY * 1024 * 1024 // 8
    assert d.client().domain("jailed").info["state"] == "running"    # a checkpoint: it runs on


@pytest.mark.kvm
@pytest.mark.debian
@pytest.mark.timeout(900)
def test_hospesd_no_jail_runs_domains_unjailed(tmp_path: Path, default_images) -> None:
    d = Hospesd(tmp_path, ["--no-jail"])
    try:
        d.start()
        r = d.cli("create", CONFIG, 'name="free"', f"memory={MEMORY}", timeout=600)
        assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
        pid = int(d.client().domain("free").info["pid"])
        st = _status(pid)
        assert st["Uid"].split()[0] == "0" and st["Seccomp"] == "0"
        assert d.proc is not None
        assert os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink(f"/proc/{d.proc.pid}/ns/mnt")
    finally:
        d.close()
