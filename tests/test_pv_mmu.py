"""The PV MMU's page types and reference counts, without KVM."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from hospes.machine.memory import GuestMemory
from hospes.pv.abi import PTE_A, PTE_D, PTE_NX, PTE_P, PTE_PCD, PTE_PSE, PTE_RW, PTE_US
from hospes.pv.errors import XenError
from hospes.pv.mmu import SEGDESC, WRITABLE, MmuState, PvMmu, needs_writer
from hospes.state import StateError, decode, encode

RAM = 64
P_RW = PTE_P | PTE_RW
HV_L4 = {257: (RAM + 4) << 12 | 0x23}


def new_memory():
    return GuestMemory([("ram", RAM * 4096), ("xen", 4 * 4096), ("hv", 4 * 4096)])


@pytest.fixture()
def mmu():
    mem = new_memory()
    m = PvMmu(mem, RAM, RAM + 4, HV_L4)
    yield m
    mem.close()


def vcpu():
    return SimpleNamespace(writes=[])


def entry(mmu, frame, index):
    return int(mmu.q[(frame << 9) + index])


def set_entry(mmu, frame, index, value):
    mmu.q[(frame << 9) + index] = value


def build_tree(mmu):
    """L4 10 -> L3 11 -> L2 12 -> L1 13 -> data 20 (rw) and 21 (ro)."""
    set_entry(mmu, 10, 0, 11 << 12 | P_RW)
    set_entry(mmu, 11, 0, 12 << 12 | P_RW)
    set_entry(mmu, 12, 0, 13 << 12 | P_RW)
    set_entry(mmu, 13, 0, 20 << 12 | P_RW)
    set_entry(mmu, 13, 1, 21 << 12 | PTE_P)


def test_pin_validates_tree_forces_user_and_installs_hypervisor_slots(mmu) -> None:
    build_tree(mmu)
    v = vcpu()
    mmu.pin(v, 10, 4)
    assert [mmu.table_level(f) for f in (10, 11, 12, 13)] == [4, 3, 2, 1]
    assert mmu.type[20] == WRITABLE and 21 not in mmu.type
    assert entry(mmu, 10, 0) & (PTE_US | PTE_A) == PTE_US | PTE_A
    assert entry(mmu, 13, 1) & PTE_US
    assert entry(mmu, 10, 257) == (RAM + 4) << 12 | 0x23
    # Written in place; the slot was empty, so there is no shadow of it for the writer to drop.
    assert all(gpa != (10 << 12) + 257 * 8 for gpa, _ in v.writes)
    # A present entry that validation adjusted (US and A added) gained rights only:
    # KVM's stricter shadow of it faults and re-walks, so no writer run either.
    assert v.writes == []


def test_filling_a_table_keeps_cached_translations_and_replacing_an_entry_drops_them(mmu) -> None:
    build_tree(mmu)
    v = vcpu()
    mmu.pin(v, 10, 4)
    mmu.translation_cache[(10 << 12, 0)] = (20 << 12, True)   # as GuestVirt caches a walk
    mmu.update_entry(v, (13 << 12) + 5 * 8, 22 << 12 | P_RW)   # a new mapping: no walk went through it
    assert mmu.translation_cache == {(10 << 12, 0): (20 << 12, True)}
    mmu.update_entry(v, (13 << 12) + 5 * 8, 23 << 12 | P_RW)   # replaced: a walk may have used the old one
    assert mmu.translation_cache == {}


@pytest.mark.parametrize("old, new, writer", [
    (20 << 12 | P_RW, 20 << 12 | P_RW | PTE_US | PTE_A | PTE_D, False),     # rights and A/D added
    (20 << 12 | PTE_P | PTE_NX, 20 << 12 | PTE_P, False),                   # made executable
    (20 << 12 | PTE_P, 20 << 12 | PTE_P | 1 << 9 | 1 << 8, False),          # software and global bits
    (20 << 12 | P_RW, 20 << 12 | PTE_P, True),                              # made read-only
    (20 << 12 | PTE_P, 20 << 12 | PTE_P | PTE_NX, True),                    # made non-executable
    (20 << 12 | P_RW | PTE_US, 20 << 12 | P_RW, True),                      # user access taken away
    (20 << 12 | P_RW | PTE_A, 20 << 12 | P_RW, True),                       # accessed cleared
    (20 << 12 | P_RW | PTE_D, 20 << 12 | P_RW, True),                       # dirty cleared
    (20 << 12 | P_RW, 21 << 12 | P_RW, True),                               # another frame
    (20 << 12 | P_RW, 20 << 12 | P_RW & ~PTE_P, True),                      # not present
    (20 << 12 | P_RW, 20 << 12 | P_RW | PTE_PCD, True),                     # caching changed
    (20 << 12 | P_RW, 20 << 12 | P_RW | PTE_PSE, True),                     # a large page now
])
def test_a_replaced_entry_needs_the_writer_only_if_it_lost_rights(old, new, writer) -> None:
    assert needs_writer(old, new) is writer


def test_page_table_cannot_be_mapped_writable_until_released(mmu) -> None:
    build_tree(mmu)
    v = vcpu()
    mmu.pin(v, 10, 4)
    with pytest.raises(XenError):
        mmu.update_entry(v, (13 << 12) + 2 * 8, 12 << 12 | P_RW)  # the L2, writable
    mmu.update_entry(v, (13 << 12) + 2 * 8, 12 << 12 | PTE_P)    # read-only is fine
    mmu.unpin(v, 10)
    assert not mmu.type  # every reference released, down to the data pages
    mmu.update_entry(v, (30 << 12), 12 << 12 | P_RW)             # 30 is no table: a plain store
    assert entry(mmu, 30, 0) == 12 << 12 | P_RW


def test_writable_page_cannot_become_a_page_table(mmu) -> None:
    build_tree(mmu)
    set_entry(mmu, 13, 2, 14 << 12 | P_RW)   # frame 14 mapped writable by the L1
    v = vcpu()
    mmu.pin(v, 10, 4)
    with pytest.raises(XenError):
        mmu.pin(v, 14, 1)
    with pytest.raises(XenError):             # linking it as an L1 is refused too
        mmu.update_entry(v, (12 << 12) + 8, 14 << 12 | P_RW)


def test_self_mapping_writable_l1_is_refused(mmu) -> None:
    set_entry(mmu, 13, 0, 13 << 12 | P_RW)
    with pytest.raises(XenError):
        mmu.pin(vcpu(), 13, 1)
    assert not mmu.type and not mmu.count


@pytest.mark.parametrize("bad", [(RAM + 4 + 2) << 12 | PTE_P, 5 << 12 | PTE_P | PTE_PSE])
def test_entries_outside_the_domain_or_superpages_are_refused(mmu, bad) -> None:
    set_entry(mmu, 12, 0, bad)
    with pytest.raises(XenError):
        mmu.pin(vcpu(), 12, 2)
    assert not mmu.count


def test_l1_may_map_hypervisor_owned_guest_frames_but_not_the_hypervisor(mmu) -> None:
    v = vcpu()
    mmu.pin(v, 13, 1)
    mmu.update_entry(v, 13 << 12, RAM << 12 | P_RW)            # shared_info: allowed
    with pytest.raises(XenError):
        mmu.update_entry(v, (13 << 12) + 8, (RAM + 4) << 12 | PTE_P)  # hypervisor region


def test_hypervisor_slots_cannot_be_written(mmu) -> None:
    build_tree(mmu)
    v = vcpu()
    mmu.pin(v, 10, 4)
    with pytest.raises(XenError):
        mmu.update_entry(v, (10 << 12) + 260 * 8, 11 << 12 | P_RW)


def test_replacing_an_entry_moves_references(mmu) -> None:
    build_tree(mmu)
    v = vcpu()
    mmu.pin(v, 10, 4)
    mmu.update_entry(v, 13 << 12, 22 << 12 | P_RW)   # 20 -> 22
    assert 20 not in mmu.type and mmu.type[22] == WRITABLE
    mmu.update_entry(v, 13 << 12, 22 << 12 | P_RW | PTE_A)  # same target: counts unchanged
    assert mmu.count[22] == 1


def test_cr3_switch_holds_a_reference(mmu) -> None:
    build_tree(mmu)
    v = vcpu()
    cr3 = mmu.switch_l4(v.writes, 0, 10)
    assert cr3 == 10 << 12 and mmu.table_level(10) == 4
    mmu.switch_l4(v.writes, cr3, 0)
    assert not mmu.count


# --- save / restore -----------------------------------------------------------------


@pytest.fixture()
def moved():
    """Memory of a 'new host', filled by restore_elsewhere."""
    mem = new_memory()
    yield mem
    mem.close()


def restore_elsewhere(mmu, mem, state):
    """Copy guest memory as a migration would, then restore the MMU over the copy."""
    mem.write(0, mmu.mem.read(0, mmu.mem.size))
    return PvMmu.restore(state, mem=mem, ram_pages=RAM, guest_frames=RAM + 4, hv_l4_entries=HV_L4)


def busy(mmu):
    """A pinned tree, a second (CR3) reference on its L4, a pinned lone L1, a GDT frame."""
    build_tree(mmu)
    v = vcpu()
    mmu.pin(v, 10, 4)
    cr3 = mmu.switch_l4(v.writes, 0, 10)
    set_entry(mmu, 15, 0, 20 << 12 | P_RW)   # a second writable mapping of frame 20
    mmu.pin(v, 15, 1)
    mmu.get_type(40, SEGDESC, v.writes)
    return v, cr3


def test_state_lists_only_typed_frames_sorted(mmu) -> None:
    busy(mmu)
    state = mmu.save()
    assert state.runs == (
        (10, 1, 4, 2), (11, 1, 3, 1), (12, 1, 2, 1), (13, 1, 1, 1), (15, 1, 1, 1), (20, 1, WRITABLE, 2),
        (40, 1, SEGDESC, 1),
    )
    assert state.pinned == ((10, 4), (15, 1))
    assert PvMmu(mmu.mem, RAM, RAM + 4, HV_L4).save() == MmuState((), ())


def test_round_trip_through_restore_and_json(mmu, moved) -> None:
    busy(mmu)
    state = mmu.save()
    again = restore_elsewhere(mmu, moved, state)
    assert again.save() == state
    assert again.mem is moved and again.hv_l4 == mmu.hv_l4
    assert decode(MmuState, json.loads(json.dumps(encode(state)))) == state


def test_restored_mmu_keeps_enforcing_types(mmu, moved) -> None:
    busy(mmu)
    l2_writable = 12 << 12 | P_RW
    with pytest.raises(XenError):
        mmu.update_entry(vcpu(), (13 << 12) + 2 * 8, l2_writable)
    again = restore_elsewhere(mmu, moved, mmu.save())
    v = vcpu()
    with pytest.raises(XenError):            # the L2 is still a table: no writable mapping
        again.update_entry(v, (13 << 12) + 2 * 8, l2_writable)
    with pytest.raises(XenError):            # frame 20 is still writable: no table
        again.pin(v, 20, 1)
    with pytest.raises(XenError):            # already pinned
        again.pin(v, 10, 4)
    with pytest.raises(XenError):            # the hypervisor slots stay refused
        again.update_entry(v, (10 << 12) + 260 * 8, 11 << 12 | P_RW)


def test_restored_counts_release_exactly_like_the_original(mmu, moved) -> None:
    _, cr3 = busy(mmu)
    again = restore_elsewhere(mmu, moved, mmu.save())
    v = vcpu()
    again.unpin(v, 10)
    assert again.table_level(10) == 4        # the CR3 reference still holds it
    again.switch_l4(v.writes, cr3, 0)
    again.unpin(v, 15)
    again.put_type(40, v.writes)
    assert not again.type and not again.count and not again.pinned
    # Released, the old L2 may now be mapped writable like any page.
    again.update_entry(v, (30 << 12), 12 << 12 | P_RW)


def test_newer_version_is_refused(mmu) -> None:
    state = dataclasses.replace(mmu.save(), version=MmuState.VERSION + 1)
    with pytest.raises(StateError, match="PV MMU state is version"):
        PvMmu.restore(state, mem=mmu.mem, ram_pages=RAM, guest_frames=RAM + 4, hv_l4_entries=HV_L4)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (MmuState(((RAM, 1, 1, 1),), ()), "RAM frames"),
        (MmuState(((RAM - 1, 2, 1, 1),), ()), "RAM frames"),
        (MmuState(((5, 1, 1, 1), (5, 1, 1, 1)), ()), "twice"),
        (MmuState(((5, 3, 1, 1), (7, 1, 2, 1)), ()), "twice"),
        (MmuState(((5, 1, 7, 1),), ()), "unknown type 7"),
        (MmuState(((5, 1, 2, 0),), ()), "0 references"),
        (MmuState(((5, 1, 4, 1),), ((5, 5),)), "level 5"),
        (MmuState(((5, 1, 4, 1),), ((5, 3),)), "as an L3 table, but saves L4"),
        (MmuState(((5, 1, WRITABLE, 1),), ((5, 1),)), "saves writable"),
        (MmuState((), ((5, 1),)), "saves no type"),
        (MmuState(((5, 1, 1, 2),), ((5, 1), (5, 1))), "pins frame 0x5 twice"),
    ],
)
def test_inconsistent_state_is_refused(mmu, state, message) -> None:
    with pytest.raises(StateError, match=message):
        PvMmu.restore(state, mem=mmu.mem, ram_pages=RAM, guest_frames=RAM + 4, hv_l4_entries=HV_L4)


# --- linear page tables (Xen's opt_pv_linear_pt, on by default) ----------------------------------


def test_a_read_only_self_reference_in_an_l4_is_accepted_and_takes_no_reference(mmu) -> None:
    build_tree(mmu)
    set_entry(mmu, 10, 5, 10 << 12 | PTE_P)            # L4[5] -> the L4 itself, read-only
    v = vcpu()
    mmu.pin(v, 10, 4)
    assert mmu.count[10] == 1 and not mmu.linear
    mmu.update_entry(v, (10 << 12) + 6 * 8, 10 << 12 | PTE_P)   # and one more by mmu_update
    assert mmu.count[10] == 1
    mmu.unpin(v, 10)
    assert not mmu.type and not mmu.count


def test_a_writable_self_reference_is_refused(mmu) -> None:
    build_tree(mmu)
    set_entry(mmu, 10, 5, 10 << 12 | P_RW)
    with pytest.raises(XenError):
        mmu.pin(vcpu(), 10, 4)
    assert not mmu.type and not mmu.count


def test_an_l2_may_name_another_validated_l2_read_only_but_no_chain_forms(mmu) -> None:
    build_tree(mmu)
    v = vcpu()
    mmu.pin(v, 10, 4)
    set_entry(mmu, 14, 0, 13 << 12 | PTE_P)            # a second L2, over the same L1
    mmu.pin(v, 14, 2)
    with pytest.raises(XenError):                      # writable: refused
        mmu.update_entry(v, (14 << 12) + 8, 12 << 12 | P_RW)
    mmu.update_entry(v, (14 << 12) + 8, 12 << 12 | PTE_P)   # L2 14 -> L2 12, linear
    assert mmu.count[12] == 2 and mmu.linear == {14: 1, 12: -1}
    with pytest.raises(XenError):                      # 12 is a linear target: it may not hold one
        mmu.update_entry(v, (12 << 12) + 8, 14 << 12 | PTE_P)
    set_entry(mmu, 16, 0, 13 << 12 | PTE_P)
    mmu.pin(v, 16, 2)
    with pytest.raises(XenError):                      # 14 holds one: it may not be a target
        mmu.update_entry(v, (16 << 12) + 8, 14 << 12 | PTE_P)
    with pytest.raises(XenError):                      # an L4 is not an L2: neither kind of entry
        mmu.update_entry(v, (16 << 12) + 16, 10 << 12 | PTE_P)
    mmu.update_entry(v, (14 << 12) + 8, 0)             # unlinked: the counts go back
    assert mmu.count[12] == 1 and not mmu.linear
    mmu.unpin(v, 14)
    mmu.unpin(v, 16)
    mmu.unpin(v, 10)
    assert not mmu.type and not mmu.count


def test_linear_counts_survive_save_and_restore(mmu, moved) -> None:
    build_tree(mmu)
    v = vcpu()
    mmu.pin(v, 10, 4)
    set_entry(mmu, 14, 0, 12 << 12 | PTE_P)            # L2 14 -> L2 12 from the start
    mmu.pin(v, 14, 2)
    state = mmu.save()
    assert state.linear == ((12, -1), (14, 1))
    again = restore_elsewhere(mmu, moved, decode(MmuState, json.loads(json.dumps(encode(state)))))
    assert again.linear == {12: -1, 14: 1}
    with pytest.raises(XenError):                      # still a target: no linear entry in it
        again.update_entry(v, (12 << 12) + 8, 14 << 12 | PTE_P)
    again.unpin(v, 14)
    assert again.count[12] == 1 and not again.linear
    with pytest.raises(StateError, match="linear entries"):
        PvMmu.restore(dataclasses.replace(state, linear=((30, 1),)), mem=mmu.mem, ram_pages=RAM,
                      guest_frames=RAM + 4, hv_l4_entries=HV_L4)
