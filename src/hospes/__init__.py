"""Hospes: a paravirtualizing hypervisor in Python that runs Xen PV guests on KVM."""

__version__ = "0.1.0"
