"""Misbehaving PV guests: bad hypercall arguments fail cleanly, guest bugs end
the domain with a register dump and a clear message, never a traceback."""

from __future__ import annotations


import pytest

from conftest import guest_build, run_hospes

pytestmark = pytest.mark.kvm

BAD_HYPERCALL_PASSES = {
    "mmu_update_bad_pointer", "mmu_update_huge_count", "console_io_huge_count",
    "console_io_noncanonical", "set_trap_table_bad_pointer", "multicall_bad_pointer",
    "vcpu_op_bad_vcpu", "update_va_mapping_unmapped_va", "mmuext_op_bad_pointer",
    "hypercall_out_of_range",
}


def test_bad_hypercall_arguments_get_xen_errors() -> None:
    elf = guest_build.build_guest("bad_hypercalls")
    p = run_hospes("run", "--kernel", str(elf), "--memory", "32", timeout=120)
    lines = p.stdout.decode(errors="replace").splitlines()
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    assert "DONE" in lines
    assert not [line for line in lines if line.startswith("FAIL")]
    assert {line.split()[1] for line in lines if line.startswith("PASS ")} == BAD_HYPERCALL_PASSES


@pytest.mark.parametrize(
    "guest, phrase",
    [
        ("crash_nohandler", "unhandled exception 14"),
        ("crash_badstack", "cannot write a bounce frame"),
    ],
)
def test_guest_bugs_end_the_domain_with_a_dump(guest: str, phrase: str) -> None:
    elf = guest_build.build_guest(guest)
    p = run_hospes("run", "--kernel", str(elf), "--memory", "32", timeout=120)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 3
    assert "the guest crashed" in err and phrase in err
    assert "rip=" in err and "cr3=" in err  # the register dump
    assert "Traceback" not in err
