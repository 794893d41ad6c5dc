"""The seeded hypercall fuzzer kernel (tests/guests/hcall_fuzz.c), and its findings.

``test_hcall_fuzz_kernel_stays_alive`` boots the kernel for a bounded run
(FUZZ_CALLS hypercalls, seed FUZZ_SEED; ``HOSPES_FUZZ_SCALE`` and
``HOSPES_FUZZ_SEED`` run longer or another sequence, see tests/fuzz/README.md):
the domain must reach ``FUZZ done``, power off with status 0, and Hospes must
report no internal error. A failure names the seed and the command line that
replays it (``trace=`` prints every call from that one on).

What the fuzzer found is kept below as plain regression tests, each with the
input that found it (the guest kernel avoids the open ones unless ``known=1``,
so a long run can look for new ones).
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import guest_build
from fuzz_helpers import fuzz_seed, scaled
from hospes.pv.abi import DOMID_SELF, PTE_P, PTE_RW, Hypercall
from hospes.pv.errors import Errno
from hospes.pv.hypercalls import vcpu_op as V
from pv_fakes import ARG_VA, BUF_VA, L1_FRAME, FakePvDomain, FakeVcpu, u32

_TESTS = Path(__file__).resolve().parent
FUZZ_SEED = fuzz_seed(1)
FUZZ_CALLS = scaled(100_000)   # ~30 s here; 10^6 took ~5 min
RUN_TIMEOUT = 600 + FUZZ_CALLS // 500


def _fuzz_cmdline(seed: int, calls: int) -> str:
    return f"seed={seed} calls={calls} progress={max(calls // 10, 1)}"


@pytest.mark.kvm
def test_hcall_fuzz_kernel_stays_alive() -> None:
    elf = guest_build.build_guest("hcall_fuzz")
    cmdline = _fuzz_cmdline(FUZZ_SEED, FUZZ_CALLS)
    cmd = [sys.executable, "-m", "hospes", "run", "--kernel", str(elf), "--memory", "64", "--cmdline", cmdline]
    replay = " ".join(cmd[1:]).replace(cmdline, f"'{cmdline} trace=<first call to print>'")
    try:
        proc = subprocess.run(cmd, cwd=_TESTS.parent, capture_output=True, text=True, errors="replace",
                              timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"seed {FUZZ_SEED}: no exit within {RUN_TIMEOUT} s (a hang); replay: python {replay}\n"
                    f"{out[-3000:]}")
    out, err = proc.stdout, proc.stderr
    hypervisor = "\n".join(line for line in err.splitlines() if not line.startswith("(d"))
    context = (f"seed {FUZZ_SEED}, {FUZZ_CALLS} calls; replay: python {replay}\n--- stdout (tail)\n{out[-3000:]}"
               f"\n--- hypervisor messages (tail)\n{hypervisor[-4000:]}")
    assert "Traceback" not in hypervisor and "internal error" not in hypervisor, context
    assert proc.returncode == 0, context
    assert f"FUZZ done {FUZZ_CALLS} calls seed {FUZZ_SEED}" in out.splitlines(), context
    assert "PASS fuzz_alive" in out.splitlines(), context
    assert "FAIL" not in out, context
    # Every family was reached: the summary names each implemented hypercall.
    reached = {int(line.split()[2].rstrip(":")) for line in out.splitlines()
               if line.startswith("FUZZ hypercall ") and not line.split()[2].startswith(">")}
    implemented = {0, 1, 2, 5, 8, 9, 10, 12, 13, 14, 15, 17, 18, 20, 21, 24, 25, 26, 29, 30, 32, 33}
    assert implemented <= reached, f"never called: {sorted(implemented - reached)}"


def test_fuzz_kernel_documents_its_deny_list() -> None:
    source = (_TESTS / "guests" / "hcall_fuzz.c").read_text()
    for denied in ("set_trap_table", "stack_switch", "set_callbacks", "iret", "shutdown", "NEW_BASEPTR",
                   "CLEAR_PAGE", "register_vcpu_info", "set_debugreg"):
        assert denied in source.split("#include")[0], f"{denied} missing from the deny-list comment"


# --- findings --------------------------------------------------------------------------------


# Finding of hcall_fuzz seed 20261206 (10^6 run): the version was computed as a Python int
# and 0xffffffff + 1 overflowed to_bytes(4), ending the domain; Xen's uint32_t wraps.
def test_time_area_whose_version_is_all_ones_wraps(dom: FakePvDomain, vcpu: FakeVcpu) -> None:
    area = BUF_VA + 0x300
    vcpu.put(area, struct.pack("<I", 0xFFFF_FFFF) + bytes(28))
    vcpu.put(ARG_VA, struct.pack("<Q", area))
    assert vcpu.hypercall(Hypercall.vcpu_op, V.VCPUOP_register_vcpu_time_memory_area, 0, ARG_VA) == 0
    data = vcpu.get(area, 32)
    assert u32(data, 0) == 2                     # 0xffffffff + 1 | 1 = 1 (u32), then 2
    assert data[4:] == dom.clock.record(2)[4:]


# Finding of hcall_fuzz: the command was taken from ptr & 3, so 4-7 acted as updates;
# Xen takes ptr & 7 and answers -ENOSYS, leaving the entry alone.
@pytest.mark.parametrize("cmd", [4, 6])
def test_mmu_update_command_above_3_is_enosys(dom: FakePvDomain, vcpu: FakeVcpu, cmd: int) -> None:
    slot = (L1_FRAME << 12) + 8 * 100            # an unmapped slot of the kernel L1
    before = int(dom.mem.q[slot >> 3])
    target = 40
    vcpu.put(ARG_VA, struct.pack("<QQ", slot | cmd, (target << 12) | PTE_P | PTE_RW))
    rc = vcpu.hypercall(Hypercall.mmu_update, ARG_VA, 1, 0, DOMID_SELF)
    assert rc == -Errno.ENOSYS
    assert int(dom.mem.q[slot >> 3]) == before

