"""Kernel-image loading for Xen PV64 guests: vmlinux, bzImage or compressed vmlinux in,
checked segments and Xen notes out. Pure Python, no KVM.
"""

from hospes.pv.image.errors import ImageError
from hospes.pv.image.kernel import PvKernel, Segment, load_pv_kernel
from hospes.pv.image.xen_notes import XenElfNote, XenNotes

__all__ = ["ImageError", "PvKernel", "Segment", "XenElfNote", "XenNotes", "load_pv_kernel"]
