"""Errors of the PV layer.

:class:`XenError` is a failure the *guest* caused (bad port, bad vCPU, ...).
The hypercall layer catches it and returns ``-errno`` to the guest; it must
never escape into the vCPU exit loop. Its values are Xen's, which differ from
the host's ``errno`` module for some names, so they live here.
"""

from __future__ import annotations

from enum import IntEnum

from hospes.errors import HospesError


class Errno(IntEnum):
    """Xen's error numbers (xen/include/public/errno.h, "values originating from
    x86 Linux"). A hypercall returns the negated value."""

    EPERM = 1
    ENOENT = 2
    ESRCH = 3
    EINTR = 4  # internal to Xen, never returned to a guest
    EIO = 5
    ENXIO = 6
    E2BIG = 7
    ENOEXEC = 8
    EBADF = 9
    ECHILD = 10
    EAGAIN = 11
    EWOULDBLOCK = 11  # alias of EAGAIN
    ENOMEM = 12
    EACCES = 13
    EFAULT = 14
    EBUSY = 16
    EEXIST = 17
    EXDEV = 18
    ENODEV = 19
    ENOTDIR = 20
    EISDIR = 21
    EINVAL = 22
    ENFILE = 23
    EMFILE = 24
    ENOSPC = 28
    EROFS = 30
    EMLINK = 31
    EDOM = 33
    ERANGE = 34
    EDEADLK = 35
    EDEADLOCK = 35  # alias of EDEADLK
    ENAMETOOLONG = 36
    ENOLCK = 37
    ENOSYS = 38
    ENOTEMPTY = 39
    ENODATA = 61
    ETIME = 62
    EBADMSG = 74
    EOVERFLOW = 75
    EILSEQ = 84
    ERESTART = 85  # internal to Xen, never returned to a guest
    ENOTSOCK = 88
    EMSGSIZE = 90
    EOPNOTSUPP = 95
    EADDRINUSE = 98
    EADDRNOTAVAIL = 99
    ENOBUFS = 105
    EISCONN = 106
    ENOTCONN = 107
    ETIMEDOUT = 110
    ECONNREFUSED = 111


class XenError(HospesError):
    """A guest-caused failure of a hypercall; the guest sees ``-errno``."""

    errno: Errno

    def __init__(self, errno: Errno, message: str | None = None) -> None:
        super().__init__(message or f"Hypercall failed with {errno.name} ({errno.value})")
        self.errno = errno


class RestoreError(HospesError):
    """A saved PV state record does not fit the domain being restored."""
