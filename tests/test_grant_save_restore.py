"""Grant mappings survive a save and restore: the maptrack, the pins and the
type references come back, and the restored guest unmaps what it mapped before."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

from hospes.domain import Domain, DomainConfig, DomainState, ShutdownReason
from hospes.pv.grant import GNTMAP_device_map, GNTMAP_host_map, GNTMAP_readonly
from hospes.state import decode, encode

sys.path.insert(0, str(Path(__file__).resolve().parent / "guests"))
import build as guest_build  # noqa: E402

pytestmark = [pytest.mark.kvm]


class Console:
    def __init__(self) -> None:
        self.data = b""
        self.cond = threading.Condition()

    def __call__(self, data: bytes) -> None:
        with self.cond:
            self.data += data
            self.cond.notify_all()

    def wait_for(self, needle: bytes, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: needle in self.data, timeout)


def test_mappings_made_before_a_save_are_unmapped_after_the_restore() -> None:
    cfg = DomainConfig(kernel=guest_build.build_guest("grants_save"), memory_mib=64, name="grants-save")
    first = Console()
    dom = Domain(cfg, console_out=first)
    saved: list[tuple[DomainState, bytes, dict[int, int], dict[int, int]]] = []

    def save_when_mapped() -> None:
        try:
            if first.wait_for(b"MAPPED", 60):
                state = dom.save()
                saved.append((state, dom.save_memory(), dict(dom.pv.mmu.count), dict(dom.pv.mmu.held)))
        finally:
            dom.destroy()

    helper = threading.Thread(target=save_when_mapped, daemon=True)
    helper.start()
    try:
        assert dom.run().reason is ShutdownReason.DESTROYED
    finally:
        helper.join(10)
        dom.close()
    assert saved, f"the guest never mapped: {first.data[-2000:]!r}"
    assert b"host_mapping_kept" not in first.data
    state, memory, counts, held = saved[0]
    state = decode(DomainState, json.loads(json.dumps(encode(state))))
    kinds = sorted(flags & (GNTMAP_host_map | GNTMAP_device_map | GNTMAP_readonly)
                   for _h, _ref, flags, _frame in state.pv.grants.maptrack)
    assert kinds == [GNTMAP_host_map, GNTMAP_device_map | GNTMAP_readonly]
    host_frame = next(frame for _h, _r, flags, frame in state.pv.grants.maptrack if flags & GNTMAP_host_map)
    # the mapping's hold, its L1 entry's reference and the guest's own writable mapping of the page
    assert held.get(host_frame) == 1 and counts[host_frame] == 3

    second = Console()
    again = Domain(cfg, console_out=second, saved=(state, memory))
    try:
        assert again.pv.mmu.held == held and again.pv.mmu.count == counts   # the writable mapping's hold is back
        result = again.run()
    finally:
        again.close()
    out = second.data.decode(errors="replace")
    assert result.reason is ShutdownReason.POWEROFF, (result.message, out[-2000:])
    assert "FAIL" not in out and "DONE" in out, out[-2000:]
    for name in ("host_mapping_kept", "writes_reach_the_granted_page", "flags_kept", "still_not_a_page_table",
                 "unmapped_after_restore", "pin_after_unmap"):
        assert f"PASS {name}" in out, out[-2000:]
