"""Grant map/unmap, copy, swap, versions and their saved state, through grant_table_op
with the status codes of Xen's xen/common/grant_table.c."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from hospes.machine.memory import GuestMemory
from hospes.pv.errors import Errno, XenError
from hospes.pv.grant import (
    GNTMAP_contains_pte, GNTMAP_device_map, GNTMAP_host_map, GNTMAP_readonly, GNTST_bad_copy_arg,
    GNTST_bad_domain, GNTST_bad_gntref, GNTST_bad_handle, GNTST_bad_page, GNTST_eagain, GNTST_general_error,
    GNTST_no_space, GNTST_okay, GNTST_permission_denied, GTF_reading, GTF_writing, GrantTable, GrantTableState,
)
from hospes.pv.hypercalls.grant import (
    COPY, GNTCOPY_dest_gref, GNTCOPY_source_gref, GNTTABOP_copy, GNTTABOP_get_status_frames,
    GNTTABOP_get_version, GNTTABOP_map_grant_ref, GNTTABOP_set_version, GNTTABOP_swap_grant_ref,
    GNTTABOP_unmap_grant_ref, MAP, MAX_OPS, UNMAP, grant_table_op,
)
from hospes.pv.layout import MAX_GRANT_FRAMES, Layout
from hospes.pv.mmu import WRITABLE, PvMmu
from hospes.state import StateError, decode, encode

RAM_PAGES = 64
DOMID = 3
SELF = 0x7FF0
UOP = 0x1000          # argument block (guest virtual = physical in these tests)
L1 = 10               # a frame made an L1 table
DATA = 20             # granted frames 20..23


class FakeVcpu:
    def __init__(self, t) -> None:
        self.mem = t.mem
        self.domain = SimpleNamespace(domid=DOMID, grants=t.grants, mem=t.mem, flush_others=self._flush_others)
        self.kernel_cr3 = 0
        self.writes: list[tuple[int, int]] = []
        self.flushes = 0

    def _flush_others(self, _vcpu) -> None:
        self.flushes += 1

    def request_flush(self) -> None:
        self.flushes += 1

    def read(self, va: int, size: int) -> bytes:
        return self.mem.read(va, size)

    def write(self, va: int, data: bytes) -> None:
        self.mem.write(va, data)


@pytest.fixture()
def t():
    lay = Layout(ram_pages=RAM_PAGES, nr_vcpus=1)
    mem = GuestMemory([("ram", lay.ram_bytes), ("xen", 64 * 4096), ("hv", 4096)])
    mmu = PvMmu(mem, RAM_PAGES, lay.guest_frames, {})
    grants = GrantTable(mem, base_gpa=lay.grant_frame_gpa(0), max_frames=MAX_GRANT_FRAMES, ram_frames=RAM_PAGES,
                        types=mmu)
    grants.setup(2)
    mmu.get_type(L1, 1, [])          # an L1 table in use (as if pinned)
    ns = SimpleNamespace(mem=mem, lay=lay, grants=grants, mmu=mmu)
    ns.vcpu = FakeVcpu(ns)
    yield ns
    mem.close()


def grant(t, ref: int, flags: int, frame: int, domid: int = DOMID) -> None:
    if t.grants.version == 1:
        t.mem.write(t.lay.grant_frame_gpa(0) + ref * 8, struct.pack("<HHI", flags, domid, frame))
    else:
        t.mem.write(t.lay.grant_frame_gpa(0) + ref * 16, struct.pack("<HH4xQ", flags, domid, frame))


def pte_addr(i: int) -> int:
    return (L1 << 12) + 8 * i


def do_map(t, ref: int, flags: int, host_addr: int = 0, dom: int = DOMID) -> tuple[int, int, int]:
    t.mem.write(UOP, MAP.pack(host_addr, flags, ref, dom, 99, 0, 0))
    assert grant_table_op(t.vcpu, GNTTABOP_map_grant_ref, UOP, 1) == 0
    _h, _f, _r, _d, status, handle, bus = MAP.unpack(t.mem.read(UOP, MAP.size))
    return status, handle, bus


def do_unmap(t, handle: int, host_addr: int = 0, bus: int = 0) -> int:
    t.mem.write(UOP, UNMAP.pack(host_addr, bus, handle, 99))
    assert grant_table_op(t.vcpu, GNTTABOP_unmap_grant_ref, UOP, 1) == 0
    return UNMAP.unpack(t.mem.read(UOP, UNMAP.size))[3]


def flags_of(t, ref: int) -> int:
    return t.grants.status_flags(ref)


HOST_PTE = GNTMAP_host_map | GNTMAP_contains_pte


def test_device_map_returns_the_bus_address_and_sets_the_entry_flags(t) -> None:
    grant(t, 8, 1, DATA)
    status, handle, bus = do_map(t, 8, GNTMAP_device_map)
    assert (status, bus) == (GNTST_okay, DATA << 12)
    assert flags_of(t, 8) == GTF_reading | GTF_writing
    assert t.mmu.type[DATA] == WRITABLE and t.mmu.held[DATA] == 1
    assert do_unmap(t, handle, bus=DATA << 12) == GNTST_okay
    assert flags_of(t, 8) == 0 and DATA not in t.mmu.count
    assert do_unmap(t, handle, bus=DATA << 12) == GNTST_bad_handle


def test_host_map_writes_the_l1_entry_and_unmap_clears_it(t) -> None:
    grant(t, 8, 1, DATA)
    t.mem.write(DATA << 12, b"granted!")
    status, handle, _ = do_map(t, 8, HOST_PTE, pte_addr(5))
    assert status == GNTST_okay
    pte = t.mmu.q[pte_addr(5) >> 3]
    assert pte & 0x000F_FFFF_FFFF_F000 == DATA << 12
    assert pte & 0x67 == 0x67 and pte >> 63 == 1        # P RW US A D, NX
    assert all(gpa != pte_addr(5) for gpa, _ in t.vcpu.writes)   # was not present: no writer entry
    assert t.mmu.count[DATA] == 2                          # the mapping's hold and the entry's reference
    with pytest.raises(XenError):
        t.mmu.get_type(DATA, 1, [])                        # mapped writable: never a page table
    assert do_unmap(t, handle, pte_addr(4)) == GNTST_general_error   # not the entry that maps it
    assert do_unmap(t, handle, pte_addr(5)) == GNTST_okay
    assert t.mmu.q[pte_addr(5) >> 3] == 0 and DATA not in t.mmu.count
    assert (pte_addr(5), 0) in t.vcpu.writes             # a present entry went: KVM must drop its shadow
    assert t.vcpu.flushes == 2 and flags_of(t, 8) == 0
    t.mem.zero(DATA << 12, 4096)
    t.mmu.get_type(DATA, 1, [])                            # now it may become one


def test_read_only_maps(t) -> None:
    grant(t, 9, 1 | 4, DATA)                               # GTF_readonly
    assert do_map(t, 9, GNTMAP_device_map)[0] == GNTST_general_error   # Xen: a r/o entry write-pinned
    assert flags_of(t, 9) == 0
    status, handle, _ = do_map(t, 9, HOST_PTE | GNTMAP_readonly, pte_addr(1))
    assert status == GNTST_okay and flags_of(t, 9) == GTF_reading
    assert t.mmu.q[pte_addr(1) >> 3] & 2 == 0 and DATA not in t.mmu.count
    assert do_unmap(t, handle, pte_addr(1)) == GNTST_okay and flags_of(t, 9) == 0


def test_a_page_table_maps_only_read_only(t) -> None:
    grant(t, 8, 1, L1)
    assert do_map(t, 8, GNTMAP_device_map)[0] == GNTST_general_error
    assert flags_of(t, 8) == 0
    status, handle, _ = do_map(t, 8, GNTMAP_device_map | GNTMAP_readonly)
    assert status == GNTST_okay
    assert do_unmap(t, handle, bus=L1 << 12) == GNTST_okay


@pytest.mark.parametrize("setup, ref, flags, host, dom, want", [
    (None, 8, GNTMAP_readonly, 0, DOMID, GNTST_bad_gntref),              # neither host nor device
    (None, 8, GNTMAP_readonly, 0, 7, GNTST_bad_gntref),                  # flags are checked first
    ((1, DATA, DOMID), 8, GNTMAP_device_map, 0, SELF, GNTST_bad_domain),  # map finds domains by number only
    ((1, DATA, DOMID), 8, GNTMAP_device_map, 0, 0, GNTST_bad_domain),
    ((1, DATA, DOMID), 1024, GNTMAP_device_map, 0, DOMID, GNTST_bad_gntref),  # beyond 2 frames
    ((1, DATA, 0), 8, GNTMAP_device_map, 0, DOMID, GNTST_general_error),      # granted to domain 0
    ((0, DATA, DOMID), 8, GNTMAP_device_map, 0, DOMID, GNTST_general_error),  # invalid entry
    ((1 | 256, DATA, DOMID), 8, GNTMAP_device_map, 0, DOMID, GNTST_general_error),  # GTF_sub_page
    ((1, RAM_PAGES, DOMID), 8, GNTMAP_device_map, 0, DOMID, GNTST_bad_page),
    ((1, DATA, DOMID), 8, HOST_PTE, pte_addr(1) + 4, DOMID, GNTST_general_error),  # misaligned
    ((1, DATA, DOMID), 8, HOST_PTE, (DATA + 1) << 12, DOMID, GNTST_general_error),  # not an L1
    ((1, DATA, DOMID), 8, GNTMAP_host_map, 0x7000_0000, DOMID, GNTST_general_error),  # no L1 maps it
])
def test_map_status_codes(t, setup, ref, flags, host, dom, want) -> None:
    if setup:
        grant(t, 8, setup[0], setup[1], setup[2])
    assert do_map(t, ref, flags, host, dom)[0] == want
    assert t.grants.mappings() == 0 and flags_of(t, 8) == 0
    assert DATA not in t.mmu.count


def test_pins_share_the_entry_and_flags_follow_the_last(t) -> None:
    grant(t, 8, 1, DATA)
    _, ro, _ = do_map(t, 8, GNTMAP_device_map | GNTMAP_readonly)
    _, rw, _ = do_map(t, 8, GNTMAP_device_map)
    assert ro != rw and flags_of(t, 8) == GTF_reading | GTF_writing
    assert do_unmap(t, rw, bus=DATA << 12) == GNTST_okay
    assert flags_of(t, 8) == GTF_reading
    assert do_unmap(t, ro, bus=123 << 12) == GNTST_general_error  # the bus address must match
    assert do_unmap(t, ro) == GNTST_okay and t.grants.mappings() == 1   # nothing named: nothing done
    assert do_unmap(t, ro, bus=DATA << 12) == GNTST_okay
    assert t.grants.mappings() == 0 and flags_of(t, 8) == 0


def test_batches_are_bounded(t) -> None:
    assert grant_table_op(t.vcpu, GNTTABOP_map_grant_ref, UOP, MAX_OPS + 1) == -Errno.EINVAL
    assert grant_table_op(t.vcpu, GNTTABOP_map_grant_ref, UOP, 0xFFFF_FFFF) == -Errno.EINVAL
    assert grant_table_op(t.vcpu, GNTTABOP_map_grant_ref | 1 << 12, UOP, 1) == -Errno.EINVAL
    assert grant_table_op(t.vcpu, 4, UOP, 1) == -Errno.ENOSYS          # transfer


def do_copy(t, src, dst, length: int, flags: int) -> int:
    t.mem.write(UOP, COPY.pack(src[0], src[1], src[2], dst[0], dst[1], dst[2], length, flags, 99))
    assert grant_table_op(t.vcpu, GNTTABOP_copy, UOP, 1) == 0
    return COPY.unpack(t.mem.read(UOP, COPY.size))[-1]


def test_copy_between_grants_and_frames(t) -> None:
    grant(t, 8, 1 | 4, DATA)             # read-only source
    grant(t, 9, 1, DATA + 1)
    t.mem.write((DATA << 12) + 100, b"hello grant")
    assert do_copy(t, (8, DOMID, 100), (9, SELF, 200), 11, GNTCOPY_source_gref | GNTCOPY_dest_gref) == GNTST_okay
    assert t.mem.read(((DATA + 1) << 12) + 200, 11) == b"hello grant"
    assert do_copy(t, (9, DOMID, 200), (DATA + 2, SELF, 0), 11, GNTCOPY_source_gref) == GNTST_okay
    assert t.mem.read((DATA + 2) << 12, 11) == b"hello grant"
    assert flags_of(t, 8) == flags_of(t, 9) == 0 and not t.mmu.count.get(DATA + 2)


@pytest.mark.parametrize("src, dst, length, flags, want", [
    ((DATA, SELF, 0), (DATA + 1, SELF, 4000), 100, 0, GNTST_bad_copy_arg),
    ((DATA, SELF, 4095), (DATA + 1, SELF, 0), 2, 0, GNTST_bad_copy_arg),
    ((DATA, DOMID, 0), (DATA + 1, SELF, 0), 8, 0, GNTST_permission_denied),   # a frame only with DOMID_SELF
    ((8, 0, 0), (DATA + 1, SELF, 0), 8, GNTCOPY_source_gref, GNTST_bad_domain),
    ((8, SELF, 0), (9, 5, 0), 8, GNTCOPY_source_gref | GNTCOPY_dest_gref, GNTST_bad_domain),
    ((8, SELF, 0), (8, SELF, 0), 8, GNTCOPY_source_gref | GNTCOPY_dest_gref, GNTST_general_error),  # r/o dest
    ((RAM_PAGES, SELF, 0), (DATA + 1, SELF, 0), 8, 0, GNTST_bad_page),
    ((DATA, SELF, 0), (L1, SELF, 0), 8, 0, GNTST_general_error),             # a page table as destination
    ((1024, SELF, 0), (DATA + 1, SELF, 0), 8, GNTCOPY_source_gref, GNTST_bad_gntref),
])
def test_copy_status_codes(t, src, dst, length, flags, want) -> None:
    grant(t, 8, 1 | 4, DATA)
    grant(t, 9, 1, DATA + 1)
    before = t.mem.read((DATA + 1) << 12, 4096)
    assert do_copy(t, src, dst, length, flags) == want
    assert t.mem.read((DATA + 1) << 12, 4096) == before
    assert flags_of(t, 8) == flags_of(t, 9) == 0 and not t.mmu.count.get(DATA + 1)


def test_swap(t) -> None:
    grant(t, 8, 1, DATA)
    grant(t, 9, 1 | 4, DATA + 1)
    t.mem.write(UOP, struct.pack("<IIh2x", 8, 9, 99))
    assert grant_table_op(t.vcpu, GNTTABOP_swap_grant_ref, UOP, 1) == 0
    assert struct.unpack_from("<h", t.mem.read(UOP + 8, 2))[0] == GNTST_okay
    assert t.grants.lookup(8, grantee=DOMID, writable=False) == (DATA + 1) << 12
    assert t.grants.lookup(9, grantee=DOMID, writable=True) == DATA << 12
    status, handle, _ = do_map(t, 9, GNTMAP_device_map)
    assert status == GNTST_okay
    assert t.grants.swap(8, 9) == GNTST_eagain and t.grants.swap(8, 1024) == GNTST_bad_gntref
    assert t.grants.swap(9, 9) == GNTST_okay


def set_version(t, v: int) -> tuple[int, int]:
    t.mem.write(UOP, struct.pack("<I", v))
    rc = grant_table_op(t.vcpu, GNTTABOP_set_version, UOP, 1)
    return rc, struct.unpack("<I", t.mem.read(UOP, 4))[0]


def test_version_2_entries_status_frames_and_back(t) -> None:
    grant(t, 1, 1, DATA)                                  # a reserved entry: carried over
    grant(t, 8, 1, DATA + 1)                              # any other: cleared
    _, handle, _ = do_map(t, 8, GNTMAP_device_map)
    assert set_version(t, 2) == (-Errno.EBUSY, 1)
    assert do_unmap(t, handle, bus=(DATA + 1) << 12) == GNTST_okay
    assert set_version(t, 3) == (-Errno.EINVAL, 1)
    assert set_version(t, 2) == (0, 2)
    g = t.grants
    assert g.nr_refs == 2 * 256 and g.nr_status_frames == 1
    assert g.lookup(1, grantee=DOMID, writable=True) == DATA << 12
    with pytest.raises(Exception, match="does not grant"):
        g.lookup(8, grantee=DOMID, writable=False)
    t.mem.write(UOP + 8, struct.pack("<hxxQ", 0, 0))
    t.mem.write(UOP, struct.pack("<IHhQ", 1, SELF, 99, 0x3000))
    assert grant_table_op(t.vcpu, GNTTABOP_get_status_frames, UOP, 1) == 0
    assert struct.unpack_from("<h", t.mem.read(UOP + 6, 2))[0] == GNTST_okay
    status_gfn = struct.unpack("<Q", t.mem.read(0x3000, 8))[0]
    assert status_gfn == (t.lay.grant_frame_gpa(MAX_GRANT_FRAMES) >> 12)
    t.mem.write(UOP, struct.pack("<IHhQ", 2, SELF, 99, 0x3000))
    grant_table_op(t.vcpu, GNTTABOP_get_status_frames, UOP, 1)
    assert struct.unpack_from("<h", t.mem.read(UOP + 6, 2))[0] == GNTST_general_error
    t.mem.write(UOP, struct.pack("<HHI", SELF, 0, 0))
    assert grant_table_op(t.vcpu, GNTTABOP_get_version, UOP, 1) == 0
    assert struct.unpack("<I", t.mem.read(UOP + 4, 4))[0] == 2
    t.mem.write(UOP, struct.pack("<HHI", 0, 0, 0))
    assert grant_table_op(t.vcpu, GNTTABOP_get_version, UOP, 1) == -Errno.ESRCH

    grant(t, 300, 1, DATA + 2)                            # ref 300 is in the second v2 frame
    status, handle, _ = do_map(t, 300, GNTMAP_device_map)
    assert status == GNTST_okay
    status_gpa = (status_gfn << 12) + 600
    assert struct.unpack("<H", t.mem.read(status_gpa, 2))[0] == GTF_reading | GTF_writing
    assert t.mem.read(t.lay.grant_frame_gpa(0) + 300 * 16, 2) == b"\x01\x00"   # flags untouched in v2
    assert do_unmap(t, handle, bus=(DATA + 2) << 12) == GNTST_okay
    assert struct.unpack("<H", t.mem.read(status_gpa, 2))[0] == 0

    # a sub-page grant: copies within its window only; never mapped
    t.mem.write(t.lay.grant_frame_gpa(0) + 9 * 16, struct.pack("<HHHHQ", 1 | 256, DOMID, 100, 50, DATA + 3))
    assert do_map(t, 9, GNTMAP_device_map)[0] == GNTST_general_error
    full = GNTCOPY_source_gref
    assert do_copy(t, (9, SELF, 100), (DATA, SELF, 0), 50, full) == GNTST_okay
    assert do_copy(t, (9, SELF, 99), (DATA, SELF, 0), 50, full) == GNTST_general_error
    assert do_copy(t, (9, SELF, 120), (DATA, SELF, 0), 31, full) == GNTST_general_error
    # a transitive grant leads to no other domain here
    t.mem.write(t.lay.grant_frame_gpa(0) + 10 * 16, struct.pack("<HHHHI4x", 3, DOMID, 0, 0, 1))
    assert do_copy(t, (10, SELF, 0), (DATA, SELF, 0), 8, full) == GNTST_general_error
    assert flags_of(t, 10) == 0

    t.mem.write(t.lay.grant_frame_gpa(0) + 2 * 16, struct.pack("<HH4xQ", 1, DOMID, 1 << 33))
    assert set_version(t, 1) == (-Errno.ERANGE, 2)
    t.mem.write(t.lay.grant_frame_gpa(0) + 2 * 16, bytes(16))
    assert set_version(t, 1) == (0, 1)
    assert g.nr_refs == 2 * 512 and g.nr_status_frames == 0
    assert g.lookup(1, grantee=DOMID, writable=True) == DATA << 12
    with pytest.raises(Exception, match="does not grant"):
        g.lookup(300, grantee=DOMID, writable=False)


def test_mappings_are_saved_and_take_their_references_again(t) -> None:
    grant(t, 8, 1, DATA)
    grant(t, 9, 1 | 4, DATA + 1)
    _, h1, _ = do_map(t, 8, HOST_PTE, pte_addr(3))
    _, h2, _ = do_map(t, 9, GNTMAP_device_map | GNTMAP_readonly)
    assert set_version(t, 2) == (-Errno.EBUSY, 1)
    state = t.grants.save()
    assert state.maptrack == ((h1, 8, HOST_PTE, DATA), (h2, 9, GNTMAP_device_map | GNTMAP_readonly, DATA + 1))
    mmu_state = t.mmu.save()
    mmu = PvMmu.restore(mmu_state, mem=t.mem, ram_pages=RAM_PAGES, guest_frames=t.lay.guest_frames,
                        hv_l4_entries={})
    again = GrantTable.restore(decode(GrantTableState, encode(state)), mem=t.mem,
                               base_gpa=t.lay.grant_frame_gpa(0), max_frames=MAX_GRANT_FRAMES,
                               ram_frames=RAM_PAGES, types=mmu)
    assert again.save() == state
    assert mmu.count[DATA] == 2 and mmu.held[DATA] == 1   # the entry's reference and the mapping's hold
    t.grants, t.mmu = again, mmu
    t.vcpu.domain.grants = again
    assert do_unmap(t, h1, pte_addr(3)) == GNTST_okay
    assert DATA not in mmu.count and flags_of(t, 8) == 0
    assert do_unmap(t, h2, bus=(DATA + 1) << 12) == GNTST_okay
    _, h3, _ = do_map(t, 8, GNTMAP_device_map)
    assert h3 in (h1, h2)                                   # handles are reused


def test_an_old_record_loads_and_a_bad_one_is_refused(t) -> None:
    old = decode(GrantTableState, {"nr_frames": 2, "version": 1})
    assert old == GrantTableState(nr_frames=2)
    kw = dict(mem=t.mem, base_gpa=t.lay.grant_frame_gpa(0), max_frames=MAX_GRANT_FRAMES, ram_frames=RAM_PAGES,
              types=t.mmu)
    assert GrantTable.restore(old, **kw).version == 1
    with pytest.raises(StateError):
        GrantTable.restore(GrantTableState(nr_frames=2, gnttab_version=3), **kw)
    with pytest.raises(StateError):
        GrantTable.restore(GrantTableState(nr_frames=2, maptrack=((0, 9999, GNTMAP_device_map, DATA),)), **kw)
    with pytest.raises(StateError):    # a writable mapping of a page table
        GrantTable.restore(GrantTableState(nr_frames=2, maptrack=((0, 8, GNTMAP_device_map, L1),)), **kw)


def test_random_ops_keep_the_books(t) -> None:
    """Any sequence of guest ops: never an exception, and the type references the
    MMU holds, the pins and the entry flags always agree with the live mappings."""
    import random
    rng = random.Random(11)
    kinds = (GNTMAP_device_map, GNTMAP_host_map | GNTMAP_contains_pte, GNTMAP_readonly, 0, 1 << 3)
    def fill() -> None:
        for ref in range(8, 16):
            grant(t, ref, rng.choice((1, 1, 1 | 4, 0, 1 | 256)), DATA + ref % 3, rng.choice((DOMID, DOMID, 0)))

    fill()
    handles: set[int] = set()
    done = {"map": 0, "unmap": 0, "copy": 0, "version": 0}
    for _ in range(3000):
        what = rng.random()
        if what < 0.45:
            flags = rng.choice(kinds) | rng.choice(kinds)
            host = pte_addr(rng.randrange(512)) + rng.choice((0, 0, 0, 4))
            status, handle, _ = do_map(t, rng.randrange(6, 18), flags, host, rng.choice((DOMID, DOMID, SELF)))
            if status == GNTST_okay:
                handles.add(handle)
                done["map"] += 1
        elif what < 0.85 and handles:
            handle = rng.choice(sorted(handles) + [999])
            host = pte_addr(rng.randrange(512)) if rng.random() < 0.3 else 0
            m = t.grants._maptrack.get(handle)
            if m is not None and rng.random() < 0.7:
                host = next((a for a in range(L1 << 12, (L1 + 1) << 12, 8)
                             if t.mmu.q[a >> 3] >> 12 & 0xFFFFFFFFFF == m.frame), host)
            bus = rng.choice((0, (m.frame << 12) if m else 0, 5 << 12))
            done["unmap"] += do_unmap(t, handle, host, bus) == GNTST_okay
            handles &= set(t.grants._maptrack)
        elif what < 0.9:
            src = rng.randrange(6, 18)
            done["copy"] += do_copy(t, (src, SELF, rng.randrange(4096)),
                                    (rng.randrange(6, 18), DOMID, rng.randrange(4096)),
                                    rng.randrange(200), GNTCOPY_source_gref | GNTCOPY_dest_gref) == GNTST_okay
        elif what < 0.98:
            t.mem.write(UOP, struct.pack("<IIh2x", rng.randrange(6, 18), rng.randrange(6, 18), 99))
            grant_table_op(t.vcpu, GNTTABOP_swap_grant_ref, UOP, 1)
        else:
            switched = set_version(t, 3 - t.grants.version)[0] == 0
            if switched:
                fill()      # the switch cleared every entry
            done["version"] += switched
        held: dict[int, int] = {}
        pins: dict[int, int] = {}
        for m in t.grants._maptrack.values():
            writable_kinds = 0 if m.flags & GNTMAP_readonly else bin(m.flags & 3).count("1")
            if writable_kinds:
                held[m.frame] = held.get(m.frame, 0) + writable_kinds
            pins[m.ref] = pins.get(m.ref, 0) + 1
        assert t.mmu.held == held
        assert set(t.grants._active) == set(pins)
        entries = t.mmu.q[L1 * 512:(L1 + 1) * 512].tolist()
        for frame in (DATA, DATA + 1, DATA + 2):     # the entries' references and the mappings' holds
            rw = sum(1 for e in entries if e & 3 == 3 and (e >> 12) & 0xFFFFFFFFFF == frame)
            assert t.mmu.count.get(frame, 0) == held.get(frame, 0) + rw
        for ref in range(0, 16):
            if ref not in pins:
                assert flags_of(t, ref) == 0, ref
            else:
                assert flags_of(t, ref) & GTF_reading
    assert min(done.values()) >= 10, done     # every kind of op really happened


def test_pin_counters_and_maptrack_have_Xens_limits(t, monkeypatch) -> None:
    grant(t, 8, 1, DATA)
    handles = [do_map(t, 8, GNTMAP_device_map | GNTMAP_readonly) for _ in range(128)]
    assert all(status == GNTST_okay for status, _, _ in handles)
    assert do_map(t, 8, GNTMAP_device_map | GNTMAP_readonly)[0] == GNTST_general_error  # devr at bit 7
    assert do_map(t, 8, GNTMAP_device_map)[0] == GNTST_okay                            # devw is its own counter
    monkeypatch.setattr("hospes.pv.grant.MAX_MAPTRACK", 129)
    assert do_map(t, 8, GNTMAP_device_map)[0] == GNTST_no_space


def test_v2_transitive_entries_are_never_mapped_and_empty_copies_always_succeed(t) -> None:
    assert set_version(t, 2) == (0, 2)
    t.mem.write(t.lay.grant_frame_gpa(0) + 10 * 16, struct.pack("<HHHHI4x", 3, DOMID, DOMID, 0, DATA))
    assert do_map(t, 10, GNTMAP_device_map | GNTMAP_readonly)[0] == GNTST_general_error
    assert flags_of(t, 10) == 0
    assert do_copy(t, (10, 7, 0), (99, 0, 4095), 0, GNTCOPY_source_gref) == GNTST_okay   # len 0: nothing checked
