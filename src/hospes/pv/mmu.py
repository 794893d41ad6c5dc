"""The PV MMU: Xen's page types, reference counted (pv-abi.md §8).

The hardware walks the guest's own tables (machine frame == guest-physical
frame), so what keeps a guest inside its memory and away from the trampoline
is this bookkeeping, which follows Xen's:

* Every RAM frame has at most one *type* at a time: an L1..L4 page table,
  ``WRITABLE`` (mapped writable somewhere), or ``SEGDESC`` (a GDT frame), with
  a count of the references that hold it. A frame can only take a type when
  its count is zero, so a page table can never be mapped writable and a
  writable page can never become a page table: the guest cannot edit a live
  table except through Hospes.
* References come from validated entries (an L2 entry holds its L1's
  ``L1`` type; a writable L1 entry holds its frame's ``WRITABLE`` type), from
  pins, from the vCPUs' CR3s and from loaded GDTs. Taking the first reference
  validates the table (recursively taking its children's); dropping the last
  one releases them again.
* Hospes holds ``WRITABLE`` references of its own (:meth:`PvMmu.hold_writable`)
  on every RAM frame it writes through a view the guest cannot see: the
  console and xenstore rings, registered vcpu_info pages, the backends'
  rings, and a granted frame while a backend writes into it (Xen's
  PGT_writable_page from a grant map or map_vcpu_info). So a page Hospes
  writes can never be a page table or descriptor page, and one that is
  cannot be handed to Hospes to write.
* Entries may only name this domain's frames: RAM at every level, plus the
  hypervisor-owned frames the guest may map (shared_info, grant frames) in
  L1s; no superpages. Present entries get ``_PAGE_USER`` (the guest kernel
  runs at CPL 3) and L4 entries ``_PAGE_ACCESSED``, as Xen's adjust_guest_l*e.
* L4 slots 256-271 belong to the hypervisor: every validated L4 gets Hospes'
  entries there, and guest writes to them are refused.

Every resulting store is made into memory at once; one that replaces a
present entry is also queued for the in-VM writer, because this KVM ignores
page-table stores made by the VMM (platform.md) and only a guest-mode store
makes it drop the shadow of the old entry.

Saved state (:class:`MmuState`) is the type and count of every frame that has
one, and the pins. The tables themselves are guest memory and travel with it;
the counts are saved rather than rebuilt by revalidating because part of them
are held by vCPU CR3s and loaded GDTs, which the MMU cannot see. Hospes' own
references are left out of the record: each holder takes its reference again
as it is restored (the rings, vcpu_info, the backends), so a restore neither
counts one twice nor keeps one for a ring that has gone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar

from hospes.pv.abi import PTE_A, PTE_ADDR_MASK, PTE_D, PTE_NX, PTE_P, PTE_PCD, PTE_PSE, PTE_PWT, PTE_RW, PTE_US
from hospes.pv.layout import SLOT_KDATA
from hospes.pv.errors import Errno, XenError
from hospes.state import StateError, check_version

if TYPE_CHECKING:
    from hospes.machine.memory import GuestMemory
    from hospes.pv.vcpu import PvVcpu

FIRST_XEN_SLOT = 256
LAST_XEN_SLOT = 271
WRITABLE = 8
SEGDESC = 9
TYPE_NAMES = {1: "L1", 2: "L2", 3: "L3", 4: "L4", WRITABLE: "writable", SEGDESC: "descriptor"}

Writes = list[tuple[int, int]]
#: GuestVirt's translation cache, (cr3, virtual page) -> (L1 table, writable).
TranslationCache = dict[tuple[int, int], tuple[int, bool]]


@dataclass(frozen=True, slots=True)
class MmuState:
    """Saved page types: only frames that have one, in runs, so the record stays small.

    ``runs`` holds ``(first frame, frames, type, count)``: consecutive frames
    with the same type (as in :data:`TYPE_NAMES`) and reference count, sorted
    and disjoint. A Linux guest's RAM is nearly all writable pages with one
    reference, so a few hundred runs describe it (a live migration writes this
    record while the guest is stopped). ``pinned`` holds ``(frame, level)``
    sorted by frame. Frames that merely await a TLB flush (``stale_writable``)
    are not saved: the restored domain's vCPUs start with empty TLBs.
    """

    VERSION: ClassVar[int] = 2
    runs: tuple[tuple[int, int, int, int], ...]
    pinned: tuple[tuple[int, int], ...]
    # PvMmu.linear as sorted (frame, count) pairs; absent in saves from before linear tables.
    linear: tuple[tuple[int, int], ...] = ()
    version: int = VERSION


# Bits whose removal takes rights away (or must be seen again: KVM sets A and D
# in the guest's entry only when it makes a shadow entry), and the bits that
# change what a present entry maps or how.
_RIGHTS = PTE_RW | PTE_US | PTE_A | PTE_D
_MAPPING = PTE_P | PTE_ADDR_MASK | PTE_PSE | PTE_PWT | PTE_PCD


def needs_writer(old: int, new: int) -> bool:
    """Must KVM drop its shadow of present entry ``old`` now that memory holds ``new``?

    KVM shadows guest page tables and never sees the VMM's own stores
    (platform.md), so it may go on using ``old`` until a guest-mode store
    (the writer's) to the entry. That is harmless when ``new`` maps the same
    frame the same way with at least ``old``'s rights: an access ``old``
    refuses faults into KVM, which walks the guest's table, finds ``new`` and
    replaces its shadow. Otherwise (another frame, not present, a right taken
    away, A or D cleared, other cache bits) the stale shadow would let the
    guest do what the entry no longer allows.
    """
    if (old ^ new) & _MAPPING:
        return True
    return bool(old & ~new & _RIGHTS or new & ~old & PTE_NX)


class PvMmu:
    """Page types, pins and validation for one domain."""

    def __init__(
        self, mem: GuestMemory, ram_pages: int, guest_frames: int, hv_l4_entries: dict[int, int]
    ) -> None:
        self.mem = mem
        self.q = mem.q
        self.ram_pages = ram_pages
        self.guest_frames = guest_frames
        self.hv_l4 = {slot: hv_l4_entries.get(slot, 0) for slot in range(FIRST_XEN_SLOT, LAST_XEN_SLOT + 1)}
        self.type: dict[int, int] = {}
        self.count: dict[int, int] = {}
        self.pinned: set[int] = set()
        # Hospes' own WRITABLE references, per frame (part of ``count``).
        self.held: dict[int, int] = {}
        self.lock = threading.RLock()
        # Frames whose last writable mapping went away since the last flush of
        # every vCPU: a TLB may still hold a writable entry for them, so before
        # one becomes a page table or descriptor page, everyone flushes.
        self.stale_writable: set[int] = set()
        self.flush_all: Callable[[], None] = lambda: None
        self.translation_cache: TranslationCache = {}  # GuestVirt's; every store invalidates it
        # The kernel-data slot's entry for the L4s guest user space runs on (set by
        # the domain; 0: none), and the L4s known to hold it (user_root).
        self.kdata_user_entry = 0
        self.user_roots: set[int] = set()
        # Ballooning (pv/reservation.py owns this set): RAM frames the guest gave
        # back. No entry, pin, CR3 or GDT may name one until it is populated again.
        self.released: set[int] = set()
        # Linear page tables (an entry naming a table of its own level, read-only),
        # counted as Xen's linear_pt_count: > 0, the linear entries a table holds;
        # < 0, the linear entries naming it. A frame is never both, so linear
        # mappings cannot chain (XSA-240). Frames at 0 have no key.
        self.linear: dict[int, int] = {}

    # --- entries -------------------------------------------------------------------

    def adjust(self, level: int, entry: int) -> int:
        """Check one entry for a table of ``level``; return it as Xen would store it."""
        if not entry & PTE_P:
            return entry
        frame = (entry & PTE_ADDR_MASK) >> 12
        if frame in self.released:   # ballooned out: not the domain's until populated
            raise XenError(Errno.EINVAL)
        if level == 1:
            if frame >= self.guest_frames:
                raise XenError(Errno.EINVAL)
            return entry | PTE_US
        if frame >= self.ram_pages or entry & PTE_PSE:
            raise XenError(Errno.EINVAL)
        return entry | PTE_US | (PTE_A if level == 4 else 0)

    def _get_ref(self, level: int, entry: int, writes: Writes, table: int) -> None:
        """Take the reference an (adjusted) entry of ``table`` holds on what it points at."""
        if not entry & PTE_P:
            return
        frame = (entry & PTE_ADDR_MASK) >> 12
        if level > 1:
            try:
                self.get_type(frame, level - 1, writes)
            except XenError:
                if not self._get_linear(level, entry, frame, table):
                    raise
        elif entry & PTE_RW and frame < self.ram_pages:
            try:
                self.get_type(frame, WRITABLE, writes)
            except XenError as e:  # a frame typed as a table or descriptor page: Xen's get_page_from_l1e
                raise XenError(Errno.EBUSY, "A writable mapping of a page table or descriptor page") from e

    def _get_linear(self, level: int, entry: int, frame: int, table: int) -> bool:
        """Xen's get_lN_linear_pagetable: may ``table`` (level ``level``) name ``frame``,
        which is not a table of the level below? Only read-only, only a table of the
        same level (or itself), and only where no chain of linear mappings forms."""
        if entry & PTE_RW:
            return False
        if frame == table:
            return True   # a self-reference takes no reference
        if not self.count.get(frame) or self.type[frame] != level:
            return False
        linear = self.linear
        if linear.get(table, 0) < 0 or linear.get(frame, 0) > 0:
            return False
        linear[table] = linear.get(table, 0) + 1
        linear[frame] = linear.get(frame, 0) - 1
        self.count[frame] += 1
        return True

    def _put_ref(self, level: int, entry: int, writes: Writes, table: int) -> None:
        if not entry & PTE_P:
            return
        frame = (entry & PTE_ADDR_MASK) >> 12
        if level > 1:
            if frame == table:
                return    # a linear self-reference: nothing was taken
            if self.type.get(frame) == level:   # a linear entry: a table of its own level
                self._drop_linear(table, 1)
                self._drop_linear(frame, -1)
            self.put_type(frame, writes)
        elif entry & PTE_RW and frame < self.ram_pages:
            self.put_type(frame, writes)

    def _drop_linear(self, frame: int, step: int) -> None:
        n = self.linear.get(frame, 0) - step
        if n:
            self.linear[frame] = n
        else:
            self.linear.pop(frame, None)

    # --- types ---------------------------------------------------------------------

    def get_type(self, frame: int, kind: int, writes: Writes) -> None:
        """Take a ``kind`` reference on ``frame``, validating it if it is new."""
        if frame >= self.ram_pages or frame in self.released:
            raise XenError(Errno.EINVAL)
        n = self.count.get(frame, 0)
        if n:
            if self.type[frame] != kind:
                raise XenError(Errno.EINVAL)
            self.count[frame] = n + 1
            return
        if kind != WRITABLE and frame in self.stale_writable:
            self.flush_all()
            self.stale_writable.clear()
        self.type[frame] = kind
        self.count[frame] = 1
        if kind <= 4:
            try:
                self._validate(frame, kind, writes)
            except XenError:
                del self.type[frame]
                del self.count[frame]
                raise

    def put_type(self, frame: int, writes: Writes) -> None:
        n = self.count.get(frame, 0)
        if n <= self.held.get(frame, 0):
            return  # a reference we never took (e.g. after a failed validation), or Hospes' own
        if n > 1:
            self.count[frame] = n - 1
            if n - 1 == self.held.get(frame, 0) and self.type[frame] == WRITABLE:
                # The guest's last writable mapping went, Hospes' references stay:
                # a TLB may still hold the mapping when they go too.
                self.stale_writable.add(frame)
            return
        kind = self.type.pop(frame)
        del self.count[frame]
        if kind == WRITABLE:
            self.stale_writable.add(frame)
        elif kind <= 4:
            self.translation_cache.clear()  # the guest may now rewrite this table directly
            self._release(frame, kind, writes)

    # --- Hospes' own references ---------------------------------------------------

    def hold_writable(self, frames: Iterable[int]) -> None:
        """Take Hospes' writable reference on each of ``frames``, all or none.

        Refused with -EINVAL (Xen's get_page_type failing on a type conflict)
        when a frame is not guest RAM or is a page table or descriptor page:
        Hospes never writes into either. A frame that is already writable (the
        guest maps it, or another holder has it) just gains a reference, so
        the common case is two dictionary lookups and a store.
        """
        frames = tuple(frames)
        with self.lock:
            count, types, held, ram = self.count, self.type, self.held, self.ram_pages
            for i, frame in enumerate(frames):
                n = count.get(frame, 0)
                if not 0 <= frame < ram or (n and types[frame] != WRITABLE):
                    self._drop_held(frames[:i])
                    what = f"in use as a {TYPE_NAMES[types[frame]]} page" if 0 <= frame < ram else "not guest RAM"
                    raise XenError(Errno.EINVAL, f"frame {frame:#x} is {what}")
                types[frame] = WRITABLE
                count[frame] = n + 1
                held[frame] = held.get(frame, 0) + 1

    def release_writable(self, frames: Iterable[int]) -> None:
        """Drop references :meth:`hold_writable` took (each frame as often as it was held)."""
        with self.lock:
            self._drop_held(frames)

    def _drop_held(self, frames: Iterable[int]) -> None:
        held, count = self.held, self.count
        for frame in frames:
            h = held.get(frame, 0)
            if h <= 0:
                continue   # not ours: never drop a reference the guest holds
            if h == 1:
                del held[frame]
            else:
                held[frame] = h - 1
            n = count[frame]
            if n > 1:
                count[frame] = n - 1
            else:
                # The last reference, and Hospes' view is in no guest TLB: no
                # flush is owed before the frame takes another type.
                del count[frame]
                del self.type[frame]

    def _entries(self, frame: int) -> list[int]:
        base = frame << 9
        return self.q[base:base + 512].tolist()

    def user_root(self, frame: int, writes: Writes) -> None:
        """Make L4 ``frame`` fit to run guest user space on: its kernel-data slot
        then maps the read-only page of zeros, so user space can neither write
        the vCPUs' kernel-data pages nor see them (hospes.pv.trampoline). The
        entry is queued for the caller's writer even when another vCPU changed it
        already: that vCPU's writer may not have run yet, and until a guest-mode
        store reaches the entry KVM may still use its shadow of the writable
        variant. Each vCPU calls this once per frame (``PvVcpu.user_roots``)
        until the frame is validated again, which puts the kernel's variant back
        and drops it from :attr:`user_roots`."""
        with self.lock:
            if self.type.get(frame) != 4 or not self.count.get(frame):
                return   # not an L4 in use: nothing runs on it (Hospes loads only typed roots)
            if self.kdata_user_entry:
                gpa = (frame << 12) + SLOT_KDATA * 8
                if self.q[gpa >> 3] != self.kdata_user_entry:
                    self.store(writes, gpa, self.kdata_user_entry)
                else:
                    writes.append((gpa, self.kdata_user_entry))
            self.user_roots.add(frame)

    def _validate(self, frame: int, level: int, writes: Writes) -> None:
        """Check a table and take its children's references; undo all on failure."""
        if level == 4:
            self.user_roots.discard(frame)   # the hypervisor slots come back as hv_l4 has them
        taken: list[int] = []
        fixes: Writes = []
        try:
            for i, entry in enumerate(self._entries(frame)):
                if level == 4 and FIRST_XEN_SLOT <= i <= LAST_XEN_SLOT:
                    want = self.hv_l4[i]
                    if entry != want:
                        fixes.append(((frame << 12) + i * 8, want))
                    continue
                if not entry & PTE_P:
                    continue
                new = self.adjust(level, entry)
                self._get_ref(level, new, writes, frame)
                taken.append(new)
                if new != entry:
                    fixes.append(((frame << 12) + i * 8, new))
        except XenError:
            for entry in taken:
                self._put_ref(level, entry, writes, frame)
            raise
        for gpa, value in fixes:
            self.store(writes, gpa, value)

    def _release(self, frame: int, level: int, writes: Writes) -> None:
        for i, entry in enumerate(self._entries(frame)):
            if level == 4 and FIRST_XEN_SLOT <= i <= LAST_XEN_SLOT:
                continue
            self._put_ref(level, entry, writes, frame)

    def store(self, writes: Writes, gpa: int, value: int) -> None:
        """Store an entry into memory, where the hardware walk and later checks see it.

        An entry whose old value KVM may shadow with rights the new one lacks
        is also queued for the in-VM writer, so KVM drops that shadow
        (:func:`needs_writer`). Any other store takes effect at once, as on
        Xen, without a writer run: a table being filled, a mapping made, or
        rights added (the ``_PAGE_USER`` Xen's adjustment adds to a kernel's
        entries, a page made writable or executable).
        """
        q = self.q
        old = q[gpa >> 3]
        q[gpa >> 3] = value
        dirty = self.mem.dirty
        if dirty is not None:
            dirty.add(gpa >> 12)
        if old & PTE_P:
            if needs_writer(old, value):
                writes.append((gpa, value))
            # A cached translation may have gone through the old entry; none went
            # through one that was not present, so filling a table keeps the cache.
            self.translation_cache.clear()

    # --- operations the hypercalls use ----------------------------------------------

    def update_entry(self, vcpu: "PvVcpu", pte_gpa: int, value: int, preserve_ad: bool = False) -> None:
        """mmu_update: a checked write of one entry at machine address ``pte_gpa``."""
        frame = pte_gpa >> 12
        if frame >= self.ram_pages or frame in self.released:
            raise XenError(Errno.EINVAL)
        old = self.q[pte_gpa >> 3]
        if preserve_ad:
            value |= old & 0x60
        kind = self.type.get(frame) if self.count.get(frame) else None
        if kind is None or kind == WRITABLE:
            if value != old:   # an entry written back as it is: nothing for the writer (a CPL-0 store each)
                self.store(vcpu.writes, pte_gpa, value)  # an ordinary page: a plain store
            return
        if kind == SEGDESC:
            raise XenError(Errno.EINVAL)
        index = (pte_gpa & 0xFFF) >> 3
        if kind == 4 and FIRST_XEN_SLOT <= index <= LAST_XEN_SLOT:
            raise XenError(Errno.EPERM)
        new = self.adjust(kind, value)
        if (new ^ old) & ~0x60 == 0 or (new & PTE_P and old & PTE_P and
                                        (new ^ old) & (PTE_ADDR_MASK | PTE_RW | PTE_P) == 0):
            if new != old:
                self.store(vcpu.writes, pte_gpa, new)  # same target and rights: no reference changes
            return
        self._get_ref(kind, new, vcpu.writes, frame)
        self._put_ref(kind, old, vcpu.writes, frame)
        self.store(vcpu.writes, pte_gpa, new)

    def write_grant_l1e(self, writes: Writes, pte_gpa: int, value: int) -> int:
        """Write the L1 entry of a grant host mapping (Xen's create/replace_grant_pv_mapping).

        The entry must lie in a page that is an L1 table in use (-EINVAL
        otherwise); it is adjusted and its reference taken like any other L1
        entry, and the old entry's dropped, so the guest may overwrite it later
        with mmu_update without unbalancing the counts. Returns the old entry.
        """
        frame = pte_gpa >> 12
        if not 0 <= frame < self.ram_pages or frame in self.released or not self.count.get(frame) \
                or self.type[frame] != 1:
            raise XenError(Errno.EINVAL, "a grant mapping's entry must be in an L1 table")
        old = self.q[pte_gpa >> 3]
        new = self.adjust(1, value)
        self._get_ref(1, new, writes, frame)
        self._put_ref(1, old, writes, frame)
        self.store(writes, pte_gpa, new)
        return int(old)

    def pin(self, vcpu: "PvVcpu", frame: int, level: int) -> None:
        if frame in self.pinned:
            raise XenError(Errno.EINVAL)
        self.get_type(frame, level, vcpu.writes)
        self.pinned.add(frame)

    def pin_boot_l4(self, frame: int, writes: Writes) -> None:
        """The builder's L4: pinned, plus the boot vCPU's CR3 reference."""
        self.get_type(frame, 4, writes)
        self.get_type(frame, 4, writes)
        self.pinned.add(frame)

    def unpin(self, vcpu: "PvVcpu", frame: int) -> None:
        if frame not in self.pinned:
            raise XenError(Errno.EINVAL)
        self.pinned.discard(frame)
        self.put_type(frame, vcpu.writes)

    def switch_l4(self, writes: Writes, old_cr3: int, new_frame: int) -> int:
        """Move a CR3 reference from ``old_cr3`` to ``new_frame`` (0 = none); return the new CR3."""
        if new_frame:
            self.get_type(new_frame, 4, writes)
        if old_cr3:
            self.put_type(old_cr3 >> 12, writes)
        return new_frame << 12

    def l1_entry_gpa(self, cr3: int, va: int) -> int:
        """GPA of the L1 entry mapping ``va`` under ``cr3`` (-EINVAL if none)."""
        table = cr3 & PTE_ADDR_MASK
        for shift in (39, 30, 21):
            if table >= self.ram_pages << 12:
                raise XenError(Errno.EINVAL)
            entry = self.q[(table >> 3) + ((va >> shift) & 511)]
            if not entry & PTE_P or entry & PTE_PSE:
                raise XenError(Errno.EINVAL)
            table = entry & PTE_ADDR_MASK
        if table >= self.ram_pages << 12:
            raise XenError(Errno.EINVAL)
        return table + ((va >> 12) & 511) * 8

    def is_page_table(self, frame: int) -> bool:
        return self.count.get(frame, 0) > 0 and self.type[frame] <= 4

    def table_level(self, frame: int) -> int | None:
        return self.type[frame] if self.is_page_table(frame) else None

    # --- save / restore --------------------------------------------------------------

    def save(self) -> MmuState:
        """The guest's references (Hospes' own are taken again by their holders on restore)."""
        with self.lock:
            return MmuState(runs=self._runs(), pinned=tuple(sorted((f, self.type[f]) for f in self.pinned)),
                            linear=tuple(sorted(self.linear.items())))

    def _runs(self) -> tuple[tuple[int, int, int, int], ...]:
        """``MmuState.runs``; taken while a migrating guest is stopped, so one tight pass."""
        count = self.count
        if self.held:   # a handful of frames: rings and vcpu_info pages
            count = dict(count)
            for frame, h in self.held.items():
                if count[frame] == h:
                    del count[frame]
                else:
                    count[frame] -= h
        frames = sorted(count)
        if not frames:
            return ()
        kinds = list(map(self.type.__getitem__, frames))
        counts = list(map(count.__getitem__, frames))
        runs: list[tuple[int, int, int, int]] = []
        start = prev = frames[0]
        kind, n = kinds[0], counts[0]
        for f, k, c in zip(frames, kinds, counts, strict=False):
            if f != prev + 1 or k != kind or c != n:
                if f != start:
                    runs.append((start, prev + 1 - start, kind, n))
                start, kind, n = f, k, c
            prev = f
        runs.append((start, prev + 1 - start, kind, n))
        return tuple(runs)

    @classmethod
    def restore(
        cls,
        state: MmuState,
        *,
        mem: GuestMemory,
        ram_pages: int,
        guest_frames: int,
        hv_l4_entries: dict[int, int],
    ) -> PvMmu:
        """An MMU with the saved types, counts and pins, over the restored memory.

        Memory is neither read nor written: the tables were validated when
        they took their types and come back byte for byte. What can be checked
        without walking them is checked, so a record that does not fit this
        domain is refused (:class:`StateError`) instead of letting the guest
        run with counts that would let it write a live table.
        """
        check_version(state, "PV MMU state")
        mmu = cls(mem, ram_pages, guest_frames, hv_l4_entries)
        end = 0
        for frame, frames, kind, count in state.runs:
            if frames < 1 or not 0 <= frame or frame + frames > ram_pages:
                raise StateError(
                    f"The saved PV MMU state gives frames {frame:#x}+{frames} a page type, but the domain "
                    f"has {ram_pages:#x} RAM frames; restore it with the memory size it was saved with."
                )
            if frame < end:
                raise StateError(f"The saved PV MMU state lists frame {frame:#x} twice (or out of order).")
            if kind not in TYPE_NAMES:
                raise StateError(f"The saved PV MMU state gives frame {frame:#x} unknown type {kind}.")
            if count < 1:
                raise StateError(
                    f"The saved PV MMU state gives frame {frame:#x} a {TYPE_NAMES[kind]} type "
                    f"with {count} references; a typed frame has at least one."
                )
            end = frame + frames
            run = range(frame, end)
            mmu.type.update(dict.fromkeys(run, kind))
            mmu.count.update(dict.fromkeys(run, count))
        for frame, level in state.pinned:
            if not 1 <= level <= 4:
                raise StateError(f"The saved PV MMU state pins frame {frame:#x} at level {level}, not 1-4.")
            if frame in mmu.pinned:
                raise StateError(f"The saved PV MMU state pins frame {frame:#x} twice.")
            # A pin holds a reference of the pinned level, so the frame must
            # have that type; anything else means the counts are not ours.
            if mmu.type.get(frame) != level:
                have = TYPE_NAMES.get(mmu.type.get(frame, 0), "no")
                raise StateError(
                    f"The saved PV MMU state pins frame {frame:#x} as an L{level} table, "
                    f"but saves {have} type for it."
                )
            mmu.pinned.add(frame)
        for frame, n in state.linear:
            if not n or not mmu.count.get(frame) or mmu.type[frame] > 4:
                raise StateError(f"The saved PV MMU state counts {n} linear entries for frame {frame:#x}, "
                                 "which is not a page table in the same record.")
            mmu.linear[frame] = n
        return mmu


__all__ = ["MmuState", "PvMmu", "WRITABLE", "SEGDESC", "TYPE_NAMES"]
