"""Entries whose old value KVM may still shadow wait for the writer of the next flush.

Hospes stores page-table entries into memory itself; KVM drops its shadow of a
replaced present entry only when guest-mode code stores to it, so such an
entry is recorded in ``PvMmu.pending_zaps`` and every vCPU that flushes (or
switches CR3) runs all of them in its writer first. An entry leaves the record
only once a writer that ran it has returned, and only if it was not replaced
again meanwhile.
"""

from __future__ import annotations

import pytest

from hospes.pv.vcpu import ZAPS_MAX
from pv_machine import Machine


@pytest.fixture()
def machine():
    m = Machine()
    yield m
    m.close()


def test_a_flushing_vcpu_takes_every_pending_zap_and_clears_them_once_its_writer_returned(machine) -> None:
    vcpu, other = machine.pv.vcpus[0], machine.pv.vcpus[1]
    mmu = machine.pv.mmu
    tr = machine.trampoline
    mmu.pending_zaps.update({0x5008: 1, 0x6010: 2})
    mmu.zap_seq = 2
    vcpu._take_zaps()
    assert [gpa for gpa, _ in vcpu.writes] == [0x5008, 0x6010] and vcpu.zaps_taken == {0x5008: 1, 0x6010: 2}
    # Another vCPU flushing meanwhile runs them too: they are still pending for it.
    other._take_zaps()
    assert other.zaps_taken == vcpu.zaps_taken
    vcpu.writes.clear()     # handed to the writer
    vcpu.regs.rip = tr.writer1_va           # an exit before the writer ran (an immediate exit)
    vcpu._zaps_done()
    assert len(mmu.pending_zaps) == 2 and vcpu.zaps_taken
    mmu.zap_seq += 1
    mmu.pending_zaps[0x6010] = mmu.zap_seq  # replaced again after the snapshot: a new shadow to drop
    vcpu.regs.rip = 0xFFFFFFFF81000000      # back in the guest: the writer has returned
    vcpu._zaps_done()
    assert mmu.pending_zaps == {0x6010: 3} and vcpu.zaps_taken == {}


def test_a_guest_that_never_flushes_cannot_grow_the_pending_set(machine) -> None:
    vcpu = machine.pv.vcpus[0]
    mmu = machine.pv.mmu
    mmu.pending_zaps.update({8 * i: i for i in range(ZAPS_MAX)})
    vcpu.preempt_at = 0
    assert vcpu.preempt_check()             # a long hypercall stops, so its resume can run them
