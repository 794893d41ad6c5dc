"""Errors raised by the KVM binding.

Every failure of /dev/kvm surfaces as a :class:`KvmError` whose message starts
with a capital letter, names the ioctl (or file) that failed and says why.
"""

from __future__ import annotations

import errno as _errno
import os

from hospes.errors import HospesError


class KvmError(HospesError):
    """Something about /dev/kvm failed."""


class KvmUnavailableError(KvmError):
    """/dev/kvm cannot be opened or speaks an API this binding does not know."""


class KvmIoctlError(KvmError):
    """An ioctl on a KVM file descriptor returned an error.

    ``ioctl`` is the ioctl's name (e.g. ``"KVM_SET_SREGS"``) and ``errno`` the
    error number the kernel returned.
    """

    def __init__(self, ioctl: str, err: int, detail: str = "") -> None:
        self.ioctl = ioctl
        self.errno = err
        name = _errno.errorcode.get(err, f"errno {err}")
        where = f" ({detail})" if detail else ""
        hint = _HINTS.get((ioctl, err)) or _HINTS.get(("", err), "")
        super().__init__(
            f"{ioctl} failed{where}: {os.strerror(err)} ({name})"
            + (f"; {hint}" if hint else "")
        )


class KvmMsrError(KvmError):
    """KVM_GET_MSRS / KVM_SET_MSRS handled fewer MSRs than asked.

    ``index`` is the first MSR that KVM refused.
    """

    def __init__(self, ioctl: str, index: int, done: int, asked: int) -> None:
        self.ioctl = ioctl
        self.index = index
        verb = "read" if ioctl == "KVM_GET_MSRS" else "write"
        super().__init__(
            f"{ioctl} failed: KVM refused to {verb} MSR {index:#x} "
            f"(handled {done} of {asked} MSRs)"
        )


# Short hints for the errors one actually meets while writing a VMM.  Keyed by
# (ioctl name, errno); an empty ioctl name applies to every ioctl.
_HINTS: dict[tuple[str, int], str] = {
    ("KVM_CREATE_VCPU", _errno.EEXIST): "a vCPU with this id already exists",
    ("KVM_SET_USER_MEMORY_REGION", _errno.EEXIST):
        "the region overlaps another memory slot",
    ("KVM_SET_USER_MEMORY_REGION", _errno.EINVAL):
        "addresses and size must be page aligned and the flags known",
    ("KVM_GET_DIRTY_LOG", _errno.ENOENT):
        "the slot does not exist or was registered without KVM_MEM_LOG_DIRTY_PAGES",
    ("", _errno.EBADF): "the file descriptor is closed",
    ("", _errno.ENOTTY): "this file descriptor does not support the ioctl",
    ("", _errno.EFAULT): "the kernel could not access a buffer this process passed",
}
