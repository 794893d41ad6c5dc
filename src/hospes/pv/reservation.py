"""The domain's memory reservation: which RAM frames it holds, for ballooning.

Xen counts the pages a domain owns (``tot_pages``, XENMEM_current_reservation)
against a ceiling (``max_pages``, XENMEM_maximum_reservation). A PV guest's
balloon driver gives pages back with XENMEM_decrease_reservation and takes
pages again with XENMEM_populate_physmap (or the older
XENMEM_increase_reservation).

Machine frames are guest-physical frames of the domain's memfd, so a frame
given back keeps its place: it is marked *released*, its host memory is
returned (a hole punched in the domain's memfd), and the MMU refuses to map
it until a populate hands it out again (the frame of the PFN asked for when
that one is free, else the lowest free one; the M2P records the PFN). The
reservation is ``ram_pages - len(released)``.

A frame may only be released while nothing holds it: no page type reference
(not mapped writable, not a page table or descriptor page) and not one of the
frames Hospes keeps writing through its own views (``GuestMemory.held``:
rings, vcpu_info, time areas). Frames outside RAM (shared_info, grant frames,
the hypervisor region) are never the guest's to release.

Saved state (:class:`ReservationState`) is the released frames, in runs;
:meth:`Reservation.restore` punches them out of the restored memory again, so
a restored or migrated guest is as small as the one that was saved.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar

from hospes.state import StateError, check_version

if TYPE_CHECKING:
    from hospes.machine.memory import GuestMemory
    from hospes.pv.mmu import PvMmu


@dataclass(frozen=True, slots=True)
class ReservationState:
    """Released RAM frames as sorted, disjoint ``(first frame, frames)`` runs."""

    VERSION: ClassVar[int] = 1
    released: tuple[tuple[int, int], ...] = ()
    version: int = VERSION


def runs(frames: set[int]) -> tuple[tuple[int, int], ...]:
    """``frames`` as sorted ``(first, count)`` runs of consecutive frames."""
    out: list[tuple[int, int]] = []
    for f in sorted(frames):
        if out and out[-1][0] + out[-1][1] == f:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((f, 1))
    return tuple(out)


class Reservation:
    """The RAM frames one domain holds, and the ceiling it may grow back to."""

    def __init__(self, mem: GuestMemory, mmu: PvMmu, ram_pages: int, max_pages: int | None = None) -> None:
        self.mem = mem
        self.mmu = mmu
        self.ram_pages = ram_pages
        # The guest-physical RAM is built at the maximum, so a domain can
        # never hold more than it; max_pages is only lowered, never raised.
        self.max_pages = ram_pages if max_pages is None else min(max_pages, ram_pages)
        # The MMU's own set (one object): frames it must refuse to map.
        self.released: set[int] = mmu.released
        self.lock = threading.Lock()

    @property
    def current_pages(self) -> int:
        """XENMEM_current_reservation: the RAM frames the domain holds now."""
        return self.ram_pages - len(self.released)

    def start_with(self, pages: int) -> None:
        """At build: the domain holds frames ``[0, pages)``; the RAM above (up to
        its maxmem) starts released, for the balloon driver to populate."""
        if pages < self.ram_pages:
            with self.lock:
                self.released.update(range(pages, self.ram_pages))
            self.mem.punch(pages << 12, (self.ram_pages - pages) << 12)

    def refusal(self, frame: int) -> str | None:
        """Why ``frame`` cannot be given back now (None: it can)."""
        if not 0 <= frame < self.ram_pages:
            return "not a RAM frame of the domain"
        if frame in self.released:
            return "already released"
        if frame in self.mem.held:
            return "kept by the hypervisor (a ring, vcpu_info or time area)"
        if self.mmu.count.get(frame, 0):
            return "still referenced (mapped writable, a page table or a descriptor page)"
        return None

    def release(self, first: int, count: int) -> int:
        """Give back ``first``..+``count`` (one extent) frame by frame; return how many were.

        A frame that cannot be released stops the extent there: the frames
        before it stay released, as Xen's guest_remove_page loop leaves them.
        """
        done = 0
        with self.mmu.lock, self.lock:
            for frame in range(first, first + count):
                if self.refusal(frame) is not None:
                    break
                self.released.add(frame)
                # Punching drops KVM's mappings (and flushes): no TLB keeps it writable.
                self.mmu.stale_writable.discard(frame)
                done += 1
            if done:   # under the lock: a populate of the same frame cannot come between
                self.mem.punch(first << 12, done << 12)
        return done

    def can_populate(self, first: int, count: int) -> bool:
        """Whether the frames ``first``..+``count`` are all released and fit under the maximum."""
        if first < 0 or first + count > self.ram_pages:
            return False
        if self.current_pages + count > self.max_pages:
            return False
        return all(f in self.released for f in range(first, first + count))

    def populate(self, first: int, count: int) -> bool:
        """Take ``first``..+``count`` back (all or none). Their contents read as zeros."""
        with self.mmu.lock, self.lock:
            if not self.can_populate(first, count):
                return False
            # A hole reads as zeros: no scrubbing needed (Xen scrubs freed pages).
            self.released.difference_update(range(first, first + count))
            return True

    def free_extents(self, count: int, below: int) -> Iterator[int]:
        """First frames of ``count`` consecutive released frames, lowest first, aligned to
        ``count`` (Xen's buddy allocator hands out naturally aligned extents), below ``below``.
        A snapshot: the caller populates each one (which checks again) before asking the next."""
        for frame in sorted(self.released):
            if frame >= below:
                return
            if frame % count == 0 and frame + count <= below and \
                    all(f in self.released for f in range(frame, frame + count)):
                yield frame

    def punch_released(self) -> None:
        """Return the released frames' host memory again: a save or a migration's
        copy read them (as zeros), which gave them pages; the domain runs on."""
        with self.lock:
            for first, count in runs(self.released):
                self.mem.punch(first << 12, count << 12)

    # --- save / restore -----------------------------------------------------------

    def save(self) -> ReservationState:
        with self.lock:
            return ReservationState(released=runs(self.released))

    def restore_released(self, state: ReservationState) -> None:
        """Mark the saved released frames again and return their host memory
        (the restored copy wrote zeros there)."""
        check_version(state, "memory reservation")
        end = 0
        for first, count in state.released:
            if count < 1 or first < end or first + count > self.ram_pages:
                raise StateError(f"The saved memory reservation releases frames {first:#x}+{count}, which "
                                 f"are not sorted, disjoint RAM frames of a domain of {self.ram_pages:#x}.")
            end = first + count
        for first, count in state.released:
            frames = range(first, first + count)
            if any(self.mmu.count.get(f, 0) for f in frames):
                raise StateError(f"The saved state releases frames {first:#x}+{count} but gives one of them "
                                 "a page type; the record is not consistent.")
            self.released.update(frames)
            self.mem.punch(first << 12, count << 12)


__all__ = ["Reservation", "ReservationState", "runs"]
