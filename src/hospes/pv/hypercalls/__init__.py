"""Hypercall dispatch: one table from hypercall number to handler.

Each family lives in its own module and exports ``HANDLERS``, a mapping of
:class:`~hospes.pv.abi.Hypercall` to ``handler(vcpu, a1, a2, a3, a4, a5)``.
A handler returns the value for RAX (negative errno on failure), raises
:class:`~hospes.pv.errors.XenError`, or returns ``NO_RETURN`` when it has set
the whole guest state itself (iret). Numbers absent from the table answer
-ENOSYS, as Xen does.
"""

from __future__ import annotations

from typing import Callable

from hospes.pv.hypercalls import (
    console, descriptors, evtchn, grant, memory, mmu, multicall, physdev, sched, traps, vcpu_op, version,
)

Handler = Callable[..., object]


def build_table() -> dict[int, Handler]:
    table: dict[int, Handler] = {}
    for module in (console, descriptors, evtchn, grant, memory, mmu, multicall, physdev, sched, traps,
                   vcpu_op, version):
        for nr, handler in module.HANDLERS.items():
            assert int(nr) not in table, f"hypercall {nr} defined twice"
            table[int(nr)] = handler
    return table
