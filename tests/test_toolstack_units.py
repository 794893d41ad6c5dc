"""Unit tests of the toolstack's small parts: no daemon, no KVM."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hospes.errors import HospesError
from hospes.toolstack import control, lifecycle
from hospes.toolstack.console_run import ABANDON_READ, BLOCK_LINES, MAX_COMMAND, MarkerRun
from hospes.domain import ShutdownReason
from hospes.toolstack.domain_config import domain_config
from hospes.toolstack.domain_process import ControlServer, valid_name
from hospes.toolstack.record import (
    DomainRecord, process_alive, process_start_time, read_record, write_record,
)
from hospes.toolstack.rundir import RunDir, RunDirError
from hospes.toolstack.schema import validate
from hospes.toolstack.spec import DomainSpec


def _spec(name: str = "x", **keys: object) -> DomainSpec:
    return DomainSpec.from_config({"name": name, "kernel": "/k", **keys})


def build_config(spec: DomainSpec, domid: int) -> object:
    return domain_config(spec, domid, log=print)


# --- run dir and records ---------------------------------------------------------------------


def test_domids_are_monotonic_and_skip_existing(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r").ensure()
    assert [run.allocate_domid() for _ in range(3)] == [1, 2, 3]
    write_record(run.state_file(10), DomainRecord(10, "x", "u", _spec()))
    assert run.allocate_domid() == 11
    assert run.domids() == [10]


def test_domids_stay_below_the_reserved_ones_and_wrap_around_those_in_use(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r").ensure()
    (run.root / "next-domid").write_text(f"{0x7FEE}\n")
    for domid in (0x7FEE, 1, 2):
        write_record(run.state_file(domid), DomainRecord(domid, f"d{domid}", "u", _spec()))
    # 0x7fef is the last ordinary domid; then 1 and 2 are taken, so 3 comes next.
    assert [run.allocate_domid() for _ in range(2)] == [0x7FEF, 3]
    # A counter left at DOMID_SELF (0x7ff0) or beyond is never handed out.
    (run.root / "next-domid").write_text(f"{0x7FF0}\n")
    assert run.allocate_domid() == 3


def test_run_dir_too_long_for_sockets_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="too long"):
        RunDir(tmp_path / ("x" * 120)).ensure()


def test_record_round_trip_and_unknown_fields(tmp_path: Path) -> None:
    rec = DomainRecord(4, "web", "uuid-1", _spec("web", memory=128), state="running", pid=123)
    path = tmp_path / "4.json"
    write_record(path, rec)
    assert read_record(path) == rec
    path.write_text('{"domid": 4, "name": "n", "uuid": "u", "spec": {"format": 1, "name": "n", "kernel": "/k"}, '
                    '"future_field": 1}')
    assert read_record(path).name == "n"
    path.write_text("{half")
    assert read_record(path) is None
    assert read_record(tmp_path / "missing.json") is None


def test_process_liveness_uses_start_time() -> None:
    me = os.getpid()
    start = process_start_time(me)
    assert process_alive(me, start)
    assert not process_alive(me, start + 1)     # same pid, another process (reuse)
    assert not process_alive(None, None)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    pid = p.pid
    st = process_start_time(pid)
    deadline = time.monotonic() + 10
    while process_alive(pid, st) and time.monotonic() < deadline:
        time.sleep(0.02)                        # a zombie counts as dead already
    assert not process_alive(pid, st)
    p.wait()


# --- lifecycle -------------------------------------------------------------------------------


@pytest.mark.parametrize("reason, spec, action", [
    ("poweroff", {}, "destroy"),
    ("reboot", {}, "restart"),
    ("crash", {}, "destroy"),
    ("crash", {"on_crash": "preserve"}, "preserve"),
    ("poweroff", {"on_poweroff": "restart"}, "restart"),
    ("reboot", {"on_reboot": "rename-restart"}, "restart"),
    ("crash", {"on_crash": "coredump-destroy"}, "destroy"),
    ("watchdog", {}, "destroy"),
    ("suspend", {}, "preserve"),
    ("destroyed", {"on_poweroff": "restart"}, "destroy"),
])
def test_actions(reason: str, spec: dict, action: str) -> None:
    assert lifecycle.action_for(ShutdownReason(reason), _spec(**spec)) == action


def test_xl_flags() -> None:
    assert lifecycle.xl_flags("running") == "r-----"
    assert lifecycle.xl_flags("running", blocked=True) == "-b----"
    assert lifecycle.xl_flags("paused") == "--p---"
    assert lifecycle.xl_flags("shutdown", "poweroff") == "---s--"
    assert lifecycle.xl_flags("shutdown", "reboot") == "---sr-"
    assert lifecycle.xl_flags("crashed", "crash") == "---sc-"
    assert lifecycle.xl_flags("dying") == "-----d"


@pytest.mark.parametrize("name", ["", "123", "a b", "a/b", "Domain-0", "x" * 65, "tab\there", 'q"'])
def test_bad_names(name: str) -> None:
    with pytest.raises(HospesError):
        valid_name(name)


def test_good_name() -> None:
    assert valid_name("web-1.example_2") == "web-1.example_2"


def test_build_config_maps_the_spec(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    cfg = build_config(_spec("web", kernel=str(kernel), memory=192, vcpus=1, cmdline="quiet"), 7)
    assert (cfg.kernel, cfg.ramdisk, cfg.memory_mib, cfg.domid, cfg.name, cfg.cmdline) == \
        (kernel, None, 192, 7, "web", "quiet")


def test_build_config_attaches_disks_and_vifs_from_the_spec(tmp_path: Path) -> None:
    from hospes.toolstack.spec import load_spec

    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    cfgfile = tmp_path / "d.cfg"
    cfgfile.write_text(
        f'name = "d"\nkernel = "{kernel}"\n'
        f'disk = [ "{tmp_path}/a.img,raw,xvda,rw", "{tmp_path}/b.img,raw,xvdb,ro" ]\n'
        'vif = [ "mac=00:16:3e:00:00:01,vifname=tapd0", "" ]\n'
    )
    cfg = build_config(load_spec(cfgfile), 3)
    assert [(d.path.name, d.readonly, d.vdev) for d in cfg.disks] == [("a.img", False, 51712), ("b.img", True, 51728)]
    assert [(v.mac, v.tap, v.devid) for v in cfg.vifs] == [("00:16:3e:00:00:01", "tapd0", 0), (cfg.vifs[1].mac, None, 1)]
    assert cfg.vifs[1].mac.startswith("00:16:3e:")


def test_build_config_carries_bridge_and_rate_to_the_backend(tmp_path: Path) -> None:
    from hospes.toolstack.spec import load_spec

    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    cfgfile = tmp_path / "d.cfg"
    cfgfile.write_text(f'name = "d"\nkernel = "{kernel}"\n'
                       'vif = [ "bridge=br7,rate=10Mb/s@20ms", "rate=1B/s", "" ]\n')
    vifs = build_config(load_spec(cfgfile), 3).vifs
    # 10 Mbit/s = 1,250,000 bytes/s -> 25,000 bytes per 20 ms window
    assert [(v.bridge, v.rate_bytes, v.rate_usecs) for v in vifs] == [
        ("br7", 25_000, 20_000), (None, 1, 50_000), (None, 0, 50_000)]


def _vif_configs(vifs: tuple[str, ...]) -> tuple:
    from hospes.toolstack.run_spec import RunFlags, run_spec

    return build_config(run_spec(RunFlags(kernel=Path("/k"), vifs=vifs)), 1).vifs


def test_run_vif_option_takes_bridge_and_rate() -> None:
    from hospes.errors import HospesError

    (v,) = _vif_configs(("tap=t0,bridge=br0,rate=8KB/s@100ms",))
    assert (v.tap, v.bridge, v.rate_bytes, v.rate_usecs) == ("t0", "br0", 800, 100_000)
    for bad, says in (("rate=fast", "invalid rate"), ("speed=1", "is not one of"), ("rate=1Mb/s@0ms", "out of range")):
        with pytest.raises(HospesError, match=says):
            _vif_configs((bad,))


# --- the console marker protocol ----------------------------------------------------------------


def test_marker_run_parses_output_between_markers() -> None:
    m = MarkerRun("echo hi; false", token="tok")
    assert b"tok ready" in m.probe_line() and b"tok-ready" not in m.probe_line()
    line = m.command_line()
    assert b"tok-begin" not in line and b"tok-end" not in line
    # The terminal echoes the typed lines first; they must not count.
    m.feed(m.probe_line().replace(b"\n", b"\r\n"))
    assert not m.ready
    m.feed(b"tok-ready\r\nhospes:/# ")
    assert m.ready and not m.done
    m.feed(line.replace(b"\n", b"\r\n") + b"tok-begin\r\nhi\r\nsecond line\r\n")
    assert not m.done
    m.feed(b"tok-end 1\r\nhospes:/# ")
    assert m.done and m.exit_status == 1 and m.output == "hi\nsecond line\n"


def test_marker_run_command_round_trips_through_the_shell() -> None:
    """The typed line, run by a real sh, runs the command and reports its status."""
    cmd = "printf '%s\\n' \"it's $((6*7))\"; exit 5"
    m = MarkerRun(cmd, token="T")
    p = subprocess.run(["sh"], input=m.command_line()[1:], capture_output=True, timeout=10)
    m.feed(p.stdout)
    assert m.done and m.exit_status == 5 and m.output == "it's 42\n"


def test_marker_run_refuses_long_commands() -> None:
    with pytest.raises(ValueError):
        MarkerRun("x" * (MAX_COMMAND + 1))


def _drive_on_a_pty(m: MarkerRun, timeout: float = 60.0) -> bytes:
    """Run ``m`` against a real sh on a pseudo-terminal, as the daemon drives a guest console."""
    import os
    import pty
    import select
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(["sh", "-i"], stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    os.set_blocking(master, False)
    out, pending = b"", m.probe_line()
    deadline = time.monotonic() + timeout
    try:
        while not m.done and time.monotonic() < deadline:
            line = m.next_line()
            while line is not None:
                pending += line
                line = m.next_line()
            ready = select.select([master], [master] if pending else [], [], 0.2)
            if ready[1] and pending:
                pending = pending[os.write(master, pending[:1024]):]
            if ready[0]:
                data = os.read(master, 65536)
                out += data
                m.feed(data)
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    return out


@pytest.mark.parametrize("size", [700, 10_000, 100_000])
def test_long_commands_run_through_a_terminal_in_blocks_the_guest_asks_for(size: int) -> None:
    """Commands over ~700 bytes wedged the console (their one line passed busybox's 1024-byte
    line editor): now a short line reads the command's base64 from the terminal, block by
    block, each typed when the shell asks for it; no typed line comes near 1024 bytes."""
    import hashlib
    import random

    text = "".join(random.Random(size).choice("abc 'x\"$\\\n") for _ in range(size))
    cmd = "cat <<'HOSPES_EOF' | md5sum\n" + text + "\nHOSPES_EOF"
    m = MarkerRun(cmd, token="T")
    assert all(len(line) < 1024 for line in m.command_line().splitlines())
    assert m.next_line() is None                 # nothing before the shell is ready
    out = _drive_on_a_pty(m)
    want = hashlib.md5((text + "\n").encode()).hexdigest()
    assert m.done and m.exit_status == 0, out[-2000:]
    assert m.output.split()[0] == want
    assert m.sent == len(m._lines)


def test_an_abandoned_long_command_leaves_a_usable_shell() -> None:
    """A run given up on mid-transfer: ABANDON_READ ends the reading loop (Ctrl-C) and the
    next command runs in the same shell, with the echo back on."""
    import os
    import pty
    import select
    import time

    master, slave = pty.openpty()

    def as_a_console_shell() -> None:
        import fcntl
        import signal
        import termios

        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        # ^C must reach the shell's children, as on a guest console: a pytest started
        # in the background by a non-interactive shell has SIGINT ignored, and an
        # ignored or blocked signal is inherited (dash then ignores it for good).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])

    proc = subprocess.Popen(["sh", "-i"], stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=as_a_console_shell)
    os.close(slave)

    def pump(m: MarkerRun, until: Callable[[], bool], timeout: float = 30.0) -> bytes:
        out = b""
        deadline = time.monotonic() + timeout
        last_probe = 0.0
        while not until() and time.monotonic() < deadline:
            if not m.ready and time.monotonic() - last_probe > 0.5:
                os.write(master, m.probe_line())
                last_probe = time.monotonic()
            line = m.next_line()
            if line is not None:
                os.write(master, line)
            if select.select([master], [], [], 0.1)[0]:
                data = os.read(master, 65536)
                out += data
                m.feed(data)
        return out

    try:
        long_run = MarkerRun("echo never-run-" + "x" * 50_000, token="L")
        pump(long_run, lambda: long_run.sent == 2)     # the loop line and block 0 only
        assert long_run.reading and not long_run.done
        os.write(master, ABANDON_READ)
        short = MarkerRun("echo after; exit 3", token="S")
        out = pump(short, lambda: short.done)
        assert short.done and short.exit_status == 3 and short.output == "after\n", out[-500:]
        assert b"never-run" not in out
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


def test_blocks_wait_for_the_guest_to_ask() -> None:
    m = MarkerRun("x" * 100_000, token="T")
    m.feed(b"T-ready\r\n")
    first = m.next_line()
    assert first is not None and b"stty -echo" in first and m.next_line() is None
    m.feed(first.replace(b"\n", b"\r\n") + b"T-a0\r\n")     # the echo does not count, the request does
    block = m.next_line()
    assert block is not None and block.count(b"\n") == BLOCK_LINES and m.next_line() is None
    m.feed(b"T-a1\r\n")
    assert m.next_line() is not None and m.next_line() is None


# --- the schema subset ----------------------------------------------------------------------


def test_schema_validator() -> None:
    comps = {"N": {"type": "object", "required": ["a"], "additionalProperties": False,
                   "properties": {"a": {"type": "integer", "minimum": 1},
                                  "b": {"type": ["string", "null"], "maxLength": 3},
                                  "c": {"type": "array", "items": {"type": "boolean"}}}}}
    ref = {"$ref": "#/components/schemas/N"}
    assert validate({"a": 1, "b": None, "c": [True]}, ref, comps) == []
    assert validate({"a": True}, ref, comps)            # a bool is no integer
    assert validate({"a": 0}, ref, comps)
    assert validate({"a": 1, "b": "long"}, ref, comps)
    assert validate({"a": 1, "c": [1]}, ref, comps)
    assert validate({"a": 1, "z": 1}, ref, comps)
    assert validate({}, ref, comps)
    assert validate([], ref, comps)
    assert validate(2.0, {"type": "integer"}, comps) == []


# --- the control server of a domain process (with a stand-in for the domain) ------------------------


class _FakeProc:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.input = b""

        class _Log:
            path = Path("/tmp/console.log")

        self.log = _Log()

    def status(self) -> dict:
        return {"state": "running"}

    def pause(self) -> None:
        self.calls.append(("pause",))

    def unpause(self) -> None:
        self.calls.append(("unpause",))

    def request_shutdown(self, reason: str) -> None:
        self.calls.append(("shutdown", reason))

    def destroy(self) -> None:
        self.calls.append(("destroy",))

    def rename(self, name: str) -> None:
        self.calls.append(("rename", name))

    def queue_input(self, data: bytes) -> None:
        self.input += data


def test_control_server_ops_and_console(tmp_path: Path) -> None:
    import socket

    fake = _FakeProc()
    path = tmp_path / "c.sock"
    server = ControlServer(fake, path)  # type: ignore[arg-type]
    server.start()
    try:
        assert control.request_sync(path, "status")["state"] == "running"
        control.request_sync(path, "pause")
        control.request_sync(path, "shutdown", reason="reboot")
        control.request_sync(path, "rename", name="new")
        assert control.request_sync(path, "log")["path"] == "/tmp/console.log"
        with pytest.raises(control.ControlError, match="Unknown control operation"):
            control.request_sync(path, "explode")
        with pytest.raises(control.ControlError, match="Unknown shutdown reason"):
            control.request_sync(path, "shutdown", reason="halt-and-catch-fire")
        with pytest.raises(control.ControlError, match="name"):
            control.request_sync(path, "rename", name="bad name")
        # Garbage does not take the server down.
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(b"\xff\xfe not json\n")
            assert b'"ok":false' in s.recv(4096)
        assert fake.calls == [("pause",), ("shutdown", "reboot"), ("rename", "new")]
        # Console: output fans out, input is queued for the guest.
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(control.encode({"op": "console"}))
            assert s.recv(4096) == b'{"ok":true}\n'
            deadline = time.monotonic() + 5
            while not server.consoles and time.monotonic() < deadline:
                time.sleep(0.01)
            server.broadcast(b"guest says hi")
            s.settimeout(5)
            assert s.recv(4096) == b"guest says hi"
            s.sendall(b"ls\r")
            deadline = time.monotonic() + 5
            while fake.input != b"ls\r" and time.monotonic() < deadline:
                time.sleep(0.01)
            assert fake.input == b"ls\r"
        assert control.request_sync(path, "status")["state"] == "running"
    finally:
        server.stop()
    assert not path.exists()


# --- the one place @default is resolved ----------------------------------------------------------------


@pytest.fixture()
def fake_default_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    from hospes.images import DefaultImages

    images = DefaultImages(kernel=tmp_path / "vmlinuz-default", initramfs=tmp_path / "initramfs-default",
                           kernel_version="6.1", modules=())
    images.initramfs.write_bytes(b"")
    monkeypatch.setattr("hospes.images.ensure_default_images", lambda **kw: images)
    return images


def test_default_kernel_brings_the_default_initramfs_and_its_console(fake_default_images) -> None:
    cfg = build_config(_spec(kernel="@default"), 2)
    assert (cfg.kernel, cfg.ramdisk, cfg.cmdline) == (
        fake_default_images.kernel, fake_default_images.initramfs, "console=hvc0 quiet noreplace-smp")
    cfg = build_config(_spec(kernel="@default", cmdline="console=hvc0 loglevel=8"), 2)
    assert cfg.cmdline == "console=hvc0 loglevel=8"


def test_an_own_ramdisk_keeps_its_empty_command_line(fake_default_images, tmp_path: Path) -> None:
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"")
    cfg = build_config(_spec(kernel="@default", ramdisk=str(initrd)), 2)
    assert (cfg.kernel, cfg.ramdisk, cfg.cmdline) == (fake_default_images.kernel, initrd, "")
    with pytest.raises(HospesError, match="Ramdisk .*missing does not exist; check the path"):
        build_config(_spec(ramdisk=str(tmp_path / "missing")), 2)


def test_run_flags_and_a_config_file_build_the_same_domain_config(fake_default_images, tmp_path: Path) -> None:
    from hospes.toolstack.run_spec import RunFlags, run_spec
    from hospes.toolstack.spec import load_spec

    cfgfile = tmp_path / "d.cfg"
    cfgfile.write_text('name = "guest"\nkernel = "@default"\nmemory = 256\non_soft_reset = "destroy"\n'
                       'disk = [ "/srv/a.img,raw,xvda,rw" ]\nvif = [ "vifname=t0" ]\n')
    from_flags = build_config(run_spec(RunFlags(disks=("/srv/a.img",), vifs=("tap=t0",))), 1)
    assert from_flags == build_config(load_spec(cfgfile), 1)


def test_records_keep_enums_and_the_typed_spec_through_json(tmp_path: Path) -> None:
    from hospes.toolstack.lifecycle import DomainState

    rec = DomainRecord(5, "web", "u", _spec("web", on_crash="preserve"), state=DomainState.SHUTDOWN,
                       shutdown_reason=ShutdownReason.CRASH)
    write_record(tmp_path / "5.json", rec)
    back = read_record(tmp_path / "5.json")
    assert back == rec
    assert back.state is DomainState.SHUTDOWN and back.shutdown_reason is ShutdownReason.CRASH
    assert back.spec.on_crash == "preserve" and isinstance(back.spec, DomainSpec)


def test_a_stale_daemon_pid_file_names_no_daemon(tmp_path: Path) -> None:
    import fcntl
    import os
    import subprocess

    from hospes.cli.daemon import _daemon_pid

    run = RunDir(tmp_path / "r").ensure()
    stranger = subprocess.Popen(["sleep", "30"])   # a live process that is no daemon of this directory
    try:
        run.pid_file.write_text(f"{stranger.pid}\n")
        assert _daemon_pid(run) is None            # `daemon stop` must not signal it
        fd = os.open(run.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)            # this process plays the daemon holding the lock
            assert _daemon_pid(run) is None           # the pid file still names the stranger
            run.pid_file.write_text(f"{os.getpid()}\n")
            assert _daemon_pid(run) == os.getpid()
        finally:
            os.close(fd)
        assert _daemon_pid(run) is None               # lock released: a daemon that died
    finally:
        stranger.kill()
        stranger.wait()
