"""vcpu_op (#24): per-vCPU registration, timers and bring-up (pv-abi.md §5.2, §12)."""

from __future__ import annotations

from typing import TYPE_CHECKING
import struct

from hospes.pv.abi import Hypercall
from hospes.pv.errors import Errno, XenError
from hospes.pv.guestvirt import guest_handle_ok

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu

VCPUOP_initialise = 0
VCPUOP_up = 1
VCPUOP_down = 2
VCPUOP_is_up = 3
VCPUOP_get_runstate_info = 4
VCPUOP_register_runstate_memory_area = 5
VCPUOP_set_periodic_timer = 6
VCPUOP_stop_periodic_timer = 7
VCPUOP_set_singleshot_timer = 8
VCPUOP_stop_singleshot_timer = 9
VCPUOP_register_vcpu_info = 10
VCPUOP_send_nmi = 11
VCPUOP_get_physid = 12
VCPUOP_register_vcpu_time_memory_area = 13
VCPU_SSHOTTMR_future = 1
STIME_DELTA_MAX = (1 << 62) - 1  # xen/include/xen/time.h: the longest period Xen accepts


def vcpu_op(vcpu: PvVcpu, cmd: int, target_id: int, arg: int, *_: int) -> int:
    cmd &= 0xFFFFFFFF
    target_id &= 0xFFFFFFFF
    dom = vcpu.domain
    if target_id >= len(dom.vcpus):
        return -Errno.ENOENT
    target = dom.vcpus[target_id]
    if cmd == VCPUOP_is_up:
        return 1 if target.online else 0
    if cmd == VCPUOP_register_runstate_memory_area:
        (va,) = struct.unpack("<Q", vcpu.read(arg, 8))
        if not guest_handle_ok(va):
            return -Errno.EFAULT
        target.runstate_va = va
        dom.write_runstate(target)
        return 0
    if cmd == VCPUOP_get_runstate_info:
        vcpu.write(arg, dom.runstate_bytes(target))
        return 0
    if cmd == VCPUOP_register_vcpu_info:
        mfn, offset = struct.unpack("<QI", vcpu.read(arg, 12))
        if target.vcpu_info_registered:
            return -Errno.EBUSY
        if mfn >= dom.layout.ram_pages or offset > 4096 - 64 or offset & 7:
            return -Errno.EINVAL
        dom.move_vcpu_info(target, (mfn << 12) + offset)
        return 0
    if cmd == VCPUOP_stop_periodic_timer:
        dom.timers.set_periodic(target_id, 0)
        return 0
    if cmd == VCPUOP_set_periodic_timer:
        (period,) = struct.unpack("<Q", vcpu.read(arg, 8))
        if period < 1_000_000 or period > STIME_DELTA_MAX:
            return -Errno.EINVAL
        dom.timers.set_periodic(target_id, period)
        return 0
    if cmd == VCPUOP_set_singleshot_timer:
        if target is not vcpu:
            return -Errno.EINVAL
        timeout, flags = struct.unpack("<QI", vcpu.read(arg, 12))
        if timeout < dom.clock.now():
            if flags & VCPU_SSHOTTMR_future:
                return -Errno.ETIME
            # Already expired: Xen sends the timer event at once. A past deadline
            # does that here too, except 0, which set_singleshot takes as "stop".
            timeout = timeout or 1
        dom.timers.set_singleshot(target_id, timeout, force=True)
        return 0
    if cmd == VCPUOP_stop_singleshot_timer:
        if target is not vcpu:
            return -Errno.EINVAL
        dom.timers.set_singleshot(target_id, 0)
        return 0
    if cmd == VCPUOP_initialise:
        return dom.initialise_vcpu(target, arg, vcpu)
    if cmd == VCPUOP_up:
        if not target.initialised:
            return -Errno.EINVAL
        dom.start_vcpu(target)
        return 0
    if cmd == VCPUOP_down:
        dom.stop_vcpu(target)
        return 0
    if cmd == VCPUOP_register_vcpu_time_memory_area:
        (va,) = struct.unpack("<Q", vcpu.read(arg, 8))
        if not guest_handle_ok(va):
            return -Errno.EFAULT
        target.time_area_va = va    # 0 unregisters
        dom.write_time_area(target)
        return 0
    if cmd == VCPUOP_send_nmi:
        return -Errno.ENOSYS
    raise XenError(Errno.ENOSYS)


HANDLERS = {Hypercall.vcpu_op: vcpu_op}
