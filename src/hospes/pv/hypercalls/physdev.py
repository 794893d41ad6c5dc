"""physdev_op (#33) and vm_assist (#21)."""

from __future__ import annotations

from typing import TYPE_CHECKING
import struct

from hospes.pv.abi import Hypercall
from hospes.pv.errors import Errno, XenError

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu

PHYSDEVOP_set_iopl = 6
PHYSDEVOP_set_iobitmap = 7
VM_ASSIST_TYPES = {0, 1, 2, 3, 4, 5, 32}


def physdev_op(vcpu: PvVcpu, cmd: int, arg: int, *_: int) -> int:
    cmd &= 0xFFFFFFFF
    if cmd == PHYSDEVOP_set_iopl:
        iopl = struct.unpack("<I", vcpu.read(arg, 4))[0]
        if iopl > 3:
            raise XenError(Errno.EINVAL)
        vcpu.iopl = iopl
        return 0
    if cmd == PHYSDEVOP_set_iobitmap:
        vcpu.read(arg, 12)
        return 0
    return -Errno.ENOSYS


def vm_assist(vcpu: PvVcpu, cmd: int, type_: int, *_: int) -> int:
    if type_ & 0xFFFFFFFF not in VM_ASSIST_TYPES:
        return -Errno.EINVAL
    if cmd & 0xFFFFFFFF not in (0, 1):
        return -Errno.ENOSYS
    if cmd == 0:
        vcpu.domain.vm_assist.add(type_)
    else:
        vcpu.domain.vm_assist.discard(type_)
    return 0


HANDLERS = {Hypercall.physdev_op: physdev_op, Hypercall.vm_assist: vm_assist}
