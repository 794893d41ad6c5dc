"""multicall (#13): run a batch, writing each entry's result (pv-abi.md §5.2).

An iret entry takes effect and ends the batch, as in Xen (pv_do_multicall_call
answers mc_exit for it): its result is the RAX of the iret frame, which is also
what the guest finds in RAX when it resumes at the frame's RIP.

A batch of any length is preemptible, as Xen's do_multicall is: after an entry
it may stop (``PvVcpu.preempt_check``) and continue with the entries left
(the list pointer advanced, the count reduced). An entry that itself stopped
early gets its continuation's arguments written back into its ``args``, and
the multicall continues from that entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
import struct

from hospes.pv.abi import Hypercall
from hospes.pv.hypercalls.traps import iret
from hospes.pv.vcpu import NO_RETURN, Continuation

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu

ENTRY = 64        # struct multicall_entry: op, result, args[6]
U64 = 0xFFFF_FFFF_FFFF_FFFF


def multicall(vcpu: PvVcpu, list_va: int, nr: int, *_: int) -> object:
    nr &= 0xFFFFFFFF   # unsigned int nr_calls
    for i in range(nr):
        va = (list_va + i * ENTRY) & U64
        op, _result, a1, a2, a3, a4, a5, _a6 = struct.unpack("<8Q", vcpu.read(va, ENTRY))
        if op == Hypercall.iret:
            iret(vcpu)
            vcpu.write(va + 8, struct.pack("<Q", vcpu.regs.rax))
            return NO_RETURN
        result = vcpu.call_hypercall(op, (a1, a2, a3, a4, a5))
        if isinstance(result, Continuation):
            vcpu.write(va + 16, struct.pack(f"<{len(result.args)}Q", *(a & U64 for a in result.args)))
            return Continuation(va, nr - i)
        # xen_ulong_t: a result such as get_debugreg's kernel address is not an errno.
        vcpu.write(va + 8, struct.pack("<Q", result & U64))
        if i + 1 < nr and vcpu.preempt_check():
            return Continuation((va + ENTRY) & U64, nr - i - 1)
    return 0


HANDLERS = {Hypercall.multicall: multicall}
