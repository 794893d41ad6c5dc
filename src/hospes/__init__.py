"""Hospes: a paravirtualizing hypervisor in Python that runs Xen PV guests on KVM."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hospes.version import __version__

if TYPE_CHECKING:
    from hospes.toolstack.client import Hospes


def connect(*args: Any, **kwargs: Any) -> Hospes:
    """Connect to hospesd (see hospes.toolstack.client.connect and docs/python-api.md)."""
    from hospes.toolstack.client import connect as _connect

    return _connect(*args, **kwargs)


__all__ = ["__version__", "connect"]
