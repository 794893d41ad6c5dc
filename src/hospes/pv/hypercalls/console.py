"""console_io (#18): the hypervisor console, Linux's earliest output channel."""

from __future__ import annotations

from typing import TYPE_CHECKING
from hospes.pv.abi import Hypercall
from hospes.pv.errors import Errno

if TYPE_CHECKING:
    from hospes.pv.vcpu import PvVcpu

CONSOLEIO_write = 0
CONSOLEIO_read = 1
MAX_WRITE = 16384


def console_io(vcpu: PvVcpu, cmd: int, count: int, buf: int, *_: int) -> int:
    cmd &= 0xFFFFFFFF
    count &= 0xFFFFFFFF
    if cmd == CONSOLEIO_write:
        if count > MAX_WRITE:
            return -Errno.EINVAL
        vcpu.domain.console_write(vcpu.read(buf, count))
        return 0
    if cmd == CONSOLEIO_read:
        return 0
    return -Errno.ENOSYS


HANDLERS = {Hypercall.console_io: console_io}
