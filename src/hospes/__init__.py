"""Hospes: a paravirtualizing hypervisor in Python that runs Xen PV guests on KVM."""

__version__ = "0.1.0"


def connect(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Connect to hospesd (see hospes.toolstack.client.connect and docs/python-api.md)."""
    from hospes.toolstack.client import connect as _connect

    return _connect(*args, **kwargs)
