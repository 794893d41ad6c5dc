"""sched_op (#29) and set_timer_op (#15): yielding, blocking, polling, shutdown."""

from __future__ import annotations

from typing import TYPE_CHECKING
import struct

from hospes.pv import abi
from hospes.pv.abi import Hypercall
from hospes.pv.errors import Errno, XenError

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu

SCHEDOP_yield = 0
SCHEDOP_block = 1
SCHEDOP_shutdown = 2
SCHEDOP_poll = 3
SCHEDOP_remote_shutdown = 4
SCHEDOP_shutdown_code = 5
SCHEDOP_watchdog = 6
SCHEDOP_pin_override = 7
MAX_POLL_PORTS = 128


def sched_op(vcpu: PvVcpu, cmd: int, arg: int, *_: int) -> int:
    cmd &= 0xFFFFFFFF
    dom = vcpu.domain
    if cmd == SCHEDOP_yield:
        dom.yield_(vcpu)
        return 0
    if cmd == SCHEDOP_block:
        vcpu.upcall_mask = 0
        dom.block(vcpu)
        return 0
    if cmd == SCHEDOP_shutdown:
        (reason,) = struct.unpack("<I", vcpu.read(arg, 4))
        if reason > abi.SHUTDOWN_soft_reset:
            return -Errno.EINVAL
        if reason == abi.SHUTDOWN_suspend:
            return 1  # cancelled: suspend is not supported yet
        dom.shutdown(reason)
        return 0
    if cmd == SCHEDOP_shutdown_code:
        (reason,) = struct.unpack("<I", vcpu.read(arg, 4))
        if dom.shutdown_code is None:  # the first code set is the one reported
            dom.shutdown_code = reason
        return 0
    if cmd == SCHEDOP_poll:
        ports_va, nr, timeout = struct.unpack("<QI4xQ", vcpu.read(arg, 24))
        if nr > MAX_POLL_PORTS:
            return -Errno.EINVAL
        ports = struct.unpack(f"<{nr}I", vcpu.read(ports_va, 4 * nr)) if nr else ()
        for p in ports:
            if p >= 4096:
                raise XenError(Errno.EINVAL)
        dom.poll(vcpu, ports, timeout)
        return 0
    if cmd in (SCHEDOP_remote_shutdown, SCHEDOP_pin_override):
        return -Errno.EPERM
    if cmd == SCHEDOP_watchdog:
        return -Errno.ENOSYS
    return -Errno.ENOSYS


# do_set_timer_op's "huge timeout" rule (xen/common/sched/core.c): a deadline
# with bit 63 set (a negative s_time_t) or 2^50 ns (~13 days) or more ahead is
# taken for a Linux jiffies wrap and fires 100 ms from now instead.
HUGE_TIMEOUT_NS = 1 << 50
HUGE_TIMEOUT_FIRES_AFTER_NS = 100_000_000


def set_timer_op(vcpu: PvVcpu, timeout: int, *_: int) -> int:
    timeout &= 0xFFFF_FFFF_FFFF_FFFF
    if timeout == 0:
        vcpu.domain.timers.set_singleshot(vcpu.id, 0)
        return 0
    now = vcpu.domain.clock.now()
    if timeout >> 63 or timeout - now >= HUGE_TIMEOUT_NS:
        timeout = now + HUGE_TIMEOUT_FIRES_AFTER_NS
    vcpu.domain.timers.set_singleshot(vcpu.id, timeout)
    return 0


HANDLERS = {Hypercall.sched_op: sched_op, Hypercall.set_timer_op: set_timer_op}
