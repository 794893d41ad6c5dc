"""hospes.kvm against the real /dev/kvm: tiny real-mode guests, no mocks."""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from hospes.errors import HospesError
from hospes.kvm import (
    KVM_CAP_IMMEDIATE_EXIT,
    KVM_CAP_NR_MEMSLOTS,
    KVM_CAP_SYNC_REGS,
    KVM_CAP_USER_MEMORY,
    KVM_EXIT_HLT,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_IO_OUT,
    KVM_GET_SUPPORTED_CPUID,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_SYNC_X86_REGS,
    KVM_SYNC_X86_SREGS,
    Kvm,
    KvmError,
    KvmIoctlError,
    KvmMsrError,
    KvmRegs,
    KvmUnavailableError,
    Vcpu,
    Vm,
    exit_reason_name,
)
from hospes.kvm.system import _get_cpuid

pytestmark = pytest.mark.kvm

MEM_SIZE = 0x10000  # 16 pages at guest physical 0
CODE = 0x1000
MSR_KERNEL_GS_BASE = 0xC0000102

# mov al, 0x42 ; out 0x10, al ; hlt
OUT_42 = bytes([0xB0, 0x42, 0xE6, 0x10, 0xF4])


@dataclass
class Guest:
    kvm: Kvm
    vm: Vm
    vcpu: Vcpu
    mem: mmap.mmap


def _address_of(buf: mmap.mmap) -> int:
    view = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(view)
    finally:
        del view


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    with Kvm() as k:
        yield k


def _make_guest(kvm: Kvm, code: bytes, flags: int = 0) -> Guest:
    """A VM with 64 KiB of memfd RAM at 0 and one real-mode vCPU at CODE."""
    memfd = os.memfd_create("hospes-test-ram", os.MFD_CLOEXEC)
    try:
        os.ftruncate(memfd, MEM_SIZE)
        mem = mmap.mmap(memfd, MEM_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(memfd)
    mem[CODE : CODE + len(code)] = code
    vm = kvm.create_vm()
    vm.set_user_memory_region(0, 0, MEM_SIZE, _address_of(mem), flags)
    vcpu = vm.create_vcpu(0)
    sregs = vcpu.get_sregs()
    sregs.cs.base = 0
    sregs.cs.selector = 0
    vcpu.set_sregs(sregs)
    regs = KvmRegs(rip=CODE, rflags=0x2)
    vcpu.set_regs(regs)
    return Guest(kvm, vm, vcpu, mem)


@pytest.fixture
def guest(kvm: Kvm) -> Iterator[Guest]:
    g = _make_guest(kvm, OUT_42)
    yield g
    g.vcpu.close()
    g.vm.close()
    g.mem.close()


def _expect(vcpu: Vcpu, reason: int) -> None:
    got = vcpu.run()
    assert got == reason, f"expected {exit_reason_name(reason)}, got {exit_reason_name(got)}"


# --- /dev/kvm ----------------------------------------------------------------

def test_open_kvm(kvm: Kvm) -> None:
    assert kvm.api_version == 12
    assert kvm.fd >= 0
    # kvm_run page, PIO page, coalesced MMIO page (at least the first).
    assert kvm.vcpu_mmap_size >= mmap.PAGESIZE


def test_check_extension(kvm: Kvm) -> None:
    assert kvm.check_extension(KVM_CAP_USER_MEMORY) > 0
    assert kvm.check_extension(KVM_CAP_IMMEDIATE_EXIT) > 0
    assert kvm.check_extension(KVM_CAP_SYNC_REGS) & (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS) == 3
    assert kvm.check_extension(KVM_CAP_NR_MEMSLOTS) >= 32
    assert kvm.check_extension(0x7FFFFFFF) == 0  # unknown capability: just absent


def test_supported_cpuid_and_msr_lists(kvm: Kvm) -> None:
    leaves = kvm.supported_cpuid()
    assert leaves, "KVM_GET_SUPPORTED_CPUID returned nothing"
    leaf0 = next(e for e in leaves if e.function == 0)
    vendor = b"".join(r.to_bytes(4, "little") for r in (leaf0.ebx, leaf0.edx, leaf0.ecx))
    assert vendor in (b"GenuineIntel", b"AuthenticAMD", b"HygonGenuine", b"CentaurHauls")
    assert MSR_KERNEL_GS_BASE in kvm.msr_index_list()
    # Starting from a too-small buffer, E2BIG makes it grow until all fit.
    grown = _get_cpuid(kvm.fd, KVM_GET_SUPPORTED_CPUID, "KVM_GET_SUPPORTED_CPUID", count=2)
    assert [bytes(e) for e in grown] == [bytes(e) for e in leaves]


def test_missing_device_raises_clear_error(tmp_path) -> None:
    with pytest.raises(KvmUnavailableError, match=r"^Cannot open .*/nope: it does not exist"):
        Kvm(str(tmp_path / "nope"))
    with pytest.raises(KvmUnavailableError, match=r"^Cannot use /dev/null: it is not a KVM device.*KVM_GET_API_VERSION"):
        Kvm("/dev/null")
    assert issubclass(KvmUnavailableError, KvmError) and issubclass(KvmError, HospesError)


# --- running a guest -----------------------------------------------------------

def test_real_mode_out(guest: Guest) -> None:
    vcpu = guest.vcpu
    _expect(vcpu, KVM_EXIT_IO)
    io = vcpu.run_struct.io
    assert (io.direction, io.size, io.port, io.count) == (KVM_EXIT_IO_OUT, 1, 0x10, 1)
    assert vcpu.run_struct.exit_reason == KVM_EXIT_IO
    data = vcpu.io_data()
    assert bytes(data) == b"\x42"
    assert guest.mem[0] == 0  # nothing else touched
    del data
    _expect(vcpu, KVM_EXIT_HLT)
    assert vcpu.get_regs().rip == CODE + len(OUT_42)


def test_sync_regs(kvm: Kvm) -> None:
    # mov al, 0x42 ; out 0x10, al ; out 0x11, al ; hlt
    g = _make_guest(kvm, bytes([0xB0, 0x42, 0xE6, 0x10, 0xE6, 0x11, 0xF4]))
    vcpu = g.vcpu
    vcpu.enable_sync_regs(regs=True, sregs=True)
    assert vcpu.run_struct.kvm_valid_regs == KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS
    _expect(vcpu, KVM_EXIT_IO)
    sync = vcpu.sync
    assert sync is vcpu.sync  # one cached view, no allocation per access
    assert sync.regs.rip == CODE + 4
    assert sync.regs.rax & 0xFF == 0x42
    assert sync.sregs.cs.selector == 0 and sync.sregs.cs.base == 0
    # Change rax through the sync area; the guest's next `out` must see it.
    sync.regs.rax = 0x77
    vcpu.mark_dirty(regs=True)
    assert vcpu.run_struct.kvm_dirty_regs == KVM_SYNC_X86_REGS
    _expect(vcpu, KVM_EXIT_IO)
    assert vcpu.run_struct.io.port == 0x11
    assert bytes(vcpu.io_data()) == b"\x77"
    assert vcpu.run_struct.kvm_dirty_regs == 0  # KVM consumed the dirty bit
    assert vcpu.get_regs().rax == 0x77
    assert vcpu.sync.regs.rip == CODE + 6
    vcpu.close()
    g.vm.close()


def test_immediate_exit(guest: Guest) -> None:
    vcpu = guest.vcpu
    vcpu.immediate_exit = True
    assert vcpu.immediate_exit is True
    assert vcpu.run() == KVM_EXIT_INTR
    assert vcpu.get_regs().rip == CODE  # the guest did not run
    vcpu.immediate_exit = False
    assert vcpu.run_struct.immediate_exit == 0
    _expect(vcpu, KVM_EXIT_IO)


def test_signal_kicks_run_and_gil_is_released(kvm: Kvm) -> None:
    g = _make_guest(kvm, bytes([0xEB, 0xFE]))  # jmp $
    ticks = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    old = signal.signal(signal.SIGALRM, lambda *_: None)
    counter.start()
    try:
        time.sleep(0.01)
        before = ticks
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        start = time.monotonic()
        assert g.vcpu.run() == KVM_EXIT_INTR
        assert time.monotonic() - start >= 0.25
        # Another Python thread ran while this one was inside KVM_RUN.
        assert ticks - before > 20
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        stop.set()
        counter.join()
        g.vcpu.close()
        g.vm.close()


# --- state -------------------------------------------------------------------

def test_msrs_round_trip(guest: Guest) -> None:
    vcpu = guest.vcpu
    value = 0x00007F00DEAD0000
    vcpu.set_msrs({MSR_KERNEL_GS_BASE: value})
    assert vcpu.get_msrs([MSR_KERNEL_GS_BASE]) == {MSR_KERNEL_GS_BASE: value}
    assert vcpu.get_msrs([]) == {}


def test_msr_refused_names_the_msr(guest: Guest) -> None:
    with pytest.raises(KvmMsrError, match=r"^KVM_SET_MSRS failed: .*MSR 0xdeadbeef") as info:
        guest.vcpu.set_msrs({MSR_KERNEL_GS_BASE: 0, 0xDEADBEEF: 1})
    assert info.value.index == 0xDEADBEEF
    with pytest.raises(KvmMsrError, match=r"MSR 0xdeadbeef"):
        guest.vcpu.get_msrs([MSR_KERNEL_GS_BASE, 0xDEADBEEF])


def test_sregs_round_trip(guest: Guest) -> None:
    vcpu = guest.vcpu
    sregs = vcpu.get_sregs()
    sregs.ds.base = 0x2000
    sregs.ds.selector = 0x200
    vcpu.set_sregs(sregs)
    again = vcpu.get_sregs()
    assert (again.ds.base, again.ds.selector) == (0x2000, 0x200)
    assert vcpu.get_sregs(out=again) is again


def test_fpu_xsave_xcrs_events_debugregs_round_trip(guest: Guest) -> None:
    vcpu = guest.vcpu
    fpu = vcpu.get_fpu()
    fpu.xmm[3][0] = 0xAB
    vcpu.set_fpu(fpu)
    assert vcpu.get_fpu().xmm[3][0] == 0xAB

    # KVM_GET_FPU never reports MXCSR (and KVM_SET_FPU ignores it): an old
    # upstream quirk.  XSAVE carries it: MXCSR at byte 24, XSTATE_BV at 512.
    xsave = vcpu.get_xsave()
    assert xsave.region[6] == 0x1F80  # MXCSR reset value
    xsave.region[128] |= 0b11  # x87 and SSE state present
    xsave.region[6] = 0x1F80 | 0x8000  # flush-to-zero
    xsave.region[(160 + 3 * 16) // 4] = 0xCD  # low byte of xmm3
    vcpu.set_xsave(xsave)
    assert vcpu.get_xsave().region[6] == 0x9F80
    assert vcpu.get_fpu().xmm[3][0] == 0xCD  # the same register file as KVM_GET_FPU

    xcrs = vcpu.get_xcrs()
    assert xcrs.nr_xcrs >= 1 and xcrs.xcrs[0].xcr == 0 and xcrs.xcrs[0].value & 1
    vcpu.set_xcrs(xcrs)
    vcpu.set_xcrs({0: xcrs.xcrs[0].value})

    events = vcpu.get_vcpu_events()
    assert events.exception.injected == 0
    vcpu.set_vcpu_events(events)

    dr = vcpu.get_debugregs()
    dr.db[0] = 0x1234
    vcpu.set_debugregs(dr)
    assert vcpu.get_debugregs().db[0] == 0x1234


def test_cpuid_tsc_guest_debug(kvm: Kvm, guest: Guest) -> None:
    vcpu = guest.vcpu
    leaves = kvm.supported_cpuid()
    vcpu.set_cpuid2(leaves)
    # KVM may drop all-zero leaves and adjusts runtime bits (APIC id, OSXSAVE,
    # XSAVE sizes), so compare the leaves' identities, not their contents.
    got = {(e.function, e.index) for e in vcpu.get_cpuid2()}
    assert {(0, 0), (1, 0)} <= got <= {(e.function, e.index) for e in leaves}
    assert vcpu.get_tsc_khz() > 100_000  # > 100 MHz
    vcpu.set_guest_debug(0)
    with pytest.raises(ValueError):
        vcpu.set_guest_debug(1, [0] * 9)


def test_dirty_log(kvm: Kvm) -> None:
    # mov al, 0x42 ; mov [0x3000], al ; hlt
    g = _make_guest(kvm, bytes([0xB0, 0x42, 0xA2, 0x00, 0x30, 0xF4]), KVM_MEM_LOG_DIRTY_PAGES)
    _expect(g.vcpu, KVM_EXIT_HLT)
    assert g.mem[0x3000] == 0x42
    bitmap = g.vm.get_dirty_log(0, MEM_SIZE // mmap.PAGESIZE)
    assert isinstance(bitmap, bytearray)
    assert len(bitmap) == 8  # 16 pages, rounded up to 64 bits
    assert bitmap[0] & (1 << 3), f"page 3 not dirty in {bitmap.hex()}"
    # Fetching the log cleared it.
    assert not any(g.vm.get_dirty_log(0, 100)[:2])
    assert len(g.vm.get_dirty_log(0, 100)) == 16
    with pytest.raises(ValueError, match="too small"):
        g.vm.get_dirty_log(0, 8)
    g.vcpu.close()
    g.vm.close()


def test_vm_level_calls(kvm: Kvm) -> None:
    with kvm.create_vm() as vm:
        assert vm.check_extension(KVM_CAP_NR_MEMSLOTS) >= 32
        vm.set_tss_addr(0xFFFBD000)  # above 2**31: must not overflow
        vm.set_identity_map_addr(0xFFFBC000)


# --- errors --------------------------------------------------------------------

def test_bad_ioctl_raises_kvm_error(guest: Guest) -> None:
    with pytest.raises(KvmIoctlError) as info:
        guest.vm.create_vcpu(0)  # id 0 exists already
    message = str(info.value)
    assert message.startswith("KVM_CREATE_VCPU failed (vCPU 0): File exists (EEXIST)")
    assert "already exists" in message
    assert info.value.ioctl == "KVM_CREATE_VCPU" and info.value.errno == 17

    with pytest.raises(KvmError, match=r"^KVM_SET_USER_MEMORY_REGION failed .*slot 1.*EINVAL"):
        guest.vm.set_user_memory_region(1, 0x20000, 0x123, _address_of(guest.mem))

    with pytest.raises(KvmError, match=r"^KVM_GET_DIRTY_LOG failed \(slot 0\).*ENOENT"):
        guest.vm.get_dirty_log(0, 16)  # slot 0 has no dirty logging


def test_closed_vcpu_raises(kvm: Kvm) -> None:
    g = _make_guest(kvm, OUT_42)
    g.vcpu.close()
    g.vcpu.close()  # idempotent
    with pytest.raises(KvmIoctlError, match=r"^KVM_RUN failed.*EBADF"):
        g.vcpu.run()
    g.vm.close()
