"""The bench's floor programs work: every mode of bench/c/kvm_exit.c and every
measurement of the nullcall PV guest runs to the end and reports (no timings
are checked; those live in bench/).

kvm_exit checks what it can itself (the exit it expects at every iteration,
the writer's stores); the nullcall guest counts what its handlers saw (each
int3, #PF and user syscall) and says FAIL otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from hospesbench import build, parse  # noqa: E402
from hospesbench.report import FLOORS, HOSPES_TRANSITIONS  # noqa: E402

pytestmark = [pytest.mark.kvm]


@pytest.fixture(scope="module")
def kvm_exit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("floors") / "kvm_exit"
    subprocess.run(["gcc", *build.HOST_CFLAGS, "-o", str(out), str(ROOT / "bench" / "c" / "kvm_exit.c")],
                   check=True)
    return out


@pytest.mark.parametrize("mode", [m for m, _ in FLOORS])
def test_kvm_exit_mode_runs(kvm_exit: Path, mode: str) -> None:
    res = subprocess.run([str(kvm_exit), mode, "200", "2"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    vals = parse.bench_values(res.stdout)
    assert list(vals) == [f"floor_{mode}"] and len(vals[f"floor_{mode}"]) == 2
    assert all(v > 0 for v in vals[f"floor_{mode}"])


def test_kvm_exit_rejects_bad_arguments(kvm_exit: Path) -> None:
    for argv in (["nope", "10", "1"], ["out", "0", "1"], ["out"]):
        res = subprocess.run([str(kvm_exit), *argv], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and res.stderr


@pytest.mark.timeout(600)
def test_nullcall_guest_reports_every_transition(tmp_path: Path) -> None:
    elf = build.build_nullcall(tmp_path)
    res = subprocess.run([sys.executable, "-m", "hospes", "run", "--stats", "--kernel", str(elf), "--memory", "64",
                          "--cmdline", "n=50 rounds=2"], capture_output=True, text=True, timeout=540)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "PASS nullcall" in res.stdout and "FAIL" not in res.stdout, res.stdout[-2000:]
    vals = parse.bench_values(res.stdout)
    assert sorted(vals) == sorted(name for name, _, _ in HOSPES_TRANSITIONS)
    assert all(len(v) == 2 for v in vals.values())
    counts = parse.parse_exit_stats(res.stderr).counts
    # 2 rounds x 50: a user syscall and a user #PF each switch mode twice; every bounce returns with iret
    assert counts.get("syscall", 0) >= 100 and counts.get("trap:14", 0) >= 200
    assert counts.get("hypercall:23", 0) >= 2 * 5 * 50
    assert counts.get("sregs_switch", 0) >= 2 * 2 * 2 * 50
