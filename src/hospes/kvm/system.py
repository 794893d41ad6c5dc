"""The /dev/kvm system, VM and vCPU file descriptors as Python objects.

A thin binding: each method is one ioctl (or a buffer-growing loop around
one), with no policy about how a machine is built.

Why every ioctl goes through ctypes and not :func:`fcntl.ioctl`:

* ``KVM_RUN`` blocks for as long as the guest runs.  A ctypes call into libc's
  ``ioctl`` releases the GIL for its whole duration, so other Python threads
  (device back ends, the console) keep running while a vCPU is in the guest.
* A signal sent to the vCPU thread (the usual way to kick a vCPU out of the
  guest) makes ``KVM_RUN`` return ``EINTR``.  That is an event, not an error:
  :meth:`Vcpu.run` reports it as ``KVM_EXIT_INTR``.  ``fcntl.ioctl`` happens to
  surface ``EINTR`` on Python 3.11, but Python 3.14 retries ioctls interrupted
  by a signal (PEP 475 style), which would swallow the kick and re-enter the
  guest.  Calling libc ourselves keeps the behaviour the same on every Python.
* ``fcntl.ioctl`` takes an integer argument as a C ``int``: values of 2**31 and
  above (e.g. a high ``KVM_SET_TSS_ADDR``) overflow.  Here integers travel as
  a pointer-sized value.
* Large or variable-sized arguments (``kvm_cpuid2`` with many entries,
  ``kvm_msrs``) are built as ctypes buffers and passed by address, never copied
  through ``bytes``.

The hot path (:meth:`Vcpu.run`, :attr:`Vcpu.sync`, :attr:`Vcpu.run_struct`)
allocates nothing of its own: the ctypes function, the ``kvm_run`` view over
the vCPU's mmap and the sync-regs view are created once per vCPU.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from hospes.kvm import constants as c
from hospes.kvm.errors import (
    KvmError,
    KvmIoctlError,
    KvmMsrError,
    KvmUnavailableError,
)
from hospes.kvm.structs import (
    KvmCpuid2,
    KvmCpuidEntry2,
    KvmDebugregs,
    KvmDeviceAttr,
    KvmDirtyLog,
    KvmEnableCap,
    KvmFpu,
    KvmGuestDebug,
    KvmMpState,
    KvmMsrEntry,
    KvmMsrList,
    KvmMsrs,
    KvmRegs,
    KvmRun,
    KvmSregs,
    KvmSyncRegs,
    KvmTranslation,
    KvmUserspaceMemoryRegion,
    KvmVcpuEvents,
    KvmXcrs,
    KvmXsave,
)

__all__ = ["Kvm", "Vm", "Vcpu"]

PAGE_SIZE = 4096

# Our own CDLL instance, so no other module's argtypes can interfere.
_libc = ctypes.CDLL(None, use_errno=True)
_ioctl_fn = _libc.ioctl
_ioctl_fn.restype = ctypes.c_int
_ioctl_fn.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)

_KVM_RUN = c.KVM_RUN
_KVM_EXIT_INTR = c.KVM_EXIT_INTR
_EINTR = errno.EINTR


_STATS_HEADER = struct.Struct("<6I")       # flags, name_size, num_desc, id_offset, desc_offset, data_offset
_STATS_DESC = struct.Struct("<IhHII")      # flags, exponent, size, offset, bucket_size; then the name
_STATS_TYPE_MASK = 0xF                     # KVM_STATS_TYPE_*: 0 is cumulative


def _parse_stats(stats_fd: int) -> dict[str, int]:
    """The single-valued cumulative counters of a KVM binary-stats fd (Documentation/virt/kvm/api.rst)."""
    header = os.pread(stats_fd, _STATS_HEADER.size, 0)
    _, name_size, num_desc, _, desc_offset, data_offset = _STATS_HEADER.unpack(header)
    step = _STATS_DESC.size + name_size
    descs = os.pread(stats_fd, step * num_desc, desc_offset)
    wanted: list[tuple[str, int]] = []
    end = 0
    for i in range(num_desc):
        flags, _, size, offset, _ = _STATS_DESC.unpack_from(descs, i * step)
        if flags & _STATS_TYPE_MASK == 0 and size == 1:
            name = descs[i * step + _STATS_DESC.size:(i + 1) * step].split(b"\0", 1)[0].decode()
            wanted.append((name, offset))
        end = max(end, offset + 8 * size)
    data = os.pread(stats_fd, end, data_offset)
    return {name: struct.unpack_from("<Q", data, offset)[0] for name, offset in wanted}


def _ioctl(fd: int, request: int, arg: Any, name: str, detail: str = "") -> int:
    """ioctl(fd, request, arg) -> its non-negative result, or KvmIoctlError.

    ``arg`` is None, an int (passed by value) or a ``ctypes.byref``/pointer.
    EINTR is retried: only KVM_RUN treats it as an event (see Vcpu.run).
    """
    while True:
        ret = _ioctl_fn(fd, request, arg)
        if ret >= 0:
            return ret
        err = ctypes.get_errno()
        if err != _EINTR:
            raise KvmIoctlError(name, err, detail)


@functools.lru_cache(maxsize=64)
def _flex_type(header: type, entry: Any, count: int) -> Any:
    """A Structure type: ``hdr`` (a ``header``) then ``entries`` (``count`` ``entry``s).

    This is how a C structure ending in a flexible array is laid out.
    """
    return type(
        f"{header.__name__}_{count}",
        (ctypes.Structure,),
        {"_fields_": [("hdr", header), ("entries", entry * count)]},
    )


def _enable_cap(fd: int, cap: int, args: Sequence[int], flags: int) -> None:
    if len(args) > 4:
        raise ValueError(f"KVM_ENABLE_CAP takes at most 4 arguments, got {len(args)}")
    ec = KvmEnableCap(cap=cap, flags=flags)
    for i, arg in enumerate(args):
        ec.args[i] = arg
    _ioctl(fd, c.KVM_ENABLE_CAP, ctypes.byref(ec), "KVM_ENABLE_CAP", f"capability {cap}")


def _get_cpuid(fd: int, request: int, name: str, count: int = 64) -> list[KvmCpuidEntry2]:
    """Run a kvm_cpuid2-filling ioctl, doubling the buffer on E2BIG."""
    while True:
        buf = _flex_type(KvmCpuid2, KvmCpuidEntry2, count)()
        buf.hdr.nent = count
        try:
            _ioctl(fd, request, ctypes.byref(buf), name)
        except KvmIoctlError as exc:
            if exc.errno != errno.E2BIG or count >= 1 << 16:
                raise
            count *= 2
            continue
        return [KvmCpuidEntry2.from_buffer_copy(e) for e in buf.entries[: buf.hdr.nent]]


def _get_msr_list(fd: int, request: int, name: str) -> list[int]:
    """Run a kvm_msr_list-filling ioctl; KVM reports the needed size on E2BIG."""
    count = 0
    while True:
        buf = _flex_type(KvmMsrList, ctypes.c_uint32, count)()
        buf.hdr.nmsrs = count
        try:
            _ioctl(fd, request, ctypes.byref(buf), name)
        except KvmIoctlError as exc:
            if exc.errno != errno.E2BIG or buf.hdr.nmsrs <= count:
                raise
            count = buf.hdr.nmsrs
            continue
        return list(buf.entries[: buf.hdr.nmsrs])


_Self = TypeVar("_Self", bound="_FdOwner")


class _FdOwner:
    """Owns one KVM file descriptor: close() once, also as a context manager or on collection."""

    fd: int

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class Kvm(_FdOwner):
    """The /dev/kvm system file descriptor."""

    fd: int
    path: str
    api_version: int
    vcpu_mmap_size: int

    def __init__(self, path: str = "/dev/kvm") -> None:
        self.path = path
        self.fd = -1
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailableError(
                f"Cannot open {path}: it does not exist; load the KVM kernel "
                "module or make the device available (e.g. to the container)"
            ) from None
        except PermissionError:
            raise KvmUnavailableError(
                f"Cannot open {path}: permission denied; run as root or as a "
                f"member of the group that owns {path} (usually 'kvm')"
            ) from None
        except OSError as exc:
            raise KvmUnavailableError(f"Cannot open {path}: {exc.strerror}") from None
        try:
            try:
                version = _ioctl(fd, c.KVM_GET_API_VERSION, None, "KVM_GET_API_VERSION")
            except KvmIoctlError as exc:
                raise KvmUnavailableError(
                    f"Cannot use {path}: it is not a KVM device ({exc})"
                ) from None
            if version != c.KVM_API_VERSION:
                raise KvmUnavailableError(
                    f"Cannot use {path}: it speaks KVM API version {version}, "
                    f"but this binding needs version {c.KVM_API_VERSION}"
                )
            self.vcpu_mmap_size = _ioctl(
                fd, c.KVM_GET_VCPU_MMAP_SIZE, None, "KVM_GET_VCPU_MMAP_SIZE"
            )
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.api_version = version

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on /dev/kvm: 0 if absent, else >0 (often a count)."""
        return _ioctl(self.fd, c.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def supported_cpuid(self) -> list[KvmCpuidEntry2]:
        """KVM_GET_SUPPORTED_CPUID: the CPUID leaves KVM can give a guest."""
        return _get_cpuid(self.fd, c.KVM_GET_SUPPORTED_CPUID, "KVM_GET_SUPPORTED_CPUID")

    def emulated_cpuid(self) -> list[KvmCpuidEntry2]:
        """KVM_GET_EMULATED_CPUID: the CPUID features KVM emulates."""
        return _get_cpuid(self.fd, c.KVM_GET_EMULATED_CPUID, "KVM_GET_EMULATED_CPUID")

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM_GET/SET_MSRS can save and restore."""
        return _get_msr_list(self.fd, c.KVM_GET_MSR_INDEX_LIST, "KVM_GET_MSR_INDEX_LIST")

    def msr_feature_index_list(self) -> list[int]:
        """KVM_GET_MSR_FEATURE_INDEX_LIST: the feature MSRs KVM reports."""
        return _get_msr_list(
            self.fd, c.KVM_GET_MSR_FEATURE_INDEX_LIST, "KVM_GET_MSR_FEATURE_INDEX_LIST"
        )

    def create_vm(self, vm_type: int = 0) -> Vm:
        """KVM_CREATE_VM."""
        fd = _ioctl(self.fd, c.KVM_CREATE_VM, vm_type, "KVM_CREATE_VM")
        return Vm(fd, self.vcpu_mmap_size)



class Vm(_FdOwner):
    """A VM file descriptor (from :meth:`Kvm.create_vm`)."""

    fd: int

    def __init__(self, fd: int, vcpu_mmap_size: int) -> None:
        self.fd = fd
        self.vcpu_mmap_size = vcpu_mmap_size
        # slot -> pages, to size dirty bitmaps safely (KVM writes a whole slot's).
        self._slot_pages: dict[int, int] = {}

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (answers for this VM)."""
        return _ioctl(self.fd, c.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the VM fd, with up to four arguments."""
        _enable_cap(self.fd, cap, args, flags)

    def set_user_memory_region(
        self,
        slot: int,
        guest_phys_addr: int,
        memory_size: int,
        userspace_addr: int,
        flags: int = 0,
    ) -> None:
        """KVM_SET_USER_MEMORY_REGION; ``memory_size`` 0 deletes the slot."""
        region = KvmUserspaceMemoryRegion(
            slot=slot,
            flags=flags,
            guest_phys_addr=guest_phys_addr,
            memory_size=memory_size,
            userspace_addr=userspace_addr,
        )
        _ioctl(
            self.fd,
            c.KVM_SET_USER_MEMORY_REGION,
            ctypes.byref(region),
            "KVM_SET_USER_MEMORY_REGION",
            f"slot {slot}, guest {guest_phys_addr:#x}, size {memory_size:#x}, "
            f"flags {flags:#x}",
        )
        if memory_size:
            self._slot_pages[slot] = -(-memory_size // PAGE_SIZE)
        else:
            self._slot_pages.pop(slot, None)

    def get_dirty_log(self, slot: int, npages: int) -> bytearray:
        """KVM_GET_DIRTY_LOG: one bit per page of the slot, LSB first.

        The bitmap has ``npages`` bits rounded up to a multiple of 64 (8 bytes).
        Fetching it also clears KVM's log for the slot.
        """
        if npages <= 0:
            raise ValueError(f"The page count must be positive, got {npages}")
        known = self._slot_pages.get(slot)
        if known is not None and npages < known:
            # KVM writes the bitmap of the whole slot: a short buffer would overflow.
            raise ValueError(
                f"Memory slot {slot} has {known} pages; a dirty bitmap for {npages} "
                "pages is too small"
            )
        bitmap = bytearray(-(-npages // 64) * 8)
        view = (ctypes.c_char * len(bitmap)).from_buffer(bitmap)
        try:
            log = KvmDirtyLog(slot=slot, dirty_bitmap=ctypes.addressof(view))
            _ioctl(
                self.fd, c.KVM_GET_DIRTY_LOG, ctypes.byref(log), "KVM_GET_DIRTY_LOG",
                f"slot {slot}",
            )
        finally:
            del view
        return bitmap

    def set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR (the address is passed by value, full 64 bits)."""
        _ioctl(self.fd, c.KVM_SET_TSS_ADDR, addr, "KVM_SET_TSS_ADDR", f"address {addr:#x}")

    def set_identity_map_addr(self, addr: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR (takes a pointer to a u64)."""
        value = ctypes.c_uint64(addr)
        _ioctl(
            self.fd, c.KVM_SET_IDENTITY_MAP_ADDR, ctypes.byref(value),
            "KVM_SET_IDENTITY_MAP_ADDR", f"address {addr:#x}",
        )

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        """KVM_CREATE_VCPU, then map the vCPU's kvm_run page."""
        fd = _ioctl(self.fd, c.KVM_CREATE_VCPU, vcpu_id, "KVM_CREATE_VCPU", f"vCPU {vcpu_id}")
        try:
            return Vcpu(fd, vcpu_id, self.vcpu_mmap_size)
        except BaseException:
            os.close(fd)
            raise



class Vcpu(_FdOwner):
    """A vCPU file descriptor and its mmap'd ``struct kvm_run``."""

    id: int
    fd: int
    run_mmap: mmap.mmap
    run_struct: KvmRun

    def __init__(self, fd: int, vcpu_id: int, mmap_size: int) -> None:
        self.fd = -1  # until fully built: the caller owns fd if this raises
        self.id = vcpu_id
        try:
            self.run_mmap = mmap.mmap(
                fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as exc:
            raise KvmError(
                f"Cannot map the kvm_run page of vCPU {vcpu_id}: {exc.strerror}"
            ) from None
        self.run_struct = KvmRun.from_buffer(self.run_mmap)
        self._sync: KvmSyncRegs = self.run_struct.s.regs
        self.fd = fd

    # --- running ------------------------------------------------------------

    def run(self) -> int:
        """KVM_RUN; returns ``run_struct.exit_reason``.

        A signal (or ``immediate_exit``) makes it return ``KVM_EXIT_INTR``
        instead of raising; any other failure raises :class:`KvmIoctlError`.
        """
        if _ioctl_fn(self.fd, _KVM_RUN, None) < 0:
            err = ctypes.get_errno()
            if err == _EINTR:
                return _KVM_EXIT_INTR
            raise KvmIoctlError("KVM_RUN", err, f"vCPU {self.id}")
        return self.run_struct.exit_reason

    @property
    def immediate_exit(self) -> bool:
        """kvm_run.immediate_exit: when set, KVM_RUN returns at once with EINTR."""
        return bool(self.run_struct.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self.run_struct.immediate_exit = 1 if value else 0

    def io_data(self) -> memoryview:
        """The data of the current KVM_EXIT_IO (``size * count`` bytes).

        For ``out`` it holds what the guest wrote; for ``in`` write the answer
        here before the next :meth:`run`.  Release the view before :meth:`close`.
        """
        io = self.run_struct.io
        start = io.data_offset
        return memoryview(self.run_mmap)[start : start + io.size * io.count]

    # --- sync regs ------------------------------------------------------------

    def enable_sync_regs(self, regs: bool = True, sregs: bool = True, events: bool = False) -> None:
        """Ask KVM to store these register classes in ``run_struct.s`` on every exit."""
        self.run_struct.kvm_valid_regs = (
            (c.KVM_SYNC_X86_REGS if regs else 0)
            | (c.KVM_SYNC_X86_SREGS if sregs else 0)
            | (c.KVM_SYNC_X86_EVENTS if events else 0)
        )

    @property
    def sync(self) -> KvmSyncRegs:
        """The sync-regs area (``.regs``, ``.sregs``, ``.events``), a live view."""
        return self._sync

    def mark_dirty(self, regs: bool = False, sregs: bool = False, events: bool = False) -> None:
        """Have the next KVM_RUN load these classes from ``sync`` (KVM clears the bits)."""
        self.run_struct.kvm_dirty_regs |= (
            (c.KVM_SYNC_X86_REGS if regs else 0)
            | (c.KVM_SYNC_X86_SREGS if sregs else 0)
            | (c.KVM_SYNC_X86_EVENTS if events else 0)
        )

    # --- registers ------------------------------------------------------------

    def get_regs(self, out: KvmRegs | None = None) -> KvmRegs:
        """KVM_GET_REGS (into ``out`` if given)."""
        regs = KvmRegs() if out is None else out
        _ioctl(self.fd, c.KVM_GET_REGS, ctypes.byref(regs), "KVM_GET_REGS")
        return regs

    def set_regs(self, regs: KvmRegs) -> None:
        _ioctl(self.fd, c.KVM_SET_REGS, ctypes.byref(regs), "KVM_SET_REGS")

    def get_sregs(self, out: KvmSregs | None = None) -> KvmSregs:
        """KVM_GET_SREGS (into ``out`` if given)."""
        sregs = KvmSregs() if out is None else out
        _ioctl(self.fd, c.KVM_GET_SREGS, ctypes.byref(sregs), "KVM_GET_SREGS")
        return sregs

    def set_sregs(self, sregs: KvmSregs) -> None:
        _ioctl(self.fd, c.KVM_SET_SREGS, ctypes.byref(sregs), "KVM_SET_SREGS")

    def get_fpu(self) -> KvmFpu:
        """KVM_GET_FPU.  KVM never fills ``mxcsr`` here (and KVM_SET_FPU ignores
        it): read and write MXCSR through :meth:`get_xsave`/:meth:`set_xsave`."""
        fpu = KvmFpu()
        _ioctl(self.fd, c.KVM_GET_FPU, ctypes.byref(fpu), "KVM_GET_FPU")
        return fpu

    def set_fpu(self, fpu: KvmFpu) -> None:
        _ioctl(self.fd, c.KVM_SET_FPU, ctypes.byref(fpu), "KVM_SET_FPU")

    def get_xsave(self) -> KvmXsave:
        xsave = KvmXsave()
        _ioctl(self.fd, c.KVM_GET_XSAVE, ctypes.byref(xsave), "KVM_GET_XSAVE")
        return xsave

    def set_xsave(self, x: KvmXsave) -> None:
        _ioctl(self.fd, c.KVM_SET_XSAVE, ctypes.byref(x), "KVM_SET_XSAVE")

    def get_xcrs(self) -> KvmXcrs:
        """KVM_GET_XCRS; ``xcrs[:nr_xcrs]`` hold (xcr, value) pairs."""
        xcrs = KvmXcrs()
        _ioctl(self.fd, c.KVM_GET_XCRS, ctypes.byref(xcrs), "KVM_GET_XCRS")
        return xcrs

    def set_xcrs(self, xcrs: KvmXcrs | Mapping[int, int]) -> None:
        """KVM_SET_XCRS from a KvmXcrs or a ``{xcr: value}`` mapping."""
        if not isinstance(xcrs, KvmXcrs):
            values = dict(xcrs)
            if len(values) > c.KVM_MAX_XCRS:
                raise ValueError(f"At most {c.KVM_MAX_XCRS} XCRs, got {len(values)}")
            xcrs = KvmXcrs(nr_xcrs=len(values))
            for i, (xcr, value) in enumerate(values.items()):
                xcrs.xcrs[i].xcr = xcr
                xcrs.xcrs[i].value = value
        _ioctl(self.fd, c.KVM_SET_XCRS, ctypes.byref(xcrs), "KVM_SET_XCRS")

    def get_vcpu_events(self) -> KvmVcpuEvents:
        ev = KvmVcpuEvents()
        _ioctl(self.fd, c.KVM_GET_VCPU_EVENTS, ctypes.byref(ev), "KVM_GET_VCPU_EVENTS")
        return ev

    def set_vcpu_events(self, ev: KvmVcpuEvents) -> None:
        _ioctl(self.fd, c.KVM_SET_VCPU_EVENTS, ctypes.byref(ev), "KVM_SET_VCPU_EVENTS")

    def get_debugregs(self) -> KvmDebugregs:
        dr = KvmDebugregs()
        _ioctl(self.fd, c.KVM_GET_DEBUGREGS, ctypes.byref(dr), "KVM_GET_DEBUGREGS")
        return dr

    def set_debugregs(self, dr: KvmDebugregs) -> None:
        _ioctl(self.fd, c.KVM_SET_DEBUGREGS, ctypes.byref(dr), "KVM_SET_DEBUGREGS")

    def get_mp_state(self) -> int:
        st = KvmMpState()
        _ioctl(self.fd, c.KVM_GET_MP_STATE, ctypes.byref(st), "KVM_GET_MP_STATE")
        return st.mp_state

    def set_mp_state(self, state: int) -> None:
        st = KvmMpState(mp_state=state)
        _ioctl(self.fd, c.KVM_SET_MP_STATE, ctypes.byref(st), "KVM_SET_MP_STATE")

    # --- MSRs -------------------------------------------------------------------

    def get_msrs(self, indices: Sequence[int]) -> dict[int, int]:
        """KVM_GET_MSRS; raises KvmMsrError naming the first MSR KVM refused."""
        count = len(indices)
        if not count:
            return {}
        buf = _flex_type(KvmMsrs, KvmMsrEntry, count)()
        buf.hdr.nmsrs = count
        for entry, index in zip(buf.entries, indices, strict=False):
            entry.index = index
        done = _ioctl(self.fd, c.KVM_GET_MSRS, ctypes.byref(buf), "KVM_GET_MSRS")
        if done < count:
            raise KvmMsrError("KVM_GET_MSRS", indices[done], done, count)
        return {entry.index: entry.data for entry in buf.entries}

    def set_msrs(self, values: Mapping[int, int]) -> None:
        """KVM_SET_MSRS; raises KvmMsrError naming the first MSR KVM refused."""
        items = list(values.items())
        count = len(items)
        if not count:
            return
        buf = _flex_type(KvmMsrs, KvmMsrEntry, count)()
        buf.hdr.nmsrs = count
        for entry, (index, data) in zip(buf.entries, items, strict=False):
            entry.index = index
            entry.data = data
        done = _ioctl(self.fd, c.KVM_SET_MSRS, ctypes.byref(buf), "KVM_SET_MSRS")
        if done < count:
            raise KvmMsrError("KVM_SET_MSRS", items[done][0], done, count)

    # --- CPUID, debugging, misc ---------------------------------------------------

    def set_cpuid2(self, entries: Sequence[KvmCpuidEntry2]) -> None:
        """KVM_SET_CPUID2: the CPUID leaves this vCPU's guest sees."""
        buf = _flex_type(KvmCpuid2, KvmCpuidEntry2, len(entries))()
        buf.hdr.nent = len(entries)
        for i, entry in enumerate(entries):
            buf.entries[i] = entry
        _ioctl(
            self.fd, c.KVM_SET_CPUID2, ctypes.byref(buf), "KVM_SET_CPUID2",
            f"{len(entries)} entries",
        )

    def get_cpuid2(self) -> list[KvmCpuidEntry2]:
        """KVM_GET_CPUID2: the leaves last set with :meth:`set_cpuid2`."""
        return _get_cpuid(self.fd, c.KVM_GET_CPUID2, "KVM_GET_CPUID2")

    def set_guest_debug(self, control: int, debugreg: Sequence[int] = ()) -> None:
        """KVM_SET_GUEST_DEBUG with KVM_GUESTDBG_* ``control`` and up to 8 debug regs."""
        if len(debugreg) > 8:
            raise ValueError(f"At most 8 debug registers, got {len(debugreg)}")
        dbg = KvmGuestDebug(control=control)
        for i, value in enumerate(debugreg):
            dbg.arch.debugreg[i] = value
        _ioctl(self.fd, c.KVM_SET_GUEST_DEBUG, ctypes.byref(dbg), "KVM_SET_GUEST_DEBUG")

    def translate(self, linear_address: int) -> KvmTranslation:
        """KVM_TRANSLATE a guest linear address through the vCPU's current paging."""
        tr = KvmTranslation(linear_address=linear_address)
        _ioctl(
            self.fd, c.KVM_TRANSLATE, ctypes.byref(tr), "KVM_TRANSLATE",
            f"address {linear_address:#x}",
        )
        return tr

    def get_tsc_khz(self) -> int:
        """KVM_GET_TSC_KHZ: the guest TSC frequency in kHz."""
        return _ioctl(self.fd, c.KVM_GET_TSC_KHZ, None, "KVM_GET_TSC_KHZ")

    def _tsc_offset_attr(self, value: ctypes.c_uint64) -> KvmDeviceAttr:
        return KvmDeviceAttr(group=c.KVM_VCPU_TSC_CTRL, attr=c.KVM_VCPU_TSC_OFFSET, addr=ctypes.addressof(value))

    def get_tsc_offset(self) -> int | None:
        """The vCPU's TSC offset from the host's (KVM_VCPU_TSC_OFFSET); None where KVM lacks it."""
        value = ctypes.c_uint64()
        try:
            _ioctl(self.fd, c.KVM_GET_DEVICE_ATTR, ctypes.byref(self._tsc_offset_attr(value)), "KVM_GET_DEVICE_ATTR")
        except KvmIoctlError:
            return None
        return value.value

    def set_tsc_offset(self, offset: int) -> None:
        value = ctypes.c_uint64(offset)
        _ioctl(self.fd, c.KVM_SET_DEVICE_ATTR, ctypes.byref(self._tsc_offset_attr(value)), "KVM_SET_DEVICE_ATTR",
               "TSC offset")

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the vCPU fd, with up to four arguments."""
        _enable_cap(self.fd, cap, args, flags)

    def counters(self) -> dict[str, int]:
        """KVM's own cumulative counters for this vCPU (KVM_GET_STATS_FD): its exits,
        including those it handles without returning to us, emulated instructions,
        shadow page faults, TLB flushes. Empty where the kernel has no binary stats."""
        try:
            stats_fd = _ioctl(self.fd, c.KVM_GET_STATS_FD, None, "KVM_GET_STATS_FD")
        except KvmIoctlError:
            return {}
        try:
            return _parse_stats(stats_fd)
        finally:
            os.close(stats_fd)

    # --- lifetime ---------------------------------------------------------------

    def close(self) -> None:
        """Unmap kvm_run and close the fd.  Views taken from run_struct die with it."""
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            del self._sync
            del self.run_struct
            try:
                self.run_mmap.close()
            except BufferError:
                pass  # someone still holds a view; it is unmapped when that dies
        finally:
            os.close(fd)

