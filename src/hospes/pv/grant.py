"""A domain's grant table: the frames it shares, its mappings, and the one checked lookup.

A PV frontend shares a page by writing a *grant entry* into its grant table,
frames the hypervisor owns and hands out with ``GNTTABOP_setup_table``
(grant_table.h, pv-abi.md §11.2). Two layouts exist, chosen with
``GNTTABOP_set_version``:

v1, eight bytes, 512 to a frame::

    u16 flags @0   bits 0-1 type (0 invalid, 1 permit_access, 2 accept_transfer,
                   3 transitive), bit 2 GTF_readonly, 3 GTF_reading, 4 GTF_writing,
                   8 GTF_sub_page
    u16 domid @2   the domain allowed to use the frame
    u32 frame @4   the frame (for a PV guest of Hospes: its own pfn)

v2, sixteen bytes, 256 to a frame: the same flags and domid, then a union at
offset 8 (``full_page``: u64 frame; ``sub_page``: u16 offset, u16 length at 4,
u64 frame at 8; ``transitive``: u16 domid at 4, u32 gref at 8). GTF_reading
and GTF_writing move out of the entry into a separate array of u16 *status*
entries, 2048 to a frame, in status frames the guest finds with
``GNTTABOP_get_status_frames``. Here the status frames follow the grant
frames in the hypervisor-owned area (one per eight grant frames).

Why an entry is read as one 64-bit word
    The guest fills an entry in the order domid, frame, write barrier, flags,
    and revokes it by compare-and-exchange on the flags. A v1 entry is one
    aligned quadword, so one load (:attr:`GuestMemory.q`) sees flags, domid
    and frame of the same grant. A v2 entry's frame is a second quadword; the
    guest writes it before the flags, so reading the flags first and the
    frame after is what Xen does too.

Why the checks
    Everything in an entry is guest-written. A backend may only touch the frame
    if the entry permits access (full pages only), names the backend's domain,
    allows writing when the backend writes, and names a frame of the guest's
    RAM (the hypervisor frames above it -- shared_info, the grant frames
    themselves -- are never granted). A reference beyond the frames the guest
    set up is not an entry at all. :meth:`GrantTable.lookup` applies all of
    this and is the only way the device backends turn a reference into memory.
    Hospes backends copy synchronously and never keep a mapping, so they do not
    set GTF_reading/GTF_writing.

Mappings (GNTTABOP_map_grant_ref and unmap_grant_ref)
    A domain can only map grants of its own: every Hospes domain is a process
    of its own with its own memory, so a grant of another domain has no frame
    here, and naming one is Xen's answer for a domain it cannot find
    (GNTST_bad_domain). A mapping follows Xen's grant_table.c: the entry's
    type and domain are checked and GTF_reading (and GTF_writing for a
    writable mapping) set with a compare-and-exchange while the first mapping
    pins the entry; an *active* entry counts the pins (host/device,
    read/write), and a *maptrack* handle names each mapping until it is
    unmapped, when the flags are cleared again as the last pin of each kind
    goes. The status codes, and the order in which the checks produce them,
    are Xen's.

Why a mapping holds a type reference
    Xen's writable grant map takes a writable type reference on the frame
    (PGT_writable_page) for as long as the mapping lasts, so a mapped frame can
    never be a page table or descriptor page at the same time, and a page
    table cannot be mapped writable. Hospes takes the same reference through
    :meth:`PvMmu.hold_writable` (one for a writable host mapping, one for a
    writable device mapping), and the backends take one through
    :meth:`GrantTable.hold_writable` while they write. A host mapping's L1
    entry itself is written through :meth:`PvMmu.write_grant_l1e`, which counts
    it like any other entry, so the guest may later overwrite it with
    mmu_update without unbalancing the counts.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from hospes.errors import HospesError
from hospes.machine import atomics
from hospes.machine.memory import PAGE_SHIFT, PAGE_SIZE, GuestMemory
from hospes.pv.abi import PTE_A, PTE_ADDR_MASK, PTE_D, PTE_NX, PTE_P, PTE_RW, PTE_US
from hospes.pv.errors import Errno, XenError
from hospes.pv.guestvirt import canonical
from hospes.state import StateError, check_version

if TYPE_CHECKING:
    from hospes.pv.mmu import PvMmu, Writes

GTF_type_mask = 3
GTF_invalid = 0
GTF_permit_access = 1
GTF_accept_transfer = 2
GTF_transitive = 3
GTF_readonly = 1 << 2
GTF_reading = 1 << 3
GTF_writing = 1 << 4
GTF_sub_page = 1 << 8

GNTMAP_device_map = 1 << 0
GNTMAP_host_map = 1 << 1
GNTMAP_readonly = 1 << 2
GNTMAP_application_map = 1 << 3
GNTMAP_contains_pte = 1 << 4
GNTMAP_guest_avail0 = 16            # bit of the first of three PTE bits a mapper may choose

GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3
GNTST_bad_handle = -4
GNTST_bad_virt_addr = -5
GNTST_bad_dev_addr = -6
GNTST_no_device_space = -7
GNTST_permission_denied = -8
GNTST_bad_page = -9
GNTST_bad_copy_arg = -10
GNTST_address_too_big = -11
GNTST_eagain = -12
GNTST_no_space = -13

ENTRY_SIZE = 8                          # v1
ENTRIES_PER_FRAME = PAGE_SIZE // ENTRY_SIZE
ENTRY_SIZE_V2 = 16
ENTRIES_PER_FRAME_V2 = PAGE_SIZE // ENTRY_SIZE_V2
STATUS_PER_FRAME = PAGE_SIZE // 2       # u16 status entries of v2
NR_RESERVED_ENTRIES = 8                 # the toolstack's entries, kept across a version switch
INITIAL_NR_GRANT_FRAMES = 1             # what a domain has before any setup_table (Xen's x86 value)
MAX_MAPTRACK = 1024 * (PAGE_SIZE // 16)  # Xen's default max_maptrack_frames of 16-byte entries
PIN_LIMIT = 0x80                         # Xen keeps each 8-bit pin counter below bit 7

#: The flags a backend's lookup wants to be exactly GTF_permit_access: a whole page.
_WHOLE_PAGE_MASK = GTF_type_mask | GTF_sub_page

#: PTE bits a mapper may set through GNTMAP_guest_avail0..2 (bits 9-11).
_PTE_AVAIL = 0xE00


def status_frames_for(grant_frames: int, version: int) -> int:
    """Status frames a v2 table of ``grant_frames`` frames has (none for v1)."""
    if version == 1:
        return 0
    return (grant_frames * ENTRIES_PER_FRAME_V2 + STATUS_PER_FRAME - 1) // STATUS_PER_FRAME


class GrantError(HospesError):
    """A grant reference does not give the asked-for access (the request using it fails)."""


@dataclass(frozen=True)
class GrantTableState:
    """Saved grant table: how many frames are set up, the layout version, and the
    mappings (``maptrack``: ``(handle, ref, GNTMAP flags, frame)``, sorted by handle).

    The entries and status frames are guest-visible memory and travel with it;
    the pins of the active entries follow from the mappings, and the type
    references the mappings hold are taken again on restore (the MMU record
    leaves Hospes' own out). Records written before v2 and mappings existed
    have neither field and load as a v1 table with nothing mapped.
    """

    VERSION: ClassVar[int] = 1
    nr_frames: int
    gnttab_version: int = 1
    maptrack: tuple[tuple[int, int, int, int], ...] = ()
    version: int = VERSION


class _Active:
    """Xen's active entry: the pins one reference has, and the frame they pinned."""

    __slots__ = ("frame", "hstr", "hstw", "devr", "devw")

    def __init__(self, frame: int) -> None:
        self.frame = frame
        self.hstr = self.hstw = self.devr = self.devw = 0

    @property
    def pinned(self) -> bool:
        return bool(self.hstr or self.hstw or self.devr or self.devw)

    @property
    def writers(self) -> int:
        return self.hstw + self.devw

    def would_overflow(self, flags: int) -> bool:
        """Whether a counter ``flags`` would increment has reached bit 7 (Xen's
        GNTPIN_incr2oflow_mask): that mapping is refused."""
        ro = flags & GNTMAP_readonly
        if flags & GNTMAP_device_map and (self.devr if ro else self.devw) >= PIN_LIMIT:
            return True
        return bool(flags & GNTMAP_host_map and (self.hstr if ro else self.hstw) >= PIN_LIMIT)

    def add(self, flags: int, n: int) -> None:
        ro = flags & GNTMAP_readonly
        if flags & GNTMAP_device_map:
            if ro:
                self.devr += n
            else:
                self.devw += n
        if flags & GNTMAP_host_map:
            if ro:
                self.hstr += n
            else:
                self.hstw += n


class _Mapping:
    """One maptrack entry: what a handle maps (``flags`` loses a kind as it is unmapped)."""

    __slots__ = ("ref", "flags", "frame")

    def __init__(self, ref: int, flags: int, frame: int) -> None:
        self.ref, self.flags, self.frame = ref, flags, frame


@dataclass(frozen=True, slots=True)
class Claim:
    """A grant or frame :meth:`GrantTable.claim_for_copy` holds for one copy: the
    frame and the part of it the grant covers. :meth:`GrantTable.release_copy` gives it back."""

    frame: int
    start: int
    length: int
    ref: int | None      # None: a frame named directly (no pin)
    writable: bool


class GrantTable:
    """The grant frames of one domain, laid out back to back from ``base_gpa``.

    ``max_frames`` frames are reserved there, followed by the status frames a
    v2 table of that size needs; the guest uses the first :attr:`nr_frames`
    (one from the start, as in Xen, grown by :meth:`setup`). ``ram_frames`` is the number of guest RAM
    frames: the only frames a grant may name. ``types`` is the domain's MMU,
    which keeps the writable references mappings and backends take; its lock
    also serialises every change to the table's own books.
    """

    __slots__ = ("_mem", "_base", "_word0", "_max", "_ram", "_nr", "_nr_refs", "types", "_version",
                 "_shift", "_geom", "_status_base", "_nr_status", "_active", "_maptrack", "_free", "_next_handle")

    def __init__(self, mem: GuestMemory, *, base_gpa: int, max_frames: int, ram_frames: int,
                 types: PvMmu) -> None:
        if base_gpa % PAGE_SIZE or max_frames < 1 or ram_frames < 1:
            raise GrantError(
                f"A grant table needs page-aligned frames (got {base_gpa:#x}, {max_frames} frames) "
                "and guest RAM to grant."
            )
        mem.check(base_gpa, (max_frames + status_frames_for(max_frames, 2)) * PAGE_SIZE)
        self._mem = mem
        self._base = base_gpa
        self._word0 = base_gpa // ENTRY_SIZE   # index of entry 0 in mem.q
        self._max = max_frames
        self._ram = ram_frames
        self.types = types
        self._version = 1
        self._shift = 0                         # log2(entry size / 8): a reference's first word
        self._status_base = base_gpa + max_frames * PAGE_SIZE
        self._nr = INITIAL_NR_GRANT_FRAMES
        self._nr_refs = self._nr_status = 0
        # (references, shift) for the lock-free lookup: one attribute, so a backend
        # never pairs the reference count of one version with the layout of the other.
        self._geom = (0, 0)
        self._refs_changed()
        self._active: dict[int, _Active] = {}
        self._maptrack: dict[int, _Mapping] = {}
        self._free: deque[int] = deque()
        self._next_handle = 0

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

    @property
    def version(self) -> int:
        """The entry layout in use, 1 or 2 (GNTTABOP_get_version)."""
        return self._version

    @property
    def nr_status_frames(self) -> int:
        return self._nr_status

    @property
    def nr_refs(self) -> int:
        return self._nr_refs

    def mappings(self) -> int:
        """How many maptrack handles are in use."""
        return len(self._maptrack)

    def frame_gfn(self, index: int) -> int:
        """The guest frame number of grant frame ``index`` (what setup_table returns)."""
        if not 0 <= index < self._max:
            raise GrantError(f"Grant frame {index} is beyond the table's {self._max} frames.")
        return (self._base >> PAGE_SHIFT) + index

    def status_frame_gfn(self, index: int) -> int:
        """The guest frame number of status frame ``index`` (what get_status_frames returns)."""
        if not 0 <= index < self._nr_status:
            raise GrantError(f"Status frame {index} is beyond the table's {self._nr_status} status frames.")
        return (self._status_base >> PAGE_SHIFT) + index

    def setup(self, nr_frames: int) -> tuple[int, ...]:
        """GNTTABOP_setup_table: grow the table to at least ``nr_frames``; the
        frame numbers of its first ``nr_frames`` frames. The table never shrinks
        (a guest asks again with more frames when it runs out of references)."""
        if not 0 <= nr_frames <= self._max:
            raise GrantError(f"{nr_frames} grant frames asked for; the table has at most {self._max}.")
        if nr_frames > self._nr:
            self._nr = nr_frames
            self._refs_changed()
        first = self._base >> PAGE_SHIFT
        return tuple(range(first, first + nr_frames))

    def _refs_changed(self) -> None:
        per_frame = ENTRIES_PER_FRAME if self._version == 1 else ENTRIES_PER_FRAME_V2
        self._nr_refs = self._nr * per_frame
        self._geom = (self._nr_refs, self._shift)
        self._nr_status = status_frames_for(self._nr, self._version)

    # --- the backends' lookup ----------------------------------------------------------

    def lookup(self, ref: int, *, grantee: int, writable: bool) -> int:
        """The guest-physical address of the page grant ``ref`` gives domain
        ``grantee``; GrantError unless the entry permits access to exactly that
        domain (a whole page), is writable when ``writable``, lies within the
        frames set up and names a frame of the guest's RAM.

        The caller uses the page at once and does not keep the address: a
        guest may revoke the grant afterwards (it sees no GTF_reading/writing
        from us, so it may, and Linux only does so once the request that named
        the grant has been answered).
        """
        nr_refs, shift = self._geom
        if not 0 <= ref < nr_refs:
            raise GrantError(f"grant reference {ref} is outside the grant table ({self._nr} frames)")
        q = self._mem.q
        if shift:
            word = self._word0 + (ref << 1)
            entry, frame = q[word], q[word + 1]
        else:
            entry = q[self._word0 + ref]
            frame = entry >> 32
        flags = entry & 0xFFFF
        if flags & _WHOLE_PAGE_MASK != GTF_permit_access or (entry >> 16) & 0xFFFF != grantee:
            raise GrantError(f"grant reference {ref} does not grant access to domain {grantee}")
        if writable and flags & GTF_readonly:
            raise GrantError(f"grant reference {ref} is read-only")
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

    # --- entries and their status words ------------------------------------------------

    def _entry_gpa(self, ref: int) -> int:
        return self._base + (ref << (3 + self._shift))

    def _header(self, ref: int) -> int:
        """flags | domid << 16 of entry ``ref``."""
        return self._mem.q[self._word0 + (ref << self._shift)] & 0xFFFF_FFFF

    def _entry_frame(self, ref: int) -> int:
        word = self._word0 + (ref << self._shift)
        return self._mem.q[word + 1] if self._shift else self._mem.q[word] >> 32

    def _status_word(self, ref: int) -> tuple[int, int]:
        """Host address of the aligned quadword holding ref's status bits, and their shift."""
        if self._version == 1:
            gpa = self._entry_gpa(ref)
            return self._mem.addr(gpa, 8), 0
        gpa = self._status_base + 2 * ref
        return self._mem.addr(gpa & ~7, 8), (gpa & 7) * 8

    def status_flags(self, ref: int) -> int:
        """GTF_reading | GTF_writing as the guest sees them for ``ref`` (tests, debugging)."""
        addr, shift = self._status_word(ref)
        return (atomics.load64(addr) >> shift) & (GTF_reading | GTF_writing)

    def _clear_flags(self, ref: int, bits: int) -> None:
        if bits:
            addr, shift = self._status_word(ref)
            atomics.fetch_and64(addr, ~(bits << shift))
            self._mark(ref)

    def _mark(self, ref: int) -> None:
        gpa = self._entry_gpa(ref) if self._version == 1 else self._status_base + 2 * ref
        self._mem.mark(gpa, 2)

    def _set_status(self, ref: int, act: _Active | None, readonly: bool, mapping: bool, domid: int) -> int:
        """Xen's _set_status: check the entry (unless already pinned) and set
        GTF_reading, plus GTF_writing unless ``readonly``; a GNTST code."""
        mask = GTF_type_mask | (GTF_sub_page if mapping else 0)
        want = GTF_reading | (0 if readonly else GTF_writing)
        if self._version == 1:
            addr = self._mem.addr(self._entry_gpa(ref), 8)
            old = atomics.load64(addr)
            for _ in range(5):   # a guest racing the flags this often is misbehaving: Xen gives up too
                flags = old & 0xFFFF
                if act is None and (flags & mask != GTF_permit_access or (old >> 16) & 0xFFFF != domid):
                    return GNTST_general_error
                if not readonly and flags & GTF_readonly:
                    return GNTST_general_error
                swapped, old = atomics.cmpxchg64(addr, old, old | want)
                if swapped:
                    self._mark(ref)
                    return GNTST_okay
            return GNTST_general_error
        head = self._header(ref)

        def bad(h: int) -> bool:   # a mapping takes only full pages; a copy a transitive entry too
            kind = h & mask
            return (kind != GTF_permit_access and (mapping or kind != GTF_transitive)) or (h >> 16) & 0xFFFF != domid

        if act is None and bad(head):
            return GNTST_general_error
        if not readonly and head & GTF_readonly:
            return GNTST_general_error
        addr, shift = self._status_word(ref)
        atomics.fetch_or64(addr, want << shift)   # a full barrier, then the header again
        self._mark(ref)
        head = self._header(ref)
        if act is None:
            if bad(head) or (not readonly and head & GTF_readonly):
                self._clear_flags(ref, GTF_reading | GTF_writing)
                return GNTST_general_error
        elif head & GTF_readonly:
            self._clear_flags(ref, GTF_writing)
            return GNTST_general_error
        return GNTST_okay

    def _unpin_flags(self, ref: int, act: _Active, readonly: bool) -> None:
        """Clear what the pins left no longer justify (Xen's unlock_out_clear)."""
        bits = 0
        if not readonly and not act.writers:
            bits |= GTF_writing
        if not act.pinned:
            bits |= GTF_reading
            self._active.pop(ref, None)
        self._clear_flags(ref, bits)

    def _own_frame(self, frame: int) -> bool:
        """Xen's get_paged_frame for a PV domain: the frame is the domain's RAM."""
        return 0 <= frame < self._ram and frame not in self.types.released

    # --- map and unmap -----------------------------------------------------------------

    def map(self, ref: int, flags: int, host_addr: int, *, domid: int, cr3: int,
            writes: Writes) -> tuple[int, int, int]:
        """GNTTABOP_map_grant_ref of this domain's own grant ``ref`` by this domain
        (``domid``); ``(status, handle, frame)``. ``cr3`` translates a linear
        ``host_addr``; the entry stores go to ``writes``."""
        if not flags & (GNTMAP_device_map | GNTMAP_host_map):
            return GNTST_bad_gntref, 0, 0
        with self.types.lock:
            if len(self._maptrack) >= MAX_MAPTRACK:
                return GNTST_no_space, 0, 0
            if not 0 <= ref < self._nr_refs:
                return GNTST_bad_gntref, 0, 0
            act = self._active.get(ref)
            if act is not None and act.would_overflow(flags):
                return GNTST_general_error, 0, 0
            readonly = bool(flags & GNTMAP_readonly)
            fresh = act is None
            if fresh or (not readonly and not act.writers):   # type: ignore[union-attr]
                rc = self._set_status(ref, act, readonly, True, domid)
                if rc != GNTST_okay:
                    return rc, 0, 0
                if fresh:
                    frame = self._entry_frame(ref)
                    if not self._own_frame(frame):
                        self._clear_flags(ref, GTF_reading | (0 if readonly else GTF_writing))
                        return GNTST_bad_page, 0, 0
                    act = _Active(frame)
                    self._active[ref] = act
            assert act is not None
            act.add(flags, 1)
            rc = self._take_refs(act.frame, flags, host_addr, cr3, writes)
            if rc != GNTST_okay:
                act.add(flags, -1)
                self._unpin_flags(ref, act, readonly)
                return rc, 0, 0
            handle = self._free.popleft() if self._free else self._new_handle()
            self._maptrack[handle] = _Mapping(ref, flags, act.frame)
            return GNTST_okay, handle, act.frame

    def _new_handle(self) -> int:
        handle = self._next_handle
        self._next_handle += 1
        return handle

    def _take_refs(self, frame: int, flags: int, host_addr: int, cr3: int, writes: Writes) -> int:
        """The type references a new mapping holds, and its L1 entry; all or nothing."""
        writable = not flags & GNTMAP_readonly
        held = []
        try:
            if writable and flags & GNTMAP_device_map:
                self.types.hold_writable((frame,))
                held.append(frame)
            if flags & GNTMAP_host_map:
                if writable:
                    self.types.hold_writable((frame,))
                    held.append(frame)
                pte_gpa = self._pte_gpa(host_addr, flags, cr3)
                self.types.write_grant_l1e(writes, pte_gpa, _grant_pte(frame, flags))
        except XenError:
            self.types.release_writable(held)
            return GNTST_general_error
        return GNTST_okay

    def _pte_gpa(self, host_addr: int, flags: int, cr3: int) -> int:
        """Where a host mapping's L1 entry is: ``host_addr`` itself with
        GNTMAP_contains_pte, else the entry that maps the linear address."""
        if flags & GNTMAP_contains_pte:
            if host_addr & 7:
                raise XenError(Errno.EINVAL, "a misaligned PTE address")
            return host_addr
        if not canonical(host_addr):
            raise XenError(Errno.EINVAL, "a non-canonical host address")
        return self.types.l1_entry_gpa(cr3, host_addr)

    def unmap(self, handle: int, host_addr: int, dev_bus_addr: int, *, cr3: int,
              writes: Writes) -> tuple[int, bool]:
        """GNTTABOP_unmap_grant_ref: ``(status, whether a host mapping went)``; the
        caller flushes the TLBs when one did, before the guest runs on."""
        with self.types.lock:
            mapping = self._maptrack.get(handle)
            if mapping is None:
                return GNTST_bad_handle, False
            act = self._active[mapping.ref]
            if dev_bus_addr and dev_bus_addr != act.frame << PAGE_SHIFT:
                return GNTST_general_error, False
            flags = mapping.flags
            done = 0
            if host_addr and flags & GNTMAP_host_map:
                try:
                    pte_gpa = self._pte_gpa(host_addr, flags, cr3)
                    old = self.types.q[pte_gpa >> 3] if 0 <= pte_gpa >> PAGE_SHIFT < self._ram else 0
                    want = _grant_pte(act.frame, flags)
                    if (old & PTE_ADDR_MASK) != (want & PTE_ADDR_MASK) or (old ^ want) & (PTE_P | PTE_RW):
                        return GNTST_general_error, False
                    self.types.write_grant_l1e(writes, pte_gpa, 0)
                except XenError:
                    return GNTST_general_error, False
                done |= GNTMAP_host_map
            if dev_bus_addr and flags & GNTMAP_device_map:
                done |= GNTMAP_device_map
            if not done:
                return GNTST_okay, False
            mapping.flags &= ~done
            if not mapping.flags & (GNTMAP_device_map | GNTMAP_host_map):
                del self._maptrack[handle]
                self._free.append(handle)
            readonly = bool(flags & GNTMAP_readonly)
            gone = done | (flags & GNTMAP_readonly)
            if not readonly:
                self.types.release_writable((act.frame,) * bin(done).count("1"))
            act.add(gone, -1)
            self._unpin_flags(mapping.ref, act, readonly)
            return GNTST_okay, bool(done & GNTMAP_host_map)

    # --- copy --------------------------------------------------------------------------

    def claim_for_copy(self, ref: int | None, gmfn: int, *, writable: bool, domid: int) -> tuple[int, Claim | None]:
        """One side of a GNTTABOP_copy: grant ``ref`` (Xen's acquire_grant_for_copy)
        or, when ``ref`` is None, frame ``gmfn`` of our own; ``(status, claim)``.
        A writable side also holds a writable type reference while the copy runs."""
        with self.types.lock:
            if ref is None:
                if not self._own_frame(gmfn):
                    return GNTST_bad_page, None
                claim = Claim(gmfn, 0, PAGE_SIZE, None, writable)
            else:
                rc, claim = self._acquire(ref, writable, domid)   # type: ignore[assignment]
                if claim is None:
                    return rc, None
            if writable:
                try:
                    self.types.hold_writable((claim.frame,))
                except XenError:
                    self._release(claim)
                    return GNTST_general_error, None
            return GNTST_okay, claim

    def _acquire(self, ref: int, writable: bool, domid: int) -> tuple[int, Claim | None]:
        if not 0 <= ref < self._nr_refs:
            return GNTST_bad_gntref, None
        act = self._active.get(ref)
        if act is not None and act.would_overflow(GNTMAP_host_map | (0 if writable else GNTMAP_readonly)):
            return GNTST_general_error, None
        readonly = not writable
        start, length = 0, PAGE_SIZE
        need_status = act is None or (writable and not act.writers)
        head = self._header(ref)
        if self._version == 2 and head & GTF_type_mask == GTF_transitive:
            if need_status:
                rc = self._set_status(ref, act, readonly, False, domid)
                if rc != GNTST_okay:
                    return rc, None
            # The entry names another grant of trans_domid: this domain itself is
            # refused as self-referential and no other domain exists here.
            self._unpin_flags_unpinned(ref, act, readonly)
            return GNTST_general_error, None
        if need_status:
            rc = self._set_status(ref, act, readonly, False, domid)
            if rc != GNTST_okay:
                return rc, None
            frame = self._entry_frame(ref)
            if act is None and self._version == 2 and head & GTF_sub_page:
                sub = self._mem.q[self._word0 + (ref << 1)] >> 32
                start, length = sub & 0xFFFF, sub >> 16
            if not self._own_frame(frame):
                self._unpin_flags_unpinned(ref, act, readonly)
                return GNTST_bad_page, None
            if act is None:
                act = _Active(frame)
                self._active[ref] = act
        assert act is not None
        act.add(GNTMAP_host_map | (GNTMAP_readonly if readonly else 0), 1)
        return GNTST_okay, Claim(act.frame, start, length, ref, writable)

    def _unpin_flags_unpinned(self, ref: int, act: _Active | None, readonly: bool) -> None:
        """Clear the flags a failed acquire set, by the pins that already were."""
        bits = 0
        if not readonly and (act is None or not act.writers):
            bits |= GTF_writing
        if act is None or not act.pinned:
            bits |= GTF_reading
        self._clear_flags(ref, bits)

    def release_copy(self, claim: Claim) -> None:
        with self.types.lock:
            if claim.writable:
                self.types.release_writable((claim.frame,))
            self._release(claim)

    def _release(self, claim: Claim) -> None:
        if claim.ref is None:
            return
        act = self._active[claim.ref]
        act.add(GNTMAP_host_map | (0 if claim.writable else GNTMAP_readonly), -1)
        self._unpin_flags(claim.ref, act, not claim.writable)

    # --- swap and version --------------------------------------------------------------

    def swap(self, ref_a: int, ref_b: int) -> int:
        """GNTTABOP_swap_grant_ref: exchange two unpinned entries (and their status)."""
        with self.types.lock:
            for ref in (ref_a, ref_b):
                if not 0 <= ref < self._nr_refs:
                    return GNTST_bad_gntref
            if ref_a == ref_b:
                return GNTST_okay
            if ref_a in self._active or ref_b in self._active:
                return GNTST_eagain
            q, words = self._mem.q, 1 << self._shift
            a, b = self._word0 + ref_a * words, self._word0 + ref_b * words
            entry_a, entry_b = q[a:a + words].tolist(), q[b:b + words].tolist()   # q is a view: copy first
            q[a:a + words], q[b:b + words] = array("Q", entry_b), array("Q", entry_a)
            self._mem.mark(self._entry_gpa(ref_a), 8 * words)
            self._mem.mark(self._entry_gpa(ref_b), 8 * words)
            if self._version == 2:
                sa, sb = self._status_base + 2 * ref_a, self._status_base + 2 * ref_b
                va, vb = self._mem.read(sa, 2), self._mem.read(sb, 2)
                self._mem.write(sa, vb)
                self._mem.write(sb, va)
            return GNTST_okay

    def set_version(self, version: int) -> None:
        """GNTTABOP_set_version: switch the entry layout (XenError as Xen refuses).

        Only while no entry beyond the eight reserved ones is pinned (-EBUSY);
        the reserved entries are carried over, v2 to v1 only if v1 can hold them
        (-ERANGE); every other entry is cleared, as Xen clears the frames.
        """
        if version not in (1, 2):
            raise XenError(Errno.EINVAL, f"grant table version {version}")
        with self.types.lock:
            if version == self._version:
                return
            if any(ref >= NR_RESERVED_ENTRIES for ref in self._active):
                raise XenError(Errno.EBUSY, "grant entries are still mapped")
            q = self._mem.q
            reserved = min(NR_RESERVED_ENTRIES, self._nr_refs)
            kept: list[tuple[int, int]] = []   # (v1 flags | domid << 16, frame)
            for ref in range(reserved):
                head, frame = self._header(ref), self._entry_frame(ref)
                kind = head & GTF_type_mask
                if self._version == 1:
                    kept.append((head, frame))
                elif kind == GTF_permit_access and not frame >> 32:
                    kept.append((head | self.status_flags(ref), frame))
                elif kind in (GTF_permit_access, GTF_transitive):
                    raise XenError(Errno.ERANGE, f"grant entry {ref} cannot be held by a v1 entry")
                else:
                    kept.append((0, 0))
            status_gpa, status_len = self._status_base, self._nr_status * PAGE_SIZE
            self._version = version
            self._shift = 0 if version == 1 else 1
            self._refs_changed()
            self._mem.zero(self._base, self._nr * PAGE_SIZE)
            if status_len or self._nr_status:
                # The status frames come and go with v2: fresh (zeroed) ones, as Xen allocates.
                self._mem.zero(status_gpa, max(status_len, self._nr_status * PAGE_SIZE))
            for ref, (head, frame) in enumerate(kept):
                if version == 1:
                    q[self._word0 + ref] = head | frame << 32
                else:
                    word = self._word0 + 2 * ref
                    q[word] = head & ~(GTF_reading | GTF_writing)
                    q[word + 1] = frame
                    self._mem.write(self._status_base + 2 * ref,
                                    (head & (GTF_reading | GTF_writing)).to_bytes(2, "little"))
            self._mem.mark(self._base, self._nr * PAGE_SIZE)

    # --- saved state -----------------------------------------------------------------

    def save(self) -> GrantTableState:
        with self.types.lock:
            maptrack = tuple(sorted((h, m.ref, m.flags, m.frame) for h, m in self._maptrack.items()))
            return GrantTableState(nr_frames=self._nr, gnttab_version=self._version, maptrack=maptrack)

    @classmethod
    def restore(cls, state: GrantTableState, *, mem: GuestMemory, base_gpa: int, max_frames: int,
                ram_frames: int, types: PvMmu) -> GrantTable:
        """A table over ``mem`` with the saved frames, version and mappings; the
        mappings take their type references again from ``types``."""
        check_version(state, "grant table")
        table = cls(mem, base_gpa=base_gpa, max_frames=max_frames, ram_frames=ram_frames, types=types)
        if not 0 <= state.nr_frames <= max_frames:
            raise StateError(
                f"The saved grant table has {state.nr_frames} frames; this domain allows {max_frames}."
            )
        if state.gnttab_version not in (1, 2):
            raise StateError(f"The saved grant table has layout version {state.gnttab_version}, not 1 or 2.")
        table._version = state.gnttab_version
        table._shift = 0 if state.gnttab_version == 1 else 1
        table.setup(state.nr_frames)
        table._refs_changed()
        for handle, ref, flags, frame in state.maptrack:
            table._restore_mapping(handle, ref, flags, frame)
        used = set(table._maptrack)
        table._next_handle = max(used) + 1 if used else 0
        table._free.extend(h for h in range(table._next_handle) if h not in used)
        return table

    def _restore_mapping(self, handle: int, ref: int, flags: int, frame: int) -> None:
        kinds = flags & (GNTMAP_device_map | GNTMAP_host_map)
        if not 0 <= handle < MAX_MAPTRACK or handle in self._maptrack:
            raise StateError(f"The saved grant table has maptrack handle {handle} twice or out of range.")
        if not 0 <= ref < self._nr_refs or not kinds or not 0 <= frame < self._ram:
            raise StateError(
                f"The saved grant mapping {handle} (ref {ref}, flags {flags:#x}, frame {frame:#x}) "
                "does not fit this grant table."
            )
        act = self._active.get(ref)
        if act is None:
            act = self._active[ref] = _Active(frame)
        elif act.frame != frame:
            raise StateError(f"The saved grant mappings of ref {ref} name two frames.")
        if not flags & GNTMAP_readonly:
            try:
                self.types.hold_writable((frame,) * bin(kinds).count("1"))
            except XenError as e:
                raise StateError(
                    f"The saved writable grant mapping {handle} cannot hold frame {frame:#x}: {e}"
                ) from None
        act.add(flags, 1)
        self._maptrack[handle] = _Mapping(ref, flags, frame)


def _grant_pte(frame: int, flags: int) -> int:
    """The L1 entry of a host mapping, as Xen's grant_to_pte_flags builds it (the
    MMU adds _PAGE_USER for the guest kernel, as adjust_guest_l1e does)."""
    pte = frame << PAGE_SHIFT | PTE_P | PTE_A | PTE_D | PTE_NX
    if flags & GNTMAP_application_map:
        pte |= PTE_US
    if not flags & GNTMAP_readonly:
        pte |= PTE_RW
    return pte | ((flags >> GNTMAP_guest_avail0) << 9) & _PTE_AVAIL


__all__ = [
    "ENTRIES_PER_FRAME", "GTF_permit_access", "GTF_readonly", "GrantError", "GrantTable", "GrantTableState",
]
