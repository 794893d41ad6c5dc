"""event_channel_op (#32): decoding onto :class:`hospes.pv.evtchn.EventChannels` (2-level and FIFO)."""

from __future__ import annotations

from typing import TYPE_CHECKING
import struct

from hospes.pv.abi import DOMID_SELF, Hypercall
from hospes.pv.errors import Errno, XenError

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu

EVTCHNOP_bind_interdomain = 0
EVTCHNOP_bind_virq = 1
EVTCHNOP_bind_pirq = 2
EVTCHNOP_close = 3
EVTCHNOP_send = 4
EVTCHNOP_status = 5
EVTCHNOP_alloc_unbound = 6
EVTCHNOP_bind_ipi = 7
EVTCHNOP_bind_vcpu = 8
EVTCHNOP_unmask = 9
EVTCHNOP_reset = 10
EVTCHNOP_init_control = 11
EVTCHNOP_expand_array = 12
EVTCHNOP_set_priority = 13


def _u32(vcpu: PvVcpu, va: int) -> int:
    return int(struct.unpack("<I", vcpu.read(va, 4))[0])


def event_channel_op(vcpu: PvVcpu, cmd: int, arg: int, *_: int) -> int:
    cmd &= 0xFFFFFFFF
    ev = vcpu.domain.evtchn
    if cmd == EVTCHNOP_send:
        ev.send(_u32(vcpu, arg))
        return 0
    if cmd == EVTCHNOP_bind_virq:
        virq, target = struct.unpack("<II", vcpu.read(arg, 8))
        port = ev.bind_virq(virq, target)
        vcpu.write(arg + 8, struct.pack("<I", port))
        return 0
    if cmd == EVTCHNOP_bind_ipi:
        target = _u32(vcpu, arg)
        port = ev.bind_ipi(target)
        vcpu.write(arg + 4, struct.pack("<I", port))
        return 0
    if cmd == EVTCHNOP_alloc_unbound:
        dom, remote = struct.unpack("<HH", vcpu.read(arg, 4))
        if dom not in (DOMID_SELF, vcpu.domain.domid):
            return -Errno.EPERM
        port = ev.alloc_unbound(remote)
        vcpu.write(arg + 4, struct.pack("<I", port))
        return 0
    if cmd == EVTCHNOP_close:
        ev.close(_u32(vcpu, arg))
        return 0
    if cmd == EVTCHNOP_status:
        dom, port = struct.unpack("<H2xI", vcpu.read(arg, 8))
        if dom not in (DOMID_SELF, vcpu.domain.domid):
            return -Errno.EPERM
        st = ev.status(port)
        out = struct.pack("<II", int(st.status), st.vcpu)
        if st.virq or st.status == 4:
            out += struct.pack("<I4x", st.virq)
        else:
            out += struct.pack("<HxxI", st.dom, st.port)
        vcpu.write(arg + 8, out)
        return 0
    if cmd == EVTCHNOP_bind_vcpu:
        port, target = struct.unpack("<II", vcpu.read(arg, 8))
        ev.bind_vcpu(port, target)
        return 0
    if cmd == EVTCHNOP_unmask:
        ev.unmask(_u32(vcpu, arg))
        return 0
    if cmd == EVTCHNOP_bind_interdomain:
        return -Errno.EPERM
    if cmd == EVTCHNOP_init_control:
        # struct evtchn_init_control: control_gfn u64, offset u32, vcpu u32 (IN); link_bits u8 @16 (OUT)
        gfn, offset, target = struct.unpack("<QII", vcpu.read(arg, 16))
        link_bits = ev.init_control(target, gfn, offset)
        vcpu.write(arg + 16, struct.pack("<B7x", link_bits))  # copied back only on success, as Xen
        return 0
    if cmd == EVTCHNOP_expand_array:
        (gfn,) = struct.unpack("<Q", vcpu.read(arg, 8))
        ev.expand_array(gfn)
        return 0
    if cmd == EVTCHNOP_set_priority:
        port, priority = struct.unpack("<II", vcpu.read(arg, 8))
        ev.set_priority(port, priority)
        return 0
    if cmd == EVTCHNOP_bind_pirq:
        return -Errno.ENOSYS
    if cmd == EVTCHNOP_reset:
        return -Errno.EPERM
    raise XenError(Errno.ENOSYS)


HANDLERS = {Hypercall.event_channel_op: event_channel_op}
