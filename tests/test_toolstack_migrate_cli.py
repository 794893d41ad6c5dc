"""The save/restore/migrate/migrate-receive commands, without a daemon: argument parsing, output
formats, and migrate-receive's stdin/stdout relay against a fake incoming domain."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import click
import pytest
from click.testing import CliRunner

from hospes.cli import cli, migrate, xl
from hospes.toolstack.client import HospesApiError

RESULT = {"domid": 7, "dest": "otherhost", "downtime_ms": 12.345, "total_s": 1.5, "rounds": 3,
          "pages_sent": 40000, "bytes_sent": 163840000,
          "per_round": [{"round": 1, "pages": 32768, "dirty": 6000, "seconds": 1.0}],
          "verify": {"pages": 32768, "differences": 0}}


@pytest.fixture(scope="module", autouse=True)
def commands() -> None:
    if "migrate" not in cli.commands:
        xl.register(cli)


@pytest.mark.parametrize("text, rate", [("100M", 104857600), ("100m", 104857600), ("1.5G", 1610612736),
                                        ("500K", 512000), ("4096", 4096), ("10MiB/s", 10485760),
                                        ("2GB", 2147483648)])
def test_parse_rate(text: str, rate: int) -> None:
    assert migrate.parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "M", "-5M", "10X", "0", "0.1", "1e9", "100 M B s"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a rate"):
        migrate.parse_rate(text)


def test_result_line_and_json() -> None:
    assert migrate.format_result("web", RESULT) == \
        "migrated web: downtime 12.3 ms, total 1.50 s, 3 rounds, 40000 pages sent"
    data = json.loads(migrate.result_json("web", RESULT))
    assert data == {"domain": "web", "downtime_ms": 12.345, "total_s": 1.5, "rounds": 3, "pages_sent": 40000,
                    "bytes_sent": 163840000, "per_round": RESULT["per_round"], "dest": "otherhost",
                    "verify": {"pages": 32768, "differences": 0}}


def test_progress_line() -> None:
    line = migrate.format_progress({"event": "progress", "round": 2, "pages_sent": 750, "remaining_pages": 250,
                                    "dirty_rate": 1234.4}, width=8)
    assert line == "[######..]  75%  round 2  750 pages sent  dirty 1234 pages/s  ~250 pages left"
    assert migrate.format_progress({"event": "progress"}).startswith("[" + "." * 24 + "]   0%  round 0")


# --- commands with a fake client ---------------------------------------------------------------


class FakeDomain:
    def __init__(self, name: str = "web", domid: int = 7) -> None:
        self.name, self.domid = name, domid
        self.calls: list[tuple[str, Any]] = []
        self.migrate_effect: Callable[[Callable[[dict], None] | None], dict] = lambda progress: RESULT

    def migrate(self, dest: str, progress: Callable[[dict], None] | None = None, **kw: Any) -> dict:
        self.calls.append(("migrate", {"dest": dest, **kw}))
        return self.migrate_effect(progress)

    def save(self, path: Path, checkpoint: bool, compress: bool) -> dict:
        self.calls.append(("save", (str(path), checkpoint, compress)))
        return {"path": str(path), "bytes": 3 * 1024 * 1024 + 104858, "pages": 800, "seconds": 0.42}

    def wait_incoming(self, timeout: float) -> "FakeDomain":
        self.calls.append(("wait_incoming", timeout))
        return self


class FakeHospes:
    def __init__(self) -> None:
        self.dom = FakeDomain()
        self.incoming_calls: list[tuple[str, bool, str | None]] = []
        self.on_incoming: Callable[[str], None] = lambda listen: None

    def domain(self, ident: str) -> FakeDomain:
        return self.dom

    def restore(self, path: Path, overrides: tuple[str, ...], paused: bool) -> FakeDomain:
        self.dom.calls.append(("restore", (str(path), overrides, paused)))
        return self.dom

    def incoming(self, listen: str, paused: bool = False, name: str | None = None) -> FakeDomain:
        self.incoming_calls.append((listen, paused, name))
        self.on_incoming(listen)
        return self.dom


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeHospes:
    h = FakeHospes()
    monkeypatch.setattr(xl, "connect", lambda: h)
    return h


def test_migrate_options_reach_the_api(fake: FakeHospes) -> None:
    r = CliRunner(mix_stderr=False).invoke(cli, ["migrate", "--no-live", "--verify", "--compress", "--max-rounds",
                                                 "5", "--bandwidth", "100M", "web", "root@otherhost"])
    assert r.exit_code == 0, r.output + r.stderr
    assert fake.dom.calls == [("migrate", {"dest": "root@otherhost", "live": False, "verify": True,
                                           "compress": True, "max_rounds": 5, "max_bandwidth": 104857600})]
    assert r.stdout == "migrated web: downtime 12.3 ms, total 1.50 s, 3 rounds, 40000 pages sent\n"


def test_migrate_defaults_json_and_relative_unix_destination(fake: FakeHospes, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = CliRunner(mix_stderr=False).invoke(cli, ["migrate", "--json", "web", "unix:in.sock"])
    assert r.exit_code == 0, r.stderr
    assert fake.dom.calls[0][1] == {"dest": f"unix:{tmp_path}/in.sock", "live": True, "verify": False,
                                    "compress": False, "max_rounds": None, "max_bandwidth": None}
    assert json.loads(r.stdout)["verify"] == {"pages": 32768, "differences": 0}
    assert r.stdout.count("\n") == 1


def test_migrate_failure_and_interrupt(fake: FakeHospes) -> None:
    def refuse(progress: Any) -> dict:
        raise HospesApiError(409, "The destination refused the stream.")

    fake.dom.migrate_effect = refuse
    r = CliRunner(mix_stderr=False).invoke(cli, ["migrate", "web", "otherhost"])
    assert r.exit_code == 1 and r.stdout == ""
    assert "web was not migrated: The destination refused the stream." in r.stderr

    def interrupted(progress: Any) -> dict:
        raise KeyboardInterrupt

    fake.dom.migrate_effect = interrupted
    r = CliRunner(mix_stderr=False).invoke(cli, ["migrate", "web", "otherhost"])
    assert r.exit_code == migrate.EXIT_INTERRUPTED and r.stdout == ""
    assert "cancelled and it keeps running here" in r.stderr
    r = CliRunner(mix_stderr=False).invoke(cli, ["migrate", "web", "--", "-oProxyCommand=x"])
    assert r.exit_code != 0 and "not one to migrate to" in r.stderr
    r = CliRunner(mix_stderr=False).invoke(cli, ["migrate", "--bandwidth", "lots", "web", "h"])
    assert r.exit_code == 2 and "is not a rate" in r.stderr


def test_progress_is_drawn_on_a_terminal_only() -> None:
    class Tty(list):
        def isatty(self) -> bool:
            return True

        def write(self, s: str) -> None:
            self.append(s)

        def flush(self) -> None:
            pass

    out = Tty()
    p = migrate.ProgressLine(out)  # type: ignore[arg-type]
    p({"event": "progress", "round": 1, "pages_sent": 10, "remaining_pages": 10, "dirty_rate": 5})
    p({"event": "progress", "round": 2, "pages_sent": 20, "remaining_pages": 0, "dirty_rate": 0})
    p.clear()
    assert out[0].startswith("\r[") and "round 1" in out[0] and "round 2" in out[1]
    assert out[-1].startswith("\r ") and out[-1].endswith("\r")


def test_save_and_restore_absolutize_paths(fake: FakeHospes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = CliRunner(mix_stderr=False).invoke(cli, ["save", "-c", "web", "web.save"])
    assert r.exit_code == 0, r.stderr
    assert fake.dom.calls[-1] == ("save", (str(tmp_path / "web.save"), True, False))
    assert r.stdout == f"saved web to {tmp_path / 'web.save'} (3.1 MiB, 0.4 s)\n"
    r = CliRunner(mix_stderr=False).invoke(cli, ["restore", "-p", "web.save", 'name="web2"', "on_crash=preserve"])
    assert r.exit_code == 0, r.stderr
    assert fake.dom.calls[-1] == ("restore", (str(tmp_path / "web.save"), ('name="web2"', "on_crash=preserve"), True))


# --- the relay --------------------------------------------------------------------------------


class FakeReceiver:
    """A Unix server standing in for an incoming domain: greets, reads the stream to EOF,
    then replies with its length and hash and closes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.sendall(b"READY\n")      # before reading anything: both directions run at once
            while chunk := conn.recv(65536):
                self.received += chunk
            conn.sendall(f"GOT {len(self.received)} {hashlib.sha256(self.received).hexdigest()}\n".encode())
        self.server.close()


def pipes_through(run: Callable[[int, int], Any], data: bytes, wait_for_ready: bool = True) -> tuple[Any, bytes]:
    """Run ``run(in_fd, out_fd)``; feed ``data`` into in_fd after READY came out; return what
    ``run`` returned and everything read from out_fd up to EOF."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    out: list[bytes] = []
    ready = threading.Event()

    def reader() -> None:
        while chunk := os.read(out_r, 65536):
            out.append(chunk)
            if b"READY" in b"".join(out):
                ready.set()
        os.close(out_r)

    def writer() -> None:
        if wait_for_ready:
            assert ready.wait(10)
        for i in range(0, len(data), 100000):
            os.write(in_w, data[i:i + 100000])
        os.close(in_w)

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    try:
        result = run(in_r, out_w)
    finally:
        os.close(in_r)
        os.close(out_w)
    for t in threads:
        t.join(10)
    return result, b"".join(out)


def test_relay_copies_both_ways_and_half_closes(tmp_path: Path) -> None:
    path = tmp_path / "in.sock"
    receiver = FakeReceiver(path)
    data = os.urandom(3 * 1024 * 1024 + 17)
    sock = migrate.connect_unix(path)
    (sent, received), out = pipes_through(lambda i, o: migrate.relay(sock, i, o), data)
    sock.close()
    reply = f"GOT {len(data)} {hashlib.sha256(data).hexdigest()}\n".encode()
    assert receiver.received == data
    assert out == b"READY\n" + reply, "the reader saw EOF right after the reply"
    assert (sent, received) == (len(data), len(out))


def test_migrate_receive_ssh_mode_relays_stdin_and_stdout(fake: FakeHospes, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HOSPES_RUN_DIR", str(tmp_path / "run"))
    receivers: list[FakeReceiver] = []
    fake.on_incoming = lambda listen: receivers.append(FakeReceiver(Path(listen[len("unix:"):])))
    data = os.urandom(200000)

    def run(in_fd: int, out_fd: int) -> None:
        with os.fdopen(os.dup(in_fd), "rb") as stdin, os.fdopen(os.dup(out_fd), "wb") as stdout:
            monkeypatch.setattr(sys, "stdin", stdin)
            monkeypatch.setattr(sys, "stdout", stdout)
            os.close(out_fd)                  # the dup in sys.stdout is now the only writer
            migrate.cmd_migrate_receive(None, True, "arriving")
            os.dup2(os.open(os.devnull, os.O_WRONLY), out_fd)   # give pipes_through an fd to close

    _, out = pipes_through(run, data)
    [(listen, paused, name)] = fake.incoming_calls
    sock_path = Path(listen[len("unix:"):])
    assert sock_path.parent == tmp_path / "run" and (paused, name) == (True, "arriving")
    assert receivers[0].received == data
    assert out == b"READY\n" + f"GOT {len(data)} {hashlib.sha256(data).hexdigest()}\n".encode(), \
        "stdout carries only the receiver's bytes"
    assert ("wait_incoming", migrate.RECEIVE_TIMEOUT_S) in fake.dom.calls
    assert "received web (domid 7)" in capsys.readouterr().err
    assert not sock_path.exists()


def test_migrate_receive_listen_mode(fake: FakeHospes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = CliRunner(mix_stderr=False).invoke(cli, ["migrate-receive", "--listen", "unix:rel.sock"])
    assert r.exit_code == 0, r.stderr
    assert fake.incoming_calls == [(f"unix:{tmp_path}/rel.sock", False, None)]
    assert r.stderr == f"listening on unix:{tmp_path}/rel.sock (domid 7)\n"
    assert r.stdout == "received web (domid 7)\n"

    def failed(timeout: float) -> FakeDomain:
        raise HospesApiError(409, "The migration into domain 7 failed: stream cut short")

    fake.dom.wait_incoming = failed  # type: ignore[method-assign]
    r = CliRunner(mix_stderr=False).invoke(cli, ["migrate-receive", "--listen", "tcp://0.0.0.0:8002"])
    assert r.exit_code == 1 and r.stdout == ""
    assert "failed: stream cut short" in r.stderr


def test_commands_are_registered() -> None:
    for name in ("save", "restore", "migrate", "migrate-receive"):
        assert isinstance(cli.commands.get(name), click.Command), name


