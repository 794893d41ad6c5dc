"""The PV64 domain builder: lay out a kernel, its boot data and page tables in RAM.

The layout is libxc's for a PV domU (pv-abi.md §2.1), so a kernel sees exactly
what Xen would give it: a bootstrap region at VIRT_BASE that maps the first
frames 1:1 with 4 KiB pages, holding in order the kernel, the p2m list,
start_info, the xenstore and console rings, the page tables (L4, L3, L2, L1s),
the boot stack and at least 512 KiB of free mapped pages, ending on a 4 MiB
boundary. With MOD_START_PFN the initrd follows, unmapped.

INIT_P2M is not honoured: the p2m list lives inside the bootstrap region, which
Linux supports (it tests ``mfn_list < __START_KERNEL_map``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hospes.errors import HospesError
from hospes.machine.memory import PAGE_SIZE, GuestMemory
from hospes.pv import abi
from hospes.pv.abi import PTE_A, PTE_D, PTE_P, PTE_RW, PTE_US
from hospes.pv.image.kernel import PvKernel

MiB = 1 << 20
START_INFO_SIZE = 1168
MAX_GUEST_CMDLINE = 1024
BOOTSTRAP_LIMIT = 1 << 30  # everything under L4[511]/L3[510] (pv-abi.md §2.1)


class BuildError(HospesError):
    """The kernel, initrd and memory size do not make a bootable domain."""


@dataclass(frozen=True)
class BootInfo:
    """What the vCPU and the hypervisor need to know after building."""

    entry: int
    stack_top: int
    start_info_va: int
    start_info_gpa: int
    l4_gpa: int
    page_table_frames: tuple[tuple[int, int], ...]  # (frame, level)
    store_gpa: int
    console_gpa: int
    mapped_end_pfn: int


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def build_domain(
    mem: GuestMemory,
    ram_pages: int,
    kernel: PvKernel,
    initrd: bytes | None,
    cmdline: str,
    shared_info_gpa: int,
    store_port: int,
    console_port: int,
    hv_l4_entries: dict[int, int],
    hypercall_page: bytes,
) -> BootInfo:
    """Write the kernel, boot data and bootstrap page tables into guest RAM."""
    virt_base = kernel.virt_base
    if len(cmdline.encode()) >= MAX_GUEST_CMDLINE:
        raise BuildError(f"Kernel command line is {len(cmdline)} bytes; Xen allows at most {MAX_GUEST_CMDLINE - 1}.")
    ram_bytes = ram_pages * PAGE_SIZE

    def gpa_of(va: int) -> int:
        return va - virt_base

    if kernel.virt_kend - virt_base > BOOTSTRAP_LIMIT:
        raise BuildError(f"Kernel {kernel.path} is too large for the 1 GiB bootstrap mapping.")
    # Segments land at p_paddr - PADDR_OFFSET (= their VA - VIRT_BASE): that, not
    # the raw p_paddr, is what must fit.
    kernel_end = kernel.virt_kend - virt_base
    if kernel_end > ram_bytes:
        raise BuildError(
            f"Kernel {kernel.path} needs {kernel_end // MiB + 1} MiB but the domain has {ram_bytes // MiB} MiB; "
            "give it more memory."
        )

    for seg in kernel.segments:
        gpa = gpa_of(seg.paddr + kernel.virt_offset)
        mem.write(gpa, seg.data)
        if seg.memsz > len(seg.data):
            mem.zero(gpa + len(seg.data), seg.memsz - len(seg.data))

    if kernel.notes.hypercall_page is not None:
        mem.write(gpa_of(kernel.notes.hypercall_page), hypercall_page)

    next_pfn = _align(kernel.virt_kend - virt_base, PAGE_SIZE) // PAGE_SIZE
    mapped_initrd = initrd is not None and not kernel.notes.mod_start_pfn
    mod_start = 0
    if mapped_initrd:
        assert initrd is not None
        mod_start = virt_base + next_pfn * PAGE_SIZE
        next_pfn += _align(len(initrd), PAGE_SIZE) // PAGE_SIZE

    p2m_pfn = next_pfn
    next_pfn += _align(ram_pages * 8, PAGE_SIZE) // PAGE_SIZE
    start_info_pfn = next_pfn
    store_pfn = next_pfn + 1
    console_pfn = next_pfn + 2
    pt_pfn = next_pfn + 3

    # Grow the region in 4 MiB steps until the tables, the stack and 512 KiB of
    # slack fit (libxc's loop).
    end = _align((pt_pfn + 1) * PAGE_SIZE, 4 * MiB)
    while True:
        n_l1 = end // (2 * MiB)
        n_pt = 3 + n_l1
        stack_pfn = pt_pfn + n_pt
        if (stack_pfn + 1) * PAGE_SIZE + 512 * 1024 <= end:
            break
        end += 4 * MiB
    if end > BOOTSTRAP_LIMIT:
        raise BuildError("The bootstrap region would exceed 1 GiB; use a smaller initrd or memory size.")
    mapped_pages = end // PAGE_SIZE
    if mapped_pages > ram_pages:
        raise BuildError(
            f"The domain needs at least {(end // MiB) + 1} MiB of memory for its kernel and boot data; "
            f"it has {ram_bytes // MiB} MiB."
        )

    if initrd is not None and not mapped_initrd:
        mod_start = mapped_pages
        if (mapped_pages * PAGE_SIZE) + len(initrd) > ram_bytes:
            raise BuildError(
                f"The initrd ({len(initrd) // MiB} MiB) does not fit in the domain's "
                f"{ram_bytes // MiB} MiB; give it more memory."
            )
        mem.write(mapped_pages * PAGE_SIZE, initrd)
    elif mapped_initrd:
        assert initrd is not None
        mem.write(gpa_of(mod_start), initrd)

    # p2m: identity.
    from array import array

    p2m_gpa = p2m_pfn * PAGE_SIZE
    mem.q[p2m_gpa >> 3:(p2m_gpa >> 3) + ram_pages] = array("Q", range(ram_pages))

    # Page tables: L4, L3, L2, L1s.
    l4 = pt_pfn * PAGE_SIZE
    l3 = l4 + PAGE_SIZE
    l2 = l3 + PAGE_SIZE
    l1_first = l2 + PAGE_SIZE
    table_flags = PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D
    for gpa in range(l4, l4 + n_pt * PAGE_SIZE, PAGE_SIZE):
        mem.zero(gpa, PAGE_SIZE)
    l4_index = (virt_base >> 39) & 511
    l3_index = (virt_base >> 30) & 511
    l2_first = (virt_base >> 21) & 511
    if l2_first + n_l1 > 512:
        raise BuildError("VIRT_BASE does not leave room for the bootstrap mapping under one L2 table.")
    mem.write_u64(l4 + l4_index * 8, l3 | table_flags)
    mem.write_u64(l3 + l3_index * 8, l2 | table_flags)
    for slot, entry in hv_l4_entries.items():
        mem.write_u64(l4 + slot * 8, entry)
    pt_first_pfn, pt_end_pfn = pt_pfn, pt_pfn + n_pt
    for i in range(n_l1):
        table = l1_first + i * PAGE_SIZE
        mem.write_u64(l2 + (l2_first + i) * 8, table | table_flags)
        entries = array("Q")
        for j in range(512):
            pfn = i * 512 + j
            flags = PTE_P | PTE_US | PTE_A | (0 if pt_first_pfn <= pfn < pt_end_pfn else PTE_RW)
            entries.append((pfn * PAGE_SIZE) | flags)
        mem.q[table >> 3:(table >> 3) + 512] = entries

    # start_info.
    si_gpa = start_info_pfn * PAGE_SIZE
    si = bytearray(PAGE_SIZE)
    si[0:32] = b"xen-3.0-x86_64".ljust(32, b"\0")
    flags = abi.SIF_MOD_START_PFN if (initrd and not mapped_initrd) else 0
    struct.pack_into("<QQI", si, 0x20, ram_pages, shared_info_gpa, flags)
    struct.pack_into("<QI", si, 0x38, store_pfn, store_port)
    struct.pack_into("<QI", si, 0x48, console_pfn, console_port)
    struct.pack_into(
        "<QQQQQ", si, 0x58,
        virt_base + l4,           # pt_base
        n_pt,                     # nr_pt_frames
        virt_base + p2m_gpa,      # mfn_list
        mod_start,
        len(initrd) if initrd else 0,
    )
    cmd = cmdline.encode()
    si[0x80:0x80 + len(cmd)] = cmd
    mem.write(si_gpa, bytes(si))
    mem.zero(store_pfn * PAGE_SIZE, PAGE_SIZE)
    mem.zero(console_pfn * PAGE_SIZE, PAGE_SIZE)
    mem.zero(stack_pfn * PAGE_SIZE, PAGE_SIZE)

    frames = [(pt_pfn, 4), (pt_pfn + 1, 3), (pt_pfn + 2, 2)] + [(pt_pfn + 3 + i, 1) for i in range(n_l1)]
    return BootInfo(
        entry=kernel.entry,
        stack_top=virt_base + (stack_pfn + 1) * PAGE_SIZE,
        start_info_va=virt_base + si_gpa,
        start_info_gpa=si_gpa,
        l4_gpa=l4,
        page_table_frames=tuple(frames),
        store_gpa=store_pfn * PAGE_SIZE,
        console_gpa=console_pfn * PAGE_SIZE,
        mapped_end_pfn=mapped_pages,
    )


def hypercall_page_bytes(max_vcpus: int) -> bytes:
    """Xen's 128 hypercall stubs of 32 bytes (pv-abi.md §4.2).

    vcpu_op's stub answers a vCPU id at or beyond ``max_vcpus`` itself, with
    Xen's -ENOENT for every command (``domain_vcpu`` fails before the command
    is looked at): Linux probes all NR_CPUS ids (8192 in Debian's kernels)
    with VCPUOP_is_up at boot, and each would otherwise be an exit. The id is
    the low 32 bits of RSI, as Xen reads an ``unsigned int``.
    """
    page = bytearray(PAGE_SIZE)
    for i in range(128):
        if i == abi.Hypercall.iret:
            stub = b"\x51\x41\x53\x50\xb8" + struct.pack("<I", i) + b"\x0f\x05"
        else:
            stub = b"\x51\x41\x53\xb8" + struct.pack("<I", i) + b"\x0f\x05\x41\x5b\x59\xc3"
        if i == abi.Hypercall.vcpu_op:
            # cmp $max_vcpus,%esi; jae 1f; <the stub>; 1: mov $-ENOENT,%rax; ret
            enoent = b"\x48\xc7\xc0" + struct.pack("<i", -2) + b"\xc3"
            stub = b"\x81\xfe" + struct.pack("<I", max_vcpus) + b"\x73" + bytes([len(stub)]) + stub + enoent
        assert len(stub) <= 32
        page[i * 32:i * 32 + len(stub)] = stub
    return bytes(page)
