"""A domain's grant table (v1): the frames it shares, and the one checked lookup.

A PV frontend shares a page with a backend by writing a *grant entry* into its
grant table, frames the hypervisor owns and hands out with
``GNTTABOP_setup_table`` (grant_table.h, pv-abi.md §11.2). A v1 entry is eight
bytes, 512 to a frame::

    u16 flags @0   bits 0-1 type (0 invalid, 1 permit_access, 2 accept_transfer,
                   3 transitive), bit 2 GTF_readonly, 3 GTF_reading, 4 GTF_writing
    u16 domid @2   the domain allowed to use the frame
    u32 frame @4   the frame (for a PV guest of Hospes: its own pfn)

Why the entry is read as one 64-bit word
    The guest fills an entry in the order domid, frame, write barrier, flags,
    and revokes it by compare-and-exchange on the flags. A backend that read
    the three fields one by one could pair the flags of a new grant with the
    frame of an old one. Entries are 8-byte aligned, so one aligned 64-bit load
    (:meth:`GuestMemory.read_u64`'s word view) sees the entry as it was at one
    instant: every field of a lookup comes from the same grant.

Why the checks
    Everything in an entry is guest-written. A backend may only touch the frame
    if the entry permits access, names the backend's domain, allows writing
    when the backend writes, and names a frame of the guest's RAM (the
    hypervisor frames above it -- shared_info, the grant frames themselves --
    are never granted). A reference beyond the frames the guest set up is not
    an entry at all. :meth:`GrantTable.lookup` applies all of this and is the
    only way the device backends turn a reference into memory.

Hospes backends copy synchronously and never keep a mapping, so they do not
set GTF_reading/GTF_writing; see :meth:`GrantTable.lookup`.

Why a backend holds a type reference while it writes
    Xen's writable grant map takes a writable type reference on the frame
    (PGT_writable_page) for as long as the mapping lasts, so a frame a backend
    writes can never be a page table or descriptor page at the same time. A
    backend here takes the same reference through :meth:`GrantTable.hold_writable`
    (the domain's :class:`~hospes.pv.mmu.PvMmu` keeps it) before it writes a
    granted frame, and drops it with :meth:`GrantTable.release_writable`
    afterwards; a frame the guest has made a page table or GDT is refused, and
    the request fails.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from hospes.errors import HospesError
from hospes.machine.memory import PAGE_SHIFT, PAGE_SIZE, GuestMemory
from hospes.pv.errors import XenError
from hospes.state import StateError, check_version

if TYPE_CHECKING:
    from hospes.pv.mmu import PvMmu

GTF_type_mask = 3
GTF_invalid = 0
GTF_permit_access = 1
GTF_readonly = 1 << 2
GTF_reading = 1 << 3
GTF_writing = 1 << 4

ENTRY_SIZE = 8
ENTRIES_PER_FRAME = PAGE_SIZE // ENTRY_SIZE


class GrantError(HospesError):
    """A grant reference does not give the asked-for access (the request using it fails)."""


@dataclass(frozen=True)
class GrantTableState:
    """Saved grant table: how many frames the guest set up. The entries are
    guest-visible memory and travel with it."""

    VERSION: ClassVar[int] = 1
    nr_frames: int
    version: int = VERSION


class GrantTable:
    """The grant frames of one domain, laid out back to back from ``base_gpa``.

    ``max_frames`` frames are reserved there; the guest uses the first
    :attr:`nr_frames` of them (grown by :meth:`setup`). ``ram_frames`` is the
    number of guest RAM frames: the only frames a grant may name. ``types``
    is the domain's MMU, which keeps the writable references backends take.
    """

    __slots__ = ("_mem", "_base", "_word0", "_max", "_ram", "_nr", "_nr_refs", "types")

    def __init__(self, mem: GuestMemory, *, base_gpa: int, max_frames: int, ram_frames: int,
                 types: PvMmu) -> None:
        if base_gpa % PAGE_SIZE or max_frames < 1 or ram_frames < 1:
            raise GrantError(
                f"A grant table needs page-aligned frames (got {base_gpa:#x}, {max_frames} frames) "
                "and guest RAM to grant."
            )
        mem.check(base_gpa, max_frames * PAGE_SIZE)
        self._mem = mem
        self._base = base_gpa
        self._word0 = base_gpa // ENTRY_SIZE   # index of entry 0 in mem.q
        self._max = max_frames
        self._ram = ram_frames
        self._nr = 0
        self._nr_refs = 0
        self.types = types

    @property
    def nr_frames(self) -> int:
        """Frames the guest has set up (GNTTABOP_query_size's nr_frames)."""
        return self._nr

    @property
    def max_frames(self) -> int:
        return self._max

    @property
    def ram_frames(self) -> int:
        return self._ram

    def frame_gfn(self, index: int) -> int:
        """The guest frame number of grant frame ``index`` (what setup_table returns)."""
        if not 0 <= index < self._max:
            raise GrantError(f"Grant frame {index} is beyond the table's {self._max} frames.")
        return (self._base >> PAGE_SHIFT) + index

    def setup(self, nr_frames: int) -> tuple[int, ...]:
        """GNTTABOP_setup_table: grow the table to at least ``nr_frames``; the
        frame numbers of its first ``nr_frames`` frames. The table never shrinks
        (a guest asks again with more frames when it runs out of references)."""
        if not 0 <= nr_frames <= self._max:
            raise GrantError(f"{nr_frames} grant frames asked for; the table has at most {self._max}.")
        if nr_frames > self._nr:
            self._nr = nr_frames
            self._nr_refs = nr_frames * ENTRIES_PER_FRAME
        first = self._base >> PAGE_SHIFT
        return tuple(range(first, first + nr_frames))

    def lookup(self, ref: int, *, grantee: int, writable: bool) -> int:
        """The guest-physical address of the page grant ``ref`` gives domain
        ``grantee``; GrantError unless the entry permits access to exactly that
        domain, is writable when ``writable``, lies within the frames set up and
        names a frame of the guest's RAM.

        The caller uses the page at once and does not keep the address: a
        guest may revoke the grant afterwards (it sees no GTF_reading/writing
        from us, so it may, and Linux only does so once the request that named
        the grant has been answered).
        """
        if not 0 <= ref < self._nr_refs:
            raise GrantError(f"grant reference {ref} is outside the grant table ({self._nr} frames)")
        entry = self._mem.q[self._word0 + ref]
        flags = entry & 0xFFFF
        if flags & GTF_type_mask != GTF_permit_access or (entry >> 16) & 0xFFFF != grantee:
            raise GrantError(f"grant reference {ref} does not grant access to domain {grantee}")
        if writable and flags & GTF_readonly:
            raise GrantError(f"grant reference {ref} is read-only")
        frame = entry >> 32
        if frame >= self._ram:
            raise GrantError(f"grant reference {ref} names frame {frame:#x} outside the guest's RAM")
        return frame << PAGE_SHIFT

    def hold_writable(self, frames: Iterable[int]) -> None:
        """Take a writable type reference on each of ``frames`` (all or none) before
        writing them; GrantError if one is a page table, descriptor page or not RAM."""
        try:
            self.types.hold_writable(frames)
        except XenError as e:
            raise GrantError(f"a granted page cannot be written: {e}") from None

    def release_writable(self, frames: Iterable[int]) -> None:
        """Drop the references :meth:`hold_writable` took, once the writes are done."""
        self.types.release_writable(frames)

    # --- saved state -----------------------------------------------------------------

    def save(self) -> GrantTableState:
        return GrantTableState(nr_frames=self._nr)

    @classmethod
    def restore(cls, state: GrantTableState, *, mem: GuestMemory, base_gpa: int, max_frames: int,
                ram_frames: int, types: PvMmu) -> GrantTable:
        """A table over ``mem`` with the saved number of frames set up."""
        check_version(state, "grant table")
        table = cls(mem, base_gpa=base_gpa, max_frames=max_frames, ram_frames=ram_frames, types=types)
        if not 0 <= state.nr_frames <= max_frames:
            raise StateError(
                f"The saved grant table has {state.nr_frames} frames; this domain allows {max_frames}."
            )
        table.setup(state.nr_frames)
        return table


__all__ = [
    "ENTRIES_PER_FRAME", "GTF_permit_access", "GTF_readonly", "GrantError", "GrantTable", "GrantTableState",
]
