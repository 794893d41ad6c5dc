"""A thin, typed ctypes binding of /dev/kvm (x86_64).

:class:`Kvm`, :class:`Vm` and :class:`Vcpu` wrap the three kinds of KVM file
descriptor; :mod:`~hospes.kvm.structs` mirrors the kernel structures and
:mod:`~hospes.kvm.constants` the ioctl numbers, exit reasons and flags (all
re-exported here).  The binding holds no policy about how a machine is built.
"""

from hospes.kvm import constants, structs
from hospes.kvm.constants import *  # noqa: F401,F403
from hospes.kvm.errors import KvmError, KvmIoctlError, KvmMsrError, KvmUnavailableError
from hospes.kvm.structs import *  # noqa: F401,F403
from hospes.kvm.system import Kvm, Vcpu, Vm

__all__ = [
    "Kvm",
    "Vm",
    "Vcpu",
    "KvmError",
    "KvmIoctlError",
    "KvmMsrError",
    "KvmUnavailableError",
    "constants",
    "structs",
    *constants.__all__,
    *structs.__all__,
]
