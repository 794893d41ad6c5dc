"""Errors of the in-process xenstore.

Xenstore reports failures to clients as the *name* of an errno (``"ENOENT"``),
not as a number (xs_wire.h, ``xsd_errors[]``).  Linux only understands the
names below; anything else it turns into EINVAL, so the store never produces
any other name (Xen's own ``EPERM`` for "a guest may not change a node's
owner" becomes ``EACCES`` here).
"""

from __future__ import annotations

from hospes.errors import HospesError

#: The error names Linux 6.1 understands, in the order of ``xsd_errors[]``.
XS_ERROR_NAMES: tuple[str, ...] = (
    "EINVAL",
    "EACCES",
    "EEXIST",
    "EISDIR",
    "ENOENT",
    "ENOMEM",
    "ENOSPC",
    "EIO",
    "ENOTEMPTY",
    "ENOSYS",
    "EROFS",
    "EBUSY",
    "EAGAIN",
    "EISCONN",
    "E2BIG",
)

_EXPLANATIONS: dict[str, str] = {
    "EINVAL": "Invalid xenstore request or path",
    "EACCES": "Permission denied on a xenstore node",
    "EEXIST": "The xenstore watch already exists",
    "EISDIR": "The xenstore node is a directory",
    "ENOENT": "No such xenstore node, watch or transaction",
    "ENOMEM": "Xenstore is out of memory",
    "ENOSPC": "A xenstore quota is exhausted",
    "EIO": "Internal xenstore error",
    "ENOTEMPTY": "The xenstore node is not empty",
    "ENOSYS": "Unsupported xenstore request",
    "EROFS": "The xenstore is read-only",
    "EBUSY": "Xenstore is busy",
    "EAGAIN": "The xenstore transaction conflicted with another change; retry it",
    "EISCONN": "The xenstore connection is already established",
    "E2BIG": "The xenstore reply or request is too big",
}


class StoreError(HospesError):
    """A xenstore operation failed; ``errno_name`` is what the client is told.

    ``errno_name`` is always one of :data:`XS_ERROR_NAMES`.
    """

    def __init__(self, errno_name: str, detail: str = "") -> None:
        if errno_name not in XS_ERROR_NAMES:
            errno_name = "EINVAL"
        self.errno_name = errno_name
        self.detail = detail
        text = _EXPLANATIONS[errno_name] + f" ({errno_name})"
        if detail:
            text += f": {detail}"
        super().__init__(text)
