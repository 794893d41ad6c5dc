"""Resource control: xl's weight and cap as a domain process's CPU cgroup."""

from __future__ import annotations

import json
import os
import resource
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_hospes
from hospes.cgroup import (PERIOD_US, CgroupError, CpuControl, DomainCgroup, Hierarchy, SchedParams,
                           find_hierarchy, sweep_stale)


def test_params_map_to_both_controller_versions() -> None:
    d = SchedParams()
    assert d.is_default and (d.v1_shares(), d.v1_quota_us(), d.v2_weight(), d.v2_max()) == (1024, -1, 100, "max 100000")
    p = SchedParams(weight=512, cap=150)
    assert (p.v1_shares(), p.v1_quota_us(), p.v2_weight(), p.v2_max()) == (2048, 150_000, 200, "150000 100000")
    assert SchedParams(weight=1).v2_weight() == 1 and SchedParams(weight=65535).v2_weight() == 10000
    assert not SchedParams(cap=1).is_default


@pytest.mark.parametrize("kw, says", [
    ({"weight": 0}, "Weight 0 is out of range"), ({"weight": 65536}, "out of range"),
    ({"cap": -1}, "Cap -1 is out of range"), ({"cap": "50"}, "Cap '50'"), ({"weight": True}, "Weight True"),
])
def test_bad_params_are_refused(kw: dict, says: str) -> None:
    with pytest.raises(CgroupError, match=says):
        SchedParams(**kw)


def test_hierarchy_is_found_from_the_mount_table(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    v1.write_text("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
                  "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n")
    assert find_hierarchy(str(v1)) == Hierarchy(1, Path("/sys/fs/cgroup/cpu,cpuacct"))
    unified = tmp_path / "unified"
    (unified / "fs").mkdir(parents=True)
    (unified / "fs" / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    v2 = tmp_path / "v2"
    v2.write_text(f"cgroup2 {unified / 'fs'} cgroup2 rw 0 0\n")
    assert find_hierarchy(str(v2)) == Hierarchy(2, unified / "fs")
    (unified / "fs" / "cgroup.controllers").write_text("memory pids\n")
    assert find_hierarchy(str(v2)) is None
    assert find_hierarchy(str(tmp_path / "missing")) is None


def test_v2_files_are_written_in_v2_units(tmp_path: Path) -> None:
    """A fake v2 tree (plain files): subtree_control enabled on the way down, cpu.weight and cpu.max set."""
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.subtree_control").write_text("")
    hier = Hierarchy(2, root)
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *a, **kw) -> None:   # a cgroupfs directory comes with its control files
        real_mkdir(self, *a, **kw)
        (self / "cgroup.subtree_control").touch()

    mp = pytest.MonkeyPatch()
    mp.setattr(Path, "mkdir", mkdir)
    try:
        cg = DomainCgroup.create(7, hier)
    finally:
        mp.undo()
    cg.apply(SchedParams(weight=128, cap=25))
    assert (root / "cgroup.subtree_control").read_text() == "+cpu"
    assert (root / "hospes" / "cgroup.subtree_control").read_text() == "+cpu"
    assert cg.path == root / "hospes" / f"dom7-{os.getpid()}"
    assert cg.controller_values() == {"cpu.weight": "50", "cpu.max": "25000 100000"}


def _cpu_hierarchy_usable() -> bool:
    h = find_hierarchy()
    return os.geteuid() == 0 and h is not None and os.access(h.root, os.W_OK)


needs_cgroups = pytest.mark.skipif(not _cpu_hierarchy_usable(), reason="needs root and a cgroup CPU controller")


CHILD = """
import json, sys
from pathlib import Path
from hospes.cgroup import SchedParams, confine
cg = confine(42, SchedParams(weight=int(sys.argv[1]), cap=int(sys.argv[2])))
print(json.dumps({"path": str(cg.path), "values": cg.controller_values(),
                  "own": Path("/proc/self/cgroup").read_text()}), flush=True)
cg.apply(SchedParams(weight=300, cap=0))
print(json.dumps(cg.controller_values()), flush=True)
cg.remove()
"""


@needs_cgroups
def test_a_process_confines_itself_and_cleans_up() -> None:
    p = subprocess.run([sys.executable, "-c", CHILD, "512", "30"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    first, second = (json.loads(line) for line in p.stdout.splitlines())
    path = Path(first["path"])
    assert path.name.startswith("dom42-")
    rel = "/" + str(path.relative_to(find_hierarchy().root))
    assert any(line.endswith(":" + rel) for line in first["own"].splitlines()), first["own"]
    if "cpu.shares" in first["values"]:
        assert first["values"] == {"cpu.shares": "2048", "cpu.cfs_period_us": str(PERIOD_US),
                                   "cpu.cfs_quota_us": "30000"}
        assert second["cpu.shares"] == "1200" and second["cpu.cfs_quota_us"] == "-1"
    else:
        assert first["values"] == {"cpu.weight": "200", "cpu.max": "30000 100000"}
        assert second == {"cpu.weight": "117", "cpu.max": "max 100000"}
    assert not path.exists(), "the cgroup outlived its process"


def test_cpu_control_makes_no_cgroup_for_defaults_unless_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """`hospes run` (lazy) makes a cgroup only for a weight or cap; the domain process (eager)
    always tries, and either way no cgroup is no error while there is nothing to enforce."""
    made: list[SchedParams] = []

    def confine(domid: int, params: SchedParams) -> None:
        made.append(params)
        return None

    monkeypatch.setattr("hospes.cgroup.confine", confine)
    with CpuControl(1) as lazy:
        lazy.start(SchedParams(), eager=False)
        lazy.change(SchedParams())
        assert made == [] and lazy.path is None and lazy.throttled() == {}
        lazy.change(SchedParams(cap=10))
    assert made == [SchedParams(cap=10)]
    CpuControl(2).start(SchedParams())
    assert made[-1] == SchedParams()


CONTROL_CHILD = """
import json
from hospes.cgroup import CpuControl, SchedParams
with CpuControl(44) as cpu:
    cpu.start(SchedParams(), eager=False)
    before = cpu.path
    cpu.change(SchedParams(weight=512))
    print(json.dumps([before, str(cpu.path), cpu.cgroup.controller_values()]), flush=True)
print(json.dumps(cpu.path), flush=True)
"""


@needs_cgroups
def test_cpu_control_makes_the_cgroup_on_demand_and_removes_it() -> None:
    p = subprocess.run([sys.executable, "-c", CONTROL_CHILD], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    (before, path, values), after = (json.loads(line) for line in p.stdout.splitlines())
    assert before is None and after is None and Path(path).name.startswith("dom44-")
    assert values.get("cpu.weight", values.get("cpu.shares")) in ("200", "2048")
    assert not Path(path).exists()


@needs_cgroups
def test_cgroups_of_killed_processes_are_swept() -> None:
    p = subprocess.Popen([sys.executable, "-c",
                          "import time; from hospes.cgroup import SchedParams, confine; "
                          "cg = confine(43, SchedParams(cap=90)); print(cg.path, flush=True); time.sleep(60)"],
                         stdout=subprocess.PIPE, text=True)
    path = Path(p.stdout.readline().strip())
    assert path.is_dir()
    p.kill()
    p.wait()
    sweep_stale(find_hierarchy())
    assert not path.exists()


@needs_cgroups
@pytest.mark.kvm
def test_cap_holds_a_guest_to_its_share_of_a_cpu(default_images) -> None:
    """`hospes run --cap 40`: a guest that boots and then spins in a shell loop is throttled,
    and the process never uses more than 40% of a CPU on average (the limit only makes
    it slower under other load, never faster; 15% slack for the period boundaries)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = run_hospes("run", "--cap", "40", "--stats", "--", "sh", "-c",
                   "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo spun $i", timeout=600)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    assert p.returncode == 0 and "spun 200000" in out, (out[-2000:], err[-2000:])
    m = re.search(r"cgroup (\S+): throttled in (\d+) of (\d+) periods", err)
    assert m, err[-2000:]
    assert int(m.group(2)) > 0, "a capped CPU-bound guest was never throttled"
    assert cpu <= 0.40 * wall * 1.15 + 0.5, f"{cpu:.1f} s of CPU in {wall:.1f} s is over a 40% cap"
    assert not Path(m.group(1)).exists()


def test_run_refuses_out_of_range_cap() -> None:
    p = run_hospes("run", "--cap", "-5", "--", "true", timeout=60)
    assert p.returncode == 2 and b"--cap" in p.stderr
