"""The reboot throttle (issue 13): a guest that reboots as soon as it starts used to be
restarted ~40 times a second. Now each restart comes at least 2 s after the previous boot
began (xl sleeps 2 s before a restart) and, past 10 restarts within 60 s, the domain is
stopped with a message: in `hospes run` (exit 5) and under hospesd (the domain stays,
shut down, with the message in its record, `hospes list -l` and on `hospes list`'s stderr).
Uses tests/guests/reboot.c; a run takes ~20 s."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import guest_build
from hospes.toolstack.spec import DomainSpec
from toolstack_helpers import Hospesd

pytestmark = [pytest.mark.kvm, pytest.mark.timeout(300)]

TOO_FAST = "Rebooted too fast: restarted 10 times within 60 s"


@pytest.fixture(scope="module")
def reboot_kernel() -> Path:
    return guest_build.build_guest("reboot")


def test_hospes_run_spaces_restarts_and_stops_a_reboot_loop(reboot_kernel: Path) -> None:
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "hospes", "run", "--kernel", str(reboot_kernel), "--memory", "64"],
                       capture_output=True, timeout=180, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - t0
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 5, err[-2000:]
    assert TOO_FAST in err and "Traceback" not in err
    assert p.stdout.decode(errors="replace").count("reboot test kernel: rebooting") == 11
    assert elapsed >= 10 * 2.0 - 0.5      # 10 restarts, each >= 2 s after the boot before


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Hospesd]:
    d = Hospesd(tmp_path)
    try:
        d.start()
        yield d
    finally:
        d.close()


def test_hospesd_stops_a_reboot_loop_with_a_message(daemon: Hospesd, reboot_kernel: Path) -> None:
    spec = DomainSpec(name="looper", kernel=str(reboot_kernel), memory=64, maxmem=64).to_dict()
    status, body = daemon.json("POST", "/v1/domains", {"spec": spec}, timeout=120)
    assert status == 201, body
    deadline = time.monotonic() + 120
    info: dict = {}
    while time.monotonic() < deadline:
        status, info = daemon.json("GET", "/v1/domains/looper")
        if status == 200 and info["state"] == "shutdown":
            break
        time.sleep(0.5)
    assert info.get("state") == "shutdown", info
    assert info["message"].startswith(TOO_FAST) and info["shutdown_reason"] == "reboot"
    r = daemon.cli("list", timeout=60)
    assert r.returncode == 0 and "looper" in r.stdout.decode()
    assert f"looper ({info['domid']}): {TOO_FAST}" in r.stderr.decode()
    r = daemon.cli("list", "-l", timeout=60)
    assert TOO_FAST in json.dumps(json.loads(r.stdout))
    log = (daemon.run_dir / "domains" / f"{info['domid']}.err").read_text()
    assert TOO_FAST in log
