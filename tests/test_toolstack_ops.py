"""Operations on a real guest under hospesd (issue 13): `hospes exec` with commands of any
length (10 kB and 100 kB; over ~700 bytes used to wedge the console shell), and a fresh
console log per domain instance."""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path
from typing import Iterator

import pytest

from toolstack_helpers import REPO, Hospesd

pytestmark = [pytest.mark.kvm, pytest.mark.debian, pytest.mark.timeout(1200)]

CONFIG = str(REPO / "examples" / "debian-pv.cfg")
USERSPACE = "hospes: userspace up"


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory, default_images) -> Iterator[Hospesd]:
    d = Hospesd(tmp_path_factory.mktemp("ops"))
    try:
        d.start()
        # A console log left by an earlier domain with the domid this one gets.
        logs = d.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        (logs / "console-1.log").write_text("OLD INSTANCE OUTPUT\n")
        r = d.cli("create", CONFIG, 'name="ops"', "memory=192", timeout=600)
        assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
        h = d.client()
        deadline = time.monotonic() + 600
        while USERSPACE not in h.domain("ops").console_log() and time.monotonic() < deadline:
            time.sleep(1)
        assert USERSPACE in h.domain("ops").console_log(), d.log()[-3000:]
        yield d
    finally:
        d.close()


def _script(size: int) -> tuple[str, str]:
    """A command of about ``size`` bytes printing the MD5 of its own here-document, and that MD5."""
    rng = random.Random(size)
    text = "\n".join("".join(rng.choice("abcdefgh 'xyz\"$`\\{}") for _ in range(70)) for _ in range(size // 71))
    return f"cat <<'HOSPES_EOF' | md5sum\n{text}\nHOSPES_EOF", hashlib.md5((text + "\n").encode()).hexdigest()


def test_exec_runs_a_10_kB_command(guest: Hospesd) -> None:
    cmd, want = _script(10_000)
    r = guest.cli("exec", "-t", "120", "ops", cmd, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert r.stdout.decode().split()[0] == want


def test_exec_runs_a_100_kB_command_and_the_shell_stays_usable(guest: Hospesd) -> None:
    cmd, want = _script(100_000)
    dom = guest.client().domain("ops")
    res = dom.run(cmd, timeout=300)
    assert res.exit_status == 0 and res.output.split()[0] == want
    assert dom.run("echo still; exit 4").exit_status == 4


def test_a_new_domain_instance_starts_a_fresh_console_log(guest: Hospesd) -> None:
    logs = guest.run_dir / "logs"
    rec = guest.client().domain("ops").info
    log = Path(rec["console_log"]) if rec.get("console_log") else logs / f"console-{rec['domid']}.log"
    assert rec["domid"] == 1
    assert "OLD INSTANCE OUTPUT" not in log.read_text(errors="replace")
    assert (logs / "console-1.log.1").read_text() == "OLD INSTANCE OUTPUT\n"


def test_an_incoming_migration_that_does_not_fit_is_refused(guest: Hospesd, tmp_path: Path) -> None:
    """Admission control on the receiving side: the stream's CONFIG says how big the guest is,
    and a destination whose memory (x its overcommit ratio) is taken refuses it; the source runs on."""
    from hospes.toolstack.admission import host_total_mib
    from hospes.toolstack.lifecycle import DomainState
    from hospes.toolstack.record import DomainRecord, write_record
    from hospes.toolstack.spec import DomainSpec

    dest = Hospesd(tmp_path / "dest", ["--overcommit", "0.1"])
    try:
        dest.start()
        # A domain (its process just starting) that holds what a ratio of 0.1 allows.
        held = int(host_total_mib() * 0.1)
        write_record(dest.run_dir / "domains" / "1.json", DomainRecord(
            1, "holder", "00000000-0000-4000-8000-000000000001",
            DomainSpec(name="holder", kernel="/nonexistent", memory=held, maxmem=held),
            state=DomainState.BUILDING, pid=None, pid_start=None))
        sock = str(tmp_path / "m.sock")
        status, body = dest.json("POST", "/v1/domains/incoming", {"listen": f"unix:{sock}"})
        assert status == 201, body
        status, body = guest.json("POST", "/v1/domains/ops/migrate", {"dest": f"unix:{sock}"}, timeout=300)
        assert status == 409, body
        assert "Not enough host memory for ops" in body["error"] and "overcommit 0.1" in body["error"], body
        assert guest.client().domain("ops").run("echo still-here").output == "still-here\n"
    finally:
        dest.close()
