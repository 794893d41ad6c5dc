"""Bounded toolstack work (issue 13): user-named files are regular files within limits, read
without blocking; a domain's memory must fit the host; TLS on the TCP API (a non-loopback
listener without it is refused)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from hospes.files import FileReadError, check_regular, read_regular
from hospes.toolstack.admission import AdmissionError, admit, committed, host_total_mib, overhead_mib
from hospes.toolstack.boot_files import check_boot_files
from hospes.toolstack.lifecycle import DomainState
from hospes.toolstack.record import DomainRecord, write_record
from hospes.toolstack.rundir import RunDir
from hospes.toolstack.spec import DomainSpec, load_spec
from hospes.toolstack.xlcfg import ConfigError
from toolstack_helpers import Hospesd


def _in_time(fn, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it blocks."""
    out: list[object] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as e:   # noqa: BLE001 - handed to the test
            out.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} blocked for {timeout} s"
    return out[0]


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


# --- the file boundary -------------------------------------------------------------------------


def test_read_regular_refuses_a_fifo_without_blocking(fifo: Path) -> None:
    e = _in_time(lambda: read_regular(fifo, "kernel image", 1 << 20))
    assert isinstance(e, FileReadError) and "FIFO" in str(e) and str(fifo) in str(e)


def test_read_regular_refuses_devices_directories_and_big_files(tmp_path: Path) -> None:
    with pytest.raises(FileReadError, match="character device"):
        read_regular("/dev/zero", "config file", 1 << 20)
    with pytest.raises(FileReadError, match="directory"):
        read_regular(tmp_path, "config file", 1 << 20)
    with pytest.raises(FileReadError, match="does not exist"):
        read_regular(tmp_path / "nope", "ramdisk", 1 << 20)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 5000)
    with pytest.raises(FileReadError, match="5000 bytes, more than the limit of 4096"):
        read_regular(big, "config file", 4096)
    assert read_regular(big, "config file", 5000) == b"x" * 5000
    assert check_regular(big, "kernel", 5000) == 5000


def test_config_file_that_is_a_device_or_fifo_is_a_config_error(tmp_path: Path, fifo: Path) -> None:
    with pytest.raises(ConfigError, match="character device"):
        load_spec("/dev/zero")
    e = _in_time(lambda: load_spec(fifo))
    assert isinstance(e, ConfigError) and "FIFO" in str(e)
    big = tmp_path / "big.cfg"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="more than the limit"):
        load_spec(big)


def test_boot_files_are_checked(tmp_path: Path, fifo: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k" * 4096)
    ok = DomainSpec(name="d", kernel=str(kernel), memory=64, maxmem=64)
    check_boot_files(ok)
    e = _in_time(lambda: check_boot_files(DomainSpec(name="d", kernel=str(fifo))))
    assert isinstance(e, FileReadError) and "FIFO" in str(e)
    with pytest.raises(FileReadError, match="character device"):
        check_boot_files(DomainSpec(name="d", kernel=str(kernel), ramdisk="/dev/zero"))
    huge = tmp_path / "initrd"
    with open(huge, "wb") as f:
        f.truncate(80 << 20)            # sparse: 80 MiB of ramdisk for a 64 MiB guest
    with pytest.raises(FileReadError, match="do not fit in the guest's 64 MiB"):
        check_boot_files(DomainSpec(name="d", kernel=str(kernel), ramdisk=str(huge), memory=64, maxmem=64))
    disky = DomainSpec.from_config({"name": "d", "kernel": str(kernel), "disk": [f"{fifo},raw,xvda,rw"]})
    with pytest.raises(FileReadError, match="neither a regular file nor a block device"):
        check_boot_files(disky)


# --- admission ------------------------------------------------------------------------------------


def _record(run: RunDir, domid: int, memory: int, state: DomainState = DomainState.RUNNING) -> None:
    spec = DomainSpec(name=f"d{domid}", kernel="/k", memory=memory, maxmem=memory)
    write_record(run.state_file(domid), DomainRecord(domid, f"d{domid}", f"00000000-0000-4000-8000-{domid:012d}",
                                                     spec, state=state, pid=None, pid_start=None))


def test_two_guests_larger_than_the_host_together_are_not_both_admitted(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run").ensure()
    total = host_total_mib()
    big = int(total * 0.6)          # on a 24 GiB host: two 14000 MiB guests, the case
    admit(run, "first", big, overcommit=4.0)   # alone it fits (overcommit: MemAvailable is not asked)
    _record(run, 1, big)
    assert committed(run).mib == big + overhead_mib(big)
    with pytest.raises(AdmissionError) as e:
        admit(run, "second", big, overcommit=1.0)
    text = str(e.value)
    assert f"{big} MiB" in text and "1 running domain(s)" in text and f"{total} MiB x overcommit 1" in text
    admit(run, "second", big, overcommit=2.0)     # the documented overcommit setting lets it in
    _record(run, 1, big, DomainState.SHUTDOWN)    # a stopped domain holds no memory
    assert committed(run).mib == 0


def test_api_create_larger_than_the_host_is_409_with_the_numbers(tmp_path: Path) -> None:
    d = Hospesd(tmp_path)
    try:
        d.start()
        kernel = tmp_path / "vmlinuz"
        kernel.write_bytes(b"k" * 4096)
        too_big = host_total_mib() + 1024
        status, body = d.json("POST", "/v1/domains", {"spec": DomainSpec(
            name="huge", kernel=str(kernel), memory=too_big, maxmem=too_big).to_dict()})
        assert status == 409, body
        assert f"{too_big} MiB" in body["error"] and "overcommit" in body["error"]
        assert d.json("GET", "/v1/domains")[1]["domains"] == []
    finally:
        d.close()


# --- the daemon never reads without limit or blocks on a user-named file --------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospesd]:
    d = Hospesd(tmp_path_factory.mktemp("limits"))
    try:
        d.start()
        yield d
    finally:
        d.close()


def test_config_path_dev_zero_and_fifo_are_400_and_the_daemon_stays_responsive(daemon: Hospesd,
                                                                                  fifo: Path) -> None:
    t0 = time.monotonic()
    status, body = daemon.json("POST", "/v1/domains", {"config_path": "/dev/zero"}, timeout=30)
    assert status == 400 and "/dev/zero" in body["error"] and "character device" in body["error"]
    status, body = daemon.json("POST", "/v1/domains", {"config_path": str(fifo)}, timeout=30)
    assert status == 400 and str(fifo) in body["error"] and "FIFO" in body["error"]
    assert time.monotonic() - t0 < 30
    assert daemon.json("GET", "/v1/version")[0] == 200


def test_kernel_fifo_and_restore_fifo_are_400(daemon: Hospesd, tmp_path: Path, fifo: Path) -> None:
    status, body = daemon.json("POST", "/v1/domains", {"spec": DomainSpec(name="k", kernel=str(fifo)).to_dict()}, timeout=30)
    assert status == 400 and "FIFO" in body["error"] and "kernel" in body["error"]
    status, body = daemon.json("POST", "/v1/domains", {"spec": DomainSpec(name="k", kernel="/dev/zero").to_dict()}, timeout=30)
    assert status == 400 and "character device" in body["error"]
    status, body = daemon.json("POST", "/v1/domains/restore", {"path": str(fifo)}, timeout=30)
    assert status == 400 and "not a regular file" in body["error"], body


# --- hospes run ----------------------------------------------------------------------------------------


def _hospes_run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "hospes", "run", *args], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_run_with_a_device_or_fifo_kernel_fails_in_one_line(fifo: Path) -> None:
    for kernel in ("/dev/zero", str(fifo)):
        p = _hospes_run("--kernel", kernel, "--ramdisk", "/dev/null")
        err = p.stderr.decode(errors="replace")
        assert p.returncode != 0 and "Traceback" not in err, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("hospes: ") and kernel in lines[0], err


def test_run_refuses_more_memory_than_the_host_has() -> None:
    p = _hospes_run("--memory", str(host_total_mib() + 1))
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0 and "more than this host's" in err and "Traceback" not in err, err


# --- TLS on the TCP API ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def test_non_loopback_tcp_without_tls_is_refused(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "hospes.toolstack.daemon", "--run-dir", str(tmp_path / "r"),
                        "--tcp", f"0.0.0.0:{_free_port()}", "--new-token"], capture_output=True, timeout=30)
    assert p.returncode == 2 and b"not a loopback address" in p.stderr and b"--tls-cert" in p.stderr


@pytest.mark.parametrize("url", ["http://192.0.2.7:8086", "http://hospes.example:8086", "http://[2001:db8::1]:80"])
def test_the_client_never_sends_the_token_in_clear_beyond_loopback(url: str) -> None:
    from hospes.errors import HospesError
    from hospes.toolstack.client import Transport

    with pytest.raises(HospesError, match="Refusing to send the API token unencrypted"):
        Transport(url=url, token="secret")
    for fine in ("http://127.0.0.1:8086", "http://localhost:8086", "http://[::1]:8086"):
        assert Transport(url=fine, token="secret").token == "secret"
    assert Transport(url=url).token is None          # no token, nothing to leak


def test_tls_api_with_a_self_signed_certificate(tmp_path: Path) -> None:
    from hospes.toolstack.client import HospesApiError, connect

    cert, key = _self_signed(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text("tls-token\n")
    port = _free_port()
    d = Hospesd(tmp_path, ["--tcp", f"0.0.0.0:{port}", "--token-file", str(token_file),
                           "--tls-cert", str(cert), "--tls-key", str(key)])
    try:
        d.start()
        url = f"https://localhost:{port}"
        assert connect(url=url, token="tls-token", ca=cert).domains() == []
        with pytest.raises(HospesApiError) as e:          # the system CAs do not know it
            connect(url=url, token="tls-token").domains()
        assert e.value.status == 0 and "CERTIFICATE_VERIFY_FAILED" in str(e.value)
        with pytest.raises(HospesApiError) as e:
            connect(url=url, token="wrong", ca=cert).domains()
        assert e.value.status == 401
        # Plain HTTP on the TLS port gets nowhere near the API.
        with pytest.raises(HospesApiError):
            connect(url=f"http://127.0.0.1:{port}", token="tls-token").domains()
        # The console's WebSocket goes over the same TLS (a 404 proves the handshake passed).
        from hospes.errors import HospesError
        from hospes.toolstack.console_client import attach

        h = connect(url=url, token="tls-token", ca=cert)
        null = os.open(os.devnull, os.O_RDWR)
        try:
            with pytest.raises(HospesError, match="HTTP 404"):
                attach(h.transport, "nosuch", stdin_fd=null, stdout_fd=null)
        finally:
            os.close(null)
        # The CLI takes the CA from $HOSPES_CA.
        env = {**d.env, "HOSPES_URL": url, "HOSPES_API_TOKEN": "tls-token", "HOSPES_CA": str(cert)}
        p = subprocess.run([sys.executable, "-m", "hospes", "list", "-l"], capture_output=True, timeout=60, env=env)
        assert p.returncode == 0 and json.loads(p.stdout) == [], p.stderr
    finally:
        d.close()


# --- bounded logs ----------------------------------------------------------------------------------


def test_rotate_log_keeps_one_previous_file(tmp_path: Path) -> None:
    from hospes.toolstack.rundir import rotate_log

    log = tmp_path / "console-3.log"
    assert not rotate_log(log)                      # nothing there: nothing to do
    log.write_text("first")
    assert not rotate_log(log, over=100)            # within its limit: stays
    assert rotate_log(log) and not log.exists() and (tmp_path / "console-3.log.1").read_text() == "first"
    log.write_text("second")
    assert rotate_log(log) and (tmp_path / "console-3.log.1").read_text() == "second"


def test_a_domain_process_keeps_its_stderr_file_bounded(tmp_path: Path) -> None:
    """log() past ERR_ROTATE_BYTES moves domains/<id>.err to .err.1 and goes on in a new file
    (fds 1 and 2 follow), so a domain that logs forever takes at most twice the limit."""
    run = RunDir(tmp_path / "run").ensure()
    err = run.stderr_file(7)
    code = f"""
import os, sys
from pathlib import Path
from hospes.toolstack import domain_process as dp
from hospes.toolstack.rundir import RunDir, ERR_ROTATE_BYTES
fd = os.open({str(err)!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
os.dup2(fd, 2); os.dup2(fd, 1)
dp._err_file = RunDir(Path({str(run.root)!r})).stderr_file(7)
for i in range(3 * ERR_ROTATE_BYTES // 1000):
    dp.log(f"line {{i}} " + "x" * 990)
print("stdout-after-rotation", flush=True)
dp.log("last line")
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    from hospes.toolstack.rundir import ERR_ROTATE_BYTES

    old = err.with_name(err.name + ".1")
    assert err.stat().st_size <= ERR_ROTATE_BYTES + 2000 and old.stat().st_size <= ERR_ROTATE_BYTES + 2000
    text = err.read_text()
    assert text.rstrip().endswith("last line") and "stdout-after-rotation" in text
