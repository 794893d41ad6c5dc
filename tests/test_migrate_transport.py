"""Migration addresses and channels: parsing, tcp/unix connections, a peer that left, ssh."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import pytest

from hospes.migrate.transport import Address, Channel, Listener, TransportError, connect, parse_address


@pytest.mark.parametrize(("text", "want"), [
    ("tcp://127.0.0.1:8002", Address("tcp", host="127.0.0.1", port=8002)),
    ("tcp://[::1]:9", Address("tcp", host="::1", port=9)),
    ("unix:/run/x.sock", Address("unix", path="/run/x.sock")),
    ("root@dest", Address("ssh", host="root@dest")),
    ("dest.example", Address("ssh", host="dest.example")),
])
def test_addresses_parse_and_print_back(text: str, want: Address) -> None:
    assert parse_address(text) == want
    assert str(want) == text


@pytest.mark.parametrize(("text", "listen", "message"), [
    ("tcp://host:0", False, "port from 1 to 65535"),
    ("tcp://host", False, "tcp://HOST:PORT"),
    ("unix:relative.sock", False, "ABSOLUTE"),
    ("-oProxyCommand=x", False, "neither"),
    ("-oProxy", False, "neither"),             # would reach ssh's command line as an option
    ("root@-oProxy", False, "neither"),
    ("tcp://-x:22", False, "tcp://HOST:PORT"),
    ("a b", False, "neither"),
    ("root@dest", True, "Cannot listen"),
])
def test_bad_addresses_are_refused(text: str, listen: bool, message: str) -> None:
    with pytest.raises(TransportError, match=message):
        parse_address(text, listen=listen)


def test_unix_listener_accepts_one_channel_both_ways(tmp_path: Path) -> None:
    addr = parse_address(f"unix:{tmp_path / 'm.sock'}", listen=True)
    listener = Listener(addr)
    got: list[Channel] = []
    t = threading.Thread(target=lambda: got.append(listener.accept(10)))
    t.start()
    client = connect(addr)
    t.join(10)
    server = got[0]
    client.wfile.write(b"ping")
    client.wfile.flush()
    assert server.rfile.read(4) == b"ping"
    server.wfile.write(b"pong")
    server.wfile.flush()
    assert client.rfile.read(4) == b"pong"
    assert not client.peer_gone()
    server.close()
    assert client.peer_gone()
    client.close()
    listener.close()
    assert not (tmp_path / "m.sock").exists()


def test_nobody_listening_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="is `hospes migrate-receive"):
        connect(parse_address(f"unix:{tmp_path / 'none.sock'}"))
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(TransportError, match=f"tcp://127.0.0.1:{port}"):
        connect(parse_address(f"tcp://127.0.0.1:{port}"))


def test_no_migration_within_the_timeout(tmp_path: Path) -> None:
    listener = Listener(parse_address(f"unix:{tmp_path / 'idle.sock'}", listen=True))
    with pytest.raises(TransportError, match="No migration arrived"):
        listener.accept(0.2)
    listener.close()


def test_ssh_runs_migrate_receive_on_the_host_with_the_stream_on_its_stdio(tmp_path: Path, monkeypatch) -> None:
    # A stand-in for ssh: checks its arguments, then echoes stdin back and says why it stops on stderr.
    fake = tmp_path / "fake-ssh"
    fake.write_text(f"#!{sys.executable}\n"
                    "import sys\n"
                    "assert sys.argv[1:] == ['admin@dest', 'hospes', 'migrate-receive'], sys.argv\n"
                    "sys.stdout.buffer.write(sys.stdin.buffer.read(5)); sys.stdout.flush()\n"
                    "sys.stderr.write('receiver: done\\n')\n")
    fake.chmod(0o755)
    monkeypatch.setenv("HOSPES_SSH", str(fake))
    channel = connect(parse_address("admin@dest"))
    channel.wfile.write(b"hello")
    channel.wfile.flush()
    assert channel.rfile.read(5) == b"hello"
    assert channel.rfile.read(1) == b""
    assert channel.peer_message() == "receiver: done"
    channel.close()
