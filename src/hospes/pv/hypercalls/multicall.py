"""multicall (#13): run a batch, writing each entry's result (pv-abi.md §5.2).

An iret entry takes effect and ends the batch, as in Xen (pv_do_multicall_call
answers mc_exit for it): its result is the RAX of the iret frame, which is also
what the guest finds in RAX when it resumes at the frame's RIP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
import struct

from hospes.pv.abi import Hypercall
from hospes.pv.errors import Errno
from hospes.pv.hypercalls.traps import iret
from hospes.pv.vcpu import NO_RETURN

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu

ENTRY = 64
MAX_ENTRIES = 1024


def multicall(vcpu: PvVcpu, list_va: int, nr: int, *_: int) -> object:
    if nr > MAX_ENTRIES:
        return -Errno.EINVAL
    for i in range(nr):
        va = list_va + i * ENTRY
        op, _result, a1, a2, a3, a4, a5, _a6 = struct.unpack("<8Q", vcpu.read(va, ENTRY))
        if op == Hypercall.iret:
            iret(vcpu)
            vcpu.write(va + 8, struct.pack("<Q", vcpu.regs.rax))
            return NO_RETURN
        result = vcpu.call_hypercall(op, (a1, a2, a3, a4, a5))
        # xen_ulong_t: a result such as get_debugreg's kernel address is not an errno.
        vcpu.write(va + 8, struct.pack("<Q", result & 0xFFFF_FFFF_FFFF_FFFF))
    return 0


HANDLERS = {Hypercall.multicall: multicall}
