"""End to end: eight Debian guests created from examples/debian-pv.cfg boot at once under hospesd.

One daemon on a private runtime directory; the domains are created with the CLI
(`hospes create examples/debian-pv.cfg name="gN" memory=M`) and must all reach
userspace ("hospes: userspace up" in their console logs). Then, in order: `list`
shows them, the Python API drives one, destroying one leaves the others running,
`kill -9` of one domain process is reported as crashed while the others carry on,
and restarting hospesd loses none of them. Every process started here is killed at
the end, also on failure (toolstack_helpers.Hospesd.close).

Booting one guest costs ~12 s of one core here, so eight share 2 cores for a few
minutes: the timeouts are generous.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

from hospes.toolstack.apispec import SCHEMAS
from hospes.toolstack.schema import validate
from toolstack_helpers import REPO, Hospesd

pytestmark = [pytest.mark.kvm, pytest.mark.debian, pytest.mark.timeout(2400)]

N = 8
CONFIG = str(REPO / "examples" / "debian-pv.cfg")
USERSPACE = "hospes: userspace up"
LIST_ROW = re.compile(r"^(\S+)\s+(\d+)\s+(\d+)\s+(\d+)     ([-r][-b][-p][-s][-rscwS?][-d])\s+(\d+\.\d)$")


def list_rows(d: Hospesd) -> dict[str, tuple[int, int, int, str]]:
    """`hospes list` parsed the way a script parses `xl list`: name -> (id, mem, vcpus, state)."""
    r = d.cli("list", timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "Name                                        ID   Mem VCPUs\tState\tTime(s)"
    rows = {}
    for line in lines[1:]:
        m = LIST_ROW.match(line)
        assert m, line
        rows[m.group(1)] = (int(m.group(2)), int(m.group(3)), int(m.group(4)), m.group(5))
    return rows


def wait_userspace(d: Hospesd, names: list[str], timeout: float, count: int = 1) -> None:
    h = d.client()
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            if h.domain(name).console_log().count(USERSPACE) >= count:
                pending.discard(name)
        time.sleep(2)
    assert not pending, f"no userspace in {sorted(pending)} after {timeout:.0f} s; daemon log:\n{d.log()[-3000:]}"


def running(state: str) -> bool:
    return state in ("r-----", "-b----")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, default_images) -> Iterator[tuple[Hospesd, list[str]]]:
    d = Hospesd(tmp_path_factory.mktemp("fleet"))
    try:
        d.start()
        names = [f"g{i}" for i in range(N)]
        for i, name in enumerate(names):
            memory = (128, 192, 256)[i % 3]
            r = d.cli("create", CONFIG, f'name="{name}"', f"memory={memory}", timeout=600)
            assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
            assert r.stderr.decode().startswith(f"Parsing config from {CONFIG}")
        wait_userspace(d, names, timeout=1500)
        yield d, names
    finally:
        d.close()


def test_eight_domains_boot_and_are_listed(fleet: tuple[Hospesd, list[str]]) -> None:
    d, names = fleet
    rows = list_rows(d)
    assert rows["Domain-0"][0] == 0
    for i, name in enumerate(names):
        domid, mem, vcpus, state = rows[name]
        assert (mem, vcpus) == ((128, 192, 256)[i % 3], 1)
        assert running(state), (name, state)
    assert len({rows[n][0] for n in names}) == N
    status, _, body = d.request("GET", "/v1/domains")
    assert status == 200
    assert validate(json.loads(body), {"$ref": "#/components/schemas/DomainList"}, SCHEMAS) == []
    long = json.loads(d.cli("list", "-l").stdout)
    assert sorted(e["config"]["c_info"]["name"] for e in long) == sorted(names)


def test_python_api_drives_a_domain(fleet: tuple[Hospesd, list[str]]) -> None:
    d, names = fleet
    h = d.client()
    dom = h.domain(names[1])
    r = dom.run("echo answer-$((6*7)); cat /sys/hypervisor/type; exit 3")
    assert (r.exit_status, r.output) == (3, "answer-42\nxen\n")
    dom.pause()
    assert dom.refresh().info["flags"] == "--p---"
    assert list_rows(d)[names[1]][3] == "--p---"
    dom.unpause()
    assert dom.refresh().state == "running"
    assert dom.run("true").exit_status == 0
    vcpus = dom.vcpus()
    assert len(vcpus) == 1 and vcpus[0]["online"]
    import dataclasses

    from hospes.domain import DomainConfig

    if "uuid" in {f.name for f in dataclasses.fields(DomainConfig)}:  # the guest sees the registry's uuid
        assert dom.run("cat /sys/hypervisor/uuid").output.strip() == dom.uuid
    dom.rename("renamed")
    assert d.cli("domid", "renamed").stdout.decode().strip() == str(dom.domid)
    assert dom.run("true").exit_status == 0
    dom.rename(names[1])
    assert d.cli("domname", str(dom.domid)).stdout.decode().strip() == names[1]
    out = d.cli("vcpu-list", names[1]).stdout.decode().splitlines()
    assert out[1].split()[:3] == [names[1], str(dom.domid), "0"]


def test_sched_credit_sets_weight_and_cap_on_the_domains_cgroup(fleet: tuple[Hospesd, list[str]]) -> None:
    """xl sched-credit: every domain process sits in a CPU cgroup of its own; -w/-c change its
    controller files at run time and the listing shows the values in force."""
    from hospes.cgroup import find_hierarchy

    d, names = fleet
    name = names[2]
    r = d.cli("sched-credit")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[:3] == ["Cpupool Pool-0: sched=linux", "Name                                ID Weight  Cap",
                         "Domain-0                             0    256    0"]
    assert {ln.split()[0] for ln in lines[3:]} >= set(names[1:])
    assert all(ln.split()[2:] == ["256", "0"] for ln in lines[3:])

    r = d.cli("sched-credit", "-d", name, "-w", "512", "-c", "40")
    assert r.returncode == 0, r.stderr
    domid = d.client().domain(name).domid
    out = d.cli("sched-credit", "-d", name).stdout.decode().splitlines()
    assert out == ["Name                                ID Weight  Cap", f"{name:<33} {domid:4d}    512   40"]

    st = d.client().domain(name).sched()
    cg = Path(st["cgroup"])
    pid = d.client().domain(name).info["pid"]
    rel = "/" + str(cg.relative_to(find_hierarchy().root))
    assert any(ln.endswith(":" + rel) for ln in Path(f"/proc/{pid}/cgroup").read_text().splitlines())
    if (cg / "cpu.shares").exists():
        assert (cg / "cpu.shares").read_text().strip() == "2048"
        assert (cg / "cpu.cfs_quota_us").read_text().strip() == "40000"
    else:
        assert (cg / "cpu.weight").read_text().strip() == "200"
        assert (cg / "cpu.max").read_text().strip() == "40000 100000"
    assert d.client().domain(name).info["sched"] == {"weight": 512, "cap": 40}

    # bad values never reach the domain; a cap can be lifted again
    assert d.json("PUT", f"/v1/domains/{name}/sched", {"weight": 0})[0] == 400
    assert d.json("PUT", f"/v1/domains/{name}/sched", {})[0] == 400
    assert d.cli("sched-credit", "-d", name, "-w", "70000").returncode == 2
    assert d.cli("sched-credit", "-w", "300").returncode != 0      # xl: "Must specify a domain."
    d.client().domain(name).set_sched(cap=0, weight=256)
    assert d.client().domain(name).sched()["cap"] == 0
    assert (cg / "cpu.cfs_quota_us").read_text().strip() == "-1" if (cg / "cpu.shares").exists() else \
        (cg / "cpu.max").read_text().startswith("max")
    assert d.client().domain(name).run("true").exit_status == 0


def test_destroy_one_leaves_the_others_running(fleet: tuple[Hospesd, list[str]]) -> None:
    d, names = fleet
    victim = names[0]
    r = d.cli("destroy", victim)
    assert r.returncode == 0, r.stderr
    rows = list_rows(d)
    assert victim not in rows
    for name in names[1:]:
        assert running(rows[name][3]), (name, rows[name])
    h = d.client()
    for name in names[1:]:
        assert h.domain(name).run("echo alive").output == "alive\n"


def test_kill9_of_a_domain_process_shows_crashed(fleet: tuple[Hospesd, list[str]]) -> None:
    d, names = fleet
    h = d.client()
    victim = names[2]
    pid = h.domain(victim).info["pid"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(1.5)
    rows = list_rows(d)
    assert rows[victim][3] == "---sc-", rows[victim]
    assert "died unexpectedly (killed by SIGKILL)" in h.domain(victim).info["message"]
    for name in names[1:2] + names[3:]:
        assert running(rows[name][3]), (name, rows[name])
        assert h.domain(name).run("echo alive").output == "alive\n"
    assert d.cli("destroy", victim).returncode == 0
    assert victim not in list_rows(d)


def test_daemon_restart_loses_no_domain(fleet: tuple[Hospesd, list[str]]) -> None:
    d, names = fleet
    survivors = names[1:2] + names[3:]
    before = {n: row for n, row in list_rows(d).items() if n in survivors}
    pids = {n: d.client().domain(n).info["pid"] for n in survivors}
    d.stop()
    d.start()
    after = list_rows(d)
    h = d.client()
    for name in survivors:
        assert after[name][0] == before[name][0]
        assert running(after[name][3]), (name, after[name])
        assert h.domain(name).info["pid"] == pids[name]
        assert h.domain(name).run("echo still-here").output == "still-here\n"
    assert "adopted 6 running domain(s)" in d.log()


def test_shutdown_wait_and_reboot(fleet: tuple[Hospesd, list[str]]) -> None:
    d, names = fleet
    r = d.cli("shutdown", "-w", names[3], timeout=300)
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert "Shutting down domain" in err and "Waiting for 1 domains" in err and "has been destroyed" in err
    assert names[3] not in list_rows(d)
    r = d.cli("reboot", "-w", names[4], timeout=300)
    assert r.returncode == 0, r.stderr
    assert "has been shut down, reason code 1" in r.stderr.decode()
    wait_userspace(d, [names[4]], timeout=600, count=2)
    info = d.client().domain(names[4]).info
    assert info["boots"] == 2 and info["state"] == "running"


def test_on_poweroff_preserve_keeps_the_domain(fleet: tuple[Hospesd, list[str]]) -> None:
    d, _ = fleet
    r = d.cli("create", "-p", CONFIG, 'name="keeper"', "memory=128", 'on_poweroff="preserve"', timeout=600)
    assert r.returncode == 0, r.stderr
    assert list_rows(d)["keeper"][3] == "--p---"
    assert d.cli("unpause", "keeper").returncode == 0
    wait_userspace(d, ["keeper"], timeout=600)
    h = d.client()
    dom = h.domain("keeper")
    assert dom.run("echo ok").output == "ok\n"
    result = dom.shutdown(wait=True)
    assert result["outcome"] == "shutdown" and result["shutdown_reason"] == "poweroff"
    assert list_rows(d)["keeper"][3] == "---s--"
    assert "reboot: Power down" in dom.console_log() or USERSPACE in dom.console_log()
    dom.destroy()
    assert "keeper" not in list_rows(d)


def test_guest_crash_with_on_crash_preserve(fleet: tuple[Hospesd, list[str]]) -> None:
    d, _ = fleet
    r = d.cli("create", CONFIG, 'name="crashy"', "memory=128", 'on_crash="preserve"', timeout=600)
    assert r.returncode == 0, r.stderr
    wait_userspace(d, ["crashy"], timeout=600)
    r = d.cli("exec", "-t", "30", "crashy", "echo c > /proc/sysrq-trigger", timeout=120)
    assert r.returncode != 0 and b"stopped before the command finished" in r.stderr
    deadline = time.monotonic() + 30
    while list_rows(d)["crashy"][3] != "---sc-" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert list_rows(d)["crashy"][3] == "---sc-"
    info = d.client().domain("crashy").info
    assert (info["state"], info["shutdown_reason"]) == ("crashed", "crash")
    assert "Kernel panic" in d.client().domain("crashy").console_log()
    assert d.cli("destroy", "crashy").returncode == 0


def test_python_api_doc_examples_run(fleet: tuple[Hospesd, list[str]], tmp_path: Path) -> None:
    """The code blocks of docs/python-api.md, run in order against this daemon."""
    import hospes

    if not hasattr(hospes, "connect"):
        pytest.skip("hospes.connect is not exported yet (src/hospes/__init__.py)")
    d, _ = fleet
    text = (REPO / "docs" / "python-api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    old = os.environ.get("HOSPES_RUN_DIR")
    os.environ["HOSPES_RUN_DIR"] = str(d.run_dir)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        scope: dict[str, object] = {}
        for block in blocks:
            exec(compile(block, "docs/python-api.md", "exec"), scope)
    finally:
        os.chdir(cwd)
        if old is None:
            os.environ.pop("HOSPES_RUN_DIR", None)
        else:
            os.environ["HOSPES_RUN_DIR"] = old
