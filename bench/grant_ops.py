#!/usr/bin/env python3
"""Cost of the grant table's operations in Python, per call.

    PYTHONPATH=src .venv/bin/python bench/grant_ops.py

``lookup`` is on the block and net backends' I/O path (one per granted
segment or packet fragment), so it is measured for both entry layouts;
map/unmap (a device mapping, and a host mapping through a PTE address) and a
one-page copy are what a grant_table_op batch costs per op, without the
hypercall's exit. No KVM needed: a table over plain guest memory.
"""

from __future__ import annotations

import struct
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from hospes.machine.memory import GuestMemory  # noqa: E402
from hospes.pv.grant import (  # noqa: E402
    GNTMAP_contains_pte, GNTMAP_device_map, GNTMAP_host_map, GrantTable,
)
from hospes.pv.layout import MAX_GRANT_FRAMES, Layout  # noqa: E402
from hospes.pv.mmu import PvMmu  # noqa: E402

RAM_PAGES = 256
DOMID = 1
L1 = 10
DATA = 20


def table() -> tuple[GuestMemory, Layout, GrantTable]:
    lay = Layout(ram_pages=RAM_PAGES, nr_vcpus=1)
    mem = GuestMemory([("ram", lay.ram_bytes), ("xen", 64 * 4096), ("hv", 4096)])
    mmu = PvMmu(mem, RAM_PAGES, lay.guest_frames, {})
    grants = GrantTable(mem, base_gpa=lay.grant_frame_gpa(0), max_frames=MAX_GRANT_FRAMES,
                        ram_frames=RAM_PAGES, types=mmu)
    grants.setup(4)
    mmu.get_type(L1, 1, [])
    return mem, lay, grants


def per_call(fn, n: int = 200_000) -> float:
    """Best of five runs, in nanoseconds per call."""
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e9


def main() -> None:
    mem, lay, g = table()
    base = lay.grant_frame_gpa(0)
    mem.write(base + 8 * 8, struct.pack("<HHI", 1, DOMID, DATA))
    results = {"lookup v1": per_call(lambda: g.lookup(8, grantee=DOMID, writable=True))}
    writes: list[tuple[int, int]] = []

    def map_unmap_device() -> None:
        _, handle, _ = g.map(8, GNTMAP_device_map, 0, domid=DOMID, cr3=0, writes=writes)
        g.unmap(handle, 0, DATA << 12, cr3=0, writes=writes)

    def map_unmap_host() -> None:
        writes.clear()
        flags = GNTMAP_host_map | GNTMAP_contains_pte
        _, handle, _ = g.map(8, flags, L1 << 12, domid=DOMID, cr3=0, writes=writes)
        g.unmap(handle, L1 << 12, 0, cr3=0, writes=writes)

    def copy_page() -> None:
        status, src = g.claim_for_copy(8, 0, writable=False, domid=DOMID)
        status, dst = g.claim_for_copy(None, DATA + 1, writable=True, domid=DOMID)
        assert src is not None and dst is not None
        mem.write((dst.frame << 12), mem.read(src.frame << 12, 4096))
        g.release_copy(src)
        g.release_copy(dst)

    results["map+unmap device"] = per_call(map_unmap_device, 20_000)
    results["map+unmap host (PTE)"] = per_call(map_unmap_host, 20_000)
    results["copy one page (gref -> gmfn)"] = per_call(copy_page, 20_000)
    g.set_version(2)
    mem.write(base + 8 * 16, struct.pack("<HH4xQ", 1, DOMID, DATA))
    results["lookup v2"] = per_call(lambda: g.lookup(8, grantee=DOMID, writable=True))
    for name, ns in results.items():
        print(f"{name:32s} {ns / 1000:8.2f} us")
    mem.close()


if __name__ == "__main__":
    main()
