"""The grant table: the one checked lookup, setup/query through the hypercall, saved state."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from hospes.machine.memory import GuestMemory
from hospes.pv.grant import GrantError, GrantTable, GrantTableState
from hospes.pv.hypercalls.grant import GNTTABOP_query_size, GNTTABOP_setup_table, GNTST_general_error, grant_table_op
from hospes.pv.layout import MAX_GRANT_FRAMES, Layout
from hospes.pv.mmu import PvMmu
from hospes.state import StateError, decode, encode

RAM_PAGES = 64


@pytest.fixture()
def table():
    lay = Layout(ram_pages=RAM_PAGES, nr_vcpus=1)
    mem = GuestMemory([("ram", lay.ram_bytes), ("xen", 64 * 4096), ("hv", 4096)])
    grants = GrantTable(mem, base_gpa=lay.grant_frame_gpa(0), max_frames=MAX_GRANT_FRAMES, ram_frames=RAM_PAGES,
                        types=PvMmu(mem, RAM_PAGES, lay.guest_frames, {}))
    yield SimpleNamespace(mem=mem, lay=lay, grants=grants)
    mem.close()


def grant(t, ref: int, flags: int, domid: int, frame: int) -> None:
    t.mem.write(t.lay.grant_frame_gpa(0) + ref * 8, struct.pack("<HHI", flags, domid, frame))


def test_lookup_resolves_a_writable_grant_to_its_page(table) -> None:
    table.grants.setup(1)
    grant(table, 8, 1, 0, 20)
    assert table.grants.lookup(8, grantee=0, writable=True) == 20 << 12
    assert table.grants.lookup(8, grantee=0, writable=False) == 20 << 12


@pytest.mark.parametrize("flags, domid, frame, writable, why", [
    (0, 0, 20, False, "does not grant"),           # invalid entry
    (2, 0, 20, False, "does not grant"),           # accept_transfer, not permit_access
    (3, 0, 20, False, "does not grant"),           # transitive
    (1, 5, 20, False, "does not grant access to domain 0"),
    (1 | 4, 0, 20, True, "read-only"),
    (1, 0, RAM_PAGES, False, "outside the guest's RAM"),       # the first hypervisor frame
    (1, 0, 0xFFFFFFFF, False, "outside the guest's RAM"),
])
def test_lookup_refuses_what_the_entry_does_not_allow(table, flags, domid, frame, writable, why) -> None:
    table.grants.setup(1)
    grant(table, 9, flags, domid, frame)
    with pytest.raises(GrantError, match=why):
        table.grants.lookup(9, grantee=0, writable=writable)


def test_references_must_lie_in_the_frames_set_up(table) -> None:
    g = table.grants
    grant(table, 8, 1, 0, 20)
    assert g.nr_frames == 1                             # Xen's initial frame, before any setup
    assert g.lookup(8, grantee=0, writable=False) == 20 << 12
    g.setup(1)
    assert g.lookup(8, grantee=0, writable=False) == 20 << 12
    for ref in (512, -1, 1 << 40):
        with pytest.raises(GrantError, match="outside the grant table"):
            g.lookup(ref, grantee=0, writable=False)
    t2 = table.lay.grant_frame_gpa(1)
    table.mem.write(t2, struct.pack("<HHI", 1, 0, 21))   # ref 512 lives in frame 1
    g.setup(2)
    assert g.lookup(512, grantee=0, writable=False) == 21 << 12


def test_setup_grows_never_shrinks_and_has_a_limit(table) -> None:
    g = table.grants
    first = table.lay.grant_frame_gpa(0) >> 12
    assert g.setup(2) == (first, first + 1)
    assert g.setup(1) == (first,) and g.nr_frames == 2
    with pytest.raises(GrantError):
        g.setup(MAX_GRANT_FRAMES + 1)
    assert g.nr_frames == 2


class FakeVcpu:
    """Guest-virtual = guest-physical, enough for one hypercall argument block."""

    def __init__(self, t) -> None:
        self.mem = t.mem
        self.domain = SimpleNamespace(domid=3, grants=t.grants)

    def read(self, va: int, size: int) -> bytes:
        return self.mem.read(va, size)

    def write(self, va: int, data: bytes) -> None:
        self.mem.write(va, data)


def test_the_hypercall_sets_up_and_queries_the_table(table) -> None:
    vcpu = FakeVcpu(table)
    uop, flist = 0x1000, 0x2000
    table.mem.write(uop, struct.pack("<H2xIh6xQ", 0x7FF0, 3, 1, flist))   # DOMID_SELF, 3 frames
    assert grant_table_op(vcpu, GNTTABOP_setup_table, uop, 1) == 0
    assert struct.unpack_from("<h", table.mem.read(uop + 8, 2))[0] == 0
    first = table.lay.grant_frame_gpa(0) >> 12
    assert struct.unpack("<3Q", table.mem.read(flist, 24)) == (first, first + 1, first + 2)
    assert table.grants.nr_frames == 3
    table.mem.write(uop, struct.pack("<H2xIh6xQ", 0x7FF0, MAX_GRANT_FRAMES + 1, 1, flist))
    assert grant_table_op(vcpu, GNTTABOP_setup_table, uop, 1) == 0
    assert struct.unpack_from("<h", table.mem.read(uop + 8, 2))[0] == GNTST_general_error
    assert table.grants.nr_frames == 3
    assert grant_table_op(vcpu, GNTTABOP_query_size, uop, 1) == 0
    assert struct.unpack("<IIh", table.mem.read(uop + 4, 10)) == (3, MAX_GRANT_FRAMES, 0)


def test_save_restore_save(table) -> None:
    table.grants.setup(3)
    state = table.grants.save()
    assert state == GrantTableState(nr_frames=3)
    again = GrantTable.restore(decode(GrantTableState, encode(state)), mem=table.mem,
                               base_gpa=table.lay.grant_frame_gpa(0), max_frames=MAX_GRANT_FRAMES,
                               ram_frames=RAM_PAGES, types=table.grants.types)
    assert again.save() == state
    grant(table, 1000, 1, 0, 30)                       # frame 1, set up before the save
    assert again.lookup(1000, grantee=0, writable=True) == 30 << 12


def test_restore_refuses_a_bad_record(table) -> None:
    kw = dict(mem=table.mem, base_gpa=table.lay.grant_frame_gpa(0), max_frames=4, ram_frames=RAM_PAGES,
              types=table.grants.types)
    with pytest.raises(StateError):
        GrantTable.restore(GrantTableState(nr_frames=5), **kw)
    with pytest.raises(StateError):
        GrantTable.restore(GrantTableState(nr_frames=1, version=99), **kw)
