"""xen_version (#17): who we claim to be, and the feature bits (pv-abi.md §5.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING
import struct

from hospes.pv import abi
from hospes.pv.abi import Hypercall
from hospes.pv.errors import Errno, XenError

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu


def _string(vcpu: PvVcpu, arg: int, text: str, size: int) -> int:
    data = text.encode()[: size - 1]
    vcpu.write(arg, data + b"\0" * (size - len(data)))
    return 0


def xen_version(vcpu: PvVcpu, cmd: int, arg: int, *_: int) -> int:
    cmd &= 0xFFFFFFFF
    if cmd == 0:
        return (abi.XEN_MAJOR << 16) | abi.XEN_MINOR
    if cmd == 1:
        return _string(vcpu, arg, abi.XEN_EXTRAVERSION, 16)
    if cmd == 2:
        info = b"gcc".ljust(64, b"\0") + b"hospes".ljust(16, b"\0") + b"hospes".ljust(32, b"\0") + b"".ljust(32, b"\0")
        vcpu.write(arg, info)
        return 0
    if cmd == 3:
        return _string(vcpu, arg, abi.XEN_CAPABILITIES, 1024)
    if cmd == 4:
        return _string(vcpu, arg, "hospes", 64)
    if cmd == 5:
        vcpu.write(arg, struct.pack("<Q", abi.HYPERVISOR_VIRT_START))
        return 0
    if cmd == 6:
        idx = struct.unpack("<I", vcpu.read(arg, 4))[0]
        if idx != 0:
            raise XenError(Errno.EINVAL)
        vcpu.write(arg + 4, struct.pack("<I", abi.FEATURES_SUBMAP0))
        return 0
    if cmd == 7:
        return 4096
    if cmd == 8:
        vcpu.write(arg, vcpu.domain.uuid.bytes)
        return 0
    if cmd == 9:
        return _string(vcpu, arg, vcpu.domain.cmdline, 1024)
    return -Errno.ENOSYS


HANDLERS = {Hypercall.xen_version: xen_version}
